//! Reports waiting to be handed on: built once when their period is over, kept (in the
//! counts database) until every address of the domain's record has taken them or the time
//! to try is over, so that a restart neither loses a report nor sends one twice.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One report and where it still has to go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub report_id: String,
    pub policy_domain: String,
    /// The period, Unix seconds.
    pub start: u64,
    pub end: u64,
    /// The gzip'd JSON report.
    pub gzip: Vec<u8>,
    /// RFC 8460 §5.3 file name.
    pub file_name: String,
    /// The `rua` URIs not yet done, as published.
    pub uris: Vec<String>,
    pub attempts: u32,
    /// Unix seconds of the next try.
    pub next_at: u64,
    /// Unix seconds after which the report is given up.
    pub give_up_at: u64,
}

/// The reports not yet handed on: in the sled tree when there is one, else in memory.
pub struct Outbox {
    tree: Option<sled::Tree>,
    memory: Mutex<BTreeMap<String, Pending>>,
}

impl Outbox {
    pub fn new(tree: Option<sled::Tree>) -> Outbox {
        Outbox {
            tree,
            memory: Mutex::new(BTreeMap::new()),
        }
    }

    /// Stores (or replaces) `pending`, durably when there is a database.
    pub fn put(&self, pending: &Pending) {
        if let Some(tree) = &self.tree {
            match serde_json::to_vec(pending) {
                Ok(bytes) => {
                    let stored = tree
                        .insert(pending.report_id.as_bytes(), bytes)
                        .and_then(|_| tree.flush());
                    match stored {
                        Ok(_) => return,
                        Err(e) => tracing::warn!(
                            "TLS-RPT outbox: cannot store report {}: {e}; keeping it in memory",
                            pending.report_id
                        ),
                    }
                }
                Err(e) => tracing::warn!("TLS-RPT outbox: {e}"),
            }
        }
        lock(&self.memory).insert(pending.report_id.clone(), pending.clone());
    }

    pub fn remove(&self, report_id: &str) {
        lock(&self.memory).remove(report_id);
        if let Some(tree) = &self.tree {
            let _ = tree.remove(report_id.as_bytes()).and_then(|_| tree.flush());
        }
    }

    /// Every pending report; undecodable entries (a damaged file) are dropped with a warning.
    pub fn all(&self) -> Vec<Pending> {
        let mut out: Vec<Pending> = lock(&self.memory).values().cloned().collect();
        if let Some(tree) = &self.tree {
            for (key, value) in tree.iter().filter_map(Result::ok) {
                match serde_json::from_slice::<Pending>(&value) {
                    Ok(p) => out.push(p),
                    Err(e) => {
                        tracing::warn!(
                            "TLS-RPT outbox: dropping an unreadable entry {:?}: {e}",
                            String::from_utf8_lossy(&key)
                        );
                        let _ = tree.remove(key);
                    }
                }
            }
        }
        out.sort_by_key(|p| (p.next_at, p.report_id.clone()));
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, next_at: u64) -> Pending {
        Pending {
            report_id: id.into(),
            policy_domain: "example.net".into(),
            start: 0,
            end: 86_400,
            gzip: vec![1, 2, 3],
            file_name: "f.json.gz".into(),
            uris: vec!["mailto:tlsrpt@example.net".into()],
            attempts: 0,
            next_at,
            give_up_at: 999_999,
        }
    }

    #[test]
    fn pending_reports_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::open(dir.path()).expect("sled");
            let outbox = Outbox::new(db.open_tree("outbox").ok());
            outbox.put(&pending("b@x", 20));
            outbox.put(&pending("a@x", 10));
        }
        // sled lets go of its file lock a moment after the last handle is dropped.
        let db = (0..50)
            .find_map(|_| {
                sled::open(dir.path()).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    None
                })
            })
            .expect("sled reopened");
        let outbox = Outbox::new(db.open_tree("outbox").ok());
        let all = outbox.all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].report_id, "a@x");
        outbox.remove("a@x");
        assert_eq!(outbox.all().len(), 1);
    }

    #[test]
    fn memory_only_outbox_works_alike() {
        let outbox = Outbox::new(None);
        outbox.put(&pending("a@x", 1));
        let mut p = pending("a@x", 5);
        p.attempts = 2;
        outbox.put(&p);
        let all = outbox.all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].attempts, 2);
    }
}
