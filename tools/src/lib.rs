//! Shared client code of `tern-cli` and `tern-load`.

/// `tern-load`: the c1m load harness (worker processes, scenarios, history checker).
pub mod load;
