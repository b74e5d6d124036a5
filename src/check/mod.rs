//! `mxguard check DOMAIN [--connect] [--json]`: how mail to a domain would be secured, and why —
//! posttls-finger and an MTA-STS validator in one.
//!
//! The report is made with the daemon's own configuration and decision code, so that what it
//! says is what delivery would do: the same resolvers (`[dns]`), MX resolution and its failure
//! texts (RFC 5321 §5.1, RFC 7505), DANE's plan (RFC 7672 §2.2, `delivery::dane`), the
//! per-host rules that put DANE before MTA-STS (`delivery::requirement`, RFC 8461 §2), and the
//! PKIX checker of `delivery::tls` (Web PKI roots plus `delivery.extra_ca_files`). The MTA-STS
//! policy is fetched afresh (`[mta_sts]` settings) and never written into the daemon's cache;
//! `mxguard policy show` tells what the cache holds, which may differ (RFC 8461 §5.1 keeps a
//! cached policy when its TXT record vanishes or a refetch fails).
//!
//! A static `[[route]]` for the domain sends its mail elsewhere without DANE or MTA-STS: the
//! report still describes the domain's own MX hosts, names the route, and gives `none` as the
//! effective policy. `--connect` dials the domain's own MX hosts.
//!
//! Steps: [`gather`] (DNS, DNSSEC, TLSA), [`sts`] (MTA-STS), [`verdict`] (the effective policy and its
//! reason), [`probe`] (`--connect`: STARTTLS and the certificate chain), [`render`] (the
//! readable text).
//!
//! # The JSON report (`--json`)
//! One object; keys are stable and snake_case; absent facts are `null` or empty lists.
//! - `domain`; `settings`: `dnssec` (`validate`, `trust-ad`, `off`), `nameservers`
//!   (empty: resolv.conf), `smtp_port`, `mta_sts_enabled`, `local_level` (the destination
//!   table's level for the domain, or `null`), `connect`;
//! - `route`: the `[[route]]` next hop that overrides MX delivery, or `null`;
//! - `mx`: `kind` (`mx`, `implicit`, `null_mx`, `not_found`, `failed`, `address_literal`),
//!   `dnssec` (an RRset status, below), `hosts` (`name`, `preference` or `null` for an implicit
//!   MX) in the order delivery tries them, `error` (delivery's reply text when MX resolution
//!   fails, e.g. `550 5.1.10 Domain … does not accept mail (nullMX)`);
//! - `hosts`: per MX host `name`, `preference`, `addresses`, `address_error`,
//!   `address_dnssec` (RRset statuses with `rtype`), `tlsa` (`name`, `dnssec`, `records`: each
//!   `usage`, `selector`, `matching`, `data` (hex), `text` (RFC 7218 names), `usable`,
//!   `unusable_reason`), `dane` (`state`: `authenticate`, `encrypt_only`, `lookup_error`,
//!   `not_applicable`; `text`), `sts_pattern` (the policy's `mx` line the host matches),
//!   `policy` (below) and, with `--connect`, `probes` (below);
//! - `mta_sts`: `enabled`, `txt` (`name`, `status`: `record`, `absent`, `invalid`, `failed`;
//!   `records`, `id`, `error`), `policy_url`, `fetch` (`fetched`, `failed`, `skipped`),
//!   `policy` (`mode`, `mx`, `max_age`) or `null`, `fetch_error`, `authorized` (per MX host:
//!   `host`, `pattern` or `null`);
//! - `policy`: the domain's effective policy; `delivery_error`: the reply every recipient
//!   would get before any connection (null MX, NXDOMAIN, a bogus MX RRset, a failed MTA-STS
//!   lookup), or `null`.
//!
//! An RRset status is `{status, detail}` with `status` one of `secure`, `insecure`, `bogus`,
//! `failed` (no answer) or `unchecked` (`dns.dnssec = "off"`). An effective policy is
//! `{kind, label, reason}`: `kind` is `dane`, `dane_encrypt_only`, `dane_unusable`,
//! `mta_sts_enforce`, `mta_sts_testing`, `none`, `local` or `no_delivery`; `label` its words
//! (`dane`, `dane (encrypt only: no usable TLSA)`, `dane: host unusable (TLSA lookup error)`,
//! `mta-sts enforce`, `mta-sts testing`, `none (opportunistic)`, `local:LEVEL`, `no delivery`).
//! `local` is a minimum of the destination table (`delivery.tls_policy_file`) that raises
//! what the domain publishes; sender and listener levels are per message and not shown (the
//! check is for a message without them, like a bounce).
//!
//! A probe (one per MX address) has `address`, `connected`, `greeting`, `ehlo`, `extensions`,
//! `starttls` (`offered`, `not_offered`, `refused`, `not_reached`), `starttls_reply`, `tls`
//! (`version`, `cipher`) or `null`, `tls_extensions` (the EHLO reply after TLS, or `null`),
//! `handshake_error`, `chain` (leaf first: `subject`,
//! `issuer`, `not_before`, `not_after` (RFC 3339), `san`, `sha256`, `spki_sha256`: the
//! data of `3 0 1` and `3 1 1` TLSA records), `pkix` and `dane`
//! (`{ok, detail}` or `null`: DANE only for a host with usable TLSA records), `error` (what
//! stopped the probe early) and `under_policy` (`{ok, detail}`: whether delivery under the
//! host's effective policy would go ahead on this session).
//!
//! # Exit status
//! 0 whenever the check ran, whatever it found — a domain that does not exist is a finding
//! (`mx.kind = "not_found"`), not an error; 2 when the command line or the configuration is
//! unusable (including a DOMAIN that is not a domain name).

mod checker;
pub mod dns;
mod gather;
mod probe;
mod render;
mod sts;
mod verdict;

pub use render::render;

use crate::config::Config;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};

/// Everything `mxguard check` found out about one domain.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub domain: String,
    pub settings: Settings,
    pub route: Option<String>,
    pub mx: MxReport,
    pub hosts: Vec<HostReport>,
    pub mta_sts: StsReport,
    pub policy: EffectivePolicy,
    pub delivery_error: Option<String>,
}

/// The configuration the check ran with.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub dnssec: String,
    pub nameservers: Vec<String>,
    pub smtp_port: u16,
    pub mta_sts_enabled: bool,
    /// The destination table's level for the domain (`delivery.tls_policy_file`), if any.
    pub local_level: Option<String>,
    pub connect: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MxReport {
    pub kind: MxKind,
    pub dnssec: Rrset,
    pub hosts: Vec<MxEntry>,
    pub error: Option<String>,
}

/// What the MX lookup said (RFC 5321 §5.1, RFC 7505).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MxKind {
    /// MX records naming hosts.
    Mx,
    /// No MX records: the domain itself is the host.
    Implicit,
    /// `0 .`: the domain accepts no mail.
    NullMx,
    /// NXDOMAIN.
    NotFound,
    /// No answer (SERVFAIL, timeout, bogus): delivery would try again later.
    Failed,
    /// `[192.0.2.1]`: the host itself, no MX lookup.
    AddressLiteral,
}

#[derive(Debug, Clone, Serialize)]
pub struct MxEntry {
    pub name: String,
    pub preference: Option<u16>,
}

/// The DNSSEC state of one RRset (RFC 4033 §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rrset {
    pub status: Dnssec,
    /// What the answer held: `1 record`, `no records`, `NXDOMAIN`, or why it failed.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dnssec {
    Secure,
    Insecure,
    Bogus,
    Failed,
    /// `dns.dnssec = "off"`: nothing validated.
    Unchecked,
}

/// An RRset status for one record type.
#[derive(Debug, Clone, Serialize)]
pub struct TypedRrset {
    pub rtype: String,
    #[serde(flatten)]
    pub rrset: Rrset,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub name: String,
    pub preference: Option<u16>,
    pub addresses: Vec<IpAddr>,
    pub address_error: Option<String>,
    pub address_dnssec: Vec<TypedRrset>,
    pub tlsa: Option<TlsaReport>,
    pub dane: DaneReport,
    pub sts_pattern: Option<String>,
    pub policy: EffectivePolicy,
    pub probes: Vec<Probe>,
}

/// The TLSA RRset at `_PORT._tcp.<host>`, every record, usable or not.
#[derive(Debug, Clone, Serialize)]
pub struct TlsaReport {
    pub name: String,
    pub dnssec: Rrset,
    pub records: Vec<TlsaRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsaRecord {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    /// The association data, hex.
    pub data: String,
    /// RFC 7218 presentation (`DANE-EE(3) SPKI(1) SHA2-256(1) 8d02…`).
    pub text: String,
    pub usable: bool,
    pub unusable_reason: Option<String>,
}

/// DANE's verdict on a host (`delivery::dane::HostDane`).
#[derive(Debug, Clone, Serialize)]
pub struct DaneReport {
    pub state: DaneState,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DaneState {
    Authenticate,
    EncryptOnly,
    LookupError,
    NotApplicable,
}

#[derive(Debug, Clone, Serialize)]
pub struct StsReport {
    pub enabled: bool,
    pub txt: TxtReport,
    pub policy_url: String,
    pub fetch: FetchState,
    pub policy: Option<StsPolicy>,
    pub fetch_error: Option<String>,
    pub authorized: Vec<Authorization>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TxtReport {
    pub name: String,
    pub status: TxtStatus,
    /// Every TXT record at the name, strings joined.
    pub records: Vec<String>,
    pub id: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxtStatus {
    Record,
    Absent,
    Invalid,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchState {
    Fetched,
    Failed,
    /// No valid TXT record: delivery would not fetch either.
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct StsPolicy {
    pub mode: String,
    pub mx: Vec<String>,
    pub max_age: u32,
}

/// Whether the policy lists an MX host, and under which pattern.
#[derive(Debug, Clone, Serialize)]
pub struct Authorization {
    pub host: String,
    pub pattern: Option<String>,
}

/// What sets the TLS requirement, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectivePolicy {
    pub kind: PolicyKind,
    pub label: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    Dane,
    DaneEncryptOnly,
    DaneUnusable,
    MtaStsEnforce,
    MtaStsTesting,
    None,
    /// A local minimum (`delivery.tls_policy_file`) raised the published policy; the label is
    /// delivery's `local:LEVEL`.
    Local,
    NoDelivery,
}

impl PolicyKind {
    pub fn label(self) -> &'static str {
        match self {
            PolicyKind::Dane => "dane",
            PolicyKind::DaneEncryptOnly => "dane (encrypt only: no usable TLSA)",
            PolicyKind::DaneUnusable => "dane: host unusable (TLSA lookup error)",
            PolicyKind::MtaStsEnforce => "mta-sts enforce",
            PolicyKind::MtaStsTesting => "mta-sts testing",
            PolicyKind::None => "none (opportunistic)",
            PolicyKind::Local => "local",
            PolicyKind::NoDelivery => "no delivery",
        }
    }
}

impl EffectivePolicy {
    pub fn new(kind: PolicyKind, reason: impl Into<String>) -> EffectivePolicy {
        EffectivePolicy {
            kind,
            label: kind.label().to_string(),
            reason: reason.into(),
        }
    }
}

/// One `--connect` session with one MX address.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Probe {
    pub address: Option<SocketAddr>,
    pub connected: bool,
    pub greeting: Option<String>,
    pub ehlo: Option<String>,
    /// What the plaintext EHLO reply advertised.
    pub extensions: Vec<String>,
    pub starttls: StartTlsState,
    pub starttls_reply: Option<String>,
    pub tls: Option<TlsSession>,
    /// What the EHLO reply after TLS advertised (RFC 3207 §4.2: these count).
    pub tls_extensions: Option<Vec<String>>,
    pub handshake_error: Option<String>,
    pub chain: Vec<CertInfo>,
    pub pkix: Option<Verdict>,
    pub dane: Option<Verdict>,
    pub error: Option<String>,
    pub under_policy: Verdict,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartTlsState {
    Offered,
    NotOffered,
    Refused,
    #[default]
    NotReached,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsSession {
    pub version: String,
    pub cipher: String,
    /// The key-exchange group (IANA name), as the log line's `kx=`.
    pub kx: Option<String>,
}

/// One certificate of the presented chain.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    pub san: Vec<String>,
    /// SHA-256 of the DER certificate, hex (the data of a `3 0 1` TLSA record).
    pub sha256: String,
    /// SHA-256 of its SubjectPublicKeyInfo, hex (the data of a `3 1 1` TLSA record).
    pub spki_sha256: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub ok: bool,
    pub detail: String,
}

impl Verdict {
    pub fn ok(detail: impl Into<String>) -> Verdict {
        Verdict {
            ok: true,
            detail: detail.into(),
        }
    }

    pub fn fail(detail: impl Into<String>) -> Verdict {
        Verdict {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Why the check could not start: the configuration or the command line (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckSetupError {
    #[error("{0:?} is not a domain name")]
    Domain(String),
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error("DNSSEC: {0}")]
    Dnssec(#[from] crate::dnssec::DnssecSetupError),
    #[error("TLS trust roots: {0}")]
    Roots(#[from] crate::tls::TlsSetupError),
    #[error("TLS certificate verifier: {0}")]
    Verifier(String),
    #[error("MTA-STS fetcher: {0}")]
    Fetcher(String),
    #[error("TLS policy table: {0}")]
    TlsPolicy(String),
}

/// Runs the check of `domain` with `config`; `connect` adds the `--connect` probes.
pub async fn check(
    config: &Config,
    domain: &str,
    connect: bool,
) -> Result<Report, CheckSetupError> {
    let domain = normalize_domain(domain)?;
    let checker = checker::Checker::new(config)?;
    Ok(checker.check(&domain, connect).await)
}

/// The JSON report, pretty-printed.
pub fn to_json(report: &Report) -> String {
    // Every field is a plain string, number, bool or list: serialising cannot fail; should
    // it, the error is reported in JSON too.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot serialise the report: {e}") }).to_string()
    })
}

/// Lower case, no trailing dot; an address literal as given. A name DNS cannot carry is a
/// usage error.
fn normalize_domain(domain: &str) -> Result<String, CheckSetupError> {
    let bad = || CheckSetupError::Domain(domain.to_string());
    let trimmed = domain.trim().trim_end_matches('.');
    if crate::delivery::address_literal(trimmed).is_some() {
        return Ok(trimmed.to_string());
    }
    let plausible = !trimmed.is_empty()
        && !trimmed.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '@' | ':'))
        && trimmed.split('.').all(|label| !label.is_empty());
    if !plausible {
        return Err(bad());
    }
    crate::delivery::dns::fqdn(trimmed).map_err(|_| bad())?;
    Ok(trimmed.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized_or_refused() {
        assert_eq!(normalize_domain("Example.TEST.").unwrap(), "example.test");
        assert_eq!(normalize_domain("[192.0.2.1]").unwrap(), "[192.0.2.1]");
        for bad in ["", ".", "a..b", "a b.test", "bob@example.test", "x/y"] {
            assert!(normalize_domain(bad).is_err(), "{bad:?}");
        }
    }
}
