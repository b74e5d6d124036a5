//! The compliance record (`[compliance] file`), end to end against the real binary: lab
//! deliveries under DANE, MTA-STS and no policy, sent and deferred, each written as one JSON
//! line whose fields match the delivery log line's field by field; the facts only the record
//! has (certificate and TLSA digests, policy id, Message-ID, attempt number); rotation by
//! SIGHUP; `mxguard queue delete` with no daemon; and `mxguard compliance summary` over it all.

mod lab;

use lab::ca::{CertOptions, Issued};
use lab::dane::{dane_ee, DaneScene};
use lab::https::PolicyServer;
use lab::relay::{DeliveryLine, Relay};
use lab::smtp::Behaviour;
use lab::sts::policy;
use lab::WAIT;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits until `path` holds at least `n` records.
async fn wait_for_records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = records(path);
        if found.len() >= n {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} holds {} record(s), not {n}: {found:#?}",
            path.display(),
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = policy_cache::crypto::digest::digest(&policy_cache::crypto::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The record's string field, `None` for null.
fn text<'a>(r: &'a Value, key: &str) -> Option<&'a str> {
    match &r[key] {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => panic!("{key} is neither a string nor null: {other}"),
    }
}

/// Every field the log line has is in the record under the same name with the same value
/// (`-` in the line is `null` in the record); fields the line leaves out are `null`.
#[track_caller]
fn assert_matches_line(r: &Value, d: &DeliveryLine) {
    assert_eq!(text(r, "queue_id"), Some(d.id.as_str()), "{r}\n{}", d.line);
    assert_eq!(text(r, "to"), Some(d.to.as_str()));
    assert_eq!(text(r, "status"), Some(d.status.as_str()));
    assert_eq!(text(r, "reply"), Some(d.reply.as_str()));
    for key in [
        "relay",
        "tls",
        "tls_version",
        "cipher",
        "policy",
        "sts_id",
        "sts_mx",
        "kx",
        "dsn",
    ] {
        let line = d.field(key).filter(|v| *v != "-");
        assert_eq!(text(r, key), line, "{key}: {r}\n{}", d.line);
    }
    let delay = r["delay"].as_f64().expect("delay is a number");
    assert_eq!(Some(format!("{delay:.2}").as_str()), d.field("delay"));
    let conn_use = r["conn_use"].as_u64().map(|n| n.to_string());
    assert_eq!(conn_use.as_deref(), d.field("conn_use"), "{r}\n{}", d.line);
    // Every key a line may carry is known to the record.
    for (key, _) in &d.fields {
        assert!(r.get(key).is_some(), "the record lacks {key}: {r}");
    }
}

/// The scene: `dane.test` (signed, DANE-EE, lab host 10), `sts.test` (enforce, lab host 20),
/// `plain.test` (no STARTTLS, lab host 30, deferring `busy@`).
struct Scene {
    s: DaneScene,
    _https: PolicyServer,
    dane_cert: Issued,
    sts_cert: Issued,
    _mx: Vec<lab::smtp::SmtpServer>,
    file: PathBuf,
}

impl Scene {
    async fn new() -> Scene {
        let s = DaneScene::new().await;
        let https = PolicyServer::start(s.lab(), 80).await;
        let dane_cert = s
            .lab()
            .ca
            .issue_with(&["mx10.dane.test"], CertOptions::default());
        let dane_mx = s.tls_mx(10, &dane_cert).await;
        s.publish_signed("dane.test", 10, &[dane_ee(&dane_cert)]);
        let sts_cert = s
            .lab()
            .ca
            .issue_with(&["mx20.sts.test"], CertOptions::default());
        let sts_mx = s.tls_mx(20, &sts_cert).await;
        let zone = https.announce(s.zone("sts.test", &[(10, 20)]), "sts.test", "20261207");
        s.publish(zone);
        https.publish(&s.lab().ca, "sts.test", &policy("enforce", &["*.sts.test"]));
        let plain_mx = s
            .lab()
            .domain_with_mx(
                "plain.test",
                30,
                Behaviour::plain().rcpt("busy@plain.test", "451 4.3.0 Busy, try later"),
            )
            .await;
        let file = s.lab().dir().join("deliveries.jsonl");
        Scene {
            s,
            _https: https,
            dane_cert,
            sts_cert,
            _mx: vec![dane_mx, sts_mx, plain_mx],
            file,
        }
    }

    async fn relay(&self) -> Relay {
        self.s
            .relay(&format!(
                "[mta_sts]\nhttps_port = {}\n[compliance]\nfile = {:?}\n\
                 [queue]\nmin_backoff = \"1s\"\nmax_backoff = \"1s\"\n",
                self._https.port(),
                self.file.display().to_string()
            ))
            .await
    }
}

/// The records of recipient `to`, in order.
fn of<'a>(records: &'a [Value], to: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["to"] == to).collect()
}

#[tokio::test]
async fn every_attempt_is_a_json_line_matching_its_log_line() {
    let scene = Scene::new().await;
    let relay = scene.relay().await;
    let s = &scene.s;

    let dane = s.send(&relay, "bob@dane.test", "dane", "sent").await;
    let sts = s.send(&relay, "carol@sts.test", "sts", "sent").await;
    let plain = s.send(&relay, "dave@plain.test", "plain", "sent").await;
    let mark = relay.log_mark();
    relay.submit(&s.mail("busy@plain.test", "busy")).await;
    let first = relay
        .wait_for_delivery(mark, "busy@plain.test", "deferred", WAIT)
        .await;
    let mark = relay.log_mark();
    let second = relay
        .wait_for_delivery(mark, "busy@plain.test", "deferred", WAIT)
        .await;

    let all = wait_for_records(&scene.file, 5).await;
    for (line, to) in [
        (&dane, "bob@dane.test"),
        (&sts, "carol@sts.test"),
        (&plain, "dave@plain.test"),
    ] {
        let mine = of(&all, to);
        assert_eq!(mine.len(), 1, "{mine:#?}");
        assert_matches_line(mine[0], line);
        assert_eq!(mine[0]["attempt"], 1);
        assert_eq!(text(mine[0], "from"), Some("alice@sender.test"));
        let id = text(mine[0], "message_id").expect("a Message-ID");
        assert!(id.starts_with('<') && id.ends_with("@lab.test>"), "{id}");
        let time = text(mine[0], "time").unwrap();
        assert!(
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .is_ok()
                && time.ends_with('Z'),
            "{time}"
        );
    }

    // DANE: the certificate presented and the TLSA RRset it was verified against.
    let r = of(&all, "bob@dane.test")[0];
    assert_eq!(text(r, "mx_host"), Some("mx10.dane.test"));
    assert_eq!(text(r, "ip"), Some(s.lab().ip(10).to_string().as_str()));
    assert_eq!(
        text(r, "peer_cert_sha256"),
        Some(sha256_hex(&scene.dane_cert.cert_der).as_str())
    );
    let (params, data) = dane_ee(&scene.dane_cert);
    let presentation = format!(
        "{} {} {} {}\n",
        params.0,
        params.1,
        params.2,
        data.iter().map(|b| format!("{b:02X}")).collect::<String>()
    );
    assert_eq!(
        text(r, "policy_id"),
        Some(format!("tlsa:{}", sha256_hex(presentation.as_bytes())).as_str())
    );

    // MTA-STS: the policy id from the TXT record.
    let r = of(&all, "carol@sts.test")[0];
    assert_eq!(text(r, "policy_id"), Some("20261207"));
    assert_eq!(text(r, "sts_mx"), Some("*.sts.test"));
    assert_eq!(
        text(r, "peer_cert_sha256"),
        Some(sha256_hex(&scene.sts_cert.cert_der).as_str())
    );

    // No policy, no TLS: nothing to name.
    let r = of(&all, "dave@plain.test")[0];
    for key in [
        "policy_id",
        "peer_cert_sha256",
        "tls_version",
        "cipher",
        "kx",
    ] {
        assert_eq!(r[key], Value::Null, "{key}: {r}");
    }

    // A recipient tried twice: two records, attempts 1 and 2.
    let all = wait_for_records(&scene.file, 6).await;
    let busy = of(&all, "busy@plain.test");
    assert!(busy.len() >= 2, "{busy:#?}");
    assert_matches_line(busy[0], &first);
    assert_matches_line(busy[1], &second);
    assert_eq!(
        (busy[0]["attempt"].clone(), busy[1]["attempt"].clone()),
        (1.into(), 2.into())
    );
    assert_eq!(text(busy[0], "dsn"), Some("4.3.0"));

    // Every delivery line of the run has its record (and no record is without its line).
    let lines = relay.deliveries();
    let all = wait_for_records(&scene.file, lines.len()).await;
    assert_eq!(all.len(), lines.len(), "records vs log lines");
}

#[tokio::test]
async fn sighup_reopens_the_file_for_rotation() {
    let scene = Scene::new().await;
    let relay = scene.relay().await;
    let s = &scene.s;

    s.send(&relay, "one@plain.test", "before", "sent").await;
    wait_for_records(&scene.file, 1).await;
    let rotated = scene.file.with_extension("jsonl.1");
    std::fs::rename(&scene.file, &rotated).unwrap();
    // Until the signal, records still go to the renamed file (the open descriptor).
    s.send(&relay, "two@plain.test", "still old", "sent").await;
    wait_for_records(&rotated, 2).await;
    let mark = relay.log_mark();
    relay.hangup();
    relay
        .wait_for_log_since(mark, |l| l.contains("compliance record: reopened"), WAIT)
        .await;
    s.send(&relay, "three@plain.test", "after", "sent").await;
    let new = wait_for_records(&scene.file, 1).await;
    assert_eq!(new.len(), 1);
    assert_eq!(new[0]["to"], "three@plain.test");
    let old = records(&rotated);
    let old: Vec<&Value> = old.iter().map(|r| &r["to"]).collect();
    assert_eq!(old, ["one@plain.test", "two@plain.test"]);
}

#[tokio::test]
async fn the_command_line_records_what_it_does_and_summarizes_the_file() {
    let scene = Scene::new().await;
    let mut relay = scene.relay().await;
    let s = &scene.s;

    s.send(&relay, "bob@dane.test", "dane", "sent").await;
    s.send(&relay, "BOB2@Dane.Test", "dane again", "sent").await;
    s.send(&relay, "dave@plain.test", "plain", "sent").await;
    let mark = relay.log_mark();
    relay.submit(&s.mail("busy@plain.test", "busy")).await;
    let deferred = relay
        .wait_for_delivery(mark, "busy@plain.test", "deferred", WAIT)
        .await;
    relay.stop().await;
    let before = records(&scene.file).len();

    // No daemon: the command line deletes on the spool, and says so on the record.
    let out = relay.queue(&["delete", &deferred.id]).await;
    assert_eq!(out.status, 0, "{out:#?}");
    let all = records(&scene.file);
    assert_eq!(all.len(), before + 1, "{all:#?}");
    let last = all.last().unwrap();
    assert_eq!(last["status"], "deleted");
    assert_eq!(last["queue_id"], deferred.id.as_str());
    assert!(last["attempt"].as_u64().unwrap() >= 1, "{last}");
    assert!(text(last, "message_id").is_some(), "{last}");

    let file = scene.file.display().to_string();
    let out = relay
        .cli(&["compliance", "summary", "--file", &file, "--json"])
        .await;
    assert_eq!(out.status, 0, "{out:#?}");
    let summary: Value = out.json();
    assert_eq!(summary["records"].as_u64(), Some(all.len() as u64));
    assert_eq!(summary["by_domain"]["dane.test"]["total"], 2);
    assert_eq!(summary["by_domain"]["dane.test"]["by_tls"]["verified"], 2);
    assert_eq!(summary["by_policy"]["dane"], 2);
    assert_eq!(summary["by_status"]["deleted"], 1);

    let out = relay
        .cli(&[
            "compliance",
            "summary",
            "--file",
            &file,
            "--domain",
            "DANE.test",
            "--csv",
        ])
        .await;
    assert_eq!(out.status, 0, "{out:#?}");
    assert_eq!(
        out.stdout,
        "domain,policy,tls,status,count\r\ndane.test,dane,verified,sent,2\r\n"
    );

    // Without --file, the configuration's file; a window in the future holds nothing.
    let out = relay
        .cli(&["compliance", "summary", "--since", "2999-01-01"])
        .await;
    assert_eq!(out.status, 0, "{out:#?}");
    assert!(
        out.stdout.starts_with("recipient attempts: 0\n"),
        "{}",
        out.stdout
    );
    let out = relay
        .cli(&["compliance", "summary", "--file", &file, "--since", "soon"])
        .await;
    assert_eq!(out.status, 2, "{out:#?}");
}
