//! The fast attachment never shows tollgate the response: the admission filter sends one
//! synchronous message (the request body), and Envoy itself reads the provider's usage out of the
//! response (`json_to_metadata`, `sse_to_metadata`) and reports it, with the response's status and
//! size, in its gRPC access log (`access_log.rs`). The admission parks what settlement needs
//! here, under a key it hands to Envoy as dynamic metadata; the access-log entry of the same
//! request carries that metadata back, and its receiver claims the request and charges it.
//!
//! The access log must reach the tollgate that admitted the request: both attachments deploy
//! tollgate beside Envoy (`127.0.0.1`), one process per Envoy.
//!
//! Envoy facts this relies on: every HTTP request that reached the router gets an access-log
//! entry when it ends (completed, cut short or reset), carrying the request's dynamic metadata;
//! the gRPC access logger batches entries (`buffer_flush_interval`) and drops them if it cannot
//! send them. The admission stream stays open until the HTTP stream is destroyed, so its end
//! starts a grace period after which a request no entry claimed is charged its prompt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::Ticket;
use crate::llm::{ApiKind, RequestFacts};

/// How long an unclaimed admission waits for its access-log entry after the admission stream
/// ended: Envoy flushes its access-log buffer every `buffer_flush_interval` (0.1 s in
/// `envoy/local-fast.yaml`); this covers tollgate lagging behind under load.
pub const CLAIM_GRACE: Duration = Duration::from_secs(5);

/// Envoy dynamic metadata namespace tollgate writes at admission and reads in the access log.
pub const NAMESPACE: &str = "tollgate";
/// The key, in [`NAMESPACE`], that joins the access-log entry to its admission.
pub const KEY: &str = "handoff";
/// The namespace Envoy's `json_to_metadata` and `sse_to_metadata` filters write usage to.
pub const USAGE_NAMESPACE: &str = "tollgate.usage";

/// An admitted request waiting for its access-log entry.
pub struct Parked {
    pub ticket: Ticket,
    pub api: ApiKind,
    pub facts: RequestFacts,
}

pub struct Handoffs {
    next: AtomicU64,
    parked: Mutex<HashMap<u64, Parked>>,
}

impl Default for Handoffs {
    /// Keys start at a point drawn from the clock: an access-log entry Envoy buffered for a
    /// tollgate that has since restarted must not claim a request the new process parked.
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            next: AtomicU64::new(nanos.rotate_left(24)),
            parked: Mutex::default(),
        }
    }
}

impl Handoffs {
    pub fn park(&self, parked: Parked) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.parked.lock().unwrap().insert(key, parked);
        metrics::gauge!("tollgate_extproc_handoffs_parked").increment(1.0);
        key
    }

    pub fn is_empty(&self) -> bool {
        self.parked.lock().unwrap().is_empty()
    }

    pub fn claim(&self, key: u64) -> Option<Parked> {
        let parked = self.parked.lock().unwrap().remove(&key);
        if parked.is_some() {
            metrics::gauge!("tollgate_extproc_handoffs_parked").decrement(1.0);
        }
        parked
    }
}
