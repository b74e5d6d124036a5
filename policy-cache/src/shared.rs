//! The store a fleet of relays shares (`[cache] backend = "redis"`): a Redis server, reached
//! through redis-rs's tokio `ConnectionManager` (which reconnects by itself).
//!
//! Redis is a help, never a dependency: every call is bounded by a short timeout, and an
//! error, a timeout or a server that cannot be reached at all reads as [`Down`], which callers
//! treat as "nothing shared" and go on with what they hold locally. One warning marks the
//! start of an outage ("episode"), one line its end; while the server is down a new
//! connection is tried at most every [`RECONNECT_INTERVAL`], so deliveries meanwhile pay
//! nothing for it.
//!
//! Keys carry a prefix (default `mxguard:`), so several fleets can share one server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two attempts to connect while the server is down.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(2);

/// Redis could not be used for this call; the caller goes on without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down;

/// How to reach the shared store.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// `redis://[user:password@]host:port/db` (or `rediss://`, `unix://`).
    pub url: String,
    /// Put before every key.
    pub prefix: String,
    /// The most one call may take, connection included.
    pub timeout: Duration,
}

pub struct Shared {
    client: redis::Client,
    /// The URL without its password, for logs.
    shown: String,
    prefix: String,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    last_attempt: Mutex<Option<Instant>>,
    /// In an outage: the next success says the server is back.
    down: AtomicBool,
}

impl Shared {
    /// Checks the URL; connects on first use.
    pub fn new(settings: &SharedSettings) -> Result<Shared, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("bad Redis URL: {e}"))?;
        Ok(Shared {
            client,
            shown: without_password(&settings.url),
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            conn: tokio::sync::Mutex::new(None),
            last_attempt: Mutex::new(None),
            down: AtomicBool::new(false),
        })
    }

    /// `prefix` + `key`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `cmd`, bounded by the timeout; `Down` on any failure (logged once per outage).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Down> {
        let mut conn = self.connection().await?;
        self.bounded(cmd.query_async::<T>(&mut conn)).await
    }

    /// Runs `pipe` (atomic when built with `.atomic()`), bounded by the timeout.
    pub async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Down> {
        let mut conn = self.connection().await?;
        self.bounded(pipe.query_async::<T>(&mut conn)).await
    }

    /// One call within the timeout; its failure (or the timeout) marks an outage, its success
    /// the end of one.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Down> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.up();
                Ok(value)
            }
            Ok(Err(e)) => Err(self.failed(&e.to_string())),
            Err(_) => Err(self.failed("timed out")),
        }
    }

    /// The value at `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Down> {
        self.query(redis::cmd("GET").arg(self.key(key))).await
    }

    /// Sets `key` to `value` for `ttl`.
    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Down> {
        let ms = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        self.query::<()>(
            redis::cmd("SET")
                .arg(self.key(key))
                .arg(value)
                .arg("PX")
                .arg(ms),
        )
        .await
    }

    /// Takes the lease `key` for `ttl` unless someone holds it (`SET NX PX`): true when it is
    /// ours now. `token` tells our lease from another's when it is let go.
    pub async fn lease(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, Down> {
        let ms = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.key(key))
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Lets go of lease `key` if it is still ours (it may have expired and been taken since).
    pub async fn release(&self, key: &str, token: &str) {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let mut invocation = script.key(self.key(key));
        invocation.arg(token);
        let Ok(mut conn) = self.connection().await else {
            return;
        };
        // Not ours any more, or Redis away: the lease expires by itself.
        let _ = self
            .bounded(invocation.invoke_async::<i64>(&mut conn))
            .await;
    }

    /// True while calls fail.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, Down> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < RECONNECT_INTERVAL) {
                return Err(Down);
            }
            *last = Some(Instant::now());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(RECONNECT_INTERVAL);
        let made = tokio::time::timeout(
            self.timeout * 2,
            redis::aio::ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(c)) => {
                *conn = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => Err(self.failed(&e.to_string())),
            Err(_) => Err(self.failed("connection timed out")),
        }
    }

    fn failed(&self, why: &str) -> Down {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "shared cache: Redis at {} unavailable ({why}); going on with the local cache \
                 until it is back",
                self.shown
            );
        }
        Down
    }

    fn up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("shared cache: Redis at {} is back", self.shown);
        }
    }
}

/// `redis://user:secret@host/0` → `redis://user:***@host/0`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

/// A token that names this process's leases: host-unique enough (pid, random bits).
pub fn lease_token() -> String {
    format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            without_password("redis://app:s3cret@10.0.0.5:6379/2"),
            "redis://app:***@10.0.0.5:6379/2"
        );
        assert_eq!(without_password("redis://:s3cret@h/0"), "redis://:***@h/0");
        assert_eq!(without_password("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }

    #[tokio::test]
    async fn a_closed_port_is_down_at_once_and_not_retried_for_a_while() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let shared = Shared::new(&SharedSettings {
            url: format!("redis://127.0.0.1:{port}/"),
            prefix: "t:".into(),
            timeout: Duration::from_millis(300),
        })
        .unwrap();
        assert_eq!(shared.get("k").await, Err(Down));
        assert!(shared.is_down());
        let started = Instant::now();
        assert_eq!(shared.get("k").await, Err(Down));
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "no new attempt so soon"
        );
        assert!(Shared::new(&SharedSettings {
            url: "not a url".into(),
            prefix: String::new(),
            timeout: Duration::from_secs(1),
        })
        .is_err());
    }
}
