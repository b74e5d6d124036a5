//! Message files kept for reuse: a finished message's file is renamed into `free/` and the
//! next message is written into it, instead of one unlink and one create per message.
//!
//! Why: on ext4 without a journal, creating a file skips every inode of its group freed in
//! the last minute (five more while their table block is dirty: `recently_deleted` in
//! `fs/ext4/ialloc.c`, so that e2fsck can still find them), so at hundreds of messages a
//! second each create scans thousands of inodes; that scan was a fifth of the daemon's CPU in
//! the relay benchmark. An unlink also frees the file's blocks (and discards them, with the
//! `discard` mount option) for the next create to allocate again. A reused file keeps its
//! inode and its blocks; writing it over and truncating it to its new length is ordinary
//! page-cache work.
//!
//! Safety: a reused file goes the same way as a new one (written in `tmp/`, made durable by
//! the batch's `syncfs`, renamed into `msg/`, `msg/` synced), and the rename that took it out
//! of `free/` happened before that `syncfs`, so it is durable before the message is. A rename
//! into `free/` is no more durable than the unlink it replaces: after a crash the message
//! may be back in `msg/` (delivered again, a duplicate), perhaps with a second name in
//! `free/`. So `free/` is emptied at start-up and never reused across runs (after e2fsck
//! counts both names, unlinking one leaves the message whole).
//!
//! Readers: a process that opened a message's file just before the message finished may go
//! on reading the next message written into it. The spool's readers therefore check, after
//! reading, that the message's name still leads to the file they read (`still_named` in
//! `spool.rs`); otherwise the message is gone.
//!
//! Bounds: at most [`MAX_FILES`] files, each at most [`MAX_SIZE`] bytes (a larger message's
//! file is unlinked), so the pool holds at most 16 MiB of disk.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Files kept at most.
pub const MAX_FILES: usize = 128;
/// The largest file kept.
pub const MAX_SIZE: u64 = 128 * 1024;

pub struct Recycler {
    /// False for a spool opened by `mxguard queue` without a daemon: it unlinks.
    enabled: bool,
    free: PathBuf,
    /// Names (numbers) of the files in `free/` now.
    files: Mutex<Vec<u64>>,
    next: AtomicU64,
}

impl Recycler {
    /// The pool in `dir` (created when missing), emptied: nothing from an earlier run is
    /// reused.
    pub fn open(dir: PathBuf) -> io::Result<Recycler> {
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(Recycler {
            enabled: true,
            ..Recycler::unopened(dir)
        })
    }

    /// A pool that keeps nothing (`mxguard queue` on a spool without a daemon: files are
    /// unlinked, and the next daemon finds `free/` as it left it).
    pub fn unopened(dir: PathBuf) -> Recycler {
        Recycler {
            enabled: false,
            free: dir,
            files: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    /// Takes the finished message file `path` out of the spool: into the pool when there is
    /// room and it is small enough, else unlinked.
    pub fn discard(&self, path: &Path) -> io::Result<()> {
        let small = fs::metadata(path)?.len() <= MAX_SIZE;
        if self.enabled && small && self.lock().len() < MAX_FILES {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if fs::rename(path, self.free.join(n.to_string())).is_ok() {
                self.lock().push(n);
                return Ok(());
            }
        }
        fs::remove_file(path)
    }

    /// A file to write a new message into, at `path` (which must not exist): a pooled file
    /// renamed there and opened for writing over, or a new one. The caller writes from the
    /// start and cuts the file to the length written (`set_len`), so that no tail of the
    /// message that had it before remains.
    pub fn create(&self, path: &Path) -> io::Result<File> {
        // Never over an existing file (only the committer writes in `tmp/`, each name once):
        // `create_new` then says why.
        if !path.exists() {
            while let Some(n) = self.take() {
                if fs::rename(self.free.join(n.to_string()), path).is_ok() {
                    return OpenOptions::new().write(true).open(path);
                }
            }
        }
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    fn take(&self) -> Option<u64> {
        self.lock().pop()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        // The list is only pushed to and popped: whatever a panicking holder left is usable.
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files in the pool now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    /// A pool in a new directory, with one finished file in it.
    fn pool_of_one() -> (tempfile::TempDir, PathBuf, Recycler) {
        let dir = tempfile::tempdir().unwrap();
        let free = dir.path().join("free");
        let r = Recycler::open(free.clone()).unwrap();
        let p = dir.path().join("m");
        write(&r, &p, b"m");
        r.discard(&p).unwrap();
        (dir, free, r)
    }

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    fn write(r: &Recycler, path: &Path, bytes: &[u8]) {
        let mut f = r.create(path).unwrap();
        f.write_all(bytes).unwrap();
        f.set_len(bytes.len() as u64).unwrap();
    }

    #[test]
    fn a_finished_file_is_written_over_and_cut_to_the_new_length() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recycler::open(dir.path().join("free")).unwrap();
        let first = dir.path().join("a");
        write(&r, &first, &[b'x'; 5000]);
        let inode = fs::metadata(&first).unwrap().ino();
        r.discard(&first).unwrap();
        assert!(!first.exists());
        assert_eq!(r.len(), 1);

        let second = dir.path().join("b");
        write(&r, &second, b"short");
        assert_eq!(
            fs::read(&second).unwrap(),
            b"short",
            "no tail of the old message"
        );
        assert_eq!(
            fs::metadata(&second).unwrap().ino(),
            inode,
            "the same inode"
        );
        assert_eq!(r.len(), 0);
        // An empty pool creates.
        write(&r, &dir.path().join("c"), b"new");
        assert_eq!(fs::read(dir.path().join("c")).unwrap(), b"new");
    }

    #[test]
    fn large_files_and_a_full_pool_are_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recycler::open(dir.path().join("free")).unwrap();
        let big = dir.path().join("big");
        write(&r, &big, &vec![0u8; MAX_SIZE as usize + 1]);
        r.discard(&big).unwrap();
        assert!(!big.exists());
        assert_eq!(r.len(), 0);
        let paths: Vec<PathBuf> = (0..MAX_FILES + 3)
            .map(|i| dir.path().join(format!("m{i}")))
            .collect();
        for p in &paths {
            write(&r, p, b"m");
        }
        for p in &paths {
            r.discard(p).unwrap();
            assert!(!p.exists());
        }
        assert_eq!(r.len(), MAX_FILES);
        assert_eq!(count(&dir.path().join("free")), MAX_FILES);
    }

    #[test]
    fn nothing_is_reused_across_runs_and_an_unopened_pool_unlinks() {
        let (dir, free, r) = pool_of_one();
        drop(r);
        let again = Recycler::open(free.clone()).unwrap();
        assert_eq!(count(&free), 0, "emptied at start-up");
        assert_eq!(again.len(), 0);

        let offline = Recycler::unopened(free.clone());
        let q = dir.path().join("q");
        write(&offline, &q, b"q");
        offline.discard(&q).unwrap();
        assert!(!q.exists());
        assert_eq!(offline.len(), 0);
        assert_eq!(count(&free), 0, "unlinked, not pooled");
    }

    #[test]
    fn a_file_gone_from_the_pool_is_not_an_error() {
        let (dir, free, r) = pool_of_one();
        for entry in fs::read_dir(&free).unwrap() {
            fs::remove_file(entry.unwrap().path()).unwrap();
        }
        write(&r, &dir.path().join("n"), b"n");
        assert_eq!(fs::read(dir.path().join("n")).unwrap(), b"n");
    }
}
