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
            Due::Held => held += 1,
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
