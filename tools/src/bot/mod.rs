//! `tern-bot`: LLM bots on an OpenAI-compatible chat-completions API, as
//! Tern users over the public protocol (docs/bots.md).
//!
//! - [`config`]: the TOML file: Tern's address, the API, one `[[bot]]` each.
//! - [`runner`]: per bot, a protocol loop (a `tern-cli`
//!   [`Session`](crate::cli::session::Session)) that picks the questions,
//!   and a reply thread per question that streams the answer into one
//!   message with edits.
//! - [`llm`]: the streaming chat-completions client (blocking, SSE).
//! - [`context`]: history into the request's messages within a token budget.
//! - [`limits`]: questions per user and per bot per minute, tokens per day.
//!
//! This module never keeps anything on disk: the limits and the day's spent
//! tokens live for one run (a restart starts the day's count at 0), and a
//! bot never answers the backlog from before it started.

pub mod config;
pub mod context;
pub mod limits;
pub mod llm;
pub mod runner;
