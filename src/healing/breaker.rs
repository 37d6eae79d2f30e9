//! A circuit breaker for the non-default store. A new store that hangs would otherwise add its
//! read timeout to every dual-written command. After `threshold` failures in a row (connection
//! errors and timeouts, not error replies) the breaker opens: the store is skipped for a
//! cool-down — writes go to the default store only and are journaled for re-sync — then one
//! call probes it (half-open); success closes the breaker, failure opens it again.

use crate::fork::ForkSafeMutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub threshold: u32,
    pub cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            threshold: 3,
            cool_down: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
struct Inner {
    settings: BreakerSettings,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    /// When the current probe was let through; a probe that never reported (its caller was
    /// interrupted) stops blocking the next one after a cool-down.
    probing: Option<Instant>,
}

#[derive(Debug)]
pub struct Breaker {
    inner: ForkSafeMutex<Inner>,
}

/// Whether a call may use the store now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The one call that tests a store whose cool-down is over.
    Probe,
    Skipped,
}

/// What changed, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker {
            inner: ForkSafeMutex::new(Inner {
                settings,
                consecutive_failures: 0,
                opened_at: None,
                probing: None,
            }),
        }
    }

    /// Takes new settings (the breaker is shared by the MultiStores of a partition; the last
    /// one built says how it behaves).
    pub fn configure(&self, settings: BreakerSettings) {
        self.inner.lock().settings = settings;
    }

    /// Closed again, its failures forgotten.
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.consecutive_failures = 0;
        inner.opened_at = None;
        inner.probing = None;
    }

    pub fn state(&self) -> BreakerState {
        let inner = self.inner.lock();
        match inner.opened_at {
            None => BreakerState::Closed,
            Some(at) if at.elapsed() >= inner.settings.cool_down => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    pub fn admit(&self) -> Admission {
        let mut inner = self.inner.lock();
        match inner.opened_at {
            None => Admission::Allowed,
            Some(at)
                if at.elapsed() >= inner.settings.cool_down
                    && inner
                        .probing
                        .is_none_or(|p| p.elapsed() >= inner.settings.cool_down) =>
            {
                inner.probing = Some(Instant::now());
                Admission::Probe
            }
            Some(_) => Admission::Skipped,
        }
    }

    pub fn record_success(&self) -> Transition {
        let mut inner = self.inner.lock();
        inner.consecutive_failures = 0;
        inner.probing = None;
        if inner.opened_at.take().is_some() {
            Transition::Closed
        } else {
            Transition::None
        }
    }

    pub fn record_failure(&self) -> Transition {
        let mut inner = self.inner.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let was_probing = inner.probing.take().is_some();
        if was_probing {
            // The probe failed: another full cool-down.
            inner.opened_at = Some(Instant::now());
            return Transition::None;
        }
        if inner.opened_at.is_none() && inner.consecutive_failures >= inner.settings.threshold {
            inner.opened_at = Some(Instant::now());
            return Transition::Opened;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cool_down_ms: u64) -> Breaker {
        Breaker::new(BreakerSettings {
            threshold: 2,
            cool_down: Duration::from_millis(cool_down_ms),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_skips_during_the_cool_down() {
        let b = breaker(10_000);
        assert_eq!(b.record_failure(), Transition::None);
        assert_eq!(b.admit(), Admission::Allowed);
        assert_eq!(b.record_failure(), Transition::Opened);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Skipped);
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = breaker(10_000);
        b.record_failure();
        b.record_success();
        assert_eq!(b.record_failure(), Transition::None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn probes_once_after_the_cool_down_and_closes_on_success() {
        let b = breaker(50);
        b.record_failure();
        b.record_failure();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Skipped, "one probe at a time");
        assert_eq!(b.record_success(), Transition::Closed);
        assert_eq!(b.admit(), Admission::Allowed);
    }

    #[test]
    fn a_probe_that_never_reports_stops_blocking_after_a_cool_down() {
        let b = breaker(0);
        b.record_failure();
        b.record_failure();
        assert_eq!(b.admit(), Admission::Probe);
        // Its caller was interrupted and never reported; a cool-down later another may try.
        assert_eq!(b.admit(), Admission::Probe);
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let b = breaker(0);
        b.record_failure();
        b.record_failure();
        assert_eq!(b.admit(), Admission::Probe);
        b.record_failure();
        assert_ne!(b.state(), BreakerState::Closed);
    }
}
