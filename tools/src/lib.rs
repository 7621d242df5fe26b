//! Shared client code of `tern-cli` and `tern-load`.

/// `tern-cli`: the terminal chat client (interactive and scripted).
pub mod cli;

/// `tern-load`: the c1m load harness (worker processes, scenarios, history checker).
pub mod load;

/// TLS client settings (`--tls`, `--ca`, `--insecure`) of both tools.
pub mod tls;
