//! A strict parser of the OpenMetrics text format (which the Prometheus
//! server reads when `/metrics` answers `application/openmetrics-text`).
//! Any deviation is an error naming the line: unknown line kinds, bad names,
//! bad label syntax or escapes, unparsable values, samples outside their
//! family or with a suffix their type does not allow, families split or
//! declared twice, duplicate series, and histograms that are not cumulative,
//! not sorted, without `+Inf`, or whose `_count` differs from the `+Inf`
//! bucket.

use std::collections::{BTreeMap, BTreeSet};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug)]
pub struct Exposition {
    pub families: Vec<Family>,
}

impl Exposition {
    /// The value of the one sample `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {} samples", found.len());
        found.first().copied()
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" | "gaugehistogram" => &["_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Parse `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    if let Some(r) = rest.strip_prefix('}') {
        return Ok((labels, r));
    }
    loop {
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("newline in label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        } else {
            return Err("expected , or } after a label".into());
        }
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')) => {
            s.parse().map_err(|e| format!("bad value {s:?}: {e}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

/// Parse and check `text`; the error names the offending line.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let body = text.strip_suffix('\n').ok_or("the exposition does not end with a newline")?;
    let body = body.strip_suffix("# EOF").ok_or("the exposition does not end with # EOF")?;
    let mut families: Vec<Family> = Vec::new();
    let mut declared: BTreeSet<String> = BTreeSet::new();
    let mut series: BTreeSet<(String, Labels)> = BTreeSet::new();
    for (i, line) in body.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", i + 1);
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, name, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
            if !valid_metric_name(name) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            let current = families.last().filter(|f| f.name == name && f.samples.is_empty());
            match keyword {
                "TYPE" => {
                    let kind = arg.ok_or_else(|| err("TYPE without a type".into()))?;
                    let known =
                        ["counter", "gauge", "histogram", "gaugehistogram", "stateset", "info", "summary", "unknown"];
                    if !known.contains(&kind) {
                        return Err(err(format!("unknown type {kind}")));
                    }
                    if !declared.insert(name.to_owned()) {
                        return Err(err("family declared twice".into()));
                    }
                    families.push(Family { name: name.to_owned(), kind: kind.to_owned(), samples: Vec::new() });
                }
                "HELP" => {
                    if arg.is_none() {
                        return Err(err("HELP without text".into()));
                    }
                }
                "UNIT" => {
                    let unit = arg.ok_or_else(|| err("UNIT without a unit".into()))?;
                    if current.is_none() || !name.ends_with(&format!("_{unit}")) {
                        return Err(err("UNIT outside its family, or the name does not end with the unit".into()));
                    }
                }
                _ => return Err(err(format!("unknown comment {keyword}"))),
            }
            continue;
        }
        if line.is_empty() {
            return Err(err("empty line".into()));
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (Labels::new(), &line[name_end..])
        };
        let mut fields =
            rest.strip_prefix(' ').ok_or_else(|| err("expected a space before the value".into()))?.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(err)?;
        if let Some(ts) = fields.next() {
            parse_value(ts).map_err(err)?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let family = families.last_mut().ok_or_else(|| err("a sample before any TYPE".into()))?;
        let suffix =
            name.strip_prefix(family.name.as_str()).ok_or_else(|| err(format!("outside family {}", family.name)))?;
        if !suffixes(&family.kind).contains(&suffix) {
            return Err(err(format!("suffix {suffix:?} not allowed for a {}", family.kind)));
        }
        if !series.insert((name.to_owned(), labels.clone())) {
            return Err(err("duplicate series".into()));
        }
        if family.kind == "counter" && (value < 0.0 || value.is_nan()) {
            return Err(err("negative counter".into()));
        }
        family.samples.push(Sample { name: name.to_owned(), labels, value });
    }
    for f in families.iter().filter(|f| f.kind == "histogram") {
        check_histogram(f)?;
    }
    Ok(Exposition { families })
}

fn check_histogram(f: &Family) -> Result<(), String> {
    let mut groups: BTreeMap<Labels, Vec<&Sample>> = BTreeMap::new();
    for s in &f.samples {
        let mut key = s.labels.clone();
        key.remove("le");
        groups.entry(key).or_default().push(s);
    }
    for (labels, samples) in groups {
        let err = |m: &str| format!("histogram {} {labels:?}: {m}", f.name);
        let one = |suffix: &str| -> Result<f64, String> {
            let name = format!("{}{suffix}", f.name);
            let v: Vec<f64> = samples.iter().filter(|s| s.name == name).map(|s| s.value).collect();
            if v.len() == 1 { Ok(v[0]) } else { Err(err(&format!("{} {suffix} samples", v.len()))) }
        };
        let (count, sum) = (one("_count")?, one("_sum")?);
        if sum.is_nan() {
            return Err(err("_sum is NaN"));
        }
        let bucket_name = format!("{}_bucket", f.name);
        let buckets: Vec<&&Sample> = samples.iter().filter(|s| s.name == bucket_name).collect();
        let mut last = (f64::NEG_INFINITY, 0.0);
        for b in &buckets {
            let le = b.labels.get("le").ok_or_else(|| err("a bucket without le"))?;
            let le = parse_value(le).map_err(|e| err(&e))?;
            if le <= last.0 || b.value < last.1 || b.value.fract() != 0.0 {
                return Err(err("buckets not sorted, not cumulative, or not whole"));
            }
            last = (le, b.value);
        }
        if last.0 != f64::INFINITY {
            return Err(err("no +Inf bucket"));
        }
        if last.1 != count {
            return Err(err("_count differs from the +Inf bucket"));
        }
    }
    Ok(())
}

#[test]
fn the_checker_rejects_what_it_should() {
    let ok = "# TYPE a counter\na_total 1\n# TYPE h histogram\nh_sum 1.5\nh_count 2\n\
              h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n";
    let parsed = parse(ok).unwrap();
    assert_eq!(parsed.value("a_total", &[]), Some(1.0));
    let bad = [
        "a_total 1\n# EOF\n",
        "# TYPE a counter\na_total 1\n",
        "# TYPE a counter\na 1\n# EOF\n",
        "# TYPE a counter\na_total -1\n# EOF\n",
        "# TYPE a gauge\na{x=\"1} 1\n# EOF\n",
        "# TYPE a gauge\na{x=\"\\t\"} 1\n# EOF\n",
        "# TYPE a gauge\na{1x=\"1\"} 1\n# EOF\n",
        "# TYPE a gauge\na one\n# EOF\n",
        "# TYPE a gauge\na 1\na 2\n# EOF\n",
        "# TYPE a gauge\n# TYPE b gauge\n# TYPE a gauge\n# EOF\n",
        "# TYPE a gauge\n# UNIT a seconds\n# EOF\n",
        "# TYPE h histogram\nh_sum 1\nh_count 2\nh_bucket{le=\"1\"} 1\n# EOF\n",
        "# TYPE h histogram\nh_sum 1\nh_count 3\nh_bucket{le=\"+Inf\"} 2\n# EOF\n",
        "# TYPE h histogram\nh_sum 1\nh_count 2\nh_bucket{le=\"2\"} 2\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 2\n# EOF\n",
        "# TYPE h histogram\nh_sum 1\nh_count 2\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n# EOF\n",
    ];
    for text in bad {
        assert!(parse(text).is_err(), "accepted: {text:?}");
    }
}
