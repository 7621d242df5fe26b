//! The before-send hook: one signed POST per batch with all of its client
//! sends, edits and room posts, answered with one verdict per message,
//! within a deadline. An edit or a room post is new content as much as a
//! send is: it passes the same hook before it is stored.
//!
//! Request body:
//! `{"type": "before_send", "messages": [{"kind": "send", "from", "device",
//! "to_user" | "to_group", "client_msg_id", "content", "mentions",
//! "mention_all", "reply_to_seq"} | {"kind": "edit", "from", "device",
//! "conversation_id", "seq", "client_edit_id", "content", "streaming"} |
//! {"kind": "room_post", "from", "device", "room_id", "client_msg_id",
//! "content"}, …]}`.
//! Answer (2xx): `{"results": [{"action": "allow"} | {"action": "reject",
//! "reason": "…"} | {"action": "rewrite", "text": "…"}, …]}`, one per
//! message, in order. Anything else is a failure and follows the policy.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tern_protocol::pb::{self, frame::Body};
use tracing::warn;

use super::{HookError, HttpClient, events::content_json, sign::Signer};
use crate::{
    bridge::Caller,
    config::{FailurePolicy, WebhookSettings},
    metrics::WebhookMetrics,
};

/// Longest reject reason passed on to a client, bytes.
pub const REASON_BYTES_MAX: usize = 256;

/// The before-send hook of one backend worker.
#[derive(Debug)]
pub struct BeforeSend {
    rt: tokio::runtime::Runtime,
    client: HttpClient,
    url: hyper::Uri,
    signer: Signer,
    timeout: Duration,
    policy: FailurePolicy,
    answer_bytes_max: usize,
    text_bytes_max: usize,
    metrics: Arc<WebhookMetrics>,
    /// For `webhook-id`: `<id_prefix>.<calls>`.
    id_prefix: String,
    calls: u64,
    /// When a failure was last logged (at most one line a second).
    last_warn: Option<Instant>,
}

/// What the hook says about one message.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Verdict {
    Allow,
    Reject {
        #[serde(default)]
        reason: String,
    },
    Rewrite {
        text: String,
    },
}

#[derive(Debug, Deserialize)]
struct Verdicts {
    results: Vec<Verdict>,
}

impl BeforeSend {
    /// The hook of `cfg` (None when `before_send_url` is empty), with a
    /// runtime of its own for the calling (worker) thread.
    pub fn new(
        cfg: &WebhookSettings,
        text_bytes_max: usize,
        id_prefix: String,
        metrics: Arc<WebhookMetrics>,
    ) -> std::io::Result<Option<Self>> {
        if cfg.before_send_url.is_empty() {
            return Ok(None);
        }
        let url = cfg
            .before_send_url
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = super::tls_config(cfg)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The pool's idle timer needs the runtime; the client is built
        // inside it.
        let client = rt.block_on(async { super::client(tls) });
        Ok(Some(Self {
            rt,
            client,
            url,
            signer: Signer::new(&cfg.secret),
            timeout: Duration::from_millis(cfg.before_send_timeout_ms),
            policy: cfg.before_send_failure,
            answer_bytes_max: cfg.before_send_response_bytes_max,
            text_bytes_max,
            metrics,
            id_prefix,
            calls: 0,
            last_warn: None,
        }))
    }

    /// Asks the hook about the client sends, edits and room posts of `calls` (one
    /// POST), rewrites their text in place, and returns, per call, the error
    /// answer of those refused (rejected, or failed closed).
    pub fn check(&mut self, calls: &mut [(Caller, Body)], from_api: &[bool]) -> Vec<Option<Body>> {
        let mut out: Vec<Option<Body>> = vec![None; calls.len()];
        let sends: Vec<usize> = calls
            .iter()
            .enumerate()
            .filter(|(i, (_, b))| {
                matches!(b, Body::Send(_) | Body::Edit(_) | Body::RoomPost(_))
                    && !from_api.get(*i).copied().unwrap_or(false)
            })
            .map(|(i, _)| i)
            .collect();
        if sends.is_empty() {
            return out;
        }
        let messages: Vec<Value> = sends.iter().map(|&i| message_json(&calls[i])).collect();
        let body = Bytes::from(
            serde_json::to_vec(&json!({"type": "before_send", "messages": messages}))
                .unwrap_or_default(),
        );
        let started = Instant::now();
        let verdicts = self.call(body, sends.len());
        self.metrics
            .before_latency
            .observe_us(started.elapsed().as_micros() as u64);
        let m = &self.metrics;
        match verdicts {
            Ok(verdicts) => {
                for (&i, v) in sends.iter().zip(verdicts) {
                    match v {
                        Verdict::Allow => {
                            m.before_allowed.fetch_add(1, Relaxed);
                        }
                        Verdict::Reject { reason } => {
                            m.before_rejected.fetch_add(1, Relaxed);
                            let reason = if reason.is_empty() {
                                "rejected by the server's content policy".to_owned()
                            } else {
                                truncate(reason, REASON_BYTES_MAX)
                            };
                            out[i] = Some(error(pb::ErrorCode::ContentRejected, reason));
                        }
                        Verdict::Rewrite { text } => {
                            m.before_rewritten.fetch_add(1, Relaxed);
                            let content = Some(pb::Content {
                                kind: Some(pb::content::Kind::Text(pb::Text { text })),
                            });
                            match &mut calls[i].1 {
                                Body::Send(s) => s.content = content,
                                // An edit keeps its message's kind: a rewrite
                                // of a non-text one is refused by the domain.
                                Body::Edit(e) => e.content = content,
                                Body::RoomPost(p) => p.content = content,
                                _ => {}
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let now = Instant::now();
                if self
                    .last_warn
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    self.last_warn = Some(now);
                    warn!(error = %e, policy = ?self.policy, sends = sends.len(), "before-send hook failed");
                }
                let n = sends.len() as u64;
                match self.policy {
                    FailurePolicy::Open => {
                        m.before_failed_open.fetch_add(n, Relaxed);
                    }
                    FailurePolicy::Closed => {
                        m.before_failed_closed.fetch_add(n, Relaxed);
                        for &i in &sends {
                            out[i] = Some(error(
                                pb::ErrorCode::Internal,
                                "the message could not be checked; retry later".into(),
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// One POST within the deadline; the verdicts, one per message, each
    /// rewrite within the text limit.
    fn call(&mut self, body: Bytes, expected: usize) -> Result<Vec<Verdict>, HookError> {
        self.calls += 1;
        let id = format!("{}.{}", self.id_prefix, self.calls);
        let headers = self.signer.headers(&id, super::unix_s(), &body);
        let answer = self.rt.block_on(async {
            tokio::time::timeout(
                self.timeout,
                super::post(
                    &self.client,
                    &self.url,
                    &headers,
                    body,
                    self.answer_bytes_max,
                ),
            )
            .await
            .map_err(|_| HookError::Timeout)?
        })?;
        let v: Verdicts =
            serde_json::from_slice(&answer).map_err(|e| HookError::Garbage(e.to_string()))?;
        if v.results.len() != expected {
            return Err(HookError::Garbage(format!(
                "{} results for {expected} messages",
                v.results.len()
            )));
        }
        for r in &v.results {
            let Verdict::Rewrite { text } = r else {
                continue;
            };
            if text.is_empty() || text.len() > self.text_bytes_max {
                return Err(HookError::Garbage(format!(
                    "a rewrite of {} bytes (1..={} allowed)",
                    text.len(),
                    self.text_bytes_max
                )));
            }
        }
        Ok(v.results)
    }
}

/// A send, an edit or a room post as the hook sees it.
fn message_json((caller, body): &(Caller, Body)) -> Value {
    let s = match body {
        Body::Send(s) => s,
        Body::RoomPost(p) => {
            return json!({
                "kind": "room_post",
                "from": caller.user,
                "device": caller.device,
                "room_id": p.room_id,
                "client_msg_id": p.client_msg_id,
                "content": p.content.as_ref().map_or(Value::Null, content_json),
            });
        }
        Body::Edit(e) => {
            return json!({
                "kind": "edit",
                "from": caller.user,
                "device": caller.device,
                "conversation_id": e.conversation_id,
                "seq": e.seq,
                "client_edit_id": e.client_edit_id,
                "content": e.content.as_ref().map_or(Value::Null, content_json),
                "streaming": e.streaming,
            });
        }
        _ => return Value::Null,
    };
    let mut m = json!({
        "kind": "send",
        "from": caller.user,
        "device": caller.device,
        "client_msg_id": s.client_msg_id,
        "content": s.content.as_ref().map_or(Value::Null, content_json),
        "mentions": s.mentions,
        "mention_all": s.mention_all,
        "reply_to_seq": s.reply_to_seq,
    });
    match &s.to {
        Some(pb::send::To::UserId(u)) => m["to_user"] = json!(u),
        Some(pb::send::To::GroupId(g)) => m["to_group"] = json!(g),
        None => {}
    }
    m
}

fn error(code: pb::ErrorCode, reason: String) -> Body {
    Body::Error(pb::Error {
        code: code as i32,
        reason,
        retry_after_ms: 0,
    })
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
