//! TLS-RPT counts shared by a fleet on Redis (`[cache] backend = "redis"`), against a real
//! `redis-server`: two real relays deliver to one reporting domain, and the domain gets one
//! report per period with both nodes' sessions summed, whether the period closes by itself or
//! by `tlsrpt send --now`; Redis killed and started again (empty) before the period closes
//! costs the counts pushed before the kill, never those made during the outage, and no
//! report goes out while Redis is away. In-process: a push counts once whatever fails (Redis
//! down, a reply lost, a restart between). Without redis-server each test says SKIPPED.

mod lab;

use lab::dns::Zone;
use lab::redis_server::RedisServer;
use lab::relay::Relay;
use lab::smtp::{Behaviour, SmtpServer};
use lab::submit::{message, Submission};
use lab::{Lab, WAIT};
use mxguard::report::counts::{Counter, FailureDetail, Period, Policy, SessionResult};
use mxguard::report::fleet::FleetCounts;
use policy_cache::shared::SharedSettings;
use serde_json::Value;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SENDER: &str = "alice@sender.test";
const COLLECTOR: &str = "reports@collector.test";
const DAY: Duration = Duration::from_secs(86_400);

/// The lab, its Redis, `plain.test` (MX without STARTTLS, so each session is one
/// `starttls-not-supported` failure) asking for mail reports at [`COLLECTOR`], and two relays
/// sharing the Redis: each its own data directory and listener.
struct Fleet {
    lab: Lab,
    redis: RedisServer,
    collector: SmtpServer,
    _plain: SmtpServer,
    a: Relay,
    b: Relay,
}

impl Fleet {
    /// `None` (the test is skipped) without redis-server. `extra`: more `[tlsrpt]` keys.
    async fn start(extra: &str) -> Option<Fleet> {
        let lab = Lab::new().await;
        let redis = RedisServer::start(lab.dir())?;
        lab.zone(
            Zone::new("plain.test")
                .mx(10, "mx.plain.test")
                .a("mx.plain.test", lab.ip(3))
                .txt(
                    "_smtp._tls.plain.test",
                    &format!("v=TLSRPTv1; rua=mailto:{COLLECTOR}"),
                ),
        );
        let plain = lab.mx(3, Behaviour::plain()).await;
        let collector = lab
            .domain_with_mx("collector.test", 4, Behaviour::plain())
            .await;
        let toml = format!(
            "[tlsrpt]\nenabled = true\norganization_name = \"mxguard lab\"\n\
             submitter = \"lab.test\"\ncontact_info = \"postmaster@lab.test\"\n\
             send_delay_max = \"0s\"\n{extra}\n\
             [cache]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"tlsrpt-test:\"\n\
             [delivery]\nconnection_reuse = false\n",
            redis.url()
        );
        // Without reuse, each message is a session of its own.
        let config_a = lab.relay_config().toml(&toml);
        let mut config_b = config_a.clone();
        let dir_b = lab.dir().join("node-b");
        std::fs::create_dir_all(&dir_b).expect("node B's directory");
        config_b.data_dir = dir_b.join("data");
        config_b.listen = std::net::SocketAddr::new(lab.ip(200).into(), config_a.listen.port());
        let a = lab.start_relay(config_a).await;
        let b = Relay::start(config_b, &dir_b).await;
        Some(Fleet {
            lab,
            redis,
            collector,
            _plain: plain,
            a,
            b,
        })
    }

    /// The reports that arrived so far, decoded.
    fn reports(&self) -> Vec<Value> {
        self.collector
            .messages()
            .iter()
            .map(|m| report_json(&m.data))
            .collect()
    }

    /// Waits until `n` reports arrived.
    async fn wait_reports(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.collector.messages().len();
            if got >= n {
                return self.reports();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{got} of {n} reports within {within:?}; node A:\n{}\nnode B:\n{}",
                self.a.log_lines().join("\n"),
                self.b.log_lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Sends one message to `to` through `relay` and waits for its delivery.
async fn deliver(relay: &Relay, to: &str) {
    let m = Submission::new(SENDER, message(SENDER, to, "tls-rpt", "Hello.\n")).rcpt(to);
    let mark = relay.log_mark();
    relay.submit(&m).await;
    relay.wait_for_delivery(mark, to, "sent", WAIT).await;
}

/// Waits until `tlsrpt show plain.test` on `relay` says `want`.
async fn wait_shown(relay: &Relay, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = relay.cli(&["tlsrpt", "show", "plain.test"]).await;
        assert_eq!(out.status, 0, "{}", out.stderr);
        if out.stdout.contains(want) {
            return out.stdout;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tlsrpt show never said {want:?}; last:\n{}",
            out.stdout
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `tlsrpt send --now`, which must succeed; its output.
async fn send_now(relay: &Relay) -> String {
    let out = relay.cli(&["tlsrpt", "send", "--now"]).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    out.stdout
}

/// The gzip'd JSON of a report mail, checked against the schema.
fn report_json(data: &[u8]) -> Value {
    use mail_parser::{MessageParser, MimeHeaders};
    let parsed = MessageParser::default()
        .parse(data)
        .expect("a report message");
    let part = parsed
        .attachments()
        .find(|a| {
            a.content_type()
                .is_some_and(|c| c.ctype() == "application" && c.subtype() == Some("tlsrpt+gzip"))
        })
        .expect("an application/tlsrpt+gzip part");
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(part.contents())
        .read_to_end(&mut json)
        .expect("gzip");
    let value: Value = serde_json::from_slice(&json).expect("report JSON");
    mxguard::report::json::check_schema(&value)
        .unwrap_or_else(|e| panic!("schema: {e}\n{value:#}"));
    value
}

/// `(successful, failed)` sessions of a report's one policy, and its detail's count.
fn counts_of(report: &Value) -> (u64, u64, u64) {
    let policies = report["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1, "{report:#}");
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "no-policy-found");
    assert_eq!(p["policy"]["policy-domain"], "plain.test");
    let details = p["failure-details"].as_array().expect("failure-details");
    assert_eq!(details.len(), 1, "{p:#}");
    assert_eq!(details[0]["result-type"], "starttls-not-supported");
    (
        p["summary"]["total-successful-session-count"]
            .as_u64()
            .expect("a count"),
        p["summary"]["total-failure-session-count"]
            .as_u64()
            .expect("a count"),
        details[0]["failed-session-count"]
            .as_u64()
            .expect("a count"),
    )
}

/// Log lines of `relay` saying it built a report.
fn built(relay: &Relay) -> usize {
    relay
        .log_lines()
        .iter()
        .filter(|l| l.contains("plain.test: report") && l.contains("built"))
        .count()
}

/// Traffic for one domain through two nodes, `tlsrpt send --now` on one: one report, with
/// the sessions of both; the other node sends nothing, then or later.
#[tokio::test]
async fn one_report_for_traffic_split_across_two_nodes() {
    let Some(f) = Fleet::start("").await else {
        return;
    };
    deliver(&f.a, "bob@plain.test").await;
    deliver(&f.a, "carol@plain.test").await;
    deliver(&f.b, "dave@plain.test").await;
    // Both nodes push within a few seconds; either node shows the fleet's sum.
    wait_shown(&f.a, "0 successful, 3 failed").await;
    wait_shown(&f.b, "0 successful, 3 failed").await;

    let out = send_now(&f.a).await;
    assert!(out.contains("plain.test: report"), "{out}");
    let reports = f.wait_reports(1, WAIT).await;
    assert_eq!(counts_of(&reports[0]), (0, 3, 3), "{:#}", reports[0]);
    assert_eq!(reports[0]["organization-name"], "mxguard lab");

    // Past both nodes' next ticks (and the settling time): still the one report.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(f.collector.messages().len(), 1, "one report in all");
    assert_eq!(built(&f.a) + built(&f.b), 1);
    assert!(send_now(&f.b).await.contains("nothing to report"));
    let shown = f.b.cli(&["tlsrpt", "show"]).await;
    assert!(
        shown.stdout.contains("no sessions counted"),
        "{}",
        shown.stdout
    );
    let _ = &f.lab;
}

/// A period that closes by itself (`interval = "20s"`): one report, built by one node from
/// the sum of both nodes' sessions, covering that period.
#[tokio::test]
async fn a_closed_period_is_reported_once_by_the_fleet() {
    let Some(f) = Fleet::start("interval = \"20s\"").await else {
        return;
    };
    // Start just after a period begins, so that the traffic fits in one period.
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
        % 20_000;
    if ms > 1_000 {
        tokio::time::sleep(Duration::from_millis((20_000 - ms) as u64 + 200)).await;
    }
    tokio::join!(
        async {
            deliver(&f.a, "bob@plain.test").await;
            deliver(&f.a, "carol@plain.test").await;
        },
        async {
            deliver(&f.b, "dave@plain.test").await;
            deliver(&f.b, "erin@plain.test").await;
        }
    );
    // The period's end, the settling time (15 s), a tick, the report mail's delivery.
    let reports = f.wait_reports(1, Duration::from_secs(60)).await;
    let report = &reports[0];
    assert_eq!(counts_of(report), (0, 4, 4), "{report:#}");
    let parse = |t: &Value| {
        time::OffsetDateTime::parse(
            t.as_str().expect("a date"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("RFC 3339")
        .unix_timestamp()
    };
    let start = parse(&report["date-range"]["start-datetime"]);
    let end = parse(&report["date-range"]["end-datetime"]);
    assert_eq!((start % 20, end - start), (0, 19), "{report:#}");

    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(f.collector.messages().len(), 1, "one report in all");
    assert_eq!(built(&f.a) + built(&f.b), 1, "one node built it");
}

/// Redis killed while counts are being made, then started again, empty, before the period
/// is reported. What the nodes pushed before the kill went with Redis's memory; what they
/// counted during the outage (kept in their own databases) is pushed when Redis is back and
/// reported. While Redis is away, `send --now` sends nothing: a node's own counts would make a
/// second report.
#[tokio::test]
async fn redis_killed_and_started_again_empty_keeps_the_outage_counts() {
    let Some(mut f) = Fleet::start("").await else {
        return;
    };
    deliver(&f.a, "bob@plain.test").await;
    deliver(&f.b, "carol@plain.test").await;
    wait_shown(&f.a, "0 successful, 2 failed").await;

    f.redis.kill();
    deliver(&f.a, "dave@plain.test").await;
    deliver(&f.b, "erin@plain.test").await;
    deliver(&f.b, "frank@plain.test").await;
    let out = send_now(&f.a).await;
    assert!(out.contains("Redis unavailable: nothing sent"), "{out}");
    let shown = wait_shown(&f.b, "0 successful, 2 failed").await;
    assert!(shown.contains("Redis unavailable"), "{shown}");

    f.redis.start_again();
    // Each node pushes its outage counts at its next tick after reconnecting.
    wait_shown(&f.a, "0 successful, 3 failed").await;
    wait_shown(&f.b, "0 successful, 3 failed").await;
    assert!(f.collector.messages().is_empty(), "nothing sent meanwhile");
    let out = send_now(&f.a).await;
    assert!(out.contains("plain.test: report"), "{out}");
    let reports = f.wait_reports(1, WAIT).await;
    assert_eq!(counts_of(&reports[0]), (0, 3, 3), "{:#}", reports[0]);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(f.collector.messages().len(), 1, "one report in all");
    for relay in [&f.a, &f.b] {
        let warnings = relay
            .log_lines()
            .iter()
            .filter(|l| l.contains("shared cache: Redis at") && l.contains("unavailable"))
            .count();
        assert_eq!(warnings, 1, "one warning for the outage");
    }
}

fn failure(ip: &str) -> SessionResult {
    let mut detail = FailureDetail::new("starttls-not-supported");
    detail.receiving_ip = ip.parse().ok();
    SessionResult::Failure(detail)
}

/// `(successful, failed)` in Redis for `period` of example.net.
async fn shared_counts(fleet: &FleetCounts, period: Period) -> (u64, u64) {
    let entries = fleet.sums(period, "example.net").await.expect("Redis up");
    entries.iter().fold((0, 0), |(s, f), e| {
        (s + e.tally.successes, f + e.tally.failures)
    })
}

/// A counts database, reopened as soon as sled lets go of the previous one.
fn reopen(dir: &std::path::Path) -> Counter {
    for _ in 0..50 {
        let c = Counter::open(dir, DAY);
        if c.is_persistent() {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the counts database did not open again");
}

/// Pushes until Redis (just started again) takes it.
async fn push_when_back(fleet: &FleetCounts, counter: &Counter) {
    for _ in 0..40 {
        if fleet.push(counter).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("Redis did not come back");
}

/// In-process, one node's counter and a real Redis: failed pushes keep the counts, a push
/// whose reply was lost is not counted twice when tried again (also after a restart), and
/// counts made meanwhile go with the next push.
#[tokio::test]
async fn a_push_counts_once_whatever_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut redis) = RedisServer::start(dir.path()) else {
        return;
    };
    let settings = SharedSettings {
        url: redis.url(),
        prefix: "push-test:".into(),
        timeout: Duration::from_millis(500),
    };
    let db = dir.path().join("counts");
    let counter = Counter::open(&db, DAY);
    let fleet = FleetCounts::new(&settings, &counter, "node.test").expect("settings");
    let p = Policy::none("example.net");
    let now = SystemTime::now();
    let period = Period::containing(now, DAY);
    let record = |c: &Counter, outcome: SessionResult| {
        c.record_at(std::slice::from_ref(&p), &outcome, now);
    };

    // Pushes fail while Redis is down: the counts stay here.
    redis.kill();
    for ip in ["192.0.2.1", "192.0.2.1", "192.0.2.2"] {
        record(&counter, failure(ip));
    }
    assert!(fleet.push(&counter).await.is_err());
    record(&counter, SessionResult::Success);
    assert!(fleet.push(&counter).await.is_err());
    let local = counter.entries(|_, _| true);
    assert_eq!((local[0].tally.successes, local[0].tally.failures), (1, 3));

    // Back: the frozen batch (3 failures), then what came after it (1 success).
    redis.start_again();
    push_when_back(&fleet, &counter).await;
    assert_eq!(shared_counts(&fleet, period).await, (0, 3));
    fleet.push(&counter).await.expect("Redis up");
    assert_eq!(shared_counts(&fleet, period).await, (1, 3));
    assert!(counter.entries(|_, _| true).is_empty(), "nothing left here");
    fleet.push(&counter).await.expect("nothing to push");
    assert_eq!(shared_counts(&fleet, period).await, (1, 3));

    // A push Redis applied but whose reply was lost: tried again, it is recognised.
    record(&counter, failure("192.0.2.1"));
    record(&counter, failure("192.0.2.3"));
    let batch = counter.outgoing().expect("a batch");
    assert!(fleet.apply(&batch).await.expect("Redis up"), "applied");
    record(&counter, SessionResult::Success);
    assert_eq!(
        counter.outgoing().as_ref(),
        Some(&batch),
        "frozen until taken"
    );
    fleet.push(&counter).await.expect("Redis up");
    assert_eq!(shared_counts(&fleet, period).await, (1, 5));
    fleet.push(&counter).await.expect("Redis up");
    assert_eq!(shared_counts(&fleet, period).await, (2, 5));

    // The same with a restart between the lost reply and the retry.
    record(&counter, failure("192.0.2.4"));
    let batch = counter.outgoing().expect("a batch");
    assert!(fleet.apply(&batch).await.expect("Redis up"));
    drop(fleet);
    drop(counter);
    let counter = reopen(&db);
    let fleet = FleetCounts::new(&settings, &counter, "node.test").expect("settings");
    assert_eq!(counter.outgoing(), Some(batch), "kept across the restart");
    fleet.push(&counter).await.expect("Redis up");
    assert_eq!(shared_counts(&fleet, period).await, (2, 6));
    assert!(counter.entries(|_, _| true).is_empty());

    // The details add up across pushes, one entry per distinct failure.
    let entries = fleet.sums(period, "example.net").await.expect("Redis up");
    let details: Vec<u64> = entries[0].tally.details.iter().map(|(_, n)| *n).collect();
    assert_eq!(details, vec![3, 1, 1, 1], "{:?}", entries[0].tally.details);
}

/// In-process, two nodes' counters on one Redis: both push into one sum; of the two, one
/// takes the send lease of the closed period, keeps it across its restart (its token is in
/// its database), and once it is done the domain is no longer due and nobody takes it again.
#[tokio::test]
async fn one_node_takes_each_lease() {
    use mxguard::report::fleet::Lease;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(redis) = RedisServer::start(dir.path()) else {
        return;
    };
    let settings = SharedSettings {
        url: redis.url(),
        prefix: "lease-test:".into(),
        timeout: Duration::from_millis(500),
    };
    let p = Policy::none("example.net");
    let yesterday = SystemTime::now() - DAY;
    let period = Period::containing(yesterday, DAY);
    let (db_a, db_b) = (dir.path().join("a"), dir.path().join("b"));
    let (counter_a, counter_b) = (Counter::open(&db_a, DAY), Counter::open(&db_b, DAY));
    let a = FleetCounts::new(&settings, &counter_a, "relay.test").expect("settings");
    let b = FleetCounts::new(&settings, &counter_b, "relay.test").expect("settings");
    counter_a.record_at(std::slice::from_ref(&p), &failure("192.0.2.1"), yesterday);
    counter_b.record_at(std::slice::from_ref(&p), &SessionResult::Success, yesterday);
    counter_b.record_at(std::slice::from_ref(&p), &failure("192.0.2.1"), yesterday);
    a.push(&counter_a).await.expect("Redis up");
    b.push(&counter_b).await.expect("Redis up");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let due = a.due(now).await.expect("Redis up");
    assert_eq!(due, vec![(period, "example.net".to_string())]);
    assert_eq!(shared_counts(&a, period).await, (1, 2));

    assert_eq!(a.lease(period, "example.net").await, Ok(Lease::Ours));
    assert_eq!(b.lease(period, "example.net").await, Ok(Lease::Theirs));
    assert_eq!(a.lease(period, "example.net").await, Ok(Lease::Ours));
    // A crashes while building and comes back: the lease is still its own.
    drop(a);
    drop(counter_a);
    let counter_a = reopen(&db_a);
    let a = FleetCounts::new(&settings, &counter_a, "relay.test").expect("settings");
    assert_eq!(a.lease(period, "example.net").await, Ok(Lease::Ours));
    assert_eq!(b.lease(period, "example.net").await, Ok(Lease::Theirs));

    a.finish(period, "example.net").await.expect("Redis up");
    assert!(a.due(now).await.expect("Redis up").is_empty());
    assert_eq!(a.lease(period, "example.net").await, Ok(Lease::Theirs));
    assert_eq!(b.lease(period, "example.net").await, Ok(Lease::Theirs));
}
