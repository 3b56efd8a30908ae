use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;

use super::*;
use crate::policy::pricing::PriceUsd;
use crate::policy::{OnBreach, Tier};
use crate::store::{Counted, MemoryStore, Scope, StoreResult};

// 2026-11-21T12:00:10Z
const NOON: u64 = 1_795_262_410_000;

fn team(id: &str, rpm: u64, daily_tokens: u64) -> Team {
    Team {
        client_ids: vec![format!("{id}-client")],
        rpm: Some(rpm),
        daily_tokens: Some(daily_tokens),
        ..Team::new(id, Tier::Standard)
    }
}

fn engine_with(store: Arc<dyn Store>, fail_mode: FailMode) -> (Arc<Engine>, Arc<ManualClock>) {
    engine_set(
        store,
        EngineSettings {
            fail_modes: FailModes::all(fail_mode),
            ..Default::default()
        },
    )
}

fn engine_set(store: Arc<dyn Store>, settings: EngineSettings) -> (Arc<Engine>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    clock.0.store(NOON, Ordering::Relaxed);
    (
        Arc::new(Engine::new(store, None, settings, clock.clone())),
        clock,
    )
}

/// The key of a counter as stores hold it.
fn stored(team: &str, name: &str) -> CounterKey {
    CounterKey::parse(team, name, 0).expect("a counter tollgate writes")
}

fn engine() -> (Arc<Engine>, Arc<ManualClock>) {
    engine_with(Arc::new(MemoryStore::new()), FailMode::Closed)
}

fn principal(team: Option<&str>, client: Option<&str>) -> Principal {
    Principal {
        team: team.map(Into::into),
        client_id: client.map(Into::into),
        user: None,
        scopes: vec![],
    }
}

/// One request (not a model call) that used `tokens`, charged and applied.
async fn use_tokens(engine: &Engine, t: &Team, tokens: u64) {
    let ticket = engine.admit(t, None, None).await.unwrap();
    let usage = Usage {
        input: tokens,
        ..Default::default()
    };
    engine.settle(ticket, usage, "test").await;
    engine.flush().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admits_exactly_the_rpm_limit_under_concurrency() {
    let (engine, _) = engine();
    let t = Arc::new(team("a", 50, 1_000_000));
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let (engine, t) = (engine.clone(), t.clone());
            tokio::spawn(async move { engine.admit(&t, None, None).await.is_ok() })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap() as usize;
    }
    assert_eq!(admitted, 50);
}

#[tokio::test]
async fn rejected_requests_consume_nothing() {
    let (engine, clock) = engine();
    let t = team("a", 3, 1_000_000);
    for _ in 0..3 {
        engine.admit(&t, None, None).await.unwrap();
    }
    for _ in 0..10 {
        let r = engine.admit(&t, None, None).await.unwrap_err();
        assert_eq!(r.kind, RejectionKind::RpmExceeded);
        assert_eq!(
            r.reason,
            "RPM limit exceeded: 3 requests in the last 60 s, limit 3"
        );
        assert_eq!(r.rate.unwrap().rpm_remaining, 0);
        assert!(r.retry_after_secs.unwrap() >= 1);
    }
    // Two minutes later the window is empty again: the refusals left no trace.
    clock.0.fetch_add(120_000, Ordering::Relaxed);
    for _ in 0..3 {
        engine.admit(&t, None, None).await.unwrap();
    }
}

#[tokio::test]
async fn headers_count_down() {
    let (engine, _) = engine();
    let t = team("a", 5, 1000);
    let first = engine.admit(&t, None, None).await.unwrap();
    assert_eq!(first.rate.rpm_limit, 5);
    assert_eq!(first.rate.rpm_remaining, 4);
    assert_eq!(first.rate.tokens_limit, Some(1000));
    assert_eq!(first.rate.tokens_remaining, Some(1000));
    assert_eq!(first.rate.rpm_reset_secs, 50);
    let second = engine.admit(&t, None, None).await.unwrap();
    assert_eq!(second.rate.rpm_remaining, 3);
}

#[tokio::test]
async fn daily_tokens_are_debited_after_the_response_and_roll_over_at_midnight() {
    let (engine, clock) = engine();
    let t = team("a", 1000, 100);
    let usage = Usage {
        input: 40,
        output: 20,
        ..Default::default()
    };
    let ticket = engine.admit(&t, None, Some("r1")).await.unwrap();
    engine.settle(ticket, usage, "test").await;
    engine.flush().await;
    let ticket = engine.admit(&t, None, Some("r2")).await.unwrap();
    assert_eq!(ticket.rate.tokens_remaining, Some(40));
    engine.settle(ticket, usage, "test").await;
    engine.flush().await;
    let r = engine.admit(&t, None, None).await.unwrap_err();
    assert_eq!(r.kind, RejectionKind::DailyTokensExceeded);
    assert_eq!(
        r.reason,
        "Daily token limit exceeded (120/100 tokens today)"
    );
    // 11:59:50 until midnight.
    assert_eq!(r.retry_after_secs, Some(11 * 3600 + 59 * 60 + 50));
    clock
        .0
        .fetch_add(r.retry_after_secs.unwrap() * 1000, Ordering::Relaxed);
    let next_day = engine.admit(&t, None, None).await.unwrap();
    assert_eq!(next_day.rate.tokens_remaining, Some(100));
}

#[tokio::test]
async fn a_token_rejection_does_not_consume_rpm() {
    let (engine, _) = engine();
    let t = team("a", 2, 10);
    use_tokens(&engine, &t, 10).await;
    for _ in 0..5 {
        assert_eq!(
            engine.admit(&t, None, None).await.unwrap_err().kind,
            RejectionKind::DailyTokensExceeded
        );
    }
    let counters = engine
        .store()
        .read_counters(&[&CounterKey::team(
            "a",
            Counted::Requests {
                minute: NOON / 60_000,
            },
        )])
        .await
        .unwrap();
    assert_eq!(counters, vec![1]);
}

#[tokio::test]
async fn teams_resolve_by_claim_then_client_and_never_fall_back() {
    let (engine, _) = engine();
    engine
        .store()
        .put_team(&team("search", 5, 5))
        .await
        .unwrap();
    assert_eq!(
        engine
            .team_for(&principal(Some("search"), None))
            .await
            .unwrap()
            .id,
        "search"
    );
    assert_eq!(
        engine
            .team_for(&principal(None, Some("search-client")))
            .await
            .unwrap()
            .id,
        "search"
    );
    for p in [
        principal(Some("nope"), Some("search-client")),
        principal(None, Some("stranger")),
        principal(None, None),
    ] {
        assert_eq!(
            engine.team_for(&p).await.unwrap_err().kind,
            RejectionKind::UnknownTeam,
            "{p:?}"
        );
    }
}

/// A store whose every call fails, as a backend does during an outage.
struct DownStore;

#[async_trait]
impl Store for DownStore {
    async fn read_counters(&self, _: &[&CounterKey]) -> StoreResult<Vec<u64>> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn add_within(&self, _: &CounterKey, _: u64, _: u64) -> StoreResult<Increment> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn apply_debits(&self, _: &[Debit]) -> StoreResult<()> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn list_counters(&self, _: &Scope, _: &str) -> StoreResult<Vec<(Counted, u64)>> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn put_team(&self, _: &Team) -> StoreResult<()> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn prices(&self) -> StoreResult<Vec<(String, PriceUsd)>> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn put_price(&self, _: &str, _: &PriceUsd) -> StoreResult<()> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn delete_price(&self, _: &str) -> StoreResult<bool> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn delete_team(&self, _: &str) -> StoreResult<bool> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn team(&self, _: &str) -> StoreResult<Option<Team>> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn team_for_client(&self, _: &str) -> StoreResult<Option<Team>> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn list_teams(&self) -> StoreResult<Vec<Team>> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn ping(&self) -> StoreResult<()> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }
    fn backend_name(&self) -> &'static str {
        "down"
    }
}

#[tokio::test]
async fn store_outage_follows_the_fail_mode() {
    let t = team("a", 5, 5);
    let (closed, _) = engine_with(Arc::new(DownStore), FailMode::Closed);
    let r = closed.admit(&t, None, None).await.unwrap_err();
    assert_eq!(r.kind, RejectionKind::Unavailable);
    assert_eq!(r.kind.status(), 503);
    let (open, _) = engine_with(Arc::new(DownStore), FailMode::Open);
    // Open: admitted, but an outage is not unlimited: the team's RPM holds per instance.
    for _ in 0..5 {
        assert!(open.admit(&t, None, None).await.is_ok());
    }
    assert_eq!(
        open.admit(&t, None, None).await.unwrap_err().kind,
        RejectionKind::RpmExceeded
    );
}

// ---- money: prices, budgets, caps, allow-lists

/// $1 per 1000 tokens of any kind: costs are easy to read.
fn dollar_per_thousand() -> EngineSettings {
    let mut settings = EngineSettings::default();
    let price = PriceUsd {
        input: 1000.0,
        output: 1000.0,
        cache_read: Some(100.0),
        cache_write: Some(2000.0),
        ..Default::default()
    };
    settings.prices.set(
        "test-model",
        price.to_price().unwrap(),
        crate::policy::pricing::PriceSource::Config,
    );
    settings.prices.set(
        "other-model",
        price.to_price().unwrap(),
        crate::policy::pricing::PriceSource::Config,
    );
    settings
}

/// A team's spend this (test) month, in total and on `model`, in micro-dollars.
async fn spent(engine: &Engine, team: &str, model: &str) -> [u64; 2] {
    let month = stored(team, "spend#2026-11");
    let on_model = stored(team, &format!("spend#2026-11#{model}"));
    let values = engine
        .store()
        .read_counters(&[&month, &on_model])
        .await
        .unwrap();
    [values[0], values[1]]
}

fn budgeted(id: &str, usd: f64) -> Team {
    Team {
        monthly_budget_usd: Some(usd),
        ..team(id, 1000, 10_000_000)
    }
}

fn call(model: &str) -> Option<ModelCall<'_>> {
    Some(ModelCall {
        model,
        prompt_chars: 400,
        max_output_tokens: Some(100),
        units: None,
    })
}

async fn spend(engine: &Engine, t: &Team, model: &str, tokens: u64) {
    let ticket = engine.admit(t, call(model), None).await.unwrap();
    engine
        .settle(
            ticket,
            Usage {
                input: tokens,
                ..Default::default()
            },
            "test",
        )
        .await;
    engine.flush().await;
}

#[tokio::test]
async fn a_spent_budget_refuses_until_the_month_rolls_over() {
    let (engine, clock) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    let t = budgeted("b", 1.0);
    spend(&engine, &t, "test-model", 600).await;
    spend(&engine, &t, "test-model", 420).await;
    let r = engine
        .admit(&t, call("test-model"), None)
        .await
        .unwrap_err();
    assert_eq!(r.kind, RejectionKind::MonthlyBudgetExceeded);
    assert_eq!(r.reason, "Monthly budget exceeded ($1.02/$1.00)");
    assert!(!r.kind.retryable());
    // 2026-11-21T12:00:10Z to 2026-12-01T00:00:00Z.
    let retry = r.retry_after_secs.unwrap();
    assert_eq!(retry, 9 * 86_400 + 11 * 3600 + 59 * 60 + 50);
    // Non-model paths (model lists) cost nothing and still pass.
    assert!(engine.admit(&t, None, None).await.is_ok());
    clock.0.fetch_add(retry * 1000, Ordering::Relaxed);
    assert!(engine.admit(&t, call("test-model"), None).await.is_ok());
}

#[tokio::test]
async fn warn_mode_lets_requests_through_with_a_warning() {
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    let t = Team {
        on_breach: OnBreach::Warn,
        ..budgeted("w", 1.0)
    };
    spend(&engine, &t, "test-model", 1500).await;
    let ticket = engine.admit(&t, call("test-model"), None).await.unwrap();
    assert_eq!(
        ticket.budget_warning.as_deref(),
        Some("Monthly budget exceeded ($1.50/$1.00)")
    );
}

#[tokio::test]
async fn thresholds_warn_on_every_request_but_are_reported_once() {
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    let t = budgeted("th", 1.0);
    spend(&engine, &t, "test-model", 790).await;
    assert_eq!(
        engine
            .admit(&t, call("test-model"), None)
            .await
            .unwrap()
            .budget_warning,
        None
    );
    spend(&engine, &t, "test-model", 20).await;
    for _ in 0..3 {
        let ticket = engine.admit(&t, call("test-model"), None).await.unwrap();
        assert_eq!(
            ticket.budget_warning.as_deref(),
            Some("80% of the monthly budget used ($0.81/$1.00)")
        );
    }
    let marker = stored("th", "warned#2026-11#80");
    // Claimed in a task of its own, off the admission path.
    assert_eq!(wait_counter(&engine, &marker, 1).await, 1);
    // A second instance sharing the store does not report it again.
    let (other, _) = engine_set(engine.store().clone(), dollar_per_thousand());
    other.admit(&t, call("test-model"), None).await.unwrap();
    assert_eq!(
        engine.store().read_counters(&[&marker]).await.unwrap(),
        vec![1]
    );
}

/// Polls `key` until it reads `want` (markers are claimed in a task of their own).
async fn wait_counter(engine: &Engine, key: &CounterKey, want: u64) -> u64 {
    let mut value = 0;
    for _ in 0..1000 {
        value = engine.store().read_counters(&[key]).await.unwrap()[0];
        if value == want {
            break;
        }
        tokio::task::yield_now().await;
    }
    value
}

#[tokio::test]
async fn a_jump_past_several_thresholds_reports_each_even_when_refused() {
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    let t = budgeted("jump", 1.0);
    // 0 % to 110 % in one call: its own admission saw no crossing.
    spend(&engine, &t, "test-model", 1100).await;
    let refused = engine
        .admit(&t, call("test-model"), None)
        .await
        .unwrap_err();
    assert_eq!(refused.kind, RejectionKind::MonthlyBudgetExceeded);
    for threshold in [80, 100] {
        let marker = stored("jump", &format!("warned#2026-11#{threshold}"));
        assert_eq!(wait_counter(&engine, &marker, 1).await, 1, "{threshold} %");
    }
}

#[tokio::test]
async fn a_settled_call_is_fed_with_its_scopes_model_tokens_and_cost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let mut settings = dollar_per_thousand();
    settings.usage_feed =
        crate::usage_feed::UsageFeed::start(&crate::usage_feed::UsageFeedSettings {
            path: Some(path.display().to_string()),
            ..Default::default()
        });
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), settings);
    let t = budgeted("fed", 10.0);
    let ticket = engine
        .admit(&t, call("TEST-MODEL"), Some("req-7"))
        .await
        .unwrap();
    let usage = Usage {
        input: 100,
        output: 20,
        ..Default::default()
    };
    engine.settle(ticket, usage, "test").await;
    engine.usage_feed().unwrap().flush().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["request_id"], "req-7");
    assert_eq!(line["model"], "test-model", "the canonical name");
    assert_eq!(line["scopes"][0]["label"], "team fed");
    assert_eq!(line["tokens"]["total"], 120);
    assert_eq!(line["cost_micros"], 120_000);
    assert_eq!(line["source"], "settled");
}

#[tokio::test]
async fn a_model_cap_refuses_only_that_model() {
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    let mut t = budgeted("cap", 100.0);
    t.model_caps.insert("test-model".into(), 0.5);
    spend(&engine, &t, "test-model", 500).await;
    let r = engine
        .admit(&t, call("TEST-MODEL"), None)
        .await
        .unwrap_err();
    assert_eq!(r.kind, RejectionKind::ModelBudgetExceeded);
    assert_eq!(
        r.reason,
        "Monthly budget for model test-model exceeded ($0.50/$0.50)"
    );
    assert!(engine.admit(&t, call("other-model"), None).await.is_ok());
}

#[tokio::test]
async fn allow_lists_and_unknown_models_are_refused_before_counting() {
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    let t = Team {
        allowed_models: Some(vec!["gpt-4o".into()]),
        ..budgeted("al", 10.0)
    }
    .validated()
    .unwrap();
    assert!(
        engine
            .admit(&t, call("gpt-4o-2024-08-06"), None)
            .await
            .is_ok()
    );
    let r = engine
        .admit(&t, call("gpt-4o-mini"), None)
        .await
        .unwrap_err();
    assert_eq!(
        (r.kind, r.kind.status()),
        (RejectionKind::ModelNotAllowed, 403)
    );
    let r = engine
        .admit(&t, call("mystery-model"), None)
        .await
        .unwrap_err();
    assert_eq!(
        (r.kind, r.kind.status()),
        (RejectionKind::UnknownModel, 400)
    );
    assert!(r.reason.contains("mystery-model"));
    let minute = CounterKey::team(
        "al",
        Counted::Requests {
            minute: NOON / 60_000,
        },
    );
    assert_eq!(
        engine.store().read_counters(&[&minute]).await.unwrap(),
        vec![1],
        "refusals count nothing"
    );
}

#[tokio::test]
async fn unknown_models_can_be_charged_a_default_price() {
    let mut settings = dollar_per_thousand();
    settings.unknown_model = UnknownModel::Charge(
        PriceUsd {
            input: 2000.0,
            output: 2000.0,
            cache_read: None,
            cache_write: None,
            ..Default::default()
        }
        .to_price()
        .unwrap()
        .tokens,
    );
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), settings);
    let t = budgeted("dp", 10.0);
    spend(&engine, &t, "mystery-model", 100).await;
    assert_eq!(
        spent(&engine, "dp", "mystery-model").await,
        [200_000, 200_000]
    );
}

#[tokio::test]
async fn cache_tokens_are_priced_at_cache_prices() {
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    let t = budgeted("cache", 10.0);
    let ticket = engine.admit(&t, call("test-model"), None).await.unwrap();
    let usage = Usage {
        input: 10,
        output: 20,
        cache_read: 1000,
        cache_write: 100,
        units: 0,
        estimated: false,
    };
    engine.settle(ticket, usage, "test").await;
    engine.flush().await;
    // 10 + 20 tokens at $1/1k, 1000 at $0.10/1k, 100 at $2/1k = 0.03 + 0.1 + 0.2 = $0.33.
    let month = stored("cache", "spend#2026-11");
    assert_eq!(
        engine.store().read_counters(&[&month]).await.unwrap(),
        vec![330_000]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_keep_concurrent_requests_within_the_budget() {
    let mut settings = dollar_per_thousand();
    settings.reserve = true;
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), settings);
    // Each request reserves (400/4 input + 100 output) tokens = $0.20 of a $1.00 budget.
    let t = Arc::new(budgeted("res", 1.0));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (engine, t) = (engine.clone(), t.clone());
            tokio::spawn(async move { engine.admit(&t, call("test-model"), None).await })
        })
        .collect();
    let mut tickets = Vec::new();
    for task in tasks {
        if let Ok(ticket) = task.await.unwrap() {
            tickets.push(ticket);
        }
    }
    assert_eq!(tickets.len(), 5);
    // Settling with less than reserved frees the difference for the next request.
    for ticket in tickets {
        engine
            .settle(
                ticket,
                Usage {
                    input: 50,
                    ..Default::default()
                },
                "test",
            )
            .await;
    }
    engine.flush().await;
    let reserved = stored("res", "reserved#2026-11");
    assert_eq!(
        engine.store().read_counters(&[&reserved]).await.unwrap(),
        vec![0]
    );
    assert!(engine.admit(&t, call("test-model"), None).await.is_ok());
}

// ---- several limits at once: the longest-lasting refusal is named

#[tokio::test]
async fn a_team_over_its_daily_tokens_and_its_budget_hears_about_the_budget() {
    let (engine, clock) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    let t = Team {
        daily_tokens: Some(1000),
        ..budgeted("both", 1.0)
    };
    spend(&engine, &t, "test-model", 1100).await; // 1100 tokens today, $1.10 this month
    let r = engine
        .admit(&t, call("test-model"), None)
        .await
        .unwrap_err();
    assert_eq!(r.kind, RejectionKind::MonthlyBudgetExceeded);
    assert_eq!(r.reason, "Monthly budget exceeded ($1.10/$1.00)");
    let to_month = 9 * 86_400 + 11 * 3600 + 59 * 60 + 50;
    assert_eq!(r.retry_after_secs, Some(to_month));
    assert!(!r.kind.retryable());
    // The daily tokens were spent too: a call without a model hears about them.
    let r = engine.admit(&t, None, None).await.unwrap_err();
    assert_eq!(r.kind, RejectionKind::DailyTokensExceeded);
    // Retrying when the day rolls over would not have helped: the budget still refuses.
    clock.0.fetch_add(12 * 3600 * 1000, Ordering::Relaxed);
    let r = engine
        .admit(&t, call("test-model"), None)
        .await
        .unwrap_err();
    assert_eq!(r.kind, RejectionKind::MonthlyBudgetExceeded);
    assert!(engine.admit(&t, None, None).await.is_ok());
}

#[tokio::test]
async fn a_model_cap_outlasts_the_day_and_a_full_minute_outlasts_its_last_seconds() {
    let (engine, clock) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    let mut t = Team {
        daily_tokens: Some(1000),
        ..budgeted("cap-day", 100.0)
    };
    t.model_caps.insert("test-model".into(), 0.5);
    spend(&engine, &t, "test-model", 1100).await;
    let r = engine
        .admit(&t, call("test-model"), None)
        .await
        .unwrap_err();
    assert_eq!(r.kind, RejectionKind::ModelBudgetExceeded);

    // 2026-11-21T23:59:45Z: one request fills a 1-RPM window and spends the day's tokens.
    let t = team("late", 1, 1000);
    clock.0.store(1_795_305_585_000, Ordering::Relaxed);
    use_tokens(&engine, &t, 1500).await;
    // Ten seconds before midnight the day ends before the RPM window frees a slot.
    clock.0.store(1_795_305_590_000, Ordering::Relaxed);
    let r = engine.admit(&t, None, None).await.unwrap_err();
    assert_eq!(r.kind, RejectionKind::RpmExceeded);
    assert_eq!(r.retry_after_secs, Some(70));
    assert!(r.kind.retryable());
}

// ---- calls billed per unit: images, characters

fn images(count: u64, quality: &str, size: &str) -> Units {
    Units::Images {
        count,
        quality: Some(quality.into()),
        size: Some(size.into()),
    }
}

/// Admits a call for `units` of `model` and charges it `billed` units.
async fn charge_units(engine: &Engine, t: &Team, model: &str, units: &Units, billed: u64) {
    let ticket = engine
        .admit(t, unit_call(model, units), None)
        .await
        .unwrap();
    let usage = Usage {
        units: billed,
        ..Default::default()
    };
    engine.settle(ticket, usage, "test").await;
    engine.flush().await;
}

/// The refusal of a call for `units` of `model`.
async fn refused_units(engine: &Engine, t: &Team, model: &str, units: &Units) -> Rejection {
    engine
        .admit(t, unit_call(model, units), None)
        .await
        .unwrap_err()
}

fn unit_call<'a>(model: &'a str, units: &'a Units) -> Option<ModelCall<'a>> {
    Some(ModelCall {
        model,
        prompt_chars: 40,
        max_output_tokens: Some(0),
        units: Some(units),
    })
}

#[tokio::test]
async fn images_are_charged_per_image_at_the_quality_and_size_asked_for() {
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), EngineSettings::default());
    let t = budgeted("img", 10.0);
    // The response returned both images: 2 x $0.12.
    charge_units(&engine, &t, "dall-e-3", &images(2, "hd", "1024x1792"), 2).await;
    assert_eq!(spent(&engine, "img", "dall-e-3").await, [240_000, 240_000]);
    // Characters of speech, likewise: 1000 at $15 per million.
    charge_units(&engine, &t, "tts-1", &Units::Characters(1000), 1000).await;
    assert_eq!(spent(&engine, "img", "tts-1").await, [255_000, 15_000]);
}

#[tokio::test]
async fn a_call_whose_units_have_no_price_is_refused() {
    let settings = EngineSettings {
        unknown_model: UnknownModel::Charge(Price {
            input: 1,
            output: 1,
            cache_read: 1,
            cache_write: 1,
            long_context: None,
        }),
        ..Default::default()
    };
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), settings);
    let t = budgeted("np", 10.0);
    let r = refused_units(&engine, &t, "dall-e-3", &images(1, "hd", "256x256")).await;
    assert_eq!(r.kind, RejectionKind::UnknownModel);
    assert!(
        r.reason.contains("quality hd and size 256x256"),
        "{}",
        r.reason
    );
    assert!(
        r.reason.contains("PUT /admin/prices/dall-e-3"),
        "{}",
        r.reason
    );
    let speech = Units::Characters(10);
    let r = refused_units(&engine, &t, "gpt-4o-mini-tts", &speech).await;
    assert_eq!(
        r.kind,
        RejectionKind::UnknownModel,
        "a default token price does not price characters"
    );
    let r = refused_units(&engine, &t, "gpt-4o", &speech).await;
    assert!(r.reason.contains("no price per character"), "{}", r.reason);
}

#[tokio::test]
async fn reservations_count_every_image_asked_for() {
    let settings = EngineSettings {
        reserve: true,
        ..Default::default()
    };
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), settings);
    // $0.10 left; standard 1024x1024 DALL-E 3 images cost $0.04 each.
    let t = budgeted("ri", 0.10);
    let r = refused_units(&engine, &t, "dall-e-3", &images(3, "standard", "1024x1024")).await;
    assert_eq!(r.kind, RejectionKind::MonthlyBudgetExceeded);
    let two = images(2, "standard", "1024x1024");
    let ticket = engine
        .admit(&t, unit_call("dall-e-3", &two), None)
        .await
        .unwrap();
    let reserved = stored("ri", "reserved#2026-11");
    assert_eq!(
        engine.store().read_counters(&[&reserved]).await.unwrap(),
        vec![80_000]
    );
    engine.settle(ticket, Usage::default(), "test").await;
}

// ---- the journal of admitted calls

fn journaled_engine(dir: &tempfile::TempDir) -> Arc<Engine> {
    let store = crate::store::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    let mut settings = dollar_per_thousand();
    settings.reserve = true;
    engine_set(Arc::new(store), settings).0
}

async fn counters(engine: &Engine, team: &str) -> (u64, u64, u64) {
    let values = engine
        .store()
        .read_counters(&[
            &stored(team, "tokens#2026-11-21"),
            &stored(team, "spend#2026-11"),
            &stored(team, "reserved#2026-11"),
        ])
        .await
        .unwrap();
    (values[0], values[1], values[2])
}

#[tokio::test]
async fn calls_open_when_the_grace_period_ends_are_charged_their_prompts_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = journaled_engine(&dir);
    let t = budgeted("grace", 100.0);
    let first = engine
        .admit(&t, call("test-model"), Some("g1"))
        .await
        .unwrap();
    let second = engine
        .admit(&t, call("test-model"), Some("g2"))
        .await
        .unwrap();
    // Reserved: (100 prompt + 100 output tokens) at $1/1k each.
    assert_eq!(counters(&engine, "grace").await, (0, 0, 400_000));

    let abandoned = engine.charge_unsettled(Unsettled::Abandoned).await;
    assert_eq!(
        abandoned,
        UnsettledCharge {
            calls: 2,
            tokens: 200,
            cost_micros: 200_000
        }
    );
    assert_eq!(counters(&engine, "grace").await, (200, 200_000, 0));
    // Their exchanges end after all: already charged, they charge nothing more.
    let usage = Usage {
        input: 5000,
        ..Default::default()
    };
    engine.settle(first, usage, "test").await;
    engine.settle(second, Usage::default(), "test").await;
    engine.flush().await;
    assert_eq!(counters(&engine, "grace").await, (200, 200_000, 0));
    assert_eq!(engine.charge_unsettled(Unsettled::Recovered).await.calls, 0);
}

#[tokio::test]
async fn settled_calls_leave_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let engine = journaled_engine(&dir);
    let t = budgeted("settled", 100.0);
    let charged = engine.admit(&t, call("test-model"), None).await.unwrap();
    let free = engine.admit(&t, call("test-model"), None).await.unwrap();
    let usage = Usage {
        input: 10,
        ..Default::default()
    };
    engine.settle(charged, usage, "test").await;
    engine.settle(free, Usage::default(), "test").await;
    engine.flush().await;
    assert_eq!(counters(&engine, "settled").await, (10, 10_000, 0));
    assert_eq!(
        engine.charge_unsettled(Unsettled::Abandoned).await,
        UnsettledCharge::default()
    );
}

#[tokio::test]
async fn only_model_calls_settled_here_are_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let engine = journaled_engine(&dir);
    let t = budgeted("webhook", 100.0);
    // A model list costs nothing; a webhook call is charged from its access-log record.
    let _free = engine.admit(&t, None, Some("list")).await.unwrap();
    engine
        .admit_reported_later(&t, call("test-model").unwrap(), Some("hook"))
        .await
        .unwrap();
    engine.flush().await;
    assert_eq!(counters(&engine, "webhook").await, (0, 0, 0));
    assert_eq!(engine.charge_unsettled(Unsettled::Abandoned).await.calls, 0);
}

#[tokio::test]
async fn calls_that_share_a_request_id_are_each_journaled_and_charged() {
    let dir = tempfile::tempdir().unwrap();
    let engine = journaled_engine(&dir);
    let t = budgeted("dup", 100.0);
    let first = engine
        .admit(&t, call("test-model"), Some("same"))
        .await
        .unwrap();
    let second = engine
        .admit(&t, call("test-model"), Some("same"))
        .await
        .unwrap();
    let usage = Usage {
        input: 7,
        ..Default::default()
    };
    assert_ne!(
        first.request_id, second.request_id,
        "one debit id for two calls"
    );
    engine.settle(second, usage, "test").await;
    engine.flush().await;
    // The second one settled; the first is still open at shutdown.
    let abandoned = engine.charge_unsettled(Unsettled::Abandoned).await;
    assert_eq!(abandoned.calls, 1);
    engine.settle(first, usage, "test").await;
    engine.flush().await;
    assert_eq!(counters(&engine, "dup").await, (107, 107_000, 0));
}

#[tokio::test]
async fn the_memory_store_journals_nothing() {
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    let t = budgeted("mem", 100.0);
    let _ticket = engine.admit(&t, call("test-model"), None).await.unwrap();
    assert_eq!(engine.charge_unsettled(Unsettled::Abandoned).await.calls, 0);
}

#[tokio::test]
async fn a_scope_refusing_after_another_counted_gives_the_count_back() {
    let mut settings = EngineSettings::default();
    settings.scopes.user_defaults.rpm = Some(2);
    let (engine, _) = engine_set(Arc::new(MemoryStore::new()), settings);
    let t = team("multi", 100, 1_000_000);
    let alice = Member {
        team: &t,
        user: Some("alice"),
        project: None,
    };
    for _ in 0..2 {
        engine.admit(alice, None, None).await.unwrap();
    }
    for _ in 0..3 {
        let r = engine.admit(alice, None, None).await.unwrap_err();
        assert_eq!(r.kind, RejectionKind::RpmExceeded);
        assert_eq!(r.scope.as_deref(), Some("user alice in team multi"));
        assert_eq!(r.rate.unwrap().rpm_limit, 2);
    }
    engine.flush().await;
    let minute = NOON / 60_000;
    let bucket = |scope: Scope| CounterKey::new(scope, Counted::Requests { minute });
    let values = engine
        .store()
        .read_counters(&[
            &bucket(Scope::Team("multi".into())),
            &bucket(Scope::User {
                team: "multi".into(),
                user: "alice".into(),
            }),
        ])
        .await
        .unwrap();
    // The team counted each refused request before the user's window refused it, and gave it back.
    assert_eq!(values, vec![2, 2]);
    // A teammate has a window of their own.
    let bob = Member {
        user: Some("bob"),
        ..alice
    };
    engine.admit(bob, None, None).await.unwrap();
}

#[tokio::test]
async fn a_weekly_budget_in_berlin_starts_over_at_its_local_monday_midnight() {
    let (engine, clock) = engine_set(Arc::new(MemoryStore::new()), dollar_per_thousand());
    // Monday 2026-11-30 00:00 in Berlin is 2026-11-29T23:00Z; start a day before it.
    let boundary_ms = 1_795_993_200_000;
    clock.0.store(boundary_ms - 86_400_000, Ordering::Relaxed);
    let t = Team {
        monthly_budget_usd: Some(0.5),
        budget_period: Some(crate::policy::PeriodSpec {
            every: crate::store::PeriodKind::Week,
            anchor_day: None,
            time_zone: Some("Europe/Berlin".into()),
        }),
        ..team("weekly", 1000, 1_000_000)
    };
    spend(&engine, &t, "test-model", 600).await; // $0.60
    let r = engine
        .admit(&t, call("test-model"), None)
        .await
        .unwrap_err();
    assert_eq!(r.kind, RejectionKind::BudgetExceeded);
    assert_eq!(r.reason, "Weekly budget exceeded ($0.60/$0.50)");
    assert_eq!(r.retry_after_secs, Some(86_400));
    // A second before local midnight: still that week. At it: a new week, a new counter.
    clock.0.store(boundary_ms - 1_000, Ordering::Relaxed);
    assert!(engine.admit(&t, call("test-model"), None).await.is_err());
    clock.0.store(boundary_ms, Ordering::Relaxed);
    engine.admit(&t, call("test-model"), None).await.unwrap();
    let spent_week = engine
        .store()
        .read_counters(&[&stored("weekly", "spend#week-2026-11-23")])
        .await
        .unwrap();
    assert_eq!(
        spent_week,
        vec![600_000],
        "the past week's spend stays readable"
    );
}
