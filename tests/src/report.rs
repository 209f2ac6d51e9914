//! What a run produced: one [`CaseReport`] per case and the summary line.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The reason, then the dump of the relevant layers.
    Failed(String),
    /// Why the case did not run.
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct CaseReport {
    pub group: &'static str,
    pub name: &'static str,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

impl fmt::Display for CaseReport {
    /// One line: `ok   group::name (0.12s)`, `FAIL group::name (0.30s): first
    /// line of the reason`, `skip group::name: reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        match &self.outcome {
            Outcome::Passed => write!(f, "ok   {}::{} ({secs:.2}s)", self.group, self.name),
            Outcome::Failed(why) => {
                let first = why.lines().next().unwrap_or("");
                write!(f, "FAIL {}::{} ({secs:.2}s): {first}", self.group, self.name)
            }
            Outcome::Skipped(why) => write!(f, "skip {}::{}: {why}", self.group, self.name),
        }
    }
}

/// A whole run. `Display` prints one line per case, then the summary line
/// `N passed, M failed, K skipped` last. [`Report::details`] has the full
/// reasons and tree dumps of the failures.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub driver: String,
    pub cases: Vec<CaseReport>,
}

impl Report {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.outcome)).count()
    }

    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Passed)
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }

    /// No case failed (skips allowed).
    pub fn success(&self) -> bool {
        self.failed() == 0
    }

    /// `N passed, M failed, K skipped`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed, {} skipped", self.passed(), self.failed(), self.skipped())
    }

    /// Every failure in full: reason and the dump of the relevant layers.
    pub fn details(&self) -> String {
        let mut out = String::new();
        for c in &self.cases {
            if let Outcome::Failed(why) = &c.outcome {
                out += &format!("---- {}::{} on {} ----\n{why}\n\n", c.group, c.name, self.driver);
            }
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cases {
            writeln!(f, "{c}")?;
        }
        writeln!(f, "{}", self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_with_the_summary_line() {
        let case = |name, outcome| CaseReport { group: "g", name, outcome, elapsed: Duration::from_millis(5) };
        let r = Report {
            driver: "vfs".into(),
            cases: vec![
                case("a", Outcome::Passed),
                case("b", Outcome::Failed("broken\ndump".into())),
                case("c", Outcome::Skipped("no mounts".into())),
            ],
        };
        let text = r.to_string();
        assert_eq!(text.lines().last(), Some("1 passed, 1 failed, 1 skipped"));
        assert_eq!(text.lines().count(), 4);
        assert!(text.contains("FAIL g::b (0.01s): broken"));
        assert!(r.details().contains("dump"));
        assert!(!r.success());
    }
}
