//! What an operator's queue action does to one message (Postfix's postqueue -f / -s and
//! postsuper -h, -H, -d, -r; `bounce` is our own): the effect on the spool, written with the
//! same records the scheduler writes, so that it survives a crash the moment it is reported.
//!
//! The scheduler calls [`apply`] only for a message no delivery is working on; the command
//! line calls it directly when no daemon runs (it then holds the data directory's lock).

use super::notify::{send_dsn, Original};
use super::pass::{load_state, remove, save, synthetic_attempt};
use super::state::{
    unix_secs, Due, LogRecord, MessageEvent, MessageRecord, MessageState, StateRecord,
};
use super::{Ctx, QueueId};
use crate::delivery::{Attempt, Status};
use crate::dsn;
use crate::envelope::{domain_of, Envelope};
use crate::reply::{EnhancedCode, Reply};
use std::time::SystemTime;

/// An operator's action on the messages a selector matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Due now, backoff reset; with a domain, only that domain's recipients.
    Flush {
        domain: Option<String>,
    },
    /// Never tried, never expires, until released.
    Hold,
    Release,
    /// Removed without a bounce.
    Delete,
    /// Returned to the sender now.
    Bounce,
    /// Route and policy decided afresh at the next attempt, which is now.
    Requeue,
}

impl Action {
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Flush { .. } => "flush",
            Action::Hold => "hold",
            Action::Release => "release",
            Action::Delete => "delete",
            Action::Bounce => "bounce",
            Action::Requeue => "requeue",
        }
    }

    /// The past participle for reports: `ID: held`.
    fn done(&self) -> &'static str {
        match self {
            Action::Flush { .. } => "flushed",
            Action::Hold => "held",
            Action::Release => "released",
            Action::Delete => "deleted",
            Action::Bounce => "bounced",
            Action::Requeue => "requeued",
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionReport {
    pub id: QueueId,
    /// For the operator: `held`, `held when its delivery ends`, `not on hold`, …
    pub text: String,
    /// False when the action could not be carried out (the spool refused a write).
    pub ok: bool,
}

impl ActionReport {
    /// For a message being delivered: the action waits for the end of the delivery.
    pub(crate) fn later(id: QueueId, action: &Action) -> ActionReport {
        ActionReport {
            id,
            text: format!("{} when its delivery ends", action.done()),
            ok: true,
        }
    }

    fn ok(id: QueueId, text: impl Into<String>) -> ActionReport {
        ActionReport {
            id,
            text: text.into(),
            ok: true,
        }
    }

    fn failed(id: QueueId, text: impl Into<String>) -> ActionReport {
        ActionReport {
            id,
            text: text.into(),
            ok: false,
        }
    }
}

/// The reply an operator's bounce gives each recipient (RFC 3463 X.0.0: other or undefined
/// status; permanent, since the operator means it).
pub fn operator_bounce_reply() -> Reply {
    Reply::new(
        550,
        EnhancedCode::new(5, 0, 0),
        "Returned to sender by the mail system operator",
    )
}

/// Applies `action` to message `id`; `unsaved` are its records a full disk refused earlier.
/// Returns the report and when the message is due now.
pub(crate) async fn apply(
    ctx: &Ctx,
    id: QueueId,
    action: &Action,
    by: &str,
    unsaved: Vec<LogRecord>,
) -> (ActionReport, Due) {
    let Some((envelope, mut state)) = load_state(ctx, id, &unsaved).await else {
        return (
            ActionReport::ok(id, "not in the queue (any more)"),
            Due::Finished,
        );
    };
    tracing::info!("{id}: queue {} by {by}", action.verb());
    let now = unix_secs(SystemTime::now());
    let mut records = unsaved;
    let report = match action {
        Action::Hold if state.hold.is_some() => ActionReport::ok(id, "already on hold"),
        Action::Release if state.hold.is_none() => ActionReport::ok(id, "not on hold"),
        Action::Hold | Action::Release => {
            let event = match action {
                Action::Hold => MessageEvent::Hold,
                _ => MessageEvent::Release,
            };
            let record = LogRecord::Message(MessageRecord {
                event,
                at: now,
                by: by.to_string(),
            });
            state.apply(&record);
            records.push(record);
            ActionReport::ok(id, action.done())
        }
        Action::Flush { .. } | Action::Requeue if state.hold.is_some() => {
            ActionReport::ok(id, "on hold: release it first")
        }
        Action::Flush { domain } => {
            records.extend(due_now(&envelope, &mut state, domain.as_deref()));
            ActionReport::ok(id, action.done())
        }
        Action::Requeue => {
            records.extend(due_now(&envelope, &mut state, None));
            ActionReport::ok(id, action.done())
        }
        Action::Delete => {
            log_each_pending(&id, &envelope, &state, Status::Deleted, &deleted_reply(by));
            remove(ctx, &id);
            return (ActionReport::ok(id, action.done()), Due::Finished);
        }
        Action::Bounce => return bounce(ctx, id, &envelope, &state, records).await,
    };
    let left = save(ctx, &id, records).await;
    if !left.is_empty() {
        // Not on disk, so not done: say so rather than pretend.
        return (
            ActionReport::failed(id, "the spool refused the write (disk full?); not done"),
            state.due(),
        );
    }
    (report, state.due())
}

/// Makes the pending recipients (of `domain`, when given) due at once, backoff reset.
fn due_now(envelope: &Envelope, state: &mut MessageState, domain: Option<&str>) -> Vec<LogRecord> {
    let mut records = Vec::new();
    for i in state.pending() {
        let in_domain = domain.is_none_or(|d| domain_of(&envelope.recipients[i].address) == d);
        if in_domain {
            state.rcpts[i] = state.rcpts[i].due_now();
            records.push(LogRecord::Rcpt(StateRecord {
                rcpt: i,
                state: state.rcpts[i].clone(),
            }));
        }
    }
    records
}

/// Returns the message to its sender with a DSN saying an operator did it, then removes it.
async fn bounce(
    ctx: &Ctx,
    id: QueueId,
    envelope: &Envelope,
    state: &MessageState,
    unsaved: Vec<LogRecord>,
) -> (ActionReport, Due) {
    let queue = ctx.queue.clone();
    let message = match tokio::task::spawn_blocking(move || queue.spool().load(&id)).await {
        Ok(Ok((_, message))) => message,
        Ok(Err(e)) => {
            return (
                ActionReport::failed(id, format!("cannot read it: {e}")),
                state.due(),
            )
        }
        Err(e) => return (ActionReport::failed(id, e.to_string()), state.due()),
    };
    let reply = operator_bounce_reply();
    let attempts: Vec<Attempt> = state
        .pending()
        .into_iter()
        .map(|i| synthetic_attempt(i, reply.clone()))
        .collect();
    let refs: Vec<&Attempt> = attempts.iter().collect();
    let original = Original {
        id: &id,
        envelope,
        message: &message,
    };
    if !send_dsn(ctx, &original, &refs, dsn::Action::Failed).await {
        let _ = save(ctx, &id, unsaved).await;
        return (
            ActionReport::failed(id, "cannot queue the bounce (disk full?); not done"),
            state.due(),
        );
    }
    log_each_pending(&id, envelope, state, Status::Bounced, &reply);
    remove(ctx, &id);
    (ActionReport::ok(id, "bounced"), Due::Finished)
}

fn deleted_reply(by: &str) -> Reply {
    Reply::new(
        550,
        EnhancedCode::new(5, 0, 0),
        format!("Deleted from the queue by the mail system operator ({by})"),
    )
}

/// The delivery log line of each pending recipient, for an outcome no session produced.
fn log_each_pending(
    id: &QueueId,
    envelope: &Envelope,
    state: &MessageState,
    status: Status,
    reply: &Reply,
) {
    let delay = SystemTime::now()
        .duration_since(envelope.arrival)
        .unwrap_or_default();
    for i in state.pending() {
        let attempt = synthetic_attempt(i, reply.clone());
        let to = &envelope.recipients[i].address;
        tracing::info!("{}", attempt.log_line(id, to, delay, status));
    }
}
