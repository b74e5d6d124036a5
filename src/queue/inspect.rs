//! The operator's view of the queue: one message as `queue show` and `queue list` present it,
//! the filters of the selectors, and the qshape-style summary. Read-only: the spool's message
//! files are written once and its state logs only appended to, so reading while the daemon
//! runs is safe.

use super::spool::Spool;
use super::state::{from_unix_secs, unix_secs, Hold, MessageState, RcptState};
use super::QueueId;
use crate::envelope::{domain_of, Envelope};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::io;
use std::time::SystemTime;

/// Where a message stands, as `queue list --state` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// In the scheduler's active set: due, or being delivered.
    Active,
    /// Waiting for its next attempt.
    Deferred,
    /// On hold.
    Hold,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Active => "active",
            MessageStatus::Deferred => "deferred",
            MessageStatus::Hold => "hold",
        }
    }

    pub fn parse(text: &str) -> Option<MessageStatus> {
        match text {
            "active" => Some(MessageStatus::Active),
            "deferred" => Some(MessageStatus::Deferred),
            "hold" => Some(MessageStatus::Hold),
            _ => None,
        }
    }
}

/// One queued message, as the operator sees it.
pub struct MessageView {
    pub id: QueueId,
    pub envelope: Envelope,
    pub size: u64,
    pub state: MessageState,
    pub status: MessageStatus,
}

/// Which messages a command is about. Every filter given must match; ids are alternatives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub ids: Vec<QueueId>,
    /// Lower-case; a message matches when a pending recipient is in it.
    pub domain: Option<String>,
    /// Lower-case; `""` is the null sender.
    pub sender: Option<String>,
    pub status: Option<MessageStatus>,
}

impl Filter {
    pub fn matches(&self, view: &MessageView) -> bool {
        let domain_ok = self.domain.as_ref().is_none_or(|d| {
            view.state
                .pending()
                .iter()
                .any(|&i| domain_of(&view.envelope.recipients[i].address) == *d)
        });
        let sender_ok = self
            .sender
            .as_ref()
            .is_none_or(|s| view.envelope.mail_from.eq_ignore_ascii_case(s));
        let status_ok = self.status.is_none_or(|s| s == view.status);
        let id_ok = self.ids.is_empty() || self.ids.contains(&view.id);
        domain_ok && sender_ok && status_ok && id_ok
    }
}

/// Reads message `id`; `None` when it is not (or no longer) in the queue.
pub fn view(
    spool: &Spool,
    id: QueueId,
    active: &HashSet<QueueId>,
) -> io::Result<Option<MessageView>> {
    let (envelope, size) = match spool.load_envelope(&id) {
        Ok(loaded) => loaded,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let records = spool.read_state(&id)?;
    let state = MessageState::replay(envelope.recipients.len(), &records);
    if state.pending().is_empty() {
        return Ok(None);
    }
    let status = if state.hold.is_some() {
        MessageStatus::Hold
    } else if active.contains(&id) {
        MessageStatus::Active
    } else {
        MessageStatus::Deferred
    };
    Ok(Some(MessageView {
        id,
        envelope,
        size,
        state,
        status,
    }))
}

/// Calls `each` for every message that matches, oldest first; unreadable ones are reported
/// to `unreadable` and skipped.
pub fn for_each(
    spool: &Spool,
    filter: &Filter,
    active: &HashSet<QueueId>,
    mut each: impl FnMut(&MessageView),
    mut unreadable: impl FnMut(QueueId, io::Error),
) -> io::Result<()> {
    for id in candidates(spool, filter)? {
        match view(spool, id, active) {
            Ok(Some(v)) if filter.matches(&v) => each(&v),
            Ok(_) => {}
            Err(e) => unreadable(id, e),
        }
    }
    Ok(())
}

/// The ids of the messages that match, oldest first: one list, filtered in place, so that an
/// action over 300,000 messages holds 16 bytes a message while it selects them.
pub fn select(spool: &Spool, filter: &Filter) -> io::Result<Vec<QueueId>> {
    let mut ids = candidates(spool, filter)?;
    let none = HashSet::new();
    ids.retain(|&id| match view(spool, id, &none) {
        Ok(Some(v)) => filter.matches(&v),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!("{id}: unreadable queue file: {e}");
            false
        }
    });
    ids.shrink_to_fit();
    Ok(ids)
}

/// The ids a filter names, or every message in the spool; oldest first.
fn candidates(spool: &Spool, filter: &Filter) -> io::Result<Vec<QueueId>> {
    if filter.ids.is_empty() {
        return spool.scan();
    }
    let mut ids = filter.ids.clone();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A pending recipient's status: a due one in an active message is `active`.
fn rcpt_status(view: &MessageView, rcpt: &RcptState, now: u64) -> MessageStatus {
    match view.status {
        MessageStatus::Active if rcpt.next_attempt().is_some_and(|t| t <= now) => {
            MessageStatus::Active
        }
        MessageStatus::Active => MessageStatus::Deferred,
        other => other,
    }
}

/// The JSON object of `queue list --json` and `queue show --json` (names documented in the
/// README: scripts depend on them).
pub fn to_json(view: &MessageView) -> Value {
    let now = unix_secs(SystemTime::now());
    let recipients: Vec<Value> = view
        .state
        .pending()
        .into_iter()
        .map(|i| {
            let rcpt = &view.state.rcpts[i];
            let (attempts, reply, next) = match rcpt {
                RcptState::Deferred {
                    attempts,
                    reply,
                    next_attempt,
                    ..
                } => (
                    *attempts,
                    reply.as_ref().map(|r| r.to_string()),
                    *next_attempt,
                ),
                RcptState::Done => (0, None, None),
            };
            let next = next
                .filter(|&t| t > now && view.status != MessageStatus::Hold)
                .map(|t| rfc3339(from_unix_secs(t)));
            json!({
                "address": view.envelope.recipients[i].address,
                "state": rcpt_status(view, rcpt, now).as_str(),
                "attempts": attempts,
                "next_attempt": next,
                "last_reply": reply,
            })
        })
        .collect();
    let hold = view
        .state
        .hold
        .as_ref()
        .map(|Hold { since, by }| json!({"since": rfc3339(from_unix_secs(*since)), "by": by}));
    json!({
        "id": view.id.to_string(),
        "sender": view.envelope.mail_from,
        "state": view.status.as_str(),
        "arrival": rfc3339(view.envelope.arrival),
        "size": view.size,
        "recipients": recipients,
        "hold": hold,
        "client": view.envelope.client.addr,
        "requiretls": view.envelope.requiretls,
    })
}

/// One entry of the mailq-style listing. As in Postfix, `*` after the id marks an active
/// message and `!` a held one.
pub fn mailq_entry(view: &MessageView) -> String {
    let mark = match view.status {
        MessageStatus::Active => "*",
        MessageStatus::Hold => "!",
        MessageStatus::Deferred => " ",
    };
    let when = time::OffsetDateTime::from(view.envelope.arrival)
        .format(&time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default();
    let mut out = format!(
        "{}{mark} {:>8} {when}  <{}>\n",
        view.id, view.size, view.envelope.mail_from
    );
    for i in view.state.pending() {
        if let RcptState::Deferred {
            reply: Some(reply),
            attempts,
            ..
        } = &view.state.rcpts[i]
        {
            let _ = writeln!(out, "{:>48}({reply}; {attempts} attempt(s))", "");
        }
        let _ = writeln!(out, "{:>50}<{}>", "", view.envelope.recipients[i].address);
    }
    out
}

pub const MAILQ_HEADER: &str =
    "-Queue ID--------- --Size-- ----Arrival Time---- -Sender/Recipient-------\n";

/// `queue show ID`: everything about one message.
pub fn show_text(view: &MessageView) -> String {
    let e = &view.envelope;
    let mut out = String::new();
    let _ = writeln!(out, "id: {}", view.id);
    let _ = writeln!(out, "state: {}", view.status.as_str());
    if let Some(h) = &view.state.hold {
        let _ = writeln!(
            out,
            "held: since {} by {}",
            rfc3339(from_unix_secs(h.since)),
            h.by
        );
    }
    let _ = writeln!(out, "sender: <{}>", e.mail_from);
    let _ = writeln!(out, "arrival: {}", rfc3339(e.arrival));
    let _ = writeln!(out, "size: {}", view.size);
    let _ = writeln!(out, "client: {} ({})", e.client.addr, e.client.helo);
    if e.requiretls {
        let _ = writeln!(out, "requiretls: yes");
    }
    let json = to_json(view);
    for r in json["recipients"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "recipient: <{}> state={} attempts={} next_attempt={} last_reply={}",
            r["address"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            r["attempts"],
            r["next_attempt"].as_str().unwrap_or("-"),
            r["last_reply"].as_str().unwrap_or("-"),
        );
    }
    out
}

/// Upper bounds of the age buckets, in minutes, as qshape(1) has them; the last bucket is
/// everything older.
pub const BUCKETS_MINUTES: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Counts for `queue summary`.
#[derive(Debug, Default)]
pub struct Summary {
    pub total: usize,
    pub active: usize,
    pub deferred: usize,
    pub hold: usize,
    /// Pending recipients per domain, by age bucket.
    pub domains: BTreeMap<String, [usize; 10]>,
}

impl Summary {
    pub fn add(&mut self, view: &MessageView, now: SystemTime) {
        self.total += 1;
        match view.status {
            MessageStatus::Active => self.active += 1,
            MessageStatus::Deferred => self.deferred += 1,
            MessageStatus::Hold => self.hold += 1,
        }
        let minutes = now
            .duration_since(view.envelope.arrival)
            .unwrap_or_default()
            .as_secs()
            / 60;
        let bucket = BUCKETS_MINUTES
            .iter()
            .position(|&b| minutes < b)
            .unwrap_or(BUCKETS_MINUTES.len());
        for i in view.state.pending() {
            let domain = domain_of(&view.envelope.recipients[i].address);
            self.domains.entry(domain).or_default()[bucket] += 1;
        }
    }

    pub fn to_json(&self) -> Value {
        let domains: Vec<Value> = self
            .domains
            .iter()
            .map(|(d, counts)| {
                json!({"domain": d, "total": counts.iter().sum::<usize>(), "counts": counts})
            })
            .collect();
        json!({
            "messages": {"total": self.total, "active": self.active,
                         "deferred": self.deferred, "hold": self.hold},
            "buckets_minutes": BUCKETS_MINUTES,
            "domains": domains,
        })
    }

    /// qshape's table: a row per domain (busiest first), a column per age bucket.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "messages: {} ({} active, {} deferred, {} on hold)\n",
            self.total, self.active, self.deferred, self.hold
        );
        let _ = write!(out, "{:>32} {:>6}", "", "T");
        for b in BUCKETS_MINUTES {
            let _ = write!(out, " {b:>5}");
        }
        let _ = writeln!(out, " {:>5}", "1280+");
        let mut totals = [0usize; 10];
        for counts in self.domains.values() {
            for (t, c) in totals.iter_mut().zip(counts) {
                *t += c;
            }
        }
        let mut rows: Vec<(&str, &[usize; 10])> =
            self.domains.iter().map(|(d, c)| (d.as_str(), c)).collect();
        rows.sort_by_key(|(d, c)| (std::cmp::Reverse(c.iter().sum::<usize>()), *d));
        for (domain, counts) in std::iter::once(("TOTAL", &totals)).chain(rows) {
            let _ = write!(out, "{domain:>32} {:>6}", counts.iter().sum::<usize>());
            for c in counts {
                let _ = write!(out, " {c:>5}");
            }
            out.push('\n');
        }
        out
    }
}
