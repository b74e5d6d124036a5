//! What the operator and the message add to the destination's published policy: a local
//! minimum level (destination, sender and listener tables, the strictest wins), REQUIRETLS
//! (RFC 8689 §4.2) and the `TLS-Required: No` header (RFC 8689 §4.1).
//!
//! Each MX host first gets the plan its published policy gives (DANE, else MTA-STS, else
//! opportunistic TLS); [`LocalRequirement::apply`] then raises it, never lowers it:
//! - `none` turns STARTTLS off only where nothing is published;
//! - `encrypt` makes TLS mandatory where the plan left it optional;
//! - `verify` and `secure` demand a PKIX-valid certificate (for the MX host name, or for the
//!   next-hop domain) where neither DANE nor an enforced MTA-STS policy authenticates the host;
//! - `dane-only` refuses every host DANE does not authenticate;
//! - REQUIRETLS refuses every host that neither DANE nor an enforced MTA-STS policy
//!   authenticates (the session later checks that the server advertises REQUIRETLS).

use super::attempt::AppliedPolicy;
use super::dane::DanePlan;
use super::requirement::{HostPlan, TlsRequirement, DANE};
use super::tls_failure::TlsFailure;
use crate::envelope::Envelope;
use crate::tls_policy::{Floor, TlsLevel, TlsPolicies};

/// The `policy=` name when `TLS-Required: No` set the requirement aside.
pub(crate) const TLS_REQUIRED_NO: &str = "tls-required-no";
/// The `policy=` name of a REQUIRETLS message.
pub(crate) const REQUIRETLS: &str = "requiretls";

/// The local side of one job's requirement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LocalRequirement {
    /// The operator's minimum for this message and domain.
    pub floor: Option<Floor>,
    /// RFC 8689: the message was accepted with `MAIL FROM:<…> REQUIRETLS`.
    pub requiretls: bool,
    /// RFC 8689 §4.1: the message says `TLS-Required: No` and nothing forbids honouring it:
    /// DANE and MTA-STS are not consulted; TLS stays opportunistic.
    pub tls_required_no: bool,
    /// `[dns] dnssec = "off"`: no TLSA record can ever be had, so `dane-only` is our own
    /// set-up's failure, never the destination's.
    pub dnssec_off: bool,
}

impl LocalRequirement {
    /// The requirement for `envelope`'s message (`message` is its stored text) to `domain`.
    pub fn for_job(
        policies: &TlsPolicies,
        envelope: &Envelope,
        message: &[u8],
        domain: &str,
    ) -> LocalRequirement {
        let floor = policies.floor(&envelope.mail_from, envelope.min_tls_level, domain);
        // A TLS report of ours goes as if it said so itself (RFC 8460 §5.3).
        let header =
            !envelope.requiretls && (envelope.tls_report || says_tls_not_required(message));
        // The sender's or the listener's level is a promise made for this sender; a header
        // the sender wrote does not undo it.
        let forbidden = floor
            .and_then(|f| f.sender_side)
            .is_some_and(|l| !l.is_automatic() && l != TlsLevel::None)
            // Setting DANE aside would leave a `dane-only` destination nothing to deliver to.
            || floor.is_some_and(|f| f.level == TlsLevel::DaneOnly);
        if header && forbidden {
            tracing::info!(
                "TLS-Required: No ignored for sender <{}>: its level forbids it",
                envelope.mail_from
            );
        }
        LocalRequirement {
            floor,
            requiretls: envelope.requiretls,
            tls_required_no: header && !forbidden,
            dnssec_off: false,
        }
    }

    /// What to do with MX host `host` of `domain`, and the log facts: the published
    /// policies' plan, raised by this requirement (never lowered).
    pub fn plan_host(
        &self,
        requirement: &TlsRequirement,
        dane: &DanePlan,
        host: &str,
        domain: &str,
        port: u16,
    ) -> (HostPlan, AppliedPolicy) {
        let (base, applied) = requirement.published_plan(dane, host, domain, port);
        match self.apply(base, host, domain) {
            (plan, Some(label)) => (plan, AppliedPolicy::named(&label)),
            (plan, None) => (plan, applied),
        }
    }

    /// The log facts when no host is named (nothing was dialled).
    pub fn applied_to_domain(
        &self,
        requirement: &TlsRequirement,
        dane: &DanePlan,
    ) -> AppliedPolicy {
        if self.requiretls {
            return AppliedPolicy::named(REQUIRETLS);
        }
        if self.tls_required_no {
            return AppliedPolicy::named(TLS_REQUIRED_NO);
        }
        if dane.applies() {
            return AppliedPolicy::named(DANE);
        }
        match self.floor.map(|f| f.level) {
            Some(level) if !level.is_automatic() && requirement.sts().is_none() => {
                AppliedPolicy::named(&format!("local:{level}"))
            }
            _ => requirement.applied(None),
        }
    }

    /// Whether DANE and MTA-STS are looked up at all.
    pub fn uses_published(&self) -> bool {
        !self.tls_required_no
    }

    /// Raises `base`, the plan the published policy gives MX host `host` of `domain`, to the
    /// local requirement. The second value names the policy for the log when it is not the
    /// published one's.
    pub fn apply(&self, base: HostPlan, host: &str, domain: &str) -> (HostPlan, Option<String>) {
        let (plan, mut label) = match self.floor.map(|f| f.level) {
            Some(level) => raise(base, level, host, domain, self.dnssec_off),
            None => (base, None),
        };
        if label.is_none() && self.tls_required_no {
            label = Some(TLS_REQUIRED_NO.to_string());
        }
        if !self.requiretls {
            return (plan, label);
        }
        // RFC 8689 §4.2.1: only a host authenticated by DANE or an enforced MTA-STS policy.
        let plan = match plan {
            plan @ (HostPlan::Dane(_)
            | HostPlan::Verified { pattern: Some(_) }
            | HostPlan::Secure {
                mx_pattern: Some(_),
                ..
            }) => plan,
            plan @ HostPlan::Skip(_) => plan,
            _ => HostPlan::Skip(TlsFailure::RequireTls {
                host: host.to_string(),
                reason: "not authenticated by DANE or an enforced MTA-STS policy".into(),
            }),
        };
        (plan, Some(REQUIRETLS.to_string()))
    }
}

/// The plan under a local minimum `level`; the label when the level changed the plan.
/// `dnssec_off`: no TLSA record can be had here, so `dane-only` fails as our own set-up's fault.
fn raise(
    base: HostPlan,
    level: TlsLevel,
    host: &str,
    domain: &str,
    dnssec_off: bool,
) -> (HostPlan, Option<String>) {
    let local = |plan| (plan, Some(format!("local:{level}")));
    match (level, base) {
        // Skipped hosts stay skipped; no level makes them usable.
        (_, base @ HostPlan::Skip(_)) => (base, None),
        (TlsLevel::None, HostPlan::Opportunistic) => local(HostPlan::Plaintext),
        (TlsLevel::Encrypt, HostPlan::Opportunistic | HostPlan::Probe { .. }) => {
            local(HostPlan::Encrypt)
        }
        (
            TlsLevel::Verify,
            HostPlan::Opportunistic | HostPlan::Probe { .. } | HostPlan::Encrypt,
        ) => local(HostPlan::Verified { pattern: None }),
        // `secure` trusts no name DNS alone vouches for: even an MTA-STS-listed host must have
        // a certificate for the next-hop domain (DANE authenticates by itself).
        (TlsLevel::Secure, HostPlan::Verified { pattern }) => local(HostPlan::Secure {
            domain: domain.to_string(),
            mx_pattern: pattern,
        }),
        (TlsLevel::Secure, base) if !matches!(base, HostPlan::Dane(_)) => local(HostPlan::Secure {
            domain: domain.to_string(),
            mx_pattern: None,
        }),
        (TlsLevel::DaneOnly, base @ HostPlan::Dane(_)) => (base, None),
        (TlsLevel::DaneOnly, _) => local(HostPlan::Skip(TlsFailure::DaneRequired {
            host: host.to_string(),
            dnssec_off,
        })),
        (_, base) => (base, None),
    }
}

/// RFC 8689 §4.1: a `TLS-Required: No` header field in the message's header section (names
/// compare without case; the value `No`, also without case).
pub fn says_tls_not_required(message: &[u8]) -> bool {
    super::data::unfolded_header(message)
        .split("\r\n")
        .any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("TLS-Required") && value.trim().eq_ignore_ascii_case("no")
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floor(level: TlsLevel, sender_side: Option<TlsLevel>) -> Option<Floor> {
        Some(Floor { level, sender_side })
    }

    fn with(level: TlsLevel) -> LocalRequirement {
        LocalRequirement {
            floor: floor(level, None),
            ..Default::default()
        }
    }

    #[test]
    fn levels_raise_but_never_lower() {
        let (p, l) = with(TlsLevel::Encrypt).apply(HostPlan::Opportunistic, "mx", "d");
        assert_eq!(
            (p, l.as_deref()),
            (HostPlan::Encrypt, Some("local:encrypt"))
        );
        let sts = HostPlan::Verified {
            pattern: Some("mx".into()),
        };
        let (p, l) = with(TlsLevel::Encrypt).apply(sts.clone(), "mx", "d");
        assert_eq!(
            (p, l),
            (sts.clone(), None),
            "an enforced policy is stricter"
        );
        let (p, l) = with(TlsLevel::None).apply(sts.clone(), "mx", "d");
        assert_eq!((p, l), (sts.clone(), None), "none never weakens a policy");
        let (p, _) = with(TlsLevel::None).apply(HostPlan::Opportunistic, "mx", "d");
        assert_eq!(p, HostPlan::Plaintext);
        let (p, _) = with(TlsLevel::Verify).apply(HostPlan::Encrypt, "mx", "d");
        assert_eq!(p, HostPlan::Verified { pattern: None });
        let (p, _) = with(TlsLevel::Secure).apply(sts, "mx", "d");
        assert_eq!(
            p,
            HostPlan::Secure {
                domain: "d".into(),
                mx_pattern: Some("mx".into())
            }
        );
        let (p, l) = with(TlsLevel::DaneOnly).apply(HostPlan::Encrypt, "mx", "d");
        assert!(matches!(p, HostPlan::Skip(TlsFailure::DaneRequired { .. })));
        assert_eq!(l.as_deref(), Some("local:dane-only"));
        for level in [TlsLevel::May, TlsLevel::Dane, TlsLevel::MtaSts] {
            let (p, l) = with(level).apply(HostPlan::Opportunistic, "mx", "d");
            assert_eq!(
                (p, l),
                (HostPlan::Opportunistic, None),
                "{level} is automatic"
            );
        }
    }

    #[test]
    fn requiretls_needs_dane_or_enforced_mta_sts() {
        let r = LocalRequirement {
            requiretls: true,
            ..Default::default()
        };
        let sts = HostPlan::Verified {
            pattern: Some("mx".into()),
        };
        assert_eq!(
            r.apply(sts.clone(), "mx", "d"),
            (sts, Some("requiretls".into()))
        );
        for plan in [
            HostPlan::Opportunistic,
            HostPlan::Encrypt,
            HostPlan::Verified { pattern: None },
        ] {
            let (p, _) = r.apply(plan, "mx", "d");
            assert!(
                matches!(p, HostPlan::Skip(TlsFailure::RequireTls { .. })),
                "{p:?}"
            );
        }
    }

    #[test]
    fn tls_required_no_header() {
        assert!(says_tls_not_required(
            b"Subject: x\r\nTLS-Required: No\r\n\r\nbody"
        ));
        assert!(says_tls_not_required(b"tls-required:no\r\n\r\n"));
        assert!(
            says_tls_not_required(b"TLS-Required:\r\n No\r\n\r\n"),
            "folded"
        );
        assert!(!says_tls_not_required(
            b"Subject: x\r\n\r\nTLS-Required: No\r\n"
        ));
        assert!(!says_tls_not_required(b"X-TLS-Required: No\r\n\r\n"));
        assert!(!says_tls_not_required(b"TLS-Required: Yes\r\n\r\n"));

        let mut env = Envelope::new("alice@example.org");
        let msg = b"TLS-Required: No\r\n\r\nhi\r\n";
        let policies = TlsPolicies::default();
        let r = LocalRequirement::for_job(&policies, &env, msg, "example.net");
        assert!(r.tls_required_no && !r.uses_published());
        let (_, label) = r.apply(HostPlan::Opportunistic, "mx", "d");
        assert_eq!(label.as_deref(), Some(TLS_REQUIRED_NO));
        // A listener level forbids it.
        env.min_tls_level = Some(TlsLevel::Encrypt);
        let r = LocalRequirement::for_job(&policies, &env, msg, "example.net");
        assert!(!r.tls_required_no);
        // REQUIRETLS and the header exclude each other: REQUIRETLS wins (RFC 8689 §4.1).
        env.min_tls_level = None;
        env.requiretls = true;
        let r = LocalRequirement::for_job(&policies, &env, msg, "example.net");
        assert!(!r.tls_required_no && r.requiretls);
    }
}
