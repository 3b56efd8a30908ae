//! DynamoDB store: counters shared by every tollgate instance, exact under contention.
//!
//! One table, key `pk` (S) + `sk` (S):
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | counter | `team#<scope partition>` | the counter's name (`policy::counters`: `rpm#<minute>`, `tokens#<period>`, `spend#<period>[#<model>]`, ...) | `v` (N), `expires_at` (N, TTL) |
//! | team | `teams` | `<id>` | `doc` (S, JSON) |
//! | admin price | `prices` | `<model>` | `doc` (S, JSON) |
//! | applied debit | `debit#<request id>` | `debit` | `expires_at` (N, TTL) |
//!
//! Admission per request (`admission = "per_request"`, the Lambda functions' default) costs one
//! call: the conditional `UpdateItem` on the current minute's RPM bucket (`ADD` under a
//! `ConditionExpression`, so a refusal writes nothing, with the current value returned either
//! way). With quota leases (`admission = "leases"`, the sidecar's default) the same conditional
//! update claims a slice of the room left at once ([`Store::claim_within`]) and the engine's lease
//! layer admits from it (see `engine::lease`). The other counters admission looks at come from a
//! read cache: the previous minute's bucket is final a few seconds after that minute is over
//! ([`BUCKET_SETTLES_MS`]: late claims and returned slices land first) and is cached until it
//! expires; token and spend counters are cached for `read_cache_ms` and updated with this
//! instance's own debits at once, so only other instances' debits can be that stale. When the
//! table cannot be read, cached values are served while they are under `STALE_LIMIT` old.
//!
//! Debits are one `TransactWriteItems` each: the `ADD`s plus a marker item that must not exist yet,
//! so a debit replayed from the spool is applied exactly once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, KeysAndAttributes,
    Put, ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    TimeToLiveSpecification, TransactWriteItem, Update,
};
use serde::{Deserialize, Serialize};

use super::{
    BUCKET_SETTLES_MS, Claim, Counted, CounterKey, Debit, Increment, Scope, Store, StoreError,
    StoreResult,
};
use crate::policy::Team;
use crate::policy::pricing::PriceUsd;
use crate::policy::rate::BUCKET_MS;

/// Cached counter values are served this long at most when the table cannot be read.
const STALE_LIMIT: Duration = Duration::from_secs(300);
/// Markers of applied debits are kept this long: the longest outage a replay can follow.
const DEBIT_MARKER_SECS: u64 = 14 * 86_400;
/// TransactWriteItems takes at most 100 items.
const TRANSACTION_ITEMS: usize = 100;
/// Deadline of a debit: longer than admission's (it is off the request path), short enough that
/// debits a hung DynamoDB holds reach the durable spool within seconds.
const DEBIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of table management and team or price writes (admin, startup).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// BatchGetItem takes at most 100 keys.
const BATCH_GET_MAX: usize = 100;
/// Deadline of a lease's claim. Claims run apart from any request (waiting admissions give up at
/// their own deadline), so this only bounds how long until a failure is known; a claim that timed
/// out may still have been applied, and its slice is then lost to the fleet until the bucket
/// ends, so it is longer than `timeout_ms`.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);

/// How admission uses DynamoDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Claim slices of each counter's room and admit from them locally; one conditional update per
    /// request near a limit. For long-running instances (the sidecar).
    Leases,
    /// One conditional update per request. For short-lived instances (Lambda), which cannot hand
    /// back what they hold when they are frozen or reaped.
    PerRequest,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamoDbSettings {
    pub table: String,
    /// Region; the standard provider chain (AWS_REGION, profile, IMDS) when absent.
    pub region: Option<String>,
    /// e.g. `http://127.0.0.1:8000` for DynamoDB Local; `AWS_ENDPOINT_URL_DYNAMODB` works too.
    pub endpoint_url: Option<String>,
    /// Deadline of one call, retries of throttling included.
    pub timeout_ms: u64,
    /// How stale cached token and spend counters may be.
    pub read_cache_ms: u64,
    /// Durable local queue of debits DynamoDB could not take yet (replayed when it is back).
    pub spool_path: std::path::PathBuf,
    /// `leases` or `per_request`; unset: leases in the sidecar, per request in Lambda.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
}

impl Default for DynamoDbSettings {
    fn default() -> Self {
        Self {
            table: "tollgate".into(),
            region: None,
            endpoint_url: None,
            timeout_ms: 300,
            read_cache_ms: 1000,
            spool_path: "tollgate-spool.redb".into(),
            admission: None,
        }
    }
}

pub struct DynamoStore {
    client: Client,
    /// Calls made, for the benchmark's calls-per-request figure.
    calls: std::sync::atomic::AtomicU64,
    table: String,
    read_cache: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

#[derive(Clone, Copy)]
struct Cached {
    value: u64,
    at: Instant,
    /// Never changes again (a finished minute's RPM bucket).
    final_value: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A failed call as `dynamodb <Op>: <code>: <message>` (or the transport error's own words).
fn unavailable<E: ProvideErrorMetadata + std::error::Error>(op: &str, e: E) -> StoreError {
    let detail = match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => DisplayErrorContext(&e).to_string(),
    };
    StoreError::Unavailable(format!("dynamodb {op}: {detail}"))
}

/// A request that could not even be built (a bug, not an outage).
fn malformed(op: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("dynamodb {op}: {e}"))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A scope's counters share one partition key: `team#` and the scope's partition, as a team's
/// always had.
fn partition_key(partition: &str) -> String {
    format!("team#{partition}")
}

fn counter_item_key(key: &CounterKey) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".into(), s(partition_key(&key.partition()))),
        ("sk".into(), s(key.name())),
    ])
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(0, |v| v.max(0) as u64)
}

/// Calls off the request path may take longer than `timeout_ms`, which is sized for admission.
fn timeout_override(deadline: Duration) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::config::Builder::default().timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(deadline)
            .build(),
    )
}

/// A finished minute's request bucket no longer changes once late claims and returns have landed.
fn is_final(key: &CounterKey, now_ms: u64) -> bool {
    key.rpm_minute()
        .is_some_and(|minute| (minute + 1) * BUCKET_MS + BUCKET_SETTLES_MS <= now_ms)
}

impl DynamoStore {
    pub async fn connect(settings: &DynamoDbSettings) -> Self {
        let config = crate::aws::sdk_config(
            settings.region.as_deref(),
            settings.endpoint_url.as_deref(),
            Duration::from_millis(settings.timeout_ms),
        )
        .await;
        Self {
            client: Client::new(&config),
            calls: std::sync::atomic::AtomicU64::new(0),
            table: settings.table.clone(),
            read_cache: Duration::from_millis(settings.read_cache_ms),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Creates the table (on-demand capacity) with TTL on `expires_at`, unless it exists.
    /// Returns whether it was created.
    pub async fn create_table(&self) -> StoreResult<bool> {
        let exists = self
            .client
            .describe_table()
            .table_name(&self.table)
            .customize()
            .config_override(timeout_override(CONTROL_TIMEOUT))
            .send()
            .await
            .is_ok();
        if !exists {
            let attribute = |name: &str| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attribute definition is complete")
            };
            let key = |name: &str, kind| {
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(kind)
                    .build()
                    .expect("key schema is complete")
            };
            self.client
                .create_table()
                .table_name(&self.table)
                .attribute_definitions(attribute("pk"))
                .attribute_definitions(attribute("sk"))
                .key_schema(key("pk", KeyType::Hash))
                .key_schema(key("sk", KeyType::Range))
                .billing_mode(BillingMode::PayPerRequest)
                .customize()
                .config_override(timeout_override(CONTROL_TIMEOUT))
                .send()
                .await
                .map_err(|e| unavailable("CreateTable", e))?;
        }
        let ttl = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("expires_at")
                    .enabled(true)
                    .build()
                    .expect("TTL specification is complete"),
            )
            .customize()
            .config_override(timeout_override(CONTROL_TIMEOUT))
            .send()
            .await;
        if let Err(e) = ttl {
            // Enabling TTL twice is refused: it is already on.
            if !DisplayErrorContext(&e)
                .to_string()
                .contains("already enabled")
            {
                return Err(unavailable("UpdateTimeToLive", e));
            }
        }
        Ok(!exists)
    }

    /// DynamoDB calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count(&self, op: &'static str) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("tollgate_dynamodb_calls_total", "op" => op).increment(1);
    }

    fn remember(&self, key: &CounterKey, value: u64) {
        let final_value = is_final(key, unix_now() * 1000);
        self.cache.lock().unwrap().insert(
            key.id(),
            Cached {
                value,
                at: Instant::now(),
                final_value,
            },
        );
    }

    fn evict_old(&self) {
        let mut cache = self.cache.lock().unwrap();
        if cache.len() > 50_000 {
            cache.retain(|_, c| c.at.elapsed() < STALE_LIMIT && !c.final_value);
        }
    }

    async fn fetch(&self, keys: &[&CounterKey]) -> StoreResult<HashMap<String, u64>> {
        let mut found = HashMap::new();
        // The items DynamoDB returns, by their (pk, sk), back to the keys asked for.
        let items: Vec<(String, String, String)> = keys
            .iter()
            .map(|k| (partition_key(&k.partition()), k.name(), k.id()))
            .collect();
        let ids: HashMap<(&str, &str), &String> = items
            .iter()
            .map(|(pk, sk, id)| ((pk.as_str(), sk.as_str()), id))
            .collect();
        for chunk in keys.chunks(BATCH_GET_MAX) {
            let mut pending: Vec<HashMap<String, AttributeValue>> =
                chunk.iter().map(|k| counter_item_key(k)).collect();
            while !pending.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .projection_expression("pk, sk, v")
                    .build()
                    .map_err(|e| malformed("BatchGetItem", e))?;
                self.count("BatchGetItem");
                let response = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| unavailable("BatchGetItem", e))?;
                for item in response
                    .responses()
                    .and_then(|r| r.get(&self.table))
                    .into_iter()
                    .flatten()
                {
                    let field = |name: &str| item.get(name).and_then(|v| v.as_s().ok());
                    let (Some(pk), Some(sk)) = (field("pk"), field("sk")) else {
                        continue;
                    };
                    if let Some(id) = ids.get(&(pk.as_str(), sk.as_str())) {
                        found.insert((*id).clone(), number(item, "v"));
                    }
                }
                // Keys DynamoDB did not get to (throttling) are asked for again.
                if let Some(unprocessed) =
                    response.unprocessed_keys().and_then(|u| u.get(&self.table))
                {
                    pending = unprocessed.keys().to_vec();
                }
            }
        }
        Ok(found)
    }

    /// `ADD amount` if the counter then stays at most `limit`; `deadline` replaces `timeout_ms`.
    async fn conditional_add(
        &self,
        key: &CounterKey,
        amount: u64,
        limit: u64,
        deadline: Option<Duration>,
    ) -> StoreResult<Increment> {
        if amount > limit {
            let current = self.read_counters(&[key]).await?[0];
            return Ok(Increment::Refused(current));
        }
        self.count("UpdateItem");
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(counter_item_key(key)))
            .update_expression("ADD v :amount SET expires_at = if_not_exists(expires_at, :expires)")
            .condition_expression("attribute_not_exists(v) OR v <= :max")
            .expression_attribute_values(":amount", n(amount))
            .expression_attribute_values(":expires", n(key.expires_at))
            .expression_attribute_values(":max", n(limit - amount))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let outcome = match deadline {
            Some(deadline) => {
                request
                    .customize()
                    .config_override(timeout_override(deadline))
                    .send()
                    .await
            }
            None => request.send().await,
        };
        match outcome {
            Ok(out) => {
                let value = out.attributes().map_or(amount, |a| number(a, "v"));
                self.remember(key, value);
                Ok(Increment::Applied(value))
            }
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                let value = match e.err() {
                    UpdateItemError::ConditionalCheckFailedException(c) => {
                        c.item().map_or(limit, |i| number(i, "v"))
                    }
                    _ => limit,
                };
                self.remember(key, value);
                Ok(Increment::Refused(value))
            }
            Err(e) => Err(unavailable("UpdateItem", e)),
        }
    }

    /// Applies debits in one transaction: a marker per debit (which must not exist yet) and one
    /// `ADD` per counter with the debits' amounts summed, so a batch for one team is one call and
    /// never conflicts with itself. If a marker exists (a replay), each debit is applied on its
    /// own, and the ones already applied are skipped.
    async fn apply_group(&self, debits: &[&Debit]) -> StoreResult<()> {
        let mut sums: Vec<(&CounterKey, i64)> = Vec::new();
        for (key, amount) in debits.iter().flat_map(|d| &d.amounts) {
            match sums.iter_mut().find(|(k, _)| *k == key) {
                Some((_, sum)) => *sum += amount,
                None => sums.push((key, *amount)),
            }
        }
        let mut items = Vec::with_capacity(debits.len() + sums.len());
        for debit in debits {
            let marker = Put::builder()
                .table_name(&self.table)
                .item("pk", s(format!("debit#{}", debit.id)))
                .item("sk", s("debit"))
                .item("expires_at", n(unix_now() + DEBIT_MARKER_SECS))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(|e| malformed("TransactWriteItems", e))?;
            items.push(TransactWriteItem::builder().put(marker).build());
        }
        for (key, amount) in &sums {
            let add = Update::builder()
                .table_name(&self.table)
                .set_key(Some(counter_item_key(key)))
                .update_expression(
                    "ADD v :amount SET expires_at = if_not_exists(expires_at, :expires)",
                )
                .expression_attribute_values(":amount", n(amount))
                .expression_attribute_values(":expires", n(key.expires_at))
                .build()
                .map_err(|e| malformed("TransactWriteItems", e))?;
            items.push(TransactWriteItem::builder().update(add).build());
        }
        self.count("TransactWriteItems");
        let outcome = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .customize()
            .config_override(timeout_override(DEBIT_TIMEOUT))
            .send()
            .await;
        match outcome {
            Ok(_) => {
                let mut cache = self.cache.lock().unwrap();
                for (key, amount) in sums {
                    if let Some(c) = cache.get_mut(&key.id()) {
                        c.value = c.value.saturating_add_signed(amount);
                    }
                }
                Ok(())
            }
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), TransactWriteItemsError::TransactionCanceledException(t)
                    if t.cancellation_reasons().iter().any(|r| r.code() == Some("ConditionalCheckFailed"))) =>
            {
                if let [debit] = debits {
                    tracing::debug!(debit = %debit.id, "debit already applied");
                    metrics::counter!("tollgate_debits_total", "result" => "duplicate")
                        .increment(1);
                    return Ok(());
                }
                for debit in debits {
                    Box::pin(self.apply_group(&[*debit])).await?;
                }
                Ok(())
            }
            Err(e) => Err(unavailable("TransactWriteItems", e)),
        }
    }

    async fn put_doc(&self, pk: &str, sk: &str, json: String) -> StoreResult<()> {
        self.count("PutItem");
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            .item("doc", s(json))
            .customize()
            .config_override(timeout_override(CONTROL_TIMEOUT))
            .send()
            .await
            .map_err(|e| unavailable("PutItem", e))?;
        Ok(())
    }

    async fn delete_doc(&self, pk: &str, sk: &str) -> StoreResult<bool> {
        self.count("DeleteItem");
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .return_values(ReturnValue::AllOld)
            .customize()
            .config_override(timeout_override(CONTROL_TIMEOUT))
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem", e))?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }

    async fn get_doc(&self, pk: &str, sk: &str) -> StoreResult<Option<String>> {
        self.count("GetItem");
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        Ok(out
            .item()
            .and_then(|i| i.get("doc"))
            .and_then(|d| d.as_s().ok())
            .cloned())
    }

    /// Every item of a partition whose sort key starts with `prefix`.
    async fn query(
        &self,
        pk: &str,
        prefix: &str,
    ) -> StoreResult<Vec<HashMap<String, AttributeValue>>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            self.count("Query");
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":pk", s(pk))
                .set_exclusive_start_key(start);
            // DynamoDB refuses an empty key value: no prefix means the whole partition.
            query = if prefix.is_empty() {
                query.key_condition_expression("pk = :pk")
            } else {
                query
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix))
            };
            let out = query.send().await.map_err(|e| unavailable("Query", e))?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(items),
            }
        }
    }

    async fn docs<T: serde::de::DeserializeOwned>(
        &self,
        pk: &str,
    ) -> StoreResult<Vec<(String, T)>> {
        let mut docs = Vec::new();
        for item in self.query(pk, "").await? {
            let sk = item
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            let doc = item
                .get("doc")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            let value = serde_json::from_str(&doc)
                .map_err(|e| StoreError::Corrupt(format!("{pk}/{sk}: {e}")))?;
            docs.push((sk, value));
        }
        Ok(docs)
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn read_counters(&self, keys: &[&CounterKey]) -> StoreResult<Vec<u64>> {
        let (mut values, missing) = {
            let cache = self.cache.lock().unwrap();
            let mut values = Vec::with_capacity(keys.len());
            let mut missing = Vec::new();
            for key in keys {
                match cache.get(&key.id()) {
                    Some(c) if c.final_value || c.at.elapsed() < self.read_cache => {
                        values.push(Some(c.value))
                    }
                    _ => {
                        values.push(None);
                        missing.push(*key);
                    }
                }
            }
            (values, missing)
        };
        if missing.is_empty() {
            return Ok(values.into_iter().map(Option::unwrap_or_default).collect());
        }
        self.evict_old();
        match self.fetch(&missing).await {
            Ok(found) => {
                for key in &missing {
                    self.remember(key, found.get(&key.id()).copied().unwrap_or(0));
                }
                let cache = self.cache.lock().unwrap();
                for (slot, key) in values.iter_mut().zip(keys) {
                    if slot.is_none() {
                        *slot = Some(
                            found
                                .get(&key.id())
                                .copied()
                                .or_else(|| cache.get(&key.id()).map(|c| c.value))
                                .unwrap_or(0),
                        );
                    }
                }
                Ok(values.into_iter().map(Option::unwrap_or_default).collect())
            }
            Err(e) => {
                // Degraded: answer from values cached recently enough, else fail.
                let cache = self.cache.lock().unwrap();
                let mut stale = Vec::with_capacity(keys.len());
                for key in keys {
                    match cache.get(&key.id()) {
                        Some(c) if c.at.elapsed() < STALE_LIMIT || c.final_value => {
                            stale.push(c.value)
                        }
                        _ => return Err(e),
                    }
                }
                metrics::counter!("tollgate_store_stale_reads_total").increment(1);
                Ok(stale)
            }
        }
    }

    async fn add_within(
        &self,
        key: &CounterKey,
        amount: u64,
        limit: u64,
    ) -> StoreResult<Increment> {
        self.conditional_add(key, amount, limit, None).await
    }

    async fn claim_within(
        &self,
        key: &CounterKey,
        at_least: u64,
        up_to: u64,
        limit: u64,
    ) -> StoreResult<Claim> {
        super::claim_by_adding(at_least, up_to, limit, |amount| {
            self.conditional_add(key, amount, limit, Some(CLAIM_TIMEOUT))
        })
        .await
    }

    async fn apply_debits(&self, debits: &[Debit]) -> StoreResult<()> {
        // Groups fit TransactWriteItems' 100 items: a marker per debit plus each distinct counter.
        let mut group: Vec<&Debit> = Vec::new();
        let mut keys: std::collections::HashSet<&CounterKey> = std::collections::HashSet::new();
        for debit in debits {
            let new_keys = debit
                .amounts
                .iter()
                .filter(|(k, _)| !keys.contains(k))
                .count();
            if !group.is_empty() && group.len() + 1 + keys.len() + new_keys > TRANSACTION_ITEMS {
                self.apply_group(&group).await?;
                group.clear();
                keys.clear();
            }
            group.push(debit);
            keys.extend(debit.amounts.iter().map(|(k, _)| k));
        }
        if !group.is_empty() {
            self.apply_group(&group).await?;
        }
        Ok(())
    }

    async fn list_counters(&self, scope: &Scope, prefix: &str) -> StoreResult<Vec<(Counted, u64)>> {
        let mut counters: Vec<(Counted, u64)> = self
            .query(&partition_key(&scope.partition()), prefix)
            .await?
            .iter()
            .filter_map(|item| {
                let sk = item.get("sk").and_then(|v| v.as_s().ok())?;
                Some((Counted::parse(sk)?, number(item, "v")))
            })
            .collect();
        counters.sort();
        Ok(counters)
    }

    async fn put_team(&self, team: &Team) -> StoreResult<()> {
        let json = serde_json::to_string(team).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.put_doc("teams", &team.id, json).await
    }

    async fn delete_team(&self, id: &str) -> StoreResult<bool> {
        self.delete_doc("teams", id).await
    }

    async fn team(&self, id: &str) -> StoreResult<Option<Team>> {
        match self.get_doc("teams", id).await? {
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("team {id}: {e}"))),
            None => Ok(None),
        }
    }

    async fn team_for_client(&self, client_id: &str) -> StoreResult<Option<Team>> {
        Ok(self
            .list_teams()
            .await?
            .into_iter()
            .find(|t| t.client_ids.iter().any(|c| c == client_id)))
    }

    async fn list_teams(&self) -> StoreResult<Vec<Team>> {
        Ok(self
            .docs::<Team>("teams")
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    async fn prices(&self) -> StoreResult<Vec<(String, PriceUsd)>> {
        self.docs("prices").await
    }

    async fn put_price(&self, model: &str, price: &PriceUsd) -> StoreResult<()> {
        let json = serde_json::to_string(price).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.put_doc("prices", model, json).await
    }

    async fn delete_price(&self, model: &str) -> StoreResult<bool> {
        self.delete_doc("prices", model).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.get_doc("health", "health").await.map(|_| ())
    }

    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        "dynamodb"
    }
}
