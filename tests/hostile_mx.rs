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

/// `evil.test`'s MX (lab host 3) offering STARTTLS with a leaf for `mx.evil.test` issued by
/// an intermediate of the lab CA, followed by `decoys` other intermediates of the lab CA
/// that share the issuer's subject name but not its key (each is a candidate issuer that a
/// path builder must try and reject). With `include_issuer` the real issuer comes last.
async fn mx_with_long_chain(
    lab: &Lab,
    decoys: usize,
    include_issuer: bool,
) -> lab::smtp::SmtpServer {
    let issuer = lab.ca.intermediate(lab::ca::CertOptions::default());
    let issued = issuer.issue_with(&["mx.evil.test"], lab::ca::CertOptions::default());
    let leaf_pem = issued
        .cert_pem
        .split_inclusive("-----END CERTIFICATE-----")
        .next()
        .expect("leaf PEM")
        .to_string();
    let mut chain = leaf_pem;
    for _ in 0..decoys {
        chain.push_str(
            &lab.ca
                .intermediate(lab::ca::CertOptions::default())
                .cert_pem(),
        );
    }
    if include_issuer {
        chain.push_str(&issuer.cert_pem());
    }
    let config = lab::smtp::server_tls_config(&chain, &issued.key_pem);
    lab.domain_with_mx("evil.test", 3, Behaviour::plain().tls_config(config))
        .await
}

/// A chain of 300 certificates (about 150 KB, past the 64 KiB a TLS handshake message may
/// hold): the handshake is refused at once without buffering the chain; as the domain asks
/// for nothing, the mail goes on the plaintext retry (RFC 7435), `tls=none`, and mail to
/// another domain is not held up.
#[tokio::test]
async fn a_chain_of_hundreds_of_certificates_is_refused_in_bounded_time() {
    let lab = Lab::new().await;
    let mx = mx_with_long_chain(&lab, 300, true).await;
    let good = lab.domain_with_mx("good.test", 4, Behaviour::plain()).await;
    let relay = lab.relay().await;
    let mark = relay.log_mark();
    let start = Instant::now();
    relay.submit(&mail(EVIL)).await;
    relay.submit(&mail(GOOD)).await;
    good.next_message(WAIT).await;
    let d = relay.wait_for_delivery(mark, EVIL, "sent", WAIT).await;
    let took = start.elapsed();
    assert_eq!(d.field("tls"), Some("none"), "{}", d.line);
    assert!(took < COMMAND_TIMEOUT, "{took:?}");
    assert_eq!(mx.messages().len(), 1);
    relay
        .wait_for_log(
            |l| l.contains("mx.evil.test") && l.contains("TLS handshake failed"),
            WAIT,
        )
        .await;
    let rss = peak_rss_mb(&relay);
    assert!(rss < 100, "peak RSS {rss} MB");
}

/// A chain that fits in a handshake message (a leaf and 110 look-alike issuers, the real one
/// last) where the domain demands a verified certificate (`verify`): path building gives up
/// after a bounded number of signature checks instead of trying every combination, so the
/// mail is deferred with the certificate failure, promptly, and nothing is sent in clear.
#[tokio::test]
async fn look_alike_issuers_exhaust_the_path_budget_not_the_cpu() {
    let lab = Lab::new().await;
    let mx = mx_with_long_chain(&lab, 110, true).await;
    let table = lab.dir().join("tls_policy");
    std::fs::write(&table, "evil.test verify\n").expect("write tls_policy");
    let config = lab.relay_config().toml(&format!(
        "[delivery]\ntls_policy_file = {:?}\n",
        table.to_string_lossy()
    ));
    let relay = lab.start_relay(config).await;
    let mark = relay.log_mark();
    let start = Instant::now();
    relay.submit(&mail(EVIL)).await;
    let d = relay.wait_for_delivery(mark, EVIL, "deferred", WAIT).await;
    let took = start.elapsed();
    eprintln!("{}", d.line);
    assert!(d.reply.starts_with("4"), "{}", d.line);
    assert!(
        d.field("dsn").is_some_and(|s| s.starts_with("4.7.")),
        "{}",
        d.line
    );
    assert!(
        d.reply
            .starts_with("451 4.7.5 Server certificate not verified: certificate chain too costly"),
        "{}",
        d.line
    );
    assert!(took < COMMAND_TIMEOUT, "{took:?}");
    assert!(mx.messages().is_empty());
}
