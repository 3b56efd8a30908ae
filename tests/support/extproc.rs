//! tollgate's ext_proc service on a loopback port, with one team (`t`, client `c`) in a memory
//! store, and the client-side helpers every ext_proc test needs. Included with `#[path]` by the
//! crates that drive the service as Envoy does (`extproc_grpc`) and as agentgateway does
//! (`extproc_agentgateway`).
#![allow(dead_code, reason = "each test crate uses its own part")]

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::json;
use tollgate::engine::{Engine, EngineSettings, SystemClock};
use tollgate::extproc::{Context, ExtProcService};
use tollgate::identity::{Authenticator, INVOKE_SCOPE, Verification};
use tollgate::policy::{Team, Tier};
use tollgate::store::{CounterKey, MemoryStore, Store};
use tonic::transport::Channel;

pub struct Harness {
    pub client: ExternalProcessorClient<Channel>,
    pub store: Arc<MemoryStore>,
    pub engine: Arc<Engine>,
}

/// A memory store holding team `t` (client `c`) with `rpm`, and an engine on it.
pub async fn engine_with_team(
    rpm: u64,
    settings: EngineSettings,
) -> (Arc<MemoryStore>, Arc<Engine>) {
    let store = Arc::new(MemoryStore::new());
    store
        .put_team(&Team {
            client_ids: vec!["c".into()],
            rpm: Some(rpm),
            daily_tokens: Some(1_000_000),
            ..Team::new("t", Tier::Standard)
        })
        .await
        .unwrap();
    let engine = Arc::new(Engine::new(
        store.clone(),
        None,
        settings,
        Arc::new(SystemClock),
    ));
    (store, engine)
}

/// Claims as an upstream verifier (Envoy's jwt_authn, the ALB) passed them: no signature check.
pub fn trusting_upstream(issuer: Option<&str>) -> Arc<Authenticator> {
    Arc::new(Authenticator::new(
        Verification::TrustUpstream,
        issuer,
        None,
        Duration::ZERO,
    ))
}

/// Serves `context` on a free loopback port and connects a client to it.
pub async fn serve(store: Arc<MemoryStore>, context: Context) -> Harness {
    let engine = context.engine.clone();
    let service = ExtProcService::new(Arc::new(context));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server(4 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = ExternalProcessorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Harness {
        client,
        store,
        engine,
    }
}

/// A token for client `c` with the invoke scope, valid for ten minutes.
pub fn token() -> String {
    let claims =
        json!({"client_id": "c", "scope": INVOKE_SCOPE, "exp": get_current_timestamp() + 600});
    // Signature is irrelevant in trust-upstream mode; any RSA key signs.
    let key = include_bytes!("../../dev/keys/dev-private.pem");
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(key).unwrap(),
    )
    .unwrap()
}

pub async fn tokens_today(h: &Harness) -> u64 {
    h.engine.flush().await;
    let day = tollgate::policy::calendar::day_key(get_current_timestamp());
    h.store
        .read_counters(&[&CounterKey::parse("t", &format!("tokens#{day}"), 0).unwrap()])
        .await
        .unwrap()[0]
}

/// Tokens charged since `before`, once the exchange's settlement has landed (0 if none did within
/// 30 s: a settlement runs after the stream ends, which a loaded machine can delay).
pub async fn charged_since(h: &Harness, before: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let charged = tokens_today(h).await - before;
        if charged > 0 || std::time::Instant::now() > deadline {
            return charged;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
