//! The web chat page (`/`) and the admin console (`/admin`), served from
//! the HTTP edge out of files embedded in the binary (`web/static/`, built
//! and committed; docs/web.md says how).
//!
//! Besides the files it serves two small routes the page needs:
//!
//! - `GET /web/config.json`: where the page connects (the WebSocket
//!   listeners' ports and hosts), and how it signs in (`dev`, `accounts`).
//! - `POST /web/dev-token` — **development mode only** (`tern serve --dev`:
//!   the public development secret and every listener on loopback), and
//!   only to a loopback peer: mints a token for any user id, so a newcomer
//!   can chat without an identity service. Absent (404) otherwise.
//!
//! It never touches a shard or the store: the page talks to the gateway
//! like any client, over the WebSocket protocol and the server API.

use std::{
    net::SocketAddr,
    sync::{Arc, LazyLock},
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    api::{ApiError, ops::check_user},
    auth::Signer,
    config::{Config, DEV_JWT_SECRET},
};

/// Lifetime of a development token, seconds (a working day and more).
pub const DEV_TOKEN_TTL_SECS: u64 = 24 * 3600;

/// One embedded file.
struct Asset {
    /// Its path under `/web/` (the pages themselves have routes of their own).
    name: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
}

/// Every file of `web/static/`, embedded at build time.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        bytes: include_bytes!("../../web/static/index.html"),
        content_type: "text/html; charset=utf-8",
    },
    Asset {
        name: "admin.html",
        bytes: include_bytes!("../../web/static/admin.html"),
        content_type: "text/html; charset=utf-8",
    },
    Asset {
        name: "style.css",
        bytes: include_bytes!("../../web/static/style.css"),
        content_type: "text/css; charset=utf-8",
    },
    Asset {
        name: "client.js",
        bytes: include_bytes!("../../web/static/client.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        name: "chat.js",
        bytes: include_bytes!("../../web/static/chat.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        name: "admin.js",
        bytes: include_bytes!("../../web/static/admin.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        name: "tern.proto.json",
        bytes: include_bytes!("../../web/static/tern.proto.json"),
        content_type: "application/json",
    },
    Asset {
        name: "vendor/protobuf.min.js",
        bytes: include_bytes!("../../web/static/vendor/protobuf.min.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        name: "favicon.svg",
        bytes: include_bytes!("../../web/static/favicon.svg"),
        content_type: "image/svg+xml",
    },
];

/// Each asset's strong ETag: a quoted prefix of its SHA-256, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.bytes);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            // Hex digits and quotes only: always a valid header value.
            HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
        })
        .collect()
});

/// What the page routes read.
#[derive(Debug, Clone)]
pub struct WebState {
    config: Arc<PageConfig>,
    /// The development signer, when development mode is on.
    dev: Option<Arc<Signer>>,
}

/// `GET /web/config.json`: how the page connects and signs in.
#[derive(Debug, Clone, Serialize)]
pub struct PageConfig {
    /// The plain WebSocket listener, if any.
    pub ws: Option<Endpoint>,
    /// The WebSocket-over-TLS listener, if any.
    pub wss: Option<Endpoint>,
    /// Development mode: `POST /web/dev-token` mints tokens for any user.
    pub dev: bool,
    /// Local accounts (`[accounts] enabled`): register and log in.
    pub accounts: bool,
}

/// A listener as the browser reaches it.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// The host to connect to; `null` when the listener is on every
    /// address (the page then uses the host it was loaded from).
    pub host: Option<String>,
    /// The port.
    pub port: u16,
}

impl Endpoint {
    /// How the browser reaches a listener bound to `addr`.
    pub fn of(addr: SocketAddr) -> Self {
        let host = (!addr.ip().is_unspecified()).then(|| match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        });
        Self {
            host,
            port: addr.port(),
        }
    }
}

impl WebState {
    /// From the config and the bound WebSocket listeners (their real ports,
    /// also when configured as port 0).
    pub fn new(cfg: &Config, ws: Option<SocketAddr>, wss: Option<SocketAddr>) -> Self {
        let dev = dev_mode(cfg)
            .then(|| Signer::new(&cfg.auth, None).ok())
            .flatten()
            .map(Arc::new);
        Self {
            config: Arc::new(PageConfig {
                ws: ws.map(Endpoint::of),
                wss: wss.map(Endpoint::of),
                dev: dev.is_some(),
                accounts: cfg.accounts.enabled,
            }),
            dev,
        }
    }
}

/// Development mode as `tern serve --dev` sets it up
/// (`Config::apply_dev_mode`): HS256 with the public development secret
/// and every listener on loopback. A config that merely reuses the secret
/// with a listener off loopback is not development mode here.
pub fn dev_mode(cfg: &Config) -> bool {
    let l = &cfg.listen;
    cfg.auth.algorithm == "HS256"
        && cfg.auth.jwt_secret == DEV_JWT_SECRET
        && [l.tcp, l.ws, l.http, l.tls, l.wss]
            .into_iter()
            .flatten()
            .all(|a| a.ip().is_loopback())
}

/// The page routes: `/`, `/admin`, `/web/*`, and in development mode
/// `POST /web/dev-token`.
pub fn router(state: WebState) -> Router {
    let r = Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { asset("index.html", &h) }),
        )
        .route(
            "/admin",
            get(|h: HeaderMap| async move { asset("admin.html", &h) }),
        )
        .route("/web/config.json", get(page_config))
        .route(
            "/web/{*file}",
            get(
                |axum::extract::Path(file): axum::extract::Path<String>, h: HeaderMap| async move {
                    asset(&file, &h)
                },
            ),
        )
        // Always routed, so that outside development mode it is a plain 404
        // (not a 405 from the file route above).
        .route("/web/dev-token", post(dev_token));
    r.with_state(state)
}

/// An embedded file, or 404. `Cache-Control: no-cache` with an ETag: the
/// browser keeps a copy and revalidates it (a 304 costs a round trip and no
/// body), so an upgraded server's page is never mixed with stale scripts.
fn asset(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let (a, etag) = (&ASSETS[i], ETAGS[i].clone());
    let fresh = headers.get(header::IF_NONE_MATCH).is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == etag.as_bytes())
    });
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        )],
        a.bytes,
    )
        .into_response()
}

async fn page_config(State(state): State<WebState>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(state.config.as_ref().clone()),
    )
        .into_response()
}

/// `POST /web/dev-token` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenRequest {
    user_id: String,
}

/// `POST /web/dev-token` answer.
#[derive(Debug, Serialize)]
struct DevToken {
    user_id: String,
    token: String,
    expires_in: u64,
}

/// Mints a development token for any valid user id, to a loopback peer.
async fn dev_token(
    State(state): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<DevTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DevToken>, ApiError> {
    let Some(signer) = state.dev.as_ref() else {
        return Err(ApiError::not_found("no development mode"));
    };
    if !peer.ip().is_loopback() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "development tokens are minted for loopback clients only",
        ));
    }
    let Json(req) = body?;
    check_user("user_id", &req.user_id)?;
    let token = signer
        .mint(&req.user_id, DEV_TOKEN_TTL_SECS)
        .map_err(|e| ApiError::internal(format!("minting a development token: {e}")))?;
    Ok(Json(DevToken {
        user_id: req.user_id,
        token,
        expires_in: DEV_TOKEN_TTL_SECS,
    }))
}
