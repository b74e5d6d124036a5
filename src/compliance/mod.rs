//! The compliance record as data (`[compliance] file`): one JSON object per recipient attempt,
//! one per line (JSON Lines), carrying every field of the delivery log line under the same name
//! plus what an auditor needs beside it: the time, the sender, the Message-ID, the MX host and
//! IP, the SHA-256 of the certificate the server presented, the id of the policy the session
//! was verified under, and which attempt this was.
//!
//! Writing never holds up delivery: records go over a bounded channel to a thread of their
//! own that appends them. A full channel (the disk or the reader of standard output far behind)
//! drops records and says how many once it catches up; a write error is logged once per
//! episode. Each record is written with one `write(2)` on a file opened with `O_APPEND`, so
//! lines from this process and from the command line (`mxguard queue delete` with no daemon)
//! never interleave; a line cut short by a full disk is ended before the next one. SIGHUP
//! reopens the file, for log rotation.
//!
//! `mxguard compliance summary` ([`summary`]) reads the files back.

pub mod summary;

use crate::delivery::{Attempt, Status, TlsState};
use crate::queue_id::QueueId;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Records waiting for the writer at most; beyond this they are dropped (and counted).
const BACKLOG: usize = 65_536;

/// One recipient attempt. Field names are a contract (README "The compliance record"): the
/// log line's names where the log line has the fact, `null` where a fact does not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the attempt's outcome was recorded, RFC 3339 UTC.
    pub time: String,
    pub queue_id: String,
    /// The envelope sender; `""` for the null sender.
    pub from: String,
    pub to: String,
    /// The message's `Message-ID` field as written, `null` when it has none.
    pub message_id: Option<String>,
    /// `host[ip]:port`, or `none` when no session was reached (as in the log line).
    pub relay: String,
    pub mx_host: Option<String>,
    pub ip: Option<String>,
    /// Seconds since the message arrived, to the hundredth (the log line's `delay=`).
    pub delay: f64,
    /// `verified`, `unverified` or `none`.
    pub tls: String,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    /// The key-exchange group (the log line's `kx=`).
    pub kx: Option<String>,
    /// The SHA-256 of the server's certificate (the leaf), hex; `null` without TLS.
    pub peer_cert_sha256: Option<String>,
    /// What set the requirement: `dane`, `mta-sts`, `mta-sts-testing`, `local:LEVEL`,
    /// `requiretls`, `tls-required-no`, `none`.
    pub policy: String,
    /// The MTA-STS policy id, or `tlsa:` and the SHA-256 of the TLSA records the session was
    /// verified against; `null` when neither applied.
    pub policy_id: Option<String>,
    pub sts_id: Option<String>,
    pub sts_mx: Option<String>,
    /// Which transaction of its session this was; `null` when no session was reached.
    pub conn_use: Option<u32>,
    /// The recipient's attempt this record reports, from 1; for an operator's action, the
    /// attempts made before it.
    pub attempt: u32,
    pub dsn: String,
    /// `sent`, `deferred`, `bounced`, `expired`, `deleted`.
    pub status: String,
    /// The reply, as the log line gives it in parentheses.
    pub reply: String,
}

/// What the queue knows about an attempt beside the attempt itself.
pub struct Context<'a> {
    pub queue_id: &'a QueueId,
    pub from: &'a str,
    pub to: &'a str,
    pub message_id: Option<&'a str>,
    pub delay: Duration,
    pub status: Status,
    pub attempt: u32,
}

impl Record {
    pub fn new(attempt: &Attempt, cx: &Context<'_>) -> Record {
        let tls = &attempt.tls;
        let encrypted = tls.state != TlsState::None;
        let when_encrypted = |v: &Option<String>| v.clone().filter(|_| encrypted);
        let sts = attempt.policy.sts.as_ref();
        Record {
            time: rfc3339(SystemTime::now()),
            queue_id: cx.queue_id.to_string(),
            from: cx.from.to_string(),
            to: cx.to.to_string(),
            message_id: cx.message_id.map(str::to_string),
            relay: attempt
                .relay
                .as_ref()
                .map_or_else(|| "none".to_string(), |r| r.to_string()),
            mx_host: attempt.relay.as_ref().map(|r| r.host.clone()),
            ip: attempt.relay.as_ref().map(|r| r.addr.ip().to_string()),
            delay: (cx.delay.as_secs_f64() * 100.0).round() / 100.0,
            tls: tls.state.as_str().to_string(),
            tls_version: when_encrypted(&tls.version),
            cipher: when_encrypted(&tls.cipher),
            kx: when_encrypted(&tls.kx),
            peer_cert_sha256: when_encrypted(&tls.peer_cert_sha256),
            policy: attempt.policy.name.clone(),
            policy_id: attempt.policy.policy_id(),
            sts_id: sts.map(|s| s.id.clone()),
            sts_mx: sts.and_then(|s| s.mx.clone()),
            conn_use: (attempt.conn_use > 0 && attempt.relay.is_some()).then_some(attempt.conn_use),
            attempt: cx.attempt,
            dsn: attempt.reply.status().to_string(),
            status: cx.status.as_str().to_string(),
            reply: attempt.reply.to_string(),
        }
    }

    /// The record as one line, newline included.
    pub fn to_line(&self) -> String {
        // Serializing a struct of strings and numbers cannot fail; should it ever, the
        // record says so rather than vanishing.
        let mut line = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                "{{\"queue_id\":{:?},\"error\":{:?}}}",
                self.queue_id,
                e.to_string()
            )
        });
        line.push('\n');
        line
    }
}

/// RFC 3339 in UTC, to the millisecond: `2026-12-07T10:43:28.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// The compliance record's writer.
pub struct Log {
    tx: Mutex<Option<SyncSender<Message>>>,
    dropped: Arc<AtomicU64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// A record was dropped and no warning has said so yet.
    overflowing: AtomicBool,
}

enum Message {
    Line(String),
    Reopen,
}

/// Where records go.
enum Sink {
    Stdout,
    File(PathBuf),
}

impl Log {
    /// The writer for `[compliance] file`, or `None` when unset. The file is opened (created)
    /// now, so that a path that cannot be written stops start-up with a clear error.
    pub fn open(config: &crate::config::ComplianceConfig) -> std::io::Result<Option<Log>> {
        let Some(path) = &config.file else {
            return Ok(None);
        };
        let sink = match config.to_stdout() {
            true => Sink::Stdout,
            false => Sink::File(path.clone()),
        };
        let file = match &sink {
            Sink::Stdout => None,
            Sink::File(path) => Some(open_append(path)?),
        };
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            sink,
            file,
            failing: false,
            torn: false,
            dropped: dropped.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("compliance".into())
            .spawn(move || writer.run(rx))?;
        Ok(Some(Log {
            tx: Mutex::new(Some(tx)),
            dropped,
            thread: Mutex::new(Some(thread)),
            overflowing: AtomicBool::new(false),
        }))
    }

    /// Queues `record` for writing; never waits.
    pub fn write(&self, record: &Record) {
        self.send(Message::Line(record.to_line()));
    }

    /// Reopens the file (after log rotation moved it away).
    pub fn reopen(&self) {
        self.send(Message::Reopen);
    }

    fn send(&self, message: Message) {
        let Ok(tx) = self.tx.lock() else { return };
        let Some(tx) = tx.as_ref() else { return };
        match tx.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.overflowing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "compliance record: the writer is {BACKLOG} records behind; dropping \
                         records until it catches up (the log line still has every attempt)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Writes what is queued and stops the writer (at shutdown; records sent later are lost).
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The thread that appends records.
struct Writer {
    sink: Sink,
    /// `None` for standard output, or while the file cannot be opened.
    file: Option<File>,
    /// The last write failed: the next failure is not logged again.
    failing: bool,
    /// A write stopped in the middle of a line: the next write ends it first.
    torn: bool,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Message>) {
        while let Ok(message) = rx.recv() {
            match message {
                Message::Line(line) => self.append(line.as_bytes()),
                Message::Reopen => self.reopen(),
            }
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!("compliance record: {dropped} record(s) were dropped");
            }
        }
        if let Some(file) = &self.file {
            let _ = file.sync_data();
        }
    }

    fn reopen(&mut self) {
        let Sink::File(path) = &self.sink else { return };
        match open_append(path) {
            Ok(file) => {
                self.file = Some(file);
                self.torn = false;
                tracing::info!("compliance record: reopened {}", path.display());
            }
            Err(e) => {
                tracing::error!("compliance record: cannot reopen {}: {e}", path.display());
            }
        }
    }

    fn append(&mut self, line: &[u8]) {
        if self.file.is_none() {
            if let Sink::File(_) = self.sink {
                // Opening failed at the last reopen: try again with each record.
                self.reopen();
            }
        }
        let bytes: std::borrow::Cow<[u8]> = match self.torn {
            true => [b"\n".as_slice(), line].concat().into(),
            false => line.into(),
        };
        let result = match (&self.sink, &mut self.file) {
            (Sink::Stdout, _) => std::io::stdout().lock().write_all(&bytes),
            (Sink::File(_), Some(file)) => write_once(file, &bytes),
            (Sink::File(_), None) => Err(std::io::Error::other("the file is not open")),
        };
        match result {
            Ok(()) => {
                self.torn = false;
                if self.failing {
                    self.failing = false;
                    tracing::info!("compliance record: writing again");
                }
            }
            Err(e) => {
                // A short write left part of a line; any other error, nothing.
                self.torn |= e.kind() == std::io::ErrorKind::WriteZero;
                if !self.failing {
                    self.failing = true;
                    tracing::error!(
                        "compliance record: write failed: {e}; records are lost until it works again"
                    );
                }
            }
        }
    }
}

/// One `write(2)` for the whole line (O_APPEND makes it land whole after whatever another
/// writer appended); a short write is an error, marked so the line is ended next time.
fn write_once(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    let n = file.write(bytes)?;
    if n < bytes.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write ({n} of {} bytes)", bytes.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ComplianceConfig;

    fn record(n: usize) -> Record {
        Record {
            time: rfc3339(SystemTime::UNIX_EPOCH),
            queue_id: format!("Q{n}"),
            from: "a@example.org".into(),
            to: "b@example.net".into(),
            message_id: None,
            relay: "none".into(),
            mx_host: None,
            ip: None,
            delay: 0.0,
            tls: "none".into(),
            tls_version: None,
            cipher: None,
            kx: None,
            peer_cert_sha256: None,
            policy: "none".into(),
            policy_id: None,
            sts_id: None,
            sts_mx: None,
            conn_use: None,
            attempt: 1,
            dsn: "2.0.0".into(),
            status: "sent".into(),
            reply: "250 2.0.0 Ok".repeat(n % 50),
        }
    }

    fn config(path: &Path) -> ComplianceConfig {
        ComplianceConfig {
            file: Some(path.to_path_buf()),
        }
    }

    #[test]
    fn two_writers_on_one_file_never_interleave_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let a = Log::open(&config(&path)).unwrap().unwrap();
        let b = Log::open(&config(&path)).unwrap().unwrap();
        for n in 0..2000 {
            a.write(&record(n));
            b.write(&record(n + 2000));
        }
        a.close();
        b.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap().queue_id)
            .collect();
        ids.sort_by_key(|id| id[1..].parse::<usize>().unwrap());
        let expect: Vec<String> = (0..4000).map(|n| format!("Q{n}")).collect();
        assert_eq!(ids, expect);
    }

    #[test]
    fn a_failing_disk_loses_records_but_never_blocks_or_panics() {
        // Every write to /dev/full fails with ENOSPC.
        let log = Log::open(&config(Path::new("/dev/full"))).unwrap().unwrap();
        for n in 0..(BACKLOG + 10) {
            log.write(&record(n));
        }
        log.reopen();
        log.close();
        // Written after close: dropped quietly.
        log.write(&record(0));
    }

    #[test]
    fn an_unwritable_path_is_refused_at_open_and_unset_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/d.jsonl");
        assert!(Log::open(&config(&missing)).is_err());
        assert!(Log::open(&ComplianceConfig::default()).unwrap().is_none());
    }

    #[test]
    fn times_are_rfc3339_utc_to_the_millisecond() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_630_119_123);
        assert_eq!(rfc3339(t), "2026-12-07T07:55:19.123Z");
    }
}
