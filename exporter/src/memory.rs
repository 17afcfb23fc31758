//! Keeping the resident size near what is in use after large scrapes.
//!
//! A scrape of hundreds of containers builds megabytes of short-lived
//! label strings in the collectors' blocking threads and a page of the
//! same order. glibc keeps what is freed: each thread that contends for the
//! allocator gets an arena of its own (up to 8 per core), memory freed in
//! the middle of an arena stays resident, and after a large buffer is
//! freed glibc raises its mmap threshold so that later large buffers come
//! from the arenas too. Without the measures below, ten concurrent scrapes
//! of a 768 KB page left the exporter at 51.6 MB against 15 MB steady
//! (BENCHMARKS.md, "scrape memory").

use std::sync::atomic::{AtomicBool, Ordering};

/// Buffers from this size on are mapped on their own and unmapped when
/// freed (glibc's own default, made fixed: setting it turns off the
/// dynamic raise described above).
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Arenas for the whole process. The work that allocates (collectors in
/// the blocking pool, encoding on the runtime thread) gains nothing from
/// more arenas than cores on a 2-core node, and every extra arena keeps its
/// own freed memory.
#[cfg(target_env = "gnu")]
const ARENAS: libc::c_int = 2;

/// Sets the allocator up; call once at start, before threads are spawned
/// (arenas are created lazily, so later calls still help, but less).
pub fn configure_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes glibc's allocator parameters; a refusal
    // (returns 0) leaves the defaults, which only cost memory.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

static TRIMMING: AtomicBool = AtomicBool::new(false);

/// Hands the pages freed in the arenas back to the kernel, in the
/// background (it walks every arena under its lock: about a millisecond
/// for tens of megabytes) and never twice at once.
pub fn release_freed() {
    if TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    let trim = || {
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only walks glibc's own arenas.
        unsafe {
            libc::malloc_trim(0);
        }
        TRIMMING.store(false, Ordering::Release);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(trim);
        }
        Err(_) => trim(),
    }
}
