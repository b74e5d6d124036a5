//! TLS-RPT (RFC 8460): every outbound session's TLS outcome, counted per policy domain and
//! period, and the reports sent to the addresses the domain publishes.
//!
//! - [`counts`]: the sessions counted, per period and policy (in memory, flushed to sled);
//! - [`outbox`]: reports built and waiting to be handed on;
//! - [`record`]: the `_smtp._tls` TXT record (where reports go);
//! - [`json`]: the report itself (RFC 8460 §4), gzip'd, with its file name.
//!
//! Sending (mail with DKIM, HTTPS POST) is still to come (issue #13).

pub mod counts;
pub mod json;
pub mod outbox;
pub mod record;
