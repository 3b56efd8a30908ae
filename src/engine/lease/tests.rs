//! A fleet of engines with leases over one shared store (a `MemoryStore` standing in for the
//! table, which can be made slow or unavailable), against the guarantees in the module docs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::engine::{Engine, EngineSettings, FailMode, FailModes, ManualClock, ModelCall};
use crate::identity::Principal;
use crate::policy::pricing::PriceSource;
use crate::policy::rate::{self, WindowPosition};
use crate::policy::{RejectionKind, Tier};
use crate::store::MemoryStore;

// 2026-11-21T12:00:10Z: 10 s into a minute.
const NOON: u64 = 1_795_262_410_000;

/// The shared table: one `MemoryStore`, every call counted, optionally slow or failing.
#[derive(Clone, Default)]
struct Table {
    store: Arc<MemoryStore>,
    calls: Arc<Calls>,
    /// Milliseconds each call takes (0: none).
    delay_ms: Arc<AtomicU64>,
    /// Only calls about this team are slow (empty: every call).
    slow_team: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
}

#[derive(Default)]
struct Calls {
    reads: AtomicU64,
    claims: AtomicU64,
    adds: AtomicU64,
    debits: AtomicU64,
    teams: AtomicU64,
}

impl Table {
    async fn call(&self, team: &str, counter: &AtomicU64) -> StoreResult<()> {
        counter.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        let slow_team = self.slow_team.lock().unwrap().clone();
        if delay > 0 && (slow_team.is_empty() || slow_team == team) {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        Ok(())
    }

    async fn value(&self, key: &CounterKey) -> u64 {
        self.store.read_counters(&[key]).await.unwrap()[0]
    }
}

#[async_trait]
impl Store for Table {
    async fn read_counters(&self, keys: &[&CounterKey]) -> StoreResult<Vec<u64>> {
        self.call(&keys[0].partition(), &self.calls.reads).await?;
        self.store.read_counters(keys).await
    }
    async fn add_within(
        &self,
        key: &CounterKey,
        amount: u64,
        limit: u64,
    ) -> StoreResult<Increment> {
        self.call(&key.partition(), &self.calls.adds).await?;
        self.store.add_within(key, amount, limit).await
    }
    async fn claim_within(
        &self,
        key: &CounterKey,
        at_least: u64,
        up_to: u64,
        limit: u64,
    ) -> StoreResult<Claim> {
        self.call(&key.partition(), &self.calls.claims).await?;
        self.store.claim_within(key, at_least, up_to, limit).await
    }
    async fn apply_debits(&self, debits: &[Debit]) -> StoreResult<()> {
        self.call("", &self.calls.debits).await?;
        self.store.apply_debits(debits).await
    }
    async fn list_counters(&self, scope: &Scope, prefix: &str) -> StoreResult<Vec<(Counted, u64)>> {
        self.store.list_counters(scope, prefix).await
    }
    async fn put_team(&self, team: &Team) -> StoreResult<()> {
        self.store.put_team(team).await
    }
    async fn delete_team(&self, id: &str) -> StoreResult<bool> {
        self.store.delete_team(id).await
    }
    async fn team(&self, id: &str) -> StoreResult<Option<Team>> {
        self.call(id, &self.calls.teams).await?;
        self.store.team(id).await
    }
    async fn team_for_client(&self, client_id: &str) -> StoreResult<Option<Team>> {
        self.store.team_for_client(client_id).await
    }
    async fn list_teams(&self) -> StoreResult<Vec<Team>> {
        self.store.list_teams().await
    }
    async fn prices(&self) -> StoreResult<Vec<(String, PriceUsd)>> {
        self.store.prices().await
    }
    async fn put_price(&self, model: &str, price: &PriceUsd) -> StoreResult<()> {
        self.store.put_price(model, price).await
    }
    async fn delete_price(&self, model: &str) -> StoreResult<bool> {
        self.store.delete_price(model).await
    }
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }
    fn backend_name(&self) -> &'static str {
        "table"
    }
}

fn settings(read_ttl: Duration) -> EngineSettings {
    let mut settings = EngineSettings {
        leases: Some(LeaseSettings { read_ttl }),
        fail_modes: FailModes::all(FailMode::Closed),
        admission_deadline: Duration::from_secs(5),
        ..Default::default()
    };
    let price = PriceUsd {
        input: 1000.0,
        output: 1000.0,
        cache_read: None,
        cache_write: None,
        ..Default::default()
    };
    settings
        .prices
        .set("test-model", price.to_price().unwrap(), PriceSource::Config);
    settings
}

/// `n` engines with leases on `table`, on one clock.
fn fleet(
    table: &Table,
    n: usize,
    settings: EngineSettings,
) -> (Vec<Arc<Engine>>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    clock.0.store(NOON, Ordering::Relaxed);
    let engines = (0..n)
        .map(|_| {
            Arc::new(Engine::new(
                Arc::new(table.clone()),
                None,
                settings.clone(),
                clock.clone(),
            ))
        })
        .collect();
    (engines, clock)
}

fn team(id: &str, rpm: u64) -> Arc<Team> {
    Arc::new(Team {
        rpm: Some(rpm),
        daily_tokens: Some(1_000_000_000),
        ..Team::new(id, Tier::Standard)
    })
}

fn rpm_key(team: &str, now_ms: u64) -> CounterKey {
    let pos = WindowPosition::at(now_ms);
    CounterKey::team(team, Counted::Requests { minute: pos.bucket })
}

/// Sends `n` admissions at once, the i-th through engine i % len; how many were admitted.
async fn burst(engines: &[Arc<Engine>], t: &Arc<Team>, n: usize) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (engine, t) = (engines[i % engines.len()].clone(), t.clone());
            tokio::spawn(async move { engine.admit(&t, None, None).await })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(r) => assert_eq!(r.kind, RejectionKind::RpmExceeded, "{r:?}"),
        }
    }
    admitted
}

async fn hand_back(engines: &[Arc<Engine>]) {
    for e in engines {
        e.hand_back_leases().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_admits_exactly_the_limit_and_the_table_ends_at_it() {
    let table = Table::default();
    let (engines, clock) = fleet(&table, 3, settings(Duration::from_secs(1)));
    let t = team("exact", 100);
    let mut admitted = burst(&engines, &t, 64).await;
    admitted += burst(&engines, &t, 300).await;
    assert_eq!(admitted, 100);
    hand_back(&engines).await;
    assert_eq!(table.value(&rpm_key("exact", clock.now_ms())).await, 100);

    // RPM 1,000 with 3,000 requests, 64 at a time.
    let t = team("exact-1000", 1000);
    let mut admitted = 0;
    for _ in 0..3000 / 64 + 1 {
        admitted += burst(&engines, &t, 64).await;
    }
    assert_eq!(admitted, 1000);
    hand_back(&engines).await;
    assert_eq!(
        table.value(&rpm_key("exact-1000", clock.now_ms())).await,
        1000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_from_the_limit_admissions_rarely_wait_for_the_store() {
    let table = Table::default();
    let (engines, _) = fleet(&table, 1, settings(Duration::from_secs(1)));
    let t = team("far", 1_000_000);
    for _ in 0..2000 {
        engines[0].admit(&t, None, None).await.unwrap();
    }
    for _ in 0..20 {
        assert_eq!(burst(&engines, &t, 64).await, 64);
    }
    let stats = engines[0].leases().unwrap().stats();
    let admitted = 2000 + 20 * 64;
    assert!(
        (stats.waited_for as f64) / (admitted as f64) <= 0.05,
        "{stats:?} for {admitted} admissions"
    );
    assert!(
        stats.from_slices as f64 >= 0.95 * admitted as f64,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_on_a_cold_counter_is_one_read_and_one_claim() {
    let table = Table::default();
    table.delay_ms.store(50, Ordering::SeqCst);
    let (engines, _) = fleet(&table, 1, settings(Duration::from_secs(1)));
    let t = team("cold", 1_000_000);
    assert_eq!(burst(&engines, &t, 64).await, 64);
    assert_eq!(table.calls.reads.load(Ordering::SeqCst), 1);
    // One claim for the admissions waiting when it starts; those that arrive while it is in
    // flight share at most one more.
    let claims = table.calls.claims.load(Ordering::SeqCst);
    assert!((1..=2).contains(&claims), "{claims} claims");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_from_a_new_team_is_one_team_lookup() {
    let table = Table::default();
    table.delay_ms.store(50, Ordering::SeqCst);
    table.store.put_team(&team("new", 10)).await.unwrap();
    let (engines, _) = fleet(&table, 1, settings(Duration::from_secs(1)));
    let lookups: Vec<_> = (0..64)
        .map(|_| {
            let engine = engines[0].clone();
            tokio::spawn(async move {
                let principal = Principal {
                    team: Some("new".into()),
                    client_id: None,
                    user: None,
                    scopes: vec![],
                };
                engine.team_for(&principal).await.map(|t| t.id.clone())
            })
        })
        .collect();
    for l in lookups {
        assert_eq!(l.await.unwrap().unwrap(), "new");
    }
    assert_eq!(table.calls.teams.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_or_failed_store_never_refuses_what_a_slice_covers() {
    let table = Table::default();
    let mut s = settings(Duration::from_millis(50));
    s.admission_deadline = Duration::from_millis(200);
    let (engines, _) = fleet(&table, 1, s);
    let engine = &engines[0];
    let t = team("slow", 1_000_000);
    // Warm: the slice now covers about a second of this demand.
    for _ in 0..200 {
        engine.admit(&t, None, None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Slower than the admission deadline: reads are stale, refills late; covered admissions
    // neither wait nor fail.
    table.delay_ms.store(1000, Ordering::SeqCst);
    let held = engine.leases().unwrap().held();
    assert!(held >= 50, "the slice holds {held}");
    for _ in 0..held {
        let started = std::time::Instant::now();
        engine.admit(&t, None, None).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(50));
    }
    table.delay_ms.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await; // the late calls land
    for _ in 0..200 {
        engine.admit(&t, None, None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Down: what is held is still admitted; beyond it, the fail mode (closed).
    table.down.store(true, Ordering::SeqCst);
    let held = engine.leases().unwrap().held();
    assert!(held >= 50, "the slice holds {held}");
    let mut refused = 0;
    for _ in 0..held + 5 {
        match engine.admit(&t, None, None).await {
            Ok(_) => {}
            Err(r) => {
                assert_eq!(r.kind, RejectionKind::Unavailable);
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 5, "{held} held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_waited_past_its_deadline_does_not_open_the_breaker_for_others() {
    for leases in [true, false] {
        let table = Table::default();
        let mut s = settings(Duration::from_secs(1));
        s.admission_deadline = Duration::from_millis(100);
        if !leases {
            s.leases = None;
        }
        let (engines, _) = fleet(&table, 1, s);
        let engine = engines[0].clone();
        let (slow, fast) = (team("slow-team", 1000), team("fast-team", 1000));
        engine.admit(&fast, None, None).await.unwrap();
        *table.slow_team.lock().unwrap() = "slow-team".into();
        table.delay_ms.store(400, Ordering::SeqCst);
        let waiting = {
            let (engine, slow) = (engine.clone(), slow.clone());
            tokio::spawn(async move { engine.admit(&slow, None, None).await })
        };
        // The store keeps answering for another team meanwhile.
        for _ in 0..20 {
            engine.admit(&fast, None, None).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = waiting.await.unwrap().unwrap_err();
        assert_eq!(r.kind, RejectionKind::Unavailable, "leases: {leases}");
        for _ in 0..20 {
            assert!(
                engine.admit(&fast, None, None).await.is_ok(),
                "leases: {leases}: one slow request opened the breaker for everyone"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_answers_nothing_opens_the_breaker() {
    let table = Table::default();
    let mut s = settings(Duration::from_secs(1));
    s.admission_deadline = Duration::from_millis(100);
    s.leases = None;
    let (engines, _) = fleet(&table, 1, s);
    let t = team("hung", 1000);
    engines[0].admit(&t, None, None).await.unwrap();
    table.delay_ms.store(10_000, Ordering::SeqCst);
    assert!(engines[0].admit(&t, None, None).await.is_err());
    // The next ones are refused without calling the store.
    let calls =
        || table.calls.reads.load(Ordering::SeqCst) + table.calls.adds.load(Ordering::SeqCst);
    let before = calls();
    let started = std::time::Instant::now();
    assert!(engines[0].admit(&t, None, None).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(calls(), before);
}

/// Two instances with leases and one engine admitting per request see the same arrivals every
/// half second through a minute whose previous minute used the whole limit, so the ceiling grows
/// from 0 to the limit; `arrivals(step)` requests arrive in each step. At no step may the fleet
/// have admitted more than per-request admission; returns the largest shortfall.
async fn fleet_against_per_request(id: &str, limit: u64, arrivals: impl Fn(u64) -> usize) -> usize {
    let minute_start = NOON - NOON % rate::BUCKET_MS;
    let table = Table::default();
    let exact = Arc::new(MemoryStore::new());
    let t = team(id, limit);
    for store in [&*table.store, &*exact] {
        let previous = rpm_key(id, minute_start - 1);
        store.add_within(&previous, limit, limit).await.unwrap();
    }
    let (engines, clock) = fleet(&table, 2, settings(Duration::ZERO));
    clock.0.store(minute_start, Ordering::Relaxed);
    let per_request = Engine::new(exact, None, EngineSettings::default(), clock.clone());
    let (mut fleet_admitted, mut exact_admitted) = (0, 0);
    let mut worst_gap = 0;
    for step in 0..120 {
        clock.0.store(minute_start + step * 500, Ordering::Relaxed);
        let n = arrivals(step);
        fleet_admitted += burst(&engines, &t, n).await;
        for _ in 0..n {
            exact_admitted += per_request.admit(&t, None, None).await.is_ok() as usize;
        }
        assert!(
            fleet_admitted <= exact_admitted,
            "{id} at {} ms: fleet {fleet_admitted} > per request {exact_admitted}",
            step * 500
        );
        worst_gap = worst_gap.max(exact_admitted - fleet_admitted);
    }
    assert!(exact_admitted as u64 > limit * 9 / 10, "{exact_admitted}");
    worst_gap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sliding_window_never_admits_more_than_per_request_admission() {
    // Always at the ceiling: a few requests every half second, more than it grows by.
    let gap = fleet_against_per_request("window", 100, |step| 3 + (step % 4) as usize).await;
    assert!(gap <= 4, "worst shortfall {gap}");
    // Quiet for half a minute (room piles up and slices are claimed), then a rush past it.
    let gap =
        fleet_against_per_request("window-rush", 1000, |step| if step < 60 { 2 } else { 60 }).await;
    // Under-admission: what one instance holds unused while the other is refused.
    assert!(gap <= 16, "worst shortfall {gap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lowered_limit_holds_at_once_whatever_a_slice_holds() {
    let table = Table::default();
    let (engines, _) = fleet(&table, 1, settings(Duration::from_secs(1)));
    for _ in 0..100 {
        engines[0]
            .admit(&team("lowered", 1000), None, None)
            .await
            .unwrap();
    }
    assert!(engines[0].leases().unwrap().held() > 0);
    // An admin lowers the team's RPM to what it already used this minute.
    let r = engines[0]
        .admit(&team("lowered", 100), None, None)
        .await
        .unwrap_err();
    assert_eq!(r.kind, RejectionKind::RpmExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finished_minute_is_read_again_before_it_counts_as_the_previous_one() {
    let limit = 10;
    let table = Table::default();
    // A long read cache: only the bucket rule makes the reader read the finished minute again.
    let (engines, clock) = fleet(&table, 2, settings(Duration::from_secs(600)));
    let (a, b) = (&engines[0], &engines[1]);
    let t = team("rollover", limit);
    let minute_start = NOON - NOON % rate::BUCKET_MS;
    clock.0.store(minute_start + 50_000, Ordering::Relaxed);
    a.admit(&t, None, None).await.unwrap();
    clock.0.store(minute_start + 55_000, Ordering::Relaxed);
    for _ in 0..9 {
        b.admit(&t, None, None).await.unwrap();
    }
    hand_back(&engines).await;
    // Half a second into the next minute the previous one still weighs 99%: 10 * 0.99 = 9.9 of
    // the 10 allowed, so nothing fits.
    clock.0.store(minute_start + 60_500, Ordering::Relaxed);
    let r = a.admit(&t, None, None).await.unwrap_err();
    assert_eq!(r.kind, RejectionKind::RpmExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unused_units_go_back_when_idle_and_when_the_minute_ends() {
    let table = Table::default();
    let (engines, clock) = fleet(&table, 1, settings(Duration::from_secs(1)));
    let t = team("returns", 1_000_000);
    for _ in 0..100 {
        engines[0].admit(&t, None, None).await.unwrap();
    }
    let key = rpm_key("returns", clock.now_ms());
    assert!(
        table.value(&key).await > 100,
        "a slice is held beyond what was admitted"
    );
    tokio::time::sleep(IDLE_RETURN + 2 * UPKEEP_EVERY).await;
    assert_eq!(table.value(&key).await, 100, "idle: handed back");

    for _ in 0..100 {
        engines[0].admit(&t, None, None).await.unwrap();
    }
    assert!(table.value(&key).await > 200);
    clock.0.fetch_add(rate::BUCKET_MS, Ordering::Relaxed);
    tokio::time::sleep(2 * UPKEEP_EVERY).await;
    assert_eq!(table.value(&key).await, 200, "minute over: handed back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_are_leased_and_never_pass_the_budget() {
    let table = Table::default();
    let mut s = settings(Duration::from_secs(1));
    s.reserve = true;
    let (engines, _) = fleet(&table, 2, s);
    // Each call reserves (400/4 input + 100 output) tokens at $1 per 1000 = $0.20 = 200,000
    // micro-dollars, of a $100 budget: room for exactly 500.
    let t = Arc::new(Team {
        monthly_budget_usd: Some(100.0),
        ..(*team("reserve", 1_000_000)).clone()
    });
    let call = || {
        Some(ModelCall {
            model: "test-model",
            prompt_chars: 400,
            max_output_tokens: Some(100),
            units: None,
        })
    };
    let admit_all = async |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (engine, t) = (engines[i % 2].clone(), t.clone());
                tokio::spawn(async move { engine.admit(&t, call(), None).await })
            })
            .collect();
        let mut tickets = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Ok(ticket) => tickets.push(ticket),
                Err(r) => assert_eq!(r.kind, RejectionKind::MonthlyBudgetExceeded, "{r:?}"),
            }
        }
        tickets
    };
    let reserved = CounterKey::parse("reserve", "reserved#2026-11", 0).unwrap();
    let spent = CounterKey::parse("reserve", "spend#2026-11", 0).unwrap();
    // Each instance sees what the other handed back or released once its reads are refreshed.
    let refresh = async || {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for e in &engines {
            e.store().read_counters(&[&reserved, &spent]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut tickets = Vec::new();
    for _ in 0..10 {
        tickets.extend(admit_all(64).await);
    }
    assert!(tickets.len() <= 500);
    hand_back(&engines).await;
    refresh().await;
    tickets.extend(admit_all(64).await);
    assert_eq!(tickets.len(), 500);
    hand_back(&engines).await;
    assert_eq!(table.value(&reserved).await, 500 * 200_000);
    // Settled for less than reserved: the difference is free again, fleet-wide.
    for (i, ticket) in tickets.into_iter().enumerate().take(10) {
        let usage = crate::policy::Usage {
            input: 50,
            ..Default::default()
        };
        engines[i % 2].settle(ticket, usage, "test").await;
    }
    for e in &engines {
        e.flush().await;
    }
    refresh().await;
    // 10 settled at $0.05 each: $1.50 of their $2.00 reserved is free: 7 more fit.
    let more = admit_all(20).await;
    assert_eq!(more.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_limit_refusals_do_not_each_call_the_store() {
    let table = Table::default();
    let (engines, _) = fleet(&table, 2, settings(Duration::from_millis(300)));
    let (a, b) = (&engines[0], &engines[1]);
    let t = team("hammered", 20);
    b.admit(&t, None, None).await.unwrap();
    let held_by_b = b.leases().unwrap().held();
    assert!(held_by_b > 0, "b holds a slice");
    let mut admitted = 0;
    while a.admit(&t, None, None).await.is_ok() {
        admitted += 1;
    }
    assert_eq!(admitted as u64, 19 - held_by_b);
    let claims = table.calls.claims.load(Ordering::SeqCst);
    for _ in 0..50 {
        let r = a.admit(&t, None, None).await.unwrap_err();
        assert_eq!(r.kind, RejectionKind::RpmExceeded);
        assert_eq!(
            r.reason,
            "RPM limit exceeded: 20 requests in the last 60 s, limit 20"
        );
    }
    assert_eq!(
        table.calls.claims.load(Ordering::SeqCst),
        claims,
        "refused without a call"
    );
    // What b did not use goes back; once a's refusal is older than a read may be, a asks again.
    b.hand_back_leases().await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..held_by_b {
        a.admit(&t, None, None).await.unwrap();
    }
    assert!(a.admit(&t, None, None).await.is_err());
}
