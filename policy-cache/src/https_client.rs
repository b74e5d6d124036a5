//! The HTTPS client side shared by the MTA-STS fetcher and the TLS-RPT poster: a rustls
//! configuration (TLS 1.2+, Web PKI roots plus the operator's CAs), name resolution through
//! the relay's own resolver, and reqwest's errors told apart by what really happened (DNS,
//! TLS, a timeout, the connection), in operators' words.

use hickory_resolver::TokioResolver;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;

/// The rustls client configuration: TLS 1.2 and 1.3 only, Web PKI roots plus the PEM
/// certificates of `extra_ca_files`.
pub fn tls_config(extra_ca_files: &[std::path::PathBuf]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in extra_ca_files {
        let bad = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", path.display());
        let mut found = false;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            found = true;
        }
        if !found {
            return Err(bad(&"no certificate in it"));
        }
    }
    let provider = Arc::new(crate::crypto::provider());
    // PKIX-valid certificates only (RFC 8461 §3.3, RFC 8460 §5.4); nothing below TLS 1.2.
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Resolves HTTPS hosts through the relay's own resolver (A and AAAA), never the system's.
pub struct HickoryResolve(pub TokioResolver);

/// A failed resolution, recognised again when it comes back wrapped in reqwest's errors.
#[derive(Debug)]
struct ResolveFailure(String);

impl std::fmt::Display for ResolveFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for ResolveFailure {}

impl Resolve for HickoryResolve {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.0.clone();
        let host = name.as_str().trim_end_matches('.').to_string();
        Box::pin(async move {
            let boxed =
                |text: String| Box::new(ResolveFailure(text)) as Box<dyn StdError + Send + Sync>;
            // Absolute, so that no search domain is ever appended.
            let lookup = resolver
                .lookup_ip(format!("{host}.").as_str())
                .await
                .map_err(|e| {
                    boxed(if e.is_nx_domain() {
                        format!("{host}: no such domain (NXDOMAIN)")
                    } else if e.is_no_records_found() {
                        format!("{host}: no address records")
                    } else {
                        format!("{host}: {e}")
                    })
                })?;
            let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            if addrs.is_empty() {
                return Err(boxed(format!("{host}: no address records")));
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// What a failed request really ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Dns(String),
    Tls(String),
    Timeout,
    /// No connection: refused, unreachable, reset before TLS.
    Connect(String),
    /// The request or the response broke off, or was not HTTP.
    Other(String),
}

/// Looks through a reqwest error's chain of causes for what happened with `host`.
pub fn classify(error: &reqwest::Error, host: &str) -> Failure {
    let mut timed_out = error.is_timeout();
    let mut io_cause: Option<String> = None;
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(err) = source {
        if let Some(failure) = err.downcast_ref::<ResolveFailure>() {
            return Failure::Dns(failure.0.clone());
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Failure::Tls(tls_text(tls, host));
        }
        source = match err.downcast_ref::<std::io::Error>() {
            Some(io) => {
                timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
                io_cause.get_or_insert_with(|| io.to_string());
                // io::Error::source() skips the error it wraps (tokio-rustls puts the
                // rustls::Error there): look into it instead.
                match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn StdError + 'static)),
                    None => io.source(),
                }
            }
            None => err.source(),
        };
    }
    if timed_out {
        Failure::Timeout
    } else if error.is_connect() {
        Failure::Connect(format!(
            "{host}: {}",
            io_cause.unwrap_or_else(|| chain_text(error))
        ))
    } else {
        Failure::Other(chain_text(error))
    }
}

/// The handshake failures operators meet, in their words.
pub fn tls_text(error: &rustls::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(cert) = error else {
        return error.to_string();
    };
    match cert {
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            format!("certificate not valid for {host}")
        }
        C::Expired | C::ExpiredContext { .. } => format!("certificate of {host} has expired"),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            format!("certificate of {host} is not valid yet")
        }
        C::UnknownIssuer => format!("certificate of {host} is not issued by a trusted CA"),
        C::BadSignature => {
            format!("certificate of {host} has a bad signature (not from a trusted CA)")
        }
        other => format!("certificate of {host} not accepted: {other:?}"),
    }
}

/// An error and its causes on one line, for logs.
pub fn chain_text(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(err) = source {
        let more = err.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = err.source();
    }
    text
}
