//! Prometheus metrics (`[metrics] listen`): what the relay counts, in one registry of the
//! Prometheus project's own client (`prometheus-client`), served with `/healthz` by
//! [`http`]. Names and labels are a contract (README "Metrics").
//!
//! Counting is always on and costs an atomic add; only the endpoint is optional. The registry
//! is one per process ([`get`]), because the facts come from every corner (the SMTP server,
//! the queue, delivery, DNS, the policy cache) and threading a handle through each would
//! say nothing the names do not. Label values come from small fixed sets (our own words:
//! statuses, TLS states, policy names, result types, record types): never a domain or an
//! address of a peer, so the series stay few whatever the traffic.
//!
//! Gauges that describe a state are set when that state is known: the queue's by the
//! scheduler (each second), the spool's free space and the policy cache's size when scraped.

pub mod http;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener's configured address (`listener[].address`).
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub status: String,
    pub tls: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultTypeLabels {
    pub result_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub r#type: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

/// Every metric of the relay.
pub struct Metrics {
    registry: Registry,
    pub messages_received: Family<ListenerLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub delivery_duration: Histogram,
    pub queue_messages: Family<StateLabels, Gauge>,
    pub queue_oldest_age: Gauge,
    pub tls_failures: Family<ResultTypeLabels, Counter>,
    pub policy_cache_entries: Gauge,
    pub policy_fetches: Family<OutcomeLabels, Counter>,
    pub dns_lookups: Family<DnsLabels, Counter>,
    pub smtp_sessions: Family<DirectionLabels, Gauge>,
    pub spool_free_bytes: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            messages_received: Family::default(),
            deliveries: Family::default(),
            // 10 ms … ~41 s: a loopback transaction to a slow MX with retries of TLS.
            delivery_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 13),
            ),
            queue_messages: Family::default(),
            queue_oldest_age: Gauge::default(),
            tls_failures: Family::default(),
            policy_cache_entries: Gauge::default(),
            policy_fetches: Family::default(),
            dns_lookups: Family::default(),
            smtp_sessions: Family::default(),
            spool_free_bytes: Gauge::default(),
        };
        // The queue's states exist from the start, at 0: a dashboard need not wait for mail.
        for state in ["active", "deferred", "hold"] {
            let _ = m.queue_messages.get_or_create(&StateLabels {
                state: state.into(),
            });
        }
        for direction in ["inbound", "outbound"] {
            let _ = m.smtp_sessions.get_or_create(&DirectionLabels {
                direction: direction.into(),
            });
        }
        let r = &mut m.registry;
        r.register(
            "mxguard_messages_received",
            "Messages accepted (250 after DATA), by listener",
            m.messages_received.clone(),
        );
        r.register(
            "mxguard_deliveries",
            "Recipient attempts, by the delivery log line's status, tls and policy",
            m.deliveries.clone(),
        );
        r.register(
            "mxguard_delivery_duration_seconds",
            "Time of one delivery to one destination (look-ups, connection, transaction)",
            m.delivery_duration.clone(),
        );
        r.register(
            "mxguard_queue_messages",
            "Messages in the queue, by state (active, deferred, hold)",
            m.queue_messages.clone(),
        );
        r.register(
            "mxguard_queue_oldest_message_age_seconds",
            "Age of the oldest message waiting for delivery (held messages aside)",
            m.queue_oldest_age.clone(),
        );
        r.register(
            "mxguard_tls_failures",
            "Outbound sessions whose TLS failed, by TLS-RPT result type",
            m.tls_failures.clone(),
        );
        r.register(
            "mxguard_policy_cache_entries",
            "MTA-STS policies in the cache",
            m.policy_cache_entries.clone(),
        );
        r.register(
            "mxguard_policy_fetches",
            "MTA-STS policy fetches, by outcome",
            m.policy_fetches.clone(),
        );
        r.register(
            "mxguard_dns_lookups",
            "DNS look-ups of delivery, by record type and outcome",
            m.dns_lookups.clone(),
        );
        r.register(
            "mxguard_smtp_sessions",
            "SMTP sessions open now, inbound (clients) and outbound (MX hosts, pooled included)",
            m.smtp_sessions.clone(),
        );
        r.register(
            "mxguard_spool_free_bytes",
            "Free space for the spool (what queue.min_free is compared with)",
            m.spool_free_bytes.clone(),
        );
        m
    }

    /// The registry in the text exposition format (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("metrics: cannot encode: {e}");
        }
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// A message accepted on `listener`.
pub fn message_received(listener: &str) {
    get()
        .messages_received
        .get_or_create(&ListenerLabels {
            listener: listener.to_string(),
        })
        .inc();
}

/// A recipient attempt, with the log line's words.
pub fn delivery(status: &str, tls: &str, policy: &str) {
    get()
        .deliveries
        .get_or_create(&DeliveryLabels {
            status: status.to_string(),
            tls: tls.to_string(),
            policy: bounded_policy(policy),
        })
        .inc();
}

/// The `policy=` words are ours, but `local:LEVEL` carries a level: keep its known forms and
/// fold anything else, so a future label cannot grow the series without bound.
fn bounded_policy(policy: &str) -> String {
    const KNOWN: &[&str] = &[
        "none",
        "dane",
        "mta-sts",
        "mta-sts-testing",
        "requiretls",
        "tls-required-no",
    ];
    let known = KNOWN.contains(&policy)
        || policy.strip_prefix("local:").is_some_and(|l| {
            l.len() <= 16 && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        });
    match known {
        true => policy.to_string(),
        false => "other".to_string(),
    }
}

/// One destination's delivery took `took`.
pub fn delivery_duration(took: Duration) {
    get().delivery_duration.observe(took.as_secs_f64());
}

/// An outbound session whose TLS failed (`result_type` as TLS-RPT names it).
pub fn tls_failure(result_type: &str) {
    get()
        .tls_failures
        .get_or_create(&ResultTypeLabels {
            result_type: result_type.to_string(),
        })
        .inc();
}

/// An MTA-STS policy fetch ended with `outcome` (`ok`, or the RFC 8460 result type of the
/// failure).
pub fn policy_fetch(outcome: &str) {
    get()
        .policy_fetches
        .get_or_create(&OutcomeLabels {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// A DNS look-up of `rtype` (`MX`, `A`, `AAAA`, `TLSA`, `TXT`, …) ended with `outcome`
/// (`ok`, `nxdomain`, `nodata`, `tempfail`, `bogus`).
pub fn dns_lookup(rtype: &str, outcome: &str) {
    const TYPES: &[&str] = &["MX", "A", "AAAA", "TLSA", "TXT", "CNAME", "DNSKEY", "DS"];
    let rtype = match TYPES.contains(&rtype) {
        true => rtype,
        false => "other",
    };
    get()
        .dns_lookups
        .get_or_create(&DnsLabels {
            r#type: rtype.to_string(),
            outcome: outcome.to_string(),
        })
        .inc();
}

/// The queue's state, as the scheduler knows it.
pub fn queue(active: usize, deferred: usize, hold: usize, oldest_age: Duration) {
    let m = get();
    for (state, n) in [("active", active), ("deferred", deferred), ("hold", hold)] {
        m.queue_messages
            .get_or_create(&StateLabels {
                state: state.into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    m.queue_oldest_age
        .set(i64::try_from(oldest_age.as_secs()).unwrap_or(i64::MAX));
}

/// Which way an SMTP session goes.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Counts an open SMTP session for as long as it lives.
#[derive(Debug)]
pub struct OpenSession(Direction);

impl OpenSession {
    pub fn new(direction: Direction) -> OpenSession {
        sessions(direction).inc();
        OpenSession(direction)
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        sessions(self.0).dec();
    }
}

fn sessions(direction: Direction) -> Gauge {
    let direction = match direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    };
    get()
        .smtp_sessions
        .get_or_create(&DirectionLabels {
            direction: direction.into(),
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_name_with_bounded_labels() {
        // A family shows once it has a member.
        message_received("127.0.0.1:10025");
        tls_failure("certificate-expired");
        policy_fetch("ok");
        delivery("sent", "verified", "dane");
        delivery("deferred", "none", "local:encrypt");
        delivery("sent", "none", "bob@example.net");
        dns_lookup("TLSA", "ok");
        dns_lookup("NAPTR", "ok");
        let text = get().encode();
        for name in [
            "mxguard_messages_received_total",
            "mxguard_deliveries_total{status=\"sent\",tls=\"verified\",policy=\"dane\"}",
            "mxguard_deliveries_total{status=\"deferred\",tls=\"none\",policy=\"local:encrypt\"}",
            "mxguard_deliveries_total{status=\"sent\",tls=\"none\",policy=\"other\"}",
            "mxguard_delivery_duration_seconds_bucket",
            "mxguard_queue_messages{state=\"hold\"}",
            "mxguard_queue_oldest_message_age_seconds",
            "mxguard_tls_failures_total",
            "mxguard_policy_cache_entries",
            "mxguard_policy_fetches_total",
            "mxguard_dns_lookups_total{type=\"TLSA\",outcome=\"ok\"}",
            "mxguard_dns_lookups_total{type=\"other\",outcome=\"ok\"}",
            "mxguard_smtp_sessions{direction=\"inbound\"}",
            "mxguard_spool_free_bytes",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(!text.contains("example.net"), "{text}");
    }

    #[test]
    fn an_open_session_counts_until_dropped() {
        let gauge = sessions(Direction::Outbound);
        let before = gauge.get();
        let open = OpenSession::new(Direction::Outbound);
        assert_eq!(gauge.get(), before + 1);
        drop(open);
        assert_eq!(gauge.get(), before);
    }
}
