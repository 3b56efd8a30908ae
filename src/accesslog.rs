//! Usage from agentgateway's access logs: for traffic that the promptGuard webhook admitted,
//! the answer's token usage reaches tollgate only here. Each JSON access-log record of an LLM
//! call (flat keys: `gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...) becomes a debit of
//! tokens and spend for the caller's team, identified by the request so that a record delivered
//! twice is charged once (DynamoDB's debit markers).
//!
//! The caller is the token agentgateway logged (an `accessLog.add` field), verified as any token
//! is, except that it may have expired since. Records that cannot be charged are reported, with
//! why, never dropped silently.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::engine::{Caller, Engine};
use crate::identity::{Authenticator, INVOKE_SCOPE};
use crate::policy::Usage;
use crate::store::{Counted, Debit, Scope, StoreError};

/// `accessLog.add` keys tollgate reads, besides agentgateway's own.
pub const TOKEN_FIELD: &str = "tollgate.token";
pub const REQUEST_ID_FIELD: &str = "tollgate.request_id";

/// One log line and where it came from.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// The log event's own id (CloudWatch `logEvents[].id`): unique per event, so the identity
    /// of last resort when the record names no request.
    pub event_id: String,
    pub timestamp_ms: u64,
    pub message: String,
}

/// What one access-log record says was used.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRecord {
    pub request_id: String,
    pub token: Option<String>,
    pub model: String,
    pub usage: Usage,
    pub at_ms: u64,
}

/// Why a line is not charged.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not an LLM call with usage (startup logs, MCP traffic, refused requests): nothing to charge.
    NotUsage,
    /// An LLM usage record that cannot be charged: reported.
    Unusable(String),
}

/// The outcome of one batch.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub recorded: usize,
    /// Lines with nothing to charge.
    pub ignored: usize,
    /// Lines that should have been charged and were not, with why.
    pub failed: Vec<FailedLine>,
    pub tokens: u64,
    pub cost_micros: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct FailedLine {
    pub event_id: String,
    pub error: String,
}

/// Reads one access-log line.
pub fn parse_line(line: &LogLine) -> Result<UsageRecord, Skip> {
    // agentgateway's JSON logs are one object per line. Anything else is reported: a text-format
    // log (`logging.format` not `json`) would otherwise lose every record's usage silently.
    let record: Map<String, Value> = match serde_json::from_str(line.message.trim()) {
        Ok(Value::Object(record)) => record,
        Ok(_) => return Err(Skip::Unusable("not a JSON object".into())),
        Err(e) => return Err(Skip::Unusable(format!("not a JSON log record: {e}"))),
    };
    let text = |key: &str| {
        record
            .get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let count = |key: &str| -> Result<u64, Skip> {
        match record.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| Skip::Unusable(format!("{key} is not a token count: {v}"))),
        }
    };
    let Some(model) = text("gen_ai.response.model").or_else(|| text("gen_ai.request.model")) else {
        return Err(Skip::NotUsage);
    };
    // agentgateway's input count includes the tokens read from and written to the cache.
    let input = count("gen_ai.usage.input_tokens")?;
    let cache_read = count("gen_ai.usage.cache_read.input_tokens")?;
    let cache_write = count("gen_ai.usage.cache_creation.input_tokens")?;
    let usage = Usage {
        input: input.saturating_sub(cache_read + cache_write),
        output: count("gen_ai.usage.output_tokens")?,
        cache_read,
        cache_write,
        units: 0,
        estimated: false,
    };
    if usage.total() == 0 {
        return Err(Skip::NotUsage);
    }
    let request_id = text(REQUEST_ID_FIELD)
        .or_else(|| text("request.id"))
        .or_else(|| text("trace.id"))
        .unwrap_or(&line.event_id);
    Ok(UsageRecord {
        request_id: format!("accesslog-{request_id}"),
        token: text(TOKEN_FIELD).map(str::to_owned),
        model: model.to_owned(),
        usage,
        // The log event's timestamp rather than the record's `time`, whose fraction agentgateway
        // prints without zero padding (`.083917` as `.83917`).
        at_ms: line.timestamp_ms,
    })
}

pub struct Recorder {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
}

impl Recorder {
    /// Charges every usage record of `lines` and makes the debits durable before returning.
    /// A store failure is an error for the whole batch: the caller retries it (Lambda retries
    /// the event), and the debits' ids make the retry charge each record once.
    pub async fn record(&self, lines: &[LogLine]) -> Result<Report, StoreError> {
        let mut report = Report::default();
        let mut debits = Vec::new();
        // For the usage feed, once the debits are durable.
        let mut charged = Vec::new();
        // A caller's records share one token: one RSA verification and team lookup per batch.
        let mut callers = HashMap::new();
        for line in lines {
            match self.debit(line, &mut callers).await {
                Ok((debit, record, team, cost)) => {
                    report.recorded += 1;
                    report.tokens += record.usage.total();
                    report.cost_micros += cost;
                    debits.push(debit);
                    charged.push((record, team, cost));
                }
                Err(Skip::NotUsage) => report.ignored += 1,
                Err(Skip::Unusable(error)) => {
                    tracing::warn!(event_id = %line.event_id, %error, "access-log record not charged");
                    report.failed.push(FailedLine {
                        event_id: line.event_id.clone(),
                        error,
                    });
                }
            }
        }
        if !debits.is_empty() {
            self.engine.store().apply_debits(&debits).await?;
        }
        if let Some(feed) = self.engine.usage_feed() {
            for ((record, team, cost), debit) in charged.iter().zip(&debits) {
                feed.record(crate::usage_feed::Charged {
                    debit_id: &debit.id,
                    scopes: charged_scopes(debit, &team.id),
                    model: &record.model,
                    usage: &record.usage,
                    cost_micros: *cost,
                    source: crate::usage_feed::Source::AccessLog,
                    at_ms: record.at_ms,
                });
            }
            // Written before the batch is acknowledged: a Lambda instance is frozen right after.
            feed.flush().await;
        }
        metrics::counter!("tollgate_usage_records_total", "outcome" => "recorded")
            .increment(report.recorded as u64);
        metrics::counter!("tollgate_usage_records_total", "outcome" => "ignored")
            .increment(report.ignored as u64);
        metrics::counter!("tollgate_usage_records_total", "outcome" => "failed")
            .increment(report.failed.len() as u64);
        Ok(report)
    }

    async fn debit(
        &self,
        line: &LogLine,
        callers: &mut HashMap<String, Result<Caller, String>>,
    ) -> Result<(Debit, UsageRecord, Caller, u64), Skip> {
        let mut record = parse_line(line)?;
        let token = record.token.take().ok_or_else(|| {
            Skip::Unusable(format!(
                "no caller token: add `{TOKEN_FIELD}` to agentgateway's accessLog fields"
            ))
        })?;
        let team = match callers.get(&token) {
            Some(known) => known.clone(),
            None => {
                let team = self.team_of(&token).await;
                callers.insert(token, team.clone());
                team
            }
        }
        .map_err(Skip::Unusable)?;
        let (debit, cost) = self
            .engine
            .usage_debit(
                &team,
                &record.model,
                &record.usage,
                record.at_ms,
                &record.request_id,
            )
            .await;
        if cost.is_none() {
            tracing::warn!(team = %team.id, model = %record.model, "model has no price: tokens charged, spend not");
        }
        tracing::debug!(team = %team.id, request_id = %record.request_id, usage = ?record.usage, cost, "access-log usage");
        Ok((debit, record, team, cost.unwrap_or(0)))
    }

    async fn team_of(&self, token: &str) -> Result<Caller, String> {
        let principal = self
            .auth
            .authenticate_recorded(token, INVOKE_SCOPE)
            .await
            .map_err(|e| format!("caller token refused: {e}"))?;
        self.engine
            .team_for(&principal)
            .await
            .map_err(|r| format!("no team to charge: {}", r.reason))
    }
}

/// The scopes a debit charges, broadest first, as a ticket's (`Ticket::scopes`): those with a
/// token counter in it; a debit of no tokens names its team.
fn charged_scopes(debit: &Debit, team: &str) -> Vec<Scope> {
    let mut scopes: Vec<Scope> = Vec::new();
    for (key, _) in &debit.amounts {
        if matches!(key.counted, Counted::Tokens(_)) && !scopes.contains(&key.scope) {
            scopes.push(key.scope.clone());
        }
    }
    if scopes.is_empty() {
        scopes.push(Scope::Team(team.to_owned()));
    }
    scopes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: &str) -> LogLine {
        LogLine {
            event_id: "ev-1".into(),
            timestamp_ms: 1_700_000_000_000,
            message: message.into(),
        }
    }

    #[test]
    fn a_record_yields_its_usage_with_cached_tokens_counted_once() {
        let record = parse_line(&line(
            r#"{"level":"info","time":"2026-11-21T10:00:00.123Z","scope":"request",
            "http.status":200,"gen_ai.request.model":"gpt-4o-mini",
            "gen_ai.response.model":"gpt-4o-mini-2024-07-18","gen_ai.usage.input_tokens":120,
            "gen_ai.usage.cache_read.input_tokens":100,"gen_ai.usage.output_tokens":7,
            "tollgate.token":"Bearer abc","tollgate.request_id":"Root=1-abc"}"#,
        ))
        .unwrap();
        assert_eq!(record.model, "gpt-4o-mini-2024-07-18");
        assert_eq!(
            record.usage,
            Usage {
                input: 20,
                output: 7,
                cache_read: 100,
                cache_write: 0,
                units: 0,
                estimated: false
            }
        );
        assert_eq!(record.request_id, "accesslog-Root=1-abc");
        assert_eq!(record.token.as_deref(), Some("Bearer abc"));
        assert_eq!(record.at_ms, 1_700_000_000_000);
    }

    #[test]
    fn without_a_request_id_the_event_id_identifies_the_debit() {
        let record = parse_line(&line(
            r#"{"gen_ai.request.model":"claude-sonnet-4","gen_ai.usage.input_tokens":5,"gen_ai.usage.output_tokens":1}"#,
        ))
        .unwrap();
        assert_eq!(record.request_id, "accesslog-ev-1");
        assert_eq!(record.at_ms, 1_700_000_000_000);
        assert_eq!(record.model, "claude-sonnet-4");
        assert_eq!(record.token, None);
    }

    #[test]
    fn records_without_usage_are_ignored_and_unreadable_lines_reported() {
        for ignored in [
            r#"{"level":"info","message":"listening"}"#,
            r#"{"http.status":429,"gen_ai.request.model":"gpt-4o"}"#,
        ] {
            assert_eq!(parse_line(&line(ignored)), Err(Skip::NotUsage), "{ignored}");
        }
        for broken in [
            "2026-11-21T10:00:00Z\tinfo\trequest gen_ai.request.model=gpt-4o",
            r#"{"gen_ai.request.model":"gpt-4o","gen_ai.usage.output_tokens":"#,
            r#"{"gen_ai.request.model":"gpt-4o","gen_ai.usage.output_tokens":-3}"#,
            r#"["gen_ai.usage.output_tokens"]"#,
        ] {
            assert!(
                matches!(parse_line(&line(broken)), Err(Skip::Unusable(_))),
                "{broken}"
            );
        }
    }
}
