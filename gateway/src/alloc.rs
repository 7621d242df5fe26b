//! The allocator's housekeeping on the gateway's long-lived threads.
//!
//! mimalloc returns the pages a thread freed to the system only when that
//! thread calls into the allocator again after the purge delay. A login
//! burst allocates and frees a great deal on the shards and the backend
//! workers, which then go quiet (an idle connection costs no allocation
//! until its next heartbeat), so what the burst freed stayed resident:
//! ~490 B or ~540 B per idle connection at 19,000 depending on the run
//! (docs/benchmarks.md, "Gateway: memory per idle authenticated
//! connection"). Purging on every free (`MIMALLOC_PURGE_DELAY=0`) fixed the
//! figure but cost 2–6 % more CPU per fan-out delivery; a collect once a
//! second on each of those threads returned the same memory at no CPU cost
//! measurable on 1:1 chat (fan-out not measured with it).

/// How often a thread collects, at most.
pub const COLLECT_EVERY_MS: u64 = 1_000;

/// Returns what this thread's heap freed (and the purge delay has passed
/// for) to the system. Not forced: pages still in use stay.
pub fn collect() {
    // SAFETY: `mi_collect` has no preconditions; it works on the calling
    // thread's heap (with dhat as the global allocator that heap is empty).
    unsafe { libmimalloc_sys::mi_collect(false) }
}
