//! Queue ids: short, unique, sortable by arrival, safe as file names (upper-case hex, as
//! Postfix's short ids look): 13 hex digits of microseconds since the epoch, then 4 of a
//! per-process counter.
//!
//! Held as two integers rather than text: the scheduler keeps one id per queued message in
//! memory, and at 300,000 messages a `String` each would be most of its footprint.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Orders as the text does (fixed-width hex): by arrival, then counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    micros: u64,
    counter: u16,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 13 hex digits.
const MICROS_MAX: u64 = (1 << 52) - 1;

impl QueueId {
    /// Microseconds since the epoch, then a per-process counter: unique within a process and,
    /// because a restart takes longer than a microsecond, across restarts too. The spool still
    /// creates files with `create_new`, so a clash is an error, never an overwrite.
    pub fn generate() -> QueueId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
            & MICROS_MAX;
        let counter = (COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF) as u16;
        QueueId { micros, counter }
    }

    /// Accepts only what `generate` makes, so a stray file in the spool is never mistaken for mail.
    pub fn parse(text: &str) -> Option<QueueId> {
        let well_formed = text.len() == 17
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        if !well_formed {
            return None;
        }
        Some(QueueId {
            micros: u64::from_str_radix(&text[..13], 16).ok()?,
            counter: u16::from_str_radix(&text[13..], 16).ok()?,
        })
    }

    /// The id as text: the spool's file name and what every log line shows.
    pub fn as_str(&self) -> String {
        self.to_string()
    }

    /// When the message arrived, as the id records it.
    pub fn arrival(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_micros(self.micros)
    }
}

/// `n` fresh ids in arrival order, for tests.
#[cfg(test)]
pub(crate) fn sorted_ids(n: usize) -> Vec<QueueId> {
    let mut ids: Vec<QueueId> = (0..n).map(|_| QueueId::generate()).collect();
    ids.sort();
    ids
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:013X}{:04X}", self.micros, self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_and_parseable() {
        let a = QueueId::generate();
        let b = QueueId::generate();
        assert_ne!(a, b);
        assert_eq!(QueueId::parse(&a.as_str()), Some(a));
        assert_eq!(QueueId::parse("../etc/passwd"), None);
        assert_eq!(QueueId::parse("0123456789abcdef0"), None);
        assert_eq!(QueueId::parse("0123456789ABCDEF0+"), None);
    }

    #[test]
    fn text_round_trips_and_order_follows_the_text() {
        let texts = [
            "0000000000000FFFF",
            "0123456789ABC0001",
            "FFFFFFFFFFFFF0000",
        ];
        let ids: Vec<QueueId> = texts.iter().map(|t| QueueId::parse(t).unwrap()).collect();
        for (id, text) in ids.iter().zip(texts) {
            assert_eq!(id.to_string(), text);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(std::mem::size_of::<QueueId>(), 16);
    }
}
