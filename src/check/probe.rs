//! `--connect`: one SMTP session per MX address, as far as the TLS handshake (RFC 3207), like
//! posttls-finger. The certificate is never refused during the handshake, so that the chain is
//! seen whatever it is; the PKIX verdict (delivery's checker, non-enforcing) and the DANE
//! verdict (the host's usable TLSA records) are reached on it afterwards, and then what
//! delivery under the host's policy would make of the session.

use super::checker::{hex, Checker};
use super::{CertInfo, Probe, StartTlsState, TlsSession, Verdict};
use crate::delivery::dane::DaneAuth;
use crate::delivery::requirement::HostPlan;
use crate::delivery::session::{quit, remote_reply};
use crate::delivery::tls_failure::TlsFailure;
use crate::delivery::Relay;
use crate::reply::Reply;
use mail_send::SmtpClient;
use policy_cache::dane::{DaneCheck, DaneMismatch, DaneVerdict, Tlsa};
use rustls::pki_types::{CertificateDer, UnixTime};
use smtp_proto::EhloResponse;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpStream;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a probe learnt that the policy verdict needs beyond the report's text.
#[derive(Default)]
struct Seen {
    refused: Option<Reply>,
    handshake: Option<String>,
    pkix: Option<rustls::Error>,
    dane: Option<String>,
}

/// One session with `ip`, an address of MX host `host`, whose delivery plan is `plan`;
/// `dane` holds its usable TLSA records when DANE authenticates it.
pub(super) async fn probe(
    checker: &Checker<'_>,
    host: &str,
    ip: IpAddr,
    plan: &HostPlan,
    dane: Option<&DaneAuth>,
) -> Probe {
    let relay = Relay {
        host: host.to_string(),
        addr: SocketAddr::new(ip, checker.config.delivery.smtp_port),
    };
    let mut probe = Probe {
        address: Some(relay.addr),
        ..Probe::default()
    };
    let mut seen = Seen::default();
    session(checker, &relay, dane, &mut probe, &mut seen).await;
    probe.under_policy = under_policy(plan, &relay, &probe, &seen);
    probe
}

/// Connect, greeting, EHLO, STARTTLS, handshake, EHLO again, QUIT; stops at the first step
/// that fails, noting why in `probe.error` (or `handshake_error`).
async fn session(
    checker: &Checker<'_>,
    relay: &Relay,
    dane: Option<&DaneAuth>,
    probe: &mut Probe,
    seen: &mut Seen,
) {
    let config = &checker.config.delivery;
    let hostname = checker.config.hostname.as_str();
    let stream =
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(relay.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                probe.error = Some(format!("connect to {relay}: {e}"));
                return;
            }
            Err(_) => {
                probe.error = Some(format!("connect to {relay}: Connection timed out"));
                return;
            }
        };
    probe.connected = true;
    let mut client = SmtpClient {
        stream,
        timeout: config.command_timeout,
    };
    // mail-send's read() has no timeout of its own.
    let greeting = match tokio::time::timeout(config.command_timeout, client.read()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            probe.error = Some(format!("receiving the greeting: {e}"));
            return;
        }
        Err(_) => {
            probe.error = Some("receiving the greeting: timed out".to_string());
            return;
        }
    };
    probe.greeting = Some(remote_reply(&greeting).to_string());
    if greeting.code / 100 != 2 {
        probe.error = Some("the server refused to talk (greeting not 2xx)".to_string());
        quit(&mut client).await;
        return;
    }
    let ehlo = match client.ehlo(hostname).await {
        Ok(ehlo) => ehlo,
        // RFC 5321 §3.2: as delivery, HELO for an old server that rejects EHLO; no STARTTLS.
        Err(mail_send::Error::UnexpectedReply(r)) if r.code / 100 == 5 => {
            let rejected = remote_reply(&r);
            match client.cmd(format!("HELO {hostname}\r\n")).await {
                Ok(r) if r.code / 100 == 2 => {
                    probe.ehlo = Some(format!("EHLO rejected ({rejected}); HELO accepted"));
                    probe.starttls = StartTlsState::NotOffered;
                }
                Ok(r) => probe.error = Some(format!("HELO: {}", remote_reply(&r))),
                Err(e) => probe.error = Some(format!("HELO: {}", smtp_error(&e))),
            }
            quit(&mut client).await;
            return;
        }
        Err(e) => {
            probe.error = Some(format!("EHLO: {}", smtp_error(&e)));
            quit(&mut client).await;
            return;
        }
    };
    probe.ehlo = Some(ehlo.hostname.clone());
    probe.extensions = extensions(&ehlo);
    if !ehlo.has_capability(smtp_proto::EXT_START_TLS) {
        probe.starttls = StartTlsState::NotOffered;
        quit(&mut client).await;
        return;
    }
    match client.cmd(b"STARTTLS\r\n").await {
        Ok(r) if r.code == 220 => {
            probe.starttls = StartTlsState::Offered;
            probe.starttls_reply = Some(remote_reply(&r).to_string());
        }
        Ok(r) => {
            let reply = remote_reply(&r);
            probe.starttls = StartTlsState::Refused;
            probe.starttls_reply = Some(reply.to_string());
            seen.refused = Some(reply);
            quit(&mut client).await;
            return;
        }
        Err(e) => {
            probe.error = Some(format!("STARTTLS: {}", smtp_error(&e)));
            return;
        }
    }
    let checked = match checker.pkix.handshake(false) {
        Ok(checked) => checked,
        Err(e) => {
            probe.error = Some(format!("TLS client setup failed: {e}"));
            return;
        }
    };
    // As delivery: SNI is the MX host name, or DANE's TLSA base domain (RFC 7672 §8.1).
    let sni = dane.map_or(relay.host.as_str(), |auth| auth.sni.as_str());
    let mut tls = match client.into_tls(&checked.connector, sni).await {
        Ok(tls) => tls,
        Err(e) => {
            let why = smtp_error(&e);
            probe.handshake_error = Some(why.clone());
            seen.handshake = Some(why);
            return;
        }
    };
    let connection = tls.tls_connection();
    probe.tls = crate::tls::negotiated(connection).map(|n| TlsSession {
        version: n.version,
        cipher: n.cipher,
        kx: n.kx,
    });
    let chain: Vec<CertificateDer<'static>> = connection
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    probe.chain = chain.iter().map(|c| cert_info(c)).collect();
    probe.pkix = checked.verdict().map(|verdict| match verdict {
        Ok(()) => Verdict::ok(format!("valid for {sni}")),
        Err(e) => {
            let detail = format!(
                "not valid for {sni}: {}",
                TlsFailure::Certificate(e.clone()).detail()
            );
            seen.pkix = Some(e);
            Verdict::fail(detail)
        }
    });
    if let Some(auth) = dane {
        let check = DaneCheck::new(auth.records.clone(), auth.names.clone());
        probe.dane = Some(match check.verify(&chain, UnixTime::now()) {
            verdict @ DaneVerdict::Matched { .. } => Verdict::ok(verdict.to_string()),
            DaneVerdict::Mismatch(why) => {
                seen.dane = Some(why.clone());
                Verdict::fail(why)
            }
        });
    }
    // RFC 3207 §4.2: the server's extensions after TLS are the ones that count.
    match tls.ehlo(hostname).await {
        Ok(ehlo) => probe.tls_extensions = Some(extensions(&ehlo)),
        Err(e) => probe.error = Some(format!("EHLO after TLS: {}", smtp_error(&e))),
    }
    quit(&mut tls).await;
}

/// Would delivery under the host's plan go ahead on this session, and why (or why not), in
/// delivery's own words.
fn under_policy(plan: &HostPlan, relay: &Relay, probe: &Probe, seen: &Seen) -> Verdict {
    if let HostPlan::Skip(failure) = plan {
        return Verdict::fail(format!("never tried: {}", failure.reply(None)));
    }
    if let Some(error) = &probe.error {
        return Verdict::fail(format!("no session with {relay}: {error}"));
    }
    if let HostPlan::Plaintext = plan {
        return Verdict::ok("would deliver in plaintext (STARTTLS not used: local level none)");
    }
    let required = matches!(
        plan,
        HostPlan::Verified { .. } | HostPlan::Secure { .. } | HostPlan::Dane(_) | HostPlan::Encrypt
    );
    let tls_failure = match (&seen.refused, &seen.handshake, probe.starttls) {
        (Some(reply), _, _) => Some(TlsFailure::Refused(reply.clone())),
        (_, Some(why), _) => Some(TlsFailure::Handshake(why.clone())),
        (_, _, StartTlsState::NotOffered) => Some(TlsFailure::NotOffered),
        _ => None,
    };
    if let Some(failure) = tls_failure {
        return match (required, plan) {
            (true, _) => Verdict::fail(failure.reply(Some(relay)).to_string()),
            (false, HostPlan::Probe { .. }) => Verdict::ok(format!(
                "would deliver without TLS (MTA-STS testing: reported: {})",
                failure.detail()
            )),
            (false, _) => Verdict::ok(format!("would deliver without TLS ({})", failure.detail())),
        };
    }
    match plan {
        HostPlan::Dane(_) => match &seen.dane {
            None => Verdict::ok(format!(
                "would deliver: authenticated by DANE ({})",
                probe.dane.as_ref().map_or("", |d| d.detail.as_str())
            )),
            Some(why) => {
                let mismatch = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                    rustls::OtherError(Arc::new(DaneMismatch(why.clone()))),
                ));
                Verdict::fail(
                    TlsFailure::Certificate(mismatch)
                        .reply(Some(relay))
                        .to_string(),
                )
            }
        },
        HostPlan::Verified { .. } => match &seen.pkix {
            None => Verdict::ok("would deliver: certificate PKIX-valid for the MX host name"),
            Some(e) => Verdict::fail(
                TlsFailure::Certificate(e.clone())
                    .reply(Some(relay))
                    .to_string(),
            ),
        },
        HostPlan::Secure { domain, .. } => Verdict::fail(format!(
            "not evaluated: the local level secure needs a certificate PKIX-valid for {domain} \
             or a subdomain; the PKIX verdict above is for the MX host name"
        )),
        HostPlan::Encrypt => {
            Verdict::ok("would deliver over TLS, certificate not checked (no usable TLSA record)")
        }
        HostPlan::Probe { pattern } => {
            let reported = match (&seen.pkix, pattern) {
                (Some(e), _) => Some(TlsFailure::Certificate(e.clone()).detail()),
                (None, None) => Some(format!("MX host {} matches no mx pattern", relay.host)),
                (None, Some(_)) => None,
            };
            match reported {
                Some(why) => Verdict::ok(format!(
                    "would deliver over TLS (MTA-STS testing: reported: {why})"
                )),
                None => {
                    Verdict::ok("would deliver over TLS, certificate verified (MTA-STS testing)")
                }
            }
        }
        HostPlan::Opportunistic | HostPlan::Skip(_) | HostPlan::Plaintext => {
            Verdict::ok("would deliver over TLS (opportunistic, certificate not checked)")
        }
    }
}

/// mail-send's error, with the server's reply in our usual form when there is one.
fn smtp_error(e: &mail_send::Error) -> String {
    match e {
        mail_send::Error::UnexpectedReply(r) => remote_reply(r).to_string(),
        mail_send::Error::Timeout => "timed out".to_string(),
        other => other.to_string(),
    }
}

/// The EHLO keywords mail-send recognised (RFC 5321 §4.1.1.1), SIZE with its limit.
fn extensions(ehlo: &EhloResponse<String>) -> Vec<String> {
    use smtp_proto::*;
    const NAMES: &[(u32, &str)] = &[
        (EXT_8BIT_MIME, "8BITMIME"),
        (EXT_AUTH, "AUTH"),
        (EXT_BINARY_MIME, "BINARYMIME"),
        (EXT_CHUNKING, "CHUNKING"),
        (EXT_DSN, "DSN"),
        (EXT_ENHANCED_STATUS_CODES, "ENHANCEDSTATUSCODES"),
        (EXT_PIPELINING, "PIPELINING"),
        (EXT_REQUIRE_TLS, "REQUIRETLS"),
        (EXT_SIZE, "SIZE"),
        (EXT_SMTP_UTF8, "SMTPUTF8"),
        (EXT_START_TLS, "STARTTLS"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| ehlo.capabilities & bit != 0)
        .map(|&(bit, name)| match (bit, ehlo.size) {
            (EXT_SIZE, size) if size > 0 => format!("SIZE {size}"),
            _ => name.to_string(),
        })
        .collect()
}

/// Subject, issuer, dates and names of one certificate; SHA-256 digests as a DANE-EE(3)
/// record would carry them.
fn cert_info(der: &CertificateDer<'_>) -> CertInfo {
    let sha256 = hex(&Tlsa::for_content(3, 0, 1, der).data);
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return CertInfo {
            subject: "(certificate not readable)".to_string(),
            issuer: String::new(),
            not_before: String::new(),
            not_after: String::new(),
            san: Vec::new(),
            spki_sha256: String::new(),
            sha256,
        };
    };
    let san = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(n) => format!("DNS:{n}"),
                x509_parser::extensions::GeneralName::IPAddress(b) => ip_text(b),
                other => other.to_string(),
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => vec![format!("(unreadable: {e})")],
    };
    let validity = cert.validity();
    CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: rfc3339(validity.not_before.timestamp()),
        not_after: rfc3339(validity.not_after.timestamp()),
        san,
        spki_sha256: hex(&Tlsa::for_content(3, 1, 1, cert.tbs_certificate.subject_pki.raw).data),
        sha256,
    }
}

fn ip_text(bytes: &[u8]) -> String {
    let ip = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    };
    match ip {
        Some(ip) => format!("IP:{ip}"),
        None => format!("IP:{}", hex(bytes)),
    }
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_names_and_dates() {
        assert_eq!(ip_text(&[192, 0, 2, 1]), "IP:192.0.2.1");
        assert_eq!(ip_text(&[1, 2, 3]), "IP:010203");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
