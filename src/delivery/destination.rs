//! Per-destination concurrency with feedback (Postfix qmgr's, in miniature).
//!
//! A destination is a recipient domain, or a route's next hop. Each has a window: how many
//! deliveries may run to it at once. It starts at `initial_destination_concurrency`; every
//! delivery that got a session through raises it by one, up to
//! `destination_concurrency_limit`; every delivery that failed to connect, timed out or was
//! refused with 421 lowers it by one, down to one. Failures also add up in cohorts (a window's
//! worth of failed deliveries is one cohort; one success clears them): after
//! `destination_concurrency_failed_cohort_limit` cohorts the destination is dead. Its mail is
//! then deferred without a connection until `queue.min_backoff` has passed, when one delivery
//! probes it again. With `destination_rate_delay`, one delivery at a time, that long apart.
//!
//! A delivery that finds no room does not wait: the queue parks the message until a delivery to
//! that destination ends, so a slow or dead destination never holds the global delivery slots
//! that other destinations' mail needs.

use crate::reply::{EnhancedCode, Reply};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The limits (`delivery.destination_*`, `queue.min_backoff`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub limit: usize,
    pub initial: usize,
    pub cohort_limit: u32,
    pub rate_delay: Duration,
    /// How long a destination stays dead.
    pub dead_time: Duration,
}

/// What one delivery tells about its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Feedback {
    /// A session got through (whatever the server then said of the recipients).
    Success,
    /// No connection, a timeout or a 421: the destination is unwell. The reply is what dead
    /// deliveries quote.
    Failure(Reply),
    /// Says nothing about the destination (DNS, policy, a 5xx greeting).
    Neutral,
}

#[derive(Debug)]
struct State {
    window: usize,
    busy: usize,
    /// Failures since the last success, each counted as 1/window of a cohort.
    failed_cohorts: f64,
    /// Dead until then, with the failure that killed it.
    dead: Option<(Instant, Reply)>,
    last_start: Option<Instant>,
    last_used: Instant,
}

/// Every destination's state.
pub(crate) struct Destinations {
    limits: Limits,
    states: Mutex<HashMap<String, State>>,
}

/// Whether a delivery may start now.
pub(crate) enum Admission {
    /// Go ahead; the slot is given back when dropped (after [`Slot::feedback`]).
    Go(Slot),
    /// The window is full (or the rate delay not over): park the mail.
    Busy,
    /// Dead: defer with this reply, no connection.
    Dead(Reply),
}

/// One running delivery to a destination.
pub(crate) struct Slot {
    destinations: Arc<Destinations>,
    name: String,
    feedback: Feedback,
}

impl Slot {
    /// What the delivery found; applied when the slot is given back.
    pub fn feedback(&mut self, feedback: Feedback) {
        self.feedback = feedback;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let feedback = std::mem::replace(&mut self.feedback, Feedback::Neutral);
        self.destinations.release(&self.name, feedback);
    }
}

/// Forgotten once idle this long at rest (nothing running, not dead).
const FORGET_AFTER: Duration = Duration::from_secs(120);

impl Destinations {
    pub fn new(limits: Limits) -> Destinations {
        Destinations {
            limits: Limits {
                limit: limits.limit.max(1),
                initial: limits.initial.clamp(1, limits.limit.max(1)),
                ..limits
            },
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a delivery to `name`, or says why not.
    pub fn admit(self: &Arc<Self>, name: &str) -> Admission {
        let now = Instant::now();
        let Ok(mut states) = self.states.lock() else {
            // A poisoned lock only means another delivery panicked: no limit then.
            return Admission::Go(self.slot(name));
        };
        let state = states
            .entry(name.to_string())
            .or_insert_with(|| self.fresh(now));
        if let Some((until, reply)) = &state.dead {
            if now < *until {
                return Admission::Dead(reply.clone());
            }
            // Resurrected: one delivery probes it.
            state.dead = None;
            state.window = 1;
            state.failed_cohorts = 0.0;
            tracing::info!("{name}: destination no longer marked dead; probing it");
        }
        if state.busy >= self.window(state) || !self.rate_ok(state, now) {
            return Admission::Busy;
        }
        state.busy += 1;
        state.last_start = Some(now);
        state.last_used = now;
        Admission::Go(self.slot(name))
    }

    /// How many deliveries `name` would admit now (dead: every one, to be deferred at once).
    pub fn room(&self, name: &str) -> usize {
        let now = Instant::now();
        let Ok(states) = self.states.lock() else {
            return usize::MAX;
        };
        let Some(state) = states.get(name) else {
            return self.limits.initial;
        };
        match &state.dead {
            Some((until, _)) if now < *until => usize::MAX,
            Some(_) => 1,
            None if !self.rate_ok(state, now) => 0,
            None => self.window(state).saturating_sub(state.busy),
        }
    }

    /// Forgets destinations at rest; call now and then.
    pub fn prune(&self) {
        let now = Instant::now();
        if let Ok(mut states) = self.states.lock() {
            states.retain(|_, s| {
                s.busy > 0 || s.dead.is_some() || now.duration_since(s.last_used) < FORGET_AFTER
            });
        }
    }

    fn slot(self: &Arc<Self>, name: &str) -> Slot {
        Slot {
            destinations: self.clone(),
            name: name.to_string(),
            feedback: Feedback::Neutral,
        }
    }

    fn fresh(&self, now: Instant) -> State {
        State {
            window: self.limits.initial,
            busy: 0,
            failed_cohorts: 0.0,
            dead: None,
            last_start: None,
            last_used: now,
        }
    }

    fn window(&self, state: &State) -> usize {
        match self.limits.rate_delay.is_zero() {
            true => state.window,
            false => 1,
        }
    }

    fn rate_ok(&self, state: &State, now: Instant) -> bool {
        let delay = self.limits.rate_delay;
        delay.is_zero()
            || state
                .last_start
                .is_none_or(|t| now.duration_since(t) >= delay)
    }

    fn release(&self, name: &str, feedback: Feedback) {
        let now = Instant::now();
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        let Some(state) = states.get_mut(name) else {
            return;
        };
        state.busy = state.busy.saturating_sub(1);
        state.last_used = now;
        match feedback {
            Feedback::Success => {
                state.failed_cohorts = 0.0;
                state.window = (state.window + 1).min(self.limits.limit);
            }
            Feedback::Failure(reply) => {
                state.failed_cohorts += 1.0 / state.window as f64;
                state.window = state.window.saturating_sub(1).max(1);
                if state.failed_cohorts >= f64::from(self.limits.cohort_limit) - 1e-9
                    && state.dead.is_none()
                {
                    tracing::warn!(
                        "{name}: destination marked dead for {}s after repeated failures: {reply}",
                        self.limits.dead_time.as_secs()
                    );
                    state.dead = Some((now + self.limits.dead_time, suspended(reply)));
                }
            }
            Feedback::Neutral => {}
        }
    }
}

/// Postfix's wording for mail to a dead destination: the reply that killed it, prefixed. Its
/// status is a transient network one (the failure's own when it is 4.4.x, else 4.4.1): never
/// a 4.7.x that a status filter would turn into a bounce, since nothing was learnt about the
/// destination's TLS.
fn suspended(reply: Reply) -> Reply {
    let status = match reply.enhanced {
        Some(e) if e.class == 4 && e.subject == 4 => e,
        _ => EnhancedCode::new(4, 4, 1),
    };
    Reply::new(
        451,
        status,
        format!("delivery temporarily suspended: {}", reply.text),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            limit: 4,
            initial: 2,
            cohort_limit: 1,
            rate_delay: Duration::ZERO,
            dead_time: Duration::from_secs(60),
        }
    }

    fn refused() -> Reply {
        Reply::new(
            451,
            EnhancedCode::new(4, 4, 1),
            "connect to mx[192.0.2.1]:25: refused",
        )
    }

    fn go(d: &Arc<Destinations>) -> Slot {
        match d.admit("d.test") {
            Admission::Go(slot) => slot,
            Admission::Busy => panic!("busy"),
            Admission::Dead(r) => panic!("dead: {r}"),
        }
    }

    #[test]
    fn the_window_starts_at_the_initial_concurrency_and_grows_with_success() {
        let d = Arc::new(Destinations::new(limits()));
        let (a, b) = (go(&d), go(&d));
        assert!(matches!(d.admit("d.test"), Admission::Busy));
        assert_eq!(d.room("d.test"), 0);
        assert_eq!(
            d.room("other.test"),
            2,
            "each destination has its own window"
        );
        for mut slot in [a, b] {
            slot.feedback(Feedback::Success);
        }
        assert_eq!(d.room("d.test"), 4, "two successes: 2 + 2, the limit");
        let slots: Vec<Slot> = (0..4).map(|_| go(&d)).collect();
        assert!(
            matches!(d.admit("d.test"), Admission::Busy),
            "never past the limit"
        );
        drop(slots);
        assert_eq!(d.room("d.test"), 4, "neutral feedback changes nothing");
    }

    #[test]
    fn failures_shrink_the_window_then_kill_the_destination() {
        let d = Arc::new(Destinations::new(Limits {
            initial: 4,
            ..limits()
        }));
        let mut slot = go(&d);
        slot.feedback(Feedback::Failure(refused()));
        drop(slot);
        assert_eq!(d.room("d.test"), 3);
        let mut slot = go(&d);
        slot.feedback(Feedback::Failure(refused()));
        drop(slot);
        assert_eq!(d.room("d.test"), 2, "1/4 + 1/3 of a cohort failed so far");
        // + 1/2: a whole cohort.
        let mut slot = go(&d);
        slot.feedback(Feedback::Failure(refused()));
        drop(slot);
        match d.admit("d.test") {
            Admission::Dead(reply) => assert_eq!(
                reply.to_string(),
                "451 4.4.1 delivery temporarily suspended: connect to mx[192.0.2.1]:25: refused"
            ),
            _ => panic!("not dead"),
        }
        assert_eq!(
            d.room("d.test"),
            usize::MAX,
            "dead mail is let through to be deferred"
        );
    }

    #[test]
    fn a_dead_destination_is_never_deferred_with_a_tls_status() {
        let d = Arc::new(Destinations::new(Limits {
            initial: 1,
            ..limits()
        }));
        let mut slot = go(&d);
        let busy = Reply::new(421, EnhancedCode::new(4, 7, 5), "too busy");
        slot.feedback(Feedback::Failure(busy));
        drop(slot);
        let Admission::Dead(reply) = d.admit("d.test") else {
            panic!("not dead");
        };
        assert_eq!(
            reply.to_string(),
            "451 4.4.1 delivery temporarily suspended: too busy"
        );
    }

    #[test]
    fn a_success_clears_the_failed_cohorts() {
        let d = Arc::new(Destinations::new(limits()));
        for _ in 0..3 {
            let mut slot = go(&d);
            slot.feedback(Feedback::Failure(refused()));
            drop(slot);
            let mut slot = go(&d);
            slot.feedback(Feedback::Success);
        }
        assert!(matches!(d.admit("d.test"), Admission::Go(_)));
    }

    #[test]
    fn a_dead_destination_is_probed_by_one_delivery_after_its_time() {
        let d = Arc::new(Destinations::new(Limits {
            dead_time: Duration::ZERO,
            initial: 1,
            ..limits()
        }));
        let mut slot = go(&d);
        slot.feedback(Feedback::Failure(refused()));
        drop(slot);
        let probe = go(&d);
        assert!(
            matches!(d.admit("d.test"), Admission::Busy),
            "one probe at a time"
        );
        drop(probe);
    }

    #[test]
    fn a_rate_delay_means_one_at_a_time_and_a_pause() {
        let d = Arc::new(Destinations::new(Limits {
            rate_delay: Duration::from_secs(3600),
            ..limits()
        }));
        let mut slot = go(&d);
        assert!(matches!(d.admit("d.test"), Admission::Busy));
        slot.feedback(Feedback::Success);
        drop(slot);
        assert!(
            matches!(d.admit("d.test"), Admission::Busy),
            "the pause is not over"
        );
        assert_eq!(d.room("d.test"), 0);
    }
}
