//! The start-up scan: reads the spool in the background and hands the scheduler each
//! message's next due time, oldest first, in batches, while the listeners already accept mail
//! and due mail already leaves. Nothing but ids and times is kept: 300,000 queued messages
//! cost the scheduler a few megabytes, not their envelopes.

use super::state::{Due, MessageState};
use super::{Ctx, QueueId};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Messages handed over at a time.
const BATCH: usize = 512;

/// Starts the scan on a blocking thread; `tx` closes when it is done.
pub(crate) fn start(ctx: Arc<Ctx>, tx: mpsc::Sender<Vec<(QueueId, u64)>>) {
    tokio::task::spawn_blocking(move || scan(&ctx, &tx));
}

fn scan(ctx: &Ctx, tx: &mpsc::Sender<Vec<(QueueId, u64)>>) {
    let started = Instant::now();
    let spool = ctx.queue.spool();
    let ids = match spool.scan() {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!("queue: cannot scan the spool: {e}");
            return;
        }
    };
    let (mut held, mut due_now) = (0usize, 0usize);
    let total = ids.len();
    let now = super::state::unix_secs(std::time::SystemTime::now());
    let mut batch = Vec::with_capacity(BATCH);
    for id in ids {
        let due = match spool
            .load_envelope(&id)
            .and_then(|(envelope, _)| Ok((envelope, spool.read_state(&id)?)))
        {
            Ok((envelope, records)) => {
                MessageState::replay(envelope.recipients.len(), &records).due()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::error!("{id}: unreadable queue file, moved to spool/corrupt: {e}");
                let _ = spool.quarantine(&id);
                continue;
            }
            // Unreadable for now (I/O error): try it in a minute, when the pass will say more.
            Err(e) => {
                tracing::error!("{id}: cannot read the queue file: {e}");
                Due::At(now + 60)
            }
        };
        match due {
            Due::At(t) => {
                due_now += usize::from(t <= now);
                batch.push((id, t));
            }
            Due::Held => {
                held += 1;
                ctx.held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Due::Finished => super::pass::remove(ctx, &id),
        }
        if batch.len() >= BATCH && tx.blocking_send(std::mem::take(&mut batch)).is_err() {
            return;
        }
    }
    if !batch.is_empty() && tx.blocking_send(batch).is_err() {
        return;
    }
    tracing::info!(
        "queue: spool scan done: {total} message(s), {held} held, {due_now} due now, in {:.2}s",
        started.elapsed().as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, Recipient};
    use crate::queue::state::{LogRecord, MessageEvent, MessageRecord, RcptState, StateRecord};
    use crate::queue::Queue;

    async fn store(queue: &Queue) -> QueueId {
        let mut envelope = Envelope::new("alice@example.org");
        envelope.recipients.push(Recipient::new("bob@example.net"));
        queue.enqueue(envelope, b"x\r\n".to_vec()).await.unwrap()
    }

    fn record(queue: &Queue, id: &QueueId, record: LogRecord) {
        queue.spool().append(id, &[record]).unwrap();
    }

    /// The scan hands over batches while it is still reading (the scheduler delivers meanwhile),
    /// oldest first, with each message's persisted due time; held messages wait for a release,
    /// finished ones are removed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_arrive_while_the_scan_goes_on_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for _ in 0..(BATCH * 3 + 7) {
            ids.push(store(&queue).await);
        }
        let (deferred, held, finished) = (ids[1], ids[2], ids[3]);
        let later = RcptState::Deferred {
            attempts: 1,
            reply: None,
            warned: false,
            next_attempt: Some(4_000_000_000),
            retry: Some(1),
        };
        record(
            &queue,
            &deferred,
            LogRecord::Rcpt(StateRecord {
                rcpt: 0,
                state: later,
            }),
        );
        let hold = MessageRecord {
            event: MessageEvent::Hold,
            at: 1,
            by: "test".into(),
        };
        record(&queue, &held, LogRecord::Message(hold));
        let done = StateRecord {
            rcpt: 0,
            state: RcptState::Done,
        };
        record(&queue, &finished, LogRecord::Rcpt(done));

        let config = Arc::new(crate::config::Config::default());
        let tables = Arc::new(crate::tls_policy::TlsPolicies::open(None, None).unwrap());
        let ctx = Arc::new(Ctx::new(queue.clone(), config, tables));
        // Room for one batch: the scan cannot finish before the first one is taken.
        let (tx, mut rx) = mpsc::channel(1);
        start(ctx, tx);
        let first = rx.recv().await.unwrap();
        assert_eq!(first.len(), BATCH);
        let mut all = first;
        while let Some(batch) = rx.recv().await {
            all.extend(batch);
        }
        let scanned: Vec<QueueId> = all.iter().map(|(id, _)| *id).collect();
        let expected: Vec<QueueId> = ids
            .iter()
            .copied()
            .filter(|id| *id != held && *id != finished)
            .collect();
        assert_eq!(
            scanned, expected,
            "oldest first; held and finished left out"
        );
        let due: std::collections::HashMap<QueueId, u64> = all.into_iter().collect();
        assert_eq!(due[&deferred], 4_000_000_000, "the persisted backoff");
        assert_eq!(due[&ids[0]], 0, "never tried: due at once");
        assert!(
            !queue.spool().contains(&finished),
            "a finished message is removed"
        );
        assert!(queue.spool().contains(&held));
    }
}
