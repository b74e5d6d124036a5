//! Delivery status notifications (RFC 3464): the bounces and delay warnings mxguard sends to
//! the envelope sender.
