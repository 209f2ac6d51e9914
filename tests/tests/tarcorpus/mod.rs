//! A generated corpus of odd, valid and invalid tars (issue 14): raw
//! headers built field by field, so every case says exactly which bytes
//! it is about. Shared by the Go differential test (`go_tar.rs`) and the
//! hostile-tar test run on every driver (`hostile.rs`).

#![allow(dead_code)]

use std::ops::Range;

use rand::{Rng, SeedableRng};

pub const NAME: Range<usize> = 0..100;
pub const MODE: Range<usize> = 100..108;
pub const UID: Range<usize> = 108..116;
pub const GID: Range<usize> = 116..124;
pub const SIZE: Range<usize> = 124..136;
pub const MTIME: Range<usize> = 136..148;
pub const CHKSUM: Range<usize> = 148..156;
pub const LINK: Range<usize> = 157..257;
pub const MAGIC: Range<usize> = 257..265;
pub const UNAME: Range<usize> = 265..297;
pub const DEVMAJOR: Range<usize> = 329..337;
pub const DEVMINOR: Range<usize> = 337..345;
pub const PREFIX: Range<usize> = 345..500;

/// One header block under construction.
#[derive(Clone)]
pub struct H(pub [u8; 512]);

impl H {
    /// A ustar header: mode 0644, owner 0:0, mtime 1600000000.
    pub fn new(name: &[u8], flag: u8, size: u64) -> H {
        let mut h = H([0u8; 512]);
        h = h.set(NAME, name).set(MODE, b"0000644").set(UID, b"0000000").set(GID, b"0000000");
        h = h.set(SIZE, format!("{size:011o}").as_bytes()).set(MTIME, b"13727410400");
        h.0[156] = flag;
        h.set(MAGIC, b"ustar\x0000")
    }

    /// Write `bytes` at the start of `r`, NUL-filling the rest of it.
    pub fn set(mut self, r: Range<usize>, bytes: &[u8]) -> H {
        let field = &mut self.0[r];
        field.fill(0);
        let n = bytes.len().min(field.len());
        field[..n].copy_from_slice(&bytes[..n]);
        self
    }

    pub fn flag(mut self, f: u8) -> H {
        self.0[156] = f;
        self
    }

    pub fn gnu(self) -> H {
        self.set(MAGIC, b"ustar  \0")
    }

    pub fn v7(self) -> H {
        self.set(MAGIC, b"").set(UNAME, b"")
    }

    pub fn uid(self, v: u64) -> H {
        self.set(UID, format!("{v:07o}").as_bytes())
    }

    pub fn mode(self, v: u32) -> H {
        self.set(MODE, format!("{v:07o}").as_bytes())
    }

    /// Base-256 big-endian into a numeric field.
    pub fn base256(self, r: Range<usize>, v: i64) -> H {
        let len = r.len();
        let mut field = vec![if v < 0 { 0xff } else { 0 }; len];
        let be = v.to_be_bytes();
        field[len - 8..].copy_from_slice(&be);
        field[0] = if v < 0 { 0xff } else { 0x80 };
        self.set(r, &field)
    }

    /// With the (unsigned) checksum fixed.
    pub fn done(mut self) -> [u8; 512] {
        self.0[CHKSUM].fill(b' ');
        let sum: u32 = self.0.iter().map(|b| u32::from(*b)).sum();
        self.0[CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0
    }

    /// With the checksum Go also accepts: bytes summed as signed.
    pub fn done_signed(mut self) -> [u8; 512] {
        self.0[CHKSUM].fill(b' ');
        let sum: i64 = self.0.iter().map(|b| i64::from(*b as i8)).sum();
        self.0[CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0
    }
}

/// A header and its data, padded to a block.
pub fn member(h: [u8; 512], data: &[u8]) -> Vec<u8> {
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// A plain member with `data`.
pub fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
    member(H::new(name, b'0', data.len() as u64).done(), data)
}

/// PAX records, each `"<len> <key>=<value>\n"` with the right length.
pub fn records(recs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in recs {
        let rest = 3 + k.len() + v.len();
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} ").as_bytes());
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// An `x` (or `g`) header carrying `body` as is.
pub fn ext(flag: u8, body: &[u8]) -> Vec<u8> {
    member(H::new(b"PaxHeaders/x", flag, body.len() as u64).done(), body)
}

pub fn pax(recs: &[(&[u8], &[u8])]) -> Vec<u8> {
    ext(b'x', &records(recs))
}

pub fn end() -> Vec<u8> {
    vec![0u8; 1024]
}

pub fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A GNU long name (`L`) or link (`K`) header.
pub fn long(flag: u8, name: &[u8]) -> Vec<u8> {
    let mut body = name.to_vec();
    body.push(0);
    member(H::new(b"././@LongLink", flag, body.len() as u64).gnu().done(), &body)
}

pub struct Case {
    pub name: String,
    pub tar: Vec<u8>,
}

fn case(cases: &mut Vec<Case>, name: &str, tar: Vec<u8>) {
    cases.push(Case { name: name.to_string(), tar });
}

/// Old GNU sparse header: `frags` in the header (first 4) and extension
/// blocks, realsize, and the chunks as data.
pub fn gnu_sparse(name: &[u8], frags: &[(u64, u64)], realsize: u64, data: &[u8]) -> Vec<u8> {
    let mut h = H::new(name, b'S', data.len() as u64).gnu();
    for (i, (off, len)) in frags.iter().take(4).enumerate() {
        let at = 386 + i * 24;
        h = h
            .set(at..at + 12, format!("{off:011o}").as_bytes())
            .set(at + 12..at + 24, format!("{len:011o}").as_bytes());
    }
    h = h.set(483..495, format!("{realsize:011o}").as_bytes());
    let rest: Vec<_> = frags.iter().skip(4).collect();
    if !rest.is_empty() {
        h.0[482] = 1;
    }
    let mut out = h.done().to_vec();
    for (bi, chunk) in rest.chunks(21).enumerate() {
        let mut b = [0u8; 512];
        for (i, (off, len)) in chunk.iter().enumerate() {
            b[i * 24..i * 24 + 11].copy_from_slice(format!("{off:011o}").as_bytes());
            b[i * 24 + 12..i * 24 + 23].copy_from_slice(format!("{len:011o}").as_bytes());
        }
        if (bi + 1) * 21 < rest.len() {
            b[504] = 1;
        }
        out.extend_from_slice(&b);
    }
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// The corpus: every case is deterministic; the last ones are seeded
/// mutations of valid headers (checksum fixed so they reach the fields).
pub fn corpus() -> Vec<Case> {
    let mut c = Vec::new();
    let cs = &mut c;
    let hidden = cat(&[file(b"evil", b"pwned"), member(H::new(b"d/", b'5', 0).done(), b"")]);
    let hidden = &hidden[..1024];

    // --- plain members of every type and header format
    case(cs, "empty archive", end());
    case(cs, "empty input", Vec::new());
    case(cs, "one zero block", vec![0; 512]);
    case(cs, "file", cat(&[file(b"f", b"hello"), end()]));
    case(cs, "file in dir", cat(&[member(H::new(b"d/", b'5', 0).done(), b""), file(b"d/f", b"x"), end()]));
    for (n, flag) in [("dir", b'5'), ("fifo", b'6'), ("char", b'3'), ("block", b'4')] {
        case(cs, n, cat(&[member(H::new(n.as_bytes(), flag, 0).done(), b""), end()]));
    }
    case(cs, "symlink", cat(&[member(H::new(b"s", b'2', 0).set(LINK, b"target").done(), b""), end()]));
    case(cs, "hardlink", cat(&[file(b"f", b"x"), member(H::new(b"h", b'1', 0).set(LINK, b"f").done(), b""), end()]));
    case(cs, "contiguous file", cat(&[member(H::new(b"c", b'7', 3).done(), b"abc"), end()]));
    case(cs, "v7 header", cat(&[member(H::new(b"v7", b'0', 2).v7().done(), b"v7"), end()]));
    case(cs, "gnu header", cat(&[member(H::new(b"g", b'0', 2).gnu().done(), b"gg"), end()]));
    case(cs, "star header", cat(&[member(H::new(b"st", b'0', 1).set(508..512, b"tar\0").done(), b"s"), end()]));
    case(cs, "ustar prefix", cat(&[member(H::new(b"name", b'0', 1).set(PREFIX, b"some/prefix").done(), b"p"), end()]));
    case(
        cs,
        "v7 ignores prefix",
        cat(&[member(H::new(b"name", b'0', 1).set(PREFIX, b"pre").v7().done(), b"p"), end()]),
    );
    case(
        cs,
        "gnu bad atime uses prefix",
        cat(&[member(H::new(b"n", b'0', 0).gnu().set(PREFIX, b"zz").done(), b""), end()]),
    );
    case(cs, "gnu atime", cat(&[member(H::new(b"n", b'0', 0).gnu().set(345..357, b"00000000144").done(), b""), end()]));
    case(cs, "typeflag NUL file", cat(&[member(H::new(b"f", 0, 1).done(), b"x"), end()]));
    case(cs, "typeflag NUL with slash is a dir", cat(&[member(H::new(b"d/", 0, 0).done(), b""), end()]));
    case(cs, "typeflag NUL slash with size", cat(&[member(H::new(b"d/", 0, 3).done(), b"abc"), end()]));
    case(cs, "unknown typeflag", cat(&[member(H::new(b"v", b'V', 0).done(), b""), end()]));
    case(cs, "gnu dumpdir typeflag", cat(&[member(H::new(b"dd", b'D', 4).gnu().done(), b"ab\0\0"), end()]));
    case(cs, "non-utf8 name", cat(&[file(b"caf\xe9", b"x"), end()]));
    case(cs, "name with newline", cat(&[file(b"a\nb", b"x"), end()]));
    case(cs, "absolute name", cat(&[file(b"/etc/x", b"x"), end()]));
    case(cs, "dotdot name", cat(&[file(b"../x", b"x"), end()]));
    case(cs, "inner dotdot name", cat(&[file(b"a/../b", b"x"), end()]));
    case(cs, "full 100-byte name", cat(&[file(&[b'n'; 100], b"x"), end()]));
    case(
        cs,
        "device numbers",
        cat(&[member(H::new(b"null", b'3', 0).set(DEVMAJOR, b"0000001").set(DEVMINOR, b"0000003").done(), b""), end()]),
    );
    case(cs, "setuid root file", cat(&[member(H::new(b"su", b'0', 0).mode(0o4755).done(), b""), end()]));
    case(cs, "mode high bits", cat(&[member(H::new(b"m", b'0', 0).set(MODE, b"7777777").done(), b""), end()]));

    // --- numeric fields
    for (n, bytes) in [
        ("uid NUL-filled", &b""[..]),
        ("uid space-filled", b"        "),
        ("uid leading spaces", b"    123"),
        ("uid trailing space", b"123 "),
        ("uid NUL inside", b"12\x0034"),
        ("uid not octal", b"0000009"),
        ("uid letters", b"abc"),
        ("uid plus sign", b"+12"),
        ("uid full width no NUL", b"77777777"),
    ] {
        case(cs, n, cat(&[member(H::new(b"f", b'0', 0).set(UID, bytes).done(), b""), end()]));
    }
    case(cs, "mtime NUL-filled", cat(&[member(H::new(b"f", b'0', 0).set(MTIME, b"").done(), b""), end()]));
    case(cs, "mode empty", cat(&[member(H::new(b"f", b'0', 0).set(MODE, b"").done(), b""), end()]));
    case(cs, "size empty", cat(&[member(H::new(b"f", b'0', 0).set(SIZE, b"").done(), b""), end()]));
    case(cs, "size not octal", cat(&[member(H::new(b"f", b'0', 0).set(SIZE, b"9").done(), b""), end()]));
    case(cs, "devmajor garbage", cat(&[member(H::new(b"c", b'3', 0).set(DEVMAJOR, b"xx").done(), b""), end()]));
    case(
        cs,
        "v7 devmajor garbage ignored",
        cat(&[member(H::new(b"c", b'0', 0).set(DEVMAJOR, b"xx").v7().done(), b""), end()]),
    );
    case(cs, "base-256 uid", cat(&[member(H::new(b"f", b'0', 0).base256(UID, 3_000_000).done(), b""), end()]));
    case(cs, "base-256 negative uid", cat(&[member(H::new(b"f", b'0', 0).base256(UID, -2).done(), b""), end()]));
    case(cs, "base-256 size", cat(&[member(H::new(b"f", b'0', 0).base256(SIZE, 5).done(), b"12345"), end()]));
    case(cs, "base-256 negative size", cat(&[member(H::new(b"f", b'0', 0).base256(SIZE, -1).done(), b""), end()]));
    case(cs, "base-256 negative size dir", cat(&[member(H::new(b"d", b'5', 0).base256(SIZE, -1).done(), b""), end()]));
    case(cs, "base-256 mtime", cat(&[member(H::new(b"f", b'0', 0).base256(MTIME, 1 << 40).done(), b""), end()]));
    case(cs, "base-256 negative mtime", cat(&[member(H::new(b"f", b'0', 0).base256(MTIME, -100).done(), b""), end()]));
    let mut overflow = [0xffu8; 12];
    overflow[0] = 0x80;
    case(cs, "base-256 overflow", cat(&[member(H::new(b"f", b'0', 0).set(SIZE, &overflow).done(), b""), end()]));
    case(cs, "signed checksum", cat(&[member(H::new(b"\xe9\xe9\xe9", b'0', 0).done_signed(), b""), end()]));
    let mut bad_sum = H::new(b"f", b'0', 0).done();
    bad_sum[0] = b'g';
    case(cs, "bad checksum", cat(&[bad_sum.to_vec(), end()]));
    let mut no_sum = H::new(b"f", b'0', 0).done();
    no_sum[CHKSUM].fill(0);
    case(cs, "empty checksum", cat(&[no_sum.to_vec(), end()]));
    let mut sum_spaces = H::new(b"f", b'0', 0).done();
    let s = String::from_utf8_lossy(&sum_spaces[148..154]).to_string();
    sum_spaces[CHKSUM].copy_from_slice(format!("  {s}").as_bytes());
    case(cs, "checksum with leading spaces", cat(&[sum_spaces.to_vec(), end()]));

    // --- header-only types and sizes
    case(
        cs,
        "symlink with size and data",
        cat(&[member(H::new(b"s", b'2', 5).set(LINK, b"t").done(), b"hello"), end()]),
    );
    case(
        cs,
        "dir with size followed by header",
        cat(&[H::new(b"d", b'5', 512).done().to_vec(), file(b"f", b"x"), end()]),
    );
    case(cs, "fifo with size", cat(&[H::new(b"p", b'6', 1000).done().to_vec(), end()]));
    case(
        cs,
        "hardlink with size",
        cat(&[H::new(b"h", b'1', 3).set(LINK, b"x").done().to_vec(), file(b"x", b"1"), end()]),
    );

    // --- PAX records
    let pax_file = |recs: &[(&[u8], &[u8])], data: &[u8]| cat(&[pax(recs), file(b"placeholder", data), end()]);
    case(cs, "pax path", pax_file(&[(b"path", b"real/name")], b"x"));
    case(cs, "pax empty path keeps header", pax_file(&[(b"path", b"")], b"x"));
    case(
        cs,
        "pax linkpath",
        cat(&[pax(&[(b"linkpath", b"far/target")]), member(H::new(b"l", b'2', 0).done(), b""), end()]),
    );
    case(cs, "pax size", cat(&[pax(&[(b"size", b"3")]), member(H::new(b"f", b'0', 0).done(), b"abc"), end()]));
    case(
        cs,
        "pax size plus sign",
        cat(&[pax(&[(b"size", b"+3")]), member(H::new(b"f", b'0', 0).done(), b"abc"), end()]),
    );
    case(cs, "pax size -1", pax_file(&[(b"size", b"-1")], b""));
    case(cs, "pax size -1 on dir", cat(&[pax(&[(b"size", b"-1")]), member(H::new(b"d", b'5', 0).done(), b""), end()]));
    case(cs, "pax size 1e3", pax_file(&[(b"size", b"1e3")], b""));
    case(cs, "pax size overflow", pax_file(&[(b"size", b"99999999999999999999")], b""));
    case(cs, "pax size spaces", pax_file(&[(b"size", b" 1")], b""));
    case(cs, "pax uid", pax_file(&[(b"uid", b"3000000"), (b"gid", b"4000000")], b""));
    case(cs, "pax uid 1e20", pax_file(&[(b"uid", b"1e20")], b""));
    case(cs, "pax uid negative", pax_file(&[(b"uid", b"-5")], b""));
    case(cs, "pax gid huge", pax_file(&[(b"gid", b"9223372036854775808")], b""));
    case(cs, "pax uid max", pax_file(&[(b"uid", b"9223372036854775807")], b""));
    case(cs, "pax uname gname", pax_file(&[(b"uname", b"root"), (b"gname", b"wheel")], b""));
    case(cs, "pax mtime fraction", pax_file(&[(b"mtime", b"1600000000.123456789")], b""));
    case(cs, "pax mtime long fraction", pax_file(&[(b"mtime", b"1.1234567891234")], b""));
    case(cs, "pax mtime negative", pax_file(&[(b"mtime", b"-1.5")], b""));
    case(cs, "pax mtime bad", pax_file(&[(b"mtime", b"1.x")], b""));
    case(cs, "pax mtime no int", pax_file(&[(b"mtime", b".5")], b""));
    case(cs, "pax mtime trailing dot", pax_file(&[(b"mtime", b"5.")], b""));
    case(cs, "pax atime", pax_file(&[(b"atime", b"1500000000.5")], b""));
    case(cs, "pax ctime bad", pax_file(&[(b"ctime", b"z")], b""));
    case(
        cs,
        "pax xattr",
        pax_file(&[(b"SCHILY.xattr.user.a", b"1"), (b"SCHILY.xattr.security.capability", b"\x01\0\0\x02\n\0")], b""),
    );
    case(cs, "pax xattr empty value", pax_file(&[(b"SCHILY.xattr.user.e", b"")], b""));
    case(cs, "pax xattr NUL in value", pax_file(&[(b"SCHILY.xattr.user.n", b"a\0b")], b""));
    case(cs, "pax xattr empty name", pax_file(&[(b"SCHILY.xattr.", b"v")], b""));
    case(cs, "pax unknown key", pax_file(&[(b"comment", b"hi"), (b"LIBARCHIVE.x", b"y")], b""));
    case(cs, "pax duplicate key last wins", pax_file(&[(b"path", b"first"), (b"path", b"second")], b""));
    case(cs, "pax NUL in path", pax_file(&[(b"path", b"a\0b")], b""));
    case(cs, "pax NUL in key", pax_file(&[(b"ke\0y", b"v")], b""));
    case(cs, "pax NUL in other value", pax_file(&[(b"comment", b"a\0b")], b""));
    case(cs, "pax equals in value", pax_file(&[(b"comment", b"a=b=c")], b""));
    case(cs, "pax empty key", cat(&[ext(b'x', b"5 =x\n"), file(b"f", b""), end()]));
    case(cs, "pax no equals", cat(&[ext(b'x', b"6 abc\n"), file(b"f", b""), end()]));
    case(cs, "pax length too long", cat(&[ext(b'x', b"99 a=b\n"), file(b"f", b""), end()]));
    case(cs, "pax length too short", cat(&[ext(b'x', b"4 a=b\n"), file(b"f", b""), end()]));
    case(cs, "pax length plus", cat(&[ext(b'x', b"+7 a=b\n"), file(b"f", b""), end()]));
    case(cs, "pax no newline", cat(&[ext(b'x', b"6 a=bc"), file(b"f", b""), end()]));
    case(cs, "pax trailing NULs", cat(&[ext(b'x', b"6 a=b\n\0\0\0"), file(b"f", b""), end()]));
    case(cs, "pax empty body", cat(&[ext(b'x', b""), file(b"f", b""), end()]));
    case(cs, "pax length not a number", cat(&[ext(b'x', b"x a=b\n"), file(b"f", b""), end()]));
    case(
        cs,
        "pax two headers last wins",
        cat(&[pax(&[(b"path", b"one")]), pax(&[(b"uid", b"7")]), file(b"f", b""), end()]),
    );
    case(cs, "pax header at end", cat(&[pax(&[(b"path", b"x")]), end()]));
    case(cs, "pax header then eof", pax(&[(b"path", b"x")]));
    case(
        cs,
        "global header",
        cat(&[ext(b'g', &records(&[(b"path", b"g"), (b"comment", b"c")])), file(b"f", b"x"), end()]),
    );
    case(cs, "global header bad record", cat(&[ext(b'g', b"9 a\n"), file(b"f", b"x"), end()]));
    case(
        cs,
        "pax header negative size",
        cat(&[H::new(b"p", b'x', 0).base256(SIZE, -1).done().to_vec(), file(b"f", b""), end()]),
    );

    // --- the smuggling differentials of issue 14
    case(
        cs,
        "newline smuggles size",
        cat(&[
            pax(&[(b"SCHILY.xattr.user.n", b"x\n11 size=0\n")]),
            member(H::new(b"innocent", b'0', 1024).done(), hidden),
            end(),
        ]),
    );
    case(
        cs,
        "newline smuggles uid",
        cat(&[
            pax(&[(b"SCHILY.xattr.user.n", b"x\n10 uid=0\n10 gid=0\n")]),
            member(H::new(b"su", b'0', 0).mode(0o4755).uid(3_000_000).done(), b""),
            end(),
        ]),
    );
    case(
        cs,
        "newline smuggles path",
        cat(&[pax(&[(b"comment", b"x\n15 path=/etc/x\n")]), file(b"innocent", b"x"), end()]),
    );

    // --- GNU long names
    let longn = vec![b'l'; 300];
    case(cs, "gnu long name", cat(&[long(b'L', &longn), file(b"short", b"x"), end()]));
    case(
        cs,
        "gnu long link",
        cat(&[long(b'K', &longn), member(H::new(b"s", b'2', 0).set(LINK, b"short").done(), b""), end()]),
    );
    case(
        cs,
        "gnu long name beats pax path",
        cat(&[pax(&[(b"path", b"from-pax")]), long(b'L', b"from-gnu"), file(b"h", b""), end()]),
    );
    case(cs, "gnu long name NUL inside", cat(&[long(b'L', b"ab\0cd"), file(b"h", b""), end()]));
    case(cs, "gnu empty long name", cat(&[long(b'L', b""), file(b"h", b""), end()]));
    case(cs, "gnu two long names", cat(&[long(b'L', b"one"), long(b'L', b"two"), file(b"h", b""), end()]));
    case(
        cs,
        "gnu long name exactly 1 MiB",
        cat(&[
            member(H::new(b"././@LongLink", b'L', 1 << 20).gnu().done(), &vec![b'a'; 1 << 20]),
            file(b"h", b""),
            end(),
        ]),
    );
    case(
        cs,
        "gnu long name over 1 MiB",
        cat(&[
            member(H::new(b"././@LongLink", b'L', (1 << 20) + 1).gnu().done(), &vec![b'a'; (1 << 20) + 1]),
            file(b"h", b""),
            end(),
        ]),
    );
    case(
        cs,
        "gnu long name 512 MiB claimed",
        cat(&[H::new(b"././@LongLink", b'L', 512 << 20).gnu().done().to_vec(), vec![b'a'; 2048]]),
    );
    case(
        cs,
        "pax header over 1 MiB",
        cat(&[ext(b'x', &records(&[(b"comment", &vec![b'c'; 1 << 20])])), file(b"h", b""), end()]),
    );
    case(
        cs,
        "gnu long name truncated",
        cat(&[H::new(b"././@LongLink", b'L', 5000).gnu().done().to_vec(), vec![b'a'; 100]]),
    );

    // --- ends and truncation
    let two = cat(&[file(b"a", &[7; 100]), file(b"b", b"")]);
    case(cs, "no end blocks", two.clone());
    case(cs, "one end block", cat(&[two.clone(), vec![0; 512]]));
    case(cs, "eof inside padding", two[..512 + 300].to_vec());
    case(cs, "eof inside data", two[..512 + 50].to_vec());
    case(cs, "eof inside header", two[..1024 + 100].to_vec());
    case(cs, "eof after header with data owed", two[..512].to_vec());
    case(cs, "zero block then garbage", cat(&[two.clone(), vec![0; 512], vec![1; 512]]));
    case(cs, "zero block then partial", cat(&[two.clone(), vec![0; 512], vec![0; 100]]));
    case(cs, "garbage after end", cat(&[two.clone(), end(), b"trailing garbage".to_vec()]));
    case(cs, "partial block only", vec![b'x'; 100]);
    case(cs, "junk block", vec![b'x'; 1024]);

    // --- sparse files
    let chunks = b"AAAAABBB";
    case(cs, "gnu sparse", cat(&[gnu_sparse(b"sp", &[(0, 5), (100, 3)], 200, chunks), end()]));
    let many: Vec<(u64, u64)> = (0..30).map(|i| (i * 1000, 1)).collect();
    case(cs, "gnu sparse extended", cat(&[gnu_sparse(b"sp", &many, 40_000, &[b'z'; 30]), end()]));
    case(cs, "gnu sparse overlapping", cat(&[gnu_sparse(b"sp", &[(0, 5), (3, 3)], 200, chunks), end()]));
    case(cs, "gnu sparse past size", cat(&[gnu_sparse(b"sp", &[(0, 5), (199, 3)], 200, chunks), end()]));
    case(cs, "gnu sparse data short", cat(&[gnu_sparse(b"sp", &[(0, 5), (100, 10)], 200, chunks), end()]));
    case(cs, "gnu sparse data long", cat(&[gnu_sparse(b"sp", &[(0, 2)], 200, chunks), end()]));
    let mut not_gnu = gnu_sparse(b"sp", &[(0, 5)], 200, b"AAAAA");
    not_gnu[257..265].copy_from_slice(b"ustar\x0000");
    let fixed = H(not_gnu[..512].try_into().unwrap_or([0; 512])).done();
    not_gnu[..512].copy_from_slice(&fixed);
    case(cs, "gnu sparse without gnu magic", cat(&[not_gnu, end()]));
    let sparse_01: &[(&[u8], &[u8])] = &[
        (b"GNU.sparse.major", b"0"),
        (b"GNU.sparse.minor", b"1"),
        (b"GNU.sparse.name", b"real-sparse"),
        (b"GNU.sparse.size", b"200"),
        (b"GNU.sparse.numblocks", b"2"),
        (b"GNU.sparse.map", b"0,5,100,3"),
    ];
    case(
        cs,
        "pax sparse 0.1",
        cat(&[pax(sparse_01), member(H::new(b"GNUSparseFile.0/s", b'0', 8).done(), chunks), end()]),
    );
    case(
        cs,
        "pax sparse 0.1 bad numblocks",
        cat(&[
            pax(&[(b"GNU.sparse.map", b"0,5"), (b"GNU.sparse.numblocks", b"2"), (b"GNU.sparse.size", b"9")]),
            member(H::new(b"s", b'0', 5).done(), b"AAAAA"),
            end(),
        ]),
    );
    case(
        cs,
        "pax sparse 0.0",
        cat(&[
            pax(&[
                (b"GNU.sparse.size", b"200"),
                (b"GNU.sparse.numblocks", b"2"),
                (b"GNU.sparse.offset", b"0"),
                (b"GNU.sparse.numbytes", b"5"),
                (b"GNU.sparse.offset", b"100"),
                (b"GNU.sparse.numbytes", b"3"),
            ]),
            member(H::new(b"s", b'0', 8).done(), chunks),
            end(),
        ]),
    );
    case(
        cs,
        "pax sparse 0.0 out of order",
        cat(&[
            pax(&[(b"GNU.sparse.numbytes", b"5"), (b"GNU.sparse.offset", b"0")]),
            member(H::new(b"s", b'0', 5).done(), b"AAAAA"),
            end(),
        ]),
    );
    let mut map10 = b"2\n0\n5\n100\n3\n".to_vec();
    map10.resize(512, 0);
    map10.extend_from_slice(chunks);
    let sparse_10: &[(&[u8], &[u8])] = &[
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", b"s10"),
        (b"GNU.sparse.realsize", b"200"),
    ];
    case(
        cs,
        "pax sparse 1.0",
        cat(&[pax(sparse_10), member(H::new(b"GNUSparseFile.0/s", b'0', map10.len() as u64).done(), &map10), end()]),
    );
    case(
        cs,
        "pax sparse 1.0 map truncated",
        cat(&[pax(sparse_10), member(H::new(b"GNUSparseFile.0/s", b'0', 100).done(), &map10[..100]), end()]),
    );
    case(
        cs,
        "pax sparse unknown version",
        cat(&[pax(&[(b"GNU.sparse.major", b"2"), (b"GNU.sparse.minor", b"0")]), file(b"s", b"plain"), end()]),
    );
    case(
        cs,
        "pax sparse on a dir",
        cat(&[
            pax(&[(b"GNU.sparse.map", b"0,1"), (b"GNU.sparse.numblocks", b"1"), (b"GNU.sparse.size", b"1")]),
            member(H::new(b"d", b'5', 0).done(), b""),
            end(),
        ]),
    );

    // --- seeded mutations of a valid archive: one header field garbled,
    // checksum fixed, so the field parsers are what decides.
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let fields = [NAME, MODE, UID, GID, SIZE, MTIME, LINK, MAGIC, UNAME, DEVMAJOR, DEVMINOR, PREFIX, 156..157];
    let alphabet: &[u8] = b"0123456789 \0\x80\xff-+/.abcx\n";
    for i in 0..60 {
        let field = fields[rng.gen_range(0..fields.len())].clone();
        let mut h = H::new(b"m/f", b'0', 4);
        let n = rng.gen_range(1..=field.len());
        let bytes: Vec<u8> = (0..n).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect();
        let at = field.start + rng.gen_range(0..field.len());
        for (k, b) in bytes.iter().enumerate() {
            if at + k < field.end {
                h.0[at + k] = *b;
            }
        }
        let tar = cat(&[
            member(H::new(b"m/", b'5', 0).done(), b""),
            member(h.done(), b"data"),
            file(b"m/after", b"z"),
            end(),
        ]);
        case(cs, &format!("mutation {i} of {field:?}"), tar);
    }
    c
}
