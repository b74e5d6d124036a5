//! The MTA-STS policy file (RFC 8461 §3.2): `version`, `mode`, `mx` patterns, `max_age`.

use serde::{Deserialize, Serialize};

/// RFC 8461 §5: what a sender does with a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

/// One `mx:` line: a host name, or `*.` plus a domain (a wildcard for exactly one label).
/// Stored lower-cased, as A-labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MxPattern(pub String);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    pub mx: Vec<MxPattern>,
    /// Seconds, at most 31557600 (RFC 8461 §3.2).
    pub max_age: u32,
}
