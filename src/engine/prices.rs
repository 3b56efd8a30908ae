//! Prices in force: built-in and configured prices with the admin API's prices (from the store)
//! on top, re-read after the cache TTL so that every instance sees an admin change within it.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::policy::pricing::{PriceSource, PriceTable};
use crate::store::Store;

pub struct PriceBook {
    store: Arc<dyn Store>,
    base: PriceTable,
    ttl: Duration,
    current: RwLock<(Option<Instant>, Arc<PriceTable>)>,
    /// Lets one caller refresh while the others keep using the current table.
    refreshing: tokio::sync::Mutex<()>,
}

impl PriceBook {
    pub fn new(store: Arc<dyn Store>, base: PriceTable, ttl: Duration) -> Self {
        Self {
            store,
            current: RwLock::new((None, Arc::new(base.clone()))),
            base,
            ttl,
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn table(&self) -> Arc<PriceTable> {
        let (loaded_at, table) = self.current.read().unwrap().clone();
        if loaded_at.is_some_and(|t| t.elapsed() < self.ttl) {
            return table;
        }
        let Ok(_guard) = self.refreshing.try_lock() else {
            // Someone else is refreshing: the current table is at most one TTL old.
            if loaded_at.is_some() {
                return table;
            }
            let _wait = self.refreshing.lock().await;
            return self.current.read().unwrap().1.clone();
        };
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
                fresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read admin prices; keeping the previous table");
                table
            }
        }
    }

    pub fn invalidate(&self) {
        self.current.write().unwrap().0 = None;
    }
}
