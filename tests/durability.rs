//! The durability contract under crashes: every message that got `250` is delivered (or
//! bounced) even when the relay is killed with SIGKILL while accepting and delivering, and
//! restarted on the same spool. Duplicates are allowed (and counted); losses are not.

mod lab;

use lab::dns::Zone;
use lab::smtp::Behaviour;
use lab::Lab;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One SMTP transaction that tolerates the relay dying at any point: returns the token only
/// when the final reply was `250` (the relay took responsibility).
async fn submit_token(addr: SocketAddr, token: &str) -> Option<String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut s = BufReader::new(stream);
    async fn reply(s: &mut BufReader<TcpStream>) -> Option<String> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), s.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(line);
            }
        }
    }
    async fn cmd(s: &mut BufReader<TcpStream>, line: &str) -> Option<String> {
        s.get_mut().write_all(line.as_bytes()).await.ok()?;
        reply(s).await
    }
    reply(&mut s).await?.starts_with("220").then_some(())?;
    cmd(&mut s, "EHLO client.test\r\n").await?;
    cmd(&mut s, "MAIL FROM:<sender@origin.test>\r\n").await?;
    cmd(&mut s, "RCPT TO:<rcpt@dest.test>\r\n")
        .await?
        .starts_with("250")
        .then_some(())?;
    cmd(&mut s, "DATA\r\n")
        .await?
        .starts_with("354")
        .then_some(())?;
    let body = format!(
        "From: <sender@origin.test>\r\nTo: <rcpt@dest.test>\r\nSubject: {token}\r\n\r\n{}\r\n.\r\n",
        "durable ".repeat(200)
    );
    let last = cmd(&mut s, &body).await?;
    let _ = s.get_mut().write_all(b"QUIT\r\n").await;
    last.starts_with("250").then(|| token.to_string())
}

/// Submits from `sessions` concurrent clients until `stop`; returns the acknowledged tokens.
fn start_submitters(
    addr: SocketAddr,
    round: usize,
    sessions: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..sessions)
        .map(|k| {
            let stop = stop.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let token = format!("tok-{round}-{k}-{n}");
                    match submit_token(addr, &token).await {
                        Some(t) => {
                            acked.lock().unwrap().insert(t);
                        }
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect()
}

fn subjects(mx: &lab::smtp::SmtpServer) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in mx.messages() {
        let text = m.data_text();
        // Whole and only itself: spool files are written over by later messages (free/).
        assert!(
            text.ends_with(&format!("\r\n\r\n{}\r\n", "durable ".repeat(200)))
                && text.matches("Subject: ").count() == 1,
            "a delivered message is not the one submitted: {text:?}"
        );
        if let Some(subject) = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        {
            *seen.entry(subject.trim().to_string()).or_insert(0) += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_accepting_and_delivering_loses_nothing() {
    let lab = Lab::new().await;
    lab.zone(Zone::new("origin.test"));
    // A slightly slow MX, so that at each kill some messages are mid-delivery.
    let mx = lab
        .domain_with_mx(
            "dest.test",
            10,
            Behaviour::plain().slow(Duration::from_millis(30)),
        )
        .await;
    let mut relay = lab.relay().await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = start_submitters(relay.addr(), round, 6, stop.clone(), acked.clone());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        relay.kill();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        relay.start_again().await;
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 30,
        "too few messages accepted to prove anything: {}",
        acked.len()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = subjects(&mx);
        let missing: Vec<&String> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
        if missing.is_empty() {
            let duplicates: usize = seen.values().map(|n| n - 1).sum();
            eprintln!(
                "accepted {} messages over 3 crashes; all delivered, {} duplicate deliveries",
                acked.len(),
                duplicates
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} acknowledged messages never arrived, e.g. {:?}\nrelay log tail:\n{}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)],
            relay
                .log_lines()
                .iter()
                .rev()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every finished message leaves the spool: nothing is stuck or half-done after the crashes.
    let msg_dir = lab.dir().join("data").join("spool").join("msg");
    let deadline = tokio::time::Instant::now() + lab::WAIT;
    loop {
        let left = std::fs::read_dir(&msg_dir).unwrap().count();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} message(s) still in the spool after all were delivered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
