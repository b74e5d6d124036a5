//! The configuration of the pieces a fleet of relays needs, each off unless configured:
//! `[metrics]` (Prometheus), `[compliance]` (the JSON delivery record) and `[policy_service]`
//! (a socketmap for Postfix's `smtp_tls_policy_maps`).

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
