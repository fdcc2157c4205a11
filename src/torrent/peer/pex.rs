//! Peer exchange (BEP 11) with one peer, in both directions: the peers it
//! tells us of go to the torrent task, within bounds; those we tell it of
//! are the torrent's other connections. Never for private torrents.

use crate::conn::OutQueue;
use crate::extension::{self, PexMsg};
use crate::torrent::picker::PeerKey;
use crate::torrent::TorrentShared;
use crate::wire::Message;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// PEX messages are sent this often, and accepted no more often than
/// [`PEX_MIN_GAP`] (BEP 11 asks for one a minute).
const PEX_EVERY: Duration = Duration::from_secs(60);
const PEX_MIN_GAP: Duration = Duration::from_secs(45);
/// With nothing new to tell, the peer list is looked at again this often
/// (not every tick: it costs a pass over all peers).
const PEX_RECHECK: Duration = Duration::from_secs(10);
/// Peers learned through PEX waiting for the torrent task, at most.
pub const MAX_PEX_BACKLOG: usize = 200;

/// Peer exchange (BEP 11) with this peer; never for private torrents.
#[derive(Default)]
pub(super) struct Pex {
    /// The peer's id for ut_pex, once it told us.
    pub(super) peer_id: Option<u8>,
    /// Listening addresses we told this peer of.
    sent: HashSet<SocketAddr>,
    /// When to look again at what to tell it.
    next_at: Option<Instant>,
    last_in: Option<Instant>,
}

impl Pex {
    /// Takes peers from a PEX message, within BEP 11's limits.
    pub(super) fn on_message(&mut self, shared: &TorrentShared, payload: &[u8]) {
        if shared.meta.private || self.last_in.is_some_and(|t| t.elapsed() < PEX_MIN_GAP) {
            return;
        }
        self.last_in = Some(Instant::now());
        let Ok(msg) = PexMsg::decode(payload) else {
            return;
        };
        let mut inner = shared.lock();
        // A seed has nothing for another seed.
        let seeding = inner.have().is_full();
        let useful = msg.added.into_iter().filter(|(_, f)| !(seeding && f & extension::PEX_SEED != 0));
        inner.learn_pex(useful.map(|(a, _)| a), MAX_PEX_BACKLOG);
    }

    /// Tells the peer which peers joined and left since the last message.
    pub(super) fn send(&mut self, shared: &TorrentShared, key: PeerKey, out: &mut OutQueue) {
        let Some(id) = self.peer_id else {
            return;
        };
        let now = Instant::now();
        if shared.meta.private || self.next_at.is_some_and(|t| now < t) {
            return;
        }
        // Nothing new is checked for again soon; a message sent waits a minute.
        self.next_at = Some(now + PEX_RECHECK);
        let current = connected_listeners(shared, key);
        let added: Vec<(SocketAddr, u8)> = current
            .iter()
            .filter(|(a, _)| !self.sent.contains(*a))
            .map(|(a, f)| (*a, *f))
            .take(extension::MAX_PEX_PEERS)
            .collect();
        let dropped: Vec<SocketAddr> =
            self.sent.iter().filter(|a| !current.contains_key(*a)).copied().take(extension::MAX_PEX_PEERS).collect();
        if added.is_empty() && dropped.is_empty() {
            return;
        }
        self.next_at = Some(now + PEX_EVERY);
        self.sent.extend(added.iter().map(|(a, _)| *a));
        for d in &dropped {
            self.sent.remove(d);
        }
        out.push_small(&Message::Extended { id, payload: &PexMsg { added, dropped }.encode() });
    }
}

/// Connected peers but `except`, by listening address, with their BEP 11 flags.
fn connected_listeners(shared: &TorrentShared, except: PeerKey) -> HashMap<SocketAddr, u8> {
    let inner = shared.lock();
    inner
        .peers()
        .iter()
        .filter(|(k, _)| **k != except)
        .filter_map(|(k, h)| {
            let listen = h.listen()?;
            let seed = if h.is_seed.load(Ordering::Relaxed) { extension::PEX_SEED } else { 0 };
            // We dialled it at that address, so it is reachable.
            let reachable = if listen == *k { extension::PEX_REACHABLE } else { 0 };
            Some((listen, seed | reachable))
        })
        .collect()
}
