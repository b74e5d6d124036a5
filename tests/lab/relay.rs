//! The relay under test: the real `mxguard` binary as a subprocess (`mxguard serve --config
//! FILE`), configured for the lab through ordinary configuration only — the lab's name server,
//! the lab's SMTP port for MX hosts, the lab CA as an extra trust root, short retry times.
//!
//! Its log (tracing, on stderr) is captured line by line so a test can wait for an event such as
//! the delivery log line (DESIGN.md, "The delivery log line").

use super::submit::{submit_ok, Submission};
use super::WAIT;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Everything the lab puts in the relay's TOML file. Start from [`crate::lab::Lab::relay_config`].
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub nameserver: SocketAddr,
    /// `validate` needs a trust anchor for the lab; until zones are signed the lab says
    /// `trust-ad` (the lab server never sets AD, so every answer is insecure).
    pub dnssec: String,
    pub smtp_port: u16,
    pub extra_ca_files: Vec<PathBuf>,
    pub min_backoff: String,
    pub max_backoff: String,
    pub max_lifetime: Option<String>,
    /// `[[route]]`s: `(domain, next_hop)`.
    pub routes: Vec<(String, String)>,
    /// Raw TOML merged over what the fields above produce (tables are merged key by key).
    pub extra: toml::Table,
}

impl RelayConfig {
    /// Adds a static route, e.g. `("example.test", "[127.1.2.3]:2525")`.
    pub fn route(mut self, domain: &str, next_hop: &str) -> RelayConfig {
        self.routes.push((domain.into(), next_hop.into()));
        self
    }

    pub fn max_lifetime(mut self, lifetime: &str) -> RelayConfig {
        self.max_lifetime = Some(lifetime.into());
        self
    }

    /// Merges a TOML snippet, e.g. `"[delivery]\nconnect_timeout = \"5s\""`.
    pub fn toml(mut self, snippet: &str) -> RelayConfig {
        let table: toml::Table = snippet
            .parse()
            .unwrap_or_else(|e| panic!("bad TOML snippet {snippet:?}: {e}"));
        merge(&mut self.extra, table);
        self
    }

    /// The configuration file's text.
    pub fn render(&self) -> String {
        let mut doc = toml::Table::new();
        let s = |v: &str| toml::Value::String(v.to_string());
        doc.insert("hostname".into(), s(&self.hostname));
        doc.insert("data_dir".into(), s(&self.data_dir.to_string_lossy()));
        let mut listener = toml::Table::new();
        listener.insert("address".into(), s(&self.listen.to_string()));
        doc.insert(
            "listener".into(),
            toml::Value::Array(vec![toml::Value::Table(listener)]),
        );
        let mut dns = toml::Table::new();
        dns.insert(
            "nameservers".into(),
            toml::Value::Array(vec![s(&self.nameserver.to_string())]),
        );
        dns.insert("dnssec".into(), s(&self.dnssec));
        doc.insert("dns".into(), toml::Value::Table(dns));
        let mut delivery = toml::Table::new();
        delivery.insert(
            "smtp_port".into(),
            toml::Value::Integer(self.smtp_port.into()),
        );
        delivery.insert(
            "extra_ca_files".into(),
            toml::Value::Array(
                self.extra_ca_files
                    .iter()
                    .map(|p| s(&p.to_string_lossy()))
                    .collect(),
            ),
        );
        delivery.insert("connect_timeout".into(), s("5s"));
        doc.insert("delivery".into(), toml::Value::Table(delivery));
        let mut queue = toml::Table::new();
        queue.insert("min_backoff".into(), s(&self.min_backoff));
        queue.insert("max_backoff".into(), s(&self.max_backoff));
        if let Some(l) = &self.max_lifetime {
            queue.insert("max_lifetime".into(), s(l));
        }
        doc.insert("queue".into(), toml::Value::Table(queue));
        if !self.routes.is_empty() {
            let routes = self
                .routes
                .iter()
                .map(|(d, h)| {
                    let mut t = toml::Table::new();
                    t.insert("domain".into(), s(d));
                    t.insert("next_hop".into(), s(h));
                    toml::Value::Table(t)
                })
                .collect();
            doc.insert("route".into(), toml::Value::Array(routes));
        }
        merge(&mut doc, self.extra.clone());
        toml::to_string(&doc).expect("TOML serialises")
    }
}

/// `mxguard ARGS --config FILE` with the lab's log settings and no standard input.
fn mxguard_command(args: &[&str], config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mxguard"));
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("MXGUARD_LAB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Deep merge: tables merge key by key, anything else replaces.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// The relay's log lines so far, and a signal for each new one.
struct Log {
    lines: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
}

impl Log {
    fn push(&self, line: String) {
        let n = {
            let mut lines = self.lines.lock().unwrap();
            lines.push(line);
            lines.len()
        };
        self.count.send_replace(n);
    }
}

/// A running (or stopped) relay. Killed on drop.
pub struct Relay {
    pub config: RelayConfig,
    config_path: PathBuf,
    child: Option<Child>,
    log: Arc<Log>,
}

/// How long start-up and shutdown may take on a busy two-core machine.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

impl Relay {
    /// Writes the configuration into `dir` and starts the relay; returns once it accepts
    /// connections.
    pub async fn start(config: RelayConfig, dir: &Path) -> Relay {
        let config_path = dir.join("mxguard.toml");
        std::fs::write(&config_path, config.render()).expect("write relay config");
        let (count, _) = watch::channel(0);
        let mut relay = Relay {
            config,
            config_path,
            child: None,
            log: Arc::new(Log {
                lines: Mutex::new(Vec::new()),
                count,
            }),
        };
        relay.spawn().await;
        relay
    }

    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "relay already running");
        let mut child = mxguard_command(&["serve"], &self.config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the mxguard binary");
        let pid = child.id();
        let mark = self.log_mark();
        self.log.push(format!("-- lab: started mxguard, pid {pid}"));
        capture(child.stderr.take().expect("stderr piped"), self.log.clone());
        capture(child.stdout.take().expect("stdout piped"), self.log.clone());
        self.child = Some(child);
        self.wait_ready(mark).await;
    }

    /// Waits until this start of the relay logged that it started (every listener bound),
    /// failing early if the process exits. A bare connect is not enough: the lab's port
    /// reservation may linger for a moment in another test's child process.
    async fn wait_ready(&mut self, mark: usize) {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let started = self.log_lines()[mark..]
                .iter()
                .any(|l| l.contains("mxguard started"));
            if started {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "mxguard exited during start-up ({status}); config:\n{}\nlog:\n{}",
                    self.config.render(),
                    self.log_lines().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "mxguard did not accept connections on {} within {PROCESS_TIMEOUT:?}; log:\n{}",
                self.config.listen,
                self.log_lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: a crash. The spool stays as it was.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.log.push("-- lab: killed mxguard".into());
        }
    }

    /// The process id of the running relay.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGHUP: the relay rereads its TLS policy tables (the process keeps running). Send it
    /// only once the relay has logged something after start-up (e.g. a delivery): the handler
    /// is installed just after the listeners are bound, and before it a SIGHUP would end it.
    pub fn hangup(&self) {
        let pid = self.pid().expect("the relay is running");
        // SAFETY: kill(2) on the pid of a child we spawned and have not yet reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0, "SIGHUP to mxguard (pid {pid})");
        self.log
            .push(format!("-- lab: sent SIGHUP to mxguard, pid {pid}"));
    }

    /// SIGTERM, then waits for a clean exit (SIGKILL after the timeout). Returns the exit status.
    pub async fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of a child we spawned and have not yet reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.log.push(format!("-- lab: mxguard stopped ({status})"));
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mxguard did not exit within {PROCESS_TIMEOUT:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the relay again on the same configuration and data directory.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    /// Stop (SIGTERM) and start again.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    /// The number of lines logged so far: pass it to [`Relay::wait_for_log_since`] to wait only
    /// for what comes next.
    pub fn log_mark(&self) -> usize {
        self.log.lines.lock().unwrap().len()
    }

    /// Waits for a log line (any so far, or a new one) that satisfies `pred`; panics with the
    /// log after `timeout`.
    pub async fn wait_for_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.wait_for_log_since(0, pred, timeout).await
    }

    /// Like [`Relay::wait_for_log`], looking only at lines from index `mark` on.
    pub async fn wait_for_log_since(
        &self,
        mark: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let mut rx = self.log.count.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next = mark;
        loop {
            rx.borrow_and_update();
            {
                let lines = self.log.lines.lock().unwrap();
                if let Some(found) = lines.iter().skip(next).find(|l| pred(l)) {
                    return found.clone();
                }
                next = lines.len().max(mark);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!(
                    "no matching relay log line within {timeout:?}; log:\n{}",
                    self.log_lines().join("\n")
                );
            }
        }
    }

    /// Waits for the delivery log line of `recipient` with `status` (`sent`, `deferred`,
    /// `bounced`, `expired`), from line `mark` on.
    pub async fn wait_for_delivery(
        &self,
        mark: usize,
        recipient: &str,
        status: &str,
        timeout: Duration,
    ) -> DeliveryLine {
        let line = self
            .wait_for_log_since(
                mark,
                |l| {
                    DeliveryLine::parse(l)
                        .is_some_and(|d| d.to.eq_ignore_ascii_case(recipient) && d.status == status)
                },
                timeout,
            )
            .await;
        DeliveryLine::parse(&line).expect("parsed above")
    }

    /// Waits up to [`WAIT`] for the delivery log line of `recipient` with `status`, looking at
    /// the whole log.
    pub async fn delivery(&self, recipient: &str, status: &str) -> DeliveryLine {
        self.wait_for_delivery(0, recipient, status, WAIT).await
    }

    /// Submits `s` to the relay's listener and asserts it was queued; returns the queue id.
    pub async fn submit(&self, s: &Submission) -> String {
        submit_ok(self.addr(), s).await
    }

    /// Runs `mxguard queue ARGS --config FILE` against this relay's configuration: through
    /// the control socket while the relay runs, on the spool directly when it does not. The
    /// command and its exit status are noted in the relay's log (for failure output).
    pub async fn queue(&self, args: &[&str]) -> CliOutput {
        let mut words = vec!["queue"];
        words.extend_from_slice(args);
        self.cli(&words).await
    }

    /// Runs `mxguard WORDS --config FILE` against this relay's configuration (see
    /// [`Relay::queue`]).
    pub async fn cli(&self, words: &[&str]) -> CliOutput {
        let args = words;
        let run = tokio::process::Command::from(mxguard_command(words, &self.config_path))
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(PROCESS_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("mxguard {args:?} ran over {PROCESS_TIMEOUT:?}"))
            .expect("run the mxguard binary");
        let out = CliOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.log.push(format!(
            "-- lab: mxguard {} -> exit {}{}",
            args.join(" "),
            out.status,
            out.stderr
                .lines()
                .find(|l| l.starts_with("mxguard:"))
                .map(|l| format!(" ({l})"))
                .unwrap_or_default()
        ));
        out
    }

    /// Every delivery log line so far.
    pub fn deliveries(&self) -> Vec<DeliveryLine> {
        self.log_lines()
            .iter()
            .filter_map(|l| DeliveryLine::parse(l))
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies the lines of a child's pipe into the log (and to the test's output, shown when a test
/// fails), stripping terminal colour codes.
fn capture(pipe: impl Read + Send + 'static, log: Arc<Log>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            eprintln!("[relay] {line}");
            log.push(line);
        }
    });
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte(@..~)
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What a run of the command line printed, and how it exited.
#[derive(Clone, Debug)]
pub struct CliOutput {
    /// The exit code; -1 when a signal ended the process.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Asserts exit status 0; returns `self` for further checks.
    #[track_caller]
    pub fn ok(&self) -> &CliOutput {
        assert_eq!(self.status, 0, "want exit status 0: {self:#?}");
        self
    }

    /// Asserts exit status 1 with `mxguard: no message matches` on stderr.
    #[track_caller]
    pub fn no_match(&self) -> &CliOutput {
        assert!(
            self.status == 1 && self.stderr.contains("no message matches"),
            "want exit status 1 and \"mxguard: no message matches\": {self:#?}"
        );
        self
    }

    /// The line of stdout about message `id` (`ID: held`, …); panics when there is none.
    #[track_caller]
    pub fn line_for(&self, id: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{id}:")))
            .unwrap_or_else(|| panic!("no line for {id} in the output: {self:#?}"))
    }

    /// Stdout parsed as JSON into `T`; panics with the text when it does not parse.
    #[track_caller]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not the JSON expected ({e}): {self:#?}"))
    }
}

/// One delivery log line, parsed (DESIGN.md: `ID: to=<…>, relay=…, delay=…, tls=…, …,
/// dsn=X.Y.Z, status=S (reply)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryLine {
    pub id: String,
    pub to: String,
    /// `key=value` fields between `to` and `status`, in order (`relay`, `delay`, `tls`, …).
    pub fields: Vec<(String, String)>,
    pub status: String,
    /// The text in parentheses after the status: the remote reply or our explanation.
    pub reply: String,
    /// The whole line as logged.
    pub line: String,
}

impl DeliveryLine {
    pub fn parse(line: &str) -> Option<DeliveryLine> {
        let at = line.find(": to=<")?;
        let id = line[..at].rsplit(char::is_whitespace).next()?.to_string();
        if id.is_empty() {
            return None;
        }
        let rest = &line[at + ": to=<".len()..];
        let close = rest.find(">, ")?;
        let to = rest[..close].to_string();
        let mut rest = &rest[close + ">, ".len()..];
        let mut fields = Vec::new();
        loop {
            if let Some(s) = rest.strip_prefix("status=") {
                let (status, reply) = match s.split_once(' ') {
                    Some((st, r)) => (st, r.trim()),
                    None => (s, ""),
                };
                let reply = reply
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .unwrap_or(reply);
                return Some(DeliveryLine {
                    id,
                    to,
                    fields,
                    status: status.to_string(),
                    reply: reply.to_string(),
                    line: line.to_string(),
                });
            }
            let (field, after) = rest.split_once(", ")?;
            let (k, v) = field.split_once('=')?;
            fields.push((k.to_string(), v.to_string()));
            rest = after;
        }
    }

    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The shipped status filter, `deploy/status_filter` (for `[delivery] status_filter`).
pub fn shipped_status_filter() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/status_filter")
}

/// The `tls=`, `policy=` and `dsn=` fields of a delivery line.
#[track_caller]
pub fn assert_facts(d: &DeliveryLine, tls: &str, policy: &str, dsn: &str) {
    assert_eq!(d.field("tls"), Some(tls), "tls= in {}", d.line);
    assert_eq!(d.field("policy"), Some(policy), "policy= in {}", d.line);
    assert_eq!(d.field("dsn"), Some(dsn), "dsn= in {}", d.line);
}

/// The reply of a delivery line starts with `prefix`.
#[track_caller]
pub fn assert_reply_starts_with(d: &DeliveryLine, prefix: &str) {
    assert!(
        d.reply.starts_with(prefix),
        "want a reply starting {prefix:?}: {}",
        d.line
    );
}

/// Deferred for a certificate not verified: `tls=none`, `policy`, `dsn=4.7.5`, and a reply
/// starting `451 4.7.5 Server certificate not verified` followed by `detail`.
#[track_caller]
pub fn assert_not_verified(d: &DeliveryLine, policy: &str, detail: &str) {
    assert_facts(d, "none", policy, "4.7.5");
    assert_reply_starts_with(
        d,
        &format!("451 4.7.5 Server certificate not verified{detail}"),
    );
}

/// The `relay=` field of a delivery line names MX host `host` (`host[IP]:PORT`).
#[track_caller]
pub fn assert_relayed_by(d: &DeliveryLine, host: &str) {
    assert!(
        d.field("relay")
            .is_some_and(|r| r.starts_with(&format!("{host}["))),
        "want relay={host}[…] in {}",
        d.line
    );
}

/// No deferred line for `rcpt`: the bounce came on the first attempt.
#[track_caller]
pub fn assert_never_deferred(relay: &Relay, rcpt: &str) {
    let deferred: Vec<String> = relay
        .deliveries()
        .into_iter()
        .filter(|d| d.to == rcpt && d.status == "deferred")
        .map(|d| d.line)
        .collect();
    assert!(
        deferred.is_empty(),
        "bounced at once, not after retries: {deferred:#?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let l = "2026-11-23T10:00:00Z  INFO mxguard::delivery: 6F2C81A9: to=<bob@example.net>, \
                 relay=mx1.example.net[192.0.2.25]:25, delay=0.84, tls=verified, \
                 tls_version=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, policy=dane, dsn=2.0.0, \
                 status=sent (250 2.0.0 Ok, really (yes))";
        let d = DeliveryLine::parse(l).unwrap();
        assert_eq!(d.id, "6F2C81A9");
        assert_eq!(d.to, "bob@example.net");
        assert_eq!(d.field("relay"), Some("mx1.example.net[192.0.2.25]:25"));
        assert_eq!(d.field("dsn"), Some("2.0.0"));
        assert_eq!(d.field("policy"), Some("dane"));
        assert_eq!(d.status, "sent");
        assert_eq!(d.reply, "250 2.0.0 Ok, really (yes)");
        assert!(DeliveryLine::parse("INFO something else").is_none());
    }

    #[test]
    fn strips_colours() {
        assert_eq!(strip_ansi("\u{1b}[32m INFO\u{1b}[0m x"), " INFO x");
    }

    #[test]
    fn renders_and_merges() {
        let c = RelayConfig {
            hostname: "relay.lab.test".into(),
            data_dir: "/tmp/x".into(),
            listen: "127.0.0.1:1".parse().unwrap(),
            nameserver: "127.0.0.1:2".parse().unwrap(),
            dnssec: "trust-ad".into(),
            smtp_port: 3,
            extra_ca_files: vec![],
            min_backoff: "1s".into(),
            max_backoff: "2s".into(),
            max_lifetime: None,
            routes: vec![],
            extra: toml::Table::new(),
        }
        .route("a.test", "[127.0.0.9]:25")
        .toml("[delivery]\nconnect_timeout = \"2s\"\n[smtpd]\nrecipient_limit = 5");
        let text = c.render();
        let back = mxguard::config::Config::from_toml(&text).unwrap();
        assert_eq!(back.delivery.smtp_port, 3);
        assert_eq!(back.delivery.connect_timeout, Duration::from_secs(2));
        assert_eq!(back.smtpd.recipient_limit, 5);
        assert_eq!(back.routes[0].next_hop, "[127.0.0.9]:25");
        assert_eq!(back.dns.nameservers[0].port(), 2);
    }
}
