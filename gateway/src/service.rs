//! [`ChatService`] over `tern-backend`: the chat domain on the embedded
//! store (the single-node default). Converts the domain's outcomes into the
//! bridge's answers; holds no state of its own.

use std::sync::Arc;
use std::time::Duration;

use tern_backend::{
    config::Config as DomainConfig,
    domain::{Caller as DomainCaller, Domain, Effect as DomainEffect, Request},
    embedded::EmbeddedStore,
    redis_store::{RedisConfig, RedisNodes, RedisStore},
    seal::Keys,
    store::{AuditLog, Credentials, OrgStore, Store},
};
use tern_protocol::pb::{self, frame::Body};

use crate::{
    bridge::{Answer, Caller, ChatService, Effect},
    config::{BackendSettings, Config, StoreKind},
};

/// How long a connection-derived presence holds without being set again:
/// until the connection ends, in practice (a year).
const PRESENCE_HELD_MS: u64 = 365 * 24 * 3600 * 1000;

/// The chat backend the gateway runs.
#[derive(Debug)]
pub struct BackendService {
    domain: Arc<Domain>,
    /// The same store, for local accounts' password hashes.
    credentials: Arc<dyn Credentials>,
    /// The same store, for the audit log of admin actions.
    audit: Arc<dyn AuditLog>,
    /// The same store, for departments.
    org: Arc<dyn OrgStore>,
}

impl BackendService {
    /// Opens the configured store (the embedded one in `settings.data_dir`,
    /// created if missing, or Redis) with the default chat settings and no
    /// encryption at rest.
    pub fn open(settings: &BackendSettings) -> anyhow::Result<Self> {
        let chat = DomainConfig {
            presence_expiry_ms: PRESENCE_HELD_MS,
            ..DomainConfig::default()
        };
        Self::open_with(settings, chat, Keys::new(None))
    }

    /// Opens the embedded store with the chat settings of `cfg`.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let mut chat = DomainConfig {
            recall_window_ms: cfg.chat.recall_window_ms,
            allow_non_friend_messages: cfg.chat.allow_non_friend_messages,
            group_members_max: cfg.backend.group_members_max,
            page_entries_max: cfg.backend.page_entries_max,
            edit_window_ms: cfg.edit.window_ms(),
            edits_per_message_max: cfg.edit.max_edits_per_message,
            search_enabled: cfg.search.enabled,
            push_enabled: cfg.push.enabled,
            push_tokens_per_user_max: cfg.push.tokens_per_user_max,
            push_muted_conversations_max: cfg.push.muted_conversations_max,
            call_ring_timeout_ms: cfg.chat.call_ring_timeout_ms,
            calls_max: cfg.chat.calls_max,
            call_lease_ms: cfg.chat.call_lease_ms,
            federation: tern_backend::config::Federation::parse(
                cfg.chat.tenant_federation.iter().map(String::as_str),
            )
            .map_err(|why| anyhow::anyhow!("chat.tenant_federation: {why}"))?,
            tenant_messages_per_second: cfg
                .chat
                .tenant_rates()
                .map_err(|why| anyhow::anyhow!("chat.tenant_messages_per_second: {why}"))?,
            tenant_users_max: cfg
                .chat
                .tenant_seats()
                .map_err(|why| anyhow::anyhow!("chat.tenant_users_max: {why}"))?,
            ..DomainConfig::default()
        };
        chat.text_bytes_max = u32::try_from(cfg.session.text_bytes_max).unwrap_or(u32::MAX);
        chat.room_recent_max = cfg.rooms.recent_max;
        // Presence follows connections: the owner shard sets a user online
        // at their first device and offline at their last, so it needs no
        // lease here (the embedded store keeps presence in memory; it ends
        // with the process). Across nodes the gateway's workers decide
        // "first" and "last" from Redis (docs/cluster.md), still no lease.
        chat.presence_expiry_ms = PRESENCE_HELD_MS;
        // Keys first: a bad key file is refused before the store opens.
        let keys = cfg.encryption.load_keys()?;
        let service = Self::open_with(&cfg.backend, chat, keys)?;
        if cfg.search.enabled {
            service.spawn_indexer(Duration::from_millis(cfg.search.index_interval_ms.max(1)))?;
        }
        Ok(service)
    }

    /// Starts the search indexer thread (`tern-search`): every `interval`
    /// it indexes the conversations written to since its last turn
    /// (docs/backend.md, "Search"). It holds the domain weakly and ends
    /// with the service.
    fn spawn_indexer(&self, interval: Duration) -> anyhow::Result<()> {
        let domain = Arc::downgrade(&self.domain);
        std::thread::Builder::new()
            .name("tern-search".into())
            .spawn(move || {
                // First every index the store can list, up to its log (an
                // index that is new, or behind after a crash or an upgrade).
                if let Some(domain) = domain.upgrade() {
                    match domain.search_index_all() {
                        Ok(read) => tracing::info!(entries = read, "search index caught up with the log"),
                        Err(e) => tracing::warn!(error = %e, "search indexer: the start-up catch-up failed"),
                    }
                }
                loop {
                    // Its own thread, not a shard's or a worker's: it waits
                    // between turns (spurious wake-ups only make a turn early).
                    std::thread::park_timeout(interval);
                    let Some(domain) = domain.upgrade() else {
                        return;
                    };
                    if let Err(e) = domain.search_index_pending() {
                        // The next search of those conversations indexes
                        // them; nothing is lost.
                        tracing::warn!(error = %e, "search indexer: a turn failed");
                    }
                }
            })?;
        Ok(())
    }

    fn open_with(
        settings: &BackendSettings,
        chat: DomainConfig,
        keys: Arc<Keys>,
    ) -> anyhow::Result<Self> {
        chat.validate()
            .map_err(|e| anyhow::anyhow!("chat settings: {e}"))?;
        type Handles = (
            Arc<dyn Store>,
            Arc<dyn Credentials>,
            Arc<dyn AuditLog>,
            Arc<dyn OrgStore>,
        );
        let (store, credentials, audit, org): Handles = match settings.store {
            StoreKind::Embedded => {
                std::fs::create_dir_all(&settings.data_dir)?;
                let s = Arc::new(
                    EmbeddedStore::open(&settings.data_dir)?
                        .with_keys(keys)
                        .with_disk_free_min(settings.disk_free_min_bytes),
                );
                (s.clone(), s.clone(), s.clone(), s)
            }
            StoreKind::Redis => {
                let nodes = if settings.redis_cluster {
                    RedisNodes::Cluster(settings.redis_urls.clone())
                } else {
                    let [url] = settings.redis_urls.as_slice() else {
                        anyhow::bail!(
                            "backend.redis_urls: give one URL for a single server (or set redis_cluster)"
                        );
                    };
                    RedisNodes::Single(url.clone())
                };
                let s = Arc::new(RedisStore::open(RedisConfig::new(nodes))?.with_keys(keys));
                (s.clone(), s.clone(), s.clone(), s)
            }
        };
        Ok(Self {
            domain: Arc::new(Domain::new(store, chat)),
            credentials,
            audit,
            org,
        })
    }
}

/// The bridge's form of a domain effect; `origin` is the device whose copy
/// of a delivery is skipped.
fn effect(e: DomainEffect, origin: Option<&(String, String)>) -> Effect {
    match e {
        DomainEffect::Deliver { entry, recipients } => Effect::Deliver {
            entry,
            recipients,
            origin: origin.cloned(),
        },
        DomainEffect::Event { user_id, event } => Effect::Push {
            recipients: Arc::from([user_id]),
            body: Body::Event(event),
        },
        DomainEffect::Typing { recipients, event } => Effect::Push {
            recipients,
            body: Body::TypingEvent(event),
        },
        DomainEffect::Presence { recipients, event } => Effect::Push {
            recipients,
            body: Body::PresenceEvent(event),
        },
        // Call signalling: pushed to every device of the participants, on
        // every node (docs/protocol.md, "Calls").
        DomainEffect::Call { recipients, body } => Effect::Push { recipients, body },
        // One push per shard and node, to the connections that joined
        // (docs/protocol.md, "Rooms").
        DomainEffect::Room { room_id, entry } => Effect::Room {
            room: room_id.into(),
            body: Body::RoomDeliver(pb::RoomDeliver { entry: Some(entry) }),
        },
        // The same way, and each shard then drops the room's subscriptions.
        DomainEffect::RoomClosed { room_id } => Effect::Room {
            room: room_id.as_str().into(),
            body: Body::RoomClosed(pb::RoomClosed { room_id }),
        },
        // A push like any other, so it reaches the user's devices on every
        // node; the owner shard closes the devices it names (shard/inbox.rs, `kick_devices`).
        DomainEffect::Kick { user_id, kick } => Effect::Push {
            recipients: Arc::from([user_id]),
            body: Body::Kick(kick),
        },
    }
}

impl ChatService for BackendService {
    fn credentials(&self) -> Option<Arc<dyn Credentials>> {
        Some(self.credentials.clone())
    }

    fn audit_log(&self) -> Option<Arc<dyn AuditLog>> {
        Some(self.audit.clone())
    }

    fn org_store(&self) -> Option<Arc<dyn OrgStore>> {
        Some(self.org.clone())
    }

    fn push_target(
        &self,
        now_unix_ms: u64,
        user: &str,
        conversation: &str,
    ) -> Result<tern_backend::domain::push::PushTarget, String> {
        self.domain
            .push_target(now_unix_ms, user, conversation)
            .map_err(|e| e.to_string())
    }

    fn push_token_dead(&self, platform: i32, token: &str) -> bool {
        match self.domain.push_token_dead(platform, token) {
            Ok(removed) => removed,
            Err(e) => {
                tracing::warn!(error = %e, "push: removing a dead token failed");
                false
            }
        }
    }

    fn handle_batch(&self, now_unix_ms: u64, batch: Vec<(Caller, Body)>) -> Vec<Answer> {
        // The sending device has its SendAck; its copy of the delivery is
        // skipped.
        let origins: Vec<Option<(String, String)>> = batch
            .iter()
            .map(|(c, body)| {
                matches!(body, Body::Send(_)).then(|| (c.user.clone(), c.device.clone()))
            })
            .collect();
        let requests = batch
            .into_iter()
            .map(|(c, body)| Request {
                caller: DomainCaller {
                    user_id: c.user,
                    device_id: c.device,
                    admin: c.admin,
                },
                body,
            })
            .collect();
        self.domain
            .handle_batch(now_unix_ms, requests)
            .into_iter()
            .zip(origins)
            .map(|(o, origin)| Answer {
                reply: o.reply,
                effects: o
                    .effects
                    .into_iter()
                    .map(|e| effect(e, origin.as_ref()))
                    .collect(),
            })
            .collect()
    }

    fn tick(&self, now_unix_ms: u64) -> Vec<Effect> {
        self.domain
            .poll_expired(now_unix_ms)
            .into_iter()
            .map(|e| effect(e, None))
            .collect()
    }
}
