//! Mutation fuzzing, deterministic so it runs in CI: valid tars with random
//! bytes flipped, truncated or spliced are fed to both parsers of outside
//! data — the extractor (`graphdriver::archive::apply_tar`) and the tar-split
//! recorder — and to the tar-split reader with mutated records. Neither may
//! panic, and the extractor must never write outside its target directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Cursor, Read, Write};
use std::path::Path;

use graphdriver::archive::{self, ApplyOptions, WhiteoutFormat};
use layer::tarsplit::{self, Assembler, DirGetter};
use proptest::prelude::*;

fn seed_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(kind);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, path, data).unwrap();
    };
    add("dir/", tar::EntryType::Directory, b"", None);
    add("dir/file", tar::EntryType::Regular, &[7u8; 1500], None);
    add("dir/link", tar::EntryType::Symlink, b"", Some("file"));
    add("dir/hard", tar::EntryType::Link, b"", Some("dir/file"));
    add("dir/.wh.gone", tar::EntryType::Regular, b"", None);
    add(&format!("long/{}", "n".repeat(150)), tar::EntryType::Regular, b"long", None);
    b.into_inner().unwrap()
}

/// Each raw member of `t` (extension headers too): header start, end of
/// data, end of padding. Links, symlinks, devices, fifos and directories
/// carry no data whatever their size field says.
fn member_spans(t: &[u8]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 512 <= t.len() && t[pos..pos + 512].iter().any(|b| *b != 0) {
        let field = std::str::from_utf8(&t[pos + 124..pos + 136]).unwrap().trim_matches(|c| c == '\0' || c == ' ');
        let size = usize::from_str_radix(field, 8).unwrap();
        let data = if b"123456".contains(&t[pos + 156]) { 0 } else { size };
        out.push((pos, pos + 512 + data, pos + 512 + data.next_multiple_of(512)));
        pos += 512 + data.next_multiple_of(512);
    }
    out
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir(dir);
    v.sort();
    v
}

fn walkdir(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walkdir(&p));
            }
        }
    }
    out
}

/// Apply `bytes` into `<tmp>/target` and check `<tmp>/sentinel` is untouched.
fn apply_contained(bytes: &[u8]) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    let sentinel = tmp.path().join("sentinel");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::create_dir_all(&sentinel).unwrap();
    std::fs::write(sentinel.join("keep"), b"keep").unwrap();
    let before = listing(tmp.path()).into_iter().filter(|p| !p.starts_with(&target.display().to_string())).count();
    for whiteouts in [WhiteoutFormat::Remove, WhiteoutFormat::Overlay] {
        let _ = archive::apply_tar(&target, &mut Cursor::new(bytes), &ApplyOptions { whiteouts });
    }
    let after: Vec<String> =
        listing(tmp.path()).into_iter().filter(|p| !p.starts_with(&target.display().to_string())).collect();
    assert_eq!(after.len(), before, "extractor wrote outside its target: {after:?}");
    assert_eq!(std::fs::read(sentinel.join("keep")).unwrap(), b"keep");
}

fn disassemble_ok(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    tarsplit::disassemble(Cursor::new(bytes), &mut out).ok().map(|_| out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn flipped_bytes_never_panic_or_escape(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut t = seed_tar();
        for (i, b) in flips {
            let at = i.index(t.len());
            t[at] ^= b | 1;
        }
        let _ = disassemble_ok(&t);
        apply_contained(&t);
    }

    #[test]
    fn truncations_and_splices_never_panic_or_escape(cut in any::<prop::sample::Index>(), splice in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let t = seed_tar();
        let at = cut.index(t.len());
        let mut m = t[..at].to_vec();
        m.extend_from_slice(&splice);
        m.extend_from_slice(&t[at..]);
        let _ = disassemble_ok(&m);
        apply_contained(&m);
        // Cut before the end-of-archive marker: accepted (as Go's reader
        // does) only on a member boundary or inside a member's padding;
        // inside a header or inside data: rejected.
        if at < t.len() - 1024 {
            let clean_cut = member_spans(&t).iter().any(|&(start, data_end, next)| at == start || (data_end..=next).contains(&at));
            prop_assert_eq!(disassemble_ok(&t[..at]).is_some(), clean_cut, "a tar truncated at {}", at);
        }
    }

    #[test]
    fn mutated_tar_split_records_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let t = seed_tar();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layer");
        std::fs::create_dir_all(&dir).unwrap();
        archive::apply_tar(&dir, &mut Cursor::new(&t), &ApplyOptions { whiteouts: WhiteoutFormat::Remove }).unwrap();
        // Mutate the uncompressed JSON, then gzip it again.
        let gz = disassemble_ok(&t).unwrap();
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut json).unwrap();
        for (i, b) in flips {
            let at = i.index(json.len());
            json[at] ^= b | 1;
        }
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&json).unwrap();
        let mutated = enc.finish().unwrap();
        let mut out = Vec::new();
        let _ = Assembler::new(Box::new(Cursor::new(mutated)), DirGetter::new(&dir)).read_to_end(&mut out);
    }
}

#[test]
fn the_seed_itself_round_trips() {
    let t = seed_tar();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layer");
    std::fs::create_dir_all(&dir).unwrap();
    archive::apply_tar(&dir, &mut Cursor::new(&t), &ApplyOptions { whiteouts: WhiteoutFormat::Remove }).unwrap();
    let gz = disassemble_ok(&t).expect("seed must record");
    let mut out = Vec::new();
    Assembler::new(Box::new(Cursor::new(gz)), DirGetter::new(&dir)).read_to_end(&mut out).unwrap();
    assert_eq!(out, t);
}
