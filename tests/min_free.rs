//! `queue.min_free` on the real relay, without a full disk: a threshold no file system can meet
//! makes MAIL FROM answer `452 4.3.1 Insufficient system storage` before anything is written;
//! a declared SIZE counts toward it; 0 disables the check. And the relay starts when its
//! policy cache cannot be opened (as on a full disk), with the cache in memory.
//! (tests/full_disk.rs does the same on a real full file system, when it may mount one.)

mod lab;

use lab::submit::{message, submit, Submission};
use lab::Lab;
use std::path::Path;

/// More free space than any file system has.
const HUGE: u64 = 1 << 60;

fn mail(size: Option<u64>) -> Submission {
    let s = Submission::new(
        "alice@origin.test",
        message("alice@origin.test", "bob@example.test", "space", "Hello.\n"),
    )
    .rcpt("bob@example.test");
    match size {
        Some(n) => s.param(&format!("SIZE={n}")),
        None => s,
    }
}

/// Files under `spool/DIR` of the relay's data directory (none when it does not exist).
fn spool_files(data_dir: &Path, dir: &str) -> Vec<String> {
    match std::fs::read_dir(data_dir.join("spool").join(dir)) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn count(lines: &[String], text: &str) -> usize {
    lines.iter().filter(|l| l.contains(text)).count()
}

#[tokio::test]
async fn mail_from_is_refused_below_min_free_before_anything_is_written() {
    let lab = Lab::new().await;
    let config = lab
        .relay_config()
        .toml(&format!("[queue]\nmin_free = {HUGE}\n"));
    let relay = lab.start_relay(config).await;
    for size in [None, Some(1000), None] {
        let t = submit(relay.addr(), &mail(size)).await;
        let reply = t.reply_to("MAIL FROM").expect("MAIL FROM sent");
        assert_eq!(reply, "452 4.3.1 Insufficient system storage", "{t:#?}");
        assert!(
            t.reply_to("RCPT").is_none() && t.data_reply().is_none(),
            "{t:#?}"
        );
    }
    let data_dir = &relay.config.data_dir;
    assert!(
        spool_files(data_dir, "msg").is_empty(),
        "nothing in spool/msg"
    );
    assert!(
        spool_files(data_dir, "tmp").is_empty(),
        "nothing in spool/tmp"
    );
    // One warning for the episode, not one per command.
    let log = relay.log_lines();
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("spool file system low on space"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log:#?}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(
        warnings[0].contains(&format!("queue.min_free {HUGE}")),
        "{}",
        warnings[0]
    );
}

#[tokio::test]
async fn the_declared_size_counts_toward_min_free() {
    let lab = Lab::new().await;
    let config = lab.relay_config().toml(&format!(
        "[queue]\nmin_free = 1\n[smtpd]\nmessage_size_limit = {HUGE}\n"
    ));
    let relay = lab.start_relay(config).await;
    let t = submit(relay.addr(), &mail(Some(HUGE - 1))).await;
    let reply = t.reply_to("MAIL FROM").expect("MAIL FROM sent");
    assert!(reply.starts_with("452 4.3.1"), "{t:#?}");
    // Small mail still fits: accepted and queued.
    let t = submit(relay.addr(), &mail(Some(1000))).await;
    assert!(t.queue_id().is_some(), "{t:#?}");
    assert_eq!(
        count(&relay.log_lines(), "spool file system low on space"),
        1,
        "{:#?}",
        relay.log_lines()
    );
}

#[tokio::test]
async fn min_free_zero_accepts() {
    let lab = Lab::new().await;
    let config = lab.relay_config().toml(&format!(
        "[queue]\nmin_free = 0\n[smtpd]\nmessage_size_limit = {HUGE}\n"
    ));
    let relay = lab.start_relay(config).await;
    for size in [None, Some(HUGE - 1)] {
        let t = submit(relay.addr(), &mail(size)).await;
        assert_eq!(
            t.reply_to("MAIL FROM").map(|r| &r[..3]),
            Some("250"),
            "{t:#?}"
        );
        assert!(t.queue_id().is_some(), "{t:#?}");
    }
    assert_eq!(
        count(&relay.log_lines(), "spool file system low on space"),
        0
    );
}

/// `data_dir/policy-cache` is a regular file: sled cannot open a database there, as on a full
/// disk. The relay starts anyway, says so, and accepts mail.
#[tokio::test]
async fn starts_with_the_policy_cache_in_memory_when_its_database_cannot_be_opened() {
    let lab = Lab::new().await;
    let config = lab.relay_config();
    std::fs::create_dir_all(&config.data_dir).unwrap();
    std::fs::write(config.data_dir.join("policy-cache"), b"not a database").unwrap();
    let relay = lab.start_relay(config).await;
    let log = relay.log_lines();
    let line = log
        .iter()
        .find(|l| l.contains("MTA-STS policies are cached in memory until it can be opened"))
        .unwrap_or_else(|| panic!("no warning about the policy cache: {log:#?}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("policy-cache"), "names the path: {line}");
    let t = submit(relay.addr(), &mail(None)).await;
    assert!(t.queue_id().is_some(), "{t:#?}");
}
