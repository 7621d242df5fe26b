//! The FCM HTTP v1 client: an OAuth2 access token from the service
//! account (an RS256 JWT grant POSTed to its `token_uri`, cached until
//! shortly before it expires), then `POST
//! <fcm_url>/v1/projects/<project_id>/messages:send` with the token.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;
use serde_json::json;
use tern_protocol::pb;
use tokio::time::Instant;

use super::{Client, Note, PushError};
use crate::config::PushSettings;

/// The scope FCM sends need.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// An access token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// What Tern reads of a service account JSON.
#[derive(Clone, Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: String,
    token_uri: String,
}

/// The FCM client of the `tern-push` thread.
pub struct Fcm {
    client: Client,
    send_url: String,
    account: ServiceAccount,
    key: jsonwebtoken::EncodingKey,
    /// The access token and when it stops being used. A tokio mutex: one
    /// grant at a time, the others wait for its token.
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Fcm {
    // Not the private key, nor the access token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("send_url", &self.send_url)
            .field("client_email", &self.account.client_email)
            .finish_non_exhaustive()
    }
}

impl Fcm {
    /// Reads the service account file.
    pub fn new(cfg: &PushSettings, file: &Path, tls: rustls::ClientConfig) -> anyhow::Result<Self> {
        let name = file.display();
        let text = std::fs::read(file)
            .map_err(|e| anyhow::anyhow!("push.fcm_service_account_file {name}: {e}"))?;
        let account: ServiceAccount = serde_json::from_slice(&text).map_err(|e| {
            anyhow::anyhow!("push.fcm_service_account_file {name}: not a service account: {e}")
        })?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(
            |e| anyhow::anyhow!("push.fcm_service_account_file {name}: private_key: {e}"),
        )?;
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            cfg.fcm_url.trim_end_matches('/'),
            account.project_id
        );
        Ok(Self {
            client: super::client(tls, false),
            send_url,
            account,
            key,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The cached access token, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, PushError> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let iat = super::unix_s();
        let header = jsonwebtoken::Header {
            kid: (!self.account.private_key_id.is_empty())
                .then(|| self.account.private_key_id.clone()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256)
        };
        let claims = json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": iat,
            "exp": iat + 3600,
        });
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| PushError::Auth(format!("signing the OAuth grant: {e}")))?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let req = hyper::Request::post(self.account.token_uri.as_str())
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| PushError::Auth(format!("token_uri: {e}")))?;
        let (status, retry_after, body) = super::request(&self.client, req).await?;
        match status {
            200 => {}
            429 => return Err(PushError::RateLimited(retry_after)),
            500..=599 => return Err(PushError::Server(status, retry_after)),
            _ => return Err(PushError::Auth(format!("token endpoint answered {status}"))),
        }
        #[derive(Deserialize)]
        struct Grant {
            access_token: String,
            #[serde(default)]
            expires_in: u64,
        }
        let g: Grant = serde_json::from_slice(&body)
            .map_err(|e| PushError::Auth(format!("token endpoint answer: {e}")))?;
        let until = Instant::now() + Duration::from_secs(g.expires_in).saturating_sub(TOKEN_MARGIN);
        *cached = Some((g.access_token.clone(), until));
        Ok(g.access_token)
    }

    /// One attempt to send `note` to `token`.
    pub async fn send(&self, token: &pb::PushToken, note: &Note) -> Result<(), PushError> {
        let access = self.access_token().await?;
        let collapse = note.collapse_id();
        let message = json!({
            "message": {
                "token": token.token,
                "notification": { "title": note.title(), "body": note.body() },
                "android": {
                    "collapse_key": collapse,
                    "notification": { "tag": collapse, "notification_count": note.badge },
                },
                "data": {
                    "conversation_id": note.conversation,
                    "seq": note.seq.to_string(),
                    "count": note.count.to_string(),
                    "badge": note.badge.to_string(),
                },
            }
        });
        let req = hyper::Request::post(self.send_url.as_str())
            .header(hyper::header::AUTHORIZATION, format!("Bearer {access}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(message.to_string())))
            .map_err(|e| PushError::Rejected(0, e.to_string()))?;
        let (status, retry_after, body) = super::request(&self.client, req).await?;
        let text = String::from_utf8_lossy(&body);
        match status {
            200 => Ok(()),
            // The token is not (or no longer) an app instance's.
            404 if text.contains("UNREGISTERED") || text.contains("NOT_FOUND") => {
                Err(PushError::DeadToken("UNREGISTERED".into()))
            }
            // INVALID_ARGUMENT is about the token only when FCM says so:
            // a payload we got wrong must not wipe every token.
            400 if text.contains("INVALID_ARGUMENT")
                && text.to_ascii_lowercase().contains("registration token") =>
            {
                Err(PushError::DeadToken("INVALID_ARGUMENT".into()))
            }
            403 if text.contains("SENDER_ID_MISMATCH") => {
                Err(PushError::DeadToken("SENDER_ID_MISMATCH".into()))
            }
            401 => {
                *self.token.lock().await = None;
                Err(PushError::Auth("401".into()))
            }
            429 => Err(PushError::RateLimited(retry_after)),
            500..=599 => Err(PushError::Server(status, retry_after)),
            _ => Err(PushError::Rejected(
                status,
                text.chars().take(200).collect(),
            )),
        }
    }
}
