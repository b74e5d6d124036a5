//! The inbound SMTP server (RFC 5321) that Postfix or any MTA hands outbound mail to.
