//! TLS-RPT reports POSTed over HTTPS (RFC 8460 §5.4) against the lab: real DNS
//! (hickory-server) and a scripted HTTPS receiver, calling `mxguard::report::https::Poster`
//! directly. What a receiver gets, and one test per way a POST can fail.

mod lab;

use lab::ca::{CertOptions, LabCa};
use lab::dns::Zone;
use lab::tlsrpt_receiver::{Receiver, Reply};
use lab::{Lab, WAIT};
use mxguard::report::https::{PostError, Poster, GZIP_MEDIA_TYPE};
use std::time::{Duration, Instant};

const HOST: &str = "reports.example.test";
const PATH: &str = "/v1/tlsrpt";

/// A lab with a receiver on `127.X.Y.80` for [`HOST`] (a lab-CA certificate, its A record),
/// answering 200, and a poster that trusts the lab CA.
struct Bed {
    lab: Lab,
    receiver: Receiver,
    poster: Poster,
    /// The report: real gzip, as the sender would POST it.
    gzip: Vec<u8>,
}

impl Bed {
    async fn new() -> Bed {
        Bed::with_timeout(Duration::from_secs(10)).await
    }

    async fn with_timeout(timeout: Duration) -> Bed {
        let lab = Lab::new().await;
        let receiver = Receiver::start(&lab, 80).await;
        receiver.certify(&lab.ca.issue_with(&[HOST], CertOptions::default()));
        lab.zone(Zone::new("example.test").a(HOST, receiver.ip()));
        let poster =
            Poster::new(&[lab.ca.write_pem(lab.dir())], timeout, lab.resolver()).expect("poster");
        Bed {
            lab,
            receiver,
            poster,
            gzip: gzip(br#"{"organization-name":"Lab Sender","report-id":"r1@lab.test"}"#),
        }
    }

    /// POSTs the report to `url`.
    async fn post_to(&self, url: &str) -> Result<u16, PostError> {
        let result = self.poster.post(url, &self.gzip).await;
        if let Err(e) = &result {
            eprintln!("POST {url}: {e}");
        }
        result
    }

    /// POSTs the report to the receiver's [`HOST`] and [`PATH`].
    async fn post(&self) -> Result<u16, PostError> {
        self.post_to(&self.receiver.url(HOST, PATH)).await
    }

    /// Has the receiver answer `reply`, then POSTs once.
    async fn post_with(&self, reply: Reply) -> Result<u16, PostError> {
        self.receiver.reply(reply);
        self.post().await
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A port on `127.X.Y.n` where nothing listens (bound once, then let go).
fn closed_port(lab: &Lab, n: u8) -> u16 {
    let listener = std::net::TcpListener::bind((lab.ip(n), 0)).expect("bind");
    listener.local_addr().unwrap().port()
}

// ---- delivered ------------------------------------------------------------------------------

#[tokio::test]
async fn ok_200_delivers_the_gzip_as_application_tlsrpt_gzip() {
    let bed = Bed::new().await;
    assert_eq!(bed.post().await, Ok(200));
    let received = bed.receiver.wait_received(1, WAIT).await;
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.host, HOST, "SNI");
    assert_eq!(r.path, PATH);
    assert_eq!(r.content_type, GZIP_MEDIA_TYPE);
    assert_eq!(r.content_type, "application/tlsrpt+gzip");
    assert_eq!(r.body, bed.gzip, "the body is the gzip, unchanged");
}

#[tokio::test]
async fn any_2xx_is_delivered() {
    let bed = Bed::new().await;
    for code in [201, 202, 204] {
        assert_eq!(bed.post_with(Reply::status(code)).await, Ok(code));
    }
}

#[tokio::test]
async fn a_large_answer_is_not_waited_for() {
    let bed = Bed::new().await;
    let started = Instant::now();
    assert_eq!(
        bed.post_with(Reply::status(200).body_of(32 * 1024 * 1024))
            .await,
        Ok(200)
    );
    assert!(started.elapsed() < WAIT, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_2xx_whose_body_never_comes_is_delivered_in_time() {
    let timeout = Duration::from_secs(2);
    let bed = Bed::with_timeout(timeout).await;
    let started = Instant::now();
    assert_eq!(
        bed.post_with(Reply::status(200).stall_body()).await,
        Ok(200)
    );
    assert!(started.elapsed() < timeout + Duration::from_secs(5));
}

// ---- HTTP failures --------------------------------------------------------------------------

#[tokio::test]
async fn server_error_500_is_a_status_failure() {
    let bed = Bed::new().await;
    let result = bed.post_with(Reply::status(500)).await;
    assert_eq!(result, Err(PostError::Status(500)));
    assert_eq!(result.unwrap_err().to_string(), "HTTP status 500");
    assert_eq!(bed.receiver.received().len(), 1, "the report was sent");
}

#[tokio::test]
async fn client_errors_are_status_failures() {
    let bed = Bed::new().await;
    for code in [400, 404, 413] {
        assert_eq!(
            bed.post_with(Reply::status(code)).await,
            Err(PostError::Status(code))
        );
    }
}

#[tokio::test]
async fn redirect_302_is_not_followed() {
    let bed = Bed::new().await;
    // A target that would accept the report: the same receiver, another path.
    let target = bed.receiver.url(HOST, "/elsewhere");
    let result = bed.post_with(Reply::redirect(302, &target)).await;
    assert_eq!(result, Err(PostError::Status(302)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paths: Vec<String> = bed
        .receiver
        .received()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, [PATH], "only the first request was made");
}

// ---- TLS, connection, DNS, time -------------------------------------------------------------

#[tokio::test]
async fn untrusted_certificate_is_a_tls_failure() {
    let bed = Bed::new().await;
    let stranger = LabCa::new();
    bed.receiver
        .certify(&stranger.issue_with(&[HOST], CertOptions::default()));
    match bed.post().await {
        Err(PostError::Tls(text)) => {
            // "not issued by a trusted CA", or "a bad signature (not from a trusted CA)" when
            // the stranger's name is the lab CA's (both are "mxguard lab CA").
            assert!(text.contains("trusted CA"), "{text}");
            assert!(text.contains(HOST), "{text}");
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert!(bed.receiver.received().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn certificate_for_another_name_is_a_tls_failure() {
    let bed = Bed::new().await;
    bed.receiver
        .certify(&bed.lab.ca.issue_with(&[HOST], CertOptions::wrong_name()));
    match bed.post().await {
        Err(PostError::Tls(text)) => assert!(text.contains("not valid for"), "{text}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

#[tokio::test]
async fn nothing_listening_is_a_connect_failure() {
    let bed = Bed::new().await;
    let host = "closed.example.test";
    bed.lab.zone(
        Zone::new("example.test")
            .a(HOST, bed.receiver.ip())
            .a(host, bed.lab.ip(81)),
    );
    let port = closed_port(&bed.lab, 81);
    let result = bed.post_to(&format!("https://{host}:{port}{PATH}")).await;
    assert!(matches!(result, Err(PostError::Connect(_))), "{result:?}");
}

#[tokio::test]
async fn unknown_host_is_a_dns_failure() {
    let bed = Bed::new().await;
    let url = format!("https://missing.example.test:{}{PATH}", bed.receiver.port());
    let result = bed.post_to(&url).await;
    assert!(matches!(result, Err(PostError::Dns(_))), "{result:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_in_time() {
    let timeout = Duration::from_secs(2);
    let bed = Bed::with_timeout(timeout).await;
    let started = Instant::now();
    let result = bed
        .post_with(Reply::status(200).delay(Duration::from_secs(3600)))
        .await;
    let took = started.elapsed();
    assert_eq!(result, Err(PostError::Timeout(timeout)));
    assert!(took >= timeout - Duration::from_millis(100), "{took:?}");
    // Generous: two cores run many tests at once.
    assert!(took < timeout + Duration::from_secs(5), "{took:?}");
    assert_eq!(bed.receiver.received().len(), 1, "the request got there");
}
