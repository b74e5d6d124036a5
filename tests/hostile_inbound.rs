//! Hostile clients of the relay's listener, against the real binary: a flood of 1,000
//! connections over `smtpd.max_connections` (the extra ones answered `421 4.3.2` and closed,
//! the relay still serving), and the memory an idle inbound connection costs, measured.
//! (Slowloris and over-long lines are in tests/inbound.rs.)

mod lab;

use lab::smtp::Behaviour;
use lab::submit::{message, Submission};
use lab::{Lab, WAIT};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

/// Lets this process hold a few thousand sockets (the relay, started from it, inherits it).
fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < 4096 {
            l.rlim_cur = l.rlim_max.min(4096);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// The relay's resident memory now (VmRSS), in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Connects and reads the first line the relay sends.
async fn greeting(addr: std::net::SocketAddr) -> (BufReader<TcpStream>, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let _ = tokio::time::timeout(WAIT, r.read_line(&mut line)).await;
    (r, line)
}

#[tokio::test]
async fn a_thousand_connections_past_the_limit_get_421_and_the_relay_keeps_serving() {
    raise_fd_limit();
    const LIMIT: usize = 200;
    let lab = Lab::new().await;
    let mx = lab
        .domain_with_mx("example.test", 3, Behaviour::plain())
        .await;
    let config = lab
        .relay_config()
        .toml(&format!("[smtpd]\nmax_connections = {LIMIT}\n"));
    let relay = lab.start_relay(config).await;
    let pid = relay.pid().expect("running");
    let addr = relay.addr();

    let before = rss_kib(pid);
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let (conn, line) = greeting(addr).await;
        assert!(line.starts_with("220 "), "within the limit: {line:?}");
        held.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib(pid);
    let per_connection = after.saturating_sub(before) as f64 / LIMIT as f64;
    eprintln!(
        "idle inbound connections: {LIMIT} cost {} KiB of RSS, {per_connection:.1} KiB each \
         ({before} -> {after} KiB)",
        after.saturating_sub(before)
    );
    assert!(
        per_connection < 256.0,
        "{per_connection:.1} KiB per idle connection"
    );

    // 1,000 more at once: every one refused with 421 4.3.2 and closed.
    let flood = (0..1000).map(|_| tokio::spawn(greeting(addr)));
    let mut refused = 0;
    for task in flood {
        let (mut conn, line) = task.await.expect("task");
        assert!(
            line.starts_with("421 4.3.2 ") && line.contains("too many connections"),
            "over the limit: {line:?}"
        );
        let mut rest = String::new();
        let n = tokio::time::timeout(WAIT, conn.read_line(&mut rest)).await;
        assert!(matches!(n, Ok(Ok(0))), "closed after the 421: {rest:?}");
        refused += 1;
    }
    assert_eq!(refused, 1000);

    // Free a few slots: an allowed client gets its mail through.
    held.truncate(LIMIT - 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let to = "bob@example.test";
    let from = "alice@sender.test";
    relay
        .submit(&Submission::new(from, message(from, to, "after the flood", "Hi.\n")).rcpt(to))
        .await;
    mx.next_message(WAIT).await;
    drop(held);
}
