//! The durable queue: accepted messages on stable storage, per-recipient delivery state, and
//! the schedule of retries.

mod id;

pub use id::QueueId;

use crate::envelope::Envelope;
use crate::reply::Reply;
use std::path::Path;

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {}

impl Queue {
    /// Opens (creating if needed) the spool under `dir`.
    pub fn open(_dir: &Path) -> std::io::Result<Queue> {
        Ok(Queue {})
    }

    /// Stores a message durably; returns only once message and envelope are on stable storage
    /// (the durability contract), or with the reply to give the client when that failed.
    pub async fn enqueue(&self, _envelope: Envelope, _message: Vec<u8>) -> Result<QueueId, Reply> {
        Ok(QueueId::generate())
    }
}
