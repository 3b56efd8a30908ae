//! Prices in force: built-in and configured prices with the admin API's prices (from the store)
//! on top. After the cache TTL the admin prices are re-read in the background, so the request
//! path never waits on the store for them; an admin change on this instance (which invalidates
//! the table) is read before the next request is priced, once for all the requests waiting on it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::single_flight::SingleFlight;
use crate::policy::pricing::{PriceSource, PriceTable};
use crate::store::Store;

pub struct PriceBook {
    shared: Arc<Shared>,
    ttl: Duration,
    /// Reloads by invalidation: one after an admin change never joins one started before it.
    loading: SingleFlight<u64, Option<Arc<PriceTable>>>,
    invalidations: AtomicU64,
}

struct Shared {
    store: Arc<dyn Store>,
    base: PriceTable,
    /// The table and when it was read; `None` forces a read before the next use.
    current: RwLock<(Option<Instant>, Arc<PriceTable>)>,
    refreshing: AtomicBool,
}

impl PriceBook {
    pub fn new(store: Arc<dyn Store>, base: PriceTable, ttl: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                current: RwLock::new((None, Arc::new(base.clone()))),
                base,
                refreshing: AtomicBool::new(false),
            }),
            ttl,
            loading: SingleFlight::default(),
            invalidations: AtomicU64::new(0),
        }
    }

    pub async fn table(&self) -> Arc<PriceTable> {
        let (loaded_at, table) = self.shared.current.read().unwrap().clone();
        match loaded_at {
            None => {
                let shared = self.shared.clone();
                let generation = self.invalidations.load(Ordering::Acquire);
                self.loading
                    .run(generation, || async move { shared.reload().await })
                    .await
                    .unwrap_or(table)
            }
            Some(at) if at.elapsed() >= self.ttl => {
                if !self.shared.refreshing.swap(true, Ordering::AcqRel) {
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        let _ = shared.reload().await;
                        shared.refreshing.store(false, Ordering::Release);
                    });
                }
                table
            }
            Some(_) => table,
        }
    }

    pub fn invalidate(&self) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.shared.current.write().unwrap().0 = None;
    }
}

impl Shared {
    async fn reload(&self) -> Option<Arc<PriceTable>> {
        match self.store.prices().await {
            Ok(admin) => {
                let mut fresh = self.base.clone();
                for (model, price) in admin {
                    match price.to_price() {
                        Ok(price) => fresh.set(&model, price, PriceSource::Admin),
                        Err((field, e)) => {
                            tracing::error!(model, field, e, "ignoring an invalid stored price")
                        }
                    }
                }
                let fresh = Arc::new(fresh);
                *self.current.write().unwrap() = (Some(Instant::now()), fresh.clone());
                Some(fresh)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read admin prices; keeping the previous table");
                // Try again after a TTL rather than on every request.
                self.current.write().unwrap().0 = Some(Instant::now());
                None
            }
        }
    }
}
