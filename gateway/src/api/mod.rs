//! The server API for existing services: JSON over HTTP under `/api/v1`,
//! on the HTTP edge's runtime (never a shard thread), documented by an
//! OpenAPI file generated from these handlers (`/api/openapi.json`).
//!
//! Every call presents an API key (`Authorization: Bearer <key>`, from
//! `[[api.keys]]` or `TERN_API_KEY`); a missing or unknown key is 401 and a
//! key without the call's scope 403, both before the body is read. Errors are
//! one JSON shape, [`ApiError`], with a stable `code`.
//!
//! A call that acts on chat goes to the backend worker of the user it acts
//! as, through that worker's API ring ([`backend::ApiBackend`]), the same
//! way a connection's request does: the same domain rules, the same durable
//! commit, pushes before the answer.
//!
//! Modules add their routes in [`router`] with `routes!(..)` of
//! `utoipa_axum`, which puts each handler in the router and in the OpenAPI
//! document at once, so a route cannot be missing from the document.

pub mod accounts;
pub mod audit;
pub mod backend;
pub mod error;
pub mod groups;
pub mod keys;
pub mod media;
pub mod messages;
pub mod ops;
pub mod org;
pub mod reads;
pub mod rooms;
pub mod users;

use std::sync::Arc;

use axum::{Json, Router, routing::get};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub use backend::ApiBackend;
pub use error::ApiError;
pub use keys::{ApiKeys, Authorized, Scope};
pub use ops::ApiOps;

/// What every API handler reads.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The configured keys.
    pub keys: Arc<ApiKeys>,
    /// The way into the backend workers.
    pub backend: Arc<ApiBackend>,
    /// This node's id.
    pub node_id: Arc<str>,
    /// Operator calls: settings, counters, shard rings, replays.
    pub ops: Arc<ApiOps>,
    /// The audit log of admin actions (`None`: not kept).
    pub audit: Option<audit::Audit>,
    /// The departments (`None`: the service keeps none).
    pub org: Option<Arc<dyn tern_backend::store::OrgStore>>,
    /// Verifies user tokens (the department routes' admins).
    pub verifier: Option<Arc<crate::auth::Verifier>>,
}

/// The document's frame: title, version, the security scheme. Paths come
/// from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tern server API",
        description = "Calls for existing services: send messages, manage users and groups, read history. See docs/http-api.md."
    ),
    modifiers(&BearerKey),
    security(("api_key" = [])),
)]
struct Doc;

/// Declares the `api_key` bearer scheme every call uses.
struct BearerKey;

impl utoipa::Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The API's routes and their OpenAPI document.
pub fn routes(state: ApiState) -> (Router, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(Doc::openapi())
        .merge(messages::routes())
        .merge(users::routes())
        .merge(groups::routes())
        .merge(reads::routes())
        .merge(media::routes())
        .merge(accounts::routes())
        .merge(rooms::routes())
        .merge(audit::routes())
        .merge(org::routes())
        .with_state(state.clone())
        .split_for_parts();
    // Admin actions are recorded once answered (a route layer: it sees the
    // matched route and its path ids).
    let router = router.route_layer(axum::middleware::from_fn_with_state(state, audit::record));
    (router, doc)
}

/// Runs a store call of the edge (audit log, departments, seats, storage
/// counts) off the HTTP runtime's threads; a failure is a 500.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> tern_backend::store::StoreResult<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("store task: {e}")))?
        .map_err(|e| ApiError::internal(format!("store: {e}")))
}

/// The API under `/api/v1` plus `/api/openapi.json` (served without a
/// key: it holds no data).
pub fn router(state: ApiState) -> Router {
    let (api, doc) = routes(state);
    let doc = Arc::new(doc);
    api.route(
        "/api/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move { Json(doc.as_ref().clone()) }
        }),
    )
}

/// The generated document without a running server (`tern openapi`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let state = ApiState {
        keys: Arc::new(ApiKeys::default()),
        backend: Arc::new(ApiBackend::new(Vec::new(), std::time::Duration::ZERO)),
        node_id: "".into(),
        ops: Arc::new(ApiOps::new(Default::default(), None, Vec::new())),
        audit: None,
        org: None,
        verifier: None,
    };
    routes(state).1
}
