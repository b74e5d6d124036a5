//! Outbound delivery: for one message and one recipient domain, find where to send it (a static
//! route or the domain's MX hosts, RFC 5321 §5.1), connect, use TLS as the policy demands,
//! and transact, yielding one outcome per recipient.

mod nexthop;

pub use nexthop::NextHop;
