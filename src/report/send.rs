//! Sending the reports (RFC 8460 §3, §4.4, §5): when a period is over, for each policy
//! domain with counted sessions, look up its `_smtp._tls` record, build the report, and hand
//! it to every address the record gives: by mail (through our own queue, DKIM-signed, as if
//! `TLS-Required: No`) or by HTTPS POST (retried with back-off for a bounded time).
//!
//! Each report handed on or given up is one log line: domain, period, URI, outcome.
//!
//! In a fleet (`[cache] backend = "redis"`) the counts are pushed to Redis every tick, and a
//! closed period's reports are built from the fleet's sums by the one node that takes each
//! domain's lease ([`super::fleet`]); no report is ever built from one node's counts alone.

use super::counts::{now_secs, Counter, Entry, Period};
use super::json;
use super::outbox::{Outbox, Pending};
use super::record::{self, Rua};
use crate::config::Config;
use crate::envelope::Envelope;
use hickory_resolver::TokioResolver;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

mod in_fleet;

/// How report mail enters the queue: `Ok(queue id)` once it is stored durably.
pub type Enqueue = Arc<
    dyn Fn(Envelope, Vec<u8>) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

/// How often counts are flushed and due work is looked for.
const TICK: Duration = Duration::from_secs(5);
/// The first retry of a failed HTTPS POST or TXT look-up; doubled each time, up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// The TLS-RPT sender of one daemon.
pub struct Reporter {
    config: Arc<Config>,
    counter: Arc<Counter>,
    outbox: Outbox,
    resolver: TokioResolver,
    poster: super::https::Poster,
    dkim: Option<super::mail::DkimKey>,
    enqueue: Enqueue,
    /// Closed periods whose TXT look-up failed for now: when to try again, and since when.
    lookup_retry: Mutex<HashMap<(Period, String), (u64, u32)>>,
    /// Domains told "no report" this period (logged once per domain per period).
    told: Mutex<BTreeMap<(Period, String), ()>>,
    /// One pass over the outbox at a time: the periodic one and `send --now` must not hand
    /// the same report on twice.
    pass: tokio::sync::Mutex<()>,
    /// With `[cache] backend = "redis"`: the fleet's counts, and who reports what.
    fleet: Option<super::fleet::FleetCounts>,
    /// In a fleet: periods and domains this node is done with (reported, or another node's
    /// lease), so that they cost no more Redis calls.
    settled: Mutex<HashSet<(Period, String)>>,
}

impl Reporter {
    pub fn new(
        config: Arc<Config>,
        counter: Arc<Counter>,
        resolver: TokioResolver,
        enqueue: Enqueue,
    ) -> Result<Reporter, String> {
        let t = &config.tlsrpt;
        let poster = super::https::Poster::new(
            &config.delivery.extra_ca_files,
            t.post_timeout,
            resolver.clone(),
        )?;
        let dkim = match &t.dkim_key_file {
            Some(path) => {
                let domain = t
                    .dkim_domain
                    .clone()
                    .unwrap_or_else(|| t.submitter(&config.hostname));
                let key = super::mail::DkimKey::load(path, &t.dkim_selector, &domain)?;
                tracing::info!(
                    "tlsrpt: report mail is DKIM-signed for {domain}; its key record, to publish \
                     as TXT at {}: {}",
                    key.dns_name(),
                    super::mail::dkim_dns_record(&key)
                );
                Some(key)
            }
            None => {
                tracing::warn!(
                    "tlsrpt: no dkim_key_file: report mail goes out unsigned, and receivers \
                     may discard it (RFC 8460 §5.3)"
                );
                None
            }
        };
        let fleet = match config.cache.shared() {
            Some(settings) => Some(super::fleet::FleetCounts::new(
                &settings,
                &counter,
                &config.hostname,
            )?),
            None => {
                counter.unfreeze();
                None
            }
        };
        Ok(Reporter {
            outbox: counter.outbox(),
            fleet,
            settled: Mutex::new(HashSet::new()),
            config,
            counter,
            resolver,
            poster,
            dkim,
            enqueue,
            lookup_retry: Mutex::new(HashMap::new()),
            told: Mutex::new(BTreeMap::new()),
            pass: tokio::sync::Mutex::new(()),
        })
    }

    /// Builds and sends what is due until `shutdown` (the daemon flushes the counts).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            let _pass = self.pass.lock().await;
            match &self.fleet {
                Some(fleet) => {
                    self.close_due_in_fleet(fleet, now_secs(), None).await;
                }
                None => {
                    self.close_due(now_secs(), None).await;
                }
            }
            self.send_due(now_secs()).await;
        }
    }

    /// Pushes what this node counted to the fleet's store (at shutdown; a single node has
    /// nothing to do). What cannot be pushed stays in the local database for the next start.
    pub async fn share_counts(&self) {
        if let Some(fleet) = &self.fleet {
            self.counter.flush();
            let _ = fleet.push(&self.counter).await;
        }
    }

    /// `tlsrpt send [DOMAIN] --now`: closes the open period now and hands its reports (and
    /// every closed one still waiting) on at once. Returns what was done, for the operator.
    pub async fn send_now(&self, domain: Option<&str>) -> String {
        let domain = domain.map(super::counts::normalize_domain);
        let domain = domain.as_deref();
        let _pass = self.pass.lock().await;
        let now = SystemTime::now();
        let before = self.outbox.all().len();
        let built = match &self.fleet {
            Some(fleet) => match self.close_fleet_period(fleet, now).await {
                Ok(()) => {
                    self.close_due_in_fleet(fleet, now_secs(), Some(domain))
                        .await
                }
                Err(why) => vec![why],
            },
            None => {
                self.counter.close_early(now);
                self.close_due(now_secs(), Some(domain)).await
            }
        };
        let mut out = String::new();
        for line in &built {
            out.push_str(line);
            out.push('\n');
        }
        let sent = self.send_due(u64::MAX).await;
        for line in &sent {
            out.push_str(line);
            out.push('\n');
        }
        if built.is_empty() && sent.is_empty() && before == 0 {
            out.push_str("nothing to report\n");
        }
        out
    }

    /// `tlsrpt show [DOMAIN] [--json]`: the counts not yet reported, and the report each
    /// domain would get now.
    /// In a fleet, the counts are the fleet's sums plus what this node has not pushed yet.
    pub async fn show(&self, domain: Option<&str>, as_json: bool) -> String {
        let domain = domain.map(super::counts::normalize_domain);
        let domain = domain.as_deref();
        let now = now_secs();
        let mut entries = self
            .counter
            .entries(|_, p| domain.is_none_or(|d| p.domain == d));
        let mut note = "";
        if let Some(fleet) = &self.fleet {
            match self.fleet_entries(fleet, domain).await {
                Ok(shared) => entries = in_fleet::merge_entries(entries, shared),
                Err(_) => {
                    note = "Redis unavailable: only this node's counts not yet shared are shown\n"
                }
            }
        }
        let mut out = String::new();
        for ((period, policy_domain), group) in group_by_domain(entries) {
            let end = period.end.min(now.max(period.start + 1));
            let shown = Period {
                start: period.start,
                end,
            };
            let report = self.build(shown, &policy_domain, &group);
            if as_json {
                out.push_str(&String::from_utf8_lossy(&report.to_json()));
                out.push('\n');
            } else {
                out.push_str(&describe(&report, &policy_domain));
            }
        }
        for p in self.outbox.all() {
            if domain.is_none_or(|d| p.policy_domain == d) {
                out.push_str(&format!(
                    "waiting: report {} for {} ({}), to {}\n",
                    p.report_id,
                    p.policy_domain,
                    range_text(p.start, p.end),
                    p.uris.join(", ")
                ));
            }
        }
        if out.is_empty() {
            out.push_str("no sessions counted\n");
        }
        format!("{note}{out}")
    }

    /// Turns closed periods whose send time has come into outbox entries (`only`: just this
    /// domain, and no random delay: the operator asked now). Returns log lines.
    async fn close_due(&self, now: u64, only: Option<Option<&str>>) -> Vec<String> {
        let t = &self.config.tlsrpt;
        let entries = self.counter.entries(|period, policy| {
            period.end <= now
                && match only {
                    Some(Some(d)) => policy.domain == d,
                    _ => true,
                }
        });
        let mut lines = Vec::new();
        for ((period, domain), group) in group_by_domain(entries) {
            let due = match only {
                Some(_) => period.end,
                // Never more than a period: with a short `interval`, reports keep pace.
                None => {
                    let max = t.send_delay_max.min(self.counter.interval());
                    period.end + send_delay(&domain, period, max)
                }
            };
            if due > now || !self.lookup_due(period, &domain, now) {
                continue;
            }
            if t.only_failures && group.iter().all(|e| e.tally.failures == 0) {
                self.counter.remove(period, &domain);
                continue;
            }
            if let Some(line) = self.prepare(period, &domain, &group, now).await {
                lines.push(line);
            }
        }
        lines
    }

    fn lookup_due(&self, period: Period, domain: &str, now: u64) -> bool {
        lock(&self.lookup_retry)
            .get(&(period, domain.to_string()))
            .is_none_or(|(at, _)| *at <= now)
    }

    /// Looks up the domain's record and, if it has one, builds the report into the outbox
    /// and forgets the counts. `None` when the look-up must be tried again later.
    async fn prepare(
        &self,
        period: Period,
        domain: &str,
        group: &[Entry],
        now: u64,
    ) -> Option<String> {
        let key = (period, domain.to_string());
        let rua = match self.lookup(domain).await {
            Lookup::Found(rua) => rua,
            Lookup::NoReport(why) => {
                if lock(&self.told).insert(key.clone(), ()).is_none() {
                    tracing::info!(
                        "tlsrpt: no report for {domain} ({}): {why}",
                        range_text(period.start, period.end)
                    );
                }
                self.counter.remove(period, domain);
                return Some(format!("{domain}: no report: {why}"));
            }
            Lookup::TryLater(why) => {
                let mut retry = lock(&self.lookup_retry);
                let (_, tries) = retry.get(&key).copied().unwrap_or((now, 0));
                if now > period.end + self.config.tlsrpt.give_up_after.as_secs() {
                    tracing::warn!(
                        "tlsrpt: report for {domain} ({}) given up: {why}",
                        range_text(period.start, period.end)
                    );
                    retry.remove(&key);
                    drop(retry);
                    self.counter.remove(period, domain);
                    return Some(format!("{domain}: given up: {why}"));
                }
                retry.insert(key, (now + backoff(tries).as_secs(), tries + 1));
                tracing::info!(
                    "tlsrpt: {domain}: record look-up failed ({why}); trying again later"
                );
                return None;
            }
        };
        lock(&self.lookup_retry).remove(&key);
        let dropped: u64 = group.iter().map(|e| e.tally.details_dropped).sum();
        if dropped > 0 {
            tracing::info!(
                "tlsrpt: report for {domain} ({}): {dropped} failed sessions beyond {} \
                 failure-details entries are in the summary counts only",
                range_text(period.start, period.end),
                super::counts::MAX_DETAILS
            );
        }
        let report = self.build(period, domain, group);
        let submitter = self.config.tlsrpt.submitter(&self.config.hostname);
        let pending = Pending {
            file_name: report.file_name(&submitter, domain),
            gzip: report.gzip(),
            report_id: report.report_id.clone(),
            policy_domain: domain.to_string(),
            start: period.start,
            end: period.end,
            uris: rua.iter().map(Rua::to_string).collect(),
            attempts: 0,
            next_at: now,
            give_up_at: now + self.config.tlsrpt.give_up_after.as_secs(),
        };
        // The report is kept before the counts are dropped: a crash in between sends it
        // (at worst) with the next period's counts of the same sessions, never loses it.
        self.outbox.put(&pending);
        self.counter.remove(period, domain);
        Some(format!(
            "{domain}: report {} built ({}), for {}",
            pending.report_id,
            range_text(period.start, period.end),
            pending.uris.join(", ")
        ))
    }

    async fn lookup(&self, domain: &str) -> Lookup {
        let name = format!("_smtp._tls.{domain}.");
        match self.resolver.txt_lookup(name.as_str()).await {
            Ok(txt) => {
                let records: Vec<String> = txt
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_proto::rr::RData::TXT(t) => Some(t),
                        _ => None,
                    })
                    .map(|t| {
                        let parts: Vec<&[u8]> = t.txt_data.iter().map(|b| b.as_ref()).collect();
                        record::txt_text(&parts)
                    })
                    .collect();
                match record::select(&records) {
                    Ok(r) => Lookup::Found(r.rua),
                    Err(e) => Lookup::NoReport(e.to_string()),
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Lookup::NoReport(format!("no TXT record at {name}"))
            }
            Err(e) => Lookup::TryLater(e.to_string()),
        }
    }

    /// The report of `domain` for `period`, from its entries.
    fn build(&self, period: Period, domain: &str, group: &[Entry]) -> json::Report {
        let c = &self.config;
        let policies = group.iter().map(policy_report).collect();
        json::Report {
            organization_name: c.tlsrpt.organization_name(&c.hostname),
            date_range: json::DateRange {
                start_datetime: to_offset(period.start),
                end_datetime: to_offset(period.end.saturating_sub(1)),
            },
            contact_info: c.tlsrpt.contact_info(&c.hostname),
            report_id: report_id(period, domain, &c.tlsrpt.submitter(&c.hostname)),
            policies,
        }
    }

    /// Hands every due outbox entry to its remaining addresses. Returns log lines.
    async fn send_due(&self, now: u64) -> Vec<String> {
        let mut lines = Vec::new();
        for mut p in self.outbox.all() {
            if p.next_at > now {
                continue;
            }
            let mut left = Vec::new();
            for uri in std::mem::take(&mut p.uris) {
                let (done, line) = self.hand_on(&p, &uri).await;
                lines.push(line);
                if !done {
                    left.push(uri);
                }
            }
            p.attempts += 1;
            if left.is_empty() {
                self.outbox.remove(&p.report_id);
            } else if now_secs() >= p.give_up_at {
                for uri in &left {
                    let line = format!(
                        "tlsrpt: report {} for {} ({}) to {uri}: given up after {} attempts",
                        p.report_id,
                        p.policy_domain,
                        range_text(p.start, p.end),
                        p.attempts
                    );
                    tracing::warn!("{line}");
                    lines.push(line);
                }
                self.outbox.remove(&p.report_id);
            } else {
                p.uris = left;
                p.next_at = now_secs() + backoff(p.attempts - 1).as_secs();
                self.outbox.put(&p);
            }
        }
        lines
    }

    /// One report to one address: `(done, log line)`. Done also when the address can never
    /// work (a malformed URI), so it is not retried.
    async fn hand_on(&self, p: &Pending, uri: &str) -> (bool, String) {
        let what = format!(
            "tlsrpt: report {} for {} ({}) to {uri}",
            p.report_id,
            p.policy_domain,
            range_text(p.start, p.end)
        );
        let result = match uri.strip_prefix("mailto:") {
            Some(address) => self.mail(p, address).await,
            None => self
                .poster
                .post(uri, &p.gzip)
                .await
                .map(|status| format!("delivered (HTTP {status})"))
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(outcome) => {
                let line = format!("{what}: {outcome}");
                tracing::info!("{line}");
                (true, line)
            }
            Err(e) => {
                let line = format!("{what}: failed ({e}); will retry");
                tracing::info!("{line}");
                (false, line)
            }
        }
    }

    /// The report as mail into our own queue, which then retries it like any message.
    async fn mail(&self, p: &Pending, address: &str) -> Result<String, String> {
        let c = &self.config;
        let from = c.tlsrpt.from(&c.hostname);
        let submitter = c.tlsrpt.submitter(&c.hostname);
        let to = vec![address.to_string()];
        let text = format!(
            "This is an aggregate TLS report (RFC 8460) from {submitter} for {}, covering {}.\r\n",
            p.policy_domain,
            range_text(p.start, p.end)
        );
        let mail = super::mail::ReportMail {
            from: &from,
            to: &to,
            policy_domain: &p.policy_domain,
            submitter: &submitter,
            report_id: &p.report_id,
            file_name: &p.file_name,
            gzip: &p.gzip,
            hostname: &c.hostname,
            human_text: &text,
        };
        let message = super::mail::build(&mail, self.dkim.as_ref())?;
        let mut envelope = Envelope::new(from.clone());
        envelope
            .recipients
            .push(crate::envelope::Recipient::new(address));
        envelope.tls_report = true;
        let id = (self.enqueue)(envelope, message).await?;
        Ok(format!("queued as {id}"))
    }
}

enum Lookup {
    Found(Vec<Rua>),
    NoReport(String),
    TryLater(String),
}

/// Entries grouped by (period, policy domain), in order.
fn group_by_domain(entries: Vec<Entry>) -> BTreeMap<(Period, String), Vec<Entry>> {
    let mut groups: BTreeMap<(Period, String), Vec<Entry>> = BTreeMap::new();
    for e in entries {
        groups
            .entry((e.period, e.policy.domain.clone()))
            .or_default()
            .push(e);
    }
    groups
}

fn policy_report(e: &Entry) -> json::PolicyReport {
    let policy_type = match e.policy.kind {
        super::counts::PolicyKind::Tlsa => json::PolicyType::Tlsa,
        super::counts::PolicyKind::Sts => json::PolicyType::Sts,
        super::counts::PolicyKind::NoPolicyFound => json::PolicyType::NoPolicyFound,
    };
    let failure_details = e
        .tally
        .details
        .iter()
        .map(|(d, n)| json::FailureDetail {
            result_type: d.result_type.clone(),
            sending_mta_ip: d.sending_ip,
            receiving_mx_hostname: d.mx_host.clone(),
            receiving_mx_helo: d.helo.clone(),
            receiving_ip: d.receiving_ip,
            failed_session_count: *n,
            additional_information: d.additional.clone(),
            failure_reason_code: d.reason_code.clone(),
        })
        .collect();
    json::PolicyReport {
        policy: json::Policy {
            policy_type,
            policy_string: e.policy.strings.clone(),
            policy_domain: e.policy.domain.clone(),
            mx_host: e.policy.mx_hosts.clone(),
        },
        summary: json::Summary {
            total_successful_session_count: e.tally.successes,
            total_failure_session_count: e.tally.failures,
        },
        failure_details,
    }
}

/// `<period start>.<domain hash>@<submitter>`: unique per domain and period, stable across
/// restarts (a rebuilt report keeps its id), in RFC 8460 §4.4's `left@right` form.
fn report_id(period: Period, domain: &str, submitter: &str) -> String {
    format!(
        "{}-{}.{:08x}@{submitter}",
        period.start,
        period.end,
        fnv1a(domain.as_bytes())
    )
}

/// A small stable hash (FNV-1a), for ids and the send delay: not for security.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// RFC 8460 §4.4: reports go out at a random time after the period, spreading the load on
/// receivers; derived from the domain and period so that a restart keeps the same time.
fn send_delay(domain: &str, period: Period, max: Duration) -> u64 {
    let max = max.as_secs();
    if max == 0 {
        return 0;
    }
    let seed = fnv1a(format!("{domain}/{}", period.start).as_bytes());
    u64::from(seed) % (max + 1)
}

fn backoff(tries: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << tries.min(10))
        .min(MAX_RETRY)
}

fn to_offset(secs: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs.min(i64::MAX as u64) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn range_text(start: u64, end: u64) -> String {
    let f = |s: u64| {
        to_offset(s)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    format!("{}..{}", f(start), f(end))
}

/// The report in words, for `tlsrpt show`.
fn describe(report: &json::Report, domain: &str) -> String {
    let mut out = format!(
        "{domain}: report {} ({}..{})\n",
        report.report_id,
        report
            .date_range
            .start_datetime
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        report
            .date_range
            .end_datetime
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    );
    for p in &report.policies {
        let kind = serde_json::to_value(p.policy.policy_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "  policy {kind}: {} successful, {} failed sessions\n",
            p.summary.total_successful_session_count, p.summary.total_failure_session_count
        ));
        for d in &p.failure_details {
            out.push_str(&format!(
                "    {} x{} mx={} ip={} {}\n",
                d.result_type,
                d.failed_session_count,
                d.receiving_mx_hostname.as_deref().unwrap_or("-"),
                d.receiving_ip
                    .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
                d.failure_reason_code.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_ids_are_stable_and_distinct() {
        let p = Period {
            start: 86_400,
            end: 172_800,
        };
        let a = report_id(p, "example.net", "relay.example.org");
        assert_eq!(a, report_id(p, "example.net", "relay.example.org"));
        assert_ne!(a, report_id(p, "example.com", "relay.example.org"));
        let (left, right) = a.split_once('@').expect("left@right");
        assert!(!left.is_empty() && right == "relay.example.org");
    }

    #[test]
    fn send_delays_stay_within_the_maximum() {
        let p = Period {
            start: 0,
            end: 86_400,
        };
        let max = Duration::from_secs(4 * 3600);
        let delays: Vec<u64> = (0..50)
            .map(|i| send_delay(&format!("d{i}.example"), p, max))
            .collect();
        assert!(delays.iter().all(|d| *d <= max.as_secs()));
        // Spread, not all the same.
        assert!(
            delays
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 10
        );
        assert_eq!(send_delay("x", p, Duration::ZERO), 0);
    }

    #[test]
    fn retries_back_off_up_to_an_hour() {
        assert_eq!(backoff(0), Duration::from_secs(60));
        assert_eq!(backoff(1), Duration::from_secs(120));
        assert_eq!(backoff(30), MAX_RETRY);
    }
}
