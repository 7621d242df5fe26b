//! `tern-cli`: a terminal chat client for Tern, interactive (a line-oriented
//! REPL with slash commands and live events) and scripted (one command per
//! run, a stable line or JSON output, typed exit codes).
//!
//! Layers, bottom up:
//! - [`conn`](crate::cli::conn): one TCP connection: the handshake, a reader thread that routes
//!   answers to their request by request id and everything else to a bounded
//!   push queue, and a heartbeat thread pinging at the Welcome interval.
//! - [`cursors`](crate::cli::cursors): the per-conversation cursors of this device, gap detection
//!   and the cumulative `deliver_ack` set; no I/O.
//! - [`session`](crate::cli::session): a connection plus its cursors: typed requests, `sync` to
//!   the end, applying and acking pushed deliveries.
//! - [`args`](crate::cli::args), [`exec`](crate::cli::exec), [`record`](crate::cli::record), [`human`](crate::cli::human): the command tree shared by
//!   both modes, running a command, and showing its result to scripts
//!   (records) or to people (chat lines).
//! - [`script`](crate::cli::script), [`repl`](crate::cli::repl): the two front ends.
//!
//! This module never keeps anything on disk (cursors live for one run; a new
//! run starts from the conversation list, as a new device would), never
//! uploads media (the media API does not exist yet; sending a file says so),
//! and never retries a request other than a `send` with its original
//! `client_msg_id`.

pub mod args;
pub mod conn;
pub mod cursors;
pub mod error;
pub mod exec;
pub mod human;
pub mod media;
pub mod record;
pub mod repl;
pub mod script;
pub mod session;
pub mod target;
pub mod token;
pub mod ws;

pub use error::ClientError;
