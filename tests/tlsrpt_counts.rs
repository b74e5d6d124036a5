//! TLS-RPT counting (RFC 8460 §4) against the lab, in-process: `Deliverer::deliver` with a
//! session counter, then what the counter holds. One session counts once, under the policy
//! that governed it, with its failure details.

mod lab;

use lab::ca::CertOptions;
use lab::smtp::Behaviour;
use lab::Lab;
use mxguard::config::Config;
use mxguard::delivery::{Deliverer, Job};
use mxguard::envelope::{Envelope, Recipient};
use mxguard::queue::QueueId;
use mxguard::report::counts::{Counter, Entry, PolicyKind};
use std::sync::Arc;
use std::time::Duration;

const MESSAGE: &[u8] = b"From: a@sender.test\r\nSubject: hi\r\n\r\nHello.\r\n";

/// Delivers one message to `rcpt` with `config`, counting into a fresh counter; returns
/// what was counted.
async fn count_one(config: Config, rcpt: &str, tls_report: bool) -> Vec<Entry> {
    let counter = Arc::new(Counter::in_memory(Duration::from_secs(86_400)));
    let deliverer = Deliverer::new(Arc::new(config), None)
        .expect("deliverer")
        .with_tls_reports(counter.clone());
    let mut envelope = Envelope::new("alice@sender.test");
    envelope.recipients.push(Recipient::new(rcpt));
    envelope.tls_report = tls_report;
    let id = QueueId::generate();
    let domain = rcpt.rsplit_once('@').expect("domain").1.to_string();
    let job = Job {
        queue_id: &id,
        envelope: &envelope,
        message: MESSAGE,
        domain: &domain,
        recipients: &[0],
    };
    let attempts = deliverer.deliver(&job).await;
    eprintln!("{:?}", attempts[0].reply);
    counter.entries(|_, _| true)
}

#[tokio::test]
async fn a_tls_session_counts_as_one_success_without_policy() {
    let lab = Lab::new().await;
    let (cert, key) = lab.ca.issue(&["mx.plain.test"]);
    let _mx = lab
        .domain_with_mx("plain.test", 3, Behaviour::plain().starttls(&cert, &key))
        .await;
    let entries = count_one(lab.delivery_config(), "bob@Plain.TEST", false).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e.policy.kind, PolicyKind::NoPolicyFound);
    assert_eq!(e.policy.domain, "plain.test");
    assert!(e.policy.strings.is_empty() && e.policy.mx_hosts.is_empty());
    assert_eq!((e.tally.successes, e.tally.failures), (1, 0));
}

#[tokio::test]
async fn no_starttls_counts_as_starttls_not_supported_with_details() {
    let lab = Lab::new().await;
    let _mx = lab
        .domain_with_mx("plain.test", 3, Behaviour::plain())
        .await;
    let entries = count_one(lab.delivery_config(), "bob@plain.test", false).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let t = &entries[0].tally;
    assert_eq!((t.successes, t.failures), (0, 1));
    let (d, n) = &t.details[0];
    assert_eq!(*n, 1);
    assert_eq!(d.result_type, "starttls-not-supported");
    assert_eq!(d.mx_host.as_deref(), Some("mx.plain.test"));
    assert_eq!(d.receiving_ip, Some(lab.ip(3).into()));
    // Our end of the connection is a loopback address; the server named itself in EHLO.
    assert!(d.sending_ip.is_some_and(|ip| ip.is_loopback()), "{d:?}");
    assert!(d.helo.is_some(), "{d:?}");
}

#[tokio::test]
async fn a_wrong_certificate_under_verify_counts_as_host_mismatch() {
    let lab = Lab::new().await;
    let issued = lab.ca.issue_with(
        &["mx.strict.test"],
        CertOptions {
            wrong_name: true,
            ..CertOptions::default()
        },
    );
    let _mx = lab
        .domain_with_mx(
            "strict.test",
            3,
            Behaviour::plain().starttls(&issued.cert_pem, &issued.key_pem),
        )
        .await;
    let table = lab.dir().join("tls_policy");
    std::fs::write(&table, "strict.test verify\n").expect("table");
    let mut config = lab.delivery_config();
    config.delivery.tls_policy_file = Some(table);
    config.delivery.extra_ca_files = vec![lab.ca.write_pem(lab.dir())];
    let entries = count_one(config, "bob@strict.test", false).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    // A local level is not a published policy: `no-policy-found`.
    assert_eq!(entries[0].policy.kind, PolicyKind::NoPolicyFound);
    let t = &entries[0].tally;
    assert_eq!((t.successes, t.failures), (0, 1));
    assert_eq!(t.details[0].0.result_type, "certificate-host-mismatch");
}

/// RFC 8460 §5.3: the sessions that carry a report are not reported on.
#[tokio::test]
async fn report_deliveries_are_not_counted() {
    let lab = Lab::new().await;
    let _mx = lab
        .domain_with_mx("plain.test", 3, Behaviour::plain())
        .await;
    let entries = count_one(lab.delivery_config(), "bob@plain.test", true).await;
    assert!(entries.is_empty(), "{entries:?}");
}
