//! Progress bars on stderr for tar transfers, shown only when stderr is a
//! terminal: pipes, files and tests never see an escape code.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};

const BAR: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}";
const SPINNER: &str = "{spinner} {msg} {bytes} {binary_bytes_per_sec}";

/// A bar for a transfer of `total` bytes (a spinner when unknown), hidden
/// unless stderr is a terminal. It clears itself when dropped.
pub fn transfer(what: &str, total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(style(BAR, ProgressStyle::default_bar())),
        None => {
            let bar = ProgressBar::new_spinner().with_style(style(SPINNER, ProgressStyle::default_spinner()));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        }
    };
    bar.with_message(what.to_owned()).with_finish(ProgressFinish::AndClear)
}

fn style(template: &str, fallback: ProgressStyle) -> ProgressStyle {
    ProgressStyle::with_template(template).map(|s| s.progress_chars("=> ")).unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_valid() {
        for t in [BAR, SPINNER] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }
}
