//! One pass over one message: read its envelope and state, deliver the recipients whose time
//! has come (one delivery per recipient domain, concurrently), then log each attempt, queue
//! the DSNs it owes, and persist every recipient's new state with its next-attempt time.
//!
//! The message body is read only once the pass knows it will deliver, and dropped when the
//! pass ends: the scheduler bounds how many passes run at once, so that is also how many
//! bodies are in memory.

use super::notify::{send_dsn, Original};
use super::retry::{decide, next_delay, Decision};
use super::state::{unix_secs, Due, LogRecord, MessageState, RcptState, StateRecord};
use super::{Ctx, QueueId};
use crate::delivery::{Attempt, Deliverer, Job, Status, TlsInfo};
use crate::dsn;
use crate::envelope::Envelope;
use crate::reply::Reply;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// What a pass reports back to the scheduler.
pub(crate) struct PassOutcome {
    pub id: QueueId,
    /// When the message is due next. A pass woken early (a stale index entry) changes nothing
    /// and reports the real time, which the index then holds once.
    pub next: Due,
    /// Records the state log could not take (a full disk): kept in memory and written later.
    pub unsaved: Vec<LogRecord>,
    /// Destinations whose window was full: their recipients were not tried, and the message
    /// waits for room there.
    pub busy: Vec<String>,
}

impl PassOutcome {
    fn gone(id: QueueId) -> PassOutcome {
        PassOutcome {
            id,
            next: Due::Finished,
            unsaved: Vec::new(),
            busy: Vec::new(),
        }
    }
}

/// A transient fault of our own (the spool unreadable for a moment): when to look again.
const LOCAL_RETRY: u64 = 60;

/// Runs one pass. `unsaved` are records of this message still waiting to be written.
pub(crate) async fn run(
    ctx: &Ctx,
    deliverer: &Deliverer,
    id: QueueId,
    unsaved: Vec<LogRecord>,
) -> PassOutcome {
    let (envelope, mut state, message) = match load_all(ctx, id, &unsaved).await {
        Ok(loaded) => loaded,
        Err(mut outcome) => {
            outcome.unsaved = unsaved;
            return outcome;
        }
    };
    let now = SystemTime::now();
    let due = state.due_recipients(unix_secs(now));
    if due.is_empty() {
        if state.due() == Due::Finished {
            remove(ctx, &id);
            return PassOutcome::gone(id);
        }
        return PassOutcome {
            id,
            next: state.due(),
            unsaved,
            busy: Vec::new(),
        };
    }
    let pass = Pass {
        ctx,
        original: Original {
            id: &id,
            envelope: &envelope,
            message: &message,
        },
        age: now.duration_since(envelope.arrival).unwrap_or_default(),
    };
    let (attempts, busy) = pass.deliver(deliverer, &due).await;
    let mut changed = pass.record(&mut state, attempts).await;
    if state.due() == Due::Finished {
        // Every recipient is done: the state log goes with the message, so it is not written
        // (the common case costs no write beyond the message itself).
        remove(ctx, &id);
        return PassOutcome::gone(id);
    }
    let mut records = unsaved;
    records.extend(changed.drain(..).map(|i| {
        LogRecord::Rcpt(StateRecord {
            rcpt: i,
            state: state.rcpts[i].clone(),
        })
    }));
    let unsaved = save(ctx, &id, records).await;
    PassOutcome {
        id,
        next: state.due(),
        unsaved,
        busy,
    }
}

/// The envelope and the replayed state (with `unsaved` applied); `None` when the message is
/// gone or was unreadable (then moved to `spool/corrupt`).
pub(crate) async fn load_state(
    ctx: &Ctx,
    id: QueueId,
    unsaved: &[LogRecord],
) -> Option<(Envelope, MessageState)> {
    let queue = ctx.queue.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let (envelope, _) = queue.spool().load_envelope(&id)?;
        let records = queue.spool().read_state(&id)?;
        Ok::<_, std::io::Error>((envelope, records))
    })
    .await;
    match loaded {
        Ok(Ok((envelope, mut records))) => {
            records.extend(unsaved.iter().cloned());
            let state = MessageState::replay(envelope.recipients.len(), &records);
            Some((envelope, state))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        Ok(Err(e)) => {
            quarantine(ctx, &id, &e);
            None
        }
        Err(e) => {
            tracing::error!("{id}: reading the queue file: {e}");
            None
        }
    }
}

/// The envelope, the replayed state (with `unsaved` applied) and the message, read together
/// (one hand-over to a blocking thread): a pass runs only in a delivery slot, and nearly every
/// pass delivers. `Err` says what the scheduler does instead: nothing when the message is
/// gone or was unreadable (moved to `spool/corrupt`), a retry when the spool failed for now.
async fn load_all(
    ctx: &Ctx,
    id: QueueId,
    unsaved: &[LogRecord],
) -> Result<(Envelope, MessageState, Vec<u8>), PassOutcome> {
    let queue = ctx.queue.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let (envelope, message) = queue.spool().load(&id)?;
        let records = queue.spool().read_state(&id)?;
        Ok::<_, std::io::Error>((envelope, message, records))
    })
    .await;
    match loaded {
        Ok(Ok((envelope, message, mut records))) => {
            records.extend(unsaved.iter().cloned());
            let state = MessageState::replay(envelope.recipients.len(), &records);
            Ok((envelope, state, message))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(PassOutcome::gone(id)),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            quarantine(ctx, &id, &e);
            Err(PassOutcome::gone(id))
        }
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
                Ok(Ok(_)) => String::new(),
            };
            tracing::error!("{id}: cannot read the queue file, will retry: {why}");
            Err(PassOutcome {
                id,
                next: Due::At(unix_secs(SystemTime::now()) + LOCAL_RETRY),
                unsaved: Vec::new(),
                busy: Vec::new(),
            })
        }
    }
}

fn quarantine(ctx: &Ctx, id: &QueueId, e: &std::io::Error) {
    tracing::error!("{id}: unreadable queue file, moved to spool/corrupt: {e}");
    if let Err(e) = ctx.queue.spool().quarantine(id) {
        tracing::error!("{id}: cannot move it aside: {e}");
    }
}

pub(crate) fn remove(ctx: &Ctx, id: &QueueId) {
    match ctx.queue.spool().remove(id) {
        Ok(()) => tracing::info!("{id}: removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Left in place: the next start's scan finds it finished and removes it then.
        Err(e) => tracing::error!("{id}: cannot remove finished message: {e}"),
    }
}

/// Appends `records`; what could not be written is returned, to be kept in memory.
pub(crate) async fn save(ctx: &Ctx, id: &QueueId, records: Vec<LogRecord>) -> Vec<LogRecord> {
    if records.is_empty() {
        return records;
    }
    let queue = ctx.queue.clone();
    let id = *id;
    let result = tokio::task::spawn_blocking(move || {
        let written = queue.spool().append(&id, &records);
        (written, records)
    })
    .await;
    match result {
        Ok((Ok(()), _)) => Vec::new(),
        Ok((Err(e), records)) => {
            tracing::warn!(
                "{id}: cannot record delivery state ({e}); kept in memory, written later"
            );
            records
        }
        Err(e) => {
            tracing::error!("{id}: recording delivery state: {e}");
            Vec::new()
        }
    }
}

/// The state of one pass over one message.
struct Pass<'a> {
    ctx: &'a Ctx,
    original: Original<'a>,
    age: Duration,
}

impl Pass<'_> {
    /// Delivers the due recipients, one session per domain, concurrently; the second value
    /// names the destinations that had no room (their recipients were not tried).
    async fn deliver(&self, deliverer: &Deliverer, due: &[usize]) -> (Vec<Attempt>, Vec<String>) {
        let envelope = self.original.envelope;
        let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in due {
            by_domain
                .entry(envelope.recipients[i].domain())
                .or_default()
                .push(i);
        }
        let jobs = by_domain.iter().map(|(domain, rcpts)| async move {
            // The deliverer bounds concurrent sessions (`delivery.max_concurrency`).
            let job = Job {
                queue_id: self.original.id,
                envelope,
                message: self.original.message,
                domain,
                recipients: rcpts,
            };
            let started = std::time::Instant::now();
            let delivered = deliverer.try_deliver(&job).await;
            if delivered.is_ok() {
                crate::metrics::delivery_duration(started.elapsed());
            }
            delivered
        });
        let mut attempts = Vec::new();
        let mut busy = Vec::new();
        for delivered in futures::future::join_all(jobs).await {
            match delivered {
                Ok(more) => attempts.extend(more),
                Err(b) => busy.push(b.destination),
            }
        }
        (attempts, busy)
    }

    /// Logs each attempt, queues bounces and DSNs, and updates `state`; returns the
    /// recipients whose state changed.
    async fn record(&self, state: &mut MessageState, attempts: Vec<Attempt>) -> Vec<usize> {
        let queue_cfg = &self.ctx.config.queue;
        let envelope = self.original.envelope;
        let now = unix_secs(SystemTime::now());
        let mut failed: Vec<&Attempt> = Vec::new();
        let mut relayed: Vec<&Attempt> = Vec::new();
        let mut changed: Vec<usize> = Vec::new();
        let mut message_id = MessageId::Unread;
        // Postfix's smtp_delivery_status_filter: the filtered reply is the outcome from here
        // on — what decides retry or bounce, what the log line and the DSN say.
        let attempts: Vec<Attempt> = attempts
            .into_iter()
            .map(|mut a| {
                a.reply = self.ctx.status_filter.filter(a.reply);
                a
            })
            .collect();
        for attempt in &attempts {
            if envelope.recipients.get(attempt.rcpt).is_none() {
                continue;
            }
            let decision = decide(&attempt.reply, self.age, queue_cfg);
            let status = match decision {
                Decision::Delivered => Status::Sent,
                Decision::Bounce => Status::Bounced,
                Decision::Expire => Status::Expired,
                Decision::Retry => Status::Deferred,
            };
            let number = match &state.rcpts[attempt.rcpt] {
                RcptState::Deferred { attempts, .. } => attempts + 1,
                RcptState::Done => 1,
            };
            log_attempt(
                self.ctx,
                &self.original,
                attempt,
                status,
                number,
                &mut message_id,
            );
            match decision {
                Decision::Delivered => {
                    state.rcpts[attempt.rcpt] = RcptState::Done;
                    changed.push(attempt.rcpt);
                    if !attempt.dsn_passed_on {
                        relayed.push(attempt);
                    }
                }
                Decision::Bounce | Decision::Expire => failed.push(attempt),
                Decision::Retry => {
                    let s = &mut state.rcpts[attempt.rcpt];
                    let step = s.retry_step() + 1;
                    if let RcptState::Deferred {
                        attempts,
                        reply,
                        next_attempt,
                        retry,
                        ..
                    } = s
                    {
                        *attempts += 1;
                        *reply = Some(attempt.reply.clone());
                        *retry = Some(step);
                        *next_attempt = Some(now + next_delay(step, self.age, queue_cfg).as_secs());
                    }
                    changed.push(attempt.rcpt);
                }
            }
        }
        if !failed.is_empty() {
            let stored = send_dsn(self.ctx, &self.original, &failed, dsn::Action::Failed).await;
            for a in &failed {
                let s = &mut state.rcpts[a.rcpt];
                if stored {
                    *s = RcptState::Done;
                } else if let RcptState::Deferred { next_attempt, .. } = s {
                    // The bounce could not be stored (a full disk): try again after the
                    // shortest backoff, never at once.
                    *next_attempt = Some(now + queue_cfg.min_backoff.as_secs().max(1));
                }
                changed.push(a.rcpt);
            }
        }
        // RFC 3461 §5.2.2: delivered to a server that does not speak DSN, a NOTIFY=SUCCESS
        // recipient gets a "relayed" DSN from us, since nobody further on will send one.
        // (Best effort: the recipient is done either way.)
        if !relayed.is_empty() {
            send_dsn(self.ctx, &self.original, &relayed, dsn::Action::Relayed).await;
        }
        self.warn_delayed(state, &mut changed).await;
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// RFC 3461 "delay" DSNs: once per recipient, when it has waited `delay_warning`.
    async fn warn_delayed(&self, state: &mut MessageState, changed: &mut Vec<usize>) {
        let after = self.ctx.config.queue.delay_warning;
        if after.is_zero() || self.age < after {
            return;
        }
        let due: Vec<usize> = (0..state.rcpts.len())
            .filter(|&i| matches!(state.rcpts[i], RcptState::Deferred { warned: false, attempts, .. } if attempts > 0))
            .collect();
        if due.is_empty() {
            return;
        }
        let attempts: Vec<Attempt> = due
            .iter()
            .map(|&i| {
                let reply = match &state.rcpts[i] {
                    RcptState::Deferred { reply: Some(r), .. } => r.clone(),
                    _ => Reply::from_remote(451, "4.0.0 delivery temporarily deferred"),
                };
                synthetic_attempt(i, reply)
            })
            .collect();
        let refs: Vec<&Attempt> = attempts.iter().collect();
        if send_dsn(self.ctx, &self.original, &refs, dsn::Action::Delayed).await {
            for &i in &due {
                if let RcptState::Deferred { warned, .. } = &mut state.rcpts[i] {
                    *warned = true;
                }
                changed.push(i);
            }
        }
    }
}

/// An outcome that no SMTP session produced (a delay warning, an operator's bounce).
/// The message's `Message-ID`, read from its header once per pass, and only when a record
/// asks for it.
pub(crate) enum MessageId {
    Unread,
    Read(Option<String>),
}

impl MessageId {
    fn get(&mut self, message: &[u8]) -> Option<&str> {
        if let MessageId::Unread = self {
            *self = MessageId::Read(crate::delivery::header_field(message, "Message-ID"));
        }
        match self {
            MessageId::Read(id) => id.as_deref(),
            MessageId::Unread => None,
        }
    }
}

/// Records one recipient attempt: the delivery log line, and the compliance record when one
/// is kept. `number` is the recipient's attempt (from 1; for an operator's action, the
/// attempts made before it).
pub(crate) fn log_attempt(
    ctx: &Ctx,
    original: &Original<'_>,
    attempt: &Attempt,
    status: Status,
    number: u32,
    message_id: &mut MessageId,
) {
    let envelope = original.envelope;
    let Some(rcpt) = envelope.recipients.get(attempt.rcpt) else {
        return;
    };
    // Postfix's delay= is the time since arrival, measured when the line is written.
    let delay = SystemTime::now()
        .duration_since(envelope.arrival)
        .unwrap_or_default();
    tracing::info!(
        "{}",
        attempt.log_line(original.id, &rcpt.address, delay, status)
    );
    crate::metrics::delivery(
        status.as_str(),
        attempt.tls.state.as_str(),
        &attempt.policy.name,
    );
    if let Some(log) = &ctx.observers.compliance {
        let cx = crate::compliance::Context {
            queue_id: original.id,
            from: &envelope.mail_from,
            to: &rcpt.address,
            message_id: message_id.get(original.message),
            delay,
            status,
            attempt: number,
        };
        log.write(&crate::compliance::Record::new(attempt, &cx));
    }
}

pub(crate) fn synthetic_attempt(rcpt: usize, reply: Reply) -> Attempt {
    Attempt {
        rcpt,
        reply,
        remote_reply: false,
        relay: None,
        tls: TlsInfo::default(),
        policy: "none".into(),
        dsn_passed_on: false,
        conn_use: 0,
    }
}
