//! A circuit breaker in front of the store. After a failure, calls are not even attempted for a
//! short while: an outage then costs each request nothing but the fail-mode decision, instead of
//! a timeout per call that would push Envoy past its ext_proc message timeout. Once the pause is
//! over the next request tries the store again (half-open) and closes the breaker if it answers.
//!
//! An admission that runs out of time only opens it when the store answered nothing meanwhile:
//! if other calls were answered, that admission waited behind a burst, and opening the breaker
//! would refuse every other request with it (one slow moment becoming an outage).

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Breaker {
    /// Until when the store is not called; `None` when closed.
    open_until: Mutex<Option<Instant>>,
    /// When the store last answered.
    answered_at: Mutex<Option<Instant>>,
    pause: Duration,
}

impl Breaker {
    pub fn new(pause: Duration) -> Self {
        Self {
            open_until: Mutex::new(None),
            answered_at: Mutex::new(None),
            pause,
        }
    }

    /// Whether the store may be called now.
    pub fn allows(&self) -> bool {
        self.open_until
            .lock()
            .unwrap()
            .is_none_or(|until| Instant::now() >= until)
    }

    pub fn failed(&self) {
        let was_closed = self
            .open_until
            .lock()
            .unwrap()
            .replace(Instant::now() + self.pause)
            .is_none();
        if was_closed {
            tracing::warn!(pause = ?self.pause, "store failing: not calling it until it is probed again");
        }
        metrics::gauge!("tollgate_store_up").set(0.0);
    }

    /// Whether the store answered a call since `since`.
    pub fn answered_since(&self, since: Instant) -> bool {
        self.answered_at
            .lock()
            .unwrap()
            .is_some_and(|at| at >= since)
    }

    pub fn succeeded(&self) {
        *self.answered_at.lock().unwrap() = Some(Instant::now());
        if self.open_until.lock().unwrap().take().is_some() {
            tracing::info!("store answering again");
        }
        metrics::gauge!("tollgate_store_up").set(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_failure_and_half_opens_after_the_pause() {
        let b = Breaker::new(Duration::from_millis(50));
        assert!(b.allows());
        b.failed();
        assert!(!b.allows());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allows(), "probe after the pause");
        b.failed();
        assert!(!b.allows());
        b.succeeded();
        assert!(b.allows());
    }

    #[test]
    fn knows_whether_the_store_answered_since_a_moment() {
        let b = Breaker::new(Duration::from_millis(50));
        let before = Instant::now();
        assert!(!b.answered_since(before));
        b.succeeded();
        assert!(b.answered_since(before));
        assert!(!b.answered_since(Instant::now() + Duration::from_millis(1)));
    }
}
