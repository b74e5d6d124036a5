//! TLS-RPT (RFC 8460) end to end, against the real binary in the lab: deliveries under each
//! kind of policy, `mxguard tlsrpt send --now`, and the reports that arrive at the lab's
//! collectors (a receiving MX for `mailto:`, an HTTPS receiver for `https:`), decoded and
//! checked field by field and against the RFC's schema.

mod lab;

use lab::dns::Zone;
use lab::relay::Relay;
use lab::smtp::{Behaviour, ReceivedMessage, SmtpServer};
use lab::submit::{message, Submission};
use lab::{Lab, WAIT};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::Value;
use std::io::Read;
use std::time::Duration;

const SENDER: &str = "alice@sender.test";
const COLLECTOR: &str = "reports@collector.test";

fn mail(to: &str) -> Submission {
    Submission::new(SENDER, message(SENDER, to, "tls-rpt", "Hello.\n")).rcpt(to)
}

/// The `[tlsrpt]` table of these tests, plus `extra`.
fn tlsrpt_toml(extra: &str) -> String {
    format!(
        "[tlsrpt]\nenabled = true\norganization_name = \"mxguard lab\"\nsubmitter = \"lab.test\"\n\
         contact_info = \"postmaster@lab.test\"\nsend_delay_max = \"0s\"\n{extra}"
    )
}

/// A domain `domain` whose MX (lab host `n`) behaves as `behaviour`, asking for reports at
/// `rua`.
async fn reporting_domain(
    lab: &Lab,
    domain: &str,
    n: u8,
    behaviour: Behaviour,
    rua: &str,
) -> SmtpServer {
    let mx = format!("mx.{domain}");
    lab.zone(Zone::new(domain).mx(10, &mx).a(&mx, lab.ip(n)).txt(
        &format!("_smtp._tls.{domain}"),
        &format!("v=TLSRPTv1; rua={rua}"),
    ));
    lab.mx(n, behaviour).await
}

/// `plain.test` (its MX, lab host 3, without STARTTLS) asking for mail reports at
/// [`COLLECTOR`], and the collector's MX (lab host 4), which keeps what it receives.
async fn plain_and_collector(lab: &Lab) -> (SmtpServer, SmtpServer) {
    let plain = reporting_domain(
        lab,
        "plain.test",
        3,
        Behaviour::plain(),
        &format!("mailto:{COLLECTOR}"),
    )
    .await;
    let collector = lab
        .domain_with_mx("collector.test", 4, Behaviour::plain())
        .await;
    (plain, collector)
}

/// Sends one message to `to` and waits for its delivery line with `status`.
async fn deliver(relay: &Relay, to: &str, status: &str) {
    let mark = relay.log_mark();
    relay.submit(&mail(to)).await;
    relay.wait_for_delivery(mark, to, status, WAIT).await;
}

/// `mxguard tlsrpt send --now`, which must succeed; its output.
async fn send_now(relay: &Relay) -> String {
    let out = relay.cli(&["tlsrpt", "send", "--now"]).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    out.stdout
}

/// The report carried by a report mail: its headers checked, the gzip'd JSON decoded and
/// checked against the schema.
fn report_of(m: &ReceivedMessage) -> (Value, String) {
    let parsed = MessageParser::default()
        .parse(&m.data)
        .expect("a report message");
    let header = |name: &str| {
        parsed
            .header_raw(name)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} header"))
    };
    let domain = header("TLS-Report-Domain");
    assert_eq!(header("TLS-Report-Submitter"), "lab.test");
    let subject = parsed.subject().expect("Subject");
    assert!(
        subject.starts_with(&format!(
            "Report Domain: {domain} Submitter: lab.test Report-ID: <"
        )),
        "{subject}"
    );
    let content_type = parsed.content_type().expect("Content-Type");
    assert_eq!(content_type.ctype(), "multipart");
    assert_eq!(content_type.subtype(), Some("report"));
    assert_eq!(content_type.attribute("report-type"), Some("tlsrpt"));
    let attachment = parsed
        .attachments()
        .find(|a| {
            a.content_type()
                .is_some_and(|c| c.ctype() == "application" && c.subtype() == Some("tlsrpt+gzip"))
        })
        .expect("an application/tlsrpt+gzip part");
    let name = attachment
        .attachment_name()
        .expect("a file name")
        .to_string();
    assert!(
        name.starts_with(&format!("lab.test!{domain}!")) && name.ends_with(".json.gz"),
        "{name}"
    );
    let json = gunzip(attachment.contents());
    let value: Value = serde_json::from_slice(&json).expect("report JSON");
    mxguard::report::json::check_schema(&value)
        .unwrap_or_else(|e| panic!("schema: {e}\n{value:#}"));
    (value, domain)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gzip");
    out
}

/// The report mail for `domain` among what the collector received.
fn report_for(collector: &SmtpServer, domain: &str) -> Value {
    for m in collector.messages() {
        let (value, d) = report_of(&m);
        if d == domain {
            return value;
        }
    }
    panic!(
        "no report for {domain} among {} messages",
        collector.messages().len()
    );
}

async fn wait_reports(collector: &SmtpServer, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while collector.messages().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} reports arrived",
            collector.messages().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two sessions without STARTTLS and one with TLS, to two domains that ask for mail
/// reports: each gets one report with its own counts; the report mail itself reaches a
/// collector without STARTTLS (nothing stops it) and is not counted.
#[tokio::test]
async fn mail_reports_carry_each_domains_counts() {
    let lab = Lab::new().await;
    let _plain = reporting_domain(
        &lab,
        "plain.test",
        3,
        Behaviour::plain(),
        &format!("mailto:{COLLECTOR}"),
    )
    .await;
    let (cert, key) = lab.ca.issue(&["mx.tls.test"]);
    let _tls = reporting_domain(
        &lab,
        "tls.test",
        5,
        Behaviour::plain().starttls(&cert, &key),
        &format!("mailto:{COLLECTOR}"),
    )
    .await;
    let collector = lab
        .domain_with_mx("collector.test", 4, Behaviour::plain())
        .await;
    // Without reuse, two messages are two sessions (a reused session counts once).
    let config = lab
        .relay_config()
        .toml(&tlsrpt_toml(""))
        .toml("[delivery]\nconnection_reuse = false\n");
    let relay = lab.start_relay(config).await;
    deliver(&relay, "bob@plain.test", "sent").await;
    deliver(&relay, "carol@plain.test", "sent").await;
    deliver(&relay, "dave@tls.test", "sent").await;

    let shown = relay.cli(&["tlsrpt", "show", "plain.test"]).await;
    assert_eq!(shown.status, 0, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("0 successful, 2 failed"),
        "{}",
        shown.stdout
    );

    let out = send_now(&relay).await;
    assert!(
        out.contains("plain.test") && out.contains("tls.test"),
        "{out}"
    );
    wait_reports(&collector, 2).await;

    let plain = report_for(&collector, "plain.test");
    assert_eq!(plain["organization-name"], "mxguard lab");
    assert_eq!(plain["contact-info"], "postmaster@lab.test");
    let report_id = plain["report-id"].as_str().expect("report-id");
    assert!(report_id.ends_with("@lab.test"), "{report_id}");
    let policies = plain["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1, "{plain:#}");
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "no-policy-found");
    assert_eq!(p["policy"]["policy-domain"], "plain.test");
    assert_eq!(p["policy"]["policy-string"], serde_json::json!([]));
    assert_eq!(p["policy"]["mx-host"], serde_json::json!([]));
    assert_eq!(p["summary"]["total-successful-session-count"], 0);
    assert_eq!(p["summary"]["total-failure-session-count"], 2);
    let details = p["failure-details"].as_array().expect("failure-details");
    assert_eq!(details.len(), 1, "{p:#}");
    let d = &details[0];
    assert_eq!(d["result-type"], "starttls-not-supported");
    assert_eq!(d["failed-session-count"], 2);
    assert_eq!(d["receiving-mx-hostname"], "mx.plain.test");
    assert_eq!(d["receiving-ip"], lab.ip(3).to_string());
    assert!(d["sending-mta-ip"].as_str().is_some(), "{d:#}");

    let tls = report_for(&collector, "tls.test");
    let p = &tls["policies"][0];
    assert_eq!(p["summary"]["total-successful-session-count"], 1);
    assert_eq!(p["summary"]["total-failure-session-count"], 0);
    assert!(p
        .get("failure-details")
        .is_none_or(|d| d == &serde_json::json!([])));

    // The reports went to a collector without STARTTLS: never counted.
    let after = relay.cli(&["tlsrpt", "show", "collector.test"]).await;
    assert!(
        after.stdout.contains("no sessions counted"),
        "{}",
        after.stdout
    );
    // Sent once: nothing is left to report.
    assert!(send_now(&relay).await.contains("nothing to report"));
}

/// No `_smtp._tls` record, a malformed one, or two: no report, said once in the log.
#[tokio::test]
async fn domains_without_a_usable_record_get_no_report() {
    let lab = Lab::new().await;
    let _none = lab.domain_with_mx("none.test", 3, Behaviour::plain()).await;
    let _bad = reporting_domain(&lab, "bad.test", 5, Behaviour::plain(), "ftp://x.example").await;
    lab.zone(
        Zone::new("two.test")
            .mx(10, "mx.two.test")
            .a("mx.two.test", lab.ip(6))
            .txt(
                "_smtp._tls.two.test",
                &format!("v=TLSRPTv1; rua=mailto:{COLLECTOR}"),
            )
            .txt(
                "_smtp._tls.two.test",
                "v=TLSRPTv1; rua=mailto:other@collector.test",
            ),
    );
    let _two = lab.mx(6, Behaviour::plain()).await;
    let collector = lab
        .domain_with_mx("collector.test", 4, Behaviour::plain())
        .await;
    let relay = lab
        .start_relay(lab.relay_config().toml(&tlsrpt_toml("")))
        .await;
    for to in ["bob@none.test", "bob@bad.test", "bob@two.test"] {
        deliver(&relay, to, "sent").await;
    }
    let out = send_now(&relay).await;
    for (domain, why) in [
        ("none.test", "no TXT record"),
        ("bad.test", "rua"),
        ("two.test", "2 v=TLSRPTv1 records"),
    ] {
        relay
            .wait_for_log(
                |l| l.contains(&format!("tlsrpt: no report for {domain}")) && l.contains(why),
                WAIT,
            )
            .await;
        assert!(out.contains(domain), "{out}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(collector.messages().is_empty());
}

/// Counts flushed before a restart (and before `kill -9`, once flushed) are in the report.
#[tokio::test]
async fn counts_survive_restarts_and_kill_9() {
    let lab = Lab::new().await;
    let (_plain, collector) = plain_and_collector(&lab).await;
    let mut relay = lab
        .start_relay(lab.relay_config().toml(&tlsrpt_toml("")))
        .await;
    deliver(&relay, "bob@plain.test", "sent").await;
    relay.restart().await;
    deliver(&relay, "carol@plain.test", "sent").await;
    // The flusher runs every 5 s; after it, a kill -9 loses nothing.
    tokio::time::sleep(Duration::from_secs(6)).await;
    relay.kill();
    relay.start_again().await;
    deliver(&relay, "dave@plain.test", "sent").await;
    send_now(&relay).await;
    wait_reports(&collector, 1).await;
    let report = report_for(&collector, "plain.test");
    assert_eq!(
        report["policies"][0]["summary"]["total-failure-session-count"], 3,
        "{report:#}"
    );
}

/// RFC 8460 §5.3: a report must reach a domain whose TLS is broken, or nobody would learn
/// of it. `example.test` enforces MTA-STS, and its MX offers no STARTTLS: its own mail is
/// deferred (and counted under its `sts` policy), but the report mail is delivered, in
/// plaintext, and its session is not counted.
#[tokio::test]
async fn report_mail_reaches_a_domain_whose_tls_fails_under_enforce() {
    let s = lab::sts::StsScene::new().await;
    let mx = s.lab().mx(10, Behaviour::plain()).await;
    let zone = s.example_zone(&[(10, 10)]).txt(
        "_smtp._tls.example.test",
        "v=TLSRPTv1;rua=mailto:reports@example.test",
    );
    s.publish(
        zone,
        "example.test",
        "1",
        &lab::sts::policy("enforce", &["mx10.example.test"]),
    );
    let relay = s
        .relay(&tlsrpt_toml(
            "[queue]\nmin_backoff = \"1h\"\nmax_backoff = \"2h\"\n",
        ))
        .await;
    let mark = relay.log_mark();
    relay.submit(&mail("bob@example.test")).await;
    let d = relay
        .wait_for_delivery(mark, "bob@example.test", "deferred", WAIT)
        .await;
    assert!(d.reply.starts_with("451 4.7.4"), "{}", d.line);

    let mark = relay.log_mark();
    send_now(&relay).await;
    let d = relay
        .wait_for_delivery(mark, "reports@example.test", "sent", WAIT)
        .await;
    assert_eq!(d.field("tls"), Some("none"), "{}", d.line);
    wait_reports(&mx, 1).await;
    let report = report_for(&mx, "example.test");
    let p = &report["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(
        p["policy"]["mx-host"],
        serde_json::json!(["mx10.example.test"])
    );
    let lines = p["policy"]["policy-string"]
        .as_array()
        .expect("policy-string");
    assert!(lines.contains(&Value::from("mode: enforce")), "{p:#}");
    assert!(
        lines.contains(&Value::from("mx: mx10.example.test")),
        "{p:#}"
    );
    assert_eq!(p["summary"]["total-failure-session-count"], 1, "{p:#}");
    assert_eq!(
        p["failure-details"][0]["result-type"],
        "starttls-not-supported"
    );
    let after = relay.cli(&["tlsrpt", "show", "example.test"]).await;
    assert!(
        after.stdout.contains("no sessions counted"),
        "{}",
        after.stdout
    );
}

/// Without `send --now`: when a period (here 5 s, `tlsrpt.interval`) is over, its report goes
/// out by itself, and its `date-range` is that period, aligned on the interval.
#[tokio::test]
async fn a_closed_period_is_reported_by_itself() {
    let lab = Lab::new().await;
    let (_plain, collector) = plain_and_collector(&lab).await;
    let relay = lab
        .start_relay(lab.relay_config().toml(&tlsrpt_toml("interval = \"5s\"\n")))
        .await;
    deliver(&relay, "bob@plain.test", "sent").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while collector.messages().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no report within 45 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = report_for(&collector, "plain.test");
    let start = report["date-range"]["start-datetime"]
        .as_str()
        .expect("start");
    let end = report["date-range"]["end-datetime"].as_str().expect("end");
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339")
            .unix_timestamp()
    };
    assert_eq!(parse(start) % 5, 0, "{start}");
    assert_eq!(parse(end) - parse(start), 4, "{start} .. {end}");
    relay
        .wait_for_log(
            |l| {
                l.contains("tlsrpt: report")
                    && l.contains(&format!("mailto:{COLLECTOR}: queued as"))
            },
            WAIT,
        )
        .await;
}

/// `https.test` asking for reports by HTTPS POST at a lab receiver (lab host 80), its MX
/// (lab host 3) without STARTTLS.
async fn https_scene(lab: &Lab) -> (lab::tlsrpt_receiver::Receiver, SmtpServer) {
    let receiver = lab::tlsrpt_receiver::Receiver::start(lab, 80).await;
    receiver.certify(
        &lab.ca
            .issue_with(&["reports.https.test"], Default::default()),
    );
    let url = receiver.url("reports.https.test", "/v1/tlsrpt");
    lab.zone(
        Zone::new("https.test")
            .mx(10, "mx.https.test")
            .a("mx.https.test", lab.ip(3))
            .a("reports.https.test", receiver.ip())
            .txt("_smtp._tls.https.test", &format!("v=TLSRPTv1; rua={url}")),
    );
    let mx = lab.mx(3, Behaviour::plain()).await;
    (receiver, mx)
}

/// RFC 8460 §5.4: the gzip'd report POSTed as `application/tlsrpt+gzip`; a 500 is retried
/// (the same report, same id) and a 200 ends it: delivered once.
#[tokio::test]
async fn https_reports_are_retried_until_accepted() {
    let lab = Lab::new().await;
    let (receiver, _mx) = https_scene(&lab).await;
    receiver.reply(lab::tlsrpt_receiver::Reply::status(500));
    let relay = lab
        .start_relay(lab.relay_config().toml(&tlsrpt_toml("")))
        .await;
    deliver(&relay, "bob@https.test", "sent").await;
    let out = send_now(&relay).await;
    assert!(out.contains("failed (HTTP status 500"), "{out}");
    assert!(out.contains("will retry"), "{out}");
    receiver.reply(lab::tlsrpt_receiver::Reply::status(200));
    let out = send_now(&relay).await;
    assert!(out.contains("delivered (HTTP 200)"), "{out}");
    let posts = receiver.wait_received(2, WAIT).await;
    assert_eq!(posts.len(), 2);
    for p in &posts {
        assert_eq!(p.method, "POST");
        assert_eq!(p.path, "/v1/tlsrpt");
        assert_eq!(p.host, "reports.https.test");
        assert_eq!(p.content_type, "application/tlsrpt+gzip");
    }
    assert_eq!(posts[0].body, posts[1].body, "the same report, retried");
    let value: Value = serde_json::from_slice(&gunzip(&posts[1].body)).expect("JSON");
    mxguard::report::json::check_schema(&value).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        value["policies"][0]["policy"]["policy-domain"],
        "https.test"
    );
    assert_eq!(
        value["policies"][0]["summary"]["total-failure-session-count"],
        1
    );
    // Delivered once: nothing more goes out.
    assert!(send_now(&relay).await.contains("nothing to report"));
    assert_eq!(receiver.received().len(), 2);
}

/// A receiver that cannot be reached is retried until `tlsrpt.give_up_after`, then the
/// report is given up with a log line naming domain, period and URI.
#[tokio::test]
async fn unreachable_https_receivers_are_given_up() {
    let lab = Lab::new().await;
    let (receiver, _mx) = https_scene(&lab).await;
    drop(receiver); // nothing listens any more
    let relay = lab
        .start_relay(lab.relay_config().toml(&tlsrpt_toml(
            "give_up_after = \"2s\"\npost_timeout = \"2s\"\n",
        )))
        .await;
    deliver(&relay, "bob@https.test", "sent").await;
    let out = send_now(&relay).await;
    assert!(out.contains("will retry"), "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = send_now(&relay).await;
    assert!(out.contains("given up after 2 attempts"), "{out}");
    relay
        .wait_for_log(
            |l| {
                l.contains("tlsrpt: report")
                    && l.contains("for https.test (")
                    && l.contains("https://reports.https.test:")
                    && l.contains("given up")
            },
            WAIT,
        )
        .await;
    assert!(send_now(&relay).await.contains("nothing to report"));
}

/// RFC 8460 §5.3: report mail is DKIM-signed by the submitter's domain (`tlsrpt.dkim_*`),
/// covering the TLS-Report-* headers, without `l=`. The signature verifies (mail-auth)
/// against the key published in the lab's DNS; without a key, start-up warns.
#[tokio::test]
async fn report_mail_is_dkim_signed_and_verifies_against_dns() {
    let lab = Lab::new().await;
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .expect("Ed25519 key")
        .serialize_pem();
    let key_file = lab.dir().join("dkim.pem");
    std::fs::write(&key_file, &pem).expect("write key");
    let key =
        mxguard::report::mail::DkimKey::load(&key_file, "tlsrpt", "lab.test").expect("load key");
    lab.zone(Zone::new("lab.test").txt(
        "tlsrpt._domainkey.lab.test",
        &mxguard::report::mail::dkim_dns_record(&key),
    ));
    let (_plain, collector) = plain_and_collector(&lab).await;
    let relay = lab
        .start_relay(lab.relay_config().toml(&tlsrpt_toml(&format!(
            "dkim_key_file = {:?}\n",
            key_file.to_string_lossy()
        ))))
        .await;
    deliver(&relay, "bob@plain.test", "sent").await;
    send_now(&relay).await;
    wait_reports(&collector, 1).await;
    let data = collector.messages()[0].data.clone();
    let signature = String::from_utf8_lossy(&data)
        .lines()
        .skip_while(|l| !l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(signature.contains("d=lab.test"), "{signature}");
    assert!(signature.contains("s=tlsrpt"), "{signature}");
    assert!(!signature.contains(" l="), "{signature}");
    let h = signature.to_ascii_lowercase();
    assert!(
        h.contains("tls-report-domain") && h.contains("tls-report-submitter"),
        "{signature}"
    );
    let authenticator = mail_auth::MessageAuthenticator(lab.resolver());
    let parsed = mail_auth::AuthenticatedMessage::parse(&data).expect("parse");
    let results = authenticator
        .verify_dkim(mail_auth::Parameters::new(&parsed))
        .await;
    assert_eq!(results.len(), 1);
    assert_eq!(
        results[0].result(),
        &mail_auth::DkimResult::Pass,
        "{results:?}"
    );

    // Unsigned: said at start-up.
    drop(relay);
    let unsigned = lab
        .start_relay(lab.relay_config().toml(&tlsrpt_toml("")))
        .await;
    unsigned
        .wait_for_log(|l| l.contains("no dkim_key_file"), WAIT)
        .await;
}

/// One MTA-STS domain of the matrix: `name.test` with MX `mx.name.test` (lab host `n`)
/// presenting `cert` (or no STARTTLS), under a policy `policy` (`None`: the policy host
/// answers 500), asking for mail reports at [`COLLECTOR`].
async fn sts_domain(
    s: &lab::sts::StsScene,
    name: &str,
    n: u8,
    cert: Option<lab::ca::CertOptions>,
    policy: Option<&str>,
) -> SmtpServer {
    let domain = format!("{name}.test");
    let mx = format!("mx.{domain}");
    let behaviour = match cert {
        Some(options) => {
            let issued = s.lab().ca.issue_with(&[&mx], options);
            Behaviour::plain().starttls(&issued.cert_pem, &issued.key_pem)
        }
        None => Behaviour::plain(),
    };
    let server = s.lab().mx(n, behaviour).await;
    let zone = Zone::new(&domain).mx(10, &mx).a(&mx, s.lab().ip(n)).txt(
        &format!("_smtp._tls.{domain}"),
        &format!("v=TLSRPTv1; rua=mailto:{COLLECTOR}"),
    );
    let text = policy.unwrap_or("version: STSv1\nmode: enforce\nmx: x\nmax_age: 86400\n");
    s.publish(zone, &domain, "1", text);
    if policy.is_none() {
        s.https().set(
            &format!("mta-sts.{domain}"),
            lab::https::Response::status(500),
        );
    }
    server
}

/// The failure-details of the only policy in `report`, as (result-type, count) pairs.
fn failures_of(report: &Value) -> Vec<(String, u64)> {
    report["policies"][0]["failure-details"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["result-type"].as_str().unwrap_or("").to_string(),
                        d["failed-session-count"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Each MTA-STS result type the lab can provoke, each for its own domain, in one run: the
/// reports say `sts` with the policy's lines and name exactly that failure (RFC 8460 §4.3).
#[tokio::test]
async fn each_sts_failure_is_reported_with_its_result_type() {
    use lab::ca::{CertOptions, Validity};
    let s = lab::sts::StsScene::new().await;
    let enforce = |mx: &str| lab::sts::policy("enforce", &[mx]);
    let testing = |mx: &str| lab::sts::policy("testing", &[mx]);
    let cases: Vec<(&str, Option<CertOptions>, Option<String>, &str)> = vec![
        (
            "wrongname",
            Some(CertOptions {
                wrong_name: true,
                ..CertOptions::default()
            }),
            Some(enforce("mx.wrongname.test")),
            "certificate-host-mismatch",
        ),
        (
            "expired",
            Some(CertOptions {
                validity: Validity::Expired,
                ..CertOptions::default()
            }),
            Some(enforce("mx.expired.test")),
            "certificate-expired",
        ),
        (
            "selfsigned",
            Some(CertOptions {
                self_signed: true,
                ..CertOptions::default()
            }),
            Some(enforce("mx.selfsigned.test")),
            "certificate-not-trusted",
        ),
        (
            "testing",
            None,
            Some(testing("mx.testing.test")),
            "starttls-not-supported",
        ),
        (
            "elsewhere",
            Some(CertOptions::default()),
            Some(enforce("mx.other.example")),
            "validation-failure",
        ),
        ("fetcherror", None, None, "sts-policy-fetch-error"),
        (
            "invalid",
            None,
            Some("version: STSv1\nmode: sometimes\n".to_string()),
            "sts-policy-invalid",
        ),
    ];
    let mut servers = Vec::new();
    for (i, (name, cert, policy, _)) in cases.iter().enumerate() {
        servers.push(sts_domain(&s, name, 20 + i as u8, cert.clone(), policy.as_deref()).await);
    }
    let collector = s
        .lab()
        .domain_with_mx("collector.test", 4, Behaviour::plain())
        .await;
    let relay = s
        .relay(&tlsrpt_toml(
            "[queue]\nmin_backoff = \"1h\"\nmax_backoff = \"2h\"\n[delivery]\nconnection_reuse = false\n",
        ))
        .await;
    for (name, ..) in &cases {
        let to = format!("bob@{name}.test");
        let mark = relay.log_mark();
        relay.submit(&mail(&to)).await;
        relay
            .wait_for_log_since(mark, |l| l.contains(&format!("to=<{to}>")), WAIT)
            .await;
    }
    send_now(&relay).await;
    wait_reports(&collector, cases.len()).await;
    for (name, _, policy, result_type) in &cases {
        let domain = format!("{name}.test");
        let report = report_for(&collector, &domain);
        let p = &report["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts", "{domain}: {report:#}");
        assert_eq!(p["policy"]["policy-domain"], domain.as_str());
        if policy.as_deref().is_some_and(|t| t.contains("max_age")) {
            let lines = p["policy"]["policy-string"].as_array().expect("lines");
            assert!(
                lines.iter().any(|l| l == "version: STSv1"),
                "{domain}: {p:#}"
            );
        } else {
            // No policy was had: nothing to show of it.
            assert_eq!(
                p["policy"]["policy-string"],
                serde_json::json!([]),
                "{domain}"
            );
        }
        let failures = failures_of(&report);
        assert!(
            failures.iter().any(|(t, n)| t == result_type && *n >= 1),
            "{domain}: expected {result_type}, got {failures:?}"
        );
        assert!(
            failures.iter().all(|(t, _)| t == result_type),
            "{domain}: only {result_type} expected, got {failures:?}"
        );
    }
    drop(servers);
}

/// DANE (RFC 7672) sessions in the report: policy-type `tlsa`, the records in presentation
/// form and the MX host name; a success, a certificate that matches no record
/// (`tlsa-invalid`) and a bogus TLSA RRset (`dnssec-invalid`), each reported to the recipient
/// domain that publishes `_smtp._tls` (the TLSA base domains, the MX names, publish none and
/// get no report).
#[tokio::test]
async fn dane_sessions_are_reported_under_tlsa() {
    use lab::dane::{dane_ee, tlsa_for, tlsa_rdata, DaneScene};
    let s = DaneScene::new().await;
    let rua = format!("v=TLSRPTv1; rua=mailto:{COLLECTOR}");
    // (domain, lab host, what the TLSA record says, tampered)
    let mut expected = Vec::new();
    let mut servers = Vec::new();
    for (domain, n, matching, bogus) in [
        ("good.test", 30u8, true, false),
        ("mismatch.test", 31, false, false),
        // Signed for another certificate, then forged to match this one: bogus.
        ("bogus.test", 32, false, true),
    ] {
        let host = format!("mx{n}.{domain}");
        let issued = s.lab().ca.issue_with(&[&host], Default::default());
        servers.push(s.tls_mx(n, &issued).await);
        let published = if matching {
            issued.clone()
        } else {
            s.lab().ca.issue_with(&[&host], Default::default())
        };
        let (params, data) = dane_ee(&published);
        let zone = s
            .zone(domain, &[(10, n)])
            .signed()
            .txt(&format!("_smtp._tls.{domain}"), &rua);
        let mut zone = s.with_tlsa(zone, &host, params, &data);
        if bogus {
            zone = zone.tamper(
                &s.tlsa_owner(&host),
                tlsa_rdata(3, 1, 1, &tlsa_for(&issued, 1, 1)),
            );
        }
        s.publish(zone);
        let hex: String = data.iter().map(|b| format!("{b:02X}")).collect();
        expected.push((domain, host, format!("3 1 1 {hex}"), matching, bogus));
    }
    let collector = s
        .lab()
        .domain_with_mx("collector.test", 4, Behaviour::plain())
        .await;
    let relay = s
        .relay(&tlsrpt_toml(
            "[queue]\nmin_backoff = \"1h\"\nmax_backoff = \"2h\"\n",
        ))
        .await;
    for (domain, ..) in &expected {
        let to = format!("bob@{domain}");
        let mark = relay.log_mark();
        relay.submit(&mail(&to)).await;
        relay
            .wait_for_log_since(mark, |l| l.contains(&format!("to=<{to}>")), WAIT)
            .await;
    }
    send_now(&relay).await;
    wait_reports(&collector, expected.len()).await;
    for (domain, host, record, matching, bogus) in &expected {
        let report = report_for(&collector, domain);
        let p = &report["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "tlsa", "{domain}: {report:#}");
        assert_eq!(p["policy"]["policy-domain"], *domain);
        assert_eq!(p["policy"]["mx-host"], serde_json::json!([host]));
        let (ok, failed) = (
            p["summary"]["total-successful-session-count"].as_u64(),
            p["summary"]["total-failure-session-count"].as_u64(),
        );
        if *bogus {
            // Nothing validated: no records to show, the host never dialled.
            assert_eq!(p["policy"]["policy-string"], serde_json::json!([]));
            assert_eq!(
                failures_of(&report),
                vec![("dnssec-invalid".to_string(), 1)]
            );
            assert!(p["failure-details"][0].get("receiving-ip").is_none());
        } else {
            assert_eq!(p["policy"]["policy-string"], serde_json::json!([record]));
            if *matching {
                assert_eq!((ok, failed), (Some(1), Some(0)), "{p:#}");
            } else {
                assert_eq!(failures_of(&report), vec![("tlsa-invalid".to_string(), 1)]);
            }
        }
    }
    // The TLSA base domains (the MX names) publish no record: logged, no report.
    relay
        .wait_for_log(|l| l.contains("tlsrpt: no report for mx30.good.test"), WAIT)
        .await;
}

/// `only_failures = true`: a period of successes alone is not reported (no heartbeat), one
/// with a failure is; `tlsrpt show --json` prints the report as it would be sent.
#[tokio::test]
async fn only_failures_skips_periods_of_successes_alone() {
    let lab = Lab::new().await;
    let (_plain, collector) = plain_and_collector(&lab).await;
    let (cert, key) = lab.ca.issue(&["mx.tls.test"]);
    let _tls = reporting_domain(
        &lab,
        "tls.test",
        5,
        Behaviour::plain().starttls(&cert, &key),
        &format!("mailto:{COLLECTOR}"),
    )
    .await;
    let relay = lab
        .start_relay(
            lab.relay_config()
                .toml(&tlsrpt_toml("only_failures = true\n")),
        )
        .await;
    deliver(&relay, "bob@plain.test", "sent").await;
    deliver(&relay, "carol@tls.test", "sent").await;
    let shown = relay.cli(&["tlsrpt", "show", "--json"]).await;
    assert_eq!(shown.status, 0, "{}", shown.stderr);
    let reports: Vec<Value> = shown
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON report per line"))
        .collect();
    assert_eq!(reports.len(), 2, "{}", shown.stdout);
    for r in &reports {
        mxguard::report::json::check_schema(r).unwrap_or_else(|e| panic!("{e}"));
    }
    send_now(&relay).await;
    wait_reports(&collector, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let messages = collector.messages();
    assert_eq!(messages.len(), 1, "only plain.test had a failure");
    assert_eq!(report_of(&messages[0]).1, "plain.test");
}
