//! Development tokens: an HS256 JWT `{"sub": user, "exp": now + ttl}`
//! signed with the secret a local `tern serve --jwt-secret S` verifies with.
//!
//! Only for development servers: a production deployment's tokens come from
//! its own service, and this module never sees that service's key.

use serde::Serialize;

use super::ClientError;

/// Default validity of a minted token, in seconds (one day).
pub const TOKEN_TTL_SECS_DEFAULT: u64 = 86_400;

/// Where the token of a login comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// A token issued by the application's service.
    Fixed(String),
    /// Minted here for a development server, afresh for every connection
    /// (so a reconnect after expiry gets a valid one).
    Mint {
        /// The user (`sub`).
        user: String,
        /// The server's HS256 secret.
        secret: String,
        /// The `aud` claim, when the server requires one.
        audience: Option<String>,
        /// Validity, in seconds.
        ttl_secs: u64,
    },
}

impl std::fmt::Debug for TokenSource {
    // Neither the token nor the secret belongs in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(_) => f.write_str("TokenSource::Fixed(..)"),
            Self::Mint { user, .. } => write!(f, "TokenSource::Mint {{ user: {user:?}, .. }}"),
        }
    }
}

impl TokenSource {
    /// A token to log in with now.
    pub fn token(&self) -> Result<String, ClientError> {
        match self {
            Self::Fixed(t) => Ok(t.clone()),
            Self::Mint {
                user,
                secret,
                audience,
                ttl_secs,
            } => mint_hs256(secret, user, *ttl_secs, audience.as_deref()),
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    /// Issued at: a logged-out device's older tokens are refused by it.
    iat: u64,
    /// The tenant of a `<tenant>~<local>` user id (docs/tenants.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<&'a str>,
}

/// Mints an HS256 token for `user`, valid for `ttl_secs`.
pub fn mint_hs256(
    secret: &str,
    user: &str,
    ttl_secs: u64,
    audience: Option<&str>,
) -> Result<String, ClientError> {
    if secret.is_empty() {
        return Err(ClientError::Usage(
            "the JWT secret is empty: pass the one `tern serve --jwt-secret` uses".into(),
        ));
    }
    tern_protocol::ids::check_id(user)
        .map_err(|e| ClientError::Usage(format!("user id {user:?}: {e}")))?;
    // A tenant's user is `<tenant>~<local>`: the tenant goes in `tid`.
    let tid = tern_protocol::ids::tenant_of(user);
    let claims = Claims {
        sub: tern_protocol::ids::local_of(user),
        exp: jsonwebtoken::get_current_timestamp().saturating_add(ttl_secs),
        aud: audience,
        iat: jsonwebtoken::get_current_timestamp(),
        tid: (!tid.is_empty()).then_some(tid),
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_has_three_parts_and_refuses_bad_input() {
        // Proves a token is a JWS compact string, and that an empty secret
        // or an invalid user id is a usage error rather than a bad token.
        let t = mint_hs256("s", "alice", 60, None).unwrap();
        assert_eq!(t.split('.').count(), 3);
        assert!(matches!(
            mint_hs256("", "alice", 60, None),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            mint_hs256("s", "a b", 60, None),
            Err(ClientError::Usage(_))
        ));
    }
}
