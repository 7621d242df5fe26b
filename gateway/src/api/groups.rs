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
use tern_protocol::{
    ids::tenant_of,
    pb::{self, frame::Body},
};
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
        .routes(routes!(get_group))
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
    auth.confine("owner", &g.owner)?;
    if let Some(id) = &g.group_id {
        auth.confine("group_id", id)?;
    }
    auth.confine_all("members", &g.members)?;
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
    auth.confine_all("user_ids", &a.user_ids)?;
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

/// A group as an operator sees it: its settings and one page of members.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDetail {
    /// Its id.
    pub group_id: String,
    /// Its conversation (`g:<group_id>`).
    pub conversation_id: String,
    /// Display name.
    pub name: String,
    /// The announcement; empty for none.
    pub announcement: String,
    /// The owner.
    pub owner: String,
    /// Members, owner included.
    pub member_count: u32,
    /// Who may join.
    pub join_policy: JoinPolicy,
    /// New members see messages from before they joined.
    pub history_visible: bool,
    /// Only admins and the owner may send.
    pub muted_all: bool,
    /// Dissolved groups keep their log.
    pub dissolved: bool,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// Members in user id order, after `after` (at most the server's page).
    pub members: Vec<Member>,
    /// More members follow: ask again with `after` = the last `user_id`.
    pub more: bool,
}

/// One member of a group.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    /// The user.
    pub user_id: String,
    /// `member`, `admin` or `owner`.
    pub role: String,
    /// Their nickname in the group; empty for none.
    pub nickname: String,
    /// When they joined (ms since the epoch).
    pub joined_ms: u64,
    /// Muted until then (ms since the epoch); 0: not muted.
    pub muted_until_ms: u64,
}

/// Where a member page starts.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MembersPage {
    /// Members after this user id; left out: from the first.
    #[serde(default)]
    pub after: Option<String>,
}

/// A group's settings and members (the admin console's group view).
///
/// The settings are read by the first of `[api_ops] system_users`, the
/// members as the owner; a dissolved group is answered too
/// (`dissolved: true`, no members).
#[utoipa::path(
    get,
    path = "/api/v1/groups/{group_id}",
    tag = "groups",
    params(("group_id" = String, Path, description = "The group"), MembersPage),
    responses(
        (status = 200, description = "The group and a page of members", body = GroupDetail),
        (status = 400, description = "A malformed group or user id", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `groups` scope", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
)]
async fn get_group(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(group_id): Path<String>,
    page: Result<axum::extract::Query<MembersPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<GroupDetail>, ApiError> {
    auth.require(Scope::Groups)?;
    check_user("group_id", &group_id)?;
    let after = page
        .map_err(|e| ApiError::invalid(e.body_text()))?
        .0
        .after
        .unwrap_or_default();
    if !after.is_empty() {
        check_user("after", &after)?;
    }
    let operator = state.ops.operator_in(tenant_of(&group_id));
    let info = match state
        .backend
        .call_admin(
            &operator,
            Body::GroupInfo(pb::GroupInfoRequest {
                group_id: group_id.clone(),
            }),
        )
        .await?
    {
        Some(Body::GroupInfoResult(pb::GroupInfoResult {
            info: Some(info), ..
        })) => info,
        other => return Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    };
    // Members are read as the owner (the domain serves them to members
    // only); a dissolved group has none left to list.
    let page = if info.dissolved {
        pb::GroupMembersResult::default()
    } else {
        match state
            .backend
            .call_admin(
                &info.owner,
                Body::GroupMembers(pb::GroupMembersRequest {
                    group_id: group_id.clone(),
                    after_user_id: after,
                    limit: 0,
                }),
            )
            .await?
        {
            Some(Body::GroupMembersResult(page)) => page,
            other => return Err(ApiError::internal(format!("unexpected answer {other:?}"))),
        }
    };
    let role = |r: i32| match pb::GroupRole::try_from(r) {
        Ok(pb::GroupRole::Owner) => "owner",
        Ok(pb::GroupRole::Admin) => "admin",
        _ => "member",
    };
    let join_policy = match pb::JoinPolicy::try_from(info.join_policy) {
        Ok(pb::JoinPolicy::Approval) => JoinPolicy::Approval,
        Ok(pb::JoinPolicy::InviteOnly) => JoinPolicy::InviteOnly,
        _ => JoinPolicy::Open,
    };
    Ok(Json(GroupDetail {
        conversation_id: format!("g:{}", info.group_id),
        group_id: info.group_id,
        name: info.name,
        announcement: info.announcement,
        owner: info.owner,
        member_count: info.member_count,
        join_policy,
        history_visible: info.history_visible,
        muted_all: info.muted_all,
        dissolved: info.dissolved,
        created_ms: info.created_ms,
        members: page
            .members
            .into_iter()
            .map(|m| Member {
                role: role(m.role).to_owned(),
                user_id: m.user_id,
                nickname: m.nickname,
                joined_ms: m.joined_ms,
                muted_until_ms: m.muted_until_ms,
            })
            .collect(),
        more: page.more,
    }))
}

/// Runs a group change as the operator (of the group's tenant).
async fn change(state: &ApiState, group_id: String, body: Body) -> Result<Json<Changed>, ApiError> {
    check_user("group_id", &group_id)?;
    let operator = state.ops.operator_in(tenant_of(&group_id));
    match state.backend.call_admin(&operator, body).await? {
        Some(Body::Ok(ok)) => Ok(Json(Changed {
            group_id,
            seq: ok.seq,
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}
