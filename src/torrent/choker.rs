//! The choking algorithm (BEP 3 tit-for-tat), pure: the torrent task feeds it
//! peer rates every 10 s and applies the set of peers it returns.
//!
//! * `slots` regular unchokes go to interested, non-snubbed peers ranked by
//!   the rate they give us (downloading) or the rate they take our data at
//!   (seeding), so upload capacity goes where it is used.
//! * One optimistic unchoke rotates every third round (30 s) to a random
//!   choked, interested peer; peers connected under a minute weigh three
//!   times as much, so newcomers get their first pieces.

use super::picker::PeerKey;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;

#[derive(Debug, Clone)]
pub struct ChokeInput {
    pub key: PeerKey,
    pub interested: bool,
    /// Bytes/s: from the peer while downloading, to the peer while seeding.
    pub rate: u64,
    pub connected_secs: u64,
    /// Unchoked us but sent nothing for 60 s.
    pub snubbed: bool,
}

pub struct Choker {
    slots: usize,
    round: u64,
    optimistic: Option<PeerKey>,
    rng: SmallRng,
}

/// Rounds between optimistic rotations (3 x 10 s).
const OPTIMISTIC_EVERY: u64 = 3;
/// Peers younger than this are favoured by the optimistic draw.
const NEW_PEER_SECS: u64 = 60;

impl Choker {
    pub fn new(slots: usize, seed: u64) -> Choker {
        Choker { slots, round: 0, optimistic: None, rng: SmallRng::seed_from_u64(seed) }
    }

    pub fn set_slots(&mut self, slots: usize) {
        self.slots = slots;
    }

    pub fn optimistic(&self) -> Option<PeerKey> {
        self.optimistic
    }

    /// One choking round; returns the peers to have unchoked.
    pub fn run(&mut self, peers: &[ChokeInput]) -> HashSet<PeerKey> {
        let rotate = self.round.is_multiple_of(OPTIMISTIC_EVERY);
        self.round += 1;

        let mut ranked: Vec<&ChokeInput> = peers.iter().filter(|p| p.interested && !p.snubbed).collect();
        // Highest rate first; ties keep a stable order by address.
        ranked.sort_by(|a, b| b.rate.cmp(&a.rate).then(a.key.cmp(&b.key)));
        let mut unchoked: HashSet<PeerKey> = ranked.iter().take(self.slots).map(|p| p.key).collect();

        let still_valid =
            self.optimistic.filter(|k| peers.iter().any(|p| p.key == *k && p.interested) && !unchoked.contains(k));
        self.optimistic =
            if rotate || still_valid.is_none() { self.draw_optimistic(peers, &unchoked) } else { still_valid };
        if let Some(k) = self.optimistic {
            unchoked.insert(k);
        }
        unchoked
    }

    fn draw_optimistic(&mut self, peers: &[ChokeInput], unchoked: &HashSet<PeerKey>) -> Option<PeerKey> {
        let candidates: Vec<(&ChokeInput, u32)> = peers
            .iter()
            .filter(|p| p.interested && !unchoked.contains(&p.key))
            .map(|p| (p, if p.connected_secs < NEW_PEER_SECS { 3 } else { 1 }))
            .collect();
        let total: u32 = candidates.iter().map(|c| c.1).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = self.rng.gen_range(0..total);
        for (p, w) in candidates {
            if ticket < w {
                return Some(p.key);
            }
            ticket -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn key(n: u16) -> PeerKey {
        SocketAddr::from(([127, 0, 0, 1], n))
    }
    fn peer(n: u16, rate: u64) -> ChokeInput {
        ChokeInput { key: key(n), interested: true, rate, connected_secs: 600, snubbed: false }
    }

    #[test]
    fn best_rates_get_the_slots_plus_one_optimistic() {
        let mut c = Choker::new(2, 1);
        let peers = vec![peer(1, 10), peer(2, 500), peer(3, 300), peer(4, 1)];
        let u = c.run(&peers);
        assert!(u.contains(&key(2)) && u.contains(&key(3)));
        assert_eq!(u.len(), 3);
        let opt = c.optimistic().unwrap();
        assert!(opt == key(1) || opt == key(4));
    }

    #[test]
    fn uninterested_and_snubbed_peers_get_no_regular_slot() {
        let mut c = Choker::new(2, 2);
        let mut a = peer(1, 1000);
        a.snubbed = true;
        let mut b = peer(2, 900);
        b.interested = false;
        let peers = vec![a, b, peer(3, 5), peer(4, 4)];
        let u = c.run(&peers);
        assert!(u.contains(&key(3)) && u.contains(&key(4)));
        assert!(!u.contains(&key(2)), "never unchoke an uninterested peer");
        // The snubbed peer can only be the optimistic pick.
        assert_eq!(u.len(), 3);
        assert_eq!(c.optimistic(), Some(key(1)));
    }

    #[test]
    fn optimistic_rotates_every_third_round() {
        let mut c = Choker::new(0, 3);
        let peers: Vec<ChokeInput> = (1..=20).map(|n| peer(n, 0)).collect();
        c.run(&peers);
        let first = c.optimistic();
        c.run(&peers);
        c.run(&peers);
        assert_eq!(c.optimistic(), first, "kept for three rounds");
        let mut changed = false;
        for _ in 0..10 {
            c.run(&peers);
            c.run(&peers);
            c.run(&peers);
            changed |= c.optimistic() != first;
        }
        assert!(changed, "rotates at round boundaries");
    }

    #[test]
    fn new_peers_are_three_times_as_likely() {
        let mut c = Choker::new(0, 4);
        let mut young = peer(1, 0);
        young.connected_secs = 5;
        let peers = vec![young, peer(2, 0)];
        let mut young_wins = 0;
        for _ in 0..3000 {
            c.round = 0;
            c.run(&peers);
            if c.optimistic() == Some(key(1)) {
                young_wins += 1;
            }
        }
        // Expected 3/4 = 2250.
        assert!((2050..2450).contains(&young_wins), "{young_wins}");
    }

    #[test]
    fn seeding_ranks_by_upload_rate_with_slots_limit() {
        let mut c = Choker::new(3, 5);
        let peers: Vec<ChokeInput> = (1..=10).map(|n| peer(n, n as u64 * 100)).collect();
        let u = c.run(&peers);
        for n in 8..=10 {
            assert!(u.contains(&key(n)));
        }
        assert_eq!(u.len(), 4);
    }
}
