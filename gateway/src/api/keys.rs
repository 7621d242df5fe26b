//! API keys and scopes. A key is kept only as its SHA-256 digest; the
//! presented key is hashed and compared with every configured digest in
//! constant time, so neither the comparison nor the search order tells an
//! attacker how much of a key was right.
//!
//! A key may be confined to one tenant (`[[api.keys]] tenant`,
//! docs/tenants.md): every handler names the ids it was given to
//! [`Authorized::confine`] before it acts, and the acting user it derives
//! is in that tenant, so the domain's own tenant check holds as well.

use axum::{
    extract::{FromRequestParts, RawPathParams},
    http::{StatusCode, header, request::Parts},
};
use sha2::{Digest, Sha256};
use tern_protocol::ids::{self, ConversationId};

use super::{ApiError, ApiState};
use crate::config::ApiKeyConfig;

/// What a key may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Scope {
    /// Send messages and broadcasts.
    Messages = 1,
    /// Ban, kick, profiles, online devices.
    Users = 2,
    /// Create groups, change members and roles, dissolve.
    Groups = 4,
    /// Read history, presence, counts.
    Read = 8,
    /// Upload and fetch media.
    Media = 16,
    /// Create, read, post to and delete rooms.
    Rooms = 32,
    /// Read the audit log of admin actions.
    Audit = 64,
    /// Departments and their members.
    Org = 128,
}

impl Scope {
    /// Every scope (what `admin` grants).
    const ALL: u8 = 255;

    fn of_name(name: &str) -> u8 {
        match name {
            "messages" => Self::Messages as u8,
            "users" => Self::Users as u8,
            "groups" => Self::Groups as u8,
            "read" => Self::Read as u8,
            "media" => Self::Media as u8,
            "rooms" => Self::Rooms as u8,
            "audit" => Self::Audit as u8,
            "org" => Self::Org as u8,
            "admin" => Self::ALL,
            _ => 0, // refused by the config's validation
        }
    }

    /// The name in config and errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Users => "users",
            Self::Groups => "groups",
            Self::Read => "read",
            Self::Media => "media",
            Self::Rooms => "rooms",
            Self::Audit => "audit",
            Self::Org => "org",
        }
    }
}

#[derive(Debug)]
struct Key {
    name: String,
    digest: [u8; 32],
    scopes: u8,
    /// `None`: a system key (every tenant).
    tenant: Option<String>,
}

/// The configured keys.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<Key>,
}

impl ApiKeys {
    /// From `[[api.keys]]` (already validated).
    pub fn new(config: &[ApiKeyConfig]) -> Self {
        Self {
            keys: config
                .iter()
                .map(|k| Key {
                    name: k.name.clone(),
                    digest: Sha256::digest(k.key.as_bytes()).into(),
                    scopes: k.scopes.iter().fold(0, |a, s| a | Scope::of_name(s)),
                    tenant: (!k.tenant.is_empty()).then(|| k.tenant.clone()),
                })
                .collect(),
        }
    }

    /// The name and tenant of the key a request's `Authorization` header
    /// presents, if it is one of ours (the audit layer's question: who
    /// made this call).
    pub fn named_in(&self, headers: &axum::http::HeaderMap) -> Option<(String, Option<String>)> {
        let key = headers
            .get(header::AUTHORIZATION)?
            .as_bytes()
            .strip_prefix(b"Bearer ")?;
        self.find(key).map(|k| (k.name.clone(), k.tenant.clone()))
    }

    /// The key `presented` is, if any: its name and scopes.
    fn find(&self, presented: &[u8]) -> Option<&Key> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for k in &self.keys {
            // Every key is compared in full, whatever matched before.
            let diff = k
                .digest
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(k);
            }
        }
        found
    }
}

/// A caller that presented a valid key. Extracting it from the request
/// head answers 401 before any body is read.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// The key's name (for logs; never the key).
    pub key_name: String,
    scopes: u8,
    /// The tenant the key is confined to; `None` for a system key.
    pub tenant: Option<String>,
}

impl Authorized {
    /// 403 unless the key holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes & scope as u8 != 0 {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!(
                "API key {:?} lacks the {:?} scope",
                self.key_name,
                scope.name()
            ),
        ))
    }
}

impl Authorized {
    /// 403 `TENANT_MISMATCH` unless the key may name `id` (`what` says
    /// which field): a system key names any, a tenant's key only ids of
    /// its tenant (docs/tenants.md).
    pub fn confine(&self, what: &str, id: &str) -> Result<(), ApiError> {
        self.confine_tenant(what, ids::tenant_of(id))
    }

    /// [`Authorized::confine`] for something of `tenant` (`""`: the
    /// default tenant).
    pub fn confine_tenant(&self, what: &str, tenant: &str) -> Result<(), ApiError> {
        match &self.tenant {
            Some(t) if tenant != t => Err(ApiError::tenant_mismatch(what)),
            _ => Ok(()),
        }
    }

    /// [`Authorized::confine`] for each of `ids`.
    pub fn confine_all<'a>(
        &self,
        what: &str,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), ApiError> {
        ids.into_iter().try_for_each(|id| self.confine(what, id))
    }

    /// 403 `TENANT_MISMATCH` for a tenant's key: `what` is about the whole
    /// server (every tenant's users), which only a system key may ask.
    pub fn require_system(&self, what: &str) -> Result<(), ApiError> {
        match &self.tenant {
            Some(t) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "TENANT_MISMATCH",
                format!(
                    "{what} covers every tenant: a system key only (this key is tenant {t:?}'s)"
                ),
            )),
            None => Ok(()),
        }
    }
}

impl Authorized {
    /// Confines the ids the route's path names, by the path parameter's
    /// name, so every route (and any added later) that names a user,
    /// group, room, conversation or media object in its path is checked
    /// here, before the handler runs. Ids in bodies and queries are the
    /// handlers' to confine.
    async fn confine_path(&self, parts: &mut Parts, state: &ApiState) -> Result<(), ApiError> {
        let Ok(params) = RawPathParams::from_request_parts(parts, state).await else {
            return Ok(()); // no path parameters
        };
        for (name, value) in &params {
            if name == "conversation_id" {
                if let Ok(c) = ConversationId::parse(value) {
                    for t in c.tenants() {
                        self.confine_tenant(name, t)?;
                    }
                }
            } else if name.ends_with("user_id")
                || name.ends_with("group_id")
                || name.ends_with("room_id")
                || name.ends_with("dept_id")
                || name == "media_id"
            {
                self.confine(name, value)?;
            }
        }
        Ok(())
    }
}

impl FromRequestParts<ApiState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        // The wire protocol's codes: no credentials is AUTH_REQUIRED, wrong
        // ones AUTH_FAILED.
        let unauthorized = |code: &'static str, m: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, code, m.to_owned())
        };
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized("AUTH_REQUIRED", "missing Authorization: Bearer <api key>")
        })?;
        let key = value.as_bytes().strip_prefix(b"Bearer ").ok_or_else(|| {
            unauthorized("AUTH_REQUIRED", "Authorization must be Bearer <api key>")
        })?;
        let k = state
            .keys
            .find(key)
            .ok_or_else(|| unauthorized("AUTH_FAILED", "unknown API key"))?;
        let authorized = Self {
            key_name: k.name.clone(),
            scopes: k.scopes,
            tenant: k.tenant.clone(),
        };
        if authorized.tenant.is_some() {
            authorized.confine_path(parts, state).await?;
        }
        Ok(authorized)
    }
}
