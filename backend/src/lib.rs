//! Tern's chat domain, written once against a `Store`, with an embedded
//! store (the single-node default) and a Redis store (many nodes).
//!
//! - [`domain`]: the chat logic ([`Domain::handle_batch`] is what the
//!   gateway calls), authorization included.
//! - [`store`]: the [`Store`] trait the domain runs on, and its records.
//! - [`embedded`]: the on-disk store (fjall).
//! - [`seal`]: encryption at rest (the key ring, sealed message bodies
//!   both stores write, and the STREAM sealing of media objects).
//! - [`config`], [`error`]: settings with defaults, typed domain errors.
//!
//! Never does network I/O to clients; the gateway calls into it from backend
//! worker threads.

pub mod config;
pub mod domain;
pub mod embedded;
pub mod error;
pub mod redis_store;
pub mod seal;
pub mod store;

pub use config::Config;
pub use domain::{Caller, Domain, Effect, Outcome, Recipients, Request};
pub use embedded::EmbeddedStore;
pub use error::DomainError;
pub use store::Store;
