//! Gives freed heap memory back to the system after a burst of load.
//!
//! With one malloc arena (see `limit_malloc_arenas` in main) the memory of
//! thousands of ended streams and connections is free inside the heap but
//! stays resident: glibc returns only the top of the heap by itself, and
//! the holes between live blocks stay mapped. So when the agent's load
//! (connections plus watches) has fallen well below its recent high, this
//! asks glibc to release every free page (`malloc_trim`). That costs a walk
//! of the free lists under the allocator's lock, so it is done only after
//! such a fall, never on a timer alone.
//!
//! When the agent's memory is locked (`mlockall`, `lock_memory = true`)
//! the kernel refuses to drop locked pages (`madvise` fails with EINVAL),
//! so only the top of the heap goes back; the rest stays resident and is
//! reused by later streams. The `[limits]` caps are what bound that
//! high-water mark.

use std::sync::Arc;
use std::time::Duration;

use keyward::agent::Agent;

/// How often the load is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How far the load must fall below its high since the last trim.
const FALL: usize = 32;

/// Runs for as long as the agent's runtime.
pub async fn give_back_after_load_falls(agent: Arc<Agent>) {
    let mut high = 0usize;
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    loop {
        ticks.tick().await;
        let load = agent.connections().total() + agent.watch_count();
        high = high.max(load);
        if high >= load + FALL {
            high = load;
            let before = rss_kib();
            let _ = tokio::task::spawn_blocking(trim).await;
            tracing::debug!(
                load,
                rss_kib_before = before,
                rss_kib_after = rss_kib(),
                "gave free heap memory back"
            );
        }
    }
}

/// `malloc_trim(0)`: every free page of the heap back to the system.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own
    // arenas, under the allocator's lock; no pointer is handed to it.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The resident set, in KiB (0 if unreadable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_kib())
}

fn page_kib() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(bytes)) if bytes > 0 => bytes as u64 / 1024,
        _ => 4,
    }
}
