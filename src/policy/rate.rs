//! Requests-per-minute as a sliding window approximated by two fixed one-minute buckets: the
//! previous bucket counts in proportion to how much of it still lies inside the last 60 seconds.
//! Two counters per team per minute, exact under concurrency when the current bucket is only ever
//! incremented conditionally (see [`current_ceiling`]).

pub const BUCKET_MS: u64 = 60_000;

/// Where `now` falls among the fixed one-minute buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowPosition {
    /// Index of the current bucket (minutes since the Unix epoch).
    pub bucket: u64,
    /// Milliseconds elapsed within the current bucket.
    pub elapsed_ms: u64,
}

impl WindowPosition {
    pub fn at(unix_ms: u64) -> Self {
        Self {
            bucket: unix_ms / BUCKET_MS,
            elapsed_ms: unix_ms % BUCKET_MS,
        }
    }

    /// Unix seconds at which this bucket stops counting at all (end of the next bucket).
    pub fn bucket_expiry_secs(&self) -> u64 {
        (self.bucket + 2) * BUCKET_MS / 1000
    }

    /// Whole seconds (at least 1) until the current bucket ends.
    pub fn secs_to_bucket_end(&self) -> u64 {
        (BUCKET_MS - self.elapsed_ms).div_ceil(1000).max(1)
    }

    /// Share of the previous bucket's requests still inside the window.
    fn carried(&self, previous: u64) -> f64 {
        previous as f64 * (BUCKET_MS - self.elapsed_ms) as f64 / BUCKET_MS as f64
    }
}

/// Admit a request iff the current bucket's count is below this ceiling, then increment it.
/// Checking and incrementing must be one atomic step in the store: that keeps the window exact
/// under any concurrency, and a refused request increments nothing.
pub fn current_ceiling(limit: u64, previous: u64, pos: WindowPosition) -> u64 {
    let room = limit as f64 - pos.carried(previous);
    if room <= 0.0 { 0 } else { room.floor() as u64 }
}

/// Requests already in the window (the last 60 s), not counting one being decided. The previous
/// bucket's share is rounded up, as [`remaining`] does, so a refused request never reads as
/// under the limit and `window_count + remaining == limit` while there is room.
pub fn window_count(previous: u64, current: u64, pos: WindowPosition) -> u64 {
    pos.carried(previous).ceil() as u64 + current
}

/// Requests the team may still make in the window after one that counted `current` (post
/// increment) was admitted.
pub fn remaining(limit: u64, previous: u64, current: u64, pos: WindowPosition) -> u64 {
    limit.saturating_sub(pos.carried(previous).ceil() as u64 + current)
}

/// Whole seconds (at least 1) until a request refused at `current` would be admitted, assuming
/// nothing else arrives meanwhile.
pub fn retry_after_secs(limit: u64, previous: u64, current: u64, pos: WindowPosition) -> u64 {
    let remaining_in_bucket = (BUCKET_MS - pos.elapsed_ms) as f64;
    // Still inside this bucket: wait for the previous bucket's weight to fade enough.
    let wait_ms = if current < limit && previous > 0 {
        let needed_fraction = 1.0 - (limit - current - 1) as f64 / previous as f64;
        let at_ms = needed_fraction * BUCKET_MS as f64;
        (at_ms - pos.elapsed_ms as f64).max(0.0)
    } else {
        // Next bucket: this bucket becomes the previous one and must fade below `limit - 1`.
        let needed_fraction = if current == 0 {
            0.0
        } else {
            (1.0 - (limit.saturating_sub(1)) as f64 / current as f64).max(0.0)
        };
        remaining_in_bucket + needed_fraction * BUCKET_MS as f64
    };
    ((wait_ms / 1000.0).ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(elapsed_secs: u64) -> WindowPosition {
        WindowPosition {
            bucket: 1000,
            elapsed_ms: elapsed_secs * 1000,
        }
    }

    /// Simulates the store's atomic conditional increment.
    fn try_admit(limit: u64, previous: u64, current: &mut u64, pos: WindowPosition) -> bool {
        if *current < current_ceiling(limit, previous, pos) {
            *current += 1;
            true
        } else {
            false
        }
    }

    #[test]
    fn admits_exactly_the_limit_in_a_fresh_window() {
        let mut current = 0;
        let admitted = (0..250)
            .filter(|_| try_admit(100, 0, &mut current, at(10)))
            .count();
        assert_eq!(admitted, 100);
        assert_eq!(current, 100, "refused requests must not be counted");
    }

    #[test]
    fn previous_bucket_weighs_in_proportion_to_overlap() {
        // 30 s into the bucket, half of the previous 100 still counts.
        let mut current = 0;
        let admitted = (0..100)
            .filter(|_| try_admit(100, 100, &mut current, at(30)))
            .count();
        assert_eq!(admitted, 50);
        // At the very start of the bucket the whole previous minute counts.
        assert_eq!(current_ceiling(100, 100, at(0)), 0);
        // A fractional carry rounds against the caller: 100 - 66.67 leaves 33.
        assert_eq!(current_ceiling(100, 100, at(20)), 33);
    }

    #[test]
    fn window_count_is_what_the_last_60_seconds_hold() {
        assert_eq!(window_count(0, 100, at(5)), 100);
        assert_eq!(window_count(100, 50, at(30)), 100);
        // 66.67 carried + 33 current: refused (ceiling 33), and it must read as a full window.
        assert_eq!(current_ceiling(100, 100, at(20)), 33);
        assert_eq!(window_count(100, 33, at(20)), 100);
        assert_eq!(
            window_count(100, 10, at(20)) + remaining(100, 100, 10, at(20)),
            100
        );
    }

    #[test]
    fn remaining_counts_down_to_zero() {
        assert_eq!(remaining(10, 0, 1, at(1)), 9);
        assert_eq!(remaining(10, 0, 10, at(1)), 0);
        assert_eq!(remaining(10, 10, 5, at(30)), 0);
    }

    #[test]
    fn retry_after_waits_for_the_previous_bucket_to_fade() {
        // limit 100, previous 100, current 50 at 30 s: admitted again once the carry is <= 49,
        // i.e. at 60 * (1 - 49/100) = 30.6 s.
        let secs = retry_after_secs(100, 100, 50, at(30));
        assert_eq!(secs, 1);
        let pos = at(30);
        let later = WindowPosition {
            elapsed_ms: pos.elapsed_ms + secs * 1000,
            ..pos
        };
        assert!(50 < current_ceiling(100, 100, later));
    }

    #[test]
    fn retry_after_a_full_bucket_spills_into_the_next() {
        // 100 of 100 used in this bucket 10 s in: 50 s to the bucket end, then 60*(1-99/100)=0.6 s.
        assert_eq!(retry_after_secs(100, 0, 100, at(10)), 51);
        let next = WindowPosition {
            bucket: 1001,
            elapsed_ms: 600,
        };
        assert_eq!(current_ceiling(100, 100, next), 1);
    }

    #[test]
    fn retry_after_is_never_zero() {
        // Refused by a race the carry has already resolved: retry at once, but not in zero seconds.
        assert_eq!(retry_after_secs(100, 100, 50, at(59)), 1);
        // A full limit-1 bucket must fade completely: the rest of this bucket plus all of the next.
        assert_eq!(
            retry_after_secs(
                1,
                0,
                1,
                WindowPosition {
                    bucket: 1,
                    elapsed_ms: 59_999
                }
            ),
            61
        );
    }

    #[test]
    fn zero_limit_admits_nothing() {
        let mut current = 0;
        assert!(!try_admit(0, 0, &mut current, at(1)));
    }
}
