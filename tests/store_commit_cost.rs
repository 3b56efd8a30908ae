//! What the embedded store's group commits cost per model call, without Envoy: a fixed rate of
//! calls from many tasks, each admitted (an RPM increment and a journal entry), held open for a
//! while (the exchange with the provider) and settled through the ledger, as the engine does.
//! Prints commits, calls per commit and the process's CPU time per call for each commit delay,
//! and the same load on the memory store (no commits) as the floor. It prints numbers and asserts
//! nothing about speed: run it by hand on a quiet machine (release build).
//!
//! ```sh
//! cargo test --release --test store_commit_cost -- --ignored --nocapture
//! ```
//!
//! Settings (environment): `BENCH_RATE` calls/s (3400), `BENCH_TASKS` (32), `BENCH_SECS` per
//! run (5), `BENCH_EXCHANGE_MS` from admission to settlement (3), `BENCH_DELAYS` commit delays in
//! ms ("0 1 2 5").

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::engine::Ledger;
use tollgate::store::{CounterKey, Debit, EmbeddedStore, JournalEntry, MemoryStore, Store};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// User and system CPU time of this process so far, from /proc/self/stat (clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn commits_so_far(metrics: &metrics_exporter_prometheus::PrometheusHandle) -> u64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with("tollgate_store_commits_total{db=\"embedded\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

struct Load {
    rate: u64,
    tasks: u64,
    run: Duration,
    exchange: Duration,
}

/// Runs the load against `store` and returns how many calls were settled.
async fn run_calls(store: Arc<dyn Store>, load: &Load, run_id: &str) -> u64 {
    let ledger = Ledger::start(store.clone(), None);
    let journal = store.journal();
    let expires = 4_000_000_000;
    let period = Duration::from_secs_f64(load.tasks as f64 / load.rate as f64);
    let until = Instant::now() + load.run;
    let mut workers = Vec::new();
    for task in 0..load.tasks {
        let (store, ledger, journal) = (store.clone(), ledger.clone(), journal.clone());
        let exchange = load.exchange;
        let run_id = run_id.to_owned();
        workers.push(tokio::spawn(async move {
            let team = format!("team{}", task % 4);
            let tokens = CounterKey::parse(&team, "tokens#2036-11-21", expires).unwrap();
            let spend = CounterKey::parse(&team, "spend#2036-11", expires).unwrap();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut calls = 0;
            while Instant::now() < until {
                tick.tick().await;
                let id = format!("{run_id}-{task}-{calls}");
                let minute = format!("rpm#{}", calls / 1000);
                let rpm = CounterKey::parse(&team, &minute, expires).unwrap();
                store.add_within(&rpm, 1, u64::MAX).await.unwrap();
                let estimate = Debit {
                    id: id.clone(),
                    amounts: vec![(tokens.clone(), 250), (spend.clone(), 900)],
                };
                if let Some(journal) = &journal {
                    journal.open(JournalEntry {
                        team: team.clone(),
                        model: "gpt-4o-mini".into(),
                        admitted_at_ms: 1,
                        tokens: 250,
                        cost_micros: 900,
                        debit: estimate.clone(),
                    });
                }
                tokio::time::sleep(exchange).await;
                if let Some(journal) = &journal {
                    assert!(journal.claim(&id));
                }
                ledger
                    .record(Debit {
                        amounts: vec![(tokens.clone(), 312), (spend.clone(), 1100)],
                        ..estimate
                    })
                    .await;
                calls += 1;
            }
            calls
        }));
    }
    let mut calls = 0;
    for worker in workers {
        calls += worker.await.unwrap();
    }
    ledger.flush().await;
    calls
}

#[test]
#[ignore = "a benchmark: run by hand, see the module documentation"]
fn commit_cost_per_call() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder in this binary");
    let load = Load {
        rate: setting("BENCH_RATE", 3400),
        tasks: setting("BENCH_TASKS", 32),
        run: Duration::from_secs(setting("BENCH_SECS", 5)),
        exchange: Duration::from_millis(setting("BENCH_EXCHANGE_MS", 3)),
    };
    let delays: Vec<u64> = std::env::var("BENCH_DELAYS")
        .unwrap_or_else(|_| "0 1 2 5".into())
        .split_whitespace()
        .map(|d| d.parse().expect("delays in ms"))
        .collect();
    // Two workers, as tollgate has on the 2-core VM.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{} calls/s from {} tasks, {} ms from admission to settlement, {:?} per run; load average {}",
        load.rate,
        load.tasks,
        load.exchange.as_millis(),
        load.run,
        load_avg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("store     delay  calls/s  commits/s  calls/commit  cpu/call");
    let mut runs: Vec<(String, Option<u64>)> = vec![("memory".into(), None)];
    runs.extend(delays.iter().map(|d| ("embedded".into(), Some(*d))));
    for (i, (name, delay)) in runs.into_iter().enumerate() {
        let (calls, commits, cpu, took) = runtime.block_on(async {
            let store: Arc<dyn Store> = match delay {
                None => Arc::new(MemoryStore::new()),
                Some(ms) => Arc::new(
                    EmbeddedStore::open_with_commit_delay(
                        &dir.path().join(format!("{i}.redb")),
                        Duration::from_millis(ms),
                    )
                    .unwrap(),
                ),
            };
            let (commits, cpu, started) = (commits_so_far(&metrics), process_cpu(), Instant::now());
            let calls = run_calls(store, &load, &format!("r{i}")).await;
            (
                calls,
                commits_so_far(&metrics) - commits,
                process_cpu() - cpu,
                started.elapsed().as_secs_f64(),
            )
        });
        println!(
            "{name:<9} {:>5}  {:>7.0}  {:>9.0}  {:>12.1}  {:>6.1}us",
            delay.map_or("-".into(), |d| format!("{d}ms")),
            calls as f64 / took,
            commits as f64 / took,
            if commits == 0 {
                0.0
            } else {
                calls as f64 / commits as f64
            },
            cpu.as_secs_f64() * 1e6 / calls as f64,
        );
    }
}
