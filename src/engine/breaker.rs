//! A circuit breaker in front of the store. After a failure, calls are not even attempted for a
//! short while: an outage then costs each request nothing but the fail-mode decision, instead of
//! a timeout per call that would push Envoy past its ext_proc message timeout. Once the pause is
//! over the next request tries the store again (half-open) and closes the breaker if it answers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Breaker {
    /// Until when the store is not called; `None` when closed.
    open_until: Mutex<Option<Instant>>,
    pause: Duration,
}

impl Breaker {
    pub fn new(pause: Duration) -> Self {
        Self {
            open_until: Mutex::new(None),
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

    pub fn succeeded(&self) {
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
}
