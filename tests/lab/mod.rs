#![allow(dead_code)]
//! The lab: an Internet on loopback for one test (DESIGN.md, "The lab").
//!
//! Each [`Lab`] takes a random `127.X.Y.0/24` of its own, so labs of tests running in parallel
//! never meet:
//! - `127.X.Y.1:PORT` is the relay's listener (where mail is submitted);
//! - `127.X.Y.53` is the authoritative DNS server ([`dns`]), UDP and TCP;
//! - `127.X.Y.N:PORT` for other N are the receiving SMTP servers ([`smtp`]); every MX host of a
//!   lab listens on the same PORT, which the relay is given as `[delivery] smtp_port`. An
//!   address where nothing listens refuses connections.
//!
//! The relay itself ([`relay`]) is the real binary, configured through its ordinary TOML file.

pub mod bounce;
pub mod ca;
pub mod dane;
pub mod dns;
pub mod https;
pub mod openssl;
pub mod queue;
pub mod raw;
pub mod rawdns;
pub mod redis_server;
pub mod relay;
pub mod resolver;
pub mod smtp;
pub mod sts;
pub mod submit;
pub mod tlsrpt_receiver;

use ca::LabCa;
use dns::{DnsServer, Zone};
use rand::Rng;
use relay::{Relay, RelayConfig};
use smtp::{Behaviour, SmtpServer};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// How long a test waits for anything the relay should do soon. Generous: two cores run many
/// tests at once.
pub const WAIT: Duration = Duration::from_secs(20);

/// The address octet of the relay's listener within a lab's /24.
pub const RELAY_HOST: u8 = 1;
/// The address octet of the lab's DNS server.
pub const DNS_HOST: u8 = 53;
/// The relay's host name in the lab (its `hostname`, and the name on its TLS certificate).
pub const RELAY_NAME: &str = "relay.lab.test";

pub struct Lab {
    pub dns: DnsServer,
    /// The lab's CA; the relay trusts it (`delivery.extra_ca_files`).
    pub ca: LabCa,
    /// The `X.Y` of this lab's `127.X.Y.0/24`.
    net: (u8, u8),
    /// The port every receiving SMTP server and the relay's listener use.
    port: u16,
    /// Holds `127.X.Y.1:PORT` until the relay takes it, so no other socket gets it.
    reserved: Mutex<Option<std::net::TcpListener>>,
    dir: tempfile::TempDir,
}

impl Lab {
    /// Starts an empty lab: DNS with no zones yet, no SMTP servers, no relay.
    pub async fn new() -> Lab {
        policy_cache::crypto::install_default();
        let mut rng = rand::thread_rng();
        let (net, port, reserved) = loop {
            let net = (rng.gen_range(1..=254u8), rng.gen::<u8>());
            let relay_ip = Ipv4Addr::new(127, net.0, net.1, RELAY_HOST);
            if let Ok(l) = std::net::TcpListener::bind((relay_ip, 0)) {
                let port = l.local_addr().unwrap().port();
                break (net, port, l);
            }
        };
        let dns = DnsServer::start(IpAddr::V4(Ipv4Addr::new(127, net.0, net.1, DNS_HOST))).await;
        Lab {
            dns,
            ca: LabCa::new(),
            net,
            port,
            reserved: Mutex::new(Some(reserved)),
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// `127.X.Y.n` in this lab.
    pub fn ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.net.0, self.net.1, n)
    }

    /// Postfix's reply for an MX host `host` at `127.X.Y.n` that does not offer STARTTLS when
    /// TLS is required: `CODE TLS is required, but was not offered by host HOST[IP]`.
    pub fn not_offered(&self, code: &str, host: &str, n: u8) -> String {
        format!(
            "{code} TLS is required, but was not offered by host {host}[{}]",
            self.ip(n)
        )
    }

    /// The port of every lab MX host (the relay's `smtp_port`).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds (or replaces) a zone in the lab DNS.
    pub fn zone(&self, zone: Zone) -> &Self {
        self.dns.add_zone(zone);
        self
    }

    /// A receiving SMTP server on `127.X.Y.n` at the lab's SMTP port.
    pub async fn mx(&self, n: u8, behaviour: Behaviour) -> SmtpServer {
        assert!(
            n != RELAY_HOST && n != DNS_HOST && n != 0 && n != 255,
            "127.x.y.{n} is not for MX hosts"
        );
        let addr = SocketAddr::new(IpAddr::V4(self.ip(n)), self.port);
        SmtpServer::start(addr, behaviour)
            .await
            .unwrap_or_else(|e| panic!("lab MX on {addr}: {e}"))
    }

    /// A mail domain whose one MX host, `mx.<domain>` at `127.X.Y.n`, is a new SMTP server with
    /// `behaviour`: the zone and the server in one step.
    pub async fn domain_with_mx(&self, domain: &str, n: u8, behaviour: Behaviour) -> SmtpServer {
        let mx = format!("mx.{domain}");
        self.zone(Zone::new(domain).mx(10, &mx).a(&mx, self.ip(n)));
        self.mx(n, behaviour).await
    }

    /// A receiving SMTP server on `[::1]` at the lab's SMTP port, for IPv6 MX hosts (AAAA).
    /// Loopback has one IPv6 address, so labs share it; the lab's port keeps them apart.
    pub async fn mx_v6(&self, behaviour: Behaviour) -> SmtpServer {
        let addr = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), self.port);
        SmtpServer::start(addr, behaviour)
            .await
            .unwrap_or_else(|e| panic!("lab MX on {addr}: {e}"))
    }

    /// A receiving SMTP server on `127.X.Y.n` at an ephemeral port (for static routes).
    pub async fn smtp_elsewhere(&self, n: u8, behaviour: Behaviour) -> SmtpServer {
        let addr = SocketAddr::new(IpAddr::V4(self.ip(n)), 0);
        SmtpServer::start(addr, behaviour)
            .await
            .unwrap_or_else(|e| panic!("lab SMTP server on {addr}: {e}"))
    }

    /// A `[[listener]]` TOML snippet for the relay's submission address with STARTTLS and a
    /// lab-CA certificate for [`RELAY_NAME`] (REQUIRETLS is offered only inside TLS).
    pub fn tls_listener_toml(&self) -> String {
        let issued = self
            .ca
            .issue_with(&[RELAY_NAME], crate::lab::ca::CertOptions::default());
        let (cert, key) = issued.write_pem(self.dir(), "relay");
        format!(
            "[[listener]]\naddress = \"{}\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            self.relay_addr(),
            cert.to_string_lossy(),
            key.to_string_lossy()
        )
    }

    /// Where the relay listens for submissions.
    pub fn relay_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip(RELAY_HOST)), self.port)
    }

    /// The relay's configuration for this lab, before a test adjusts it: short backoff (1 s
    /// doubling to 2 s) so retries happen within a test.
    pub fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            hostname: RELAY_NAME.into(),
            data_dir: self.dir().join("data"),
            listen: self.relay_addr(),
            nameserver: self.dns.addr(),
            dnssec: "trust-ad".into(),
            smtp_port: self.port,
            extra_ca_files: vec![self.ca.write_pem(self.dir())],
            min_backoff: "1s".into(),
            max_backoff: "2s".into(),
            max_lifetime: None,
            routes: Vec::new(),
            extra: toml::Table::new(),
        }
    }

    /// A configuration for driving `mxguard::delivery::Deliverer` in-process against this lab:
    /// its DNS, its SMTP port, short timeouts, no MTA-STS (such tests pass no policy cache).
    pub fn delivery_config(&self) -> mxguard::config::Config {
        let mut c = mxguard::config::Config {
            hostname: RELAY_NAME.into(),
            ..mxguard::config::Config::default()
        };
        c.dns.nameservers = vec![self.dns.addr()];
        c.dns.timeout = Duration::from_secs(2);
        // The lab's authoritative server never sets AD: every answer is insecure, no DANE.
        c.dns.dnssec = mxguard::config::DnssecMode::TrustAd;
        c.delivery.smtp_port = self.port;
        c.delivery.connect_timeout = Duration::from_secs(3);
        c.delivery.command_timeout = Duration::from_secs(10);
        c.delivery.data_timeout = Duration::from_secs(10);
        c.mta_sts.enabled = false;
        c
    }

    /// Starts the relay with `config` (from [`Lab::relay_config`]); returns when it listens.
    pub async fn start_relay(&self, config: RelayConfig) -> Relay {
        drop(self.reserved.lock().unwrap().take());
        Relay::start(config, self.dir()).await
    }

    /// Starts the relay with the lab's default configuration.
    pub async fn relay(&self) -> Relay {
        self.start_relay(self.relay_config()).await
    }
}
