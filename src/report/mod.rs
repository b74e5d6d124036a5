//! TLS-RPT (RFC 8460): every outbound session's TLS outcome, counted per policy domain and
//! period, and the reports sent to the addresses the domain publishes.
//!
//! - [`counts`]: the sessions counted, per period and policy (in memory, flushed to sled);
//! - [`fleet`]: with `[cache] backend = "redis"`, the counts of every node summed in Redis,
//!   and one node per domain and period sending its report;
//! - [`outbox`]: reports built and waiting to be handed on;
//! - [`record`]: the `_smtp._tls` TXT record (where reports go);
//! - [`json`]: the report itself (RFC 8460 §4), gzip'd, with its file name;
//! - [`mail`]: the report as a DKIM-signed `multipart/report` message (§5.3);
//! - [`https`]: the report POSTed to an `https:` address (§5.4);
//! - [`send`]: the reporter: when a period is over, look up each domain's record, build its
//!   report and hand it to every address, with retries; `tlsrpt show|send --now`.

pub mod counts;
pub mod fleet;
pub mod https;
pub mod json;
pub mod mail;
pub mod outbox;
pub mod record;
pub mod send;
