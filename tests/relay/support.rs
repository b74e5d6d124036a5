//! What most end-to-end tests share: a lab with a sender domain whose MX receives the bounces.

use crate::lab::bounce::Bounce;
use crate::lab::smtp::{Behaviour, SmtpServer};
use crate::lab::submit::{message, Submission};
use crate::lab::{Lab, WAIT};

/// The envelope sender of test mail; its domain's MX is the lab host 2.
pub const SENDER: &str = "alice@sender.test";
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

    /// A plain message from [`SENDER`] to `to`.
    pub fn mail(&self, to: &str, subject: &str) -> Submission {
        Submission::new(
            SENDER,
            message(SENDER, to, subject, "Hello from the lab.\n"),
        )
        .rcpt(to)
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
}
