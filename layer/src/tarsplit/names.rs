//! Pure helpers on tar member names (raw bytes, `/`-separated).

/// Lexically clean a name like Go's `filepath.Clean`: collapse repeated `/`,
/// drop `.` components, resolve `..` against earlier components, drop any
/// trailing `/`. An empty result is `.` (or `/` for a rooted name).
pub(crate) fn clean(name: &[u8]) -> Vec<u8> {
    let rooted = name.first() == Some(&b'/');
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => match parts.last() {
                Some(&last) if last != b".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(part),
            },
            _ => parts.push(part),
        }
    }
    let mut out = Vec::with_capacity(name.len());
    if rooted {
        out.push(b'/');
    }
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

/// The components of a name that must resolve beneath a root, by the
/// extractor's rule (`graphdriver::archive::member_components`, Docker's):
/// a leading `/` is dropped, `..` cancels the previous component and may
/// not climb above the root, NUL is refused, `.` and repeated or trailing
/// `/` vanish. The error says why the name was refused.
pub(crate) fn relative_components(name: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    let parts = graphdriver::archive::member_components(name)?;
    if parts.is_empty() {
        return Err("name does not name a file beneath the root");
    }
    Ok(parts)
}

/// The name a member lands on beneath the root (`.` for the root), or Go's
/// lexical [`clean`] for names the extractor refuses anyway.
pub(crate) fn key(name: &[u8]) -> Vec<u8> {
    match graphdriver::archive::member_components(name) {
        Ok(parts) if parts.is_empty() => b".".to_vec(),
        Ok(parts) => parts.join(&b'/'),
        Err(_) => clean(name),
    }
}

/// What an AUFS whiteout name removes: `d/.wh.x` removes `d/x`. Opaque
/// markers and other `.wh..wh.` metadata remove nothing named here. `clean`
/// is a cleaned name.
pub(crate) fn whiteout_target(clean: &[u8]) -> Option<Vec<u8>> {
    let (dir, base) = match clean.iter().rposition(|&b| b == b'/') {
        Some(i) => (&clean[..=i], &clean[i + 1..]),
        None => (&b""[..], clean),
    };
    let victim = base.strip_prefix(b".wh.")?;
    if victim.is_empty() || victim.starts_with(b".wh.") {
        return None;
    }
    let mut out = dir.to_vec();
    out.extend_from_slice(victim);
    Some(out)
}

/// The prefix shared by every name beneath the cleaned name `clean`.
pub(crate) fn descendant_prefix(clean: &[u8]) -> Vec<u8> {
    match clean {
        b"." => Vec::new(),
        b"/" => b"/".to_vec(),
        _ => {
            let mut p = clean.to_vec();
            p.push(b'/');
            p
        }
    }
}

/// A name for messages: lossy UTF-8, quoted and escaped, cut after 256
/// bytes (a name may be a megabyte long).
pub(crate) fn show(name: &[u8]) -> String {
    graphdriver::archive::show_bytes(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go() {
        let cases: &[(&str, &str)] = &[
            ("", "."),
            (".", "."),
            ("./", "."),
            ("a", "a"),
            ("a/", "a"),
            ("./a/b/", "a/b"),
            ("a//b", "a/b"),
            ("a/./b", "a/b"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("a/../../b", "../b"),
            ("/", "/"),
            ("/../a", "/a"),
            ("//a/b/..", "/a"),
            ("abc/def/../../..", ".."),
        ];
        for (input, want) in cases {
            assert_eq!(String::from_utf8(clean(input.as_bytes())).unwrap(), *want, "clean({input:?})");
        }
    }

    #[test]
    fn relative_components_refuses_escapes() {
        assert_eq!(relative_components(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(relative_components(b"\xff/x").unwrap(), vec![&b"\xff"[..], b"x"]);
        assert_eq!(relative_components(b"/etc/passwd").unwrap(), vec![&b"etc"[..], b"passwd"]);
        assert_eq!(relative_components(b"a/../b").unwrap(), vec![&b"b"[..]]);
        assert_eq!(key(b"/etc//x/"), b"etc/x");
        assert_eq!(key(b"./"), b".");
        for bad in [&b"../x"[..], b"a/../..", b"a/..", b"", b".", b"./", b"a\0b"] {
            assert!(relative_components(bad).is_err(), "{}", show(bad));
        }
    }

    #[test]
    fn whiteouts() {
        assert_eq!(whiteout_target(b"d/.wh.x").as_deref(), Some(&b"d/x"[..]));
        assert_eq!(whiteout_target(b".wh.x").as_deref(), Some(&b"x"[..]));
        assert_eq!(whiteout_target(b"d/.wh..wh..opq"), None);
        assert_eq!(whiteout_target(b"d/.wh."), None);
        assert_eq!(whiteout_target(b"d/x.wh.y"), None);
        assert_eq!(descendant_prefix(b"."), b"");
        assert_eq!(descendant_prefix(b"a/b"), b"a/b/");
    }
}
