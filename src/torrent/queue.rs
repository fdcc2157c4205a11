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

use crate::locks::locked;
use crate::types::InfoHash;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
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
    state: Mutex<State>,
    changed: Notify,
    /// Where the order is kept; None in tests that keep nothing.
    file: Option<PathBuf>,
    /// The newest order written, so an older write never lands last.
    written: Arc<Mutex<u64>>,
}

#[derive(Default)]
struct State {
    /// Every incomplete torrent, first to download first.
    order: Vec<InfoHash>,
    /// The order read at start: restored torrents join at their rank.
    saved: HashMap<InfoHash, usize>,
    running: HashSet<InfoHash>,
    waiting: HashSet<InfoHash>,
    /// Gave up their slot, stalled: behind every other waiting torrent
    /// until they get one again.
    yielded: HashSet<InfoHash>,
    /// Downloads at once; 0 = no limit (queueing off).
    limit: usize,
    /// Counts changes of `order`.
    version: u64,
}

impl State {
    /// Whether `hash`, waiting, is among the first waiting torrents the
    /// free slots go to.
    fn may_start(&self, hash: &InfoHash) -> bool {
        if self.limit == 0 {
            return true;
        }
        let free = self.limit.saturating_sub(self.running.len());
        let key = |h: &InfoHash| (self.yielded.contains(h), self.order.iter().position(|x| x == h));
        let mine = key(hash);
        let ahead = self.waiting.iter().filter(|h| *h != hash && key(h) < mine).count();
        free > 0 && ahead < free
    }
}

/// A download slot, given back when dropped.
pub struct Slot {
    queue: Arc<DownloadQueue>,
    hash: InfoHash,
}

impl Drop for Slot {
    fn drop(&mut self) {
        locked(&self.queue.state).running.remove(&self.hash);
        self.queue.changed.notify_waiters();
    }
}

/// Takes a torrent out of `waiting` when its wait ends, slot or not.
struct Waiting<'a>(&'a DownloadQueue, InfoHash);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        locked(&self.0.state).waiting.remove(&self.1);
        self.0.changed.notify_waiters();
    }
}

impl DownloadQueue {
    /// A queue of `limit` slots (0: none), its order read from `file`.
    /// Blocking (reads the file).
    pub fn new(limit: usize, file: Option<PathBuf>) -> DownloadQueue {
        let text = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        let saved = text.lines().filter_map(|l| InfoHash::parse(l.trim())).enumerate().map(|(i, h)| (h, i)).collect();
        DownloadQueue {
            state: Mutex::new(State { saved, limit, ..State::default() }),
            changed: Notify::new(),
            file,
            written: Arc::new(Mutex::new(0)),
        }
    }

    /// Queueing is on: a limit of downloads at once.
    pub fn enabled(&self) -> bool {
        locked(&self.state).limit > 0
    }

    /// A new limit (a config reload, `app/setPreferences`); downloads
    /// running keep their slots.
    pub fn set_limit(&self, limit: usize) {
        locked(&self.state).limit = limit;
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
        let mut picked: Vec<InfoHash> = s.order.iter().filter(|h| hashes.contains(h)).copied().collect();
        match how {
            Move::Top | Move::Bottom => {
                s.order.retain(|h| !picked.contains(h));
                if how == Move::Top {
                    picked.extend(s.order.iter().copied());
                    s.order = picked;
                } else {
                    s.order.extend(picked);
                }
            }
            Move::Up => {
                for h in picked {
                    let i = s.order.iter().position(|x| *x == h).unwrap_or(0);
                    if i > 0 {
                        s.order.swap(i, i - 1);
                    }
                }
            }
            Move::Down => {
                picked.reverse();
                for h in picked {
                    let i = s.order.iter().position(|x| *x == h).unwrap_or(0);
                    if i + 1 < s.order.len() {
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

    /// Waits for a slot, first come by the queue's order. Dropping the
    /// future gives up the wait.
    pub async fn acquire(self: &Arc<Self>, hash: InfoHash) -> Slot {
        self.join(hash);
        let _waiting = Waiting(self, hash);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = locked(&self.state);
                s.waiting.insert(hash);
                if s.may_start(&hash) {
                    s.running.insert(hash);
                    s.yielded.remove(&hash);
                    return Slot { queue: self.clone(), hash };
                }
            }
            notified.await;
        }
    }

    /// Wakes the waiters and writes the order (off the async workers).
    fn changed_order(&self, mut s: std::sync::MutexGuard<'_, State>) {
        s.version += 1;
        let (version, text) = (s.version, s.order.iter().map(|h| h.hex() + "\n").collect::<String>());
        drop(s);
        self.changed.notify_waiters();
        let Some(file) = self.file.clone() else { return };
        let write = move |written: &Mutex<u64>| {
            let mut last = locked(written);
            if *last >= version {
                return;
            }
            let tmp = file.with_extension("tmp");
            let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &file));
            match r {
                Ok(()) => *last = version,
                Err(e) => tracing::warn!(file = %file.display(), error = %e, "cannot save the download queue's order"),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let written = self.written.clone();
                rt.spawn_blocking(move || write(&written));
            }
            Err(_) => write(&self.written),
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
