//! The delivery status filter end to end (DESIGN.md "Status filter"; Postfix's
//! smtp_delivery_status_filter): the real relay in the lab with `[delivery] status_filter`
//! pointing at the shipped deploy/status_filter. A TLS failure under an enforced MTA-STS policy
//! becomes a 5.7.x bounce on the first attempt — log line, DSN and all — while failures the
//! rules do not name stay transient, and a broken filter file stops `check-config`.

mod lab;

use lab::bounce::Bounce;
use lab::dns::Zone;
use lab::https::PolicyServer;
use lab::relay::{DeliveryLine, Relay};
use lab::smtp::{Behaviour, SmtpServer};
use lab::submit::{message, Submission};
use lab::{Lab, WAIT};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SENDER: &str = "alice@sender.test";
const BOB: &str = "bob@example.test";

/// The rules mxguard ships, as an operator installs them.
fn shipped_filter() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/status_filter")
}

/// The lab with a sender domain whose MX receives the DSNs, and a policy host for MTA-STS.
struct Scene {
    lab: Lab,
    https: PolicyServer,
    sender_mx: SmtpServer,
}

impl Scene {
    async fn new() -> Scene {
        let lab = Lab::new().await;
        let sender_mx = lab
            .domain_with_mx("sender.test", 2, Behaviour::plain())
            .await;
        let https = PolicyServer::start(&lab, 80).await;
        Scene {
            lab,
            https,
            sender_mx,
        }
    }

    /// `example.test` with one MX host, `mx10.example.test` (lab host 10), under an MTA-STS
    /// `enforce` policy that lists it.
    fn publish_enforce(&self) {
        let host = "mx10.example.test";
        let zone = Zone::new("example.test")
            .mx(10, host)
            .a(host, self.lab.ip(10));
        let policy = format!("version: STSv1\nmode: enforce\nmx: {host}\nmax_age: 86400\n");
        self.https.publish(&self.lab.ca, "example.test", &policy);
        self.lab
            .zone(self.https.announce(zone, "example.test", "1"));
    }

    /// The relay, with the shipped status filter or without one.
    async fn relay(&self, filter: bool) -> Relay {
        let mut snippet = format!("[mta_sts]\nhttps_port = {}\n", self.https.port());
        if filter {
            snippet.push_str(&format!(
                "[delivery]\nstatus_filter = {:?}\n",
                shipped_filter().to_string_lossy()
            ));
        }
        let config = self.lab.relay_config().toml(&snippet);
        self.lab.start_relay(config).await
    }

    /// Submits a message to [`BOB`] and waits for its delivery line with `status`.
    async fn send_to_bob(&self, relay: &Relay, subject: &str, status: &str) -> DeliveryLine {
        let s = Submission::new(
            SENDER,
            message(SENDER, BOB, subject, "Hello from the lab.\n"),
        )
        .rcpt(BOB);
        relay.submit(&s).await;
        relay.delivery(BOB, status).await
    }

    /// The DSN that reaches the sender's MX.
    async fn bounce(&self) -> Bounce {
        let m = self.sender_mx.next_message(WAIT).await;
        assert_eq!(m.mail_from, "", "a DSN comes from the null sender");
        Bounce::parse(&m)
    }
}

fn field<'a>(d: &'a DeliveryLine, key: &str) -> &'a str {
    d.field(key)
        .unwrap_or_else(|| panic!("no {key}= in {}", d.line))
}

/// Asserts `BOB` was never deferred: the bounce came on the first attempt.
#[track_caller]
fn never_deferred(relay: &Relay) {
    let deferred: Vec<String> = relay
        .deliveries()
        .into_iter()
        .filter(|d| d.to == BOB && d.status == "deferred")
        .map(|d| d.line)
        .collect();
    assert!(
        deferred.is_empty(),
        "bounced at once, not after retries: {deferred:#?}"
    );
}

/// Rule 2 of deploy/status_filter: an enforce domain whose MX offers no STARTTLS is bounced on
/// the first attempt with 5.7.4, and the DSN says so in Postfix's words.
#[tokio::test]
async fn no_starttls_under_enforce_bounces_at_once_with_the_filter() {
    let s = Scene::new().await;
    let mx = s.lab.mx(10, Behaviour::plain()).await;
    s.publish_enforce();
    let relay = s.relay(true).await;

    let d = s.send_to_bob(&relay, "no starttls", "bounced").await;
    assert_eq!(field(&d, "dsn"), "5.7.4", "{}", d.line);
    assert_eq!(
        d.reply,
        format!(
            "551 5.7.4 TLS is required, but was not offered by host mx10.example.test[{}]",
            s.lab.ip(10)
        )
    );
    never_deferred(&relay);
    assert!(
        mx.messages().is_empty(),
        "nothing is delivered in plaintext"
    );

    let bounce = s.bounce().await;
    let rcpt = bounce.recipient(BOB);
    assert_eq!(rcpt.must("Action"), "failed");
    assert_eq!(rcpt.must("Status"), "5.7.4");
    let diagnostic = rcpt.must("Diagnostic-Code");
    assert!(
        diagnostic.contains("TLS is required, but was not offered by host"),
        "{diagnostic}"
    );
}

/// The contrast: the same scene without the filter is deferred with 4.7.4, and no DSN comes.
#[tokio::test]
async fn no_starttls_under_enforce_defers_without_the_filter() {
    let s = Scene::new().await;
    let _mx = s.lab.mx(10, Behaviour::plain()).await;
    s.publish_enforce();
    let relay = s.relay(false).await;

    let d = s.send_to_bob(&relay, "no starttls", "deferred").await;
    assert_eq!(field(&d, "dsn"), "4.7.4", "{}", d.line);
    assert!(
        d.reply.starts_with("451 4.7.4 TLS is required"),
        "{}",
        d.line
    );
    assert!(
        s.sender_mx
            .try_next_message(Duration::from_secs(3))
            .await
            .is_none(),
        "a deferred recipient gets no DSN"
    );
}

/// Rule 3: a certificate for another name under enforce ("Server certificate not verified",
/// 4.7.5) bounces at once as 5.7.5.
#[tokio::test]
async fn a_wrong_name_certificate_under_enforce_bounces_with_the_filter() {
    let s = Scene::new().await;
    let (cert, key) = s.lab.ca.issue(&["other.example.test"]);
    let _mx = s.lab.mx(10, Behaviour::plain().starttls(&cert, &key)).await;
    s.publish_enforce();
    let relay = s.relay(true).await;

    let d = s.send_to_bob(&relay, "wrong name", "bounced").await;
    assert_eq!(field(&d, "dsn"), "5.7.5", "{}", d.line);
    assert!(
        d.reply
            .starts_with("551 5.7.5 Server certificate not verified"),
        "{}",
        d.line
    );
    never_deferred(&relay);
    let bounce = s.bounce().await;
    assert_eq!(bounce.recipient(BOB).must("Status"), "5.7.5");
}

/// A transient failure the rules do not name (a 451 4.4.1 at RCPT) stays deferred with the
/// filter on: the filter hardens TLS failures only.
#[tokio::test]
async fn other_transient_failures_stay_deferred_with_the_filter() {
    let s = Scene::new().await;
    let _mx = s
        .lab
        .domain_with_mx(
            "example.test",
            3,
            Behaviour::plain().rcpt_default("451 4.4.1 no answer from the next host"),
        )
        .await;
    let relay = s.relay(true).await;

    let d = s.send_to_bob(&relay, "transient", "deferred").await;
    assert_eq!(field(&d, "dsn"), "4.4.1", "{}", d.line);
    assert_eq!(d.reply, "451 4.4.1 no answer from the next host");
    assert!(
        s.sender_mx
            .try_next_message(Duration::from_secs(3))
            .await
            .is_none(),
        "a deferred recipient gets no DSN"
    );
}

/// `check-config` loads the filter as the daemon does: a bad rule fails it, naming the key and
/// the line; so does a missing file.
#[test]
fn check_config_names_the_key_and_line_of_a_bad_filter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let filter = dir.path().join("status_filter");
    std::fs::write(&filter, "# rules\n/^4.7.5(.*)/ 5.7.5$1\n/^4(.*)/q 5$1\n").expect("write");
    let missing = dir.path().join("no_such_filter");
    for (path, expect) in [
        (
            &filter,
            format!("{} line 3: unknown flag 'q'", filter.display()),
        ),
        (&missing, format!("{}: ", missing.display())),
    ] {
        let config = dir.path().join("mxguard.toml");
        std::fs::write(
            &config,
            format!("[delivery]\nstatus_filter = {:?}\n", path.to_string_lossy()),
        )
        .expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_mxguard"))
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .expect("run mxguard");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "check-config must fail: {err}");
        assert!(err.contains("delivery.status_filter: "), "{err}");
        assert!(err.contains(&expect), "want {expect:?} in {err}");
    }

    // The shipped file passes.
    let config = dir.path().join("good.toml");
    std::fs::write(
        &config,
        format!(
            "[delivery]\nstatus_filter = {:?}\n",
            shipped_filter().to_string_lossy()
        ),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run mxguard");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
