//! How much a lease claims beyond what waiting admissions need: plain arithmetic, so that the
//! bounds the documentation states are the ones the code computes.
//!
//! A slice is the smallest of:
//! - 1/[`SHARE_DIVISOR`] of the room left: instances claiming at once leave room for each other,
//!   and what one instance holds unused is at most that share of what was left when it claimed;
//! - about [`DEMAND_HORIZON`] of this instance's own recent demand (at least
//!   [`MIN_SLICE_REQUESTS`] requests' worth), so a quiet instance holds little;
//! - for a counter that stops counting at a known time (an RPM bucket), the demand until then,
//!   so little is left over when the minute ends.
//!
//! When that is under [`EXACT_BELOW_REQUESTS`] requests' worth there is no slice: each admission
//! claims exactly what it needs (concurrent ones together), as exact as one conditional update
//! per request.

use std::time::Duration;

use tokio::time::Instant;

pub const SHARE_DIVISOR: u64 = 8;
pub const DEMAND_HORIZON: Duration = Duration::from_secs(1);
pub const MIN_SLICE_REQUESTS: f64 = 4.0;
pub const EXACT_BELOW_REQUESTS: f64 = 2.0;

/// Units to hold beyond what waiting admissions need. `room`: the room left once they have what
/// they need; `demand`: this instance's demand, units per second; `typical`: a typical admission's
/// amount; `secs_left`: until the counter stops counting, if it does.
pub fn extra(room: u64, demand: f64, typical: f64, secs_left: Option<f64>) -> u64 {
    let typical = typical.max(1.0);
    let share = room / SHARE_DIVISOR;
    let recent = (demand * DEMAND_HORIZON.as_secs_f64()).max(typical * MIN_SLICE_REQUESTS);
    let until_end = secs_left.map_or(f64::INFINITY, |secs| demand * secs + typical);
    let slice = (share as f64).min(recent).min(until_end);
    if slice < typical * EXACT_BELOW_REQUESTS {
        0
    } else {
        (slice.ceil() as u64).min(share)
    }
}

/// Demand is measured over windows this long. Short, so that a burst's first claims are sized to
/// it (a burst of 32 reads as 640 a second) rather than to a quarter second of it.
const WINDOW: Duration = Duration::from_millis(50);

/// One instance's recent demand on one counter.
#[derive(Clone, Copy, Debug)]
pub struct Demand {
    window_start: Instant,
    in_window: u64,
    /// Units per second over the last windows.
    rate: f64,
    /// A typical admission's amount (1 for RPM; an estimated cost for reservations).
    typical: f64,
}

impl Demand {
    pub fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            in_window: 0,
            rate: 0.0,
            typical: 0.0,
        }
    }

    pub fn record(&mut self, amount: u64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            let rate = self.in_window as f64 / elapsed.as_secs_f64();
            // After a quiet spell the old rate says nothing.
            self.rate = if elapsed >= 4 * WINDOW {
                rate
            } else {
                (self.rate + rate) / 2.0
            };
            self.window_start = now;
            self.in_window = 0;
        }
        self.in_window += amount;
        self.typical = if self.typical == 0.0 {
            amount as f64
        } else {
            0.9 * self.typical + 0.1 * amount as f64
        };
    }

    /// Units per second: the last windows', or this one's if it is already higher (a burst).
    pub fn per_sec(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.window_start).max(WINDOW);
        self.rate.max(self.in_window as f64 / elapsed.as_secs_f64())
    }

    pub fn typical(&self) -> f64 {
        self.typical.max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_from_the_limit_a_slice_covers_a_second_of_demand() {
        assert_eq!(extra(1_000_000, 500.0, 1.0, None), 500);
        // A quiet team still gets a few requests' worth.
        assert_eq!(extra(1_000_000, 0.5, 1.0, None), 4);
    }

    #[test]
    fn a_slice_is_never_more_than_an_eighth_of_the_room_left() {
        assert_eq!(extra(800, 10_000.0, 1.0, None), 100);
        assert_eq!(extra(80, 10_000.0, 1.0, None), 10);
    }

    #[test]
    fn near_the_limit_there_is_no_slice() {
        // 15 left: an eighth is 1, under 2 requests' worth: claim per request.
        assert_eq!(extra(15, 10_000.0, 1.0, None), 0);
        assert_eq!(extra(16, 10_000.0, 1.0, None), 2);
        assert_eq!(extra(0, 10_000.0, 1.0, None), 0);
        // Money: a typical reservation of 1000 micro-dollars with 10,000 left is per request.
        assert_eq!(extra(10_000, 1e9, 1000.0, None), 0);
        assert_eq!(extra(80_000, 1e9, 1000.0, None), 10_000);
    }

    #[test]
    fn near_the_end_of_a_minute_a_slice_shrinks_to_the_demand_left() {
        assert_eq!(extra(1_000_000, 100.0, 1.0, Some(0.5)), 51);
        assert_eq!(extra(1_000_000, 100.0, 1.0, Some(0.001)), 0);
    }

    #[test]
    fn demand_follows_bursts_and_quiet_spells() {
        let t0 = Instant::now();
        let mut d = Demand::new(t0);
        for _ in 0..32 {
            d.record(1, t0);
        }
        // 32 at once: at least 32 in a window.
        assert_eq!(d.per_sec(t0), 640.0);
        let t1 = t0 + Duration::from_secs(1);
        d.record(1, t1);
        assert_eq!(d.per_sec(t1), 32.0, "32 over the last second");
        let t2 = t1 + Duration::from_secs(10);
        d.record(1, t2);
        assert!(
            d.per_sec(t2) <= 20.0,
            "one request in a window: {}",
            d.per_sec(t2)
        );
        assert_eq!(d.typical(), 1.0);
    }
}
