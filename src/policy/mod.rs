//! Pure policy: limits, windows and decisions. No I/O, no clocks, no knowledge of Envoy or HTTP:
//! every function takes the facts (counters, limits, the current time) and returns a decision.

pub mod admission;
pub mod budget;
pub mod calendar;
pub mod counters;
pub mod decision;
pub mod limits;
pub mod pricing;
pub mod rate;
pub mod scopes;
pub mod tokens;
pub mod usage;

pub use budget::OnBreach;
pub use decision::{RateHeaders, Rejection, RejectionKind};
pub use limits::{
    FieldError, LimitOverrides, Limits, PeriodSpec, ScopeLimits, Team, Tier, TierTable,
};
pub use pricing::{ModelPrice, Price, PriceTable, Units};
pub use usage::Usage;
