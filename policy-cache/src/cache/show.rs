//! What `mxguard policy show <domain>` prints: the cached policy, the negative entry and the
//! recorded failures, one fact per line, times in RFC 3339 (UTC).

use super::Entry;
use crate::store::Negative;
use crate::FailureRecord;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Recorded failures listed in full; the rest are only counted.
const FAILURES_SHOWN: usize = 5;

pub(crate) fn render(
    domain: &str,
    entry: Option<&Entry>,
    negative: Option<&Negative>,
    failures: &[FailureRecord],
) -> String {
    let mut out = format!("domain: {domain}\n");
    match entry {
        Some(entry) => policy_lines(&mut out, entry),
        None => out.push_str("policy: none cached\n"),
    }
    match negative {
        Some(n) => {
            let _ = writeln!(
                out,
                "last fetch failure: {} (id {}): {}",
                rfc3339(n.failed_at),
                n.id,
                n.error
            );
        }
        None => out.push_str("last fetch failure: none\n"),
    }
    failure_lines(&mut out, failures);
    out
}

fn policy_lines(out: &mut String, entry: &Entry) {
    let active = &entry.active;
    let policy = &active.policy;
    let mx: Vec<&str> = policy.mx.iter().map(|p| p.0.as_str()).collect();
    let mx = if mx.is_empty() {
        "(none)".to_string()
    } else {
        mx.join(", ")
    };
    let _ = writeln!(out, "id: {}", active.id);
    let _ = writeln!(out, "mode: {}", policy.mode.as_str());
    let _ = writeln!(out, "mx: {mx}");
    let _ = writeln!(out, "max_age: {}", policy.max_age);
    let _ = writeln!(out, "fetched: {}", rfc3339(active.fetched_at));
    let _ = writeln!(out, "expires: {}", rfc3339(active.expires_at));
    let _ = writeln!(out, "refresh due: {}", rfc3339(entry.refresh_at()));
    let _ = writeln!(out, "last used: {}", rfc3339(entry.last_used()));
}

fn failure_lines(out: &mut String, failures: &[FailureRecord]) {
    let _ = writeln!(out, "recorded failures: {}", failures.len());
    let start = failures.len().saturating_sub(FAILURES_SHOWN);
    for f in &failures[start..] {
        let _ = writeln!(
            out,
            "  {} {} mode {} policy {}: {} {}",
            rfc3339(f.at),
            f.mx_host,
            f.mode,
            f.policy_id,
            f.result_type,
            f.detail
        );
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`; times before 1970 print as the epoch.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_date(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01, by 400-year eras (146097 days)
/// counted from a year that starts in March, so the leap day falls at the end.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> String {
        rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(at(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
