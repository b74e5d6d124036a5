//! The MTA-STS policy cache (RFC 8461 §3, §5.1) against the lab: real DNS (hickory-server), a
//! real HTTPS policy host, and a clock the test moves by hand. Each test is one cache rule; the
//! policy host's request counter shows whether a lookup fetched.

mod lab;

use hickory_resolver::proto::rr::rdata::TXT;
use hickory_resolver::proto::rr::RData;
use lab::dns::Zone;
use lab::https::{PolicyServer, Response};
use lab::{Lab, WAIT};
use policy_cache::{
    ActivePolicy, FailureRecord, ManualClock, Mode, PolicyCache, RefreshSummary, Settings,
    StsLookup,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const DOMAIN: &str = "example.test";
const HOST: &str = "mta-sts.example.test";
const DAY: u64 = 86_400;
const NEGATIVE_TTL: Duration = Duration::from_secs(300);
const UNUSED_AFTER: Duration = Duration::from_secs(30 * DAY);

/// A policy file for [`DOMAIN`].
fn policy_text(mode: &str, max_age: u64) -> String {
    format!("version: STSv1\nmode: {mode}\nmx: mx.example.test\nmx: *.backup.example.test\nmax_age: {max_age}\n")
}

/// The lab, a policy host on `127.X.Y.80` serving an enforce policy (max_age one day) for
/// [`DOMAIN`] announced with id 1, and a cache on a manual clock.
struct Bed {
    lab: Lab,
    server: PolicyServer,
    clock: Arc<ManualClock>,
    settings: Settings,
    dir: PathBuf,
    cache: PolicyCache,
}

impl Bed {
    async fn new() -> Bed {
        Bed::with(policy_text("enforce", DAY)).await
    }

    async fn with(policy: String) -> Bed {
        let lab = Lab::new().await;
        let server = PolicyServer::start(&lab, 80).await;
        server.publish(&lab.ca, DOMAIN, &policy);
        let settings = Settings {
            https_port: server.port(),
            extra_ca_files: vec![lab.ca.write_pem(lab.dir())],
            connect_timeout: Duration::from_secs(3),
            fetch_timeout: Duration::from_secs(10),
            negative_ttl: NEGATIVE_TTL,
            unused_after: UNUSED_AFTER,
            refresh_concurrency: 2,
            ..Settings::default()
        };
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let dir = lab.dir().join("policy-cache");
        let cache = open(&lab, &dir, &settings, &clock);
        let bed = Bed {
            lab,
            server,
            clock,
            settings,
            dir,
            cache,
        };
        bed.announce("1");
        bed
    }

    /// Publishes the TXT record `v=STSv1; id=<id>` (and the policy host's address).
    fn announce(&self, id: &str) {
        self.lab.zone(self.server.announce(self.zone(), DOMAIN, id));
    }

    /// Removes the TXT record (the name then answers NXDOMAIN).
    fn withdraw(&self) {
        self.lab.zone(self.zone_without_txt());
    }

    fn zone(&self) -> Zone {
        Zone::new(DOMAIN)
            .mx(10, "mx.example.test")
            .a("mx.example.test", self.lab.ip(3))
    }

    /// [`Bed::zone`] with the policy host's address but no TXT record at `_mta-sts`: a test
    /// adds what it wants there.
    fn zone_without_txt(&self) -> Zone {
        self.zone().a(HOST, self.server.ip())
    }

    /// Serves `text` as the policy from now on.
    fn serve(&self, text: &str) {
        self.server.set(HOST, Response::policy(text));
    }

    /// Answers policy fetches with HTTP status `code` from now on.
    fn serve_status(&self, code: u16) {
        self.server.set(HOST, Response::status(code));
    }

    fn requests(&self) -> usize {
        self.server.requests(HOST)
    }

    /// What `policy show` prints for [`DOMAIN`].
    fn show(&self) -> String {
        self.cache.show(DOMAIN)
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    async fn lookup(&self) -> StsLookup {
        self.cache.lookup(DOMAIN).await
    }

    /// The id of the policy a lookup finds (there must be one).
    async fn policy_id(&self) -> String {
        policy(&self.lookup().await).id.clone()
    }

    /// A second cache on the same directory and clock, as after a restart.
    fn reopen(self) -> Bed {
        // The first cache closes (and lets go of its directory) before the second opens.
        drop(self.cache);
        let cache = open(&self.lab, &self.dir, &self.settings, &self.clock);
        Bed { cache, ..self }
    }
}

fn open(
    lab: &Lab,
    dir: &std::path::Path,
    settings: &Settings,
    clock: &Arc<ManualClock>,
) -> PolicyCache {
    PolicyCache::open(dir, lab.resolver(), settings.clone(), clock.clone()).expect("open cache")
}

#[track_caller]
fn policy(lookup: &StsLookup) -> &ActivePolicy {
    match lookup {
        StsLookup::Policy(p) => p,
        other => panic!("expected a policy, got {other:?}"),
    }
}

#[track_caller]
fn assert_no_policy(lookup: &StsLookup) {
    assert!(
        matches!(lookup, StsLookup::NoPolicy { .. }),
        "expected no policy, got {lookup:?}"
    );
}

#[tokio::test]
async fn a_cached_policy_is_used_without_refetching_while_the_id_is_unchanged() {
    let bed = Bed::new().await;
    let first = bed.lookup().await;
    let p = policy(&first);
    assert_eq!((p.id.as_str(), p.policy.mode), ("1", Mode::Enforce));
    assert_eq!(p.expires_at, p.fetched_at + Duration::from_secs(DAY));
    assert!(p.policy.matching("mx.example.test").is_some());
    assert!(p.policy.matching("mx1.backup.example.test").is_some());
    assert_eq!(bed.requests(), 1);
    for _ in 0..3 {
        assert_eq!(bed.policy_id().await, "1");
    }
    bed.advance(DAY - 1);
    assert_eq!(bed.policy_id().await, "1");
    assert_eq!(
        bed.requests(),
        1,
        "no refetch within max_age with the same id"
    );
}

#[tokio::test]
async fn lookups_run_on_spawned_tasks() {
    let bed = Bed::new().await;
    let cache = Arc::new(bed.cache);
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.lookup(DOMAIN).await })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(policy(&lookup.await.expect("lookup task")).id, "1");
    }
    assert_eq!(
        bed.server.requests(HOST),
        1,
        "concurrent lookups fetch once"
    );
}

#[tokio::test]
async fn an_expired_policy_is_refetched() {
    let bed = Bed::new().await;
    policy(&bed.lookup().await);
    bed.advance(DAY);
    let p = bed.lookup().await;
    assert_eq!(bed.requests(), 2);
    assert_eq!(policy(&p).fetched_at, bed.clock_now());
}

impl Bed {
    fn clock_now(&self) -> SystemTime {
        use policy_cache::Clock;
        self.clock.now()
    }
}

#[tokio::test]
async fn a_new_id_refetches() {
    let bed = Bed::new().await;
    policy(&bed.lookup().await);
    bed.serve(&policy_text("testing", 3600));
    bed.announce("2");
    let p = bed.lookup().await;
    let p = policy(&p);
    assert_eq!(
        (p.id.as_str(), p.policy.mode, p.policy.max_age),
        ("2", Mode::Testing, 3600)
    );
    assert_eq!(bed.requests(), 2);
    assert_eq!(bed.policy_id().await, "2");
    assert_eq!(bed.requests(), 2);
}

#[tokio::test]
async fn a_failed_refetch_keeps_the_old_policy() {
    let bed = Bed::new().await;
    policy(&bed.lookup().await);
    bed.serve_status(404);
    bed.announce("2");
    assert_eq!(bed.policy_id().await, "1");
    assert_eq!(bed.requests(), 2);
    // The failure is remembered: the next message does not refetch.
    assert_eq!(bed.policy_id().await, "1");
    assert_eq!(bed.requests(), 2);
    // After the negative TTL, the new id is tried again; a policy that does not parse is a
    // failed fetch too (RFC 8461 §3.2), never a reason to drop the cached one.
    bed.serve("version: STSv1\nmode: enforce\nmax_age: 60\n");
    bed.advance(NEGATIVE_TTL.as_secs());
    assert_eq!(bed.policy_id().await, "1");
    assert_eq!(bed.requests(), 3);
    assert!(bed.show().contains("invalid policy"), "{}", bed.show());
}

#[tokio::test]
async fn a_withdrawn_txt_record_keeps_the_cached_policy_until_it_expires() {
    let bed = Bed::new().await;
    policy(&bed.lookup().await);
    bed.withdraw();
    bed.advance(DAY - 1);
    assert_eq!(bed.policy_id().await, "1");
    bed.advance(1);
    assert_no_policy(&bed.lookup().await);
    assert_eq!(bed.requests(), 1);
}

#[tokio::test]
async fn an_invalid_txt_record_is_no_record() {
    let bed = Bed::new().await;
    // Two STS records: not exactly one, so no policy (RFC 8461 §3.1).
    bed.lab.zone(
        bed.server
            .announce(bed.zone(), DOMAIN, "1")
            .txt("_mta-sts.example.test", "v=STSv1; id=2"),
    );
    assert_no_policy(&bed.lookup().await);
    assert_eq!(bed.requests(), 0);
}

#[tokio::test]
async fn a_cname_at_the_txt_name_is_followed() {
    let bed = Bed::new().await;
    bed.lab.zone(
        bed.zone_without_txt()
            .cname("_mta-sts.example.test", "sts.example.test")
            .txt("sts.example.test", "v=STSv1; id=9"),
    );
    assert_eq!(bed.policy_id().await, "9");
}

#[tokio::test]
async fn a_txt_name_without_txt_records_is_no_record() {
    let bed = Bed::new().await;
    // NODATA: the name exists (it has an A record) but no TXT.
    bed.lab.zone(
        bed.zone_without_txt()
            .a("_mta-sts.example.test", bed.lab.ip(9)),
    );
    assert_no_policy(&bed.lookup().await);
    // Only other TXT records: no STS record either.
    bed.lab.zone(
        bed.zone_without_txt()
            .txt("_mta-sts.example.test", "v=STSv12; id=1"),
    );
    assert_no_policy(&bed.lookup().await);
    assert_eq!(bed.requests(), 0);
}

#[tokio::test]
async fn the_strings_of_one_txt_record_are_joined() {
    let bed = Bed::new().await;
    let split = TXT::new(vec!["v=STSv1; ".into(), "id=77".into()]);
    bed.lab.zone(
        bed.zone_without_txt()
            .record("_mta-sts.example.test", RData::TXT(split)),
    );
    assert_eq!(bed.policy_id().await, "77");
}

#[tokio::test]
async fn a_dns_failure_uses_the_cache_and_else_fails_for_now() {
    let bed = Bed::new().await;
    policy(&bed.lookup().await);
    bed.lab.dns.servfail(DOMAIN);
    assert_eq!(bed.policy_id().await, "1");
    bed.advance(DAY);
    let expired = bed.lookup().await;
    assert!(matches!(expired, StsLookup::TempFail { .. }), "{expired:?}");

    // Nothing cached at all: the same.
    bed.lab.zone(Zone::new("other.test"));
    let other = bed.cache.lookup("other.test").await;
    bed.lab.dns.servfail("other.test");
    let other_now = bed.cache.lookup("other.test").await;
    assert_no_policy(&other);
    assert!(
        matches!(other_now, StsLookup::TempFail { .. }),
        "{other_now:?}"
    );

    bed.lab.dns.heal(DOMAIN);
    assert_eq!(bed.policy_id().await, "1");
    assert_eq!(bed.requests(), 2);
}

#[tokio::test]
async fn a_failed_first_fetch_means_no_policy_and_is_not_retried_within_the_negative_ttl() {
    let bed = Bed::new().await;
    bed.serve_status(500);
    assert_no_policy(&bed.lookup().await);
    assert_eq!(bed.requests(), 1);
    bed.advance(NEGATIVE_TTL.as_secs() - 1);
    assert_no_policy(&bed.lookup().await);
    assert_eq!(bed.requests(), 1, "within the negative TTL");
    assert!(bed.show().contains("HTTP status 500"));

    bed.advance(1);
    bed.serve(&policy_text("enforce", DAY));
    assert_eq!(bed.policy_id().await, "1");
    assert_eq!(bed.requests(), 2);
    assert!(bed.show().contains("last fetch failure: none"));
}

#[tokio::test]
async fn a_policy_that_fails_to_parse_with_nothing_cached_is_no_policy() {
    let bed =
        Bed::with("version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: +5\n".into()).await;
    assert_no_policy(&bed.lookup().await);
    assert_eq!(bed.requests(), 1);
}

#[tokio::test]
async fn a_new_id_is_fetched_despite_a_recent_failure_of_the_old_one() {
    let bed = Bed::new().await;
    bed.serve_status(404);
    assert_no_policy(&bed.lookup().await);
    bed.serve(&policy_text("enforce", DAY));
    bed.announce("2");
    assert_eq!(bed.policy_id().await, "2");
    assert_eq!(bed.requests(), 2);
}

#[tokio::test]
async fn mode_none_is_a_policy_of_mode_none() {
    let bed = Bed::with("version: STSv1\nmode: none\nmax_age: 86400\n".into()).await;
    let p = bed.lookup().await;
    assert_eq!(policy(&p).policy.mode, Mode::None);
    assert!(policy(&p).policy.mx.is_empty());
}

#[tokio::test]
async fn policies_survive_a_restart() {
    let bed = Bed::new().await;
    policy(&bed.lookup().await);
    bed.serve_status(404);
    let bed = bed.reopen();
    let p = bed.lookup().await;
    assert_eq!(policy(&p).id, "1");
    assert_eq!(policy(&p).policy.mx.len(), 2);
    assert_eq!(bed.requests(), 1, "served from disk, not refetched");
}

#[tokio::test]
async fn refresh_fetches_now_and_keeps_the_old_policy_on_failure() {
    let bed = Bed::new().await;
    policy(&bed.lookup().await);
    bed.serve(&policy_text("testing", DAY));
    let p = bed.cache.refresh(DOMAIN).await;
    assert_eq!(policy(&p).policy.mode, Mode::Testing);
    assert_eq!(bed.requests(), 2);

    bed.serve_status(503);
    let p = bed.cache.refresh(DOMAIN).await;
    assert_eq!(policy(&p).policy.mode, Mode::Testing);
    assert_eq!(bed.requests(), 3);
}

#[tokio::test]
async fn the_refresher_refetches_before_expiry() {
    let bed = Bed::new().await;
    let before = policy(&bed.lookup().await).expires_at;
    // Refresh time is between 70 % and 90 % of max_age.
    bed.advance(DAY * 7 / 10 - 60);
    assert_eq!(bed.cache.refresh_due().await, RefreshSummary::default());
    assert_eq!(bed.requests(), 1);
    bed.advance(DAY * 2 / 10 + 61);
    let summary = bed.cache.refresh_due().await;
    assert_eq!(summary.refreshed, 1, "{summary:?}");
    assert_eq!(bed.requests(), 2);
    let after = policy(&bed.lookup().await).expires_at;
    assert!(after > before, "the refreshed policy lasts longer");
    assert_eq!(bed.requests(), 2);
}

#[tokio::test]
async fn the_refresher_drops_unused_entries() {
    let bed = Bed::with(policy_text("enforce", 31_557_600)).await;
    policy(&bed.lookup().await);
    bed.advance(UNUSED_AFTER.as_secs() - 10);
    policy(&bed.lookup().await); // a use resets the clock of disuse
    bed.advance(UNUSED_AFTER.as_secs() - 10);
    assert_eq!(bed.cache.refresh_due().await.dropped, 0);
    bed.advance(10);
    assert_eq!(bed.cache.refresh_due().await.dropped, 1);
    assert!(bed.show().contains("policy: none cached"));
    let bed = bed.reopen();
    assert!(
        bed.show().contains("policy: none cached"),
        "dropped on disk too"
    );
    policy(&bed.lookup().await);
    assert_eq!(bed.requests(), 2);
}

#[tokio::test]
async fn the_background_refresher_runs_until_shutdown() {
    let bed = Bed::new().await;
    policy(&bed.lookup().await);
    bed.advance(DAY * 9 / 10);
    let cache = Arc::new(bed.cache);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(cache.clone().run_refresher(shutdown));
    // Its first pass runs at once.
    bed.server.wait_served(HOST, 2, WAIT).await;
    stop.send(true).expect("refresher listening");
    tokio::time::timeout(WAIT, task)
        .await
        .expect("refresher stops on shutdown")
        .expect("refresher task");
}

#[tokio::test]
async fn forget_drops_the_policy() {
    let bed = Bed::new().await;
    policy(&bed.lookup().await);
    assert!(bed.cache.forget(DOMAIN).expect("forget"));
    assert!(!bed.cache.forget(DOMAIN).expect("forget"));
    assert!(bed.show().contains("policy: none cached"));
    let bed = bed.reopen();
    assert!(bed.show().contains("policy: none cached"));
    policy(&bed.lookup().await);
    assert_eq!(bed.requests(), 2);
}

#[tokio::test]
async fn show_and_failures() {
    let bed = Bed::new().await;
    policy(&bed.lookup().await);
    for n in 0..3 {
        bed.cache.record_failure(FailureRecord {
            domain: "Example.TEST".into(),
            policy_id: "1".into(),
            mode: "enforce".into(),
            mx_host: "mx.example.test".into(),
            result_type: "certificate-host-mismatch".into(),
            detail: format!("attempt {n}"),
            at: SystemTime::now(),
        });
    }
    let failures = bed.cache.failures(DOMAIN);
    assert_eq!(failures.len(), 3);
    assert_eq!(failures[0].detail, "attempt 0");
    let shown = bed.cache.show("EXAMPLE.test.");
    for expected in [
        "domain: example.test",
        "id: 1",
        "mode: enforce",
        "mx: mx.example.test, *.backup.example.test",
        "max_age: 86400",
        "fetched: 20",
        "expires: 20",
        "last used: 20",
        "recorded failures: 3",
        "certificate-host-mismatch attempt 2",
    ] {
        assert!(
            shown.contains(expected),
            "{expected:?} missing from:\n{shown}"
        );
    }
}

/// The RFC 8460 result type a "no policy" answer carries, if any.
fn fetch_failure(lookup: &StsLookup) -> Option<&'static str> {
    match lookup {
        StsLookup::NoPolicy { fetch_failure, .. } => fetch_failure.as_ref().map(|f| f.result_type),
        other => panic!("expected no policy, got {other:?}"),
    }
}

/// RFC 8460 §4.3.1: an announced policy that cannot be had is told apart for TLS-RPT: the
/// fetch failed (`sts-policy-fetch-error`), the policy is invalid (`sts-policy-invalid`), or
/// the policy host's certificate is not valid (`sts-webpki-invalid`); and the pause before
/// the next fetch (RFC 8461 §3.3) keeps saying so. No TXT record at all is no failure.
#[tokio::test]
async fn failed_fetches_carry_their_tls_rpt_result_type() {
    let bed = Bed::new().await;
    bed.serve_status(500);
    let first = bed.lookup().await;
    assert_eq!(fetch_failure(&first), Some("sts-policy-fetch-error"));
    // Within the negative TTL nothing is fetched, and the failure still stands.
    let again = bed.lookup().await;
    assert_eq!(fetch_failure(&again), Some("sts-policy-fetch-error"));
    assert_eq!(bed.requests(), 1);

    bed.announce("2");
    bed.serve("version: STSv1\nmode: sometimes\n");
    assert_eq!(
        fetch_failure(&bed.lookup().await),
        Some("sts-policy-invalid")
    );

    bed.lab.zone(Zone::new(DOMAIN).mx(10, "mx.example.test"));
    assert_eq!(fetch_failure(&bed.lookup().await), None);

    // A fresh cache and host (TLS resumption would skip the certificate of a host already
    // met): a certificate from an untrusted CA.
    let bed = Bed::new().await;
    let other_ca = lab::ca::LabCa::new();
    bed.server
        .certify(HOST, &other_ca.issue_with(&[HOST], Default::default()));
    assert_eq!(
        fetch_failure(&bed.lookup().await),
        Some("sts-webpki-invalid")
    );
}
