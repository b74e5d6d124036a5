//! The scheduler (Postfix's qmgr, in miniature): decides which message is tried when.
//!
//! Three places a message can be, and only one at a time:
//! - the **waiting index** (`index`): every queued message not being worked on, as just its id
//!   under the second it is next due, some 16 bytes a message. The spool is the truth: an
//!   entry is a wake-up call, and a pass woken early finds nothing due and changes nothing.
//! - the **active set** (at most `queue.active_limit` messages, Postfix's
//!   `qmgr_message_active_limit`): due messages waiting for a pass slot, and those being
//!   delivered. Passes run at most `delivery.max_concurrency` at a time; only a running pass
//!   holds the message's body in memory.
//! - **operator work**: a `queue hold`, `delete`, … being applied. An action on a message that
//!   is being delivered waits until the delivery ends, so a message is never both delivered
//!   and deleted.
//!
//! Due messages enter the active set oldest-due first (ties by arrival), as room frees: after
//! a restart, or a flush of 300,000 messages, they come in at the rate passes finish, never
//! all at once. At start-up the spool is scanned in the background while the listeners already
//! accept mail and due mail already leaves.

use super::admin::{self, Action, ActionReport, Tally};
use super::index::WaitingIndex;
use super::pass::{self, PassOutcome};
use super::scan;
use super::state::{unix_secs, Due, LogRecord};
use super::{Ctx, QueueId};
use crate::delivery::Deliverer;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

/// How long a shutdown waits for running deliveries before abandoning them (they stay in the
/// spool and are tried again at the next start).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often records that a full disk refused are offered to the state log again.
const UNSAVED_RETRY: Duration = Duration::from_secs(5);
/// How often parked messages' destinations are asked for room when no pass ends.
const PARKED_RECHECK: Duration = Duration::from_millis(500);
/// How often the queue's gauges are published (with `[metrics]` on); a scrape is rarely more
/// frequent than every 15 s.
const GAUGE_INTERVAL: Duration = Duration::from_secs(2);

/// What the rest of the daemon tells the scheduler.
pub(crate) enum Event {
    /// A message was stored: schedule it now.
    Arrived(QueueId),
    /// An operator's action on these messages; the reply lists what became of each.
    Admin {
        action: Action,
        ids: Vec<QueueId>,
        by: String,
        reply: oneshot::Sender<Tally>,
    },
    /// Which messages are in the active set (for `queue list`).
    Active {
        reply: oneshot::Sender<Vec<QueueId>>,
    },
}

pub struct Scheduler {
    ctx: Arc<Ctx>,
    deliverer: Arc<Deliverer>,
}

/// One message in the active set.
enum Activity {
    /// Due, waiting for a pass slot.
    Ready,
    /// A pass is running; actions asked for meanwhile wait for its end.
    Delivering(Vec<Deferred>),
}

/// An operator's action on a message that was busy when it was asked for.
struct Deferred {
    action: Action,
    by: String,
}

/// The scheduler's books; owned by its one task.
struct Books {
    /// Every message outside the active set, by due time then arrival.
    waiting: WaitingIndex,
    /// New arrivals not yet in the active set. Taken turn about with the index, as Postfix's
    /// qmgr alternates its incoming and deferred queues, so that new mail is not stuck behind
    /// a flushed backlog of 300,000 retries, nor the backlog behind a flood of new mail.
    incoming: VecDeque<QueueId>,
    /// Active messages without a pass yet, in the order they became due.
    ready: VecDeque<QueueId>,
    /// Active messages waiting for room at a destination whose window was full, by
    /// destination, in the order they were turned away.
    parked: HashMap<String, VecDeque<QueueId>>,
    active: HashMap<QueueId, Activity>,
    /// Messages an operator's action is being applied to, with actions asked for meanwhile.
    admin: HashMap<QueueId, Vec<Deferred>>,
    /// Records the state log refused (a full disk), by message.
    unsaved: HashMap<QueueId, Vec<LogRecord>>,
    /// Operators' actions, the first one being applied, the others waiting their turn.
    jobs: VecDeque<AdminJob>,
    active_limit: usize,
    pass_limit: usize,
}

/// Messages an operator's action is applied to at a time: an action over the whole queue
/// moves through it in such chunks, so that it holds no more than its list of ids.
const ADMIN_CHUNK: usize = 256;

/// An operator's action over many messages, applied chunk by chunk.
struct AdminJob {
    action: Action,
    by: String,
    /// Not yet acted on, in order.
    ids: VecDeque<QueueId>,
    tally: Tally,
    reply: oneshot::Sender<Tally>,
}

/// What an operator task hands back: when each message is due now, its index entries to take
/// out (by due second), and, for a chunk of the current job, its reports.
struct AdminDone {
    due: Vec<(QueueId, Due)>,
    stale: HashMap<u64, Vec<QueueId>>,
    tally: Option<Tally>,
}

impl Scheduler {
    pub fn new(
        queue: super::Queue,
        deliverer: Deliverer,
        config: Arc<crate::config::Config>,
    ) -> Scheduler {
        let ctx = Ctx::new(queue, config, deliverer.tls_policies());
        Scheduler {
            ctx: Arc::new(ctx),
            deliverer: Arc::new(deliverer),
        }
    }

    /// Records each attempt with `observers` too (the compliance record, metrics).
    pub fn with_observers(mut self, observers: super::Observers) -> Scheduler {
        match Arc::get_mut(&mut self.ctx) {
            Some(ctx) => ctx.observers = observers,
            None => tracing::error!("scheduler: observers set too late; they hear nothing"),
        }
        self
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let Some(mut events) = self.ctx.queue.take_events() else {
            tracing::error!("scheduler: started twice on one queue");
            return;
        };
        let config = &self.ctx.config;
        let mut books = Books::new(config.queue.active_limit, config.delivery.max_concurrency);
        let mut passes: JoinSet<PassOutcome> = JoinSet::new();
        let mut admin_work: JoinSet<AdminDone> = JoinSet::new();
        let (scan_tx, mut scan_rx) = mpsc::channel::<Vec<(QueueId, u64)>>(4);
        scan::start(self.ctx.clone(), scan_tx);
        let reaper = tokio::spawn(reap_idle_sessions(self.deliverer.clone()));
        let mut scanning = true;
        let mut unsaved_tick = tokio::time::interval(UNSAVED_RETRY);
        let mut parked_tick = tokio::time::interval(PARKED_RECHECK);
        let metrics_on = config.metrics.listen.is_some();
        let mut gauge_tick = tokio::time::interval(GAUGE_INTERVAL);
        loop {
            books.fill();
            books.unpark(|destination| self.deliverer.destination_room(destination));
            self.start_passes(&mut books, &mut passes);
            let next_due = books.next_wakeup();
            tokio::select! {
                _ = shutdown.changed() => {}
                Some(event) = events.recv() => self.on_event(&mut books, &mut admin_work, event),
                batch = scan_rx.recv(), if scanning => match batch {
                    Some(batch) => batch.into_iter().for_each(|(id, due)| books.waiting.insert(due, id)),
                    None => scanning = false,
                },
                Some(done) = passes.join_next(), if !passes.is_empty() => match done {
                    Ok(outcome) => self.on_pass_done(&mut books, &mut admin_work, outcome),
                    Err(e) => tracing::error!("queue: a delivery task failed: {e}"),
                },
                Some(done) = admin_work.join_next(), if !admin_work.is_empty() => match done {
                    Ok(done) => self.on_admin_done(&mut books, &mut admin_work, done),
                    Err(e) => tracing::error!("queue: an operator's action failed: {e}"),
                },
                _ = sleep_until_unix(next_due) => {}
                // A rate delay or a dead destination's time ends without a pass ending.
                _ = parked_tick.tick(), if !books.parked.is_empty() => {}
                _ = gauge_tick.tick(), if metrics_on => self.publish_gauges(&books),
                _ = unsaved_tick.tick(), if !books.unsaved.is_empty() => {
                    self.retry_unsaved(&mut books).await;
                }
            }
            if *shutdown.borrow() {
                break;
            }
        }
        tracing::info!(
            "queue: stopping, {} delivery task(s) running, {} message(s) waiting",
            passes.len(),
            books.waiting.len()
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while passes.join_next().await.is_some() {}
            while admin_work.join_next().await.is_some() {}
        })
        .await;
        passes.abort_all();
        admin_work.abort_all();
        reaper.abort();
        self.deliverer.close_idle_sessions().await;
        if !books.unsaved.is_empty() {
            self.retry_unsaved(&mut books).await;
        }
    }

    /// The queue's gauges (`mxguard_queue_messages`, `…_oldest_message_age_seconds`): active
    /// is the active set, deferred what waits outside it (new arrivals included), hold what
    /// operators hold; the oldest is the earliest arrival among the active and waiting.
    fn publish_gauges(&self, books: &Books) {
        let oldest = [
            books.waiting.oldest(),
            books.incoming.front().copied(),
            books.active.keys().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min();
        let age = oldest.map_or(Duration::ZERO, |id| {
            SystemTime::now()
                .duration_since(id.arrival())
                .unwrap_or_default()
        });
        let held = self.ctx.held.load(std::sync::atomic::Ordering::Relaxed);
        crate::metrics::queue(
            books.active.len(),
            books.waiting.len() + books.incoming.len(),
            usize::try_from(held).unwrap_or(0),
            age,
        );
    }

    fn on_event(&self, books: &mut Books, admin_work: &mut JoinSet<AdminDone>, event: Event) {
        match event {
            Event::Arrived(id) => books.incoming.push_back(id),
            Event::Active { reply } => {
                let _ = reply.send(books.active.keys().copied().collect());
            }
            Event::Admin {
                action,
                ids,
                by,
                reply,
            } => {
                books.jobs.push_back(AdminJob {
                    action,
                    by,
                    ids: ids.into(),
                    tally: Tally::default(),
                    reply,
                });
                if books.jobs.len() == 1 {
                    self.next_chunk(books, admin_work);
                }
            }
        }
    }

    /// Takes the next chunk of the current operator's job out of scheduling and applies it in
    /// a task of its own; a message being delivered gets the action when its delivery ends.
    /// A finished job gets its answer, and the next job starts.
    fn next_chunk(&self, books: &mut Books, admin_work: &mut JoinSet<AdminDone>) {
        while let Some(job) = books.jobs.front_mut() {
            if job.ids.is_empty() {
                if let Some(job) = books.jobs.pop_front() {
                    let _ = job.reply.send(job.tally);
                }
                continue;
            }
            let mut chunk = Vec::with_capacity(ADMIN_CHUNK);
            let mut tally = Tally::default();
            while chunk.len() < ADMIN_CHUNK {
                let Some(id) = job.ids.pop_front() else { break };
                let deferred = Deferred {
                    action: job.action.clone(),
                    by: job.by.clone(),
                };
                if books_defer(&mut books.active, &mut books.admin, id, deferred) {
                    tally.add(ActionReport::later(id, &job.action));
                } else {
                    // A ready message leaves the active set; its ready entry goes stale.
                    books.active.remove(&id);
                    books.admin.insert(id, Vec::new());
                    chunk.push((id, books.unsaved.remove(&id).unwrap_or_default()));
                }
            }
            let (ctx, action, by) = (self.ctx.clone(), job.action.clone(), job.by.clone());
            admin_work.spawn(async move {
                let mut due = Vec::with_capacity(chunk.len());
                let mut stale: HashMap<u64, Vec<QueueId>> = HashMap::new();
                for (id, unsaved) in chunk {
                    let applied = admin::apply(&ctx, id, &action, &by, unsaved).await;
                    tally.add(applied.report);
                    due.push((id, applied.after));
                    if let Due::At(t) = applied.before {
                        stale.entry(t).or_default().push(id);
                    }
                }
                AdminDone {
                    due,
                    stale,
                    tally: Some(tally),
                }
            });
            return;
        }
    }

    fn on_admin_done(
        &self,
        books: &mut Books,
        admin_work: &mut JoinSet<AdminDone>,
        done: AdminDone,
    ) {
        // Out of the index before the new entries go in: a flushed message waits once.
        for (t, ids) in &done.stale {
            books.waiting.remove(*t, ids);
        }
        for (id, due) in done.due {
            let later = books.admin.remove(&id).unwrap_or_default();
            if !later.is_empty() && due != Due::Finished {
                self.apply_deferred(books, admin_work, id, later);
                continue;
            }
            books.schedule(id, due);
        }
        if let Some(tally) = done.tally {
            if let Some(job) = books.jobs.front_mut() {
                job.tally.merge(tally);
            }
            self.next_chunk(books, admin_work);
        }
    }

    fn on_pass_done(
        &self,
        books: &mut Books,
        admin_work: &mut JoinSet<AdminDone>,
        outcome: PassOutcome,
    ) {
        let PassOutcome {
            id,
            next,
            unsaved,
            busy,
        } = outcome;
        if !unsaved.is_empty() {
            books.unsaved.insert(id, unsaved);
        }
        let later = match books.active.remove(&id) {
            Some(Activity::Delivering(later)) => later,
            _ => Vec::new(),
        };
        if next == Due::Finished {
            books.unsaved.remove(&id);
            for d in later {
                tracing::info!(
                    "{id}: queue {} by {}: nothing left to do, the delivery finished it",
                    d.action.verb(),
                    d.by
                );
            }
            return;
        }
        if !later.is_empty() {
            self.apply_deferred(books, admin_work, id, later);
            return;
        }
        if let Some(destination) = busy.into_iter().next() {
            // Still active, and tried again as soon as that destination has room.
            books.active.insert(id, Activity::Ready);
            books.parked.entry(destination).or_default().push_back(id);
            return;
        }
        books.schedule(id, next);
    }

    /// Applies the actions asked for while `id` was busy, in the order they were asked.
    fn apply_deferred(
        &self,
        books: &mut Books,
        admin_work: &mut JoinSet<AdminDone>,
        id: QueueId,
        later: Vec<Deferred>,
    ) {
        books.admin.insert(id, Vec::new());
        let ctx = self.ctx.clone();
        let mut pending = books.unsaved.remove(&id).unwrap_or_default();
        admin_work.spawn(async move {
            let mut due = Due::At(0);
            for d in later {
                let applied = admin::apply(&ctx, id, &d.action, &d.by, pending).await;
                pending = Vec::new();
                tracing::info!(
                    "{id}: deferred queue {} by {}: {}",
                    d.action.verb(),
                    d.by,
                    applied.report.text
                );
                due = applied.after;
                if due == Due::Finished {
                    break;
                }
            }
            // It was being delivered, so it had no index entry.
            AdminDone {
                due: vec![(id, due)],
                stale: HashMap::new(),
                tally: None,
            }
        });
    }

    fn start_passes(&self, books: &mut Books, passes: &mut JoinSet<PassOutcome>) {
        while passes.len() < books.pass_limit {
            let Some(id) = books.ready.pop_front() else {
                break;
            };
            // Stale: an operator's action took it out of the active set meanwhile.
            let Some(activity) = books.active.get_mut(&id) else {
                continue;
            };
            if !matches!(activity, Activity::Ready) {
                continue;
            }
            *activity = Activity::Delivering(Vec::new());
            let unsaved = books.unsaved.remove(&id).unwrap_or_default();
            let ctx = self.ctx.clone();
            let deliverer = self.deliverer.clone();
            passes.spawn(async move { pass::run(&ctx, &deliverer, id, unsaved).await });
        }
    }

    /// Writes what a full disk refused before, oldest first; what still fails stays.
    async fn retry_unsaved(&self, books: &mut Books) {
        let ids: Vec<QueueId> = books
            .unsaved
            .keys()
            .copied()
            .filter(|id| !books.active.contains_key(id) && !books.admin.contains_key(id))
            .collect();
        for id in ids {
            let Some(records) = books.unsaved.remove(&id) else {
                continue;
            };
            let left = pass::save(&self.ctx, &id, records).await;
            if !left.is_empty() {
                books.unsaved.insert(id, left);
                break;
            }
            tracing::info!("{id}: delivery state written (after an earlier failure)");
        }
    }
}

impl Books {
    fn new(active_limit: usize, pass_limit: usize) -> Books {
        Books {
            waiting: WaitingIndex::default(),
            incoming: VecDeque::new(),
            ready: VecDeque::new(),
            parked: HashMap::new(),
            active: HashMap::new(),
            admin: HashMap::new(),
            unsaved: HashMap::new(),
            jobs: VecDeque::new(),
            active_limit: active_limit.max(1),
            pass_limit: pass_limit.max(1),
        }
    }

    /// Moves new arrivals and due messages from the index into the active set while it has
    /// room, one of each in turn.
    fn fill(&mut self) {
        let now = unix_secs(SystemTime::now());
        let mut from_index = false;
        while self.active.len() < self.active_limit {
            from_index = !from_index;
            let id = match (from_index, self.incoming.is_empty()) {
                (false, false) | (true, true) => self.incoming.pop_front(),
                (true, false) | (false, true) => None,
            };
            let id = match id {
                Some(id) => id,
                None => match self.waiting.pop_due(now) {
                    Some(id) => id,
                    None if self.incoming.is_empty() => break,
                    None => continue,
                },
            };
            if self.active.contains_key(&id) || self.admin.contains_key(&id) {
                continue;
            }
            self.active.insert(id, Activity::Ready);
            self.ready.push_back(id);
        }
    }

    /// Moves parked messages back to the front of the ready queue, as many per destination
    /// as `room` says it takes now.
    fn unpark(&mut self, room: impl Fn(&str) -> usize) {
        let ready = &mut self.ready;
        let active = &self.active;
        self.parked.retain(|destination, parked| {
            let n = room(destination).min(parked.len());
            for id in parked.drain(..n).rev() {
                // Stale when an operator's action took it out meanwhile.
                if matches!(active.get(&id), Some(Activity::Ready)) {
                    ready.push_front(id);
                }
            }
            !parked.is_empty()
        });
    }

    /// When to look at the index again: its first entry's time, unless the active set is full
    /// (then a finishing pass is what makes room).
    fn next_wakeup(&self) -> Option<u64> {
        if self.active.len() >= self.active_limit {
            return None;
        }
        self.waiting.first_due()
    }

    fn schedule(&mut self, id: QueueId, due: Due) {
        if let Due::At(t) = due {
            self.waiting.insert(t, id);
        }
    }
}

/// Queues `deferred` for when the busy message `id` is free (being delivered, or being acted
/// on); false when it is not busy.
fn books_defer(
    active: &mut HashMap<QueueId, Activity>,
    admin: &mut HashMap<QueueId, Vec<Deferred>>,
    id: QueueId,
    deferred: Deferred,
) -> bool {
    let later = match active.get_mut(&id) {
        Some(Activity::Delivering(later)) => later,
        _ => match admin.get_mut(&id) {
            Some(later) => later,
            None => return false,
        },
    };
    later.push(deferred);
    true
}

/// Closes pooled sessions past their idle time or age, every second, outside the scheduler's
/// loop (a QUIT may take its time).
async fn reap_idle_sessions(deliverer: Arc<Deliverer>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        deliverer.reap_idle_sessions().await;
    }
}

/// Sleeps until Unix second `at` (at once when it has passed); for ever when `None`.
async fn sleep_until_unix(at: Option<u64>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let wait = Duration::from_secs(at).saturating_sub(now);
    tokio::time::sleep(wait).await
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::queue_id::sorted_ids as ids;

    fn now() -> u64 {
        unix_secs(SystemTime::now())
    }

    #[test]
    fn the_active_set_never_outgrows_its_limit_and_takes_the_oldest_due_first() {
        let mut books = Books::new(200, 10);
        let all = ids(1000);
        // Due in reverse order of arrival: the earliest-due (the newest here) go first.
        for (k, id) in all.iter().enumerate() {
            books.schedule(*id, Due::At(now() - 1000 + (999 - k as u64)));
        }
        books.fill();
        assert_eq!(books.active.len(), 200);
        let expected: Vec<QueueId> = all.iter().rev().take(200).copied().collect();
        assert_eq!(books.ready.iter().copied().collect::<Vec<_>>(), expected);
        assert_eq!(
            books.next_wakeup(),
            None,
            "a full active set waits for a pass to end"
        );
        // A pass ends: exactly one more comes in, the next-oldest due.
        let done = books.ready.pop_front().unwrap();
        books.active.remove(&done);
        books.fill();
        assert_eq!(books.active.len(), 200);
        assert_eq!(books.ready.back(), Some(&all[799]));
    }

    #[test]
    fn ties_go_by_arrival_and_nothing_is_taken_before_its_time() {
        let mut books = Books::new(100, 10);
        let all = ids(3);
        books.schedule(all[2], Due::At(0));
        books.schedule(all[0], Due::At(0));
        books.schedule(all[1], Due::At(now() + 3600));
        books.fill();
        assert_eq!(books.ready, VecDeque::from(vec![all[0], all[2]]));
        assert_eq!(books.next_wakeup(), Some(now() + 3600));
        books.schedule(all[1], Due::Held);
        books.schedule(all[1], Due::Finished);
        assert_eq!(
            books.waiting.len(),
            1,
            "held and finished messages are not scheduled"
        );
    }

    #[test]
    fn new_mail_and_the_backlog_take_turns() {
        let mut books = Books::new(4, 10);
        let backlog = ids(10);
        for id in &backlog {
            books.schedule(*id, Due::At(0));
        }
        let new = ids(10);
        books.incoming.extend(new.iter().copied());
        books.fill();
        let taken: Vec<QueueId> = books.ready.iter().copied().collect();
        assert_eq!(taken, vec![backlog[0], new[0], backlog[1], new[1]]);
    }

    #[test]
    fn a_message_already_active_or_being_acted_on_is_not_taken_twice() {
        let mut books = Books::new(10, 10);
        let all = ids(2);
        books.schedule(all[0], Due::At(0));
        books.schedule(all[0], Due::At(0));
        books.schedule(all[1], Due::At(0));
        books.admin.insert(all[1], Vec::new());
        books.fill();
        assert_eq!(books.ready, VecDeque::from(vec![all[0]]));
        assert!(books.waiting.is_empty(), "stale entries are dropped");
    }

    #[test]
    fn parked_messages_come_back_first_as_their_destination_has_room() {
        let mut books = Books::new(10, 10);
        let all = ids(4);
        for id in &all {
            books.active.insert(*id, Activity::Ready);
        }
        books.ready.push_back(all[3]);
        books
            .parked
            .insert("busy.test".into(), all[..3].iter().copied().collect());
        books.unpark(|_| 0);
        assert_eq!(
            books.ready,
            VecDeque::from(vec![all[3]]),
            "no room, no change"
        );
        books.unpark(|d| usize::from(d == "busy.test") * 2);
        assert_eq!(books.ready, VecDeque::from(vec![all[0], all[1], all[3]]));
        assert_eq!(books.parked["busy.test"], VecDeque::from(vec![all[2]]));
        // An operator's action took the last one out meanwhile: its entry is dropped.
        books.active.remove(&all[2]);
        books.unpark(|_| usize::MAX);
        assert!(books.parked.is_empty());
        assert_eq!(books.ready.len(), 3);
    }
}
