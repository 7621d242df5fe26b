//! Token verification: JWTs issued by the service in front of Tern, by an
//! identity provider that publishes a JWKS, or by Tern's local accounts.
//!
//! The algorithm is pinned by configuration (a token naming another one is
//! refused, so an HS256 secret can never be confused with a public key);
//! `exp` is required, `nbf` is checked when present and `aud`/`iss` when
//! configured; `sub` is the user id and must be a valid Tern id. A token
//! with a `tid` claim names the user's tenant: the user id is then
//! `<tid>~<sub>` (docs/tenants.md); `sub` itself never holds a `~`, so the
//! tenant comes only from the claim made for it.
//!
//! With a JWKS (`auth.jwks_file` / `auth.jwks_url`), a token whose header
//! names a `kid` is verified with that key of the JWKS, its algorithm
//! pinned per key ([`jwks`]); an unknown `kid` is refused. A token without
//! a `kid` (or any token, without a JWKS) is verified with the configured
//! secret or PEM key, when one is configured.

pub mod jwks;

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tern_protocol::{ids, pb::ErrorCode};

use crate::config::AuthConfig;
use jwks::{Jwks, JwksSource};

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
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Issued at, seconds since the epoch (a logged-out device's older
    /// tokens are refused by it; docs/protocol.md, "Devices").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The user's tenant (docs/tenants.md); absent for the default tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
}

impl Claims {
    /// Claims for the Tern user id `user` (`<tenant>~<local>` becomes
    /// `tid` and `sub`), expiring at `exp`, issued now.
    pub fn for_user(user: &str, exp: u64) -> Self {
        let tid = ids::tenant_of(user);
        Self {
            sub: ids::local_of(user).to_owned(),
            exp,
            nbf: None,
            aud: None,
            iss: None,
            iat: Some(jsonwebtoken::get_current_timestamp()),
            tid: (!tid.is_empty()).then(|| tid.to_owned()),
        }
    }
}

/// What verification reads of the claims (`aud` may be a string or a list;
/// the validation checks it).
#[derive(Debug, Deserialize)]
struct Subject {
    sub: String,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    tid: Option<String>,
}

/// What a verified login token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user id: `sub`, or `<tid>~<sub>` with a tenant.
    pub user: String,
    /// `iat`, seconds since the epoch, if the token has one.
    pub issued_at: Option<u64>,
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
    /// The `tid` claim is not a tenant id, or `sub` names a tenant itself.
    #[error("token tenant: {0}")]
    BadTenant(ids::IdError),
}

impl AuthError {
    /// The protocol's code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Expired => ErrorCode::TokenExpired,
            Self::Invalid(_) | Self::BadSubject(_) | Self::BadTenant(_) => ErrorCode::AuthFailed,
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
    /// The JWKS could not be read.
    #[error(transparent)]
    Jwks(#[from] jwks::JwksError),
    /// The private key tokens are signed with (local accounts).
    #[error("accounts.signing_key_file: {0}")]
    SigningKey(String),
    /// The roots an https `jwks_url` is verified against.
    #[error("auth.jwks_ca_file: {0}")]
    JwksRoots(#[from] crate::outbound::RootsError),
}

/// Verifies tokens; one per process, shared read-only by the shards.
pub struct Verifier {
    /// The configured secret or PEM key, if any.
    fixed: Option<(DecodingKey, Validation)>,
    /// The issuer's JWKS, if configured.
    jwks: Option<Jwks>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.fixed.as_ref().map(|f| &f.1.algorithms))
            .field("jwks", &self.jwks)
            .finish()
    }
}

/// The checks every key shares: leeway, nbf, and `aud`/`iss` when set.
fn base_validation(cfg: &AuthConfig, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = cfg.leeway_secs;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &cfg.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &cfg.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

impl Verifier {
    /// Builds the verifier the configuration describes (reading the JWKS
    /// once, and starting its refresh thread, when one is configured).
    pub fn new(cfg: &AuthConfig) -> Result<Self, KeyError> {
        let source = match (&cfg.jwks_file, &cfg.jwks_url) {
            (Some(p), _) => Some(JwksSource::File(p.clone())),
            (None, Some(u)) => Some(JwksSource::Url(
                u.clone(),
                crate::outbound::Roots::load(cfg.jwks_ca_file.as_deref())?,
            )),
            (None, None) => None,
        };
        let jwks = match source {
            Some(source) => Some(Jwks::start(
                source,
                base_validation(cfg, Algorithm::RS256),
                Duration::from_secs(cfg.jwks_refresh_secs.max(1)),
                Duration::from_secs(cfg.jwks_refresh_min_secs),
            )?),
            None => None,
        };
        // With a JWKS, the fixed key is optional: an HS256 config without a
        // secret means "JWKS tokens only".
        let fixed = match Self::fixed_key(cfg) {
            Ok(k) => Some(k),
            Err(KeyError::NoSecret) if jwks.is_some() => None,
            Err(e) => return Err(e),
        };
        Ok(Self { fixed, jwks })
    }

    fn fixed_key(cfg: &AuthConfig) -> Result<(DecodingKey, Validation), KeyError> {
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
        Ok((key, base_validation(cfg, alg)))
    }

    /// The `kid`s of the JWKS snapshot the shards see now (empty without a
    /// JWKS).
    pub fn jwks_kids(&self) -> Vec<String> {
        self.jwks.as_ref().map(Jwks::kids).unwrap_or_default()
    }

    /// Verifies `token` and returns its user id. Never blocks: the JWKS is
    /// an in-memory snapshot.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        self.verify_login(token).map(|v| v.user)
    }

    /// [`Verifier::verify`], with the token's `iat` beside the user id.
    pub fn verify_login(&self, token: &str) -> Result<Verified, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let sub = match (header.kid.as_deref(), &self.jwks) {
            (Some(kid), Some(jwks)) => jwks
                .with_key(kid, |k| decode(token, &k.key, &k.validation))
                .unwrap_or_else(|| Err(AuthError::Invalid(format!("unknown key id {kid:?}"))))?,
            _ => match &self.fixed {
                Some((key, validation)) => decode(token, key, validation)?,
                None => {
                    return Err(AuthError::Invalid(
                        "a token without a kid, and no auth.jwt_secret or public key".into(),
                    ));
                }
            },
        };
        ids::check_id(&sub.sub).map_err(AuthError::BadSubject)?;
        if sub.sub.contains(ids::TENANT_SEPARATOR) {
            return Err(AuthError::BadTenant(ids::IdError::BadTenant));
        }
        let user = match sub.tid.as_deref() {
            None | Some("") => sub.sub,
            Some(tid) => {
                ids::check_tenant(tid).map_err(AuthError::BadTenant)?;
                let user = ids::qualify(tid, &sub.sub);
                ids::check_id(&user).map_err(AuthError::BadSubject)?;
                user
            }
        };
        Ok(Verified {
            user,
            issued_at: sub.iat,
        })
    }
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Subject, AuthError> {
    use jsonwebtoken::errors::ErrorKind;
    jsonwebtoken::decode::<Subject>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })
}

/// Signs the tokens local accounts issue: HS256 with `auth.jwt_secret`, or
/// RS256/EdDSA with `accounts.signing_key_file` (the private half of
/// `auth.public_key_file`), so the shards verify them like any other token.
pub struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("alg", &self.alg).finish()
    }
}

impl Signer {
    /// The signer for `cfg`'s pinned algorithm.
    pub fn new(cfg: &AuthConfig, key_file: Option<&std::path::Path>) -> Result<Self, KeyError> {
        let pem = || {
            let path = key_file.ok_or_else(|| {
                KeyError::SigningKey(format!("{} needs a PEM private key", cfg.algorithm))
            })?;
            std::fs::read(path)
                .map_err(|e| KeyError::SigningKey(format!("{}: {e}", path.display())))
        };
        let bad = |e: jsonwebtoken::errors::Error| KeyError::SigningKey(e.to_string());
        let (alg, key) = match cfg.algorithm.as_str() {
            "HS256" if cfg.jwt_secret.is_empty() => return Err(KeyError::NoSecret),
            "HS256" => (
                Algorithm::HS256,
                EncodingKey::from_secret(cfg.jwt_secret.as_bytes()),
            ),
            "RS256" => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&pem()?).map_err(bad)?,
            ),
            "EdDSA" => (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(&pem()?).map_err(bad)?,
            ),
            other => return Err(KeyError::Algorithm(other.into())),
        };
        Ok(Self {
            alg,
            key,
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
        })
    }

    /// A token for `user` (a tenant's user gets `tid`), valid for
    /// `ttl_secs`.
    pub fn mint(&self, user: &str, ttl_secs: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
            ..Claims::for_user(user, jsonwebtoken::get_current_timestamp() + ttl_secs)
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key)
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
    let claims = Claims {
        aud: audience.map(Into::into),
        ..Claims::for_user(user, jsonwebtoken::get_current_timestamp() + ttl_secs)
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

    /// A token naming a tenant (`tid`) logs in `<tid>~<sub>`; a `tid` that
    /// is not a tenant id, or a `sub` that names a tenant itself, is
    /// refused (docs/tenants.md).
    #[test]
    fn the_tenant_comes_from_the_tid_claim_only() {
        let v = Verifier::new(&hs("s3cret")).unwrap();
        let t = mint_hs256("s3cret", "acme~alice", 60, None).unwrap();
        assert_eq!(v.verify(&t).unwrap(), "acme~alice");
        let sign = |claims: &Claims| {
            let key = EncodingKey::from_secret(b"s3cret");
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
        };
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let mut c = Claims::for_user("alice", exp);
        assert_eq!(c.tid, None);
        c.tid = Some(String::new());
        assert_eq!(
            v.verify(&sign(&c)).unwrap(),
            "alice",
            "empty tid: default tenant"
        );
        for bad_tid in ["Acme", "a_b", "a~b", &"t".repeat(33)] {
            c.tid = Some(bad_tid.into());
            let e = v.verify(&sign(&c)).unwrap_err();
            assert!(matches!(e, AuthError::BadTenant(_)), "{bad_tid}: {e}");
            assert_eq!(e.code(), ErrorCode::AuthFailed);
        }
        let mut c = Claims::for_user("alice", exp);
        c.sub = "acme~alice".into();
        assert!(matches!(v.verify(&sign(&c)), Err(AuthError::BadTenant(_))));
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
            iss: None,
            iat: None,
            tid: None,
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
                iss: None,
                iat: None,
                tid: None,
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
            iss: None,
            iat: None,
            tid: None,
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
