//! TLS protocol, cipher-suite and key-exchange policy end to end (`tls_protocols`,
//! `tls_mandatory_protocols`, `tls_cipher_suites`, `tls_groups`, `tls_preempt_cipherlist`),
//! against real TLS peers: `openssl s_server` behind a lab MX for versions rustls does not
//! have (TLS 1.0), rustls lab MX hosts limited to TLS 1.2, and `openssl s_client` submitting
//! to the relay's listeners. Each test checks what the peer saw and the delivery log line.

mod lab;

use lab::ca::CertOptions;
use lab::dns::Zone;
use lab::openssl::{self, SClient, SServer};
use lab::relay::{assert_facts, DeliveryLine, Relay};
use lab::smtp::{assert_nothing_sent, Behaviour, SmtpServer};
use lab::sts::StsScene;
use lab::submit::{message, submit_ok, ClientTls, Submission};
use lab::{Lab, WAIT};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

const SENDER: &str = "alice@sender.test";
const BOB: &str = "bob@example.test";

/// Skips a test (passing, with a note) where `openssl` is missing; `.ci/run` installs it.
macro_rules! need_openssl {
    () => {
        if !openssl::available() {
            eprintln!("SKIPPED: the openssl command is not installed");
            return;
        }
    };
}

/// `example.test` with its MX `mx.example.test` at lab host 3, serving `behaviour`.
async fn example_mx(lab: &Lab, behaviour: Behaviour) -> SmtpServer {
    lab.zone(
        Zone::new("example.test")
            .mx(10, "mx.example.test")
            .a("mx.example.test", lab.ip(3)),
    );
    lab.mx(3, behaviour).await
}

/// An `openssl s_server` at lab host 30 that speaks only TLS 1.0 (OpenSSL 3 allows it only at
/// security level 0), with a lab-CA certificate for `mx.example.test`.
async fn tls10_server(lab: &Lab) -> SServer {
    let issued = lab
        .ca
        .issue_with(&["mx.example.test"], CertOptions::default());
    let (cert, key) = issued.write_pem(lab.dir(), "tls10");
    let addr = SocketAddr::new(lab.ip(30).into(), lab.port());
    SServer::start(
        addr,
        &cert,
        &key,
        &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    )
    .await
}

/// A rustls STARTTLS configuration for `mx.example.test` offering only TLS 1.2.
fn tls12_only(lab: &Lab) -> Arc<rustls::ServerConfig> {
    let issued = lab
        .ca
        .issue_with(&["mx.example.test"], CertOptions::default());
    let certs = rustls_pemfile::certs(&mut issued.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("lab chain");
    let key = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())
        .expect("lab key")
        .expect("a key");
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(policy_cache::crypto::provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("TLS 1.2")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
    Arc::new(config)
}

fn mail(subject: &str) -> Submission {
    Submission::new(SENDER, message(SENDER, BOB, subject, "Hello.\n")).rcpt(BOB)
}

async fn send(relay: &Relay, subject: &str, status: &str) -> DeliveryLine {
    let mark = relay.log_mark();
    relay.submit(&mail(subject)).await;
    relay.wait_for_delivery(mark, BOB, status, WAIT).await
}

fn said_starttls(mx: &SmtpServer) -> usize {
    mx.transcript()
        .iter()
        .filter(|l| l.eq_ignore_ascii_case("C: STARTTLS"))
        .count()
}

fn write(lab: &Lab, name: &str, text: &str) -> PathBuf {
    let path = lab.dir().join(name);
    std::fs::write(&path, text).expect("write");
    path
}

// ---------------------------------------------------------------------------------------------
// Outbound

/// Postfix's `may`: a server that offers only TLS 1.0 fails the handshake (rustls never
/// offers it), and the message goes in plaintext over a new connection, as Postfix does.
#[tokio::test]
async fn opportunistic_delivery_to_a_tls10_only_server_falls_back_to_plaintext() {
    need_openssl!();
    let s = StsScene::new().await;
    let lab = s.lab();
    let tls10 = tls10_server(lab).await;
    let mx = example_mx(lab, Behaviour::plain().tls_handoff(tls10.addr)).await;
    let relay = s.relay("").await;

    let d = send(&relay, "tls 1.0 peer", "sent").await;
    assert_facts(&d, "none", "none", "2.0.0");
    assert_eq!(said_starttls(&mx), 1, "one STARTTLS, then plaintext");
    assert_eq!(
        mx.connections(),
        2,
        "the plaintext retry is a new connection"
    );
    assert_eq!(mx.messages().len(), 1);
    relay
        .wait_for_log(
            |l| l.contains("TLS handshake failed") && l.contains("retrying in plaintext"),
            WAIT,
        )
        .await;
}

/// The same server under a level that demands TLS (`encrypt`): no plaintext, deferred with
/// the handshake's 4.7.5, and with the shipped status filter bounced at once as 5.7.5.
#[tokio::test]
async fn mandatory_delivery_to_a_tls10_only_server_is_refused_with_4_7_5() {
    need_openssl!();
    let s = StsScene::new().await;
    let lab = s.lab();
    let tls10 = tls10_server(lab).await;
    let mx = example_mx(lab, Behaviour::plain().tls_handoff(tls10.addr)).await;
    let table = write(lab, "tls_policy", "example.test encrypt\n");
    let relay = s
        .relay(&format!(
            "[delivery]\ntls_policy_file = {:?}\n",
            table.to_string_lossy()
        ))
        .await;

    let d = send(&relay, "tls 1.0 peer, encrypt", "deferred").await;
    assert_facts(&d, "none", "local:encrypt", "4.7.5");
    assert!(
        d.reply
            .starts_with("451 4.7.5 Cannot start TLS: handshake failure"),
        "{}",
        d.reply
    );
    assert_nothing_sent(&mx);
}

/// `tls_mandatory_protocols = ">=TLSv1.3"` and an MX that speaks only TLS 1.2: refused with
/// 4.7.5 for a domain at `encrypt`, while a domain without a level (opportunistic,
/// `tls_protocols` at its default) still gets TLS 1.2 from the same kind of server.
#[tokio::test]
async fn tls13_only_mandatory_delivery_to_a_tls12_only_mx_is_refused() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let mx = example_mx(lab, Behaviour::plain().tls_config(tls12_only(lab))).await;
    lab.zone(
        Zone::new("other.test")
            .mx(10, "mx.other.test")
            .a("mx.other.test", lab.ip(4)),
    );
    let other = lab
        .mx(4, Behaviour::plain().tls_config(tls12_only(lab)))
        .await;
    let table = write(lab, "tls_policy", "example.test encrypt\n");
    let relay = s
        .relay(&format!(
            "[delivery]\ntls_policy_file = {:?}\ntls_mandatory_protocols = \">=TLSv1.3\"\n",
            table.to_string_lossy()
        ))
        .await;

    let d = send(&relay, "1.3 demanded", "deferred").await;
    assert_facts(&d, "none", "local:encrypt", "4.7.5");
    assert!(
        d.reply.contains("Cannot start TLS: handshake failure"),
        "{}",
        d.reply
    );
    assert_nothing_sent(&mx);
    assert!(
        mx.tls_failures()
            .iter()
            .any(|f| f.contains("Tls12NotOfferedOrEnabled")),
        "the MX saw a version mismatch: {:?}",
        mx.tls_failures()
    );

    let mark = relay.log_mark();
    let to = "carol@other.test";
    relay
        .submit(&Submission::new(SENDER, message(SENDER, to, "opportunistic", "Hi.\n")).rcpt(to))
        .await;
    let d = relay.wait_for_delivery(mark, to, "sent", WAIT).await;
    assert_facts(&d, "unverified", "none", "2.0.0");
    assert_eq!(d.field("tls_version"), Some("TLSv1.2"));
    assert_eq!(other.messages().len(), 1);
}

/// The delivery log line names the key exchange: X25519MLKEM768 by default (post-quantum
/// hybrid, offered first), the configured group when `tls_groups` narrows it; the cipher suite
/// is the one `tls_cipher_suites` allows.
#[tokio::test]
async fn the_log_line_shows_the_key_exchange_and_the_configured_suite() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let (cert, key) = lab.ca.issue(&["mx.example.test"]);
    let _mx = example_mx(lab, Behaviour::plain().starttls(&cert, &key)).await;
    let relay = s.relay("").await;
    let d = send(&relay, "default groups", "sent").await;
    assert_eq!(d.field("kx"), Some("X25519MLKEM768"), "{}", d.line);
    assert_eq!(d.field("tls_version"), Some("TLSv1.3"));
    drop(relay);

    let s = StsScene::new().await;
    let lab = s.lab();
    let (cert, key) = lab.ca.issue(&["mx.example.test"]);
    let _mx = example_mx(lab, Behaviour::plain().starttls(&cert, &key)).await;
    let relay = s
        .relay(
            "[delivery]\ntls_groups = [\"secp256r1\"]\n\
             tls_cipher_suites = [\"TLS_CHACHA20_POLY1305_SHA256\", \
             \"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\"]\n",
        )
        .await;
    let d = send(&relay, "narrowed", "sent").await;
    assert_eq!(d.field("kx"), Some("secp256r1"), "{}", d.line);
    assert_eq!(d.field("cipher"), Some("TLS13_CHACHA20_POLY1305_SHA256"));
    // `kx` is the last field before `dsn=`.
    assert!(
        d.line.contains(", kx=secp256r1, dsn=2.0.0, status=sent"),
        "{}",
        d.line
    );
}

// ---------------------------------------------------------------------------------------------
// Inbound

/// A relay with one STARTTLS listener (certificate for [`lab::RELAY_NAME`]) and `listener_toml`
/// added to it; AUTH on when `auth`.
async fn tls_listener_relay(lab: &Lab, listener_toml: &str, auth: bool) -> Relay {
    let issued = lab
        .ca
        .issue_with(&[lab::RELAY_NAME], CertOptions::default());
    let (cert, key) = issued.write_pem(lab.dir(), "relay");
    let mut toml = format!(
        "[[listener]]\naddress = \"{}\"\ntls_cert = {:?}\ntls_key = {:?}\n{listener_toml}\n",
        lab.relay_addr(),
        cert.to_string_lossy(),
        key.to_string_lossy()
    );
    if auth {
        let line = format!("carol:{}\n", mxguard::inbound::hash_password("secret"));
        let users = write(lab, "users", &line);
        toml.push_str(&format!(
            "[access]\nauth_users_file = {:?}\n",
            users.to_string_lossy()
        ));
    }
    lab.start_relay(lab.relay_config().toml(&toml)).await
}

/// With AUTH offered, TLS on the listener is mandatory, so `tls_mandatory_protocols =
/// ">=TLSv1.3"` turns away a TLS 1.2 client (no AUTH without TLS, so none at all) and lets a
/// TLS 1.3 client in, which is then offered AUTH.
#[tokio::test]
async fn a_tls12_client_cannot_reach_auth_under_a_tls13_only_listener() {
    need_openssl!();
    let lab = Lab::new().await;
    let relay = tls_listener_relay(&lab, "tls_mandatory_protocols = \">=TLSv1.3\"", true).await;

    let old = SClient::run(relay.addr(), &["-tls1_2"], "EHLO client.test\nQUIT\n").await;
    assert!(!old.established(), "{}", old.output);
    assert!(!old.output.contains("250-AUTH"), "{}", old.output);
    assert!(
        old.output.contains("alert protocol version"),
        "{}",
        old.output
    );
    let new = SClient::run(relay.addr(), &["-tls1_3"], "EHLO client.test\nQUIT\n").await;
    assert!(new.established(), "{}", new.output);
    assert_eq!(new.protocol(), Some("TLSv1.3"), "{}", new.output);
    assert!(
        new.output.contains("250-AUTH PLAIN LOGIN"),
        "{}",
        new.output
    );
}

/// Without AUTH, `implicit_tls` or a `min_level`, TLS is optional on the listener and
/// `tls_protocols` applies, not `tls_mandatory_protocols`: the TLS 1.2 client gets in.
#[tokio::test]
async fn an_optional_tls_listener_uses_tls_protocols() {
    need_openssl!();
    let lab = Lab::new().await;
    let relay = tls_listener_relay(&lab, "tls_mandatory_protocols = \">=TLSv1.3\"", false).await;
    let c = SClient::run(relay.addr(), &["-tls1_2"], "EHLO client.test\nQUIT\n").await;
    assert!(c.established(), "{}", c.output);
    assert_eq!(c.protocol(), Some("TLSv1.2"), "{}", c.output);
    drop(relay);

    let lab = Lab::new().await;
    let relay = tls_listener_relay(&lab, "tls_protocols = \"!TLSv1.2\"", false).await;
    let c = SClient::run(relay.addr(), &["-tls1_2"], "EHLO client.test\nQUIT\n").await;
    assert!(!c.established(), "{}", c.output);
    assert!(c.output.contains("alert protocol version"), "{}", c.output);
}

/// `tls_preempt_cipherlist`: the server's order of `tls_cipher_suites` wins over the client's.
#[tokio::test]
async fn tls_preempt_cipherlist_makes_the_server_order_win() {
    need_openssl!();
    let client_order = [
        "-tls1_3",
        "-ciphersuites",
        "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
    ];
    let suites =
        "tls_cipher_suites = [\"TLS_CHACHA20_POLY1305_SHA256\", \"TLS_AES_256_GCM_SHA384\", \
                  \"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\"]";
    let lab = Lab::new().await;
    let relay = tls_listener_relay(&lab, suites, false).await;
    let c = SClient::run(relay.addr(), &client_order, "QUIT\n").await;
    assert_eq!(c.cipher(), Some("TLS_AES_256_GCM_SHA384"), "{}", c.output);
    drop(relay);

    let lab = Lab::new().await;
    let relay = tls_listener_relay(
        &lab,
        &format!("{suites}\ntls_preempt_cipherlist = true"),
        false,
    )
    .await;
    let c = SClient::run(relay.addr(), &client_order, "QUIT\n").await;
    assert_eq!(
        c.cipher(),
        Some("TLS_CHACHA20_POLY1305_SHA256"),
        "{}",
        c.output
    );
}

/// Inbound, the `Received:` header and the log name the key exchange; a rustls client gets
/// the post-quantum hybrid by default.
#[tokio::test]
async fn inbound_sessions_record_the_key_exchange() {
    let s = StsScene::new().await;
    let lab = s.lab();
    let (cert, key) = lab.ca.issue(&["mx.example.test"]);
    let mx = example_mx(lab, Behaviour::plain().starttls(&cert, &key)).await;
    let issued = lab
        .ca
        .issue_with(&[lab::RELAY_NAME], CertOptions::default());
    let (rcert, rkey) = issued.write_pem(lab.dir(), "relay");
    let relay = s
        .relay(&format!(
            "[[listener]]\naddress = \"{}\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            lab.relay_addr(),
            rcert.to_string_lossy(),
            rkey.to_string_lossy()
        ))
        .await;
    let tls = ClientTls::trusting(&lab.ca.cert_der(), lab::RELAY_NAME);
    submit_ok(relay.addr(), &mail("pq inbound").starttls(tls)).await;
    let m = mx.next_message(WAIT).await;
    let text = String::from_utf8_lossy(&m.data);
    assert!(
        text.contains("with cipher TLS13_") && text.contains("key-exchange X25519MLKEM768)"),
        "{text}"
    );
    relay
        .wait_for_log(
            |l| l.contains("TLS established") && l.contains("key-exchange X25519MLKEM768"),
            WAIT,
        )
        .await;
}

// ---------------------------------------------------------------------------------------------
// Start-up

/// Settings rustls cannot honour stop the relay at start-up (and `check-config`) with the key
/// and the reason, rather than being ignored.
#[tokio::test]
async fn settings_that_cannot_be_honoured_stop_the_start() {
    let lab = Lab::new().await;
    let cases = [
        (
            "[delivery]\ntls_protocols = \">=TLSv1\"",
            "delivery.tls_protocols",
            "RFC 8996",
        ),
        (
            "[delivery]\ntls_mandatory_protocols = \"TLSv1.1 TLSv1.2\"",
            "delivery.tls_mandatory_protocols",
            "rustls does not implement",
        ),
        (
            "[delivery]\ntls_cipher_suites = [\"TLS_RSA_WITH_RC4_128_SHA\"]",
            "delivery.tls_cipher_suites",
            "unknown cipher suite",
        ),
        (
            "[delivery]\ntls_groups = [\"X25519MLKEM768\"]",
            "delivery.tls_groups",
            "no group usable with TLSv1.2",
        ),
    ];
    for (toml, key, why) in cases {
        let path = write(&lab, "bad.toml", &lab.relay_config().toml(toml).render());
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mxguard"))
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .await
            .expect("mxguard runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}: accepted");
        assert!(stderr.contains(key), "{toml}: {stderr}");
        assert!(stderr.contains(why), "{toml}: {stderr}");
    }
}
