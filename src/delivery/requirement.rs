//! How securely a job's MX hosts must be reached, decided before any connection from what is
//! known about the destination. Today the only source is MTA-STS (RFC 8461 §5): a policy in
//! `enforce` mode demands authenticated TLS to listed MX hosts, one in `testing` mode asks for
//! reports but no change in delivery; `none` and no policy leave opportunistic TLS (RFC 7435).
//! DANE and local levels join this enum later.
//!
//! Everything here is pure: the deliverer does the lookups and the I/O.

use super::attempt::{AppliedPolicy, Failure, Rank, StsFacts};
use super::dane::{DaneAuth, DanePlan, HostDane};
use super::tls_failure::TlsFailure;
use crate::reply::{EnhancedCode, Reply};
use policy_cache::{ActivePolicy, Mode, StsLookup};
use std::sync::Arc;

/// The `policy=` name when nothing demands more than opportunistic TLS.
pub(crate) const NO_POLICY: &str = "none";
/// The `policy=` name of a host (or domain) under DANE.
pub(crate) const DANE: &str = "dane";

/// The TLS a job requires of the hosts it tries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TlsRequirement {
    /// STARTTLS when offered, any certificate; plaintext otherwise (Postfix level `may`).
    Opportunistic,
    /// RFC 8461 §5: only hosts matching the policy, over TLS 1.2+ with a PKIX-valid
    /// certificate for the MX host name; never plaintext.
    StsEnforce(Arc<ActivePolicy>),
    /// RFC 8461 §5: deliver as without a policy, but report what would have failed.
    StsTesting(Arc<ActivePolicy>),
}

/// What to do with one MX host under a requirement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HostPlan {
    /// Opportunistic TLS, nothing to check or report.
    Opportunistic,
    /// Verified TLS or nothing: a certificate PKIX-valid for the MX host name. `pattern` is
    /// the MTA-STS policy's `mx` line the host matched; `None` for a local `verify` level.
    Verified { pattern: Option<String> },
    /// A local `secure` level: TLS with a certificate PKIX-valid for the next-hop `domain` or
    /// one of its subdomains (never only for the MX host name, which DNS alone vouches for).
    /// `mx_pattern` is the MTA-STS `mx` line the host matched when an enforced policy also
    /// applies: the certificate must then be valid for the MX host name too (never weaker
    /// than the policy), and the host counts as MTA-STS-authenticated (REQUIRETLS).
    Secure {
        domain: String,
        mx_pattern: Option<String>,
    },
    /// No STARTTLS at all (a local `none` level where nothing is published).
    Plaintext,
    /// Opportunistic TLS, with every would-be failure reported (testing mode). `pattern` is
    /// `None` when the host matches no `mx` line, itself a failure to report.
    Probe { pattern: Option<String> },
    /// Not to be tried at all (RFC 8461 §4.1, enforce mode; RFC 7672 §2.1.1, a failed
    /// TLSA lookup).
    Skip(TlsFailure),
    /// RFC 7672 §3: STARTTLS mandatory, the certificate must match the TLSA records.
    Dane(DaneAuth),
    /// TLS mandatory, the certificate not checked: a secure TLSA RRset with no usable record
    /// (RFC 7672 §2.2).
    Encrypt,
}

/// The requirement for a job of `domain`, from its MTA-STS lookup; a failure when the lookup
/// could not tell.
pub(crate) fn requirement(lookup: StsLookup, domain: &str) -> Result<TlsRequirement, Failure> {
    match lookup {
        StsLookup::NoPolicy { .. } => Ok(TlsRequirement::Opportunistic),
        StsLookup::Policy(active) => Ok(match active.policy.mode {
            Mode::Enforce => TlsRequirement::StsEnforce(active),
            Mode::Testing => TlsRequirement::StsTesting(active),
            // RFC 8461 §5: mode "none" is treated as if no policy were published.
            Mode::None => TlsRequirement::Opportunistic,
        }),
        // RFC 8461 §5: a failed lookup is not the absence of a policy: retry later rather than
        // deliver without one. 4.4.3, like any DNS failure (never 4.7.5: nothing is known
        // about the destination's TLS yet).
        StsLookup::TempFail { reason } => Err(Failure::new(
            Reply::new(
                451,
                EnhancedCode::new(4, 4, 3),
                format!("MTA-STS policy lookup failed for {domain}: {reason}"),
            ),
            None,
            Rank::DnsTemporary,
        )),
    }
}

impl TlsRequirement {
    /// The policy behind the requirement, when MTA-STS applies.
    pub fn sts(&self) -> Option<&Arc<ActivePolicy>> {
        match self {
            TlsRequirement::Opportunistic => None,
            TlsRequirement::StsEnforce(p) | TlsRequirement::StsTesting(p) => Some(p),
        }
    }

    /// What to do with MX host `host` of `domain`.
    pub fn host_plan(&self, host: &str, domain: &str) -> HostPlan {
        match self {
            TlsRequirement::Opportunistic => HostPlan::Opportunistic,
            TlsRequirement::StsEnforce(p) => match pattern(p, host) {
                Some(pattern) => HostPlan::Verified {
                    pattern: Some(pattern),
                },
                // RFC 8461 §4.1: "senders MUST NOT deliver to MX hosts that do not match".
                None => HostPlan::Skip(TlsFailure::NotAuthorized {
                    host: host.to_string(),
                    domain: domain.to_string(),
                }),
            },
            TlsRequirement::StsTesting(p) => HostPlan::Probe {
                pattern: pattern(p, host),
            },
        }
    }

    /// The `policy=` (and `sts_*=`) facts for an attempt whose session, if any, was with
    /// `host`.
    pub fn applied(&self, host: Option<&str>) -> AppliedPolicy {
        let (name, policy) = match self {
            TlsRequirement::Opportunistic => return AppliedPolicy::named(NO_POLICY),
            TlsRequirement::StsEnforce(p) => ("mta-sts", p),
            TlsRequirement::StsTesting(p) => ("mta-sts-testing", p),
        };
        AppliedPolicy {
            name: name.to_string(),
            sts: Some(StsFacts {
                id: policy.id.clone(),
                mx: host.and_then(|h| pattern(policy, h)),
            }),
            tlsa_digest: None,
        }
    }

    /// What the published policies say of MX host `host` of `domain`, with the log facts. A
    /// host under DANE is judged by DANE alone, whatever MTA-STS says (DANE takes
    /// precedence, RFC 8461 §2; RFC 7672 §2.2); the others by this requirement.
    pub fn published_plan(
        &self,
        dane: &DanePlan,
        host: &str,
        domain: &str,
        port: u16,
    ) -> (HostPlan, AppliedPolicy) {
        match dane.host(host) {
            Some(HostDane::Authenticate(auth)) => {
                (HostPlan::Dane(auth.clone()), AppliedPolicy::named(DANE))
            }
            // No usable record means no DANE check (RFC 7672 §2.2): TLS is mandatory, and an
            // enforced MTA-STS policy, which demands more, still applies.
            Some(HostDane::EncryptOnly { .. }) => match self.host_plan(host, domain) {
                HostPlan::Opportunistic | HostPlan::Probe { .. } => {
                    (HostPlan::Encrypt, AppliedPolicy::named(DANE))
                }
                sts => (sts, self.applied(Some(host))),
            },
            Some(HostDane::LookupError { reason, .. }) => (
                HostPlan::Skip(TlsFailure::TlsaLookup {
                    host: host.to_string(),
                    port,
                    reason: reason.clone(),
                }),
                AppliedPolicy::named(DANE),
            ),
            Some(HostDane::NotApplicable(_)) | None => {
                (self.host_plan(host, domain), self.applied(Some(host)))
            }
        }
    }

    /// RFC 8461 §5.1: did a re-fetched policy change anything that could change the outcome
    /// (its id, mode or MX patterns)?
    pub fn differs_from(&self, other: &TlsRequirement) -> bool {
        match (self.sts(), other.sts()) {
            (Some(a), Some(b)) => a.id != b.id || a.policy != b.policy,
            (None, None) => false,
            _ => true,
        }
    }
}

/// The `mx` pattern of `policy` that `host` matches.
fn pattern(policy: &ActivePolicy, host: &str) -> Option<String> {
    policy.policy.matching(host).map(|p| p.0.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_cache::{MxPattern, Policy};
    use std::time::SystemTime;

    fn active(mode: Mode, id: &str, mx: &[&str]) -> Arc<ActivePolicy> {
        Arc::new(ActivePolicy {
            domain: "example.net".into(),
            id: id.into(),
            policy: Policy {
                mode,
                mx: mx.iter().map(|m| MxPattern(m.to_string())).collect(),
                max_age: 86400,
            },
            fetched_at: SystemTime::UNIX_EPOCH,
            expires_at: SystemTime::UNIX_EPOCH,
        })
    }

    fn decide(lookup: StsLookup) -> Result<TlsRequirement, Failure> {
        requirement(lookup, "example.net")
    }

    #[test]
    fn the_mode_decides() {
        let none = StsLookup::NoPolicy {
            reason: "no TXT record".into(),
            fetch_failure: None,
        };
        assert_eq!(decide(none).unwrap(), TlsRequirement::Opportunistic);
        let p = active(Mode::None, "1", &["mx.example.net"]);
        assert_eq!(
            decide(StsLookup::Policy(p)).unwrap(),
            TlsRequirement::Opportunistic
        );
        let p = active(Mode::Enforce, "1", &["mx.example.net"]);
        assert!(matches!(
            decide(StsLookup::Policy(p)).unwrap(),
            TlsRequirement::StsEnforce(_)
        ));
        let p = active(Mode::Testing, "1", &["mx.example.net"]);
        assert!(matches!(
            decide(StsLookup::Policy(p)).unwrap(),
            TlsRequirement::StsTesting(_)
        ));
    }

    #[test]
    fn a_failed_lookup_defers_as_a_dns_failure() {
        let f = decide(StsLookup::TempFail {
            reason: "SERVFAIL".into(),
        })
        .unwrap_err();
        assert_eq!(
            f.reply.to_string(),
            "451 4.4.3 MTA-STS policy lookup failed for example.net: SERVFAIL"
        );
        assert!(f.relay.is_none());
        assert!(!f.is_policy_failure());
    }

    #[test]
    fn enforce_skips_hosts_outside_the_policy() {
        let req = TlsRequirement::StsEnforce(active(Mode::Enforce, "1", &["*.example.net"]));
        assert_eq!(
            req.host_plan("mx1.example.net", "example.net"),
            HostPlan::Verified {
                pattern: Some("*.example.net".into())
            }
        );
        let HostPlan::Skip(f) = req.host_plan("mx.elsewhere.test", "example.net") else {
            panic!("not skipped");
        };
        assert_eq!(
            f.reply(None).to_string(),
            "451 4.7.5 MX host mx.elsewhere.test not authorized by MTA-STS policy for example.net"
        );
    }

    #[test]
    fn testing_probes_every_host() {
        let req = TlsRequirement::StsTesting(active(Mode::Testing, "1", &["mx.example.net"]));
        assert_eq!(
            req.host_plan("mx.example.net", "example.net"),
            HostPlan::Probe {
                pattern: Some("mx.example.net".into())
            }
        );
        assert_eq!(
            req.host_plan("other.example.net", "example.net"),
            HostPlan::Probe { pattern: None }
        );
        assert_eq!(
            TlsRequirement::Opportunistic.host_plan("mx.example.net", "example.net"),
            HostPlan::Opportunistic
        );
    }

    #[test]
    fn log_facts() {
        let req = TlsRequirement::StsEnforce(active(Mode::Enforce, "abc", &["*.example.net"]));
        let applied = req.applied(Some("mx1.example.net"));
        assert_eq!(applied.name, "mta-sts");
        assert_eq!(
            applied.sts,
            Some(StsFacts {
                id: "abc".into(),
                mx: Some("*.example.net".into())
            })
        );
        assert_eq!(req.applied(None).sts.unwrap().mx, None);
        let req = TlsRequirement::StsTesting(active(Mode::Testing, "abc", &["*.example.net"]));
        assert_eq!(req.applied(None).name, "mta-sts-testing");
        assert_eq!(
            TlsRequirement::Opportunistic.applied(Some("mx1.example.net")),
            AppliedPolicy::named("none")
        );
    }

    #[test]
    fn a_refetched_policy_differs_by_id_mode_or_mx() {
        let enforce = |id, mx| TlsRequirement::StsEnforce(active(Mode::Enforce, id, &[mx]));
        let a = enforce("1", "mx.example.net");
        assert!(!a.differs_from(&enforce("1", "mx.example.net")));
        assert!(a.differs_from(&enforce("2", "mx.example.net")));
        assert!(a.differs_from(&enforce("1", "mx2.example.net")));
        let testing = TlsRequirement::StsTesting(active(Mode::Testing, "1", &["mx.example.net"]));
        assert!(a.differs_from(&testing));
        assert!(a.differs_from(&TlsRequirement::Opportunistic));
    }
}
