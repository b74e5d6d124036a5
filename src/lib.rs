//! mxguard: an outbound SMTP relay that delivers each message only as securely as its
//! destination demands (MTA-STS, DANE, local policy, REQUIRETLS) and bounces with a clear
//! 5.7.x status when it cannot.
//!
//! Mail flows inbound → queue → delivery → dsn; `server` wires the pieces together.

pub mod check;
pub mod compliance;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dnssec;
pub mod dsn;
pub mod envelope;
pub mod inbound;
pub mod metrics;
pub mod next_hop;
pub mod policy_service;
pub mod queue;
pub mod queue_id;
pub mod reply;
pub mod report;
pub mod server;
pub mod tls;
pub mod tls_policy;
