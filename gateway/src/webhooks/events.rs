//! The after-event feed: workers turn what a batch did into [`Event`]s and
//! hand them to a bounded queue without waiting ([`EventSink::push`]: full
//! means dropped and counted); the `tern-webhooks` thread takes up to
//! `events_per_post_max` at a time and POSTs them, signed, with at most
//! `events_posts_in_flight_max` POSTs in flight, each retried with
//! exponential backoff and jitter up to `events_attempts_max` attempts.
//!
//! POST body: `{"events": [{"id", "type", "time_ms", "data"}, …]}`. Delivery
//! is at least once (a POST whose answer was lost is sent again with the
//! same `webhook-id` and event ids): receivers dedup by event `id`. Order
//! holds within one POST, not across POSTs in flight.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use tern_protocol::pb::{self, frame::Body};
use tokio::sync::{mpsc, watch};

use super::{HookError, HttpClient, sign::Signer};
use crate::{
    bridge::{Answer, Effect},
    config::WebhookSettings,
    metrics::WebhookMetrics,
};

/// Longest event answer read (its body is ignored), bytes.
const ANSWER_BYTES_MAX: usize = 64 * 1024;

/// One event, before it gets its id.
#[derive(Debug)]
pub struct Event {
    /// `message.stored`, `message.recalled`, `message.read`,
    /// `group.changed`, `friend.requested`, `friend.added`,
    /// `friend.removed`, `user.online`, `user.offline`, `room.posted`, `room.deleted`
    /// (docs/http-api.md lists them all).
    pub kind: &'static str,
    /// When it happened (the server's clock), ms since the epoch.
    pub time_ms: u64,
    /// What happened (docs/http-api.md lists the fields per type).
    pub data: Value,
}

/// A worker's handle on the queue.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    metrics: Arc<WebhookMetrics>,
}

impl EventSink {
    /// Queues `e` without waiting; a full (or closed) queue drops it and
    /// counts it.
    pub fn push(&self, e: Event) {
        if self.tx.try_send(e).is_err() {
            self.metrics.events_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Queues the events of one handled batch: stored entries (messages,
    /// recalls, read marks, group changes), friend changes, and presence
    /// set online or offline (`presence[i]`, from request `i`, counts only
    /// if it succeeded).
    pub fn collect(&self, now_ms: u64, presence: &[Option<(String, i32)>], answers: &[Answer]) {
        for (i, a) in answers.iter().enumerate() {
            if let Some(Some((user, state))) = presence.get(i) {
                let ok = !matches!(a.reply, Some(Body::Error(_)));
                let kind = match pb::PresenceState::try_from(*state) {
                    Ok(pb::PresenceState::Online) => Some("user.online"),
                    Ok(pb::PresenceState::Offline) => Some("user.offline"),
                    _ => None,
                };
                if let (true, Some(kind)) = (ok, kind) {
                    self.push(Event {
                        kind,
                        time_ms: now_ms,
                        data: json!({ "user": user }),
                    });
                }
            }
            for effect in &a.effects {
                if let Some(e) = effect_event(now_ms, effect) {
                    self.push(e);
                }
            }
        }
        self.metrics
            .events_queue_depth
            .store(queued(&self.tx), Relaxed);
    }
}

fn queued(tx: &mpsc::Sender<Event>) -> i64 {
    (tx.max_capacity() - tx.capacity()) as i64
}

/// The event of one effect, if it is one the feed carries.
fn effect_event(now_ms: u64, effect: &Effect) -> Option<Event> {
    match effect {
        Effect::Deliver { entry, .. } => {
            let base = |extra: Value| {
                let mut d = json!({
                    "conversation_id": entry.conversation_id,
                    "seq": entry.seq,
                    "sender": entry.sender,
                    "sender_device": entry.sender_device,
                });
                if let (Value::Object(d), Value::Object(x)) = (&mut d, extra) {
                    d.extend(x);
                }
                d
            };
            let (kind, data) = match entry.body.as_ref()? {
                pb::entry::Body::Message(m) => (
                    "message.stored",
                    base(json!({
                        "client_msg_id": entry.client_msg_id,
                        "content": m.content.as_ref().map_or(Value::Null, content_json),
                        "mentions": m.mentions,
                        "mention_all": m.mention_all,
                        "reply_to_seq": m.reply_to_seq,
                        "streaming": m.streaming,
                        "thread_root_seq": m.thread_root_seq,
                    })),
                ),
                pb::entry::Body::Recalled(r) => {
                    ("message.recalled", base(json!({ "recalled_seq": r.seq })))
                }
                pb::entry::Body::Edited(x) => (
                    "message.edited",
                    base(json!({
                        "edited_seq": x.seq,
                        "content": x.content.as_ref().map_or(Value::Null, content_json),
                        "edit_count": x.edit_count,
                        "streaming": x.streaming,
                    })),
                ),
                pb::entry::Body::Read(r) => {
                    ("message.read", base(json!({ "up_to_seq": r.up_to_seq })))
                }
                pb::entry::Body::CallRecord(c) => (
                    "call.ended",
                    base(json!({
                        "call_id": c.call_id,
                        "outcome": crate::api::reads::call_outcome_name(c.outcome),
                        "participants": c.participants,
                        "answered": c.answered,
                        "video": c.video,
                        "started_ms": c.started_ms,
                        "duration_ms": c.duration_ms,
                    })),
                ),
                pb::entry::Body::Todo(t) => (
                    "todo.changed",
                    base(json!({
                        "todo_seq": t.seq,
                        "action": crate::api::reads::todo_action_name(t.action),
                        "assignees": t.assignees,
                    })),
                ),
                // Not carried by the feed (yet): docs/http-api.md.
                pb::entry::Body::Reaction(_) | pb::entry::Body::Pin(_) => return None,
                pb::entry::Body::GroupEvent(g) => (
                    "group.changed",
                    base(json!({
                        "group_id": entry.conversation_id.strip_prefix("g:").unwrap_or_default(),
                        "change": group_change_json(g),
                    })),
                ),
            };
            Some(Event {
                kind,
                time_ms: if entry.time_ms > 0 {
                    entry.time_ms
                } else {
                    now_ms
                },
                data,
            })
        }
        Effect::Push {
            recipients,
            body: Body::Event(ev),
        } => {
            let user = recipients.first()?;
            let (kind, data) = match ev.kind.as_ref()? {
                pb::server_event::Kind::FriendRequested(p) => (
                    "friend.requested",
                    json!({"from": p.from_user_id, "to": p.to_user_id, "message": p.message}),
                ),
                pb::server_event::Kind::FriendAdded(f) => {
                    ("friend.added", json!({"user": user, "friend": f}))
                }
                pb::server_event::Kind::FriendRemoved(f) => {
                    ("friend.removed", json!({"user": user, "friend": f}))
                }
                // Group membership is in the group's log (`group.changed`).
                _ => return None,
            };
            Some(Event {
                kind,
                time_ms: now_ms,
                data,
            })
        }
        Effect::Push { .. } => None,
        Effect::Room {
            room,
            body: Body::RoomDeliver(d),
        } => {
            let entry = d.entry.as_ref()?;
            let Some(pb::entry::Body::Message(m)) = entry.body.as_ref() else {
                return None;
            };
            Some(Event {
                kind: "room.posted",
                time_ms: if entry.time_ms > 0 {
                    entry.time_ms
                } else {
                    now_ms
                },
                data: json!({
                    "room_id": &**room,
                    "seq": entry.seq,
                    "sender": entry.sender,
                    "sender_device": entry.sender_device,
                    "client_msg_id": entry.client_msg_id,
                    "content": m.content.as_ref().map_or(Value::Null, content_json),
                }),
            })
        }
        Effect::Room {
            room,
            body: Body::RoomClosed(_),
        } => Some(Event {
            kind: "room.deleted",
            time_ms: now_ms,
            data: json!({ "room_id": &**room }),
        }),
        Effect::Room { .. } => None,
    }
}

/// A message's content as webhooks show it: `{"type": "text", "text"}`,
/// `{"type": "image" | "file" | "voice" | "video", "media": {…}}`,
/// `{"type": "location", …}`, `{"type": "custom", "custom_type", "data_base64"}`.
pub fn content_json(c: &pb::Content) -> Value {
    use pb::content::Kind;
    match &c.kind {
        Some(Kind::Text(t)) => json!({"type": "text", "text": t.text}),
        Some(Kind::Image(i)) => json!({"type": "image", "media": media_json(i.media.as_ref())}),
        Some(Kind::File(f)) => {
            json!({"type": "file", "name": f.name, "media": media_json(f.media.as_ref())})
        }
        Some(Kind::Voice(v)) => json!({"type": "voice", "media": media_json(v.media.as_ref())}),
        Some(Kind::Video(v)) => json!({"type": "video", "media": media_json(v.media.as_ref())}),
        Some(Kind::Location(l)) => json!({
            "type": "location", "latitude": l.latitude, "longitude": l.longitude,
            "name": l.name, "address": l.address,
        }),
        Some(Kind::Custom(x)) => json!({
            "type": "custom", "custom_type": x.r#type,
            "data_base64": base64::engine::general_purpose::STANDARD.encode(&x.data),
        }),
        None => Value::Null,
    }
}

fn media_json(m: Option<&pb::MediaRef>) -> Value {
    let Some(m) = m else {
        return Value::Null;
    };
    json!({
        "media_id": m.media_id, "mime": m.mime, "size_bytes": m.size_bytes,
        "width": m.width, "height": m.height, "duration_ms": m.duration_ms, "sha256": m.sha256,
    })
}

fn group_change_json(g: &pb::GroupEvent) -> Value {
    use pb::group_event::Kind;
    let role = |r: i32| {
        pb::GroupRole::try_from(r)
            .map_or("unspecified", |r| r.as_str_name())
            .trim_start_matches("GROUP_ROLE_")
            .to_ascii_lowercase()
    };
    match &g.kind {
        Some(Kind::Created(c)) => json!({"kind": "created", "name": c.name, "owner": c.owner}),
        Some(Kind::Joined(m)) => json!({"kind": "joined", "user_ids": m.user_ids}),
        Some(Kind::Left(m)) => json!({"kind": "left", "user_ids": m.user_ids}),
        Some(Kind::Kicked(m)) => json!({"kind": "kicked", "user_ids": m.user_ids}),
        Some(Kind::Renamed(n)) => json!({"kind": "renamed", "name": n}),
        Some(Kind::Announcement(a)) => json!({"kind": "announcement", "text": a}),
        Some(Kind::RoleChanged(r)) => {
            json!({"kind": "role_changed", "user_id": r.user_id, "role": role(r.role)})
        }
        Some(Kind::MuteChanged(m)) => json!({
            "kind": "mute_changed", "user_id": m.user_id,
            "muted_until_ms": m.muted_until_ms, "muted_all": m.muted_all,
        }),
        Some(Kind::Dissolved(_)) => json!({"kind": "dissolved"}),
        Some(Kind::NicknameChanged(n)) => {
            json!({"kind": "nickname_changed", "user_id": n.user_id, "nickname": n.nickname})
        }
        Some(Kind::PolicyChanged(p)) => json!({
            "kind": "policy_changed", "join_policy": p.join_policy,
            "history_visible": p.history_visible,
        }),
        None => json!({"kind": "unknown"}),
    }
}

/// The feed: its queue and its thread.
#[derive(Debug)]
pub struct EventFeed {
    sink: Option<EventSink>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

/// Where a POST goes and how it is signed.
#[derive(Debug)]
struct Target {
    url: hyper::Uri,
    signer: Signer,
}

/// What every delivery task shares.
#[derive(Debug)]
struct Ctx {
    client: HttpClient,
    /// `events_url`'s receiver, for the events of tenants without their own
    /// (`None`: those are dropped and counted).
    default: Option<Arc<Target>>,
    /// `tenant_events`: the receivers of tenants with their own.
    tenants: Vec<(String, Arc<Target>)>,
    timeout: Duration,
    attempts_max: u32,
    retry_initial: Duration,
    retry_max: Duration,
    metrics: Arc<WebhookMetrics>,
    /// Events taken from the queue and not yet delivered or given up.
    outstanding: AtomicU64,
}

impl EventFeed {
    /// Starts the `tern-webhooks` thread (None when `events_url` is empty).
    /// `node_id` prefixes every event id.
    pub fn start(
        cfg: &WebhookSettings,
        node_id: &str,
        metrics: Arc<WebhookMetrics>,
    ) -> std::io::Result<Option<Self>> {
        if cfg.events_url.is_empty() && cfg.tenant_events.is_empty() {
            return Ok(None);
        }
        let parse = |url: &str| {
            url.parse::<hyper::Uri>()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        };
        let default = if cfg.events_url.is_empty() {
            None
        } else {
            Some(Arc::new(Target {
                url: parse(&cfg.events_url)?,
                signer: Signer::new(&cfg.secret),
            }))
        };
        let mut tenants = Vec::with_capacity(cfg.tenant_events.len());
        for t in &cfg.tenant_events {
            let target = Target {
                url: parse(&t.url)?,
                signer: Signer::new(&t.secret),
            };
            tenants.push((t.tenant.clone(), Arc::new(target)));
        }
        let tls = super::tls_config(cfg)?;
        let (tx, rx) = mpsc::channel(cfg.events_queue_max);
        let (stop, stop_rx) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let per_post = cfg.events_per_post_max;
        let in_flight = cfg.events_posts_in_flight_max;
        let grace = Duration::from_millis(cfg.events_shutdown_grace_ms);
        // Unique across restarts of this node: the start time.
        let prefix = format!("{node_id}.{}", super::unix_s());
        let settings = (
            (default, tenants),
            Duration::from_millis(cfg.events_timeout_ms),
            cfg.events_attempts_max,
            Duration::from_millis(cfg.events_retry_initial_ms),
            Duration::from_millis(cfg.events_retry_max_ms),
        );
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("tern-webhooks".into())
            .spawn(move || {
                let ((default, tenants), timeout, attempts_max, retry_initial, retry_max) =
                    settings;
                rt.block_on(async move {
                    let ctx = Arc::new(Ctx {
                        client: super::client(tls),
                        default,
                        tenants,
                        timeout,
                        attempts_max,
                        retry_initial,
                        retry_max,
                        metrics: m,
                        outstanding: AtomicU64::new(0),
                    });
                    let feed = Feed {
                        rx,
                        ctx,
                        posts: tokio::task::JoinSet::new(),
                        per_post,
                        in_flight,
                        prefix,
                        next: 0,
                    };
                    feed.run(stop_rx, grace).await;
                });
            })?;
        Ok(Some(Self {
            sink: Some(EventSink { tx, metrics }),
            stop,
            thread: Some(thread),
        }))
    }

    /// A handle for one worker.
    pub fn sink(&self) -> Option<EventSink> {
        self.sink.clone()
    }

    /// Stops the thread once the workers have stopped: what is queued and in
    /// flight gets `events_shutdown_grace_ms`, the rest is dropped and
    /// counted.
    pub fn stop(mut self) {
        self.sink = None;
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread's state.
struct Feed {
    rx: mpsc::Receiver<Event>,
    ctx: Arc<Ctx>,
    posts: tokio::task::JoinSet<()>,
    per_post: usize,
    in_flight: usize,
    prefix: String,
    next: u64,
}

impl Feed {
    async fn run(mut self, mut stop: watch::Receiver<bool>, grace: Duration) {
        loop {
            // Room for one more POST, or the stop: a hanging receiver must
            // not hold up a shutdown.
            let room = async {
                while self.posts.len() >= self.in_flight {
                    self.posts.join_next().await;
                }
            };
            tokio::select! {
                () = room => {}
                _ = stop.changed() => break,
            }
            let first = tokio::select! {
                e = self.rx.recv() => e,
                _ = stop.changed() => None,
            };
            let Some(first) = first else {
                break;
            };
            self.post(first);
        }
        // Stopping: the workers are gone. Deliver what is left within the
        // grace; then whatever remains is dropped and counted.
        self.rx.close();
        let finished = tokio::time::timeout(grace, async {
            loop {
                while self.posts.len() >= self.in_flight {
                    self.posts.join_next().await;
                }
                match self.rx.try_recv() {
                    Ok(e) => self.post(e),
                    Err(_) => break,
                }
            }
            while self.posts.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            self.posts.abort_all();
            while self.posts.join_next().await.is_some() {}
        }
        let mut left = self.ctx.outstanding.load(Relaxed);
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        let m = &self.ctx.metrics;
        m.events_dropped.fetch_add(left, Relaxed);
        m.events_queue_depth.store(0, Relaxed);
    }

    /// Takes `first` and what else is queued (up to a POST's worth) and
    /// starts delivering them.
    fn post(&mut self, first: Event) {
        let mut batch = vec![first];
        while batch.len() < self.per_post {
            match self.rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        self.ctx
            .metrics
            .events_queue_depth
            .store(self.rx.len() as i64, Relaxed);
        // One POST per receiver: a tenant with its own gets only its events.
        let mut by_target: Vec<(Arc<Target>, Vec<Event>)> = Vec::new();
        for e in batch {
            let Some(target) = self.ctx.target_of(&e) else {
                self.ctx.metrics.events_dropped.fetch_add(1, Relaxed);
                continue;
            };
            match by_target.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &target)) {
                Some((_, events)) => events.push(e),
                None => by_target.push((target, vec![e])),
            }
        }
        for (target, batch) in by_target {
            self.next += 1;
            let post_id = format!("{}.{}", self.prefix, self.next);
            let events: Vec<Value> = batch
                .into_iter()
                .enumerate()
                .map(|(k, e)| {
                    json!({
                        "id": format!("{post_id}.{k}"),
                        "type": e.kind,
                        "time_ms": e.time_ms,
                        "data": e.data,
                    })
                })
                .collect();
            let count = events.len() as u64;
            let body =
                Bytes::from(serde_json::to_vec(&json!({ "events": events })).unwrap_or_default());
            self.ctx.outstanding.fetch_add(count, Relaxed);
            self.posts
                .spawn(deliver(self.ctx.clone(), target, post_id, body, count));
        }
    }
}

/// Delivers one POST: attempts until a 2xx or `attempts_max`, each signed
/// afresh (new timestamp, same id), with doubling waits and jitter between.
async fn deliver(ctx: Arc<Ctx>, target: Arc<Target>, id: String, body: Bytes, count: u64) {
    let m = &ctx.metrics;
    let mut wait = ctx.retry_initial;
    for attempt in 1..=ctx.attempts_max {
        let headers = target.signer.headers(&id, super::unix_s(), &body);
        let outcome = tokio::time::timeout(
            ctx.timeout,
            super::post(
                &ctx.client,
                &target.url,
                &headers,
                body.clone(),
                ANSWER_BYTES_MAX,
            ),
        )
        .await
        .unwrap_or(Err(HookError::Timeout));
        if outcome.is_ok() {
            m.events_delivered.fetch_add(count, Relaxed);
            ctx.outstanding.fetch_sub(count, Relaxed);
            return;
        }
        if attempt == ctx.attempts_max {
            break;
        }
        m.events_retried.fetch_add(1, Relaxed);
        tokio::time::sleep(jitter(wait)).await;
        wait = (wait * 2).min(ctx.retry_max);
    }
    m.events_failed.fetch_add(count, Relaxed);
    ctx.outstanding.fetch_sub(count, Relaxed);
}

impl Ctx {
    /// The receiver of `e`: its tenant's own, else `events_url`'s.
    fn target_of(&self, e: &Event) -> Option<Arc<Target>> {
        if !self.tenants.is_empty() {
            let tenant = tenant_of_event(&e.data);
            if let Some((_, t)) = self.tenants.iter().find(|(t, _)| *t == tenant) {
                return Some(t.clone());
            }
        }
        self.default.clone()
    }
}

/// The tenant an event is about: that of the first id it names (a
/// conversation's first user, a room, a group or a user; docs/tenants.md).
/// Nothing crosses tenants, so any of them gives the same answer (a
/// federated 1:1 conversation counts as its first user's tenant's).
fn tenant_of_event(data: &Value) -> String {
    for field in [
        "conversation_id",
        "room_id",
        "group_id",
        "user_id",
        "user",
        "from",
        "sender",
    ] {
        if let Some(id) = data.get(field).and_then(Value::as_str) {
            let id = match id.split_once(':') {
                // `d:<a>:<b>`, `g:<group>`, `r:<room>`: the first id.
                Some((kind, rest)) if kind.len() == 1 => rest.split(':').next().unwrap_or_default(),
                _ => id,
            };
            return tern_protocol::ids::tenant_of(id).to_owned();
        }
    }
    String::new()
}

/// A wait between `d / 2` and `d`, so retries of many POSTs spread out.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = d / 2;
    let span = half.as_micros().max(1) as u64;
    half + Duration::from_micros(r % span)
}
