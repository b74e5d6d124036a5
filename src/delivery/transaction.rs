//! The mail transaction (RFC 5321 §3.3): MAIL FROM, one RCPT TO per recipient, DATA, QUIT,
//! with the parameters of the extensions the server advertised: SIZE (RFC 1870), BODY=8BITMIME
//! (RFC 6152), SMTPUTF8 (RFC 6531) and DSN (RFC 3461).
//!
//! Every recipient ends with exactly one reply: the server's RCPT reply if it refused the
//! recipient, else the reply to MAIL FROM, DATA or the end of data that decided its fate, or a
//! 4.4.2 when the connection broke before that.
//!
//! RFC 5321 §4.5.3.1.10: a server may take fewer recipients per transaction than we have and
//! answer the rest `452` ("too many recipients"). Like Postfix, the accepted ones are sent at
//! once, and the refused ones go in a new transaction on the same session, for as long as
//! each transaction gets at least one more recipient accepted.

use super::attempt::Relay;
use super::data::{dot_stuff, headers_need_utf8};
use super::session::{lost, quit, remote_reply, Extensions};
use super::Job;
use crate::envelope::{xtext_encode, BodyType, Envelope, Recipient, Ret};
use crate::reply::{EnhancedCode, Reply};
use mail_send::SmtpClient;
use smtp_proto::Response;
use smtp_proto::{EXT_8BIT_MIME, EXT_DSN, EXT_REQUIRE_TLS, EXT_SIZE, EXT_SMTP_UTF8};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// One transaction over an open session.
pub(crate) struct Transaction<'a> {
    pub job: &'a Job<'a>,
    pub relay: &'a Relay,
    pub extensions: Extensions,
    /// For the message body and the final reply, together.
    pub data_timeout: Duration,
}

/// One recipient's reply, and who wrote it.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub reply: Reply,
    /// The server sent `reply`; false for a text we wrote (lost connection, SIZE, SMTPUTF8).
    pub remote: bool,
}

impl Outcome {
    fn remote(r: &Response<String>) -> Outcome {
        Outcome {
            reply: remote_reply(r),
            remote: true,
        }
    }

    fn ours(reply: Reply) -> Outcome {
        Outcome {
            reply,
            remote: false,
        }
    }
}

/// The outcome for each of the job's recipients, in `job.recipients` order.
type Replies = Vec<Option<Outcome>>;

/// What one transaction's RCPT commands got.
#[derive(Default)]
struct Round {
    accepted: Vec<usize>,
    /// Answered 452 (RFC 5321 §4.5.3.1.10): for a later transaction.
    too_many: Vec<usize>,
}

impl Transaction<'_> {
    /// Runs the transaction (or as many as the server's recipient limit takes) and QUITs;
    /// returns `(recipient index, outcome)` for every recipient.
    pub async fn run<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
    ) -> Vec<(usize, Outcome)> {
        let mut replies: Replies = vec![None; self.job.recipients.len()];
        self.exchange(client, &mut replies).await;
        quit(client).await;
        self.job
            .recipients
            .iter()
            .zip(replies)
            .map(|(&rcpt, reply)| {
                // Unreachable by construction; a missing reply must still never lose a recipient.
                let reply = reply.unwrap_or_else(|| {
                    Outcome::ours(Reply::new(
                        451,
                        EnhancedCode::new(4, 3, 0),
                        "internal error: no outcome",
                    ))
                });
                (rcpt, reply)
            })
            .collect()
    }

    fn envelope(&self) -> &Envelope {
        self.job.envelope
    }

    fn recipient(&self, i: usize) -> Option<&Recipient> {
        self.job
            .recipients
            .get(i)
            .and_then(|&r| self.envelope().recipients.get(r))
    }

    async fn exchange<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        replies: &mut Replies,
    ) {
        let utf8 = self.needs_smtputf8();
        let mut pending: Vec<usize> = (0..replies.len()).collect();
        if let Some(reply) = self.refuse_before_mail(utf8) {
            fill(replies, &pending, &Outcome::ours(reply));
            return;
        }
        let mut needs_reset = false;
        while !pending.is_empty() {
            if needs_reset {
                if let Err(outcome) = self.rset(client).await {
                    fill(replies, &pending, &outcome);
                    return;
                }
            }
            if let Err(outcome) = self.mail_from(client, utf8).await {
                fill(replies, &pending, &outcome);
                return;
            }
            let Some(round) = self.rcpt_to(client, &pending, replies).await else {
                return;
            };
            // No progress: the 452s stand, and the recipients are tried again later.
            if round.accepted.is_empty() {
                return;
            }
            let outcome = self.data(client).await;
            for &i in &round.accepted {
                replies[i] = Some(outcome.clone());
            }
            if !outcome.remote {
                return;
            }
            // A transaction refused before its end (DATA not answered 354) may still be
            // open on the server's side.
            needs_reset = !outcome.reply.is_positive();
            // RFC 5321 §4.5.3.1.10: the recipients refused as too many, in a new transaction.
            pending = round.too_many;
        }
    }

    /// Does this message need SMTPUTF8? RFC 6531 §3.4: when the sender asked for it and the
    /// envelope or the header section holds UTF-8.
    fn needs_smtputf8(&self) -> bool {
        let env = self.envelope();
        env.smtputf8
            && (!env.mail_from.is_ascii()
                || (0..self.job.recipients.len())
                    .filter_map(|i| self.recipient(i))
                    .any(|r| !r.address.is_ascii())
                || headers_need_utf8(self.job.message))
    }

    /// Failures known before MAIL FROM (our texts, not the server's): a needed SMTPUTF8 not
    /// offered (RFC 6531 §3.4), a message above the server's SIZE (RFC 1870 §6.1).
    fn refuse_before_mail(&self, utf8: bool) -> Option<Reply> {
        let ext = self.extensions;
        if utf8 && !ext.has(EXT_SMTP_UTF8) {
            return Some(Reply::new(
                550,
                EnhancedCode::new(5, 6, 7),
                format!(
                    "SMTPUTF8 is required, but was not offered by host {}",
                    self.relay.host_ip()
                ),
            ));
        }
        let size = self.job.message.len();
        if ext.has(EXT_SIZE) && ext.size > 0 && size > ext.size {
            return Some(Reply::new(
                552,
                EnhancedCode::new(5, 3, 4),
                format!(
                    "message size {size} exceeds size limit {} of server {}",
                    ext.size,
                    self.relay.host_ip()
                ),
            ));
        }
        None
    }

    /// RSET (RFC 5321 §4.1.1.5) before another transaction on this session.
    async fn rset<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
    ) -> Result<(), Outcome> {
        match client.cmd(b"RSET\r\n").await {
            Ok(r) if r.code / 100 == 2 => Ok(()),
            Ok(r) => Err(Outcome::remote(&r)),
            Err(e) => Err(Outcome::ours(lost(self.relay, &e, "sending RSET").reply)),
        }
    }

    /// MAIL FROM; a refusal applies to every recipient of the transaction.
    async fn mail_from<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        utf8: bool,
    ) -> Result<(), Outcome> {
        let params = mail_params(
            self.envelope(),
            self.extensions,
            self.job.message.len(),
            utf8,
        );
        let command = format!("MAIL FROM:<{}>{params}\r\n", self.envelope().mail_from);
        match client.cmd(command).await {
            Ok(r) if r.code / 100 == 2 => Ok(()),
            Ok(r) => Err(Outcome::remote(&r)),
            Err(e) => Err(Outcome::ours(
                lost(self.relay, &e, "sending MAIL FROM").reply,
            )),
        }
    }

    /// One RCPT TO per pending recipient, each with its own reply. After a broken connection,
    /// every recipient of this transaction not refused yet gets the 4.4.2, and `None` ends
    /// the session.
    async fn rcpt_to<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        pending: &[usize],
        replies: &mut Replies,
    ) -> Option<Round> {
        let mut round = Round::default();
        for (n, &i) in pending.iter().enumerate() {
            let Some(rcpt) = self.recipient(i) else {
                replies[i] = Some(Outcome::ours(Reply::new(
                    554,
                    EnhancedCode::new(5, 3, 0),
                    "internal error: no such recipient",
                )));
                continue;
            };
            let command = format!(
                "RCPT TO:<{}>{}\r\n",
                rcpt.address,
                rcpt_params(rcpt, self.extensions)
            );
            match client.cmd(command).await {
                Ok(r) if r.code / 100 == 2 => {
                    round.accepted.push(i);
                    replies[i] = Some(Outcome::remote(&r));
                }
                // RFC 5321 §4.5.3.1.10: "too many recipients"; the reply stands unless a
                // later transaction takes the recipient.
                Ok(r) if r.code == 452 => {
                    round.too_many.push(i);
                    replies[i] = Some(Outcome::remote(&r));
                }
                Ok(r) => replies[i] = Some(Outcome::remote(&r)),
                Err(e) => {
                    let lost = Outcome::ours(lost(self.relay, &e, "sending RCPT TO").reply);
                    for &j in round.accepted.iter().chain(&pending[n..]) {
                        replies[j] = Some(lost.clone());
                    }
                    return None;
                }
            }
        }
        Some(round)
    }

    /// DATA, the stuffed message and the final reply, which applies to every accepted recipient.
    async fn data<T: AsyncRead + AsyncWrite + Unpin>(&self, client: &mut SmtpClient<T>) -> Outcome {
        match client.cmd(b"DATA\r\n").await {
            Ok(r) if r.code == 354 => {}
            Ok(r) => return Outcome::remote(&r),
            Err(e) => return Outcome::ours(lost(self.relay, &e, "sending DATA command").reply),
        }
        let body = dot_stuff(self.job.message);
        // One deadline for the body and the final reply (Postfix's smtp_data_done_timeout).
        let deadline = Instant::now() + self.data_timeout;
        let sent = tokio::time::timeout_at(deadline, async {
            client.stream.write_all(&body).await?;
            client.stream.flush().await?;
            Ok::<_, std::io::Error>(())
        })
        .await;
        let stage = "sending message body";
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Outcome::ours(lost(self.relay, &e.into(), stage).reply),
            Err(_) => {
                let timeout = mail_send::Error::Timeout;
                return Outcome::ours(lost(self.relay, &timeout, stage).reply);
            }
        }
        let stage = "sending end of data -- message may be sent more than once";
        match tokio::time::timeout_at(deadline, client.read()).await {
            Ok(Ok(r)) => Outcome::remote(&r),
            Ok(Err(e)) => Outcome::ours(lost(self.relay, &e, stage).reply),
            Err(_) => Outcome::ours(lost(self.relay, &mail_send::Error::Timeout, stage).reply),
        }
    }
}

/// The same outcome for each of `recipients`.
fn fill(replies: &mut Replies, recipients: &[usize], outcome: &Outcome) {
    for &i in recipients {
        replies[i] = Some(outcome.clone());
    }
}

/// MAIL FROM parameters, each only when the server advertised its extension.
fn mail_params(env: &Envelope, ext: Extensions, size: usize, utf8: bool) -> String {
    let mut p = String::new();
    if ext.has(EXT_SIZE) {
        p.push_str(&format!(" SIZE={size}"));
    }
    // RFC 6152: declare 8-bit content when the server understands it. When it does not,
    // Postfix sends the message anyway (most servers pass 8-bit data), and so do we.
    if env.body == BodyType::EightBitMime && ext.has(EXT_8BIT_MIME) {
        p.push_str(" BODY=8BITMIME");
    }
    if utf8 && ext.has(EXT_SMTP_UTF8) {
        p.push_str(" SMTPUTF8");
    }
    // RFC 8689 §4.2.1: REQUIRETLS travels on; a server that did not advertise it was never
    // given the message (the session checks that first).
    if env.requiretls && ext.has(EXT_REQUIRE_TLS) {
        p.push_str(" REQUIRETLS");
    }
    if ext.has(EXT_DSN) {
        // RFC 3461 §4.3, §4.4: RET and ENVID travel on to the next DSN-capable hop.
        match env.ret {
            Some(Ret::Full) => p.push_str(" RET=FULL"),
            Some(Ret::Headers) => p.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &env.envid {
            p.push_str(&format!(" ENVID={}", xtext_encode(envid)));
        }
    }
    p
}

/// RCPT TO parameters: RFC 3461 §4.1 NOTIFY and §4.2 ORCPT, when the server speaks DSN.
fn rcpt_params(rcpt: &Recipient, ext: Extensions) -> String {
    if !ext.has(EXT_DSN) {
        return String::new();
    }
    let mut p = String::new();
    if let Some(n) = rcpt.notify {
        let words: Vec<&str> = if n.never {
            vec!["NEVER"]
        } else {
            [
                (n.success, "SUCCESS"),
                (n.failure, "FAILURE"),
                (n.delay, "DELAY"),
            ]
            .into_iter()
            .filter_map(|(on, word)| on.then_some(word))
            .collect()
        };
        if !words.is_empty() {
            p.push_str(&format!(" NOTIFY={}", words.join(",")));
        }
    }
    if let Some((kind, addr)) = &rcpt.orcpt {
        p.push_str(&format!(" ORCPT={kind};{}", xtext_encode(addr)));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Notify;
    use smtp_proto::EXT_PIPELINING;

    fn ext(mask: u32) -> Extensions {
        Extensions { mask, size: 0 }
    }

    #[test]
    fn mail_parameters_follow_the_advertised_extensions() {
        let mut env = Envelope::new("alice@example.org");
        env.body = BodyType::EightBitMime;
        env.ret = Some(Ret::Headers);
        env.envid = Some("id+1=x".into());
        assert_eq!(mail_params(&env, ext(EXT_PIPELINING), 10, true), "");
        assert_eq!(
            mail_params(
                &env,
                ext(EXT_SIZE | EXT_8BIT_MIME | EXT_DSN | EXT_SMTP_UTF8),
                10,
                true
            ),
            " SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3Dx"
        );
        assert_eq!(mail_params(&env, ext(EXT_SMTP_UTF8), 10, false), "");
    }

    #[test]
    fn rcpt_parameters() {
        let mut r = Recipient::new("bob@example.net");
        assert_eq!(rcpt_params(&r, ext(EXT_DSN)), "");
        r.notify = Some(Notify {
            success: true,
            failure: true,
            ..Default::default()
        });
        r.orcpt = Some(("rfc822".into(), "Bob+x@example.net".into()));
        assert_eq!(
            rcpt_params(&r, ext(EXT_DSN)),
            " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bx@example.net"
        );
        assert_eq!(rcpt_params(&r, ext(0)), "");
        r.notify = Some(Notify {
            never: true,
            ..Default::default()
        });
        assert_eq!(
            rcpt_params(&r, ext(EXT_DSN)),
            " NOTIFY=NEVER ORCPT=rfc822;Bob+2Bx@example.net"
        );
    }
}
