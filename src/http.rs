//! Operational HTTP endpoints: liveness, readiness (the store answers and we are not draining)
//! and Prometheus metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::store::Store;

const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct OpsState {
    pub store: Arc<dyn Store>,
    pub metrics: PrometheusHandle,
    /// Cleared when shutdown starts, so load balancers stop sending new work.
    pub accepting: AtomicBool,
    /// With fail mode open, a store outage degrades tollgate (it keeps serving with
    /// per-instance limits) rather than making it unready.
    pub fail_open: bool,
}

pub fn router(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<OpsState>>) -> impl IntoResponse {
    let backend = state.store.backend_name();
    if !state.accepting.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining", "store": backend})),
        );
    }
    let error = match tokio::time::timeout(READY_PROBE_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {
            metrics::gauge!("tollgate_store_up").set(1.0);
            return (
                StatusCode::OK,
                Json(json!({"status": "ready", "store": backend})),
            );
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "store ping timed out".to_owned(),
    };
    metrics::gauge!("tollgate_store_up").set(0.0);
    if state.fail_open {
        // Still serving on per-instance limits: keep receiving traffic.
        (
            StatusCode::OK,
            Json(json!({"status": "degraded", "store": backend, "error": error})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store_unavailable", "store": backend, "error": error})),
        )
    }
}

async fn metrics(State(state): State<Arc<OpsState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
