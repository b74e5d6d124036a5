//! The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1).
