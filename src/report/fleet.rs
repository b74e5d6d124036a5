//! TLS-RPT counts shared by a fleet of relays (`[cache] backend = "redis"`), so that each
//! policy domain gets **one** report per period (RFC 8460 §4.1: one report per reporting
//! period from the sending organisation) with every node's sessions in it.
//!
//! Each node counts as a single node does (memory, then its own sled database), and every
//! few seconds pushes what it counted to Redis, where the counts of all nodes add up. When a
//! period is over (plus a settling time, so every node's last push is in, and the send delay
//! of RFC 8460 §4.4, the same on every node), the nodes race for a lease per period and
//! domain; the one that takes it builds the report from the sum in Redis and sends it, the
//! others drop what they hold of that period and domain.
//!
//! # Keys
//! Under `[cache] redis_prefix` (default `mxguard:`); `PERIOD` is `<start>-<end>` in Unix
//! seconds, `DOMAIN` the policy domain (a lowercase A-label):
//! - `tlsrpt:counts:PERIOD:DOMAIN`, a hash with, per policy (`PID`, the first 16 hex digits
//!   of the SHA-256 of the policy's JSON): `PID:policy` (that JSON, set once, `HSETNX`),
//!   `PID:ok` and `PID:fail` (sessions), `PID:detail:<failure detail JSON>` (failed sessions
//!   alike), `PID:ndetails` (how many detail fields there are: at most [`MAX_DETAILS`], as on
//!   a single node) and `PID:dropped` (failures whose details did not fit). Expires
//!   [`KEEP`] after the period's end.
//! - `tlsrpt:due`, a sorted set: `PERIOD:DOMAIN` members scored by the period's end, the
//!   domains with counts not yet reported. The reporting node removes its member; members
//!   older than [`KEEP`] are pruned by every push.
//! - `tlsrpt:lease:PERIOD:DOMAIN`: the send lease (`SET NX PX`, [`LEASE_TTL`]), holding the
//!   winner's node token while it builds the report, then `done:<token>`.
//! - `tlsrpt:push:ID`: "batch ID was applied" ([`KEEP`]), which makes a push idempotent.
//!
//! # Pushing, exactly once
//! A push is one Lua script (atomic in Redis): it sets `tlsrpt:push:ID` with `NX` and, only
//! if that was new, adds the batch's counts (`HINCRBY`), sets each policy's JSON, adds the
//! due members and sets the expiry times. The batch is frozen locally before the push and
//! forgotten only after Redis answered ([`Counter::outgoing`], [`Counter::pushed`]). So a
//! push that failed leaves the counts here, to go with the next try; a push whose reply was
//! lost (applied, but the answer timed out) is tried again under the same id and Redis
//! recognises it: nothing is counted twice. While Redis is down the counts wait in the local
//! database, across restarts too.
//!
//! # What an outage costs
//! - Redis down while counting: nothing; the counts are pushed when it is back.
//! - Redis down when a period's reports are due: no node sends from its own counts (two
//!   nodes would send two reports); each tries again every few seconds. If Redis is still
//!   down `tlsrpt.give_up_after` after the period's end, the node drops its counts of that
//!   period and no report is sent for it.
//! - Redis restarted empty (no persistence): the counts pushed before are gone with its
//!   memory, and so are the leases; what was counted since (and not yet pushed) still makes
//!   a report. Run Redis with `appendonly yes` where that matters.
//! - A node cut off from Redis across a period's end plus [`SETTLE`]: its counts of that
//!   period arrive after the report was built and are not in any report.
//! - The winner dies after taking the lease: its token is kept in its database, so when it
//!   comes back it resumes the report; a node that never comes back leaves that period and
//!   domain unreported (the lease blocks the others until it expires, past the send window).
//!
//! A single Redis server is assumed (not Redis Cluster: the scripts touch keys they make).

use super::counts::{Batch, Counter, Entry, FailureDetail, Period, Policy, Tally, MAX_DETAILS};
use policy_cache::shared::{Down, Shared, SharedSettings};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// How long counts, due members and push markers are kept after their period's end.
pub const KEEP: Duration = Duration::from_secs(8 * 86_400);
/// How long a send lease holds: longer than any send window, so that a period is never
/// reported twice.
pub const LEASE_TTL: Duration = Duration::from_secs(7 * 86_400);
/// How long after a period's end its counts are summed: every node pushes every 5 s, so by
/// then the last push of each node that can reach Redis is in.
pub const SETTLE: Duration = Duration::from_secs(15);

/// Adds one batch to the counts, once per batch id. KEYS: the push marker, `tlsrpt:due`, then
/// one counts hash per entry of ARGV[2] (JSON, see [`HashOps`]). ARGV: marker TTL (ms), the
/// batch, the details cap, the oldest due score kept, the due set's TTL (s).
const PUSH_SCRIPT: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local max = tonumber(ARGV[3])
for i, h in ipairs(cjson.decode(ARGV[2])) do
  local key = KEYS[i + 2]
  for _, p in ipairs(h.policies) do
    local f = p.pid .. ':'
    redis.call('HSETNX', key, f .. 'policy', p.policy)
    redis.call('HINCRBY', key, f .. 'ok', p.ok)
    redis.call('HINCRBY', key, f .. 'fail', p.fail)
    redis.call('HINCRBY', key, f .. 'dropped', p.dropped)
    for _, d in ipairs(p.details) do
      local field = f .. 'detail:' .. d[1]
      if redis.call('HEXISTS', key, field) == 1 then
        redis.call('HINCRBY', key, field, d[2])
      elseif tonumber(redis.call('HGET', key, f .. 'ndetails') or '0') < max then
        redis.call('HINCRBY', key, field, d[2])
        redis.call('HINCRBY', key, f .. 'ndetails', 1)
      else
        redis.call('HINCRBY', key, f .. 'dropped', d[2])
      end
    end
  end
  redis.call('EXPIREAT', key, h.expire_at)
  redis.call('ZADD', KEYS[2], h.score, h.due)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
";

/// `tlsrpt send --now` for the whole fleet: moves every domain's counts of the open period
/// into the period cut at now. KEYS: `tlsrpt:due`. ARGV: the counts keys' prefix, the open
/// period, the cut period, the open period's end, the cut's end, the cut hashes' expiry.
const CUT_SCRIPT: &str = r"
local open = ARGV[2] .. ':'
local moved = 0
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[4], ARGV[4])) do
  if string.sub(m, 1, #open) == open then
    local domain = string.sub(m, #open + 1)
    local from = ARGV[1] .. m
    local to = ARGV[1] .. ARGV[3] .. ':' .. domain
    local fields = redis.call('HGETALL', from)
    for i = 1, #fields, 2 do
      if string.sub(fields[i], -7) == ':policy' then
        redis.call('HSETNX', to, fields[i], fields[i + 1])
      else
        redis.call('HINCRBY', to, fields[i], fields[i + 1])
      end
    end
    redis.call('DEL', from)
    if #fields > 0 then redis.call('EXPIREAT', to, ARGV[6]) end
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZADD', KEYS[1], ARGV[5], ARGV[3] .. ':' .. domain)
    moved = moved + 1
  end
end
return moved
";

/// One counts hash's share of a push (the script reads it with `cjson`); numbers as strings,
/// which Lua passes to Redis unchanged.
#[derive(Serialize)]
struct HashOps {
    expire_at: String,
    due: String,
    score: String,
    policies: Vec<PolicyOps>,
}

#[derive(Serialize)]
struct PolicyOps {
    pid: String,
    policy: String,
    ok: String,
    fail: String,
    dropped: String,
    /// `[detail JSON, failed sessions]`.
    details: Vec<(String, String)>,
}

/// Who sends a period's report for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This node: it builds the report from the sum (also when it took the lease before a
    /// restart).
    Ours,
    /// Another node has it (or has sent it).
    Theirs,
}

/// The fleet's counts in Redis, as this node sees them.
pub struct FleetCounts {
    shared: Shared,
    /// Names this node's leases, the same across restarts (kept in the counts database).
    token: String,
    /// Reports this node built, by period and domain, so that a lease resumed after a crash
    /// is not reported twice: in the `tlsrpt-fleet` tree, else in memory.
    tree: Option<sled::Tree>,
    built: Mutex<HashSet<String>>,
}

impl FleetCounts {
    pub fn new(
        settings: &SharedSettings,
        counter: &Counter,
        hostname: &str,
    ) -> Result<FleetCounts, String> {
        let shared = Shared::new(settings)?;
        let tree = counter.tree("tlsrpt-fleet");
        let token = node_token(tree.as_ref(), hostname);
        Ok(FleetCounts {
            shared,
            token,
            tree,
            built: Mutex::new(HashSet::new()),
        })
    }

    /// Whether Redis failed its last call.
    pub fn is_down(&self) -> bool {
        self.shared.is_down()
    }

    /// Pushes what `counter` holds (one batch: the one a failed push left, else everything
    /// counted until now). `Ok` once Redis has it; on `Err` the counts stay in `counter`.
    pub async fn push(&self, counter: &Counter) -> Result<(), Down> {
        let Some(batch) = counter.outgoing() else {
            return Ok(());
        };
        self.apply(&batch).await?;
        counter.pushed(&batch.id);
        Ok(())
    }

    /// Adds `batch` to the shared counts unless it was added before: `true` when this call
    /// added it.
    pub async fn apply(&self, batch: &Batch) -> Result<bool, Down> {
        let mut hashes: BTreeMap<(Period, String), Vec<&Entry>> = BTreeMap::new();
        for e in &batch.entries {
            hashes
                .entry((e.period, e.policy.domain.clone()))
                .or_default()
                .push(e);
        }
        let now = super::counts::now_secs();
        let mut keys = vec![
            self.shared.key(&format!("tlsrpt:push:{}", batch.id)),
            self.shared.key("tlsrpt:due"),
        ];
        let mut ops = Vec::new();
        for ((period, domain), entries) in hashes {
            keys.push(self.counts_key(period, &domain));
            ops.push(HashOps {
                expire_at: (period.end + KEEP.as_secs()).to_string(),
                due: member(period, &domain),
                score: period.end.to_string(),
                policies: entries.iter().map(|e| policy_ops(e)).collect(),
            });
        }
        let json = serde_json::to_string(&ops).map_err(|_| Down)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUSH_SCRIPT).arg(keys.len()).arg(&keys);
        cmd.arg(KEEP.as_millis() as u64)
            .arg(json)
            .arg(MAX_DETAILS)
            .arg(now.saturating_sub(KEEP.as_secs()))
            .arg(KEEP.as_secs());
        let applied: i64 = self.shared.query(&cmd).await?;
        Ok(applied == 1)
    }

    /// The periods and domains with counts not yet reported whose period ended by `until`,
    /// oldest first.
    pub async fn due(&self, until: u64) -> Result<Vec<(Period, String)>, Down> {
        let members: Vec<String> = self
            .shared
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.shared.key("tlsrpt:due"))
                    .arg("-inf")
                    .arg(until),
            )
            .await?;
        Ok(members.iter().filter_map(|m| parse_member(m)).collect())
    }

    /// Every node's counts of `domain` in `period`, summed.
    pub async fn sums(&self, period: Period, domain: &str) -> Result<Vec<Entry>, Down> {
        let fields: HashMap<String, String> = self
            .shared
            .query(redis::cmd("HGETALL").arg(self.counts_key(period, domain)))
            .await?;
        Ok(entries_from_hash(period, &fields))
    }

    /// Takes the send lease of `domain` in `period`, or learns who has it.
    pub async fn lease(&self, period: Period, domain: &str) -> Result<Lease, Down> {
        let key = lease_key(period, domain);
        for _ in 0..2 {
            if self.shared.lease(&key, &self.token, LEASE_TTL).await? {
                return Ok(Lease::Ours);
            }
            match self.shared.get(&key).await? {
                Some(holder) if holder == self.token.as_bytes() => return Ok(Lease::Ours),
                Some(_) => return Ok(Lease::Theirs),
                // It expired between the two calls: try once more.
                None => continue,
            }
        }
        Ok(Lease::Theirs)
    }

    /// The report of `domain` in `period` is dealt with (handed to the outbox, or there is
    /// none to send): the lease says so, and the domain is no longer due.
    pub async fn finish(&self, period: Period, domain: &str) -> Result<(), Down> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.shared.key(&lease_key(period, domain)))
            .arg(format!("done:{}", self.token))
            .arg("PX")
            .arg(LEASE_TTL.as_millis() as u64)
            .ignore()
            .cmd("ZREM")
            .arg(self.shared.key("tlsrpt:due"))
            .arg(member(period, domain))
            .ignore();
        self.shared.pipeline::<()>(&pipe).await
    }

    /// Moves the whole fleet's counts of period `open` into `cut` (`tlsrpt send --now`), at
    /// once for every domain; counts pushed later go on into `open`. How many domains moved.
    pub async fn close_early(&self, open: Period, cut: Period) -> Result<u64, Down> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CUT_SCRIPT)
            .arg(1)
            .arg(self.shared.key("tlsrpt:due"))
            .arg(self.shared.key("tlsrpt:counts:"))
            .arg(period_text(open))
            .arg(period_text(cut))
            .arg(open.end)
            .arg(cut.end)
            .arg(cut.end + KEEP.as_secs());
        self.shared.query(&cmd).await
    }

    /// Whether this node built the report of `domain` in `period` (before a restart, say).
    pub fn built(&self, period: Period, domain: &str) -> bool {
        let key = member(period, domain);
        if lock(&self.built).contains(&key) {
            return true;
        }
        self.tree
            .as_ref()
            .is_some_and(|t| t.contains_key(format!("built:{key}")).unwrap_or(false))
    }

    /// Remembers that this node built that report (kept [`KEEP`]).
    pub fn note_built(&self, period: Period, domain: &str) {
        let key = member(period, domain);
        lock(&self.built).insert(key.clone());
        if let Some(tree) = &self.tree {
            let _ = tree.insert(format!("built:{key}"), &period.end.to_be_bytes());
            let oldest = super::counts::now_secs().saturating_sub(KEEP.as_secs());
            for (k, v) in tree.scan_prefix(b"built:").filter_map(Result::ok) {
                let end = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
                if end < oldest {
                    let _ = tree.remove(k);
                }
            }
            let _ = tree.flush();
        }
    }

    fn counts_key(&self, period: Period, domain: &str) -> String {
        self.shared
            .key(&format!("tlsrpt:counts:{}", member(period, domain)))
    }
}

/// This node's lease token: `<hostname>/<random>`, made once and kept in the database (in
/// memory only, a new one each start).
fn node_token(tree: Option<&sled::Tree>, hostname: &str) -> String {
    let fresh = format!("{hostname}/{:016x}", rand::random::<u64>());
    let Some(tree) = tree else { return fresh };
    if let Ok(Some(stored)) = tree.get(b"token") {
        if let Ok(token) = std::str::from_utf8(&stored) {
            return token.to_string();
        }
    }
    let _ = tree.insert(b"token", fresh.as_bytes());
    let _ = tree.flush();
    fresh
}

fn period_text(p: Period) -> String {
    format!("{}-{}", p.start, p.end)
}

/// `PERIOD:DOMAIN`.
fn member(period: Period, domain: &str) -> String {
    format!("{}:{domain}", period_text(period))
}

fn lease_key(period: Period, domain: &str) -> String {
    format!("tlsrpt:lease:{}", member(period, domain))
}

fn parse_member(m: &str) -> Option<(Period, String)> {
    let (period, domain) = m.split_once(':')?;
    let (start, end) = period.split_once('-')?;
    let period = Period {
        start: start.parse().ok()?,
        end: end.parse().ok()?,
    };
    (!domain.is_empty() && period.start < period.end).then(|| (period, domain.to_string()))
}

/// The first 16 hex digits of the SHA-256 of the policy's JSON: names the policy's fields.
fn policy_id(policy_json: &str) -> String {
    let digest = policy_cache::crypto::digest::digest(
        &policy_cache::crypto::digest::SHA256,
        policy_json.as_bytes(),
    );
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn policy_ops(e: &Entry) -> PolicyOps {
    let policy = serde_json::to_string(&e.policy).unwrap_or_default();
    PolicyOps {
        pid: policy_id(&policy),
        policy,
        ok: e.tally.successes.to_string(),
        fail: e.tally.failures.to_string(),
        dropped: e.tally.details_dropped.to_string(),
        details: e
            .tally
            .details
            .iter()
            .filter_map(|(d, n)| Some((serde_json::to_string(d).ok()?, n.to_string())))
            .collect(),
    }
}

/// A counts hash read back as entries, one per policy; fields that do not parse (written by
/// something else) are skipped, so a stranger's data never stops a report.
fn entries_from_hash(period: Period, fields: &HashMap<String, String>) -> Vec<Entry> {
    let mut policies: BTreeMap<&str, (Option<Policy>, Tally)> = BTreeMap::new();
    for (field, value) in fields {
        let Some((pid, what)) = field.split_once(':') else {
            continue;
        };
        let slot = policies.entry(pid).or_default();
        let n = || value.parse::<u64>().unwrap_or(0);
        match what {
            "policy" => slot.0 = serde_json::from_str(value).ok(),
            "ok" => slot.1.successes += n(),
            "fail" => slot.1.failures += n(),
            "dropped" => slot.1.details_dropped += n(),
            _ => {
                if let Some(json) = what.strip_prefix("detail:") {
                    if let Ok(detail) = serde_json::from_str::<FailureDetail>(json) {
                        slot.1.details.push((detail, n()));
                    }
                }
            }
        }
    }
    let mut entries: Vec<Entry> = policies
        .into_values()
        .filter_map(|(policy, raw)| {
            // Sorted and capped as a single node's tally is.
            let mut tally = Tally {
                details: Vec::new(),
                ..raw.clone()
            };
            tally.merge(&Tally {
                successes: 0,
                failures: 0,
                details_dropped: 0,
                details: raw.details,
            });
            Some(Entry {
                period,
                policy: policy?,
                tally,
            })
        })
        .collect();
    entries.sort_by(|a, b| a.policy.cmp(&b.policy));
    entries
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::counts::PolicyKind;

    const P: Period = Period {
        start: 86_400,
        end: 172_800,
    };

    #[test]
    fn members_name_a_period_and_a_domain() {
        let m = member(P, "example.net");
        assert_eq!(m, "86400-172800:example.net");
        assert_eq!(parse_member(&m), Some((P, "example.net".to_string())));
        assert_eq!(parse_member("x:example.net"), None);
        assert_eq!(parse_member("5-1:example.net"), None);
        assert_eq!(parse_member("1-5:"), None);
    }

    #[test]
    fn a_hash_reads_back_as_the_counts_pushed() {
        let policy = Policy::new(
            PolicyKind::Sts,
            "example.net",
            vec!["version: STSv1".into()],
            vec!["mx.example.net".into()],
        );
        let mut detail = FailureDetail::new("certificate-expired");
        detail.receiving_ip = "192.0.2.7".parse().ok();
        let entry = Entry {
            period: P,
            policy: policy.clone(),
            tally: Tally {
                successes: 4,
                failures: 2,
                details: vec![(detail.clone(), 2)],
                details_dropped: 0,
            },
        };
        let ops = policy_ops(&entry);
        // What the push script writes, by hand: a second node's counts added on.
        let mut fields = HashMap::new();
        let f = |what: &str| format!("{}:{what}", ops.pid);
        fields.insert(f("policy"), ops.policy.clone());
        fields.insert(f("ok"), "7".to_string());
        fields.insert(f("fail"), "3".to_string());
        fields.insert(f("dropped"), "1".to_string());
        fields.insert(f("ndetails"), "1".to_string());
        fields.insert(
            format!("{}:detail:{}", ops.pid, ops.details[0].0),
            "2".into(),
        );
        fields.insert("garbage".into(), "x".into());
        fields.insert("0000000000000000:ok".into(), "5".into());
        let entries = entries_from_hash(P, &fields);
        assert_eq!(entries.len(), 1, "a policy without its JSON is skipped");
        let e = &entries[0];
        assert_eq!(e.policy, policy);
        assert_eq!((e.tally.successes, e.tally.failures), (7, 3));
        assert_eq!(e.tally.details, vec![(detail, 2)]);
        assert_eq!(e.tally.details_dropped, 1);
    }

    #[test]
    fn policy_ids_are_stable_and_distinct() {
        let a = policy_id("{\"kind\":\"sts\"}");
        assert_eq!(a.len(), 16);
        assert_eq!(a, policy_id("{\"kind\":\"sts\"}"));
        assert_ne!(a, policy_id("{\"kind\":\"tlsa\"}"));
    }
}
