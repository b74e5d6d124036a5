//! Client TLS for delivery: opportunistic STARTTLS (RFC 3207, RFC 7435; Postfix level `may`),
//! and PKIX-verified STARTTLS for the MX hosts of an MTA-STS policy (RFC 8461 §4.2).
//!
//! Without a policy that demands authentication (DANE, MTA-STS, a local `verify` level), any
//! certificate is accepted: encryption against passive eavesdroppers is better than plaintext,
//! and refusing unverifiable certificates would only push the mail to plaintext. The handshake
//! signature is still checked, so the peer must hold the key of the certificate it shows.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};
use tokio_rustls::TlsConnector;

/// Accepts any server certificate, but verifies the handshake signatures made with its key.
#[derive(Debug)]
pub(crate) struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // RFC 7435 §1: opportunistic security does not authenticate the peer.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The connector for opportunistic TLS: TLS 1.2+, SNI on, any certificate.
pub(crate) fn opportunistic_connector() -> Result<TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AcceptAnyCertificate {
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
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
        let verifier = Arc::new(RecordingVerifier {
            webpki: self.webpki.clone(),
            enforce,
            verdict: verdict.clone(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            // RFC 8461 §4.2: TLS 1.2 or later.
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
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

/// The Web PKI verifier, noting its verdict; rejecting only when enforcing.
#[derive(Debug)]
struct RecordingVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    enforce: bool,
    verdict: Arc<Mutex<CertVerdict>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(result.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        match result {
            Err(e) if self.enforce => Err(e),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
