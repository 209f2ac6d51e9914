//! The reader against the differentials issue 14 found (each one a way to
//! make the store see a different tar than Docker and every Go scanner).

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::super::testutil::{fix_cksum, header, pax, raw_tar};
use super::super::{ApplyOptions, WhiteoutFormat, apply_tar};
use super::*;

fn members(t: &[u8]) -> Result<Vec<Member>, ReadError> {
    let mut r = Reader::new(t);
    let mut out = Vec::new();
    while let Some(m) = r.next_member()? {
        io::copy(&mut r, &mut io::sink()).map_err(ReadError::Input)?;
        out.push(m);
    }
    Ok(out)
}

fn names(t: &[u8]) -> Vec<String> {
    members(t).unwrap().iter().map(|m| String::from_utf8_lossy(&m.name).into_owned()).collect()
}

/// A tar whose `innocent` member is followed by data that looks like more
/// members; `smuggle` is the xattr value that hides a PAX record.
fn smuggler(smuggle: &[u8], hidden: &[u8]) -> Vec<u8> {
    let mut t = pax(&[("SCHILY.xattr.user.note", smuggle)]);
    let mut h = header(b"innocent", b'0', b"", hidden.len() as u64, 0o4755);
    let id = format!("{:07o}\0", 1_000_000);
    h[108..116].copy_from_slice(id.as_bytes());
    h[116..124].copy_from_slice(id.as_bytes());
    fix_cksum(&mut h);
    t.extend_from_slice(&h);
    t.extend_from_slice(hidden);
    t.resize(t.len() + 1024, 0);
    t
}

#[test]
fn a_newline_in_an_xattr_does_not_start_a_size_record() {
    // The data of `innocent` holds two well-formed members.
    let hidden = raw_tar(&[(b"evil", b'0', b"", b"pwned"), (b"d/", b'5', b"", b"")]);
    let hidden = &hidden[..1536];
    let t = smuggler(b"x\n11 size=0\n", hidden);
    assert_eq!(names(&t), ["innocent"]);
    let m = &members(&t).unwrap()[0];
    assert_eq!((m.size, m.data_len), (1536, 1536));
    assert_eq!(m.xattrs.get(&b"user.note"[..]).map(|v| &v[..]), Some(&b"x\n11 size=0\n"[..]));
    let dir = tempfile::tempdir().unwrap();
    apply_tar(dir.path(), &mut &t[..], &ApplyOptions { whiteouts: WhiteoutFormat::Remove }).unwrap();
    let listed: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(listed, ["innocent"]);
    assert_eq!(fs::read(dir.path().join("innocent")).unwrap(), hidden);
}

#[test]
fn a_newline_in_an_xattr_does_not_start_uid_records() {
    let t = smuggler(b"x\n10 uid=0\n10 gid=0\n", b"");
    let m = &members(&t).unwrap()[0];
    assert_eq!((m.uid, m.gid, m.mode), (1_000_000, 1_000_000, 0o4755));
    let dir = tempfile::tempdir().unwrap();
    apply_tar(dir.path(), &mut &t[..], &ApplyOptions { whiteouts: WhiteoutFormat::Remove }).unwrap();
    let md = fs::metadata(dir.path().join("innocent")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1_000_000, 1_000_000, 0o4755));
}

#[test]
fn typeflag_nul_with_a_trailing_slash_is_a_directory() {
    let t = raw_tar(&[(b"d/", 0, b"", b""), (b"d/f", 0, b"", b"x")]);
    let ms = members(&t).unwrap();
    assert_eq!((ms[0].typeflag, ms[1].typeflag), (b'5', b'0'));
    let dir = tempfile::tempdir().unwrap();
    apply_tar(dir.path(), &mut &t[..], &ApplyOptions { whiteouts: WhiteoutFormat::Remove }).unwrap();
    assert!(dir.path().join("d").is_dir());
    assert_eq!(fs::read(dir.path().join("d/f")).unwrap(), b"x");
}

#[test]
fn pax_numbers_go_refuses_are_refused() {
    for (k, v) in [("size", &b"-1"[..]), ("uid", b"1e20"), ("gid", b"99999999999999999999"), ("mtime", b"1.x")] {
        let mut t = pax(&[(k, v)]);
        t.extend(raw_tar(&[(b"f", b'0', b"", b"")]));
        let err = members(&t).expect_err(k);
        assert!(matches!(err, ReadError::Format(_)), "{k}: {err}");
        let dir = tempfile::tempdir().unwrap();
        let err = apply_tar(dir.path(), &mut &t[..], &ApplyOptions { whiteouts: WhiteoutFormat::Remove }).expect_err(k);
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{k}: {err}");
    }
}

#[test]
fn empty_numeric_fields_read_as_zero() {
    // crates.io `.crate` files: NUL-filled uid/gid.
    let mut h = header(b"f", b'0', b"", 2, 0o644);
    h[108..124].fill(0);
    h[136..148].copy_from_slice(b"           \0");
    fix_cksum(&mut h);
    let mut t = h.to_vec();
    t.extend_from_slice(b"hi");
    t.resize(1024, 0);
    t.resize(2048, 0);
    let m = &members(&t).unwrap()[0];
    assert_eq!((m.uid, m.gid, m.mtime.secs), (0, 0, 0));
}

#[test]
fn end_of_input_at_a_member_boundary_ends_the_archive() {
    let full = raw_tar(&[(b"a", b'0', b"", &[7; 100]), (b"b", b'0', b"", b"")]);
    let body = full.len() - 1024;
    for cut in [body, body + 512] {
        assert_eq!(names(&full[..cut]), ["a", "b"], "cut at {cut}");
    }
    // Inside a header or inside data: truncated.
    assert!(members(&full[..body - 100]).is_err());
    assert!(members(&full[..512 + 50]).is_err());
    // Inside padding: Go ends the archive there.
    assert_eq!(names(&full[..512 + 200]), ["a"]);
}

#[test]
fn header_only_types_carry_no_data() {
    // A symlink whose size field claims 512 bytes: the next header follows.
    let mut t = header(b"s", b'2', b"t", 512, 0o777).to_vec();
    t.extend(raw_tar(&[(b"f", b'0', b"", b"y")]));
    assert_eq!(names(&t), ["s", "f"]);
}

#[test]
fn gnu_long_name_wins_over_pax_path() {
    let long = vec![b'n'; 300];
    let mut t = pax(&[("path", b"from-pax")]);
    let mut body = long.clone();
    body.push(0);
    t.extend_from_slice(&header(b"././@LongLink", b'L', b"", body.len() as u64, 0o644));
    t.extend_from_slice(&body);
    t.resize(t.len().div_ceil(512) * 512, 0);
    t.extend(raw_tar(&[(b"short", b'0', b"", b"")]));
    assert_eq!(members(&t).unwrap()[0].name, long);
}

#[test]
fn special_bodies_over_one_mib_are_refused_without_reading_them() {
    for flag in [b'L', b'K', b'x'] {
        let mut t = header(b"big", flag, b"", 512 << 20, 0o644).to_vec();
        t.resize(4096, b'a');
        let err = members(&t).unwrap_err();
        assert!(err.to_string().contains("1 MiB"), "{err}");
    }
}

#[test]
fn numbers_parse_like_go() {
    assert_eq!(numeric(b"0000644\0"), Some(0o644));
    assert_eq!(numeric(b"\0\0\0\0\0\0\0\0"), Some(0));
    assert_eq!(numeric(b"  12 \0"), Some(0o12));
    assert_eq!(numeric(b"12\x0034"), Some(0o12)); // Go stops at the NUL
    assert_eq!(numeric(b"9"), None);
    assert_eq!(numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1]), Some(1));
    assert_eq!(numeric(&[0xff; 8]), Some(-1));
    assert_eq!(parse_int(b"+5"), Some(5));
    assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
    assert_eq!(parse_int(b"9223372036854775808"), None);
    assert_eq!(parse_int(b"1e20"), None);
    assert_eq!(parse_int(b""), None);
    assert_eq!(parse_pax_time(b"-1.5"), Some(TarTime { secs: -2, nanos: 500_000_000 }));
    assert_eq!(parse_pax_time(b"1.1234567891"), Some(TarTime { secs: 1, nanos: 123_456_789 }));
    assert_eq!(parse_pax_time(b".5"), None);
}

#[test]
fn pax_records_parse_by_length() {
    let cap = b"\x01\x00\x00\x02\n\x00\x00\x00";
    let mut t = pax(&[("SCHILY.xattr.security.capability", cap), ("path", b"usr/bin/ping")]);
    t.extend(raw_tar(&[(b"placeholder", b'0', b"", b"ping")]));
    let m = &members(&t).unwrap()[0];
    assert_eq!(m.name, b"usr/bin/ping");
    assert_eq!(m.xattrs.get(&b"security.capability"[..]).unwrap(), cap);
    for bad in [&b"5 a=b"[..], b"99 a=b\n", b"x a=b\n", b"3 =\n", b"6 ab\n\n", b"0 \n", b"18446744073709551616 a=b\n"] {
        assert!(parse_pax(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    // Go refuses NUL padding inside the PAX body.
    assert!(parse_pax(b"6 a=b\n\0\0").is_err());
}
