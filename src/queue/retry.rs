//! Retry policy in Postfix's spirit: a failed attempt waits `min_backoff`, doubling each
//! time up to `max_backoff`; a recipient still failing temporarily once the message is older
//! than `max_lifetime` bounces ("expired"). Pure functions, so the rules are tested without
//! a clock or a socket.

use crate::config::QueueConfig;
use crate::reply::{Reply, Severity};
use std::time::Duration;

/// What to do with a recipient after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    /// A permanent failure: bounce now.
    Bounce,
    /// A temporary failure: try again later.
    Retry,
    /// A temporary failure of a message past its lifetime: bounce as expired.
    Expire,
}

/// Decides from the reply and the message's age.
pub fn decide(reply: &Reply, age: Duration, config: &QueueConfig) -> Decision {
    match reply.severity() {
        Severity::Positive => Decision::Delivered,
        Severity::Permanent => Decision::Bounce,
        Severity::Transient if age >= config.max_lifetime => Decision::Expire,
        Severity::Transient => Decision::Retry,
    }
}

/// The wait after the `attempts`-th failed attempt (1-based): min·2^(attempts−1), capped.
pub fn backoff(attempts: u32, config: &QueueConfig) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    config
        .min_backoff
        .saturating_mul(factor)
        .min(config.max_backoff)
}

/// The next attempt is never later than the moment the message expires, so an expiring
/// message bounces on time rather than one backoff late.
pub fn next_delay(attempts: u32, age: Duration, config: &QueueConfig) -> Duration {
    let until_expiry = config.max_lifetime.saturating_sub(age);
    backoff(attempts, config)
        .min(until_expiry)
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> QueueConfig {
        QueueConfig {
            max_lifetime: Duration::from_secs(5 * 86400),
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(4000),
            delay_warning: Duration::ZERO,
            active_limit: 20_000,
            min_free: 0,
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = cfg();
        assert_eq!(backoff(1, &c), Duration::from_secs(300));
        assert_eq!(backoff(2, &c), Duration::from_secs(600));
        assert_eq!(backoff(4, &c), Duration::from_secs(2400));
        assert_eq!(backoff(5, &c), Duration::from_secs(4000));
        assert_eq!(backoff(1000, &c), Duration::from_secs(4000));
    }

    #[test]
    fn decisions_follow_reply_class_and_age() {
        let c = cfg();
        let young = Duration::from_secs(60);
        let old = Duration::from_secs(5 * 86400);
        assert_eq!(
            decide(&Reply::from_remote(250, "ok"), old, &c),
            Decision::Delivered
        );
        assert_eq!(
            decide(&Reply::from_remote(550, "5.1.1 no"), young, &c),
            Decision::Bounce
        );
        assert_eq!(
            decide(&Reply::from_remote(450, "4.2.0 later"), young, &c),
            Decision::Retry
        );
        assert_eq!(
            decide(&Reply::from_remote(450, "4.2.0 later"), old, &c),
            Decision::Expire
        );
    }

    #[test]
    fn next_attempt_not_after_expiry() {
        let c = cfg();
        let age = c.max_lifetime - Duration::from_secs(100);
        assert_eq!(next_delay(5, age, &c), Duration::from_secs(100));
        assert_eq!(next_delay(1, Duration::ZERO, &c), Duration::from_secs(300));
        assert_eq!(next_delay(1, c.max_lifetime, &c), Duration::from_secs(1));
    }
}
