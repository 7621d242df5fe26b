//! The Tern gateway: thread-per-core shards (monoio) that hold client
//! connections, run each one's session state machine, and hand chat work to
//! the backend through bounded lock-free queues.
//!
//! - [`config`]: typed configuration and its documented defaults.
//! - [`auth`]: JWT verification (algorithm pinned) and dev tokens.
//! - [`msg`]: what crosses threads to a shard (`ShardMsg`, `Handoff`,
//!   `ConnRef`, `owner_shard`), shared by the shard, `bridge`, `cluster` and
//!   `api`.
//! - [`wheel`]: the per-shard timing wheel behind every connection deadline.
//! - [`metrics`], [`http`]: per-shard counters and the HTTP edge.
//! - [`cluster`]: the node tier on Redis (membership, routes, node channel).
//! - [`api`]: the server API for existing services (`/api/v1`, OpenAPI).
//! - [`reload`]: SIGHUP reloads of what lives in files.
//! - [`limits`]: allow/deny lists by IP/CIDR, refusal counters, jitter
//!   (the shards' rate limiters are in `shard/limits.rs`).
//! - [`filter`]: the sensitive-word filter on client sends and group texts.
//!
//! The gateway never blocks a shard thread: storage work happens on backend
//! worker threads.

pub mod alloc;
pub mod api;
pub mod auth;
pub mod bridge;
pub mod cluster;
pub mod config;
pub mod filter;
pub mod http;
pub mod limits;
pub mod mailbox;
pub mod media;
pub mod metrics;
pub mod msg;
pub mod outbound;
pub mod push;
pub mod reload;
pub mod server;
pub mod service;
pub mod shard;
pub mod tls;
pub mod web;
pub mod webhooks;
pub mod wheel;
pub mod ws;
