//! The reporter in a fleet (`[cache] backend = "redis"`, see [`crate::report::fleet`]): a
//! closed period's reports are built from the sums in Redis by the node that takes each
//! domain's lease, never from one node's own counts, and `send --now` cuts the open period for
//! every node at once.

use super::super::counts::{Entry, Period, Policy, Tally};
use super::super::fleet::FleetCounts;
use super::{group_by_domain, lock, range_text, send_delay, Reporter};
use policy_cache::shared::Down;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

impl Reporter {
    /// Every counts hash of the fleet not yet reported (of `domain`, if given).
    pub(super) async fn fleet_entries(
        &self,
        fleet: &FleetCounts,
        domain: Option<&str>,
    ) -> Result<Vec<Entry>, Down> {
        let mut all = Vec::new();
        for (period, d) in fleet.due(u64::MAX).await? {
            if domain.is_none_or(|want| want == d) {
                all.extend(fleet.sums(period, &d).await?);
            }
        }
        Ok(all)
    }

    /// `send --now` in a fleet: this node's counts pushed, then the open period cut at `now`
    /// for every node at once. `Err` (what to tell the operator) when Redis cannot be used:
    /// then nothing is sent, since this node's counts alone would make a second report.
    pub(super) async fn close_fleet_period(
        &self,
        fleet: &FleetCounts,
        now: SystemTime,
    ) -> Result<(), String> {
        let unavailable = || {
            "Redis unavailable: nothing sent; the counts stay here and are reported when it \
             is back"
                .to_string()
        };
        self.counter.flush();
        fleet.push(&self.counter).await.map_err(|_| unavailable())?;
        let open = Period::containing(now, self.counter.interval());
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let cut = Period {
            start: open.start,
            end: secs.max(open.start + 1),
        };
        fleet
            .close_early(open, cut)
            .await
            .map(|_| ())
            .map_err(|_| unavailable())
    }

    /// The fleet's closed periods whose send time has come: for each domain, the node that
    /// takes the lease builds the report from the fleet's sums; the others drop their copies.
    /// `only` as in [`Reporter::close_due`]. Returns log lines.
    pub(super) async fn close_due_in_fleet(
        &self,
        fleet: &FleetCounts,
        now: u64,
        only: Option<Option<&str>>,
    ) -> Vec<String> {
        use super::super::fleet::{Lease, KEEP, SETTLE};
        let t = &self.config.tlsrpt;
        self.counter.flush();
        if fleet.push(&self.counter).await.is_err() {
            self.give_up_unshared(now);
            return Vec::new();
        }
        let settle = SETTLE.as_secs();
        let until = match only {
            Some(_) => now,
            None => now.saturating_sub(settle),
        };
        let Ok(due) = fleet.due(until).await else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        for (period, domain) in due {
            if let Some(Some(d)) = only {
                if d != domain {
                    continue;
                }
            }
            let key = (period, domain.clone());
            if lock(&self.settled).contains(&key) {
                continue;
            }
            let due_at = match only {
                Some(_) => period.end,
                None => {
                    let max = t.send_delay_max.min(self.counter.interval());
                    period.end + settle + send_delay(&domain, period, max)
                }
            };
            if due_at > now || !self.lookup_due(period, &domain, now) {
                continue;
            }
            if now > period.end + t.give_up_after.as_secs() {
                // Past the send window (its lease holder died, or Redis was away): never late.
                lock(&self.settled).insert(key);
                continue;
            }
            match fleet.lease(period, &domain).await {
                Err(_) => break,
                Ok(Lease::Theirs) => {
                    self.counter.remove(period, &domain);
                    lock(&self.settled).insert(key);
                    continue;
                }
                Ok(Lease::Ours) => {}
            }
            if !fleet.built(period, &domain) {
                let Ok(group) = fleet.sums(period, &domain).await else {
                    break;
                };
                let line = if group.is_empty() {
                    // Nothing left in Redis (it restarted, or the counts expired).
                    None
                } else if t.only_failures && group.iter().all(|e| e.tally.failures == 0) {
                    self.counter.remove(period, &domain);
                    None
                } else {
                    match self.prepare(period, &domain, &group, now).await {
                        Some(line) => {
                            tracing::info!("tlsrpt: {line} (this node's lease, the fleet's sums)");
                            Some(line)
                        }
                        // The record look-up is tried again later; the lease stays ours.
                        None => continue,
                    }
                };
                fleet.note_built(period, &domain);
                lines.extend(line);
            }
            // If this fails, the next pass finds the lease ours and the report built.
            if fleet.finish(period, &domain).await.is_ok() {
                lock(&self.settled).insert(key);
            }
        }
        let oldest = now.saturating_sub(KEEP.as_secs());
        lock(&self.settled).retain(|(p, _)| p.end >= oldest);
        lines
    }

    /// Redis is unreachable: this node's counts of periods whose send window is over are
    /// dropped (sending them alone could make a second report for the domain), said once.
    fn give_up_unshared(&self, now: u64) {
        let window = self.config.tlsrpt.give_up_after.as_secs();
        let old = self.counter.entries(|p, _| p.end + window < now);
        for ((period, domain), group) in group_by_domain(old) {
            let sessions: u64 = group
                .iter()
                .map(|e| e.tally.successes + e.tally.failures)
                .sum();
            self.counter.remove(period, &domain);
            if lock(&self.settled).insert((period, domain.clone())) {
                tracing::warn!(
                    "tlsrpt: report for {domain} ({}) given up: Redis unavailable since the \
                     period ended; {sessions} sessions counted here not reported",
                    range_text(period.start, period.end)
                );
            }
        }
    }
}

/// `a` and `b` with the counts of one period and policy added up.
pub(super) fn merge_entries(a: Vec<Entry>, b: Vec<Entry>) -> Vec<Entry> {
    let mut all: BTreeMap<(Period, Policy), Tally> = BTreeMap::new();
    for e in a.into_iter().chain(b) {
        all.entry((e.period, e.policy)).or_default().merge(&e.tally);
    }
    all.into_iter()
        .map(|((period, policy), tally)| Entry {
            period,
            policy,
            tally,
        })
        .collect()
}
