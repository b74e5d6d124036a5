//! The rustls side of DANE: a [`ServerCertVerifier`] that authenticates an SMTP server by its
//! TLSA records (RFC 7672 §3) instead of by the Web PKI.

use std::sync::{Arc, Mutex, MutexGuard};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

use super::tlsa::Tlsa;
use super::verify::{DaneCheck, DaneVerdict, ReferenceNames};

/// Why rustls refused the server's certificate: the DANE mismatch, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DANE authentication failed: {0}")]
pub struct DaneMismatch(pub String);

impl DaneMismatch {
    /// The DANE reason inside a rustls error, if that is what it is. rustls shows the
    /// reason only in `Debug` form, so a caller writing a log line or a DSN should take it
    /// from here (or from the [`VerdictSlot`]).
    pub fn find(error: &Error) -> Option<&DaneMismatch> {
        match error {
            Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<DaneMismatch>()
            }
            _ => None,
        }
    }
}

/// Where the verifier leaves its verdict for the caller's log line. Empty until the server's
/// certificate has been checked (a handshake that fails earlier leaves nothing).
#[derive(Debug, Clone, Default)]
pub struct VerdictSlot(Arc<Mutex<Option<DaneVerdict>>>);

impl VerdictSlot {
    /// The verdict of the last certificate check, if any.
    pub fn get(&self) -> Option<DaneVerdict> {
        self.lock().clone()
    }

    fn set(&self, verdict: DaneVerdict) {
        *self.lock() = Some(verdict);
    }

    fn lock(&self) -> MutexGuard<'_, Option<DaneVerdict>> {
        // A verdict is plain data; a panic elsewhere while holding the lock cannot leave it
        // half-written, so a poisoned lock is still good to use.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Authenticates one MX host by its usable TLSA records. Build one per connection, so that
/// its [`VerdictSlot`] describes that connection.
#[derive(Debug)]
pub struct DaneVerifier {
    check: DaneCheck,
    /// Handshake signatures are checked with the ring provider's algorithms, as everywhere
    /// else in mxguard.
    algorithms: WebPkiSupportedAlgorithms,
    verdict: VerdictSlot,
}

impl DaneVerifier {
    /// `records`: the host's TLSA RRset (unusable records are ignored); `names`: the MX host
    /// name and any extra reference names (RFC 7672 §3.2.2).
    pub fn new(records: Vec<Tlsa>, names: ReferenceNames) -> DaneVerifier {
        DaneVerifier {
            check: DaneCheck::new(records, names),
            algorithms: crate::crypto::provider().signature_verification_algorithms,
            verdict: VerdictSlot::default(),
        }
    }

    /// A handle on the verdict, to read after the handshake.
    pub fn verdict(&self) -> VerdictSlot {
        self.verdict.clone()
    }

    pub fn check(&self) -> &DaneCheck {
        &self.check
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // The SNI name is the MX host name, already among the reference names; DANE ignores
        // OCSP (RFC 7672 §3.1: the TLSA record is the authority, not the CA's responder).
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let mut chain = Vec::with_capacity(intermediates.len() + 1);
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let verdict = self.check.verify(&chain, now);
        self.verdict.set(verdict.clone());
        match verdict {
            DaneVerdict::Matched { .. } => Ok(ServerCertVerified::assertion()),
            DaneVerdict::Mismatch(why) => Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(DaneMismatch(why))),
            ))),
        }
    }

    // The key in the leaf is the key DANE vouched for (DANE-EE matches it directly, DANE-TA
    // via the chain), so proving possession of it completes the authentication.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dane::testpki::*;
    use crate::dane::tlsa::Usage;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(crate::crypto::provider())
    }

    /// Serves one TLS connection on 127.0.0.1 with `chain`, answering "220 ok".
    async fn server(
        chain: Vec<CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> std::net::SocketAddr {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.write_all(b"220 ok\r\n").await;
                let _ = tls.shutdown().await;
            }
        });
        addr
    }

    /// Connects with a DANE verifier; returns the handshake outcome and the recorded verdict.
    async fn connect(
        addr: std::net::SocketAddr,
        records: Vec<Tlsa>,
    ) -> (Result<String, std::io::Error>, Option<DaneVerdict>) {
        let verifier = Arc::new(DaneVerifier::new(records, ReferenceNames::new(MX)));
        let slot = verifier.verdict();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let sni = ServerName::try_from(MX).unwrap();
        let outcome = async {
            let mut tls = connector.connect(sni, tcp).await?;
            let mut greeting = String::new();
            tls.read_to_string(&mut greeting).await?;
            Ok(greeting)
        }
        .await;
        (outcome, slot.get())
    }

    #[tokio::test]
    async fn handshake_with_dane_ee_match() {
        // An expired self-signed certificate: fine under DANE-EE (RFC 7672 §3.1.1).
        let (cert, key) = self_signed_with_key("other.example.test", Dates::Expired);
        let addr = server(vec![cert.clone()], key).await;
        let (outcome, verdict) = connect(addr, vec![record(3, 1, 1, &cert)]).await;
        assert_eq!(outcome.unwrap(), "220 ok\r\n");
        assert!(matches!(
            verdict,
            Some(DaneVerdict::Matched {
                usage: Usage::DaneEe,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn handshake_with_dane_ta_match() {
        let pki = Pki::new();
        let addr = server(pki.chain(), pki.leaf_key()).await;
        let (outcome, verdict) = connect(addr, vec![record(2, 1, 1, &pki.intermediate)]).await;
        assert_eq!(outcome.unwrap(), "220 ok\r\n");
        let verdict = verdict.unwrap();
        assert!(
            verdict
                .to_string()
                .starts_with("matched DANE-TA(2) SPKI(1)"),
            "{verdict}"
        );
    }

    #[tokio::test]
    async fn handshake_fails_on_mismatch_with_a_clear_error() {
        let pki = Pki::new();
        let addr = server(pki.chain(), pki.leaf_key()).await;
        let (outcome, verdict) = connect(addr, vec![record(2, 0, 1, &pki.unrelated_ca)]).await;
        let err = outcome.unwrap_err();
        let rustls_error = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap();
        // rustls classes it as a certificate failure (what delivery maps to 4.7.5).
        assert!(matches!(rustls_error, Error::InvalidCertificate(_)));
        assert_eq!(
            DaneMismatch::find(rustls_error).unwrap().to_string(),
            "DANE authentication failed: no TLSA record matched the certificate chain"
        );
        assert_eq!(
            verdict,
            Some(DaneVerdict::Mismatch(
                "no TLSA record matched the certificate chain".into()
            ))
        );
    }
}
