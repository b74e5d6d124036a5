//! The configuration of the pieces a fleet of relays needs, each off unless configured:
//! `[metrics]` (Prometheus), `[compliance]` (the JSON delivery record), `[cache]` (MTA-STS
//! policies and TLS-RPT counts shared on Redis) and `[policy_service]` (a socketmap for
//! Postfix's `smtp_tls_policy_maps`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[metrics]`: `/metrics` (Prometheus text exposition) and `/healthz` over plain HTTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve them, e.g. `127.0.0.1:9325`; unset: no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

/// `[compliance]`: one JSON object per recipient attempt, appended to a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceConfig {
    /// The JSON Lines file (reopened on SIGHUP, for log rotation), or `-` for standard output;
    /// unset: no record beyond the log line.
    pub file: Option<PathBuf>,
}

impl ComplianceConfig {
    /// The record goes to standard output (`file = "-"`).
    pub fn to_stdout(&self) -> bool {
        self.file.as_deref() == Some(std::path::Path::new("-"))
    }
}

/// `[policy_service]`: mxguard's policy decisions for Postfix, over the socketmap protocol
/// (`smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyServiceConfig {
    /// Where to answer, e.g. `127.0.0.1:8461`; unset: no policy service.
    pub listen: Option<SocketAddr>,
    /// Answer an MTA-STS policy in `testing` mode as if it were `enforce`
    /// (postfix-mta-sts-resolver's `strict_testing`).
    #[serde(default)]
    pub strict_testing: bool,
    /// Add `servername=hostname` to MTA-STS answers, so that Postfix sends SNI
    /// (postfix-mta-sts-resolver's `require_sni`).
    #[serde(default = "yes")]
    pub require_sni: bool,
    /// The most one look-up may take before it is answered `TEMP`.
    #[serde(
        default = "default_policy_service_timeout",
        deserialize_with = "super::duration"
    )]
    pub timeout: Duration,
}

fn yes() -> bool {
    true
}

fn default_policy_service_timeout() -> Duration {
    Duration::from_secs(4)
}

impl Default for PolicyServiceConfig {
    fn default() -> Self {
        PolicyServiceConfig {
            listen: None,
            strict_testing: false,
            require_sni: true,
            timeout: default_policy_service_timeout(),
        }
    }
}

/// Where the MTA-STS policy cache and the TLS-RPT counts live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    /// This node's own sled databases under `data_dir` (the default).
    #[default]
    Sled,
    /// Shared by every node on one Redis server, with the sled databases as each node's
    /// local copy.
    Redis,
}

/// `[cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub backend: CacheBackend,
    /// `redis://[user:password@]host:port/db`; needed with `backend = "redis"`.
    pub redis_url: Option<String>,
    /// Put before every Redis key, so that several fleets can share one server.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// The most one Redis call may take; beyond it the node goes on with its local copy.
    #[serde(
        default = "default_redis_timeout",
        deserialize_with = "super::duration"
    )]
    pub redis_timeout: Duration,
}

fn default_redis_prefix() -> String {
    "mxguard:".into()
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(500)
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: CacheBackend::Sled,
            redis_url: None,
            redis_prefix: default_redis_prefix(),
            redis_timeout: default_redis_timeout(),
        }
    }
}

impl CacheConfig {
    /// The shared store's settings, with `backend = "redis"`.
    pub fn shared(&self) -> Option<policy_cache::shared::SharedSettings> {
        match (self.backend, &self.redis_url) {
            (CacheBackend::Redis, Some(url)) => Some(policy_cache::shared::SharedSettings {
                url: url.clone(),
                prefix: self.redis_prefix.clone(),
                timeout: self.redis_timeout,
            }),
            _ => None,
        }
    }

    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        if self.backend == CacheBackend::Redis {
            let Some(url) = &self.redis_url else {
                return Err(super::ConfigError::key(
                    "cache.redis_url",
                    "needed with backend = \"redis\"",
                ));
            };
            redis::Client::open(url.as_str())
                .map_err(|e| super::ConfigError::key("cache.redis_url", e.to_string()))?;
        }
        if self.redis_timeout.is_zero() {
            return Err(super::ConfigError::key(
                "cache.redis_timeout",
                "must be positive",
            ));
        }
        Ok(())
    }
}
