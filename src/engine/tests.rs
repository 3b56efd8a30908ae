use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::policy::Tier;
use crate::store::{MemoryStore, StoreResult};

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
    let clock = Arc::new(ManualClock::default());
    clock.0.store(NOON, Ordering::Relaxed);
    let engine = Engine::new(
        store,
        TierTable::default(),
        Duration::from_secs(5),
        fail_mode,
        clock.clone(),
    );
    (Arc::new(engine), clock)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admits_exactly_the_rpm_limit_under_concurrency() {
    let (engine, _) = engine();
    let t = Arc::new(team("a", 50, 1_000_000));
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let (engine, t) = (engine.clone(), t.clone());
            tokio::spawn(async move { engine.admit(&t, None).await.is_ok() })
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
        engine.admit(&t, None).await.unwrap();
    }
    for _ in 0..10 {
        let r = engine.admit(&t, None).await.unwrap_err();
        assert_eq!(r.kind, RejectionKind::RpmExceeded);
        assert_eq!(r.reason, "RPM limit exceeded (4/3 requests per minute)");
        assert!(r.retry_after_secs.unwrap() >= 1);
    }
    // Two minutes later the window is empty again: the refusals left no trace.
    clock.0.fetch_add(120_000, Ordering::Relaxed);
    for _ in 0..3 {
        engine.admit(&t, None).await.unwrap();
    }
}

#[tokio::test]
async fn headers_count_down() {
    let (engine, _) = engine();
    let t = team("a", 5, 1000);
    let first = engine.admit(&t, None).await.unwrap();
    assert_eq!(first.rate.rpm_limit, 5);
    assert_eq!(first.rate.rpm_remaining, 4);
    assert_eq!(first.rate.tokens_limit, Some(1000));
    assert_eq!(first.rate.tokens_remaining, Some(1000));
    assert_eq!(first.rate.rpm_reset_secs, 50);
    let second = engine.admit(&t, None).await.unwrap();
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
    let ticket = engine.admit(&t, Some("r1")).await.unwrap();
    engine.settle(ticket, usage, "test").await;
    engine.flush().await;
    let ticket = engine.admit(&t, Some("r2")).await.unwrap();
    assert_eq!(ticket.rate.tokens_remaining, Some(40));
    engine.settle(ticket, usage, "test").await;
    engine.flush().await;
    let r = engine.admit(&t, None).await.unwrap_err();
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
    let next_day = engine.admit(&t, None).await.unwrap();
    assert_eq!(next_day.rate.tokens_remaining, Some(100));
}

#[tokio::test]
async fn a_token_rejection_does_not_consume_rpm() {
    let (engine, _) = engine();
    let t = team("a", 2, 10);
    let ticket = engine.admit(&t, None).await.unwrap();
    engine
        .settle(
            ticket,
            Usage {
                input: 10,
                ..Default::default()
            },
            "test",
        )
        .await;
    engine.flush().await;
    for _ in 0..5 {
        assert_eq!(
            engine.admit(&t, None).await.unwrap_err().kind,
            RejectionKind::DailyTokensExceeded
        );
    }
    let counters = engine
        .store()
        .read_counters(&[&CounterKey::requests_in_minute("a", NOON / 60_000, 0)])
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
    async fn increment_below(&self, _: &CounterKey, _: u64) -> StoreResult<Increment> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn apply_debits(&self, _: &[Debit]) -> StoreResult<()> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn put_team(&self, _: &Team) -> StoreResult<()> {
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
    let r = closed.admit(&t, None).await.unwrap_err();
    assert_eq!(r.kind, RejectionKind::Unavailable);
    assert_eq!(r.kind.status(), 503);
    let (open, _) = engine_with(Arc::new(DownStore), FailMode::Open);
    assert!(open.admit(&t, None).await.is_ok());
}
