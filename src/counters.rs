//! The engine's counters for `/metrics`: cheap atomics the torrent tasks and
//! connections bump where bytes, hash failures, bans and connections happen
//! ([`Metrics`], one per session, in [`crate::torrent::Env`]), and the
//! per-category byte totals kept across scrapes. Kept apart from the scrape
//! (`metrics.rs`, which reads the session) so that the torrent tasks, below
//! the session, hold them without importing a module above them.

use crate::conn::{Attempt, Proto, Way};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::collections::HashMap;
use std::sync::Mutex;

/// What the engine counts as it goes; cheap atomics behind `Arc`s.
pub struct Metrics {
    /// Payload bytes of verified pieces, this process.
    pub downloaded: Counter,
    /// Payload bytes sent to peers, this process.
    pub uploaded: Counter,
    /// Of those, bytes sent from the page cache with `sendfile(2)`, never
    /// copied through our memory.
    pub uploaded_zero_copy: Counter,
    pub hash_failures: Counter,
    /// Bytes of pieces that failed their hash check.
    pub corrupt_bytes: Counter,
    /// Bytes received that were not asked for or no longer needed.
    pub wasted_bytes: Counter,
    /// Peers banned from a torrent for sending corrupt pieces.
    pub peers_banned: Counter,
    /// Time to hash a downloaded piece (on a disk thread).
    pub piece_verify: Histogram,
    /// Connected peers by [`way_index`].
    pub(crate) peers: [Gauge; 4],
    /// Per-category byte totals kept across scrapes.
    pub(crate) ledger: Mutex<Ledger>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            downloaded: Counter::default(),
            uploaded: Counter::default(),
            uploaded_zero_copy: Counter::default(),
            hash_failures: Counter::default(),
            corrupt_bytes: Counter::default(),
            wasted_bytes: Counter::default(),
            peers_banned: Counter::default(),
            // 0.5 ms to 2 s: a 16 KiB piece on a fast core to a 16 MiB one
            // on a busy VPS.
            piece_verify: Histogram::new(exponential_buckets(0.0005, 2.0, 13)),
            peers: Default::default(),
            ledger: Mutex::new(Ledger::default()),
        }
    }
}

/// Counts one connected peer until dropped.
pub struct Connected(Gauge);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The slot of a connection's transport in [`Metrics::peers`].
fn way_index(way: Way) -> usize {
    let utp = usize::from(way.proto == Proto::Utp);
    let encrypted = usize::from(way.crypto == Attempt::Encrypted);
    utp * 2 + encrypted
}

/// The `transport` and `encryption` labels of a slot of [`Metrics::peers`].
pub(crate) fn way_labels(index: usize) -> (&'static str, &'static str) {
    let transport = if index >= 2 { "utp" } else { "tcp" };
    let encryption = if index % 2 == 1 { "encrypted" } else { "plain" };
    (transport, encryption)
}

impl Metrics {
    /// A peer connected over `way`; counted until the guard drops.
    pub fn connected(&self, way: Way) -> Connected {
        let gauge = self.peers[way_index(way)].clone();
        gauge.inc();
        Connected(gauge)
    }
}

/// One torrent's counters as a scrape sees them.
pub(crate) struct Seen<'a> {
    pub(crate) hash: &'a str,
    pub(crate) category: &'a str,
    pub(crate) down: u64,
    pub(crate) up: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bytes {
    pub(crate) down: u64,
    pub(crate) up: u64,
}

/// Per-category totals that only grow while the category has torrents: a
/// torrent removed keeps what it added (a sum of live torrents would drop,
/// and Prometheus would read the drop as a reset and a huge rate).
#[derive(Default)]
pub(crate) struct Ledger {
    /// Each live torrent's counters at the last look, and its category.
    last: HashMap<String, (String, Bytes)>,
    totals: HashMap<String, Bytes>,
}

impl Ledger {
    /// The torrents restored at start: what they carried from earlier runs
    /// is not this process's. A torrent seen later was added since, and
    /// counts from zero.
    pub(crate) fn prime<'a>(&mut self, torrents: impl Iterator<Item = Seen<'a>>) {
        self.observe(torrents);
        self.totals.values_mut().for_each(|t| *t = Bytes::default());
    }

    pub(crate) fn observe<'a>(&mut self, torrents: impl Iterator<Item = Seen<'a>>) {
        let mut last = HashMap::new();
        for t in torrents {
            let now = Bytes { down: t.down, up: t.up };
            let before = self.last.remove(t.hash).map(|(_, b)| b).unwrap_or_default();
            let total = self.totals.entry(t.category.to_string()).or_default();
            total.down += now.down.saturating_sub(before.down);
            total.up += now.up.saturating_sub(before.up);
            last.insert(t.hash.to_string(), (t.category.to_string(), now));
        }
        // Categories without a torrent now go: bounded by the live torrents.
        let live: std::collections::HashSet<&String> = last.values().map(|(category, _)| category).collect();
        self.totals.retain(|c, _| live.contains(c));
        self.last = last;
    }

    pub(crate) fn totals(&self) -> Vec<(String, Bytes)> {
        self.totals.iter().map(|(c, b)| (c.clone(), *b)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(hash: &'a str, category: &'a str, down: u64, up: u64) -> Seen<'a> {
        Seen { hash, category, down, up }
    }

    fn total(l: &Ledger, category: &str) -> Option<Bytes> {
        l.totals().into_iter().find(|(c, _)| c == category).map(|(_, b)| b)
    }

    #[test]
    fn a_category_total_keeps_what_a_removed_torrent_added() {
        let mut l = Ledger::default();
        l.observe([seen("a", "tv", 0, 0), seen("b", "tv", 0, 0)].into_iter());
        l.observe([seen("a", "tv", 100, 10), seen("b", "tv", 50, 5)].into_iter());
        assert_eq!(total(&l, "tv"), Some(Bytes { down: 150, up: 15 }));
        // b removed: the total does not drop.
        l.observe([seen("a", "tv", 120, 10)].into_iter());
        assert_eq!(total(&l, "tv"), Some(Bytes { down: 170, up: 15 }));
    }

    #[test]
    fn restored_history_is_not_counted_but_a_new_torrent_counts_from_zero() {
        let mut l = Ledger::default();
        l.prime([seen("old", "", 1_000, 2_000)].into_iter());
        assert_eq!(total(&l, ""), Some(Bytes::default()));
        l.observe([seen("old", "", 1_000, 2_000)].into_iter());
        assert_eq!(total(&l, ""), Some(Bytes::default()));
        l.observe([seen("old", "", 1_000, 2_000), seen("new", "", 30, 0)].into_iter());
        assert_eq!(total(&l, ""), Some(Bytes { down: 30, up: 0 }));
    }

    #[test]
    fn a_category_without_torrents_goes_and_a_moved_torrent_counts_in_its_new_one() {
        let mut l = Ledger::default();
        l.observe([seen("a", "tv", 0, 0)].into_iter());
        l.observe([seen("a", "movies", 10, 0)].into_iter());
        assert_eq!(total(&l, "tv"), None);
        assert_eq!(total(&l, "movies"), Some(Bytes { down: 10, up: 0 }));
        l.observe(std::iter::empty());
        assert!(l.totals().is_empty() && l.last.is_empty());
    }

    #[test]
    fn a_counter_that_goes_back_adds_nothing() {
        let mut l = Ledger::default();
        l.observe([seen("a", "", 0, 0)].into_iter());
        l.observe([seen("a", "", 100, 0)].into_iter());
        l.observe([seen("a", "", 40, 0)].into_iter());
        l.observe([seen("a", "", 60, 0)].into_iter());
        assert_eq!(total(&l, ""), Some(Bytes { down: 120, up: 0 }));
    }

    #[test]
    fn each_transport_has_its_own_slot_and_labels() {
        let ways = [
            (Proto::Tcp, Attempt::Plaintext, ("tcp", "plain")),
            (Proto::Tcp, Attempt::Encrypted, ("tcp", "encrypted")),
            (Proto::Utp, Attempt::Plaintext, ("utp", "plain")),
            (Proto::Utp, Attempt::Encrypted, ("utp", "encrypted")),
        ];
        let m = Metrics::default();
        let guards: Vec<_> =
            ways.iter().map(|(proto, crypto, _)| m.connected(Way { proto: *proto, crypto: *crypto })).collect();
        for (proto, crypto, labels) in ways {
            let i = way_index(Way { proto, crypto });
            assert_eq!(way_labels(i), labels);
            assert_eq!(m.peers[i].get(), 1);
        }
        drop(guards);
        assert!(m.peers.iter().all(|g| g.get() == 0), "a dropped guard uncounts its peer");
    }
}
