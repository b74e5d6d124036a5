//! The mail transaction (RFC 5321 §3.3): MAIL FROM, one RCPT TO per recipient, DATA,
//! with the parameters of the extensions the server advertised: SIZE (RFC 1870), BODY=8BITMIME
//! (RFC 6152), SMTPUTF8 (RFC 6531) and DSN (RFC 3461).
//!
//! Every recipient ends with exactly one reply: the server's RCPT reply if it refused the
//! recipient, else the reply to MAIL FROM, DATA or the end of data that decided its fate, or a
//! 4.4.2 when the connection broke before that.
//!
//! RFC 2920: when the server advertises PIPELINING, MAIL FROM, every RCPT TO and DATA (after an
//! RSET, when one is due) go out as one group and their replies are read back in order; the
//! outcomes are the same as one command at a time, recipient by recipient.
//!
//! RFC 5321 §4.5.3.1.10: a server may take fewer recipients per transaction than we have and
//! answer the rest `452` ("too many recipients"). Like Postfix, the accepted ones are sent at
//! once, and the refused ones go in a new transaction on the same session, for as long as
//! each transaction gets at least one more recipient accepted.
//!
//! The session outlives the transaction: [`End`] says whether it can carry another one (the
//! connection pool's business), or whether a reused session turned out dead before it
//! carried anything (then the message goes over a new connection, no attempt counted).

use super::attempt::Relay;
use super::data::{dot_stuff, headers_need_utf8};
use super::mime_downgrade::to_seven_bit;
use super::session::{lost, remote_reply, Extensions};
use super::smtp_params::{mail_params, rcpt_command};
use super::Job;
use crate::envelope::{BodyType, Envelope, Recipient};
use crate::reply::{EnhancedCode, Reply};
use mail_send::SmtpClient;
use smtp_proto::Response;
use smtp_proto::{EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
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
    /// RFC 6152 §3: re-encode the 8-bit parts of a `BODY=8BITMIME` message for a server
    /// without 8BITMIME (`delivery.mime_output_conversion`).
    pub convert_8bit: bool,
    /// The session carried a transaction before (it comes from the pool).
    pub reused: bool,
    /// DATA was answered 354: the server was alive and took (part of) the message.
    pub body_started: AtomicBool,
}

/// What the session is good for after a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Still open and in step: another transaction may follow, after RSET when `reset`.
    Open { reset: bool },
    /// Broken, timed out or closing (421): not to be used again.
    Closed,
    /// A reused session that failed before the server answered anything but 421: nothing was
    /// delivered, and the outcomes are not the destination's verdict.
    Stale,
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

    /// The server's answer `r` where `command` was not accepted as it should have been: a
    /// refusal (4xx, 5xx) stands as the server's; anything else there (a 250 to DATA, a 354
    /// to RCPT, a 1xx) breaks the protocol and is a deferral of ours, 4.5.0. Taken as it
    /// came, a 250 to DATA would mark a message sent that never left (RFC 5321 §4.3.2: DATA
    /// is answered 354 or refused).
    fn refusal(relay: &Relay, r: &Response<String>, command: &str) -> Outcome {
        match r.code / 100 {
            4 | 5 => Outcome::remote(r),
            _ => Outcome::ours(Reply::new(
                451,
                EnhancedCode::new(4, 5, 0),
                format!(
                    "protocol error: host {} answered {command} with {}",
                    relay.host_ip(),
                    remote_reply(r)
                ),
            )),
        }
    }

    /// The reply to the end of data: success, refusal, or (anything else) a protocol error.
    fn final_reply(relay: &Relay, r: &Response<String>) -> Outcome {
        match r.code / 100 {
            2 => Outcome::remote(r),
            _ => Outcome::refusal(relay, r, "the end of data"),
        }
    }
}

/// The outcome for each of the job's recipients, in `job.recipients` order.
type Replies = Vec<Option<Outcome>>;

/// A transaction opened up to DATA: what the RCPTs got, and the outcome for the recipients
/// taken when DATA was refused (`None`: 354, send the message).
type Opened = (Round, Option<Outcome>);

/// What one transaction's RCPT commands got.
#[derive(Default)]
struct Round {
    accepted: Vec<usize>,
    /// Answered 452 (RFC 5321 §4.5.3.1.10): for a later transaction.
    too_many: Vec<usize>,
}

impl Transaction<'_> {
    /// Runs the transaction (or as many as the server's recipient limit takes), after RSET
    /// when `reset`; returns `(recipient index, outcome)` for every recipient, and what the
    /// session is good for now. The caller QUITs or pools it.
    pub async fn run<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        reset: bool,
    ) -> (Vec<(usize, Outcome)>, End) {
        let mut replies: Replies = vec![None; self.job.recipients.len()];
        let end = match self.exchange(client, &mut replies, reset).await {
            // Nothing was sent: the session is as it was.
            None => End::Open { reset },
            Some(reset) => self.end(&replies, reset),
        };
        let outcomes = self
            .job
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
            .collect();
        (outcomes, end)
    }

    /// After an exchange that sent commands: a lost connection (our 4.4.2 texts) or a 421
    /// closes the session; on a reused session that heard nothing else, it was stale.
    fn end(&self, replies: &Replies, reset: bool) -> End {
        let outcomes = || replies.iter().flatten();
        let broken = |o: &Outcome| !o.remote || o.reply.code == 421;
        if !outcomes().any(broken) {
            return End::Open { reset };
        }
        if self.reused && !self.body_started.load(Relaxed) && outcomes().all(broken) {
            return End::Stale;
        }
        End::Closed
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

    /// The commands and replies; `None` when nothing was sent (refused before MAIL), else
    /// whether the next transaction needs an RSET first.
    async fn exchange<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        replies: &mut Replies,
        reset: bool,
    ) -> Option<bool> {
        let utf8 = self.needs_smtputf8();
        let mut pending: Vec<usize> = (0..replies.len()).collect();
        if let Some(reply) = self.refuse_before_mail(utf8) {
            fill(replies, &pending, &Outcome::ours(reply));
            return None;
        }
        let mut needs_reset = reset;
        let pipelining = self.extensions.has(EXT_PIPELINING);
        while !pending.is_empty() {
            let started = if pipelining {
                self.pipelined(client, needs_reset, utf8, &pending, replies)
                    .await
            } else {
                self.one_by_one(client, needs_reset, utf8, &pending, replies)
                    .await
            };
            // Ended early (MAIL refused, connection lost): RSET before any other transaction.
            let Some((round, refused)) = started else {
                return Some(true);
            };
            // No progress: the 452s stand, and the recipients are tried again later. MAIL
            // was taken, so the transaction is still open on the server's side.
            if round.accepted.is_empty() {
                return Some(true);
            }
            let outcome = match refused {
                Some(outcome) => outcome,
                None => self.body(client).await,
            };
            for &i in &round.accepted {
                replies[i] = Some(outcome.clone());
            }
            // A transaction refused before its end (DATA not answered 354) may still be
            // open on the server's side; after the final reply to the data it is over.
            needs_reset = !self.body_started.load(Relaxed) || !outcome.remote;
            if !outcome.remote {
                return Some(needs_reset);
            }
            // RFC 5321 §4.5.3.1.10: the recipients refused as too many, in a new transaction.
            pending = round.too_many;
            self.body_started.store(false, Relaxed);
        }
        Some(needs_reset)
    }

    /// RSET when due, MAIL FROM, the RCPTs and DATA, one command at a time. `Some` with what
    /// the RCPTs got and, when DATA was not answered 354, the outcome that refusal means for
    /// the recipients taken; `None` when the transaction ended before (every pending recipient
    /// has its outcome then).
    async fn one_by_one<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        needs_reset: bool,
        utf8: bool,
        pending: &[usize],
        replies: &mut Replies,
    ) -> Option<Opened> {
        if needs_reset {
            if let Err(outcome) = self.rset(client).await {
                fill(replies, pending, &outcome);
                return None;
            }
        }
        if let Err(outcome) = self.mail_from(client, utf8).await {
            fill(replies, pending, &outcome);
            return None;
        }
        let round = self.rcpt_to(client, pending, replies).await?;
        if round.accepted.is_empty() {
            return Some((round, None));
        }
        match client.cmd(b"DATA\r\n").await {
            Ok(r) if r.code == 354 => Some((round, None)),
            Ok(r) => Some((round, Some(Outcome::refusal(self.relay, &r, "DATA")))),
            Err(e) => {
                let lost = Outcome::ours(lost(self.relay, &e, "sending DATA command").reply);
                Some((round, Some(lost)))
            }
        }
    }

    /// RFC 2920 §3.1: the same commands as one group, DATA last, and the replies read back in
    /// order. What each reply means does not change: a refused MAIL applies to every
    /// recipient, each RCPT reply to its recipient, and DATA is answered (554, 503) when no
    /// recipient was taken.
    async fn pipelined<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        needs_reset: bool,
        utf8: bool,
        pending: &[usize],
        replies: &mut Replies,
    ) -> Option<Opened> {
        let mut group: Vec<String> = Vec::with_capacity(pending.len() + 3);
        if needs_reset {
            group.push("RSET\r\n".into());
        }
        group.push(self.mail_command(utf8));
        let mut sent = Vec::with_capacity(pending.len());
        for &i in pending {
            match self.recipient(i) {
                Some(rcpt) => {
                    group.push(rcpt_command(rcpt, self.extensions));
                    sent.push(i);
                }
                None => replies[i] = Some(no_such_recipient()),
            }
        }
        group.push("DATA\r\n".into());
        // One write for the group, then its replies, read with one parser: replies that arrive
        // together in one segment must not be lost between reads.
        let n = group.len();
        let timeout = client.timeout;
        let exchange = async {
            client.stream.write_all(group.concat().as_bytes()).await?;
            client.stream.flush().await?;
            client.read_many(n).await
        };
        let answers = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answers)) if answers.len() == n => answers,
            Ok(Ok(_)) => {
                return self.group_lost(&mail_send::Error::UnparseableReply, pending, replies)
            }
            Ok(Err(e)) => return self.group_lost(&e, pending, replies),
            Err(_) => return self.group_lost(&mail_send::Error::Timeout, pending, replies),
        };
        self.read_group(client, needs_reset, &sent, answers, replies)
            .await
    }

    /// The connection broke (or timed out) during a pipelined group: every pending recipient
    /// gets the 4.4.2, and the session ends.
    fn group_lost(
        &self,
        e: &mail_send::Error,
        pending: &[usize],
        replies: &mut Replies,
    ) -> Option<Opened> {
        let lost = Outcome::ours(lost(self.relay, e, "sending MAIL FROM").reply);
        fill(replies, pending, &lost);
        None
    }

    /// Sorts the replies of a pipelined group out over the recipients.
    async fn read_group<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        needs_reset: bool,
        sent: &[usize],
        answers: Vec<Response<String>>,
        replies: &mut Replies,
    ) -> Option<Opened> {
        let mut answers = answers.into_iter();
        let mut next = || answers.next();
        let every = |replies: &mut Replies, r: &Response<String>, command: &str| {
            fill(replies, sent, &Outcome::refusal(self.relay, r, command));
        };
        if needs_reset {
            let rset = next()?;
            if rset.code / 100 != 2 {
                every(replies, &rset, "RSET");
                return None;
            }
        }
        let mail = next()?;
        let mut round = Round::default();
        for &i in sent {
            let r = next()?;
            match r.code {
                _ if mail.code / 100 != 2 => {}
                c if c / 100 == 2 => round.accepted.push(i),
                452 => round.too_many.push(i),
                _ => {}
            }
            replies[i] = Some(if r.code / 100 == 2 {
                Outcome::remote(&r)
            } else {
                Outcome::refusal(self.relay, &r, "RCPT TO")
            });
        }
        let data = next()?;
        if mail.code / 100 != 2 {
            every(replies, &mail, "MAIL FROM");
            self.end_stray_data(client, &data).await;
            return None;
        }
        if round.accepted.is_empty() {
            // A server that answered DATA 354 with no recipient: end the empty message.
            self.end_stray_data(client, &data).await;
            return Some((round, None));
        }
        if data.code != 354 {
            return Some((round, Some(Outcome::refusal(self.relay, &data, "DATA"))));
        }
        Some((round, None))
    }

    /// RFC 2920 §3.1: DATA answered 354 though nothing may be sent: a lone dot ends it.
    async fn end_stray_data<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        data: &Response<String>,
    ) {
        if data.code == 354 {
            let _ = client.cmd(b".\r\n").await;
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
            Ok(r) => Err(Outcome::refusal(self.relay, &r, "RSET")),
            Err(e) => Err(Outcome::ours(lost(self.relay, &e, "sending RSET").reply)),
        }
    }

    fn mail_command(&self, utf8: bool) -> String {
        let params = mail_params(
            self.envelope(),
            self.extensions,
            self.job.message.len(),
            utf8,
        );
        format!("MAIL FROM:<{}>{params}\r\n", self.envelope().mail_from)
    }

    /// MAIL FROM; a refusal applies to every recipient of the transaction.
    async fn mail_from<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        utf8: bool,
    ) -> Result<(), Outcome> {
        match client.cmd(self.mail_command(utf8)).await {
            Ok(r) if r.code / 100 == 2 => Ok(()),
            Ok(r) => Err(Outcome::refusal(self.relay, &r, "MAIL FROM")),
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
                replies[i] = Some(no_such_recipient());
                continue;
            };
            match client.cmd(rcpt_command(rcpt, self.extensions)).await {
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
                Ok(r) => replies[i] = Some(Outcome::refusal(self.relay, &r, "RCPT TO")),
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

    /// After DATA's 354: the stuffed message and the final reply, which applies to every
    /// accepted recipient.
    async fn body<T: AsyncRead + AsyncWrite + Unpin>(&self, client: &mut SmtpClient<T>) -> Outcome {
        self.body_started.store(true, Relaxed);
        // RFC 6152 §3: a server without 8BITMIME gets the message converted to 7-bit MIME
        // (see `mime_downgrade`). With conversion off the octets go as they are, as Postfix
        // does with `disable_mime_output_conversion = yes`; most servers pass them on.
        let mut message = Cow::Borrowed(self.job.message);
        if self.convert_8bit
            && self.envelope().body == BodyType::EightBitMime
            && !self.extensions.has(EXT_8BIT_MIME)
        {
            message = to_seven_bit(self.job.message);
            if matches!(message, Cow::Owned(_)) {
                tracing::info!(
                    "{}: relay={} does not support 8BITMIME: converted 8-bit MIME parts to \
                     quoted-printable",
                    self.job.queue_id,
                    self.relay
                );
            }
        }
        let body = dot_stuff(&message);
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
            Ok(Ok(r)) => Outcome::final_reply(self.relay, &r),
            Ok(Err(e)) => Outcome::ours(lost(self.relay, &e, stage).reply),
            Err(_) => Outcome::ours(lost(self.relay, &mail_send::Error::Timeout, stage).reply),
        }
    }
}

/// Unreachable by construction (the job names its recipients by index).
fn no_such_recipient() -> Outcome {
    Outcome::ours(Reply::new(
        554,
        EnhancedCode::new(5, 3, 0),
        "internal error: no such recipient",
    ))
}

/// The same outcome for each of `recipients`.
fn fill(replies: &mut Replies, recipients: &[usize], outcome: &Outcome) {
    for &i in recipients {
        replies[i] = Some(outcome.clone());
    }
}
