//! The store of cached policies, negative entries and failure records: a sled database, or
//! memory while the database cannot be used.
//!
//! RFC 8461 §5.1 asks senders to cache policies for `max_age`, across restarts. Three trees,
//! each keyed by the policy domain (lower case, A-labels), with serde_json values:
//! - `policies`: the policy in force and when it was fetched, expires and was last used;
//! - `negative`: the last failed first fetch, so a broken domain is not refetched per message;
//! - `failures`: policy failures seen while delivering (for TLS-RPT), the last
//!   [`MAX_FAILURES`] per domain.
//!
//! sled flushes on its own every 500 ms; writes a restart must see (a new policy, `forget`) are
//! flushed explicitly. A value that does not decode is logged and treated as absent.
//!
//! A database that cannot be opened or written (a full disk, above all) must not stop the
//! daemon or lose what this process learns: the store then keeps everything in memory
//! (`backend::Memory`), says so once, and tries the database again at most every
//! [`RETRY_INTERVAL`] (on a write, or when the refresher asks). Once it opens, what memory
//! holds is copied into it and the store is back on disk. A write or flush the database fails
//! moves the store to memory in the same way, with a copy of what the database held: after an
//! I/O error sled refuses every further write of that handle.

mod backend;

use crate::sts::policy::Policy;
use crate::{CacheError, FailureRecord};
use backend::{Backend, Change, Db, Memory, Tree};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

/// Failure records kept per domain; older ones are dropped.
pub const MAX_FAILURES: usize = 100;

/// The least time between two attempts to get from memory back onto the database.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// A cached policy as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// The TXT record `id` under which the policy was fetched.
    pub id: String,
    pub policy: Policy,
    pub fetched_at: SystemTime,
    /// `fetched_at + max_age` (RFC 8461 §3.2).
    pub expires_at: SystemTime,
    /// The last delivery that asked for it (saved coarsely, see `cache`).
    pub last_used: SystemTime,
    /// When the background refresher should refetch it; chosen at fetch time.
    #[serde(default)]
    pub refresh_at: Option<SystemTime>,
}

/// A failed fetch for a domain with a valid TXT record and no usable cached policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Negative {
    /// The TXT `id` the fetch was for: a new `id` deserves a new attempt.
    pub id: String,
    pub failed_at: SystemTime,
    /// Why the fetch failed, for `show` and the logs.
    pub error: String,
    /// Its RFC 8460 result type (absent in entries written before it was kept).
    #[serde(default)]
    pub result_type: Option<String>,
}

/// The three trees, on the database or in memory.
pub struct Store {
    /// Where the database is (or should be).
    dir: PathBuf,
    backend: RwLock<Backend>,
}

impl Store {
    /// Opens (creating) the database in `dir`; when it cannot be opened, a store in memory that
    /// tries the database again later.
    pub fn open(dir: &Path) -> Store {
        let backend = match Db::open(dir) {
            Ok(db) => Backend::Db(db),
            Err(e) => {
                tracing::warn!(
                    path = %dir.display(),
                    error = %e,
                    "policy cache: cannot open the database; \
                     MTA-STS policies are cached in memory until it can be opened"
                );
                Backend::Memory(Memory::empty(Instant::now() + RETRY_INTERVAL))
            }
        };
        Store {
            dir: dir.to_path_buf(),
            backend: RwLock::new(backend),
        }
    }

    /// True while the store works from memory (the database could not be opened or written).
    pub fn in_memory(&self) -> bool {
        matches!(*read(&self.backend), Backend::Memory(_))
    }

    /// Every stored policy that decodes.
    pub fn policies(&self) -> Vec<(String, StoredPolicy)> {
        self.decode_all(Tree::Policies, "policy")
    }

    /// Every stored negative entry that decodes.
    pub fn negatives(&self) -> Vec<(String, Negative)> {
        self.decode_all(Tree::Negative, "negative entry")
    }

    pub fn policy(&self, domain: &str) -> Option<StoredPolicy> {
        self.get(Tree::Policies, domain, "policy")
    }

    /// Saves a policy (on disk within sled's flush interval, or at the next flush).
    pub fn put_policy(&self, domain: &str, policy: &StoredPolicy) -> Result<(), CacheError> {
        self.put(Tree::Policies, domain, policy)
    }

    /// Removes a policy; true if there was one.
    pub fn remove_policy(&self, domain: &str) -> bool {
        self.update(Tree::Policies, domain, &mut |_| None).is_some()
    }

    pub fn negative(&self, domain: &str) -> Option<Negative> {
        self.get(Tree::Negative, domain, "negative entry")
    }

    /// Saves a negative entry (not flushed: losing one costs one extra fetch).
    pub fn put_negative(&self, domain: &str, negative: &Negative) -> Result<(), CacheError> {
        self.put(Tree::Negative, domain, negative)
    }

    /// Removes a negative entry; true if there was one.
    pub fn remove_negative(&self, domain: &str) -> bool {
        self.update(Tree::Negative, domain, &mut |_| None).is_some()
    }

    /// Appends a failure record to its domain's list, keeping the last [`MAX_FAILURES`].
    pub fn push_failure(&self, failure: &FailureRecord) -> Result<(), CacheError> {
        let mut encode_error = None;
        self.update(Tree::Failures, &failure.domain, &mut |old| {
            let mut list: Vec<FailureRecord> = old
                .and_then(|bytes| decode(&failure.domain, bytes, "failure list"))
                .unwrap_or_default();
            list.push(failure.clone());
            match encode_failures(list) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    encode_error = Some(e.to_string());
                    old.map(<[u8]>::to_vec)
                }
            }
        });
        encode_error.map_or(Ok(()), |e| Err(CacheError::Db(e)))
    }

    /// The failures recorded for `domain`, oldest first.
    pub fn failures(&self, domain: &str) -> Vec<FailureRecord> {
        self.get(Tree::Failures, domain, "failure list")
            .unwrap_or_default()
    }

    /// Drops the policy and negative entry of `domain` (failure records stay: they are a report,
    /// not cached knowledge) and flushes; true if there was something.
    pub fn forget(&self, domain: &str) -> bool {
        let had_policy = self.remove_policy(domain);
        let had_negative = self.remove_negative(domain);
        self.flush();
        had_policy || had_negative
    }

    /// Writes what the database holds to disk. A flush that fails sends the store to memory; in
    /// memory, a flush is a chance to get back onto the database.
    pub fn flush(&self) {
        let flushed = match &*read(&self.backend) {
            Backend::Db(db) => db.flush(),
            Backend::Memory(_) => Ok(()),
        };
        self.after_flush(flushed);
    }

    /// [`Store::flush`] for async callers: the disk write does not block a runtime thread.
    /// It runs on a blocking thread, not through sled's own `flush_async`: futures of that,
    /// polled near-simultaneously, may never be woken (sled issue #1241, still in 0.34.7), and
    /// a burst of new policies (many first deliveries, or the socketmap service asked for
    /// many new domains at once) then hangs every look-up that waits for its flush.
    pub async fn flush_async(&self) {
        let handle = match &*read(&self.backend) {
            Backend::Db(db) => Some(db.handle()),
            Backend::Memory(_) => None,
        };
        let flushed = match handle {
            Some(db) => match tokio::task::spawn_blocking(move || db.flush()).await {
                Ok(result) => result.map(drop),
                // The flush panicked (sled): as a failed flush.
                Err(e) => Err(sled::Error::ReportableBug(e.to_string())),
            },
            None => Ok(()),
        };
        self.after_flush(flushed);
    }

    /// Tries the database again if the store is in memory and the last attempt is
    /// [`RETRY_INTERVAL`] old (the refresher calls this every pass).
    pub fn reopen_if_due(&self) {
        if self.in_memory() {
            self.retry_if_due(&mut write(&self.backend));
        }
    }

    /// Tries the database now if the store is in memory; true when the store is on the
    /// database afterwards.
    pub fn reopen(&self) -> bool {
        self.reopen_now(&mut write(&self.backend))
    }

    fn put<T: Serialize>(&self, tree: Tree, domain: &str, value: &T) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(value).map_err(|e| CacheError::Db(e.to_string()))?;
        self.update(tree, domain, &mut |_| Some(bytes.clone()));
        Ok(())
    }

    /// Applies `change` (the old value to the new one, `None` removing) to `domain` in `tree`
    /// and returns the old value. A database that fails the write sends the store to memory,
    /// where the write is then applied: the entry is never lost for this process.
    fn update(&self, tree: Tree, domain: &str, change: &mut Change<'_>) -> Option<Vec<u8>> {
        if let Backend::Db(db) = &*read(&self.backend) {
            if let Ok(old) = db.update(tree, domain, change) {
                return old;
            }
        }
        // In memory, or the database failed: both need the backend to themselves.
        let mut backend = write(&self.backend);
        self.retry_if_due(&mut backend);
        let failed = match &*backend {
            Backend::Db(db) => match db.update(tree, domain, change) {
                Ok(old) => return old,
                Err(e) => Some(e),
            },
            Backend::Memory(_) => None,
        };
        let memory = match failed {
            Some(e) => self.fall_back(&mut backend, "cannot write to the database", &e),
            None => memory_of(&mut backend),
        };
        memory.update(tree, domain, change)
    }

    fn after_flush(&self, flushed: Result<(), sled::Error>) {
        match flushed {
            Err(e) => {
                self.fall_back(&mut write(&self.backend), "cannot flush the database", &e);
            }
            Ok(()) => self.reopen_if_due(),
        }
    }

    /// Moves a store on the database to memory, with a copy of what the database holds, and
    /// logs it (once: a store already in memory stays as it is).
    fn fall_back<'a>(
        &self,
        backend: &'a mut Backend,
        what: &str,
        error: &dyn Display,
    ) -> &'a mut Memory {
        if let Backend::Db(db) = &*backend {
            let memory = Memory::copy_of(db, Instant::now() + RETRY_INTERVAL);
            tracing::warn!(
                path = %self.dir.display(),
                error = %error,
                entries = memory.len(),
                "policy cache: {what}; \
                 MTA-STS policies are cached in memory until it can be opened again"
            );
            // Dropping the handle releases the database for a later reopen.
            *backend = Backend::Memory(memory);
        }
        memory_of(backend)
    }

    fn retry_if_due(&self, backend: &mut Backend) {
        if let Backend::Memory(memory) = backend {
            if memory.retry_due(Instant::now()) {
                self.reopen_now(backend);
            }
        }
    }

    /// Opens the database and copies what memory holds into it; true when the store is on the
    /// database afterwards.
    fn reopen_now(&self, backend: &mut Backend) -> bool {
        let Backend::Memory(memory) = backend else {
            return true;
        };
        memory.postpone(Instant::now() + RETRY_INTERVAL);
        let reopened = Db::open(&self.dir).and_then(|db| memory.copy_into(&db).map(|n| (db, n)));
        match reopened {
            Ok((db, entries)) => {
                tracing::info!(
                    path = %self.dir.display(),
                    entries,
                    "policy cache: the database is open again; \
                     the entries cached in memory were copied into it"
                );
                *backend = Backend::Db(db);
                true
            }
            Err(e) => {
                tracing::debug!(
                    path = %self.dir.display(),
                    error = %e,
                    "policy cache: the database is still unusable; MTA-STS policies stay in memory"
                );
                false
            }
        }
    }

    fn get<T: DeserializeOwned>(&self, tree: Tree, domain: &str, what: &str) -> Option<T> {
        match &*read(&self.backend) {
            Backend::Db(db) => match db.get(tree, domain) {
                Ok(Some(bytes)) => decode(domain, &bytes, what),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(domain, error = %e, "policy cache: cannot read {what}");
                    None
                }
            },
            Backend::Memory(memory) => memory
                .get(tree, domain)
                .and_then(|bytes| decode(domain, bytes, what)),
        }
    }

    fn decode_all<T: DeserializeOwned>(&self, tree: Tree, what: &str) -> Vec<(String, T)> {
        let mut out = Vec::new();
        let mut push = |domain: &str, bytes: &[u8]| {
            if let Some(value) = decode(domain, bytes, what) {
                out.push((domain.to_string(), value));
            }
        };
        match &*read(&self.backend) {
            Backend::Db(db) => db.for_each(tree, what, &mut push),
            Backend::Memory(memory) => memory.for_each(tree, &mut push),
        }
        out
    }
}

/// The memory of a backend known to be in memory.
fn memory_of(backend: &mut Backend) -> &mut Memory {
    match backend {
        Backend::Memory(memory) => memory,
        Backend::Db(_) => unreachable!("the store fell back to memory just before"),
    }
}

/// Encodes a failure list, keeping its last [`MAX_FAILURES`] records.
fn encode_failures(mut list: Vec<FailureRecord>) -> Result<Vec<u8>, serde_json::Error> {
    let excess = list.len().saturating_sub(MAX_FAILURES);
    list.drain(..excess);
    serde_json::to_vec(&list)
}

/// Decodes a stored value; a corrupt one is logged and treated as absent.
fn decode<T: DeserializeOwned>(domain: &str, bytes: &[u8], what: &str) -> Option<T> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(domain, error = %e, "policy cache: corrupt {what} ignored");
            None
        }
    }
}

/// A poisoned lock only means another thread panicked between two complete steps (every
/// change of the backend is one assignment): carry on with it.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;

    fn policy(id: &str) -> StoredPolicy {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        StoredPolicy {
            id: id.into(),
            policy: Policy {
                mode: Mode::Enforce,
                mx: vec![crate::MxPattern("mx.example".into())],
                max_age: 60,
            },
            fetched_at: t,
            expires_at: t + Duration::from_secs(60),
            last_used: t,
            refresh_at: None,
        }
    }

    fn negative(id: &str) -> Negative {
        Negative {
            id: id.into(),
            failed_at: SystemTime::UNIX_EPOCH,
            error: "boom".into(),
            result_type: None,
        }
    }

    fn failure(n: usize) -> FailureRecord {
        FailureRecord {
            domain: "example.test".into(),
            policy_id: "1".into(),
            mode: "testing".into(),
            mx_host: "mx.example.test".into(),
            result_type: "certificate-host-mismatch".into(),
            detail: format!("failure {n}"),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    fn details(store: &Store) -> Vec<String> {
        store
            .failures("example.test")
            .into_iter()
            .map(|f| f.detail)
            .collect()
    }

    /// Tries the database again until the store is on it: sled lets go of its file lock a
    /// moment after the last handle in this process is dropped (its background threads still
    /// hold the file), so an immediate reopen may find the lock taken.
    fn reopen_released(store: &Store) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.reopen() {
            assert!(Instant::now() < deadline, "the database did not reopen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes raw bytes into a tree of a store on the database.
    fn insert_raw(store: &Store, tree: Tree, key: &str, bytes: &[u8]) {
        match &*read(&store.backend) {
            Backend::Db(db) => db.insert_raw(tree, key, bytes),
            Backend::Memory(_) => panic!("the store is in memory"),
        }
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path());
            assert!(!store.in_memory());
            store.put_policy("a.test", &policy("1")).expect("put");
            store.put_negative("b.test", &negative("2")).expect("put");
            store.flush();
        }
        let store = Store::open(dir.path());
        reopen_released(&store);
        assert_eq!(store.policy("a.test"), Some(policy("1")));
        assert_eq!(store.policies().len(), 1);
        assert_eq!(store.negative("b.test").map(|n| n.id), Some("2".into()));
        assert!(store.forget("a.test"));
        assert!(!store.forget("a.test"));
        assert_eq!(store.policy("a.test"), None);
    }

    /// Many async flushes at once all complete (sled's own `flush_async` may leave such
    /// futures unwoken forever, sled issue #1241, and then blocks the runtime's threads): a
    /// burst of new policies never hangs the look-ups that wait for their flush. The runtime
    /// runs on a thread of its own, watched from here, so a hang fails the test.
    #[test]
    fn concurrent_async_flushes_all_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(Store::open(dir.path()));
        assert!(!store.in_memory());
        let (done, finished) = std::sync::mpsc::channel();
        let burst = store.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                for round in 0..5 {
                    let mut tasks = tokio::task::JoinSet::new();
                    for i in 0..64 {
                        let store = burst.clone();
                        tasks.spawn(async move {
                            let domain = format!("d{round}-{i}.test");
                            store.put_policy(&domain, &policy("1")).expect("put");
                            store.flush_async().await;
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                }
            });
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("320 async flushes, 64 at a time, complete within 60 s");
        assert_eq!(store.policies().len(), 5 * 64);
        assert!(!store.in_memory());
    }

    #[test]
    fn corrupt_entries_are_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path());
        insert_raw(&store, Tree::Policies, "bad.test", b"{not json");
        insert_raw(&store, Tree::Failures, "example.test", b"[1,2");
        store.put_policy("good.test", &policy("1")).expect("put");
        assert_eq!(store.policy("bad.test"), None);
        assert_eq!(store.policies().len(), 1);
        assert!(store.failures("example.test").is_empty());
        // A corrupt failure list is replaced, not a reason to lose new records.
        store.push_failure(&failure(0)).expect("push");
        assert_eq!(store.failures("example.test").len(), 1);
    }

    #[test]
    fn failures_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path());
        for n in 0..MAX_FAILURES + 5 {
            store.push_failure(&failure(n)).expect("push");
        }
        let list = details(&store);
        assert_eq!(list.len(), MAX_FAILURES);
        assert_eq!(list[0], "failure 5");
        assert_eq!(list.last(), Some(&format!("failure {}", MAX_FAILURES + 4)));
    }

    /// A path under a regular file can never be a database (as a full disk cannot create one):
    /// the store works from memory, then moves to the database once the path is usable.
    #[test]
    fn unusable_path_gives_a_memory_store_that_moves_to_the_database() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let blocker = tmp.path().join("not-a-dir");
        std::fs::write(&blocker, b"a file").expect("write");
        let dir = blocker.join("policy-cache");

        let store = Store::open(&dir);
        assert!(store.in_memory());
        store.put_policy("a.test", &policy("1")).expect("put");
        store.put_policy("gone.test", &policy("9")).expect("put");
        store.put_negative("b.test", &negative("2")).expect("put");
        for n in 0..MAX_FAILURES + 2 {
            store.push_failure(&failure(n)).expect("push");
        }
        assert!(store.remove_policy("gone.test"));
        assert!(!store.remove_policy("gone.test"));
        store.flush();
        assert_eq!(store.policy("a.test"), Some(policy("1")));
        assert_eq!(store.policy("gone.test"), None);
        assert_eq!(store.policies().len(), 1);
        assert_eq!(store.negatives().len(), 1);
        assert_eq!(details(&store).len(), MAX_FAILURES);
        assert_eq!(details(&store)[0], "failure 2");

        assert!(!store.reopen(), "the path is still under a file");
        assert!(store.in_memory());

        std::fs::remove_file(&blocker).expect("remove");
        assert!(store.reopen());
        assert!(!store.in_memory());
        assert_eq!(store.policy("a.test"), Some(policy("1")));
        store
            .put_policy("c.test", &policy("3"))
            .expect("put on the database");
        store.flush();
        drop(store);

        let store = Store::open(&dir);
        reopen_released(&store);
        assert_eq!(store.policy("a.test"), Some(policy("1")));
        assert_eq!(store.policy("c.test"), Some(policy("3")));
        assert_eq!(store.policy("gone.test"), None);
        assert_eq!(store.negative("b.test"), Some(negative("2")));
        assert_eq!(details(&store).len(), MAX_FAILURES);
    }

    /// A database held by another handle cannot be opened (sled's lock); what the memory store
    /// did meanwhile is merged into what the database already held: new values win, removals
    /// apply, failure lists are appended.
    #[test]
    fn memory_changes_merge_into_an_existing_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Store::open(dir.path());
        first.put_policy("old.test", &policy("1")).expect("put");
        first.put_policy("kept.test", &policy("2")).expect("put");
        first.push_failure(&failure(0)).expect("push");
        first.flush();

        let second = Store::open(dir.path());
        assert!(
            second.in_memory(),
            "the database is locked by the first store"
        );
        assert!(!second.remove_policy("old.test"), "not known in memory");
        second.put_policy("kept.test", &policy("3")).expect("put");
        second.push_failure(&failure(1)).expect("push");
        drop(first);

        reopen_released(&second);
        assert_eq!(second.policy("old.test"), None);
        assert_eq!(second.policy("kept.test"), Some(policy("3")));
        assert_eq!(details(&second), ["failure 0", "failure 1"]);
    }

    /// A database that fails a write sends the store to memory with everything it held; the
    /// store returns to the database when it can.
    #[test]
    fn a_failing_database_falls_back_to_memory_with_its_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path());
        store.put_policy("a.test", &policy("1")).expect("put");
        store.push_failure(&failure(0)).expect("push");
        store.fall_back(
            &mut write(&store.backend),
            "cannot write to the database",
            &"simulated: No space left on device",
        );
        assert!(store.in_memory());
        assert_eq!(store.policy("a.test"), Some(policy("1")));
        store.put_policy("b.test", &policy("2")).expect("put");
        assert!(store.remove_policy("a.test"));
        store.push_failure(&failure(1)).expect("push");
        assert_eq!(details(&store), ["failure 0", "failure 1"]);

        reopen_released(&store);
        assert_eq!(store.policy("a.test"), None);
        assert_eq!(store.policy("b.test"), Some(policy("2")));
        assert_eq!(details(&store), ["failure 0", "failure 1"]);
    }

    #[test]
    fn reopen_waits_for_the_retry_interval() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let blocker = tmp.path().join("not-a-dir");
        std::fs::write(&blocker, b"a file").expect("write");
        let store = Store::open(&blocker.join("db"));
        std::fs::remove_file(&blocker).expect("remove");
        // Writes and the refresher try again only once the interval has passed.
        store.put_policy("a.test", &policy("1")).expect("put");
        store.reopen_if_due();
        assert!(store.in_memory());
        if let Backend::Memory(memory) = &mut *write(&store.backend) {
            memory.postpone(Instant::now());
        }
        store.put_policy("b.test", &policy("2")).expect("put");
        assert!(!store.in_memory());
        assert_eq!(store.policies().len(), 2);
    }
}
