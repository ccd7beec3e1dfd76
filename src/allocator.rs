//! When freed memory goes back to the operating system. The binary's allocator is mimalloc
//! (`main.rs`); these calls reach it directly, and are harmless where it is linked but not the
//! global allocator (tests): they then act on an empty heap.
//!
//! mimalloc gives a thread's freed pages back 10 ms after they are freed, but only when that thread
//! next allocates. Two commands want something else:
//! - the stream frees a landing's parsed batch and faults the same amount in again a second later,
//!   so it keeps freed memory longer ([`keep_freed_memory`]);
//! - `ingest fhir` frees each chunk's resources on a decoding thread (`rayon`), which then waits
//!   while the writer merges silver; what it freed stayed resident through the merges of the
//!   last chunks, where the run's memory peaks. [`give_back_freed_memory`] returns it at once.

use std::ffi::{c_int, c_long};
use std::sync::atomic::{AtomicBool, Ordering};

// The functions below are mimalloc's C API, which the `mimalloc` crate links but does not expose.
// Naming the crate links it into every binary of this library, tests included, where nothing else
// would (only `main.rs` and the benches make it the allocator).
extern crate mimalloc as _;

// `mi_option_purge_delay` in mimalloc's include/mimalloc.h (libmimalloc-sys 0.1.49, the same in its
// v2, which we link, and v3).
const MI_OPTION_PURGE_DELAY: c_int = 15;

unsafe extern "C" {
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
}

/// Set once the process keeps freed memory: [`give_back_freed_memory`] then does nothing.
static KEEPING: AtomicBool = AtomicBool::new(false);

/// Keeps freed memory 3 s, longer than a stream landing, instead of 10 ms: a stream landing frees
/// its batch's parsed resources (hundreds of MB) and the next one faulted every page in again,
/// which cost the stream a quarter of its throughput (BENCHMARKS.md, issue 5). The other commands
/// keep mimalloc's default, which their peak-memory figures were measured with.
/// `MIMALLOC_PURGE_DELAY` in the environment still decides.
pub fn keep_freed_memory() {
    KEEPING.store(true, Ordering::Relaxed);
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: both only read or write mimalloc's option table; any value is valid. The call is
    // skipped unless it reads the documented default, 10.
    unsafe {
        if mi_option_get(MI_OPTION_PURGE_DELAY) == 10 {
            mi_option_set(MI_OPTION_PURGE_DELAY, 3000);
        }
    }
}

/// Returns what the calling thread freed to the operating system now, unless the process keeps
/// freed memory. For a thread that has just freed a large batch and may then wait: it lowers the
/// peak of `ingest fhir` on the bench's 1 GB file in no measurable time (BENCHMARKS.md, issue 25).
pub fn give_back_freed_memory() {
    if KEEPING.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: collects the calling thread's mimalloc heap; no pointer is handed over.
    unsafe { mi_collect(true) }
}
