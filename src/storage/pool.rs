//! The process-wide pool of open torrent files and their memory maps.
//!
//! Holding every file of every torrent open for the torrent's life costs a
//! descriptor per file (and a mapping each, against `vm.max_map_count`):
//! a few thousand multi-file torrents reach `RLIMIT_NOFILE`. So at most
//! `[storage] max_open_files` stay open, keyed by (storage, file index);
//! opening one more closes the least recently used. A handle in use by a
//! reader or writer (an `Arc` held outside the pool) is never closed under
//! it: it is skipped, and the pool goes over budget by at most the handles
//! in use at once (a few per disk thread). A mapping written through is
//! flushed (msync) before it is closed, so a resume record saved after a
//! flush never claims data that was only in a mapping since dropped.
//! Reopening is the storage's business ([`super::TorrentStorage`]): same
//! no-link rules, and the file must be the one opened before.

use lru::LruCache;
use memmap2::MmapRaw;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// `[storage] max_open_files` unless configured: well under the usual soft
/// limit of 1,024, which also counts sockets, the state folder and logs.
pub const DEFAULT_BUDGET: usize = crate::config::DEFAULT_MAX_OPEN_FILES;

/// (storage id, file index).
pub type Key = (u64, usize);

/// One open file, and its mapping with the mmap backend.
pub struct Opened {
    pub file: File,
    pub map: Option<Mapping>,
}

/// A file's mapping, of the file's length in the torrent.
pub struct Mapping {
    pub map: MmapRaw,
    pub len: u64,
    /// A copy faulted (the file shrank under it): zero pages may sit where
    /// the file's pages were; the handle is not trusted again (see
    /// [`FilePool::discard`]).
    pub stale: AtomicBool,
    /// Written through since the last flush.
    pub dirty: AtomicBool,
}

impl Mapping {
    pub fn new(map: MmapRaw, len: u64) -> Mapping {
        Mapping { map, len, stale: AtomicBool::new(false), dirty: AtomicBool::new(false) }
    }
}

/// A handle's descriptor, for a send straight from the file.
impl std::os::fd::AsFd for Opened {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Opened {
    /// Makes what was written through the mapping durable before it goes.
    fn flush_for_close(&self) -> std::io::Result<bool> {
        match &self.map {
            Some(m) if m.dirty.swap(false, Ordering::AcqRel) && !m.stale.load(Ordering::Acquire) => {
                m.map.flush().map(|()| true)
            }
            _ => Ok(false),
        }
    }
}

pub struct FilePool {
    budget: AtomicUsize,
    open: Mutex<LruCache<Key, Arc<Opened>>>,
    /// Handles closed to make room, and of those, mappings flushed first.
    evicted: AtomicU64,
    flushed: AtomicU64,
}

/// Storage ids, never reused in a process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl FilePool {
    pub fn new(budget: usize) -> FilePool {
        FilePool {
            budget: AtomicUsize::new(budget.max(1)),
            open: Mutex::new(LruCache::unbounded()),
            evicted: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    /// The pool every storage of the process uses.
    pub fn global() -> &'static Arc<FilePool> {
        static POOL: OnceLock<Arc<FilePool>> = OnceLock::new();
        POOL.get_or_init(|| Arc::new(FilePool::new(DEFAULT_BUDGET)))
    }

    pub fn set_budget(&self, budget: usize) {
        self.budget.store(budget.max(1), Ordering::Relaxed);
        let victims = self.evict(&mut self.locked());
        self.close(victims);
    }

    pub fn budget(&self) -> usize {
        self.budget.load(Ordering::Relaxed)
    }

    /// Handles open now.
    pub fn len(&self) -> usize {
        self.locked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (handles closed to make room, mappings flushed before closing).
    pub fn evictions(&self) -> (u64, u64) {
        (self.evicted.load(Ordering::Relaxed), self.flushed.load(Ordering::Relaxed))
    }

    fn locked(&self) -> MutexGuard<'_, LruCache<Key, Arc<Opened>>> {
        crate::locks::locked(&self.open)
    }

    /// The handle for `key`, opened with `open` (outside the lock: it
    /// blocks) when not open; the least recently used others are closed to
    /// stay within budget.
    pub fn get(&self, key: Key, open: impl FnOnce() -> std::io::Result<Opened>) -> std::io::Result<Arc<Opened>> {
        if let Some(h) = self.locked().get(&key) {
            return Ok(h.clone());
        }
        let fresh = Arc::new(open()?);
        let (h, victims) = {
            let mut lru = self.locked();
            // Another thread may have opened it meanwhile: one handle per key.
            let h = lru.get_or_insert(key, || fresh.clone()).clone();
            (h, self.evict(&mut lru))
        };
        self.close(victims);
        Ok(h)
    }

    /// The handle for `key` if open, without making it more recent.
    pub fn peek(&self, key: Key) -> Option<Arc<Opened>> {
        self.locked().peek(&key).cloned()
    }

    /// Puts `h` in the place of whatever was open for `key` (a file
    /// recreated or moved): the old handle is closed once no longer in use.
    pub fn replace(&self, key: Key, h: Opened) {
        let (old, victims) = {
            let mut lru = self.locked();
            let old = lru.put(key, Arc::new(h));
            (old, self.evict(&mut lru))
        };
        // Unmapped and closed outside the lock (or by its last user).
        drop(old);
        self.close(victims);
    }

    /// Drops `old` from the pool if it is still the handle for `key` (a
    /// stale mapping): the next [`get`](Self::get) opens the file anew.
    pub fn discard(&self, key: Key, old: &Arc<Opened>) {
        let mut lru = self.locked();
        let gone = match lru.peek(&key).is_some_and(|h| Arc::ptr_eq(h, old)) {
            true => lru.pop(&key),
            false => None,
        };
        drop(lru);
        drop(gone);
    }

    /// Closes the handles of a storage going away (no flush: closing a
    /// mapping leaves its pages to the kernel, as before the pool).
    pub fn forget(&self, id: u64, files: usize) {
        let gone: Vec<_> = {
            let mut lru = self.locked();
            (0..files).filter_map(|i| lru.pop(&(id, i))).collect()
        };
        drop(gone);
    }

    /// Takes the least recently used handles not in use out of the pool
    /// until it is within budget (or only handles in use are left).
    fn evict(&self, lru: &mut LruCache<Key, Arc<Opened>>) -> Vec<Arc<Opened>> {
        let budget = self.budget();
        let mut victims = Vec::new();
        while lru.len() > budget {
            // Oldest first; only the pool's own reference means not in use.
            let Some(key) = lru.iter().rev().find(|(_, h)| Arc::strong_count(h) == 1).map(|(k, _)| *k) else {
                break;
            };
            victims.extend(lru.pop(&key));
        }
        victims
    }

    /// Flushes and closes evicted handles, outside the lock.
    fn close(&self, victims: Vec<Arc<Opened>>) {
        for h in victims {
            self.evicted.fetch_add(1, Ordering::Relaxed);
            match h.flush_for_close() {
                Ok(true) => {
                    self.flushed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "flushing a mapping before closing it"),
            }
        }
    }
}

/// Descriptors left for everything but torrent files: sockets (peers,
/// trackers, the API), state files, logs.
const RESERVE: u64 = 256;

/// The soft open-file limit is raised at most to this (the systemd unit's
/// `LimitNOFILE=`).
const RAISE_CAP: u64 = 65_536;

/// Raises the soft limit on open files toward the hard limit (at most
/// [`RAISE_CAP`]), and returns the budget of torrent files to use under
/// it: `configured`, or less where the limit would leave under
/// [`RESERVE`] for the rest (logged).
pub fn raise_fd_limit(configured: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    // Up to the hard limit (None: none), but not past RAISE_CAP: hooks
    // inherit the limit, and some programs close every descriptor up to
    // it (containers often allow a billion).
    let want = lim.maximum.map_or(RAISE_CAP, |hard| hard.min(RAISE_CAP));
    if lim.current.is_some_and(|soft| soft < want) {
        lim.current = Some(want);
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current;
    let budget = fitted_budget(configured, soft);
    if budget < configured {
        tracing::warn!(max_open_files = configured, rlimit_nofile = ?soft, using = budget,
            "[storage] max_open_files would leave too few descriptors for sockets under the open-file limit: lowered");
    }
    tracing::info!(max_open_files = budget, rlimit_nofile = ?soft, "open torrent files bounded");
    budget
}

/// `configured`, lowered to leave [`RESERVE`] descriptors under `soft`
/// (None: no limit), and never under 16.
fn fitted_budget(configured: usize, soft: Option<u64>) -> usize {
    let room = soft.map_or(u64::MAX, |s| s.saturating_sub(RESERVE).max(16));
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::fitted_budget;

    #[test]
    fn the_budget_leaves_room_for_sockets_under_the_limit() {
        assert_eq!(fitted_budget(512, Some(1024)), 512);
        assert_eq!(fitted_budget(512, Some(524_288)), 512);
        assert_eq!(fitted_budget(900, Some(1024)), 768);
        assert_eq!(fitted_budget(512, Some(64)), 16);
        assert_eq!(fitted_budget(512, None), 512);
    }
}
