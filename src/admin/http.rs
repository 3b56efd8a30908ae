//! The admin API over HTTP: JSON in and out, every call authenticated with a bearer token that
//! carries the admin scope. Errors are `{"error": "...", "field": "..."}` with the field at fault
//! when there is one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{Adjustment, Admin, AdminError, BudgetUpdate, MemberKind, ScopeTarget};
use crate::guardrail::{Guardrail, Source};
use crate::identity::{ADMIN_SCOPE, Authenticator, Principal};
use crate::policy::pricing::PriceUsd;
use crate::policy::{ScopeLimits, Team};

pub struct AdminState {
    pub admin: Admin,
    /// The configured guardrail backend, for `POST /admin/guardrail/test`.
    pub guardrail: Option<Arc<dyn Guardrail>>,
    /// `None` only for `tollgate admin --offline`, where the caller already holds the store.
    pub auth: Option<Arc<Authenticator>>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin/teams", get(list_teams).post(create_team))
        .route(
            "/admin/teams/{id}",
            get(get_team).put(put_team).delete(delete_team),
        )
        .route("/admin/teams/{id}/budget", put(set_budget))
        .route("/admin/teams/{id}/usage", get(usage))
        .route(
            "/admin/teams/{id}/users/{user}",
            put(put_user).delete(delete_user),
        )
        .route(
            "/admin/teams/{id}/projects/{project}",
            put(put_project).delete(delete_project),
        )
        .route("/admin/teams/{id}/users/{user}/usage", get(user_usage))
        .route(
            "/admin/teams/{id}/projects/{project}/usage",
            get(project_usage),
        )
        .route("/admin/teams/{id}/scope-usage", get(team_scope_usage))
        .route("/admin/org/usage", get(org_usage))
        .route("/admin/adjustments", axum::routing::post(adjust))
        .route("/admin/prices", get(prices))
        .route("/admin/prices/{model}", put(put_price).delete(delete_price))
        .route("/admin/guardrail/test", axum::routing::post(guardrail_test))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// Admin request bodies are small; a larger one is refused.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Authenticates every admin call before its handler runs. A refused request's body is read
/// first: a response sent over an unread body would leave the connection unusable for the
/// client's next request.
async fn authenticate(
    State(state): State<Arc<AdminState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match &state.auth {
        None => None,
        Some(auth) => {
            let header = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match auth.authenticate_header(header, ADMIN_SCOPE).await {
                Ok(principal) => Some(principal),
                Err(e) => {
                    let _ = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await;
                    let rejection = e.rejection();
                    let status = StatusCode::from_u16(rejection.kind.status())
                        .unwrap_or(StatusCode::UNAUTHORIZED);
                    return ApiError::new(status, rejection.reason).into_response();
                }
            }
        }
    };
    request.extensions_mut().insert(Caller(Arc::new(caller)));
    next.run(request).await
}

pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message});
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, m),
            AdminError::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            AdminError::Invalid(f) => Self {
                status: StatusCode::BAD_REQUEST,
                message: f.message,
                field: Some(f.field),
            },
            AdminError::Store(e) => {
                tracing::error!(error = %e, "admin request failed in the store");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

/// The authenticated admin making the call (`None`: a local operator, offline), as established
/// by [`authenticate`].
#[derive(Clone)]
pub struct Caller(Arc<Option<Principal>>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "admin route without authentication",
            )
        })
    }
}

impl Caller {
    /// Who is calling, for the audit log.
    fn who(&self) -> &str {
        match self.0.as_ref() {
            Some(p) => p
                .client_id
                .as_deref()
                .or(p.user.as_deref())
                .unwrap_or("unknown"),
            None => "offline",
        }
    }

    fn audit(&self, action: &str, target: &str) {
        tracing::info!(admin = self.who(), action, target, "admin change");
    }
}

/// JSON body whose errors name the field at fault.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let field = if path != "." {
            Some(path)
        } else {
            // Unknown and missing fields are reported at the parent: take the name from the message.
            ["unknown field `", "missing field `"]
                .iter()
                .find_map(|p| message.strip_prefix(p))
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned)
        };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("invalid request body: {message}"),
            field,
        }
    })
}

type ApiResult<T> = Result<T, ApiError>;

async fn list_teams(_: Caller, State(s): State<Arc<AdminState>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"teams": s.admin.list_teams().await?})))
}

async fn create_team(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let team: Team = parse(&body)?;
    caller.audit("create_team", &team.id);
    Ok((StatusCode::CREATED, Json(s.admin.create_team(team).await?)))
}

async fn get_team(
    _: Caller,
    State(s): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Team>> {
    Ok(Json(s.admin.team(&id).await?))
}

async fn put_team(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Team>> {
    // The id may be left out of the body: the path names the team.
    let mut value: Value = parse(&body)?;
    if let Some(object) = value.as_object_mut() {
        object.entry("id").or_insert_with(|| json!(id));
    }
    let team: Team = parse(&serde_json::to_vec(&value).expect("JSON values serialize"))?;
    caller.audit("put_team", &id);
    Ok(Json(s.admin.put_team(&id, team).await?))
}

async fn delete_team(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.audit("delete_team", &id);
    s.admin.delete_team(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_budget(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Team>> {
    let update: BudgetUpdate = parse(&body)?;
    caller.audit("set_budget", &id);
    Ok(Json(s.admin.set_budget(&id, update).await?))
}

async fn usage(
    _: Caller,
    State(s): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(s.admin.usage(&id).await?))
}

async fn set_member(
    caller: Caller,
    s: &AdminState,
    (id, member_id): (String, String),
    kind: MemberKind,
    body: Option<Bytes>,
) -> ApiResult<Json<Team>> {
    let limits: Option<ScopeLimits> = body.map(|b| parse(&b)).transpose()?;
    let action = match (kind, limits.is_some()) {
        (MemberKind::User, true) => "put_user",
        (MemberKind::User, false) => "delete_user",
        (MemberKind::Project, true) => "put_project",
        (MemberKind::Project, false) => "delete_project",
    };
    caller.audit(action, &format!("{id}/{member_id}"));
    Ok(Json(
        s.admin
            .set_member_limits(&id, kind, &member_id, limits)
            .await?,
    ))
}

async fn put_user(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    Path(ids): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Team>> {
    set_member(caller, &s, ids, MemberKind::User, Some(body)).await
}

async fn delete_user(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    Path(ids): Path<(String, String)>,
) -> ApiResult<Json<Team>> {
    set_member(caller, &s, ids, MemberKind::User, None).await
}

async fn put_project(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    Path(ids): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Team>> {
    set_member(caller, &s, ids, MemberKind::Project, Some(body)).await
}

async fn delete_project(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    Path(ids): Path<(String, String)>,
) -> ApiResult<Json<Team>> {
    set_member(caller, &s, ids, MemberKind::Project, None).await
}

async fn scope_usage(s: &AdminState, target: ScopeTarget) -> ApiResult<Json<Value>> {
    Ok(Json(s.admin.scope_usage(&target).await?))
}

async fn user_usage(
    _: Caller,
    State(s): State<Arc<AdminState>>,
    Path((team, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    scope_usage(&s, ScopeTarget::User { team, user }).await
}

async fn project_usage(
    _: Caller,
    State(s): State<Arc<AdminState>>,
    Path((team, project)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    scope_usage(&s, ScopeTarget::Project { team, project }).await
}

async fn team_scope_usage(
    _: Caller,
    State(s): State<Arc<AdminState>>,
    Path(team): Path<String>,
) -> ApiResult<Json<Value>> {
    scope_usage(&s, ScopeTarget::Team(team)).await
}

async fn org_usage(_: Caller, State(s): State<Arc<AdminState>>) -> ApiResult<Json<Value>> {
    scope_usage(&s, ScopeTarget::Org).await
}

async fn adjust(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let adjustment: Adjustment = parse(&body)?;
    Ok(Json(s.admin.adjust(caller.who(), adjustment).await?))
}

async fn prices(_: Caller, State(s): State<Arc<AdminState>>) -> ApiResult<Json<Value>> {
    Ok(Json(s.admin.prices().await?))
}

async fn put_price(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let price: PriceUsd = parse(&body)?;
    caller.audit("put_price", &model);
    Ok(Json(s.admin.put_price(&model, price).await?))
}

async fn delete_price(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    Path(model): Path<String>,
) -> ApiResult<StatusCode> {
    caller.audit("delete_price", &model);
    s.admin.delete_price(&model).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardrailTest {
    text: String,
    #[serde(default)]
    source: Option<String>,
}

/// Runs a text through the configured guardrail and shows its full verdict (matches included:
/// this is an admin tool for tuning the guardrail).
async fn guardrail_test(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let test: GuardrailTest = parse(&body)?;
    let source = match test.source.as_deref().unwrap_or("input") {
        "input" | "INPUT" => Source::Input,
        "output" | "OUTPUT" => Source::Output,
        other => {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                message: format!("source {other:?} is not \"input\" or \"output\""),
                field: Some("source".into()),
            });
        }
    };
    let Some(guardrail) = &s.guardrail else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no guardrail is configured",
        ));
    };
    caller.audit("guardrail_test", guardrail.name());
    Ok(Json(
        crate::guardrail::test_report(guardrail.as_ref(), source, test.text).await,
    ))
}
