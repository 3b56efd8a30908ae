//! Pure policy: limits, windows and decisions. No I/O, no clocks, no knowledge of Envoy or HTTP:
//! every function takes the facts (counters, limits, the current time) and returns a decision.

pub mod calendar;
pub mod decision;
pub mod limits;
pub mod rate;
pub mod tokens;
pub mod usage;

pub use decision::{RateHeaders, Rejection, RejectionKind};
pub use limits::{LimitOverrides, Limits, Team, Tier, TierTable};
pub use usage::Usage;
