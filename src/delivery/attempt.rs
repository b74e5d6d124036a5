//! The outcome of one delivery attempt for one recipient, and the delivery log line that
//! reports it (DESIGN.md "The delivery log line": Postfix's shape plus the TLS facts).
//!
//! Also the failure type the attempt machinery passes around: every failure carries the
//! [`Reply`] it becomes, so what the log and the DSN say is decided where the failure happens.

use super::tls_report::ResultType;
use crate::queue_id::QueueId;
use crate::reply::Reply;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The MX host (or static next hop) a session was held with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// The host name as found in DNS or the route (no trailing dot), or the IP literal.
    pub host: String,
    pub addr: SocketAddr,
}

/// `host[ip]:port`, as Postfix logs it (IPv6 without the inner brackets: `host[::1]:25`).
impl fmt::Display for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]:{}", self.host, self.addr.ip(), self.addr.port())
    }
}

impl Relay {
    /// `host[ip]`, the form Postfix uses inside status texts.
    pub fn host_ip(&self) -> String {
        format!("{}[{}]", self.host, self.addr.ip())
    }
}

/// How the session that produced an outcome was protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsState {
    /// Plaintext, or no session at all.
    #[default]
    None,
    /// Encrypted, server not authenticated (opportunistic TLS).
    Unverified,
    /// Encrypted and authenticated (DANE, MTA-STS or a `verify`/`secure` level).
    Verified,
}

impl TlsState {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsState::None => "none",
            TlsState::Unverified => "unverified",
            TlsState::Verified => "verified",
        }
    }
}

/// The TLS facts the log line shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    pub state: TlsState,
    /// `TLSv1.3` / `TLSv1.2`.
    pub version: Option<String>,
    /// The negotiated cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: Option<String>,
    /// The key-exchange group by IANA name, e.g. `X25519MLKEM768` (post-quantum hybrid).
    pub kx: Option<String>,
    /// The SHA-256 of the certificate the server presented (the leaf), hex; for the
    /// compliance record, not the log line.
    pub peer_cert_sha256: Option<String>,
}

/// The queue's verdict for a recipient after an attempt; shown as `status=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sent,
    Deferred,
    Bounced,
    Expired,
    /// Removed by an operator (`mxguard queue delete`), without a bounce.
    Deleted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
            Status::Expired => "expired",
            Status::Deleted => "deleted",
        }
    }
}

/// The MTA-STS policy an attempt ran under, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsFacts {
    /// The policy's id (from the TXT record it was fetched under); `-` when unknown.
    pub id: String,
    /// The `mx` pattern the dialled host matched; `None` when it matched none (or no host was
    /// dialled).
    pub mx: Option<String>,
}

/// What set the TLS requirement of an attempt: the `policy=` field of the log line, followed
/// by `sts_id=`/`sts_mx=` when MTA-STS applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPolicy {
    /// `none`, `mta-sts`, `mta-sts-testing`; later `dane`, `local:LEVEL`.
    pub name: String,
    pub sts: Option<StsFacts>,
    /// The digest of the TLSA records a DANE session was verified against (see
    /// [`AppliedPolicy::policy_id`]); for the compliance record, not the log line.
    pub tlsa_digest: Option<String>,
}

impl AppliedPolicy {
    /// A policy without MTA-STS facts (`none`, later `dane`, `local:LEVEL`).
    pub fn named(name: &str) -> AppliedPolicy {
        AppliedPolicy {
            name: name.to_string(),
            sts: None,
            tlsa_digest: None,
        }
    }

    /// Which published policy the attempt was held to: `tlsa:` and the TLSA RRset digest for
    /// a DANE-verified host, else the MTA-STS policy id; `None` when neither applied.
    pub fn policy_id(&self) -> Option<String> {
        match (&self.tlsa_digest, &self.sts) {
            (Some(digest), _) => Some(format!("tlsa:{digest}")),
            (None, Some(sts)) => Some(sts.id.clone()),
            (None, None) => None,
        }
    }
}

impl From<&str> for AppliedPolicy {
    fn from(name: &str) -> AppliedPolicy {
        AppliedPolicy::named(name)
    }
}

/// One recipient's outcome of one delivery attempt. The reply decides: positive → sent,
/// transient (4xx) → retry, permanent (5xx) → bounce; the queue makes that call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Index into the envelope's recipients.
    pub rcpt: usize,
    /// The remote server's reply, or the reply we made up for a failure (DNS, connect, TLS).
    pub reply: Reply,
    /// `reply` is what the server at `relay` sent, not a text mxguard wrote while the session
    /// was open (lost connection, TLS required, mail loop): RFC 3464 §2.3.6 keeps
    /// `Diagnostic-Code: smtp;` for the former.
    pub remote_reply: bool,
    /// The host the reply came from; `None` when no SMTP session was reached.
    pub relay: Option<Relay>,
    pub tls: TlsInfo,
    /// What set the TLS requirement (`none`, `mta-sts`, `mta-sts-testing`; later `dane`,
    /// `local:LEVEL`), and the MTA-STS facts when a policy applied.
    pub policy: AppliedPolicy,
    /// The next hop speaks DSN (RFC 3461) and took our NOTIFY/ORCPT parameters: from here on it,
    /// not we, reports success. When false, a NOTIFY=SUCCESS recipient is owed a "relayed" DSN.
    pub dsn_passed_on: bool,
    /// Which transaction of its session this was (1 on a new connection, 2 and up on a reused
    /// one, as Postfix's `conn_use`); 0 when no session was reached.
    pub conn_use: u32,
}

impl Attempt {
    /// The delivery log line:
    /// `ID: to=<a@b>, relay=h[ip]:port, delay=0.84, tls=…, [tls_version=…, cipher=…, ]policy=…,
    /// [sts_id=…, sts_mx=…, ][conn_use=N, ][kx=…, ]dsn=X.Y.Z, status=sent (REPLY)`.
    /// `tls_version`/`cipher`/`kx` are omitted when `tls=none`, `sts_id`/`sts_mx` when no
    /// MTA-STS policy applied, `conn_use` when no session was reached; the reply comes last, on
    /// one line, because it is the peer's text. `kx` came last of the fields (README: new
    /// fields go just before `dsn=`), so parsers of the older line keep working.
    pub fn log_line(&self, id: &QueueId, to: &str, delay: Duration, status: Status) -> String {
        let relay = self
            .relay
            .as_ref()
            .map_or_else(|| "none".to_string(), Relay::to_string);
        let mut line = format!(
            "{id}: to=<{}>, relay={relay}, delay={:.2}, tls={}",
            one_line(to),
            delay.as_secs_f64(),
            self.tls.state.as_str()
        );
        if self.tls.state != TlsState::None {
            let dash = || "-".to_string();
            line.push_str(&format!(
                ", tls_version={}, cipher={}",
                self.tls.version.clone().unwrap_or_else(dash),
                self.tls.cipher.clone().unwrap_or_else(dash)
            ));
        }
        line.push_str(&format!(", policy={}", one_line(&self.policy.name)));
        if let Some(sts) = &self.policy.sts {
            line.push_str(&format!(
                ", sts_id={}, sts_mx={}",
                one_line(&sts.id),
                one_line(sts.mx.as_deref().unwrap_or("-"))
            ));
        }
        if self.conn_use > 0 && self.relay.is_some() {
            line.push_str(&format!(", conn_use={}", self.conn_use));
        }
        if self.tls.state != TlsState::None {
            line.push_str(&format!(
                ", kx={}",
                one_line(self.tls.kx.as_deref().unwrap_or("-"))
            ));
        }
        line.push_str(&format!(
            ", dsn={}, status={} ({})",
            self.reply.status(),
            status.as_str(),
            one_line(&self.reply.to_string())
        ));
        line
    }
}

/// Control characters (CR, LF, tabs, escapes) become spaces: one attempt, one log line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// How much a failure tells about the destination; when every host fails, the recipient gets
/// the most informative one (DESIGN.md: "the status of the most specific failure seen").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    /// An MX host left out by an enforced MTA-STS policy (RFC 8461 §4.1): reported only when
    /// no authorized host got as far as failing.
    PolicyMx,
    /// An MX host name that does not exist or has no address.
    DnsNotFound,
    /// A lookup that failed for now (SERVFAIL, timeout, refused).
    DnsTemporary,
    /// A handshake that failed where TLS was optional; the plaintext retry decides.
    OpportunisticTls,
    /// TCP connect refused or timed out.
    Connect,
    /// A TLS handshake that failed (reported only if the plaintext retry fails too), or a
    /// host that failed the TLS a policy requires.
    Tls,
    /// A reply the server actually sent (greeting, EHLO).
    Reply,
    /// A host that could not be judged because its DNSSEC lookups failed (RFC 7672 §2.1.1):
    /// it might have taken the mail, so whatever the other hosts said, the recipient waits.
    /// Ranked above everything so that no status filter rule bounces mail over a DNS outage.
    Undetermined,
}

/// A failure to deliver through one host (or at all), with the reply it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub reply: Reply,
    /// `None` when no SMTP session was reached (DNS, connect): the log says `relay=none`.
    pub relay: Option<Relay>,
    pub rank: Rank,
    /// Set when the host failed a policy's TLS requirement (RFC 8460 §4.3 result type).
    pub result_type: Option<ResultType>,
    /// `reply` is the server's own (greeting, EHLO/HELO), not a text we wrote.
    pub remote_reply: bool,
    /// The session's TLS when the failure came after STARTTLS (a REQUIRETLS server that did
    /// not advertise it), so the log line tells how far the session got.
    /// Boxed: almost every failure has none, and a failure travels in many `Result`s.
    pub tls: Option<Box<TlsInfo>>,
}

impl Failure {
    pub fn new(reply: Reply, relay: Option<Relay>, rank: Rank) -> Self {
        Failure {
            reply,
            relay,
            rank,
            result_type: None,
            remote_reply: false,
            tls: None,
        }
    }

    /// A reply the server at `relay` actually sent, refusing the session.
    pub fn from_server(reply: Reply, relay: Relay) -> Self {
        Failure {
            remote_reply: true,
            ..Failure::new(reply, Some(relay), Rank::Reply)
        }
    }

    /// The host failed a policy (not authorized, TLS, certificate), not the network or DNS.
    pub fn is_policy_failure(&self) -> bool {
        self.result_type.is_some()
    }
}

/// Keeps the most informative failure seen over several hosts; among equals, the latest
/// (Postfix reports the last host's failure too).
#[derive(Debug, Default)]
pub(crate) struct WorstFailure {
    best: Option<Failure>,
    /// Some failure was not a policy's (DNS, connect, a server's reply).
    other_seen: bool,
}

impl WorstFailure {
    pub fn record(&mut self, failure: Failure) {
        self.other_seen |= !failure.is_policy_failure();
        if self
            .best
            .as_ref()
            .is_none_or(|best| failure.rank >= best.rank)
        {
            self.best = Some(failure);
        }
    }

    /// Failures were seen, and every one was a policy's (RFC 8461 §5.1: worth a re-check).
    pub fn only_policy_failures(&self) -> bool {
        self.best.is_some() && !self.other_seen
    }

    pub fn take(self) -> Option<Failure> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::EnhancedCode;

    fn id() -> QueueId {
        QueueId::parse("0123456789ABCDEF0").unwrap()
    }

    /// `250 2.0.0 Ok` from `mx1.example.net[192.0.2.25]:25` over verified TLS 1.3 with `cipher`,
    /// under `policy`.
    fn sent_over_verified_tls(cipher: &str, policy: AppliedPolicy) -> Attempt {
        Attempt {
            rcpt: 0,
            reply: Reply::from_remote(250, "2.0.0 Ok"),
            remote_reply: true,
            relay: Some(Relay {
                host: "mx1.example.net".into(),
                addr: "192.0.2.25:25".parse().unwrap(),
            }),
            tls: TlsInfo {
                state: TlsState::Verified,
                version: Some("TLSv1.3".into()),
                cipher: Some(cipher.into()),
                kx: Some("X25519MLKEM768".into()),
                peer_cert_sha256: None,
            },
            policy,
            dsn_passed_on: false,
            conn_use: 3,
        }
    }

    #[test]
    fn log_line_with_tls() {
        let a = sent_over_verified_tls("TLS_AES_256_GCM_SHA384", "dane".into());
        assert_eq!(
            a.log_line(
                &id(),
                "bob@example.net",
                Duration::from_millis(840),
                Status::Sent
            ),
            "0123456789ABCDEF0: to=<bob@example.net>, relay=mx1.example.net[192.0.2.25]:25, \
             delay=0.84, tls=verified, tls_version=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, \
             policy=dane, conn_use=3, kx=X25519MLKEM768, dsn=2.0.0, status=sent (250 2.0.0 Ok)"
        );
    }

    #[test]
    fn log_line_without_session() {
        let a = Attempt {
            rcpt: 0,
            reply: Reply::new(
                451,
                EnhancedCode::new(4, 4, 3),
                "Host or domain name not found.\r\nsecond line",
            ),
            remote_reply: false,
            relay: None,
            tls: TlsInfo::default(),
            policy: "none".into(),
            dsn_passed_on: false,
            conn_use: 0,
        };
        let line = a.log_line(&id(), "a@b.test", Duration::from_secs(3), Status::Deferred);
        assert_eq!(
            line,
            "0123456789ABCDEF0: to=<a@b.test>, relay=none, delay=3.00, tls=none, policy=none, \
             dsn=4.4.3, status=deferred (451 4.4.3 Host or domain name not found.  second line)"
        );
    }

    #[test]
    fn log_line_under_mta_sts() {
        let mta_sts = AppliedPolicy {
            name: "mta-sts".into(),
            sts: Some(StsFacts {
                id: "20261123".into(),
                mx: Some("*.example.net".into()),
            }),
            tlsa_digest: None,
        };
        let mut a = sent_over_verified_tls("TLS13_AES_256_GCM_SHA384", mta_sts);
        assert_eq!(
            a.log_line(&id(), "bob@example.net", Duration::ZERO, Status::Sent),
            "0123456789ABCDEF0: to=<bob@example.net>, relay=mx1.example.net[192.0.2.25]:25, \
             delay=0.00, tls=verified, tls_version=TLSv1.3, cipher=TLS13_AES_256_GCM_SHA384, \
             policy=mta-sts, sts_id=20261123, sts_mx=*.example.net, conn_use=3, \
             kx=X25519MLKEM768, dsn=2.0.0, status=sent (250 2.0.0 Ok)"
        );
        a.relay = None;
        a.conn_use = 0;
        a.tls = TlsInfo::default();
        a.policy.sts = Some(StsFacts {
            id: "20261123".into(),
            mx: None,
        });
        a.reply = Reply::new(
            451,
            EnhancedCode::new(4, 7, 5),
            "MX host mx.evil.test not authorized by MTA-STS policy for example.net",
        );
        assert_eq!(
            a.log_line(&id(), "bob@example.net", Duration::ZERO, Status::Deferred),
            "0123456789ABCDEF0: to=<bob@example.net>, relay=none, delay=0.00, tls=none, \
             policy=mta-sts, sts_id=20261123, sts_mx=-, dsn=4.7.5, status=deferred (451 4.7.5 \
             MX host mx.evil.test not authorized by MTA-STS policy for example.net)"
        );
    }

    #[test]
    fn ipv6_relay() {
        let r = Relay {
            host: "mx.test".into(),
            addr: "[::1]:25".parse().unwrap(),
        };
        assert_eq!(r.to_string(), "mx.test[::1]:25");
        assert_eq!(r.host_ip(), "mx.test[::1]");
    }

    #[test]
    fn worst_failure_prefers_replies_then_latest() {
        let f = |code, rank| Failure::new(Reply::plain(code, "x"), None, rank);
        let mut w = WorstFailure::default();
        w.record(f(550, Rank::DnsNotFound));
        w.record(f(451, Rank::DnsTemporary));
        w.record(f(421, Rank::Reply));
        w.record(f(452, Rank::Connect));
        assert_eq!(w.take().unwrap().reply.code, 421);
        let mut w = WorstFailure::default();
        w.record(f(450, Rank::Connect));
        w.record(f(451, Rank::Connect));
        assert_eq!(w.take().unwrap().reply.code, 451);
    }

    #[test]
    fn policy_failures_alone_are_told_apart() {
        let mut policy = Failure::new(Reply::plain(451, "x"), None, Rank::Tls);
        policy.result_type = Some(ResultType::StarttlsNotSupported);
        let mut w = WorstFailure::default();
        assert!(!w.only_policy_failures());
        w.record(policy.clone());
        assert!(w.only_policy_failures());
        w.record(Failure::new(Reply::plain(451, "y"), None, Rank::Connect));
        assert!(!w.only_policy_failures());
        assert_eq!(w.take().unwrap().reply.text, "x");
    }
}
