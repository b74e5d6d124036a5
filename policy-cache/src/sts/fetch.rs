//! Fetching `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 §3.3).
