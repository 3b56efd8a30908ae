//! Admission against DynamoDB (Local, or a real table): requests per second, p50/p99 admission
//! latency, and DynamoDB calls per request, through the real engine and store.
//!
//!   cargo run --release --example dynamodb_admission -- ENDPOINT [REQUESTS] [CONCURRENCY] [TEAMS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::engine::{Engine, EngineSettings, ModelCall, SystemClock};
use tollgate::policy::{Team, Tier, Usage};
use tollgate::store::{DynamoDbSettings, DynamoStore};

fn percentile(sorted: &[u128], q: f64) -> u128 {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let requests: usize = args.get(2).map_or(4000, |v| v.parse().unwrap());
    let concurrency: usize = args.get(3).map_or(16, |v| v.parse().unwrap());
    let teams: usize = args.get(4).map_or(8, |v| v.parse().unwrap());
    let settings = DynamoDbSettings {
        table: format!("bench-{}", std::process::id()),
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint),
        timeout_ms: 2000,
        ..Default::default()
    };
    let store = Arc::new(DynamoStore::connect(&settings).await);
    store.create_table().await.expect("table created");
    let engine = Arc::new(Engine::new(
        store.clone(),
        None,
        EngineSettings::default(),
        Arc::new(SystemClock),
    ));
    let teams: Vec<Arc<Team>> = (0..teams)
        .map(|i| {
            Arc::new(Team {
                rpm: Some(1_000_000),
                ..Team::new(format!("bench-{i}"), Tier::Unlimited)
            })
        })
        .collect();
    // Warm the read cache and connections, as a running instance would be.
    for team in &teams {
        engine.admit(team, None, None).await.unwrap();
    }
    let calls_before = store.calls();

    let started = Instant::now();
    let per_worker = requests / concurrency;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (engine, teams) = (engine.clone(), teams.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_worker);
                for i in 0..per_worker {
                    let team = &teams[(w + i) % teams.len()];
                    let call = ModelCall {
                        model: "gpt-4o-mini",
                        prompt_chars: 400,
                        max_output_tokens: Some(200),
                        units: None,
                    };
                    let t = Instant::now();
                    let ticket = engine
                        .admit(team, Some(call), None)
                        .await
                        .expect("admitted");
                    latencies.push(t.elapsed().as_micros());
                    engine
                        .settle(
                            ticket,
                            Usage {
                                input: 100,
                                output: 50,
                                ..Default::default()
                            },
                            "bench",
                        )
                        .await;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let admitted = latencies.len();
    let admission_elapsed = started.elapsed();
    engine.flush().await;
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls = store.calls() - calls_before;
    latencies.sort_unstable();
    println!(
        "requests            {admitted} ({concurrency} concurrent, {} teams)",
        teams.len()
    );
    println!(
        "admissions/s        {:.0}",
        admitted as f64 / admission_elapsed.as_secs_f64()
    );
    println!(
        "with debits/s       {:.0}",
        admitted as f64 / elapsed.as_secs_f64()
    );
    println!("admission p50       {} us", percentile(&latencies, 0.50));
    println!("admission p99       {} us", percentile(&latencies, 0.99));
    println!(
        "DynamoDB calls      {calls} ({:.2} per request, admission and debit)",
        calls as f64 / admitted as f64
    );
}
