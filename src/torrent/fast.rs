//! The fast extension (BEP 6) beyond its codec, pure: the allowed-fast set
//! algorithm, what one connection keeps of it (the pieces a peer lets us
//! fetch while it chokes us, a budget for rejects we did not ask for), the
//! rule for which requests we refuse, and the torrent's counters that
//! `status --json` shows under `fast`.
//!
//! Fast messages from a peer whose handshake did not set the bit end the
//! connection as a protocol error (BEP 6: "the peer MUST close the
//! connection"); the peer task enforces that, the codec decodes them anyway.

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Pieces in the allowed-fast set we give a peer we choke. BEP 6 leaves k to
/// the sender; 10 is what most clients use and costs a seed little.
pub const ALLOWED_FAST_SENT: usize = 10;
/// Allowed-fast pieces we remember per peer; more are ignored.
pub const MAX_ALLOWED_IN: usize = 32;
/// Rejects for requests we no longer have outstanding, beyond those our own
/// cancels explain, before the peer is dropped.
pub const MAX_STRAY_REJECTS: u32 = 256;
/// Cancels we remember as explaining a later reject, at most.
const MAX_CANCEL_CREDIT: u32 = 4096;

/// BEP 6's allowed-fast set for a peer at `ip`: SHA-1 chained from the
/// peer's /24 and the info hash, each digest cut into five big-endian
/// indices modulo the piece count, duplicates skipped, until `k` pieces.
/// IPv6 peers get none: the BEP defines the set for IPv4 only.
pub fn allowed_fast_set(ip: IpAddr, info_hash: &[u8; 20], pieces: u32, k: usize) -> Vec<u32> {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return Vec::new(),
        },
    };
    // A torrent of k pieces or fewer: all of them (the loop would not end).
    if pieces as usize <= k {
        return (0..pieces).collect();
    }
    let mut masked = v4.octets();
    masked[3] = 0;
    let mut x: [u8; 20] = Sha1::new().chain_update(masked).chain_update(info_hash).finalize().into();
    let mut set = Vec::with_capacity(k);
    loop {
        for word in x.chunks_exact(4) {
            let index = u32::from_be_bytes(word.try_into().unwrap()) % pieces;
            if !set.contains(&index) {
                set.push(index);
                if set.len() == k {
                    return set;
                }
            }
        }
        x = Sha1::digest(x).into();
    }
}

/// The pieces a peer told us we may fetch while it chokes us.
#[derive(Debug, Default)]
pub struct AllowedIn {
    pieces: Vec<u32>,
}

impl AllowedIn {
    /// Takes piece `index` of `piece_count`; false when out of range, known
    /// already, or past [`MAX_ALLOWED_IN`].
    pub fn add(&mut self, index: u32, piece_count: usize) -> bool {
        if index as usize >= piece_count || self.pieces.len() >= MAX_ALLOWED_IN || self.contains(index) {
            return false;
        }
        self.pieces.push(index);
        true
    }

    pub fn contains(&self, index: u32) -> bool {
        self.pieces.contains(&index)
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.pieces.iter().copied()
    }
}

/// Rejects of requests we no longer have outstanding. BEP 6 answers every
/// request, a cancelled one too, so each cancel of ours earns a reject; the
/// rest are strays, tolerated up to [`MAX_STRAY_REJECTS`].
#[derive(Debug, Default)]
pub struct StrayRejects {
    credit: u32,
    strays: u32,
}

impl StrayRejects {
    pub fn cancelled(&mut self) {
        self.credit = (self.credit + 1).min(MAX_CANCEL_CREDIT);
    }

    /// Strays counted so far (rejects no cancel of ours explained).
    pub fn strays(&self) -> u32 {
        self.strays
    }

    /// A reject matched nothing outstanding; false once past the bound.
    pub fn unmatched(&mut self) -> bool {
        if self.credit > 0 {
            self.credit -= 1;
            return true;
        }
        self.strays += 1;
        self.strays <= MAX_STRAY_REJECTS
    }
}

/// Why a peer's request is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Out of the torrent, or not a block (zero, over 16 KiB, past the piece).
    BadBlock,
    /// We choke the peer and the piece is not in its allowed-fast set.
    Choked,
    /// The peer has [`super::peer::MAX_QUEUED_REQUESTS`] queued already.
    QueueFull,
    /// We do not have the piece.
    Missing,
}

/// What is known of a request when it arrives.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts {
    pub valid: bool,
    pub choking: bool,
    pub allowed_fast: bool,
    pub queue_full: bool,
    pub have: bool,
}

/// The first reason to refuse a request, or `None` to queue it. A fast peer
/// hears it as `reject_request`; others are ignored (BEP 3), except for a
/// bad block, which ends a connection without the extension.
pub fn refusal(f: RequestFacts) -> Option<Refusal> {
    if !f.valid {
        Some(Refusal::BadBlock)
    } else if f.choking && !f.allowed_fast {
        Some(Refusal::Choked)
    } else if f.queue_full {
        Some(Refusal::QueueFull)
    } else if !f.have {
        Some(Refusal::Missing)
    } else {
        None
    }
}

/// A torrent's fast-extension counters, bumped by its peers.
#[derive(Debug, Default)]
pub struct FastCounters {
    pub rejects_sent: AtomicU64,
    pub rejects_received: AtomicU64,
    pub allowed_fast_sent: AtomicU64,
    pub allowed_fast_received: AtomicU64,
    pub have_all_sent: AtomicU64,
    pub have_all_received: AtomicU64,
    pub have_none_sent: AtomicU64,
    pub have_none_received: AtomicU64,
    pub suggests_received: AtomicU64,
    /// Blocks of allowed-fast pieces served while we choked the peer.
    pub allowed_fast_served: AtomicU64,
}

impl FastCounters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> FastStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FastStats {
            rejects_sent: get(&self.rejects_sent),
            rejects_received: get(&self.rejects_received),
            allowed_fast_sent: get(&self.allowed_fast_sent),
            allowed_fast_received: get(&self.allowed_fast_received),
            have_all_sent: get(&self.have_all_sent),
            have_all_received: get(&self.have_all_received),
            have_none_sent: get(&self.have_none_sent),
            have_none_received: get(&self.have_none_received),
            suggests_received: get(&self.suggests_received),
            allowed_fast_served: get(&self.allowed_fast_served),
        }
    }
}

/// [`FastCounters`] as `status --json` shows them (this session's counts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FastStats {
    pub rejects_sent: u64,
    pub rejects_received: u64,
    pub allowed_fast_sent: u64,
    pub allowed_fast_received: u64,
    pub have_all_sent: u64,
    pub have_all_received: u64,
    pub have_none_sent: u64,
    pub have_none_received: u64,
    pub suggests_received: u64,
    pub allowed_fast_served: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const AA: [u8; 20] = [0xaa; 20];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bep6_published_vectors() {
        // BEP 6, "Allowed Fast": 1313 pieces, info hash 0xaa x 20, 80.4.4.200.
        assert_eq!(allowed_fast_set(ip("80.4.4.200"), &AA, 1313, 7), [1059, 431, 808, 1217, 287, 376, 1188]);
        assert_eq!(allowed_fast_set(ip("80.4.4.200"), &AA, 1313, 9), [1059, 431, 808, 1217, 287, 376, 1188, 353, 508]);
    }

    #[test]
    fn the_set_belongs_to_the_slash_24_and_ipv4_only() {
        let set = allowed_fast_set(ip("80.4.4.200"), &AA, 1313, 7);
        assert_eq!(allowed_fast_set(ip("80.4.4.1"), &AA, 1313, 7), set);
        assert_eq!(allowed_fast_set(ip("::ffff:80.4.4.9"), &AA, 1313, 7), set);
        assert_ne!(allowed_fast_set(ip("80.4.5.200"), &AA, 1313, 7), set);
        assert!(allowed_fast_set(ip("2001:db8::1"), &AA, 1313, 7).is_empty());
    }

    #[test]
    fn a_small_torrent_allows_every_piece_and_the_loop_ends() {
        assert_eq!(allowed_fast_set(ip("10.0.0.1"), &AA, 3, 10), [0, 1, 2]);
        assert_eq!(allowed_fast_set(ip("10.0.0.1"), &AA, 0, 10), Vec::<u32>::new());
        let eleven = allowed_fast_set(ip("10.0.0.1"), &AA, 11, 10);
        assert_eq!(eleven.len(), 10);
        assert!(eleven.iter().all(|&p| p < 11));
    }

    #[test]
    fn allowed_in_is_bounded_and_checked() {
        let mut a = AllowedIn::default();
        assert!(!a.add(100, 100), "out of range");
        assert!(a.add(5, 100));
        assert!(!a.add(5, 100), "twice");
        for i in 0..200 {
            a.add(i, 1000);
        }
        assert_eq!(a.iter().count(), MAX_ALLOWED_IN);
        assert!(a.contains(5));
    }

    #[test]
    fn cancels_explain_rejects_and_strays_are_bounded() {
        let mut s = StrayRejects::default();
        for _ in 0..10 {
            s.cancelled();
        }
        for _ in 0..10 + MAX_STRAY_REJECTS {
            assert!(s.unmatched());
        }
        assert!(!s.unmatched(), "one stray too many");
    }

    #[test]
    fn refusals_come_in_order_and_allowed_fast_passes_a_choke() {
        let ok = RequestFacts { valid: true, choking: false, allowed_fast: false, queue_full: false, have: true };
        assert_eq!(refusal(ok), None);
        assert_eq!(refusal(RequestFacts { choking: true, ..ok }), Some(Refusal::Choked));
        assert_eq!(refusal(RequestFacts { choking: true, allowed_fast: true, ..ok }), None);
        assert_eq!(refusal(RequestFacts { queue_full: true, ..ok }), Some(Refusal::QueueFull));
        assert_eq!(refusal(RequestFacts { have: false, ..ok }), Some(Refusal::Missing));
        assert_eq!(refusal(RequestFacts { valid: false, choking: true, ..ok }), Some(Refusal::BadBlock));
        let choked_full = RequestFacts { choking: true, allowed_fast: true, queue_full: true, ..ok };
        assert_eq!(refusal(choked_full), Some(Refusal::QueueFull));
    }
}
