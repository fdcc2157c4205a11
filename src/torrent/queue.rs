//! The download queue: which incomplete torrents may download at once
//! (`[limits] max_active_downloads`), in an order the user can change (the
//! API's `topPrio`, `bottomPrio`, `increasePrio`, `decreasePrio`).
//!
//! Why not a semaphore: a semaphore serves waiters in the order they came,
//! and the user's order is another. Here every incomplete torrent has a
//! place in one list; a free slot goes to the first torrent of the list
//! that waits for one. A torrent downloading keeps its slot when others
//! move ahead of it (no preemption): it yields it when done, stalled or
//! paused, as before. The list is written to `state_dir/queue` (one hex
//! hash a line) on every change, so the order survives a restart.
//!
//! A forced torrent (the API's `setForceStart`) gets a slot at once,
//! outside the limit: forced slots are not counted against it, so the
//! others keep theirs and their order. Cleared, a running torrent keeps its
//! slot (now counted); a waiting one waits its turn again.

use crate::locks::locked;
use crate::types::InfoHash;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// How a torrent moves in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Top,
    Bottom,
    Up,
    Down,
}

pub struct DownloadQueue {
    state: Arc<Mutex<State>>,
    changed: Notify,
    /// Where the order is kept; None in tests that keep nothing.
    file: Option<PathBuf>,
    /// A writer of the order is under way: changes meanwhile are written
    /// by it (one file write for a burst of changes, e.g. at start).
    writing: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    /// Every incomplete torrent, first to download first.
    order: Vec<InfoHash>,
    /// The order read at start: restored torrents join at their rank.
    saved: HashMap<InfoHash, usize>,
    /// Holding a slot, or granted one and about to take it.
    running: HashSet<InfoHash>,
    waiting: HashSet<InfoHash>,
    /// Gave up their slot, stalled: behind every other waiting torrent
    /// until they get one again.
    yielded: HashSet<InfoHash>,
    /// Forced: a slot at once, not counted against `limit`. Kept while
    /// complete too (a recheck may make the torrent download again).
    forced: HashSet<InfoHash>,
    /// Downloads at once; 0 = no limit (queueing off).
    limit: usize,
    /// Counts changes of `order`.
    version: u64,
}

impl State {
    /// Gives the free slots to the first waiting torrents: those not
    /// yielded first, then by their place in the order. Once per change,
    /// not once per waiter.
    fn grant(&mut self) {
        let forced: Vec<InfoHash> =
            self.waiting.intersection(&self.forced).filter(|h| !self.running.contains(h)).copied().collect();
        self.running.extend(forced);
        let counted = self.running.iter().filter(|h| !self.forced.contains(h)).count();
        let mut free = match self.limit {
            0 => usize::MAX,
            n => n.saturating_sub(counted),
        };
        if free == 0 || self.waiting.len() <= self.running.intersection(&self.waiting).count() {
            return;
        }
        let rank: HashMap<&InfoHash, usize> = self.order.iter().enumerate().map(|(i, h)| (h, i)).collect();
        let mut next: Vec<(bool, usize, InfoHash)> = self
            .waiting
            .iter()
            .filter(|h| !self.running.contains(h))
            .map(|h| (self.yielded.contains(h), rank.get(h).copied().unwrap_or(usize::MAX), *h))
            .collect();
        next.sort_unstable();
        for (_, _, h) in next {
            if free == 0 {
                break;
            }
            self.running.insert(h);
            free -= 1;
        }
    }
}

/// A download slot, given back when dropped.
pub struct Slot {
    queue: Arc<DownloadQueue>,
    hash: InfoHash,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = locked(&self.queue.state);
        s.running.remove(&self.hash);
        s.grant();
        drop(s);
        self.queue.changed.notify_waiters();
    }
}

/// A torrent's wait for a slot; given up when dropped before the slot was
/// taken (a slot granted meanwhile goes to the next).
struct Waiting<'a> {
    queue: &'a DownloadQueue,
    hash: InfoHash,
    taken: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = locked(&self.queue.state);
        s.waiting.remove(&self.hash);
        if !self.taken {
            s.running.remove(&self.hash);
            s.grant();
        }
        drop(s);
        self.queue.changed.notify_waiters();
    }
}

impl DownloadQueue {
    /// A queue of `limit` slots (0: none), its order read from `file`.
    /// Blocking (reads the file).
    pub fn new(limit: usize, file: Option<PathBuf>) -> DownloadQueue {
        let text = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        let saved = text.lines().filter_map(|l| InfoHash::parse(l.trim())).enumerate().map(|(i, h)| (h, i)).collect();
        DownloadQueue {
            state: Arc::new(Mutex::new(State { saved, limit, ..State::default() })),
            changed: Notify::new(),
            file,
            writing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Queueing is on: a limit of downloads at once.
    pub fn enabled(&self) -> bool {
        locked(&self.state).limit > 0
    }

    /// A new limit (a config reload, `app/setPreferences`); downloads
    /// running keep their slots.
    pub fn set_limit(&self, limit: usize) {
        let mut s = locked(&self.state);
        s.limit = limit;
        s.grant();
        drop(s);
        self.changed.notify_waiters();
    }

    /// An incomplete torrent takes its place: its saved rank after a
    /// restart, else the end.
    pub fn join(&self, hash: InfoHash) {
        let mut s = locked(&self.state);
        if s.order.contains(&hash) {
            return;
        }
        let rank = s.saved.get(&hash).copied().unwrap_or(usize::MAX);
        let at = s.order.iter().position(|h| s.saved.get(h).copied().unwrap_or(usize::MAX) > rank);
        let at = at.unwrap_or(s.order.len());
        s.order.insert(at, hash);
        self.changed_order(s);
    }

    /// Forces a torrent's start (see the module's header), or clears it.
    pub fn set_forced(&self, hash: InfoHash, forced: bool) {
        let mut s = locked(&self.state);
        let changed = if forced { s.forced.insert(hash) } else { s.forced.remove(&hash) };
        if !changed {
            return;
        }
        s.grant();
        drop(s);
        self.changed.notify_waiters();
    }

    /// A download gave up its slot for want of data: the others waiting
    /// go first.
    pub fn yielded(&self, hash: InfoHash) {
        locked(&self.state).yielded.insert(hash);
    }

    /// A torrent complete or removed leaves the queue.
    pub fn leave(&self, hash: &InfoHash) {
        let mut s = locked(&self.state);
        let Some(i) = s.order.iter().position(|h| h == hash) else { return };
        s.order.remove(i);
        s.saved.remove(hash);
        s.yielded.remove(hash);
        self.changed_order(s);
    }

    /// Moves these torrents (those in the queue; others are skipped), as
    /// qBittorrent does: `Top` keeps their order among themselves.
    pub fn reorder(&self, hashes: &[InfoHash], how: Move) {
        let mut s = locked(&self.state);
        let wanted: HashSet<&InfoHash> = hashes.iter().collect();
        let mut picked: Vec<InfoHash> = s.order.iter().filter(|h| wanted.contains(h)).copied().collect();
        match how {
            Move::Top | Move::Bottom => {
                s.order.retain(|h| !wanted.contains(h));
                if how == Move::Top {
                    picked.extend(s.order.iter().copied());
                    s.order = picked;
                } else {
                    s.order.extend(picked);
                }
            }
            Move::Up => {
                for i in 1..s.order.len() {
                    if wanted.contains(&s.order[i]) && !wanted.contains(&s.order[i - 1]) {
                        s.order.swap(i, i - 1);
                    }
                }
            }
            Move::Down => {
                for i in (0..s.order.len().saturating_sub(1)).rev() {
                    if wanted.contains(&s.order[i]) && !wanted.contains(&s.order[i + 1]) {
                        s.order.swap(i, i + 1);
                    }
                }
            }
        }
        self.changed_order(s);
    }

    /// Each queued torrent's place, from 0.
    pub fn ranks(&self) -> HashMap<InfoHash, usize> {
        locked(&self.state).order.iter().enumerate().map(|(i, h)| (*h, i)).collect()
    }

    /// Waits for a slot, given by the queue's order. Dropping the future
    /// gives up the wait.
    pub async fn acquire(self: &Arc<Self>, hash: InfoHash) -> Slot {
        self.join(hash);
        let mut waiting = Waiting { queue: self, hash, taken: false };
        {
            let mut s = locked(&self.state);
            s.waiting.insert(hash);
            s.grant();
        }
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = locked(&self.state);
                if s.running.contains(&hash) {
                    s.yielded.remove(&hash);
                    waiting.taken = true;
                    return Slot { queue: self.clone(), hash };
                }
            }
            notified.await;
        }
    }

    /// Grants what the change frees, wakes the waiters, and has the order
    /// written (off the async workers, one writer at a time).
    fn changed_order(&self, mut s: std::sync::MutexGuard<'_, State>) {
        s.version += 1;
        s.grant();
        drop(s);
        self.changed.notify_waiters();
        let Some(file) = self.file.clone() else { return };
        if self.writing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (state, writing) = (self.state.clone(), self.writing.clone());
        let write = move || write_order(&state, &writing, &file);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(write)),
            Err(_) => write(),
        }
    }
}

/// Writes the order until no change came during the write. Blocking.
fn write_order(state: &Mutex<State>, writing: &AtomicBool, file: &Path) {
    loop {
        let (version, text) = {
            let s = locked(state);
            (s.version, s.order.iter().map(|h| h.hex() + "\n").collect::<String>())
        };
        let tmp = file.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, file)) {
            tracing::warn!(file = %file.display(), error = %e, "cannot save the download queue's order");
        }
        writing.store(false, Ordering::Release);
        let changed = locked(state).version != version;
        if !changed || writing.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> InfoHash {
        InfoHash([n; 20])
    }

    #[tokio::test]
    async fn slots_go_by_the_queue_order_not_by_arrival() {
        let q = Arc::new(DownloadQueue::new(1, None));
        let first = q.acquire(h(1)).await;
        q.join(h(2));
        q.join(h(3));
        q.reorder(&[h(3)], Move::Top);
        assert_eq!(q.ranks()[&h(3)], 0);
        let (q2, q3) = (q.clone(), q.clone());
        let two = tokio::spawn(async move { q2.acquire(h(2)).await });
        let three = tokio::spawn(async move { q3.acquire(h(3)).await });
        tokio::task::yield_now().await;
        drop(first);
        let got = three.await.unwrap();
        assert!(!two.is_finished(), "the second in the queue waits");
        drop(got);
        two.await.unwrap();
    }

    #[tokio::test]
    async fn a_stalled_download_goes_behind_the_others_waiting() {
        let q = Arc::new(DownloadQueue::new(1, None));
        let first = q.acquire(h(1)).await;
        let q2 = q.clone();
        let two = tokio::spawn(async move { q2.acquire(h(2)).await });
        tokio::task::yield_now().await;
        q.yielded(h(1));
        drop(first);
        let q1 = q.clone();
        let one = tokio::spawn(async move { q1.acquire(h(1)).await });
        let wait = std::time::Duration::from_secs(5);
        let got = tokio::time::timeout(wait, two).await.expect("the one that stalled went first").unwrap();
        assert!(!one.is_finished());
        drop(got);
        one.await.unwrap();
    }

    #[tokio::test]
    async fn a_forced_torrent_starts_outside_the_limit() {
        let q = Arc::new(DownloadQueue::new(1, None));
        let first = q.acquire(h(1)).await;
        let (q2, q3) = (q.clone(), q.clone());
        let two = tokio::spawn(async move { q2.acquire(h(2)).await });
        let three = tokio::spawn(async move { q3.acquire(h(3)).await });
        tokio::task::yield_now().await;
        q.set_forced(h(3), true);
        let wait = std::time::Duration::from_secs(5);
        let forced = tokio::time::timeout(wait, three).await.expect("the forced one starts at once").unwrap();
        assert!(!two.is_finished(), "the limit still holds for the others");
        // The forced slot is not counted: the next slot freed goes to 2.
        drop(first);
        let second = tokio::time::timeout(wait, two).await.expect("2 got the freed slot").unwrap();
        // Cleared while running: it keeps its slot, now counted, so a
        // fourth waits for one of them.
        q.set_forced(h(3), false);
        let q4 = q.clone();
        let four = tokio::spawn(async move { q4.acquire(h(4)).await });
        tokio::task::yield_now().await;
        drop(second);
        tokio::task::yield_now().await;
        assert!(!four.is_finished(), "3 counts against the limit again");
        drop(forced);
        tokio::time::timeout(wait, four).await.expect("4 gets 3's slot").unwrap();
    }

    #[test]
    fn moves_and_a_restart_keep_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("queue");
        let q = DownloadQueue::new(2, Some(file.clone()));
        for n in 1..=4 {
            q.join(h(n));
        }
        q.reorder(&[h(4)], Move::Up);
        q.reorder(&[h(1)], Move::Down);
        q.reorder(&[h(2)], Move::Bottom);
        let order = |q: &DownloadQueue| {
            let mut r: Vec<_> = q.ranks().into_iter().collect();
            r.sort_by_key(|(_, i)| *i);
            r.into_iter().map(|(h, _)| h.0[0]).collect::<Vec<_>>()
        };
        assert_eq!(order(&q), [1, 4, 3, 2]);
        q.leave(&h(3));
        let again = DownloadQueue::new(2, Some(file));
        for n in [2, 5, 1, 4] {
            again.join(h(n));
        }
        assert_eq!(order(&again), [1, 4, 2, 5], "restored at their ranks, the new one last");
    }
}
