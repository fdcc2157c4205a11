//! Piece and block selection, pure: rarest first (random among the first few
//! pieces, so new peers have something to trade quickly), partial pieces
//! finished before new ones start, an endgame that asks for the last blocks
//! twice, and "parole" for a piece that failed its hash with several
//! contributors: it is re-downloaded from one peer alone, so the next failure
//! names the culprit.
//!
//! Received blocks are assembled in memory; a complete piece is handed back
//! whole for hashing, so unverified bytes never reach the disk. The bytes held
//! in partial pieces are capped by `buffer_budget`.

use crate::types::Bitfield;
use crate::wire::{BlockRef, BLOCK_LEN};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;

pub type PeerKey = SocketAddr;

/// Pieces picked at random before rarest-first takes over.
const RANDOM_FIRST_PIECES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Wanted,
    Partial,
    /// Complete in memory, being hashed and written.
    Verifying,
    Have,
}

struct Partial {
    buf: Vec<u8>,
    /// Outstanding requests per block.
    requested: Vec<u8>,
    received: Vec<bool>,
    received_count: usize,
    contributors: Vec<PeerKey>,
    /// On parole: only this peer may fetch it.
    exclusive: Option<PeerKey>,
}

/// A piece whose every block has arrived.
pub struct CompletePiece {
    pub index: u32,
    pub data: Vec<u8>,
    pub contributors: Vec<PeerKey>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    /// Not a block we asked anybody for (wrong piece, offset, or length).
    Unexpected,
    /// Already received from someone else (endgame).
    Duplicate,
    Accepted,
}

pub struct Picker {
    piece_length: u64,
    total_length: u64,
    status: Vec<Status>,
    availability: Vec<u32>,
    partial: HashMap<u32, Partial>,
    parole: std::collections::HashSet<u32>,
    have_count: usize,
    /// Pieces wanted and not started; zero means endgame.
    unstarted: usize,
    buffer_budget: usize,
    buffered: usize,
    /// Piece buffers given back after hashing, reused so that every piece does
    /// not fault in and zero fresh memory. Within the budget with `buffered`.
    spare: Vec<Vec<u8>>,
    rng: SmallRng,
}

impl Picker {
    pub fn new(piece_length: u64, total_length: u64, have: &Bitfield, buffer_budget: usize, seed: u64) -> Picker {
        let n = have.len();
        let status = (0..n).map(|i| if have.get(i) { Status::Have } else { Status::Wanted }).collect();
        Picker {
            piece_length,
            total_length,
            status,
            availability: vec![0; n],
            partial: HashMap::new(),
            parole: Default::default(),
            have_count: have.count(),
            unstarted: n - have.count(),
            buffer_budget,
            buffered: 0,
            spare: Vec::new(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    pub fn piece_count(&self) -> usize {
        self.status.len()
    }

    pub fn piece_len(&self, index: u32) -> u32 {
        let start = index as u64 * self.piece_length;
        (self.total_length - start).min(self.piece_length) as u32
    }

    fn block_count(&self, index: u32) -> usize {
        (self.piece_len(index) as usize).div_ceil(BLOCK_LEN as usize)
    }

    fn block(&self, index: u32, b: usize) -> BlockRef {
        let offset = b as u32 * BLOCK_LEN;
        BlockRef { piece: index, offset, len: BLOCK_LEN.min(self.piece_len(index) - offset) }
    }

    pub fn is_complete(&self) -> bool {
        self.have_count == self.status.len()
    }

    /// Every missing piece is started: duplicate requests are allowed.
    pub fn in_endgame(&self) -> bool {
        self.unstarted == 0
    }

    pub fn have_count(&self) -> usize {
        self.have_count
    }

    /// Bytes sitting in partial piece buffers.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Whether the peer has any piece we still want.
    pub fn wants_any(&self, peer_has: &Bitfield) -> bool {
        peer_has.iter_ones().any(|i| matches!(self.status[i], Status::Wanted | Status::Partial))
    }

    /// Pieces started and not yet verified (blocks arriving, or hashing).
    pub fn in_progress(&self) -> impl Iterator<Item = u32> + '_ {
        self.status
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Status::Partial | Status::Verifying))
            .map(|(i, _)| i as u32)
    }

    /// How many connected peers have each piece.
    pub fn availability(&self) -> &[u32] {
        &self.availability
    }

    pub fn wants(&self, piece: u32) -> bool {
        matches!(self.status.get(piece as usize), Some(Status::Wanted | Status::Partial))
    }

    pub fn peer_bitfield(&mut self, has: &Bitfield, added: bool) {
        for i in has.iter_ones() {
            if added {
                self.availability[i] += 1;
            } else {
                self.availability[i] = self.availability[i].saturating_sub(1);
            }
        }
    }

    pub fn peer_have(&mut self, piece: u32) {
        if let Some(a) = self.availability.get_mut(piece as usize) {
            *a += 1;
        }
    }

    /// Chooses up to `max` blocks for a peer that has `peer_has`; `mine` are
    /// the blocks this peer already has outstanding (never asked twice).
    pub fn pick(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        max: usize,
        mine: &dyn Fn(&BlockRef) -> bool,
        out: &mut Vec<BlockRef>,
    ) {
        let start_len = out.len();
        // 1. Unrequested blocks of partial pieces, fewest missing first.
        let mut partials: Vec<(usize, u32)> = self
            .partial
            .iter()
            .filter(|(i, p)| peer_has.get(**i as usize) && p.exclusive.is_none_or(|e| e == peer))
            .map(|(i, p)| (p.received.len() - p.received_count, *i))
            .collect();
        partials.sort_unstable();
        for &(_, index) in &partials {
            self.take_blocks(index, max - (out.len() - start_len), false, mine, out);
            if out.len() - start_len >= max {
                return;
            }
        }
        // 2. New pieces, while the buffer budget allows.
        while out.len() - start_len < max && self.buffered < self.buffer_budget {
            let Some(index) = self.choose_new_piece(peer_has) else {
                break;
            };
            let len = self.piece_len(index) as usize;
            let blocks = self.block_count(index);
            let exclusive = self.parole.remove(&index).then_some(peer);
            let buf = self.take_buffer(len);
            self.partial.insert(
                index,
                Partial {
                    buf,
                    requested: vec![0; blocks],
                    received: vec![false; blocks],
                    received_count: 0,
                    contributors: Vec::new(),
                    exclusive,
                },
            );
            self.buffered += len;
            self.unstarted -= 1;
            self.status[index as usize] = Status::Partial;
            self.take_blocks(index, max - (out.len() - start_len), false, mine, out);
        }
        // 3. Endgame: nothing new to start, every missing block is requested;
        // ask for blocks others have outstanding too.
        if out.len() == start_len && !self.any_wanted_unstarted(peer_has) {
            for &(_, index) in &partials {
                self.take_blocks(index, max - (out.len() - start_len), true, mine, out);
                if out.len() - start_len >= max {
                    return;
                }
            }
        }
    }

    /// A buffer of `len` bytes; its old contents do not matter, as every
    /// byte is overwritten by a block before the piece is complete.
    fn take_buffer(&mut self, len: usize) -> Vec<u8> {
        match self.spare.iter().position(|b| b.len() == len) {
            Some(i) => self.spare.swap_remove(i),
            None => vec![0u8; len],
        }
    }

    /// Takes back a piece buffer once its hash job is done.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        let spare_bytes: usize = self.spare.iter().map(|b| b.len()).sum();
        if !self.is_complete() && self.buffered + spare_bytes + buf.len() <= self.buffer_budget {
            self.spare.push(buf);
        }
        if self.is_complete() {
            self.spare = Vec::new();
        }
    }

    fn any_wanted_unstarted(&self, peer_has: &Bitfield) -> bool {
        peer_has.iter_ones().any(|i| self.status[i] == Status::Wanted)
    }

    fn take_blocks(
        &mut self,
        index: u32,
        max: usize,
        endgame: bool,
        mine: &dyn Fn(&BlockRef) -> bool,
        out: &mut Vec<BlockRef>,
    ) {
        let blocks = self.block_count(index);
        let mut taken = 0;
        for b in 0..blocks {
            if taken >= max {
                break;
            }
            let block = self.block(index, b);
            let p = self.partial.get_mut(&index).unwrap();
            if p.received[b] {
                continue;
            }
            let free = p.requested[b] == 0;
            // In endgame a block may be asked of two peers at most, and only
            // outside parole (where one peer must deliver the whole piece).
            let endgame_ok = endgame && p.exclusive.is_none() && p.requested[b] < 2 && !mine(&block);
            if free || endgame_ok {
                p.requested[b] = p.requested[b].saturating_add(1);
                out.push(block);
                taken += 1;
            }
        }
    }

    fn choose_new_piece(&mut self, peer_has: &Bitfield) -> Option<u32> {
        let n = self.status.len();
        if n == 0 {
            return None;
        }
        let start = self.rng.gen_range(0..n);
        let random_phase = self.have_count + self.partial.len() < RANDOM_FIRST_PIECES;
        let mut best: Option<(u32, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if self.status[i] != Status::Wanted || !peer_has.get(i) {
                continue;
            }
            if random_phase {
                return Some(i as u32);
            }
            let a = self.availability[i];
            if best.is_none_or(|(ba, _)| a < ba) {
                best = Some((a, i));
                if a <= 1 {
                    break; // nothing is rarer than a single source
                }
            }
        }
        best.map(|(_, i)| i as u32)
    }

    /// A requested block will not arrive (choked, cancelled, peer gone).
    pub fn request_dropped(&mut self, block: &BlockRef) {
        let b = (block.offset / BLOCK_LEN) as usize;
        if let Some(p) = self.partial.get_mut(&block.piece) {
            if let Some(r) = p.requested.get_mut(b) {
                *r = r.saturating_sub(1);
            }
        }
    }

    /// Stores a received block; returns the complete piece when it was the last.
    pub fn block_received(
        &mut self,
        peer: PeerKey,
        piece: u32,
        offset: u32,
        data: &[u8],
    ) -> (BlockOutcome, Option<CompletePiece>) {
        if !offset.is_multiple_of(BLOCK_LEN) || piece as usize >= self.status.len() {
            return (BlockOutcome::Unexpected, None);
        }
        let b = (offset / BLOCK_LEN) as usize;
        let expected_len = match b < self.block_count(piece) {
            true => self.block(piece, b).len as usize,
            false => return (BlockOutcome::Unexpected, None),
        };
        let Some(p) = self.partial.get_mut(&piece) else {
            let outcome = if self.status[piece as usize] == Status::Wanted {
                BlockOutcome::Unexpected
            } else {
                BlockOutcome::Duplicate
            };
            return (outcome, None);
        };
        if data.len() != expected_len || p.exclusive.is_some_and(|e| e != peer) {
            return (BlockOutcome::Unexpected, None);
        }
        if p.received[b] {
            return (BlockOutcome::Duplicate, None);
        }
        p.buf[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        p.received[b] = true;
        p.received_count += 1;
        p.requested[b] = p.requested[b].saturating_sub(1);
        if !p.contributors.contains(&peer) {
            p.contributors.push(peer);
        }
        if p.received_count < p.received.len() {
            return (BlockOutcome::Accepted, None);
        }
        // The piece stays in the budget until its hash job is done: the disk
        // queue holds its buffer until then.
        let p = self.partial.remove(&piece).unwrap();
        self.status[piece as usize] = Status::Verifying;
        (BlockOutcome::Accepted, Some(CompletePiece { index: piece, data: p.buf, contributors: p.contributors }))
    }

    /// Returns a verifying piece's bytes to the buffer budget.
    fn release_verifying(&mut self, piece: u32) {
        if self.status[piece as usize] == Status::Verifying {
            self.buffered -= self.piece_len(piece) as usize;
        }
    }

    pub fn piece_verified(&mut self, piece: u32) {
        self.release_verifying(piece);
        if self.status[piece as usize] != Status::Have {
            self.status[piece as usize] = Status::Have;
            self.have_count += 1;
        }
    }

    /// The piece failed its hash: download it again; with several
    /// contributors, from one peer alone.
    pub fn piece_failed(&mut self, piece: u32, contributors: usize) {
        self.release_verifying(piece);
        self.status[piece as usize] = Status::Wanted;
        self.unstarted += 1;
        if contributors > 1 {
            self.parole.insert(piece);
        }
    }

    /// Forgets a verified piece (recheck found it bad on disk).
    pub fn piece_lost(&mut self, piece: u32) {
        if self.status[piece as usize] == Status::Have {
            self.status[piece as usize] = Status::Wanted;
            self.have_count -= 1;
            self.unstarted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u16) -> PeerKey {
        SocketAddr::from(([127, 0, 0, 1], n))
    }
    const NONE: &dyn Fn(&BlockRef) -> bool = &|_| false;

    #[test]
    fn rarest_first_after_random_start() {
        // 8 pieces of one block each; piece 5 is the rarest. Over several
        // seeds the random phase sometimes skips piece 5: each time, the
        // first pick after it must be piece 5.
        let mut skipped_five = 0;
        for seed in 0..32 {
            let mut p = Picker::new(16384, 8 * 16384, &Bitfield::new(8), usize::MAX, seed);
            let all = Bitfield::full(8);
            p.peer_bitfield(&all, true);
            for i in (0..8).filter(|&i| i != 5) {
                p.peer_have(i);
            }
            let mut out = Vec::new();
            p.pick(peer(1), &all, RANDOM_FIRST_PIECES, NONE, &mut out);
            assert_eq!(out.len(), RANDOM_FIRST_PIECES);
            if out.iter().any(|b| b.piece == 5) {
                continue;
            }
            skipped_five += 1;
            let mut next = Vec::new();
            p.pick(peer(1), &all, 1, NONE, &mut next);
            assert_eq!(next[0].piece, 5, "seed {seed}: the rarest piece comes first after the random phase");
        }
        assert!(skipped_five > 0, "no seed left piece 5 out of the random phase; the test proves nothing");
    }

    #[test]
    fn assembles_pieces_and_reports_completion() {
        let len = 40000u64; // 3 blocks: 16384, 16384, 7232
        let mut p = Picker::new(len, len, &Bitfield::new(1), usize::MAX, 2);
        let all = Bitfield::full(1);
        p.peer_bitfield(&all, true);
        let mut out = Vec::new();
        p.pick(peer(1), &all, 10, NONE, &mut out);
        assert_eq!(out.iter().map(|b| b.len).collect::<Vec<_>>(), vec![16384, 16384, 7232]);
        assert_eq!(p.buffered_bytes(), 40000);
        let data: Vec<u8> = (0..40000u32).map(|i| i as u8).collect();
        // Wrong length and wrong offset are refused.
        assert_eq!(p.block_received(peer(1), 0, 0, &data[..100]).0, BlockOutcome::Unexpected);
        assert_eq!(p.block_received(peer(1), 0, 5, &data[..16384]).0, BlockOutcome::Unexpected);
        assert_eq!(p.block_received(peer(1), 0, 16384 * 9, &data[..16384]).0, BlockOutcome::Unexpected);
        let (o, done) = p.block_received(peer(1), 0, 0, &data[..16384]);
        assert_eq!(o, BlockOutcome::Accepted);
        assert!(done.is_none());
        assert_eq!(p.block_received(peer(1), 0, 0, &data[..16384]).0, BlockOutcome::Duplicate);
        assert!(p.block_received(peer(1), 0, 32768, &data[32768..]).1.is_none());
        let (o, done) = p.block_received(peer(1), 0, 16384, &data[16384..32768]);
        assert_eq!(o, BlockOutcome::Accepted);
        let done = done.unwrap();
        assert_eq!(done.data, data);
        assert_eq!(done.contributors, vec![peer(1)]);
        assert_eq!(p.buffered_bytes(), 40000, "counted until verified");
        p.piece_verified(0);
        assert_eq!(p.buffered_bytes(), 0);
        assert!(p.is_complete());
    }

    #[test]
    fn only_what_the_peer_has_and_never_twice_before_endgame() {
        let mut p = Picker::new(16384, 4 * 16384, &Bitfield::new(4), usize::MAX, 3);
        let mut has = Bitfield::new(4);
        has.set(1);
        has.set(2);
        p.peer_bitfield(&has, true);
        let mut a = Vec::new();
        p.pick(peer(1), &has, 10, NONE, &mut a);
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|b| b.piece == 1 || b.piece == 2));
        // Second peer with the same pieces: endgame duplicates, not fresh blocks.
        let mut b = Vec::new();
        p.pick(peer(2), &has, 10, NONE, &mut b);
        assert_eq!(b.len(), 2, "endgame asks a second peer");
        let mut c = Vec::new();
        p.pick(peer(3), &has, 10, NONE, &mut c);
        assert!(c.is_empty(), "at most two outstanding copies of a block");
        // The peer's own outstanding blocks are never duplicated to it.
        let mut d = Vec::new();
        let mine_all: &dyn Fn(&BlockRef) -> bool = &|_| true;
        p.request_dropped(&b[0]);
        p.request_dropped(&a[0]);
        p.pick(peer(1), &has, 10, mine_all, &mut d);
        assert_eq!(d.len(), 1, "a freed block is free for anyone");
    }

    #[test]
    fn dropped_requests_are_picked_again() {
        let mut p = Picker::new(32768, 32768, &Bitfield::new(1), usize::MAX, 4);
        let all = Bitfield::full(1);
        let mut a = Vec::new();
        p.pick(peer(1), &all, 1, NONE, &mut a);
        p.request_dropped(&a[0]);
        let mut b = Vec::new();
        p.pick(peer(2), &all, 1, NONE, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn buffer_budget_limits_new_pieces() {
        let mut p = Picker::new(16384, 10 * 16384, &Bitfield::new(10), 3 * 16384, 5);
        let all = Bitfield::full(10);
        let mut out = Vec::new();
        p.pick(peer(1), &all, 100, NONE, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(p.buffered_bytes(), 3 * 16384);
    }

    #[test]
    fn failed_piece_with_many_contributors_goes_on_parole() {
        let mut p = Picker::new(32768, 32768, &Bitfield::new(1), usize::MAX, 6);
        let all = Bitfield::full(1);
        let mut a = Vec::new();
        p.pick(peer(1), &all, 1, NONE, &mut a);
        let mut b = Vec::new();
        p.pick(peer(2), &all, 1, NONE, &mut b);
        let zeros = vec![0u8; 16384];
        p.block_received(peer(1), 0, a[0].offset, &zeros);
        let done = p.block_received(peer(2), 0, b[0].offset, &zeros).1.unwrap();
        assert_eq!(done.contributors.len(), 2);
        p.piece_failed(0, done.contributors.len());
        // The next peer to start it owns it alone.
        let mut c = Vec::new();
        p.pick(peer(2), &all, 1, NONE, &mut c);
        let mut d = Vec::new();
        p.pick(peer(1), &all, 5, NONE, &mut d);
        assert!(d.is_empty(), "peer 1 may not help with a piece on parole for peer 2");
        assert_eq!(p.block_received(peer(1), 0, 16384, &zeros).0, BlockOutcome::Unexpected);
    }
}
