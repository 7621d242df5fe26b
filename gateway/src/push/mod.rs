//! Offline push (issue 20; docs/push.md): notifications through APNs and
//! FCM to members none of whose devices is online.
//!
//! - The backend workers hand each stored message with recipients to a
//!   bounded queue without waiting ([`PushSink::collect`]: full means
//!   dropped and counted; the message is stored either way, so push is best
//!   effort).
//! - The `tern-push` thread (a current-thread tokio runtime of its own,
//!   off the shards and the workers) collapses bursts: messages to one user
//!   in one conversation within `collapse_window_ms` of the first become one
//!   notification (the newest preview and a count). When the window ends it
//!   asks the backend ([`ChatService::push_target`], on tokio's blocking
//!   pool) whether the user is still offline, not muted, and holding tokens,
//!   and their badge; then it sends to every token, at most
//!   `in_flight_max` notifications at once, each attempt within
//!   `timeout_ms`, retried with backoff (and the provider's `Retry-After`)
//!   up to `attempts_max`. A token the provider calls dead is removed.
//!
//! Never touches a shard or a connection, and never holds up a worker.

pub mod apns;
pub mod fcm;

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    sync::{Arc, atomic::Ordering::Relaxed},
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use tern_backend::domain::push::PushTarget;
use tern_protocol::pb;
use tokio::{
    sync::{Semaphore, mpsc, watch},
    time::Instant,
};

use crate::{
    bridge::{Answer, ChatService, Effect},
    config::PushSettings,
    metrics::{PUSH_FAIL_REASONS, PushMetrics},
};

/// The `tern_push_failed_total{reason="store"}` index: the backend could
/// not say whom to notify (the store failed).
const STORE_FAILED: usize = PUSH_FAIL_REASONS.len() - 1;

/// Longest provider answer read, bytes (its error reason is all we need).
const ANSWER_BYTES_MAX: usize = 64 * 1024;

/// Why one provider request failed. Every outcome a provider can give is a
/// variant: callers decide retry, removal or giving up from it alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// No answer within `timeout_ms` (a hanging provider). Retried.
    #[error("timed out")]
    Timeout,
    /// Could not connect, or the connection broke. Retried.
    #[error("transport: {0}")]
    Transport(String),
    /// The provider says the token is dead (APNs 410, `BadDeviceToken`;
    /// FCM `UNREGISTERED`, `INVALID_ARGUMENT`): the token is removed, never
    /// retried.
    #[error("dead token: {0}")]
    DeadToken(String),
    /// 429: too many requests. Retried after `Retry-After` (or backoff).
    #[error("rate limited")]
    RateLimited(Option<Duration>),
    /// 5xx: the provider failed. Retried after `Retry-After` (or backoff).
    #[error("provider error {0}")]
    Server(u16, Option<Duration>),
    /// Our credentials were refused (APNs 403, FCM 401, a failed OAuth
    /// grant). Retried once with fresh credentials.
    #[error("credentials refused: {0}")]
    Auth(String),
    /// Any other refusal (a 4xx that is not about the token). Not retried.
    #[error("rejected {0}: {1}")]
    Rejected(u16, String),
    /// No credentials for this token's platform.
    #[error("platform not configured")]
    Unconfigured,
}

impl PushError {
    /// Whether another attempt may succeed.
    fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout
                | Self::Transport(_)
                | Self::RateLimited(_)
                | Self::Server(..)
                | Self::Auth(_)
        )
    }

    /// The provider's `Retry-After`, if it gave one.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited(d) | Self::Server(_, d) => *d,
            _ => None,
        }
    }

    /// The `tern_push_failed_total{reason}` index.
    fn reason(&self) -> usize {
        let name = match self {
            Self::Timeout => "timeout",
            Self::RateLimited(_) => "rate_limited",
            Self::Server(..) => "server_error",
            Self::Rejected(..) | Self::DeadToken(_) => "rejected",
            Self::Transport(_) => "transport",
            Self::Auth(_) => "auth",
            Self::Unconfigured => "unconfigured",
        };
        PUSH_FAIL_REASONS
            .iter()
            .position(|r| *r == name)
            .unwrap_or_default()
    }
}

/// One stored message for the push thread: who may need a notification.
#[derive(Debug)]
pub struct Job {
    /// Every recipient (the sender included; skipped by the thread).
    pub recipients: Arc<[String]>,
    /// The sender (never notified of their own message).
    pub sender: String,
    /// The conversation.
    pub conversation: String,
    /// The message's seq.
    pub seq: u64,
    /// The preview text, if previews are on.
    pub preview: Option<String>,
}

/// What one notification says (collapsed from one or more messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The conversation; its collapse id is derived from it.
    pub conversation: String,
    /// The newest message's seq.
    pub seq: u64,
    /// The newest message's sender.
    pub sender: String,
    /// The newest message's preview, if previews are on.
    pub preview: Option<String>,
    /// Messages it stands for.
    pub count: u32,
    /// The user's unread messages over all conversations.
    pub badge: u64,
}

impl Note {
    /// The title: the group's id for a group, the sender for a 1:1.
    pub fn title(&self) -> &str {
        self.conversation
            .strip_prefix("g:")
            .unwrap_or(self.sender.as_str())
    }

    /// The text: the preview, or a count when previews are off.
    pub fn body(&self) -> String {
        match &self.preview {
            Some(p) => p.clone(),
            None if self.count > 1 => format!("{} new messages", self.count),
            None => "New message".into(),
        }
    }

    /// `apns-collapse-id` / FCM `collapse_key`: the same for every
    /// notification of one conversation, at most 64 bytes (APNs' limit;
    /// conversation ids may be longer): 32 hex digits of its SHA-256.
    pub fn collapse_id(&self) -> String {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(self.conversation.as_bytes());
        d[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A worker's handle on the queue.
#[derive(Debug, Clone)]
pub struct PushSink {
    tx: mpsc::Sender<Job>,
    metrics: Arc<PushMetrics>,
    preview_bytes_max: Option<usize>,
}

impl PushSink {
    /// Queues a job per stored message of a handled batch (messages only:
    /// no read marks, recalls, edits, reactions, group events, and nothing
    /// ephemeral), without waiting; a full queue drops and counts it.
    pub fn collect(&self, answers: &[Answer]) {
        let mut any = false;
        for effect in answers.iter().flat_map(|a| &a.effects) {
            let Effect::Deliver {
                entry, recipients, ..
            } = effect
            else {
                continue;
            };
            let Some(pb::entry::Body::Message(m)) = &entry.body else {
                continue;
            };
            if recipients.iter().all(|u| *u == entry.sender) {
                continue;
            }
            any = true;
            let preview = self
                .preview_bytes_max
                .map(|max| preview_text(m.content.as_ref(), max));
            let job = Job {
                recipients: recipients.clone(),
                sender: entry.sender.clone(),
                conversation: entry.conversation_id.clone(),
                seq: entry.seq,
                preview,
            };
            if self.tx.try_send(job).is_err() {
                self.metrics.dropped[0].fetch_add(1, Relaxed);
            }
        }
        if any {
            let depth = self.tx.max_capacity() - self.tx.capacity();
            self.metrics.queue_depth.store(depth as i64, Relaxed);
        }
    }
}

/// The preview of a message: its text (cut at `max` bytes, on a character
/// boundary), or what kind of message it is.
fn preview_text(content: Option<&pb::Content>, max: usize) -> String {
    use pb::content::Kind;
    let text = match content.and_then(|c| c.kind.as_ref()) {
        Some(Kind::Text(t)) => t.text.as_str(),
        Some(Kind::Image(_)) => "[image]",
        Some(Kind::File(_)) => "[file]",
        Some(Kind::Voice(_)) => "[voice message]",
        Some(Kind::Video(_)) => "[video]",
        Some(Kind::Location(_)) => "[location]",
        Some(Kind::Custom(_)) | None => "[message]",
    };
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The push queue and its thread.
#[derive(Debug)]
pub struct PushFeed {
    sink: Option<PushSink>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

/// What every notification task shares.
struct Ctx {
    service: Arc<dyn ChatService>,
    apns: Option<apns::Apns>,
    fcm: Option<fcm::Fcm>,
    timeout: Duration,
    attempts_max: u32,
    retry_initial: Duration,
    retry_max: Duration,
    metrics: Arc<PushMetrics>,
}

impl PushFeed {
    /// Starts the `tern-push` thread (`None` when push is off). Reads the
    /// provider credentials first: a bad key file stops the start.
    pub fn start(
        cfg: &PushSettings,
        service: Arc<dyn ChatService>,
        metrics: Arc<PushMetrics>,
    ) -> anyhow::Result<Option<Self>> {
        if !cfg.enabled {
            return Ok(None);
        }
        let tls =
            crate::outbound::Roots::load(cfg.ca_file.as_deref()).and_then(|r| r.client_config())?;
        let apns = cfg
            .apns_key_file
            .as_deref()
            .map(|key| apns::Apns::new(cfg, key, tls.clone()))
            .transpose()?;
        let fcm = cfg
            .fcm_service_account_file
            .as_deref()
            .map(|file| fcm::Fcm::new(cfg, file, tls))
            .transpose()?;
        let (tx, rx) = mpsc::channel(cfg.queue_max);
        let (stop, stop_rx) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ctx = Ctx {
            service,
            apns,
            fcm,
            timeout: Duration::from_millis(cfg.timeout_ms),
            attempts_max: cfg.attempts_max,
            retry_initial: Duration::from_millis(cfg.retry_initial_ms),
            retry_max: Duration::from_millis(cfg.retry_max_ms),
            metrics: metrics.clone(),
        };
        let thread_state = Collapser {
            rx,
            window: Duration::from_millis(cfg.collapse_window_ms),
            pending_max: cfg.pending_max,
            pending: HashMap::new(),
            due: VecDeque::new(),
            in_flight: Arc::new(Semaphore::new(cfg.in_flight_max)),
            ctx: Arc::new(ctx),
        };
        let thread = std::thread::Builder::new()
            .name("tern-push".into())
            .spawn(move || rt.block_on(thread_state.run(stop_rx)))?;
        Ok(Some(Self {
            sink: Some(PushSink {
                tx,
                metrics,
                preview_bytes_max: cfg.preview.then_some(cfg.preview_bytes_max),
            }),
            stop,
            thread: Some(thread),
        }))
    }

    /// A handle for one worker.
    pub fn sink(&self) -> Option<PushSink> {
        self.sink.clone()
    }

    /// Stops the thread once the workers have stopped: what is queued or
    /// being collapsed is dropped and counted; requests in flight are
    /// abandoned (push is best effort; the apps sync when opened).
    pub fn stop(mut self) {
        self.sink = None;
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One notification being collapsed (its window's end is in
/// `Collapser::due`).
#[derive(Debug)]
struct Pending {
    note: Note,
}

/// The thread's state: the queue, the notifications being collapsed (by
/// user and conversation), and their windows' ends in order (every window
/// has the same length, so the order of arrival is the order of ends).
struct Collapser {
    rx: mpsc::Receiver<Job>,
    window: Duration,
    pending_max: usize,
    pending: HashMap<(String, String), Pending>,
    due: VecDeque<(Instant, (String, String))>,
    in_flight: Arc<Semaphore>,
    ctx: Arc<Ctx>,
}

impl Collapser {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            // A stop seen while waiting for a slot below ends the loop here.
            if *stop.borrow() {
                break;
            }
            let next = self.due.front().map(|(d, _)| *d);
            tokio::select! {
                job = self.rx.recv() => match job {
                    Some(job) => self.add(job),
                    None => break,
                },
                () = sleep_until(next) => {
                    while let Some(p) = self.next_due() {
                        let permit = tokio::select! {
                            p = self.in_flight.clone().acquire_owned() => p,
                            _ = stop.changed() => {
                                self.ctx.metrics.dropped[2].fetch_add(1, Relaxed);
                                break;
                            }
                        };
                        let Ok(permit) = permit else { break };
                        let ctx = self.ctx.clone();
                        tasks.spawn(async move {
                            notify(&ctx, p).await;
                            drop(permit);
                        });
                        // Reap finished tasks as we go (a JoinSet keeps them).
                        while tasks.try_join_next().is_some() {}
                    }
                }
                _ = stop.changed() => break,
            }
            self.ctx
                .metrics
                .queue_depth
                .store(self.rx.len() as i64, Relaxed);
        }
        // Stopping: what was not sent is dropped and counted.
        self.rx.close();
        let mut left = self.pending.len() as u64;
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        let m = &self.ctx.metrics;
        m.dropped[2].fetch_add(left, Relaxed);
        m.queue_depth.store(0, Relaxed);
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    /// Adds a job's recipients (not its sender) to their notifications.
    fn add(&mut self, job: Job) {
        let now = Instant::now();
        let m = &self.ctx.metrics;
        for user in job.recipients.iter().filter(|u| **u != job.sender) {
            let key = (user.clone(), job.conversation.clone());
            let at_bound = self.pending.len() >= self.pending_max;
            match self.pending.entry(key) {
                Entry::Occupied(mut o) => {
                    let n = &mut o.get_mut().note;
                    n.count = n.count.saturating_add(1);
                    n.seq = job.seq;
                    n.sender.clone_from(&job.sender);
                    n.preview.clone_from(&job.preview);
                    m.collapsed.fetch_add(1, Relaxed);
                }
                Entry::Vacant(_) if at_bound => {
                    m.dropped[1].fetch_add(1, Relaxed);
                }
                Entry::Vacant(v) => {
                    let due = now + self.window;
                    self.due.push_back((due, v.key().clone()));
                    v.insert(Pending {
                        note: Note {
                            conversation: job.conversation.clone(),
                            seq: job.seq,
                            sender: job.sender.clone(),
                            preview: job.preview.clone(),
                            count: 1,
                            badge: 0,
                        },
                    });
                }
            }
        }
    }

    /// The next notification whose window has ended, with its user.
    fn next_due(&mut self) -> Option<(String, Note)> {
        let now = Instant::now();
        loop {
            let (due, _) = self.due.front()?;
            if *due > now {
                return None;
            }
            let (_, key) = self.due.pop_front()?;
            // Each key is in `due` once, while it is in `pending` (it
            // leaves both here).
            if let Some(p) = self.pending.remove(&key) {
                return Some((key.0, p.note));
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Asks the backend about `user` and sends `note` to each of their tokens.
async fn notify(ctx: &Arc<Ctx>, (user, mut note): (String, Note)) {
    let m = &ctx.metrics;
    let service = ctx.service.clone();
    let conversation = note.conversation.clone();
    let asked =
        tokio::task::spawn_blocking(move || service.push_target(unix_ms(), &user, &conversation))
            .await;
    let (tokens, badge) = match asked {
        Ok(Ok(PushTarget::Notify { tokens, badge })) => (tokens, badge),
        Ok(Ok(PushTarget::Online)) => {
            m.skipped[0].fetch_add(1, Relaxed);
            return;
        }
        Ok(Ok(PushTarget::Muted)) => {
            m.skipped[1].fetch_add(1, Relaxed);
            return;
        }
        Ok(Ok(PushTarget::NoTokens)) => {
            m.skipped[2].fetch_add(1, Relaxed);
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "push: the backend could not answer; notification dropped");
            m.failed[STORE_FAILED].fetch_add(1, Relaxed);
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "push: the backend call panicked");
            return;
        }
    };
    note.badge = badge;
    for token in &tokens {
        deliver(ctx, token, &note).await;
    }
}

/// Sends `note` to one token: attempts until accepted, a dead token (then
/// removed), a refusal that no retry changes, or `attempts_max`.
async fn deliver(ctx: &Arc<Ctx>, token: &pb::PushToken, note: &Note) {
    let m = &ctx.metrics;
    let mut wait = ctx.retry_initial;
    for attempt in 1..=ctx.attempts_max {
        let outcome = tokio::time::timeout(ctx.timeout, send_once(ctx, token, note))
            .await
            .unwrap_or(Err(PushError::Timeout));
        let e = match outcome {
            Ok(()) => {
                let i = usize::from(token.platform == pb::PushPlatform::Fcm as i32);
                m.sent[i].fetch_add(1, Relaxed);
                return;
            }
            Err(PushError::DeadToken(why)) => {
                tracing::info!(reason = %why, "push: the provider says a token is dead; removing it");
                let service = ctx.service.clone();
                let (platform, t) = (token.platform, token.token.clone());
                let removed =
                    tokio::task::spawn_blocking(move || service.push_token_dead(platform, &t))
                        .await
                        .unwrap_or(false);
                if removed {
                    m.tokens_removed.fetch_add(1, Relaxed);
                }
                return;
            }
            Err(e) => e,
        };
        if !e.retryable() || attempt == ctx.attempts_max {
            tracing::debug!(error = %e, attempt, "push: notification given up");
            m.failed[e.reason()].fetch_add(1, Relaxed);
            return;
        }
        m.retried.fetch_add(1, Relaxed);
        let pause = match e.retry_after() {
            Some(d) => d.min(ctx.retry_max),
            None => jitter(wait),
        };
        tokio::time::sleep(pause).await;
        wait = (wait * 2).min(ctx.retry_max);
    }
}

async fn send_once(ctx: &Ctx, token: &pb::PushToken, note: &Note) -> Result<(), PushError> {
    match pb::PushPlatform::try_from(token.platform) {
        Ok(pb::PushPlatform::Apns) => match &ctx.apns {
            Some(a) => a.send(token, note).await,
            None => Err(PushError::Unconfigured),
        },
        Ok(pb::PushPlatform::Fcm) => match &ctx.fcm {
            Some(f) => f.send(token, note).await,
            None => Err(PushError::Unconfigured),
        },
        _ => Err(PushError::Unconfigured),
    }
}

/// hyper's client over HTTP/2 only (APNs) or HTTP/1.1 (FCM, OAuth).
pub(crate) type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A pooled client; `h2` speaks HTTP/2 only (prior knowledge over
/// `http://`, ALPN `h2` over TLS).
pub(crate) fn client(tls: rustls::ClientConfig, h2: bool) -> Client {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if h2 {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    };
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .http2_only(h2)
        .build(connector)
}

/// One request; answers the status, `Retry-After` and the body (bounded).
pub(crate) async fn request(
    client: &Client,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(u16, Option<Duration>, Bytes), PushError> {
    let resp = client
        .request(req)
        .await
        .map_err(|e| PushError::Transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = Limited::new(resp.into_body(), ANSWER_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| PushError::Transport(format!("answer body: {e}")))?
        .to_bytes();
    Ok((status, retry_after, body))
}

/// A wait between `d / 2` and `d`, so retries of many requests spread out.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = d / 2;
    let span = half.as_micros().max(1) as u64;
    half + Duration::from_micros(r % span)
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Unix epoch.
fn unix_s() -> u64 {
    unix_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The collapse id is stable per conversation, 32 hex digits (within
    // APNs' 64 bytes whatever the id's length), and differs between
    // conversations; previews are cut on a character boundary.
    fn collapse_ids_and_previews() {
        let note = |c: &str| Note {
            conversation: c.into(),
            seq: 1,
            sender: "alice".into(),
            preview: None,
            count: 1,
            badge: 0,
        };
        let a = note(&format!("g:{}", "x".repeat(64)));
        assert_eq!(a.collapse_id().len(), 32);
        assert_eq!(a.collapse_id(), a.clone().collapse_id());
        assert_ne!(a.collapse_id(), note("g:y").collapse_id());
        assert_eq!(note("d:alice:bob").title(), "alice");
        assert_eq!(note("g:team").title(), "team");
        let text = pb::Content {
            kind: Some(pb::content::Kind::Text(pb::Text {
                text: "héllo".into(),
            })),
        };
        assert_eq!(preview_text(Some(&text), 2), "h");
        assert_eq!(preview_text(Some(&text), 100), "héllo");
        assert_eq!(preview_text(None, 100), "[message]");
    }

    #[test]
    // Every failure has its own label of tern_push_failed_total; only the
    // transient ones are retried, and a provider's Retry-After is kept.
    fn failures_have_labels_and_retry_rules() {
        let cases = [
            (PushError::Timeout, "timeout", true),
            (PushError::RateLimited(None), "rate_limited", true),
            (PushError::Server(503, None), "server_error", true),
            (PushError::Rejected(400, "x".into()), "rejected", false),
            (PushError::DeadToken("x".into()), "rejected", false),
            (PushError::Transport("x".into()), "transport", true),
            (PushError::Auth("x".into()), "auth", true),
            (PushError::Unconfigured, "unconfigured", false),
        ];
        for (e, label, retry) in cases {
            assert_eq!(PUSH_FAIL_REASONS[e.reason()], label, "{e}");
            assert_eq!(e.retryable(), retry, "{e}");
        }
        assert_eq!(PUSH_FAIL_REASONS[STORE_FAILED], "store");
        let three = Some(Duration::from_secs(3));
        assert_eq!(PushError::RateLimited(three).retry_after(), three);
        assert_eq!(PushError::Server(503, three).retry_after(), three);
        assert_eq!(PushError::Timeout.retry_after(), None);
    }
}
