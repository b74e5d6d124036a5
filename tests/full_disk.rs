//! The spool on a full file system (issue 11, `queue.min_free`): on a small tmpfs of its own the
//! relay refuses new mail at MAIL FROM with `452 4.3.1` before writing anything, once free space
//! is below `min_free` plus the SIZE the client declared; it starts on a full disk; the mail it
//! already holds still leaves; and once space is back it accepts mail again. No message that got
//! a 250 is lost.
//!
//! Needs root (mount). Without it, or when the mount fails, the test says so and passes.

mod lab;

#[allow(dead_code)]
#[path = "relay/support.rs"]
mod support;

use lab::queue::wait_for_empty_spool;
use lab::relay::Relay;
use lab::smtp::{Behaviour, SmtpServer};
use lab::submit::{submit, Submission};
use lab::WAIT;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::World;

const MIB: u64 = 1024 * 1024;
const MIN_FREE: u64 = 2 * MIB;

/// A tmpfs mounted on a temporary directory; unmounted (lazily if busy) on drop.
struct TmpfsMount {
    dir: tempfile::TempDir,
}

impl TmpfsMount {
    /// `None`, with a message, when not root or the mount fails.
    fn new(size: &str) -> Option<TmpfsMount> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: full_disk needs root to mount a tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TmpfsMount { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: full_disk cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: full_disk cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Bytes available to an unprivileged writer on the file system of `path` (statvfs).
fn available(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs on a NUL-terminated path into a zeroed struct we own.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    s.f_bavail as u64 * s.f_frsize as u64
}

/// A file that takes up the file system's space, grown or shrunk to leave a given amount free.
struct Filler {
    path: PathBuf,
}

impl Filler {
    /// Grows or shrinks the filler so that about `free` bytes stay available.
    fn leave_free(&self, free: u64) {
        let avail = available(self.path.parent().unwrap());
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if avail > free {
            self.append(avail - free);
        } else {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .unwrap();
            f.set_len(len.saturating_sub(free - avail)).unwrap();
        }
        eprintln!(
            "filler: {} bytes available on the spool's file system (want {free})",
            available(self.path.parent().unwrap())
        );
    }

    /// Appends up to `bytes` (real data, not a hole); stops quietly at ENOSPC.
    fn append(&self, mut bytes: u64) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        while bytes > 0 {
            let n = bytes.min(chunk.len() as u64) as usize;
            match f.write(&chunk[..n]) {
                Ok(0) => break,
                Ok(w) => bytes -= w as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filler: {e}"),
            }
        }
    }

    /// Writes until the file system is full (ENOSPC).
    fn fill(&self) {
        self.append(u64::MAX);
        eprintln!(
            "filler: file system full, {} bytes available",
            available(self.path.parent().unwrap())
        );
    }

    fn remove(&self) {
        std::fs::remove_file(&self.path).unwrap();
    }
}

/// After the filler changed: the relay may answer from a measurement of plenty of free space
/// for up to a second (it measures afresh near the threshold), so give it that second.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// The reply to MAIL FROM when submitting `s` (the lab's client stops there when refused).
async fn mail_reply(relay: &Relay, s: &Submission) -> (String, Option<String>) {
    let t = submit(relay.addr(), s).await;
    (
        t.reply_to("MAIL FROM").unwrap_or("").to_string(),
        t.queue_id(),
    )
}

#[track_caller]
fn assert_insufficient_storage(reply: &str, why: &str) {
    assert!(
        reply.starts_with("452 4.3.1") && reply.contains("Insufficient system storage"),
        "{why}: want 452 4.3.1 Insufficient system storage, got {reply:?}"
    );
}

fn accept_all(mx: &SmtpServer) {
    mx.set(|b| b.rcpt_default = None);
}

fn low_space_warnings(relay: &Relay, from: usize) -> Vec<String> {
    relay.log_lines()[from..]
        .iter()
        .filter(|l| l.contains("spool file system low on space"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_full_spool_file_system_refuses_new_mail_and_keeps_the_queued() {
    let Some(mount) = TmpfsMount::new("16m") else {
        return;
    };
    let w = World::new().await;
    let mx = w
        .example_mx(Behaviour::plain().rcpt_default("451 4.3.0 try again later"))
        .await;
    let mut config = w
        .lab
        .relay_config()
        .toml(&format!("[queue]\nmin_free = {MIN_FREE}\n"));
    config.data_dir = mount.path().join("data");
    let mut relay = w.lab.start_relay(config).await;
    let filler = Filler {
        path: mount.path().join("filler"),
    };
    // Every message that got a 250: (queue id, recipient).
    let mut accepted: Vec<(String, String)> = Vec::new();

    // Mail queued while there is room, deferred by the MX.
    for i in 0..3 {
        let rcpt = format!("r{i}@example.test");
        let mark = relay.log_mark();
        let id = relay.submit(&w.mail(&rcpt, "queued")).await;
        relay.wait_for_delivery(mark, &rcpt, "deferred", WAIT).await;
        accepted.push((id, rcpt));
    }

    // 3 MiB free: above min_free, so a message is accepted; but not with a declared SIZE that
    // would take free space below min_free.
    filler.leave_free(3 * MIB);
    settle().await;
    let (reply, id) = mail_reply(&relay, &w.mail("r3@example.test", "fits")).await;
    assert!(
        reply.starts_with("250"),
        "above min_free: MAIL FROM {reply:?}"
    );
    accepted.push((id.expect("queued above min_free"), "r3@example.test".into()));
    let big = w
        .mail("big@example.test", "too big")
        .param(&format!("SIZE={}", 2 * MIB));
    let (reply, _) = mail_reply(&relay, &big).await;
    assert_insufficient_storage(&reply, "free space below min_free + SIZE");

    // 1 MiB free: below min_free; refused before anything is written, though it would fit.
    filler.leave_free(MIB);
    settle().await;
    let mark = relay.log_mark();
    for i in 0..3 {
        let (reply, _) = mail_reply(&relay, &w.mail(&format!("n{i}@example.test"), "no")).await;
        assert_insufficient_storage(&reply, "free space below min_free");
    }
    let warnings = low_space_warnings(&relay, 0);
    assert!(!warnings.is_empty(), "a warning when the episode starts");
    assert!(
        low_space_warnings(&relay, mark).len() <= 1,
        "one warning an episode, never one a command: {warnings:#?}"
    );
    assert!(
        warnings.iter().all(|l| l.contains("WARN")),
        "logged as a warning: {warnings:#?}"
    );

    // Full: the relay is restarted on it and starts.
    filler.fill();
    settle().await;
    let (reply, _) = mail_reply(&relay, &w.mail("n3@example.test", "no")).await;
    assert_insufficient_storage(&reply, "a full file system");
    // A retry on the full disk: its state record cannot be written; nothing may be lost.
    let full = relay.log_mark();
    for (_, rcpt) in &accepted {
        relay.wait_for_delivery(full, rcpt, "deferred", WAIT).await;
    }
    let unwritten: Vec<String> = relay.log_lines()[full..]
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .cloned()
        .collect();
    eprintln!("retries on the full disk logged: {unwritten:#?}");
    let mark = relay.log_mark();
    relay.restart().await;
    let restart_log = relay.log_lines()[mark..].to_vec();
    let memory: Vec<&String> = restart_log
        .iter()
        .filter(|l| l.contains("in memory"))
        .collect();
    assert!(
        !memory.is_empty() && memory.iter().all(|l| l.contains("WARN")),
        "the policy cache cannot open its database on the full disk: it falls back to memory, \
         with a warning: {memory:#?}"
    );
    let (reply, _) = mail_reply(&relay, &w.mail("n4@example.test", "no")).await;
    assert_insufficient_storage(&reply, "still full after the restart");

    // The MX accepts: the queued mail leaves, though the disk is full.
    accept_all(&mx);
    for (id, rcpt) in &accepted {
        let d = relay.wait_for_delivery(mark, rcpt, "sent", WAIT).await;
        assert_eq!(&d.id, id, "{}", d.line);
    }

    // Space again: new mail is accepted and delivered.
    filler.remove();
    settle().await;
    let mark = relay.log_mark();
    let (reply, id) = mail_reply(&relay, &w.mail("r5@example.test", "space again")).await;
    assert!(reply.starts_with("250"), "space again: MAIL FROM {reply:?}");
    let ended: Vec<String> = relay.log_lines()[mark..]
        .iter()
        .filter(|l| l.contains("INFO") && l.contains("spool file system"))
        .cloned()
        .collect();
    assert_eq!(
        ended.len(),
        1,
        "an info line when the episode ends: {ended:#?}"
    );
    let id = id.expect("queued once there is space");
    assert_eq!(relay.delivery("r5@example.test", "sent").await.id, id);
    accepted.push((id, "r5@example.test".into()));

    // Every message that got a 250 was delivered or bounced.
    let done = relay.deliveries();
    for (id, rcpt) in &accepted {
        assert!(
            done.iter()
                .any(|d| &d.id == id && (d.status == "sent" || d.status == "bounced")),
            "{id} to {rcpt} got a 250 and was neither delivered nor bounced"
        );
    }
    wait_for_empty_spool(&relay.config.data_dir, WAIT).await;
    // The relay goes before the mount.
    drop(relay);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(mount);
}
