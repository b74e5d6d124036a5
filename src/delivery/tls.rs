//! Client TLS for delivery: opportunistic STARTTLS (RFC 3207, RFC 7435; Postfix level `may`),
//! and PKIX-verified STARTTLS for the MX hosts of an MTA-STS policy (RFC 8461 §4.2).
//!
//! Without a policy that demands authentication (DANE, MTA-STS, a local `verify` level), any
//! certificate is accepted: encryption against passive eavesdroppers is better than plaintext,
//! and refusing unverifiable certificates would only push the mail to plaintext. The handshake
//! signature is still checked, so the peer must hold the key of the certificate it shows.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};
use tokio_rustls::TlsConnector;

/// The connector for opportunistic TLS: TLS 1.2+, SNI on, any certificate.
pub(crate) fn opportunistic_connector() -> Result<TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = client_config(provider, CertCheck::AcceptAny)?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A client configuration for delivery: TLS 1.2 or later, SNI on, no client certificate, the
/// server certificate judged by `check`.
fn client_config(
    provider: Arc<CryptoProvider>,
    check: CertCheck,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let verifier = Arc::new(DeliveryVerifier {
        algorithms: provider.signature_verification_algorithms,
        check,
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        // RFC 8461 §4.2: TLS 1.2 or later (opportunistic TLS keeps the same floor).
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// What the PKIX check said about the certificate of one handshake; `None` until the server
/// showed one.
pub(crate) type CertVerdict = Option<Result<(), rustls::Error>>;

/// Server certificate checking against the Web PKI roots plus `delivery.extra_ca_files`, for
/// the MX host name being dialled (RFC 8461 §4.2: "the certificate presented must be valid for
/// the MX host name"; the name is also sent as SNI). Built once per deliverer.
#[derive(Debug)]
pub(crate) struct PkixChecker {
    provider: Arc<CryptoProvider>,
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

impl PkixChecker {
    pub fn new(roots: rustls::RootCertStore) -> Result<PkixChecker, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        Ok(PkixChecker { provider, webpki })
    }

    /// A connector for exactly one handshake, with the slot where its certificate verdict
    /// lands. With `enforce`, an invalid certificate fails the handshake; without, the
    /// handshake goes on (MTA-STS `testing`: deliver anyway, but know the verdict).
    ///
    /// One configuration per handshake, without session resumption, so that no verdict (and
    /// no resumed session that skips verification) is ever shared between two jobs, whose
    /// domains may have different policies for the same MX host.
    pub fn handshake(&self, enforce: bool) -> Result<CheckedHandshake, rustls::Error> {
        let verdict = Arc::new(Mutex::new(None));
        let check = CertCheck::Pkix {
            webpki: self.webpki.clone(),
            enforce,
            verdict: verdict.clone(),
        };
        let mut config = client_config(self.provider.clone(), check)?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(CheckedHandshake {
            connector: TlsConnector::from(Arc::new(config)),
            verdict,
        })
    }
}

/// One handshake's connector and the verdict its verifier reached.
pub(crate) struct CheckedHandshake {
    pub connector: TlsConnector,
    verdict: Arc<Mutex<CertVerdict>>,
}

impl CheckedHandshake {
    pub fn verdict(&self) -> CertVerdict {
        self.verdict.lock().map(|v| v.clone()).unwrap_or(None)
    }
}

/// How a [`DeliveryVerifier`] judges the server certificate.
#[derive(Debug)]
enum CertCheck {
    /// Any certificate will do (opportunistic TLS).
    AcceptAny,
    /// The Web PKI verifier, noting its verdict; rejecting only when enforcing.
    Pkix {
        webpki: Arc<rustls::client::WebPkiServerVerifier>,
        enforce: bool,
        verdict: Arc<Mutex<CertVerdict>>,
    },
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
