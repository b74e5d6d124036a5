//! The delivery plan: one pure function from what the look-ups found about a destination to
//! the hosts to try, in order, each with the exact requirement a session with it must meet and
//! the `policy=` label its attempts are logged under.
//!
//! The facts come from I/O done before ([`Facts`]): the route or MX answer, DANE's verdict on
//! each host (from DNSSEC-validated MX, address and TLSA look-ups), the MTA-STS requirement,
//! and the local side (levels by destination, sender and listener; REQUIRETLS;
//! `TLS-Required: No`). Precedence, in one place:
//! 1. `TLS-Required: No` (RFC 8689 §4.1), when nothing forbids it, sets DANE and MTA-STS aside;
//! 2. DANE (RFC 7672) judges every host it covers, whatever MTA-STS says (RFC 8461 §2);
//! 3. MTA-STS (RFC 8461 §5) judges the others; without it TLS is opportunistic (RFC 7435);
//! 4. the local minimum raises a host's requirement, never lowers it;
//! 5. REQUIRETLS (RFC 8689 §4.2.1) keeps only hosts DANE or an enforced policy authenticates.
//!
//! Execution takes the plan and makes no policy decision of its own; `mxguard check` prints
//! the same plan. A pooled session is reused only under the requirement it was opened with
//! ([`PlannedHost::session_requirement`]).

use super::attempt::AppliedPolicy;
use super::dane::DanePlan;
use super::local::LocalRequirement;
use super::requirement::{HostPlan, TlsRequirement};
use policy_cache::ActivePolicy;
use std::sync::Arc;

/// What the look-ups found about one destination.
pub(crate) struct Facts<'a> {
    /// The recipient domain.
    pub domain: &'a str,
    /// The hosts in MX order (a route's next hop, or the domain's MX hosts; a secure MX RRset's
    /// order when DANE applies).
    pub hosts: &'a [String],
    pub port: u16,
    /// DANE's verdict on the domain's own hosts; empty for a route or without DNSSEC.
    pub dane: &'a DanePlan,
    /// The MTA-STS requirement of the domain's own hosts; opportunistic for a route.
    pub requirement: &'a TlsRequirement,
    pub local: &'a LocalRequirement,
}

/// The plan for one destination.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeliveryPlan {
    pub domain: String,
    pub port: u16,
    /// In the order to try them; skipped hosts stay listed (their failure is reported).
    pub hosts: Vec<PlannedHost>,
    /// The `policy=` label when no host is named (nothing was dialled).
    pub unrouted: AppliedPolicy,
    /// RFC 8689: the server must advertise REQUIRETLS (after TLS).
    pub requiretls: bool,
}

/// One host of a plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlannedHost {
    pub name: String,
    /// What a session with this host must meet.
    pub plan: HostPlan,
    /// The `policy=` (and `sts_*=`) facts of its attempts.
    pub policy: AppliedPolicy,
    /// The MTA-STS policy the host was judged under, when one was.
    pub sts: Option<StsKey>,
}

/// Which MTA-STS policy a session was verified against: the domain and the policy id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StsKey {
    pub domain: String,
    pub id: String,
}

/// What a session was established and verified under, beside its endpoint: the host plan
/// (level, names verified, TLSA records), the MTA-STS policy, and whether REQUIRETLS was
/// demanded. Two plans share sessions only when these are equal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionRequirement {
    pub plan: HostPlan,
    pub sts: Option<StsKey>,
    pub requiretls: bool,
}

/// The plan for a destination, from its facts. Pure: no I/O, no clock.
pub(crate) fn plan(facts: &Facts<'_>) -> DeliveryPlan {
    let local = facts.local;
    let none = TlsRequirement::Opportunistic;
    let nothing = DanePlan::none();
    // RFC 8689 §4.1: with `TLS-Required: No` honoured, nothing published is consulted, even
    // if it was looked up.
    let (requirement, dane) = match local.uses_published() {
        true => (facts.requirement, facts.dane),
        false => (&none, &nothing),
    };
    let sts = requirement.sts().map(sts_key);
    let hosts = facts
        .hosts
        .iter()
        .map(|name| {
            let (plan, mut policy) =
                local.plan_host(requirement, dane, name, facts.domain, facts.port);
            if let HostPlan::Dane(auth) = &plan {
                policy.tlsa_digest = Some(auth.rrset_digest());
            }
            // A host DANE judges was not verified against the MTA-STS policy.
            let sts = policy.sts.as_ref().and(sts.clone());
            PlannedHost {
                name: name.clone(),
                plan,
                policy,
                sts,
            }
        })
        .collect();
    DeliveryPlan {
        domain: facts.domain.to_string(),
        port: facts.port,
        hosts,
        unrouted: local.applied_to_domain(requirement, dane),
        requiretls: local.requiretls,
    }
}

fn sts_key(policy: &Arc<ActivePolicy>) -> StsKey {
    StsKey {
        domain: policy.domain.clone(),
        id: policy.id.clone(),
    }
}

impl DeliveryPlan {
    /// The planned host `name` (as dialled).
    pub fn host(&self, name: &str) -> Option<&PlannedHost> {
        self.hosts
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }

    /// The `policy=` facts of an attempt whose session, if any, was with `host`.
    pub fn policy_for(&self, host: Option<&str>) -> AppliedPolicy {
        host.and_then(|h| self.host(h))
            .map_or_else(|| self.unrouted.clone(), |h| h.policy.clone())
    }
}

impl PlannedHost {
    /// The requirement a session with this host is opened (and pooled) under.
    pub fn session_requirement(&self, requiretls: bool) -> SessionRequirement {
        SessionRequirement {
            plan: self.plan.clone(),
            sts: self.sts.clone(),
            requiretls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::dane::{DaneAuth, HostDane};
    use crate::delivery::tls_failure::TlsFailure;
    use crate::tls_policy::{Floor, TlsLevel};
    use policy_cache::dane::{ReferenceNames, Tlsa};
    use policy_cache::{Mode, MxPattern, Policy};
    use std::time::SystemTime;

    const DOMAIN: &str = "example.net";
    const MX: &str = "mx1.example.net";

    fn auth() -> DaneAuth {
        DaneAuth {
            tlsa_name: format!("_25._tcp.{MX}"),
            records: vec![Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![7; 32],
            }],
            names: ReferenceNames::new(MX),
            sni: MX.into(),
        }
    }

    fn dane(verdict: HostDane) -> DanePlan {
        DanePlan {
            mx_secure: true,
            hosts: None,
            verdicts: vec![(MX.to_string(), verdict)],
        }
    }

    fn sts(mode: Mode, mx: &str) -> TlsRequirement {
        let active = Arc::new(ActivePolicy {
            domain: DOMAIN.into(),
            id: "20261206".into(),
            policy: Policy {
                mode,
                mx: vec![MxPattern(mx.into())],
                max_age: 86400,
            },
            fetched_at: SystemTime::UNIX_EPOCH,
            expires_at: SystemTime::UNIX_EPOCH,
        });
        match mode {
            Mode::Enforce => TlsRequirement::StsEnforce(active),
            _ => TlsRequirement::StsTesting(active),
        }
    }

    fn local(level: Option<TlsLevel>, sender_side: bool) -> LocalRequirement {
        LocalRequirement {
            floor: level.map(|level| Floor {
                level,
                sender_side: sender_side.then_some(level),
            }),
            ..LocalRequirement::default()
        }
    }

    fn one_host(dane: &DanePlan, req: &TlsRequirement, local: &LocalRequirement) -> PlannedHost {
        let hosts = [MX.to_string()];
        let plan = plan(&Facts {
            domain: DOMAIN,
            hosts: &hosts,
            port: 25,
            dane,
            requirement: req,
            local,
        });
        plan.hosts[0].clone()
    }

    /// Shorthand for the host plans the table expects.
    #[derive(Debug, PartialEq)]
    enum Expect {
        Dane,
        Encrypt,
        StsVerified,
        LocalVerified,
        Secure { mx_pattern: bool },
        Opportunistic,
        Probe,
        Plaintext,
        Skip(&'static str),
    }

    fn shape(plan: &HostPlan) -> Expect {
        match plan {
            HostPlan::Dane(_) => Expect::Dane,
            HostPlan::Encrypt => Expect::Encrypt,
            HostPlan::Verified { pattern: Some(_) } => Expect::StsVerified,
            HostPlan::Verified { pattern: None } => Expect::LocalVerified,
            HostPlan::Secure { mx_pattern, .. } => Expect::Secure {
                mx_pattern: mx_pattern.is_some(),
            },
            HostPlan::Opportunistic => Expect::Opportunistic,
            HostPlan::Probe { .. } => Expect::Probe,
            HostPlan::Plaintext => Expect::Plaintext,
            HostPlan::Skip(f) => Expect::Skip(match f {
                TlsFailure::NotAuthorized { .. } => "not-authorized",
                TlsFailure::TlsaLookup { .. } => "tlsa-lookup",
                TlsFailure::DaneRequired { .. } => "dane-required",
                TlsFailure::RequireTls { .. } => "requiretls",
                _ => "other",
            }),
        }
    }

    #[test]
    fn precedence_table() {
        use Expect::*;
        let records = dane(HostDane::Authenticate(auth()));
        let unusable = dane(HostDane::EncryptOnly {
            tlsa_name: "_25._tcp.mx1.example.net".into(),
        });
        let broken = dane(HostDane::LookupError {
            tlsa_name: "_25._tcp.mx1.example.net".into(),
            reason: "SERVFAIL".into(),
        });
        let no_dane = DanePlan::none();
        let enforce = sts(Mode::Enforce, "*.example.net");
        let enforce_elsewhere = sts(Mode::Enforce, "mx.other.test");
        let testing = sts(Mode::Testing, "*.example.net");
        let opportunistic = TlsRequirement::Opportunistic;
        let level = |l| local(Some(l), false);
        let sender = |l| local(Some(l), true);
        let nothing = local(None, false);
        let requiretls = LocalRequirement {
            requiretls: true,
            ..LocalRequirement::default()
        };
        #[rustfmt::skip]
        let table: Vec<(&str, &DanePlan, &TlsRequirement, LocalRequirement, Expect, &str)> = vec![
            ("DANE beats an enforced policy", &records, &enforce, nothing, Dane, "dane"),
            ("DANE beats a policy that does not list the host", &records, &enforce_elsewhere, nothing, Dane, "dane"),
            ("no usable TLSA: encrypt, unless MTA-STS demands more", &unusable, &enforce, nothing, StsVerified, "mta-sts"),
            ("no usable TLSA, no policy: encrypt", &unusable, &opportunistic, nothing, Encrypt, "dane"),
            ("a failed TLSA lookup is never weakened", &broken, &opportunistic, level(TlsLevel::None), Skip("tlsa-lookup"), "dane"),
            ("enforce: listed host verified", &no_dane, &enforce, nothing, StsVerified, "mta-sts"),
            ("enforce: unlisted host skipped", &no_dane, &enforce_elsewhere, nothing, Skip("not-authorized"), "mta-sts"),
            ("testing: probed", &no_dane, &testing, nothing, Probe, "mta-sts-testing"),
            ("nothing published: opportunistic", &no_dane, &opportunistic, nothing, Opportunistic, "none"),
            ("local none only where nothing is published", &no_dane, &opportunistic, level(TlsLevel::None), Plaintext, "local:none"),
            ("local none never weakens DANE", &records, &opportunistic, level(TlsLevel::None), Dane, "dane"),
            ("local none never weakens MTA-STS", &no_dane, &enforce, level(TlsLevel::None), StsVerified, "mta-sts"),
            ("local encrypt raises opportunistic", &no_dane, &opportunistic, level(TlsLevel::Encrypt), Encrypt, "local:encrypt"),
            ("local encrypt raises testing", &no_dane, &testing, level(TlsLevel::Encrypt), Encrypt, "local:encrypt"),
            ("sender encrypt never weakens DANE", &records, &opportunistic, sender(TlsLevel::Encrypt), Dane, "dane"),
            ("sender encrypt never weakens MTA-STS", &no_dane, &enforce, sender(TlsLevel::Encrypt), StsVerified, "mta-sts"),
            ("sender verify raises opportunistic", &no_dane, &opportunistic, sender(TlsLevel::Verify), LocalVerified, "local:verify"),
            ("local verify raises DANE's encrypt-only", &unusable, &opportunistic, level(TlsLevel::Verify), LocalVerified, "local:verify"),
            ("local secure over MTA-STS checks both names", &no_dane, &enforce, level(TlsLevel::Secure), Secure { mx_pattern: true }, "local:secure"),
            ("local secure keeps DANE", &records, &opportunistic, level(TlsLevel::Secure), Dane, "dane"),
            ("dane-only without DANE: skipped", &no_dane, &enforce, level(TlsLevel::DaneOnly), Skip("dane-required"), "local:dane-only"),
            ("dane-only with DANE", &records, &opportunistic, level(TlsLevel::DaneOnly), Dane, "dane"),
            ("REQUIRETLS with DANE", &records, &opportunistic, requiretls, Dane, "requiretls"),
            ("REQUIRETLS with enforced MTA-STS", &no_dane, &enforce, requiretls, StsVerified, "requiretls"),
            ("REQUIRETLS refuses testing mode", &no_dane, &testing, requiretls, Skip("requiretls"), "requiretls"),
            ("REQUIRETLS refuses opportunistic", &no_dane, &opportunistic, requiretls, Skip("requiretls"), "requiretls"),
        ];
        for (case, dane, req, local, want, label) in table {
            let host = one_host(dane, req, &local);
            assert_eq!(shape(&host.plan), want, "{case}");
            assert_eq!(host.policy.name, label, "{case}: policy label");
        }
    }

    #[test]
    fn tls_required_no_sets_what_is_published_aside() {
        let local = LocalRequirement {
            tls_required_no: true,
            ..LocalRequirement::default()
        };
        let records = dane(HostDane::Authenticate(auth()));
        let host = one_host(&records, &sts(Mode::Enforce, "*.example.net"), &local);
        assert_eq!(host.plan, HostPlan::Opportunistic);
        assert_eq!(host.policy.name, "tls-required-no");
        assert_eq!(host.sts, None);
    }

    #[test]
    fn the_session_requirement_names_the_sts_policy_only_when_it_judged_the_host() {
        let enforce = sts(Mode::Enforce, "*.example.net");
        let host = one_host(&DanePlan::none(), &enforce, &local(None, false));
        let key = host.session_requirement(false);
        assert_eq!(
            key.sts,
            Some(StsKey {
                domain: DOMAIN.into(),
                id: "20261206".into()
            })
        );
        let records = dane(HostDane::Authenticate(auth()));
        let host = one_host(&records, &enforce, &local(None, false));
        assert_eq!(host.session_requirement(false).sts, None);
        assert_ne!(
            host.session_requirement(false),
            host.session_requirement(true),
            "REQUIRETLS is part of the requirement"
        );
    }

    #[test]
    fn hosts_keep_their_order_and_unnamed_attempts_get_the_domain_label() {
        let hosts = ["b.example.net".to_string(), "a.example.net".to_string()];
        let enforce = sts(Mode::Enforce, "a.example.net");
        let plan = plan(&Facts {
            domain: DOMAIN,
            hosts: &hosts,
            port: 25,
            dane: &DanePlan::none(),
            requirement: &enforce,
            local: &local(None, false),
        });
        let names: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["b.example.net", "a.example.net"]);
        assert!(matches!(plan.hosts[0].plan, HostPlan::Skip(_)));
        assert_eq!(plan.unrouted.name, "mta-sts");
        assert_eq!(
            plan.policy_for(Some("A.example.net")).sts.unwrap().mx,
            Some("a.example.net".into())
        );
        assert_eq!(plan.policy_for(None), plan.unrouted);
    }
}
