//! `mxguard compliance summary`: how mail left, counted from compliance record files — the
//! table an auditor asks for. Attempts are counted by `tls`, `policy`, `status` and recipient
//! domain, and in rows of (domain, policy, tls, status).
//!
//! Files are read a line at a time (a `.gz` file, as logrotate leaves them, is decompressed on
//! the way), so their size does not matter. A line that is not a record (cut short by a full
//! disk, written by hand) is skipped and counted, never fatal.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Which records count.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Records before this time.
    pub until: Option<OffsetDateTime>,
    /// Only recipients at this domain (any case; U-labels and A-labels alike).
    pub domain: Option<String>,
}

/// A time on the command line: RFC 3339 (`2026-12-07T10:00:00Z`) or a date (`2026-12-07`,
/// meaning its start, UTC).
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &date_format)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a date (YYYY-MM-DD)"))
}

/// The fields a summary needs; everything else in a record is ignored.
#[derive(Deserialize)]
struct Counted {
    time: String,
    to: String,
    tls: String,
    policy: String,
    status: String,
}

/// Counts by one fact.
pub type Counts = BTreeMap<String, u64>;

/// One domain's counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DomainCounts {
    pub total: u64,
    pub by_tls: Counts,
    pub by_policy: Counts,
    pub by_status: Counts,
}

/// One row of the table: attempts to `domain` under `policy` with `tls` that ended `status`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Row {
    pub domain: String,
    pub policy: String,
    pub tls: String,
    pub status: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Records counted.
    pub records: u64,
    /// Lines that were not records.
    pub skipped: u64,
    pub since: Option<String>,
    pub until: Option<String>,
    pub domain: Option<String>,
    pub by_tls: Counts,
    pub by_policy: Counts,
    pub by_status: Counts,
    pub by_domain: BTreeMap<String, DomainCounts>,
    pub rows: Vec<Row>,
}

/// Domains compare as lower-case A-labels, so that `Example.NET`, `example.net` and a
/// U-label spelling count as one.
fn domain_key(domain: &str) -> String {
    let lower = domain.trim_end_matches('.').to_lowercase();
    idna::domain_to_ascii(&lower).unwrap_or(lower)
}

/// Reads every file and counts what `filter` lets through.
pub fn summarize(files: &[PathBuf], filter: &Filter) -> Result<Summary, String> {
    let mut tally = Tally::new(filter);
    for path in files {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let reader: Box<dyn Read> = match path.extension().is_some_and(|e| e == "gz") {
            true => Box::new(flate2::read::MultiGzDecoder::new(file)),
            false => Box::new(file),
        };
        for line in BufReader::new(reader).split(b'\n') {
            let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            tally.line(&line);
        }
    }
    Ok(tally.finish())
}

struct Tally<'a> {
    filter: &'a Filter,
    domain: Option<String>,
    summary: Summary,
    rows: BTreeMap<(String, String, String, String), u64>,
}

impl<'a> Tally<'a> {
    fn new(filter: &'a Filter) -> Tally<'a> {
        let show = |t: &Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
        Tally {
            filter,
            domain: filter.domain.as_deref().map(domain_key),
            summary: Summary {
                since: show(&filter.since),
                until: show(&filter.until),
                domain: filter.domain.as_deref().map(domain_key),
                ..Summary::default()
            },
            rows: BTreeMap::new(),
        }
    }

    fn line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let Ok(record) = serde_json::from_slice::<Counted>(line) else {
            self.summary.skipped += 1;
            return;
        };
        let Ok(time) = OffsetDateTime::parse(&record.time, &Rfc3339) else {
            self.summary.skipped += 1;
            return;
        };
        if self.filter.since.is_some_and(|since| time < since)
            || self.filter.until.is_some_and(|until| time >= until)
        {
            return;
        }
        let domain = domain_key(record.to.rsplit_once('@').map_or("", |(_, d)| d));
        if self.domain.as_ref().is_some_and(|d| *d != domain) {
            return;
        }
        let s = &mut self.summary;
        s.records += 1;
        *s.by_tls.entry(record.tls.clone()).or_default() += 1;
        *s.by_policy.entry(record.policy.clone()).or_default() += 1;
        *s.by_status.entry(record.status.clone()).or_default() += 1;
        let d = s.by_domain.entry(domain.clone()).or_default();
        d.total += 1;
        *d.by_tls.entry(record.tls.clone()).or_default() += 1;
        *d.by_policy.entry(record.policy.clone()).or_default() += 1;
        *d.by_status.entry(record.status.clone()).or_default() += 1;
        *self
            .rows
            .entry((domain, record.policy, record.tls, record.status))
            .or_default() += 1;
    }

    fn finish(mut self) -> Summary {
        self.summary.rows = self
            .rows
            .into_iter()
            .map(|((domain, policy, tls, status), count)| Row {
                domain,
                policy,
                tls,
                status,
                count,
            })
            .collect();
        self.summary
    }
}

/// The summary as one JSON document.
pub fn to_json(summary: &Summary) -> String {
    serde_json::to_string_pretty(summary)
        .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
}

/// The rows as CSV (RFC 4180), with a header line.
pub fn to_csv(summary: &Summary) -> String {
    let mut out = String::from("domain,policy,tls,status,count\r\n");
    for r in &summary.rows {
        out.push_str(&format!(
            "{},{},{},{},{}\r\n",
            csv_field(&r.domain),
            csv_field(&r.policy),
            csv_field(&r.tls),
            csv_field(&r.status),
            r.count
        ));
    }
    out
}

fn csv_field(text: &str) -> String {
    match text.contains([',', '"', '\r', '\n']) {
        true => format!("\"{}\"", text.replace('"', "\"\"")),
        false => text.to_string(),
    }
}

/// The summary as text: totals, then the table.
pub fn to_text(summary: &Summary) -> String {
    let mut out = format!("recipient attempts: {}", summary.records);
    if summary.skipped > 0 {
        out.push_str(&format!(
            " ({} line(s) that are not records skipped)",
            summary.skipped
        ));
    }
    out.push('\n');
    let window = [
        summary.since.as_ref().map(|t| format!("since {t}")),
        summary.until.as_ref().map(|t| format!("until {t}")),
        summary.domain.as_ref().map(|d| format!("domain {d}")),
    ];
    let window: Vec<String> = window.into_iter().flatten().collect();
    if !window.is_empty() {
        out.push_str(&format!("({})\n", window.join(", ")));
    }
    for (name, counts) in [
        ("tls", &summary.by_tls),
        ("policy", &summary.by_policy),
        ("status", &summary.by_status),
    ] {
        out.push_str(&format!("{name:<7}{}\n", shares(counts, summary.records)));
    }
    if summary.rows.is_empty() {
        return out;
    }
    let width = |f: fn(&Row) -> &str, title: &str| {
        summary
            .rows
            .iter()
            .map(|r| f(r).chars().count())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let (wd, wp, wt, ws) = (
        width(|r| &r.domain, "DOMAIN"),
        width(|r| &r.policy, "POLICY"),
        width(|r| &r.tls, "TLS"),
        width(|r| &r.status, "STATUS"),
    );
    out.push('\n');
    out.push_str(&format!(
        "{:<wd$}  {:<wp$}  {:<wt$}  {:<ws$}  COUNT\n",
        "DOMAIN", "POLICY", "TLS", "STATUS"
    ));
    for r in &summary.rows {
        out.push_str(&format!(
            "{:<wd$}  {:<wp$}  {:<wt$}  {:<ws$}  {}\n",
            r.domain, r.policy, r.tls, r.status, r.count
        ));
    }
    out
}

/// `verified 8 (80.0%), none 2 (20.0%)`, the largest first.
fn shares(counts: &Counts, total: u64) -> String {
    let mut items: Vec<(&String, &u64)> = counts.iter().collect();
    items.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let items: Vec<String> = items
        .into_iter()
        .map(|(name, n)| {
            format!(
                "{name} {n} ({:.1}%)",
                *n as f64 * 100.0 / total.max(1) as f64
            )
        })
        .collect();
    match items.is_empty() {
        true => "-".to_string(),
        false => items.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(time: &str, to: &str, tls: &str, policy: &str, status: &str) -> String {
        format!(
            "{{\"time\":\"{time}\",\"queue_id\":\"X\",\"to\":\"{to}\",\"tls\":\"{tls}\",\
             \"policy\":\"{policy}\",\"status\":\"{status}\",\"reply\":\"250 ok\"}}\n"
        )
    }

    fn file(lines: &[String]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, lines.concat().as_bytes()).unwrap();
        f
    }

    fn sample() -> tempfile::NamedTempFile {
        file(&[
            record(
                "2026-12-06T23:59:59Z",
                "a@dane.test",
                "verified",
                "dane",
                "sent",
            ),
            record(
                "2026-12-07T00:00:00Z",
                "b@DANE.test",
                "verified",
                "dane",
                "sent",
            ),
            record(
                "2026-12-07T10:00:00.5Z",
                "c@plain.test",
                "none",
                "none",
                "deferred",
            ),
            "{\"time\":\"2026-12-07T10:00:00Z\",\"to\":\"cut short".to_string(),
            "\n".to_string(),
            record(
                "2026-12-07T11:00:00Z",
                "d@plain.test",
                "unverified",
                "none",
                "sent",
            ),
            record(
                "2026-12-08T00:00:00Z",
                "e@sts.test",
                "verified",
                "mta-sts",
                "sent",
            ),
        ])
    }

    #[test]
    fn counts_by_each_fact_and_in_rows() {
        let f = sample();
        let s = summarize(&[f.path().to_path_buf()], &Filter::default()).unwrap();
        assert_eq!((s.records, s.skipped), (5, 1));
        assert_eq!(s.by_tls["verified"], 3);
        assert_eq!(s.by_policy["none"], 2);
        assert_eq!(s.by_status["deferred"], 1);
        // One domain, however its name was cased.
        assert_eq!(s.by_domain["dane.test"].total, 2);
        assert_eq!(
            s.rows[0],
            Row {
                domain: "dane.test".into(),
                policy: "dane".into(),
                tls: "verified".into(),
                status: "sent".into(),
                count: 2
            }
        );
        assert_eq!(s.rows.len(), 4);
    }

    #[test]
    fn since_is_inclusive_until_exclusive_domain_exact() {
        let f = sample();
        let filter = Filter {
            since: Some(parse_time("2026-12-07").unwrap()),
            until: Some(parse_time("2026-12-08T00:00:00Z").unwrap()),
            domain: None,
        };
        let s = summarize(&[f.path().to_path_buf()], &filter).unwrap();
        assert_eq!(s.records, 3, "{s:?}");
        let filter = Filter {
            domain: Some("Plain.Test".into()),
            ..Filter::default()
        };
        let s = summarize(&[f.path().to_path_buf()], &filter).unwrap();
        assert_eq!(s.records, 2);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn gzip_files_are_read_and_outputs_agree() {
        let mut gz = tempfile::Builder::new()
            .suffix(".jsonl.gz")
            .tempfile()
            .unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(
            &mut enc,
            record("2026-12-07T00:00:00Z", "x@a,b.test", "none", "none", "sent").as_bytes(),
        )
        .unwrap();
        std::io::Write::write_all(gz.as_file_mut(), &enc.finish().unwrap()).unwrap();
        let s = summarize(&[gz.path().to_path_buf()], &Filter::default()).unwrap();
        assert_eq!(s.records, 1);
        assert_eq!(
            to_csv(&s),
            "domain,policy,tls,status,count\r\n\"a,b.test\",none,none,sent,1\r\n"
        );
        let json: serde_json::Value = serde_json::from_str(&to_json(&s)).unwrap();
        assert_eq!(json["rows"][0]["count"], 1);
        assert_eq!(json["by_status"]["sent"], 1);
        let text = to_text(&s);
        assert!(text.starts_with("recipient attempts: 1\n"), "{text}");
        assert!(text.contains("tls    none 1 (100.0%)"), "{text}");
    }
}
