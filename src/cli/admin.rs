//! `tollgate admin`: the admin API from the command line. Each subcommand becomes one admin API
//! request, sent to a running instance, or with `--offline` handled in-process against the
//! configured store (for when tollgate is not running), so both paths share the same handlers.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::body::Body;
use axum::http::{Method, Request};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::admin::Admin;
use crate::admin::http::{AdminState, router};
use crate::config::{Settings, StoreBackend};
use crate::engine::{Engine, SystemClock};
use crate::store::DynamoStore;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Base URL of a running tollgate's HTTP server.
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    url: String,
    /// Bearer token with the https://gateway.internal/admin scope.
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// Act on the configured store directly instead of a running instance (embedded store only;
    /// tollgate must not be running on the same file).
    #[arg(long, global = true)]
    offline: bool,
    #[arg(long, env = "TOLLGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// List, show, add or delete teams.
    #[command(subcommand)]
    Teams(TeamsCommand),
    /// Change a team's monthly budget, model caps or breach behaviour.
    SetBudget {
        id: String,
        /// Monthly budget in USD.
        #[arg(long)]
        usd: Option<f64>,
        /// MODEL=USD monthly cap for one model; repeatable.
        #[arg(long = "model-cap", value_parser = parse_cap)]
        model_caps: Vec<(String, f64)>,
        #[arg(long, value_enum)]
        on_breach: Option<Breach>,
    },
    /// A team's RPM window, tokens today, and spend this month and before; with --user,
    /// --project or --scopes, that scope's windows, current periods and history.
    Usage {
        /// The team (absent with --org).
        id: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long, conflicts_with = "user")]
        project: Option<String>,
        /// The org's usage (needs [org] limits).
        #[arg(long, conflicts_with_all = ["id", "user", "project"])]
        org: bool,
        /// The team scope in the per-scope shape (periods, TPM, history).
        #[arg(long)]
        scopes: bool,
    },
    /// Set (a JSON object of limits) or delete the limits of a team's user or project.
    Limits {
        team: String,
        #[arg(long, required_unless_present = "project")]
        user: Option<String>,
        #[arg(long, conflicts_with = "user")]
        project: Option<String>,
        /// e.g. '{"budget_usd": 50, "budget_period": {"every": "week"}}'
        #[arg(required_unless_present = "delete")]
        json: Option<String>,
        #[arg(long)]
        delete: bool,
    },
    /// Reset or adjust a scope's spend or tokens in a period (audited, once per --id).
    Adjust {
        /// Your id for this change: sending it again changes nothing.
        #[arg(long)]
        id: String,
        #[arg(long, required_unless_present = "org")]
        team: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long, conflicts_with = "user")]
        project: Option<String>,
        #[arg(long, conflicts_with_all = ["team", "user", "project"])]
        org: bool,
        #[arg(long, value_enum)]
        counter: CounterArg,
        /// Period key (2026-11, week-2026-11-23); default: the current one.
        #[arg(long)]
        period: Option<String>,
        #[arg(long, conflicts_with = "add", required_unless_present = "add")]
        reset: bool,
        /// USD (spend) or tokens to add; negative takes off.
        #[arg(long, allow_hyphen_values = true)]
        add: Option<f64>,
        /// Why (goes into the audit log).
        #[arg(long)]
        reason: String,
    },
    /// List, set or delete model prices (USD per million tokens).
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Create the configured DynamoDB table (key pk/sk, on-demand, TTL on expires_at) if absent.
    InitTable,
}

#[derive(Debug, Subcommand)]
enum TeamsCommand {
    List,
    Get {
        id: String,
    },
    Add {
        id: String,
        #[arg(long)]
        tier: String,
        /// Repeatable.
        #[arg(long = "client-id")]
        client_ids: Vec<String>,
        #[arg(long)]
        rpm: Option<u64>,
        #[arg(long)]
        daily_tokens: Option<u64>,
        #[arg(long)]
        budget_usd: Option<f64>,
        /// Repeatable; without it every priced model is allowed.
        #[arg(long = "allow-model")]
        allowed_models: Vec<String>,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PricesCommand {
    List,
    Set {
        model: String,
        #[arg(long)]
        input: f64,
        #[arg(long)]
        output: f64,
        #[arg(long)]
        cache_read: Option<f64>,
        #[arg(long)]
        cache_write: Option<f64>,
    },
    Delete {
        model: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CounterArg {
    Spend,
    Tokens,
}

/// A path segment as a URL needs it (user ids can hold anything a token claim can).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The scope an `adjust` names, as the admin API takes it.
fn scope_json(
    org: bool,
    team: Option<String>,
    user: Option<String>,
    project: Option<String>,
) -> Value {
    match (org, team, user, project) {
        (true, ..) => json!("org"),
        (_, Some(team), Some(user), _) => json!({"user": {"team": team, "user": user}}),
        (_, Some(team), _, Some(project)) => {
            json!({"project": {"team": team, "project": project}})
        }
        (_, team, ..) => json!({ "team": team }),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Breach {
    Block,
    Warn,
}

fn parse_cap(s: &str) -> Result<(String, f64), String> {
    let (model, usd) = s.rsplit_once('=').ok_or("expected MODEL=USD")?;
    let usd = usd
        .parse()
        .map_err(|_| format!("{usd:?} is not a number of USD"))?;
    Ok((model.to_owned(), usd))
}

/// The admin API request a subcommand stands for.
fn request(command: AdminCommand) -> anyhow::Result<(Method, String, Option<Value>)> {
    use AdminCommand::*;
    Ok(match command {
        Teams(TeamsCommand::List) => (Method::GET, "/admin/teams".into(), None),
        Teams(TeamsCommand::Get { id }) => (Method::GET, format!("/admin/teams/{id}"), None),
        Teams(TeamsCommand::Delete { id }) => (Method::DELETE, format!("/admin/teams/{id}"), None),
        Teams(TeamsCommand::Add {
            id,
            tier,
            client_ids,
            rpm,
            daily_tokens,
            budget_usd,
            allowed_models,
        }) => {
            let mut team = json!({"id": id, "tier": tier, "client_ids": client_ids});
            if let Some(v) = rpm {
                team["rpm"] = json!(v);
            }
            if let Some(v) = daily_tokens {
                team["daily_tokens"] = json!(v);
            }
            if let Some(v) = budget_usd {
                team["monthly_budget_usd"] = json!(v);
            }
            if !allowed_models.is_empty() {
                team["allowed_models"] = json!(allowed_models);
            }
            (Method::POST, "/admin/teams".into(), Some(team))
        }
        SetBudget {
            id,
            usd,
            model_caps,
            on_breach,
        } => {
            let mut update = json!({});
            if let Some(v) = usd {
                update["monthly_budget_usd"] = json!(v);
            }
            if !model_caps.is_empty() {
                update["model_caps"] = json!(
                    model_caps
                        .into_iter()
                        .map(|(m, usd)| (m, json!(usd)))
                        .collect::<serde_json::Map<_, _>>()
                );
            }
            if let Some(b) = on_breach {
                update["on_breach"] = json!(match b {
                    Breach::Block => "block",
                    Breach::Warn => "warn",
                });
            }
            (
                Method::PUT,
                format!("/admin/teams/{id}/budget"),
                Some(update),
            )
        }
        Usage {
            id,
            user,
            project,
            org,
            scopes,
        } => {
            let team = segment(id.as_deref().unwrap_or_default());
            let path = match (org, user, project) {
                (true, ..) => "/admin/org/usage".to_owned(),
                (_, Some(user), _) => format!("/admin/teams/{team}/users/{}/usage", segment(&user)),
                (_, _, Some(p)) => format!("/admin/teams/{team}/projects/{}/usage", segment(&p)),
                _ if scopes => format!("/admin/teams/{team}/scope-usage"),
                _ => format!("/admin/teams/{team}/usage"),
            };
            (Method::GET, path, None)
        }
        Limits {
            team,
            user,
            project,
            json,
            delete,
        } => {
            let member = match (user, project) {
                (Some(user), _) => format!("users/{}", segment(&user)),
                (_, project) => format!("projects/{}", segment(&project.unwrap_or_default())),
            };
            let path = format!("/admin/teams/{}/{member}", segment(&team));
            match (delete, json) {
                (true, _) => (Method::DELETE, path, None),
                (false, json) => (
                    Method::PUT,
                    path,
                    Some(
                        serde_json::from_str(&json.unwrap_or_default())
                            .context("the limits are not a JSON object")?,
                    ),
                ),
            }
        }
        Adjust {
            id,
            team,
            user,
            project,
            org,
            counter,
            period,
            reset,
            add,
            reason,
        } => {
            let mut body = json!({
                "id": id,
                "scope": scope_json(org, team, user, project),
                "counter": match counter {
                    CounterArg::Spend => "spend",
                    CounterArg::Tokens => "tokens",
                },
                "reason": reason,
            });
            if let Some(period) = period {
                body["period"] = json!(period);
            }
            if reset {
                body["reset"] = json!(true);
            }
            if let Some(add) = add {
                body["add"] = json!(add);
            }
            (Method::POST, "/admin/adjustments".into(), Some(body))
        }
        Prices(PricesCommand::List) => (Method::GET, "/admin/prices".into(), None),
        Prices(PricesCommand::Delete { model }) => {
            (Method::DELETE, format!("/admin/prices/{model}"), None)
        }
        InitTable => unreachable!("init-table is not an admin API request"),
        Prices(PricesCommand::Set {
            model,
            input,
            output,
            cache_read,
            cache_write,
        }) => {
            let mut price = json!({"input": input, "output": output});
            if let Some(v) = cache_read {
                price["cache_read"] = json!(v);
            }
            if let Some(v) = cache_write {
                price["cache_write"] = json!(v);
            }
            (Method::PUT, format!("/admin/prices/{model}"), Some(price))
        }
    })
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::InitTable = args.command {
        return init_table(args.config).await;
    }
    let (method, path, body) = request(args.command)?;
    let (status, text) = if args.offline {
        offline(args.config, method, &path, body).await?
    } else {
        let client = reqwest::Client::new();
        let url = format!("{}{path}", args.url.trim_end_matches('/'));
        let mut req = client.request(
            reqwest::Method::from_bytes(method.as_str().as_bytes())?,
            &url,
        );
        if let Some(token) = &args.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = &body {
            req = req.json(body);
        }
        let response = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    };
    print_outcome(status, &text)
}

async fn init_table(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref())?;
    if settings.store.backend != StoreBackend::Dynamodb {
        bail!("init-table creates a DynamoDB table; store.backend is not \"dynamodb\"");
    }
    let table = &settings.store.dynamodb.table;
    let created = DynamoStore::connect(&settings.store.dynamodb)
        .await
        .create_table()
        .await?;
    super::print(json!({"table": table, "created": created, "ttl_attribute": "expires_at"}))
}

async fn offline(
    config: Option<PathBuf>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, String)> {
    let settings = Settings::load(config.as_deref())?;
    if settings.store.backend == StoreBackend::Memory {
        bail!("--offline needs a persistent store; store.backend is \"memory\"");
    }
    let (store, spool) = crate::server::open_store(&settings).await?;
    let engine = Arc::new(Engine::new(
        store.clone(),
        spool,
        settings.engine_settings()?,
        Arc::new(SystemClock),
    ));
    let app = router(Arc::new(AdminState {
        admin: Admin::new(engine.clone()),
        guardrail: crate::server::guardrail_backend(&settings).await.ok(),
        auth: None,
    }));
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))?;
    let response = app.oneshot(request).await?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    engine.flush().await;
    store.flush().await?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

fn print_outcome(status: u16, text: &str) -> anyhow::Result<()> {
    let pretty = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned());
    if (200..300).contains(&status) {
        if pretty.is_empty() {
            Ok(())
        } else {
            super::print(pretty)
        }
    } else {
        let message = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(pretty);
        bail!("HTTP {status}: {message}")
    }
}
