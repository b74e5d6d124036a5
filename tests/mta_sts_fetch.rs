//! Fetching MTA-STS policies (RFC 8461 §3.3) against the lab: real DNS (hickory-server) and a
//! scripted HTTPS policy host, calling `policy_cache::sts::fetch::Fetcher` directly. One test
//! per way a fetch can fail, and the ways it succeeds.

mod lab;

use lab::ca::{CertOptions, LabCa};
use lab::dns::Zone;
use lab::https::{PolicyServer, Response};
use lab::{Lab, WAIT};
use policy_cache::sts::fetch::{FetchError, Fetcher};
use policy_cache::Settings;
use std::time::{Duration, Instant};

const DOMAIN: &str = "example.test";
const HOST: &str = "mta-sts.example.test";
const POLICY: &str = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n";
const KIB: u64 = 1024;

/// A lab with a policy host on `127.X.Y.80` serving [`POLICY`] for [`DOMAIN`], announced in
/// DNS, and a fetcher that trusts the lab CA.
struct Bed {
    lab: Lab,
    server: PolicyServer,
    settings: Settings,
}

impl Bed {
    async fn new() -> Bed {
        let lab = Lab::new().await;
        let server = PolicyServer::start(&lab, 80).await;
        server.publish(&lab.ca, DOMAIN, POLICY);
        lab.zone(server.announce(Zone::new(DOMAIN).mx(10, "mx.example.test"), DOMAIN, "1"));
        let settings = Settings {
            https_port: server.port(),
            extra_ca_files: vec![lab.ca.write_pem(lab.dir())],
            connect_timeout: Duration::from_secs(3),
            fetch_timeout: Duration::from_secs(10),
            ..Settings::default()
        };
        Bed {
            lab,
            server,
            settings,
        }
    }

    fn fetcher(&self) -> Fetcher {
        Fetcher::new(&self.settings, self.lab.resolver()).expect("fetcher")
    }

    async fn fetch(&self) -> Result<String, FetchError> {
        let result = self.fetcher().fetch(DOMAIN).await;
        if let Err(e) = &result {
            eprintln!("fetch {DOMAIN}: {e}");
        }
        result
    }

    /// Serves `response` for [`HOST`] and fetches once.
    async fn fetch_with(&self, response: Response) -> Result<String, FetchError> {
        self.server.set(HOST, response);
        self.fetch().await
    }

    /// Has [`HOST`] present a certificate for its name issued by `ca` with `options`.
    fn certify(&self, ca: &LabCa, options: CertOptions) {
        self.server.certify(HOST, &ca.issue_with(&[HOST], options));
    }

    /// How many requests [`HOST`] answered (a failed handshake makes none).
    fn requests(&self) -> usize {
        self.server.requests(HOST)
    }
}

/// [`DOMAIN`] with its MX and its `_mta-sts` TXT record, but no address for [`HOST`].
fn zone_without_policy_host() -> Zone {
    Zone::new(DOMAIN)
        .mx(10, "mx.example.test")
        .txt("_mta-sts.example.test", "v=STSv1; id=1")
}

fn tls_error(result: Result<String, FetchError>) -> String {
    match result {
        Err(FetchError::Tls(text)) => text,
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

// ---- success --------------------------------------------------------------------------------

#[tokio::test]
async fn text_plain_with_charset_is_returned() {
    let bed = Bed::new().await;
    assert_eq!(bed.fetch().await, Ok(POLICY.to_string()));
    assert_eq!(bed.requests(), 1);
    let served = bed.server.wait_served(HOST, 1, WAIT).await;
    assert_eq!(served[0].path, "/.well-known/mta-sts.txt");
}

#[tokio::test]
async fn bare_text_plain_and_odd_case_are_accepted() {
    let bed = Bed::new().await;
    for ct in ["text/plain", "Text/Plain;charset=\"us-ascii\""] {
        assert_eq!(
            bed.fetch_with(Response::policy(POLICY).content_type(ct))
                .await,
            Ok(POLICY.to_string()),
            "{ct}"
        );
    }
}

#[tokio::test]
async fn garbage_body_is_returned_as_text_for_the_parser_to_judge() {
    let bed = Bed::new().await;
    let garbage = "<html>not a policy</html>\n\u{1}é\0";
    assert_eq!(
        bed.fetch_with(Response::policy(garbage)).await,
        Ok(garbage.to_string())
    );
}

#[tokio::test]
async fn body_of_exactly_64_kib_is_accepted_with_length_and_chunked() {
    let bed = Bed::new().await;
    let body = bed.fetch_with(Response::filler(64 * KIB)).await.unwrap();
    assert_eq!(body.len(), 64 * 1024);
    let body = bed
        .fetch_with(Response::filler(64 * KIB).chunked())
        .await
        .unwrap();
    assert_eq!(body.len(), 64 * 1024);
}

#[tokio::test]
async fn internationalized_domain_is_fetched_under_its_a_label() {
    let bed = Bed::new().await;
    let a_label = "xn--bcher-kva.test";
    bed.server.publish(&bed.lab.ca, a_label, POLICY);
    // The zone is `test.` itself: the lab's `Zone::new` cannot take an IDN origin (hickory
    // shows it as U-labels, which it then fails to parse back).
    bed.lab
        .zone(bed.server.announce(Zone::new("test"), a_label, "1"));
    assert_eq!(
        bed.fetcher().fetch("bücher.test").await,
        Ok(POLICY.to_string())
    );
    assert_eq!(bed.server.requests("mta-sts.xn--bcher-kva.test"), 1);
}

// ---- HTTP -----------------------------------------------------------------------------------

#[tokio::test]
async fn text_html_is_refused() {
    let bed = Bed::new().await;
    let result = bed
        .fetch_with(Response::policy(POLICY).content_type("text/html"))
        .await;
    assert_eq!(result, Err(FetchError::ContentType("text/html".into())));
}

#[tokio::test]
async fn missing_content_type_is_refused() {
    let bed = Bed::new().await;
    let result = bed
        .fetch_with(Response::policy(POLICY).no_content_type())
        .await;
    assert_eq!(result, Err(FetchError::ContentType(String::new())));
}

#[tokio::test]
async fn not_found_is_a_status_failure() {
    let bed = Bed::new().await;
    let result = bed.fetch_with(Response::status(404)).await;
    assert_eq!(result, Err(FetchError::Status(404)));
    assert_eq!(result.unwrap_err().to_string(), "HTTP status 404");
}

#[tokio::test]
async fn server_error_is_a_status_failure() {
    let bed = Bed::new().await;
    assert_eq!(
        bed.fetch_with(Response::status(500)).await,
        Err(FetchError::Status(500))
    );
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let bed = Bed::new().await;
    // A target that would work: a valid policy host of its own, published in DNS.
    let elsewhere = "elsewhere.test";
    let target_host = bed.server.publish(&bed.lab.ca, elsewhere, POLICY);
    bed.lab
        .zone(bed.server.announce(Zone::new(elsewhere), elsewhere, "1"));
    let target = format!(
        "https://{target_host}:{}/.well-known/mta-sts.txt",
        bed.server.port()
    );
    for code in [301, 302, 307, 308] {
        assert_eq!(
            bed.fetch_with(Response::redirect(code, &target)).await,
            Err(FetchError::Status(code))
        );
    }
    // And on the same host, another path.
    assert_eq!(
        bed.fetch_with(Response::redirect(301, "/elsewhere")).await,
        Err(FetchError::Status(301))
    );
    assert_eq!(bed.server.requests(&target_host), 0);
    assert_eq!(bed.requests(), 5);
    assert!(bed.server.served().iter().all(|s| s.path != "/elsewhere"));
}

#[tokio::test]
async fn non_utf8_body_is_refused() {
    let bed = Bed::new().await;
    assert_eq!(
        bed.fetch_with(Response::policy("").body(b"version: STSv1\n\xff\xfe\n"))
            .await,
        Err(FetchError::NotUtf8)
    );
}

#[tokio::test]
async fn body_shorter_than_declared_is_a_body_failure() {
    let bed = Bed::new().await;
    let result = bed
        .fetch_with(Response::policy(POLICY).declared_length(1000))
        .await;
    assert!(matches!(result, Err(FetchError::Body(_))), "{result:?}");
}

// ---- size -----------------------------------------------------------------------------------

#[tokio::test]
async fn oversized_body_with_content_length_fails_at_once() {
    let bed = Bed::new().await;
    assert_eq!(
        bed.fetch_with(Response::filler(100 * KIB)).await,
        Err(FetchError::TooLarge)
    );
    // The declared length alone decides, even when the server would send less.
    assert_eq!(
        bed.fetch_with(Response::policy(POLICY).declared_length(100 * KIB))
            .await,
        Err(FetchError::TooLarge)
    );
}

#[tokio::test]
async fn one_byte_over_64_kib_chunked_is_too_large() {
    let bed = Bed::new().await;
    assert_eq!(
        bed.fetch_with(Response::filler(64 * KIB + 1).chunked())
            .await,
        Err(FetchError::TooLarge)
    );
}

#[tokio::test]
async fn oversized_chunked_body_is_cut_off_while_streaming() {
    let bed = Bed::new().await;
    // Far more than socket buffers can hold: the server can only finish if the client reads it.
    let total = 256 * KIB * KIB;
    let started = Instant::now();
    assert_eq!(
        bed.fetch_with(Response::filler(total).chunked()).await,
        Err(FetchError::TooLarge)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The client hung up: the server's writes failed long before the end of the body.
    let served = bed.server.wait_served(HOST, 1, WAIT).await;
    assert!(!served[0].completed, "{served:?}");
    assert!(served[0].body_bytes < total / 4, "{served:?}");
}

// ---- time -----------------------------------------------------------------------------------

#[tokio::test]
async fn slow_server_times_out() {
    let mut bed = Bed::new().await;
    bed.settings.fetch_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let result = bed
        .fetch_with(Response::policy(POLICY).delay(Duration::from_secs(5)))
        .await;
    assert_eq!(result, Err(FetchError::Timeout));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
}

/// A server that sends its (valid) policy one byte every 300 ms: the whole fetch is bounded by
/// `fetch_timeout`, whatever the pace of single bytes (no per-read timer is fooled).
#[tokio::test]
async fn trickled_body_times_out_within_the_fetch_timeout() {
    let mut bed = Bed::new().await;
    bed.settings.fetch_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let result = bed
        .fetch_with(Response::policy(POLICY).trickle(Duration::from_millis(300)))
        .await;
    assert_eq!(result, Err(FetchError::Timeout));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    // The server got only a few bytes out before the client hung up.
    let served = bed.server.wait_served(HOST, 1, WAIT).await;
    assert!(!served[0].completed, "{served:?}");
    assert!(served[0].body_bytes < POLICY.len() as u64, "{served:?}");
}

// ---- encodings ------------------------------------------------------------------------------

/// 64 MiB of zeros compressed by the system's `gzip`: about 64 KiB on the wire.
fn gzip_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut gzip = std::process::Command::new("gzip")
        .args(["-9", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = gzip.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            stdin.write_all(&zeros).expect("write to gzip");
        }
    });
    let out = gzip.wait_with_output().expect("gzip output");
    writer.join().expect("writer");
    assert!(out.status.success());
    out.stdout
}

/// A gzip bomb sent with `Content-Encoding: gzip` (never asked for: no Accept-Encoding goes
/// out) is refused on its headers, undecoded, however small it is on the wire.
#[tokio::test]
async fn gzip_bomb_is_refused_without_being_decoded() {
    let bed = Bed::new().await;
    let bomb = gzip_bomb();
    assert!(bomb.len() < 128 * KIB as usize, "{} bytes", bomb.len());
    let started = Instant::now();
    assert_eq!(
        bed.fetch_with(Response::policy("").body(&bomb).content_encoding("gzip"))
            .await,
        Err(FetchError::ContentEncoding("gzip".into()))
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Any other coding is refused the same way, even when the body happens to be plain text (a
/// server that labels what was not asked for is broken); `identity`, "no coding", is accepted.
#[tokio::test]
async fn any_content_encoding_but_identity_is_refused() {
    let bed = Bed::new().await;
    assert_eq!(
        bed.fetch_with(Response::policy(POLICY).content_encoding("br"))
            .await,
        Err(FetchError::ContentEncoding("br".into()))
    );
    assert_eq!(
        bed.fetch_with(Response::policy(POLICY).content_encoding("identity"))
            .await,
        Ok(POLICY.to_string())
    );
}

// ---- TLS ------------------------------------------------------------------------------------

#[tokio::test]
async fn certificate_from_an_untrusted_ca_is_refused() {
    let bed = Bed::new().await;
    let stranger = LabCa::new();
    bed.certify(&stranger, CertOptions::default());
    // The stranger CA has the same name as the lab's, so the verifier tries the lab's key.
    let text = tls_error(bed.fetch().await);
    assert!(text.contains(HOST), "{text}");
    assert_eq!(bed.requests(), 0);
}

#[tokio::test]
async fn self_signed_certificate_is_refused() {
    let bed = Bed::new().await;
    bed.certify(&bed.lab.ca, CertOptions::self_signed());
    tls_error(bed.fetch().await);
    assert_eq!(bed.requests(), 0);
}

#[tokio::test]
async fn certificate_for_another_name_is_refused() {
    let bed = Bed::new().await;
    bed.certify(&bed.lab.ca, CertOptions::wrong_name());
    let result = bed.fetch().await;
    assert_eq!(
        result.clone().unwrap_err().to_string(),
        "TLS: certificate not valid for mta-sts.example.test"
    );
    tls_error(result);
    assert_eq!(bed.requests(), 0);
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let bed = Bed::new().await;
    bed.certify(&bed.lab.ca, CertOptions::expired());
    let text = tls_error(bed.fetch().await);
    assert!(text.contains("expired"), "{text}");
    assert_eq!(bed.requests(), 0);
}

// ---- DNS and connection ---------------------------------------------------------------------

#[tokio::test]
async fn missing_policy_host_is_a_dns_failure() {
    let bed = Bed::new().await;
    // The zone exists, mta-sts.<domain> does not: NXDOMAIN.
    bed.lab.zone(zone_without_policy_host());
    match bed.fetch().await {
        Err(FetchError::Dns(text)) => assert!(text.contains(HOST), "{text}"),
        other => panic!("expected a DNS failure, got {other:?}"),
    }
    assert_eq!(bed.requests(), 0);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_failure() {
    let bed = Bed::new().await;
    // mta-sts.<domain> points at an address of the lab where nothing listens.
    bed.lab
        .zone(zone_without_policy_host().a(HOST, bed.lab.ip(81)));
    match bed.fetch().await {
        Err(FetchError::Connect(text)) => assert!(text.contains(HOST), "{text}"),
        other => panic!("expected a connect failure, got {other:?}"),
    }
}
