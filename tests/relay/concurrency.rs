//! Per-destination concurrency (Postfix qmgr's feedback): a destination never gets more
//! sessions at once than `destination_concurrency_limit`; failures (no greeting, 421) shrink
//! its window and a cohort of them marks it dead, so its mail is deferred without a
//! connection ("delivery temporarily suspended") while other destinations' mail still leaves
//! at once; successes widen the window again; `destination_rate_delay` sends one at a time.

use crate::lab::relay::Relay;
use crate::lab::smtp::{Behaviour, SmtpServer};
use crate::lab::submit::{dot_stuff, Submission};
use crate::lab::WAIT;
use crate::support::{World, BOB};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `user<i>@<domain>`: one recipient per message, so each has its own delivery line.
fn rcpt(domain: &str, i: usize) -> String {
    format!("user{i}@{domain}")
}

/// `n` plain messages, the i-th to `user<i>@<domain>`.
fn mails(w: &World, domain: &str, n: usize) -> Vec<Submission> {
    (0..n)
        .map(|i| w.mail(&rcpt(domain, i), &format!("message {i}")))
        .collect()
}

/// Submits `mails` over `sessions` SMTP sessions at once, many transactions per session
/// (MAIL, RCPT and DATA pipelined, as the relay offers PIPELINING); returns the queue ids.
/// Panics unless every message was queued.
async fn submit_many(addr: SocketAddr, mails: Vec<Submission>, sessions: usize) -> Vec<String> {
    let n = mails.len();
    let mails = Arc::new(mails);
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let tasks: Vec<_> = (0..sessions.max(1))
        .map(|_| {
            let (mails, next, ids) = (mails.clone(), next.clone(), ids.clone());
            tokio::spawn(async move { submit_session(addr, &mails, &next, &ids).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("a submission session panicked");
    }
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), n, "every message queued");
    ids
}

/// One SMTP session that takes messages from `mails` (the next index from `next`) until none
/// is left.
async fn submit_session(
    addr: SocketAddr,
    mails: &[Submission],
    next: &AtomicUsize,
    ids: &Mutex<Vec<String>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect to relay");
    let mut s = BufReader::new(stream);
    let greeting = reply(&mut s).await;
    assert!(greeting.starts_with("220"), "greeting: {greeting}");
    send(&mut s, "EHLO bulk.lab.test\r\n").await;
    let ehlo = reply(&mut s).await;
    assert!(ehlo.starts_with("250"), "EHLO: {ehlo}");
    loop {
        let k = next.fetch_add(1, Ordering::SeqCst);
        let Some(m) = mails.get(k) else { break };
        let mut group = format!("MAIL FROM:<{}>\r\n", m.mail_from);
        for (to, _) in &m.rcpts {
            group.push_str(&format!("RCPT TO:<{to}>\r\n"));
        }
        group.push_str("DATA\r\n");
        send(&mut s, &group).await;
        for step in 0..m.rcpts.len() + 2 {
            let r = reply(&mut s).await;
            let want = if step == m.rcpts.len() + 1 {
                "354"
            } else {
                "250"
            };
            assert!(r.starts_with(want), "message {k}: {r} (wanted {want})");
        }
        s.get_mut()
            .write_all(&dot_stuff(&m.data))
            .await
            .expect("write to relay");
        let done = reply(&mut s).await;
        assert!(done.starts_with("250"), "message {k} not queued: {done}");
        let id = done.split_whitespace().last().unwrap_or("").to_string();
        ids.lock().unwrap().push(id);
    }
    send(&mut s, "QUIT\r\n").await;
    let _ = reply(&mut s).await;
}

async fn send(s: &mut BufReader<TcpStream>, text: &str) {
    s.get_mut()
        .write_all(text.as_bytes())
        .await
        .expect("write to relay");
}

/// One reply (the last line of a multi-line one).
async fn reply(s: &mut BufReader<TcpStream>) -> String {
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, s.read_line(&mut line))
            .await
            .expect("relay reply within the timeout")
            .expect("read from relay");
        assert!(n > 0, "the relay closed the connection");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.trim_end().to_string();
        }
    }
}

/// Waits until every one of `rcpts` has a delivery line with `status`; panics after `timeout`
/// naming those still missing.
async fn wait_for_all(relay: &Relay, rcpts: &[String], status: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen: HashSet<String> = relay
            .deliveries()
            .into_iter()
            .filter(|d| d.status == status)
            .map(|d| d.to.to_ascii_lowercase())
            .collect();
        let missing: Vec<&String> = rcpts.iter().filter(|r| !seen.contains(*r)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no status={status} line within {timeout:?} for {} of {} recipients: {:?}…",
            missing.len(),
            rcpts.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `421` greetings `mx` gave (`session_limit`).
fn too_many_connections(mx: &SmtpServer) -> usize {
    mx.transcript()
        .iter()
        .filter(|l| l.starts_with("S: 421"))
        .count()
}

/// The longest run of `421` greetings with no accepted message in between, counted from the
/// first message `mx` accepted: how many sessions the relay tried beyond what the MX takes,
/// once it had seen both refusals and successes.
fn longest_refusal_run(mx: &SmtpServer) -> usize {
    let (mut longest, mut run, mut accepted) = (0, 0, false);
    for l in mx.transcript() {
        if l.starts_with("S: 250 2.0.0 Ok: queued") {
            accepted = true;
            run = 0;
        } else if accepted && l.starts_with("S: 421") {
            run += 1;
            longest = longest.max(run);
        }
    }
    longest
}

/// `[delivery]` settings for a relay whose destinations get `initial` sessions at first and
/// `limit` at most.
fn window(initial: usize, limit: usize) -> String {
    format!(
        "[delivery]\ninitial_destination_concurrency = {initial}\n\
         destination_concurrency_limit = {limit}\n"
    )
}

/// `example.test`'s MX holding each end-of-data reply back for `stall_ms` (so sessions
/// overlap), serving `session_limit` sessions at once when set, and a relay whose windows go
/// from `initial` to `limit`.
async fn stalling_scene(
    w: &World,
    stall_ms: u64,
    session_limit: Option<usize>,
    (initial, limit): (usize, usize),
) -> (SmtpServer, Relay) {
    let mut behaviour = Behaviour::plain().stall_end_of_data(Duration::from_millis(stall_ms));
    behaviour.session_limit = session_limit;
    let mx = w.example_mx(behaviour).await;
    let config = w.lab.relay_config().toml(&window(initial, limit));
    (mx, w.lab.start_relay(config).await)
}

/// Thirty messages to one domain whose MX holds each end-of-data reply back (so sessions
/// overlap): the MX never has more than the limit's 3 sessions open at once, and the relay
/// did use more than one.
#[tokio::test]
async fn a_destination_is_never_sent_more_sessions_than_its_limit() {
    let w = World::new().await;
    let (mx, relay) = stalling_scene(&w, 150, None, (3, 3)).await;
    let rcpts: Vec<String> = (0..30).map(|i| rcpt("example.test", i)).collect();
    submit_many(relay.addr(), mails(&w, "example.test", 30), 6).await;

    wait_for_all(&relay, &rcpts, "sent", WAIT).await;
    assert_eq!(mx.messages().len(), 30, "every message arrived once");
    let peak = mx.peak_sessions();
    assert!(peak <= 3, "at most 3 sessions at once, saw {peak}");
    assert!(
        peak >= 2,
        "sessions overlapped (concurrency used), saw {peak}"
    );
}

/// The same with an MX that serves only 3 sessions at once (a fourth gets `421 4.7.0 Too many
/// connections`): a relay whose limit is 3 is never refused.
#[tokio::test]
async fn a_server_allowing_the_limit_never_refuses_a_session() {
    let w = World::new().await;
    let (mx, relay) = stalling_scene(&w, 150, Some(3), (3, 3)).await;
    let rcpts: Vec<String> = (0..30).map(|i| rcpt("example.test", i)).collect();
    submit_many(relay.addr(), mails(&w, "example.test", 30), 6).await;

    wait_for_all(&relay, &rcpts, "sent", WAIT).await;
    assert_eq!(
        too_many_connections(&mx),
        0,
        "never over the MX's session limit: {:#?}",
        mx.transcript()
    );
    assert!(
        !relay.deliveries().iter().any(|d| d.status == "deferred"),
        "no deferral"
    );
    assert!(mx.peak_sessions() >= 2, "concurrency used");
}

/// How many messages the dead-domain test queues: the figure. Submitting them takes
/// some 4 to 12 s in the debug build (16 sessions, pipelined), on two busy cores.
const DEAD_MESSAGES: usize = 5000;

/// `dead.test`'s MX accepts connections but never greets (the relay gives up after its 2 s
/// command timeout). With thousands of messages queued for it, a message to `example.test`
/// submitted last is still delivered within seconds: the dead destination holds no delivery
/// slots. Its own mail is deferred without a connection ("delivery temporarily suspended",
/// relay=none) once a cohort of sessions failed, so its MX saw a handful of connections (the
/// first window and a probe now and then), not one per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_domain_does_not_delay_a_live_domain() {
    let w = World::new().await;
    let live = w.example_mx(Behaviour::plain()).await;
    let dead = w
        .lab
        .domain_with_mx(
            "dead.test",
            4,
            Behaviour::plain().slow(Duration::from_secs(3600)),
        )
        .await;
    let config = w
        .lab
        .relay_config()
        .toml("[delivery]\ncommand_timeout = \"2s\"\nconnect_timeout = \"2s\"\n");
    let relay = w.lab.start_relay(config).await;

    let started = Instant::now();
    let ids = submit_many(relay.addr(), mails(&w, "dead.test", DEAD_MESSAGES), 16).await;
    let queued_in = started.elapsed();
    eprintln!("queued {DEAD_MESSAGES} messages for dead.test in {queued_in:.1?}");

    let submitted = Instant::now();
    relay.submit(&w.mail(BOB, "live")).await;
    live.next_message(Duration::from_secs(10)).await;
    let d = relay
        .wait_for_delivery(0, BOB, "sent", Duration::from_secs(10))
        .await;
    let took = submitted.elapsed();
    eprintln!("example.test delivered {took:.1?} after its submission");
    assert!(
        took < Duration::from_secs(10),
        "delivered within 10 s of its submission, took {took:?}: {}",
        d.line
    );

    // Most of dead.test's messages were deferred without a connection.
    let ids: HashSet<String> = ids.into_iter().collect();
    let deadline = Instant::now() + WAIT;
    let suspended = loop {
        let suspended: HashSet<String> = relay
            .deliveries()
            .into_iter()
            .filter(|d| {
                d.status == "deferred"
                    && ids.contains(&d.id)
                    && d.reply.contains("delivery temporarily suspended")
            })
            .inspect(|d| {
                assert_eq!(d.field("relay"), Some("none"), "{}", d.line);
                assert!(
                    d.reply
                        .starts_with("451 4.4.2 delivery temporarily suspended: "),
                    "the reply quotes the failure (greeting timeout, 4.4.2): {}",
                    d.line
                );
            })
            .map(|d| d.id)
            .collect();
        if suspended.len() * 10 >= ids.len() * 9 || Instant::now() > deadline {
            break suspended;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        suspended.len() * 10 >= ids.len() * 9,
        "at least 90% of dead.test's {} messages deferred as suspended, got {}",
        ids.len(),
        suspended.len()
    );
    // The first window (initial concurrency 5) and one probe per dead period (1 s, plus the
    // probe's own 2 s timeout) at most.
    let elapsed = started.elapsed().as_secs() as usize;
    let connections = dead.connections();
    eprintln!("dead.test's MX saw {connections} connections in {elapsed} s");
    assert!(
        connections <= 5 + elapsed / 3 + 2,
        "the relay did not connect once per message: {connections} connections in {elapsed} s"
    );
}

/// Polls `mx.open_sessions()` while `until` runs; the most seen at once. (The lab's
/// `peak_sessions` is a lifetime maximum, and phase one of a test may already have set it.)
async fn peak_during<T>(mx: &SmtpServer, until: impl std::future::Future<Output = T>) -> usize {
    let mut peak = 0;
    tokio::pin!(until);
    loop {
        peak = peak.max(mx.open_sessions());
        tokio::select! {
            _ = &mut until => return peak,
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
}

/// An MX that serves 2 sessions at once and greets a third with `421 4.7.0 Too many
/// connections`, to a relay that starts at 5 and may go to 10: the 421s bring the window
/// down, so once the relay has seen both refusals and successes it never tries more than a
/// couple of sessions beyond the two the MX takes, and every message is delivered in the end
/// (the deferred ones on their retry). Then the MX lifts its limit and the window grows again past
/// 2 with the successes.
#[tokio::test]
async fn a_421_greeting_reduces_concurrency_and_success_raises_it_again() {
    let w = World::new().await;
    let (mx, relay) = stalling_scene(&w, 200, Some(2), (5, 10)).await;
    let first: Vec<String> = (0..20).map(|i| rcpt("example.test", i)).collect();
    submit_many(relay.addr(), mails(&w, "example.test", 20), 4).await;
    wait_for_all(&relay, &first, "sent", WAIT * 2).await;
    let refused = too_many_connections(&mx);
    let deferred = relay
        .deliveries()
        .iter()
        .filter(|d| d.status == "deferred")
        .count();
    let burst = longest_refusal_run(&mx);
    eprintln!(
        "phase 1: {refused} greetings with 421, {deferred} deferrals, longest run after a \
         success {burst}, peak {}",
        mx.peak_sessions()
    );
    assert!(
        refused >= 1,
        "the MX's limit was reached: {:#?}",
        mx.transcript()
    );
    assert!(
        burst <= 3,
        "after the first 421s the window stays near what the MX takes, so no more than a \
         couple of sessions are refused at a time; {burst} in a row: {:#?}",
        mx.transcript()
    );
    // With +1 per success and -1 per failure the window settles between 2 and 4: two
    // successes raise it by two, and the next two new sessions are refused. So about one 421
    // per delivered message (15 to 18 seen); a window that never came down gets 80 to 110.
    assert!(
        refused <= 30,
        "the window came down after 421s: {refused} refused sessions for 20 messages"
    );

    mx.set(|b| b.session_limit = None);
    let second: Vec<String> = (20..40).map(|i| rcpt("example.test", i)).collect();
    let more: Vec<Submission> = (20..40)
        .map(|i| w.mail(&rcpt("example.test", i), &format!("message {i}")))
        .collect();
    let peak = peak_during(&mx, async {
        submit_many(relay.addr(), more, 4).await;
        wait_for_all(&relay, &second, "sent", WAIT).await;
    })
    .await;
    eprintln!("phase 2: peak {peak}");
    assert!(
        peak > 2,
        "with the limit lifted the window grew past 2: peak {peak} sessions"
    );
    assert!(peak <= 10, "never past the limit: peak {peak} sessions");
}

/// `destination_rate_delay = "1s"`: one delivery at a time to the destination, a second
/// apart: three messages submitted together arrive over at least two seconds, over one
/// session at a time.
#[tokio::test]
async fn rate_delay_sends_one_at_a_time() {
    let w = World::new().await;
    let mx = w.example_mx(Behaviour::plain()).await;
    let config = w
        .lab
        .relay_config()
        .toml("[delivery]\ndestination_rate_delay = \"1s\"\ninitial_destination_concurrency = 5\n");
    let relay = w.lab.start_relay(config).await;
    submit_many(relay.addr(), mails(&w, "example.test", 3), 3).await;

    let mut arrivals = Vec::new();
    for _ in 0..3 {
        mx.next_message(WAIT).await;
        arrivals.push(Instant::now());
    }
    let spread = arrivals[2] - arrivals[0];
    eprintln!("three messages arrived over {spread:.2?}");
    assert!(
        spread >= Duration::from_millis(1900),
        "a second between deliveries: the three arrived over {spread:?}"
    );
    assert_eq!(mx.peak_sessions(), 1, "one session at a time");
    let rcpts: Vec<String> = (0..3).map(|i| rcpt("example.test", i)).collect();
    wait_for_all(&relay, &rcpts, "sent", WAIT).await;
}
