//! Free space on the spool's file system (DESIGN.md, "The queue at scale"): when it is below
//! `queue.min_free` plus the size the client declared with SIZE (RFC 1870), MAIL FROM gets
//! `452 4.3.1 Insufficient system storage` (RFC 3463 X.3.1, Postfix's reply) before anything
//! is written. The client keeps the mail and tries again later, rather than sending it all
//! only to see the spool write fail.
//!
//! [`admit`] is the rule. [`SpoolSpace`] measures with `statvfs` and logs an episode of low
//! space twice, a warning when it starts and a line when it ends, never once a command. A
//! measurement is reused for up to [`MEASURE_INTERVAL`] while it shows at least twice the space
//! asked for, so a busy server with room to spare does not ask the kernel per command, while
//! near the threshold every answer is measured afresh. A measurement that fails refuses
//! nothing: it is no proof the disk is full.

use crate::reply::{EnhancedCode, Reply};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A measurement showing plenty of free space is reused for this long.
pub const MEASURE_INTERVAL: Duration = Duration::from_secs(1);

/// The rule: `free` bytes are enough for a message of `declared` bytes (0 when the client
/// declared no SIZE) if `min_free` bytes stay free beyond it. `min_free` 0 disables the check.
pub fn admit(free: u64, min_free: u64, declared: u64) -> Result<(), Reply> {
    if min_free == 0 || free >= min_free.saturating_add(declared) {
        Ok(())
    } else {
        Err(insufficient_storage())
    }
}

/// RFC 3463 X.3.1 "Mail system full", in Postfix's words.
pub fn insufficient_storage() -> Reply {
    Reply::new(
        452,
        EnhancedCode::new(4, 3, 1),
        "Insufficient system storage",
    )
}

/// An episode of low space, as the threshold (`min_free` + declared size) of the largest
/// refusal in it; 0 when there is none. It ends once the space for that refusal is back, so a
/// mix of large refused and small accepted messages does not start and end one per command.
#[derive(Debug, Default)]
struct Episode(AtomicU64);

impl Episode {
    /// Notes a refusal at `threshold`; true if it starts an episode.
    fn refused(&self, threshold: u64) -> bool {
        self.0.fetch_max(threshold.max(1), Ordering::Relaxed) == 0
    }

    /// Notes `free` bytes; true if that ends the episode.
    fn measured(&self, free: u64) -> bool {
        let threshold = self.0.load(Ordering::Relaxed);
        threshold != 0
            && free >= threshold
            && self
                .0
                .compare_exchange(threshold, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The last measurement of free space.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    at: Instant,
    /// `None`: statvfs failed.
    free: Option<u64>,
}

impl Measurement {
    /// Whether this measurement may answer for `threshold` bytes at `now`: while fresh, and far
    /// enough from the threshold that what was written since cannot matter.
    fn answers(&self, threshold: u64, now: Instant) -> bool {
        now.duration_since(self.at) < MEASURE_INTERVAL
            && self.free.is_none_or(|free| free / 2 >= threshold)
    }
}

/// Free space on the file system of the spool, measured and judged for each MAIL FROM.
#[derive(Debug)]
pub struct SpoolSpace {
    dir: PathBuf,
    /// `queue.min_free`; 0 disables the check.
    min_free: u64,
    last: Mutex<Option<Measurement>>,
    episode: Episode,
    /// statvfs failed and that was logged; cleared when it works again.
    unmeasurable: AtomicBool,
}

impl SpoolSpace {
    pub fn new(dir: PathBuf, min_free: u64) -> SpoolSpace {
        SpoolSpace {
            dir,
            min_free,
            last: Mutex::new(None),
            episode: Episode::default(),
            unmeasurable: AtomicBool::new(false),
        }
    }

    /// The answer to a MAIL FROM that declared `declared` bytes (0 without SIZE): `Err` is the
    /// 452 to send.
    pub fn check(&self, declared: u64) -> Result<(), Reply> {
        if self.min_free == 0 {
            return Ok(());
        }
        let threshold = self.min_free.saturating_add(declared);
        let Some(free) = self.free(threshold) else {
            return Ok(());
        };
        let verdict = admit(free, self.min_free, declared);
        if verdict.is_err() {
            if self.episode.refused(threshold) {
                tracing::warn!(
                    "spool file system low on space: {free} bytes free in {}, below \
                     queue.min_free {} + declared size {declared}; MAIL FROM gets 452 4.3.1 \
                     until there is room",
                    self.dir.display(),
                    self.min_free
                );
            }
        } else if self.episode.measured(free) {
            tracing::info!(
                "spool file system has space again: {free} bytes free in {}; accepting mail",
                self.dir.display()
            );
        }
        verdict
    }

    /// Free bytes (`None` when they cannot be measured), for a question about `threshold`
    /// bytes: the last measurement while it is fresh and far from the threshold, else a new one.
    fn free(&self, threshold: u64) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(m) = last.filter(|m| m.answers(threshold, now)) {
            return m.free;
        }
        let free = self.measure();
        *last = Some(Measurement { at: now, free });
        free
    }

    fn measure(&self) -> Option<u64> {
        match free_bytes(&self.dir) {
            Ok(free) => {
                if self.unmeasurable.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        "spool file system: free space of {} can be measured again",
                        self.dir.display()
                    );
                }
                Some(free)
            }
            Err(e) => {
                if !self.unmeasurable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "spool file system: cannot measure free space of {}: {e}; \
                         queue.min_free is not enforced until it can",
                        self.dir.display()
                    );
                }
                None
            }
        }
    }
}

/// Bytes available to an unprivileged writer on the file system of `dir` (statvfs:
/// `f_bavail * f_frsize`).
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stat` is valid for writes of one `statvfs`.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 or u64): widen both.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, block_size) = (stat.f_bavail as u64, stat.f_frsize as u64);
    Ok(blocks.saturating_mul(block_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_with_min_free_left_beyond_the_declared_size() {
        assert!(admit(1000, 100, 0).is_ok());
        assert!(admit(1000, 100, 900).is_ok(), "exactly enough");
        assert!(admit(1000, 100, 901).is_err());
        assert!(admit(99, 100, 0).is_err());
        assert!(admit(100, 100, 0).is_ok());
        let r = admit(0, 1, 0).unwrap_err();
        assert_eq!(r.to_string(), "452 4.3.1 Insufficient system storage");
    }

    #[test]
    fn zero_min_free_disables_the_check() {
        assert!(admit(0, 0, 0).is_ok());
        assert!(admit(0, 0, u64::MAX).is_ok());
    }

    #[test]
    fn huge_values_do_not_overflow() {
        assert!(admit(u64::MAX - 1, u64::MAX, u64::MAX).is_err());
        assert!(admit(u64::MAX, u64::MAX, u64::MAX).is_ok());
        assert!(admit(u64::MAX - 1, 1 << 60, 1 << 62).is_ok());
    }

    #[test]
    fn an_episode_starts_once_and_ends_when_its_space_is_back() {
        let e = Episode::default();
        assert!(!e.measured(10), "no episode to end");
        assert!(e.refused(100));
        assert!(!e.refused(100), "already going on");
        assert!(!e.refused(50));
        assert!(!e.refused(200), "a larger refusal raises the bar");
        assert!(!e.measured(150), "not enough for the largest refusal");
        assert!(e.measured(200));
        assert!(!e.measured(300), "over");
        assert!(e.refused(100), "a new episode");
    }

    #[test]
    fn a_measurement_is_reused_only_while_fresh_and_far_from_the_threshold() {
        let at = Instant::now();
        let m = Measurement {
            at,
            free: Some(1000),
        };
        assert!(m.answers(500, at));
        assert!(!m.answers(501, at), "too close to the threshold");
        assert!(!m.answers(10, at + MEASURE_INTERVAL), "too old");
        let failed = Measurement { at, free: None };
        assert!(failed.answers(u64::MAX, at));
        assert!(!failed.answers(0, at + MEASURE_INTERVAL));
    }

    #[test]
    fn measures_a_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(SpoolSpace::new(dir.path().into(), 1).check(0).is_ok());
        let full = SpoolSpace::new(dir.path().into(), 1 << 60);
        assert_eq!(full.check(0).unwrap_err().code, 452);
        assert_eq!(full.check(10).unwrap_err().code, 452);
        assert!(SpoolSpace::new(dir.path().into(), 0)
            .check(u64::MAX)
            .is_ok());
    }

    #[test]
    fn a_failed_measurement_refuses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(free_bytes(&missing).is_err());
        assert!(SpoolSpace::new(missing, 1 << 60).check(0).is_ok());
    }
}
