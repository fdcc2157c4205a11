//! Who gives way when a torrent's peer list is full and someone knocks, who
//! may knock at all, and what counts as one host for the per-host
//! connection limit.
//!
//! Without this, anyone who opens enough connections and then only sends
//! keep-alives holds every slot of a torrent for good. A peer may be evicted
//! when it has been connected for [`GRACE_SECS`] and neither side is
//! interested in the other (no data can move between us), or when it has
//! been connected for five minutes and no payload byte moved either way
//! (interest it never acts on does not hold a slot). Among those, the one
//! that moved the fewest bytes goes first, and then the newest: newcomers
//! rotate through the slots idle peers give up, and one that idles in turn
//! is the next to go, while peers that moved data are the last. A peer
//! exchanging data is never evicted.
//!
//! Evicting alone is not enough: many hosts that knock again the moment they
//! are dropped take every slot the moment it frees, before an honest
//! newcomer's knock comes. So the host that took a slot by eviction waits
//! [`PENALTY`] in the [`PenaltyBox`] before it may take another that way: a
//! host takes at most one freed slot per penalty, and the idle slots left
//! go to others. The box is consulted only when the torrent is full (only
//! then would a newcomer evict anyone): a host is one IPv4 address or IPv6
//! /64, and honest peers behind the same NAT, on the same LAN or on
//! 127.0.0.1 must still get into, and be dialled by, a torrent with room.
//! The host that gave way is not boxed: it is no one's proof of abuse (an
//! honest peer can idle), and boxing the takers alone already bounds
//! evictions to one per host per penalty.

use super::picker::PeerKey;
use crate::types::host_of;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Seconds a new peer has to say what it has and wants before it counts as
/// idle (a bitfield and an `interested` take one round trip; this leaves
/// ample room for a slow link).
pub const GRACE_SECS: u64 = 20;
/// Seconds after which a peer that moved nothing at all may go, interested
/// or not (every interested peer is unchoked now and then, optimistically).
pub const SILENT_SECS: u64 = 300;
/// How long a host that took a slot by eviction may not take another
/// (longer than [`GRACE_SECS`], so a host cannot take a slot again as soon
/// as the slot it took may be taken from it).
pub const PENALTY: Duration = Duration::from_secs(60);
/// Hosts in the penalty box at most; the soonest out leave first past it.
pub const MAX_BOXED: usize = 4096;

/// What eviction looks at in one connected peer.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub key: PeerKey,
    pub connected_secs: u64,
    /// The peer wants something of ours.
    pub peer_interested: bool,
    /// We want something of the peer's.
    pub am_interested: bool,
    /// Bytes moved both ways over the whole connection.
    pub bytes: u64,
}

/// The peer to close to make room, if any is idle.
pub fn idle_victim(peers: &[Candidate]) -> Option<PeerKey> {
    peers
        .iter()
        .filter(|p| {
            let uninterested = p.connected_secs >= GRACE_SECS && !p.peer_interested && !p.am_interested;
            let silent = p.connected_secs >= SILENT_SECS && p.bytes == 0;
            uninterested || silent
        })
        .min_by_key(|p| (p.bytes, p.connected_secs))
        .map(|p| p.key)
}

/// What becomes of a peer that knocks at a torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// There is room.
    Room,
    /// Full: this idle peer gives way to the newcomer.
    Evict(PeerKey),
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Full, and the host took a slot by eviction a short while ago.
    Boxed,
    /// Full, and nobody idle.
    Full,
}

/// Whether a newcomer from `ip` gets in: `full` says the torrent is full,
/// `peers` are those connected.
pub fn admit(ip: IpAddr, full: bool, peers: &[Candidate], boxed: &PenaltyBox, now: Instant) -> Admission {
    // With room nobody gives way, so the box has nothing to guard: honest
    // peers sharing a boxed address (a NAT, a LAN, 127.0.0.1) get in.
    if !full {
        return Admission::Room;
    }
    if boxed.holds(ip, now) {
        return Admission::Refused(Refusal::Boxed);
    }
    idle_victim(peers).map_or(Admission::Refused(Refusal::Full), Admission::Evict)
}

/// Hosts that may not evict for a while after they did: per host (see
/// [`host_of`]), until when. Bounded by [`MAX_BOXED`].
#[derive(Default)]
pub struct PenaltyBox {
    until: HashMap<IpAddr, Instant>,
}

impl PenaltyBox {
    pub fn holds(&self, ip: IpAddr, now: Instant) -> bool {
        self.until.get(&host_of(ip)).is_some_and(|t| *t > now)
    }

    /// `took` made an idle peer give way: it may not do so again for a while.
    pub fn evicted(&mut self, took: IpAddr, now: Instant) {
        self.put(took, now);
    }

    fn put(&mut self, ip: IpAddr, now: Instant) {
        let host = host_of(ip);
        // Room is made only for a host not boxed already.
        if self.until.len() >= MAX_BOXED && !self.until.contains_key(&host) {
            self.until.retain(|_, t| *t > now);
            if self.until.len() >= MAX_BOXED {
                let soonest = self.until.iter().min_by_key(|(_, t)| **t).map(|(h, _)| *h);
                soonest.and_then(|h| self.until.remove(&h));
            }
        }
        self.until.insert(host, now + PENALTY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16, secs: u64, theirs: bool, ours: bool, bytes: u64) -> Candidate {
        Candidate {
            key: ([10, 0, 0, 1], port).into(),
            connected_secs: secs,
            peer_interested: theirs,
            am_interested: ours,
            bytes,
        }
    }

    #[test]
    fn only_old_peers_with_no_interest_either_way_give_way() {
        assert_eq!(idle_victim(&[]), None);
        let busy =
            [peer(1, 600, true, false, 1), peer(2, 600, false, true, 1), peer(3, GRACE_SECS - 1, false, false, 0)];
        assert_eq!(idle_victim(&busy), None, "interested either way and moving data, or new: stays");
        let mut all = busy.to_vec();
        all.push(peer(4, 120, false, false, 5_000));
        all.push(peer(5, 90, false, false, 10));
        all.push(peer(6, 300, false, false, 10));
        assert_eq!(idle_victim(&all), Some(([10, 0, 0, 1], 5).into()), "fewest bytes first");
        all.push(peer(9, 70, false, false, 10));
        assert_eq!(idle_victim(&all), Some(([10, 0, 0, 1], 9).into()), "then the newest: it idles in its turn");
        // Interested for five minutes without a byte moved: it may go too.
        let idle_interest = [peer(7, SILENT_SECS, true, false, 0), peer(8, SILENT_SECS, true, false, 1)];
        assert_eq!(idle_victim(&idle_interest), Some(([10, 0, 0, 1], 7).into()));
    }

    #[test]
    fn the_host_that_took_a_slot_waits_and_the_box_stays_bounded() {
        let t0 = Instant::now();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut b = PenaltyBox::default();
        b.evicted(ip("10.0.0.1"), t0);
        b.evicted(ip("2001:db8::1"), t0);
        let later = t0 + PENALTY - Duration::from_millis(1);
        assert!(b.holds(ip("10.0.0.1"), later) && b.holds(ip("::ffff:10.0.0.1"), later));
        assert!(b.holds(ip("2001:db8::ffff"), later), "the same /64");
        assert!(!b.holds(ip("10.0.0.2"), t0));
        assert!(!b.holds(ip("10.0.0.1"), t0 + PENALTY), "out after the penalty");
        let peers = [peer(1, 600, false, false, 0)];
        assert_eq!(admit(ip("10.0.0.1"), true, &peers, &b, later), Admission::Refused(Refusal::Boxed));
        assert_eq!(admit(ip("10.0.0.3"), false, &peers, &b, later), Admission::Room);
        assert_eq!(admit(ip("10.0.0.3"), true, &peers, &b, later), Admission::Evict(peers[0].key));
        assert_eq!(admit(ip("10.0.0.3"), true, &[], &b, later), Admission::Refused(Refusal::Full));
        let nth = |i: u32| IpAddr::from(i.to_be_bytes());
        for i in 0..2 * MAX_BOXED as u32 {
            b.evicted(nth(i), t0 + Duration::from_millis(i as u64));
        }
        assert!(b.until.len() <= MAX_BOXED);
        let now = t0 + Duration::from_secs(1);
        assert!(b.holds(nth(2 * MAX_BOXED as u32 - 1), now), "the newest stay");
        assert!(!b.holds(nth(0), now), "the soonest out left first");
    }

    /// A host boxed after an eviction (one idle peer behind a NAT, a LAN
    /// box, 127.0.0.1) still gets in while the torrent has room: the box
    /// only keeps it from taking someone else's slot.
    #[test]
    fn a_boxed_host_is_admitted_while_there_is_room() {
        let t0 = Instant::now();
        let nat: IpAddr = "100.64.0.1".parse().unwrap();
        let mut b = PenaltyBox::default();
        b.evicted(nat, t0);
        let idle = [peer(1, 600, false, false, 0)];
        assert!(b.holds(nat, t0));
        assert_eq!(admit(nat, false, &idle, &b, t0), Admission::Room, "room: boxed or not");
        assert_eq!(admit(nat, true, &idle, &b, t0), Admission::Refused(Refusal::Boxed), "full: it may not evict");
    }

    /// The attack of issue #23 at full scale, in simulated time: 25 hosts
    /// hold three idle connections each and knock again at once whenever one
    /// is out (until nothing changes, within each 100 ms step); the torrent
    /// has 50 slots. An honest leecher knocking every
    /// 5 s (after the attackers, in each step) gets in within a minute, and
    /// stays once it moves data.
    #[test]
    fn an_honest_newcomer_gets_in_within_a_minute_whatever_idle_hosts_do() {
        const SLOTS: usize = 50;
        const PER_HOST: usize = 3;
        let t0 = Instant::now();
        let attackers: Vec<PeerKey> = (0..75u16).map(|i| ([10, 0, 0, 1 + (i / 3) as u8], 1000 + i).into()).collect();
        let honest: PeerKey = ([10, 9, 9, 9], 6881).into();
        // Connected peers: key and since when.
        let mut inside: Vec<(PeerKey, Instant)> = Vec::new();
        let mut boxed = PenaltyBox::default();
        let knock = |key: PeerKey, now: Instant, inside: &mut Vec<(PeerKey, Instant)>, boxed: &mut PenaltyBox| {
            let host = host_of(key.ip());
            if inside.iter().any(|(k, _)| *k == key)
                || inside.iter().filter(|(k, _)| host_of(k.ip()) == host).count() >= PER_HOST
            {
                return false;
            }
            let peers: Vec<Candidate> = inside
                .iter()
                .map(|(k, since)| {
                    let working = *k == honest;
                    let mut c = peer(k.port(), (now - *since).as_secs(), working, false, u64::from(working) << 20);
                    c.key = *k;
                    c
                })
                .collect();
            match admit(key.ip(), inside.len() >= SLOTS, &peers, boxed, now) {
                Admission::Room => inside.push((key, now)),
                Admission::Evict(victim) => {
                    inside.retain(|(k, _)| *k != victim);
                    boxed.evicted(key.ip(), now);
                    inside.push((key, now));
                }
                Admission::Refused(_) => return false,
            }
            true
        };
        let first_knock = t0 + Duration::from_secs(5);
        let mut got_in = None;
        for step in 0..3000u64 {
            let now = t0 + Duration::from_millis(100 * step);
            // Every connection dropped is back at once, until none gets in.
            while attackers.iter().filter(|a| knock(**a, now, &mut inside, &mut boxed)).count() > 0 {}
            if now >= first_knock && step % 50 == 0 {
                knock(honest, now, &mut inside, &mut boxed);
            }
            let honest_in = inside.iter().any(|(k, _)| *k == honest);
            if honest_in && got_in.is_none() {
                got_in = Some(now);
            }
            assert!(got_in.is_none() || honest_in, "the honest peer was evicted at {:?}", now - t0);
            assert!(inside.len() <= SLOTS);
        }
        let waited = got_in.map(|t| t - first_knock);
        assert!(waited.is_some_and(|w| w <= Duration::from_secs(60)), "the honest peer waited {waited:?}");
    }
}
