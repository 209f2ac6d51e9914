//! Bodies of the fuzz targets (`fuzz/`, run with `cargo fuzz`): one per
//! parser of outside data. They are plain functions so `cargo test` also
//! runs them over the checked-in seed corpus (`layer/tests/fuzz_seeds.rs`).
//! Each panics only on a broken invariant, never on bad input.

use std::collections::HashMap;
use std::io::{self, Cursor, Read, Write};

use graphdriver::archive::reader::{Reader, parse_pax};

use crate::tarsplit::{self, Assembler, FileGetter};

/// The tar reader (headers, extension headers, sparse maps, data bounds)
/// and the tar-split recorder on the same bytes: they agree, and what the
/// recorder accepts rebuilds byte for byte from its record.
pub fn tar_headers(data: &[u8]) {
    // Regular content by name, as the recorder takes it from disk.
    let mut contents: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut rd = Reader::new(data);
    let mut reader_ok = true;
    loop {
        match rd.next_member() {
            Ok(Some(m)) => {
                assert!(m.header_pos < m.data_pos && m.data_pos <= data.len() as u64, "member positions");
                let mut body = Vec::new();
                if (&mut rd).take(m.data_len).read_to_end(&mut body).is_err() {
                    reader_ok = false;
                    break;
                }
                assert!(body.len() as u64 <= m.data_len);
                if matches!(m.typeflag, b'0' | b'7') && m.sparse.is_none() && !body.is_empty() {
                    contents.insert(m.name.clone(), body);
                }
            }
            Ok(None) => break,
            Err(_) => {
                reader_ok = false;
                break;
            }
        }
    }
    let mut record = Vec::new();
    if tarsplit::disassemble(data, &mut record).is_err() {
        return;
    }
    // The recorder reads through the same reader: it cannot accept what
    // the reader refused.
    assert!(reader_ok, "the recorder accepted a tar the reader refuses");
    let mut out = Vec::new();
    Assembler::new(Box::new(Cursor::new(record)), MemGetter(contents))
        .read_to_end(&mut out)
        .expect("an accepted tar rebuilds from its record");
    assert!(out == data, "the rebuilt tar differs from the input");
}

/// PAX extended header bodies, read by length.
pub fn pax_records(data: &[u8]) {
    if let Ok(recs) = parse_pax(data) {
        for (k, v) in &recs {
            assert!(!k.is_empty() && !k.contains(&b'='));
            if matches!(&k[..], b"path" | b"linkpath" | b"uname" | b"gname") {
                assert!(!v.contains(&0));
            }
        }
        assert!(recs.len() <= data.len() / 5 + 1);
    }
}

/// The tar-split reader: a record (gzipped here) replayed against files
/// that do not exist must fail cleanly, never panic or loop.
pub fn tar_split_record(data: &[u8]) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if gz.write_all(data).is_err() {
        return;
    }
    let Ok(gz) = gz.finish() else { return };
    let mut out = Vec::new();
    let _ = Assembler::new(Box::new(Cursor::new(gz)), MemGetter(HashMap::new())).take(64 << 20).read_to_end(&mut out);
}

struct MemGetter(HashMap<Vec<u8>, Vec<u8>>);

impl FileGetter for MemGetter {
    fn open(&self, name: &[u8]) -> io::Result<Box<dyn Read + Send>> {
        let data = self.0.get(name).cloned().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Box::new(Cursor::new(data)))
    }
}
