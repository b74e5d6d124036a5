//! The delivery status filter end to end (DESIGN.md "Status filter"; Postfix's
//! smtp_delivery_status_filter): the real relay in the lab with `[delivery] status_filter`
//! pointing at the shipped deploy/status_filter. A TLS failure under an enforced MTA-STS policy
//! becomes a 5.7.x bounce on the first attempt — log line, DSN and all — while failures the
//! rules do not name stay transient, and a broken filter file stops `check-config`.

mod lab;

use lab::relay::{DeliveryLine, Relay};
use lab::smtp::Behaviour;
use lab::sts::{StsScene, BOB};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The rules mxguard ships, as an operator installs them.
fn shipped_filter() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/status_filter")
}

/// The `[delivery]` snippet that installs the shipped status filter.
fn with_filter() -> String {
    format!(
        "[delivery]\nstatus_filter = {:?}\n",
        shipped_filter().to_string_lossy()
    )
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
    let s = StsScene::new().await;
    let mx = s.lab().mx(10, Behaviour::plain()).await;
    s.publish_enforce_example();
    let relay = s.relay(&with_filter()).await;

    let d = s.send(&relay, BOB, "no starttls", "bounced").await;
    assert_eq!(field(&d, "dsn"), "5.7.4", "{}", d.line);
    assert_eq!(
        d.reply,
        format!(
            "551 5.7.4 TLS is required, but was not offered by host mx10.example.test[{}]",
            s.lab().ip(10)
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
    let s = StsScene::new().await;
    let _mx = s.lab().mx(10, Behaviour::plain()).await;
    s.publish_enforce_example();
    let relay = s.relay("").await;

    let d = s.send(&relay, BOB, "no starttls", "deferred").await;
    assert_eq!(field(&d, "dsn"), "4.7.4", "{}", d.line);
    assert!(
        d.reply.starts_with("451 4.7.4 TLS is required"),
        "{}",
        d.line
    );
    assert!(
        s.sender_mx()
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
    let s = StsScene::new().await;
    let _mx = s.tls_mx(10, &["other.example.test"]).await;
    s.publish_enforce_example();
    let relay = s.relay(&with_filter()).await;

    let d = s.send(&relay, BOB, "wrong name", "bounced").await;
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
    let s = StsScene::new().await;
    let _mx = s
        .lab()
        .domain_with_mx(
            "example.test",
            3,
            Behaviour::plain().rcpt_default("451 4.4.1 no answer from the next host"),
        )
        .await;
    let relay = s.relay(&with_filter()).await;

    let d = s.send(&relay, BOB, "transient", "deferred").await;
    assert_eq!(field(&d, "dsn"), "4.4.1", "{}", d.line);
    assert_eq!(d.reply, "451 4.4.1 no answer from the next host");
    assert!(
        s.sender_mx()
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
