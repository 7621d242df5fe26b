//! Shared client code of `tern-cli`, `tern-load` and `tern-bot`.

/// `tern-bot`: LLM bots on an OpenAI-compatible API (on `cli`'s session).
pub mod bot;

/// `tern-cli`: the terminal chat client (interactive and scripted).
pub mod cli;

/// `tern-load`: the c1m load harness (worker processes, scenarios, history checker).
pub mod load;

/// TLS client settings (`--tls`, `--ca`, `--insecure`) of both tools.
pub mod tls;
