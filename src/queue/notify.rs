//! The delivery status notifications (RFC 3464) the queue owes senders: bounces, delay
//! warnings and "relayed" reports, built by `dsn` and stored in the queue like any message.

use super::{Ctx, QueueId};
use crate::delivery::Attempt;
use crate::dsn;
use crate::envelope::Envelope;
use crate::tls_policy::TlsLevel;
use std::time::SystemTime;

/// The message a DSN reports on.
pub(crate) struct Original<'a> {
    pub id: &'a QueueId,
    pub envelope: &'a Envelope,
    pub message: &'a [u8],
}

/// Queues a DSN for these attempts to the envelope sender, when the sender and recipients
/// want one. Returns true when nothing more is owed: the DSN is durably queued, or none was
/// due (null sender, NOTIFY=NEVER). False when storing it failed (a full disk): the caller
/// keeps the recipients pending so the bounce is tried again, not lost.
pub(crate) async fn send_dsn(
    ctx: &Ctx,
    original: &Original<'_>,
    attempts: &[&Attempt],
    action: dsn::Action,
) -> bool {
    let now = SystemTime::now();
    let envelope = original.envelope;
    let recipients: Vec<dsn::RecipientReport> = attempts
        .iter()
        .filter_map(|a| {
            let rcpt = envelope.recipients.get(a.rcpt)?;
            let wanted = match action {
                dsn::Action::Delayed => rcpt.wants_delay_dsn(),
                dsn::Action::Delivered | dsn::Action::Relayed => rcpt.wants_success_dsn(),
                dsn::Action::Failed => rcpt.wants_failure_dsn(),
            };
            wanted.then(|| dsn::RecipientReport {
                rcpt,
                action,
                reply: &a.reply,
                remote_mta: a.relay.as_ref().map(|r| r.host.as_str()),
                reply_from_remote: a.remote_reply,
                last_attempt: Some(now),
                will_retry_until: (action == dsn::Action::Delayed)
                    .then(|| envelope.arrival + ctx.config.queue.max_lifetime),
            })
        })
        .collect();
    if recipients.is_empty() {
        return true;
    }
    // A sender or listener level above the automatic one promised this message TLS; its
    // bounce may travel without, so it carries the headers only.
    let sender_side = ctx
        .tls_policies
        .floor(&envelope.mail_from, envelope.min_tls_level, "")
        .and_then(|f| f.sender_side);
    let report = dsn::Report {
        reporting_mta: &ctx.config.hostname,
        queue_id: original.id,
        original: envelope,
        message: original.message,
        recipients,
        confidential: sender_side.is_some_and(|l| !l.is_automatic() && l != TlsLevel::None),
    };
    let Some((dsn_envelope, dsn_message)) = dsn::build(&report) else {
        return true;
    };
    match ctx.queue.enqueue(dsn_envelope, dsn_message).await {
        Ok(dsn_id) => {
            tracing::info!(
                "{}: sender non-delivery notification: {dsn_id}",
                original.id
            );
            true
        }
        Err(reply) => {
            tracing::error!("{}: cannot queue the DSN, will retry: {reply}", original.id);
            false
        }
    }
}
