//! Counting sessions for TLS-RPT (RFC 8460 §4.1, §4.3): per aggregation period and policy,
//! the successful and failed sessions, and each failure's details.
//!
//! Delivery calls [`Counter::record`] once per session that reached the TLS decision; that
//! only adds to a map in memory, so counting costs delivery nothing it could measure. A
//! flusher merges what was counted into a sled database every few seconds and at shutdown
//! ([`Counter::flush`]): after a crash at most those seconds of counts are missing, and counts
//! survive restarts. When the database cannot be opened or written (a full disk), counting
//! goes on in memory and a warning says so.
//!
//! A fleet (`[cache] backend = "redis"`, see [`super::fleet`]) adds one step: what was
//! counted is frozen into a [`Batch`] with an id of its own ([`Counter::outgoing`]), kept in
//! the same database until the shared store has taken it ([`Counter::pushed`]). A batch is
//! never changed once frozen, so pushing it again after a lost reply is recognised by its id
//! and counts nothing twice; counts made meanwhile wait for the next batch.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod batch;

/// Failure details kept per period and policy; past this, failures are still counted in the
/// summary but their details dropped (a hostile or broken destination could otherwise make
/// one report as large as it likes).
pub const MAX_DETAILS: usize = 100;

/// Which kind of policy governed a session (RFC 8460 §4.4 `policy-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    Tlsa,
    Sts,
    NoPolicyFound,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Tlsa => "tlsa",
            PolicyKind::Sts => "sts",
            PolicyKind::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The policy a session was counted under: one report entry per distinct value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Policy {
    pub kind: PolicyKind,
    /// The policy domain (RFC 8460 §1.1), a lowercase A-label.
    pub domain: String,
    /// `policy-string`: the STS policy's lines, or each TLSA record in presentation form.
    pub strings: Vec<String>,
    /// `mx-host`: the STS `mx` patterns, or the DANE-protected MX host names.
    pub mx_hosts: Vec<String>,
}

impl Policy {
    /// A policy for `domain` (any case, U-label or A-label, trailing dot or not).
    pub fn new(
        kind: PolicyKind,
        domain: &str,
        strings: Vec<String>,
        mx_hosts: Vec<String>,
    ) -> Self {
        Policy {
            kind,
            domain: normalize_domain(domain),
            strings,
            mx_hosts: mx_hosts.iter().map(|h| normalize_domain(h)).collect(),
        }
    }

    /// `no-policy-found` for `domain`: empty `policy-string` and `mx-host` (RFC 8460 §4.4).
    pub fn none(domain: &str) -> Self {
        Policy::new(PolicyKind::NoPolicyFound, domain, Vec::new(), Vec::new())
    }
}

/// A domain as the reports name it: lowercase A-labels, no trailing dot, so that `Example.COM`
/// and `example.com.` never split one domain into two reports.
pub fn normalize_domain(domain: &str) -> String {
    let trimmed = domain.trim().trim_end_matches('.');
    match idna::domain_to_ascii(trimmed) {
        Ok(ascii) if !ascii.is_empty() => ascii,
        _ => trimmed.to_ascii_lowercase(),
    }
}

/// One failure-details entry's key (RFC 8460 §4.4): sessions that fail alike are summed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FailureDetail {
    /// RFC 8460 §4.3 result type (`certificate-expired`, …).
    pub result_type: String,
    pub sending_ip: Option<IpAddr>,
    pub mx_host: Option<String>,
    /// What the MX host called itself in its EHLO reply.
    pub helo: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    pub additional: Option<String>,
    /// Our precise reason, where the result type is broad (`mx-not-authorized`, …).
    pub reason_code: Option<String>,
}

impl FailureDetail {
    /// A failure of `result_type` with nothing else known yet.
    pub fn new(result_type: &str) -> Self {
        FailureDetail {
            result_type: result_type.to_string(),
            sending_ip: None,
            mx_host: None,
            helo: None,
            receiving_ip: None,
            additional: None,
            reason_code: None,
        }
    }
}

/// What became of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionResult {
    Success,
    Failure(FailureDetail),
}

/// The counts of one policy in one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub successes: u64,
    pub failures: u64,
    /// Sorted by detail; at most [`MAX_DETAILS`].
    pub details: Vec<(FailureDetail, u64)>,
    /// Failures whose details did not fit.
    pub details_dropped: u64,
}

impl Tally {
    fn add(&mut self, outcome: &SessionResult, n: u64) {
        match outcome {
            SessionResult::Success => self.successes += n,
            SessionResult::Failure(detail) => {
                self.failures += n;
                self.add_detail(detail, n);
            }
        }
    }

    fn add_detail(&mut self, detail: &FailureDetail, n: u64) {
        match self.details.binary_search_by(|(d, _)| d.cmp(detail)) {
            Ok(i) => self.details[i].1 += n,
            Err(_) if self.details.len() >= MAX_DETAILS => self.details_dropped += n,
            Err(i) => self.details.insert(i, (detail.clone(), n)),
        }
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Tally) {
        self.successes += other.successes;
        self.failures += other.failures;
        self.details_dropped += other.details_dropped;
        for (detail, n) in &other.details {
            self.add_detail(detail, *n);
        }
    }
}

/// An aggregation period: `[start, end)` in Unix seconds, aligned on multiples of its length
/// (with a length that divides a day, on UTC days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Period {
    pub start: u64,
    pub end: u64,
}

impl Period {
    /// The period of length `interval` that contains `at`.
    pub fn containing(at: SystemTime, interval: Duration) -> Period {
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let len = interval.as_secs().max(1);
        let start = secs - secs % len;
        Period {
            start,
            end: start + len,
        }
    }

    pub fn start_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.start)
    }

    pub fn end_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.end)
    }
}

/// One counted entry: a period, a policy, and its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub period: Period,
    pub policy: Policy,
    pub tally: Tally,
}

/// Counts on their way to a fleet's shared store: frozen, so that a push repeated after a
/// lost reply carries exactly what the first one did, under the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Random, unique per batch: the shared store remembers the ids it has applied.
    pub id: String,
    pub entries: Vec<Entry>,
}

type Key = (Period, Policy);

/// The session counter: counts in memory, merged into sled by [`Counter::flush`].
pub struct Counter {
    interval: Duration,
    /// Counted since the last flush.
    pending: Mutex<HashMap<Key, Tally>>,
    /// `None` when the database could not be opened: the counts then live in `memory`.
    db: Option<sled::Tree>,
    handle: Option<sled::Db>,
    memory: Mutex<HashMap<Key, Tally>>,
    /// A write failure is logged once, not at every flush.
    warned: Mutex<bool>,
    /// The batch frozen for the fleet's store and not yet taken by it (a fleet only); kept
    /// in the `tlsrpt-push` tree too, so that it survives a restart unchanged.
    outgoing: Mutex<Option<Batch>>,
    push_tree: Option<sled::Tree>,
    /// Flushing and freezing one at a time: a count is in the tree or in the batch, never
    /// in both, never in neither.
    store: Mutex<()>,
}

impl Counter {
    /// Opens (or creates) the counts database in `dir`. A database that cannot be opened is
    /// logged and replaced by memory: counting never stops delivery.
    pub fn open(dir: &Path, interval: Duration) -> Counter {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(4 << 20)
            .flush_every_ms(None)
            .open()
            .and_then(|db| Ok((db.open_tree("tlsrpt-counts")?, db)));
        let (db, handle) = match opened {
            Ok((tree, handle)) => (Some(tree), Some(handle)),
            Err(e) => {
                tracing::warn!(
                    "TLS-RPT counts database {}: {e}; counting in memory only (lost at restart)",
                    dir.display()
                );
                (None, None)
            }
        };
        let push_tree = handle
            .as_ref()
            .and_then(|h| h.open_tree("tlsrpt-push").ok());
        let outgoing = push_tree.as_ref().and_then(batch::stored_batch);
        Counter {
            outgoing: Mutex::new(outgoing),
            push_tree,
            ..Counter::with_store(interval, db, handle)
        }
    }

    fn with_store(interval: Duration, db: Option<sled::Tree>, handle: Option<sled::Db>) -> Self {
        Counter {
            interval,
            pending: Mutex::new(HashMap::new()),
            db,
            handle,
            memory: Mutex::new(HashMap::new()),
            warned: Mutex::new(false),
            outgoing: Mutex::new(None),
            push_tree: None,
            store: Mutex::new(()),
        }
    }

    /// A counter that keeps everything in memory (tests, `check`).
    pub fn in_memory(interval: Duration) -> Counter {
        Counter::with_store(interval, None, None)
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether the counts go to the database (else memory only).
    pub fn is_persistent(&self) -> bool {
        self.db.is_some()
    }

    /// The reports waiting to be handed on, in the same database.
    pub fn outbox(&self) -> super::outbox::Outbox {
        super::outbox::Outbox::new(self.tree("tlsrpt-outbox"))
    }

    /// Another tree of the counts database (`None` without one).
    pub fn tree(&self, name: &str) -> Option<sled::Tree> {
        self.handle.as_ref().and_then(|db| db.open_tree(name).ok())
    }

    /// Counts one session under each of `policies` (a DANE session counts for the TLSA base
    /// domain and, when it publishes its own record, the recipient domain), at `at`.
    pub fn record_at(&self, policies: &[Policy], outcome: &SessionResult, at: SystemTime) {
        let period = Period::containing(at, self.interval);
        let mut pending = lock(&self.pending);
        for policy in policies {
            pending
                .entry((period, policy.clone()))
                .or_default()
                .add(outcome, 1);
        }
    }

    /// Counts one session now.
    pub fn record(&self, policies: &[Policy], outcome: &SessionResult) {
        self.record_at(policies, outcome, SystemTime::now());
    }

    /// Merges what was counted since the last flush into the database and makes it durable.
    /// On a write failure the counts stay in memory and are tried again next time.
    pub fn flush(&self) {
        let _store = lock(&self.store);
        self.flush_locked();
    }

    fn flush_locked(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if pending.is_empty() {
            return;
        }
        let Some(tree) = &self.db else {
            merge_into(&mut lock(&self.memory), pending);
            return;
        };
        let mut failed = HashMap::new();
        for (key, tally) in pending {
            if let Err(e) = merge_stored(tree, &key, &tally) {
                self.warn_once(&e);
                failed.insert(key, tally);
            }
        }
        if let Err(e) = tree.flush() {
            self.warn_once(&e.to_string());
        }
        if !failed.is_empty() {
            merge_into(&mut lock(&self.pending), failed);
        }
    }

    fn warn_once(&self, e: &str) {
        let mut warned = lock(&self.warned);
        if !*warned {
            *warned = true;
            tracing::warn!(
                "TLS-RPT counts: cannot write the database ({e}); keeping counts in memory"
            );
        }
    }

    /// Every entry counted so far (flushed or not), for the periods `select` accepts, merged.
    pub fn entries(&self, select: impl Fn(&Period, &Policy) -> bool) -> Vec<Entry> {
        let mut all: HashMap<Key, Tally> = HashMap::new();
        if let Some(tree) = &self.db {
            for (key, tally) in stored(tree) {
                if select(&key.0, &key.1) {
                    all.entry(key).or_default().merge(&tally);
                }
            }
        }
        for map in [&self.memory, &self.pending] {
            for (key, tally) in lock(map).iter() {
                if select(&key.0, &key.1) {
                    all.entry(key.clone()).or_default().merge(tally);
                }
            }
        }
        if let Some(batch) = lock(&self.outgoing).as_ref() {
            for e in &batch.entries {
                if select(&e.period, &e.policy) {
                    all.entry((e.period, e.policy.clone()))
                        .or_default()
                        .merge(&e.tally);
                }
            }
        }
        let mut entries: Vec<Entry> = all
            .into_iter()
            .map(|((period, policy), tally)| Entry {
                period,
                policy,
                tally,
            })
            .collect();
        entries.sort_by(|a, b| (a.period, &a.policy).cmp(&(b.period, &b.policy)));
        entries
    }

    /// Forgets the counts of `domain` in `period` (its report has been handed on).
    pub fn remove(&self, period: Period, domain: &str) {
        let matches = |key: &Key| key.0 == period && key.1.domain == domain;
        lock(&self.pending).retain(|k, _| !matches(k));
        lock(&self.memory).retain(|k, _| !matches(k));
        if let Some(tree) = &self.db {
            for (key, _) in stored(tree) {
                if matches(&key) {
                    if let Ok(bytes) = encode_key(&key) {
                        let _ = tree.remove(bytes);
                    }
                }
            }
            let _ = tree.flush();
        }
    }

    /// Moves every count of the open period at `now` into a period that ends at `now`, so
    /// that it can be reported at once (`tlsrpt send --now`). Returns that period.
    pub fn close_early(&self, now: SystemTime) -> Period {
        self.flush();
        let open = Period::containing(now, self.interval);
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let cut = Period {
            start: open.start,
            end: secs.max(open.start + 1),
        };
        let moved = self.entries(|p, _| *p == open);
        for entry in moved {
            self.remove(open, &entry.policy.domain);
            let key = (cut, entry.policy);
            lock(&self.pending)
                .entry(key)
                .or_default()
                .merge(&entry.tally);
        }
        self.flush();
        cut
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn merge_into(into: &mut HashMap<Key, Tally>, from: HashMap<Key, Tally>) {
    for (key, tally) in from {
        into.entry(key).or_default().merge(&tally);
    }
}

fn encode_key(key: &Key) -> Result<Vec<u8>, serde_json::Error> {
    // The period first and big-endian, so that the tree is ordered by period.
    let mut bytes = key.0.start.to_be_bytes().to_vec();
    bytes.extend_from_slice(&key.0.end.to_be_bytes());
    bytes.extend(serde_json::to_vec(&key.1)?);
    Ok(bytes)
}

fn decode_key(bytes: &[u8]) -> Option<Key> {
    let start = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    let policy = serde_json::from_slice(bytes.get(16..)?).ok()?;
    Some((Period { start, end }, policy))
}

/// Adds `tally` to what the tree holds under `key`, atomically.
fn merge_stored(tree: &sled::Tree, key: &Key, tally: &Tally) -> Result<(), String> {
    let k = encode_key(key).map_err(|e| e.to_string())?;
    tree.update_and_fetch(&k, |old| {
        let mut sum: Tally = old
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .unwrap_or_default();
        sum.merge(tally);
        serde_json::to_vec(&sum).ok()
    })
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Every entry in the tree with its key as stored; undecodable ones are skipped.
fn stored_raw(tree: &sled::Tree) -> Vec<(sled::IVec, (Key, Tally))> {
    tree.iter()
        .filter_map(Result::ok)
        .filter_map(|(k, v)| {
            let entry = (decode_key(&k)?, serde_json::from_slice(&v).ok()?);
            Some((k, entry))
        })
        .collect()
}

/// Every entry in the tree; undecodable ones (a damaged file) are skipped.
fn stored(tree: &sled::Tree) -> Vec<(Key, Tally)> {
    tree.iter()
        .filter_map(Result::ok)
        .filter_map(|(k, v)| Some((decode_key(&k)?, serde_json::from_slice(&v).ok()?)))
        .collect()
}

/// Now, in Unix seconds (periods and report times are kept so).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn failure(result: &str, ip: &str) -> SessionResult {
        SessionResult::Failure(FailureDetail {
            receiving_ip: ip.parse().ok(),
            mx_host: Some("mx.example.net".into()),
            ..FailureDetail::new(result)
        })
    }

    #[test]
    fn periods_are_whole_utc_days_or_divisions_of_one() {
        // 2026-12-07T13:20:00Z
        let t = at(1796601600 + 13 * 3600 + 1200);
        let day = Period::containing(t, DAY);
        assert_eq!(day.start % 86_400, 0);
        assert_eq!(day.end - day.start, 86_400);
        let hour = Period::containing(t, Duration::from_secs(3600));
        assert_eq!(hour.start, 1796601600 + 13 * 3600);
        assert_eq!(hour.end, hour.start + 3600);
    }

    #[test]
    fn domains_are_lowercase_a_labels() {
        assert_eq!(normalize_domain("Example.NET."), "example.net");
        assert_eq!(normalize_domain("bücher.example"), "xn--bcher-kva.example");
        let a = Policy::none("EXAMPLE.net");
        let b = Policy::none("example.net.");
        assert_eq!(a, b);
    }

    #[test]
    fn sessions_sum_per_policy_and_failures_per_detail() {
        let c = Counter::in_memory(DAY);
        let p = Policy::none("example.net");
        let t = at(1796601600 + 60);
        c.record_at(std::slice::from_ref(&p), &SessionResult::Success, t);
        c.record_at(std::slice::from_ref(&p), &SessionResult::Success, t);
        c.record_at(
            std::slice::from_ref(&p),
            &failure("starttls-not-supported", "192.0.2.1"),
            t,
        );
        c.record_at(
            std::slice::from_ref(&p),
            &failure("starttls-not-supported", "192.0.2.1"),
            t,
        );
        c.record_at(
            std::slice::from_ref(&p),
            &failure("starttls-not-supported", "192.0.2.2"),
            t,
        );
        let entries = c.entries(|_, _| true);
        assert_eq!(entries.len(), 1);
        let tally = &entries[0].tally;
        assert_eq!((tally.successes, tally.failures), (2, 3));
        assert_eq!(tally.details.len(), 2);
        assert_eq!(tally.details[0].1, 2);
        assert_eq!(tally.details[1].1, 1);
    }

    #[test]
    fn details_are_capped_but_failures_still_counted() {
        let c = Counter::in_memory(DAY);
        let p = Policy::none("example.net");
        for i in 0..(MAX_DETAILS + 20) {
            let ip = format!("192.0.2.{}", i % 250);
            let mut f = FailureDetail::new("validation-failure");
            f.receiving_ip = ip.parse().ok();
            f.additional = Some(format!("case {i}"));
            c.record(std::slice::from_ref(&p), &SessionResult::Failure(f));
        }
        let entries = c.entries(|_, _| true);
        let tally = &entries[0].tally;
        assert_eq!(tally.failures, (MAX_DETAILS + 20) as u64);
        assert_eq!(tally.details.len(), MAX_DETAILS);
        assert_eq!(tally.details_dropped, 20);
    }

    #[test]
    fn counts_survive_reopening_the_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Policy::new(
            PolicyKind::Sts,
            "example.net",
            vec!["version: STSv1".into()],
            vec!["mx.example.net".into()],
        );
        {
            let c = Counter::open(dir.path(), DAY);
            c.record(std::slice::from_ref(&p), &SessionResult::Success);
            c.flush();
            c.record(
                std::slice::from_ref(&p),
                &failure("certificate-expired", "192.0.2.7"),
            );
            c.flush();
        }
        // sled lets go of its file lock a moment after the last handle is dropped.
        let mut c = Counter::open(dir.path(), DAY);
        for _ in 0..50 {
            if c.is_persistent() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            c = Counter::open(dir.path(), DAY);
        }
        assert!(c.is_persistent());
        c.record(std::slice::from_ref(&p), &SessionResult::Success);
        let entries = c.entries(|_, _| true);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].tally.successes, 2);
        assert_eq!(entries[0].tally.failures, 1);
        c.remove(entries[0].period, "example.net");
        assert!(c.entries(|_, _| true).is_empty());
    }

    #[test]
    fn closing_early_moves_the_open_period() {
        let c = Counter::in_memory(DAY);
        let p = Policy::none("example.net");
        let now = SystemTime::now();
        c.record_at(std::slice::from_ref(&p), &SessionResult::Success, now);
        let cut = c.close_early(now);
        assert!(cut.end <= Period::containing(now, DAY).end);
        let entries = c.entries(|_, _| true);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].period, cut);
        // New sessions go on into the open period, apart from the closed one.
        c.record_at(&[p], &SessionResult::Success, now);
        assert_eq!(c.entries(|_, _| true).len(), 2);
    }
}
