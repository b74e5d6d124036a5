//! The mail transaction (RFC 5321 §3.3): MAIL opens it, RCPT adds recipients that pass the
//! relay check, DATA brings the message, and the queue's answer closes it.

use super::{bad_sequence, reply, Flow, Helo, Session, State};
use crate::envelope::{ClientInfo, Envelope, Recipient};
use crate::inbound::access::check_relay;
use crate::inbound::data::{DataDecoder, Decoded};
use crate::inbound::params::{MailParams, RcptParams};
use crate::inbound::received::Trace;
use crate::queue_id::QueueId;
use crate::reply::Reply;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<'_, S> {
    pub(super) async fn mail(&mut self, from: String, params: MailParams) -> Flow {
        let helo = match &self.state {
            State::Fresh => return self.send(bad_sequence("send HELO/EHLO first")).await,
            State::Transaction(..) => return self.send(bad_sequence("nested MAIL command")).await,
            State::Ready(h) => h.clone(),
        };
        // RFC 8689 §4: REQUIRETLS exists only where it was offered, inside TLS.
        if params.requiretls && !self.tls_active() {
            let r = reply(555, 5, 5, 4, "Unsupported option: REQUIRETLS");
            return self.send(r).await;
        }
        if !from.is_ascii() && !params.smtputf8 {
            return self.send(need_smtputf8()).await;
        }
        // RFC 1870 §6.2: refuse a declared size over the limit at MAIL.
        let limit = self.inbound.config.smtpd.message_size_limit;
        if params.size.is_some_and(|s| s > limit) {
            let r = reply(552, 5, 3, 4, "Message size exceeds fixed limit");
            return self.send(r).await;
        }
        // Room for the declared size beyond queue.min_free, or 452 before anything is written.
        if let Err(r) = self.inbound.space.check(params.size.unwrap_or(0)) {
            tracing::debug!(
                "reject: MAIL from {}: {r}; from=<{from}>",
                self.client.ip_text()
            );
            return self.send(r).await;
        }
        let mut envelope = Envelope::new(from);
        envelope.body = params.body;
        envelope.smtputf8 = params.smtputf8;
        envelope.ret = params.ret;
        envelope.envid = params.envid;
        envelope.requiretls = params.requiretls;
        envelope.min_tls_level = (self.inbound.config.listeners)
            .get(self.client.listener)
            .and_then(|l| l.min_level);
        self.state = State::Transaction(helo, Box::new(envelope));
        self.send(reply(250, 2, 1, 0, "Ok")).await
    }

    pub(super) async fn rcpt(&mut self, to: String, params: RcptParams) -> Flow {
        let State::Transaction(_, envelope) = &self.state else {
            return self.send(bad_sequence("need MAIL command")).await;
        };
        // RFC 6531 §3.5: a UTF-8 address needs SMTPUTF8 declared on MAIL.
        if !to.is_ascii() && !envelope.smtputf8 {
            return self.send(need_smtputf8()).await;
        }
        if envelope.recipients.len() >= self.inbound.config.smtpd.recipient_limit {
            // RFC 5321 §4.5.3.1.10: 452 tells the client to try the rest in another transaction.
            let r = reply(452, 4, 5, 3, "Error: too many recipients");
            return self.send(r).await;
        }
        let relay = check_relay(
            self.client.addr.ip(),
            &self.inbound.config.access.mynetworks,
            self.auth_user.is_some(),
            &to,
        );
        if let Err(r) = relay {
            info!(
                "reject: RCPT from {}: {r}; from=<{}> to=<{to}>",
                self.client.ip_text(),
                envelope.mail_from
            );
            return self.send(r).await;
        }
        if let State::Transaction(_, envelope) = &mut self.state {
            envelope.recipients.push(Recipient {
                address: to,
                orcpt: params.orcpt,
                notify: params.notify,
            });
        }
        self.send(reply(250, 2, 1, 5, "Ok")).await
    }

    pub(super) async fn data(&mut self) -> Flow {
        let (helo, envelope) = match std::mem::replace(&mut self.state, State::Fresh) {
            State::Transaction(h, e) if !e.recipients.is_empty() => (h, e),
            other => {
                let r = match &other {
                    // RFC 2920 §3.1: DATA after all-failed RCPTs gets 554, not 354.
                    State::Transaction(..) => reply(554, 5, 5, 1, "Error: no valid recipients"),
                    _ => bad_sequence("need RCPT command"),
                };
                self.state = other;
                return self.send(r).await;
            }
        };
        // Whatever happens from here, the transaction is over (RFC 5321 §4.1.1.4).
        self.state = State::Ready(helo.clone());
        self.send(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"))
            .await?;
        let smtpd = &self.inbound.config.smtpd;
        let mut decoder = DataDecoder::new(smtpd.message_size_limit);
        let deadline = tokio::time::Instant::now() + smtpd.data_timeout;
        self.io
            .read_data(&mut decoder, smtpd.timeout, deadline)
            .await?;
        match decoder.finish() {
            Decoded::TooBig { size } => {
                info!(
                    "reject: message from {} too big: size={size}",
                    self.client.ip_text()
                );
                let r = reply(552, 5, 3, 4, "Error: message file too big");
                self.send(r).await
            }
            Decoded::Message(content) => self.queue(&helo, *envelope, content).await,
        }
    }

    /// Prepends `Received:` and hands the message to the queue; the 250 goes out only once the
    /// queue says the message is on stable storage.
    async fn queue(&mut self, helo: &Helo, mut envelope: Envelope, content: Vec<u8>) -> Flow {
        let config = &self.inbound.config;
        let recipients: Vec<&str> = envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        let tls = self.client.tls.as_ref();
        // The id is chosen here, not by the queue, so that `Received:` can name it.
        let id = QueueId::generate();
        let trace = Trace {
            helo: &helo.name,
            client_name: None,
            client_ip: self.client.addr.ip(),
            by: &config.hostname,
            id: &id.as_str(),
            esmtp: helo.esmtp,
            tls,
            authenticated: self.auth_user.is_some(),
            smtputf8: envelope.smtputf8,
            recipients: &recipients,
        };
        let header = trace.header(time::OffsetDateTime::now_utc());
        let mut message = Vec::with_capacity(header.len() + content.len());
        message.extend_from_slice(header.as_bytes());
        message.extend_from_slice(&content);
        drop(content);

        envelope.arrival = std::time::SystemTime::now();
        envelope.client = ClientInfo {
            helo: helo.name.clone(),
            addr: self.client.addr.ip().to_canonical().to_string(),
            tls: self
                .client
                .tls
                .as_ref()
                .map(|n| format!("{} {}", n.version, n.cipher)),
            auth_user: self.auth_user.clone(),
            listener: config
                .listeners
                .get(self.client.listener)
                .map(|l| l.address.to_string())
                .unwrap_or_default(),
        };
        let (from, nrcpt, size) = (
            envelope.mail_from.clone(),
            envelope.recipients.len(),
            message.len(),
        );
        let listener = envelope.client.listener.clone();
        match self.inbound.queue.enqueue_as(id, envelope, message).await {
            Ok(id) => {
                crate::metrics::message_received(&listener);
                info!(
                    "{id}: client={}, from=<{from}>, nrcpt={nrcpt}, size={size}",
                    self.client.ip_text()
                );
                self.send(reply(250, 2, 0, 0, format!("Ok: queued as {id}")))
                    .await
            }
            Err(r) => {
                info!(
                    "reject: queue refused message from {}: {r}",
                    self.client.ip_text()
                );
                self.send(r).await
            }
        }
    }
}

/// RFC 6531 §3.5.
fn need_smtputf8() -> Reply {
    reply(553, 5, 6, 7, "Must declare SMTPUTF8 to send UTF8 address")
}
