//! `mxguard queue …`: the operator's commands (postqueue and postsuper in one), as words on
//! the command line and as one request line on the control socket. The same parser reads
//! both, and the same [`Executor`] runs them in the daemon or, when none runs, in the command
//! line's own process.
//!
//! ```text
//! queue list [--domain D] [--sender S] [--state active|deferred|hold] [--json]
//! queue show ID [--json]
//! queue summary [--json]
//! queue flush|hold|release|delete|bounce|requeue [ID…] [--domain D] [--sender S] [--all]
//! ```

use super::inspect::{self, Filter, MessageStatus, Summary, MAILQ_HEADER};
use super::spool::Spool;
use super::{admin, Action, Ctx, Queue, QueueId, Tally};
use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    List { json: bool },
    Show { id: QueueId, json: bool },
    Summary { json: bool },
    Act(Action),
}

/// One queue command: what to do, and to which messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCommand {
    pub verb: Verb,
    pub filter: Filter,
    /// `--all`: an action on every message (an action without any selector is refused, so
    /// that a forgotten argument never deletes the whole queue).
    pub all: bool,
}

/// The answer's body: text, or chunks of a listing as it is read from the spool.
pub enum Body {
    Text(String),
    Stream(mpsc::Receiver<Vec<u8>>),
}

/// A command's outcome: `ok` is false when it failed or matched nothing.
pub struct Answer {
    pub ok: bool,
    pub body: Body,
}

impl Answer {
    fn text(ok: bool, text: String) -> Answer {
        Answer {
            ok,
            body: Body::Text(text),
        }
    }
}

const NO_MATCH: &str = "mxguard: no message matches\n";

impl QueueCommand {
    /// Parses the words after `queue` (none: `list`).
    pub fn parse(words: &[&str]) -> Result<QueueCommand, String> {
        let (verb_word, mut rest) = match words.split_first() {
            None => ("list", &[][..]),
            Some((w, rest)) if !w.starts_with("--") => (*w, rest),
            Some(_) => ("list", words),
        };
        let mut filter = Filter::default();
        let (mut json, mut all) = (false, false);
        let mut ids = Vec::new();
        while let Some((word, tail)) = rest.split_first() {
            rest = tail;
            let mut value = |name: &str| -> Result<String, String> {
                let (v, tail) = rest
                    .split_first()
                    .ok_or_else(|| format!("{name} needs a value"))?;
                rest = tail;
                Ok(v.to_string())
            };
            match *word {
                "--json" => json = true,
                "--all" => all = true,
                "--domain" => filter.domain = Some(normalize_domain(&value("--domain")?)?),
                "--sender" => filter.sender = Some(normalize_sender(&value("--sender")?)?),
                "--state" => {
                    let v = value("--state")?;
                    filter.status = Some(MessageStatus::parse(&v).ok_or_else(|| {
                        format!("--state {v:?}: expected active, deferred or hold")
                    })?);
                }
                w if w.starts_with("--") => return Err(format!("unknown option {w:?}")),
                w => ids.push(QueueId::parse(w).ok_or_else(|| format!("not a queue id: {w:?}"))?),
            }
        }
        let verb = match verb_word {
            "list" => Verb::List { json },
            "summary" => Verb::Summary { json },
            "show" => match ids.as_slice() {
                [id] => Verb::Show { id: *id, json },
                _ => return Err("show needs exactly one queue id".into()),
            },
            word => Verb::Act(match word {
                "flush" => Action::Flush {
                    domain: filter.domain.clone(),
                },
                "hold" => Action::Hold,
                "release" => Action::Release,
                "delete" => Action::Delete,
                "bounce" => Action::Bounce,
                "requeue" => Action::Requeue,
                other => return Err(format!("unknown queue command {other:?}")),
            }),
        };
        if let Verb::Act(action) = &verb {
            if ids.is_empty() && filter.domain.is_none() && filter.sender.is_none() && !all {
                return Err(format!(
                    "{} needs queue ids, --domain, --sender or --all",
                    action.verb()
                ));
            }
            if filter.status.is_some() {
                return Err("--state only filters listings".into());
            }
        }
        if !matches!(verb, Verb::Show { .. }) {
            filter.ids = ids;
        }
        Ok(QueueCommand { verb, filter, all })
    }

    /// The request line for the control socket (without `queue ` and the line end).
    pub fn to_words(&self) -> Vec<String> {
        let mut words = vec![match &self.verb {
            Verb::List { .. } => "list".to_string(),
            Verb::Show { .. } => "show".to_string(),
            Verb::Summary { .. } => "summary".to_string(),
            Verb::Act(a) => a.verb().to_string(),
        }];
        if let Verb::Show { id, .. } = &self.verb {
            words.push(id.to_string());
        }
        if let Verb::List { json: true }
        | Verb::Show { json: true, .. }
        | Verb::Summary { json: true } = &self.verb
        {
            words.push("--json".into());
        }
        words.extend(self.filter.ids.iter().map(QueueId::to_string));
        if let Some(d) = &self.filter.domain {
            words.extend(["--domain".to_string(), d.clone()]);
        }
        if let Some(s) = &self.filter.sender {
            let shown = if s.is_empty() {
                "<>".to_string()
            } else {
                s.clone()
            };
            words.extend(["--sender".to_string(), shown]);
        }
        if let Some(s) = self.filter.status {
            words.extend(["--state".to_string(), s.as_str().to_string()]);
        }
        if self.all {
            words.push("--all".into());
        }
        words
    }
}

fn normalize_domain(d: &str) -> Result<String, String> {
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    let ok =
        !d.is_empty() && d.len() <= 255 && !d.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(d).ok_or_else(|| "bad --domain".to_string())
}

fn normalize_sender(s: &str) -> Result<String, String> {
    let s = s.trim_start_matches('<').trim_end_matches('>');
    let ok = s.len() <= 512 && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then(|| s.to_ascii_lowercase())
        .ok_or_else(|| "bad --sender".to_string())
}

/// Runs queue commands: in the daemon, where actions go through the scheduler, or in the
/// command line's process when no daemon runs.
pub struct Executor {
    spool_access: SpoolAccess,
}

enum SpoolAccess {
    /// The daemon's queue, with its scheduler running.
    Daemon(Queue),
    /// No daemon, and the data directory's lock held: actions are applied here.
    Offline(Arc<Ctx>),
    /// No daemon, reading only (lists, show, summary).
    ReadOnly(Arc<Spool>),
}

impl Executor {
    pub fn daemon(queue: Queue) -> Executor {
        Executor {
            spool_access: SpoolAccess::Daemon(queue),
        }
    }

    /// For the command line with no daemon running and the data directory locked by the
    /// caller.
    pub fn offline(
        queue: Queue,
        config: Arc<crate::config::Config>,
        tls_policies: Arc<crate::tls_policy::TlsPolicies>,
    ) -> Executor {
        let mut ctx = Ctx::new(queue, config, tls_policies);
        // What the command line does to mail (delete, bounce) goes on the record too.
        ctx.observers.compliance = match crate::compliance::Log::open(&ctx.config.compliance) {
            Ok(log) => log.map(Arc::new),
            Err(e) => {
                tracing::error!("compliance.file: {e}; this action is in the log only");
                None
            }
        };
        Executor {
            spool_access: SpoolAccess::Offline(Arc::new(ctx)),
        }
    }

    pub fn read_only(spool_dir: &std::path::Path) -> Executor {
        Executor {
            spool_access: SpoolAccess::ReadOnly(Arc::new(Spool::open_read_only(spool_dir))),
        }
    }

    /// Runs `command`; `by` names who asked, for the log.
    pub async fn run(&self, command: &QueueCommand, by: &str) -> Answer {
        match &command.verb {
            Verb::List { json } => {
                let active = self.active().await;
                self.list(command.filter.clone(), active, *json)
            }
            Verb::Show { id, json } => self.show(*id, self.active().await, *json).await,
            Verb::Summary { json } => {
                let active = self.active().await;
                self.summary(command.filter.clone(), active, *json).await
            }
            Verb::Act(action) => self.act(command, action, by).await,
        }
    }

    /// The scheduler's active set, for telling `active` from `deferred` in a listing (an
    /// action does not need it: the scheduler itself knows what is busy).
    async fn active(&self) -> HashSet<QueueId> {
        match &self.spool_access {
            SpoolAccess::Daemon(queue) => queue
                .active()
                .await
                .unwrap_or_default()
                .into_iter()
                .collect(),
            _ => HashSet::new(),
        }
    }

    fn spool(&self) -> Arc<dyn SpoolRef> {
        match &self.spool_access {
            SpoolAccess::Daemon(q) => Arc::new(q.clone()),
            SpoolAccess::Offline(ctx) => Arc::new(ctx.queue.clone()),
            SpoolAccess::ReadOnly(s) => s.clone(),
        }
    }

    /// Streams the listing: the queue may hold 300,000 messages, and neither the daemon nor
    /// the command line should hold their listing in memory at once.
    fn list(&self, filter: Filter, active: HashSet<QueueId>, json: bool) -> Answer {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let spool = self.spool();
        tokio::task::spawn_blocking(move || {
            let mut chunk: Vec<u8> = Vec::with_capacity(64 * 1024);
            let (mut count, mut bytes) = (0usize, 0u64);
            let flush = |chunk: &mut Vec<u8>, force: bool| {
                if force || chunk.len() >= 60 * 1024 {
                    let _ = tx.blocking_send(std::mem::take(chunk));
                }
            };
            chunk.extend_from_slice(if json { b"[" } else { MAILQ_HEADER.as_bytes() });
            let result = inspect::for_each(
                spool.spool(),
                &filter,
                &active,
                |view| {
                    if json {
                        if count > 0 {
                            chunk.push(b',');
                        }
                        chunk.push(b'\n');
                        chunk.extend_from_slice(inspect::to_json(view).to_string().as_bytes());
                    } else {
                        chunk.extend_from_slice(inspect::mailq_entry(view).as_bytes());
                    }
                    count += 1;
                    bytes += view.size;
                    flush(&mut chunk, false);
                },
                |id, e| tracing::warn!("{id}: unreadable queue file: {e}"),
            );
            if let Err(e) = result {
                tracing::error!("queue list: {e}");
            }
            if json {
                chunk.extend_from_slice(b"\n]\n");
            } else if count == 0 {
                chunk = b"Mail queue is empty\n".to_vec();
            } else {
                let _ = writeln!(
                    Adapter(&mut chunk),
                    "-- {} Kbytes in {count} Request(s).",
                    bytes.div_ceil(1024)
                );
            }
            flush(&mut chunk, true);
        });
        Answer {
            ok: true,
            body: Body::Stream(rx),
        }
    }

    async fn show(&self, id: QueueId, active: HashSet<QueueId>, json: bool) -> Answer {
        let spool = self.spool();
        let shown = tokio::task::spawn_blocking(move || {
            inspect::view(spool.spool(), id, &active).map(|v| {
                v.map(|v| match json {
                    true => format!("{:#}\n", inspect::to_json(&v)),
                    false => inspect::show_text(&v),
                })
            })
        })
        .await;
        match shown {
            Ok(Ok(Some(text))) => Answer::text(true, text),
            Ok(Ok(None)) => Answer::text(false, NO_MATCH.into()),
            Ok(Err(e)) => Answer::text(false, format!("{id}: {e}\n")),
            Err(e) => Answer::text(false, format!("{e}\n")),
        }
    }

    async fn summary(&self, filter: Filter, active: HashSet<QueueId>, json: bool) -> Answer {
        let spool = self.spool();
        let summary = tokio::task::spawn_blocking(move || {
            let mut summary = Summary::default();
            let now = std::time::SystemTime::now();
            inspect::for_each(
                spool.spool(),
                &filter,
                &active,
                |v| summary.add(v, now),
                |_, _| {},
            )
            .map(|()| summary)
        })
        .await;
        match summary {
            Ok(Ok(s)) if json => Answer::text(true, format!("{}\n", s.to_json())),
            Ok(Ok(s)) => Answer::text(true, s.to_text()),
            Ok(Err(e)) => Answer::text(false, format!("{e}\n")),
            Err(e) => Answer::text(false, format!("{e}\n")),
        }
    }

    async fn act(&self, command: &QueueCommand, action: &Action, by: &str) -> Answer {
        let spool = self.spool();
        let filter = command.filter.clone();
        let ids =
            tokio::task::spawn_blocking(move || inspect::select(spool.spool(), &filter)).await;
        let ids = match ids {
            Ok(Ok(ids)) => ids,
            Ok(Err(e)) => return Answer::text(false, format!("{e}\n")),
            Err(e) => return Answer::text(false, format!("{e}\n")),
        };
        if ids.is_empty() {
            return Answer::text(false, NO_MATCH.into());
        }
        let tally = match &self.spool_access {
            SpoolAccess::Daemon(queue) => {
                match queue.act(action.clone(), ids, by.to_string()).await {
                    Some(tally) => tally,
                    None => return Answer::text(false, "the scheduler is not running\n".into()),
                }
            }
            SpoolAccess::Offline(ctx) => {
                let mut tally = Tally::default();
                for id in ids {
                    tally.add(admin::apply(ctx, id, action, by, Vec::new()).await.report);
                }
                tally
            }
            SpoolAccess::ReadOnly(_) => {
                return Answer::text(false, "no daemon runs and the spool is not locked\n".into())
            }
        };
        Answer::text(tally.ok(), tally.render())
    }
}

/// The spool, however the executor reaches it.
trait SpoolRef: Send + Sync {
    fn spool(&self) -> &Spool;
}

impl SpoolRef for Queue {
    fn spool(&self) -> &Spool {
        Queue::spool(self)
    }
}

impl SpoolRef for Spool {
    fn spool(&self) -> &Spool {
        self
    }
}

/// `write!` into a byte buffer.
struct Adapter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Adapter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(words: &str) -> QueueCommand {
        let w: Vec<&str> = words.split_whitespace().collect();
        QueueCommand::parse(&w).unwrap_or_else(|e| panic!("{words:?}: {e}"))
    }

    fn bad(words: &str) -> String {
        let w: Vec<&str> = words.split_whitespace().collect();
        QueueCommand::parse(&w).expect_err(words)
    }

    #[test]
    fn parses_listings_and_their_filters() {
        assert_eq!(good("").verb, Verb::List { json: false });
        let c = good("list --domain Example.COM. --sender <Alice@X.test> --state hold --json");
        assert_eq!(c.verb, Verb::List { json: true });
        assert_eq!(c.filter.domain.as_deref(), Some("example.com"));
        assert_eq!(c.filter.sender.as_deref(), Some("alice@x.test"));
        assert_eq!(c.filter.status, Some(MessageStatus::Hold));
        assert_eq!(good("list --sender <>").filter.sender.as_deref(), Some(""));
        let s = good("show 0123456789ABC0001 --json");
        assert!(matches!(s.verb, Verb::Show { json: true, .. }));
        assert_eq!(good("summary --json").verb, Verb::Summary { json: true });
    }

    #[test]
    fn parses_actions_and_refuses_an_action_without_a_selector() {
        let c = good("flush --domain a.test");
        assert_eq!(
            c.verb,
            Verb::Act(Action::Flush {
                domain: Some("a.test".into())
            })
        );
        assert_eq!(good("hold --all").verb, Verb::Act(Action::Hold));
        let ids = good("delete 0123456789ABC0001 0123456789ABC0002");
        assert_eq!(ids.filter.ids.len(), 2);
        assert!(bad("delete").contains("needs queue ids"));
        assert!(bad("bounce --state hold --all").contains("--state"));
        assert!(bad("frobnicate --all").contains("unknown queue command"));
        assert!(bad("hold not-an-id").contains("not a queue id"));
        assert!(bad("list --domain").contains("needs a value"));
        assert!(bad("list --colour").contains("unknown option"));
        assert!(bad("show").contains("exactly one"));
    }

    #[test]
    fn words_round_trip() {
        for words in [
            "list --json --domain a.test --sender <> --state active",
            "show 0123456789ABC0001 --json",
            "summary",
            "flush 0123456789ABC0001 --domain b.test",
            "requeue --sender x@y.test --all",
        ] {
            let c = good(words);
            let again: Vec<String> = c.to_words();
            let refs: Vec<&str> = again.iter().map(String::as_str).collect();
            assert_eq!(QueueCommand::parse(&refs), Ok(c), "{words}");
        }
    }
}
