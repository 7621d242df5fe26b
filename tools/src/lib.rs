//! Shared client code of `tern-cli` and `tern-load`.
