//! An MTA-STS scene (RFC 8461): a [`Lab`] with a policy host on `127.X.Y.80` ([`PolicyServer`])
//! and the sender domain `sender.test`, whose MX on `127.X.Y.2` receives the DSNs; helpers to
//! publish a domain with its policy, start the relay fetching from the policy host, and send
//! mail to one recipient.

use crate::lab::bounce::Bounce;
use crate::lab::dns::Zone;
use crate::lab::https::{PolicyServer, Response};
use crate::lab::relay::{DeliveryLine, Relay};
use crate::lab::smtp::{Behaviour, SmtpServer};
use crate::lab::submit::{message, Submission};
use crate::lab::{Lab, WAIT};

/// The envelope sender of the scene's mail.
pub const SENDER: &str = "alice@sender.test";
/// The usual recipient, at `example.test`.
pub const BOB: &str = "bob@example.test";

/// A policy file with `max_age: 86400`.
pub fn policy(mode: &str, mx: &[&str]) -> String {
    policy_with_max_age(mode, mx, 86400)
}

/// A policy file.
pub fn policy_with_max_age(mode: &str, mx: &[&str], max_age: u32) -> String {
    let mut text = format!("version: STSv1\nmode: {mode}\n");
    for pattern in mx {
        text.push_str(&format!("mx: {pattern}\n"));
    }
    text.push_str(&format!("max_age: {max_age}\n"));
    text
}

pub struct StsScene {
    lab: Lab,
    https: PolicyServer,
    sender_mx: SmtpServer,
}

impl StsScene {
    pub async fn new() -> StsScene {
        let lab = Lab::new().await;
        let sender_mx = lab
            .domain_with_mx("sender.test", 2, Behaviour::plain())
            .await;
        let https = PolicyServer::start(&lab, 80).await;
        StsScene {
            lab,
            https,
            sender_mx,
        }
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The policy host.
    pub fn https(&self) -> &PolicyServer {
        &self.https
    }

    /// The MX of `sender.test`, where DSNs arrive.
    pub fn sender_mx(&self) -> &SmtpServer {
        &self.sender_mx
    }

    /// Publishes `zone` (the domain's MX and address records) with an MTA-STS policy `text`
    /// announced under `id`.
    pub fn publish(&self, zone: Zone, domain: &str, id: &str, text: &str) {
        self.https.publish(&self.lab.ca, domain, text);
        self.lab.zone(self.https.announce(zone, domain, id));
    }

    /// Publishes `example.test` with MX hosts `mxN.example.test` (see
    /// [`StsScene::example_zone`]) and the policy `text` announced under `id`.
    pub fn publish_example(&self, hosts: &[(u16, u8)], id: &str, text: &str) {
        self.publish(self.example_zone(hosts), "example.test", id, text);
    }

    /// `example.test` with one MX host, `mx10.example.test` (lab host 10), under an `enforce`
    /// policy that lists it, announced under id `1`.
    pub fn publish_enforce_example(&self) {
        self.publish_example(&[(10, 10)], "1", &policy("enforce", &["mx10.example.test"]));
    }

    /// Replaces the policy file of `domain` (its TXT id unchanged).
    pub fn republish(&self, domain: &str, text: &str) {
        self.https
            .set(&format!("mta-sts.{domain}"), Response::policy(text));
    }

    /// `example.test` with MX hosts `mxN.example.test` → `127.X.Y.N`, for each
    /// `(preference, N)`.
    pub fn example_zone(&self, hosts: &[(u16, u8)]) -> Zone {
        let mut zone = Zone::new("example.test");
        for &(preference, n) in hosts {
            let host = format!("mx{n}.example.test");
            zone = zone.mx(preference, &host).a(&host, self.lab.ip(n));
        }
        zone
    }

    /// An MX host at `127.X.Y.n` offering STARTTLS with a lab-CA certificate for `names`.
    pub async fn tls_mx(&self, n: u8, names: &[&str]) -> SmtpServer {
        let (cert, key) = self.lab.ca.issue(names);
        self.lab
            .mx(n, Behaviour::plain().starttls(&cert, &key))
            .await
    }

    /// The relay, fetching policies from the policy host; `extra_toml` is appended to its
    /// configuration.
    pub async fn relay(&self, extra_toml: &str) -> Relay {
        let snippet = format!(
            "[mta_sts]\nhttps_port = {}\n{extra_toml}",
            self.https.port()
        );
        self.lab
            .start_relay(self.lab.relay_config().toml(&snippet))
            .await
    }

    /// A message from [`SENDER`] to `rcpts`.
    pub fn mail(&self, rcpts: &[&str], subject: &str) -> Submission {
        let mut s = Submission::new(
            SENDER,
            message(SENDER, rcpts[0], subject, "Hello from the lab.\n"),
        );
        for r in rcpts {
            s = s.rcpt(r);
        }
        s
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
        relay.submit(&self.mail(&[rcpt], subject)).await;
        relay.wait_for_delivery(mark, rcpt, status, WAIT).await
    }

    /// The DSN that reaches the sender's MX.
    pub async fn bounce(&self) -> Bounce {
        let m = self.sender_mx.next_message(WAIT).await;
        assert_eq!(m.mail_from, "", "a DSN comes from the null sender");
        Bounce::parse(&m)
    }
}
