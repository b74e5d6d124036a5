//! The socketmap policy service (`[policy_service]`, Postfix `smtp_tls_policy_maps =
//! socketmap:inet:HOST:PORT:postfix`), end to end: the real daemon in the lab (its signed root
//! the one trust anchor, `dnssec = "validate"`, the lab's MTA-STS policy host), asked over TCP
//! in netstrings as Postfix's socketmap client asks. Each test is one rule of the answer table
//! (src/policy_service/answer.rs) or of the protocol's bounds.

mod lab;

use lab::dane::{dane_ee, tlsa_for, DaneScene, Params};
use lab::dns::Zone;
use lab::https::{PolicyServer, Response};
use lab::relay::Relay;
use lab::sts::policy;
use lab::WAIT;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The lab host octet the policy service listens on.
const SERVICE_HOST: u8 = 84;

/// A signed lab root with DANE helpers, an MTA-STS policy host, and the daemon serving the
/// socketmap.
struct Scene {
    dane: DaneScene,
    https: PolicyServer,
}

impl Scene {
    async fn new() -> Scene {
        let dane = DaneScene::new().await;
        let https = PolicyServer::start(dane.lab(), 80).await;
        Scene { dane, https }
    }

    fn service_addr(&self) -> SocketAddr {
        SocketAddr::from((self.dane.lab().ip(SERVICE_HOST), self.dane.lab().port()))
    }

    /// The daemon with `[policy_service]` at [`Scene::service_addr`] plus `extra` keys of that
    /// section, and `more` other TOML.
    async fn relay(&self, extra: &str, more: &str) -> Relay {
        self.dane
            .relay(&format!(
                "[mta_sts]\nhttps_port = {}\n[policy_service]\nlisten = \"{}\"\n{extra}\n{more}",
                self.https.port(),
                self.service_addr()
            ))
            .await
    }

    /// Publishes `zone` with the MTA-STS policy `text` for `domain` announced under `id`.
    fn publish_with_policy(&self, zone: Zone, domain: &str, id: &str, text: &str) {
        self.https.publish(&self.dane.lab().ca, domain, text);
        self.dane.publish(self.https.announce(zone, domain, id));
    }

    /// A DANE-EE(3) record for a certificate of `host`.
    fn tlsa(&self, host: &str) -> (Params, Vec<u8>) {
        dane_ee(&self.dane.lab().ca.issue_with(&[host], Default::default()))
    }

    async fn connect(&self) -> Socketmap {
        Socketmap::connect(self.service_addr()).await
    }

    /// One look-up on a new connection: the reply payload.
    async fn ask(&self, key: &str) -> String {
        self.connect().await.ask(key).await
    }
}

/// A socketmap client, as Postfix's dict_sockmap: one request, then its reply.
struct Socketmap {
    stream: TcpStream,
}

impl Socketmap {
    async fn connect(addr: SocketAddr) -> Socketmap {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .unwrap_or_else(|e| panic!("connect to the policy service at {addr}: {e}"));
        Socketmap { stream }
    }

    /// `postfix KEY`, answered.
    async fn ask(&mut self, key: &str) -> String {
        self.send(format!("postfix {key}").as_bytes()).await;
        self.reply()
            .await
            .unwrap_or_else(|| panic!("no reply to {key:?}"))
    }

    async fn send(&mut self, payload: &[u8]) {
        let mut wire = format!("{}:", payload.len()).into_bytes();
        wire.extend_from_slice(payload);
        wire.push(b',');
        self.raw(&wire).await;
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next reply's payload; `None` when the service closed the connection first.
    async fn reply(&mut self) -> Option<String> {
        tokio::time::timeout(WAIT, self.read_reply())
            .await
            .expect("a reply (or a close) in time")
    }

    async fn read_reply(&mut self) -> Option<String> {
        let mut len = Vec::new();
        loop {
            let b = self.byte().await?;
            if b == b':' {
                break;
            }
            assert!(b.is_ascii_digit(), "netstring length byte {b:?}");
            len.push(b);
        }
        let n: usize = String::from_utf8(len).unwrap().parse().unwrap();
        let mut payload = vec![0; n];
        self.stream.read_exact(&mut payload).await.ok()?;
        assert_eq!(self.byte().await, Some(b','), "netstring terminator");
        Some(String::from_utf8(payload).expect("UTF-8 reply"))
    }

    async fn byte(&mut self) -> Option<u8> {
        let mut b = [0u8; 1];
        match self.stream.read(&mut b).await {
            Ok(1) => Some(b[0]),
            _ => None,
        }
    }

    /// The service closed the connection (after any replies already read).
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }
}

/// RFC 8461 §2, RFC 7672: a signed domain whose MX host has usable TLSA records is answered
/// `dane-only`, although it also publishes an enforced MTA-STS policy: the answer
/// postfix-mta-sts-resolver gets wrong (it says `secure match=…`, and Postfix then checks the
/// certificate by PKIX instead of the TLSA records).
#[tokio::test]
async fn a_dane_domain_is_dane_only_even_with_an_enforced_mta_sts_policy() {
    let s = Scene::new().await;
    let zone = s.dane.zone("dane.test", &[(10, 10)]).signed();
    let (params, data) = s.tlsa("mx10.dane.test");
    let zone = s.dane.with_tlsa(zone, "mx10.dane.test", params, &data);
    s.publish_with_policy(
        zone,
        "dane.test",
        "1",
        &policy("enforce", &["mx10.dane.test"]),
    );
    // Signed, TLSA records, no MTA-STS.
    s.dane
        .publish_signed("daneonly.test", 11, &[s.tlsa("mx11.daneonly.test")]);
    let relay = s.relay("", "").await;

    assert_eq!(s.ask("dane.test").await, "OK dane-only");
    assert_eq!(s.ask("daneonly.test").await, "OK dane-only");
    assert_eq!(
        s.ask("DANE.Test.").await,
        "OK dane-only",
        "keys are case-folded"
    );
    // Postfix asks many times a second: the per-host DANE verdicts that delivery logs at info
    // stay out of the default log here.
    let noisy: Vec<String> = relay
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("MX RRset secure"))
        .collect();
    assert!(noisy.is_empty(), "{noisy:#?}");
}

/// Where only some MX hosts have usable TLSA records: `dane` when the others are
/// opportunistic (Postfix's `dane` level decides host by host, as the plan does), `dane-only`
/// when an enforced MTA-STS policy governs the others (never weaker than the plan). A secure
/// TLSA RRset whose only record is unusable (PKIX-EE, RFC 7672 §3.1.3) means mandatory TLS
/// without authentication: `dane`, whose Postfix meaning for such a host is `encrypt`.
#[tokio::test]
async fn partial_and_unusable_tlsa() {
    let s = Scene::new().await;
    let mixed = |domain: &str| {
        let zone = s.dane.zone(domain, &[(10, 10), (20, 20)]).signed();
        let host = format!("mx10.{domain}");
        let (params, data) = s.tlsa(&host);
        s.dane.with_tlsa(zone, &host, params, &data)
    };
    s.dane.publish(mixed("mixed.test"));
    s.publish_with_policy(
        mixed("mixedsts.test"),
        "mixedsts.test",
        "1",
        &policy("enforce", &["*.mixedsts.test"]),
    );
    let issued = s
        .dane
        .lab()
        .ca
        .issue_with(&["mx12.unusable.test"], Default::default());
    s.dane
        .publish_signed("unusable.test", 12, &[((1, 1, 1), tlsa_for(&issued, 1, 1))]);
    let _relay = s.relay("", "").await;

    assert_eq!(s.ask("mixed.test").await, "OK dane");
    assert_eq!(s.ask("mixedsts.test").await, "OK dane-only");
    assert_eq!(s.ask("unusable.test").await, "OK dane");
}

/// RFC 8461 §5: an enforced policy is `secure` with the policy's `mx` patterns as Postfix
/// match names (`*.` becomes a leading dot) and `servername=hostname` (SNI); `require_sni =
/// false` leaves the latter out. An unsigned domain has no DANE.
#[tokio::test]
async fn an_enforced_policy_is_secure_with_its_patterns() {
    let s = Scene::new().await;
    let zone = s.dane.zone("sts.test", &[(10, 10)]);
    s.publish_with_policy(
        zone,
        "sts.test",
        "20261207",
        &policy("enforce", &["mx10.sts.test", "*.backup.sts.test"]),
    );
    let _relay = s.relay("", "").await;

    let want = "OK secure match=mx10.sts.test:.backup.sts.test servername=hostname";
    assert_eq!(s.ask("sts.test").await, want);
    assert_eq!(s.ask("STS.test").await, want);
    assert_eq!(
        s.https.requests("mta-sts.sts.test"),
        1,
        "fetched once, then cached"
    );
}

/// postfix-mta-sts-resolver's options: `testing` is `NOTFOUND` unless `strict_testing`, and
/// `require_sni = false` drops `servername=hostname`. Mode `none` is `NOTFOUND` always.
#[tokio::test]
async fn testing_mode_and_the_resolver_options() {
    let s = Scene::new().await;
    let publish = |domain: &str, mode: &str| {
        let zone = s.dane.zone(domain, &[(10, 10)]);
        let mx = format!("mx10.{domain}");
        s.publish_with_policy(zone, domain, "1", &policy(mode, &[&mx]));
    };
    publish("testing.test", "testing");
    publish("none.test", "none");
    let mut relay = s.relay("", "").await;
    assert_eq!(s.ask("testing.test").await, "NOTFOUND ");
    assert_eq!(s.ask("none.test").await, "NOTFOUND ");
    relay.stop().await;

    let _strict = s
        .relay("strict_testing = true\nrequire_sni = false", "")
        .await;
    assert_eq!(
        s.ask("testing.test").await,
        "OK secure match=mx10.testing.test"
    );
    assert_eq!(s.ask("none.test").await, "NOTFOUND ");
}

/// Keys that name no mail domain of its own are `NOTFOUND` at once: the parent-domain probes
/// Postfix makes after a `NOTFOUND` (`.sts.test` must not get `sts.test`'s policy), explicit
/// next hops, addresses, single labels. A domain without policy, one that does not exist and
/// one with a null MX (RFC 7505) are `NOTFOUND` too.
#[tokio::test]
async fn what_is_not_found() {
    let s = Scene::new().await;
    s.publish_with_policy(
        s.dane.zone("sts.test", &[(10, 10)]),
        "sts.test",
        "1",
        &policy("enforce", &["mx10.sts.test"]),
    );
    s.dane.publish(s.dane.zone("plain.test", &[(10, 11)]));
    s.dane.publish(Zone::new("nullmx.test").null_mx());
    let _relay = s.relay("", "").await;

    let mut conn = s.connect().await;
    for key in [
        ".sts.test",
        ".test",
        "[mx10.sts.test]:25",
        "[mx10.sts.test]",
        "sts.test:587",
        "[127.0.0.1]",
        "127.0.0.1",
        "localhost",
        "plain.test",
        "nowhere.test",
        "nullmx.test",
        "",
    ] {
        assert_eq!(conn.ask(key).await, "NOTFOUND ", "{key:?}");
    }
    assert!(conn.ask("sts.test").await.starts_with("OK secure"));
}

/// RFC 8461 §5: a DNS failure is not the absence of a policy: `TEMP`, never `NOTFOUND` (which
/// would send Postfix to its default level); the same once DNS answers again gives the policy.
#[tokio::test]
async fn a_dns_failure_is_temp() {
    let s = Scene::new().await;
    s.publish_with_policy(
        s.dane.zone("flaky.test", &[(10, 10)]),
        "flaky.test",
        "1",
        &policy("enforce", &["mx10.flaky.test"]),
    );
    s.dane.lab().dns.servfail("flaky.test");
    let relay = s.relay("", "").await;

    let reply = s.ask("flaky.test").await;
    assert!(reply.starts_with("TEMP "), "{reply}");
    s.dane.lab().dns.heal("flaky.test");
    // hickory may keep the failure for a moment; the next look-ups must get the policy.
    let mut answer = String::new();
    for _ in 0..50 {
        answer = s.ask("flaky.test").await;
        if answer.starts_with("OK") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        answer,
        "OK secure match=mx10.flaky.test servername=hostname"
    );
    drop(relay);
}

/// `policy_service.timeout`: a look-up that takes longer (a policy host that answers after
/// 3 s) is `TEMP` in time; it goes on in the background, so the policy is in the daemon's
/// cache for the next request, which no longer fetches.
#[tokio::test]
async fn a_slow_lookup_is_temp_in_time_and_cached_for_the_next() {
    let s = Scene::new().await;
    let text = policy("enforce", &["mx10.slow.test"]);
    s.publish_with_policy(
        s.dane.zone("slow.test", &[(10, 10)]),
        "slow.test",
        "1",
        &text,
    );
    s.https.set(
        "mta-sts.slow.test",
        Response::policy(&text).delay(Duration::from_secs(3)),
    );
    let _relay = s.relay("timeout = \"1s\"", "").await;

    let started = std::time::Instant::now();
    let reply = s.ask("slow.test").await;
    assert!(reply.starts_with("TEMP look-up timed out"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    s.https
        .wait_served("mta-sts.slow.test", 1, Duration::from_secs(10))
        .await;
    let want = "OK secure match=mx10.slow.test servername=hostname";
    let mut answer = String::new();
    for _ in 0..50 {
        answer = s.ask("slow.test").await;
        if answer.starts_with("OK") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, want);
    assert_eq!(
        s.https.requests("mta-sts.slow.test"),
        1,
        "the second look-up fetched nothing"
    );
}

/// The service uses the daemon's own MTA-STS cache: a policy delivery fetched answers the
/// socketmap without another fetch.
#[tokio::test]
async fn the_daemons_cache_answers_without_a_fetch() {
    let s = Scene::new().await;
    s.publish_with_policy(
        s.dane.zone("shared.test", &[(10, 10)]),
        "shared.test",
        "1",
        &policy("enforce", &["mx10.shared.test"]),
    );
    let relay = s.relay("", "").await;
    // `mxguard policy refresh` asks the daemon's cache to fetch (as a delivery would).
    relay.cli(&["policy", "refresh", "shared.test"]).await.ok();
    assert_eq!(s.https.requests("mta-sts.shared.test"), 1);

    assert_eq!(
        s.ask("shared.test").await,
        "OK secure match=mx10.shared.test servername=hostname"
    );
    assert_eq!(
        s.https.requests("mta-sts.shared.test"),
        1,
        "no second fetch"
    );
}

/// The destination table (`delivery.tls_policy_file`) raises what a domain publishes, as
/// delivery applies it: its level is the answer where it demands more.
#[tokio::test]
async fn the_destination_table_raises_the_answer() {
    let s = Scene::new().await;
    s.dane.publish(s.dane.zone("verify.test", &[(10, 10)]));
    s.dane.publish(s.dane.zone("encrypt.test", &[(10, 11)]));
    s.dane.publish(s.dane.zone("auto.test", &[(10, 12)]));
    let table = s.dane.lab().dir().join("tls_policy");
    std::fs::write(
        &table,
        "verify.test verify\nencrypt.test encrypt\nauto.test may\n",
    )
    .unwrap();
    let more = format!(
        "[delivery]\ntls_policy_file = {:?}\n",
        table.display().to_string()
    );
    let _relay = s.relay("", &more).await;

    assert_eq!(s.ask("verify.test").await, "OK verify servername=hostname");
    assert_eq!(s.ask("encrypt.test").await, "OK encrypt");
    assert_eq!(s.ask("auto.test").await, "NOTFOUND ");
}

/// Postfix keeps its connection for many look-ups: a thousand requests on one connection are
/// answered in order, and so are requests sent together in one write (pipelined).
#[tokio::test]
async fn many_requests_on_one_connection() {
    let s = Scene::new().await;
    s.publish_with_policy(
        s.dane.zone("sts.test", &[(10, 10)]),
        "sts.test",
        "1",
        &policy("enforce", &["mx10.sts.test"]),
    );
    let _relay = s.relay("", "").await;
    let secure = "OK secure match=mx10.sts.test servername=hostname";

    let mut conn = s.connect().await;
    for i in 0..1000 {
        match i % 3 {
            0 => assert_eq!(conn.ask("sts.test").await, secure, "request {i}"),
            1 => assert_eq!(conn.ask(".sts.test").await, "NOTFOUND ", "request {i}"),
            _ => assert_eq!(conn.ask("[sts.test]:25").await, "NOTFOUND ", "request {i}"),
        }
    }
    let mut batch = Vec::new();
    for key in ["sts.test", ".test", "sts.test"] {
        let payload = format!("postfix {key}");
        batch.extend_from_slice(format!("{}:{payload},", payload.len()).as_bytes());
    }
    conn.raw(&batch).await;
    assert_eq!(conn.reply().await.as_deref(), Some(secure));
    assert_eq!(conn.reply().await.as_deref(), Some("NOTFOUND "));
    assert_eq!(conn.reply().await.as_deref(), Some(secure));
}

/// Hostile input costs a `PERM` reply, a closed connection and a log line, never the
/// service: an oversized netstring (refused from its length alone), a broken netstring, a
/// request that is not `NAME KEY`, bytes that are not UTF-8. The service answers afterwards.
#[tokio::test]
async fn protocol_errors_get_perm_and_a_closed_connection() {
    let s = Scene::new().await;
    s.dane.publish(s.dane.zone("plain.test", &[(10, 11)]));
    let relay = s.relay("", "").await;

    let cases: [(&str, &[u8], &str); 6] = [
        (
            "oversized",
            b"100000:postfix ",
            "PERM request of 100000 bytes is longer than the 1024 allowed",
        ),
        ("endless length", b"99999999999999999999", "PERM request of"),
        (
            "no colon",
            b"12;postfix a.b,",
            "PERM netstring length is not a decimal number",
        ),
        (
            "bad terminator",
            b"10:postfix a.b;",
            "PERM netstring does not end with ','",
        ),
        ("no key", b"7:postfix,", "PERM request is not `NAME KEY`"),
        (
            "not UTF-8",
            b"11:postfix \xff\xfe\xfd,",
            "PERM request is not UTF-8",
        ),
    ];
    for (case, bytes, want) in cases {
        let mut conn = s.connect().await;
        conn.raw(bytes).await;
        let reply = conn.reply().await.unwrap_or_default();
        assert!(reply.starts_with(want), "{case}: {reply:?}");
        assert!(conn.closed().await, "{case}: the connection is closed");
    }
    relay
        .wait_for_log(
            |l| l.contains("policy service: ") && l.contains("closing the connection"),
            WAIT,
        )
        .await;
    // A 1024-byte request is still one.
    let mut conn = s.connect().await;
    let key = format!(
        "{}.test",
        "a".repeat(1024 - "postfix ".len() - ".test".len())
    );
    assert_eq!(conn.ask(&key).await, "NOTFOUND ");
    assert_eq!(conn.ask("plain.test").await, "NOTFOUND ");
}

/// A port already taken stops start-up with an error that names the key.
#[tokio::test]
async fn a_listen_address_in_use_names_the_key() {
    let s = Scene::new().await;
    let taken = std::net::TcpListener::bind(s.service_addr()).expect("bind the service address");
    let mut config = s.dane.lab().relay_config();
    // The lab holds its SMTP listener address until a relay starts: listen elsewhere.
    config.listen = SocketAddr::from((s.dane.lab().ip(85), s.dane.lab().port()));
    let config = config.toml(&format!(
        "[policy_service]\nlisten = \"{}\"\n",
        s.service_addr()
    ));
    let path = s.dane.lab().dir().join("taken.toml");
    std::fs::write(&path, config.render()).unwrap();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mxguard"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .expect("mxguard exits in time")
    .expect("run mxguard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("policy_service.listen {}", s.service_addr())),
        "{stderr}"
    );
    drop(taken);
}
