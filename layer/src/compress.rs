//! Input decompression, chosen by the stream's magic bytes: gzip, zstd or a
//! plain tar.

use std::io::{self, BufRead, BufReader, Read};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wrap `input` so that it yields the uncompressed tar.
pub fn decompressed(input: Box<dyn Read + Send>) -> io::Result<(Compression, Box<dyn Read + Send>)> {
    let mut buf = BufReader::with_capacity(256 * 1024, input);
    let head = buf.fill_buf()?;
    let c = Compression::detect(head);
    let r: Box<dyn Read + Send> = match c {
        Compression::None => Box::new(buf),
        // MultiGzDecoder: concatenated gzip members are one stream (pigz, Docker).
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buf)?),
    };
    Ok((c, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(c: Compression, data: &[u8]) -> Vec<u8> {
        let packed = match c {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 1).unwrap(),
        };
        let (got, mut r) = decompressed(Box::new(io::Cursor::new(packed))).unwrap();
        assert_eq!(got, c);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn detects_and_decodes_each_format() {
        let data = vec![7u8; 100_000];
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(roundtrip(c, &data), data);
        }
        assert_eq!(roundtrip(Compression::None, b""), b"");
    }

    #[test]
    fn corrupt_gzip_is_an_error_not_a_panic() {
        let mut bad = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        bad.extend_from_slice(&[0xff; 64]);
        let (_, mut r) = decompressed(Box::new(io::Cursor::new(bad))).unwrap();
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        let bad = vec![0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff];
        let res = decompressed(Box::new(io::Cursor::new(bad))).and_then(|(_, mut r)| r.read_to_end(&mut Vec::new()));
        assert!(res.is_err());
    }
}
