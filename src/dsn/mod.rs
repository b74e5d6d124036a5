//! Delivery status notifications (RFC 3464): the bounces and delay warnings mxguard sends to
//! the envelope sender.
//!
//! When the queue gives up on recipients (or warns of a delay, or confirms a delivery the
//! sender asked about with NOTIFY=SUCCESS), it describes what happened in a [`Report`] and
//! [`build`] turns that into a new message: from the null sender `<>` to the original sender,
//! a `multipart/report` (RFC 6522) holding a text for people, a `message/delivery-status` part
//! for programs (RFC 3464 §2), and the original message or its header section (RFC 3461 §4.3
//! RET; RFC 8689 §5 REQUIRETLS). The queue stores it like any other accepted message.
//!
//! Peer text (remote replies, client-given addresses) reaches the DSN only through
//! `fields::clean`, so it can never add header fields or lines of its own.

mod fields;
mod report;
pub mod status_filter;

pub use report::{build, Action, RecipientReport, Report, MAX_RETURNED_MESSAGE};

#[cfg(test)]
mod tests;
