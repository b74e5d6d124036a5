//! What an operator's queue action does to one message (Postfix's postqueue -f / -s and
//! postsuper -h, -H, -d, -r; `bounce` is our own): the effect on the spool, written with the
//! same records the scheduler writes, so that it survives a crash the moment it is reported.
//!
//! The scheduler calls [`apply`] only for a message no delivery is working on; the command
//! line calls it directly when no daemon runs (it then holds the data directory's lock).

use super::notify::{send_dsn, Original};
use super::pass::{load_state, log_attempt, remove, save, synthetic_attempt, MessageId};
use super::state::{
    unix_secs, Due, LogRecord, MessageEvent, MessageRecord, MessageState, RcptState, StateRecord,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionReport {
    pub id: QueueId,
    /// For the operator: `held`, `held when its delivery ends`, `not on hold`, …
    pub text: &'static str,
    /// False when the action could not be carried out (the spool refused a write).
    pub ok: bool,
}

impl ActionReport {
    /// For a message being delivered: the action waits for the end of the delivery.
    pub(crate) fn later(id: QueueId, action: &Action) -> ActionReport {
        let text = match action {
            Action::Flush { .. } => "flushed when its delivery ends",
            Action::Hold => "held when its delivery ends",
            Action::Release => "released when its delivery ends",
            Action::Delete => "deleted when its delivery ends",
            Action::Bounce => "bounced when its delivery ends",
            Action::Requeue => "requeued when its delivery ends",
        };
        ActionReport::ok(id, text)
    }

    fn ok(id: QueueId, text: &'static str) -> ActionReport {
        ActionReport { id, text, ok: true }
    }

    fn failed(id: QueueId, text: &'static str) -> ActionReport {
        ActionReport {
            id,
            text,
            ok: false,
        }
    }
}

/// The reports of one action over many messages: a line per message while there are few
/// (and for every failure), counts by outcome always. `queue flush --all` over 300,000
/// messages answers with a count, as postsuper does, not with 300,000 lines.
#[derive(Debug, Default)]
pub struct Tally {
    lines: Vec<ActionReport>,
    counts: std::collections::BTreeMap<&'static str, usize>,
    total: usize,
    failed: usize,
}

impl Tally {
    /// Up to this many messages, each gets its own line.
    const LINES: usize = 1000;

    pub fn add(&mut self, report: ActionReport) {
        *self.counts.entry(report.text).or_default() += 1;
        self.total += 1;
        self.failed += usize::from(!report.ok);
        if self.lines.len() < Self::LINES || !report.ok {
            self.lines.push(report);
        }
    }

    /// Adds a chunk's reports (a chunk is smaller than [`Tally::LINES`], so it kept them all).
    pub fn merge(&mut self, chunk: Tally) {
        debug_assert_eq!(chunk.lines.len(), chunk.total);
        for report in chunk.lines {
            self.add(report);
        }
    }

    /// True when every message was acted on (or needed nothing).
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let each = self.total <= Self::LINES;
        for r in self.lines.iter().filter(|r| each || !r.ok) {
            out.push_str(&format!("{}: {}\n", r.id, r.text));
        }
        if !each {
            for (text, n) in &self.counts {
                out.push_str(&format!("{n} message(s): {text}\n"));
            }
        }
        out
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

/// What an action did to one message.
pub(crate) struct Applied {
    pub report: ActionReport,
    /// When the message was due before: the index entry the scheduler takes out.
    pub before: Due,
    /// When it is due now.
    pub after: Due,
}

/// Applies `action` to message `id`; `unsaved` are its records a full disk refused earlier.
pub(crate) async fn apply(
    ctx: &Ctx,
    id: QueueId,
    action: &Action,
    by: &str,
    unsaved: Vec<LogRecord>,
) -> Applied {
    let Some((envelope, state)) = load_state(ctx, id, &unsaved).await else {
        return Applied {
            report: ActionReport::ok(id, "not in the queue (any more)"),
            before: Due::Finished,
            after: Due::Finished,
        };
    };
    tracing::info!("{id}: queue {} by {by}", action.verb());
    let before = state.due();
    let (report, after) = act(ctx, id, action, by, unsaved, envelope, state).await;
    let held = |d: Due| i64::from(d == Due::Held);
    ctx.held.fetch_add(
        held(after) - held(before),
        std::sync::atomic::Ordering::Relaxed,
    );
    Applied {
        report,
        before,
        after,
    }
}

/// The effect of `action` on a message read as `envelope` and `state`.
async fn act(
    ctx: &Ctx,
    id: QueueId,
    action: &Action,
    by: &str,
    unsaved: Vec<LogRecord>,
    envelope: Envelope,
    mut state: MessageState,
) -> (ActionReport, Due) {
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
            // The compliance record names the message by its Message-ID: read it only then.
            let message = match ctx.observers.compliance.is_some() {
                true => load_message(ctx, id).await.unwrap_or_default(),
                false => Vec::new(),
            };
            let original = Original {
                id: &id,
                envelope: &envelope,
                message: &message,
            };
            log_each_pending(ctx, &original, &state, Status::Deleted, &deleted_reply(by));
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
    let Some(message) = load_message(ctx, id).await else {
        return (
            ActionReport::failed(id, "cannot read it; not done"),
            state.due(),
        );
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
    log_each_pending(ctx, &original, state, Status::Bounced, &reply);
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

/// The message's content; `None` (logged) when it cannot be read.
async fn load_message(ctx: &Ctx, id: QueueId) -> Option<Vec<u8>> {
    let queue = ctx.queue.clone();
    match tokio::task::spawn_blocking(move || queue.spool().load(&id)).await {
        Ok(Ok((_, message))) => Some(message),
        Ok(Err(e)) => {
            tracing::error!("{id}: cannot read the queue file: {e}");
            None
        }
        Err(e) => {
            tracing::error!("{id}: {e}");
            None
        }
    }
}

/// The delivery log line (and compliance record) of each pending recipient, for an outcome
/// no session produced.
fn log_each_pending(
    ctx: &Ctx,
    original: &Original<'_>,
    state: &MessageState,
    status: Status,
    reply: &Reply,
) {
    let mut message_id = MessageId::Unread;
    for i in state.pending() {
        let attempt = synthetic_attempt(i, reply.clone());
        let made = match &state.rcpts[i] {
            RcptState::Deferred { attempts, .. } => *attempts,
            RcptState::Done => 0,
        };
        log_attempt(ctx, original, &attempt, status, made, &mut message_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_messages_get_a_line_each_many_get_counts_and_failures_always_show() {
        let mut few = Tally::default();
        let ids: Vec<QueueId> = (0..3).map(|_| QueueId::generate()).collect();
        few.add(ActionReport::ok(ids[0], "held"));
        few.add(ActionReport::later(ids[1], &Action::Hold));
        few.add(ActionReport::failed(ids[2], "not done"));
        assert!(!few.ok());
        assert_eq!(
            few.render(),
            format!(
                "{}: held\n{}: held when its delivery ends\n{}: not done\n",
                ids[0], ids[1], ids[2]
            )
        );

        let mut many = Tally::default();
        let mut chunk = Tally::default();
        for n in 0..1500 {
            chunk.add(ActionReport::ok(QueueId::generate(), "flushed"));
            if n % 256 == 255 {
                many.merge(std::mem::take(&mut chunk));
            }
        }
        let failed = QueueId::generate();
        chunk.add(ActionReport::failed(failed, "not done"));
        many.merge(chunk);
        assert_eq!(
            many.render(),
            format!("{failed}: not done\n1500 message(s): flushed\n1 message(s): not done\n")
        );
    }
}
