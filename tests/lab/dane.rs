//! A DANE scene (RFC 7672): a [`Lab`] whose DNS serves a signed root `test.` (the relay's only
//! trust anchor, `[dns] dnssec = "validate"`), the unsigned (provably insecure) sender domain
//! `sender.test` whose MX receives the DSNs, and helpers to publish signed (or unsigned) mail
//! domains with TLSA records for MX hosts that offer STARTTLS with chosen certificates.

use crate::lab::bounce::Bounce;
use crate::lab::ca::{CertOptions, Issued, LabCa};
use crate::lab::dns::{name, Zone};
use crate::lab::relay::{DeliveryLine, Relay};
use crate::lab::smtp::{Behaviour, SmtpServer};
use crate::lab::submit::{message, Submission};
use crate::lab::{Lab, WAIT};
use hickory_server::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_server::proto::rr::rdata::{A, MX, TLSA};
use hickory_server::proto::rr::RData;
use policy_cache::dane::Tlsa;
use std::net::Ipv4Addr;

/// The envelope sender of the scene's mail.
pub const SENDER: &str = "alice@sender.test";

/// TLSA parameters: (usage, selector, matching type).
pub type Params = (u8, u8, u8);

/// A TLSA record: its parameters and association data.
pub type Record = (Params, Vec<u8>);

/// The usual record for a leaf: DANE-EE(3) SPKI(1) SHA2-256(1) of `issued`.
pub fn dane_ee(issued: &Issued) -> (Params, Vec<u8>) {
    ((3, 1, 1), tlsa_for(issued, 1, 1))
}

/// The usual record for a trust anchor: DANE-TA(2) Cert(0) SHA2-256(1) of the CA `ca`.
pub fn dane_ta(ca: &LabCa) -> (Params, Vec<u8>) {
    ((2, 0, 1), tlsa_for_ca(ca, 0, 1))
}

/// The association data of a TLSA record for `issued` (selector 0: the certificate, 1: its
/// SPKI; matching 0: as is, 1: SHA2-256, 2: SHA2-512), computed as RFC 6698 §2.1 says.
pub fn tlsa_data(cert_der: &[u8], spki_der: &[u8], selector: u8, matching: u8) -> Vec<u8> {
    let content = if selector == 0 { cert_der } else { spki_der };
    Tlsa::for_content(3, selector, matching, content).data
}

/// The same for a certificate the lab CA issued.
pub fn tlsa_for(issued: &Issued, selector: u8, matching: u8) -> Vec<u8> {
    tlsa_data(&issued.cert_der, &issued.spki_der, selector, matching)
}

/// The same for a CA certificate (a DANE-TA(2) trust anchor): the root or an intermediate.
pub fn tlsa_for_ca(ca: &LabCa, selector: u8, matching: u8) -> Vec<u8> {
    tlsa_data(&ca.cert_der(), &ca.spki_der(), selector, matching)
}

/// TLSA record data, for [`Zone::tamper`].
pub fn tlsa_rdata(usage: u8, selector: u8, matching: u8, data: &[u8]) -> RData {
    RData::TLSA(TLSA::new(
        CertUsage::from(usage),
        Selector::from(selector),
        Matching::from(matching),
        data.to_vec(),
    ))
}

/// A record data, for [`Zone::tamper`].
pub fn a_rdata(ip: Ipv4Addr) -> RData {
    RData::A(A(ip))
}

/// MX record data, for [`Zone::tamper`].
pub fn mx_rdata(preference: u16, exchange: &str) -> RData {
    RData::MX(MX::new(preference, name(exchange)))
}

pub struct DaneScene {
    lab: Lab,
    sender_mx: SmtpServer,
}

impl DaneScene {
    pub async fn new() -> DaneScene {
        let lab = Lab::new().await;
        lab.dns.sign_root();
        let sender_mx = lab
            .domain_with_mx("sender.test", 2, Behaviour::plain())
            .await;
        DaneScene { lab, sender_mx }
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The MX of `sender.test`, where DSNs arrive.
    pub fn sender_mx(&self) -> &SmtpServer {
        &self.sender_mx
    }

    /// `_PORT._tcp.<host>`: where the TLSA records of MX host `host` live (the lab's SMTP port).
    pub fn tlsa_owner(&self, host: &str) -> String {
        format!("_{}._tcp.{host}", self.lab.port())
    }

    /// A zone for `domain` with MX hosts `mxN.<domain>` → `127.X.Y.N` for each
    /// `(preference, N)`; unsigned until `.signed()`.
    pub fn zone(&self, domain: &str, hosts: &[(u16, u8)]) -> Zone {
        let mut zone = Zone::new(domain);
        for &(preference, n) in hosts {
            let host = format!("mx{n}.{domain}");
            zone = zone.mx(preference, &host).a(&host, self.lab.ip(n));
        }
        zone
    }

    /// Adds a TLSA record for MX host `host` to `zone`.
    pub fn with_tlsa(
        &self,
        zone: Zone,
        host: &str,
        (usage, selector, matching): (u8, u8, u8),
        data: &[u8],
    ) -> Zone {
        zone.tlsa(&self.tlsa_owner(host), usage, selector, matching, data)
    }

    /// Serves `zone` (replacing one with the same origin).
    pub fn publish(&self, zone: Zone) {
        self.lab.zone(zone);
    }

    /// Publishes `domain`, DNSSEC-signed, with one MX host `mx{n}.{domain}` (lab host `n`) and
    /// `records` at its TLSA name; returns the MX host name.
    pub fn publish_signed(&self, domain: &str, n: u8, records: &[(Params, Vec<u8>)]) -> String {
        let host = format!("mx{n}.{domain}");
        let mut zone = self.zone(domain, &[(10, n)]).signed();
        for (params, data) in records {
            zone = self.with_tlsa(zone, &host, *params, data);
        }
        self.publish(zone);
        host
    }

    /// Publishes `domain`, DNSSEC-signed, with an MX host `mx{n}.{domain}` (lab host `n`) for
    /// each `(preference, n, record)`, and that one TLSA record at the host's TLSA name.
    pub fn publish_signed_hosts(&self, domain: &str, hosts: &[(u16, u8, Record)]) {
        let mx: Vec<(u16, u8)> = hosts.iter().map(|&(p, n, _)| (p, n)).collect();
        let mut zone = self.zone(domain, &mx).signed();
        for (_, n, (params, data)) in hosts {
            zone = self.with_tlsa(zone, &format!("mx{n}.{domain}"), *params, data);
        }
        self.publish(zone);
    }

    /// An MX host at `127.X.Y.n` offering STARTTLS with `issued` (its chain).
    pub async fn tls_mx(&self, n: u8, issued: &Issued) -> SmtpServer {
        self.lab
            .mx(
                n,
                Behaviour::plain().starttls(&issued.chain_pem, &issued.key_pem),
            )
            .await
    }

    /// `domain`, signed, whose one MX host `mx{n}.{domain}` (lab host `n`) offers STARTTLS with a
    /// good lab-CA certificate for its name, matched by a DANE-EE(3) record.
    pub async fn dane_ee_domain(&self, domain: &str, n: u8) -> SmtpServer {
        let host = format!("mx{n}.{domain}");
        let issued = self.lab.ca.issue_with(&[&host], CertOptions::default());
        let mx = self.tls_mx(n, &issued).await;
        self.publish_signed(domain, n, &[dane_ee(&issued)]);
        mx
    }

    /// An MX host at `127.X.Y.n` without STARTTLS.
    pub async fn plain_mx(&self, n: u8) -> SmtpServer {
        self.lab.mx(n, Behaviour::plain()).await
    }

    /// The relay validating DNSSEC in-process from the lab root's trust anchor;
    /// `extra_toml` is appended to its configuration.
    pub async fn relay(&self, extra_toml: &str) -> Relay {
        let anchor = self.lab.dns.write_trust_anchor(self.lab.dir());
        self.relay_anchored(&anchor, extra_toml).await
    }

    /// The same, anchored at the lab root's DS record instead of its key (the form of the
    /// IANA root anchor).
    pub async fn relay_with_ds_anchor(&self, extra_toml: &str) -> Relay {
        let anchor = crate::lab::dns::dnssec::write_trust_anchor_file(
            self.lab.dir(),
            &[self.lab.dns.ds_trust_anchor()],
        );
        self.relay_anchored(&anchor, extra_toml).await
    }

    async fn relay_anchored(&self, anchor: &std::path::Path, extra_toml: &str) -> Relay {
        let mut config = self.lab.relay_config();
        config.dnssec = "validate".into();
        let snippet = format!(
            "[dns]\ntrust_anchor_file = {:?}\n{extra_toml}",
            anchor.display().to_string()
        );
        self.lab.start_relay(config.toml(&snippet)).await
    }

    /// A message from [`SENDER`] to `rcpt`.
    pub fn mail(&self, rcpt: &str, subject: &str) -> Submission {
        Submission::new(
            SENDER,
            message(SENDER, rcpt, subject, "Hello from the DANE lab.\n"),
        )
        .rcpt(rcpt)
    }

    /// Submits a message to `rcpt` and waits for its delivery log line with `status`.
    pub async fn send(
        &self,
        relay: &Relay,
        rcpt: &str,
        subject: &str,
        status: &str,
    ) -> DeliveryLine {
        let mark = relay.log_mark();
        relay.submit(&self.mail(rcpt, subject)).await;
        relay.wait_for_delivery(mark, rcpt, status, WAIT).await
    }

    /// The DSN that reaches the sender's MX.
    pub async fn bounce(&self) -> Bounce {
        let m = self.sender_mx.next_message(WAIT).await;
        assert_eq!(m.mail_from, "", "a DSN comes from the null sender");
        Bounce::parse(&m)
    }
}
