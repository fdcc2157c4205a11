//! Who gives way when a torrent's peer list is full and someone knocks.
//!
//! Without this, anyone who opens enough connections and then only sends
//! keep-alives holds every slot of a torrent for good. A peer may be evicted
//! when it has been connected for a while and neither side is interested in
//! the other, so no data can move between us; among those, the one that
//! moved the fewest bytes goes first. A peer exchanging data is never evicted.

use super::picker::PeerKey;

/// Seconds a new peer has to say what it has and wants before it counts as
/// idle (a bitfield and an `interested` take one round trip).
pub const GRACE_SECS: u64 = 60;

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
        .filter(|p| p.connected_secs >= GRACE_SECS && !p.peer_interested && !p.am_interested)
        .min_by_key(|p| (p.bytes, std::cmp::Reverse(p.connected_secs)))
        .map(|p| p.key)
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
            [peer(1, 600, true, false, 0), peer(2, 600, false, true, 0), peer(3, GRACE_SECS - 1, false, false, 0)];
        assert_eq!(idle_victim(&busy), None, "interested either way, or new: stays");
        let mut all = busy.to_vec();
        all.push(peer(4, 120, false, false, 5_000));
        all.push(peer(5, 90, false, false, 10));
        all.push(peer(6, 300, false, false, 10));
        assert_eq!(idle_victim(&all), Some(([10, 0, 0, 1], 6).into()), "fewest bytes, then longest connected");
    }
}
