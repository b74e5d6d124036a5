//! The connection pool (Postfix's scache, in process): sessions kept open after a transaction,
//! for the next message to the same host under the same requirement.
//!
//! A pooled session is identified by what it was established and verified under: the MX host
//! name as dialled, the port, and the [`SessionRequirement`] of the plan that opened it (the
//! host plan with its level, names to verify and TLSA records; the MTA-STS policy id; whether
//! REQUIRETLS was demanded and so advertised). Its IP address, SNI and TLS facts come with it.
//! A job takes a session only when its own plan for that host demands exactly the same
//! requirement: no weaker session is ever upgraded in place, and no stronger one stands in for
//! a weaker plan, because "the same" is the only relation that needs no proof. A session opened
//! for an opportunistic domain thus never carries mail for a DANE or MTA-STS domain on the same
//! IP, and a session verified against a TLSA RRset that has since changed is never taken.
//!
//! Limits, as Postfix's: a session waits in the pool at most `connection_cache_time_limit`,
//! carries at most `connection_reuse_count_limit` transactions (0: no limit) and is not reused
//! once older than `connection_reuse_time_limit`. TLS session resumption stays off (see
//! `tls`): a reused connection was verified once, when it was opened.

use super::plan::SessionRequirement;
use super::session::{self, Connection, Session};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The pool's limits (`delivery.connection_*`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolLimits {
    pub enabled: bool,
    /// Time a session may wait in the pool.
    pub idle: Duration,
    /// Transactions a session may carry; 0: no limit.
    pub uses: u32,
    /// Age after which a session is not reused.
    pub age: Duration,
}

/// A session with what it was opened under.
pub(crate) struct Pooled {
    pub session: Session,
    pub requirement: SessionRequirement,
    pub opened: Instant,
    /// Transactions it carried.
    pub uses: u32,
    /// The last transaction left the server's side open: RSET first.
    pub reset: bool,
}

struct Idle {
    pooled: Pooled,
    since: Instant,
}

/// Where a session goes: the MX host name as dialled (lower case) and the port.
type Endpoint = (String, u16);

#[derive(Default)]
struct Idles {
    by_endpoint: HashMap<Endpoint, Vec<Idle>>,
    count: usize,
}

pub(crate) struct Pool {
    limits: PoolLimits,
    idle: Mutex<Idles>,
}

impl Pool {
    pub fn new(limits: PoolLimits) -> Pool {
        Pool {
            limits,
            idle: Mutex::new(Idles::default()),
        }
    }

    /// An idle session with `host`:`port` opened under exactly `requirement`, the most recently
    /// used first.
    pub fn take(&self, host: &str, port: u16, requirement: &SessionRequirement) -> Option<Pooled> {
        if !self.limits.enabled {
            return None;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().ok()?;
        let key = (host.to_ascii_lowercase(), port);
        let list = idle.by_endpoint.get_mut(&key)?;
        let found = list.iter().rposition(|i| {
            i.pooled.requirement == *requirement && self.fresh(&i.pooled, i.since, now)
        });
        let taken = found.map(|at| list.remove(at).pooled);
        if list.is_empty() {
            idle.by_endpoint.remove(&key);
        }
        if taken.is_some() {
            idle.count -= 1;
        }
        taken
    }

    /// Keeps `pooled` for the next job, unless it reached a limit: then it is handed back for
    /// the caller to close.
    pub fn put(&self, pooled: Pooled) -> Option<Pooled> {
        let now = Instant::now();
        if !self.limits.enabled || !self.reusable(&pooled, now) {
            return Some(pooled);
        }
        let Ok(mut idle) = self.idle.lock() else {
            return Some(pooled);
        };
        let key = (
            pooled.session.relay.host.to_ascii_lowercase(),
            pooled.session.relay.addr.port(),
        );
        idle.by_endpoint
            .entry(key)
            .or_default()
            .push(Idle { pooled, since: now });
        idle.count += 1;
        None
    }

    /// Closes (QUIT) every session past its idle time or age; the daemon calls this every
    /// second. Nothing else waits on it.
    pub async fn reap(&self) {
        let expired = self.expired(Instant::now());
        for pooled in expired {
            close(pooled.session).await;
        }
    }

    /// Closes every idle session (at shutdown).
    pub async fn close_all(&self) {
        let all: Vec<Pooled> = match self.idle.lock() {
            Ok(mut idle) => {
                idle.count = 0;
                idle.by_endpoint
                    .drain()
                    .flat_map(|(_, list)| list.into_iter().map(|i| i.pooled))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for pooled in all {
            close(pooled.session).await;
        }
    }

    fn expired(&self, now: Instant) -> Vec<Pooled> {
        let Ok(mut idle) = self.idle.lock() else {
            return Vec::new();
        };
        let mut expired = Vec::new();
        idle.by_endpoint.retain(|_, list| {
            let (keep, gone): (Vec<Idle>, Vec<Idle>) = std::mem::take(list)
                .into_iter()
                .partition(|i| self.fresh(&i.pooled, i.since, now));
            *list = keep;
            expired.extend(gone.into_iter().map(|i| i.pooled));
            !list.is_empty()
        });
        idle.count -= expired.len();
        expired
    }

    /// Within the idle time, the age and the use count.
    fn fresh(&self, pooled: &Pooled, since: Instant, now: Instant) -> bool {
        now.duration_since(since) < self.limits.idle && self.reusable(pooled, now)
    }

    fn reusable(&self, pooled: &Pooled, now: Instant) -> bool {
        let uses_left = self.limits.uses == 0 || pooled.uses < self.limits.uses;
        uses_left && now.duration_since(pooled.opened) < self.limits.age
    }
}

/// QUIT and drop.
pub(crate) async fn close(mut session: Session) {
    match &mut session.connection {
        Connection::Plain(client) => session::quit(client).await,
        Connection::Tls(client) => session::quit(client.as_mut()).await,
    }
}
