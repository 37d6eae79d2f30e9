//! Seconds as Ruby hands them over (a Float that may be negative, NaN, infinite or beyond what
//! a `Duration` holds) turned into waits, the way redis-rb reads the same numbers. Every such
//! conversion goes through here: `Duration::from_secs_f64` panics on exactly the values an
//! adversarial or careless caller passes.

use std::time::Duration;

/// How long to wait, as redis-rb understands a timeout in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wait {
    /// 0, a negative number or NaN: redis-rb waits forever (`timeout > 0` is false).
    Forever,
    For(Duration),
    /// Infinite, or longer than Ruby's `Time` can represent: redis-rb raises `RangeError`
    /// ("Inf out of Time range") once it actually has to wait.
    OutOfRange,
}

/// The longest wait Ruby's `IO#wait_readable` accepts: a `time_t` of seconds.
const RUBY_TIME_MAX_SECONDS: f64 = i64::MAX as f64;

impl Wait {
    pub fn from_seconds(seconds: f64) -> Wait {
        if seconds.is_nan() || seconds <= 0.0 {
            return Wait::Forever;
        }
        if seconds > RUBY_TIME_MAX_SECONDS {
            return Wait::OutOfRange;
        }
        Duration::try_from_secs_f64(seconds).map_or(Wait::OutOfRange, Wait::For)
    }

    /// A socket timeout: `None` waits forever. A wait too long to represent is as good as
    /// forever here (the server answers, or the caller interrupts).
    pub fn as_timeout(self) -> Option<Duration> {
        match self {
            Wait::For(duration) => Some(duration),
            Wait::Forever | Wait::OutOfRange => None,
        }
    }

    /// redis-rb's message for the `RangeError` of an out-of-range wait.
    pub fn out_of_range_message(seconds: f64) -> String {
        if seconds.is_infinite() {
            format!(
                "{}Inf out of Time range",
                if seconds < 0.0 { "-" } else { "" }
            )
        } else {
            format!("{seconds:.6} out of Time range")
        }
    }
}

/// A setting in seconds that must be a duration (a cool-down, a cache lifetime): NaN and
/// negative values are zero, values too long to represent are the longest duration.
pub fn saturating(seconds: f64) -> Duration {
    if seconds.is_nan() || seconds <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seconds_as_redis_rb_does() {
        assert_eq!(Wait::from_seconds(0.0), Wait::Forever);
        assert_eq!(Wait::from_seconds(-1.0), Wait::Forever);
        assert_eq!(Wait::from_seconds(f64::NAN), Wait::Forever);
        assert_eq!(
            Wait::from_seconds(0.25),
            Wait::For(Duration::from_millis(250))
        );
        assert_eq!(
            Wait::from_seconds(1e12),
            Wait::For(Duration::from_secs(1_000_000_000_000))
        );
        assert_eq!(Wait::from_seconds(f64::INFINITY), Wait::OutOfRange);
        assert_eq!(Wait::from_seconds(1e30), Wait::OutOfRange);
        assert_eq!(Wait::from_seconds(1e30).as_timeout(), None);
    }

    #[test]
    fn names_the_range_error_as_ruby_does() {
        assert_eq!(
            Wait::out_of_range_message(f64::INFINITY),
            "Inf out of Time range"
        );
        assert_eq!(
            Wait::out_of_range_message(1e30),
            "1000000000000000019884624838656.000000 out of Time range"
        );
    }

    #[test]
    fn saturates_settings() {
        assert_eq!(saturating(f64::NAN), Duration::ZERO);
        assert_eq!(saturating(-3.0), Duration::ZERO);
        assert_eq!(saturating(f64::INFINITY), Duration::MAX);
        assert_eq!(saturating(1.5), Duration::from_millis(1500));
    }
}
