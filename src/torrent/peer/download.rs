//! What we fetch from one peer: interest, our requests and their pipeline,
//! the blocks that arrive, and the peer's choke as it bears on our requests.
//! With a fast peer (BEP 6) also its rejects, its allowed-fast set and the
//! requests a choking peer holds; in endgame, a block that arrives is
//! cancelled at every other peer.

use crate::conn::{ConnEnd, OutQueue};
use crate::torrent::fast::{AllowedIn, StrayRejects};
use crate::torrent::picker::{BlockOutcome, CompletePiece, PeerKey};
use crate::torrent::{PeerHandle, TorrentShared};
use crate::types::Bitfield;
use crate::wire::{BlockRef, Message, BLOCK_LEN};
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const SNUB_AFTER: Duration = Duration::from_secs(60);
const MIN_PIPELINE: usize = 8;
const MAX_PIPELINE: usize = 256;
const START_PIPELINE: usize = 32;
/// A peer's data kept requested, in milliseconds of its rate.
const PIPELINE_MILLIS: u64 = 500;
/// A fast peer that chokes us has this long to answer our requests (block or
/// reject) before they are cancelled and given back to the picker.
const CHOKED_REQUESTS_HELD: Duration = Duration::from_secs(30);
/// Pieces a fast peer rejected while unchoking us, not asked of it again
/// until it unchokes us anew; the oldest is forgotten past this many.
const MAX_REFUSED: usize = 16;

/// What we fetch from this peer.
pub(super) struct Download {
    am_interested: bool,
    peer_choking: bool,
    /// The peer speaks the fast extension.
    fast: bool,
    /// Since when a fast peer chokes us (our requests stay outstanding).
    choked_at: Option<Instant>,
    /// Pieces the peer lets us fetch while it chokes us.
    allowed: AllowedIn,
    /// Pieces it rejected a block of: not asked of it again until it next
    /// unchokes us (at most [`MAX_REFUSED`]).
    refused: Vec<u32>,
    strays: StrayRejects,
    outstanding: HashSet<BlockRef>,
    pipeline: usize,
    /// The picker gave fewer blocks than the pipeline had room for at the
    /// last fill: the pipeline is short of blocks, not of depth, and is not
    /// grown (slow start) but cut back to what the peer's rate needs.
    short: bool,
    /// Our pipeline's ceiling: ours, or the peer's `reqq` if lower.
    max_pipeline: usize,
    last_block: Instant,
    bytes_this_tick: u64,
    /// Payload received but not yet charged to the download limit.
    unmetered: u64,
    /// Smoothed bytes per second.
    rate: u64,
    completed: Vec<CompletePiece>,
}

impl Default for Download {
    fn default() -> Download {
        Download {
            am_interested: false,
            peer_choking: true,
            fast: false,
            choked_at: None,
            allowed: AllowedIn::default(),
            refused: Vec::new(),
            strays: StrayRejects::default(),
            outstanding: HashSet::new(),
            pipeline: START_PIPELINE,
            short: false,
            max_pipeline: MAX_PIPELINE,
            last_block: Instant::now(),
            bytes_this_tick: 0,
            unmetered: 0,
            rate: 0,
            completed: Vec::new(),
        }
    }
}

impl Download {
    pub(super) fn new(fast: bool) -> Download {
        Download { fast, ..Download::default() }
    }

    pub(super) fn set_interest(&mut self, wants: bool, handle: &PeerHandle, out: &mut OutQueue) {
        if wants != self.am_interested {
            self.am_interested = wants;
            handle.am_interested.store(wants, Ordering::Relaxed);
            out.push_small(if wants { &Message::Interested } else { &Message::NotInterested });
        }
    }

    /// A `piece` message: `at` names the block (its length is the data's).
    pub(super) fn on_piece(
        &mut self,
        shared: &TorrentShared,
        handle: &PeerHandle,
        key: PeerKey,
        at: BlockRef,
        data: &[u8],
    ) {
        let block = BlockRef { len: data.len() as u32, ..at };
        self.outstanding.remove(&block);
        let len = data.len() as u64;
        // Every byte used the link; only blocks we asked for and still
        // needed count as downloaded (for trackers, ratios and the choker).
        self.unmetered += len;
        let (outcome, complete, endgame) = {
            let mut inner = shared.lock();
            let picker = inner.picker_mut();
            let (o, c) = picker.block_received(key, block.piece, block.offset, data);
            (o, c, picker.in_endgame())
        };
        self.completed.extend(complete);
        if outcome != BlockOutcome::Accepted {
            shared.wasted.fetch_add(len, Ordering::Relaxed);
            shared.env.metrics().wasted_bytes.inc_by(len);
            return;
        }
        shared.received.fetch_add(len, Ordering::Relaxed);
        handle.bytes_down.fetch_add(len, Ordering::Relaxed);
        self.bytes_this_tick += len;
        self.last_block = Instant::now();
        handle.snubbed.store(false, Ordering::Relaxed);
        if endgame {
            broadcast_cancel(shared, key, block);
        }
    }

    pub(super) fn on_tick(&mut self, now: Instant, handle: &PeerHandle) {
        self.rate = smoothed(self.rate, self.bytes_this_tick);
        self.bytes_this_tick = 0;
        let snubbed = !self.peer_choking && !self.outstanding.is_empty() && now - self.last_block > SNUB_AFTER;
        handle.snubbed.store(snubbed, Ordering::Relaxed);
        let target = pipeline_for(self.rate, self.max_pipeline);
        self.pipeline = match (snubbed, self.short) {
            (true, _) => 1,
            // The picker ran short (the piece buffer is full): a pipeline
            // deeper than the rate needs holds buffer others wait for.
            (false, true) => target,
            // Deeper than the rate says is kept while blocks are plenty: a
            // peer far away needs a round trip's worth, whatever its rate.
            (false, false) => target.max(self.pipeline.min(self.max_pipeline)),
        };
    }

    /// BEP 6: a fast peer's choke leaves our requests to be answered, each
    /// by its block or a reject; without the extension it cancels them all
    /// (false: the caller drops them).
    pub(super) fn on_choke(&mut self, now: Instant) -> bool {
        self.peer_choking = true;
        if self.fast {
            self.choked_at.get_or_insert(now);
        }
        self.fast
    }

    pub(super) fn on_unchoke(&mut self) {
        self.peer_choking = false;
        self.choked_at = None;
        self.refused.clear();
    }

    /// The peer will not send `b`: true when it was outstanding, and the
    /// caller hands it back to the picker at once, for another peer to
    /// fetch; its piece is not asked of this one again for now. A reject of
    /// nothing outstanding is tolerated, within bounds.
    pub(super) fn on_reject(&mut self, b: BlockRef) -> Result<bool, ConnEnd> {
        if !self.outstanding.remove(&b) {
            if self.strays.unmatched() {
                return Ok(false);
            }
            return Err(ConnEnd::Protocol("too many rejects of requests never made".into()));
        }
        if !self.refused.contains(&b.piece) {
            if self.refused.len() >= MAX_REFUSED {
                self.refused.remove(0);
            }
            self.refused.push(b.piece);
        }
        Ok(true)
    }

    /// A fast peer's `allowed_fast`: true when the piece is new to its set.
    pub(super) fn on_allowed_fast(&mut self, piece: u32, piece_count: usize) -> bool {
        self.allowed.add(piece, piece_count)
    }

    /// Endgame cancels from other peers' deliveries, of blocks still
    /// outstanding here.
    pub(super) fn on_endgame_cancels(&mut self, cancels: Vec<BlockRef>, out: &mut OutQueue) {
        for b in cancels {
            if self.outstanding.remove(&b) {
                out.push_small(&Message::Cancel(b));
                self.strays.cancelled();
            }
        }
    }

    /// Cancels the requests a choking fast peer held too long (see
    /// [`Download::take_held`]) and hands them back to the picker.
    pub(super) fn cancel_held(&mut self, now: Instant, shared: &TorrentShared, out: &mut OutQueue) {
        let held = self.take_held(now);
        if !held.is_empty() {
            let mut inner = shared.lock();
            for b in held {
                inner.picker_mut().request_dropped(&b);
                out.push_small(&Message::Cancel(b));
            }
        }
    }

    /// Interest can lapse when others delivered what this peer has: looked
    /// at again while no request is outstanding.
    pub(super) fn renew_interest(
        &mut self,
        shared: &TorrentShared,
        handle: &PeerHandle,
        peer_has: &Bitfield,
        out: &mut OutQueue,
    ) {
        if self.am_interested && !self.outstanding.is_empty() {
            return;
        }
        let wants = shared.lock().picker().wants_any(peer_has);
        self.set_interest(wants, handle, out);
    }

    /// A bound from the peer's `reqq` on our pipeline.
    pub(super) fn limit_pipeline(&mut self, reqq: usize) {
        self.max_pipeline = reqq.min(MAX_PIPELINE);
        self.pipeline = self.pipeline.min(self.max_pipeline);
    }

    /// Pieces completed by blocks of this peer, for the disk pool.
    pub(super) fn take_completed(&mut self) -> Vec<CompletePiece> {
        std::mem::take(&mut self.completed)
    }

    /// Payload received since the last call, to charge to the download limit.
    pub(super) fn take_unmetered(&mut self) -> u64 {
        std::mem::take(&mut self.unmetered)
    }

    /// Requests a choking fast peer left unanswered for
    /// [`CHOKED_REQUESTS_HELD`], but for those of its allowed-fast pieces:
    /// no longer outstanding, for the caller to cancel and hand back.
    fn take_held(&mut self, now: Instant) -> Vec<BlockRef> {
        let held_since = self.choked_at.filter(|_| self.peer_choking && !self.outstanding.is_empty());
        if held_since.is_none_or(|t| now - t < CHOKED_REQUESTS_HELD) {
            return Vec::new();
        }
        let allowed = &self.allowed;
        let held: Vec<BlockRef> = self.outstanding.iter().filter(|b| !allowed.contains(b.piece)).copied().collect();
        for b in &held {
            self.outstanding.remove(b);
            self.strays.cancelled();
        }
        held
    }

    /// What may be asked of the peer: all it has while it unchokes us, its
    /// allowed-fast pieces while it chokes us, less the pieces it refused.
    /// Borrowed, without a copy, in the common case (unchoked, no refusal).
    fn pickable<'a>(&self, peer_has: &'a Bitfield) -> Cow<'a, Bitfield> {
        if !self.peer_choking && self.refused.is_empty() {
            return Cow::Borrowed(peer_has);
        }
        let mut mask = if self.peer_choking {
            let mut m = Bitfield::new(peer_has.len());
            for p in self.allowed.iter().filter(|p| peer_has.get(*p as usize)) {
                m.set(p as usize);
            }
            m
        } else {
            peer_has.clone()
        };
        for p in &self.refused {
            mask.clear(*p as usize);
        }
        Cow::Owned(mask)
    }

    /// Tops the pipeline up from the picker.
    pub(super) fn fill(&mut self, shared: &TorrentShared, key: PeerKey, peer_has: &Bitfield, out: &mut OutQueue) {
        if !self.am_interested || self.outstanding.len() >= self.pipeline {
            return;
        }
        // Choked, only allowed-fast pieces may be asked for (fast peers only).
        if self.peer_choking && self.allowed.is_empty() {
            return;
        }
        // Grow the pipeline while the peer keeps it drained (slow start), but
        // not when it drained because the picker had no blocks to give: a
        // pipeline grown then takes the whole piece buffer at the next fill
        // and holds it for seconds at a slow peer while the others wait.
        if !self.short && self.outstanding.len() < self.pipeline / 2 && self.pipeline < self.max_pipeline {
            self.pipeline += 4;
        }
        let want = self.pipeline - self.outstanding.len();
        let mut picked = Vec::with_capacity(want);
        let pickable = self.pickable(peer_has);
        {
            let outstanding = &self.outstanding;
            let mut inner = shared.lock();
            inner.picker_mut().pick(key, &pickable, want, &|b| outstanding.contains(b), &mut picked);
        }
        self.short = picked.len() < want;
        for b in picked {
            self.outstanding.insert(b);
            out.push_small(&Message::Request(b));
        }
    }

    pub(super) fn drop_outstanding(&mut self, shared: &TorrentShared) {
        if self.outstanding.is_empty() {
            return;
        }
        let mut inner = shared.lock();
        for b in self.outstanding.drain() {
            inner.picker_mut().request_dropped(&b);
        }
    }
}

/// The smoothed rate after a tick that brought `bytes`; the first sample is
/// taken as it is, so a new peer's rate is not underestimated for seconds.
fn smoothed(rate: u64, bytes: u64) -> u64 {
    match rate {
        0 => bytes,
        _ => (rate * 3 + bytes) / 4,
    }
}

/// The pipeline for a peer delivering `rate` bytes per second: half a
/// second of its data, enough to ride out a rate limiter's bursts, and no
/// more of the piece buffer than a slow peer needs (slow start grows it
/// between ticks).
fn pipeline_for(rate: u64, max_pipeline: usize) -> usize {
    ((rate * PIPELINE_MILLIS / 1000 / BLOCK_LEN as u64) as usize).clamp(MIN_PIPELINE.min(max_pipeline), max_pipeline)
}

/// In endgame, a block that arrived is cancelled at every other peer.
fn broadcast_cancel(shared: &TorrentShared, from: PeerKey, block: BlockRef) {
    let inner = shared.lock();
    for (k, h) in inner.peers().iter() {
        if *k != from {
            h.cancel(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torrent::fast;

    fn block(piece: u32, offset: u32) -> BlockRef {
        BlockRef { piece, offset, len: BLOCK_LEN }
    }

    fn fast_download(outstanding: &[BlockRef]) -> Download {
        let mut d = Download { fast: true, peer_choking: false, am_interested: true, ..Download::default() };
        d.outstanding.extend(outstanding.iter().copied());
        d
    }

    #[test]
    fn the_pipeline_for_a_rate_is_half_a_second_of_it() {
        let kib = 1024;
        // A peer limited to 512 KiB/s: 16 blocks, not the 32 it started with.
        assert_eq!(pipeline_for(512 * kib, MAX_PIPELINE), 16);
        assert_eq!(pipeline_for(0, MAX_PIPELINE), MIN_PIPELINE);
        assert_eq!(pipeline_for(1 << 30, MAX_PIPELINE), MAX_PIPELINE);
        assert_eq!(pipeline_for(1 << 30, 5), 5, "the peer's reqq bounds it");
        assert_eq!(pipeline_for(0, 5), 5);
        // The first second's bytes are the rate, not a quarter of it.
        assert_eq!(smoothed(0, 512 * kib), 512 * kib);
        assert_eq!(smoothed(512 * kib, 0), 384 * kib);
    }

    #[test]
    fn a_deep_pipeline_is_cut_back_to_the_rate_only_when_the_picker_runs_short() {
        let handle = PeerHandle::new([1; 20], None);
        let t0 = Instant::now();
        let ticked = |short: bool| {
            let mut d = fast_download(&[block(1, 0)]);
            d.pipeline = 64;
            d.short = short;
            d.bytes_this_tick = 512 * 1024;
            d.on_tick(t0, &handle);
            d.pipeline
        };
        assert_eq!(ticked(false), 64, "blocks are plenty: a far peer keeps its round trip's worth");
        assert_eq!(ticked(true), 16, "the buffer is full: half a second of the peer's rate");
    }

    #[test]
    fn a_fast_peers_choke_keeps_requests_and_anothers_drops_them() {
        let now = Instant::now();
        let mut fast = fast_download(&[block(1, 0), block(2, 0)]);
        assert!(fast.on_choke(now), "kept: the caller drops nothing");
        assert_eq!(fast.outstanding.len(), 2);
        let mut plain = Download { fast: false, ..fast_download(&[block(1, 0)]) };
        assert!(!plain.on_choke(now), "without BEP 6 the choke cancels them");
    }

    #[test]
    fn a_reject_frees_its_block_and_keeps_the_piece_from_this_peer() {
        let mut d = fast_download(&[block(3, 0), block(3, BLOCK_LEN)]);
        assert_eq!(d.on_reject(block(3, 0)), Ok(true), "handed back to the picker");
        assert_eq!(d.outstanding.len(), 1);
        let has = Bitfield::full(8);
        let pickable = d.pickable(&has);
        assert!(!pickable.get(3) && pickable.get(4), "not asked of this peer again");
        d.on_unchoke();
        assert!(matches!(d.pickable(&has), Cow::Borrowed(_)), "a new unchoke forgets it");
    }

    #[test]
    fn rejects_of_nothing_are_tolerated_within_bounds() {
        let mut d = fast_download(&[]);
        d.strays.cancelled();
        for _ in 0..=fast::MAX_STRAY_REJECTS {
            assert_eq!(d.on_reject(block(0, 0)), Ok(false));
        }
        assert!(d.on_reject(block(0, 0)).is_err());
    }

    #[test]
    fn choked_only_allowed_fast_pieces_the_peer_has_are_pickable() {
        let mut d = fast_download(&[]);
        d.on_choke(Instant::now());
        let mut has = Bitfield::new(8);
        has.set(2);
        has.set(5);
        d.allowed.add(5, 8);
        d.allowed.add(6, 8);
        let pickable = d.pickable(&has);
        assert_eq!(pickable.iter_ones().collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn requests_a_choking_peer_holds_too_long_are_taken_back_but_allowed_ones() {
        let t0 = Instant::now();
        let mut d = fast_download(&[block(1, 0), block(5, 0)]);
        d.allowed.add(5, 8);
        d.on_choke(t0);
        assert!(d.take_held(t0 + Duration::from_secs(1)).is_empty(), "answers may still come");
        assert_eq!(d.take_held(t0 + CHOKED_REQUESTS_HELD), [block(1, 0)]);
        assert_eq!(d.outstanding.iter().copied().collect::<Vec<_>>(), [block(5, 0)]);
        // The reject that answers our cancel is no stray.
        assert_eq!(d.on_reject(block(1, 0)), Ok(false));
        assert_eq!(d.strays.strays(), 0);
    }
}
