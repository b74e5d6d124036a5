//! Prometheus metrics (`[metrics] listen`), scraped with a real HTTP client (reqwest) from
//! the real binary after lab deliveries: each count moves as the deliveries say it must, the
//! gauges follow the queue (deferred, then held), label values stay bounded (no domain or
//! address of a peer), and `/healthz` answers 200 or 503 with its reason.

mod lab;

use lab::dane::DaneScene;
use lab::https::PolicyServer;
use lab::relay::Relay;
use lab::smtp::Behaviour;
use lab::sts::policy;
use lab::WAIT;
use std::time::Duration;

fn client() -> reqwest::Client {
    policy_cache::crypto::install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// The `host:port` the relay serves metrics on (it was told port 0).
async fn metrics_addr(relay: &Relay) -> String {
    let line = relay
        .wait_for_log(|l| l.contains("metrics on http://"), WAIT)
        .await;
    let rest = &line[line.find("http://").unwrap() + "http://".len()..];
    rest[..rest.find('/').unwrap()].to_string()
}

async fn get(url: &str) -> (u16, String, String) {
    let r = client().get(url).send().await.expect("an answer");
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, content_type, r.text().await.expect("a body"))
}

/// The value of series `series` (name and labels exactly as exposed), `None` when absent.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

#[track_caller]
fn assert_value(text: &str, series: &str, expect: f64) {
    assert_eq!(value(text, series), Some(expect), "{series} in:\n{text}");
}

/// Scrapes until `series` has `expect` (gauges are published every few seconds).
async fn wait_for_value(addr: &str, series: &str, expect: f64) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, _, text) = get(&format!("http://{addr}/metrics")).await;
        if value(&text, series) == Some(expect) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never became {expect}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn counts_move_with_lab_deliveries_and_gauges_follow_the_queue() {
    let s = DaneScene::new().await;
    let https = PolicyServer::start(s.lab(), 80).await;
    let _dane_mx = s.dane_ee_domain("dane.test", 10).await;
    let _plain_mx = s
        .lab()
        .domain_with_mx("plain.test", 20, Behaviour::plain())
        .await;
    // sts.test: enforce, but its MX offers no STARTTLS: deferred, starttls-not-supported.
    let _sts_mx = s.lab().mx(30, Behaviour::plain()).await;
    let zone = https.announce(s.zone("sts.test", &[(10, 30)]), "sts.test", "7");
    s.publish(zone);
    https.publish(&s.lab().ca, "sts.test", &policy("enforce", &["*.sts.test"]));
    let mut relay = s
        .relay(&format!(
            "[mta_sts]\nhttps_port = {}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [queue]\nmin_backoff = \"1h\"\nmax_backoff = \"2h\"\n",
            https.port()
        ))
        .await;
    let addr = metrics_addr(&relay).await;

    let (status, _, body) = get(&format!("http://{addr}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, content_type, before) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert_value(&before, "mxguard_queue_messages{state=\"deferred\"}", 0.0);

    s.send(&relay, "bob@dane.test", "dane", "sent").await;
    s.send(&relay, "carol@plain.test", "plain", "sent").await;
    let deferred = s.send(&relay, "dave@sts.test", "sts", "deferred").await;

    let listener = relay.addr().to_string();
    let text = wait_for_value(&addr, "mxguard_queue_messages{state=\"deferred\"}", 1.0).await;
    assert_value(
        &text,
        &format!("mxguard_messages_received_total{{listener=\"{listener}\"}}"),
        3.0,
    );
    for (series, n) in [
        (
            "mxguard_deliveries_total{status=\"sent\",tls=\"verified\",policy=\"dane\"}",
            1.0,
        ),
        (
            "mxguard_deliveries_total{status=\"sent\",tls=\"none\",policy=\"none\"}",
            1.0,
        ),
        (
            "mxguard_deliveries_total{status=\"deferred\",tls=\"none\",policy=\"mta-sts\"}",
            1.0,
        ),
        // sts.test's, and plain.test's: an opportunistic session without STARTTLS counts as
        // TLS-RPT counts it (no-policy-found, starttls-not-supported).
        (
            "mxguard_tls_failures_total{result_type=\"starttls-not-supported\"}",
            2.0,
        ),
        ("mxguard_policy_fetches_total{outcome=\"ok\"}", 1.0),
        ("mxguard_policy_cache_entries", 1.0),
        ("mxguard_delivery_duration_seconds_count", 3.0),
        ("mxguard_smtp_sessions{direction=\"inbound\"}", 0.0),
        ("mxguard_queue_messages{state=\"active\"}", 0.0),
        ("mxguard_queue_messages{state=\"hold\"}", 0.0),
    ] {
        assert_value(&text, series, n);
    }
    // Every destination's MX was looked up under DNSSEC, and dane.test's TLSA record.
    let mx = value(
        &text,
        "mxguard_dns_lookups_total{type=\"MX\",outcome=\"ok\"}",
    )
    .unwrap_or(0.0);
    assert!(mx >= 3.0, "{text}");
    let tlsa = value(
        &text,
        "mxguard_dns_lookups_total{type=\"TLSA\",outcome=\"ok\"}",
    );
    assert!(tlsa.unwrap_or(0.0) >= 1.0, "{text}");
    assert!(
        value(&text, "mxguard_spool_free_bytes").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    let age = value(&text, "mxguard_queue_oldest_message_age_seconds").unwrap();
    assert!((0.0..60.0).contains(&age), "{text}");
    // Bounded labels: no recipient, domain or peer address anywhere.
    let mx_ip = format!("{}\"", s.lab().ip(10));
    for word in ["dane.test", "plain.test", "sts.test", "bob@", &mx_ip] {
        assert!(!text.contains(word), "{word} in:\n{text}");
    }

    // An operator holds the deferred message: the gauges follow.
    let out = relay.queue(&["hold", &deferred.id]).await;
    assert_eq!(out.status, 0, "{out:#?}");
    let text = wait_for_value(&addr, "mxguard_queue_messages{state=\"hold\"}", 1.0).await;
    assert_value(&text, "mxguard_queue_messages{state=\"deferred\"}", 0.0);
    assert_value(&text, "mxguard_queue_oldest_message_age_seconds", 0.0);
    let out = relay.queue(&["release", &deferred.id]).await;
    assert_eq!(out.status, 0, "{out:#?}");
    wait_for_value(&addr, "mxguard_queue_messages{state=\"hold\"}", 0.0).await;

    let (status, _, _) = get(&format!("http://{addr}/nothing-here")).await;
    assert_eq!(status, 404);
    let r = client()
        .post(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);

    // Restarted with the message still held from before: the scan counts it.
    let out = relay.queue(&["hold", &deferred.id]).await;
    assert_eq!(out.status, 0, "{out:#?}");
    relay.restart().await;
    let addr = metrics_addr_since_restart(&relay).await;
    wait_for_value(&addr, "mxguard_queue_messages{state=\"hold\"}", 1.0).await;
}

/// The metrics address logged by the latest start.
async fn metrics_addr_since_restart(relay: &Relay) -> String {
    let lines = relay.log_lines();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("metrics on http://"))
        .expect("a metrics line");
    let rest = &line[line.find("http://").unwrap() + "http://".len()..];
    rest[..rest.find('/').unwrap()].to_string()
}

#[tokio::test]
async fn healthz_is_503_with_its_reason_when_the_spool_refuses_mail() {
    let s = DaneScene::new().await;
    // More free space demanded than any disk has: new mail would get 452 4.3.1.
    let relay = s
        .relay("[metrics]\nlisten = \"127.0.0.1:0\"\n[queue]\nmin_free = 9000000000000000000\n")
        .await;
    let addr = metrics_addr(&relay).await;
    let (status, _, body) = get(&format!("http://{addr}/healthz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("below queue.min_free"), "{body}");
    // Metrics are served all the same.
    let (status, _, text) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    assert!(text.contains("mxguard_spool_free_bytes "), "{text}");
}
