//! A TLS-RPT report POSTed to an `https:` address (RFC 8460 §5.4).
//!
//! A policy domain may publish `rua=https://…`: the report is then the body of one POST, with
//! the media type `application/tlsrpt+gzip`. Any 2xx means the receiver took it (§5.4 expects
//! "typically a 200 or 201"); everything else is a failure the caller may retry later (§5.5).
//!
//! The client is hardened as the MTA-STS fetcher is (`policy_cache::sts::fetch`), for the same
//! reasons: the address comes from DNS, so the server must be PKIX-valid for its name (Web PKI
//! roots plus the operator's extra CAs), redirects are not followed (a 3xx is a failure: a
//! report is never sent anywhere the record did not name), no proxy from the environment,
//! names resolved by the relay's own resolver, and every step bounded in time. The answer's
//! body is read only up to [`MAX_RESPONSE_BODY`] and thrown away.

use futures::StreamExt;
use hickory_resolver::TokioResolver;
use policy_cache::https_client::{self, Failure};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The media type of a gzip'd report (RFC 8460 §6.5), the same in mail and over HTTPS.
pub use super::mail::GZIP_MEDIA_TYPE;

/// How much of the receiver's answer is read before the connection is dropped: enough for any
/// sensible acknowledgement, nothing a hostile receiver can use to hold memory.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Why a POST did not deliver the report. Texts are written for operators' logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// The address is not an `https:` URL with a host.
    #[error("not a usable https URL: {0}")]
    Url(String),
    /// The host's name did not resolve.
    #[error("DNS: {0}")]
    Dns(String),
    /// No TCP connection: refused, unreachable, reset before TLS.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The TLS handshake failed: untrusted CA, name mismatch, expired certificate, …
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection or the whole POST took longer than configured.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Any status but 2xx, including 3xx (redirects are never followed).
    #[error("HTTP status {0}")]
    Status(u16),
    /// The request or the response broke off, or was not HTTP.
    #[error("HTTP exchange failed: {0}")]
    Http(String),
}

/// The HTTPS client for report addresses, built once and shared by every POST (it pools
/// connections).
pub struct Poster {
    client: reqwest::Client,
    /// Bounds the whole POST, DNS to the last byte read, whatever reqwest's own timers do.
    timeout: Duration,
}

impl Poster {
    /// Web PKI roots (webpki-roots) plus the PEM certificates in `extra_ca_files`, TLS 1.2+,
    /// no redirects, https only, no proxy; `timeout` bounds connecting and the whole POST; host
    /// names are resolved through `resolver`.
    pub fn new(
        extra_ca_files: &[PathBuf],
        timeout: Duration,
        resolver: TokioResolver,
    ) -> Result<Poster, String> {
        // reqwest is built without a provider of its own and panics without a process-wide one.
        policy_cache::crypto::install_default();
        let tls = https_client::tls_config(extra_ca_files)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // Reports go only where the `_smtp._tls` record says (RFC 8460 §3, §5.4).
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            // HTTPS_PROXY and friends must not divert reports.
            .no_proxy()
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("mxguard-tlsrpt/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(https_client::HickoryResolve(resolver)))
            .build()
            .map_err(|e| format!("TLS-RPT HTTPS client: {}", https_client::chain_text(&e)))?;
        Ok(Poster { client, timeout })
    }

    /// POSTs `gzip` to `url` as `application/tlsrpt+gzip`: `Ok(status)` on any 2xx.
    pub async fn post(&self, url: &str, gzip: &[u8]) -> Result<u16, PostError> {
        let url = https_url(url)?;
        let host = url.host_str().unwrap_or_default().to_string();
        let started = tokio::time::Instant::now();
        let response = match tokio::time::timeout(self.timeout, self.send(url, &host, gzip)).await {
            Ok(result) => result?,
            Err(_) => return Err(PostError::Timeout(self.timeout)),
        };
        let status = response.status().as_u16();
        // RFC 8460 §5.4: success is 2xx ("typically a 200 or 201"); a 3xx is not followed.
        if !response.status().is_success() {
            return Err(PostError::Status(status));
        }
        // The status is the receiver's answer: a body that is slow, breaks off or never comes
        // does not make the report undelivered. It gets what is left of the time, no more.
        let left = self.timeout.saturating_sub(started.elapsed());
        let _ = tokio::time::timeout(left, drain(response)).await;
        Ok(status)
    }

    async fn send(
        &self,
        url: reqwest::Url,
        host: &str,
        gzip: &[u8],
    ) -> Result<reqwest::Response, PostError> {
        self.client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, GZIP_MEDIA_TYPE)
            .body(gzip.to_vec())
            .send()
            .await
            .map_err(|e| classify(&e, host, self.timeout))
    }
}

/// Reads and drops at most [`MAX_RESPONSE_BODY`] bytes of the answer, so that a well-behaved
/// connection can be reused and a hostile one cannot make us buffer.
async fn drain(response: reqwest::Response) {
    let mut seen = 0usize;
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len();
        if seen > MAX_RESPONSE_BODY {
            break;
        }
    }
}

/// `url` parsed, if it is `https:` with a host (the record parser should have ensured it; an
/// address from an old outbox entry may not have been through it).
fn https_url(url: &str) -> Result<reqwest::Url, PostError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| PostError::Url(format!("{url}: {e}")))?;
    if parsed.scheme() != "https" {
        return Err(PostError::Url(format!("{url}: scheme is not https")));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(PostError::Url(format!("{url}: no host")));
    }
    Ok(parsed)
}

/// Maps a reqwest error to the [`PostError`] an operator can act on.
fn classify(error: &reqwest::Error, host: &str, timeout: Duration) -> PostError {
    match https_client::classify(error, host) {
        Failure::Dns(text) => PostError::Dns(text),
        Failure::Tls(text) => PostError::Tls(text),
        Failure::Timeout => PostError::Timeout(timeout),
        Failure::Connect(text) => PostError::Connect(text),
        Failure::Other(text) => PostError::Http(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> TokioResolver {
        TokioResolver::builder_with_config(
            hickory_resolver::config::ResolverConfig::from_parts(None, vec![], vec![]),
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn only_https_urls_with_a_host_are_posted_to() {
        assert!(https_url("https://reports.example.test/v1/tlsrpt").is_ok());
        assert!(https_url("https://reports.example.test:8443/").is_ok());
        for bad in [
            "http://reports.example.test/",
            "mailto:a@b.test",
            "https://",
            "https://:443/",
            "not a url",
            "",
        ] {
            assert!(matches!(https_url(bad), Err(PostError::Url(_))), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        for (file, expect) in [
            (dir.path().join("missing.pem"), "missing.pem"),
            (empty, "no certificate"),
        ] {
            let error = Poster::new(&[file], Duration::from_secs(1), resolver())
                .err()
                .expect("refused");
            assert!(error.contains(expect), "{error}");
        }
    }

    #[tokio::test]
    async fn a_plain_http_url_is_refused_before_any_connection() {
        let poster = Poster::new(&[], Duration::from_secs(1), resolver()).unwrap();
        let result = poster.post("http://127.0.0.1:9/", b"x").await;
        assert!(matches!(result, Err(PostError::Url(_))), "{result:?}");
    }

    #[test]
    fn texts() {
        assert_eq!(PostError::Status(500).to_string(), "HTTP status 500");
        assert_eq!(
            PostError::Timeout(Duration::from_secs(30)).to_string(),
            "timed out after 30s"
        );
        assert_eq!(
            PostError::Tls(https_client::tls_text(
                &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
                "reports.example.test"
            ))
            .to_string(),
            "TLS: certificate of reports.example.test is not issued by a trusted CA"
        );
    }
}
