//! Token verification: JWTs issued by the service in front of Tern.
//!
//! The algorithm is pinned by configuration (a token naming another one is
//! refused, so an HS256 secret can never be confused with a public key);
//! `exp` is required, `nbf` and `aud` are checked when present/configured;
//! `sub` is the user id and must be a valid Tern id.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tern_protocol::{ids, pb::ErrorCode};

use crate::config::AuthConfig;

/// The claims Tern reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// Signature, algorithm, audience, nbf or format is wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The `sub` claim is not a valid user id.
    #[error("token subject is not a valid user id: {0}")]
    BadSubject(ids::IdError),
}

impl AuthError {
    /// The protocol's code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Expired => ErrorCode::TokenExpired,
            Self::Invalid(_) | Self::BadSubject(_) => ErrorCode::AuthFailed,
        }
    }
}

/// Why the verifier could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The algorithm is not one Tern accepts.
    #[error("unsupported algorithm {0} (use HS256, RS256 or EdDSA)")]
    Algorithm(String),
    /// HS256 without a secret.
    #[error("HS256 needs auth.jwt_secret (or TERN_JWT_SECRET / --jwt-secret)")]
    NoSecret,
    /// RS256/EdDSA without a key file, or an unreadable one.
    #[error("{0} needs auth.public_key_file: {1}")]
    PublicKey(&'static str, String),
}

/// Verifies tokens; one per process, shared read-only by the shards.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

impl Verifier {
    /// Builds the verifier the configuration describes.
    pub fn new(cfg: &AuthConfig) -> Result<Self, KeyError> {
        let (alg, key) = match cfg.algorithm.as_str() {
            "HS256" => {
                if cfg.jwt_secret.is_empty() {
                    return Err(KeyError::NoSecret);
                }
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(cfg.jwt_secret.as_bytes()),
                )
            }
            "RS256" => {
                let pem = read_key(cfg, "RS256")?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .map_err(|e| KeyError::PublicKey("RS256", e.to_string()))?;
                (Algorithm::RS256, key)
            }
            "EdDSA" => {
                let pem = read_key(cfg, "EdDSA")?;
                let key = DecodingKey::from_ed_pem(&pem)
                    .map_err(|e| KeyError::PublicKey("EdDSA", e.to_string()))?;
                (Algorithm::EdDSA, key)
            }
            other => return Err(KeyError::Algorithm(other.into())),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway_secs;
        validation.validate_nbf = true;
        match &cfg.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.set_required_spec_claims(&["exp", "sub", "aud"]);
            }
            None => {
                validation.validate_aud = false;
                validation.set_required_spec_claims(&["exp", "sub"]);
            }
        }
        Ok(Self { key, validation })
    }

    /// Verifies `token` and returns its user id.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        ids::check_id(&data.claims.sub).map_err(AuthError::BadSubject)?;
        Ok(data.claims.sub)
    }
}

fn read_key(cfg: &AuthConfig, alg: &'static str) -> Result<Vec<u8>, KeyError> {
    let path = cfg
        .public_key_file
        .as_ref()
        .ok_or(KeyError::PublicKey(alg, "not set".into()))?;
    std::fs::read(path).map_err(|e| KeyError::PublicKey(alg, format!("{}: {e}", path.display())))
}

/// Mints an HS256 token for `user` valid for `ttl_secs` (development and
/// load tests; production tokens come from your own service).
pub fn mint_hs256(
    secret: &str,
    user: &str,
    ttl_secs: u64,
    audience: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: user.into(),
        exp: now + ttl_secs,
        nbf: None,
        aud: audience.map(Into::into),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(secret: &str) -> AuthConfig {
        AuthConfig {
            jwt_secret: secret.into(),
            ..AuthConfig::default()
        }
    }

    /// A minted token verifies to its user; wrong secret, expiry, a bad
    /// subject and a token of another algorithm are refused with their codes.
    #[test]
    fn verify_accepts_good_tokens_and_types_the_refusals() {
        let v = Verifier::new(&hs("s3cret")).unwrap();
        let t = mint_hs256("s3cret", "alice", 60, None).unwrap();
        assert_eq!(v.verify(&t).unwrap(), "alice");

        let wrong = mint_hs256("other", "alice", 60, None).unwrap();
        assert_eq!(v.verify(&wrong).unwrap_err().code(), ErrorCode::AuthFailed);

        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: "alice".into(),
            exp: now - 3600,
            nbf: None,
            aud: None,
        };
        let key = EncodingKey::from_secret(b"s3cret");
        let old = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        assert_eq!(v.verify(&old).unwrap_err().code(), ErrorCode::TokenExpired);

        let bad_sub = mint_hs256("s3cret", "a:b", 60, None).unwrap();
        assert!(matches!(v.verify(&bad_sub), Err(AuthError::BadSubject(_))));

        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &Claims {
                sub: "alice".into(),
                exp: now + 60,
                nbf: None,
                aud: None,
            },
            &key,
        )
        .unwrap();
        assert_eq!(v.verify(&hs384).unwrap_err().code(), ErrorCode::AuthFailed);
        assert!(v.verify("garbage").is_err());
    }

    /// With an audience configured, tokens without it or for another one fail.
    #[test]
    fn audience_is_checked_when_configured() {
        let v = Verifier::new(&AuthConfig {
            audience: Some("app".into()),
            ..hs("k")
        })
        .unwrap();
        assert!(
            v.verify(&mint_hs256("k", "bob", 60, Some("app")).unwrap())
                .is_ok()
        );
        assert!(
            v.verify(&mint_hs256("k", "bob", 60, Some("other")).unwrap())
                .is_err()
        );
        assert!(
            v.verify(&mint_hs256("k", "bob", 60, None).unwrap())
                .is_err()
        );
        assert!(matches!(Verifier::new(&hs("")), Err(KeyError::NoSecret)));
    }

    /// RS256 and EdDSA tokens verify against their public keys; a token
    /// signed with the other algorithm (or an HS256 token made with the
    /// public key as a secret: the classic confusion attack) is refused.
    #[test]
    fn public_key_algorithms_verify_and_stay_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: "carol".into(),
            exp: now + 60,
            nbf: None,
            aud: None,
        };
        for (alg, name, private, public) in [
            (
                Algorithm::EdDSA,
                "EdDSA",
                include_str!("../tests/keys/ed.pem"),
                include_str!("../tests/keys/ed.pub"),
            ),
            (
                Algorithm::RS256,
                "RS256",
                include_str!("../tests/keys/rsa.pem"),
                include_str!("../tests/keys/rsa.pub"),
            ),
        ] {
            let path = dir.path().join(format!("{name}.pub"));
            std::fs::write(&path, public).unwrap();
            let cfg = AuthConfig {
                algorithm: name.into(),
                public_key_file: Some(path),
                ..AuthConfig::default()
            };
            let v = Verifier::new(&cfg).unwrap();
            let key = match alg {
                Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
                _ => EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
            };
            let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
            assert_eq!(v.verify(&token).unwrap(), "carol", "{name}");
            let confused = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(public.as_bytes()),
            )
            .unwrap();
            assert_eq!(
                v.verify(&confused).unwrap_err().code(),
                ErrorCode::AuthFailed,
                "{name}"
            );
        }
        let missing = AuthConfig {
            algorithm: "EdDSA".into(),
            ..AuthConfig::default()
        };
        assert!(matches!(
            Verifier::new(&missing),
            Err(KeyError::PublicKey("EdDSA", _))
        ));
    }
}
