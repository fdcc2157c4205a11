//! The session's registry: every torrent and magnet by info hash, one slot
//! each, and what must stay in step with the slots.
//!
//! Three things used to be kept by hand around a bare map, and each could
//! go wrong on a path someone forgot:
//! * A slot is reserved ([`Entry::Reserved`]) while an add or a removal
//!   awaits. The reservation is a [`Reservation`] guard: dropped without
//!   its entry put in place (the add failed, returned early, or its future
//!   was dropped), it frees the slot, so nothing is left behind.
//! * An encrypted incoming connection names its torrent by
//!   HASH('req2', info hash) only. The index of those is updated on every
//!   insert and removal, so [`Slots::find_req2`] is one map look-up instead
//!   of one SHA-1 per torrent under the lock.
//! * What the session keeps beside a slot (the tracker announce book) hears
//!   of every hash that enters or leaves, through the [`SlotEvent`] callback
//!   given at creation; nothing else has to remember to clean up.
//!
//! Reading goes through `Deref` to the map (`get`, `iter`, `keys`,
//! `values`, `contains_key`, `len`); changing goes through [`Slots`]'s own
//! `insert`, `remove` and `get_mut`, which keep the index and the events.

use super::entry::Entry;
use crate::types::InfoHash;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A hash entering or leaving the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotEvent {
    Entered(InfoHash),
    Left(InfoHash),
}

type Listener = Box<dyn Fn(SlotEvent) + Send + Sync>;

/// The registry: its slots behind one lock.
pub(super) struct Registry {
    slots: Mutex<Slots>,
    /// Numbers reservations, so that a guard only ever frees its own.
    tickets: AtomicU64,
}

/// The slots, locked: the entries, the req2 index and the reservations.
pub(super) struct Slots {
    entries: HashMap<InfoHash, Entry>,
    /// HASH('req2', info hash) -> info hash, for every key of `entries`.
    req2: HashMap<[u8; 20], InfoHash>,
    /// The ticket of the guard holding each reserved slot.
    reserved: HashMap<InfoHash, u64>,
    listener: Listener,
}

/// A reserved slot, freed on drop unless an entry other than a reservation
/// was put in it meanwhile (see [`Reservation::commit`]).
#[must_use = "a reservation frees its slot when dropped"]
pub(super) struct Reservation<'r> {
    registry: &'r Registry,
    hash: InfoHash,
    ticket: u64,
}

impl Registry {
    /// An empty registry telling `listener` of every hash entering or
    /// leaving it. The listener runs under the registry's lock: it may
    /// take locks that come after it, never the registry's.
    pub fn new(listener: impl Fn(SlotEvent) + Send + Sync + 'static) -> Registry {
        let slots = Slots {
            entries: HashMap::new(),
            req2: HashMap::new(),
            reserved: HashMap::new(),
            listener: Box::new(listener),
        };
        Registry { slots: Mutex::new(slots), tickets: AtomicU64::new(1) }
    }

    pub fn lock(&self) -> MutexGuard<'_, Slots> {
        crate::locks::locked(&self.slots)
    }

    /// Reserves `hash`'s slot under a lock already held, claiming `claim`
    /// (a name in the download folder) meanwhile; returns what the slot
    /// held before (a magnet becoming its torrent, say).
    pub fn reserve<'r>(
        &'r self,
        slots: &mut Slots,
        hash: InfoHash,
        claim: Option<String>,
    ) -> (Reservation<'r>, Option<Entry>) {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let before = slots.insert(hash, Entry::Reserved(claim));
        slots.reserved.insert(hash, ticket);
        (Reservation { registry: self, hash, ticket }, before)
    }

    /// Takes an entry out for a change that awaits, leaving its slot
    /// reserved (claiming the entry's name); none if the slot is empty or
    /// reserved already.
    pub fn take(&self, hash: &InfoHash) -> Option<(Reservation<'_>, Entry)> {
        let mut slots = self.lock();
        let claim = match slots.get(hash)? {
            Entry::Reserved(_) => return None,
            e => e.claimed_name().map(str::to_string),
        };
        let (reservation, entry) = self.reserve(&mut slots, *hash, claim);
        Some((reservation, entry?))
    }
}

impl Reservation<'_> {
    /// Puts `entry` in the slot; the reservation ends.
    pub fn commit(self, entry: Entry) {
        let mut slots = self.registry.lock();
        self.commit_in(&mut slots, entry);
    }

    /// [`Reservation::commit`] under a lock already held.
    pub fn commit_in(self, slots: &mut Slots, entry: Entry) {
        slots.insert(self.hash, entry);
        // The insert ended the reservation, and the drop would take the
        // lock the caller holds: it must not run.
        std::mem::forget(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        // A panic poisoned the lock: panicking again here would abort.
        let Ok(mut slots) = self.registry.slots.lock() else { return };
        if slots.reserved.get(&self.hash) == Some(&self.ticket) {
            slots.remove(&self.hash);
        }
    }
}

impl std::ops::Deref for Slots {
    type Target = HashMap<InfoHash, Entry>;

    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl Slots {
    /// Puts `entry` in `hash`'s slot; returns what was there. Putting
    /// anything but a reservation ends the slot's reservation.
    pub fn insert(&mut self, hash: InfoHash, entry: Entry) -> Option<Entry> {
        if !matches!(entry, Entry::Reserved(_)) {
            self.reserved.remove(&hash);
        }
        let before = self.entries.insert(hash, entry);
        if before.is_none() {
            self.req2.insert(crate::mse::req2(&hash.0), hash);
            (self.listener)(SlotEvent::Entered(hash));
        }
        before
    }

    /// Empties `hash`'s slot; returns what was there.
    pub fn remove(&mut self, hash: &InfoHash) -> Option<Entry> {
        let entry = self.entries.remove(hash)?;
        self.reserved.remove(hash);
        self.req2.remove(&crate::mse::req2(&hash.0));
        (self.listener)(SlotEvent::Left(*hash));
        Some(entry)
    }

    pub fn get_mut(&mut self, hash: &InfoHash) -> Option<&mut Entry> {
        self.entries.get_mut(hash)
    }

    /// The info hash whose HASH('req2', ·) is `req2`: how an encrypted
    /// incoming connection names its torrent (or magnet).
    pub fn find_req2(&self, req2: &[u8; 20]) -> Option<InfoHash> {
        self.req2.get(req2).copied()
    }

    /// Entries in the req2 index (equal to `len()`; for tests).
    #[cfg(test)]
    fn indexed(&self) -> usize {
        self.req2.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::pace::{AnnounceBook, FLOOR_SECS};
    use std::future::Future;
    use std::sync::Arc;

    fn hash(i: u32) -> InfoHash {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(&i.to_be_bytes());
        h[19] = 0xa5;
        InfoHash(h)
    }

    fn quiet() -> Registry {
        Registry::new(|_| {})
    }

    #[test]
    fn a_reservation_dropped_uncommitted_frees_its_slot() {
        let registry = quiet();
        let h = hash(1);
        {
            let mut slots = registry.lock();
            let (r, before) = registry.reserve(&mut slots, h, Some("name".into()));
            assert!(before.is_none());
            assert!(matches!(slots.get(&h), Some(Entry::Reserved(Some(n))) if n == "name"));
            drop(slots);
            drop(r);
        }
        let slots = registry.lock();
        assert!(slots.is_empty(), "nothing left behind");
        assert_eq!(slots.indexed(), 0, "nor in the req2 index");
        assert!(slots.reserved.is_empty());
    }

    #[test]
    fn an_add_future_dropped_after_reserving_leaves_nothing() {
        let registry = Arc::new(quiet());
        let h = hash(2);
        let r = registry.clone();
        // An add that reserves, then awaits its disk write forever.
        let add = async move {
            let (reservation, _) = {
                let mut slots = r.lock();
                r.reserve(&mut slots, h, None)
            };
            std::future::pending::<()>().await;
            reservation.commit(Entry::Reserved(None));
        };
        let mut add = Box::pin(add);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(add.as_mut().poll(&mut cx).is_pending());
        assert!(registry.lock().contains_key(&h), "reserved while the add awaits");
        drop(add);
        assert!(registry.lock().is_empty(), "the cancelled add left no entry");
    }

    #[test]
    fn a_committed_slot_stays_and_a_stale_guard_frees_only_its_own() {
        let registry = quiet();
        let h = hash(3);
        let first = {
            let mut slots = registry.lock();
            registry.reserve(&mut slots, h, None).0
        };
        // The add put its (stand-in) entry in place without the guard, as
        // `start_torrent` does, then a removal reserved the slot again.
        registry.lock().insert(h, Entry::Reserved(Some("placeholder".into())));
        registry.lock().reserved.remove(&h);
        let (second, _) = {
            let mut slots = registry.lock();
            registry.reserve(&mut slots, h, None)
        };
        drop(first);
        assert!(registry.lock().contains_key(&h), "an older guard does not free a newer reservation");
        drop(second);
        assert!(registry.lock().is_empty());
    }

    #[test]
    fn take_reserves_and_refuses_a_reserved_slot() {
        let registry = quiet();
        let h = hash(4);
        assert!(registry.take(&h).is_none(), "nothing to take");
        let (held, _) = {
            let mut slots = registry.lock();
            registry.reserve(&mut slots, h, None)
        };
        assert!(registry.take(&h).is_none(), "busy");
        held.commit(Entry::Reserved(Some("x".into())));
        // A committed reservation placeholder counts as reserved too.
        assert!(registry.take(&h).is_none());
    }

    #[test]
    fn the_req2_index_finds_each_of_10000_and_nothing_stale() {
        let registry = quiet();
        let n = 10_000;
        let mut slots = registry.lock();
        for i in 0..n {
            slots.insert(hash(i), Entry::Reserved(None));
        }
        for i in 0..n {
            let h = hash(i);
            assert_eq!(slots.find_req2(&crate::mse::req2(&h.0)), Some(h));
        }
        for i in (0..n).step_by(2) {
            slots.remove(&hash(i));
        }
        for i in 0..n {
            let found = slots.find_req2(&crate::mse::req2(&hash(i).0));
            assert_eq!(found.is_some(), i % 2 == 1, "entry {i}");
        }
        assert_eq!(slots.indexed(), slots.len());
        assert_eq!(slots.find_req2(&[7; 20]), None);
        // A look-up costs one map probe: 10,000 of them take well under the
        // time of 10,000 SHA-1s per look-up (the old scan: 10^8 hashes).
        let t = std::time::Instant::now();
        for i in (1..n).step_by(2) {
            assert!(slots.find_req2(&crate::mse::req2(&hash(i).0)).is_some());
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    }

    /// A registry telling `book` of every hash entering and leaving, as the
    /// session's does.
    fn booked(book: &Arc<AnnounceBook>) -> Registry {
        let b = book.clone();
        Registry::new(move |e| match e {
            SlotEvent::Entered(h) => b.unretire(&h),
            SlotEvent::Left(h) => b.retire(h, crate::wallclock::now_unix()),
        })
    }

    /// The suspect of a timeout of tests/trackers.rs: an entry taken out
    /// for a command (pause, resume, remove) leaves its slot reserved, so
    /// the book never hears that it left, and a sweep meanwhile (another
    /// torrent removed) keeps its record and its waker.
    #[test]
    fn an_entry_taken_for_a_command_keeps_its_announce_state_through_a_sweep() {
        let book = Arc::new(AnnounceBook::default());
        let registry = booked(&book);
        let (h, other) = (hash(7), hash(8));
        let magnet = crate::magnet::Magnet::parse(&h.hex()).unwrap();
        let entry = || super::super::entry::MagnetEntry {
            magnet: magnet.clone(),
            fetch: None,
            error: None,
            opts: Box::default(),
        };
        registry.lock().insert(h, Entry::Magnet(entry()));
        registry.lock().insert(other, Entry::Reserved(None));
        // Announced long ago: a retired record would be swept at once.
        let long_ago = crate::wallclock::now_unix() - 10 * FLOOR_SECS;
        book.sending(h, long_ago, crate::tracker::http::Event::Started);
        let (key, waker) = (book.get(h).key, book.waker(h));
        let (reservation, _taken) = registry.take(&h).unwrap();
        // Another torrent leaves meanwhile: its retire sweeps the book.
        registry.lock().remove(&other);
        book.sweep(crate::wallclock::now_unix() + 10 * FLOOR_SECS);
        assert_eq!(book.get(h).key, key, "the record of a torrent under a command stays");
        assert!(Arc::ptr_eq(&book.waker(h), &waker), "so does the waker its announce loop waits on");
        reservation.commit(Entry::Magnet(entry()));
        assert_eq!(book.sizes().1, 0, "nothing retired");
    }

    #[test]
    fn announce_state_goes_with_the_slot_for_1000_torrents() {
        let book = Arc::new(AnnounceBook::default());
        let b = book.clone();
        let registry = Registry::new(move |e| match e {
            SlotEvent::Entered(h) => b.unretire(&h),
            SlotEvent::Left(h) => b.retire(h, crate::wallclock::now_unix()),
        });
        let now = crate::wallclock::now_unix();
        for i in 0..1000 {
            let h = hash(i);
            let (r, _) = {
                let mut slots = registry.lock();
                registry.reserve(&mut slots, h, None)
            };
            r.commit(Entry::Reserved(Some(format!("t{i}"))));
            // What a torrent's announce loop leaves in the book.
            book.get(h);
            book.show_trackers(h, &[vec!["http://127.0.0.1:1/announce".into()]]);
            book.waker(h);
            book.sending(h, now, crate::tracker::http::Event::Started);
            book.announced(h, now, Some(60));
        }
        assert_eq!(book.sizes(), (1000, 0));
        for i in 0..1000 {
            registry.lock().remove(&hash(i));
        }
        // Kept while they hold announces back, then dropped.
        assert_eq!(book.sizes().0, 1000, "within the floor, records are kept");
        book.sweep(now + FLOOR_SECS + 2);
        assert_eq!(book.sizes(), (0, 0), "records, views, wakers, swarms and the retired list are empty");
    }
}
