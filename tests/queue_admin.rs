//! Queue administration (issue 11), end to end: the real binary in the lab, and the operator's
//! `mxguard queue list|show|summary|flush|hold|release|delete|bounce|requeue` against it — over
//! the control socket while the relay runs, on the spool when it does not. Each test is one rule
//! of the interface, with small numbers and the lab's short backoff (1 s doubling to 2 s) unless
//! it says otherwise.

mod lab;

#[allow(dead_code)]
#[path = "relay/support.rs"]
mod support;

use lab::dns::Zone;
use lab::queue::{rfc3339, spool_files, wait_for_empty_spool, QueuedMessage};
use lab::relay::{Relay, RelayConfig};
use lab::smtp::{mail_commands, Behaviour, SmtpServer};
use lab::submit::{message, Submission};
use lab::{Lab, WAIT};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use support::{World, BOB, SENDER};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TRY_LATER: &str = "451 4.3.0 try again later";

/// An MX that defers every recipient.
fn try_again_later() -> Behaviour {
    Behaviour::plain().rcpt_default(TRY_LATER)
}

/// Lets an MX that deferred every recipient accept them all.
fn accept_all(mx: &SmtpServer) {
    mx.set(|b| {
        b.rcpt_default = None;
        b.rcpt_replies.clear();
    });
}

/// The lab's relay configuration with retries an hour apart: after its first attempt a message
/// waits until an operator's command moves it.
fn patient(lab: &Lab) -> RelayConfig {
    let mut c = lab.relay_config();
    c.min_backoff = "1h".into();
    c.max_backoff = "2h".into();
    c
}

/// Submits a plain message from [`SENDER`] to `rcpts` and waits until each was deferred once.
async fn submit_deferred(w: &World, relay: &Relay, rcpts: &[&str], subject: &str) -> String {
    let mut s = w.mail(rcpts[0], subject);
    for r in &rcpts[1..] {
        s = s.rcpt(r);
    }
    let mark = relay.log_mark();
    let id = relay.submit(&s).await;
    for r in rcpts {
        let d = relay.wait_for_delivery(mark, r, "deferred", WAIT).await;
        assert_eq!(d.id, id, "{}", d.line);
    }
    id
}

/// Asserts that no delivery log line says `status` for `rcpt`.
#[track_caller]
fn assert_no_line(relay: &Relay, rcpt: &str, status: &str) {
    let lines: Vec<String> = relay
        .deliveries()
        .into_iter()
        .filter(|d| d.to.eq_ignore_ascii_case(rcpt) && d.status == status)
        .map(|d| d.line)
        .collect();
    assert!(
        lines.is_empty(),
        "no status={status} for {rcpt}: {lines:#?}"
    );
}

/// How many delivery log lines say `status` for `rcpt`.
fn count_lines(relay: &Relay, rcpt: &str, status: &str) -> usize {
    relay
        .deliveries()
        .into_iter()
        .filter(|d| d.to.eq_ignore_ascii_case(rcpt) && d.status == status)
        .count()
}

/// Messages `mx` accepted for `rcpt`.
fn received_for(mx: &SmtpServer, rcpt: &str) -> usize {
    mx.messages()
        .iter()
        .filter(|m| {
            m.rcpt_addresses()
                .iter()
                .any(|a| a.eq_ignore_ascii_case(rcpt))
        })
        .count()
}

/// Runs an action verb and checks its report: exit 0 and a line `ID: …WORD…` for `id`.
/// Returns that line. When the message was being delivered the line says the action applies
/// once the delivery ends; then this also waits for the queue to show the effect, so that a
/// test that kills the relay next kills it after the action, not before.
async fn act(relay: &Relay, verb: &str, word: &str, id: &str) -> String {
    let out = relay.queue(&[verb, id]).await;
    let line = out.ok().line_for(id).to_string();
    assert!(line.contains(word), "`queue {verb} {id}` reports {line:?}");
    if line.contains("delivery ends") {
        match verb {
            "hold" => drop(relay.wait_for_queue_state(id, Some("hold"), WAIT).await),
            "delete" | "bounce" => drop(relay.wait_for_queue_state(id, None, WAIT).await),
            _ => {}
        }
    }
    line
}

// ----- list, show, summary ---------------------------------------------------------------------

/// `list --json` describes a deferred message (id, sender, state, arrival, size, and each pending
/// recipient with its attempts, next attempt and the MX's last reply); `--domain`, `--sender`
/// (case-insensitive) and `--state` filter, several filters all apply; `show ID --json` prints
/// the very same object; an unknown id is "no message matches", exit 1.
#[tokio::test]
async fn list_and_show_describe_queued_mail_in_json() {
    let w = World::new().await;
    let _example = w.example_mx(try_again_later()).await;
    let _other = w
        .lab
        .domain_with_mx("other.test", 4, try_again_later())
        .await;
    let relay = w.lab.start_relay(patient(&w.lab)).await;

    let before = SystemTime::now() - Duration::from_secs(2);
    let id = submit_deferred(&w, &relay, &[BOB], "listed").await;
    let carol = Submission::new(
        "carol@elsewhere.test",
        message("carol@elsewhere.test", "dave@other.test", "other", "Hi.\n"),
    )
    .rcpt("dave@other.test");
    let mark = relay.log_mark();
    let id2 = relay.submit(&carol).await;
    relay
        .wait_for_delivery(mark, "dave@other.test", "deferred", WAIT)
        .await;
    let after = SystemTime::now() + Duration::from_secs(2);

    let all = relay.list(&[]).await;
    let m: &QueuedMessage = all
        .iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {all:#?}"));
    assert_eq!(m.sender, SENDER, "{m:#?}");
    assert_eq!(m.state, "deferred", "{m:#?}");
    let arrival = rfc3339(&m.arrival);
    assert!(
        before <= arrival && arrival <= after,
        "arrival {} is the time of submission",
        m.arrival
    );
    assert!(m.size > 0, "{m:#?}");
    assert_eq!(m.addresses(), vec![BOB], "{m:#?}");
    let r = m.recipient(BOB);
    assert_eq!(r.state, "deferred", "{r:#?}");
    assert_eq!(r.attempts, 1, "deferred once: {r:#?}");
    let next = rfc3339(
        r.next_attempt
            .as_deref()
            .expect("a deferred recipient has a time"),
    );
    assert!(
        next > SystemTime::now() + Duration::from_secs(50 * 60),
        "the next attempt is an hour (min_backoff) away: {r:#?}"
    );
    assert!(
        r.last_reply
            .as_deref()
            .is_some_and(|l| l.contains(TRY_LATER)),
        "last_reply is the MX's reply: {r:#?}"
    );

    // Filters.
    assert_eq!(
        relay.listed_ids(&["--domain", "example.test"]).await,
        vec![id.clone()]
    );
    assert_eq!(
        relay.listed_ids(&["--domain", "other.test"]).await,
        vec![id2.clone()]
    );
    assert_eq!(
        relay
            .listed_ids(&["--sender", "Carol@ELSEWHERE.test"])
            .await,
        vec![id2.clone()],
        "--sender is case-insensitive"
    );
    let mut both = vec![id.clone(), id2.clone()];
    both.sort();
    assert_eq!(relay.listed_ids(&["--state", "deferred"]).await, both);
    assert!(
        relay
            .listed_ids(&[
                "--domain",
                "example.test",
                "--sender",
                "carol@elsewhere.test"
            ])
            .await
            .is_empty(),
        "several filters: a message must match all of them"
    );
    // Selectors: ids OR'ed, other filters AND'ed with them.
    let out = relay
        .queue(&["hold", &id, &id2, "--domain", "other.test"])
        .await;
    assert!(out.ok().line_for(&id2).contains("held"), "{out:#?}");
    assert!(
        !out.stdout.contains(&id),
        "{id} has no recipient in other.test: {out:#?}"
    );
    relay.queue(&["hold", "00000000000000000"]).await.no_match();
    relay
        .queue(&["hold", &id, "--sender", "nobody@nowhere.test"])
        .await
        .no_match();
    assert_eq!(
        relay.listed_ids(&["--state", "hold"]).await,
        vec![id2.clone()]
    );
    assert_eq!(
        relay.listed_ids(&["--state", "deferred"]).await,
        vec![id.clone()]
    );
    let held = relay.show(&id2).await;
    assert_eq!(held.state, "hold", "{held:#?}");
    assert_eq!(
        held.recipient("dave@other.test").next_attempt,
        None,
        "a held recipient has no next attempt: {held:#?}"
    );

    // show: the same object as the list's.
    assert_eq!(
        &relay.show(&id).await,
        m,
        "show --json prints the list's object"
    );
    let text = relay.queue(&["show", &id]).await;
    assert!(
        text.ok().stdout.contains(&id) && text.stdout.contains(BOB),
        "{text:#?}"
    );
    relay.queue(&["show", "00000000000000000"]).await.no_match();

    // The mailq-style listing is still there.
    let mailq = relay.queue(&[]).await;
    assert!(
        mailq.ok().stdout.contains(&id) && mailq.stdout.contains(&id2),
        "{mailq:#?}"
    );

    // summary: counts by state, pending recipients by domain and age.
    let s = relay.summary().await;
    assert_eq!(
        (
            s.messages.total,
            s.messages.active,
            s.messages.deferred,
            s.messages.hold
        ),
        (2, 0, 1, 1),
        "{s:#?}"
    );
    assert_eq!(
        s.buckets_minutes,
        vec![5, 10, 20, 40, 80, 160, 320, 640, 1280]
    );
    let example = s
        .domains
        .iter()
        .find(|d| d.domain == "example.test")
        .unwrap_or_else(|| panic!("example.test in {s:#?}"));
    assert_eq!(example.total, 1, "{s:#?}");
    assert_eq!(example.counts.len(), 10, "{s:#?}");
    assert_eq!(example.counts[0], 1, "younger than 5 minutes: {s:#?}");
}

// ----- hold and release ------------------------------------------------------------------------

/// A held message is never tried, not even by the next relay process (the hold is on disk);
/// release puts it back on the schedule and it is delivered.
#[tokio::test]
async fn a_held_message_stays_held_across_a_restart_until_released() {
    let (w, mx, mut relay) = World::with_example_mx(try_again_later()).await;
    let id = submit_deferred(&w, &relay, &[BOB], "held").await;

    act(&relay, "hold", "held", &id).await;
    relay.wait_for_queue_state(&id, Some("hold"), WAIT).await;
    let tries = mail_commands(&mx);
    accept_all(&mx);
    let mark = relay.log_mark();
    relay.restart().await;
    let scan = relay
        .wait_for_log_since(mark, |l| l.contains("spool scan done"), WAIT)
        .await;
    assert!(scan.contains("1 message(s), 1 held"), "{scan}");

    // Several backoff periods (max_backoff is 2 s): never tried.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(mail_commands(&mx), tries, "a held message is never tried");
    assert!(mx.messages().is_empty());
    let held = relay.list(&["--state", "hold"]).await;
    assert_eq!(held.len(), 1, "{held:#?}");
    assert_eq!(
        (held[0].id.as_str(), held[0].state.as_str()),
        (id.as_str(), "hold")
    );

    act(&relay, "release", "release", &id).await;
    mx.next_message(WAIT).await;
    let d = relay.wait_for_delivery(mark, BOB, "sent", WAIT).await;
    assert_eq!(d.id, id);
}

/// With no daemon running the verbs work on the spool: held while stopped, the next process
/// never tries it; released while stopped, the next process delivers it.
#[tokio::test]
async fn the_verbs_work_on_the_spool_when_no_daemon_runs() {
    let (w, mx, mut relay) = World::with_example_mx(try_again_later()).await;
    let id = submit_deferred(&w, &relay, &[BOB], "offline").await;
    relay.stop().await.expect("was running");

    let m = relay.show(&id).await;
    assert_eq!(
        (m.state.as_str(), m.recipient(BOB).attempts),
        ("deferred", 1),
        "{m:#?}"
    );
    act(&relay, "hold", "held", &id).await;
    assert_eq!(relay.show(&id).await.state, "hold");

    accept_all(&mx);
    relay.start_again().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        mx.messages().is_empty(),
        "held while no daemon ran: never tried"
    );
    assert_eq!(relay.show(&id).await.state, "hold");
    relay.stop().await.expect("was running");

    act(&relay, "release", "release", &id).await;
    let mark = relay.log_mark();
    relay.start_again().await;
    mx.next_message(WAIT).await;
    assert_eq!(
        relay.wait_for_delivery(mark, BOB, "sent", WAIT).await.id,
        id
    );
}

/// Held mail does not expire: past `max_lifetime` it is still queued; once released, the next
/// attempt that fails expires it (status=expired, a failure DSN).
#[tokio::test]
async fn held_mail_does_not_expire_until_released() {
    let w = World::new().await;
    let mx = w.example_mx(try_again_later()).await;
    let relay = w
        .lab
        .start_relay(w.lab.relay_config().max_lifetime("6s"))
        .await;
    let submitted = tokio::time::Instant::now();
    let id = submit_deferred(&w, &relay, &[BOB], "held past its lifetime").await;
    act(&relay, "hold", "held", &id).await;
    relay.wait_for_queue_state(&id, Some("hold"), WAIT).await;
    assert_eq!(
        count_lines(&relay, BOB, "expired"),
        0,
        "test too slow: expired before the hold took effect"
    );

    tokio::time::sleep_until(submitted + Duration::from_secs(9)).await;
    assert_no_line(&relay, BOB, "expired");
    w.no_bounce_yet("held mail does not expire");
    assert_eq!(
        relay.listed_ids(&["--state", "hold"]).await,
        vec![id.clone()]
    );

    let tries = mail_commands(&mx);
    let mark = relay.log_mark();
    act(&relay, "release", "release", &id).await;
    let d = relay.wait_for_delivery(mark, BOB, "expired", WAIT).await;
    assert_eq!(d.id, id);
    assert!(
        mail_commands(&mx) > tries,
        "released, it is tried once more before it expires"
    );
    let b = w.bounce().await;
    assert_eq!(b.recipient(BOB).must("Action"), "failed");
    relay.wait_for_queue_state(&id, None, WAIT).await;
}

// ----- flush -----------------------------------------------------------------------------------

/// `flush --domain a.test` makes only a.test's recipients due: a message with a recipient in
/// a.test and one in b.test delivers the first now, the second keeps its time (and its attempt
/// count); a message only to b.test is not touched.
#[tokio::test]
async fn flushing_one_domain_leaves_the_others_waiting() {
    let w = World::new().await;
    let a = w.lab.domain_with_mx("a.test", 4, try_again_later()).await;
    let b = w.lab.domain_with_mx("b.test", 5, try_again_later()).await;
    let relay = w.lab.start_relay(patient(&w.lab)).await;
    let both = submit_deferred(&w, &relay, &["x@a.test", "y@b.test"], "both").await;
    let only_b = submit_deferred(&w, &relay, &["z@b.test"], "only b").await;
    let y_before = relay.show(&both).await.recipient("y@b.test").clone();
    let b_tries = mail_commands(&b);
    accept_all(&a);
    accept_all(&b);

    let mark = relay.log_mark();
    let out = relay.queue(&["flush", "--domain", "a.test"]).await;
    out.ok().line_for(&both);
    assert!(
        !out.stdout.contains(&only_b),
        "a message with no recipient in a.test is not flushed: {out:#?}"
    );
    let m = a.next_message(WAIT).await;
    assert_eq!(m.rcpt_addresses(), vec!["x@a.test"]);
    assert_eq!(
        relay
            .wait_for_delivery(mark, "x@a.test", "sent", WAIT)
            .await
            .id,
        both
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        mail_commands(&b),
        b_tries,
        "b.test is not tried: {:#?}",
        b.transcript()
    );
    let after = relay.show(&both).await;
    assert_eq!(after.state, "deferred", "{after:#?}");
    assert_eq!(
        after.addresses(),
        vec!["y@b.test"],
        "x@a.test is done: {after:#?}"
    );
    assert_eq!(
        after.recipient("y@b.test"),
        &y_before,
        "y@b.test keeps its time"
    );
    let z = relay.show(&only_b).await;
    assert_eq!(
        (z.state.as_str(), z.recipient("z@b.test").attempts),
        ("deferred", 1),
        "{z:#?}"
    );

    // And flush --all sends the rest.
    relay.queue(&["flush", "--all"]).await.ok();
    relay
        .wait_for_delivery(mark, "y@b.test", "sent", WAIT)
        .await;
    relay
        .wait_for_delivery(mark, "z@b.test", "sent", WAIT)
        .await;
    wait_for_empty_spool(&relay.config.data_dir, WAIT).await;
}

// ----- delete ----------------------------------------------------------------------------------

/// `delete` removes a message without a bounce: one `status=deleted` line (dsn=5.0.0, the
/// operator named) per pending recipient — none for one already delivered — gone from the
/// queue and the spool, never delivered, no DSN.
#[tokio::test]
async fn a_deleted_message_is_gone_without_a_bounce() {
    let w = World::new().await;
    let carol = "carol@example.test";
    let mx = w
        .example_mx(Behaviour::plain().rcpt(carol, TRY_LATER))
        .await;
    let relay = w.lab.start_relay(patient(&w.lab)).await;
    let mark = relay.log_mark();
    let id = relay.submit(&w.mail(BOB, "deleted").rcpt(carol)).await;
    relay.wait_for_delivery(mark, BOB, "sent", WAIT).await;
    relay.wait_for_delivery(mark, carol, "deferred", WAIT).await;

    act(&relay, "delete", "deleted", &id).await;
    let d = relay.wait_for_delivery(mark, carol, "deleted", WAIT).await;
    assert_eq!(d.id, id);
    assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
    assert_eq!(d.field("dsn"), Some("5.0.0"), "{}", d.line);
    assert!(d.reply.to_lowercase().contains("operator"), "{}", d.line);
    assert_no_line(&relay, BOB, "deleted");

    assert!(relay.queued(&id).await.is_none(), "gone from the list");
    relay.queue(&["show", &id]).await.no_match();
    wait_for_empty_spool(&relay.config.data_dir, WAIT).await;
    accept_all(&mx);
    relay.queue(&["flush", "--all"]).await.no_match();
    w.no_bounce_arrives("a deleted message is not bounced")
        .await;
    assert_eq!(
        received_for(&mx, carol),
        0,
        "a deleted recipient is never delivered"
    );
    assert_eq!(count_lines(&relay, carol, "deleted"), 1);
}

/// `delete` of a message whose delivery is in flight (the MX stalls its reply to the data)
/// applies when the delivery ends: the recipient the MX accepted is sent, the one it deferred
/// is deleted — each recipient one or the other, never both — and the spool is empty after.
#[tokio::test]
async fn deleting_a_message_in_delivery_applies_when_the_delivery_ends() {
    let w = World::new().await;
    let mx = w
        .example_mx(Behaviour::plain().stall_end_of_data(Duration::from_secs(4)))
        .await;
    let other = w
        .lab
        .domain_with_mx("other.test", 4, try_again_later())
        .await;
    let relay = w.lab.start_relay(patient(&w.lab)).await;
    let dave = "dave@other.test";
    let mark = relay.log_mark();
    let id = relay.submit(&w.mail(BOB, "in flight").rcpt(dave)).await;
    // In flight: other.test has deferred dave, example.test holds back its reply to the data.
    // (A pass logs its lines when it ends, so the log cannot tell; the MXs can.)
    other
        .wait_for_transcript(|l| l.starts_with("S: 451"), WAIT)
        .await;
    mx.wait_for_transcript(|l| l.starts_with("-- stalling"), WAIT)
        .await;
    assert_no_line(&relay, BOB, "sent");

    let out = relay.queue(&["delete", &id]).await;
    let line = out.ok().line_for(&id).to_string();
    eprintln!("delete during delivery reported: {line}");
    assert!(
        line.contains("deleted when its delivery ends"),
        "the report says the delete waits for the delivery: {line}"
    );
    assert_no_line(&relay, BOB, "sent");

    relay.wait_for_delivery(mark, dave, "deleted", WAIT).await;
    let sent = relay.wait_for_delivery(mark, BOB, "sent", WAIT).await;
    assert_eq!(sent.id, id);
    wait_for_empty_spool(&relay.config.data_dir, WAIT).await;
    w.no_bounce_arrives("a deleted message is not bounced")
        .await;
    for rcpt in [BOB, dave] {
        let (s, d) = (
            count_lines(&relay, rcpt, "sent"),
            count_lines(&relay, rcpt, "deleted"),
        );
        assert_eq!(s + d, 1, "{rcpt}: sent {s}, deleted {d}: one or the other");
    }
    assert_eq!(mx.messages().len(), 1, "delivered once, not again");
}

// ----- bounce, requeue -------------------------------------------------------------------------

/// `bounce` returns a message to its sender now: a failure DSN with Status 5.0.0 naming the
/// operator, `status=bounced` in the log, and the message gone from the queue.
#[tokio::test]
async fn a_bounced_message_returns_to_its_sender() {
    let w = World::new().await;
    let mx = w.example_mx(try_again_later()).await;
    let relay = w.lab.start_relay(patient(&w.lab)).await;
    let id = submit_deferred(&w, &relay, &[BOB], "returned").await;

    let mark = relay.log_mark();
    act(&relay, "bounce", "bounced", &id).await;
    let d = relay.wait_for_delivery(mark, BOB, "bounced", WAIT).await;
    assert_eq!(d.id, id);
    assert_eq!(d.field("dsn"), Some("5.0.0"), "{}", d.line);

    let b = w.bounce().await;
    let r = b.recipient(BOB);
    assert_eq!(r.must("Action"), "failed", "{r:?}");
    assert_eq!(r.must("Status"), "5.0.0", "{r:?}");
    let diagnostic = r.get("Diagnostic-Code").unwrap_or("");
    assert!(
        b.human.to_lowercase().contains("operator")
            || diagnostic.to_lowercase().contains("operator"),
        "the DSN says the operator returned it: {}\n{r:?}",
        b.human
    );
    relay.wait_for_queue_state(&id, None, WAIT).await;
    accept_all(&mx);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        mx.messages().is_empty(),
        "a bounced message is not delivered"
    );
}

/// `requeue` makes a deferred message due now: delivered at once once the MX accepts, an hour
/// before its backoff would have let it.
#[tokio::test]
async fn a_requeued_message_is_due_now() {
    let w = World::new().await;
    let mx = w.example_mx(try_again_later()).await;
    let relay = w.lab.start_relay(patient(&w.lab)).await;
    let id = submit_deferred(&w, &relay, &[BOB], "requeued").await;
    accept_all(&mx);
    let mark = relay.log_mark();
    act(&relay, "requeue", "", &id).await;
    mx.next_message(WAIT).await;
    assert_eq!(
        relay.wait_for_delivery(mark, BOB, "sent", WAIT).await.id,
        id
    );
}

/// `--sender '<>'` selects the null sender: a DSN waiting for the sender's MX.
#[tokio::test]
async fn the_null_sender_is_selected_as_angle_brackets() {
    let w = World::new().await;
    w.sender_mx.set(|b| b.rcpt_default = Some(TRY_LATER.into()));
    let _mx = w
        .example_mx(Behaviour::plain().rcpt(BOB, "550 5.1.1 <bob@example.test>: user unknown"))
        .await;
    let relay = w.lab.start_relay(patient(&w.lab)).await;
    let mark = relay.log_mark();
    let id = relay.submit(&w.mail(BOB, "unknown user")).await;
    relay.wait_for_delivery(mark, BOB, "bounced", WAIT).await;
    let dsn = relay
        .wait_for_delivery(mark, SENDER, "deferred", WAIT)
        .await
        .id;
    assert_ne!(dsn, id);
    assert_eq!(
        relay.listed_ids(&["--sender", "<>"]).await,
        vec![dsn.clone()]
    );
    assert!(relay.listed_ids(&["--sender", SENDER]).await.is_empty());
    let out = relay.queue(&["hold", "--sender", "<>"]).await;
    assert!(out.ok().line_for(&dsn).contains("held"), "{out:#?}");
}

/// `queue.active_limit` must be at least 1: 0 is a configuration error naming the key.
#[test]
fn an_active_limit_of_zero_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mxguard.toml");
    std::fs::write(&path, "[queue]\nactive_limit = 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("queue.active_limit"),
        "{:?}: {stderr}",
        out.status
    );
}

// ----- kill -9 right after an action -----------------------------------------------------------

/// The target of an action and a bystander (nothing done to it), each deferred once.
const TARGET: &str = "target@example.test";
const KEEP: &str = "keep@example.test";

async fn target_and_bystander(w: &World, relay: &Relay) -> (String, String) {
    let target = submit_deferred(w, relay, &[TARGET], "target").await;
    let keep = submit_deferred(w, relay, &[KEEP], "keep").await;
    (target, keep)
}

/// `queue VERB target`, SIGKILL at once, then a new process with the MX accepting: the bystander
/// is delivered (nothing that was not acted on is lost). Returns the restart's log mark.
async fn act_then_crash(
    relay: &mut Relay,
    mx: &SmtpServer,
    (verb, done): (&str, &str),
    target: &str,
    keep: &str,
) -> usize {
    act(relay, verb, done, target).await;
    relay.kill();
    accept_all(mx);
    let mark = relay.log_mark();
    relay.start_again().await;
    assert_eq!(
        relay.wait_for_delivery(mark, KEEP, "sent", WAIT).await.id,
        keep
    );
    mark
}

/// kill -9 right after `hold`: the next process keeps it held (with the MX accepting and the
/// short backoff, the bystander is delivered, the held one is not).
#[tokio::test]
async fn kill_9_after_hold_keeps_it_held() {
    let (w, mx, mut relay) = World::with_example_mx(try_again_later()).await;
    let (target, keep) = target_and_bystander(&w, &relay).await;
    let mark = act_then_crash(&mut relay, &mx, ("hold", "held"), &target, &keep).await;
    let scan = relay
        .wait_for_log_since(mark, |l| l.contains("spool scan done"), WAIT)
        .await;
    assert!(scan.contains("2 message(s), 1 held"), "{scan}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        received_for(&mx, TARGET),
        0,
        "held across the crash: not delivered"
    );
    assert_eq!(
        relay.listed_ids(&["--state", "hold"]).await,
        vec![target.clone()]
    );

    act(&relay, "release", "release", &target).await;
    assert_eq!(
        relay.wait_for_delivery(mark, TARGET, "sent", WAIT).await.id,
        target
    );
}

/// kill -9 right after `delete`: it stays deleted and is never delivered; the bystander is.
#[tokio::test]
async fn kill_9_after_delete_keeps_it_deleted() {
    let (w, mx, mut relay) = World::with_example_mx(try_again_later()).await;
    let (target, keep) = target_and_bystander(&w, &relay).await;
    act_then_crash(&mut relay, &mx, ("delete", "deleted"), &target, &keep).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        received_for(&mx, TARGET),
        0,
        "deleted before the crash: never delivered"
    );
    relay.queue(&["show", &target]).await.no_match();
    wait_for_empty_spool(&relay.config.data_dir, WAIT).await;
    w.no_bounce_yet("a deleted message is not bounced");
}

/// kill -9 right after `flush`: the next process delivers the flushed message (its due time was
/// on disk), though the retry an hour away would not have; the bystander keeps waiting. The MX
/// greets slowly so that the delivery cannot end before the kill.
#[tokio::test]
async fn kill_9_after_flush_delivers_it() {
    let w = World::new().await;
    let mx = w.example_mx(try_again_later()).await;
    let mut relay = w.lab.start_relay(patient(&w.lab)).await;
    let (target, keep) = target_and_bystander(&w, &relay).await;
    mx.set(|b| {
        b.rcpt_default = None;
        b.greeting_delay = Duration::from_millis(1500);
    });
    act(&relay, "flush", "", &target).await;
    relay.kill();

    let mark = relay.log_mark();
    relay.start_again().await;
    let scan = relay
        .wait_for_log_since(mark, |l| l.contains("spool scan done"), WAIT)
        .await;
    assert!(
        scan.contains("2 message(s), 0 held, 1 due now"),
        "the flushed one is due, the other an hour away: {scan}"
    );
    assert_eq!(
        relay.wait_for_delivery(mark, TARGET, "sent", WAIT).await.id,
        target
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(received_for(&mx, KEEP), 0, "the bystander was not flushed");
    let k = relay.show(&keep).await;
    assert_eq!(
        (k.state.as_str(), k.recipient(KEEP).attempts),
        ("deferred", 1),
        "{k:#?}"
    );

    act(&relay, "flush", "", &keep).await;
    assert_eq!(
        relay.wait_for_delivery(mark, KEEP, "sent", WAIT).await.id,
        keep
    );
}

/// kill -9 right after `bounce`: the DSN reaches the sender (once), the original is gone and
/// never delivered; the bystander is delivered.
#[tokio::test]
async fn kill_9_after_bounce_delivers_the_dsn() {
    let (w, mx, mut relay) = World::with_example_mx(try_again_later()).await;
    let (target, keep) = target_and_bystander(&w, &relay).await;
    act_then_crash(&mut relay, &mx, ("bounce", "bounced"), &target, &keep).await;
    let b = w.bounce().await;
    assert_eq!(b.recipient(TARGET).must("Status"), "5.0.0");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        received_for(&mx, TARGET),
        0,
        "bounced before the crash: never delivered"
    );
    relay.queue(&["show", &target]).await.no_match();
    assert_eq!(w.sender_mx.messages().len(), 1, "one DSN, not two");
    wait_for_empty_spool(&relay.config.data_dir, WAIT).await;
}

// ----- the active set --------------------------------------------------------------------------

/// Submits `n` messages to `rcpt` over `sessions` concurrent connections, several transactions
/// per connection; returns the queue ids.
async fn submit_many(addr: SocketAddr, rcpt: &str, n: usize, sessions: usize) -> Vec<String> {
    let ids = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..sessions)
        .map(|_| {
            let (ids, next, rcpt) = (ids.clone(), next.clone(), rcpt.to_string());
            tokio::spawn(async move {
                while next.load(std::sync::atomic::Ordering::SeqCst) < n {
                    let _ = session(addr, &rcpt, n, &next, &ids).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), n, "every submission queued");
    ids
}

/// One connection's worth of transactions; `None` when the session broke (the caller reconnects).
async fn session(
    addr: SocketAddr,
    rcpt: &str,
    n: usize,
    next: &std::sync::atomic::AtomicUsize,
    ids: &Mutex<Vec<String>>,
) -> Option<()> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let mut s = BufReader::new(stream);
    async fn reply(s: &mut BufReader<TcpStream>) -> Option<String> {
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(20), s.read_line(&mut line));
            if read.await.ok()?.ok()? == 0 {
                return None;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(line.trim_end().to_string());
            }
        }
    }
    async fn cmd(s: &mut BufReader<TcpStream>, line: &str) -> Option<String> {
        s.get_mut().write_all(line.as_bytes()).await.ok()?;
        reply(s).await
    }
    reply(&mut s).await?.starts_with("220").then_some(())?;
    cmd(&mut s, "EHLO bulk.test\r\n").await?;
    loop {
        let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if k >= n {
            let _ = cmd(&mut s, "QUIT\r\n").await;
            return Some(());
        }
        let queued = async {
            cmd(&mut s, "MAIL FROM:<bulk@origin.test>\r\n")
                .await?
                .starts_with("250")
                .then_some(())?;
            cmd(&mut s, &format!("RCPT TO:<{rcpt}>\r\n"))
                .await?
                .starts_with("250")
                .then_some(())?;
            cmd(&mut s, "DATA\r\n")
                .await?
                .starts_with("354")
                .then_some(())?;
            let body = format!(
                "From: <bulk@origin.test>\r\nTo: <{rcpt}>\r\nSubject: bulk {k}\r\n\r\nbulk\r\n.\r\n"
            );
            let last = cmd(&mut s, &body).await?;
            last.starts_with("250")
                .then(|| last.split_whitespace().last().map(str::to_string))
                .flatten()
        }
        .await;
        match queued {
            Some(id) => ids.lock().unwrap().push(id),
            None => {
                // Not queued: give the number back and reconnect.
                next.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                return None;
            }
        }
    }
}

/// Queue ids with a `status=deferred` line from line `mark` on, in log order, each with its
/// number of such lines.
fn deferrals_since(relay: &Relay, mark: usize) -> (Vec<String>, HashMap<String, usize>) {
    let mut order = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in relay.log_lines().iter().skip(mark) {
        if let Some(d) = lab::relay::DeliveryLine::parse(line) {
            if d.status == "deferred" {
                let n = counts.entry(d.id.clone()).or_insert(0);
                if *n == 0 {
                    order.push(d.id.clone());
                }
                *n += 1;
            }
        }
    }
    (order, counts)
}

/// `[queue] active_limit = 200` with thousands of messages deferred for an hour: after `flush
/// --all` the active set never holds more than 200 (polled through `summary --json`), every
/// message gets its second attempt (none starved), and the oldest go first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flush_all_keeps_the_active_set_bounded_and_serves_the_oldest_first() {
    const N: usize = 3000;
    const LIMIT: u64 = 200;
    let started = std::time::Instant::now();
    let lab = Lab::new().await;
    lab.zone(Zone::new("origin.test"));
    // A next hop that never takes mail: 421 at once, later after a pause (slow attempts keep
    // the active set full while the poll looks).
    let mx = lab
        .domain_with_mx(
            "far.test",
            10,
            Behaviour::plain().greeting("421 4.3.2 not now"),
        )
        .await;
    let config = patient(&lab).toml("[queue]\nactive_limit = 200\n");
    let relay = lab.start_relay(config).await;
    let rcpt = "someone@far.test";

    let ids = submit_many(relay.addr(), rcpt, N, 24).await;
    eprintln!("queued {N} messages in {:.1?}", started.elapsed());
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(all.len(), N, "distinct queue ids");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, counts) = deferrals_since(&relay, 0);
        let first = all.iter().filter(|id| counts.contains_key(*id)).count();
        if first == N {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {first} of {N} messages had their first attempt"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("first attempts done at {:.1?}", started.elapsed());
    let s = relay.summary().await;
    assert_eq!(
        (s.messages.total, s.messages.active, s.messages.deferred),
        (N as u64, 0, N as u64),
        "all deferred for an hour: {:?}",
        s.messages
    );

    mx.set(|b| b.greeting_delay = Duration::from_millis(250));
    let mark = relay.log_mark();
    let out = relay.queue(&["flush", "--all"]).await;
    // One line per message, or (the implementation's choice for large selections, as
    // postsuper) counts by outcome: `3000 message(s): flushed`. Either way all N are there.
    let accounted: usize = out
        .ok()
        .stdout
        .lines()
        .map(|l| match l.split_once(" message(s): ") {
            Some((n, _)) => n.parse::<usize>().unwrap_or(0),
            None => usize::from(all.contains(l.split(':').next().unwrap_or(""))),
        })
        .sum();
    assert_eq!(
        accounted, N,
        "flush --all reports every message: {:?}",
        out.stdout
    );
    eprintln!(
        "flush --all reported: {:?}",
        out.stdout.lines().take(3).collect::<Vec<_>>()
    );
    let mut samples = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (order, _) = loop {
        let s = relay.summary().await;
        samples.push(s.messages.active);
        let (order, counts) = deferrals_since(&relay, mark);
        let second = all.iter().filter(|id| counts.contains_key(*id)).count();
        if second == N {
            break (order, counts);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {second} of {N} messages had their second attempt (starved?); active samples \
             {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "second attempts done at {:.1?}; {} samples of messages.active, max {:?}: {samples:?}",
        started.elapsed(),
        samples.len(),
        samples.iter().max()
    );
    let max = samples.iter().copied().max().unwrap_or(0);
    assert!(max <= LIMIT, "active set above active_limit: {samples:?}");
    assert!(
        max > 0,
        "the poll never saw the active set in use: {samples:?}"
    );

    // Oldest first: the first 200 second attempts are among the 400 oldest messages.
    let oldest: HashSet<&String> = all.iter().take(2 * LIMIT as usize).collect();
    let late: Vec<&String> = order
        .iter()
        .filter(|id| all.contains(*id))
        .take(LIMIT as usize)
        .filter(|id| !oldest.contains(id))
        .collect();
    assert!(
        late.is_empty(),
        "{} of the first {LIMIT} second attempts went to younger messages, e.g. {:?} (the \
         400th oldest is {:?})",
        late.len(),
        &late[..late.len().min(5)],
        all.iter().nth(2 * LIMIT as usize - 1)
    );
    let (msg, _) = spool_files(&relay.config.data_dir);
    assert_eq!(msg, N, "nothing lost");
    eprintln!("done in {:.1?}", started.elapsed());
}
