//! Configuration: one TOML file, every key optional with a default, names following Postfix's
//! where Postfix has one. Unknown keys and bad values stop start-up with an error that names
//! the key (`listener[0].address: …`), because a typo in a relay's policy must never be silently
//! ignored. The example in `deploy/mxguard.toml` documents every key.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::tls::settings::{CipherSuites, KxGroups, Protocols, TlsProfile};

mod fleet;
pub use fleet::{CacheBackend, CacheConfig, ComplianceConfig, MetricsConfig, PolicyServiceConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The reason is part of the message, not a `source`: `{:#}` would print it twice.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A key with a bad value or an unknown key; `key` is its dotted path in the file.
    #[error("{key}: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Our name in EHLO, `Received:` and the DSN's Reporting-MTA.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Holds `spool/` and `policy-cache/`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_listeners", rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub smtpd: SmtpdConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub mta_sts: MtaStsConfig,
    #[serde(default)]
    pub tlsrpt: TlsRptConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub compliance: ComplianceConfig,
    #[serde(default)]
    pub policy_service: PolicyServiceConfig,
    #[serde(default)]
    pub cache: CacheConfig,
}

/// One inbound SMTP listener. Each has its own address and TLS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// PEM certificate chain; with `tls_key`, enables STARTTLS (or implicit TLS).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// TLS from the first byte (the port 465 style, RFC 8314) instead of STARTTLS.
    #[serde(default)]
    pub implicit_tls: bool,
    /// The least TLS every message accepted here is delivered with (a forced-encryption
    /// listener for chosen senders: `encrypt`); stored with the message.
    pub min_level: Option<crate::tls_policy::TlsLevel>,
    /// TLS versions for STARTTLS sessions that are optional here (`smtpd_tls_protocols`).
    #[serde(default, deserialize_with = "crate::tls::settings::protocols")]
    pub tls_protocols: Protocols,
    /// TLS versions where TLS is mandatory: AUTH is offered, `implicit_tls`, or a
    /// `min_level` of `encrypt` or above (`smtpd_tls_mandatory_protocols`).
    #[serde(default, deserialize_with = "crate::tls::settings::protocols")]
    pub tls_mandatory_protocols: Protocols,
    /// Cipher suites by IANA name, in order of preference; default: rustls's.
    #[serde(default, deserialize_with = "crate::tls::settings::cipher_suites")]
    pub tls_cipher_suites: CipherSuites,
    /// Key-exchange groups by IANA name, in order of preference; default: rustls's
    /// (X25519MLKEM768, x25519, secp256r1, secp384r1).
    #[serde(default, deserialize_with = "crate::tls::settings::kx_groups")]
    pub tls_groups: KxGroups,
    /// Choose the cipher suite by our order rather than the client's
    /// (`tls_preempt_cipherlist`).
    #[serde(default)]
    pub tls_preempt_cipherlist: bool,
}

impl ListenerConfig {
    /// Whether TLS is mandatory on this listener, so that `tls_mandatory_protocols` applies:
    /// AUTH is offered (`auth`: only after TLS), TLS from the first byte, or mail accepted
    /// here must leave encrypted.
    pub fn tls_mandatory(&self, auth: bool) -> bool {
        auth || self.implicit_tls || self.min_level.is_some_and(|l| l.requires_encryption())
    }

    /// The TLS versions, suites and groups of this listener's sessions.
    pub fn tls_profile(&self, auth: bool) -> Result<TlsProfile, (&'static str, String)> {
        let protocols = if self.tls_mandatory(auth) {
            self.tls_mandatory_protocols
        } else {
            self.tls_protocols
        };
        TlsProfile::new(protocols, &self.tls_cipher_suites, &self.tls_groups)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Clients in these networks may relay without authentication (Postfix's `mynetworks`).
    #[serde(default = "default_mynetworks")]
    pub mynetworks: Vec<IpNet>,
    /// `user:$argon2id$…` lines; enables AUTH PLAIN/LOGIN after TLS.
    pub auth_users_file: Option<PathBuf>,
}

/// Limits of the inbound SMTP server (Postfix's `smtpd_*` and `message_size_limit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpdConfig {
    /// Largest message accepted, in bytes; advertised with SIZE (RFC 1870).
    #[serde(default = "default_message_size_limit")]
    pub message_size_limit: u64,
    /// Most recipients in one transaction (RFC 5321 §4.5.3.1.8 asks for at least 100).
    #[serde(default = "default_recipient_limit")]
    pub recipient_limit: usize,
    /// How long a client command may take to arrive, the whole line (RFC 5321 §4.5.3.2.7:
    /// at least 5 minutes).
    #[serde(default = "default_smtpd_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// How long the whole DATA transfer may take.
    #[serde(default = "default_data_timeout", deserialize_with = "duration")]
    pub data_timeout: Duration,
    /// Simultaneous client connections over all listeners; more get `421 4.3.2`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Errors (4xx/5xx replies) after which a session is closed (Postfix's `smtpd_hard_error_limit`).
    #[serde(default = "default_hard_error_limit")]
    pub hard_error_limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnssecMode {
    /// Validate in-process from a trust anchor.
    Validate,
    /// Trust the AD bit of a local validating resolver.
    TrustAd,
    /// No DNSSEC and so no DANE: every answer counts as insecure.
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `ip:port` or `ip` (port 53). Empty: the system's `/etc/resolv.conf`.
    #[serde(default, deserialize_with = "nameservers")]
    pub nameservers: Vec<SocketAddr>,
    #[serde(default = "default_dnssec")]
    pub dnssec: DnssecMode,
    pub trust_anchor_file: Option<PathBuf>,
    /// `trust-ad` trusts the AD bit only from loopback name servers (the path from a remote
    /// one can be forged); `true` allows a remote one the operator trusts (e.g. over IPsec).
    #[serde(default)]
    pub trust_ad_remote: bool,
    /// Time for one query before it counts as a temporary failure.
    #[serde(default = "default_dns_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// DNS responses kept in memory (within their TTLs). Every message looks up MX, address and
    /// `_mta-sts` records of its domain; a relay serving many domains wants room for them all.
    #[serde(default = "default_dns_cache_size")]
    pub cache_size: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Port of MX hosts (25; the lab uses others).
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// Extra PEM CA certificates trusted beside the Web PKI roots.
    #[serde(default)]
    pub extra_ca_files: Vec<PathBuf>,
    /// Postfix `pcre:`-syntax rules applied to every failed delivery's status
    /// (`smtp_delivery_status_filter`; see `dsn::status_filter`).
    pub status_filter: Option<PathBuf>,
    /// Per address (Postfix's `smtp_connect_timeout`).
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Greeting, EHLO, MAIL, RCPT, DATA replies (Postfix's `smtp_*_timeout`, 300 s).
    #[serde(default = "default_command_timeout", deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// Sending the message and waiting for the final reply (`smtp_data_done_timeout`, 600 s).
    #[serde(default = "default_data_timeout", deserialize_with = "duration")]
    pub data_timeout: Duration,
    /// Simultaneous outbound SMTP sessions.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Minimum TLS levels by recipient domain (`domain level`, `.domain level` lines), like
    /// Postfix's `smtp_tls_policy_maps`; reread when it changes.
    pub tls_policy_file: Option<PathBuf>,
    /// Minimum TLS levels by envelope sender (`address level`, `@domain level` lines), the
    /// "forceenc" recipe; reread when it changes or on SIGHUP.
    pub sender_tls_policy_file: Option<PathBuf>,
    /// RFC 6152 §3: for a server that does not offer 8BITMIME, re-encode the 8-bit body parts
    /// of a `BODY=8BITMIME` message as quoted-printable; false sends the 8-bit octets as they
    /// are (Postfix's `disable_mime_output_conversion = yes`).
    #[serde(default = "default_true")]
    pub mime_output_conversion: bool,
    /// Keep sessions open after a transaction for the next message to the same host under
    /// the same requirement (`smtp_connection_cache_on_demand`, roughly).
    #[serde(default = "default_true")]
    pub connection_reuse: bool,
    /// Time an idle session waits in the pool (`smtp_connection_cache_time_limit`).
    #[serde(
        default = "default_connection_cache_time_limit",
        deserialize_with = "duration"
    )]
    pub connection_cache_time_limit: Duration,
    /// Transactions one session may carry; 0: no limit (`smtp_connection_reuse_count_limit`).
    #[serde(default)]
    pub connection_reuse_count_limit: u32,
    /// A session older than this is not reused (`smtp_connection_reuse_time_limit`).
    #[serde(
        default = "default_connection_reuse_time_limit",
        deserialize_with = "duration"
    )]
    pub connection_reuse_time_limit: Duration,
    /// Sessions at once to one destination, at most (`default_destination_concurrency_limit`).
    #[serde(default = "default_destination_concurrency_limit")]
    pub destination_concurrency_limit: usize,
    /// Sessions at once to a destination not heard from yet, or recovering from failures
    /// (`initial_destination_concurrency`); grows by one per success up to the limit.
    #[serde(default = "default_initial_destination_concurrency")]
    pub initial_destination_concurrency: usize,
    /// Failed cohorts (a window's worth of sessions that all failed to connect or were refused
    /// with 421) after which a destination is marked dead until `queue.min_backoff` has passed
    /// (`default_destination_concurrency_failed_cohort_limit`).
    #[serde(default = "default_failed_cohort_limit")]
    pub destination_concurrency_failed_cohort_limit: u32,
    /// Pause between deliveries to one destination; when set, one session at a time
    /// (`default_destination_rate_delay`). Default 0: no pause.
    #[serde(default, deserialize_with = "duration")]
    pub destination_rate_delay: Duration,
    /// TLS versions for opportunistic sessions: `may`, MTA-STS `testing`
    /// (`smtp_tls_protocols`). Postfix's syntax: `">=TLSv1.2"`, `"!TLSv1.2"`, a list.
    #[serde(default, deserialize_with = "crate::tls::settings::protocols")]
    pub tls_protocols: Protocols,
    /// TLS versions for sessions that must be encrypted: `encrypt` and above, DANE, MTA-STS
    /// `enforce`, REQUIRETLS (`smtp_tls_mandatory_protocols`).
    #[serde(default, deserialize_with = "crate::tls::settings::protocols")]
    pub tls_mandatory_protocols: Protocols,
    /// Cipher suites by IANA name, in order of preference; default: rustls's.
    #[serde(default, deserialize_with = "crate::tls::settings::cipher_suites")]
    pub tls_cipher_suites: CipherSuites,
    /// Key-exchange groups by IANA name; the first gets a key share in the ClientHello.
    /// Default: rustls's, X25519MLKEM768 first.
    #[serde(default, deserialize_with = "crate::tls::settings::kx_groups")]
    pub tls_groups: KxGroups,
}

impl DeliveryConfig {
    /// The opportunistic and the mandatory TLS profile of outbound sessions.
    pub fn tls_profiles(&self) -> Result<(TlsProfile, TlsProfile), (&'static str, String)> {
        let build = |p| TlsProfile::new(p, &self.tls_cipher_suites, &self.tls_groups);
        Ok((
            build(self.tls_protocols)?,
            build(self.tls_mandatory_protocols)?,
        ))
    }
}

/// A static next hop, like a Postfix transport map entry `domain smtp:[host]:port`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A recipient domain, or `*` for every domain not routed otherwise.
    pub domain: String,
    /// `[host]:port` (no MX lookup) or `host:port` / `host` (MX lookup of host).
    pub next_hop: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// After this, an undeliverable recipient bounces (Postfix's `maximal_queue_lifetime`).
    #[serde(default = "default_max_lifetime", deserialize_with = "duration")]
    pub max_lifetime: Duration,
    /// First retry delay, doubled each attempt (`minimal_backoff_time`).
    #[serde(default = "default_min_backoff", deserialize_with = "duration")]
    pub min_backoff: Duration,
    /// Retry delays never exceed this (`maximal_backoff_time`).
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// Send a "delayed" DSN once a recipient has waited this long; 0 disables
    /// (`delay_warning_time`).
    #[serde(default, deserialize_with = "duration")]
    pub delay_warning: Duration,
    /// Messages in the scheduler's active set at once; the rest wait on disk until due
    /// (`qmgr_message_active_limit`). At least 1.
    #[serde(default = "default_active_limit")]
    pub active_limit: usize,
    /// Bytes that must stay free on the spool's file system, beyond the size a client declares
    /// on MAIL FROM; below it MAIL gets `452 4.3.1`. 0 disables the check.
    #[serde(default = "default_min_free")]
    pub min_free: u64,
}

/// MTA-STS (RFC 8461): discovery, fetching and caching of policies. Policy hosts are verified
/// against the Web PKI roots plus `delivery.extra_ca_files`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtaStsConfig {
    /// Look up and enforce MTA-STS policies.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The policy hosts' HTTPS port: 443 per RFC 8461; another value serves private test beds.
    #[serde(default = "default_https_port")]
    pub https_port: u16,
    /// `http://host:port` of an HTTPS proxy for policy fetches; unset: connect directly.
    pub proxy: Option<String>,
    #[serde(default = "default_sts_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// The whole fetch, headers and body.
    #[serde(default = "default_sts_fetch_timeout", deserialize_with = "duration")]
    pub fetch_timeout: Duration,
    /// How long a failed first fetch is remembered before the domain is tried again.
    #[serde(default = "default_sts_negative_ttl", deserialize_with = "duration")]
    pub negative_ttl: Duration,
    /// Cached policies not used for this long are dropped instead of refreshed.
    #[serde(default = "default_sts_unused_after", deserialize_with = "duration")]
    pub unused_after: Duration,
    /// Simultaneous background refreshes.
    #[serde(default = "default_sts_refresh_concurrency")]
    pub refresh_concurrency: usize,
}

fn default_true() -> bool {
    true
}
fn default_https_port() -> u16 {
    443
}
fn default_sts_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_sts_fetch_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_sts_negative_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_sts_unused_after() -> Duration {
    Duration::from_secs(30 * 86400)
}
fn default_sts_refresh_concurrency() -> usize {
    4
}

/// TLS-RPT (RFC 8460): counting every session's TLS outcome and sending the reports the
/// destinations ask for in their `_smtp._tls` records. Off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRptConfig {
    #[serde(default)]
    pub enabled: bool,
    /// `organization-name`; default: the submitter domain.
    pub organization_name: Option<String>,
    /// `contact-info` (never null); default: `postmaster@<submitter>`.
    pub contact_info: Option<String>,
    /// The submitting domain (`TLS-Report-Submitter`, DKIM `d=`); default: `hostname`
    /// without its first label.
    pub submitter: Option<String>,
    /// The report mail's sender; default: `tlsrpt-noreply@<submitter>`.
    pub from: Option<String>,
    /// The aggregation period: one UTC day, or a length that divides a day.
    #[serde(default = "default_tlsrpt_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// Reports go out after a random delay of up to this, once their period is over
    /// (RFC 8460 §4.4: spread the load on receivers).
    #[serde(
        default = "default_tlsrpt_send_delay_max",
        deserialize_with = "duration"
    )]
    pub send_delay_max: Duration,
    /// Report only periods with failures (no "heartbeat" reports of successes alone).
    #[serde(default)]
    pub only_failures: bool,
    /// How long an `https:` report is retried before it is given up (mail is retried by
    /// the queue, under `queue.max_lifetime`).
    #[serde(
        default = "default_tlsrpt_give_up_after",
        deserialize_with = "duration"
    )]
    pub give_up_after: Duration,
    /// The HTTPS POST of one report, connection to answer.
    #[serde(default = "default_tlsrpt_post_timeout", deserialize_with = "duration")]
    pub post_timeout: Duration,
    /// PEM private key (RSA or Ed25519) that signs report mail (RFC 8460 §5.3: receivers
    /// discard unsigned reports).
    pub dkim_key_file: Option<PathBuf>,
    /// The DKIM selector (`s=`); the key's TXT record is `<selector>._domainkey.<domain>`.
    #[serde(default = "default_dkim_selector")]
    pub dkim_selector: String,
    /// The DKIM signing domain (`d=`); default: the submitter.
    pub dkim_domain: Option<String>,
}

fn default_tlsrpt_interval() -> Duration {
    Duration::from_secs(86_400)
}
fn default_tlsrpt_send_delay_max() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_tlsrpt_give_up_after() -> Duration {
    Duration::from_secs(86_400)
}
fn default_tlsrpt_post_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_dkim_selector() -> String {
    "tlsrpt".into()
}

impl Default for TlsRptConfig {
    fn default() -> Self {
        TlsRptConfig {
            enabled: false,
            organization_name: None,
            contact_info: None,
            submitter: None,
            from: None,
            interval: default_tlsrpt_interval(),
            send_delay_max: default_tlsrpt_send_delay_max(),
            only_failures: false,
            give_up_after: default_tlsrpt_give_up_after(),
            post_timeout: default_tlsrpt_post_timeout(),
            dkim_key_file: None,
            dkim_selector: default_dkim_selector(),
            dkim_domain: None,
        }
    }
}

impl TlsRptConfig {
    /// The submitting domain: `submitter`, or `hostname` without its first label.
    pub fn submitter(&self, hostname: &str) -> String {
        match &self.submitter {
            Some(s) => s.to_ascii_lowercase(),
            None => match hostname.split_once('.') {
                Some((_, rest)) if rest.contains('.') => rest.to_ascii_lowercase(),
                _ => hostname.to_ascii_lowercase(),
            },
        }
    }

    pub fn contact_info(&self, hostname: &str) -> String {
        self.contact_info
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", self.submitter(hostname)))
    }

    pub fn organization_name(&self, hostname: &str) -> String {
        self.organization_name
            .clone()
            .unwrap_or_else(|| self.submitter(hostname))
    }

    pub fn from(&self, hostname: &str) -> String {
        self.from
            .clone()
            .unwrap_or_else(|| format!("tlsrpt-noreply@{}", self.submitter(hostname)))
    }

    fn validate(&self, hostname: &str) -> Result<(), ConfigError> {
        let secs = self.interval.as_secs();
        if secs == 0 || 86_400 % secs != 0 || self.interval.subsec_nanos() != 0 {
            return Err(ConfigError::key(
                "tlsrpt.interval",
                "must divide a day into whole seconds (1d, 6h, 1h, 10m, …)",
            ));
        }
        // The contact's domain must be the submitter's (or below it), so that a report
        // cannot claim to come from someone else's postmaster.
        let submitter = self.submitter(hostname);
        let contact = self.contact_info(hostname);
        let contact_domain = contact
            .rsplit_once('@')
            .map_or(contact.as_str(), |(_, d)| d)
            .trim_end_matches('>')
            .to_ascii_lowercase();
        let within =
            contact_domain == submitter || contact_domain.ends_with(&format!(".{submitter}"));
        if self.enabled && contact.contains('@') && !within {
            return Err(ConfigError::key(
                "tlsrpt.contact_info",
                format!("{contact:?} is not an address of the submitter domain {submitter}"),
            ));
        }
        Ok(())
    }
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            enabled: true,
            https_port: default_https_port(),
            proxy: None,
            connect_timeout: default_sts_connect_timeout(),
            fetch_timeout: default_sts_fetch_timeout(),
            negative_ttl: default_sts_negative_ttl(),
            unused_after: default_sts_unused_after(),
            refresh_concurrency: default_sts_refresh_concurrency(),
        }
    }
}

fn default_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./var")
}
fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig {
        address: SocketAddr::from(([127, 0, 0, 1], 10025)),
        tls_cert: None,
        tls_key: None,
        implicit_tls: false,
        min_level: None,
        tls_protocols: Protocols::default(),
        tls_mandatory_protocols: Protocols::default(),
        tls_cipher_suites: CipherSuites::default(),
        tls_groups: KxGroups::default(),
        tls_preempt_cipherlist: false,
    }]
}
fn default_mynetworks() -> Vec<IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("literal"),
        "::1/128".parse().expect("literal"),
    ]
}
fn default_message_size_limit() -> u64 {
    10_240_000
}
fn default_recipient_limit() -> usize {
    1000
}
fn default_smtpd_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_data_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_connection_cache_time_limit() -> Duration {
    Duration::from_secs(5)
}
fn default_connection_reuse_time_limit() -> Duration {
    Duration::from_secs(300)
}
fn default_destination_concurrency_limit() -> usize {
    20
}
fn default_initial_destination_concurrency() -> usize {
    5
}
fn default_failed_cohort_limit() -> u32 {
    1
}
fn default_max_connections() -> usize {
    100
}
fn default_hard_error_limit() -> u32 {
    20
}
fn default_dnssec() -> DnssecMode {
    DnssecMode::Validate
}
fn default_dns_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_dns_cache_size() -> u64 {
    32_768
}
fn default_smtp_port() -> u16 {
    25
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_concurrency() -> usize {
    100
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(5 * 86400)
}
fn default_min_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(4000)
}
fn default_active_limit() -> usize {
    20_000
}
fn default_min_free() -> u64 {
    100 * 1024 * 1024
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            mynetworks: default_mynetworks(),
            auth_users_file: None,
        }
    }
}
impl Default for SmtpdConfig {
    fn default() -> Self {
        SmtpdConfig {
            message_size_limit: default_message_size_limit(),
            recipient_limit: default_recipient_limit(),
            timeout: default_smtpd_timeout(),
            data_timeout: default_data_timeout(),
            max_connections: default_max_connections(),
            hard_error_limit: default_hard_error_limit(),
        }
    }
}
impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            dnssec: default_dnssec(),
            trust_anchor_file: None,
            trust_ad_remote: false,
            timeout: default_dns_timeout(),
            cache_size: default_dns_cache_size(),
        }
    }
}
impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            smtp_port: default_smtp_port(),
            extra_ca_files: Vec::new(),
            status_filter: None,
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            max_concurrency: default_max_concurrency(),
            tls_policy_file: None,
            sender_tls_policy_file: None,
            mime_output_conversion: true,
            connection_reuse: true,
            connection_cache_time_limit: default_connection_cache_time_limit(),
            connection_reuse_count_limit: 0,
            connection_reuse_time_limit: default_connection_reuse_time_limit(),
            destination_concurrency_limit: default_destination_concurrency_limit(),
            initial_destination_concurrency: default_initial_destination_concurrency(),
            destination_concurrency_failed_cohort_limit: default_failed_cohort_limit(),
            destination_rate_delay: Duration::ZERO,
            tls_protocols: Protocols::default(),
            tls_mandatory_protocols: Protocols::default(),
            tls_cipher_suites: CipherSuites::default(),
            tls_groups: KxGroups::default(),
        }
    }
}
impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_lifetime: default_max_lifetime(),
            min_backoff: default_min_backoff(),
            max_backoff: default_max_backoff(),
            delay_warning: Duration::ZERO,
            active_limit: default_active_limit(),
            min_free: default_min_free(),
        }
    }
}
impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: default_hostname(),
            data_dir: default_data_dir(),
            listeners: default_listeners(),
            access: AccessConfig::default(),
            smtpd: SmtpdConfig::default(),
            dns: DnsConfig::default(),
            delivery: DeliveryConfig::default(),
            routes: Vec::new(),
            queue: QueueConfig::default(),
            mta_sts: MtaStsConfig::default(),
            tlsrpt: TlsRptConfig::default(),
            metrics: MetricsConfig::default(),
            compliance: ComplianceConfig::default(),
            policy_service: PolicyServiceConfig::default(),
            cache: CacheConfig::default(),
        }
    }
}

/// Durations as operators write them: `300s`, `5m`, `4h`, `5d`, or a bare number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| format!("bad duration {text:?}: {e}"))
}

fn nameservers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| {
                    s.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| serde::de::Error::custom(format!("bad nameserver address {s:?}")))
        })
        .collect()
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates TOML text; the error names the offending key.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().to_string();
            ConfigError::key(if key == "." { "config".into() } else { key }, message)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: files that must be readable, values that must agree.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(ConfigError::key("hostname", "must be a host name"));
        }
        if self.listeners.is_empty() {
            return Err(ConfigError::key(
                "listener",
                "at least one listener is needed",
            ));
        }
        let auth = self.access.auth_users_file.is_some();
        for (i, l) in self.listeners.iter().enumerate() {
            let profile = l
                .tls_profile(auth)
                .map_err(|(key, e)| ConfigError::key(format!("listener[{i}].{key}"), e))?;
            match (&l.tls_cert, &l.tls_key) {
                (Some(cert), Some(key)) => {
                    crate::tls::server_config(cert, key, &profile, l.tls_preempt_cipherlist)
                        .map_err(|e| {
                            ConfigError::key(format!("listener[{i}].tls_cert"), e.to_string())
                        })?;
                }
                (Some(_), None) => {
                    return Err(ConfigError::key(
                        format!("listener[{i}].tls_key"),
                        "tls_cert is set but tls_key is missing",
                    ))
                }
                (None, Some(_)) => {
                    return Err(ConfigError::key(
                        format!("listener[{i}].tls_cert"),
                        "tls_key is set but tls_cert is missing",
                    ))
                }
                (None, None) if l.implicit_tls => {
                    return Err(ConfigError::key(
                        format!("listener[{i}].implicit_tls"),
                        "implicit TLS needs tls_cert and tls_key",
                    ))
                }
                (None, None) => {}
            }
        }
        if let Some(file) = &self.access.auth_users_file {
            std::fs::metadata(file).map_err(|e| {
                ConfigError::key("access.auth_users_file", format!("{}: {e}", file.display()))
            })?;
        }
        self.delivery
            .tls_profiles()
            .map_err(|(key, e)| ConfigError::key(format!("delivery.{key}"), e))?;
        for (i, file) in self.delivery.extra_ca_files.iter().enumerate() {
            crate::tls::read_certs(file).map_err(|e| {
                ConfigError::key(format!("delivery.extra_ca_files[{i}]"), e.to_string())
            })?;
        }
        if let Some(file) = &self.delivery.status_filter {
            // The same loader the scheduler uses, so a bad rule stops start-up (and
            // `check-config`) rather than the first failed delivery.
            crate::dsn::status_filter::StatusFilter::load(file)
                .map_err(|e| ConfigError::key("delivery.status_filter", e.to_string()))?;
        }
        use crate::tls_policy::{DestinationTable, SenderTable, Table, TlsLevel};
        // `dane-only` cannot be met without DNSSEC: say so now rather than defer mail forever.
        let dane_only_needs_dnssec = |key: &str, uses: bool| {
            if uses && self.dns.dnssec == DnssecMode::Off {
                return Err(ConfigError::key(
                    key,
                    "dane-only needs DNSSEC, but dns.dnssec is \"off\"",
                ));
            }
            Ok(())
        };
        if let Some(file) = &self.delivery.tls_policy_file {
            let table = DestinationTable::load(file)
                .map_err(|e| ConfigError::key("delivery.tls_policy_file", e.to_string()))?;
            dane_only_needs_dnssec("delivery.tls_policy_file", table.uses(TlsLevel::DaneOnly))?;
        }
        if let Some(file) = &self.delivery.sender_tls_policy_file {
            let table = SenderTable::load(file)
                .map_err(|e| ConfigError::key("delivery.sender_tls_policy_file", e.to_string()))?;
            dane_only_needs_dnssec(
                "delivery.sender_tls_policy_file",
                table.uses(TlsLevel::DaneOnly),
            )?;
        }
        for (i, l) in self.listeners.iter().enumerate() {
            dane_only_needs_dnssec(
                &format!("listener[{i}].min_level"),
                l.min_level == Some(TlsLevel::DaneOnly),
            )?;
        }
        if let Some(file) = &self.dns.trust_anchor_file {
            crate::dnssec::anchors::load_trust_anchors(file)
                .map_err(|e| ConfigError::key("dns.trust_anchor_file", e.to_string()))?;
        }
        // Empty nameservers (resolv.conf) are checked when the resolver is built at start-up.
        if self.dns.dnssec == DnssecMode::TrustAd {
            trust_ad_servers_allowed(&self.dns.nameservers, self.dns.trust_ad_remote)
                .map_err(|e| ConfigError::key("dns.nameservers", e))?;
        }
        for (i, r) in self.routes.iter().enumerate() {
            crate::next_hop::NextHop::parse(&r.next_hop)
                .map_err(|e| ConfigError::key(format!("route[{i}].next_hop"), e))?;
            if r.domain.is_empty() || r.domain.contains(char::is_whitespace) {
                return Err(ConfigError::key(
                    format!("route[{i}].domain"),
                    "must be a domain or \"*\"",
                ));
            }
        }
        self.tlsrpt.validate(&self.hostname)?;
        self.cache.validate()?;
        if self.queue.min_backoff.is_zero() || self.queue.max_backoff < self.queue.min_backoff {
            return Err(ConfigError::key(
                "queue.max_backoff",
                "min_backoff must be positive and not above max_backoff",
            ));
        }
        if self.queue.active_limit == 0 {
            return Err(ConfigError::key("queue.active_limit", "must be at least 1"));
        }
        if self.delivery.max_concurrency == 0 {
            return Err(ConfigError::key(
                "delivery.max_concurrency",
                "must be at least 1",
            ));
        }
        let d = &self.delivery;
        if d.destination_concurrency_limit == 0 || d.initial_destination_concurrency == 0 {
            return Err(ConfigError::key(
                "delivery.destination_concurrency_limit",
                "destination_concurrency_limit and initial_destination_concurrency must be at \
                 least 1",
            ));
        }
        if d.destination_concurrency_failed_cohort_limit == 0 {
            return Err(ConfigError::key(
                "delivery.destination_concurrency_failed_cohort_limit",
                "must be at least 1",
            ));
        }
        if let Some(proxy) = &self.mta_sts.proxy {
            if !(proxy.starts_with("http://") || proxy.starts_with("https://")) {
                return Err(ConfigError::key(
                    "mta_sts.proxy",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if self.smtpd.max_connections == 0 {
            return Err(ConfigError::key(
                "smtpd.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    pub fn policy_cache_dir(&self) -> PathBuf {
        self.data_dir.join("policy-cache")
    }

    /// The policy cache's settings from `[mta_sts]` and `delivery.extra_ca_files`.
    pub fn policy_settings(&self) -> policy_cache::Settings {
        let m = &self.mta_sts;
        policy_cache::Settings {
            https_port: m.https_port,
            extra_ca_files: self.delivery.extra_ca_files.clone(),
            connect_timeout: m.connect_timeout,
            fetch_timeout: m.fetch_timeout,
            proxy: m.proxy.clone(),
            negative_ttl: m.negative_ttl,
            unused_after: m.unused_after,
            refresh_concurrency: m.refresh_concurrency.max(1),
            shared: self.cache.shared(),
        }
    }
}

/// The rule of `dns.dnssec = "trust-ad"`: every name server on loopback, unless
/// `allow_remote`. The error names the setting; the resolver applies the same rule at start-up.
pub fn trust_ad_servers_allowed(servers: &[SocketAddr], allow_remote: bool) -> Result<(), String> {
    match servers.iter().find(|s| !s.ip().is_loopback()) {
        Some(remote) if !allow_remote => Err(format!(
            "name server {remote} is not a loopback address: trust-ad trusts the AD bit \
             only from a loopback resolver; the path to a remote one can be forged \
             (set dns.trust_ad_remote = true only for a path you protect, e.g. IPsec)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:10025");
        assert_eq!(c.data_dir, PathBuf::from("./var"));
        assert_eq!(c.queue.max_lifetime, Duration::from_secs(5 * 86400));
        assert_eq!(c.delivery.smtp_port, 25);
        assert!(c
            .access
            .mynetworks
            .iter()
            .any(|n| n.contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap())));
    }

    #[test]
    fn tlsrpt_keys_default_from_the_hostname_and_are_checked() {
        let c = Config::from_toml("hostname = \"relay.example.org\"\n[tlsrpt]\nenabled = true\n")
            .unwrap();
        let t = &c.tlsrpt;
        assert_eq!(t.submitter(&c.hostname), "example.org");
        assert_eq!(t.contact_info(&c.hostname), "postmaster@example.org");
        assert_eq!(t.from(&c.hostname), "tlsrpt-noreply@example.org");
        assert_eq!(t.organization_name(&c.hostname), "example.org");
        assert_eq!(t.interval, Duration::from_secs(86_400));
        assert_eq!(t.dkim_selector, "tlsrpt");
        // A period must divide a day.
        assert!(Config::from_toml("[tlsrpt]\ninterval = \"6h\"\n").is_ok());
        let e = err("[tlsrpt]\ninterval = \"7h\"\n");
        assert!(e.contains("tlsrpt.interval"), "{e}");
        // The contact must be the submitter's.
        let e = err(
            "hostname = \"relay.example.org\"\n[tlsrpt]\nenabled = true\n\
             contact_info = \"abuse@elsewhere.example\"\n",
        );
        assert!(e.contains("tlsrpt.contact_info"), "{e}");
        assert!(Config::from_toml(
            "hostname = \"relay.example.org\"\n[tlsrpt]\nenabled = true\n\
             contact_info = \"tls@noc.example.org\"\n"
        )
        .is_ok());
    }

    #[test]
    fn unknown_key_is_named() {
        assert!(
            err("hostnme = \"x\"").contains("hostnme"),
            "{}",
            err("hostnme = \"x\"")
        );
        let e = err("[[listener]]\naddress = \"127.0.0.1:1\"\nportt = 3\n");
        assert!(e.starts_with("listener[0]"), "{e}");
        assert!(e.contains("portt"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = err("[queue]\nmax_lifetime = \"five days\"\n");
        assert!(e.starts_with("queue.max_lifetime"), "{e}");
        let e = err("[[listener]]\naddress = \"nowhere\"\n");
        assert!(e.starts_with("listener[0].address"), "{e}");
        let e = err("[access]\nmynetworks = [\"10.0.0.0/33\"]\n");
        assert!(e.starts_with("access.mynetworks"), "{e}");
        let e = err("[dns]\ndnssec = \"maybe\"\n");
        assert!(e.starts_with("dns.dnssec"), "{e}");
    }

    #[test]
    fn unreadable_certificate_is_named() {
        let e = err("[[listener]]\naddress = \"127.0.0.1:1\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n");
        assert!(e.starts_with("listener[0].tls_cert"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("4000s").unwrap(), Duration::from_secs(4000));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432000));
        let c = Config::from_toml("[queue]\nmin_backoff = 2\nmax_backoff = \"1m\"\n").unwrap();
        assert_eq!(c.queue.min_backoff, Duration::from_secs(2));
    }

    #[test]
    fn queue_limits() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.queue.active_limit, 20_000);
        assert_eq!(c.queue.min_free, 104_857_600);
        let c = Config::from_toml("[queue]\nactive_limit = 5\nmin_free = 0\n").unwrap();
        assert_eq!((c.queue.active_limit, c.queue.min_free), (5, 0));
        let e = err("[queue]\nactive_limit = 0\n");
        assert!(e.starts_with("queue.active_limit"), "{e}");
        let e = err("[queue]\nmin_free = -1\n");
        assert!(e.starts_with("queue.min_free"), "{e}");
    }
}
