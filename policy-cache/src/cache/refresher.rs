//! Background refresh (RFC 8461 §3.3: senders should refresh cached policies proactively, so
//! that a policy in use never lapses), and the disuse rule.
//!
//! Each policy gets a refresh time when it is fetched: `expires_at − f × max_age`, with `f`
//! drawn uniformly from [10 %, 30 %]. Refreshing well before expiry leaves room for retries;
//! the random part spreads policies fetched together (a restart, a burst of new domains) over
//! time instead of refetching them all in the same minute. A pass runs every
//! [`REFRESH_TICK`]; it drops entries unused for `unused_after`, expired negative entries, and
//! refetches the unexpired policies whose refresh time has come, `refresh_concurrency` at a time.

use super::decide::{within, Txt};
use super::{unix, write, Entry, Inner};
use futures::StreamExt;
use rand::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the refresher looks for due policies.
const REFRESH_TICK: Duration = Duration::from_secs(60);

/// The earliest retry after a failed background refresh.
const MIN_RETRY: Duration = Duration::from_secs(300);

/// What one refresher pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshSummary {
    /// Policies refetched successfully.
    pub refreshed: usize,
    /// Policies due whose refetch failed (kept until they expire; retried later).
    pub failed: usize,
    /// Entries dropped for disuse.
    pub dropped: usize,
}

/// When a policy fetched at `fetched_at` should be refreshed (see the module doc).
pub(crate) fn schedule(fetched_at: SystemTime, max_age: u32) -> SystemTime {
    let fraction: f64 = rand::thread_rng().gen_range(0.1..=0.3);
    let max_age = f64::from(max_age);
    let before_expiry = Duration::from_secs_f64(max_age * (1.0 - fraction));
    // A time read back from disk may be anything serde accepts: never overflow on it.
    fetched_at.checked_add(before_expiry).unwrap_or(fetched_at)
}

impl Inner {
    pub(crate) async fn run_refresher(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(REFRESH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = async { tick.tick().await; self.refresh_due().await } => {}
                changed = shutdown.changed() => {
                    // The sender is gone: nobody can ask us to stop any more, so stop now.
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::debug!("MTA-STS: refresher stopped");
    }

    /// One refresher pass.
    pub(crate) async fn refresh_due(&self) -> RefreshSummary {
        let now = self.clock.now();
        // A store in memory (its database unusable) gets back onto the database from here
        // even when nothing is written.
        self.store.reopen_if_due();
        let dropped = self.drop_unused(now);
        if dropped > 0 {
            self.store.flush_async().await;
        }
        self.drop_old_negatives(now);
        self.drop_idle_gates();
        let due: Vec<(String, Arc<Entry>)> = super::read(&self.policies)
            .iter()
            .filter(|(_, e)| e.refresh_at() <= now && now < e.active.expires_at)
            .map(|(d, e)| (d.clone(), e.clone()))
            .collect();
        let refreshed = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        futures::stream::iter(due)
            .for_each_concurrent(
                self.settings.refresh_concurrency.max(1),
                |(domain, entry)| {
                    let (refreshed, failed) = (&refreshed, &failed);
                    async move {
                        let counter = if self.refresh_entry(&domain, &entry).await {
                            refreshed
                        } else {
                            failed
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )
            .await;
        RefreshSummary {
            refreshed: refreshed.into_inner(),
            failed: failed.into_inner(),
            dropped,
        }
    }

    /// Refetches one due policy; true when a new copy was installed.
    async fn refresh_entry(&self, domain: &str, entry: &Entry) -> bool {
        let id = match self.txt_lookup(domain).await {
            Txt::Record(record) => record.id,
            // RFC 8461 §3.3: without a live TXT record there is nothing to fetch; the cached
            // policy holds until it expires.
            other => {
                tracing::info!(domain, txt = ?other, "MTA-STS: not refreshed, no valid TXT record");
                self.postpone(entry);
                return false;
            }
        };
        let gate = self.gate(domain);
        let _fetching = gate.lock().await;
        // A fleet: another node may have refreshed it already, or be refreshing it now.
        if let Some(copy) = self
            .shared_policy(domain, &id, Some(entry.active.fetched_at))
            .await
        {
            self.adopt(domain, copy, false).await;
            return true;
        }
        let lease = self.take_lease(domain).await;
        if lease == super::fleet::Lease::Theirs {
            tracing::debug!(
                domain,
                "MTA-STS: another node is refreshing; kept the cached policy"
            );
            let soon = self.clock.now() + super::fleet::LEASE_HELD_RETRY;
            entry.refresh_at.store(unix(soon), Ordering::Relaxed);
            return false;
        }
        let fetched = self.fetch_policy(domain).await;
        let refreshed = match fetched {
            Ok(policy) => {
                let active = self.install(domain, &id, policy, false).await;
                self.publish(&active).await;
                true
            }
            Err((error, _)) => {
                tracing::warn!(
                    domain,
                    id,
                    error,
                    "MTA-STS: refresh failed, kept the cached policy until it expires"
                );
                self.postpone(entry);
                false
            }
        };
        self.release_lease(domain, lease).await;
        refreshed
    }

    /// After a failed refresh, tries again after a quarter of the remaining lifetime (at least
    /// [`MIN_RETRY`]), so a few more attempts fit before expiry without hammering the host.
    fn postpone(&self, entry: &Entry) {
        let now = self.clock.now();
        let remaining = entry
            .active
            .expires_at
            .duration_since(now)
            .unwrap_or_default();
        let next = now
            .checked_add((remaining / 4).max(MIN_RETRY))
            .unwrap_or(now);
        entry.refresh_at.store(unix(next), Ordering::Relaxed);
    }

    /// Drops entries no delivery asked for within `unused_after`; returns how many.
    fn drop_unused(&self, now: SystemTime) -> usize {
        let unused_after = self.settings.unused_after;
        let mut dropped = Vec::new();
        write(&self.policies).retain(|domain, entry| {
            let keep = within(now, entry.last_used(), unused_after);
            if !keep {
                dropped.push(domain.clone());
            }
            keep
        });
        for domain in &dropped {
            tracing::info!(domain, "MTA-STS: dropped a policy unused for a long time");
            self.store.remove_policy(domain);
        }
        dropped.len()
    }

    fn drop_old_negatives(&self, now: SystemTime) {
        let ttl = self.settings.negative_ttl;
        let mut expired = Vec::new();
        write(&self.negatives).retain(|domain, n| {
            let keep = within(now, n.failed_at, ttl);
            if !keep {
                expired.push(domain.clone());
            }
            keep
        });
        for domain in &expired {
            self.store.remove_negative(domain);
        }
    }

    /// Forgets the fetch locks nobody holds or waits for.
    fn drop_idle_gates(&self) {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.retain(|_, gate| Arc::strong_count(gate) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::from_unix;

    #[test]
    fn refresh_falls_between_70_and_90_percent_of_max_age() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..200 {
            let at = schedule(t0, 1000);
            assert!(at >= t0 + Duration::from_secs(700), "{at:?}");
            assert!(at <= t0 + Duration::from_secs(900), "{at:?}");
        }
        assert_eq!(schedule(t0, 0), t0);
    }

    #[test]
    fn unix_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(from_unix(unix(t)), t);
    }
}
