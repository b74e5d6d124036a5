//! Fetching an MTA-STS policy over HTTPS (RFC 8461 §3.3).
//!
//! A domain that announces MTA-STS serves its policy at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt`. The RFC hardens this one GET beyond
//! ordinary web browsing, because the policy decides where mail may go:
//! - the server's certificate must be PKIX-valid for `mta-sts.<domain>` (Web PKI roots, plus
//!   any private CA the operator adds);
//! - only HTTP 200 counts; redirects are never followed (a 3xx is a failure like any other);
//! - the media type is `text/plain`;
//! - the fetch is bounded in size (64 KiB here) and in time.
//!
//! [`Fetcher`] does that GET and nothing more: it returns the body as text and leaves parsing
//! to [`super::policy`]. Every way it can fail is a [`FetchError`] variant, so the cache can
//! log and count them; none of them is fatal to the process, and nothing the peer sends can
//! make it panic or buffer more than the size limit.

use crate::https_client::{self, Failure};
use futures::StreamExt;
use hickory_resolver::TokioResolver;
use std::sync::Arc;

/// RFC 8461 §3.3 leaves the size bound to the sender; 64 KiB is far beyond any real policy.
pub const MAX_POLICY_SIZE: usize = 64 * 1024;

/// The well-known path of the policy file (RFC 8461 §3.2).
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// Why a policy could not be fetched. Texts are written for operators' logs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    /// The policy host's name did not resolve (or the domain is not a valid name).
    #[error("DNS: {0}")]
    Dns(String),
    /// No TCP connection (refused, unreachable, reset before TLS), or an unusable proxy.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The TLS handshake failed: untrusted CA, name mismatch, expired certificate, …
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection or the whole fetch took longer than configured.
    #[error("timed out fetching the policy")]
    Timeout,
    /// Any status but 200, including 3xx (redirects are never followed).
    #[error("HTTP status {0}")]
    Status(u16),
    /// The media type is not `text/plain`; holds what was sent (empty when absent).
    #[error("{}", content_type_text(.0))]
    ContentType(String),
    /// The body came with a `Content-Encoding` (gzip, br, …) although none was asked for:
    /// holds the header's value. Such a body is never decoded, so a compressed "bomb" costs
    /// no more than its compressed bytes, which are not even read.
    #[error("policy sent with Content-Encoding {0:?}, which was not asked for and is not decoded")]
    ContentEncoding(String),
    /// The body is larger than [`MAX_POLICY_SIZE`].
    #[error("policy larger than 64 KiB")]
    TooLarge,
    /// The response broke off or was malformed.
    #[error("reading the response: {0}")]
    Body(String),
    /// The body is not UTF-8 text.
    #[error("policy is not valid UTF-8")]
    NotUtf8,
}

/// The HTTPS client for policy hosts, built once and shared by every fetch (it pools
/// connections).
pub struct Fetcher {
    client: reqwest::Client,
    /// The policy host's port: 443 in production (RFC 8461 §3.3).
    https_port: u16,
    /// Bounds the whole fetch, DNS to last body byte, whatever reqwest's own timers do.
    fetch_timeout: std::time::Duration,
}

impl Fetcher {
    /// Builds the HTTPS client: Web PKI roots (webpki-roots) + `settings.extra_ca_files` (PEM),
    /// TLS 1.2+, no redirects, https only, a proxy only if `settings.proxy`, timeouts from
    /// `settings`; policy host names are resolved through `resolver`.
    pub fn new(
        settings: &crate::Settings,
        resolver: TokioResolver,
    ) -> Result<Fetcher, crate::CacheError> {
        let setup = crate::CacheError::Setup;
        // reqwest is built without a provider of its own: `crate::crypto`'s is the
        // process-wide one. An error only means that some provider is installed already.
        crate::crypto::install_default();
        let tls = https_client::tls_config(&settings.extra_ca_files).map_err(setup)?;

        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // RFC 8461 §3.3: redirects must not be followed (a 3xx is a failed fetch).
            .redirect(reqwest::redirect::Policy::none())
            // RFC 8461 §3.3: the policy is only ever fetched over HTTPS.
            .https_only(true)
            .connect_timeout(settings.connect_timeout)
            // RFC 8461 §3.3: senders bound the time a fetch may take.
            .timeout(settings.fetch_timeout)
            .user_agent(concat!("mxguard-mta-sts/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(https_client::HickoryResolve(resolver)));
        builder = match &settings.proxy {
            Some(url) => builder.proxy(
                reqwest::Proxy::https(url.as_str())
                    .map_err(|e| setup(format!("proxy {url:?}: {e}")))?,
            ),
            // Environment variables (HTTPS_PROXY, …) must not redirect policy fetches.
            None => builder.no_proxy(),
        };
        let client = builder
            .build()
            .map_err(|e| setup(format!("HTTPS client: {}", https_client::chain_text(&e))))?;
        Ok(Fetcher {
            client,
            https_port: settings.https_port,
            fetch_timeout: settings.fetch_timeout,
        })
    }

    /// GET `https://mta-sts.<domain>:<https_port>/.well-known/mta-sts.txt` → the body as text,
    /// or why not.
    pub async fn fetch(&self, domain: &str) -> Result<String, FetchError> {
        let host = policy_host(domain)?;
        let url = format!("https://{host}:{}{POLICY_PATH}", self.https_port);
        match tokio::time::timeout(self.fetch_timeout, self.get(&host, &url)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout),
        }
    }

    async fn get(&self, host: &str, url: &str) -> Result<String, FetchError> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| classify(&e, host))?;

        // RFC 8461 §3.3: only HTTP 200 is a policy; 3xx are not followed, so they fail here.
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        // RFC 8461 §3.3: the media type must be text/plain (parameters such as charset allowed).
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        if !is_text_plain(&content_type) {
            return Err(FetchError::ContentType(content_type));
        }
        // No Accept-Encoding is sent, so the body must come as it is (RFC 9110 §12.5.3).
        // Decoding one anyway would let a few kilobytes of gzip expand past any limit.
        if let Some(encoding) = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|v| !v.is_empty() && v != "identity")
        {
            return Err(FetchError::ContentEncoding(encoding));
        }
        // RFC 8461 §3.3: bounded size — a declared length beyond the limit fails at once.
        if response
            .content_length()
            .is_some_and(|n| n > MAX_POLICY_SIZE as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let body = read_limited(response, host).await?;
        String::from_utf8(body).map_err(|_| FetchError::NotUtf8)
    }
}

/// Reads the body chunk by chunk, keeping at most [`MAX_POLICY_SIZE`] bytes; the response
/// (and its connection) is dropped as soon as one byte more arrives.
async fn read_limited(response: reqwest::Response, host: &str) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match classify(&e, host) {
            FetchError::Connect(m) => FetchError::Body(m),
            other => other,
        })?;
        // RFC 8461 §3.3: bounded size — stop reading as soon as the limit is passed.
        if body.len() + chunk.len() > MAX_POLICY_SIZE {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `mta-sts.<domain>` as an A-label name (RFC 8461 §3.3), or why `domain` cannot be one.
fn policy_host(domain: &str) -> Result<String, FetchError> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let ascii = idna::domain_to_ascii(domain)
        .map_err(|_| FetchError::Dns(format!("{domain:?} is not a valid domain name")))?;
    let plausible = !ascii.is_empty()
        && ascii
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(is_ldh))
        && ascii.len() + "mta-sts.".len() <= 253;
    if !plausible {
        return Err(FetchError::Dns(format!(
            "{domain:?} is not a valid domain name"
        )));
    }
    Ok(format!("mta-sts.{ascii}"))
}

fn is_ldh(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn content_type_text(content_type: &str) -> String {
    if content_type.is_empty() {
        "no Content-Type (text/plain required)".to_string()
    } else {
        format!("Content-Type {content_type:?} is not text/plain")
    }
}

/// `text/plain`, `TEXT/Plain; charset=utf-8`, … (RFC 9110 §8.3.1: the type and subtype are
/// case-insensitive and may carry parameters).
fn is_text_plain(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    media_type.eq_ignore_ascii_case("text/plain")
}

/// Maps a reqwest error to the [`FetchError`] an operator can act on.
fn classify(error: &reqwest::Error, host: &str) -> FetchError {
    match https_client::classify(error, host) {
        Failure::Dns(text) => FetchError::Dns(text),
        Failure::Tls(text) => FetchError::Tls(text),
        Failure::Timeout => FetchError::Timeout,
        Failure::Connect(text) => FetchError::Connect(text),
        Failure::Other(text) => FetchError::Body(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type() {
        assert!(is_text_plain("text/plain"));
        assert!(is_text_plain("Text/Plain; charset=utf-8"));
        assert!(is_text_plain(" text/plain ;charset=us-ascii"));
        assert!(!is_text_plain("text/html"));
        assert!(!is_text_plain("text/plainx"));
        assert!(!is_text_plain(""));
    }

    #[test]
    fn host_names() {
        assert_eq!(policy_host("example.test").unwrap(), "mta-sts.example.test");
        assert_eq!(
            policy_host("Example.TEST.").unwrap(),
            "mta-sts.example.test"
        );
        assert_eq!(
            policy_host("bücher.example").unwrap(),
            "mta-sts.xn--bcher-kva.example"
        );
        for bad in [
            "",
            ".",
            "a..b",
            "evil.test/x",
            "evil.test:1",
            "a@b.test",
            "a b.test",
        ] {
            assert!(
                matches!(policy_host(bad), Err(FetchError::Dns(_))),
                "{bad:?}"
            );
        }
    }

    fn resolver() -> TokioResolver {
        TokioResolver::builder_with_config(
            hickory_resolver::config::ResolverConfig::from_parts(None, vec![], vec![]),
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .build()
        .unwrap()
    }

    #[tokio::test]
    async fn setup_errors_name_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for (settings, expect) in [
            (
                crate::Settings {
                    extra_ca_files: vec![dir.path().join("missing.pem")],
                    ..Default::default()
                },
                "missing.pem",
            ),
            (
                crate::Settings {
                    extra_ca_files: vec![empty],
                    ..Default::default()
                },
                "no certificate",
            ),
            (
                crate::Settings {
                    proxy: Some("::not a url::".into()),
                    ..Default::default()
                },
                "proxy",
            ),
        ] {
            match Fetcher::new(&settings, resolver()) {
                Err(crate::CacheError::Setup(text)) => assert!(text.contains(expect), "{text}"),
                Err(other) => panic!("{other}"),
                Ok(_) => panic!("{expect}: accepted"),
            }
        }
        let proxied = crate::Settings {
            proxy: Some("http://127.0.0.1:3128".into()),
            ..Default::default()
        };
        assert!(Fetcher::new(&proxied, resolver()).is_ok());
    }

    #[test]
    fn display_texts() {
        assert_eq!(FetchError::Status(404).to_string(), "HTTP status 404");
        assert_eq!(
            FetchError::Tls(https_client::tls_text(
                &rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
                "mta-sts.example.test"
            ))
            .to_string(),
            "TLS: certificate not valid for mta-sts.example.test"
        );
    }
}
