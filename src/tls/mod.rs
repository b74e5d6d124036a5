//! TLS material shared by the inbound server and the delivery client: loading PEM files,
//! building rustls configurations from the operator's [`settings`] (TLS 1.2 and 1.3 only, the
//! aws-lc-rs provider of `policy_cache::crypto`), and describing a session for `Received:`
//! headers and the delivery log.

pub mod settings;

use settings::TlsProfile;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{key}: {message}")]
    Settings { key: &'static str, message: String },
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsSetupError {
    TlsSetupError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Installs the process-wide rustls provider. reqwest (built without a provider) panics
/// without one, so `serve` and every test calls this first; a second call is harmless.
pub fn install_crypto_provider() {
    policy_cache::crypto::install_default();
}

/// Reads every certificate of a PEM file; an empty or unreadable file is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found"));
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| file_err(path, format!("bad PEM: {e}")))?
        .ok_or_else(|| file_err(path, "no private key found"))
}

/// Server side: certificate chain and key from files, the versions, suites and groups of
/// `profile`; with `preempt`, our suite order wins over the client's.
pub fn server_config(
    cert: &Path,
    key: &Path,
    profile: &TlsProfile,
    preempt: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let certs = read_certs(cert)?;
    let key = read_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(profile.provider.clone())
        .with_protocol_versions(&profile.versions)?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.ignore_client_order = preempt;
    Ok(Arc::new(config))
}

/// The Web PKI roots plus the operator's extra CA files.
pub fn root_store(
    extra_ca_files: &[impl AsRef<Path>],
) -> Result<rustls::RootCertStore, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for file in extra_ca_files {
        for cert in read_certs(file.as_ref())? {
            roots
                .add(cert)
                .map_err(|e| file_err(file.as_ref(), format!("unusable CA certificate: {e}")))?;
        }
    }
    Ok(roots)
}

/// Client side, verifying server certificates against `roots` (PKIX); TLS 1.2+.
pub fn client_config_verified(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(policy_cache::crypto::provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `TLSv1.3` / `TLSv1.2`, as Postfix logs the version.
pub fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS",
    }
}

/// Version and cipher suite of an established session, e.g. `("TLSv1.3", "TLS13_AES_256_GCM_SHA384")`.
pub fn describe(conn: &rustls::CommonState) -> Option<(String, String)> {
    let version = version_name(conn.protocol_version()?);
    let suite = conn.negotiated_cipher_suite()?;
    let name = suite.suite().as_str().unwrap_or("unknown");
    Some((version.to_string(), name.to_string()))
}

/// What an established session negotiated, for the inbound side's log and `Received:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: String,
    pub cipher: String,
    pub kx: Option<String>,
}

pub fn negotiated(conn: &rustls::CommonState) -> Option<Negotiated> {
    let (version, cipher) = describe(conn)?;
    Some(Negotiated {
        version,
        cipher,
        kx: key_exchange(conn),
    })
}

/// The key-exchange group of an established session by its IANA name (`X25519MLKEM768`,
/// `x25519`, `secp256r1`): what shows a session was protected against later decryption.
/// The SHA-256 (lower-case hex) of the certificate the peer presented first (its own).
pub fn peer_certificate_sha256(conn: &rustls::CommonState) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    let digest =
        policy_cache::crypto::digest::digest(&policy_cache::crypto::digest::SHA256, leaf.as_ref());
    Some(data_encoding::HEXLOWER.encode(digest.as_ref()))
}

pub fn key_exchange(conn: &rustls::CommonState) -> Option<String> {
    conn.negotiated_key_exchange_group()
        .map(|g| settings::group_name(g.name()))
}
