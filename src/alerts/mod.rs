//! Budget threshold alerts: a signed webhook sent once per scope, period and threshold across
//! the fleet, off the request path.
//!
//! Who sends is decided by the store's once-only marker (a conditional increment every instance
//! races for; see [`report_crossing`]). Around it, this module gives the winner's alert a
//! life of its own: the [`outbox`] records it durably before the race, so an instance that dies
//! after winning sends it at its next start; a background task signs it ([`sign`]), retries with
//! backoff, and writes what never got a 2xx to a dead-letter log. The delivery contract is
//! at-least-once with a stable event id (`x-tollgate-event-id`), duplicates arising only when an
//! instance died or lost the store's answer mid-claim; a receiver that deduplicates on the id sees
//! each alert once (docs/alerts.md).

mod crossing;
pub mod event;
pub mod outbox;
pub mod settings;
pub mod sign;

use std::collections::HashSet;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::json;
use tokio::sync::mpsc;

pub use crossing::report_crossing;
pub use event::{AlertEvent, Period, Scope};
pub use settings::AlertSettings;

use outbox::Outbox;

/// The event id header: the same on every retry and from every instance.
pub const EVENT_ID_HEADER: &str = "x-tollgate-event-id";
/// 1 for the first attempt.
pub const ATTEMPT_HEADER: &str = "x-tollgate-attempt";

/// The outcome of the store's once-only marker for one alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This instance set the marker: it sends.
    Won,
    /// Another instance (or an earlier run of this one) set it.
    Lost,
    /// The store did not answer: the marker may or may not be set. Sent (at-least-once).
    Unknown,
}

pub struct Alerts {
    url: String,
    outbox: Arc<Outbox>,
    queue: mpsc::UnboundedSender<AlertEvent>,
    /// Alerts this process sends or has sent (owed from the outbox, or claimed): a second claim
    /// of one (a marker lost in a crash and won again) does not send it twice.
    handled: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("url", &redacted(&self.url))
            .field("outbox", &self.outbox.path())
            .finish_non_exhaustive()
    }
}

impl Alerts {
    /// Starts the sender (on the current Tokio runtime) when `[alerts] url` is set, and queues
    /// what the outbox says an earlier process still owes.
    pub fn start(settings: &AlertSettings) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(url) = settings.url.clone() else {
            return Ok(None);
        };
        settings.validate()?;
        let secret = settings.secret()?;
        let (outbox, owed) = Outbox::open(&settings.outbox_path)
            .with_context(|| format!("alerts.outbox_path {}", settings.outbox_path.display()))?;
        let client = reqwest::Client::builder()
            .timeout(settings.timeout())
            .build()
            .context("alerts: HTTP client")?;
        let (queue, receiver) = mpsc::unbounded_channel();
        let sender = Sender {
            client,
            url: url.clone(),
            secret,
            settings: settings.clone(),
            outbox: outbox.clone(),
        };
        tokio::spawn(sender.run(receiver));
        if !owed.is_empty() {
            tracing::warn!(
                alerts = owed.len(),
                outbox = %settings.outbox_path.display(),
                "sending the alerts an earlier process claimed and did not deliver"
            );
            metrics::counter!("tollgate_alerts_total", "outcome" => "replayed")
                .increment(owed.len() as u64);
        }
        let handled = owed.iter().map(|e| e.id.clone()).collect();
        for event in owed {
            let _ = queue.send(event);
        }
        tracing::info!(url = %redacted(&url), "threshold alerts on");
        Ok(Some(Arc::new(Self {
            url,
            outbox,
            queue,
            handled: Mutex::new(handled),
        })))
    }

    /// Races for `event`'s once-only marker (`marker`: the store's conditional increment) with
    /// the event in the outbox first, and queues it for delivery unless another instance won.
    /// Returns when the outbox and the marker have answered; delivery happens in the background.
    pub async fn claim(&self, event: AlertEvent, marker: impl Future<Output = Claim>) -> Claim {
        let first = self
            .handled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(event.id.clone());
        if !first {
            tracing::debug!(event_id = %event.id, "alert already sent or owed by this process: not sent again");
            return marker.await;
        }
        if let Err(e) = self.outbox.pending(&event).await {
            // Still raced and sent; only a crash before delivery would lose it now.
            metrics::counter!("tollgate_alerts_total", "outcome" => "outbox_error").increment(1);
            tracing::error!(error = %e, event_id = %event.id, "alert outbox not written: this alert is lost if the process dies before it is delivered");
        }
        let claim = marker.await;
        match claim {
            Claim::Lost => {
                metrics::counter!("tollgate_alerts_total", "outcome" => "claimed_elsewhere")
                    .increment(1);
                tracing::debug!(event_id = %event.id, "another instance sends this alert");
                if let Err(e) = self.outbox.lost(&event.id).await {
                    tracing::warn!(error = %e, event_id = %event.id, "alert outbox not updated: the alert will be sent again at the next start (same event id)");
                }
            }
            Claim::Won | Claim::Unknown => {
                if claim == Claim::Unknown {
                    metrics::counter!("tollgate_alerts_total", "outcome" => "claim_unknown")
                        .increment(1);
                    tracing::warn!(event_id = %event.id, "the store did not answer the alert marker: sending anyway (receivers deduplicate on the event id)");
                }
                let _ = self.queue.send(event);
            }
        }
        claim
    }
}

/// The URL without its query or credentials, for logs.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or_default(),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            ) + u.path()
        }
        Err(_) => "(invalid)".into(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    url: String,
    secret: Vec<u8>,
    settings: AlertSettings,
    outbox: Arc<Outbox>,
}

impl Sender {
    async fn run(self, mut receiver: mpsc::UnboundedReceiver<AlertEvent>) {
        while let Some(event) = receiver.recv().await {
            // Each alert on its own: one receiver outage's backoff does not hold back the others.
            tokio::spawn(self.clone().deliver(event));
        }
    }

    async fn deliver(self, event: AlertEvent) {
        let body = serde_json::to_vec(&event).expect("an alert serializes");
        let mut last_error = String::new();
        for attempt in 1..=self.settings.max_attempts {
            match self.attempt(&event, &body, attempt).await {
                Ok(()) => {
                    metrics::counter!("tollgate_alerts_total", "outcome" => "delivered")
                        .increment(1);
                    tracing::info!(event_id = %event.id, scope = %event.scope.label, threshold = event.threshold_percent, attempt, "alert delivered");
                    self.settled(&event.id).await;
                    return;
                }
                Err(error) => {
                    metrics::counter!("tollgate_alerts_total", "outcome" => "attempt_failed")
                        .increment(1);
                    tracing::warn!(event_id = %event.id, attempt, max_attempts = self.settings.max_attempts, %error, "alert delivery failed");
                    last_error = error;
                }
            }
            if attempt < self.settings.max_attempts {
                tokio::time::sleep(self.settings.backoff(attempt)).await;
            }
        }
        self.dead_letter(&event, &last_error).await;
    }

    async fn attempt(&self, event: &AlertEvent, body: &[u8], attempt: u32) -> Result<(), String> {
        let signature = sign::signature_header(&self.secret, unix_now(), body);
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, &event.id)
            .header(ATTEMPT_HEADER, attempt.to_string())
            .header(sign::SIGNATURE_HEADER, signature)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("receiver answered {status}"))
        }
    }

    async fn dead_letter(&self, event: &AlertEvent, last_error: &str) {
        metrics::counter!("tollgate_alerts_total", "outcome" => "dead_letter").increment(1);
        let record = json!({
            "dead_at": event::rfc3339(unix_now()),
            "attempts": self.settings.max_attempts,
            "last_error": last_error,
            "event": event,
        });
        let path = self.settings.dead_letter_path.clone();
        let written = tokio::task::spawn_blocking(move || append_line(&path, &record.to_string()))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match written {
            Ok(()) => {
                tracing::error!(event_id = %event.id, scope = %event.scope.label, threshold = event.threshold_percent, last_error, dead_letter = %self.settings.dead_letter_path.display(), "alert not delivered after every attempt: written to the dead-letter log");
                self.settled(&event.id).await;
            }
            // Left owed in the outbox: the next start tries again.
            Err(e) => {
                tracing::error!(event_id = %event.id, error = %e, dead_letter = %self.settings.dead_letter_path.display(), "alert not delivered and the dead-letter log not written: it stays in the outbox for the next start")
            }
        }
    }

    async fn settled(&self, id: &str) {
        if let Err(e) = self.outbox.done(id).await {
            tracing::warn!(error = %e, event_id = id, "alert outbox not updated: the alert will be sent again at the next start (same event id)");
        }
    }
}

fn append_line(path: &PathBuf, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{line}")?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::HeaderMap;
    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;

    const SECRET: &str = "unit-secret";

    /// A receiver on loopback answering 200, passing on (event id, body) of each request.
    async fn receiver() -> (String, UnboundedReceiver<(String, Vec<u8>)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let signature = headers[sign::SIGNATURE_HEADER].to_str().unwrap();
                    sign::verify(SECRET.as_bytes(), signature, &body, unix_now(), 60).unwrap();
                    let id = headers[EVENT_ID_HEADER].to_str().unwrap().to_owned();
                    let _ = tx.send((id, body.to_vec()));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, rx)
    }

    fn event(threshold: u8) -> AlertEvent {
        let at = 1_796_007_600;
        AlertEvent::budget_threshold(&event::team_crossing("unit", threshold, 900, 1_000, at), at)
    }

    #[tokio::test]
    async fn only_a_won_or_unknown_claim_sends_and_a_second_claim_never_does() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut received) = receiver().await;
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let settings = AlertSettings {
            url: Some(url),
            secret_file: Some(secret_file),
            outbox_path: dir.path().join("outbox.jsonl"),
            dead_letter_path: dir.path().join("dead.jsonl"),
            ..Default::default()
        };
        let alerts = Alerts::start(&settings).unwrap().unwrap();

        let lost = event(50);
        assert_eq!(alerts.claim(lost, async { Claim::Lost }).await, Claim::Lost);
        let won = event(80);
        alerts.claim(won.clone(), async { Claim::Won }).await;
        let unknown = event(100);
        alerts
            .claim(unknown.clone(), async { Claim::Unknown })
            .await;
        // Claimed again (a marker lost in a crash, won anew): not sent twice.
        alerts.claim(won.clone(), async { Claim::Won }).await;

        let mut ids = Vec::new();
        for _ in 0..2 {
            let (id, body) = tokio::time::timeout(Duration::from_secs(10), received.recv())
                .await
                .unwrap()
                .unwrap();
            let sent: AlertEvent = serde_json::from_slice(&body).unwrap();
            assert_eq!(sent.id, id);
            ids.push(id);
        }
        ids.sort();
        let mut want = vec![won.id.clone(), unknown.id.clone()];
        want.sort();
        assert_eq!(ids, want);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), received.recv())
                .await
                .is_err(),
            "nothing else is sent"
        );
        // Delivered and lost alerts are settled in the outbox: nothing owed at the next start.
        for _ in 0..100 {
            let text = std::fs::read(&settings.outbox_path).unwrap();
            if outbox::owed(text.as_slice()).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the outbox still owes alerts after they were delivered");
    }
}
