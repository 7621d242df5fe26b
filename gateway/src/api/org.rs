//! Departments (issue 20; docs/tenants.md, "Org structure and admin
//! levels"): a tree per organization (a root department) in a tenant,
//! members with titles, and who may change what.
//!
//! Callers and their levels, each allowed exactly its scope:
//! - a system API key (scope `org`): every tenant;
//! - a tenant's API key (scope `org`): its tenant;
//! - a user token of an *organization admin* (named in a root department's
//!   `admins`) or a *department admin* (named in a department's `admins`):
//!   that department and everything below it: sub-departments, members and
//!   titles; the department's own record (name, order, admins) and its
//!   deletion belong to the admins above it. Organizations (roots) are made
//!   by keys only.
//!
//! Any user of the tenant reads its departments (the directory is
//! tenant-wide: `GET /api/v1/departments/{dept_id}` with their token).
//!
//! A department made with `group: true` has a chat group of the same id,
//! kept in step: its members are added to and removed from the group by
//! the tenant's operator (group events in its log, synced like any), and
//! deleting the department dissolves it.
//!
//! Each change is an admin action in the audit log ([`super::audit`]): a
//! user's call is recorded with the level it acted at.

use std::sync::Arc;

use axum::{
    Json,
    extract::{FromRequestParts, Path, Query, State},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use tern_backend::store::{DeptMember, DeptRecord, OrgStore};
use tern_protocol::{
    ids,
    pb::{self, frame::Body as PbBody},
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiState, Authorized, Scope, audit::AuditActor, blocking, error::ErrorBody};

/// Deepest department (an organization is depth 1): every walk up the tree
/// is bounded by it.
pub const DEPTH_MAX: usize = 16;
/// Departments one tenant holds at most.
pub const DEPARTMENTS_MAX: usize = 10_000;
/// Admins one department names at most.
pub const ADMINS_MAX: usize = 100;
/// Longest department name or member title, bytes.
pub const NAME_BYTES_MAX: usize = 256;
/// Largest page of members.
const PAGE_MAX: usize = 500;

/// The department routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_department))
        .routes(routes!(
            get_department,
            change_department,
            delete_department
        ))
        .routes(routes!(put_member, remove_member))
        .routes(routes!(search_directory))
}

/// Who calls, from the request head: an API key, else a user token.
#[derive(Debug, Clone)]
pub enum OrgCaller {
    /// An API key with the `org` scope (`tenant`: `None` for a system key).
    Key {
        /// The key's name.
        name: String,
        /// Its tenant.
        tenant: Option<String>,
    },
    /// A user, by their token.
    User(String),
}

impl FromRequestParts<ApiState> for OrgCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let key_error = match Authorized::from_request_parts(parts, state).await {
            Ok(auth) => {
                auth.require(Scope::Org)?;
                return Ok(Self::Key {
                    name: auth.key_name,
                    tenant: auth.tenant,
                });
            }
            Err(e) => e,
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (token, &state.verifier) {
            (Some(t), Some(v)) if t.split('.').count() == 3 => match v.verify(t) {
                Ok(user) => Ok(Self::User(user)),
                Err(e) => Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "AUTH_FAILED",
                    format!("token refused: {e}"),
                )),
            },
            _ => Err(key_error),
        }
    }
}

/// What a caller may do to one department.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reach {
    /// Reading it (the directory): any user of its tenant.
    Read,
    /// Its contents: sub-departments, members, titles.
    Contents,
    /// Its own record too (name, order, admins) and its deletion.
    Record,
}

/// The level a permitted call acted at, for the audit log.
fn level_name(caller: &OrgCaller, root_admin: bool) -> &'static str {
    match caller {
        OrgCaller::Key { tenant: None, .. } => "system",
        OrgCaller::Key { .. } => "tenant",
        OrgCaller::User(_) if root_admin => "organization",
        OrgCaller::User(_) => "department",
    }
}

fn forbidden(why: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "PERMISSION_DENIED", why)
}

fn store(state: &ApiState) -> Result<Arc<dyn OrgStore>, ApiError> {
    state.org.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "ORG_UNAVAILABLE",
            "this server keeps no departments",
        )
    })
}

/// `dept` and its ancestors, nearest first (at most [`DEPTH_MAX`]); 404
/// when `dept` does not exist.
async fn lineage(org: &Arc<dyn OrgStore>, dept: &str) -> Result<Vec<DeptRecord>, ApiError> {
    let tenant = ids::tenant_of(dept).to_owned();
    let mut out: Vec<DeptRecord> = Vec::new();
    let mut next = dept.to_owned();
    while !next.is_empty() && out.len() < DEPTH_MAX {
        let (o, t, id) = (org.clone(), tenant.clone(), next.clone());
        match blocking(move || o.dept(&t, &id)).await? {
            Some(d) => {
                next = d.parent.clone();
                out.push(d);
            }
            None if out.is_empty() => {
                return Err(ApiError::not_found(format!("no department {dept:?}")));
            }
            // A parent deleted under a child cannot happen (a department
            // with children is not deleted); stop at what exists.
            None => break,
        }
    }
    Ok(out)
}

/// Checks that `caller` reaches `lineage[0]` (its department, then its
/// ancestors) at least as far as `reach`; answers the level it acts at.
fn permit(
    caller: &OrgCaller,
    lineage: &[DeptRecord],
    reach: Reach,
) -> Result<&'static str, ApiError> {
    let Some(dept) = lineage.first() else {
        return Err(ApiError::internal("an empty lineage"));
    };
    let tenant = ids::tenant_of(&dept.dept_id);
    match caller {
        OrgCaller::Key {
            tenant: Some(t), ..
        } if t != tenant => Err(ApiError::tenant_mismatch("dept_id")),
        OrgCaller::Key { .. } => Ok(level_name(caller, false)),
        OrgCaller::User(user) => {
            if ids::tenant_of(user) != tenant {
                return Err(ApiError::tenant_mismatch("dept_id"));
            }
            // Admins of the department itself reach its contents; admins
            // of an ancestor reach its record too.
            let first = match reach {
                Reach::Read => return Ok("member"),
                Reach::Contents => 0,
                Reach::Record => 1,
            };
            for d in lineage.iter().skip(first) {
                if d.admins.iter().any(|a| a == user) {
                    let root = lineage.last().is_some_and(|r| r.dept_id == d.dept_id)
                        && d.parent.is_empty();
                    return Ok(level_name(caller, root));
                }
            }
            Err(forbidden(match reach {
                Reach::Read | Reach::Contents => format!(
                    "{user:?} administers neither {:?} nor a department above it",
                    dept.dept_id
                ),
                Reach::Record => format!(
                    "{user:?} administers no department above {:?} (a department's own \
                     record belongs to the admins above it)",
                    dept.dept_id
                ),
            }))
        }
    }
}

/// The audit actor of a permitted call.
fn actor(caller: &OrgCaller, level: &'static str, tenant: &str) -> AuditActor {
    AuditActor {
        actor: match caller {
            OrgCaller::Key { name, .. } => format!("key:{name}"),
            OrgCaller::User(u) => u.clone(),
        },
        level,
        tenant: tenant.to_owned(),
    }
}

fn check_name(field: &str, s: &str) -> Result<(), ApiError> {
    if s.len() > NAME_BYTES_MAX {
        return Err(ApiError::invalid(format!(
            "{field}: longer than {NAME_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

fn check_admins(dept: &str, admins: &[String]) -> Result<(), ApiError> {
    if admins.len() > ADMINS_MAX {
        return Err(ApiError::invalid(format!("admins: more than {ADMINS_MAX}")));
    }
    for a in admins {
        ids::check_id(a).map_err(|e| ApiError::invalid(format!("admins: {e}")))?;
        if ids::tenant_of(a) != ids::tenant_of(dept) {
            return Err(ApiError::tenant_mismatch("admins"));
        }
    }
    Ok(())
}

/// A department to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDepartment {
    /// Its id, in its tenant (`acme~eng`).
    pub dept_id: String,
    /// Display name (≤ 256 bytes).
    pub name: String,
    /// The parent department; left out: a new organization (API keys only).
    #[serde(default)]
    pub parent: Option<String>,
    /// Its place among its siblings (lower first).
    #[serde(default)]
    pub order: u32,
    /// Users who administer it and everything below it (≤ 100, its tenant's).
    #[serde(default)]
    pub admins: Vec<String>,
    /// Also make a chat group of the same id, kept in step with the
    /// department's members (owned by the tenant's operator).
    #[serde(default)]
    pub group: bool,
}

/// A department as stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Department {
    /// Its id.
    pub dept_id: String,
    /// Display name.
    pub name: String,
    /// The parent; empty for an organization.
    pub parent: String,
    /// Its place among its siblings.
    pub order: u32,
    /// Its admins.
    pub admins: Vec<String>,
    /// Its chat group, kept in step with its members; empty: none.
    pub group_id: String,
    /// Bumped by every change.
    pub version: u64,
}

impl From<DeptRecord> for Department {
    fn from(d: DeptRecord) -> Self {
        Self {
            dept_id: d.dept_id,
            name: d.name,
            parent: d.parent,
            order: d.order,
            admins: d.admins,
            group_id: d.group_id,
            version: d.version,
        }
    }
}

/// Make a department (or, with no parent, an organization).
#[utoipa::path(
    post,
    path = "/api/v1/departments",
    tag = "org",
    request_body = NewDepartment,
    responses(
        (status = 201, description = "Made", body = Department),
        (status = 400, description = "Bad id, name, admins; too deep; too many departments", body = ErrorBody),
        (status = 401, description = "No key or token, or a refused one", body = ErrorBody),
        (status = 403, description = "`PERMISSION_DENIED` (no admin of the parent; an organization by a user) or `TENANT_MISMATCH`", body = ErrorBody),
        (status = 404, description = "No such parent", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody),
    ),
)]
async fn create_department(
    State(state): State<ApiState>,
    caller: OrgCaller,
    body: Result<Json<NewDepartment>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(n) = body?;
    let org = store(&state)?;
    ids::check_id(&n.dept_id).map_err(|e| ApiError::invalid(format!("dept_id: {e}")))?;
    check_name("name", &n.name)?;
    check_admins(&n.dept_id, &n.admins)?;
    let tenant = ids::tenant_of(&n.dept_id).to_owned();
    let parent = n.parent.clone().unwrap_or_default();
    let level = if parent.is_empty() {
        match &caller {
            OrgCaller::Key {
                tenant: Some(t), ..
            } if *t != tenant => {
                return Err(ApiError::tenant_mismatch("dept_id"));
            }
            OrgCaller::Key { .. } => level_name(&caller, false),
            OrgCaller::User(_) => {
                return Err(forbidden("organizations are made with an API key"));
            }
        }
    } else {
        ids::check_id(&parent).map_err(|e| ApiError::invalid(format!("parent: {e}")))?;
        if ids::tenant_of(&parent) != tenant {
            return Err(ApiError::tenant_mismatch("parent"));
        }
        let lineage = lineage(&org, &parent).await?;
        if lineage.len() >= DEPTH_MAX {
            return Err(ApiError::invalid(format!(
                "parent: a department is at most {DEPTH_MAX} deep"
            )));
        }
        permit(&caller, &lineage, Reach::Contents)?
    };
    let (o, t) = (org.clone(), tenant.clone());
    let count = blocking(move || o.depts(&t).map(|d| d.len())).await?;
    if count >= DEPARTMENTS_MAX {
        return Err(ApiError::invalid(format!(
            "a tenant holds at most {DEPARTMENTS_MAX} departments"
        )));
    }
    if n.group {
        // The group first: a department that says it has a group has one.
        let create = pb::GroupCreate {
            group_id: n.dept_id.clone(),
            name: n.name.clone(),
            members: Vec::new(),
            join_policy: pb::JoinPolicy::InviteOnly as i32,
            history_visible: false,
        };
        let operator = state.ops.operator_in(&tenant);
        state
            .backend
            .call_admin(&operator, PbBody::GroupCreate(create))
            .await?;
    }
    let record = DeptRecord {
        dept_id: n.dept_id.clone(),
        name: n.name,
        parent,
        order: n.order,
        admins: n.admins,
        group_id: if n.group {
            n.dept_id.clone()
        } else {
            String::new()
        },
        version: 0,
        created_ms: crate::bridge::unix_ms(),
    };
    let (o, t, r) = (org.clone(), tenant.clone(), record.clone());
    if !blocking(move || o.put_dept(&t, &r, 0)).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            format!("department {:?} exists", n.dept_id),
        ));
    }
    let made = Department {
        version: 1,
        ..record.into()
    };
    Ok(answer(
        StatusCode::CREATED,
        made,
        actor(&caller, level, &tenant),
    ))
}

/// Which members to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MembersPage {
    /// Members with a user id after this one.
    pub after: Option<String>,
    /// At most this many (default and maximum 500).
    pub limit: Option<usize>,
}

/// A department with its sub-departments and a page of its members.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DepartmentDetail {
    /// The department.
    pub department: Department,
    /// Its sub-departments, by order then id.
    pub children: Vec<Department>,
    /// A page of its members, by user id.
    pub members: Vec<Member>,
}

/// A member of a department.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Member {
    /// The user.
    pub user_id: String,
    /// Their title here.
    pub title: String,
    /// Their place in the list.
    pub order: u32,
}

/// A department, its sub-departments and a page of its members.
#[utoipa::path(
    get,
    path = "/api/v1/departments/{dept_id}",
    tag = "org",
    params(("dept_id" = String, Path, description = "The department"), MembersPage),
    responses(
        (status = 200, description = "The department", body = DepartmentDetail),
        (status = 403, description = "Not an admin of it or above, or another tenant's", body = ErrorBody),
        (status = 404, description = "No such department", body = ErrorBody),
    ),
)]
async fn get_department(
    State(state): State<ApiState>,
    caller: OrgCaller,
    Path(dept_id): Path<String>,
    page: Result<Query<MembersPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DepartmentDetail>, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::invalid(e.body_text()))?;
    let org = store(&state)?;
    ids::check_id(&dept_id)
        .map_err(|_| ApiError::not_found(format!("no department {dept_id:?}")))?;
    let lineage = lineage(&org, &dept_id).await?;
    permit(&caller, &lineage, Reach::Read)?;
    if let OrgCaller::User(user) = &caller
        && permit(&caller, &lineage, Reach::Contents).is_err()
    {
        let visible = Visible::of(&state, &org, user).await?;
        if !visible.sees(&lineage) {
            return Err(forbidden(format!(
                "{dept_id:?} is outside your directory ([api_ops] directory_visibility = {:?})",
                state.ops.settings.directory_visibility
            )));
        }
    }
    let tenant = ids::tenant_of(&dept_id).to_owned();
    let limit = page.limit.unwrap_or(PAGE_MAX).clamp(1, PAGE_MAX);
    let after = page.after.unwrap_or_default();
    let (o, t, d) = (org.clone(), tenant.clone(), dept_id.clone());
    let (all, members) =
        blocking(move || Ok((o.depts(&t)?, o.dept_members(&t, &d, &after, limit)?))).await?;
    let mut children: Vec<DeptRecord> = all.into_iter().filter(|d| d.parent == dept_id).collect();
    children.sort_by(|a, b| (a.order, &a.dept_id).cmp(&(b.order, &b.dept_id)));
    let department = lineage.into_iter().next().map(Department::from);
    Ok(Json(DepartmentDetail {
        department: department.ok_or_else(|| ApiError::internal("an empty lineage"))?,
        children: children.into_iter().map(Department::from).collect(),
        members: members
            .into_iter()
            .map(|m| Member {
                user_id: m.user_id,
                title: m.title,
                order: m.order,
            })
            .collect(),
    }))
}

/// A change of a department's own record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepartmentChange {
    /// A new name.
    pub name: Option<String>,
    /// A new place among its siblings.
    pub order: Option<u32>,
    /// Its admins, replaced as a whole.
    pub admins: Option<Vec<String>>,
}

/// Change a department's name, order or admins (the admins above it, or a
/// key).
#[utoipa::path(
    patch,
    path = "/api/v1/departments/{dept_id}",
    tag = "org",
    params(("dept_id" = String, Path, description = "The department")),
    request_body = DepartmentChange,
    responses(
        (status = 200, description = "Changed", body = Department),
        (status = 403, description = "Not an admin above it, or another tenant's", body = ErrorBody),
        (status = 404, description = "No such department", body = ErrorBody),
        (status = 409, description = "Changed by someone else meanwhile: read and retry", body = ErrorBody),
    ),
)]
async fn change_department(
    State(state): State<ApiState>,
    caller: OrgCaller,
    Path(dept_id): Path<String>,
    body: Result<Json<DepartmentChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(c) = body?;
    let org = store(&state)?;
    ids::check_id(&dept_id)
        .map_err(|_| ApiError::not_found(format!("no department {dept_id:?}")))?;
    if let Some(n) = &c.name {
        check_name("name", n)?;
    }
    if let Some(a) = &c.admins {
        check_admins(&dept_id, a)?;
    }
    let lineage = lineage(&org, &dept_id).await?;
    let level = permit(&caller, &lineage, Reach::Record)?;
    let current = lineage[0].clone();
    let expected = current.version;
    let changed = DeptRecord {
        name: c.name.unwrap_or(current.name.clone()),
        order: c.order.unwrap_or(current.order),
        admins: c.admins.unwrap_or(current.admins.clone()),
        ..current
    };
    let tenant = ids::tenant_of(&dept_id).to_owned();
    let (o, t, r) = (org.clone(), tenant.clone(), changed.clone());
    if !blocking(move || o.put_dept(&t, &r, expected)).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            "the department changed meanwhile: read it and retry",
        ));
    }
    let out = Department {
        version: expected + 1,
        ..changed.into()
    };
    Ok(answer(StatusCode::OK, out, actor(&caller, level, &tenant)))
}

/// Delete a department with no sub-departments (its members leave it).
#[utoipa::path(
    delete,
    path = "/api/v1/departments/{dept_id}",
    tag = "org",
    params(("dept_id" = String, Path, description = "The department")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin above it, or another tenant's", body = ErrorBody),
        (status = 404, description = "No such department", body = ErrorBody),
        (status = 409, description = "It has sub-departments, or changed meanwhile", body = ErrorBody),
    ),
)]
async fn delete_department(
    State(state): State<ApiState>,
    caller: OrgCaller,
    Path(dept_id): Path<String>,
) -> Result<Response, ApiError> {
    let org = store(&state)?;
    ids::check_id(&dept_id)
        .map_err(|_| ApiError::not_found(format!("no department {dept_id:?}")))?;
    let lineage = lineage(&org, &dept_id).await?;
    let level = permit(&caller, &lineage, Reach::Record)?;
    let tenant = ids::tenant_of(&dept_id).to_owned();
    let (o, t) = (org.clone(), tenant.clone());
    let all = blocking(move || o.depts(&t)).await?;
    if all.iter().any(|d| d.parent == dept_id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "HAS_CHILDREN",
            "delete or move its sub-departments first",
        ));
    }
    let expected = lineage[0].version;
    let group = lineage[0].group_id.clone();
    let (o, t, d) = (org.clone(), tenant.clone(), dept_id.clone());
    if !blocking(move || o.delete_dept(&t, &d, expected)).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            "the department changed meanwhile: read it and retry",
        ));
    }
    if !group.is_empty() {
        let dissolve = PbBody::GroupDissolve(pb::GroupDissolve { group_id: group });
        in_step(&state, &tenant, dissolve).await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.extensions_mut().insert(actor(&caller, level, &tenant));
    Ok(r)
}

/// A member's place in a department.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberChange {
    /// Their title here (≤ 256 bytes).
    #[serde(default)]
    pub title: String,
    /// Their place in the list.
    #[serde(default)]
    pub order: u32,
}

/// Add a member to a department, or change their title.
#[utoipa::path(
    put,
    path = "/api/v1/departments/{dept_id}/members/{user_id}",
    tag = "org",
    params(
        ("dept_id" = String, Path, description = "The department"),
        ("user_id" = String, Path, description = "The user, of the department's tenant"),
    ),
    request_body = MemberChange,
    responses(
        (status = 200, description = "Set", body = Member),
        (status = 403, description = "Not an admin of it or above, or another tenant's", body = ErrorBody),
        (status = 404, description = "No such department", body = ErrorBody),
    ),
)]
async fn put_member(
    State(state): State<ApiState>,
    caller: OrgCaller,
    Path((dept_id, user_id)): Path<(String, String)>,
    body: Option<Json<MemberChange>>,
) -> Result<Response, ApiError> {
    let Json(m) = body.unwrap_or_default();
    let org = store(&state)?;
    ids::check_id(&dept_id)
        .map_err(|_| ApiError::not_found(format!("no department {dept_id:?}")))?;
    ids::check_id(&user_id).map_err(|e| ApiError::invalid(format!("user_id: {e}")))?;
    check_name("title", &m.title)?;
    if ids::tenant_of(&user_id) != ids::tenant_of(&dept_id) {
        return Err(ApiError::tenant_mismatch("user_id"));
    }
    let lineage = lineage(&org, &dept_id).await?;
    let level = permit(&caller, &lineage, Reach::Contents)?;
    let tenant = ids::tenant_of(&dept_id).to_owned();
    let member = DeptMember {
        user_id: user_id.clone(),
        title: m.title,
        order: m.order,
    };
    let (o, t, d, mm) = (org.clone(), tenant.clone(), dept_id.clone(), member.clone());
    blocking(move || o.put_dept_member(&t, &d, &mm)).await?;
    if !lineage[0].group_id.is_empty() {
        let invite = PbBody::GroupInvite(pb::GroupInvite {
            group_id: lineage[0].group_id.clone(),
            user_ids: vec![user_id.clone()],
        });
        in_step(&state, &tenant, invite).await?;
    }
    let out = Member {
        user_id: member.user_id,
        title: member.title,
        order: member.order,
    };
    Ok(answer(StatusCode::OK, out, actor(&caller, level, &tenant)))
}

/// Remove a member from a department.
#[utoipa::path(
    delete,
    path = "/api/v1/departments/{dept_id}/members/{user_id}",
    tag = "org",
    params(
        ("dept_id" = String, Path, description = "The department"),
        ("user_id" = String, Path, description = "The member"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Not an admin of it or above, or another tenant's", body = ErrorBody),
        (status = 404, description = "No such department or member", body = ErrorBody),
    ),
)]
async fn remove_member(
    State(state): State<ApiState>,
    caller: OrgCaller,
    Path((dept_id, user_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let org = store(&state)?;
    ids::check_id(&dept_id)
        .map_err(|_| ApiError::not_found(format!("no department {dept_id:?}")))?;
    ids::check_id(&user_id).map_err(|e| ApiError::invalid(format!("user_id: {e}")))?;
    let lineage = lineage(&org, &dept_id).await?;
    let level = permit(&caller, &lineage, Reach::Contents)?;
    let tenant = ids::tenant_of(&dept_id).to_owned();
    let (o, t, d, u) = (
        org.clone(),
        tenant.clone(),
        dept_id.clone(),
        user_id.clone(),
    );
    if !blocking(move || o.remove_dept_member(&t, &d, &u)).await? {
        return Err(ApiError::not_found(format!(
            "{user_id:?} is not a member of {dept_id:?}"
        )));
    }
    if !lineage[0].group_id.is_empty() {
        let kick = PbBody::GroupKick(pb::GroupKick {
            group_id: lineage[0].group_id.clone(),
            user_id: user_id.clone(),
        });
        in_step(&state, &tenant, kick).await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.extensions_mut().insert(actor(&caller, level, &tenant));
    Ok(r)
}

/// Brings a department's group in step (as the tenant's operator): a change
/// it already has (a member already in, one already gone, a group already
/// dissolved) is no error, so a retried call converges.
async fn in_step(state: &ApiState, tenant: &str, change: PbBody) -> Result<(), ApiError> {
    let operator = state.ops.operator_in(tenant);
    match state.backend.call_admin(&operator, change).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.code,
                "ALREADY_EXISTS" | "NOT_FOUND" | "NOT_MEMBER" | "GROUP_DISSOLVED"
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Departments a user reads, by `[api_ops] directory_visibility`.
enum Visible {
    /// Every department of their tenant.
    Tenant,
    /// Those whose organization (root) is one of these.
    Organizations(Vec<String>),
    /// These and those below them.
    Departments(Vec<String>),
}

/// A user's departments looked at for visibility, at most (a user in more
/// sees through the first ones).
const VIEWER_DEPARTMENTS_MAX: usize = 64;

impl Visible {
    async fn of(state: &ApiState, org: &Arc<dyn OrgStore>, user: &str) -> Result<Self, ApiError> {
        let mode = state.ops.settings.directory_visibility.as_str();
        if mode == "tenant" {
            return Ok(Self::Tenant);
        }
        let (o, t, u) = (
            org.clone(),
            ids::tenant_of(user).to_owned(),
            user.to_owned(),
        );
        let mut mine = blocking(move || o.user_depts(&t, &u)).await?;
        mine.truncate(VIEWER_DEPARTMENTS_MAX);
        if mode == "departments" {
            return Ok(Self::Departments(mine));
        }
        let mut roots = Vec::new();
        for d in mine {
            if let Some(root) = lineage(org, &d).await?.pop() {
                roots.push(root.dept_id);
            }
        }
        Ok(Self::Organizations(roots))
    }

    /// Whether the department whose lineage (nearest first) this is shows.
    fn sees(&self, lineage: &[DeptRecord]) -> bool {
        match self {
            Self::Tenant => true,
            Self::Organizations(roots) => {
                lineage.last().is_some_and(|r| roots.contains(&r.dept_id))
            }
            Self::Departments(mine) => lineage.iter().any(|d| mine.contains(&d.dept_id)),
        }
    }
}

/// Member records one directory search looks at, at most: past it the
/// answer says `partial`.
pub const DIRECTORY_SCAN_MAX: usize = 20_000;
/// Hits one directory search answers at most.
const HITS_MAX: usize = 100;

/// A directory search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DirectoryQuery {
    /// What to look for (1 to 64 bytes): in department names, member ids
    /// and titles, ignoring ASCII case.
    pub q: String,
    /// The tenant to search (keys only; a user searches their own).
    pub tenant: Option<String>,
}

/// A member found, with the department they were found in.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DirectoryMember {
    /// The department.
    pub dept_id: String,
    /// The member.
    pub user_id: String,
    /// Their title there.
    pub title: String,
}

/// What a directory search found.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DirectoryHits {
    /// Departments whose name matches, by id.
    pub departments: Vec<Department>,
    /// Members whose id or title matches, by department then user.
    pub members: Vec<DirectoryMember>,
    /// True when the search stopped at its bounds (100 hits, or 20,000
    /// member records looked at): narrow the query.
    pub partial: bool,
}

/// Search the directory of a tenant: department names, member ids and
/// titles, limited to what the caller may read.
#[utoipa::path(
    get,
    path = "/api/v1/directory",
    tag = "org",
    params(DirectoryQuery),
    responses(
        (status = 200, description = "What was found", body = DirectoryHits),
        (status = 400, description = "An empty or too long query, or a bad tenant", body = ErrorBody),
        (status = 403, description = "Another tenant's directory", body = ErrorBody),
    ),
)]
async fn search_directory(
    State(state): State<ApiState>,
    caller: OrgCaller,
    query: Result<Query<DirectoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DirectoryHits>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    if q.q.is_empty() || q.q.len() > 64 {
        return Err(ApiError::invalid("q: 1 to 64 bytes"));
    }
    let org = store(&state)?;
    let tenant = match (&caller, q.tenant) {
        (OrgCaller::User(u), t) => {
            let own = ids::tenant_of(u).to_owned();
            if t.is_some_and(|t| t != own) {
                return Err(ApiError::tenant_mismatch("tenant"));
            }
            own
        }
        (
            OrgCaller::Key {
                tenant: Some(own), ..
            },
            t,
        ) => {
            if t.as_ref().is_some_and(|t| t != own) {
                return Err(ApiError::tenant_mismatch("tenant"));
            }
            own.clone()
        }
        (OrgCaller::Key { tenant: None, .. }, t) => t.unwrap_or_default(),
    };
    if !tenant.is_empty() {
        ids::check_tenant(&tenant)
            .map_err(|_| ApiError::invalid("tenant: 1 to 32 of [a-z0-9-]"))?;
    }
    let needle = q.q.to_ascii_lowercase();
    let matches = |s: &str| s.to_ascii_lowercase().contains(&needle);
    let (o, t) = (org.clone(), tenant.clone());
    let all = blocking(move || o.depts(&t)).await?;
    // Which departments the caller reads: by the lineage of each, from the
    // tenant's records in memory (no store read per department).
    let by_id: std::collections::HashMap<&str, &DeptRecord> =
        all.iter().map(|d| (d.dept_id.as_str(), d)).collect();
    let lineage_of = |id: &str| {
        let mut out: Vec<DeptRecord> = Vec::new();
        let mut next = id;
        while let Some(d) = by_id.get(next) {
            out.push((*d).clone());
            if d.parent.is_empty() || out.len() >= DEPTH_MAX {
                break;
            }
            next = d.parent.as_str();
        }
        out
    };
    let visible = match &caller {
        OrgCaller::User(u) => Some(Visible::of(&state, &org, u).await?),
        OrgCaller::Key { .. } => None,
    };
    let readable: Vec<&DeptRecord> = all
        .iter()
        .filter(|d| {
            let lineage = lineage_of(&d.dept_id);
            match (&visible, &caller) {
                (None, _) => true,
                (Some(v), c) => v.sees(&lineage) || permit(c, &lineage, Reach::Contents).is_ok(),
            }
        })
        .collect();
    let mut hits = DirectoryHits {
        departments: Vec::new(),
        members: Vec::new(),
        partial: false,
    };
    for d in &readable {
        if matches(&d.name) || matches(&d.dept_id) {
            hits.departments.push(Department::from((*d).clone()));
        }
    }
    let mut budget = DIRECTORY_SCAN_MAX;
    'depts: for d in &readable {
        let mut after = String::new();
        loop {
            let take = budget.min(PAGE_MAX);
            if take == 0 {
                hits.partial = true;
                break 'depts;
            }
            let (o, t, id, a) = (
                org.clone(),
                tenant.clone(),
                d.dept_id.clone(),
                after.clone(),
            );
            let page = blocking(move || o.dept_members(&t, &id, &a, take)).await?;
            budget -= page.len();
            let done = page.len() < take;
            for m in page {
                if matches(&m.user_id) || matches(&m.title) {
                    if hits.members.len() >= HITS_MAX {
                        hits.partial = true;
                        break 'depts;
                    }
                    hits.members.push(DirectoryMember {
                        dept_id: d.dept_id.clone(),
                        user_id: m.user_id.clone(),
                        title: m.title,
                    });
                }
                after = m.user_id;
            }
            if done {
                break;
            }
        }
    }
    if hits.departments.len() > HITS_MAX {
        hits.departments.truncate(HITS_MAX);
        hits.partial = true;
    }
    Ok(Json(hits))
}

/// A JSON answer that names its actor for the audit log.
fn answer<T: Serialize>(status: StatusCode, body: T, actor: AuditActor) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.extensions_mut().insert(actor);
    r
}
