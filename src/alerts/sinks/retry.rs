//! When to try again, and when to say so: the retry backoff and the
//! rate limit on the "queue full" warning. Pure (time and randomness are
//! passed in), so both are unit-tested.

use std::time::{Duration, Instant};

/// No retry waits longer than this, however many came before.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// At most one "queue full" warning per sink this often; the ones in
/// between are counted and reported with the next.
pub const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The delay before retry number `retry` (1 for the first): `base`, doubled
/// for each retry after the first, capped at [`MAX_BACKOFF`].
pub fn backoff_delay(base: Duration, retry: u32) -> Duration {
    let mut delay = base.min(MAX_BACKOFF);
    for _ in 1..retry {
        // Reaches the cap within a few dozen doublings (or never grows).
        if delay >= MAX_BACKOFF || delay.is_zero() {
            break;
        }
        delay = delay.saturating_mul(2);
    }
    delay.min(MAX_BACKOFF)
}

/// `delay` with jitter: scaled by `spread`, a number in `[0, 1)`, into
/// `[delay / 2, delay)` ("equal jitter"), so that sinks retrying after one
/// outage do not all come back at the same instant, and no wait ever
/// exceeds the capped delay.
pub fn with_jitter(delay: Duration, spread: f64) -> Duration {
    let spread = spread.clamp(0.0, 1.0);
    delay.mul_f64(0.5 + spread / 2.0).min(delay)
}

/// Rate-limits one sink's "queue full, notification dropped" warning.
#[derive(Debug, Default)]
pub struct DropWarnings {
    /// When the last warning was logged.
    last: Option<Instant>,
    /// Drops since then that were not logged.
    suppressed: u64,
}

impl DropWarnings {
    /// Called on each drop at `now`: `Some(n)` when a warning is due now,
    /// `n` being the drops not logged since the last one; `None` when this
    /// drop is to be counted silently.
    pub fn on_drop(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < DROP_WARNING_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_a_minute() {
        let base = Duration::from_millis(500);
        let delays: Vec<Duration> = (1..=10).map(|r| backoff_delay(base, r)).collect();
        assert_eq!(
            delays,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000].map(Duration::from_millis)
        );
        // No overflow, however many retries or however long the base.
        assert_eq!(backoff_delay(base, u32::MAX), MAX_BACKOFF);
        assert_eq!(backoff_delay(Duration::from_secs(3600), 1), MAX_BACKOFF);
        assert_eq!(backoff_delay(Duration::MAX, 40), MAX_BACKOFF);
        // Retry 0 is treated as the first.
        assert_eq!(backoff_delay(base, 0), base);
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole_delay() {
        let delay = Duration::from_secs(8);
        assert_eq!(with_jitter(delay, 0.0), Duration::from_secs(4));
        assert_eq!(with_jitter(delay, 0.5), Duration::from_secs(6));
        assert!(with_jitter(delay, 0.999_999) <= delay);
        assert!(with_jitter(delay, 0.999_999) > Duration::from_millis(7_990));
        // Out-of-range spreads are clamped.
        assert_eq!(with_jitter(delay, -3.0), Duration::from_secs(4));
        assert_eq!(with_jitter(delay, 7.0), delay);
        assert_eq!(with_jitter(MAX_BACKOFF, 1.0), MAX_BACKOFF);
    }

    #[test]
    fn drop_warnings_are_logged_once_per_period_with_the_count_in_between() {
        let t0 = Instant::now();
        let mut w = DropWarnings::default();
        assert_eq!(w.on_drop(t0), Some(0), "the first drop is always logged");
        for i in 1..=99 {
            assert_eq!(w.on_drop(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(w.on_drop(t0 + DROP_WARNING_EVERY - Duration::from_millis(1)), None);
        assert_eq!(w.on_drop(t0 + DROP_WARNING_EVERY), Some(100));
        assert_eq!(w.on_drop(t0 + DROP_WARNING_EVERY * 3), Some(0));
    }
}
