//! A fleet's MTA-STS cache on Redis (`[cache] backend = "redis"`), against a real
//! `redis-server`: nodes use a policy any node fetched (also while the policy host is down),
//! one node refreshes while the others keep their copy, a shared copy never stands in for a
//! policy the TXT record no longer announces, and Redis killed and started again (empty) costs
//! nothing but the sharing. In-process caches on a manual clock, as in tests/mta_sts_cache.rs,
//! plus two real relays end to end. Without redis-server each test says SKIPPED and passes.

mod lab;

use lab::dns::Zone;
use lab::https::{PolicyServer, Response};
use lab::redis_server::RedisServer;
use lab::{Lab, WAIT};
use policy_cache::shared::SharedSettings;
use policy_cache::{ManualClock, PolicyCache, Settings, StsLookup};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const DOMAIN: &str = "example.test";
const HOST: &str = "mta-sts.example.test";
const DAY: u64 = 86_400;

fn policy_text(mx: &str) -> String {
    format!("version: STSv1\nmode: enforce\nmx: {mx}\nmax_age: {DAY}\n")
}

/// The lab, a policy host, one Redis, and nodes made on demand (each its own cache
/// directory), all on one manual clock.
struct Fleet {
    lab: Lab,
    server: PolicyServer,
    redis: RedisServer,
    clock: Arc<ManualClock>,
    settings: Settings,
    nodes: std::sync::atomic::AtomicUsize,
}

impl Fleet {
    async fn new() -> Option<Fleet> {
        let lab = Lab::new().await;
        let redis = RedisServer::start(lab.dir())?;
        let server = PolicyServer::start(&lab, 80).await;
        server.publish(&lab.ca, DOMAIN, &policy_text("mx.example.test"));
        let settings = Settings {
            https_port: server.port(),
            extra_ca_files: vec![lab.ca.write_pem(lab.dir())],
            connect_timeout: Duration::from_secs(3),
            fetch_timeout: Duration::from_secs(5),
            shared: Some(SharedSettings {
                url: redis.url(),
                prefix: "fleet-test:".into(),
                timeout: Duration::from_millis(500),
            }),
            ..Settings::default()
        };
        let fleet = Fleet {
            lab,
            server,
            redis,
            clock: Arc::new(ManualClock::new(SystemTime::now())),
            settings,
            nodes: Default::default(),
        };
        fleet.announce("1");
        Some(fleet)
    }

    fn announce(&self, id: &str) {
        let zone = Zone::new(DOMAIN)
            .mx(10, "mx.example.test")
            .a("mx.example.test", self.lab.ip(3));
        self.lab.zone(self.server.announce(zone, DOMAIN, id));
    }

    /// A new node: a cache of its own, sharing the fleet's Redis.
    fn node(&self) -> PolicyCache {
        let n = self
            .nodes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PolicyCache::open(
            &self.lab.dir().join(format!("node-{n}")),
            self.lab.resolver(),
            self.settings.clone(),
            self.clock.clone(),
        )
        .expect("a policy cache")
    }

    fn requests(&self) -> usize {
        self.server.requests(HOST)
    }
}

#[track_caller]
fn policy(lookup: StsLookup) -> Arc<policy_cache::ActivePolicy> {
    match lookup {
        StsLookup::Policy(p) => p,
        other => panic!("no policy: {other:?}"),
    }
}

#[tokio::test]
async fn a_node_enforces_the_policy_another_fetched_while_the_policy_host_is_down() {
    let Some(f) = Fleet::new().await else { return };
    let a = f.node();
    let fetched = policy(a.lookup(DOMAIN).await);
    assert_eq!(f.requests(), 1);

    f.server.set(HOST, Response::status(503));
    let b = f.node();
    let adopted = policy(b.lookup(DOMAIN).await);
    assert_eq!(f.requests(), 1, "node B did not fetch");
    assert_eq!(adopted.policy, fetched.policy);
    assert_eq!(adopted.id, "1");
    // Adopted as fetched then: it expires when A's copy does.
    assert_eq!(adopted.fetched_at, fetched.fetched_at);
    assert_eq!(adopted.expires_at, fetched.expires_at);
    // And it is B's own now: Redis may go, B keeps it.
    drop(a);
    let mut f = f;
    f.redis.kill();
    let kept = policy(b.lookup(DOMAIN).await);
    assert_eq!(kept.policy, fetched.policy);
}

#[tokio::test]
async fn one_node_refreshes_and_the_others_take_its_copy() {
    let Some(f) = Fleet::new().await else { return };
    let (a, b) = (f.node(), f.node());
    let first = policy(a.lookup(DOMAIN).await);
    policy(b.lookup(DOMAIN).await);
    assert_eq!(f.requests(), 1);

    // Past every refresh time (at most 90 % of max_age), both refreshers run at once against a
    // slow policy host: one fetches, the other leaves it to it.
    f.clock.advance(Duration::from_secs(DAY * 9 / 10 + 60));
    f.server.set(
        HOST,
        Response::policy(&policy_text("mx.example.test")).delay(Duration::from_secs(1)),
    );
    let (ra, rb) = tokio::join!(a.refresh_due(), b.refresh_due());
    assert_eq!(f.requests(), 2, "one refetch for both nodes: {ra:?} {rb:?}");
    assert_eq!(ra.refreshed + rb.refreshed, 1, "{ra:?} {rb:?}");
    // The one that waited looks again soon and takes the new copy without fetching.
    f.clock.advance(Duration::from_secs(31));
    let (ra, rb) = tokio::join!(a.refresh_due(), b.refresh_due());
    assert_eq!(ra.refreshed + rb.refreshed, 1, "{ra:?} {rb:?}");
    assert_eq!(f.requests(), 2);
    let (pa, pb) = (
        policy(a.lookup(DOMAIN).await),
        policy(b.lookup(DOMAIN).await),
    );
    assert!(pa.fetched_at > first.fetched_at);
    assert_eq!(
        pa.fetched_at, pb.fetched_at,
        "both hold the same, newer copy"
    );
}

#[tokio::test]
async fn a_new_id_is_fetched_once_for_the_fleet() {
    let Some(f) = Fleet::new().await else { return };
    let (a, b) = (f.node(), f.node());
    policy(a.lookup(DOMAIN).await);
    policy(b.lookup(DOMAIN).await);
    f.server
        .set(HOST, Response::policy(&policy_text("mx2.example.test")));
    f.announce("2");
    let pa = policy(a.lookup(DOMAIN).await);
    let pb = policy(b.lookup(DOMAIN).await);
    assert_eq!((pa.id.as_str(), pb.id.as_str()), ("2", "2"));
    assert_eq!(pb.policy.mx[0].0, "mx2.example.test");
    assert_eq!(f.requests(), 2, "id 1 once, id 2 once");
}

#[tokio::test]
async fn a_shared_copy_of_another_id_is_never_used() {
    let Some(f) = Fleet::new().await else { return };
    let a = f.node();
    policy(a.lookup(DOMAIN).await);
    // The domain announces a new policy that cannot be fetched: a node without a copy of its
    // own must not take id 1 from Redis for it; it answers as a single node would.
    f.announce("2");
    f.server.set(HOST, Response::status(500));
    let b = f.node();
    match b.lookup(DOMAIN).await {
        StsLookup::Policy(p) => panic!("used {p:?}"),
        StsLookup::NoPolicy { .. } | StsLookup::TempFail { .. } => {}
    }
    assert_eq!(f.requests(), 2, "B tried to fetch id 2 itself");
}

#[tokio::test]
async fn redis_killed_and_started_again_costs_only_the_sharing() {
    let Some(mut f) = Fleet::new().await else {
        return;
    };
    let a = f.node();
    policy(a.lookup(DOMAIN).await);
    f.redis.kill();
    // A node that never saw the policy: a cache miss, fetched as without Redis, promptly.
    let b = f.node();
    let started = std::time::Instant::now();
    policy(b.lookup(DOMAIN).await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(f.requests(), 2);
    // A node with the policy keeps using it without a word to Redis.
    policy(a.lookup(DOMAIN).await);

    // Back, empty: the next fetch is shared again.
    f.redis.start_again();
    tokio::time::sleep(policy_cache::shared::RECONNECT_INTERVAL).await;
    let c = f.node();
    policy(c.lookup(DOMAIN).await);
    assert_eq!(f.requests(), 3, "Redis came back empty: C fetched");
    let d = f.node();
    policy(d.lookup(DOMAIN).await);
    assert_eq!(f.requests(), 3, "D took C's copy");
    let _ = WAIT;
}

/// Two real relays on one Redis: node A delivers to an MTA-STS domain (fetching its policy);
/// the policy host goes down; node B, which never fetched it, delivers under that policy
/// (policy=mta-sts, the same id and mx line), and the policy host saw one fetch in all.
#[tokio::test]
async fn two_relays_share_one_policy_end_to_end() {
    use lab::smtp::Behaviour;
    let lab = Lab::new().await;
    let Some(redis) = RedisServer::start(lab.dir()) else {
        return;
    };
    let https = PolicyServer::start(&lab, 80).await;
    let (cert, key) = lab.ca.issue(&["mx10.sts.test", "mx10.other.test"]);
    let mx = lab.mx(10, Behaviour::plain().starttls(&cert, &key)).await;
    let zone = Zone::new("sts.test")
        .mx(10, "mx10.sts.test")
        .a("mx10.sts.test", lab.ip(10));
    lab.zone(https.announce(zone, "sts.test", "42"));
    https.publish(
        &lab.ca,
        "sts.test",
        &policy_text("*.sts.test").replace("max_age: 86400", "max_age: 604800"),
    );
    let fleet_toml = format!(
        "[mta_sts]\nhttps_port = {}\n[cache]\nbackend = \"redis\"\nredis_url = \"{}\"\n",
        https.port(),
        redis.url()
    );
    let config_a = lab.relay_config().toml(&fleet_toml);
    let mut config_b = config_a.clone();
    config_b.data_dir = lab.dir().join("node-b/data");
    config_b.listen = std::net::SocketAddr::new(lab.ip(200).into(), config_a.listen.port());
    let node_a = lab.start_relay(config_a).await;
    let dir_b = lab.dir().join("node-b");
    std::fs::create_dir_all(&dir_b).unwrap();
    let node_b = lab::relay::Relay::start(config_b, &dir_b).await;

    let a = send(&node_a, "bob@sts.test").await;
    assert_eq!(a.field("policy"), Some("mta-sts"), "{}", a.line);
    https.set("mta-sts.sts.test", Response::status(503));
    let b = send(&node_b, "carol@sts.test").await;
    assert_eq!(b.field("policy"), Some("mta-sts"), "{}", b.line);
    assert_eq!(b.field("sts_id"), Some("42"), "{}", b.line);
    assert_eq!(b.field("sts_mx"), Some("*.sts.test"), "{}", b.line);
    assert_eq!(b.field("tls"), Some("verified"), "{}", b.line);
    assert_eq!(
        https.requests("mta-sts.sts.test"),
        1,
        "one fetch for the fleet"
    );
    assert!(node_b
        .log_lines()
        .iter()
        .any(|l| l.contains("using the policy another node fetched")));
    assert_eq!(mx.messages().len(), 2);

    // Redis goes away: node B keeps delivering from its own copy, with one warning for the
    // whole outage, and says so when Redis is back (seen at its next shared look-up, the
    // first fetch of another domain's policy).
    let mut redis = redis;
    redis.kill();
    https.set(
        "mta-sts.sts.test",
        Response::policy(&policy_text("*.sts.test")),
    );
    for to in ["d1@sts.test", "d2@sts.test", "d3@sts.test"] {
        send(&node_b, to).await;
    }
    let other = || {
        Zone::new("other.test")
            .mx(10, "mx10.other.test")
            .a("mx10.other.test", lab.ip(10))
    };
    lab.zone(https.announce(other(), "other.test", "1"));
    https.publish(&lab.ca, "other.test", &policy_text("*.other.test"));
    let outage = |relay: &lab::relay::Relay| {
        relay
            .log_lines()
            .iter()
            .filter(|l| l.contains("shared cache: Redis at") && l.contains("unavailable"))
            .count()
    };
    send(&node_b, "e@other.test").await;
    assert_eq!(outage(&node_b), 1, "one warning per outage");
    redis.start_again();
    tokio::time::sleep(policy_cache::shared::RECONNECT_INTERVAL).await;
    https.set("mta-sts.other.test", Response::status(503));
    lab.zone(https.announce(other(), "other.test", "2"));
    let mark = node_b.log_mark();
    let m = lab::submit::Submission::new(
        "alice@sender.test",
        lab::submit::message("alice@sender.test", "f@other.test", "fleet", "Hi.\n"),
    )
    .rcpt("f@other.test");
    node_b.submit(&m).await;
    node_b
        .wait_for_log_since(
            mark,
            |l| l.contains("shared cache: Redis at") && l.contains("is back"),
            WAIT,
        )
        .await;
    assert_eq!(outage(&node_b), 1);
}

async fn send(relay: &lab::relay::Relay, to: &str) -> lab::relay::DeliveryLine {
    use lab::submit::{message, Submission};
    let m = Submission::new(
        "alice@sender.test",
        message("alice@sender.test", to, "fleet", "Hi.\n"),
    )
    .rcpt(to);
    let mark = relay.log_mark();
    relay.submit(&m).await;
    relay.wait_for_delivery(mark, to, "sent", WAIT).await
}
