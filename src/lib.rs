//! tollgate: a policy sidecar for LLM traffic.
//!
//! Data flows top to bottom, each layer calling only the one below it:
//!
//! ```text
//! extproc/ (Envoy gRPC)   webhook/ (agentgateway), http.rs, admin/http.rs: wire adapters, thin
//!            \              /
//!             identity/  +  llm/                          who is asking, what they ask for
//!                    \     /
//!                    engine/                               orchestration: store reads/writes, ledger
//!                    /     \
//!              policy/     store/                          pure decisions  |  counters and teams
//! ```
//!
//! Beside the engine, fed by it and never read back: `alerts/` (signed threshold webhooks) and
//! `usage_feed` (a JSON line per charged call).

pub mod accesslog;
pub mod admin;
pub mod alerts;
pub mod aws;
pub mod cli;
pub mod config;
pub mod contract;
pub mod engine;
pub mod extproc;
pub mod guardrail;
pub mod http;
pub mod identity;
pub mod llm;
pub mod policy;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod usage_feed;
pub mod webhook;
