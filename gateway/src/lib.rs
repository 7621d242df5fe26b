//! The Tern gateway: thread-per-core shards (monoio) that hold client
//! connections, run each one's session state machine, and hand chat work to
//! the backend through bounded lock-free queues.
