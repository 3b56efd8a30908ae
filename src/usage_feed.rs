//! The per-call usage feed: one JSON line per charged call (request id, scope chain, model,
//! tokens by kind, cost), to a file or stdout, for a log shipper to take to a billing or
//! reconciliation system.
//!
//! The feed is a copy, never the record: the store's counters are what limits and budgets read.
//! Lines are handed to a bounded channel and written by one task, so the request path never waits
//! on the disk. When the writer falls behind (the channel is full) or the file cannot be written,
//! lines are dropped, counted (`tollgate_usage_feed_lines_total{outcome}`) and logged; charges
//! are unaffected. Each line carries the call's debit id, unique per charge, so a consumer can
//! deduplicate what is written twice (an access-log batch retried by Lambda).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::policy::counters::Scope;
use crate::policy::{Usage, budget};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageFeedSettings {
    /// A file to append to, or `-` for stdout; the feed is off without it.
    pub path: Option<String>,
    /// Lines waiting for the writer; past it lines are dropped (counted).
    pub buffer: usize,
}

impl Default for UsageFeedSettings {
    fn default() -> Self {
        Self {
            path: None,
            buffer: 65_536,
        }
    }
}

/// How a line's charge came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The call's own usage, when its answer ended.
    Settled,
    /// Charged at its estimated prompt at startup: the process that admitted it died.
    Recovered,
    /// Charged at its estimated prompt at shutdown: still running when the grace period ended.
    Abandoned,
    /// From an access-log record (agentgateway).
    AccessLog,
}

/// What one line says.
#[derive(Clone, Debug)]
pub struct Charged<'a> {
    pub debit_id: &'a str,
    /// The scope chain, broadest first (org, team, user, project).
    pub scopes: Vec<Scope>,
    pub model: &'a str,
    pub usage: &'a Usage,
    pub cost_micros: u64,
    pub source: Source,
    pub at_ms: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    debit_id: &'a str,
    scopes: Vec<crate::alerts::Scope>,
    model: &'a str,
    tokens: Tokens,
    cost_usd: f64,
    cost_micros: u64,
    estimated: bool,
    source: Source,
}

#[derive(Serialize)]
struct Tokens {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    total: u64,
    units: u64,
}

impl Charged<'_> {
    fn to_line(&self) -> String {
        // A debit id is the client's request id made unique per admission (`<id>~<instance>-<n>`).
        let request_id = self
            .debit_id
            .split_once('~')
            .map_or(self.debit_id, |(id, _)| id);
        let u = self.usage;
        let line = Line {
            time: crate::alerts::event::rfc3339(self.at_ms / 1000),
            request_id,
            debit_id: self.debit_id,
            scopes: self.scopes.iter().map(crate::alerts::Scope::of).collect(),
            model: self.model,
            tokens: Tokens {
                input: u.input,
                output: u.output,
                cache_read: u.cache_read,
                cache_write: u.cache_write,
                total: u.total(),
                units: u.units,
            },
            cost_usd: budget::json_usd(self.cost_micros),
            cost_micros: self.cost_micros,
            estimated: u.estimated,
            source: self.source,
        };
        serde_json::to_string(&line).expect("a usage line serializes")
    }
}

/// The sending end: cheap to clone, never blocks.
#[derive(Clone)]
pub struct UsageFeed {
    lines: mpsc::Sender<Item>,
    dropped: Arc<AtomicU64>,
}

/// What the writer task receives.
enum Item {
    Line(String),
    /// Answered once every line sent before it is written (or failed).
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl std::fmt::Debug for UsageFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageFeed").finish_non_exhaustive()
    }
}

impl UsageFeed {
    /// Starts the writer task (on the current Tokio runtime) when `[usage_feed] path` is set.
    pub fn start(settings: &UsageFeedSettings) -> Option<Self> {
        let path = settings.path.clone()?;
        let (lines, receiver) = mpsc::channel(settings.buffer.max(1));
        let target = if path == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(path))
        };
        tracing::info!(target = ?target, "usage feed on");
        tokio::spawn(write(target, receiver));
        Some(Self {
            lines,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn record(&self, charged: Charged<'_>) {
        match self.lines.try_send(Item::Line(charged.to_line())) {
            Ok(()) => {}
            Err(e) => {
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "backlog",
                    mpsc::error::TrySendError::Closed(_) => "writer_stopped",
                };
                metrics::counter!("tollgate_usage_feed_lines_total", "outcome" => reason)
                    .increment(1);
                // One log line per thousand drops: a stuck disk must not flood the log too.
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(1000)
                {
                    tracing::warn!(
                        reason,
                        debit_id = charged.debit_id,
                        "usage feed line dropped (the store's charge is unaffected)"
                    );
                }
            }
        }
    }
}

impl UsageFeed {
    /// Waits until the lines recorded so far are written (at shutdown, before the process exits).
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.lines.send(Item::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

/// Answers its flushes when dropped: after the batch's lines are written, whatever happened.
struct Answer(Vec<tokio::sync::oneshot::Sender<()>>);

impl Drop for Answer {
    fn drop(&mut self) {
        for done in self.0.drain(..) {
            let _ = done.send(());
        }
    }
}

#[derive(Debug)]
enum Target {
    Stdout,
    File(PathBuf),
}

/// Appends lines as they come, flushing whenever the channel is momentarily empty. A failed write
/// drops that line (counted) and reopens the file for the next one (it may have been removed or
/// rotated away).
async fn write(target: Target, mut receiver: mpsc::Receiver<Item>) {
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, 1024).await > 0 {
        let mut lines = Vec::with_capacity(batch.len());
        let mut flushed = Vec::new();
        for item in batch.drain(..) {
            match item {
                Item::Line(line) => lines.push(line),
                Item::Flush(done) => flushed.push(done),
            }
        }
        // Lines before a flush are in its batch or an earlier one: written before it is answered.
        let _answer = Answer(flushed);
        if lines.is_empty() {
            continue;
        }
        let count = lines.len() as u64;
        let target_path = match &target {
            Target::Stdout => None,
            Target::File(p) => Some(p.clone()),
        };
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut text = lines.join("\n");
            text.push('\n');
            match target_path {
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes())?;
                    out.flush()
                }
                Some(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?
                    .write_all(text.as_bytes()),
            }
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match written {
            Ok(()) => {
                metrics::counter!("tollgate_usage_feed_lines_total", "outcome" => "written")
                    .increment(count);
            }
            Err(e) => {
                metrics::counter!("tollgate_usage_feed_lines_total", "outcome" => "write_error")
                    .increment(count);
                tracing::error!(error = %e, target = ?target, lines = count, "usage feed lines not written (the store's charges are unaffected)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_reach_the_file_with_tokens_by_kind_and_cost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.jsonl");
        let feed = UsageFeed::start(&UsageFeedSettings {
            path: Some(path.to_str().unwrap().into()),
            ..Default::default()
        })
        .unwrap();
        let usage = Usage {
            input: 10,
            output: 5,
            cache_read: 2,
            ..Default::default()
        };
        feed.record(Charged {
            debit_id: "req-1~ab-0",
            scopes: vec![
                Scope::Team("platform".into()),
                Scope::User {
                    team: "platform".into(),
                    user: "alice".into(),
                },
            ],
            model: "gpt-4o",
            usage: &usage,
            cost_micros: 1_234,
            source: Source::Settled,
            at_ms: 1_796_007_600_000,
        });
        feed.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["request_id"], "req-1");
        assert_eq!(line["debit_id"], "req-1~ab-0");
        assert_eq!(line["scopes"][0]["kind"], "team");
        assert_eq!(line["scopes"][0]["id"], "platform");
        assert_eq!(line["scopes"][1]["label"], "user alice in team platform");
        assert_eq!(line["scopes"][1]["team"], "platform");
        assert_eq!(line["tokens"]["total"], 17);
        assert_eq!(line["tokens"]["cache_read"], 2);
        assert_eq!(line["cost_micros"], 1_234);
        assert_eq!(line["cost_usd"], 0.001234);
        assert_eq!(line["estimated"], false);
        assert_eq!(line["source"], "settled");
        assert_eq!(line["time"], "2026-11-30T03:00:00Z");
    }

    #[tokio::test]
    async fn a_full_backlog_drops_lines_without_blocking() {
        // No runtime worker gets to the writer before the sends: a buffer of one holds one line.
        let (lines, _receiver) = mpsc::channel(1);
        let feed = UsageFeed {
            lines,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let usage = Usage::default();
        for n in 0..3 {
            feed.record(Charged {
                debit_id: &format!("r{n}"),
                scopes: vec![Scope::Team("t".into())],
                model: "m",
                usage: &usage,
                cost_micros: 0,
                source: Source::Settled,
                at_ms: 0,
            });
        }
        assert_eq!(feed.dropped.load(Ordering::Relaxed), 2);
    }
}
