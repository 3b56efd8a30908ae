//! What tollgate's Lambda functions share: settings from the environment, and the engine over
//! DynamoDB. Each function builds only what its requests use, so a cold start does no more.
//!
//! Settings are read as `tollgate serve` reads them: `TOLLGATE_<SECTION>__<KEY>` variables, and
//! the TOML file named by `TOLLGATE_CONFIG` if set (e.g. one packaged in a layer).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use tollgate::config::{Settings, StoreBackend};
use tollgate::engine::{Engine, SystemClock};
use tollgate::identity::Authenticator;
use tollgate::store::DynamoStore;

pub struct Boot {
    pub settings: Settings,
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
}

/// Settings, logging, store, engine and identity.
pub async fn boot() -> anyhow::Result<Boot> {
    let config = std::env::var_os("TOLLGATE_CONFIG").map(PathBuf::from);
    let mut settings = Settings::load(config.as_deref())?;
    // CloudWatch keeps each line as one event: JSON lines stay searchable with Logs Insights.
    settings.log.format = tollgate::config::LogFormat::Json;
    tollgate::telemetry::init_logging(&settings.log);
    if settings.store.backend != StoreBackend::Dynamodb {
        // A function instance's memory or /tmp is not shared with any other instance.
        bail!("tollgate's Lambda functions need TOLLGATE_STORE__BACKEND=dynamodb");
    }
    // No spool: these functions never queue debits. The usage recorder writes its own and fails
    // its event when it cannot, so that Lambda retries it.
    let store = Arc::new(DynamoStore::connect(&settings.store.dynamodb).await);
    let engine = Arc::new(Engine::new(
        store,
        None,
        settings.engine_settings()?,
        Arc::new(SystemClock),
    ));
    let auth = Arc::new(
        tollgate::server::authenticator(&settings)
            .await
            .context("identity settings")?,
    );
    Ok(Boot {
        settings,
        engine,
        auth,
    })
}
