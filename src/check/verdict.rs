//! The effective policy and its reason, put in words from delivery's own decisions: the
//! [`HostPlan`] that `TlsRequirement::host_plan_with` gives each MX host (DANE first, RFC 8461
//! §2; MTA-STS for the hosts without TLSA records, RFC 8461 §5), then the domain as a whole.

use super::{EffectivePolicy, HostReport, PolicyKind};
use crate::delivery::dane::HostDane;
use crate::delivery::requirement::{HostPlan, TlsRequirement};
use crate::delivery::tls_failure::TlsFailure;

/// What decides one host's policy.
pub(super) struct HostFacts<'a> {
    pub host: &'a str,
    pub domain: &'a str,
    /// The plan delivery makes for the host, local minimum included.
    pub plan: &'a HostPlan,
    /// The plan from what the domain publishes alone (DANE, MTA-STS).
    pub published: &'a HostPlan,
    /// The `policy=` name delivery logs for the host.
    pub applied: &'a str,
    pub dane: &'a HostDane,
    pub requirement: &'a TlsRequirement,
    /// Why no MTA-STS policy applies, when none does.
    pub no_sts: &'a str,
}

/// One host's effective policy, from the plans delivery makes for it: the published policy's,
/// or the local minimum's when that raised it (the log then says `policy=local:LEVEL`).
pub(super) fn host_policy(f: &HostFacts<'_>) -> EffectivePolicy {
    let published = published_policy(f);
    if !f.applied.starts_with("local:") {
        return published;
    }
    EffectivePolicy {
        kind: PolicyKind::Local,
        label: f.applied.to_string(),
        reason: format!(
            "{}: the local minimum for {} (delivery.tls_policy_file) raises what it publishes, \
             {} ({})",
            local_plan(f.plan, f.host),
            f.domain,
            published.label,
            published.reason
        ),
    }
}

/// What a plan only a local level makes means.
fn local_plan(plan: &HostPlan, host: &str) -> String {
    match plan {
        HostPlan::Plaintext => "STARTTLS not used".to_string(),
        HostPlan::Encrypt => "STARTTLS required, the certificate is not checked".to_string(),
        HostPlan::Verified { .. } => {
            format!("STARTTLS required with a certificate PKIX-valid for {host}")
        }
        HostPlan::Secure {
            domain,
            mx_pattern: None,
        } => {
            format!("STARTTLS required with a certificate PKIX-valid for {domain} or a subdomain")
        }
        HostPlan::Secure {
            domain,
            mx_pattern: Some(_),
        } => format!(
            "STARTTLS required with a certificate PKIX-valid for {host} (MTA-STS) and for \
             {domain} or a subdomain (secure)"
        ),
        HostPlan::Skip(failure) => {
            format!(
                "{}: the host is never tried ({})",
                failure.detail(),
                failure.reply(None)
            )
        }
        HostPlan::Dane(_) => "authenticated by its TLSA records".to_string(),
        HostPlan::Probe { .. } | HostPlan::Opportunistic => {
            "STARTTLS when offered, any certificate".to_string()
        }
    }
}

/// The policy the domain's publications give the host (DANE first, then MTA-STS).
fn published_policy(f: &HostFacts<'_>) -> EffectivePolicy {
    let overridden = overridden_sts(f.requirement)
        .map(|sts| {
            format!("; DANE takes precedence (RFC 8461 §2): {sts} is overridden for this host")
        })
        .unwrap_or_default();
    let no_dane = no_dane(f.dane);
    match f.published {
        HostPlan::Dane(auth) => EffectivePolicy::new(
            PolicyKind::Dane,
            format!(
                "{} usable TLSA record(s) at {}: STARTTLS required and the certificate must \
                 match them{overridden}",
                auth.records.len(),
                auth.tlsa_name
            ),
        ),
        HostPlan::Encrypt => EffectivePolicy::new(
            PolicyKind::DaneEncryptOnly,
            format!(
                "{}: STARTTLS required, the certificate is not checked (RFC 7672 §2.2)\
                 {overridden}",
                f.dane
            ),
        ),
        HostPlan::Skip(failure @ TlsFailure::TlsaLookup { .. }) => EffectivePolicy::new(
            PolicyKind::DaneUnusable,
            format!(
                "{}: the host is skipped for now, never tried with less security (RFC 7672 \
                 §2.1.1); alone it defers the mail ({})",
                failure.detail(),
                failure.reply(None)
            ),
        ),
        HostPlan::Skip(failure) => EffectivePolicy::new(
            PolicyKind::MtaStsEnforce,
            format!(
                "{}: the host is never tried (RFC 8461 §4.1; {}); DANE: {no_dane}",
                failure.detail(),
                failure.reply(None)
            ),
        ),
        HostPlan::Verified { pattern } => EffectivePolicy::new(
            PolicyKind::MtaStsEnforce,
            format!(
                "{} matches mx pattern {} of {}: STARTTLS, TLS 1.2+ and a certificate \
                 PKIX-valid for {} required, no plaintext (RFC 8461 §5); DANE: {no_dane}",
                f.host,
                pattern.as_deref().unwrap_or("-"),
                sts_name(f.requirement),
                f.host
            ),
        ),
        HostPlan::Probe { pattern } => {
            let matched = match pattern {
                Some(p) => format!("{} matches mx pattern {p}", f.host),
                None => format!("{} matches no mx pattern (reported)", f.host),
            };
            EffectivePolicy::new(
                PolicyKind::MtaStsTesting,
                format!(
                    "{matched} of {}: delivered as without a policy, every would-be failure \
                     recorded for TLS-RPT (RFC 8461 §5); DANE: {no_dane}",
                    sts_name(f.requirement)
                ),
            )
        }
        // Only local levels make these; the published policy never does.
        HostPlan::Opportunistic | HostPlan::Plaintext | HostPlan::Secure { .. } => {
            EffectivePolicy::new(
                PolicyKind::None,
                format!(
                    "STARTTLS when offered, any certificate, plaintext otherwise; DANE: \
                     {no_dane}; MTA-STS: {}",
                    f.no_sts
                ),
            )
        }
    }
}

/// What decides the domain's policy.
pub(super) struct DomainFacts<'a> {
    pub domain: &'a str,
    pub hosts: &'a [HostReport],
    pub requirement: &'a TlsRequirement,
    /// Why DANE does not apply to the domain, when it does not.
    pub no_dane: &'a str,
    pub no_sts: &'a str,
    /// The reply every recipient gets before any connection.
    pub delivery_error: Option<&'a str>,
    /// A static route or an address literal: neither DANE nor MTA-STS applies.
    pub overridden: Option<&'a str>,
}

/// The domain's effective policy: what the hosts' policies add up to.
pub(super) fn domain_policy(f: &DomainFacts<'_>) -> EffectivePolicy {
    if let Some(why) = f.delivery_error {
        return EffectivePolicy::new(
            PolicyKind::NoDelivery,
            format!("every recipient at {} gets: {why}", f.domain),
        );
    }
    if let Some(why) = f.overridden {
        return EffectivePolicy::new(PolicyKind::None, why);
    }
    let Some(first) = f.hosts.first() else {
        return EffectivePolicy::new(PolicyKind::NoDelivery, "no MX host");
    };
    let is_dane = |k: PolicyKind| {
        matches!(
            k,
            PolicyKind::Dane | PolicyKind::DaneEncryptOnly | PolicyKind::DaneUnusable
        )
    };
    let (dane, other): (Vec<&HostReport>, Vec<&HostReport>) =
        f.hosts.iter().partition(|h| is_dane(h.policy.kind));
    let uniform = f.hosts.iter().all(|h| h.policy.kind == first.policy.kind);
    let sts = overridden_sts(f.requirement);
    if dane.is_empty() {
        let kind = first.policy.kind;
        let reason = match kind {
            PolicyKind::MtaStsEnforce => {
                let allowed: Vec<&str> = f
                    .hosts
                    .iter()
                    .filter(|h| h.sts_pattern.is_some())
                    .map(|h| h.name.as_str())
                    .collect();
                let allowed = match allowed.is_empty() {
                    true => "no MX host: no host can be used".to_string(),
                    false => allowed.join(", "),
                };
                format!(
                    "{} authorizes {allowed}; STARTTLS with a certificate PKIX-valid for the MX \
                     host name required, no plaintext; no DANE ({})",
                    sts_name(f.requirement),
                    f.no_dane
                )
            }
            _ if !uniform => "the MX hosts differ: see each host".to_string(),
            PolicyKind::Local => format!(
                "the local minimum {} (delivery.tls_policy_file) applies to every MX host; \
                 what {} publishes: see each host",
                first.policy.label, f.domain
            ),
            PolicyKind::MtaStsTesting => format!(
                "{}: delivered as without a policy, would-be failures recorded for TLS-RPT; no \
                 DANE ({})",
                sts_name(f.requirement),
                f.no_dane
            ),
            _ => format!(
                "no DANE ({}) and no MTA-STS ({}): STARTTLS when offered, any certificate",
                f.no_dane, f.no_sts
            ),
        };
        return EffectivePolicy {
            kind,
            label: first.policy.label.clone(),
            reason,
        };
    }
    let names = |hosts: &[&HostReport]| {
        hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if other.is_empty() {
        let kind = if uniform {
            first.policy.kind
        } else {
            PolicyKind::Dane
        };
        let what = match kind {
            PolicyKind::DaneEncryptOnly => {
                "every MX host has a secure TLSA RRset without usable records: STARTTLS \
                 required, certificates not checked"
            }
            PolicyKind::DaneUnusable => {
                "every MX host's TLSA lookup failed: mail waits until DNSSEC answers \
                 (never delivered with less security)"
            }
            _ if uniform => "every MX host has usable TLSA records: DANE authenticates them",
            _ => "every MX host is under DANE (see each host)",
        };
        let sts = sts
            .map(|s| format!("; DANE takes precedence (RFC 8461 §2): {s} is overridden"))
            .unwrap_or_default();
        return EffectivePolicy::new(kind, format!("{what} (RFC 7672){sts}"));
    }
    let sts = sts
        .map(|s| format!("; {s} is overridden for the hosts under DANE (RFC 8461 §2)"))
        .unwrap_or_default();
    EffectivePolicy::new(
        PolicyKind::Dane,
        format!(
            "DANE for {} (RFC 7672); the other MX hosts ({}) are under {}{sts}",
            names(&dane),
            names(&other),
            other
                .first()
                .map_or("no policy", |h| h.policy.label.as_str())
        ),
    )
}

/// `the MTA-STS policy (mode enforce, id X)` when MTA-STS sets a requirement DANE may override.
fn overridden_sts(requirement: &TlsRequirement) -> Option<String> {
    requirement.sts().map(|_| sts_name(requirement))
}

fn sts_name(requirement: &TlsRequirement) -> String {
    match requirement.sts() {
        Some(p) => format!(
            "the MTA-STS policy (mode {}, id {})",
            p.policy.mode.as_str(),
            p.id
        ),
        None => "no MTA-STS policy".to_string(),
    }
}

/// Why DANE does not decide a host (for the hosts under another policy).
fn no_dane(dane: &HostDane) -> String {
    match dane {
        HostDane::NotApplicable(why) => why.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DaneReport, DaneState};
    use super::*;
    use policy_cache::{ActivePolicy, Mode, MxPattern, Policy};
    use std::sync::Arc;
    use std::time::SystemTime;

    fn enforce() -> TlsRequirement {
        TlsRequirement::StsEnforce(Arc::new(ActivePolicy {
            domain: "example.test".into(),
            id: "7".into(),
            policy: Policy {
                mode: Mode::Enforce,
                mx: vec![MxPattern("*.example.test".into())],
                max_age: 86400,
            },
            fetched_at: SystemTime::UNIX_EPOCH,
            expires_at: SystemTime::UNIX_EPOCH,
        }))
    }

    fn host(name: &str, kind: PolicyKind) -> HostReport {
        HostReport {
            name: name.into(),
            preference: Some(10),
            addresses: Vec::new(),
            address_error: None,
            address_dnssec: Vec::new(),
            tlsa: None,
            dane: DaneReport {
                state: DaneState::NotApplicable,
                text: String::new(),
            },
            sts_pattern: Some("*.example.test".into()),
            policy: EffectivePolicy::new(kind, "-"),
            probes: Vec::new(),
        }
    }

    fn facts<'a>(hosts: &'a [HostReport], requirement: &'a TlsRequirement) -> DomainFacts<'a> {
        DomainFacts {
            domain: "example.test",
            hosts,
            requirement,
            no_dane: "MX RRset not secure (insecure)",
            no_sts: "no MTA-STS TXT record",
            delivery_error: None,
            overridden: None,
        }
    }

    #[test]
    fn dane_on_some_hosts_overrides_mta_sts_for_them_only() {
        let hosts = [
            host("mx1.example.test", PolicyKind::Dane),
            host("mx2.example.test", PolicyKind::MtaStsEnforce),
        ];
        let requirement = enforce();
        let p = domain_policy(&facts(&hosts, &requirement));
        assert_eq!(p.kind, PolicyKind::Dane);
        assert!(
            p.reason.contains("DANE for mx1.example.test"),
            "{}",
            p.reason
        );
        assert!(
            p.reason
                .contains("(mx2.example.test) are under mta-sts enforce"),
            "{}",
            p.reason
        );
        assert!(
            p.reason
                .contains("the MTA-STS policy (mode enforce, id 7) is overridden for the hosts"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn uniform_policies_and_failures() {
        let requirement = enforce();
        let hosts = [host("mx1.example.test", PolicyKind::MtaStsEnforce)];
        let p = domain_policy(&facts(&hosts, &requirement));
        assert_eq!(p.label, "mta-sts enforce");
        assert!(
            p.reason.contains("authorizes mx1.example.test"),
            "{}",
            p.reason
        );

        let hosts = [
            host("mx1.example.test", PolicyKind::DaneUnusable),
            host("mx2.example.test", PolicyKind::DaneUnusable),
        ];
        let p = domain_policy(&facts(&hosts, &TlsRequirement::Opportunistic));
        assert_eq!(p.label, "dane: host unusable (TLSA lookup error)");

        let mut f = facts(&hosts, &TlsRequirement::Opportunistic);
        f.delivery_error = Some("550 5.1.10 Domain example.test does not accept mail (nullMX)");
        let p = domain_policy(&f);
        assert_eq!(p.kind, PolicyKind::NoDelivery);
        assert!(p.reason.ends_with("(nullMX)"), "{}", p.reason);

        let hosts = [host("mx1.example.test", PolicyKind::None)];
        let p = domain_policy(&facts(&hosts, &TlsRequirement::Opportunistic));
        assert_eq!(p.label, "none (opportunistic)");
        assert!(p.reason.contains("no MTA-STS TXT record"), "{}", p.reason);
    }
}
