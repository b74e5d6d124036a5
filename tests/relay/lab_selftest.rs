//! The lab checks itself: its DNS answers as a real authority would, and its SMTP servers
//! receive, unstuff and refuse as scripted. Nothing here needs the relay.

use crate::lab::dns::Zone;
use crate::lab::smtp::{server_tls_config, Behaviour};
use crate::lab::submit::{message, submit, Submission};
use crate::lab::{Lab, WAIT};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, ResolverBuilder};
use std::net::{Ipv4Addr, SocketAddr};

/// A resolver that asks only `server` (UDP, then TCP), never /etc/hosts, and caches nothing.
fn resolver(server: SocketAddr) -> Resolver<TokioRuntimeProvider> {
    let mut builder = resolver_over(
        server,
        vec![ConnectionConfig::udp(), ConnectionConfig::tcp()],
    );
    builder.options_mut().cache_size = 0;
    builder.build().unwrap()
}

/// A resolver builder that asks only `server` over each of `connections`, never /etc/hosts.
fn resolver_over(
    server: SocketAddr,
    mut connections: Vec<ConnectionConfig>,
) -> ResolverBuilder<TokioRuntimeProvider> {
    for c in &mut connections {
        c.port = server.port();
    }
    let ns = NameServerConfig::new(server.ip(), true, connections);
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().use_hosts_file = ResolveHosts::Never;
    builder
}

fn code(e: &NetError) -> Option<ResponseCode> {
    match e {
        NetError::Dns(DnsError::ResponseCode(c)) => Some(*c),
        NetError::Dns(DnsError::NoRecordsFound(nr)) => Some(nr.response_code),
        _ => None,
    }
}

/// Asserts that `query`, a name and a record type such as `"example.test. MX"`, fails with the
/// response code `expected`.
async fn fails_with(r: &Resolver<TokioRuntimeProvider>, query: &str, expected: ResponseCode) {
    let (name, rtype) = query.split_once(' ').expect("name and type");
    let rtype: RecordType = rtype.parse().expect("a record type");
    let e = r.lookup(name, rtype).await.unwrap_err();
    assert_eq!(code(&e), Some(expected), "{e:?}");
}

/// Whether `lookup` answers with the A record `ip`.
fn has_a(lookup: &Lookup, ip: Ipv4Addr) -> bool {
    lookup
        .answers()
        .iter()
        .any(|rec| matches!(&rec.data, RData::A(a) if a.0 == ip))
}

/// Connects to `addr` and reads the first line the server sends.
async fn first_line(addr: SocketAddr) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut r = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line)
        .await
        .unwrap();
    line
}

#[tokio::test]
async fn lab_dns_answers_like_an_authority() {
    let lab = Lab::new().await;
    lab.zone(
        Zone::new("example.test")
            .mx(20, "mx2.example.test")
            .mx(10, "mx1.example.test")
            .a("mx1.example.test", lab.ip(2))
            .aaaa("mx1.example.test", "::1".parse().unwrap())
            .txt("_mta-sts.example.test", "v=STSv1; id=1")
            .cname("alias.example.test", "mx1.example.test"),
    );
    lab.zone(Zone::new("nullmx.test").null_mx());
    let r = resolver(lab.dns.addr());

    let mx = r.lookup("example.test.", RecordType::MX).await.unwrap();
    let mut prefs: Vec<(u16, String)> = mx
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::MX(m) => Some((m.preference, m.exchange.to_string())),
            _ => None,
        })
        .collect();
    prefs.sort();
    assert_eq!(
        prefs,
        vec![
            (10, "mx1.example.test.".to_string()),
            (20, "mx2.example.test.".to_string())
        ]
    );

    let a = r.lookup("mx1.example.test.", RecordType::A).await.unwrap();
    assert!(has_a(&a, lab.ip(2)));
    let aaaa = r
        .lookup("mx1.example.test.", RecordType::AAAA)
        .await
        .unwrap();
    assert_eq!(aaaa.answers().len(), 1);
    let txt = r
        .lookup("_mta-sts.example.test.", RecordType::TXT)
        .await
        .unwrap();
    assert!(txt.answers()[0].data.to_string().contains("v=STSv1"));
    let alias = r
        .lookup("alias.example.test.", RecordType::A)
        .await
        .unwrap();
    assert!(has_a(&alias, lab.ip(2)));

    let null = r.lookup("nullmx.test.", RecordType::MX).await.unwrap();
    assert!(
        matches!(&null.answers()[0].data, RData::MX(m) if m.preference == 0 && m.exchange.is_root())
    );

    // A name inside a zone that does not exist: NXDOMAIN.
    fails_with(&r, "nosuch.example.test. MX", ResponseCode::NXDomain).await;
    // A name that exists with no MX: NOERROR, no records.
    fails_with(&r, "mx1.example.test. MX", ResponseCode::NoError).await;
    // A name under no zone: REFUSED.
    fails_with(&r, "elsewhere.test. MX", ResponseCode::Refused).await;

    // SERVFAIL on demand, and healed.
    lab.dns.servfail("example.test");
    fails_with(&r, "example.test. MX", ResponseCode::ServFail).await;
    fails_with(&r, "mx1.example.test. A", ResponseCode::ServFail).await;
    lab.dns.heal("example.test");
    assert!(r.lookup("example.test.", RecordType::MX).await.is_ok());

    // Zones change while serving.
    lab.zone(Zone::new("example.test").mx(5, "other.example.test"));
    let mx = r.lookup("example.test.", RecordType::MX).await.unwrap();
    assert_eq!(mx.answers().len(), 1);
    lab.dns.remove_zone("example.test");
    fails_with(&r, "example.test. MX", ResponseCode::Refused).await;
    assert!(lab.dns.queries().iter().any(|q| q == "example.test. MX"));
}

#[tokio::test]
async fn lab_dns_answers_over_tcp() {
    let lab = Lab::new().await;
    lab.zone(Zone::new("example.test").a("a.example.test", lab.ip(9)));
    let r = resolver_over(lab.dns.addr(), vec![ConnectionConfig::tcp()])
        .build()
        .unwrap();
    let a = r.lookup("a.example.test.", RecordType::A).await.unwrap();
    assert_eq!(a.answers().len(), 1);
}

/// The lab's submit client against a lab SMTP server: envelope, parameters and dot-stuffing
/// arrive as sent.
#[tokio::test]
async fn lab_smtp_receives_and_unstuffs() {
    let lab = Lab::new().await;
    let mx = lab
        .mx(
            2,
            Behaviour::plain().rcpt("nobody@example.test", "550 5.1.1 no such user"),
        )
        .await;
    let body = ".leading dot\n..two dots\nlast";
    let data = message("alice@sender.test", "bob@example.test", "hi", body);
    let s = Submission::new("alice@sender.test", data.clone())
        .param("RET=HDRS")
        .param("ENVID=abc+2Bd")
        .rcpt_with(
            "bob@example.test",
            &["NOTIFY=FAILURE", "ORCPT=rfc822;bob@example.test"],
        )
        .rcpt("nobody@example.test");
    let t = submit(mx.addr(), &s).await;
    assert!(t.greeting.starts_with("220"), "{t:?}");
    assert!(t
        .reply_to("RCPT TO:<nobody")
        .unwrap()
        .starts_with("550 5.1.1"));
    assert!(t.data_reply().unwrap().starts_with("250"), "{t:?}");

    let m = mx.next_message(WAIT).await;
    assert_eq!(m.mail_from, "alice@sender.test");
    assert_eq!(m.mail_param("ret"), Some("HDRS"));
    assert_eq!(m.mail_param("ENVID"), Some("abc+2Bd"));
    assert_eq!(m.rcpt_addresses(), vec!["bob@example.test"]);
    assert_eq!(m.rcpts[0].param("NOTIFY"), Some("FAILURE"));
    assert_eq!(m.data, data);
    let raw = String::from_utf8(m.raw_data.clone()).unwrap();
    assert!(
        raw.contains("\r\n..leading dot\r\n...two dots\r\n"),
        "{raw}"
    );
    assert!(raw.ends_with("\r\nlast\r\n.\r\n"));
    assert!(m.tls.is_none());
    assert_eq!(m.parse().subject(), Some("hi"));
    assert_eq!(mx.connections(), 1);
}

#[tokio::test]
async fn lab_smtp_scripted_refusals() {
    let lab = Lab::new().await;
    let mx = lab
        .mx(2, Behaviour::plain().greeting("421 4.3.2 busy"))
        .await;
    let s = Submission::new(
        "a@sender.test",
        message("a@sender.test", "b@x.test", "s", "b"),
    )
    .rcpt("b@x.test");
    assert!(first_line(mx.addr()).await.starts_with("421"));

    mx.set_behaviour(Behaviour::plain().mail("451 4.3.0 try later"));
    let t = submit(mx.addr(), &s).await;
    assert!(t.reply_to("MAIL").unwrap().starts_with("451"));

    mx.set_behaviour(Behaviour::plain().end_of_data("554 5.7.1 rejected"));
    let t = submit(mx.addr(), &s).await;
    assert!(t.data_reply().unwrap().starts_with("554"));
    assert!(mx
        .try_next_message(std::time::Duration::from_millis(100))
        .await
        .is_none());

    mx.set_behaviour(Behaviour::plain().no_extensions());
    let t = submit(mx.addr(), &s).await;
    let ehlo = t.reply_to("EHLO").unwrap();
    assert!(
        !ehlo.contains("DSN") && !ehlo.contains("PIPELINING"),
        "{ehlo}"
    );
    mx.next_message(WAIT).await;
}

/// STARTTLS with a certificate for a name: the server records version and SNI.
#[tokio::test]
async fn lab_smtp_starttls() {
    policy_cache::crypto::install_default();
    let lab = Lab::new().await;
    let cert = rcgen::generate_simple_self_signed(vec!["mx.example.test".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let mx = lab
        .mx(
            2,
            Behaviour::plain().tls_config(server_tls_config(&cert_pem, &key_pem)),
        )
        .await;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(mx.addr()).await.unwrap();
    let mut r = BufReader::new(stream);
    async fn reply<S: tokio::io::AsyncBufRead + Unpin>(r: &mut S) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    reply(&mut r).await;
    r.get_mut().write_all(b"EHLO c\r\n").await.unwrap();
    assert!(reply(&mut r).await.contains("STARTTLS"));
    r.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    assert!(reply(&mut r).await.starts_with("220"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = connector
        .connect("mx.example.test".try_into().unwrap(), r.into_inner())
        .await
        .unwrap();
    let mut r = BufReader::new(tls);
    r.get_mut()
        .write_all(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n")
        .await
        .unwrap();
    let ehlo = reply(&mut r).await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    for _ in 0..3 {
        reply(&mut r).await;
    }
    r.get_mut()
        .write_all(b"Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    assert!(reply(&mut r).await.starts_with("250"));
    let m = mx.next_message(WAIT).await;
    let tls = m.tls.expect("TLS recorded");
    assert_eq!(tls.version, "TLSv1_3");
    assert_eq!(tls.sni.as_deref(), Some("mx.example.test"));
    assert_eq!(m.mail_from, "");
}

/// A slow server's banner comes only after its delay.
#[tokio::test]
async fn lab_smtp_slow_greeting() {
    let lab = Lab::new().await;
    let delay = std::time::Duration::from_millis(300);
    let mx = lab.mx(2, Behaviour::plain().slow(delay)).await;
    let start = std::time::Instant::now();
    assert!(first_line(mx.addr()).await.starts_with("220"));
    assert!(start.elapsed() >= delay);
}
