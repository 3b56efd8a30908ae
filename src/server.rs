//! `tollgate serve`: wires settings into the store, engine and adapters, charges what a crashed
//! predecessor left in the journal, runs the gRPC and HTTP servers, and shuts down cleanly: on
//! SIGTERM readiness goes to 503, servers stop accepting, in-flight exchanges finish (up to the
//! grace period; calls still open then are charged at their estimates), and pending debits are
//! flushed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::admin::Admin;
use crate::admin::http::{AdminState, router as admin_router};
use crate::config::{GuardrailBackend, Settings, StoreBackend};
use crate::engine::FailMode;
use crate::engine::{Engine, SystemClock, Unsettled};
use crate::extproc::{Context, ExtProcService};
use crate::guardrail::Guardrail;
use crate::guardrail::apply::{Application, Guardrails};
use crate::guardrail::bedrock::BedrockGuardrail;
use crate::guardrail::local::LocalGuardrail;
use crate::guardrail::policy::TeamPolicies;
use crate::guardrail::service::{GuardrailService, Mode as GuardrailMode};
use crate::http::{OpsState, router};
use crate::identity::{Authenticator, JwksSource, KeySet, Verification};
use crate::store::{DynamoDbSettings, DynamoStore, EmbeddedStore, MemoryStore, Spool, Store};
use crate::webhook::Webhook;
use crate::webhook::http::{WebhookState, router as webhook_router};

/// The configured store, and the spool that keeps debits a remote store could not take yet.
pub async fn open_store(
    settings: &Settings,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<Spool>>)> {
    Ok(match settings.store.backend {
        StoreBackend::Memory => (Arc::new(MemoryStore::new()), None),
        StoreBackend::Embedded => (
            Arc::new(
                EmbeddedStore::open_with_commit_delay(
                    &settings.store.path,
                    settings.store.commit_delay(),
                )
                .with_context(|| format!("opening {}", settings.store.path.display()))?,
            ),
            None,
        ),
        StoreBackend::Dynamodb => {
            let ddb = &settings.store.dynamodb;
            let spool =
                Spool::open_with_commit_delay(&ddb.spool_path, settings.store.commit_delay())
                    .with_context(|| format!("opening the spool {}", ddb.spool_path.display()))?;
            (
                Arc::new(dynamo_store(ddb, settings.lease_settings().is_some()).await),
                Some(Arc::new(spool)),
            )
        }
    })
}

/// The DynamoDB store as admission uses it. With leases, the lease layer caches what admission
/// reads (for `read_cache_ms`), so the store keeps no cache of its own: two would add up.
pub async fn dynamo_store(settings: &DynamoDbSettings, leases: bool) -> DynamoStore {
    let mut settings = settings.clone();
    if leases {
        settings.read_cache_ms = 0;
    }
    DynamoStore::connect(&settings).await
}

/// The engine's settings with its outputs started (on the current runtime): threshold alerts,
/// with what an earlier process left owed in their outbox, and the usage feed.
pub fn engine_settings(settings: &Settings) -> anyhow::Result<crate::engine::EngineSettings> {
    let mut engine = settings.engine_settings()?;
    engine.alerts = crate::alerts::Alerts::start(&settings.alerts)?;
    engine.usage_feed = crate::usage_feed::UsageFeed::start(&settings.usage_feed);
    Ok(engine)
}

pub async fn authenticator(settings: &Settings) -> anyhow::Result<Authenticator> {
    let id = &settings.identity;
    let source = match (&id.jwks_file, &id.jwks_url) {
        (Some(file), _) => Some(JwksSource::File(file.clone())),
        (None, Some(url)) => Some(JwksSource::Url(url.clone())),
        (None, None) => None,
    };
    let verification = match (id.trust_upstream, source) {
        (true, _) => {
            tracing::warn!(
                "identity.trust_upstream: token signatures are NOT verified by tollgate"
            );
            Verification::TrustUpstream
        }
        (false, Some(source)) => {
            let keys = KeySet::new(
                source.clone(),
                Duration::from_secs(id.jwks_min_refresh_seconds),
                Duration::from_secs(id.jwks_max_age_seconds),
            );
            match keys.load().await {
                Ok(n) => tracing::info!(keys = n, ?source, "JWKS loaded"),
                // A remote JWKS may be briefly unreachable at boot; it is fetched again on demand.
                Err(e) if matches!(source, JwksSource::Url(_)) => {
                    tracing::error!(error = %e, "JWKS not loaded yet; retrying on first token")
                }
                Err(e) => return Err(e).context("loading identity.jwks_file"),
            }
            Verification::Keys(keys)
        }
        (false, None) => {
            tracing::warn!(
                "no identity.jwks_file or identity.jwks_url: every bearer token will be refused (401)"
            );
            Verification::Keys(KeySet::new(
                JwksSource::File("/nonexistent/jwks.json".into()),
                Duration::from_secs(3600),
                Duration::from_secs(u64::MAX / 4),
            ))
        }
    };
    Ok(Authenticator::new(
        verification,
        id.issuer.as_deref(),
        id.team_claim.clone(),
        Duration::from_secs(id.leeway_seconds),
    )
    .with_user_claim(id.user_claim.clone()))
}

/// The guardrails every adapter applies, as configured: the global service (none when the
/// global mode is off) and what teams with a policy of their own need (the backend whatever the
/// global mode, and `[guardrail.bedrock]`'s client for teams naming their own guardrail).
pub async fn guardrails(settings: &Settings) -> anyhow::Result<Guardrails> {
    let g = &settings.guardrail;
    let backend = guardrail_backend(settings).await?;
    let fail_closed = g.fail_mode == FailMode::Closed;
    let service = (g.mode != GuardrailMode::Off).then(|| {
        tracing::info!(mode = ?g.mode, backend = backend.name(), version = backend.version(), "guardrail on");
        Arc::new(GuardrailService::new(backend.clone(), g.mode, fail_closed))
    });
    let bedrock = match &g.bedrock {
        Some(bedrock) => Some(Arc::new(BedrockGuardrail::connect(bedrock).await)),
        None => None,
    };
    let application = Application {
        scope: g.scope,
        parts: g.parts.clone(),
        streaming: g.streaming,
    };
    Ok(
        Guardrails::new(service, application).with_team_policies(TeamPolicies::new(
            backend,
            g.mode,
            fail_closed,
            bedrock,
        )),
    )
}

/// The configured guardrail backend, whatever the mode (`tollgate guardrail test` uses it too).
pub async fn guardrail_backend(settings: &Settings) -> anyhow::Result<Arc<dyn Guardrail>> {
    let g = &settings.guardrail;
    Ok(match (g.backend(), &g.bedrock) {
        (GuardrailBackend::Bedrock, Some(bedrock)) => {
            Arc::new(BedrockGuardrail::connect(bedrock).await)
        }
        (GuardrailBackend::Bedrock, None) => {
            anyhow::bail!("guardrail.backend = \"bedrock\" needs [guardrail.bedrock]")
        }
        (GuardrailBackend::Local, _) => Arc::new(
            LocalGuardrail::new(g.local.clone())
                .map_err(|e| anyhow::anyhow!("guardrail.local: {e}"))?,
        ),
    })
}

/// The agentgateway promptGuard webhook over the same engine, identity and guardrail as ext_proc.
pub fn webhook_state(
    settings: &Settings,
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    guardrails: Guardrails,
) -> Arc<WebhookState> {
    if settings.webhook.secret.is_none() {
        tracing::warn!(
            "webhook.secret is not set: /request and /response accept calls from anyone who can reach them"
        );
    }
    Arc::new(WebhookState {
        webhook: Webhook {
            engine,
            auth,
            guardrails,
            model_header: settings.webhook.model_header.clone(),
            path_header: settings.webhook.path_header.clone(),
        },
        settings: settings.webhook.clone(),
        max_body_bytes: settings.server.max_request_body_bytes,
    })
}

pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let metrics = crate::telemetry::init_metrics()?;
    let (store, spool) = open_store(&settings).await?;
    // Teams declared in configuration are the configuration's: written at every start, replacing
    // any admin API change to them (teams created through the API are left alone).
    for team in &settings.teams {
        let team = team
            .clone()
            .validated()
            .map_err(|e| anyhow::anyhow!("teams.{}: {}", e.field, e.message))?;
        if let Ok(Some(stored)) = store.team(&team.id).await
            && stored != team
        {
            tracing::warn!(team = %team.id, "configuration replaces the stored definition of this team");
        }
        store
            .put_team(&team)
            .await
            .with_context(|| format!("storing team {}", team.id))?;
    }
    let auth = Arc::new(authenticator(&settings).await?);
    let engine = Arc::new(Engine::new(
        store.clone(),
        spool,
        engine_settings(&settings)?,
        Arc::new(SystemClock),
    ));
    // Before serving, so that admission decisions already see what those calls cost.
    engine.charge_unsettled(Unsettled::Recovered).await;
    let admin = Arc::new(AdminState {
        admin: Admin::new(engine.clone()),
        guardrail: guardrail_backend(&settings).await.ok(),
        auth: Some(auth.clone()),
    });
    let guardrails = guardrails(&settings).await?;
    let webhook = webhook_state(&settings, engine.clone(), auth.clone(), guardrails.clone());
    let extproc = ExtProcService::new(Arc::new(Context {
        engine: engine.clone(),
        auth,
        max_request_body_bytes: settings.server.max_request_body_bytes,
        max_response_json_bytes: settings.server.max_response_json_bytes,
        guardrails,
    }));
    let exchanges = extproc.exchanges();
    let abandon = extproc.abandon_token();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ExternalProcessorServer<ExtProcService>>()
        .await;

    let grpc_listener = TcpListener::bind(settings.server.grpc_listen)
        .await
        .with_context(|| format!("binding gRPC to {}", settings.server.grpc_listen))?;
    let http_listener = TcpListener::bind(settings.server.http_listen)
        .await
        .with_context(|| format!("binding HTTP to {}", settings.server.http_listen))?;
    tracing::info!(
        grpc = %grpc_listener.local_addr()?,
        http = %http_listener.local_addr()?,
        store = store.backend_name(),
        teams = settings.teams.len(),
        "tollgate serving"
    );

    let ops = Arc::new(OpsState {
        store: store.clone(),
        fail_open: settings.policy.fail_modes().any_open(),
        metrics: metrics.clone(),
        accepting: AtomicBool::new(true),
    });
    let stop = CancellationToken::new();

    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(
            extproc
                .access_log(stop.clone())
                .into_server(settings.server.max_grpc_message_bytes()),
        )
        .add_service(extproc.into_server(settings.server.max_grpc_message_bytes()))
        // Without TCP_NODELAY on accepted sockets, small replies wait out delayed ACKs (~40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stop.clone().cancelled_owned(),
        );
    let http = axum::serve(
        http_listener,
        router(ops.clone())
            .merge(admin_router(admin))
            .merge(webhook_router(webhook)),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let grpc = tokio::spawn(grpc);
    let http = tokio::spawn(async move { http.await });

    let upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        })
    };

    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight exchanges");
    ops.accepting.store(false, Ordering::Relaxed);
    health
        .set_not_serving::<ExternalProcessorServer<ExtProcService>>()
        .await;
    stop.cancel();

    let grace = Duration::from_secs(settings.server.shutdown_grace_seconds);
    exchanges.close();
    let drained = tokio::time::timeout(grace, async {
        let _ = grpc.await;
        exchanges.wait().await;
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(
            ?grace,
            "grace period over; settling the exchanges still open"
        );
        abandon.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), exchanges.wait()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    // Whatever is still open will not settle before exit: charged now, not left for the next start.
    engine.charge_unsettled(Unsettled::Abandoned).await;
    engine.flush().await;
    if let Some(feed) = engine.usage_feed() {
        let _ = tokio::time::timeout(Duration::from_secs(3), feed.flush()).await;
    }
    // What this instance's leases hold unused goes back to the fleet (the store being down, it
    // stays counted until its minute or month is over: less admitted, never more).
    let _ = tokio::time::timeout(Duration::from_secs(3), engine.hand_back_leases()).await;
    store.flush().await.context("flushing the store")?;
    upkeep.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
