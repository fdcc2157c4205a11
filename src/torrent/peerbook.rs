//! The addresses a torrent has heard of, and when to dial each.
//!
//! A new address is dialled at once; one heard of again (every announce
//! repeats the same peers) only after [`HEARD_AGAIN_AFTER`]. A connection
//! that fails or ends early is retried after 5 s, then 10, 20, 40 and 80 s,
//! then the address waits until a source names it again: peers drop
//! connections for passing reasons (still starting, a duplicate not yet
//! cleaned up), but a dead address should not be dialled forever. Pure: the
//! caller passes the time.
//!
//! It also remembers how the last connection to an address was made
//! (plaintext or encrypted), so that under a policy allowing both the
//! next dial does not repeat an attempt the peer refused.
//!
//! Bounded against sources that flood us with addresses (a hostile tracker,
//! PEX or DHT node): what we know is kept, and newcomers get in only while
//! there is room: at most [`MAX_NEW_PER_REPORT`] from one report,
//! [`MAX_KNOWN`] known in all (stale ones are forgotten first), and
//! [`MAX_QUEUED`] waiting to be dialled.

use crate::conn::Way;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const HEARD_AGAIN_AFTER: Duration = Duration::from_secs(300);
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
pub const MAX_RETRIES: u32 = 5;
/// A connection that lasted this long was a success: its failures reset.
pub const GOOD_CONNECTION: Duration = Duration::from_secs(60);
/// Addresses remembered at most; stale ones are forgotten to make room.
pub const MAX_KNOWN: usize = 5000;
/// New addresses taken from one report of one source.
pub const MAX_NEW_PER_REPORT: usize = 200;
/// Addresses waiting to be dialled at most.
pub const MAX_QUEUED: usize = 1000;

struct Known {
    queued_at: Instant,
    /// Connections in a row that failed or ended early.
    failures: u32,
    retry_at: Option<Instant>,
    /// How the last connection was made.
    made_by: Option<Way>,
}

#[derive(Default)]
pub struct PeerBook {
    known: HashMap<SocketAddr, Known>,
    /// Pending retries, soonest first.
    retries: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    /// Addresses to dial now, in order.
    queue: VecDeque<SocketAddr>,
}

impl PeerBook {
    /// Addresses a source (tracker, DHT, PEX, the resume record) named.
    pub fn heard(&mut self, addrs: impl IntoIterator<Item = SocketAddr>, now: Instant) {
        if self.known.len() >= MAX_KNOWN {
            self.known.retain(|_, k| k.retry_at.is_some() || now.duration_since(k.queued_at) < HEARD_AGAIN_AFTER);
        }
        let mut new = 0;
        for addr in addrs {
            let room = self.queue.len() < MAX_QUEUED;
            let full = self.known.len() >= MAX_KNOWN;
            match self.known.get_mut(&addr) {
                Some(k) if now.duration_since(k.queued_at) < HEARD_AGAIN_AFTER => {}
                Some(k) if room => {
                    k.queued_at = now;
                    self.queue.push_back(addr);
                }
                None if room && new < MAX_NEW_PER_REPORT && !full => {
                    new += 1;
                    self.known.insert(addr, Known { queued_at: now, failures: 0, retry_at: None, made_by: None });
                    self.queue.push_back(addr);
                }
                _ => {}
            }
        }
    }

    /// An outgoing connection to `addr` ended after `lasted`; `retry` is
    /// false where another try is pointless (ourselves, banned, two seeds).
    pub fn ended(&mut self, addr: SocketAddr, retry: bool, lasted: Duration, now: Instant) {
        let Some(k) = self.known.get_mut(&addr) else { return };
        k.failures = if lasted >= GOOD_CONNECTION { 0 } else { k.failures + 1 };
        k.retry_at =
            (retry && k.failures <= MAX_RETRIES).then(|| now + RETRY_FIRST * 2u32.pow(k.failures.saturating_sub(1)));
        if let Some(at) = k.retry_at {
            self.retries.push(Reverse((at, addr)));
        }
    }

    /// A connection to `addr` was made `how` (`None`: it was not made).
    pub fn made(&mut self, addr: SocketAddr, how: Option<Way>) {
        if let (Some(k), Some(how)) = (self.known.get_mut(&addr), how) {
            k.made_by = Some(how);
        }
    }

    /// How the last connection to `addr` was made, if one was.
    pub fn made_by(&self, addr: SocketAddr) -> Option<Way> {
        self.known.get(&addr).and_then(|k| k.made_by)
    }

    /// Moves the retries that are due into the dial queue.
    pub fn queue_due(&mut self, now: Instant) {
        while let Some(Reverse((at, addr))) = self.retries.peek().copied() {
            if at > now {
                break;
            }
            self.retries.pop();
            // Only if this is still the retry the address waits for.
            if let Some(k) = self.known.get_mut(&addr).filter(|k| k.retry_at == Some(at)) {
                k.retry_at = None;
                k.queued_at = now;
                self.queue.push_back(addr);
            }
        }
    }

    /// The next address to dial.
    pub fn next_to_dial(&mut self) -> Option<SocketAddr> {
        self.queue.pop_front()
    }

    /// `addr`, taken by [`PeerBook::next_to_dial`] but not dialled (no
    /// connection permit was free), is the next again.
    pub fn put_back(&mut self, addr: SocketAddr) {
        self.queue.push_front(addr);
    }

    /// When the soonest retry falls due (an idle torrent wakes for it).
    pub fn next_retry(&self) -> Option<Instant> {
        self.retries.peek().map(|Reverse((at, _))| *at)
    }

    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 6881))
    }

    fn drain(book: &mut PeerBook) -> Vec<SocketAddr> {
        std::iter::from_fn(|| book.next_to_dial()).collect()
    }

    #[test]
    fn new_addresses_at_once_repeats_only_after_a_while() {
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        book.heard([addr(1), addr(2)], t0);
        assert_eq!(drain(&mut book), vec![addr(1), addr(2)]);
        book.heard([addr(1)], t0 + Duration::from_secs(30));
        assert!(!book.has_queued(), "the next announce repeats it; not dialled again yet");
        book.heard([addr(1)], t0 + HEARD_AGAIN_AFTER);
        assert_eq!(drain(&mut book), vec![addr(1)]);
    }

    #[test]
    fn failures_back_off_then_give_up() {
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        book.heard([addr(1)], t0);
        book.next_to_dial();
        let mut now = t0;
        for delay in [5u64, 10, 20, 40, 80] {
            book.ended(addr(1), true, Duration::from_millis(10), now);
            book.queue_due(now + Duration::from_secs(delay) - Duration::from_millis(1));
            assert!(!book.has_queued(), "not before {delay} s");
            now += Duration::from_secs(delay);
            book.queue_due(now);
            assert_eq!(drain(&mut book), vec![addr(1)], "after {delay} s");
        }
        book.ended(addr(1), true, Duration::from_millis(10), now);
        book.queue_due(now + Duration::from_secs(3600));
        assert!(!book.has_queued(), "given up after five retries");
        // Named again by a source: dialled again.
        book.heard([addr(1)], now + HEARD_AGAIN_AFTER);
        assert_eq!(drain(&mut book), vec![addr(1)]);
    }

    #[test]
    fn pointless_retries_are_not_made_and_long_connections_reset() {
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        book.heard([addr(1), addr(2)], t0);
        drain(&mut book);
        book.ended(addr(1), false, Duration::ZERO, t0);
        book.ended(addr(2), true, Duration::ZERO, t0);
        book.ended(addr(2), true, GOOD_CONNECTION, t0 + RETRY_FIRST);
        book.queue_due(t0 + RETRY_FIRST * 2);
        assert_eq!(drain(&mut book), vec![addr(2)], "ourselves/banned never; a good connection retries after 5 s");
    }

    fn many(from: u32, n: u32) -> impl Iterator<Item = SocketAddr> {
        (from..from + n).map(|i| SocketAddr::from((i.to_be_bytes(), 1)))
    }

    #[test]
    fn forgets_stale_addresses_past_the_cap() {
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        for i in 0..=(MAX_KNOWN / MAX_NEW_PER_REPORT) as u32 {
            book.heard(many(i * 1000, MAX_NEW_PER_REPORT as u32), t0);
            drain(&mut book);
        }
        assert_eq!(book.known.len(), MAX_KNOWN);
        book.heard([addr(1)], t0 + HEARD_AGAIN_AFTER);
        assert!(book.known.len() <= 2, "{}", book.known.len());
    }

    #[test]
    fn a_flood_of_addresses_stays_bounded() {
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        book.heard([addr(1)], t0);
        // One report of a million addresses, then a thousand more reports,
        // nobody dialled meanwhile.
        book.heard(many(1 << 20, 1_000_000), t0);
        assert_eq!(book.queue.len(), 1 + MAX_NEW_PER_REPORT, "one report brings at most its share");
        for r in 0..1000 {
            book.heard(many(r * 1000, 1000), t0);
        }
        assert!(
            book.known.len() <= MAX_KNOWN && book.queue.len() <= MAX_QUEUED,
            "{} {}",
            book.known.len(),
            book.queue.len()
        );
        assert_eq!(book.next_to_dial(), Some(addr(1)), "what came first is still first");
    }

    #[test]
    fn how_a_connection_was_made_is_remembered() {
        use crate::conn::{Attempt, Proto};
        let now = Instant::now();
        let mut book = PeerBook::default();
        book.heard([addr(1)], now);
        assert_eq!(book.made_by(addr(1)), None);
        let utp_plain = Way { proto: Proto::Utp, crypto: Attempt::Plaintext };
        book.made(addr(1), Some(utp_plain));
        book.made(addr(1), None);
        assert_eq!(book.made_by(addr(1)), Some(utp_plain), "a failed dial forgets nothing");
        book.made(addr(2), Some(Way { proto: Proto::Tcp, crypto: Attempt::Encrypted }));
        assert_eq!(book.made_by(addr(2)), None, "only known addresses");
    }
}
