//! The counts on their way to a fleet's shared store (see [`crate::report::fleet`]): frozen
//! into a [`Batch`] under an id of their own and kept, in the `tlsrpt-push` tree of the
//! counts database, until the store has taken them. A frozen batch never changes, so a push
//! tried again after a lost reply carries exactly what the first one did, and the store,
//! which remembers the ids it applied, counts it once.

use super::{encode_key, lock, stored_raw, Batch, Counter, Entry, Key, Tally};
use std::collections::HashMap;

impl Counter {
    /// The batch to push to the fleet's store: the one frozen before, if the store has not
    /// taken it yet (the same id, the same counts), else everything counted until now, frozen
    /// into a new one. `None` when there is nothing to push, or the database cannot freeze.
    pub fn outgoing(&self) -> Option<Batch> {
        let _store = lock(&self.store);
        if let Some(batch) = lock(&self.outgoing).clone() {
            return Some(batch);
        }
        self.flush_locked();
        let id = format!("{:032x}", rand::random::<u128>());
        let batch = match (&self.db, &self.push_tree, &self.handle) {
            (Some(counts), Some(push), Some(handle)) => {
                let taken = stored_raw(counts);
                if taken.is_empty() {
                    return None;
                }
                let batch = Batch {
                    id,
                    entries: taken.iter().map(|(_, kv)| to_entry(kv)).collect(),
                };
                if let Err(e) = freeze(counts, push, &taken, &batch)
                    .and_then(|()| handle.flush().map(|_| ()).map_err(|e| e.to_string()))
                {
                    self.warn_once(&e);
                    return None;
                }
                batch
            }
            _ => {
                let taken = std::mem::take(&mut *lock(&self.memory));
                if taken.is_empty() {
                    return None;
                }
                Batch {
                    id,
                    entries: taken.into_iter().map(|kv| to_entry(&kv)).collect(),
                }
            }
        };
        *lock(&self.outgoing) = Some(batch.clone());
        Some(batch)
    }

    /// The shared store has taken batch `id`: it is forgotten here.
    pub fn pushed(&self, id: &str) {
        let _store = lock(&self.store);
        let mut outgoing = lock(&self.outgoing);
        if outgoing.as_ref().is_some_and(|b| b.id == id) {
            if let Some(push) = &self.push_tree {
                if let Err(e) = push.remove(BATCH_KEY).and_then(|_| push.flush()) {
                    // Pushed again after a restart, it is known by its id: counted once.
                    self.warn_once(&e.to_string());
                }
            }
            *outgoing = None;
        }
    }

    /// Back to a single node (`backend = "sled"` after `"redis"`): a batch frozen for the
    /// shared store and never taken goes back into the counts, to be reported from here.
    pub fn unfreeze(&self) {
        let _store = lock(&self.store);
        let Some(batch) = lock(&self.outgoing).take() else {
            return;
        };
        if let (Some(counts), Some(push)) = (&self.db, &self.push_tree) {
            match thaw(counts, push, &batch) {
                Ok(()) => {
                    let _ = counts.flush();
                    return;
                }
                Err(e) => self.warn_once(&e),
            }
        }
        let mut into = if self.db.is_some() {
            lock(&self.pending)
        } else {
            lock(&self.memory)
        };
        for e in batch.entries {
            into.entry((e.period, e.policy))
                .or_default()
                .merge(&e.tally);
        }
    }
}

/// Where the frozen batch is kept in the `tlsrpt-push` tree.
pub(super) const BATCH_KEY: &[u8] = b"batch";

pub(super) fn to_entry((key, tally): &(Key, Tally)) -> Entry {
    Entry {
        period: key.0,
        policy: key.1.clone(),
        tally: tally.clone(),
    }
}

/// Moves `taken` out of the counts tree and `batch` into the push tree, in one transaction:
/// a crash leaves the counts in one place or the other.
fn freeze(
    counts: &sled::Tree,
    push: &sled::Tree,
    taken: &[(sled::IVec, (Key, Tally))],
    batch: &Batch,
) -> Result<(), String> {
    use sled::Transactional;
    let bytes = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
    (counts, push)
        .transaction(|(c, p)| {
            for (k, _) in taken {
                c.remove(k)?;
            }
            p.insert(BATCH_KEY, bytes.as_slice())?;
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        })
        .map_err(|e| format!("{e:?}"))
}

/// Adds `batch` back to the counts tree and drops it from the push tree, in one transaction.
fn thaw(counts: &sled::Tree, push: &sled::Tree, batch: &Batch) -> Result<(), String> {
    use sled::Transactional;
    let mut merged: HashMap<Vec<u8>, Tally> = HashMap::new();
    for e in &batch.entries {
        let key = encode_key(&(e.period, e.policy.clone())).map_err(|e| e.to_string())?;
        merged.entry(key).or_default().merge(&e.tally);
    }
    (counts, push)
        .transaction(|(c, p)| {
            for (key, tally) in &merged {
                let mut sum: Tally = c
                    .get(key.as_slice())?
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or_default();
                sum.merge(tally);
                let bytes = serde_json::to_vec(&sum).unwrap_or_default();
                c.insert(key.as_slice(), bytes)?;
            }
            p.remove(BATCH_KEY)?;
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        })
        .map_err(|e| format!("{e:?}"))
}

/// The batch a previous run froze and did not see taken; a damaged one is dropped, said once.
pub(super) fn stored_batch(push: &sled::Tree) -> Option<Batch> {
    let bytes = push.get(BATCH_KEY).ok()??;
    match serde_json::from_slice(&bytes) {
        Ok(batch) => Some(batch),
        Err(e) => {
            tracing::warn!(
                "TLS-RPT counts: the batch waiting for the shared store is damaged ({e}); dropped"
            );
            let _ = push.remove(BATCH_KEY);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FailureDetail, Policy, SessionResult};
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn failure(result: &str, ip: &str) -> SessionResult {
        SessionResult::Failure(FailureDetail {
            receiving_ip: ip.parse().ok(),
            ..FailureDetail::new(result)
        })
    }

    #[test]
    fn a_batch_stays_frozen_until_pushed_and_counts_each_session_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        for c in [Counter::in_memory(DAY), Counter::open(dir.path(), DAY)] {
            let p = Policy::none("example.net");
            let t = at(1796601600 + 60);
            assert_eq!(c.outgoing(), None, "nothing counted, nothing to push");
            c.record_at(std::slice::from_ref(&p), &SessionResult::Success, t);
            c.flush();
            c.record_at(std::slice::from_ref(&p), &SessionResult::Success, t);
            let first = c.outgoing().expect("a batch");
            assert_eq!(first.entries.len(), 1);
            assert_eq!(first.entries[0].tally.successes, 2);
            // A failed push: the same batch again, whatever was counted since.
            c.record_at(
                std::slice::from_ref(&p),
                &failure("starttls-not-supported", "192.0.2.1"),
                t,
            );
            assert_eq!(c.outgoing().as_ref(), Some(&first));
            let all = c.entries(|_, _| true);
            assert_eq!((all[0].tally.successes, all[0].tally.failures), (2, 1));
            // Another id is not this batch.
            c.pushed("not-this-one");
            assert_eq!(c.outgoing().as_ref(), Some(&first));
            c.pushed(&first.id);
            let second = c.outgoing().expect("the failure");
            assert_ne!(second.id, first.id);
            assert_eq!(
                (
                    second.entries[0].tally.successes,
                    second.entries[0].tally.failures
                ),
                (0, 1)
            );
            c.pushed(&second.id);
            assert_eq!(c.outgoing(), None);
            assert!(c.entries(|_, _| true).is_empty());
        }
    }

    #[test]
    fn a_batch_never_taken_goes_back_into_the_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        for c in [Counter::in_memory(DAY), Counter::open(dir.path(), DAY)] {
            let p = Policy::none("example.net");
            let t = at(1796601600 + 60);
            c.record_at(std::slice::from_ref(&p), &SessionResult::Success, t);
            let batch = c.outgoing().expect("a batch");
            c.record_at(std::slice::from_ref(&p), &SessionResult::Success, t);
            c.flush();
            c.unfreeze();
            assert_eq!(c.outgoing().map(|b| b.id == batch.id), Some(false));
            let entries = c.entries(|_, _| true);
            assert_eq!(entries[0].tally.successes, 2);
            c.unfreeze();
            // Reported from here now: removing them leaves nothing behind.
            c.remove(entries[0].period, "example.net");
            assert!(c.entries(|_, _| true).is_empty());
        }
    }
}
