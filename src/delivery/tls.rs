//! Client TLS for delivery: opportunistic STARTTLS (RFC 3207, RFC 7435; Postfix level `may`),
//! PKIX-verified STARTTLS for the MX hosts of an MTA-STS policy (RFC 8461 §4.2), and
//! DANE-authenticated STARTTLS for MX hosts with usable TLSA records (RFC 7672 §3).
//!
//! Without a policy that demands authentication (DANE, MTA-STS, a local `verify` level), any
//! certificate is accepted: encryption against passive eavesdroppers is better than plaintext,
//! and refusing unverifiable certificates would only push the mail to plaintext. The handshake
//! signature is still checked, so the peer must hold the key of the certificate it shows.

use crate::tls::settings::TlsProfile;
use policy_cache::dane::{
    DaneMismatch, DaneVerdict, DaneVerifier, ReferenceNames, Tlsa, VerdictSlot,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};
use tokio_rustls::TlsConnector;

/// The connector for opportunistic TLS (`delivery.tls_protocols`): SNI on, any certificate.
pub(crate) fn opportunistic_connector(profile: &TlsProfile) -> Result<TlsConnector, rustls::Error> {
    let config = client_config(profile, CertCheck::AcceptAny)?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A client configuration for delivery: the versions, suites and groups of `profile` (never
/// below TLS 1.2: RFC 8461 §4.2, and rustls has nothing older), SNI on, no client
/// certificate, the server certificate judged by `check`.
fn client_config(
    profile: &TlsProfile,
    check: CertCheck,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let verifier = Arc::new(DeliveryVerifier {
        algorithms: profile.provider.signature_verification_algorithms,
        check,
    });
    config_with_verifier(profile, verifier)
}

/// The same with any server certificate verifier (DANE's comes from the policy cache).
fn config_with_verifier(
    profile: &TlsProfile,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(
        rustls::ClientConfig::builder_with_provider(profile.provider.clone())
            .with_protocol_versions(&profile.versions)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// What the PKIX check said about the certificate of one handshake; `None` until the server
/// showed one.
pub(crate) type CertVerdict = Option<Result<(), rustls::Error>>;

/// Server certificate checking against the Web PKI roots plus `delivery.extra_ca_files`, for
/// the MX host name being dialled (RFC 8461 §4.2: "the certificate presented must be valid for
/// the MX host name"; the name is also sent as SNI). Built once per deliverer.
///
/// It also holds the two TLS profiles: sessions that must be encrypted (DANE, MTA-STS
/// enforce, `encrypt` and above) use `delivery.tls_mandatory_protocols`, the others
/// `delivery.tls_protocols`, like Postfix's `smtp_tls_mandatory_protocols`/`smtp_tls_protocols`.
#[derive(Debug)]
pub(crate) struct PkixChecker {
    opportunistic: TlsProfile,
    mandatory: TlsProfile,
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

impl PkixChecker {
    pub fn new(
        roots: rustls::RootCertStore,
        opportunistic: TlsProfile,
        mandatory: TlsProfile,
    ) -> Result<PkixChecker, String> {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            mandatory.provider.clone(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        Ok(PkixChecker {
            opportunistic,
            mandatory,
            webpki,
        })
    }

    /// A connector for exactly one handshake, with the slot where its certificate verdict
    /// lands. With `enforce`, an invalid certificate fails the handshake (TLS is mandatory);
    /// without, the handshake goes on (MTA-STS `testing`: deliver anyway, but know the
    /// verdict; TLS is opportunistic).
    pub fn handshake(&self, enforce: bool) -> Result<CheckedHandshake, rustls::Error> {
        let verdict = Arc::new(Mutex::new(None));
        let check = CertCheck::Pkix {
            webpki: self.webpki.clone(),
            enforce,
            verdict: verdict.clone(),
        };
        let profile = if enforce {
            &self.mandatory
        } else {
            &self.opportunistic
        };
        let config = client_config(profile, check)?;
        Ok(CheckedHandshake::new(
            config,
            Verdict::Pkix(verdict),
            enforce,
        ))
    }

    /// A connector for one handshake with an MX host that has usable TLSA records (RFC 7672
    /// §3): the certificate must match them, or the handshake fails. `names` are the
    /// reference names a DANE-TA(2) chain's leaf must carry.
    pub fn dane(
        &self,
        records: Vec<Tlsa>,
        names: ReferenceNames,
    ) -> Result<CheckedHandshake, rustls::Error> {
        let verifier = DaneVerifier::new(records, names);
        let verdict = Verdict::Dane(verifier.verdict());
        let config = config_with_verifier(&self.mandatory, Arc::new(verifier))?;
        Ok(CheckedHandshake::new(config, verdict, true))
    }

    /// A connector for one handshake under a local `secure` level: the chain must be
    /// PKIX-valid for the next-hop `domain` itself or for one of its subdomains (Postfix's
    /// `smtp_tls_secure_cert_match = nexthop, dot-nexthop`), whatever MX host name DNS gave.
    /// With `mx_host` (an enforced MTA-STS policy applies too), the certificate must also be
    /// valid for the MX host name.
    pub fn secure(
        &self,
        domain: &str,
        mx_host: Option<&str>,
    ) -> Result<CheckedHandshake, rustls::Error> {
        let verdict = Arc::new(Mutex::new(None));
        let check = CertCheck::NextHop {
            webpki: self.webpki.clone(),
            domain: domain.to_ascii_lowercase(),
            mx_host: mx_host.map(str::to_string),
            verdict: verdict.clone(),
        };
        let config = client_config(&self.mandatory, check)?;
        Ok(CheckedHandshake::new(config, Verdict::Pkix(verdict), true))
    }

    /// A connector for one handshake that must happen but authenticates nothing: a secure
    /// TLSA RRset with no usable record (RFC 7672 §2.2), or a local `encrypt` level.
    pub fn encrypt_only(&self) -> Result<CheckedHandshake, rustls::Error> {
        let config = client_config(&self.mandatory, CertCheck::AcceptAny)?;
        Ok(CheckedHandshake::new(config, Verdict::None, false))
    }
}

/// One handshake's connector and the verdict its verifier reached.
pub(crate) struct CheckedHandshake {
    pub connector: TlsConnector,
    verdict: Verdict,
    /// A handshake that succeeds authenticated the server (PKIX enforced, or DANE): the
    /// session's TLS is `verified`.
    pub authenticates: bool,
}

impl CheckedHandshake {
    /// One configuration per handshake, without session resumption, so that no verdict (and
    /// no resumed session that skips verification) is ever shared between two jobs.
    fn new(
        mut config: rustls::ClientConfig,
        verdict: Verdict,
        authenticates: bool,
    ) -> CheckedHandshake {
        config.resumption = rustls::client::Resumption::disabled();
        CheckedHandshake {
            connector: TlsConnector::from(Arc::new(config)),
            verdict,
            authenticates,
        }
    }

    /// The certificate check's verdict; a DANE mismatch is a rustls error that carries its
    /// [`DaneMismatch`].
    pub fn verdict(&self) -> CertVerdict {
        match &self.verdict {
            Verdict::None => None,
            Verdict::Pkix(slot) => slot.lock().map(|v| v.clone()).unwrap_or(None),
            Verdict::Dane(slot) => slot.get().map(|v| match v {
                DaneVerdict::Matched { .. } => Ok(()),
                DaneVerdict::Mismatch(why) => Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(DaneMismatch(
                        why,
                    )))),
                )),
            }),
        }
    }

    /// For DANE: which record authenticated the server, once the handshake is done.
    pub fn dane_match(&self) -> Option<String> {
        match &self.verdict {
            Verdict::Dane(slot) => match slot.get()? {
                matched @ DaneVerdict::Matched { .. } => Some(matched.to_string()),
                DaneVerdict::Mismatch(_) => None,
            },
            _ => None,
        }
    }
}

/// Where a handshake's certificate verdict lands.
enum Verdict {
    /// Not checked (encryption only).
    None,
    Pkix(Arc<Mutex<CertVerdict>>),
    Dane(VerdictSlot),
}

/// How a [`DeliveryVerifier`] judges the server certificate.
#[derive(Debug)]
enum CertCheck {
    /// Any certificate will do (opportunistic TLS).
    AcceptAny,
    /// The Web PKI verifier for the next-hop domain or a subdomain (a `secure` level);
    /// always enforcing.
    NextHop {
        webpki: Arc<rustls::client::WebPkiServerVerifier>,
        domain: String,
        /// Also required: validity for this MX host name (an enforced MTA-STS policy).
        mx_host: Option<String>,
        verdict: Arc<Mutex<CertVerdict>>,
    },
    /// The Web PKI verifier, noting its verdict; rejecting only when enforcing.
    Pkix {
        webpki: Arc<rustls::client::WebPkiServerVerifier>,
        enforce: bool,
        verdict: Arc<Mutex<CertVerdict>>,
    },
}

/// The names to try a `secure` certificate against: the domain, and the leaf's DNS names that
/// are subdomains of it (a wildcard stands for one label).
fn next_hop_names(end_entity: &CertificateDer<'_>, domain: &str) -> Vec<String> {
    let mut names = vec![domain.to_string()];
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity) else {
        return names;
    };
    let suffix = format!(".{domain}");
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(name) = general {
                let name = name.to_ascii_lowercase();
                let name = match name.strip_prefix("*.") {
                    Some(rest) => format!("wildcard.{rest}"),
                    None => name,
                };
                if name.ends_with(&suffix) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// Judges the server certificate by its [`CertCheck`], and always verifies the handshake
/// signatures made with the certificate's key.
#[derive(Debug)]
struct DeliveryVerifier {
    /// The crypto provider's signature verification algorithms.
    algorithms: WebPkiSupportedAlgorithms,
    check: CertCheck,
}

impl ServerCertVerifier for DeliveryVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (webpki, enforce, verdict) = match &self.check {
            // RFC 7435 §1: opportunistic security does not authenticate the peer.
            CertCheck::AcceptAny => return Ok(ServerCertVerified::assertion()),
            CertCheck::NextHop {
                webpki,
                domain,
                mx_host,
                verdict,
            } => {
                let mut result = Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ));
                let mx_check = mx_host.as_ref().map(|host| {
                    let name = ServerName::try_from(host.clone()).map_err(|_| {
                        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                    })?;
                    webpki.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
                });
                let names = match mx_check {
                    Some(Err(e)) => {
                        result = Err(e);
                        Vec::new()
                    }
                    _ => next_hop_names(end_entity, domain),
                };
                for name in names {
                    let Ok(name) = ServerName::try_from(name) else {
                        continue;
                    };
                    result = webpki.verify_server_cert(
                        end_entity,
                        intermediates,
                        &name,
                        ocsp_response,
                        now,
                    );
                    if result.is_ok() {
                        break;
                    }
                }
                if let Ok(mut slot) = verdict.lock() {
                    *slot = Some(result.as_ref().map(|_| ()).map_err(Clone::clone));
                }
                return result;
            }

            CertCheck::Pkix {
                webpki,
                enforce,
                verdict,
            } => (webpki, *enforce, verdict),
        };
        let result =
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if let Ok(mut slot) = verdict.lock() {
            *slot = Some(result.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        match result {
            Err(e) if enforce => Err(e),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
