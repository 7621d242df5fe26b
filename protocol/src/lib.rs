//! Tern's wire protocol.
//!
//! - [`pb`]: the protobuf types generated from `proto/tern/v1/tern.proto`, the
//!   public contract with clients.
//! - [`ids`]: what an id may contain, and conversation ids.
//! - [`codec`]: framing (varint length prefix over TCP, bare body over
//!   WebSocket), checked against the frame limit before anything is kept.
//! - [`validate`]: what a client may send; typed refusals naming the field.
//! - [`session`]: the per-connection state machine (handshake, heartbeat,
//!   outbox, unacked-delivery window), driven with time passed in.
//!
//! This crate never does I/O and never reads a clock: time is passed in.

pub mod codec;
pub mod ids;
pub mod session;
pub mod validate;

/// Types generated from `proto/tern/v1/tern.proto`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tern.v1.rs"));
}

/// The protocol version this crate speaks (`Auth.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;
