//! MTA-STS (RFC 8461): the TXT record that announces a policy, the policy file itself, and
//! fetching it over HTTPS.

pub mod fetch;
pub mod policy;
pub mod record;
