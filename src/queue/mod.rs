//! The durable queue: accepted messages on stable storage (`spool`), per-recipient delivery
//! state with persisted next-attempt times (`state`), the schedule of attempts and retries
//! (`scheduler`, `pass`, `scan`), and the operator's view and actions (`admin`, `command`,
//! `inspect`, `listing`).
//!
//! Mail flows in through [`Queue::enqueue`], out through the scheduler's passes; the queue
//! depends on delivery and dsn, never the other way round.

mod admin;
pub mod command;
mod index;
pub mod inspect;
mod notify;
mod pass;
mod recycle;
mod retry;
mod scan;
mod scheduler;
pub mod spool;
pub mod state;

pub use crate::queue_id::QueueId;
pub use admin::{operator_bounce_reply, Action, ActionReport, Tally};
pub use retry::{backoff, Decision};
pub use scheduler::Scheduler;

use crate::config::Config;
use crate::dsn::status_filter::StatusFilter;
use crate::envelope::Envelope;
use crate::reply::{EnhancedCode, Reply};
use crate::tls_policy::TlsPolicies;
use scheduler::Event;
use spool::Spool;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Handle to the queue; cheap to clone. The inbound server stores messages through it; the
/// scheduler takes the stored ones from it; the control socket sends it operators' actions.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    spool: Spool,
    /// Tells the scheduler about each newly stored message and each operator's action.
    events: mpsc::UnboundedSender<Event>,
    /// Taken by the scheduler when it starts; until then events wait here (arrivals are on
    /// disk as well, and the start-up scan finds them).
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
}

/// What the scheduler's passes and the operator's actions share.
pub(crate) struct Ctx {
    pub queue: Queue,
    pub config: Arc<Config>,
    /// The operator's minimum TLS levels: a bounce of mail a sender forced onto TLS carries
    /// the headers only.
    pub tls_policies: Arc<TlsPolicies>,
    /// `delivery.status_filter`, parsed once: applied to every failed attempt's reply before
    /// the queue decides between retry and bounce.
    pub status_filter: StatusFilter,
    /// Who hears of each recipient attempt besides the log.
    pub observers: Observers,
    /// Messages on hold: counted by the start-up scan, then moved by operators' actions (for
    /// the `mxguard_queue_messages` gauge; the spool is the truth).
    pub held: std::sync::atomic::AtomicI64,
}

/// Where each recipient attempt is recorded besides the delivery log line.
#[derive(Clone, Default)]
pub struct Observers {
    /// `[compliance] file`: the attempt as a JSON line.
    pub compliance: Option<Arc<crate::compliance::Log>>,
}

impl Queue {
    /// Opens (creating if needed) the spool under `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Queue> {
        let spool = Spool::open(dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Queue {
            inner: Arc::new(Inner {
                spool,
                events: tx,
                events_rx: Mutex::new(Some(rx)),
            }),
        })
    }

    /// Stores a message durably; returns only once message and envelope are on stable storage
    /// (the durability contract), or with the reply to give the client when that failed.
    pub async fn enqueue(&self, envelope: Envelope, message: Vec<u8>) -> Result<QueueId, Reply> {
        self.enqueue_as(QueueId::generate(), envelope, message)
            .await
    }

    /// As `enqueue`, under an id the caller generated (so it can appear in `Received:`).
    pub async fn enqueue_as(
        &self,
        id: QueueId,
        envelope: Envelope,
        message: Vec<u8>,
    ) -> Result<QueueId, Reply> {
        if let Err(e) = self.inner.spool.store(&id, &envelope, message).await {
            tracing::error!("{id}: cannot store message in the spool: {e}");
            return Err(Reply::new(
                451,
                EnhancedCode::new(4, 3, 0),
                "Error: queue file write error",
            ));
        }
        let _ = self.inner.events.send(Event::Arrived(id));
        Ok(id)
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    /// Asks the running scheduler to apply `action` to `ids`; `None` when no scheduler runs.
    pub async fn act(&self, action: Action, ids: Vec<QueueId>, by: String) -> Option<Tally> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .events
            .send(Event::Admin {
                action,
                ids,
                by,
                reply,
            })
            .ok()?;
        answer.await.ok()
    }

    /// The messages in the scheduler's active set; `None` when no scheduler runs.
    pub async fn active(&self) -> Option<Vec<QueueId>> {
        let (reply, answer) = oneshot::channel();
        self.inner.events.send(Event::Active { reply }).ok()?;
        answer.await.ok()
    }

    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.inner.events_rx.lock().ok()?.take()
    }
}

impl Ctx {
    pub(crate) fn new(queue: Queue, config: Arc<Config>, tls_policies: Arc<TlsPolicies>) -> Ctx {
        let status_filter = load_status_filter(&config);
        Ctx {
            queue,
            config,
            tls_policies,
            status_filter,
            observers: Observers::default(),
            held: std::sync::atomic::AtomicI64::new(0),
        }
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
