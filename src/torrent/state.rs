//! What one torrent's tasks share behind its one lock ([`Inner`]): the
//! pieces held, the picker, the connected peers with their strikes and
//! bans ([`PeerTable`]), and what the disk pool and PEX hand to the torrent
//! task. Its fields are private so every change has a name: the have bit,
//! the picker and the byte count move together, and admissions and bans
//! follow one rule wherever they happen.

use super::picker::{PeerKey, Picker};
use super::PeerHandle;
use crate::types::Bitfield;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Pieces failed by a peer as the sole contributor before it is banned.
pub const STRIKES_TO_BAN: u32 = 3;

/// Pieces verified and written but not flushed yet, with when.
pub type Unflushed = Vec<(u32, Instant)>;

/// Why a peer was not admitted ([`PeerTable::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Banned,
    AlreadyConnected,
    /// The host has its share of connections already.
    HostFull,
}

/// The connected peers, and the strikes and bans earned by corrupt pieces.
#[derive(Default)]
pub struct PeerTable {
    peers: HashMap<PeerKey, Arc<PeerHandle>>,
    strikes: HashMap<[u8; 20], u32>,
    banned_ids: HashSet<[u8; 20]>,
    banned_addrs: HashSet<PeerKey>,
}

impl PeerTable {
    /// Adds a connected peer unless it is banned, connected already (by
    /// address or id), or its host has `per_host` connections.
    pub fn admit(&mut self, addr: PeerKey, handle: Arc<PeerHandle>, per_host: usize) -> Result<(), Refusal> {
        if self.banned_ids.contains(&handle.peer_id) || self.banned_addrs.contains(&addr) {
            return Err(Refusal::Banned);
        }
        if self.peers.contains_key(&addr) || self.peers.values().any(|p| p.peer_id == handle.peer_id) {
            return Err(Refusal::AlreadyConnected);
        }
        if self.at_host(addr.ip()) >= per_host {
            return Err(Refusal::HostFull);
        }
        self.peers.insert(addr, handle);
        Ok(())
    }

    /// Whether dialling `addr` could lead to an admission: not connected,
    /// not banned, its host below `per_host`.
    pub fn may_dial(&self, addr: PeerKey, per_host: usize) -> bool {
        !self.peers.contains_key(&addr) && !self.banned_addrs.contains(&addr) && self.at_host(addr.ip()) < per_host
    }

    /// Connections this torrent has with one host: one IPv4 address (also
    /// when it comes as `::ffff:a.b.c.d`) or one IPv6 /64, which one
    /// subscriber usually holds whole.
    pub fn at_host(&self, ip: IpAddr) -> usize {
        let host = crate::types::host_of(ip);
        self.peers.keys().filter(|k| crate::types::host_of(k.ip()) == host).count()
    }

    /// Removes the peer at `key` if it is still `handle` (a newer connection
    /// from the same address stays).
    pub fn remove(&mut self, key: PeerKey, handle: &Arc<PeerHandle>) {
        if self.peers.get(&key).is_some_and(|h| Arc::ptr_eq(h, handle)) {
            self.peers.remove(&key);
        }
    }

    /// The sole contributor of a corrupt piece earns a strike; at
    /// [`STRIKES_TO_BAN`] its id and address are banned and its handle is
    /// returned for the caller to close. None when not connected or not yet.
    pub fn strike(&mut self, culprit: PeerKey) -> Option<Arc<PeerHandle>> {
        let handle = self.peers.get(&culprit).cloned()?;
        let strikes = self.strikes.entry(handle.peer_id).or_insert(0);
        *strikes += 1;
        if *strikes < STRIKES_TO_BAN {
            return None;
        }
        self.banned_ids.insert(handle.peer_id);
        self.banned_addrs.insert(culprit);
        Some(handle)
    }

    pub fn get(&self, key: &PeerKey) -> Option<&Arc<PeerHandle>> {
        self.peers.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PeerKey, &Arc<PeerHandle>)> {
        self.peers.iter()
    }

    pub fn handles(&self) -> impl Iterator<Item = &Arc<PeerHandle>> {
        self.peers.values()
    }

    /// A copy of the table's keys and handles, to work on without the lock.
    pub fn snapshot(&self) -> Vec<(PeerKey, Arc<PeerHandle>)> {
        self.peers.iter().map(|(k, h)| (*k, h.clone())).collect()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// A torrent's state under its lock ([`super::TorrentShared::lock`]).
pub struct Inner {
    have: Bitfield,
    picker: Picker,
    /// Verified pieces in the order they completed, for `have` broadcasts.
    completed_order: Vec<u32>,
    /// Verified and written, but not yet flushed to disk, with when.
    unflushed: Unflushed,
    peers: PeerTable,
    disk_error: Option<String>,
    /// Peers heard of through PEX, for the torrent task to dial.
    pex_learned: Vec<SocketAddr>,
    /// Bytes of verified pieces.
    verified_bytes: u64,
}

impl Inner {
    pub fn new(have: Bitfield, picker: Picker, verified_bytes: u64) -> Inner {
        Inner {
            have,
            picker,
            completed_order: Vec::new(),
            unflushed: Vec::new(),
            peers: PeerTable::default(),
            disk_error: None,
            pex_learned: Vec::new(),
            verified_bytes,
        }
    }

    /// The pieces verified.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn picker(&self) -> &Picker {
        &self.picker
    }

    /// The picker, to record what peers have, requested and sent.
    pub fn picker_mut(&mut self) -> &mut Picker {
        &mut self.picker
    }

    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    pub fn peers_mut(&mut self) -> &mut PeerTable {
        &mut self.peers
    }

    /// Bytes of verified pieces.
    pub fn verified_bytes(&self) -> u64 {
        self.verified_bytes
    }

    /// How many pieces completed this session: a peer's place in
    /// [`Inner::completed_since`].
    pub fn completed_count(&self) -> usize {
        self.completed_order.len()
    }

    /// Pieces verified this session after the first `seen`, in order.
    pub fn completed_since(&self, seen: usize) -> &[u32] {
        &self.completed_order[seen.min(self.completed_order.len())..]
    }

    /// A piece passed its hash check and sits in storage. The have bit, the
    /// picker, the byte count and the unflushed list change together here
    /// and in [`Inner::mark_lost`], nowhere else. Returns whether it is new.
    pub fn mark_verified(&mut self, index: u32, piece_len: u32, now: Instant) -> bool {
        self.picker.piece_verified(index);
        if !self.have.set(index as usize) {
            return false;
        }
        self.completed_order.push(index);
        self.unflushed.push((index, now));
        self.verified_bytes += u64::from(piece_len);
        true
    }

    /// A piece we counted as verified is not (a recheck found it bad).
    pub fn mark_lost(&mut self, index: u32, piece_len: u32) {
        if !self.have.get(index as usize) {
            return;
        }
        self.have.clear(index as usize);
        self.picker.piece_lost(index);
        self.unflushed.retain(|(p, _)| *p != index);
        self.verified_bytes -= u64::from(piece_len);
    }

    /// Splits the unflushed pieces into those to flush now (verified before
    /// `older_than`, or all with `all`) and those kept for a later save.
    /// The latter stay listed; the former are the caller's to flush, and to
    /// give back with [`Inner::unflush`] if flushing fails.
    pub fn take_flushable(&mut self, all: bool, older_than: std::time::Duration) -> (Unflushed, Unflushed) {
        let (flush, pending): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.unflushed).into_iter().partition(|(_, at)| all || at.elapsed() >= older_than);
        self.unflushed = pending.clone();
        (flush, pending)
    }

    /// Pieces whose flush failed are unflushed again.
    pub fn unflush(&mut self, pieces: &[(u32, Instant)]) {
        self.unflushed.extend_from_slice(pieces);
    }

    /// Notes a failed read or write; the first one is kept.
    pub fn note_disk_error(&mut self, what: String) {
        self.disk_error.get_or_insert(what);
    }

    /// The disk error noted since the last call, if any.
    pub fn take_disk_error(&mut self) -> Option<String> {
        self.disk_error.take()
    }

    /// Peers learned through PEX are queued for the torrent task, up to
    /// `max` waiting.
    pub fn learn_pex(&mut self, addrs: impl Iterator<Item = SocketAddr>, max: usize) {
        let room = max.saturating_sub(self.pex_learned.len());
        self.pex_learned.extend(addrs.take(room));
    }

    /// The peers learned through PEX since the last call.
    pub fn take_pex(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.pex_learned)
    }
}
