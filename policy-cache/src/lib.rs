//! How must a mail domain be reached, and why.
//!
//! This crate answers that question for the delivery side of mxguard. Today it knows MTA-STS
//! (RFC 8461): a domain publishes a TXT record `_mta-sts.<domain>` announcing a policy and an
//! HTTPS-hosted policy file listing its MX hosts and a mode; senders cache the policy for its
//! `max_age` and, in `enforce` mode, deliver only to listed MX hosts over authenticated TLS.
//! DANE (RFC 7672) joins it later.
//!
//! - [`sts::record`]: the TXT record (`v=STSv1; id=…`);
//! - [`sts::policy`]: the policy file, its MX patterns and matching;
//! - [`sts::fetch`]: fetching the policy over HTTPS, with every RFC 8461 §3.3 restriction;
//! - [`store`]: the sled-backed cache that survives restarts (in memory while the database
//!   cannot be opened or written, e.g. on a full disk);
//! - [`PolicyCache`]: the rules that tie them together (when to fetch, what to keep).

pub mod clock;
pub mod crypto;
pub mod dane;
pub mod https_client;
pub mod shared;
pub mod store;
pub mod sts;

pub use clock::{Clock, ManualClock, SystemClock};
pub use sts::policy::{Mode, MxPattern, Policy};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What the cache knows about a domain's MTA-STS policy, for one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum StsLookup {
    /// The domain has no usable MTA-STS policy: deliver as without one. `reason` says why
    /// (no TXT record, an invalid TXT record, no policy could ever be fetched, expired).
    NoPolicy {
        reason: String,
        /// Set when the domain announces a policy that could not be had: a TLS-RPT failure
        /// of the domain's `sts` policy (RFC 8460 §4.3.1).
        fetch_failure: Option<FetchFailure>,
    },
    /// A valid policy applies.
    Policy(Arc<ActivePolicy>),
    /// We cannot tell now (the TXT lookup failed and nothing is cached): try again later.
    /// RFC 8461 §5: a DNS failure is not the absence of a policy.
    TempFail { reason: String },
}

/// Why an announced policy could not be had, in RFC 8460 §4.3.1's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailure {
    /// `sts-policy-fetch-error`, `sts-policy-invalid` or `sts-webpki-invalid`.
    pub result_type: &'static str,
    pub detail: String,
}

/// A policy in force, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivePolicy {
    pub domain: String,
    /// The `id` of the TXT record under which the policy was fetched.
    pub id: String,
    pub policy: Policy,
    pub fetched_at: SystemTime,
    pub expires_at: SystemTime,
}

/// Knobs of the cache and its fetcher; `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The policy host's HTTPS port: 443 (RFC 8461 §3.3); other values serve private test beds.
    pub https_port: u16,
    /// Extra PEM CA certificates trusted beside the Web PKI roots for policy hosts.
    pub extra_ca_files: Vec<std::path::PathBuf>,
    /// Connecting to the policy host.
    pub connect_timeout: Duration,
    /// The whole fetch, headers and body (RFC 8461 §3.3 asks for a reasonable limit).
    pub fetch_timeout: Duration,
    /// `http://host:port` of an HTTPS proxy (CONNECT); `None` connects directly.
    pub proxy: Option<String>,
    /// How long a failed first fetch is remembered, so a broken domain is not refetched for
    /// every message.
    pub negative_ttl: Duration,
    /// Entries not used for this long are dropped (and no longer refreshed).
    pub unused_after: Duration,
    /// Simultaneous background refreshes.
    pub refresh_concurrency: usize,
    /// A store shared with the other nodes of a fleet (Redis); `None` for a single node.
    pub shared: Option<shared::SharedSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            https_port: 443,
            extra_ca_files: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(30),
            proxy: None,
            negative_ttl: Duration::from_secs(300),
            unused_after: Duration::from_secs(30 * 86400),
            refresh_concurrency: 4,
            shared: None,
        }
    }
}

/// A policy failure seen in `testing` mode (or while enforcing), kept for TLS-RPT (RFC 8460).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailureRecord {
    pub domain: String,
    pub policy_id: String,
    pub mode: String,
    /// The MX host where it happened.
    pub mx_host: String,
    /// RFC 8460 §4.3 result type, e.g. `certificate-host-mismatch`, `starttls-not-supported`,
    /// `validation-failure`.
    pub result_type: String,
    pub detail: String,
    pub at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("policy cache: {0}")]
    Db(String),
    #[error("policy fetcher: {0}")]
    Setup(String),
}

/// The MTA-STS policy cache: discovery, fetch, persistence and refresh (RFC 8461 §3–§5).
pub struct PolicyCache {
    inner: cache::Inner,
}

mod cache;

pub use cache::RefreshSummary;

/// Told of each policy fetch's outcome (see [`PolicyCache::observe_fetches`]).
pub type FetchObserver = Arc<dyn Fn(&'static str) + Send + Sync>;

impl PolicyCache {
    /// Opens (creating) the sled database under `dir`; `resolver` answers TXT and address
    /// queries (the policy host is resolved through it, not the system resolver). A database
    /// that cannot be opened (a full disk) is no error: the cache then works from memory and
    /// moves to the database once it opens (see [`store`]).
    ///
    /// Fails only when the policy fetcher cannot be set up (`extra_ca_files`, `proxy`).
    pub fn open(
        dir: &std::path::Path,
        resolver: hickory_resolver::TokioResolver,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<PolicyCache, CacheError> {
        cache::Inner::open(dir, resolver, settings, clock).map(|inner| PolicyCache { inner })
    }

    /// True while the cache works from memory because its database cannot be opened or
    /// written (see [`store`]); what it learns meanwhile is copied into the database once it
    /// opens. A command-line tool that reports or edits the database should refuse then.
    pub fn in_memory(&self) -> bool {
        self.inner.in_memory()
    }

    /// How many domains have a policy cached (in memory, which mirrors the database).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// True when no policy is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Has `observer` told of every policy fetch's outcome from now on: `ok`, or the RFC 8460
    /// result type of the failure (`sts-policy-fetch-error`, `sts-policy-invalid`,
    /// `sts-webpki-invalid`). For metrics; set once (a second call is ignored).
    pub fn observe_fetches(&self, observer: FetchObserver) {
        self.inner.observe_fetches(observer)
    }

    /// The policy to apply to a delivery to `domain` now (RFC 8461 §5.1): checks the TXT id,
    /// fetches when needed, falls back on the cache as the RFC says.
    pub async fn lookup(&self, domain: &str) -> StsLookup {
        self.inner.lookup(domain).await
    }

    /// Fetches the policy now, whatever the cache holds (operator command, and the re-check
    /// before a policy failure becomes final, RFC 8461 §5.1).
    pub async fn refresh(&self, domain: &str) -> StsLookup {
        self.inner.refresh(domain).await
    }

    /// Drops everything cached for `domain`; true if there was something.
    pub fn forget(&self, domain: &str) -> Result<bool, CacheError> {
        Ok(self.inner.forget(domain))
    }

    /// A human-readable account of what is cached for `domain` and why (`mxguard policy show`).
    pub fn show(&self, domain: &str) -> String {
        self.inner.show(domain)
    }

    /// Records a policy failure (for TLS-RPT; shown by `show`).
    pub fn record_failure(&self, failure: FailureRecord) {
        self.inner.record_failure(failure)
    }

    /// The failures recorded for `domain`, oldest first.
    pub fn failures(&self, domain: &str) -> Vec<FailureRecord> {
        self.inner.failures(domain)
    }

    /// Refreshes cached policies in the background before they expire, spread out over time,
    /// with bounded concurrency; drops entries unused for `unused_after`. Runs until
    /// `shutdown` turns true.
    pub async fn run_refresher(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        self.inner.run_refresher(shutdown).await
    }

    /// One pass of the refresher, now: drops unused entries, refetches the policies whose
    /// refresh time has come. `run_refresher` runs this every minute.
    pub async fn refresh_due(&self) -> RefreshSummary {
        self.inner.refresh_due().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk (here: a path under a regular file, which no database can have) does not
    /// stop the cache from opening; what it learns is kept in memory.
    #[tokio::test]
    async fn opens_in_memory_when_the_database_cannot_be_opened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let blocker = tmp.path().join("not-a-dir");
        std::fs::write(&blocker, b"a file").expect("write");
        let resolver = hickory_resolver::TokioResolver::builder_with_config(
            hickory_resolver::config::ResolverConfig::from_parts(None, vec![], vec![]),
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .build()
        .expect("resolver");
        let cache = PolicyCache::open(
            &blocker.join("policy-cache"),
            resolver,
            Settings::default(),
            Arc::new(SystemClock),
        )
        .expect("a cache in memory");
        assert!(cache.in_memory());
        cache.record_failure(FailureRecord {
            domain: "Example.TEST".into(),
            policy_id: "1".into(),
            mode: "testing".into(),
            mx_host: "mx.example.test".into(),
            result_type: "validation-failure".into(),
            detail: "kept in memory".into(),
            at: SystemTime::UNIX_EPOCH,
        });
        assert_eq!(cache.failures("example.test").len(), 1);
        assert!(cache.show("example.test").contains("kept in memory"));
        assert!(!cache.forget("example.test").expect("forget"));
    }
}
