//! The durable queue: accepted messages on stable storage (`spool`), per-recipient delivery
//! state, and the schedule of attempts and retries (`scheduler`).

mod listing;
mod retry;
mod scheduler;
pub mod spool;

pub use crate::queue_id::QueueId;
pub use listing::listing;
pub use retry::{backoff, Decision};
pub use scheduler::Scheduler;

use crate::envelope::Envelope;
use crate::reply::{EnhancedCode, Reply};
use spool::Spool;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Handle to the queue; cheap to clone. The inbound server stores messages through it; the
/// scheduler takes the stored ones from it.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    spool: Spool,
    /// Tells the scheduler about each newly stored message, so it is tried at once.
    arrivals: mpsc::UnboundedSender<QueueId>,
    /// Taken by the scheduler when it starts; until then arrivals wait here (and on disk).
    arrivals_rx: Mutex<Option<mpsc::UnboundedReceiver<QueueId>>>,
}

impl Queue {
    /// Opens (creating if needed) the spool under `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Queue> {
        let spool = Spool::open(dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Queue {
            inner: Arc::new(Inner {
                spool,
                arrivals: tx,
                arrivals_rx: Mutex::new(Some(rx)),
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
        let _ = self.inner.arrivals.send(id.clone());
        Ok(id)
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    fn take_arrivals(&self) -> Option<mpsc::UnboundedReceiver<QueueId>> {
        self.inner.arrivals_rx.lock().ok()?.take()
    }
}
