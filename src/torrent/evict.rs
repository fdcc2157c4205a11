//! Who gives way when a torrent's peer list is full and someone knocks, and
//! what counts as one host for the per-host connection limit.
//!
//! Without this, anyone who opens enough connections and then only sends
//! keep-alives holds every slot of a torrent for good. A peer may be evicted
//! when it has been connected for a minute and neither side is interested in
//! the other (no data can move between us), or when it has been connected
//! for five minutes and no payload byte moved either way (interest it never
//! acts on does not hold a slot); among those, the one that moved the fewest
//! bytes goes first. A peer exchanging data is never evicted.

use super::picker::PeerKey;
use std::net::{IpAddr, Ipv6Addr};

/// Seconds a new peer has to say what it has and wants before it counts as
/// idle (a bitfield and an `interested` take one round trip).
pub const GRACE_SECS: u64 = 60;
/// Seconds after which a peer that moved nothing at all may go, interested
/// or not (every interested peer is unchoked now and then, optimistically).
pub const SILENT_SECS: u64 = 300;

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
        .min_by_key(|p| (p.bytes, std::cmp::Reverse(p.connected_secs)))
        .map(|p| p.key)
}

/// The host an address belongs to: an IPv4 address (mapped ones unwrapped)
/// or an IPv6 /64.
pub fn host_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
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
        assert_eq!(idle_victim(&all), Some(([10, 0, 0, 1], 6).into()), "fewest bytes, then longest connected");
        // Interested for five minutes without a byte moved: it may go too.
        let idle_interest = [peer(7, SILENT_SECS, true, false, 0), peer(8, SILENT_SECS, true, false, 1)];
        assert_eq!(idle_victim(&idle_interest), Some(([10, 0, 0, 1], 7).into()));
    }

    #[test]
    fn one_host_is_one_ipv4_address_or_one_ipv6_64() {
        let h = |s: &str| host_of(s.parse().unwrap());
        assert_eq!(h("::ffff:1.2.3.4"), h("1.2.3.4"), "mapped IPv4 is the same host");
        assert_ne!(h("1.2.3.4"), h("1.2.3.5"));
        assert_eq!(h("2001:db8:1:2::1"), h("2001:db8:1:2:ffff::9"), "same /64");
        assert_ne!(h("2001:db8:1:2::1"), h("2001:db8:1:3::1"));
    }
}
