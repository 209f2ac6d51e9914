//! Human output: aligned plain-text tables, short ids, sizes, and the one
//! writer of stdout lines.

use std::io::{self, Write};

/// Write one line of command output. A closed stdout (the reader of a
/// pipe went away: `layerctl layer ls | head -1`) ends the process quietly
/// with exit 0; any other write error ends it with a message and exit 1.
pub fn line(args: std::fmt::Arguments<'_>) {
    text(&format!("{args}\n"));
}

/// Write `s` as is to stdout, as [`line`] does.
pub fn text(s: &str) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        drop(out);
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("layerctl: write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `sha256:` and the first 12 hex digits; anything else unchanged.
pub fn short_id(id: &str) -> String {
    match id.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}", &hex[..12]),
        _ => id.to_owned(),
    }
}

/// Sizes as Docker shows them: decimal units, three significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes}B");
    }
    // Precision loss is irrelevant for display.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.5 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if value < 9.995 {
        2
    } else if value < 99.95 {
        1
    } else {
        0
    };
    format!("{value:.digits$}{}", UNITS[unit])
}

/// Columns left-aligned, separated by three spaces, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids() {
        let id = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_id(&id), "sha256:abababababab");
        assert_eq!(short_id("web"), "web");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1.00kB");
        assert_eq!(human_size(1_234_567), "1.23MB");
        assert_eq!(human_size(45_600_000), "45.6MB");
        assert_eq!(human_size(999_999), "1.00MB");
        assert_eq!(human_size(123_000_000_000), "123GB");
    }

    #[test]
    fn tables_align() {
        let t = table(&["NAME", "SIZE"], &[vec!["a".into(), "1B".into()], vec!["longer".into(), "2kB".into()]]);
        assert_eq!(t, "NAME     SIZE\na        1B\nlonger   2kB\n");
        assert_eq!(table(&["A", "B"], &[]), "A   B\n");
    }
}
