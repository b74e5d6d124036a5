//! What most end-to-end tests share: a lab with a sender domain whose MX receives the bounces,
//! and a recipient domain, `example.test`, whose MX receives the mail.

use crate::lab::bounce::Bounce;
use crate::lab::relay::{DeliveryLine, Relay};
use crate::lab::smtp::{Behaviour, ReceivedMessage, SmtpServer};
use crate::lab::submit::{message, Submission};
use crate::lab::{Lab, WAIT};
use std::time::Duration;

/// The envelope sender of test mail; its domain's MX is the lab host 2.
pub const SENDER: &str = "alice@sender.test";
/// The usual recipient; its domain's MX (see [`World::example_mx`]) is the lab host 3.
pub const BOB: &str = "bob@example.test";

pub struct World {
    pub lab: Lab,
    /// MX of `sender.test`: where bounces arrive.
    pub sender_mx: SmtpServer,
}

impl World {
    pub async fn new() -> World {
        let lab = Lab::new().await;
        let sender_mx = lab
            .domain_with_mx("sender.test", 2, Behaviour::plain())
            .await;
        World { lab, sender_mx }
    }

    /// The usual scene: a new world, `example.test` with its MX behaving as `behaviour`, and
    /// the relay started with the lab's default configuration.
    pub async fn with_example_mx(behaviour: Behaviour) -> (World, SmtpServer, Relay) {
        let w = World::new().await;
        let mx = w.example_mx(behaviour).await;
        let relay = w.lab.relay().await;
        (w, mx, relay)
    }

    /// `example.test`, [`BOB`]'s domain, with one MX host, `mx.example.test`: the lab host 3,
    /// behaving as `behaviour`.
    pub async fn example_mx(&self, behaviour: Behaviour) -> SmtpServer {
        self.lab.domain_with_mx("example.test", 3, behaviour).await
    }

    /// A plain message from [`SENDER`] to `to`.
    pub fn mail(&self, to: &str, subject: &str) -> Submission {
        Submission::new(
            SENDER,
            message(SENDER, to, subject, "Hello from the lab.\n"),
        )
        .rcpt(to)
    }

    /// Submits a plain message to [`BOB`] through `relay`, then waits for it at `server` and
    /// for the relay's `sent` line; returns both.
    pub async fn deliver(
        &self,
        relay: &Relay,
        subject: &str,
        server: &SmtpServer,
    ) -> (ReceivedMessage, DeliveryLine) {
        relay.submit(&self.mail(BOB, subject)).await;
        let m = server.next_message(WAIT).await;
        let d = relay.delivery(BOB, "sent").await;
        (m, d)
    }

    /// The next message at the sender's MX, checked to be a DSN from the null sender to
    /// [`SENDER`], parsed.
    pub async fn bounce(&self) -> Bounce {
        let m = self.sender_mx.next_message(WAIT).await;
        assert_eq!(m.mail_from, "", "a DSN comes from the null sender");
        assert_eq!(
            m.rcpt_addresses(),
            vec![SENDER],
            "a DSN goes to the envelope sender"
        );
        Bounce::parse(&m)
    }

    /// Asserts that no DSN reaches the sender's MX for a while (3 s); `why` names the rule.
    pub async fn no_bounce_arrives(&self, why: &str) {
        assert!(
            self.sender_mx
                .try_next_message(Duration::from_secs(3))
                .await
                .is_none(),
            "{why}"
        );
    }

    /// Asserts that the sender's MX has received nothing so far.
    pub fn no_bounce_yet(&self, why: &str) {
        assert!(self.sender_mx.messages().is_empty(), "{why}");
    }
}
