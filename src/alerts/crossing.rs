//! Reporting one threshold crossing: the race for the store's once-only marker, then the log
//! line, the counter and (with `[alerts]`) the webhook, by the winner only.

use std::sync::Arc;

use super::{AlertEvent, Alerts, Claim};
use crate::policy::admission::Crossing;
use crate::policy::budget;
use crate::store::{Increment, Store};

/// Reports `crossing` once across the fleet, its marker deciding which instance does (a counter
/// every instance increments up to 1); `at`: when it was seen (Unix seconds). In a task of its
/// own, so that admission neither waits for it nor, timed out, cuts it short.
pub fn report_crossing(
    store: Arc<dyn Store>,
    alerts: Option<Arc<Alerts>>,
    crossing: Crossing,
    at: u64,
) {
    tokio::spawn(async move {
        let event = AlertEvent::budget_threshold(&crossing, at);
        let claim = claim_marker(store.as_ref(), &crossing, &event);
        let claim = match alerts {
            Some(alerts) => alerts.claim(event.clone(), claim).await,
            None => claim.await,
        };
        if claim == Claim::Won {
            metrics::counter!("tollgate_budget_threshold_crossings_total", "threshold" => crossing.threshold.to_string(), "scope" => crossing.scope.kind())
                .increment(1);
            tracing::warn!(
                scope = %event.scope.label,
                period = %event.period.key,
                threshold = crossing.threshold,
                spent_usd = budget::json_usd(crossing.spent_micros),
                budget_usd = budget::json_usd(crossing.budget_micros),
                event_id = %event.id,
                "budget threshold crossed"
            );
        }
    });
}

async fn claim_marker(store: &dyn Store, crossing: &Crossing, event: &AlertEvent) -> Claim {
    match store.add_within(&crossing.marker, 1, 1).await {
        Ok(Increment::Applied(_)) => {
            // Durable before the alert goes out (the embedded store commits in the background):
            // a restart does not win it again.
            if let Err(error) = store.flush().await {
                tracing::warn!(event_id = %event.id, %error, "budget threshold marker not flushed");
            }
            Claim::Won
        }
        Ok(Increment::Refused(_)) => Claim::Lost,
        Err(error) => {
            tracing::warn!(event_id = %event.id, scope = %event.scope.label, %error, "budget threshold marker not claimed");
            Claim::Unknown
        }
    }
}
