//! Per-message delivery state: what `state/ID` records, and what a replay of it means.
//!
//! The state log is append-only, one JSON record a line. Two kinds of record:
//! - a recipient record: what became of one recipient after an attempt or an operator's action
//!   (`Deferred` with the attempt count, the last reply and the persisted **next-attempt time**,
//!   or `Done`); the last record of a recipient wins;
//! - a message record: an operator put the message on hold, or released it (postsuper -h/-H).
//!
//! Everything the scheduler needs to know about a message after a restart is here, so a
//! restart honours every backoff: a recipient whose `next_attempt` lies in the future is not
//! tried before it. The decisions (who is due, when the message is next due) are pure functions.

use crate::reply::Reply;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What became of one recipient, as recorded in `state/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// Index into the envelope's recipients.
    pub rcpt: usize,
    pub state: RcptState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RcptState {
    /// Not yet done.
    Deferred {
        /// Attempts made so far (shown to operators; never reset).
        attempts: u32,
        /// The last transient reply.
        reply: Option<Reply>,
        /// A delay warning (RFC 3461 "delayed" DSN) was already sent.
        #[serde(default)]
        warned: bool,
        /// Not to be tried before this (Unix seconds); `None`: due at once. Records written
        /// before this field existed replay as due at once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_attempt: Option<u64>,
        /// Failed attempts since the backoff was last reset (`queue flush`, `requeue`): the
        /// exponent of the next backoff. `None` in old records: `attempts` counts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry: Option<u32>,
    },
    /// Delivered, bounced with the bounce safely queued, or deleted: nothing more to do.
    Done,
}

impl RcptState {
    /// A recipient nobody has tried yet.
    pub fn fresh() -> RcptState {
        RcptState::Deferred {
            attempts: 0,
            reply: None,
            warned: false,
            next_attempt: None,
            retry: None,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, RcptState::Done)
    }

    /// Failed attempts that count for the backoff.
    pub fn retry_step(&self) -> u32 {
        match self {
            RcptState::Deferred {
                attempts, retry, ..
            } => retry.unwrap_or(*attempts),
            RcptState::Done => 0,
        }
    }

    /// When this recipient may be tried next; `None` when done.
    pub fn next_attempt(&self) -> Option<u64> {
        match self {
            RcptState::Deferred { next_attempt, .. } => Some(next_attempt.unwrap_or(0)),
            RcptState::Done => None,
        }
    }

    /// The same recipient, due at once with its backoff reset (flush, requeue).
    pub fn due_now(&self) -> RcptState {
        match self {
            RcptState::Deferred {
                attempts,
                reply,
                warned,
                ..
            } => RcptState::Deferred {
                attempts: *attempts,
                reply: reply.clone(),
                warned: *warned,
                next_attempt: None,
                retry: Some(0),
            },
            RcptState::Done => RcptState::Done,
        }
    }
}

/// An operator's action on the whole message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageEvent {
    Hold,
    Release,
}

/// A message-level line of the state log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub event: MessageEvent,
    /// Unix seconds.
    pub at: u64,
    /// Who asked (`uid 0, pid 1234`), for the operator reading `queue show`.
    pub by: String,
}

/// One line of `state/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogRecord {
    Rcpt(StateRecord),
    Message(MessageRecord),
}

/// Who held a message, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub since: u64,
    pub by: String,
}

/// A message's state, replayed from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageState {
    /// One per envelope recipient.
    pub rcpts: Vec<RcptState>,
    /// Set while an operator holds the message: it is never tried, and does not expire.
    pub hold: Option<Hold>,
}

/// When a message is next due, as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Not before this (Unix seconds; 0 or a past time: now).
    At(u64),
    /// On hold: only a release brings it back.
    Held,
    /// Every recipient is done.
    Finished,
}

impl MessageState {
    /// Replays `records` over a message of `recipients` recipients; records that name a
    /// recipient the envelope does not have are ignored.
    pub fn replay(recipients: usize, records: &[LogRecord]) -> MessageState {
        let mut state = MessageState {
            rcpts: vec![RcptState::fresh(); recipients],
            hold: None,
        };
        for record in records {
            state.apply(record);
        }
        state
    }

    pub fn apply(&mut self, record: &LogRecord) {
        match record {
            LogRecord::Rcpt(r) => {
                if let Some(s) = self.rcpts.get_mut(r.rcpt) {
                    *s = r.state.clone();
                }
            }
            LogRecord::Message(m) => match m.event {
                MessageEvent::Hold => {
                    self.hold = Some(Hold {
                        since: m.at,
                        by: m.by.clone(),
                    })
                }
                MessageEvent::Release => self.hold = None,
            },
        }
    }

    /// Recipients not yet done.
    pub fn pending(&self) -> Vec<usize> {
        (0..self.rcpts.len())
            .filter(|&i| !self.rcpts[i].is_done())
            .collect()
    }

    /// Pending recipients whose time has come at `now` (Unix seconds); none while held.
    pub fn due_recipients(&self, now: u64) -> Vec<usize> {
        if self.hold.is_some() {
            return Vec::new();
        }
        (0..self.rcpts.len())
            .filter(|&i| self.rcpts[i].next_attempt().is_some_and(|t| t <= now))
            .collect()
    }

    /// When the message is next due: its earliest pending recipient.
    pub fn due(&self) -> Due {
        let earliest = self.rcpts.iter().filter_map(RcptState::next_attempt).min();
        match (earliest, &self.hold) {
            (None, _) => Due::Finished,
            (Some(_), Some(_)) => Due::Held,
            (Some(t), None) => Due::At(t),
        }
    }
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The moment `secs` Unix seconds.
pub fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deferred(attempts: u32, next: Option<u64>) -> RcptState {
        RcptState::Deferred {
            attempts,
            reply: None,
            warned: false,
            next_attempt: next,
            retry: None,
        }
    }

    fn rcpt(i: usize, state: RcptState) -> LogRecord {
        LogRecord::Rcpt(StateRecord { rcpt: i, state })
    }

    fn event(event: MessageEvent) -> LogRecord {
        LogRecord::Message(MessageRecord {
            event,
            at: 100,
            by: "uid 0".into(),
        })
    }

    #[test]
    fn a_message_never_tried_is_due_at_once() {
        let s = MessageState::replay(2, &[]);
        assert_eq!(s.due(), Due::At(0));
        assert_eq!(s.due_recipients(50), vec![0, 1]);
    }

    #[test]
    fn the_earliest_pending_recipient_sets_the_due_time() {
        let s = MessageState::replay(
            3,
            &[
                rcpt(0, deferred(1, Some(500))),
                rcpt(1, deferred(2, Some(300))),
                rcpt(2, RcptState::Done),
            ],
        );
        assert_eq!(s.due(), Due::At(300));
        assert!(s.due_recipients(299).is_empty(), "backoff honoured");
        assert_eq!(s.due_recipients(300), vec![1]);
        assert_eq!(s.due_recipients(600), vec![0, 1]);
        assert_eq!(s.pending(), vec![0, 1]);
    }

    #[test]
    fn hold_stops_everything_until_release() {
        let mut s = MessageState::replay(1, &[event(MessageEvent::Hold)]);
        assert_eq!(s.due(), Due::Held);
        assert!(s.due_recipients(u64::MAX).is_empty());
        s.apply(&event(MessageEvent::Release));
        assert_eq!(s.due(), Due::At(0));
    }

    #[test]
    fn all_done_is_finished_even_when_held() {
        let s = MessageState::replay(1, &[event(MessageEvent::Hold), rcpt(0, RcptState::Done)]);
        assert_eq!(s.due(), Due::Finished);
    }

    #[test]
    fn due_now_resets_the_backoff_but_keeps_the_history() {
        let r = RcptState::Deferred {
            attempts: 5,
            reply: Some(Reply::from_remote(451, "4.3.0 later")),
            warned: true,
            next_attempt: Some(9999),
            retry: None,
        };
        assert_eq!(r.retry_step(), 5);
        let flushed = r.due_now();
        assert_eq!(flushed.retry_step(), 0);
        assert_eq!(flushed.next_attempt(), Some(0));
        let RcptState::Deferred {
            attempts, warned, ..
        } = flushed
        else {
            panic!("still deferred")
        };
        assert_eq!((attempts, warned), (5, true));
    }

    #[test]
    fn log_lines_of_both_kinds_round_trip_and_old_records_still_read() {
        for record in [
            rcpt(0, deferred(1, Some(1234))),
            rcpt(1, RcptState::Done),
            event(MessageEvent::Hold),
        ] {
            let line = serde_json::to_string(&record).unwrap();
            assert_eq!(serde_json::from_str::<LogRecord>(&line).unwrap(), record);
        }
        // A record of the previous release: no next_attempt, no retry.
        let old =
            r#"{"rcpt":0,"state":{"state":"deferred","attempts":3,"reply":null,"warned":false}}"#;
        let LogRecord::Rcpt(r) = serde_json::from_str::<LogRecord>(old).unwrap() else {
            panic!("a recipient record")
        };
        assert_eq!(r.state.next_attempt(), Some(0));
        assert_eq!(r.state.retry_step(), 3);
    }
}
