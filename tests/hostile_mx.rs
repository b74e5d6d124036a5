//! Hostile MX hosts cost a bounded time and memory, get a precise deferral, and do not hold
//! up mail to other destinations delivered at the same time: a greeting one byte at a time, an
//! endless multi-line reply, a 10 MB reply line, binary garbage, a TLS handshake that stalls.
//! The relay runs with `command_timeout = 3s`; every reply, however it arrives, must be
//! complete within that (mail-send's reads run under it, and smtp-proto keeps at most 4 KiB of
//! a reply's text).

mod lab;

use lab::dns::Zone;
use lab::raw::{RawServer, Script};
use lab::relay::{DeliveryLine, Relay};
use lab::smtp::Behaviour;
use lab::submit::{message, Submission};
use lab::{Lab, WAIT};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SENDER: &str = "alice@sender.test";
const EVIL: &str = "bob@evil.test";
const GOOD: &str = "carol@good.test";
/// `[delivery] command_timeout` in these tests.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// A lab with `evil.test` (its MX a raw server playing `script`, lab host 3) and `good.test`
/// (a well-behaved MX, lab host 4), and the relay.
async fn scene(script: Script) -> (Lab, RawServer, lab::smtp::SmtpServer, Relay) {
    // Every outcome here is a deferral: no bounce, so no MX for the sender's domain.
    let lab = Lab::new().await;
    lab.zone(
        Zone::new("evil.test")
            .mx(10, "mx.evil.test")
            .a("mx.evil.test", lab.ip(3)),
    );
    let evil = RawServer::start(SocketAddr::new(lab.ip(3).into(), lab.port()), script).await;
    let good = lab.domain_with_mx("good.test", 4, Behaviour::plain()).await;
    let config = lab
        .relay_config()
        .toml("[delivery]\ncommand_timeout = \"3s\"\n[queue]\nmin_backoff = \"1h\"\nmax_backoff = \"2h\"\n");
    let relay = lab.start_relay(config).await;
    (lab, evil, good, relay)
}

fn mail(to: &str) -> Submission {
    Submission::new(SENDER, message(SENDER, to, "hostile", "Hello.\n")).rcpt(to)
}

/// Sends one message to the hostile domain and one to the good one, together. The good one
/// must be delivered while the hostile one is still pending (well within the command
/// timeout); the hostile one is deferred within a few command timeouts. Returns the hostile
/// one's line and how long it took.
async fn both(relay: &Relay, good: &lab::smtp::SmtpServer) -> (DeliveryLine, Duration) {
    let mark = relay.log_mark();
    let start = Instant::now();
    relay.submit(&mail(EVIL)).await;
    relay.submit(&mail(GOOD)).await;
    good.next_message(WAIT).await;
    let good_after = start.elapsed();
    assert!(
        good_after < COMMAND_TIMEOUT,
        "mail to the good domain waited {good_after:?} behind the hostile one"
    );
    let d = relay.wait_for_delivery(mark, EVIL, "deferred", WAIT).await;
    (d, start.elapsed())
}

/// Peak memory of the relay process (VmHWM), in MB.
fn peak_rss_mb(relay: &Relay) -> u64 {
    let pid = relay.pid().expect("relay running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[track_caller]
fn assert_bounded(d: &DeliveryLine, took: Duration, relay: &Relay) {
    assert_eq!(d.status, "deferred", "{}", d.line);
    assert!(d.reply.starts_with("4"), "a temporary failure: {}", d.line);
    assert!(
        took < COMMAND_TIMEOUT * 4,
        "the hostile MX held the delivery {took:?}: {}",
        d.line
    );
    let rss = peak_rss_mb(relay);
    assert!(rss < 100, "peak RSS {rss} MB");
}

#[tokio::test]
async fn a_greeting_one_byte_at_a_time_times_out() {
    let (_lab, evil, good, relay) = scene(Script::Trickle { ms: 200 }).await;
    let (d, took) = both(&relay, &good).await;
    assert_bounded(&d, took, &relay);
    assert!(d.reply.contains("mx.evil.test"), "{}", d.line);
    assert!(evil.connections() >= 1);
}

#[tokio::test]
async fn an_endless_multiline_reply_times_out_in_bounded_memory() {
    let (_lab, _evil, good, relay) = scene(Script::EndlessMultiline).await;
    let (d, took) = both(&relay, &good).await;
    assert_bounded(&d, took, &relay);
}

#[tokio::test]
async fn a_ten_megabyte_reply_line_costs_no_ten_megabytes() {
    let (_lab, _evil, good, relay) = scene(Script::LongLine {
        bytes: 10 * 1024 * 1024,
    })
    .await;
    let (d, took) = both(&relay, &good).await;
    assert_bounded(&d, took, &relay);
}

#[tokio::test]
async fn binary_garbage_is_a_deferral_not_a_crash() {
    let (_lab, _evil, good, mut relay) = scene(Script::Garbage).await;
    let (d, took) = both(&relay, &good).await;
    assert_bounded(&d, took, &relay);
    assert!(relay.is_running(), "the relay survived");
}

#[tokio::test]
async fn a_tls_handshake_that_stalls_times_out() {
    let (_lab, _evil, good, relay) = scene(Script::StallTls).await;
    let (d, took) = both(&relay, &good).await;
    assert_bounded(&d, took, &relay);
    relay
        .wait_for_log(
            |l| l.contains("mx.evil.test") && l.contains("TLS handshake failed"),
            WAIT,
        )
        .await;
}

/// A server that answers DATA with 250 instead of 354 (RFC 5321 §4.3.2) never got the
/// message: deferred as a protocol error of the host, 4.5.0, the message kept, never "sent";
/// with and without PIPELINING. The same for an end of data answered 354.
#[tokio::test]
async fn a_250_to_data_is_a_protocol_error_not_a_delivery() {
    for pipelining in [false, true] {
        let lab = Lab::new().await;
        let mut b = Behaviour::plain();
        b.extensions.pipelining = pipelining;
        b.data_reply = Some("250 2.0.0 Ok: queued".into());
        let mx = lab.domain_with_mx("evil.test", 3, b).await;
        let relay = lab.relay().await;
        let mark = relay.log_mark();
        relay.submit(&mail(EVIL)).await;
        let d = relay.wait_for_delivery(mark, EVIL, "deferred", WAIT).await;
        assert_eq!(d.field("dsn"), Some("4.5.0"), "{}", d.line);
        assert!(
            d.reply
                .starts_with("451 4.5.0 protocol error: host mx.evil.test[")
                && d.reply.contains("answered DATA with 250 2.0.0 Ok: queued"),
            "pipelining {pipelining}: {}",
            d.line
        );
        assert!(mx.messages().is_empty());
        let listed = relay.queue(&["list"]).await;
        assert!(
            listed.ok().stdout.contains(EVIL),
            "still queued: {}",
            listed.stdout
        );
    }

    let lab = Lab::new().await;
    let mut b = Behaviour::plain();
    b.end_of_data_reply = Some("354 keep going".into());
    let _mx = lab.domain_with_mx("evil.test", 3, b).await;
    let relay = lab.relay().await;
    let mark = relay.log_mark();
    relay.submit(&mail(EVIL)).await;
    let d = relay.wait_for_delivery(mark, EVIL, "deferred", WAIT).await;
    assert!(
        d.reply.starts_with("451 4.5.0 protocol error")
            && d.reply.contains("answered the end of data with 354"),
        "{}",
        d.line
    );
}
