//! [`ChatService`] over `tern-backend`: the chat domain on the embedded
//! store (the single-node default). Converts the domain's outcomes into the
//! bridge's answers; holds no state of its own.

use std::sync::Arc;

use tern_backend::{
    config::Config as DomainConfig,
    domain::{Caller as DomainCaller, Domain, Effect as DomainEffect, Request},
    embedded::EmbeddedStore,
};
use tern_protocol::pb::frame::Body;

use crate::{
    bridge::{Answer, Caller, ChatService, Effect},
    config::{BackendSettings, Config},
};

/// The chat backend the gateway runs.
#[derive(Debug)]
pub struct BackendService {
    domain: Domain,
}

impl BackendService {
    /// Opens the embedded store in `settings.data_dir` (created if missing)
    /// with the default chat settings.
    pub fn open(settings: &BackendSettings) -> anyhow::Result<Self> {
        Self::open_with(settings, DomainConfig::default())
    }

    /// Opens the embedded store with the chat settings of `cfg`.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let mut chat = DomainConfig {
            recall_window_ms: cfg.chat.recall_window_ms,
            allow_non_friend_messages: cfg.chat.allow_non_friend_messages,
            ..DomainConfig::default()
        };
        chat.text_bytes_max = u32::try_from(cfg.session.text_bytes_max).unwrap_or(u32::MAX);
        Self::open_with(&cfg.backend, chat)
    }

    fn open_with(settings: &BackendSettings, chat: DomainConfig) -> anyhow::Result<Self> {
        chat.validate()
            .map_err(|e| anyhow::anyhow!("chat settings: {e}"))?;
        std::fs::create_dir_all(&settings.data_dir)?;
        let store = EmbeddedStore::open(&settings.data_dir)?;
        Ok(Self {
            domain: Domain::new(Arc::new(store), chat),
        })
    }
}

impl ChatService for BackendService {
    fn handle_batch(&self, now_unix_ms: u64, batch: &[(Caller, Body)]) -> Vec<Answer> {
        let requests = batch
            .iter()
            .map(|(c, body)| Request {
                caller: DomainCaller {
                    user_id: c.user.clone(),
                    device_id: c.device.clone(),
                },
                body: body.clone(),
            })
            .collect();
        let outcomes = self.domain.handle_batch(now_unix_ms, requests);
        outcomes
            .into_iter()
            .zip(batch)
            .map(|(o, (caller, body))| {
                // The sending device has its SendAck; its copy is skipped.
                let origin = matches!(body, Body::Send(_))
                    .then(|| (caller.user.clone(), caller.device.clone()));
                let effects = o
                    .effects
                    .into_iter()
                    .map(|e| match e {
                        DomainEffect::Deliver { entry, recipients } => Effect::Deliver {
                            entry,
                            recipients,
                            origin: origin.clone(),
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
                    })
                    .collect();
                Answer {
                    reply: o.reply,
                    effects,
                }
            })
            .collect()
    }
}
