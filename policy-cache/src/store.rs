//! The sled-backed store of cached policies, negative entries and failure records.
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

use crate::sts::policy::Policy;
use crate::{CacheError, FailureRecord};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::SystemTime;

/// Failure records kept per domain; older ones are dropped.
pub const MAX_FAILURES: usize = 100;

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
}

/// The three trees of the cache database.
pub struct Store {
    db: sled::Db,
    policies: sled::Tree,
    negative: sled::Tree,
    failures: sled::Tree,
}

impl Store {
    /// Opens (creating) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, CacheError> {
        let open_error = |e: sled::Error| CacheError::Open {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        let db = sled::open(dir).map_err(open_error)?;
        Ok(Store {
            policies: db.open_tree("policies").map_err(open_error)?,
            negative: db.open_tree("negative").map_err(open_error)?,
            failures: db.open_tree("failures").map_err(open_error)?,
            db,
        })
    }

    /// Every stored policy that decodes.
    pub fn policies(&self) -> Vec<(String, StoredPolicy)> {
        decode_all(&self.policies, "policy")
    }

    /// Every stored negative entry that decodes.
    pub fn negatives(&self) -> Vec<(String, Negative)> {
        decode_all(&self.negative, "negative entry")
    }

    pub fn policy(&self, domain: &str) -> Option<StoredPolicy> {
        get(&self.policies, domain, "policy")
    }

    /// Saves a policy (on disk within sled's flush interval, or at the next flush).
    pub fn put_policy(&self, domain: &str, policy: &StoredPolicy) -> Result<(), CacheError> {
        put(&self.policies, domain, policy)
    }

    pub fn remove_policy(&self, domain: &str) -> Result<bool, CacheError> {
        remove(&self.policies, domain)
    }

    pub fn negative(&self, domain: &str) -> Option<Negative> {
        get(&self.negative, domain, "negative entry")
    }

    /// Saves a negative entry (not flushed: losing one costs one extra fetch).
    pub fn put_negative(&self, domain: &str, negative: &Negative) -> Result<(), CacheError> {
        put(&self.negative, domain, negative)
    }

    pub fn remove_negative(&self, domain: &str) -> Result<bool, CacheError> {
        remove(&self.negative, domain)
    }

    /// Appends a failure record to its domain's list, keeping the last [`MAX_FAILURES`].
    pub fn push_failure(&self, failure: &FailureRecord) -> Result<(), CacheError> {
        let mut encode_error = None;
        let result = self
            .failures
            .fetch_and_update(failure.domain.as_bytes(), |old| {
                let mut list: Vec<FailureRecord> = old
                    .and_then(|bytes| decode(&failure.domain, bytes, "failure list"))
                    .unwrap_or_default();
                list.push(failure.clone());
                let excess = list.len().saturating_sub(MAX_FAILURES);
                list.drain(..excess);
                match serde_json::to_vec(&list) {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        encode_error = Some(e.to_string());
                        old.map(|b| b.to_vec())
                    }
                }
            })
            .map_err(db_error);
        result?;
        encode_error.map_or(Ok(()), |e| Err(CacheError::Db(e)))
    }

    /// The failures recorded for `domain`, oldest first.
    pub fn failures(&self, domain: &str) -> Vec<FailureRecord> {
        get(&self.failures, domain, "failure list").unwrap_or_default()
    }

    /// Drops the policy and negative entry of `domain` (failure records stay: they are a report,
    /// not cached knowledge) and flushes; true if there was something.
    pub fn forget(&self, domain: &str) -> Result<bool, CacheError> {
        let had_policy = self.remove_policy(domain)?;
        let had_negative = self.remove_negative(domain)?;
        self.flush()?;
        Ok(had_policy || had_negative)
    }

    pub fn flush(&self) -> Result<(), CacheError> {
        self.db.flush().map(|_| ()).map_err(db_error)
    }

    /// [`Store::flush`] for async callers: the disk write does not block a runtime thread.
    pub async fn flush_async(&self) -> Result<(), CacheError> {
        self.db.flush_async().await.map(|_| ()).map_err(db_error)
    }
}

fn db_error(e: sled::Error) -> CacheError {
    CacheError::Db(e.to_string())
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, domain: &str, what: &str) -> Option<T> {
    match tree.get(domain.as_bytes()) {
        Ok(Some(bytes)) => decode(domain, &bytes, what),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(domain, error = %e, "policy cache: cannot read {what}");
            None
        }
    }
}

fn put<T: Serialize>(tree: &sled::Tree, domain: &str, value: &T) -> Result<(), CacheError> {
    let bytes = serde_json::to_vec(value).map_err(|e| CacheError::Db(e.to_string()))?;
    tree.insert(domain.as_bytes(), bytes).map_err(db_error)?;
    Ok(())
}

fn remove(tree: &sled::Tree, domain: &str) -> Result<bool, CacheError> {
    tree.remove(domain.as_bytes())
        .map(|old| old.is_some())
        .map_err(db_error)
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

fn decode_all<T: DeserializeOwned>(tree: &sled::Tree, what: &str) -> Vec<(String, T)> {
    let mut out = Vec::new();
    for item in tree.iter() {
        match item {
            Ok((key, bytes)) => {
                let domain = String::from_utf8_lossy(&key).into_owned();
                if let Some(value) = decode(&domain, &bytes, what) {
                    out.push((domain, value));
                }
            }
            Err(e) => tracing::warn!(error = %e, "policy cache: cannot read {what}s"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;
    use std::time::Duration;

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

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store.put_policy("a.test", &policy("1")).expect("put");
            let neg = Negative {
                id: "2".into(),
                failed_at: SystemTime::UNIX_EPOCH,
                error: "boom".into(),
            };
            store.put_negative("b.test", &neg).expect("put");
            store.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.policy("a.test"), Some(policy("1")));
        assert_eq!(store.policies().len(), 1);
        assert_eq!(store.negative("b.test").map(|n| n.id), Some("2".into()));
        assert!(store.forget("a.test").expect("forget"));
        assert!(!store.forget("a.test").expect("forget"));
        assert_eq!(store.policy("a.test"), None);
    }

    #[test]
    fn corrupt_entries_are_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store
            .policies
            .insert("bad.test", &b"{not json"[..])
            .expect("insert");
        store
            .failures
            .insert("example.test", &b"[1,2"[..])
            .expect("insert");
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
        let store = Store::open(dir.path()).expect("open");
        for n in 0..MAX_FAILURES + 5 {
            store.push_failure(&failure(n)).expect("push");
        }
        let list = store.failures("example.test");
        assert_eq!(list.len(), MAX_FAILURES);
        assert_eq!(list[0].detail, "failure 5");
        assert_eq!(
            list.last().map(|f| f.detail.clone()),
            Some(format!("failure {}", MAX_FAILURES + 4))
        );
    }
}
