//! The audit log of admin actions (issue 20; docs/tenants.md, "Audit
//! log"): every changing server API call made with an API key is recorded,
//! once answered, in its tenant's log in the store; `GET /api/v1/audit`
//! (scope `audit`) reads it.
//!
//! Which tenant's log: the key's, for a tenant's key; for a system key,
//! the tenant of the first id in the call's path (`/api/v1/users/acme~bob/ban`
//! is logged in `acme`'s), else the default tenant's (`""`), which is also
//! the system's own log. Message sends and media uploads are traffic, not
//! administration, and are not logged: their volume would push the
//! administration out of the bounded log.

use std::sync::Arc;

use axum::{
    Json,
    extract::{FromRequestParts, MatchedPath, Query, RawPathParams, Request, State},
    http::Method,
    middleware::Next,
    response::Response,
};
use serde::{Deserialize, Serialize};
use tern_backend::store::{AuditLog, AuditRecord};
use tern_protocol::ids::{self, ConversationId};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiState, Authorized, Scope, error::ErrorBody};

/// The store's audit log and how much of it to keep.
#[derive(Debug, Clone)]
pub struct Audit {
    /// The log.
    pub log: Arc<dyn AuditLog>,
    /// Records kept per tenant (`[api] audit_entries_max`, > 0).
    pub keep: u64,
}

/// Who made a call that is not an API key's (a user admin's, api/org.rs):
/// the handler puts it in its response's extensions, and the call is
/// recorded with it.
#[derive(Debug, Clone)]
pub struct AuditActor {
    /// The user.
    pub actor: String,
    /// The level they acted at (`organization`, `department`, ...).
    pub level: &'static str,
    /// Whose log.
    pub tenant: String,
}

/// Routes whose calls are traffic, not administration (method, route).
const NOT_AUDITED: [(&str, &str); 3] = [
    ("POST", "/api/v1/messages"),
    ("POST", "/api/v1/messages/batch"),
    ("POST", "/api/v1/media"),
];

/// Largest page of `GET /api/v1/audit`.
const PAGE_MAX: usize = 500;

/// The audit route.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(read_audit))
}

/// Middleware (a route layer, so the matched route is known): records
/// each changing call made with an API key once it is answered.
pub async fn record(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(audit) = state.audit.clone() else {
        return next.run(req).await;
    };
    let method = req.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let Some((key, key_tenant)) = state.keys.named_in(req.headers()) else {
        // Not a key's call: a user admin's, if its handler says so (a
        // refused one is not: it changed nothing and named no level).
        let (method, target) = (req.method().to_string(), req.uri().path().to_owned());
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let response = next.run(req).await;
        if let Some(a) = response.extensions().get::<AuditActor>().cloned() {
            let record = AuditRecord {
                seq: 0,
                time_ms: crate::bridge::unix_ms(),
                actor: a.actor,
                level: a.level.into(),
                action: format!("{method} {route}"),
                target,
                status: u32::from(response.status().as_u16()),
            };
            append(&audit, &a.tenant, record).await;
        }
        return response;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    if NOT_AUDITED.contains(&(method.as_str(), route.as_str())) {
        return next.run(req).await;
    }
    let target = req.uri().path().to_owned();
    let (mut parts, body) = req.into_parts();
    let path_tenant = RawPathParams::from_request_parts(&mut parts, &state)
        .await
        .ok()
        .and_then(|params| tenant_of_path(&params));
    let response = next.run(Request::from_parts(parts, body)).await;
    let level = if key_tenant.is_some() {
        "tenant"
    } else {
        "system"
    };
    let tenant = key_tenant.or(path_tenant).unwrap_or_default();
    let record = AuditRecord {
        seq: 0,
        time_ms: crate::bridge::unix_ms(),
        actor: format!("key:{key}"),
        level: level.into(),
        action: format!("{method} {route}"),
        target,
        status: u32::from(response.status().as_u16()),
    };
    append(&audit, &tenant, record).await;
    response
}

/// Writes `record` to `tenant`'s log before the answer goes out: an
/// answered admin call is in the log (a failed write is logged here and
/// does not undo the call).
async fn append(audit: &Audit, tenant: &str, record: AuditRecord) {
    let (log, keep, tenant) = (audit.log.clone(), audit.keep, tenant.to_owned());
    let appended =
        tokio::task::spawn_blocking(move || log.audit_append(&tenant, &record, keep)).await;
    match appended {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "audit log: record not written"),
        Err(e) => tracing::warn!(error = %e, "audit log: writer task failed"),
    }
}

/// The tenant of the first id a path names, if any.
fn tenant_of_path(params: &RawPathParams) -> Option<String> {
    params.iter().find_map(|(name, value)| {
        if name == "conversation_id" {
            let c = ConversationId::parse(value).ok()?;
            Some(c.tenants()[0].to_owned())
        } else if name.ends_with("_id") && ids::check_id(value).is_ok() {
            Some(ids::tenant_of(value).to_owned())
        } else {
            None
        }
    })
}

/// Which page of which log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditPage {
    /// The tenant whose log to read (a system key only; a tenant's key
    /// reads its own). Left out: the default tenant's, the system's own.
    pub tenant: Option<String>,
    /// Records below this seq (the previous page's `next_before_seq`).
    pub before_seq: Option<u64>,
    /// At most this many (default and maximum 500).
    pub limit: Option<usize>,
}

/// One admin action.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Its place in the tenant's log, from 1.
    pub seq: u64,
    /// When it was answered, ms since the epoch.
    pub time_ms: u64,
    /// `key:<name>`.
    pub actor: String,
    /// `system` or `tenant`.
    pub level: String,
    /// Method and route, e.g. `DELETE /api/v1/groups/{group_id}`.
    pub action: String,
    /// The path as called.
    pub target: String,
    /// The HTTP status it was answered with.
    pub status: u32,
}

/// A page of an audit log, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditLogPage {
    /// The tenant (`""`: the default tenant's, the system's own log).
    pub tenant: String,
    /// The records.
    pub entries: Vec<AuditEntry>,
    /// `before_seq` of the next (older) page; absent at the oldest kept.
    pub next_before_seq: Option<u64>,
}

/// Read the audit log of admin actions.
///
/// Every changing call made with an API key (but message sends and media
/// uploads) is recorded in its tenant's log once answered, whatever its
/// outcome. A tenant's key reads its own tenant's log; a system key any
/// (`?tenant=`).
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditPage),
    responses(
        (status = 200, description = "A page, newest first", body = AuditLogPage),
        (status = 400, description = "Bad tenant or page", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `audit` scope, or names another tenant", body = ErrorBody),
        (status = 501, description = "No audit log on this server (`[api] audit_entries_max = 0`)", body = ErrorBody),
    ),
)]
async fn read_audit(
    State(state): State<ApiState>,
    auth: Authorized,
    page: Result<Query<AuditPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditLogPage>, ApiError> {
    auth.require(Scope::Audit)?;
    let Query(page) = page.map_err(|e| ApiError::invalid(e.body_text()))?;
    let tenant = match (page.tenant, &auth.tenant) {
        (Some(t), _) if !t.is_empty() && ids::check_tenant(&t).is_err() => {
            return Err(ApiError::invalid("tenant: 1 to 32 of [a-z0-9-]"));
        }
        (Some(t), Some(own)) if t != *own => return Err(ApiError::tenant_mismatch("tenant")),
        (_, Some(own)) => own.clone(),
        (t, None) => t.unwrap_or_default(),
    };
    let Some(audit) = state.audit.clone() else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "AUDIT_DISABLED",
            "this server keeps no audit log ([api] audit_entries_max = 0)",
        ));
    };
    let limit = page.limit.unwrap_or(PAGE_MAX).clamp(1, PAGE_MAX);
    let before = page.before_seq.unwrap_or(0);
    let t = tenant.clone();
    let records = super::blocking(move || audit.log.audit_page(&t, before, limit)).await?;
    let next_before_seq = records.last().map(|r| r.seq).filter(|&s| s > 1);
    Ok(Json(AuditLogPage {
        tenant,
        next_before_seq: if records.len() == limit {
            next_before_seq
        } else {
            None
        },
        entries: records
            .into_iter()
            .map(|r| AuditEntry {
                seq: r.seq,
                time_ms: r.time_ms,
                actor: r.actor,
                level: r.level,
                action: r.action,
                target: r.target,
                status: r.status,
            })
            .collect(),
    }))
}
