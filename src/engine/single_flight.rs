//! One store call for many callers: while a call for a key is in flight, callers asking for the
//! same key wait for its answer instead of making their own. A burst of requests from a team the
//! caches do not know yet then costs one lookup, not one per request, and a slow store sees one
//! call where it would have seen a queue of them.
//!
//! The call runs as its own task: a caller that gives up (its request timed out) does not cancel
//! it for the others, and its answer still lands in whatever cache the call fills.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

type Flight<V> = Shared<BoxFuture<'static, V>>;

pub struct SingleFlight<K, V> {
    in_flight: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            in_flight: Arc::default(),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The answer of the call in flight for `key`, or of `call()` started now.
    pub async fn run<F>(&self, key: K, call: impl FnOnce() -> F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        self.join(key, call).0.await
    }

    /// Like [`SingleFlight::run`], also saying whether this caller started the call.
    pub fn join<F>(&self, key: K, call: impl FnOnce() -> F) -> (Flight<V>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut in_flight = self.in_flight.lock().unwrap();
        if let Some(flight) = in_flight.get(&key) {
            return (flight.clone(), false);
        }
        let registry = self.in_flight.clone();
        let task = tokio::spawn({
            let (future, key) = (call(), key.clone());
            async move {
                let value = future.await;
                // Later callers make a new call: they may need what changed since this one.
                registry.lock().unwrap().remove(&key);
                value
            }
        });
        let flight = async move { task.await.expect("a single-flight call panicked") }
            .boxed()
            .shared();
        in_flight.insert(key, flight.clone());
        (flight, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_call_and_later_ones_make_another() {
        let flights: Arc<SingleFlight<&str, usize>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let waiting: Vec<_> = (0..32)
            .map(|_| {
                let (flights, calls) = (flights.clone(), calls.clone());
                tokio::spawn(async move {
                    flights
                        .run("team", || async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            calls.fetch_add(1, Ordering::SeqCst) + 1
                        })
                        .await
                })
            })
            .collect();
        for w in waiting {
            assert_eq!(w.await.unwrap(), 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let calls2 = calls.clone();
        let again = flights
            .run("team", || async move {
                calls2.fetch_add(1, Ordering::SeqCst) + 1
            })
            .await;
        assert_eq!(again, 2, "a call after the first answered is a new call");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_cancel_the_call() {
        let flights: Arc<SingleFlight<u8, u8>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(10),
            flights.run(1, || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                d.fetch_add(1, Ordering::SeqCst);
                7
            }),
        )
        .await;
        assert!(gave_up.is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1, "the call ran to its end");
    }
}
