//! From mxguard's delivery plan for a domain to one `smtp_tls_policy_maps` answer.
//!
//! mxguard decides per MX host (`delivery::plan`): DANE for a host with usable TLSA records,
//! the MTA-STS policy for the others, a local level raising either. A Postfix policy-table
//! answer is one TLS security level for the whole next-hop domain, so the hosts' plans are
//! summed up into the one level that does exactly what they do, or, where no level can, the
//! strictest level that keeps DANE's precedence (RFC 8461 §2, RFC 7672 §1.3): the answer is
//! never weaker than mxguard's plan for any host.
//!
//! | the hosts' plans | answer |
//! |---|---|
//! | every host DANE-authenticated (or waiting for a failed TLSA lookup, or refused by a local `dane-only`) | `dane-only` |
//! | DANE for some hosts; the others opportunistic, or encrypt-only for a secure TLSA RRset without usable records | `dane` (Postfix does the same host by host) |
//! | DANE for some hosts; the others under an enforced MTA-STS policy or a local level | `dane-only` (stricter: Postfix uses only the DANE hosts) |
//! | every host's TLSA lookup failed | `TEMP` |
//! | an enforced MTA-STS policy (or a testing one with `strict_testing`) | `secure match=PATTERNS [servername=hostname]` |
//! | a secure TLSA RRset without usable records, no enforced policy | `dane` (Postfix: encrypt for those hosts, RFC 7672 §2.2) |
//! | a local `secure`, `verify`, `encrypt`, `none` level (`delivery.tls_policy_file`) that raised the published policy | that level |
//! | opportunistic TLS: nothing published, MTA-STS `testing` or `none` | `NOTFOUND` |

use crate::delivery::dane::{DanePlan, HostDane};
use crate::delivery::plan::DeliveryPlan;
use crate::delivery::requirement::{HostPlan, TlsRequirement};
use crate::delivery::tls_failure::TlsFailure;
use std::fmt;

/// One socketmap reply (socketmap_table(5), "REPLY FORMAT").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `OK <data>`: the key's value, here a Postfix TLS policy (`dane-only`, `secure match=…`).
    Ok(String),
    /// `NOTFOUND `: nothing for this key; Postfix uses `smtp_tls_security_level` (after its
    /// parent-domain look-ups).
    NotFound,
    /// `TEMP <reason>`: no answer for now; Postfix defers the delivery and tries again later.
    Temp(String),
    /// `PERM <reason>`: the request itself is wrong.
    Perm(String),
}

/// The longest reason sent: Postfix logs at most 200 characters of it.
const MAX_REASON: usize = 200;

impl Answer {
    /// The reply as sent, before the netstring framing. Reasons are cut to printable ASCII
    /// (they may quote DNS errors, which quote the peer).
    pub fn payload(&self) -> String {
        match self {
            Answer::Ok(data) => format!("OK {data}"),
            Answer::NotFound => "NOTFOUND ".to_string(),
            Answer::Temp(why) => format!("TEMP {}", printable(why)),
            Answer::Perm(why) => format!("PERM {}", printable(why)),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.payload().trim_end())
    }
}

fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' '..='~' => c,
            _ => '?',
        })
        .take(MAX_REASON)
        .collect()
}

/// What Postfix must do with one MX host for the session to meet mxguard's plan for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Usable TLSA records: DANE authentication (RFC 7672 §3).
    Dane,
    /// The TLSA (or address) lookup failed: not to be used until DANE can tell (§2.1.1).
    DaneWait,
    /// A secure TLSA RRset without usable records: TLS, no authentication (§2.2).
    DaneEncrypt,
    /// A local `dane-only` level, and no DANE for this host: not to be used.
    DaneOnly,
    /// Under an enforced MTA-STS policy (listed, or left out by it).
    Sts,
    /// Local levels.
    Secure,
    Verify,
    Encrypt,
    Plaintext,
    /// Opportunistic TLS (nothing published, or MTA-STS testing).
    May,
}

fn need(host: &str, plan: &HostPlan, dane: &DanePlan) -> Need {
    match plan {
        HostPlan::Dane(_) => Need::Dane,
        HostPlan::Skip(TlsFailure::TlsaLookup { .. }) => Need::DaneWait,
        HostPlan::Skip(TlsFailure::DaneRequired { .. }) => Need::DaneOnly,
        // RFC 8461 §4.1: left out by the policy; Postfix's `match=` list refuses it.
        HostPlan::Skip(_) => Need::Sts,
        HostPlan::Encrypt => match dane.host(host) {
            Some(HostDane::EncryptOnly { .. }) => Need::DaneEncrypt,
            _ => Need::Encrypt,
        },
        HostPlan::Verified { pattern: Some(_) } => Need::Sts,
        HostPlan::Verified { pattern: None } => Need::Verify,
        HostPlan::Secure { .. } => Need::Secure,
        HostPlan::Plaintext => Need::Plaintext,
        HostPlan::Opportunistic | HostPlan::Probe { .. } => Need::May,
    }
}

/// What the answer is made from: the plan and the facts it came from.
pub(crate) struct Decision<'a> {
    pub plan: &'a DeliveryPlan,
    pub dane: &'a DanePlan,
    /// The MTA-STS requirement the plan was made under (testing already made enforce when
    /// `strict_testing` is set): its policy gives the `match=` list.
    pub requirement: &'a TlsRequirement,
    /// `policy_service.require_sni`: `servername=hostname` on answers that verify a
    /// certificate by its names.
    pub require_sni: bool,
}

/// The answer for the plan's domain.
pub(crate) fn answer(d: &Decision<'_>) -> Answer {
    let needs: Vec<Need> = d
        .plan
        .hosts
        .iter()
        .map(|h| need(&h.name, &h.plan, d.dane))
        .collect();
    let any = |n: Need| needs.contains(&n);
    let all = |set: &[Need]| needs.iter().all(|n| set.contains(n));
    if needs.is_empty() {
        return Answer::NotFound;
    }
    if all(&[Need::DaneWait]) {
        return Answer::Temp(tlsa_lookup_error(d.plan));
    }
    let sni = |level: &str| match d.require_sni {
        true => format!("{level} servername=hostname"),
        false => level.to_string(),
    };
    if any(Need::Dane) || any(Need::DaneWait) || any(Need::DaneOnly) {
        use Need::*;
        // Postfix's `dane` level is DANE host by host: records → authenticated, records
        // without a usable one → encrypt, none → may (smtp_tls_policy.c, dane_init).
        if !all(&[Dane, DaneWait, DaneOnly]) && all(&[Dane, DaneWait, DaneEncrypt, May, Plaintext])
        {
            return Answer::Ok("dane".into());
        }
        return Answer::Ok("dane-only".into());
    }
    if any(Need::Secure) {
        return Answer::Ok(sni("secure"));
    }
    if any(Need::Sts) {
        return match match_list(d.requirement) {
            Some(list) => Answer::Ok(sni(&format!("secure match={list}"))),
            // Unreachable: an enforced policy has at least one mx line (RFC 8461 §3.2).
            None => Answer::Temp("MTA-STS policy without mx patterns".into()),
        };
    }
    if any(Need::Verify) {
        return Answer::Ok(sni("verify"));
    }
    if any(Need::Encrypt) {
        return Answer::Ok("encrypt".into());
    }
    if any(Need::DaneEncrypt) {
        return Answer::Ok("dane".into());
    }
    if all(&[Need::Plaintext]) {
        return Answer::Ok("none".into());
    }
    Answer::NotFound
}

/// The policy's `mx` patterns in Postfix's `match=` syntax, as postfix-mta-sts-resolver writes
/// them: `*.example.com` becomes `.example.com`, joined by `:`, each once, in policy order.
/// (Postfix's `.example.com` matches any depth of subdomain, RFC 8461's `*.` exactly one label:
/// Postfix has no way to say the stricter thing.)
fn match_list(requirement: &TlsRequirement) -> Option<String> {
    let policy = requirement.sts()?;
    let mut list: Vec<&str> = Vec::new();
    for pattern in &policy.policy.mx {
        let p = pattern.0.strip_prefix('*').unwrap_or(&pattern.0);
        if !list.contains(&p) {
            list.push(p);
        }
    }
    (!list.is_empty()).then(|| list.join(":"))
}

/// `TLSA lookup error for mx.example.com:25: SERVFAIL`, for the first host that had one.
fn tlsa_lookup_error(plan: &DeliveryPlan) -> String {
    plan.hosts
        .iter()
        .find_map(|h| match &h.plan {
            HostPlan::Skip(TlsFailure::TlsaLookup { host, port, reason }) => {
                Some(format!("TLSA lookup error for {host}:{port}: {reason}"))
            }
            _ => None,
        })
        .unwrap_or_else(|| "TLSA lookup error".into())
}

#[cfg(test)]
mod tests;
