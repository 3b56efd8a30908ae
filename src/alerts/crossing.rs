//! Reporting one threshold crossing: the race for the store's once-only marker, then the log
//! line, the counter and (with `[alerts]`) the webhook, by the winner only.

use std::sync::Arc;

use super::{AlertEvent, Alerts, Claim};
use crate::policy::budget;
use crate::store::{CounterKey, Increment, Store};

/// Reports `event` once across the fleet, `marker` deciding which instance does (a counter every
/// instance increments up to 1). In a task of its own, so that admission neither waits for it
/// nor, timed out, cuts it short.
pub fn report_crossing(
    store: Arc<dyn Store>,
    marker: CounterKey,
    alerts: Option<Arc<Alerts>>,
    event: AlertEvent,
) {
    tokio::spawn(async move {
        let claim = claim_marker(store.as_ref(), &marker, &event);
        let claim = match alerts {
            Some(alerts) => alerts.claim(event.clone(), claim).await,
            None => claim.await,
        };
        if claim == Claim::Won {
            metrics::counter!("tollgate_budget_threshold_crossings_total", "threshold" => event.threshold_percent.to_string())
                .increment(1);
            let what = match event.period.name.as_str() {
                "month" => "monthly budget threshold crossed",
                _ => "budget threshold crossed",
            };
            tracing::warn!(
                scope = %event.scope.label,
                period = %event.period.key,
                threshold = event.threshold_percent,
                spent_usd = budget::json_usd(event.spent_micros),
                budget_usd = budget::json_usd(event.budget_micros),
                event_id = %event.id,
                "{what}"
            );
        }
    });
}

async fn claim_marker(store: &dyn Store, marker: &CounterKey, event: &AlertEvent) -> Claim {
    match store.add_within(marker, 1, 1).await {
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
