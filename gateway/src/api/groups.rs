//! Groups (scope `groups`), managed by an operator: create (for an owner),
//! add and remove members, set roles, dissolve. Changes other than create
//! are made by the first of `[api_ops] system_users` with the owner's
//! rights (it need not be a member); they are entries in the group's log,
//! signed by that user, and pushed to the members like any group change.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::{Deserialize, Serialize};
use tern_protocol::pb::{self, frame::Body};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiState, Authorized, Scope, error::ErrorBody, ops::check_user};

/// The group routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_group))
        .routes(routes!(dissolve_group))
        .routes(routes!(add_members))
        .routes(routes!(remove_member))
        .routes(routes!(set_role))
}

/// Who may join without an invitation.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JoinPolicy {
    /// Anyone.
    #[default]
    Open,
    /// Admins approve requests.
    Approval,
    /// Invited users only.
    InviteOnly,
}

/// A group to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// The owner (a member from the start).
    pub owner: String,
    /// Display name.
    pub name: String,
    /// Your id for it; left out: the server picks one. An id in use is 409.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Members besides the owner.
    #[serde(default)]
    pub members: Vec<String>,
    /// Who may join.
    #[serde(default)]
    pub join_policy: JoinPolicy,
    /// New members see messages from before they joined.
    #[serde(default)]
    pub history_visible: bool,
}

/// A group as created.
#[derive(Debug, Serialize, ToSchema)]
pub struct Group {
    /// Its id.
    pub group_id: String,
    /// Its conversation (`g:<group_id>`).
    pub conversation_id: String,
    /// Display name.
    pub name: String,
    /// The owner.
    pub owner: String,
    /// Members, owner included.
    pub member_count: u32,
}

/// Members to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    /// Users to add (those already members are skipped; all members: 409).
    pub user_ids: Vec<String>,
}

/// A role to give.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// The new role; `owner` hands ownership over (the old owner becomes
    /// an admin).
    pub role: Role,
}

/// A member's role.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A member.
    Member,
    /// An admin.
    Admin,
    /// The owner.
    Owner,
}

/// A stored group change.
#[derive(Debug, Serialize, ToSchema)]
pub struct Changed {
    /// The group.
    pub group_id: String,
    /// The seq of the change's entry in the group's log.
    pub seq: u64,
}

/// Create a group for an owner.
///
/// Created as if the owner did it from a device: the owner and members get
/// `group_joined` and the group's log starts with its creation.
#[utoipa::path(
    post,
    path = "/api/v1/groups",
    tag = "groups",
    request_body = CreateGroup,
    responses(
        (status = 200, description = "Created", body = Group),
        (status = 400, description = "Invalid argument (ids, too many members)", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `groups` scope", body = ErrorBody),
        (status = 409, description = "The group id is taken, or the group would be too large", body = ErrorBody),
    ),
)]
async fn create_group(
    State(state): State<ApiState>,
    auth: Authorized,
    body: Result<Json<CreateGroup>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Group>, ApiError> {
    auth.require(Scope::Groups)?;
    let Json(g) = body?;
    check_user("owner", &g.owner)?;
    let policy = match g.join_policy {
        JoinPolicy::Open => pb::JoinPolicy::Open,
        JoinPolicy::Approval => pb::JoinPolicy::Approval,
        JoinPolicy::InviteOnly => pb::JoinPolicy::InviteOnly,
    };
    let create = pb::GroupCreate {
        group_id: g.group_id.unwrap_or_default(),
        name: g.name,
        members: g.members,
        join_policy: policy as i32,
        history_visible: g.history_visible,
    };
    match state
        .backend
        .call_admin(&g.owner, Body::GroupCreate(create))
        .await?
    {
        Some(Body::GroupInfoResult(pb::GroupInfoResult {
            info: Some(info), ..
        })) => Ok(Json(Group {
            conversation_id: format!("g:{}", info.group_id),
            group_id: info.group_id,
            name: info.name,
            owner: info.owner,
            member_count: info.member_count,
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// Dissolve a group.
#[utoipa::path(
    delete,
    path = "/api/v1/groups/{group_id}",
    tag = "groups",
    params(("group_id" = String, Path, description = "The group")),
    responses(
        (status = 200, description = "Dissolved", body = Changed),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `groups` scope", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 410, description = "Already dissolved", body = ErrorBody),
    ),
)]
async fn dissolve_group(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(group_id): Path<String>,
) -> Result<Json<Changed>, ApiError> {
    auth.require(Scope::Groups)?;
    let body = Body::GroupDissolve(pb::GroupDissolve {
        group_id: group_id.clone(),
    });
    change(&state, group_id, body).await
}

/// Add members to a group.
#[utoipa::path(
    post,
    path = "/api/v1/groups/{group_id}/members",
    tag = "groups",
    params(("group_id" = String, Path, description = "The group")),
    request_body = AddMembers,
    responses(
        (status = 200, description = "Added", body = Changed),
        (status = 400, description = "Bad ids, or more than the server's invite limit", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `groups` scope", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 409, description = "All are members already, or the group is full", body = ErrorBody),
    ),
)]
async fn add_members(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(group_id): Path<String>,
    body: Result<Json<AddMembers>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    auth.require(Scope::Groups)?;
    let Json(a) = body?;
    let body = Body::GroupInvite(pb::GroupInvite {
        group_id: group_id.clone(),
        user_ids: a.user_ids,
    });
    change(&state, group_id, body).await
}

/// Remove a member from a group.
#[utoipa::path(
    delete,
    path = "/api/v1/groups/{group_id}/members/{user_id}",
    tag = "groups",
    params(
        ("group_id" = String, Path, description = "The group"),
        ("user_id" = String, Path, description = "The member"),
    ),
    responses(
        (status = 200, description = "Removed", body = Changed),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `groups` scope, or the member is the owner (hand ownership over first)", body = ErrorBody),
        (status = 404, description = "No such group or member", body = ErrorBody),
    ),
)]
async fn remove_member(
    State(state): State<ApiState>,
    auth: Authorized,
    Path((group_id, user_id)): Path<(String, String)>,
) -> Result<Json<Changed>, ApiError> {
    auth.require(Scope::Groups)?;
    check_user("user_id", &user_id)?;
    let body = Body::GroupKick(pb::GroupKick {
        group_id: group_id.clone(),
        user_id,
    });
    change(&state, group_id, body).await
}

/// Set a member's role.
#[utoipa::path(
    put,
    path = "/api/v1/groups/{group_id}/members/{user_id}/role",
    tag = "groups",
    params(
        ("group_id" = String, Path, description = "The group"),
        ("user_id" = String, Path, description = "The member"),
    ),
    request_body = SetRole,
    responses(
        (status = 200, description = "Set", body = Changed),
        (status = 400, description = "Bad role, or a change of the owner's own role", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `groups` scope", body = ErrorBody),
        (status = 404, description = "No such group or member", body = ErrorBody),
    ),
)]
async fn set_role(
    State(state): State<ApiState>,
    auth: Authorized,
    Path((group_id, user_id)): Path<(String, String)>,
    body: Result<Json<SetRole>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    auth.require(Scope::Groups)?;
    check_user("user_id", &user_id)?;
    let Json(r) = body?;
    let role = match r.role {
        Role::Member => pb::GroupRole::Member,
        Role::Admin => pb::GroupRole::Admin,
        Role::Owner => pb::GroupRole::Owner,
    };
    let body = Body::GroupSetRole(pb::GroupSetRole {
        group_id: group_id.clone(),
        user_id,
        role: role as i32,
    });
    change(&state, group_id, body).await
}

/// Runs a group change as the operator.
async fn change(state: &ApiState, group_id: String, body: Body) -> Result<Json<Changed>, ApiError> {
    check_user("group_id", &group_id)?;
    match state.backend.call_admin(state.ops.operator(), body).await? {
        Some(Body::Ok(ok)) => Ok(Json(Changed {
            group_id,
            seq: ok.seq,
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}
