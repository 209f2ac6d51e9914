//! The persisted record: tar-split's newline-delimited JSON entries, exactly
//! as Go's `storage.Entry` marshals them, and the live [`Entry`] they convert
//! to and from.
//!
//! Wire shape, one JSON object per line, in stream order, gzipped:
//! `{"type":1,"name":"a/b","size":3,"payload":"<base64 CRC-64/ISO>","position":0}`
//! `{"type":2,"payload":"<base64 raw bytes>","position":1}`
//!
//! Field rules (Go `encoding/json` on tar-split's struct):
//! - `name` and `size` are omitted when empty/zero (`omitempty`);
//! - `name_raw` (base64 bytes) replaces `name` when the name is not UTF-8;
//! - `payload` is never omitted: `null` for a file without content;
//! - `position` counts entries from 0; readers do not depend on it.
//!
//! Versioning: the format carries no version field, and adding one would make
//! Docker's reader see an unknown key per line (harmless, but noise). The
//! version is therefore implied: [`FORMAT`] names the one we read and write,
//! and any change of shape must get a new name and a converter here.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::{self, BufRead, Read, Write};

use base64::Engine as _;
use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize, Serializer};

use super::TarSplitError;
use super::names::clean;

/// The record format we read and write: vbatts/tar-split's JSON packer
/// (`tar/storage`), as used by Docker's `tar-split.json.gz`.
pub const FORMAT: &str = "tar-split/json-v1";

/// Longest JSON line we accept; Go's packer writes segments of at most a few
/// MiB, so this only bounds the memory a hostile record can make us use.
pub(crate) const MAX_LINE: u64 = 64 << 20;

const TYPE_FILE: i64 = 1;
const TYPE_SEGMENT: i64 = 2;

/// One decoded entry of a tar-split record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Raw bytes of the tar stream (headers, padding, inline data), verbatim.
    Segment(Vec<u8>),
    /// A tar member. When `size > 0` its content comes from the extracted
    /// files and must have the CRC-64/ISO `crc`.
    File { name: Vec<u8>, size: u64, crc: Option<[u8; 8]> },
}

/// The wire record as Go writes it (serialisation side, borrowing).
#[derive(Serialize)]
struct RecordOut<'a> {
    #[serde(rename = "type")]
    ty: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name_raw: Option<B64<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    payload: Option<B64<'a>>,
    position: u64,
}

/// The wire record as Go reads it (deserialisation side): every field
/// optional, unknown fields ignored.
#[derive(Deserialize)]
struct RecordIn<'a> {
    #[serde(rename = "type")]
    ty: i64,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name_raw: Option<Cow<'a, str>>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default, borrow)]
    payload: Option<Cow<'a, str>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Bytes serialised as standard base64, like Go's `[]byte` in JSON.
struct B64<'a>(&'a [u8]);

impl Serialize for B64<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Base64Display::new(self.0, &STANDARD))
    }
}

/// Writes entries as gzipped NDJSON, numbering their positions.
pub(crate) struct Packer<W: Write> {
    gz: GzEncoder<W>,
    line: Vec<u8>,
    position: u64,
    files: u64,
}

impl<W: Write> Packer<W> {
    pub(crate) fn new(out: W) -> Self {
        // The fastest level: on a tar of many small files the record is
        // mostly base64 headers, and level 6 cost the recorder thread as
        // much CPU as hashing; any level is the same gzip to a reader.
        Packer { gz: GzEncoder::new(out, Compression::fast()), line: Vec::new(), position: 0, files: 0 }
    }

    /// Entries written so far.
    pub(crate) fn entries(&self) -> u64 {
        self.position
    }

    /// Type-1 entries written so far.
    pub(crate) fn files(&self) -> u64 {
        self.files
    }

    pub(crate) fn segment(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write(&RecordOut {
            ty: TYPE_SEGMENT,
            name: "",
            name_raw: None,
            size: 0,
            payload: Some(B64(bytes)),
            position: self.position,
        })
    }

    pub(crate) fn file(&mut self, name: &[u8], size: u64, crc: Option<[u8; 8]>) -> io::Result<()> {
        let (name, name_raw) = match std::str::from_utf8(name) {
            Ok(s) => (s, None),
            Err(_) => ("", Some(B64(name))),
        };
        self.files += 1;
        self.write(&RecordOut {
            ty: TYPE_FILE,
            name,
            name_raw,
            size,
            payload: crc.as_ref().map(|c| B64(c)),
            position: self.position,
        })
    }

    fn write(&mut self, rec: &RecordOut<'_>) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, rec).map_err(io::Error::other)?;
        self.line.push(b'\n');
        self.gz.write_all(&self.line)?;
        self.position += 1;
        Ok(())
    }

    /// Finish the gzip stream and hand back the writer, flushed.
    pub(crate) fn finish(self) -> io::Result<W> {
        let mut out = self.gz.finish()?;
        out.flush()?;
        Ok(out)
    }
}

/// Reads entries from a gzipped tar-split record, validating each one.
///
/// Like Go's unpacker it refuses two file entries with the same cleaned name.
pub(crate) struct Unpacker {
    src: io::BufReader<MultiGzDecoder<io::BufReader<Box<dyn Read + Send>>>>,
    line: Vec<u8>,
    index: u64,
    seen: HashSet<Vec<u8>>,
}

impl Unpacker {
    pub(crate) fn new(gz: Box<dyn Read + Send>) -> Self {
        Unpacker {
            src: io::BufReader::with_capacity(64 << 10, MultiGzDecoder::new(io::BufReader::new(gz))),
            line: Vec::new(),
            index: 0,
            seen: HashSet::new(),
        }
    }

    /// The next entry, `None` at the end of the record.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>, TarSplitError> {
        loop {
            self.line.clear();
            let n = (&mut self.src)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| self.malformed(format!("read: {e}")))?;
            if n == 0 {
                return Ok(None);
            }
            if n as u64 > MAX_LINE {
                return Err(self.malformed(format!("line longer than {MAX_LINE} bytes")));
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let entry = match serde_json::from_slice::<RecordIn<'_>>(&self.line) {
                Ok(rec) => convert(rec),
                Err(e) => Err(format!("bad json: {e}")),
            }
            .map_err(|why| self.malformed(why))?;
            if let Entry::File { name, .. } = &entry
                && !self.seen.insert(clean(name))
            {
                return Err(self.malformed(format!("duplicate file entry {:?}", String::from_utf8_lossy(name))));
            }
            self.index += 1;
            return Ok(Some(entry));
        }
    }

    fn malformed(&self, why: String) -> TarSplitError {
        TarSplitError::Malformed { index: self.index, why }
    }
}

/// Validate a wire record and convert it to the live [`Entry`].
fn convert(rec: RecordIn<'_>) -> Result<Entry, String> {
    let payload = match rec.payload.as_deref() {
        None => None,
        Some(s) => Some(STANDARD.decode(s).map_err(|e| format!("bad base64 payload: {e}"))?),
    };
    match rec.ty {
        TYPE_SEGMENT => Ok(Entry::Segment(payload.unwrap_or_default())),
        TYPE_FILE => {
            let name = match rec.name_raw.as_deref() {
                Some(raw) if !raw.is_empty() => {
                    STANDARD.decode(raw).map_err(|e| format!("bad base64 name_raw: {e}"))?
                }
                _ => rec.name.map(|n| n.into_owned().into_bytes()).unwrap_or_default(),
            };
            let size = rec.size.unwrap_or(0);
            let size = u64::try_from(size).map_err(|_| format!("negative size {size}"))?;
            if size == 0 {
                return Ok(Entry::File { name, size, crc: None });
            }
            if name.is_empty() {
                return Err(format!("file entry of {size} bytes has no name"));
            }
            let crc = payload
                .as_deref()
                .and_then(|p| <[u8; 8]>::try_from(p).ok())
                .ok_or_else(|| format!("file {:?}: checksum must be 8 bytes", String::from_utf8_lossy(&name)))?;
            Ok(Entry::File { name, size, crc: Some(crc) })
        }
        other => Err(format!("unknown entry type {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn gz(text: &str) -> Box<dyn Read + Send> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        Box::new(Cursor::new(enc.finish().unwrap()))
    }

    fn read_all(text: &str) -> Result<Vec<Entry>, TarSplitError> {
        let mut up = Unpacker::new(gz(text));
        let mut out = Vec::new();
        while let Some(e) = up.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    fn lines(f: impl FnOnce(&mut Packer<&mut Vec<u8>>)) -> Vec<String> {
        let mut buf = Vec::new();
        let mut p = Packer::new(&mut buf);
        f(&mut p);
        p.finish().unwrap();
        let mut text = String::new();
        MultiGzDecoder::new(&buf[..]).read_to_string(&mut text).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn writes_go_shape() {
        let got = lines(|p| {
            p.segment(b"hdr").unwrap();
            p.file(b"a/b", 3, Some([0, 1, 2, 3, 4, 5, 6, 7])).unwrap();
            p.file(b"dir/", 0, None).unwrap();
            p.file(b"\xffbad", 0, None).unwrap();
            p.file(b"", 0, None).unwrap();
        });
        assert_eq!(
            got,
            vec![
                r#"{"type":2,"payload":"aGRy","position":0}"#,
                r#"{"type":1,"name":"a/b","size":3,"payload":"AAECAwQFBgc=","position":1}"#,
                r#"{"type":1,"name":"dir/","payload":null,"position":2}"#,
                r#"{"type":1,"name_raw":"/2JhZA==","payload":null,"position":3}"#,
                r#"{"type":1,"payload":null,"position":4}"#,
            ]
        );
    }

    #[test]
    fn reads_go_shape() {
        let text = concat!(
            r#"{"type":2,"payload":"aGRy","position":0}"#,
            "\n",
            r#"{"type":1,"name":"a\u0026b","size":3,"payload":"AAECAwQFBgc=","position":1}"#,
            "\n\n",
            r#"{"type":1,"name":"x","name_raw":"/2JhZA==","payload":null,"position":2,"extra":true}"#,
            "\n",
            r#"{"type":1,"name":"d/","payload":null,"position":3}"#,
            "\n",
            r#"{"type":2,"payload":null,"position":4}"#,
        );
        let got = read_all(text).unwrap();
        assert_eq!(
            got,
            vec![
                Entry::Segment(b"hdr".to_vec()),
                Entry::File { name: b"a&b".to_vec(), size: 3, crc: Some([0, 1, 2, 3, 4, 5, 6, 7]) },
                Entry::File { name: b"\xffbad".to_vec(), size: 0, crc: None },
                Entry::File { name: b"d/".to_vec(), size: 0, crc: None },
                Entry::Segment(Vec::new()),
            ]
        );
    }

    #[test]
    fn rejects_malformed_records() {
        let cases = [
            ("not json", "bad json"),
            (r#"{"type":"1","name":"a"}"#, "bad json"),
            (r#"{"type":3,"payload":null}"#, "unknown entry type 3"),
            (r#"{"name":"a"}"#, "bad json"),
            (r#"{"type":1,"name":"a","size":-1,"payload":null}"#, "negative size"),
            (r#"{"type":1,"name":"a","size":99999999999999999999,"payload":null}"#, "bad json"),
            (r#"{"type":1,"name":"a","size":1.5,"payload":null}"#, "bad json"),
            (r#"{"type":1,"name":"a","size":4,"payload":null}"#, "checksum must be 8 bytes"),
            (r#"{"type":1,"name":"a","size":4,"payload":"AAEC"}"#, "checksum must be 8 bytes"),
            (r#"{"type":1,"size":4,"payload":"AAECAwQFBgc="}"#, "has no name"),
            (r#"{"type":2,"payload":"!!!"}"#, "bad base64"),
            (r#"{"type":1,"name_raw":"%%","size":1,"payload":"AAECAwQFBgc="}"#, "bad base64"),
            (r#"{"type":2,"payload":12}"#, "bad json"),
            ("{\"type\":1,\"name\":\"a/\"}\n{\"type\":1,\"name\":\"./a\"}", "duplicate file entry"),
        ];
        for (text, want) in cases {
            let err = read_all(text).expect_err(text);
            assert!(matches!(err, TarSplitError::Malformed { .. }), "{text}: {err}");
            assert!(err.to_string().contains(want), "{text}: {err}");
            assert_eq!(err.kind(), graphdriver::ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn rejects_bad_gzip_and_long_lines() {
        let mut up = Unpacker::new(Box::new(Cursor::new(b"not gzip at all".to_vec())));
        assert!(matches!(up.next_entry(), Err(TarSplitError::Malformed { .. })));

        let mut truncated = {
            let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(br#"{"type":2,"payload":"aGRy"}"#).unwrap();
            enc.finish().unwrap()
        };
        truncated.truncate(truncated.len() - 6);
        let mut up = Unpacker::new(Box::new(Cursor::new(truncated)));
        assert!(up.next_entry().is_err());

        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..=(MAX_LINE >> 20) {
            enc.write_all(&chunk).unwrap();
        }
        enc.write_all(b"x\n").unwrap();
        let mut up = Unpacker::new(Box::new(Cursor::new(enc.finish().unwrap())));
        let err = up.next_entry().unwrap_err();
        assert!(err.to_string().contains("line longer than"), "{err}");
    }
}
