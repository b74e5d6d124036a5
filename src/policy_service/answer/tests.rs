//! The answer table, case by case, through the real plan: each case builds the facts
//! delivery would have for a two-host domain and asks what Postfix is told.

use super::*;
use crate::delivery::dane::DaneAuth;
use crate::delivery::local::LocalRequirement;
use crate::delivery::plan::{self, Facts};
use crate::tls_policy::{Floor, TlsLevel};
use policy_cache::dane::{ReferenceNames, Tlsa};
use policy_cache::{ActivePolicy, Mode, MxPattern, Policy};
use std::sync::Arc;
use std::time::SystemTime;

const DOMAIN: &str = "example.net";
const MX1: &str = "mx1.example.net";
const MX2: &str = "mx2.example.net";

fn records(host: &str) -> HostDane {
    HostDane::Authenticate(DaneAuth {
        tlsa_name: format!("_25._tcp.{host}"),
        records: vec![Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![7; 32],
        }],
        names: ReferenceNames::new(host),
        sni: host.into(),
    })
}

fn unusable(host: &str) -> HostDane {
    HostDane::EncryptOnly {
        tlsa_name: format!("_25._tcp.{host}"),
    }
}

fn broken(host: &str) -> HostDane {
    HostDane::LookupError {
        tlsa_name: format!("_25._tcp.{host}"),
        reason: "SERVFAIL".into(),
    }
}

fn no_tlsa() -> HostDane {
    HostDane::NotApplicable("no TLSA records".into())
}

/// DANE's verdicts on MX1 and MX2 (a secure MX RRset).
fn dane(mx1: HostDane, mx2: HostDane) -> DanePlan {
    DanePlan {
        mx_secure: true,
        hosts: None,
        verdicts: vec![(MX1.to_string(), mx1), (MX2.to_string(), mx2)],
    }
}

fn sts(mode: Mode, mx: &[&str]) -> TlsRequirement {
    let active = Arc::new(ActivePolicy {
        domain: DOMAIN.into(),
        id: "20261206".into(),
        policy: Policy {
            mode,
            mx: mx.iter().map(|m| MxPattern(m.to_string())).collect(),
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

fn level(level: Option<TlsLevel>) -> LocalRequirement {
    LocalRequirement {
        floor: level.map(|level| Floor {
            level,
            sender_side: None,
        }),
        ..LocalRequirement::default()
    }
}

fn ask(dane: &DanePlan, requirement: &TlsRequirement, local: &LocalRequirement) -> Answer {
    ask_sni(dane, requirement, local, true)
}

fn ask_sni(
    dane: &DanePlan,
    requirement: &TlsRequirement,
    local: &LocalRequirement,
    require_sni: bool,
) -> Answer {
    let hosts = [MX1.to_string(), MX2.to_string()];
    let plan = plan::plan(&Facts {
        domain: DOMAIN,
        hosts: &hosts,
        port: 25,
        dane,
        requirement,
        local,
    });
    answer(&Decision {
        plan: &plan,
        dane,
        requirement,
        require_sni,
    })
}

fn ok(text: &str) -> Answer {
    Answer::Ok(text.into())
}

#[test]
fn table() {
    let none = DanePlan::none();
    let both = dane(records(MX1), records(MX2));
    let first = dane(records(MX1), no_tlsa());
    let first_unusable_other = dane(records(MX1), unusable(MX2));
    let first_broken_other = dane(records(MX1), broken(MX2));
    let unusable_both = dane(unusable(MX1), unusable(MX2));
    let unusable_first = dane(unusable(MX1), no_tlsa());
    let broken_first = dane(broken(MX1), no_tlsa());
    let broken_both = dane(broken(MX1), broken(MX2));
    let enforce = sts(Mode::Enforce, &["*.example.net", "mx9.example.org"]);
    let testing = sts(Mode::Testing, &["*.example.net"]);
    let opportunistic = TlsRequirement::Opportunistic;
    let nothing = level(None);
    let secure_match = "secure match=.example.net:mx9.example.org servername=hostname";
    #[rustfmt::skip]
    let table: Vec<(&str, &DanePlan, &TlsRequirement, LocalRequirement, Answer)> = vec![
        ("DANE on every host", &both, &opportunistic, nothing, ok("dane-only")),
        ("DANE beats an enforced MTA-STS policy (RFC 8461 §2)", &both, &enforce, nothing, ok("dane-only")),
        ("DANE on one host, the other opportunistic: Postfix's dane does the same", &first, &opportunistic, nothing, ok("dane")),
        ("DANE on one host, the other encrypt-only", &first_unusable_other, &opportunistic, nothing, ok("dane")),
        ("DANE on one host, the other under MTA-STS: never weaker, so dane-only", &first, &enforce, nothing, ok("dane-only")),
        ("DANE on one host, the other under MTA-STS testing (opportunistic)", &first, &testing, nothing, ok("dane")),
        ("DANE on one host, the other's TLSA lookup failed", &first_broken_other, &opportunistic, nothing, ok("dane-only")),
        ("a failed TLSA lookup beside an opportunistic host: Postfix's dane waits too", &broken_first, &opportunistic, nothing, ok("dane")),
        ("a failed TLSA lookup beside an MTA-STS host: never weaker", &broken_first, &enforce, nothing, ok("dane-only")),
        ("every TLSA lookup failed", &broken_both, &enforce, nothing,
            Answer::Temp("TLSA lookup error for mx1.example.net:25: SERVFAIL".into())),
        ("no usable TLSA record anywhere: encrypt, which Postfix's dane gives", &unusable_both, &opportunistic, nothing, ok("dane")),
        ("no usable TLSA on one host, none on the other", &unusable_first, &opportunistic, nothing, ok("dane")),
        ("no usable TLSA, but an enforced policy demands more", &unusable_both, &enforce, nothing, ok(secure_match)),
        ("enforce: the policy's patterns", &none, &enforce, nothing, ok(secure_match)),
        ("testing: as without a policy", &none, &testing, nothing, Answer::NotFound),
        ("nothing published", &none, &opportunistic, nothing, Answer::NotFound),
        ("local encrypt", &none, &opportunistic, level(Some(TlsLevel::Encrypt)), ok("encrypt")),
        ("local verify", &none, &opportunistic, level(Some(TlsLevel::Verify)), ok("verify servername=hostname")),
        ("local verify over testing", &none, &testing, level(Some(TlsLevel::Verify)), ok("verify servername=hostname")),
        ("local verify under enforce: the policy already verifies", &none, &enforce, level(Some(TlsLevel::Verify)), ok(secure_match)),
        ("local secure", &none, &opportunistic, level(Some(TlsLevel::Secure)), ok("secure servername=hostname")),
        ("local secure over enforce", &none, &enforce, level(Some(TlsLevel::Secure)), ok("secure servername=hostname")),
        ("local none where nothing is published", &none, &opportunistic, level(Some(TlsLevel::None)), ok("none")),
        ("local none never weakens MTA-STS", &none, &enforce, level(Some(TlsLevel::None)), ok(secure_match)),
        ("local none never weakens DANE", &both, &opportunistic, level(Some(TlsLevel::None)), ok("dane-only")),
        ("local dane-only without DANE", &none, &enforce, level(Some(TlsLevel::DaneOnly)), ok("dane-only")),
        ("local dane-only with DANE on one host", &first, &opportunistic, level(Some(TlsLevel::DaneOnly)), ok("dane-only")),
        ("local encrypt raises DANE's other host: never weaker", &first, &opportunistic, level(Some(TlsLevel::Encrypt)), ok("dane-only")),
        ("automatic local levels change nothing", &none, &opportunistic, level(Some(TlsLevel::May)), Answer::NotFound),
    ];
    for (case, dane, requirement, local, want) in table {
        assert_eq!(ask(dane, requirement, &local), want, "{case}");
    }
}

#[test]
fn servername_only_with_require_sni() {
    let enforce = sts(Mode::Enforce, &["mx1.example.net"]);
    let none = DanePlan::none();
    assert_eq!(
        ask_sni(&none, &enforce, &level(None), false),
        ok("secure match=mx1.example.net")
    );
    assert_eq!(
        ask_sni(
            &none,
            &TlsRequirement::Opportunistic,
            &level(Some(TlsLevel::Verify)),
            false
        ),
        ok("verify")
    );
}

#[test]
fn match_lists_are_postfix_syntax_each_pattern_once() {
    let req = sts(
        Mode::Enforce,
        &[
            "mx1.example.net",
            "*.example.net",
            "mx1.example.net",
            "*.mail.example.org",
        ],
    );
    assert_eq!(
        match_list(&req).as_deref(),
        Some("mx1.example.net:.example.net:.mail.example.org")
    );
    assert_eq!(match_list(&TlsRequirement::Opportunistic), None);
}

#[test]
fn payloads() {
    assert_eq!(ok("dane-only").payload(), "OK dane-only");
    assert_eq!(Answer::NotFound.payload(), "NOTFOUND ");
    assert_eq!(
        Answer::Temp("SERVFAIL for x\r\n\u{7f}é".into()).payload(),
        "TEMP SERVFAIL for x????"
    );
    assert_eq!(Answer::Perm("x".repeat(500)).payload().len(), 5 + 200);
    assert_eq!(Answer::NotFound.to_string(), "NOTFOUND");
}
