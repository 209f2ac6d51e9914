//! `layerctl check [--repair] [--verify]`.

use std::process::ExitCode;

use hyper::Method;
use layer::{CheckOpts, CheckReport, Problem};
use serde_json::Value;

use super::client::{CliResult, Client};
use super::{Format, from_value, output, print_json};

/// Run a check; exit 1 if a problem remains unrepaired.
pub async fn run(client: &Client, opts: CheckOpts, format: Format) -> CliResult<ExitCode> {
    let v: Value = client.call_json(Method::POST, "/v1/check", &opts).await?;
    let report: CheckReport = from_value(v.clone())?;
    if format == Format::Json {
        print_json(&v)?;
    } else {
        output::text(&human(&report));
    }
    let clean = report.problems.iter().all(|p| p.repaired);
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One line per problem, then a summary line.
pub fn human(report: &CheckReport) -> String {
    let mut out = String::new();
    for p in &report.problems {
        out.push_str(&problem_line(p));
        out.push('\n');
    }
    let checked = format!("{} layers, {} rw layers checked", report.layers_checked, report.rw_layers_checked);
    let repaired = report.problems.iter().filter(|p| p.repaired).count();
    let summary = match (report.problems.len(), repaired) {
        (0, _) => "no problems".to_owned(),
        (n, 0) => format!("{n} problem{}", plural(n)),
        (n, r) => format!("{n} problem{}, {r} repaired", plural(n)),
    };
    out.push_str(&format!("{checked}: {summary}\n"));
    out
}

/// `kind subject: detail [repaired]`.
pub fn problem_line(p: &Problem) -> String {
    let mut line = format!("{} {}: {}", p.kind, p.subject, p.detail);
    if p.repaired {
        line.push_str(" [repaired]");
    }
    line
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str, repaired: bool) -> Problem {
        Problem { kind: kind.into(), subject: "sha256:ab".into(), detail: "gone".into(), repaired }
    }

    #[test]
    fn a_clean_report_is_one_line() {
        let r = CheckReport { layers_checked: 3, rw_layers_checked: 1, problems: vec![] };
        assert_eq!(human(&r), "3 layers, 1 rw layers checked: no problems\n");
    }

    #[test]
    fn problems_get_a_line_each() {
        let r = CheckReport {
            layers_checked: 2,
            rw_layers_checked: 0,
            problems: vec![problem("missing_driver_dir", false), problem("orphaned_driver_dir", true)],
        };
        assert_eq!(
            human(&r),
            "missing_driver_dir sha256:ab: gone\norphaned_driver_dir sha256:ab: gone [repaired]\n\
             2 layers, 0 rw layers checked: 2 problems, 1 repaired\n"
        );
        let r = CheckReport { problems: vec![problem("x", false)], ..r };
        assert!(human(&r).ends_with("checked: 1 problem\n"));
    }
}
