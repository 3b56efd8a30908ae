//! Admission against DynamoDB (Local, or a real table) through the real engine and store, per
//! request and with quota leases: for 1, 16 and 64 admissions in flight, far from a limit and
//! past one, the admission p50/p99, the DynamoDB calls an admission waited for (synchronous) per
//! admitted request, all calls per request, and whether exactly the limit was admitted.
//!
//! Two engines (instances) share the table; requests alternate between them. Usage is not
//! settled: debits are off the request path and do not change admission. Each run starts with one
//! round of `in flight` admissions for its team, not measured (counted for exactness): the first
//! requests of a team in a minute wait for a read and a claim, which a minute's steady traffic
//! pays once; that cost is reported on its own line.
//!
//!   cargo run --release --example dynamodb_admission -- ENDPOINT [REQUESTS] [NEAR_LIMIT]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tollgate::engine::{Clock, Engine, EngineSettings, LeaseSettings, SystemClock};
use tollgate::policy::{RejectionKind, Team, Tier};
use tollgate::store::{DynamoDbSettings, DynamoStore};

fn percentile(sorted: &[u128], q: f64) -> u128 {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// Microseconds, readably.
fn latency(micros: u128) -> String {
    if micros < 1000 {
        format!("{micros} µs")
    } else {
        format!("{:.1} ms", micros as f64 / 1000.0)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    PerRequest,
    Leases,
}

struct Fleet {
    table: Arc<DynamoStore>,
    engines: Vec<Arc<Engine>>,
}

async fn fleet(settings: &DynamoDbSettings, mode: Mode) -> Fleet {
    let leases = mode == Mode::Leases;
    let table = Arc::new(tollgate::server::dynamo_store(settings, leases).await);
    let engine_settings = EngineSettings {
        leases: leases.then_some(LeaseSettings {
            read_ttl: Duration::from_millis(settings.read_cache_ms),
        }),
        ..Default::default()
    };
    let engines = (0..2)
        .map(|_| {
            Arc::new(Engine::new(
                table.clone(),
                None,
                engine_settings.clone(),
                Arc::new(SystemClock),
            ))
        })
        .collect();
    Fleet { table, engines }
}

struct Outcome {
    admitted: usize,
    failed: usize,
    latencies: Vec<u128>,
    calls: u64,
    waited_for: u64,
}

async fn run(f: &Fleet, team: &Arc<Team>, requests: usize, in_flight: usize) -> Outcome {
    let calls = f.table.calls();
    let waited = waited_for(f);
    let results: Vec<_> = futures_util::stream::iter(0..requests)
        .map(|i| {
            let (engine, team) = (f.engines[i % f.engines.len()].clone(), team.clone());
            async move {
                let t = Instant::now();
                let outcome = engine.admit(&team, None, None).await;
                (outcome.map_err(|r| r.kind), t.elapsed().as_micros())
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let calls = f.table.calls() - calls;
    let mut o = Outcome {
        admitted: 0,
        failed: 0,
        latencies: Vec::with_capacity(requests),
        calls,
        // Per request, every call an admission makes is on its path.
        waited_for: waited.map_or(calls, |before| waited_for(f).unwrap() - before),
    };
    for (outcome, micros) in results {
        match outcome {
            Ok(_) => o.admitted += 1,
            Err(RejectionKind::RpmExceeded) => {}
            Err(_) => o.failed += 1,
        }
        o.latencies.push(micros);
    }
    o.latencies.sort_unstable();
    o
}

fn waited_for(f: &Fleet) -> Option<u64> {
    f.engines
        .iter()
        .map(|e| e.leases().map(|l| l.stats().waited_for))
        .sum()
}

/// Near-limit runs must not straddle a minute: the window would change under them.
async fn fresh_minute_with(secs: u64) {
    let into_minute = SystemClock.now_ms() % 60_000;
    if into_minute > (60 - secs) * 1000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into_minute + 500)).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let requests: usize = args.get(2).map_or(20_000, |v| v.parse().unwrap());
    let near_limit: u64 = args.get(3).map_or(1000, |v| v.parse().unwrap());
    let settings = DynamoDbSettings {
        table: format!("bench-{}", std::process::id()),
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint),
        timeout_ms: 2000,
        ..Default::default()
    };
    DynamoStore::connect(&settings)
        .await
        .create_table()
        .await
        .expect("table created");

    println!(
        "| admission | in flight | load | requests | admitted | exact | sync calls / admitted | all calls / request | p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (mode, mode_name) in [(Mode::PerRequest, "per request"), (Mode::Leases, "leases")] {
        let f = fleet(&settings, mode).await;
        // Warm the connections and DynamoDB Local's JIT, as a running instance would be.
        let warm = Arc::new(Team {
            rpm: Some(1_000_000),
            ..Team::new(format!("warm-{mode_name}"), Tier::Unlimited)
        });
        // Until a round goes through without a failure: DynamoDB Local's first calls can be
        // slower than the admission deadline, and per request that opens the breaker for a second.
        for _ in 0..20 {
            if run(&f, &warm, 500, 16).await.failed == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let mut cold = Vec::new();
        for in_flight in [1, 16, 64] {
            for near in [false, true] {
                let (limit, n) = if near {
                    fresh_minute_with(30).await;
                    (near_limit, 2 * near_limit as usize)
                } else {
                    (1_000_000, requests)
                };
                let team = Arc::new(Team {
                    rpm: Some(limit),
                    ..Team::new(
                        format!("{mode_name}-{in_flight}-{near}").replace(' ', "-"),
                        Tier::Unlimited,
                    )
                });
                let first = run(&f, &team, in_flight, in_flight).await;
                let o = run(&f, &team, n - in_flight, in_flight).await;
                let admitted = first.admitted + o.admitted;
                cold.push(percentile(&first.latencies, 1.0));
                let exact = if near {
                    if admitted as u64 == limit && o.failed + first.failed == 0 {
                        "yes".to_owned()
                    } else {
                        format!("no ({} failed)", o.failed)
                    }
                } else if o.failed == 0 {
                    "-".to_owned()
                } else {
                    format!("{} failed", o.failed)
                };
                println!(
                    "| {mode_name} | {in_flight} | {} | {n} | {} | {exact} | {:.3} | {:.3} | {} | {} |",
                    if near {
                        format!("past the limit ({limit})")
                    } else {
                        "far from limits".to_owned()
                    },
                    admitted,
                    o.waited_for as f64 / o.admitted.max(1) as f64,
                    o.calls as f64 / n as f64,
                    latency(percentile(&o.latencies, 0.50)),
                    latency(percentile(&o.latencies, 0.99)),
                );
            }
        }
        for e in &f.engines {
            e.hand_back_leases().await;
        }
        cold.sort_unstable();
        println!(
            "| {mode_name} | | a team's first round in a minute (not in the rows above) | | | | | | | {} (max of {}) |",
            latency(percentile(&cold, 1.0)),
            cold.len()
        );
    }
}
