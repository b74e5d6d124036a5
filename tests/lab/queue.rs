//! Queue administration from the lab: `mxguard queue list|show|summary --json` parsed into
//! types, and waiting for the queue to reach a state. The wire format is issue 11's: a list is a
//! JSON array of messages, each with its pending recipients; `summary` counts messages by state
//! and pending recipients by domain and age.
//!
//! Unknown fields are ignored, missing ones are an error (the test shows the JSON it got).

use super::relay::Relay;
use serde::Deserialize;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// One element of `mxguard queue list --json` (and the object `queue show ID --json` prints).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct QueuedMessage {
    pub id: String,
    pub sender: String,
    /// `active`, `deferred` or `hold`.
    pub state: String,
    /// RFC 3339.
    pub arrival: String,
    pub size: u64,
    /// Pending recipients only.
    pub recipients: Vec<QueuedRecipient>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct QueuedRecipient {
    pub address: String,
    pub state: String,
    pub attempts: u32,
    /// RFC 3339; null when due now or held.
    pub next_attempt: Option<String>,
    /// Null before the first attempt.
    pub last_reply: Option<String>,
}

impl QueuedMessage {
    /// The pending recipient `address`; panics when it is not listed.
    #[track_caller]
    pub fn recipient(&self, address: &str) -> &QueuedRecipient {
        self.recipients
            .iter()
            .find(|r| r.address.eq_ignore_ascii_case(address))
            .unwrap_or_else(|| panic!("{address} is not a pending recipient of {self:#?}"))
    }

    pub fn addresses(&self) -> Vec<&str> {
        self.recipients.iter().map(|r| r.address.as_str()).collect()
    }
}

/// `mxguard queue summary --json`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Summary {
    pub messages: Counts,
    pub buckets_minutes: Vec<u64>,
    pub domains: Vec<DomainAges>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub active: u64,
    pub deferred: u64,
    pub hold: u64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct DomainAges {
    pub domain: String,
    pub total: u64,
    /// Pending recipients by age: one more than `buckets_minutes` (the last is "older").
    pub counts: Vec<u64>,
}

impl Relay {
    /// `queue list --json FILTERS…`. A filter that matches nothing may answer `[]` or, like an
    /// action's selector, exit 1 with "no message matches": both are an empty list here.
    pub async fn list(&self, filters: &[&str]) -> Vec<QueuedMessage> {
        let mut args = vec!["list", "--json"];
        args.extend_from_slice(filters);
        let out = self.queue(&args).await;
        if out.status == 1 && out.stderr.contains("no message matches") {
            return Vec::new();
        }
        out.ok().json()
    }

    /// The ids `queue list --json FILTERS…` lists, sorted.
    pub async fn listed_ids(&self, filters: &[&str]) -> Vec<String> {
        let mut ids: Vec<String> = self.list(filters).await.into_iter().map(|m| m.id).collect();
        ids.sort();
        ids
    }

    /// Message `id` as `queue list --json` shows it, if it is queued.
    pub async fn queued(&self, id: &str) -> Option<QueuedMessage> {
        self.list(&[]).await.into_iter().find(|m| m.id == id)
    }

    /// `queue show ID --json`, which must succeed.
    pub async fn show(&self, id: &str) -> QueuedMessage {
        self.queue(&["show", id, "--json"]).await.ok().json()
    }

    /// `queue summary --json`, which must succeed.
    pub async fn summary(&self) -> Summary {
        self.queue(&["summary", "--json"]).await.ok().json()
    }

    /// Polls `queue list --json` until message `id` is in `state` (`hold`, `deferred`, …), or
    /// gone when `state` is `None`; returns the last listing of it. Panics after `timeout`.
    pub async fn wait_for_queue_state(
        &self,
        id: &str,
        state: Option<&str>,
        timeout: Duration,
    ) -> Option<QueuedMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = self.queued(id).await;
            if now.as_ref().map(|m| m.state.as_str()) == state {
                return now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id}: want {} within {timeout:?}, have {now:#?}",
                state.map_or("gone from the queue".to_string(), |s| format!("state {s}"))
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Files in `spool/msg` and `spool/state` under `data_dir` (0, 0 when the spool is empty).
pub fn spool_files(data_dir: &Path) -> (usize, usize) {
    let count = |d: &str| {
        std::fs::read_dir(data_dir.join("spool").join(d))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    (count("msg"), count("state"))
}

/// Waits until the spool under `data_dir` holds no message and no state log.
pub async fn wait_for_empty_spool(data_dir: &Path, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (msg, state) = spool_files(data_dir);
        if msg == 0 && state == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spool still holds {msg} message file(s) and {state} state log(s) after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parses an RFC 3339 date-time (`2026-12-06T21:00:00Z`, fractions and `±HH:MM` offsets too);
/// panics with the text when it is not one.
#[track_caller]
pub fn rfc3339(text: &str) -> SystemTime {
    let shape =
        regex::Regex::new(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?)(Z|[+-]\d{2}:\d{2})$")
            .unwrap();
    let caps = shape
        .captures(text)
        .unwrap_or_else(|| panic!("not an RFC 3339 date-time: {text:?}"));
    let utc = humantime::parse_rfc3339(&format!("{}Z", &caps[1]))
        .unwrap_or_else(|e| panic!("not an RFC 3339 date-time: {text:?}: {e}"));
    let offset = &caps[2];
    if offset == "Z" {
        return utc;
    }
    let (h, m) = (&offset[1..3], &offset[4..6]);
    let secs = h.parse::<u64>().unwrap() * 3600 + m.parse::<u64>().unwrap() * 60;
    // Local time = UTC + offset, so UTC = local − offset.
    if offset.starts_with('+') {
        utc - Duration::from_secs(secs)
    } else {
        utc + Duration::from_secs(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_forms() {
        let z = rfc3339("2026-12-06T21:00:00Z");
        assert_eq!(rfc3339("2026-12-06T22:00:00+01:00"), z);
        assert_eq!(rfc3339("2026-12-06T20:30:00-00:30"), z);
        assert_eq!(
            rfc3339("2026-12-06T21:00:00.250Z"),
            z + Duration::from_millis(250)
        );
    }
}
