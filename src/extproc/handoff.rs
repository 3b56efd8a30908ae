//! The fast attachment splits one HTTP request over two ext_proc streams: the admission filter
//! (one synchronous message, the request body) and the observer filter (`observability_mode`:
//! Envoy sends the response to tollgate and never waits for it). The admission parks what
//! settlement needs here, under a key it hands to Envoy as dynamic metadata; Envoy forwards that
//! metadata to the observer stream, which claims the admitted request and charges it.
//!
//! Both streams must reach the same tollgate process: both attachments deploy tollgate beside
//! Envoy (`127.0.0.1`), one process per Envoy.
//!
//! Envoy facts this relies on: the admission stream stays open until the HTTP stream is destroyed
//! (`Filter::onDestroy` closes it), after the response headers were sent to the observer; the
//! observer stream is closed `deferred_close_timeout` after that, so a response cut short still
//! ends it. A request whose response never started (client gone while the provider worked) is
//! never claimed: the admission's end parks it for a grace period, then charges its prompt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::Ticket;
use crate::guardrail::apply::RequestGuardrail;
use crate::llm::{ApiKind, RequestFacts};

/// How long an unclaimed admission waits for its observer after the admission stream ended.
/// The observer's response headers were sent before that end; this covers tollgate lagging
/// behind under load, as long as Envoy keeps the observer stream (`deferred_close_timeout`).
pub const CLAIM_GRACE: Duration = Duration::from_secs(5);

/// How long an observer keeps reading after its request ended without the response's end
/// reaching it (a stream cut short): messages Envoy sent before the end are already on their way
/// (both streams share Envoy's one HTTP/2 connection to tollgate, in order). It then charges what
/// it saw, instead of waiting for Envoy to reset its stream `deferred_close_timeout` later.
pub const CUT_SHORT_GRACE: Duration = Duration::from_millis(200);

/// Envoy dynamic metadata namespace tollgate writes (admission) and reads (observer).
pub const NAMESPACE: &str = "tollgate";
/// The key, in [`NAMESPACE`], that joins the observer to its admission.
pub const KEY: &str = "handoff";

/// An admitted request waiting for its response to be observed.
pub struct Parked {
    pub ticket: Ticket,
    pub api: ApiKind,
    pub facts: Option<RequestFacts>,
    pub request_id: Option<String>,
    pub guardrail_note: Option<&'static str>,
    /// The guardrail resolved for the request at admission, which the observer applies to its
    /// answer (observe mode: the fast attachment never holds an answer).
    pub guardrail: Option<RequestGuardrail>,
    /// Cancelled when the admission stream ends, which Envoy does when the HTTP request is over.
    pub request_over: CancellationToken,
}

#[derive(Default)]
pub struct Handoffs {
    next: AtomicU64,
    parked: Mutex<HashMap<u64, Parked>>,
}

impl Handoffs {
    pub fn park(&self, parked: Parked) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.parked.lock().unwrap().insert(key, parked);
        metrics::gauge!("tollgate_extproc_handoffs_parked").increment(1.0);
        key
    }

    pub fn claim(&self, key: u64) -> Option<Parked> {
        let parked = self.parked.lock().unwrap().remove(&key);
        if parked.is_some() {
            metrics::gauge!("tollgate_extproc_handoffs_parked").decrement(1.0);
        }
        parked
    }
}
