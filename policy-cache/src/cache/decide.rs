//! The cache's decision, kept pure (RFC 8461 §3, §5.1): given what is cached, what failed
//! lately and what the TXT lookup said, use the cache, fetch, or give an answer without a policy.

use crate::store::Negative;
use crate::sts::record::{RecordError, StsRecord};
use crate::ActivePolicy;
use std::time::{Duration, SystemTime};

/// What the TXT lookup of `_mta-sts.<domain>` found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Txt {
    /// Exactly one valid STS record.
    Record(StsRecord),
    /// NXDOMAIN, NODATA, or no record beginning with `v=STSv1`.
    Absent,
    /// STS records, but not exactly one valid one.
    Invalid(RecordError),
    /// SERVFAIL, timeout, network error: we cannot tell now.
    DnsFailure(String),
}

/// Why a cached policy is used; for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kept {
    /// Unexpired, and the TXT id is the one it was fetched under.
    Current,
    /// The TXT record is gone or invalid; the policy holds until it expires.
    TxtGone,
    /// The TXT lookup failed; the policy holds until it expires.
    DnsFailure,
    /// The id changed, but a fetch for it failed recently (negative entry).
    RecentFailure,
    /// The id changed and the refetch just failed.
    FetchFailed,
}

/// What to do for one lookup.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Apply the cached policy.
    UseCached(Kept),
    /// Fetch the policy announced under `id`.
    Fetch { id: String },
    /// Deliver as though the domain had no MTA-STS.
    NoPolicy(String),
    /// Try again later.
    TempFail(String),
}

/// The decision for a lookup, before any fetch.
pub(crate) fn decide(
    cached: Option<&ActivePolicy>,
    negative: Option<&Negative>,
    txt: &Txt,
    now: SystemTime,
    negative_ttl: Duration,
) -> Step {
    let usable = cached.filter(|c| now < c.expires_at);
    match txt {
        // RFC 8461 §5.1: a DNS failure is not the absence of a policy; an unexpired cached
        // policy still applies, and without one we cannot tell.
        Txt::DnsFailure(reason) => match usable {
            Some(_) => Step::UseCached(Kept::DnsFailure),
            None => Step::TempFail(format!("TXT lookup failed: {reason}")),
        },
        // RFC 8461 §3.3: if no live policy can be discovered via DNS but an unexpired one is
        // cached, the cached one applies (§8.3: a domain opts out by publishing mode none first).
        Txt::Absent | Txt::Invalid(_) => match usable {
            Some(_) => Step::UseCached(Kept::TxtGone),
            None => Step::NoPolicy(no_record_reason(txt, cached.is_some())),
        },
        Txt::Record(record) => decide_with_record(usable, negative, &record.id, now, negative_ttl),
    }
}

/// A valid TXT record: the cache if its id matches, else a fetch unless one failed lately.
fn decide_with_record(
    usable: Option<&ActivePolicy>,
    negative: Option<&Negative>,
    id: &str,
    now: SystemTime,
    negative_ttl: Duration,
) -> Step {
    // RFC 8461 §3.1: the id changes when the policy does; the same id means no refetch.
    if usable.is_some_and(|c| c.id == id) {
        return Step::UseCached(Kept::Current);
    }
    // RFC 8461 §3.3: after a failed fetch, limit further attempts per version id (five minutes
    // or longer), so a broken domain is not refetched for every message. A new id is new.
    let recent = negative.filter(|n| n.id == id && within(now, n.failed_at, negative_ttl));
    match (recent, usable) {
        (Some(_), Some(_)) => Step::UseCached(Kept::RecentFailure),
        (Some(n), None) => Step::NoPolicy(format!(
            "policy fetch failed recently ({}); delivering as without MTA-STS",
            n.error
        )),
        (None, _) => Step::Fetch { id: id.to_string() },
    }
}

/// The answer after a failed fetch: the cached policy while it lasts, else no policy.
pub(crate) fn after_failed_fetch(
    cached: Option<&ActivePolicy>,
    now: SystemTime,
    error: &str,
) -> Step {
    match cached.filter(|c| now < c.expires_at) {
        // RFC 8461 §3.3: when no live policy can be fetched, an unexpired cached one applies.
        Some(_) => Step::UseCached(Kept::FetchFailed),
        // RFC 8461 §3.3: a valid TXT record, no policy fetched and none cached: deliver as
        // though the domain had not implemented MTA-STS.
        None => Step::NoPolicy(format!(
            "policy fetch failed ({error}); delivering as without MTA-STS"
        )),
    }
}

/// Whether `now` is less than `span` after `since` (a span past the end of time never ends).
pub(crate) fn within(now: SystemTime, since: SystemTime, span: Duration) -> bool {
    since.checked_add(span).is_none_or(|end| now < end)
}

fn no_record_reason(txt: &Txt, expired: bool) -> String {
    let why = match txt {
        Txt::Invalid(e) => format!("invalid MTA-STS TXT record: {e}"),
        _ => "no MTA-STS TXT record".to_string(),
    };
    if expired {
        format!("{why}; the cached policy has expired")
    } else {
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mode, Policy};

    const TTL: Duration = Duration::from_secs(300);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    /// A policy with `id`, fetched at t(0), expiring at t(1000).
    fn cached(id: &str) -> ActivePolicy {
        ActivePolicy {
            domain: "example.test".into(),
            id: id.into(),
            policy: Policy {
                mode: Mode::Enforce,
                mx: vec![],
                max_age: 1000,
            },
            fetched_at: t(0),
            expires_at: t(1000),
        }
    }

    fn negative(id: &str, at: u64) -> Negative {
        Negative {
            id: id.into(),
            failed_at: t(at),
            error: "HTTP status 404".into(),
            result_type: None,
        }
    }

    fn record(id: &str) -> Txt {
        Txt::Record(StsRecord { id: id.into() })
    }

    fn fetch(id: &str) -> Step {
        Step::Fetch { id: id.into() }
    }

    fn at(cache: Option<&ActivePolicy>, neg: Option<&Negative>, txt: &Txt, now: u64) -> Step {
        decide(cache, neg, txt, t(now), TTL)
    }

    #[test]
    fn same_id_within_max_age_uses_the_cache() {
        let c = cached("1");
        assert_eq!(
            at(Some(&c), None, &record("1"), 999),
            Step::UseCached(Kept::Current)
        );
    }

    #[test]
    fn nothing_cached_fetches() {
        assert_eq!(at(None, None, &record("1"), 0), fetch("1"));
    }

    #[test]
    fn changed_id_refetches() {
        let c = cached("1");
        assert_eq!(at(Some(&c), None, &record("2"), 10), fetch("2"));
    }

    #[test]
    fn expired_policy_is_refetched_even_with_the_same_id() {
        let c = cached("1");
        assert_eq!(at(Some(&c), None, &record("1"), 1000), fetch("1"));
    }

    #[test]
    fn failed_refetch_keeps_an_unexpired_policy() {
        let c = cached("1");
        assert_eq!(
            after_failed_fetch(Some(&c), t(999), "x"),
            Step::UseCached(Kept::FetchFailed)
        );
        assert!(matches!(
            after_failed_fetch(Some(&c), t(1000), "x"),
            Step::NoPolicy(_)
        ));
        assert!(matches!(
            after_failed_fetch(None, t(0), "x"),
            Step::NoPolicy(_)
        ));
    }

    #[test]
    fn txt_gone_keeps_the_cache_until_expiry() {
        let c = cached("1");
        assert_eq!(
            at(Some(&c), None, &Txt::Absent, 999),
            Step::UseCached(Kept::TxtGone)
        );
        assert!(matches!(
            at(Some(&c), None, &Txt::Absent, 1000),
            Step::NoPolicy(_)
        ));
        assert!(matches!(at(None, None, &Txt::Absent, 0), Step::NoPolicy(_)));
    }

    #[test]
    fn invalid_txt_is_no_record() {
        let invalid = Txt::Invalid(RecordError::Multiple(2));
        let c = cached("1");
        assert_eq!(
            at(Some(&c), None, &invalid, 5),
            Step::UseCached(Kept::TxtGone)
        );
        assert!(matches!(at(None, None, &invalid, 5), Step::NoPolicy(r) if r.contains("invalid")));
    }

    #[test]
    fn dns_failure_uses_the_cache_else_tempfails() {
        let fail = Txt::DnsFailure("SERVFAIL".into());
        let c = cached("1");
        assert_eq!(
            at(Some(&c), None, &fail, 999),
            Step::UseCached(Kept::DnsFailure)
        );
        assert!(matches!(at(Some(&c), None, &fail, 1000), Step::TempFail(_)));
        assert!(matches!(at(None, None, &fail, 0), Step::TempFail(_)));
    }

    #[test]
    fn negative_entry_suppresses_fetches_within_its_ttl() {
        let n = negative("1", 100);
        assert!(matches!(
            at(None, Some(&n), &record("1"), 399),
            Step::NoPolicy(_)
        ));
        assert_eq!(at(None, Some(&n), &record("1"), 400), fetch("1"));
        // A new id is worth a new attempt.
        assert_eq!(at(None, Some(&n), &record("2"), 101), fetch("2"));
    }

    #[test]
    fn negative_entry_with_an_older_policy_keeps_it() {
        let c = cached("1");
        let n = negative("2", 100);
        assert_eq!(
            at(Some(&c), Some(&n), &record("2"), 200),
            Step::UseCached(Kept::RecentFailure)
        );
        assert_eq!(at(Some(&c), Some(&n), &record("2"), 400), fetch("2"));
        // The negative entry does not hide a policy whose id matches.
        assert_eq!(
            at(Some(&c), Some(&negative("1", 100)), &record("1"), 200),
            Step::UseCached(Kept::Current)
        );
    }
}
