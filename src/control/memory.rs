//! Memory watch: samples the process's resident memory and, above
//! `memory.soft_limit`, sheds the coldest last-good copies.
//!
//! "Coldest" is the oldest copy: every fresh answer re-stores its copy, so
//! a copy's age is the time since its path was last fetched with success.
//! The allocator gives memory back to the system lazily, so after shedding
//! the watch waits 10 s before it judges the RSS again, instead of emptying
//! the cache chasing a number that is still falling.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::app::MemoryFigures;
use crate::cache::Cache;

/// The resident set size in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = procfs::process::Process::myself().ok()?.statm().ok()?;
    Some(statm.resident * procfs::page_size())
}

#[derive(Default)]
pub struct MemoryWatch {
    last_sample: Option<Instant>,
    cooldown_until: Option<Instant>,
    /// Last "cache is empty" warning (at most one a minute).
    warned_empty: Option<Instant>,
}

const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const COOLDOWN: Duration = Duration::from_secs(10);

impl MemoryWatch {
    /// Called from the control loop with what the watch acts on: the
    /// cache it sheds from, the figures it writes, the configured limit.
    /// Samples at most once a second.
    pub fn tick(&mut self, cache: &Cache, figures: &MemoryFigures, soft_limit: Option<u64>) {
        let now = Instant::now();
        if self.last_sample.is_some_and(|t| now - t < SAMPLE_EVERY) {
            return;
        }
        self.last_sample = Some(now);
        let Some(rss) = rss_bytes() else { return };
        figures.rss.store(rss, Ordering::Relaxed);
        let limit = soft_limit.unwrap_or(0);
        crate::metrics::metrics()
            .memory_soft_limit_bytes
            .set(limit as i64);
        if limit == 0 || rss <= limit {
            return;
        }
        if self.cooldown_until.is_some_and(|t| now < t) {
            return;
        }
        let excess = rss - limit;
        let (entries, bytes) = cache.shed_oldest(excess);
        if entries > 0 {
            self.cooldown_until = Some(now + COOLDOWN);
            let m = figures;
            m.shed_entries.fetch_add(entries, Ordering::Relaxed);
            m.shed_bytes.fetch_add(bytes, Ordering::Relaxed);
            m.last_shed_unix
                .store(crate::clock::unix_now(), Ordering::Relaxed);
            crate::metrics::metrics()
                .memory_shed_entries_total
                .inc_by(entries);
            log::warn!(
                "memory: resident {} MiB is above memory.soft_limit {} MiB; shed the {entries} oldest last-good copies ({} KiB)",
                rss >> 20,
                limit >> 20,
                bytes >> 10
            );
        } else if self
            .warned_empty
            .is_none_or(|t| now - t > Duration::from_secs(60))
        {
            self.warned_empty = Some(now);
            log::warn!(
                "memory: resident {} MiB is above memory.soft_limit {} MiB and the last-good cache is empty",
                rss >> 20,
                limit >> 20
            );
        }
    }
}
