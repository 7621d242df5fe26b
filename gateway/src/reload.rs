//! Reload on SIGHUP: parts whose inputs live in files (TLS certificates,
//! allow/deny lists, word lists) register a reloader here once at start; a
//! SIGHUP to `tern serve` runs every reloader in registration order.
//!
//! A reloader re-reads its files and swaps the new state in (e.g. an
//! `arc-swap` the shards read); on error it keeps the old state and returns
//! the error, which is logged with the reloader's name. One failed reloader
//! does not stop the others.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

type Reloader = Box<dyn Fn() -> anyhow::Result<()> + Send + Sync>;

static RELOADERS: Mutex<Vec<(&'static str, Reloader)>> = Mutex::new(Vec::new());
static RELOADS: AtomicU64 = AtomicU64::new(0);

/// Registers `reload` under `name` (a config section, e.g. "tls"): it runs
/// on every SIGHUP from now on. Register once per process part; there is no
/// removal (a part lives as long as the process).
pub fn on_hup(name: &'static str, reload: impl Fn() -> anyhow::Result<()> + Send + Sync + 'static) {
    RELOADERS.lock().push((name, Box::new(reload)));
}

/// Runs every registered reloader (what a SIGHUP does) and returns how many
/// failed; each failure is logged with its name and the reason.
pub fn reload_all() -> usize {
    let reloaders = RELOADERS.lock();
    let mut failed = 0;
    for (name, reload) in reloaders.iter() {
        match reload() {
            Ok(()) => tracing::info!(part = name, "reloaded"),
            Err(e) => {
                failed += 1;
                tracing::warn!(part = name, error = %format!("{e:#}"), "reload failed; keeping the previous state");
            }
        }
    }
    RELOADS.fetch_add(1, Ordering::Relaxed);
    failed
}

/// How many SIGHUP reloads have run (tests wait on it).
pub fn reloads() -> u64 {
    RELOADS.load(Ordering::Relaxed)
}
