//! The readable report: sections for the MX RRset, each MX host (addresses, DNSSEC, TLSA, DANE,
//! its policy and, with `--connect`, its sessions), MTA-STS, and the domain's effective policy.

use super::{
    Dnssec, FetchState, HostReport, MxKind, Probe, Report, Rrset, StartTlsState, StsReport,
    TxtStatus, Verdict,
};
use std::fmt::Write as _;

/// The report as text, ending in a newline.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let s = &r.settings;
    let servers = match s.nameservers.is_empty() {
        true => "resolv.conf".to_string(),
        false => s.nameservers.join(", "),
    };
    line(
        &mut out,
        0,
        &format!(
            "mxguard check {}  (dns: {servers}, dnssec {}; smtp port {})",
            r.domain, s.dnssec, s.smtp_port
        ),
    );
    if let Some(route) = &r.route {
        line(
            &mut out,
            0,
            &format!("static route: {route} (DANE and MTA-STS not applied)"),
        );
    }
    out.push('\n');
    mx(&mut out, r);
    for host in &r.hosts {
        out.push('\n');
        host_section(&mut out, host);
    }
    out.push('\n');
    mta_sts(&mut out, &r.mta_sts);
    out.push('\n');
    line(
        &mut out,
        0,
        &format!("Effective policy for {}: {}", r.domain, r.policy.label),
    );
    line(&mut out, 2, &r.policy.reason);
    out
}

fn mx(out: &mut String, r: &Report) {
    let m = &r.mx;
    line(out, 0, "MX");
    match m.kind {
        MxKind::AddressLiteral => line(out, 2, "address literal: no MX lookup"),
        _ => line(out, 2, &format!("MX RRset: {}", rrset(&m.dnssec))),
    }
    let what = match m.kind {
        MxKind::Mx => None,
        MxKind::Implicit => Some(
            "no MX records: the domain itself is the mail host (implicit MX, RFC 5321 §5.1)"
                .to_string(),
        ),
        MxKind::NullMx => Some("null MX (RFC 7505): the domain accepts no mail".to_string()),
        MxKind::NotFound => Some(format!("{} does not exist (NXDOMAIN)", r.domain)),
        MxKind::Failed => Some("no answer: delivery would try again later".to_string()),
        MxKind::AddressLiteral => None,
    };
    if let Some(what) = what {
        line(out, 2, &what);
    }
    for h in &m.hosts {
        match h.preference {
            Some(p) => line(out, 2, &format!("{p:>5}  {}", h.name)),
            None => line(out, 2, &format!("    -  {}", h.name)),
        }
    }
    if let Some(e) = &m.error {
        line(out, 2, &format!("delivery: {e}"));
    }
}

fn host_section(out: &mut String, h: &HostReport) {
    let preference = h
        .preference
        .map_or(String::new(), |p| format!(" (preference {p})"));
    line(out, 0, &format!("MX host {}{preference}", h.name));
    if !h.addresses.is_empty() {
        let addrs: Vec<String> = h.addresses.iter().map(ToString::to_string).collect();
        line(out, 2, &format!("addresses: {}", addrs.join(", ")));
    }
    if let Some(e) = &h.address_error {
        line(out, 2, &format!("addresses: none ({e})"));
    }
    if !h.address_dnssec.is_empty() {
        let parts: Vec<String> = h
            .address_dnssec
            .iter()
            .map(|t| format!("{} {}", t.rtype, rrset(&t.rrset)))
            .collect();
        line(out, 2, &format!("address records: {}", parts.join("; ")));
    }
    match &h.tlsa {
        Some(t) => {
            line(out, 2, &format!("TLSA {}: {}", t.name, rrset(&t.dnssec)));
            for rec in &t.records {
                let usable = match &rec.unusable_reason {
                    None => "usable".to_string(),
                    Some(why) => format!("unusable: {why}"),
                };
                line(out, 4, &format!("{}  [{usable}]", rec.text));
            }
        }
        None => line(out, 2, "TLSA: not looked up"),
    }
    line(out, 2, &format!("DANE: {}", h.dane.text));
    if let Some(p) = &h.sts_pattern {
        line(out, 2, &format!("MTA-STS: matches mx pattern {p}"));
    }
    line(out, 2, &format!("effective policy: {}", h.policy.label));
    line(out, 4, &h.policy.reason);
    for p in &h.probes {
        probe(out, p);
    }
}

fn probe(out: &mut String, p: &Probe) {
    let addr = p.address.map_or("-".to_string(), |a| a.to_string());
    line(out, 2, &format!("connect {addr}:"));
    if let Some(g) = &p.greeting {
        line(out, 4, &format!("greeting: {g}"));
    }
    if let Some(e) = &p.ehlo {
        line(out, 4, &format!("EHLO: {e} [{}]", p.extensions.join(", ")));
    }
    match p.starttls {
        StartTlsState::Offered => {
            let tls = match (&p.tls, &p.handshake_error) {
                (Some(t), _) => format!(
                    "handshake ok: {}, {}, {}",
                    t.version,
                    t.cipher,
                    t.kx.as_deref().unwrap_or("-")
                ),
                (None, Some(e)) => format!("handshake failed: {e}"),
                (None, None) => "handshake not completed".to_string(),
            };
            line(out, 4, &format!("STARTTLS: offered; {tls}"));
        }
        StartTlsState::NotOffered => line(out, 4, "STARTTLS: not offered"),
        StartTlsState::Refused => {
            let reply = p.starttls_reply.as_deref().unwrap_or("-");
            line(out, 4, &format!("STARTTLS: refused ({reply})"));
        }
        StartTlsState::NotReached => {}
    }
    if let Some(ext) = &p.tls_extensions {
        line(out, 4, &format!("EHLO after TLS: [{}]", ext.join(", ")));
    }
    if let Some(e) = &p.error {
        line(out, 4, &format!("error: {e}"));
    }
    if !p.chain.is_empty() {
        line(out, 4, "certificate chain:");
    }
    for (depth, c) in p.chain.iter().enumerate() {
        line(out, 6, &format!("[{depth}] subject {}", c.subject));
        line(out, 10, &format!("issuer  {}", c.issuer));
        line(
            out,
            10,
            &format!("valid   {} to {}", c.not_before, c.not_after),
        );
        if !c.san.is_empty() {
            line(out, 10, &format!("names   {}", c.san.join(", ")));
        }
        if depth == 0 {
            line(out, 10, &format!("TLSA 3 1 1 {}", c.spki_sha256));
        }
    }
    if let Some(v) = &p.pkix {
        line(out, 4, &format!("PKIX: {}", verdict(v)));
    }
    if let Some(v) = &p.dane {
        line(out, 4, &format!("DANE: {}", verdict(v)));
    }
    line(
        out,
        4,
        &format!("under the policy: {}", verdict(&p.under_policy)),
    );
}

fn mta_sts(out: &mut String, s: &StsReport) {
    let disabled = match s.enabled {
        true => "",
        false => " (disabled: mta_sts.enabled = false; shown, not applied)",
    };
    line(out, 0, &format!("MTA-STS{disabled}"));
    let t = &s.txt;
    let txt = match t.status {
        TxtStatus::Record => format!("id={}", t.id.as_deref().unwrap_or("-")),
        TxtStatus::Absent => "no MTA-STS TXT record".to_string(),
        TxtStatus::Invalid => format!("invalid: {}", t.error.as_deref().unwrap_or("-")),
        TxtStatus::Failed => format!("lookup failed: {}", t.error.as_deref().unwrap_or("-")),
    };
    line(out, 2, &format!("TXT {}: {txt}", t.name));
    for record in &t.records {
        line(out, 4, &format!("\"{record}\""));
    }
    match s.fetch {
        FetchState::Skipped => {
            let why = match t.status {
                TxtStatus::Failed => "the TXT lookup failed",
                _ => "no valid TXT record",
            };
            line(out, 2, &format!("policy: not fetched ({why})"));
        }
        FetchState::Failed => line(
            out,
            2,
            &format!(
                "policy {}: fetch failed: {}",
                s.policy_url,
                s.fetch_error.as_deref().unwrap_or("-")
            ),
        ),
        FetchState::Fetched => {
            line(out, 2, &format!("policy {} (fetched now):", s.policy_url));
            if let Some(p) = &s.policy {
                line(out, 4, &format!("mode {}, max_age {}", p.mode, p.max_age));
                for mx in &p.mx {
                    line(out, 4, &format!("mx: {mx}"));
                }
            }
        }
    }
    for a in &s.authorized {
        match &a.pattern {
            Some(p) => line(out, 2, &format!("authorizes {} (mx: {p})", a.host)),
            None => line(out, 2, &format!("does not authorize {}", a.host)),
        }
    }
}

fn rrset(r: &Rrset) -> String {
    let status = match r.status {
        Dnssec::Secure => "secure",
        Dnssec::Insecure => "insecure",
        Dnssec::Bogus => "bogus",
        Dnssec::Failed => "failed",
        Dnssec::Unchecked => "not validated",
    };
    format!("{status} ({})", r.detail)
}

fn verdict(v: &Verdict) -> String {
    let word = if v.ok { "ok" } else { "FAILED" };
    format!("{word}: {}", v.detail)
}

fn line(out: &mut String, indent: usize, text: &str) {
    // Peer-controlled text (greetings, certificate names) never spans lines of the report.
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let _ = writeln!(out, "{:indent$}{text}", "");
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    fn rr(status: Dnssec, detail: &str) -> Rrset {
        Rrset {
            status,
            detail: detail.into(),
        }
    }

    fn report() -> Report {
        let host = HostReport {
            name: "mx1.example.test".into(),
            preference: Some(10),
            addresses: vec!["192.0.2.25".parse().unwrap()],
            address_error: None,
            address_dnssec: vec![TypedRrset {
                rtype: "A".into(),
                rrset: rr(Dnssec::Secure, "1 record"),
            }],
            tlsa: Some(TlsaReport {
                name: "_25._tcp.mx1.example.test".into(),
                dnssec: rr(Dnssec::Secure, "2 records"),
                records: vec![
                    TlsaRecord {
                        usage: 3,
                        selector: 1,
                        matching: 1,
                        data: "ab".repeat(32),
                        text: format!("DANE-EE(3) SPKI(1) SHA2-256(1) {}", "ab".repeat(32)),
                        usable: true,
                        unusable_reason: None,
                    },
                    TlsaRecord {
                        usage: 1,
                        selector: 1,
                        matching: 1,
                        data: "cd".repeat(32),
                        text: format!("PKIX-EE(1) SPKI(1) SHA2-256(1) {}", "cd".repeat(32)),
                        usable: false,
                        unusable_reason: Some(
                            "certificate usage 1 (PKIX) is not used for SMTP".into(),
                        ),
                    },
                ],
            }),
            dane: DaneReport {
                state: DaneState::Authenticate,
                text: "1 usable TLSA record(s) at _25._tcp.mx1.example.test".into(),
            },
            sts_pattern: Some("*.example.test".into()),
            policy: EffectivePolicy::new(
                PolicyKind::Dane,
                "1 usable TLSA record(s): DANE takes precedence",
            ),
            probes: vec![Probe {
                address: Some("192.0.2.25:25".parse().unwrap()),
                connected: true,
                greeting: Some("220 mx1.example.test ESMTP\r\nX".into()),
                ehlo: Some("mx1.example.test".into()),
                extensions: vec!["STARTTLS".into(), "SIZE 1000".into()],
                starttls: StartTlsState::Offered,
                starttls_reply: Some("220 go ahead".into()),
                tls: Some(TlsSession {
                    version: "TLSv1.3".into(),
                    cipher: "TLS13_AES_256_GCM_SHA384".into(),
                    kx: Some("X25519MLKEM768".into()),
                }),
                tls_extensions: Some(vec!["SIZE 1000".into()]),
                handshake_error: None,
                chain: vec![CertInfo {
                    subject: "CN=mx1.example.test".into(),
                    issuer: "CN=lab CA".into(),
                    not_before: "2026-01-01T00:00:00Z".into(),
                    not_after: "2027-01-01T00:00:00Z".into(),
                    san: vec!["DNS:mx1.example.test".into()],
                    sha256: "00".into(),
                    spki_sha256: "ab".repeat(32),
                }],
                pkix: Some(Verdict::fail(
                    "not valid for mx1.example.test: unknown issuer",
                )),
                dane: Some(Verdict::ok("matched DANE-EE(3) at depth 0")),
                error: None,
                under_policy: Verdict::ok("would deliver: authenticated by DANE"),
            }],
        };
        Report {
            domain: "example.test".into(),
            settings: Settings {
                dnssec: "validate".into(),
                nameservers: vec!["127.0.0.1:53".into()],
                smtp_port: 25,
                mta_sts_enabled: true,
                local_level: None,
                connect: true,
            },
            route: None,
            mx: MxReport {
                kind: MxKind::Mx,
                dnssec: rr(Dnssec::Secure, "1 record"),
                hosts: vec![MxEntry {
                    name: "mx1.example.test".into(),
                    preference: Some(10),
                }],
                error: None,
            },
            hosts: vec![host],
            mta_sts: StsReport {
                enabled: true,
                txt: TxtReport {
                    name: "_mta-sts.example.test".into(),
                    status: TxtStatus::Record,
                    records: vec!["v=STSv1; id=20260101".into()],
                    id: Some("20260101".into()),
                    error: None,
                },
                policy_url: "https://mta-sts.example.test/.well-known/mta-sts.txt".into(),
                fetch: FetchState::Fetched,
                policy: Some(StsPolicy {
                    mode: "enforce".into(),
                    mx: vec!["*.example.test".into()],
                    max_age: 86400,
                }),
                fetch_error: None,
                authorized: vec![Authorization {
                    host: "mx1.example.test".into(),
                    pattern: Some("*.example.test".into()),
                }],
            },
            policy: EffectivePolicy::new(
                PolicyKind::Dane,
                "every MX host has usable TLSA records; the MTA-STS policy is overridden",
            ),
            delivery_error: None,
        }
    }

    #[test]
    fn renders_every_section() {
        let text = render(&report());
        for expected in [
            "mxguard check example.test  (dns: 127.0.0.1:53, dnssec validate; smtp port 25)",
            "  MX RRset: secure (1 record)",
            "     10  mx1.example.test",
            "MX host mx1.example.test (preference 10)",
            "  addresses: 192.0.2.25",
            "  address records: A secure (1 record)",
            "  TLSA _25._tcp.mx1.example.test: secure (2 records)",
            &format!(
                "    DANE-EE(3) SPKI(1) SHA2-256(1) {}  [usable]",
                "ab".repeat(32)
            ),
            "[unusable: certificate usage 1 (PKIX) is not used for SMTP]",
            "  DANE: 1 usable TLSA record(s) at _25._tcp.mx1.example.test",
            "  MTA-STS: matches mx pattern *.example.test",
            "  effective policy: dane",
            "  connect 192.0.2.25:25:",
            "    EHLO: mx1.example.test [STARTTLS, SIZE 1000]",
            "    STARTTLS: offered; handshake ok: TLSv1.3, TLS13_AES_256_GCM_SHA384, X25519MLKEM768",
            "    EHLO after TLS: [SIZE 1000]",
            "      [0] subject CN=mx1.example.test",
            "          names   DNS:mx1.example.test",
            "    PKIX: FAILED: not valid for mx1.example.test: unknown issuer",
            "    DANE: ok: matched DANE-EE(3) at depth 0",
            "    under the policy: ok: would deliver: authenticated by DANE",
            "  TXT _mta-sts.example.test: id=20260101",
            "    mode enforce, max_age 86400",
            "    mx: *.example.test",
            "  authorizes mx1.example.test (mx: *.example.test)",
            "Effective policy for example.test: dane",
            "  every MX host has usable TLSA records; the MTA-STS policy is overridden",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        // A server's CR LF does not break the report's lines.
        assert!(
            text.contains("greeting: 220 mx1.example.test ESMTP  X"),
            "{text}"
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn renders_failures_and_absences() {
        let mut r = report();
        r.mx.kind = MxKind::NotFound;
        r.mx.dnssec = rr(Dnssec::Secure, "NXDOMAIN");
        r.mx.hosts.clear();
        r.mx.error = Some("550 5.1.2 Host or domain name not found".into());
        r.hosts.clear();
        r.mta_sts.txt.status = TxtStatus::Absent;
        r.mta_sts.txt.records.clear();
        r.mta_sts.fetch = FetchState::Skipped;
        r.mta_sts.policy = None;
        r.mta_sts.authorized.clear();
        r.policy = EffectivePolicy::new(PolicyKind::NoDelivery, "every recipient gets: 550");
        let text = render(&r);
        for expected in [
            "  MX RRset: secure (NXDOMAIN)",
            "  example.test does not exist (NXDOMAIN)",
            "  delivery: 550 5.1.2 Host or domain name not found",
            "  TXT _mta-sts.example.test: no MTA-STS TXT record",
            "  policy: not fetched (no valid TXT record)",
            "Effective policy for example.test: no delivery",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        assert!(!text.contains("MX host "), "{text}");
    }

    #[test]
    fn json_has_stable_snake_case_keys() {
        let json: serde_json::Value =
            serde_json::from_str(&super::super::to_json(&report())).unwrap();
        assert_eq!(json["mx"]["dnssec"]["status"], "secure");
        assert_eq!(json["mx"]["kind"], "mx");
        let host = &json["hosts"][0];
        assert_eq!(host["tlsa"]["records"][0]["usable"], true);
        assert_eq!(host["tlsa"]["records"][1]["usage"], 1);
        assert_eq!(host["address_dnssec"][0]["rtype"], "A");
        assert_eq!(host["address_dnssec"][0]["status"], "secure");
        assert_eq!(host["dane"]["state"], "authenticate");
        assert_eq!(host["policy"]["kind"], "dane");
        assert_eq!(host["probes"][0]["starttls"], "offered");
        assert_eq!(host["probes"][0]["address"], "192.0.2.25:25");
        assert_eq!(host["probes"][0]["dane"]["ok"], true);
        assert_eq!(json["mta_sts"]["txt"]["status"], "record");
        assert_eq!(json["mta_sts"]["policy"]["mode"], "enforce");
        assert_eq!(json["policy"]["label"], "dane");
        assert_eq!(json["delivery_error"], serde_json::Value::Null);
    }
}
