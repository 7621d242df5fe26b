//! `tern-load`: the c1m load harness.
//!
//! A run is one scenario (`idle`, `chat`, `group`, `storm`, `mixed`) against
//! one or more gateways (or, with `--proto mqtt|nats|redis`, peer servers). The
//! parent ([`run`]) plans it ([`spec`]), checks the machine's limits and
//! refuses with the fix ([`limits`]), and spawns worker processes
//! ([`worker`], one mio event loop each, ≤ 19,000 connections) that it paces
//! through connect → setup → go. Workers report counters, hdrhistograms and,
//! with `--verify`, their operation log, which the parent merges
//! ([`report`]) and judges ([`history`]). [`push`] reads pushed `Deliver`
//! frames in place and writes `DeliverAck`s (the per-delivery hot path);
//! [`wire`] is the minimal MQTT, NATS and Redis pub/sub client side for
//! side-by-side runs.
//!
//! This module never talks to anything but the targets it is given, never
//! retries a failed first connection (failures are results), and never
//! asserts on timing: figures are reported, not judged.

pub mod history;
pub mod limits;
pub mod push;
pub mod report;
pub mod run;
pub mod spec;
pub mod wire;
pub mod worker;
