//! The APNs client: HTTP/2 (`POST /3/device/<token>`), token-based
//! authentication (an ES256 JWT with the key id and team id, cached and
//! made again after [`JWT_REFRESH`], before Apple's 60-minute limit), and
//! the headers Apple reads: `apns-topic`, `apns-push-type`,
//! `apns-collapse-id`, `apns-expiration`, `apns-priority`.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use parking_lot::Mutex;
use serde_json::json;
use tern_protocol::pb;
use tokio::time::Instant;

use super::{Client, Note, PushError};
use crate::config::PushSettings;

/// A provider token is signed again after this long: Apple refuses one
/// older than an hour, and one refreshed more than every 20 minutes.
pub const JWT_REFRESH: Duration = Duration::from_secs(50 * 60);

/// The APNs client of the `tern-push` thread.
pub struct Apns {
    client: Client,
    base: String,
    key: jsonwebtoken::EncodingKey,
    key_id: String,
    team_id: String,
    topic: String,
    expiration_s: u64,
    /// The provider token and when it was signed.
    jwt: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Apns {
    // Not the key, nor the provider token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("base", &self.base)
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

impl Apns {
    /// Reads the `.p8` key; the client speaks HTTP/2 only.
    pub fn new(cfg: &PushSettings, key: &Path, tls: rustls::ClientConfig) -> anyhow::Result<Self> {
        let pem = std::fs::read(key)
            .map_err(|e| anyhow::anyhow!("push.apns_key_file {}: {e}", key.display()))?;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).map_err(|e| {
            anyhow::anyhow!("push.apns_key_file {}: not an EC key: {e}", key.display())
        })?;
        Ok(Self {
            client: super::client(tls, true),
            base: cfg.apns_url.trim_end_matches('/').to_owned(),
            key,
            key_id: cfg.apns_key_id.clone(),
            team_id: cfg.apns_team_id.clone(),
            topic: cfg.apns_topic.clone(),
            expiration_s: cfg.apns_expiration_s,
            jwt: Mutex::new(None),
        })
    }

    /// The provider token: the cached one while younger than
    /// [`JWT_REFRESH`], else a new one.
    fn jwt(&self) -> Result<String, PushError> {
        let mut cached = self.jwt.lock();
        if let Some((t, at)) = cached.as_ref() {
            if at.elapsed() < JWT_REFRESH {
                return Ok(t.clone());
            }
        }
        let header = jsonwebtoken::Header {
            kid: Some(self.key_id.clone()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256)
        };
        let claims = json!({ "iss": self.team_id, "iat": super::unix_s() });
        let t = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| PushError::Auth(format!("signing the APNs token: {e}")))?;
        *cached = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    /// One attempt to send `note` to `token`.
    pub async fn send(&self, token: &pb::PushToken, note: &Note) -> Result<(), PushError> {
        let topic = if token.topic.is_empty() {
            &self.topic
        } else {
            &token.topic
        };
        let payload = json!({
            "aps": {
                "alert": { "title": note.title(), "body": note.body() },
                "badge": note.badge,
                "sound": "default",
                "thread-id": note.conversation,
            },
            "conversation_id": note.conversation,
            "seq": note.seq,
            "count": note.count,
        });
        let expiration = if self.expiration_s == 0 {
            0
        } else {
            super::unix_s() + self.expiration_s
        };
        let req = hyper::Request::post(format!("{}/3/device/{}", self.base, token.token))
            .header(
                hyper::header::AUTHORIZATION,
                format!("bearer {}", self.jwt()?),
            )
            .header("apns-topic", topic.as_str())
            .header("apns-push-type", "alert")
            .header("apns-collapse-id", note.collapse_id())
            .header("apns-expiration", expiration.to_string())
            .header("apns-priority", "10")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload.to_string())))
            .map_err(|e| PushError::Rejected(0, e.to_string()))?;
        let (status, retry_after, body) = super::request(&self.client, req).await?;
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("reason")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        match status {
            200 => Ok(()),
            410 => Err(PushError::DeadToken(format!("410 {reason}"))),
            400 if matches!(
                reason.as_str(),
                "BadDeviceToken" | "DeviceTokenNotForTopic" | "Unregistered"
            ) =>
            {
                Err(PushError::DeadToken(reason))
            }
            403 if matches!(
                reason.as_str(),
                "ExpiredProviderToken" | "InvalidProviderToken"
            ) =>
            {
                // Sign a new one for the next attempt.
                *self.jwt.lock() = None;
                Err(PushError::Auth(reason))
            }
            429 => Err(PushError::RateLimited(retry_after)),
            500..=599 => Err(PushError::Server(status, retry_after)),
            _ => Err(PushError::Rejected(status, reason)),
        }
    }
}
