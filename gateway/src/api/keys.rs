//! API keys and scopes. A key is kept only as its SHA-256 digest; the
//! presented key is hashed and compared with every configured digest in
//! constant time, so neither the comparison nor the search order tells an
//! attacker how much of a key was right.

use axum::{
    extract::FromRequestParts,
    http::{StatusCode, header, request::Parts},
};
use sha2::{Digest, Sha256};

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
}

impl Scope {
    /// Every scope (what `admin` grants).
    const ALL: u8 = 63;

    fn of_name(name: &str) -> u8 {
        match name {
            "messages" => Self::Messages as u8,
            "users" => Self::Users as u8,
            "groups" => Self::Groups as u8,
            "read" => Self::Read as u8,
            "media" => Self::Media as u8,
            "rooms" => Self::Rooms as u8,
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
        }
    }
}

#[derive(Debug)]
struct Key {
    name: String,
    digest: [u8; 32],
    scopes: u8,
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
                })
                .collect(),
        }
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
        Ok(Self {
            key_name: k.name.clone(),
            scopes: k.scopes,
        })
    }
}
