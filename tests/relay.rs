//! End-to-end tests: the real `mxguard` binary in the lab (tests/lab/), one lab per test.
//! The cases live in tests/relay/, one file per concern.

mod lab;

#[path = "relay/support.rs"]
mod support;

#[path = "relay/bounces.rs"]
mod bounces;
#[path = "relay/concurrency.rs"]
mod concurrency;
#[path = "relay/content.rs"]
mod content;
#[path = "relay/eightbit.rs"]
mod eightbit;
#[path = "relay/lab_selftest.rs"]
mod lab_selftest;
#[path = "relay/pipelining.rs"]
mod pipelining;
#[path = "relay/retry.rs"]
mod retry;
#[path = "relay/reuse.rs"]
mod reuse;
#[path = "relay/routing.rs"]
mod routing;
