//! `cargo bench --bench tls_handshake`: full TLS handshakes per second over loopback TCP, with
//! the crypto provider mxguard is built with, for each key-exchange group it offers and for an
//! ECDSA P-256 and (when `openssl` is installed to make the key) an RSA-2048 certificate.
//! Client and server run in this process on one runtime thread each side's work is real: a TCP
//! connection, a full handshake (no resumption), one byte each way, close. Prints a table.
//!
//! Options (after `--`): `-n N` handshakes per row (default 400; 5 under `cargo test`).

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Row {
    cert: &'static str,
    group: String,
    median: Duration,
    p90: Duration,
    per_sec: f64,
    client_hello: usize,
}

fn main() {
    // `cargo bench` passes `--bench`; without it this is `cargo test` building every target:
    // a few handshakes per row show that it works, without the minutes of a measurement.
    let default = if std::env::args().any(|a| a == "--bench") {
        400
    } else {
        5
    };
    let n = std::env::args()
        .skip_while(|a| a != "-n")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1);
    mxguard::tls::install_crypto_provider();
    let provider = CryptoProvider::get_default()
        .expect("mxguard installs a provider")
        .clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut certs = vec![("ECDSA P-256", ecdsa_cert())];
    match rsa_cert() {
        Some(c) => certs.push(("RSA-2048", c)),
        None => eprintln!("openssl not found: no RSA-2048 row"),
    }
    let mut rows = Vec::new();
    for (label, (chain, key)) in &certs {
        // Each group alone, then the provider's default list (what mxguard offers).
        let mut choices: Vec<Vec<&'static dyn rustls::crypto::SupportedKxGroup>> =
            provider.kx_groups.iter().map(|g| vec![*g]).collect();
        choices.push(provider.kx_groups.clone());
        for groups in choices {
            let group_label = if groups.len() == 1 {
                format!("{:?}", groups[0].name())
            } else {
                "default list".to_string()
            };
            let mut p = (*provider).clone();
            p.kx_groups = groups;
            let p = Arc::new(p);
            let row = runtime.block_on(measure(p, chain.clone(), key.clone_key(), n));
            rows.push(Row {
                cert: label,
                group: group_label,
                ..row
            });
        }
    }
    println!("TLS handshakes over loopback, {n} per row, provider default suites:");
    println!(
        "  {:<12} {:<18} {:>10} {:>10} {:>12} {:>14}",
        "certificate", "key exchange", "median", "p90", "per second", "ClientHello"
    );
    for r in rows {
        println!(
            "  {:<12} {:<18} {:>8.0}µs {:>8.0}µs {:>12.0} {:>12} B",
            r.cert,
            r.group,
            r.median.as_secs_f64() * 1e6,
            r.p90.as_secs_f64() * 1e6,
            r.per_sec,
            r.client_hello
        );
    }
}

async fn measure(
    provider: Arc<CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    n: usize,
) -> Row {
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[chain.len() - 1].clone()).expect("root");
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serve = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut b = [0u8; 1];
                    if tls.read_exact(&mut b).await.is_ok() {
                        let _ = tls.write_all(&b).await;
                        let _ = tls.shutdown().await;
                    }
                }
            });
        }
    });
    let client_hello = client_hello_size(&connector, addr).await;
    let mut times = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("bench.test").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.expect("read");
        times.push(t.elapsed());
    }
    let total = start.elapsed();
    serve.abort();
    times.sort();
    Row {
        cert: "",
        group: String::new(),
        median: times[n / 2],
        p90: times[n * 9 / 10],
        per_sec: n as f64 / total.as_secs_f64(),
        client_hello,
    }
}

/// Bytes of the first flight the client sends: the ClientHello with its key shares.
async fn client_hello_size(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> usize {
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let probe_addr = probe.local_addr().expect("addr");
    let connector = connector.clone();
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(probe_addr).await.expect("connect");
        let name = ServerName::try_from("bench.test").expect("name");
        let _ =
            tokio::time::timeout(Duration::from_millis(300), connector.connect(name, tcp)).await;
    });
    let (mut tcp, _) = probe.accept().await.expect("accept");
    let mut buf = vec![0u8; 16384];
    let mut got = 0;
    // A TLS record header says how long the ClientHello record is.
    while got < 5 || got < 5 + u16::from_be_bytes([buf[3], buf[4]]) as usize {
        match tcp.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    drop(tcp);
    let _ = client.await;
    let _ = addr;
    got
}

/// A leaf for `bench.test` with `key`, issued by a fresh CA; the chain and the CA to trust.
fn issue(key: rcgen::KeyPair) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = rcgen::CertificateParams::new(vec!["bench.test".to_string()]).expect("params");
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    (
        vec![cert.der().clone(), ca_cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
    )
}

fn ecdsa_cert() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    issue(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key"))
}

/// An RSA-2048 key made by `openssl` (which every mail host has), in a certificate of ours.
fn rsa_cert() -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let pem = String::from_utf8(out.stdout).ok()?;
    let key = rcgen::KeyPair::from_pem(&pem).ok()?;
    Some(issue(key))
}
