//! Webhooks to existing services (docs/http-api.md, "Webhooks").
//!
//! - **before-send** ([`BeforeSend`]): on the backend worker, before a batch
//!   reaches the domain, the sends of the batch that came from clients go to
//!   the hook in **one** POST; it answers allow, reject (the client gets
//!   `CONTENT_REJECTED`) or rewrite (new text) for each. A slow hook costs
//!   one deadline per batch, not per message; a failed one (timeout, non-2xx,
//!   garbage) fails open or closed as configured. Sends of the server API
//!   are not checked: the service that made them is trusted.
//! - **after-events** ([`EventFeed`]): the worker turns what a batch
//!   stored and changed into events and hands them to a bounded queue
//!   without waiting (full: dropped and counted); the `tern-webhooks` thread
//!   POSTs them in batches, signed, with retries and backoff.
//!
//! Both use hyper's client on a current-thread tokio runtime of their own
//! (one per worker for before-send, one for the feed thread); this module
//! never touches a shard.

pub mod before_send;
pub mod events;
pub mod sign;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tern_protocol::pb::frame::Body;

pub use before_send::BeforeSend;
pub use events::{EventFeed, EventSink};

use crate::bridge::{Answer, Caller, ChatService};
use crate::config::WebhookSettings;

/// The hooks a backend worker runs around each batch.
#[derive(Debug, Default)]
pub struct WorkerHooks {
    /// The before-send hook, if configured.
    pub before_send: Option<BeforeSend>,
    /// Where the worker hands its events, if a feed is configured.
    pub events: Option<EventSink>,
}

/// What went wrong with one webhook call (never seen by a client: a failed
/// before-send call follows the failure policy, a failed event POST is
/// retried).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// No answer within the deadline.
    #[error("timed out")]
    Timeout,
    /// Could not connect, or the connection broke.
    #[error("transport: {0}")]
    Transport(String),
    /// An answer other than 2xx.
    #[error("status {0}")]
    Status(u16),
    /// A 2xx answer that is not what the hook must say.
    #[error("garbage answer: {0}")]
    Garbage(String),
}

/// hyper's pooled HTTP/1.1 client, `http://` or `https://`.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client with keep-alive to the hook, for a runtime of this thread;
/// `https://` URLs are verified against `tls` (crate::outbound).
pub(crate) fn client(tls: rustls::ClientConfig) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // The TLS connector sees the URL's scheme; the TCP one must let it.
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// The TLS client configuration of `[webhooks] ca_file` (system roots
/// without one).
pub(crate) fn tls_config(cfg: &WebhookSettings) -> std::io::Result<rustls::ClientConfig> {
    crate::outbound::Roots::load(cfg.ca_file.as_deref())
        .and_then(|r| r.client_config())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}

/// POSTs `body` (JSON) with `headers`; reads at most `answer_bytes_max`
/// of the answer. The caller bounds the whole call with a timeout.
pub(crate) async fn post(
    client: &HttpClient,
    url: &hyper::Uri,
    headers: &[(&'static str, String)],
    body: Bytes,
    answer_bytes_max: usize,
) -> Result<Bytes, HookError> {
    let mut req = hyper::Request::post(url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("tern/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| HookError::Transport(e.to_string()))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| HookError::Transport(e.to_string()))?;
    let status = resp.status();
    // Read the answer (bounded) even on an error status: the connection
    // can then be reused.
    let answer = Limited::new(resp.into_body(), answer_bytes_max)
        .collect()
        .await
        .map_err(|e| HookError::Garbage(format!("answer body: {e}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(HookError::Status(status.as_u16()));
    }
    Ok(answer)
}

/// Runs one batch through the hooks and the service: the before-send hook
/// first (rejected sends never reach the domain and are answered here),
/// then the domain, then the events of what it did. `from_api[i]` marks the
/// server API's calls, which the before-send hook skips.
pub fn handle_batch(
    hooks: &mut WorkerHooks,
    service: &dyn ChatService,
    now_unix_ms: u64,
    mut calls: Vec<(Caller, Body)>,
    from_api: &[bool],
) -> Vec<Answer> {
    let refused = match hooks.before_send.as_mut() {
        Some(hook) => hook.check(&mut calls, from_api),
        None => Vec::new(),
    };
    // Presence changes leave no trace in the answer's effects when the user
    // has no friends: note them from the requests.
    let presence: Vec<Option<(String, i32)>> = if hooks.events.is_some() {
        calls
            .iter()
            .map(|(c, b)| match b {
                Body::SetPresence(p) => Some((c.user.clone(), p.state)),
                _ => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    let answers = if refused.iter().all(Option::is_none) {
        service.handle_batch(now_unix_ms, calls)
    } else {
        let passed: Vec<(Caller, Body)> = calls
            .into_iter()
            .zip(&refused)
            .filter(|(_, r)| r.is_none())
            .map(|(c, _)| c)
            .collect();
        let domain = if passed.is_empty() {
            Vec::new()
        } else {
            service.handle_batch(now_unix_ms, passed)
        };
        crate::bridge::merge_refused(refused, domain)
    };
    if let Some(sink) = hooks.events.as_ref() {
        sink.collect(now_unix_ms, &presence, &answers);
    }
    answers
}

/// Seconds since the Unix epoch (signature timestamps, id prefixes).
pub fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
