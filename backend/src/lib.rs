//! Tern's chat domain, written once against a `Store`, with an embedded
//! store (the single-node default) and a Redis store (many nodes).
//!
//! Never does network I/O to clients; the gateway calls into it from backend
//! worker threads.

pub mod redis_store;
pub mod store;
