//! The scheduler: tries each message when it arrives and again when its backoff runs out,
//! records per-recipient outcomes, and queues bounces and delay warnings.
//!
//! Each message is in exactly one place at a time: waiting on a timer, or being processed by
//! one task. A message's pending recipients are grouped by domain, and each domain is one
//! delivery (one SMTP session), run concurrently within the outbound session limit.

use super::retry::{decide, next_delay, Decision};
use super::spool::{RcptState, StateRecord};
use super::{Queue, QueueId};
use crate::config::Config;
use crate::delivery::{Attempt, Deliverer, Job, Status, TlsInfo};
use crate::dsn;
use crate::dsn::status_filter::StatusFilter;
use crate::envelope::Envelope;
use crate::reply::Reply;
use crate::tls_policy::TlsLevel;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long a shutdown waits for running deliveries before abandoning them (they stay in the
/// spool and are tried again at the next start).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct Scheduler {
    ctx: Arc<Ctx>,
}

/// What every processing task needs.
struct Ctx {
    queue: Queue,
    deliverer: Deliverer,
    config: Arc<Config>,
    /// `delivery.status_filter`, parsed once: applied to every failed attempt's reply before
    /// the queue decides between retry and bounce.
    status_filter: StatusFilter,
}

impl Scheduler {
    pub fn new(queue: Queue, deliverer: Deliverer, config: Arc<Config>) -> Scheduler {
        let status_filter = load_status_filter(&config);
        Scheduler {
            ctx: Arc::new(Ctx {
                queue,
                deliverer,
                config,
                status_filter,
            }),
        }
    }

    /// Runs until `shutdown` turns true: first everything already in the spool (a restart
    /// resumes all unfinished mail), then arrivals and retries.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let Some(mut arrivals) = self.ctx.queue.take_arrivals() else {
            tracing::error!("scheduler: started twice on one queue");
            return;
        };
        let mut timers: BinaryHeap<Reverse<(Instant, QueueId)>> = BinaryHeap::new();
        let mut active: HashSet<QueueId> = HashSet::new();
        let mut tasks: JoinSet<(QueueId, Option<Duration>)> = JoinSet::new();
        match self.ctx.queue.spool().scan() {
            Ok(ids) => {
                if !ids.is_empty() {
                    tracing::info!("queue: resuming {} message(s) from the spool", ids.len());
                }
                let now = Instant::now();
                timers.extend(ids.into_iter().map(|id| Reverse((now, id))));
            }
            Err(e) => tracing::error!("queue: cannot scan the spool: {e}"),
        }
        loop {
            let next_timer = timers.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(id) = arrivals.recv() => {
                    if active.insert(id.clone()) {
                        self.spawn(&mut tasks, id);
                    }
                }
                _ = sleep_until(next_timer) => {
                    while let Some(Reverse((at, _))) = timers.peek() {
                        if *at > Instant::now() {
                            break;
                        }
                        let Some(Reverse((_, id))) = timers.pop() else { break };
                        if active.insert(id.clone()) {
                            self.spawn(&mut tasks, id);
                        }
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    match done {
                        Ok((id, next)) => {
                            active.remove(&id);
                            if let Some(delay) = next {
                                timers.push(Reverse((Instant::now() + delay, id)));
                            }
                        }
                        Err(e) => tracing::error!("queue: a delivery task failed: {e}"),
                    }
                }
            }
            if *shutdown.borrow() {
                break;
            }
        }
        tracing::info!("queue: stopping, {} delivery task(s) running", tasks.len());
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }

    fn spawn(&self, tasks: &mut JoinSet<(QueueId, Option<Duration>)>, id: QueueId) {
        let ctx = self.ctx.clone();
        tasks.spawn(async move {
            let next = process(&ctx, &id).await;
            (id, next)
        });
    }
}

/// `delivery.status_filter`, already checked by `Config::validate`. Should the file have become
/// unreadable since, the relay runs without it: that only keeps failures transient (retried),
/// never bounces anything the operator did not ask to bounce.
fn load_status_filter(config: &Config) -> StatusFilter {
    let Some(path) = &config.delivery.status_filter else {
        return StatusFilter::default();
    };
    match StatusFilter::load(path) {
        Ok(filter) => {
            tracing::info!(
                "delivery.status_filter: {} rule(s) from {}",
                filter.len(),
                path.display()
            );
            filter
        }
        Err(e) => {
            tracing::error!("delivery.status_filter: {e}; running without the filter");
            StatusFilter::default()
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One pass over a message. Returns when to try it again, or `None` when it is finished.
async fn process(ctx: &Ctx, id: &QueueId) -> Option<Duration> {
    let loaded = {
        let queue = ctx.queue.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            let (envelope, message) = queue.spool().load(&id)?;
            let records = queue.spool().read_state(&id)?;
            Ok::<_, std::io::Error>((envelope, message, records))
        })
        .await
    };
    let (envelope, message, records) = match loaded {
        Ok(Ok(l)) => l,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Ok(Err(e)) => {
            tracing::error!("{id}: unreadable queue file, moved to spool/corrupt: {e}");
            let _ = ctx.queue.spool().quarantine(id);
            return None;
        }
        Err(e) => {
            tracing::error!("{id}: {e}");
            return Some(Duration::from_secs(60));
        }
    };
    let pass = Pass::new(ctx, id, &envelope, &message, &records);
    if pass.pending.is_empty() {
        pass.finish();
        return None;
    }
    let attempts = pass.deliver().await;
    pass.record(attempts).await
}

/// The state of one pass over one message.
struct Pass<'a> {
    ctx: &'a Ctx,
    id: &'a QueueId,
    envelope: &'a Envelope,
    message: &'a [u8],
    /// Current state per recipient (index into the envelope), replayed from the state log.
    states: Vec<RcptState>,
    /// Recipients not yet done.
    pending: Vec<usize>,
    age: Duration,
}

impl<'a> Pass<'a> {
    fn new(
        ctx: &'a Ctx,
        id: &'a QueueId,
        envelope: &'a Envelope,
        message: &'a [u8],
        records: &[StateRecord],
    ) -> Self {
        let mut states = vec![
            RcptState::Deferred {
                attempts: 0,
                reply: None,
                warned: false,
            };
            envelope.recipients.len()
        ];
        for r in records {
            if let Some(s) = states.get_mut(r.rcpt) {
                *s = r.state.clone();
            }
        }
        let pending = (0..states.len())
            .filter(|&i| states[i] != RcptState::Done)
            .collect();
        let age = SystemTime::now()
            .duration_since(envelope.arrival)
            .unwrap_or_default();
        Pass {
            ctx,
            id,
            envelope,
            message,
            states,
            pending,
            age,
        }
    }

    /// Delivers the pending recipients, one session per domain, concurrently.
    async fn deliver(&self) -> Vec<Attempt> {
        let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in &self.pending {
            by_domain
                .entry(self.envelope.recipients[i].domain())
                .or_default()
                .push(i);
        }
        let jobs = by_domain.iter().map(|(domain, rcpts)| async move {
            // The deliverer bounds concurrent sessions (`delivery.max_concurrency`).
            let job = Job {
                queue_id: self.id,
                envelope: self.envelope,
                message: self.message,
                domain,
                recipients: rcpts,
            };
            self.ctx.deliverer.deliver(&job).await
        });
        futures::future::join_all(jobs)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Logs each attempt, queues bounces, writes the state log; returns the next retry.
    async fn record(mut self, attempts: Vec<Attempt>) -> Option<Duration> {
        let queue_cfg = &self.ctx.config.queue;
        let mut failed: Vec<&Attempt> = Vec::new();
        let mut relayed: Vec<&Attempt> = Vec::new();
        let mut changed: Vec<usize> = Vec::new();
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
            let Some(rcpt) = self.envelope.recipients.get(attempt.rcpt) else {
                continue;
            };
            let decision = decide(&attempt.reply, self.age, queue_cfg);
            let status = match decision {
                Decision::Delivered => Status::Sent,
                Decision::Bounce => Status::Bounced,
                Decision::Expire => Status::Expired,
                Decision::Retry => Status::Deferred,
            };
            // Postfix's delay= is the time since arrival, measured when the line is written.
            let delay = SystemTime::now()
                .duration_since(self.envelope.arrival)
                .unwrap_or_default();
            tracing::info!(
                "{}",
                attempt.log_line(self.id, &rcpt.address, delay, status)
            );
            match decision {
                Decision::Delivered => {
                    self.states[attempt.rcpt] = RcptState::Done;
                    changed.push(attempt.rcpt);
                    if !attempt.dsn_passed_on {
                        relayed.push(attempt);
                    }
                }
                Decision::Bounce | Decision::Expire => failed.push(attempt),
                Decision::Retry => {
                    if let RcptState::Deferred {
                        attempts, reply, ..
                    } = &mut self.states[attempt.rcpt]
                    {
                        *attempts += 1;
                        *reply = Some(attempt.reply.clone());
                    }
                    changed.push(attempt.rcpt);
                }
            }
        }
        if !failed.is_empty() && self.send_dsn(&failed, dsn::Action::Failed).await {
            for a in &failed {
                self.states[a.rcpt] = RcptState::Done;
                changed.push(a.rcpt);
            }
        }
        // RFC 3461 §5.2.2: delivered to a server that does not speak DSN, a NOTIFY=SUCCESS
        // recipient gets a "relayed" DSN from us, since nobody further on will send one.
        // (Best effort: the recipient is done either way.)
        if !relayed.is_empty() {
            self.send_dsn(&relayed, dsn::Action::Relayed).await;
        }
        self.warn_delayed(&mut changed).await;
        let max_attempts = self
            .states
            .iter()
            .filter_map(|s| match s {
                RcptState::Deferred { attempts, .. } => Some(*attempts),
                RcptState::Done => None,
            })
            .max();
        match max_attempts {
            // Every recipient is done: the state log would be removed with the message at once,
            // so it is not written (the common case costs no write beyond the message itself).
            None => {
                self.finish();
                None
            }
            Some(n) => {
                self.save_state(&changed);
                Some(next_delay(n.max(1), self.age, queue_cfg))
            }
        }
    }

    fn save_state(&self, changed: &[usize]) {
        let records: Vec<StateRecord> = changed
            .iter()
            .map(|&i| StateRecord {
                rcpt: i,
                state: self.states[i].clone(),
            })
            .collect();
        if let Err(e) = self.ctx.queue.spool().append_state(self.id, &records) {
            tracing::error!("{}: cannot record delivery state: {e}", self.id);
        }
    }

    /// Sends a DSN for these attempts to the envelope sender, when the sender and recipients
    /// want one. Returns true when nothing more is owed: the DSN is durably queued, or none
    /// was due (null sender, NOTIFY=NEVER). False when storing it failed: the recipients stay
    /// pending so the bounce is not lost.
    async fn send_dsn(&self, attempts: &[&Attempt], action: dsn::Action) -> bool {
        let now = SystemTime::now();
        let recipients: Vec<dsn::RecipientReport> = attempts
            .iter()
            .filter_map(|a| {
                let rcpt = self.envelope.recipients.get(a.rcpt)?;
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
                        .then(|| self.envelope.arrival + self.ctx.config.queue.max_lifetime),
                })
            })
            .collect();
        if recipients.is_empty() {
            return true;
        }
        // A sender or listener level above the automatic one promised this message TLS; its
        // bounce may travel without, so it carries the headers only.
        let sender_side = self
            .ctx
            .deliverer
            .tls_policies()
            .floor(&self.envelope.mail_from, self.envelope.min_tls_level, "")
            .and_then(|f| f.sender_side);
        let report = dsn::Report {
            reporting_mta: &self.ctx.config.hostname,
            queue_id: self.id,
            original: self.envelope,
            message: self.message,
            recipients,
            confidential: sender_side.is_some_and(|l| !l.is_automatic() && l != TlsLevel::None),
        };
        let Some((envelope, message)) = dsn::build(&report) else {
            return true;
        };
        match self.ctx.queue.enqueue(envelope, message).await {
            Ok(dsn_id) => {
                tracing::info!("{}: sender non-delivery notification: {dsn_id}", self.id);
                true
            }
            Err(reply) => {
                tracing::error!("{}: cannot queue the DSN, will retry: {reply}", self.id);
                false
            }
        }
    }

    /// RFC 3461 "delay" DSNs: once per recipient, when it has waited `delay_warning`.
    async fn warn_delayed(&mut self, changed: &mut Vec<usize>) {
        let after = self.ctx.config.queue.delay_warning;
        if after.is_zero() || self.age < after {
            return;
        }
        let due: Vec<usize> = (0..self.states.len())
            .filter(|&i| matches!(self.states[i], RcptState::Deferred { warned: false, attempts, .. } if attempts > 0))
            .collect();
        if due.is_empty() {
            return;
        }
        let attempts: Vec<Attempt> = due
            .iter()
            .map(|&i| {
                let reply = match &self.states[i] {
                    RcptState::Deferred { reply: Some(r), .. } => r.clone(),
                    _ => Reply::from_remote(451, "4.0.0 delivery temporarily deferred"),
                };
                Attempt {
                    rcpt: i,
                    reply,
                    remote_reply: false,
                    relay: None,
                    tls: TlsInfo::default(),
                    policy: "none".into(),
                    dsn_passed_on: false,
                }
            })
            .collect();
        let refs: Vec<&Attempt> = attempts.iter().collect();
        if self.send_dsn(&refs, dsn::Action::Delayed).await {
            for &i in &due {
                if let RcptState::Deferred { warned, .. } = &mut self.states[i] {
                    *warned = true;
                }
                changed.push(i);
            }
        }
    }

    fn finish(&self) {
        if let Err(e) = self.ctx.queue.spool().remove(self.id) {
            tracing::error!("{}: cannot remove finished message: {e}", self.id);
        } else {
            tracing::info!("{}: removed", self.id);
        }
    }
}
