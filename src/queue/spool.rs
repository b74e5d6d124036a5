//! The spool: where accepted mail lives on disk until every recipient is done.
//!
//! Layout under the spool directory:
//! - `tmp/ID`   a message being written; never acknowledged, deleted at start-up.
//! - `msg/ID`   an accepted message: a header line, the envelope as JSON, then the message
//!   bytes. Written once, never changed, removed when every recipient is done.
//! - `state/ID` an append-only log of per-recipient outcomes (one JSON record a line),
//!   replayed at start-up; the last record of a recipient wins.
//! - `free/N`   files of finished messages, written over by new ones instead of a create and
//!   an unlink per message ([`super::recycle`]); emptied at start-up.
//!
//! Durability (DESIGN.md): a message is acknowledged only after the one recipe of this module —
//! write to `tmp/`, fsync the file, rename into `msg/`, fsync `msg/` — has completed. The
//! expensive steps are shared ("group commit"): a committer thread takes every message that
//! is waiting, writes each into `tmp/`, makes them all durable with one `syncfs(2)` of the
//! spool's file system (each file's data and inode, and one cache flush of the device, for the
//! whole batch), renames them all, syncs the directory once and acknowledges them together.
//! Per-file fsyncs would cost one device flush each on a file system without a journal to
//! coalesce them. Should `syncfs` fail (an I/O error anywhere on the file system), each file
//! of the batch is synced on its own, so that only the ones that really failed are refused.
//! That is how the queue accepts more messages per second than the disk does flushes, without
//! acknowledging anything that is not on stable storage.
//!
//! State records are appended without fsync: losing one in a power failure means a recipient
//! is tried again (a rare duplicate), never a lost message. A bounce is stored (with the full
//! recipe) before the record that says the recipient is done.

use crate::envelope::Envelope;
use crate::queue::QueueId;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;
use tokio::sync::oneshot;

/// First line of every message file; a file without it is not ours.
const MAGIC: &[u8] = b"MXGUARD-SPOOL-1\n";

use super::recycle::Recycler;
pub use super::state::{LogRecord, RcptState, StateRecord};

/// A message for the committer to write into `tmp/`, sync and rename into `msg/`.
struct Pending {
    id: QueueId,
    /// The envelope as JSON, and the message.
    header: Vec<u8>,
    message: Vec<u8>,
    done: oneshot::Sender<io::Result<()>>,
}

pub struct Spool {
    msg: PathBuf,
    state: PathBuf,
    corrupt: PathBuf,
    committer: mpsc::Sender<Pending>,
    /// `free/`: finished message files, written over by the next messages ([`recycle`]).
    recycler: Arc<Recycler>,
}

impl Spool {
    /// Opens the spool, creating its directories, clearing `tmp/` (nothing there was ever
    /// acknowledged) and starting the committer thread.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        let tmp = dir.join("tmp");
        let msg = dir.join("msg");
        let state = dir.join("state");
        let corrupt = dir.join("corrupt");
        for d in [&tmp, &msg, &state, &corrupt] {
            fs::create_dir_all(d)?;
        }
        for entry in fs::read_dir(&tmp)? {
            let _ = fs::remove_file(entry?.path());
        }
        let recycler = Arc::new(Recycler::open(dir.join("free"))?);
        let (tx, rx) = mpsc::channel();
        let (tmp2, msg2, recycler2) = (tmp.clone(), msg.clone(), recycler.clone());
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || commit_loop(rx, &tmp2, &msg2, &recycler2))?;
        Ok(Spool {
            msg,
            state,
            corrupt,
            committer: tx,
            recycler,
        })
    }

    /// A view for reading only (`mxguard queue`): no directories created, no thread started.
    pub fn open_read_only(dir: &Path) -> Spool {
        let (tx, _) = mpsc::channel();
        Spool {
            msg: dir.join("msg"),
            state: dir.join("state"),
            corrupt: dir.join("corrupt"),
            committer: tx,
            recycler: Arc::new(Recycler::unopened(dir.join("free"))),
        }
    }

    /// Stores a message durably. Returns once it is on stable storage.
    pub async fn store(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        message: Vec<u8>,
    ) -> io::Result<()> {
        let header = serde_json::to_vec(envelope).map_err(io::Error::other)?;
        let (done, wait) = oneshot::channel();
        self.committer
            .send(Pending {
                id: *id,
                header,
                message,
                done,
            })
            .map_err(|_| io::Error::other("spool committer has stopped"))?;
        wait.await
            .map_err(|_| io::Error::other("spool committer has stopped"))?
    }

    /// Reads a message back: its envelope and its bytes. Blocking.
    pub fn load(&self, id: &QueueId) -> io::Result<(Envelope, Vec<u8>)> {
        let path = self.msg.join(id.as_str());
        let data = read_whole(File::open(&path)?, &path)?;
        parse_message_file(&data)
    }

    /// Reads only a message's envelope, and the size of its bytes: what listing and scheduling
    /// need, without reading the message itself. Blocking.
    pub fn load_envelope(&self, id: &QueueId) -> io::Result<(Envelope, u64)> {
        let path = self.msg.join(id.as_str());
        let mut f = File::open(&path)?;
        let held = f.metadata()?;
        let total = held.len();
        // The envelope is short; read a first block and more only when it needs more.
        let mut head = vec![0u8; 8192];
        let n = read_up_to(&mut f, &mut head)?;
        head.truncate(n);
        let (len, start) = header_length(&head)?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| bad_data("bad header length"))?;
        if head.len() < end {
            let mut rest = vec![0u8; end - head.len()];
            f.read_exact(&mut rest)
                .map_err(|_| bad_data("truncated envelope"))?;
            head.extend_from_slice(&rest);
        }
        still_named(&held, &path)?;
        let envelope: Envelope = serde_json::from_slice(&head[start..end])
            .map_err(|e| bad_data(&format!("bad envelope: {e}")))?;
        Ok((envelope, total.saturating_sub(end as u64)))
    }

    /// Whether the message file exists (a message not yet removed).
    pub fn contains(&self, id: &QueueId) -> bool {
        self.msg.join(id.as_str()).exists()
    }

    /// Every message in the spool, oldest first (ids sort by arrival).
    pub fn scan(&self) -> io::Result<Vec<QueueId>> {
        let mut ids = Vec::new();
        let entries = match fs::read_dir(&self.msg) {
            Ok(entries) => entries,
            // A spool that was never created (`mxguard queue` before the first start) is empty.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let name = entry?.file_name();
            match name.to_str().and_then(QueueId::parse) {
                Some(id) => ids.push(id),
                None => tracing::warn!("spool: ignoring stray file msg/{}", name.to_string_lossy()),
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Moves an unreadable message file aside so an operator can look at it; it is never
    /// deleted silently.
    pub fn quarantine(&self, id: &QueueId) -> io::Result<()> {
        fs::rename(self.msg.join(id.as_str()), self.corrupt.join(id.as_str()))?;
        let _ = fs::rename(
            self.state.join(id.as_str()),
            self.corrupt.join(format!("{id}.state")),
        );
        Ok(())
    }

    /// Appends per-recipient records. Blocking; not synced (see the module doc).
    pub fn append_state(&self, id: &QueueId, records: &[StateRecord]) -> io::Result<()> {
        let records: Vec<LogRecord> = records.iter().cloned().map(LogRecord::Rcpt).collect();
        self.append(id, &records)
    }

    /// Appends records of either kind in one write. Blocking; not synced (see the module doc).
    pub fn append(&self, id: &QueueId, records: &[LogRecord]) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join(id.as_str()))?;
        f.write_all(&buf)
    }

    /// Replays the state log: the last record of each recipient wins. A torn last line (a
    /// crash during an append) is skipped.
    pub fn read_state(&self, id: &QueueId) -> io::Result<Vec<LogRecord>> {
        let f = match File::open(self.state.join(id.as_str())) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for line in io::BufReader::new(f).split(b'\n') {
            if let Ok(r) = serde_json::from_slice::<LogRecord>(&line?) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Removes a finished message (its file kept for reuse, [`recycle`]). The state log goes
    /// first: should we crash in between, the message is delivered again (a duplicate) rather
    /// than its state outliving it.
    pub fn remove(&self, id: &QueueId) -> io::Result<()> {
        match fs::remove_file(self.state.join(id.as_str())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.recycler.discard(&self.msg.join(id.as_str()))
    }

    /// When the message file was written: the arrival time of a message whose envelope says
    /// otherwise cannot be trusted less than this.
    pub fn modified(&self, id: &QueueId) -> io::Result<SystemTime> {
        fs::metadata(self.msg.join(id.as_str()))?.modified()
    }
}

/// Writes a new file in `tmp/` (the committer syncs it); on failure nothing is left behind.
fn write_new(recycler: &Recycler, path: &Path, header: &[u8], message: &[u8]) -> io::Result<()> {
    let result = write_file(recycler, path, header, message);
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

fn write_file(recycler: &Recycler, path: &Path, header: &[u8], message: &[u8]) -> io::Result<()> {
    let mut f = recycler.create(path)?;
    let mut head = Vec::with_capacity(MAGIC.len() + 24 + header.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(format!("{}\n", header.len()).as_bytes());
    head.extend_from_slice(header);
    f.write_all(&head)?;
    f.write_all(message)?;
    // A reused file may be longer: cut off the tail of the message it held before.
    f.set_len((head.len() + message.len()) as u64)
}

/// `syncfs(2)` of the file system holding `dir`: every dirty file's data and inode written,
/// and the device's cache flushed.
fn sync_file_system(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir)?;
    // SAFETY: `d` is an open descriptor for the duration of the call.
    match unsafe { libc::syncfs(d.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Makes the batch's files in `tmp` durable: one `syncfs`, or, when it fails, one fsync per
/// file, so that one bad file does not refuse the others.
fn sync_batch(tmp: &Path, batch: &[Pending]) -> Vec<io::Result<()>> {
    if sync_file_system(tmp).is_ok() {
        return batch.iter().map(|_| Ok(())).collect();
    }
    batch
        .iter()
        .map(|p| File::open(tmp.join(p.id.as_str())).and_then(|f| f.sync_data()))
        .collect()
}

fn parse_message_file(data: &[u8]) -> io::Result<(Envelope, Vec<u8>)> {
    let (len, start) = header_length(data)?;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= data.len())
        .ok_or_else(|| bad_data("truncated envelope"))?;
    let envelope: Envelope = serde_json::from_slice(&data[start..end])
        .map_err(|e| bad_data(&format!("bad envelope: {e}")))?;
    Ok((envelope, data[end..].to_vec()))
}

/// The envelope's length and where it starts, from the first bytes of a message file.
fn header_length(data: &[u8]) -> io::Result<(usize, usize)> {
    let rest = data
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad_data("not a spool file"))?;
    let nl = rest
        .iter()
        .take(24)
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad_data("no header length"))?;
    let len: usize = std::str::from_utf8(&rest[..nl])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_data("bad header length"))?;
    Ok((len, MAGIC.len() + nl + 1))
}

fn bad_data(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Reads a message file opened as `path`, whole, and makes sure it was that message's file
/// all along ([`still_named`]).
fn read_whole(mut f: File, path: &Path) -> io::Result<Vec<u8>> {
    let held = f.metadata()?;
    let mut data = Vec::with_capacity(held.len() as usize);
    f.read_to_end(&mut data)?;
    still_named(&held, path)?;
    Ok(data)
}

/// Whether the file `held` describes, opened as `path` in `msg/`, still has that name after
/// it was read. A finished message's file is reused for the next message ([`recycle`]), so a
/// reader that opened it just before the message was removed may have read another message's
/// bytes. A file never changes while it is in `msg/`, and once out of it never comes back
/// under the same name (queue ids are unique), so if the name still leads to the same file,
/// what was read is that message. Otherwise the message is reported gone.
fn still_named(held: &fs::Metadata, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(path) {
        Ok(named) if named.ino() == held.ino() && named.dev() == held.dev() => Ok(()),
        Ok(_) => Err(removed_while_read()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(removed_while_read()),
        Err(e) => Err(e),
    }
}

fn removed_while_read() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "the message was removed while it was read",
    )
}

/// Reads until `buf` is full or the file ends; the number of bytes read.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The committer: makes batches of written files durable, renames them into `msg/`, syncs
/// the directory once per batch, then acknowledges the batch.
fn commit_loop(rx: mpsc::Receiver<Pending>, tmp: &Path, msg: &Path, recycler: &Recycler) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        // Written here rather than on a thread of each session's own: one hand-over a message
        // instead of two, and writes to the page cache are quick.
        let written: Vec<io::Result<()>> = batch
            .iter_mut()
            .map(|p| {
                let written = write_new(recycler, &tmp.join(p.id.as_str()), &p.header, &p.message);
                p.message = Vec::new();
                written
            })
            .collect();
        let synced = sync_batch(tmp, &batch)
            .into_iter()
            .zip(written)
            .map(|(synced, written)| written.and(synced));
        let results: Vec<io::Result<()>> = batch
            .iter()
            .zip(synced)
            .map(|(p, synced)| {
                synced.and_then(|()| fs::rename(tmp.join(p.id.as_str()), msg.join(p.id.as_str())))
            })
            .collect();
        let dir_synced = File::open(msg).and_then(|d| d.sync_all());
        for (p, result) in batch.into_iter().zip(results) {
            let outcome = match (&result, &dir_synced) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), _) | (Ok(()), Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            if outcome.is_err() {
                // Not acknowledged, so it must not be delivered either: take it back out.
                let _ = fs::remove_file(msg.join(p.id.as_str()));
                let _ = fs::remove_file(tmp.join(p.id.as_str()));
            }
            let _ = p.done.send(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Recipient;

    fn envelope() -> Envelope {
        let mut e = Envelope::new("alice@example.org");
        e.recipients.push(Recipient::new("bob@example.net"));
        e.recipients.push(Recipient::new("carol@example.net"));
        e
    }

    #[tokio::test]
    async fn store_load_scan_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::generate();
        let body = b"Subject: x\r\n\r\nhello\r\n".to_vec();
        let original = envelope();
        spool.store(&id, &original, body.clone()).await.unwrap();
        assert_eq!(spool.scan().unwrap(), vec![id]);
        let (env, msg) = spool.load(&id).unwrap();
        assert_eq!(env, original);
        assert_eq!(msg, body);
        assert!(fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none());
        spool.remove(&id).unwrap();
        assert!(spool.scan().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_reader_of_a_file_reused_meanwhile_finds_the_message_gone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let first = QueueId::generate();
        spool
            .store(&first, &envelope(), b"Subject: first\r\n\r\n1\r\n".to_vec())
            .await
            .unwrap();
        let path = dir.path().join("msg").join(first.as_str());
        // A reader (a delivery, `mxguard queue show`) has opened the file when the message
        // finishes and the next message is written into the same file.
        let held = File::open(&path).unwrap();
        spool.remove(&first).unwrap();
        let second = QueueId::generate();
        let body = b"Subject: second\r\n\r\n2\r\n".to_vec();
        spool
            .store(&second, &envelope(), body.clone())
            .await
            .unwrap();
        let second_path = dir.path().join("msg").join(second.as_str());
        assert_eq!(
            fs::metadata(&second_path).unwrap().ino(),
            held.metadata().unwrap().ino(),
            "the second message went into the first one's file"
        );

        let e = read_whole(held, &path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let held = File::open(&second_path).unwrap();
        spool.remove(&second).unwrap();
        let e = read_whole(held, &second_path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");

        // The file's new owner reads it whole, by its own name.
        let third = QueueId::generate();
        let kept = envelope();
        spool.store(&third, &kept, body.clone()).await.unwrap();
        assert_eq!(spool.load(&third).unwrap(), (kept.clone(), body));
        assert_eq!(spool.load_envelope(&third).unwrap().0, kept);
        assert!(matches!(spool.load(&first), Err(e) if e.kind() == io::ErrorKind::NotFound));
    }

    #[tokio::test]
    async fn a_finished_messages_file_carries_the_next_message_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let free = || fs::read_dir(dir.path().join("free")).unwrap().count();
        let first = QueueId::generate();
        let mut long = envelope();
        long.recipients.push(Recipient::new("dave@example.net"));
        spool
            .store(&first, &long, vec![b'x'; 20_000])
            .await
            .unwrap();
        spool.remove(&first).unwrap();
        assert_eq!(free(), 1, "kept for the next message");
        let second = QueueId::generate();
        let body = b"Subject: short\r\n\r\nhi\r\n".to_vec();
        let short = envelope();
        spool.store(&second, &short, body.clone()).await.unwrap();
        assert_eq!(free(), 0, "written over");
        assert_eq!(spool.load(&second).unwrap(), (short.clone(), body.clone()));
        assert_eq!(
            spool.load_envelope(&second).unwrap(),
            (short, body.len() as u64)
        );
        assert!(matches!(spool.load(&first), Err(e) if e.kind() == io::ErrorKind::NotFound));
        // A file left in free/ by a run is not reused by the next.
        spool.remove(&second).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(free(), 0, "emptied at start-up");
        assert!(spool.scan().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_envelope_is_read_without_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut original = envelope();
        // An envelope longer than the first block read.
        for n in 0..300 {
            original
                .recipients
                .push(Recipient::new(format!("r{n}@example.net")));
        }
        let id = QueueId::generate();
        let body = vec![b'x'; 100_000];
        spool.store(&id, &original, body).await.unwrap();
        let (env, size) = spool.load_envelope(&id).unwrap();
        assert_eq!(env, original);
        assert_eq!(size, 100_000);
        fs::write(
            dir.path().join("msg").join(id.as_str()),
            b"MXGUARD-SPOOL-1\n99999\n{}",
        )
        .unwrap();
        let e = spool.load_envelope(&id).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn many_concurrent_stores_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(Spool::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let s = spool.clone();
            tasks.push(tokio::spawn(async move {
                let id = QueueId::generate();
                s.store(&id, &envelope(), b"x\r\n".to_vec())
                    .await
                    .map(|_| id)
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap().unwrap());
        }
        ids.sort();
        assert_eq!(spool.scan().unwrap(), ids);
    }

    #[tokio::test]
    async fn state_log_last_record_wins_and_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::generate();
        spool
            .store(&id, &envelope(), b"x\r\n".to_vec())
            .await
            .unwrap();
        let deferred = RcptState::fresh();
        spool
            .append_state(
                &id,
                &[StateRecord {
                    rcpt: 0,
                    state: deferred.clone(),
                }],
            )
            .unwrap();
        spool
            .append_state(
                &id,
                &[StateRecord {
                    rcpt: 0,
                    state: RcptState::Done,
                }],
            )
            .unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("state").join(id.as_str()))
            .unwrap();
        f.write_all(b"{\"rcpt\":1,\"state\":\"do").unwrap();
        let records = spool.read_state(&id).unwrap();
        assert_eq!(records.len(), 2);
        assert!(matches!(&records[1], LogRecord::Rcpt(r) if r.state == RcptState::Done));
    }

    #[tokio::test]
    async fn leftover_tmp_files_are_cleared_and_garbage_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp").join("0000000000000AAAA"), b"half").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none());
        let id = QueueId::generate();
        fs::write(dir.path().join("msg").join(id.as_str()), b"garbage").unwrap();
        assert!(spool.load(&id).is_err());
        spool.quarantine(&id).unwrap();
        assert!(spool.scan().unwrap().is_empty());
        assert!(dir.path().join("corrupt").join(id.as_str()).exists());
    }
}
