//! A torrent's peer connection: the [`Handler`] the connection core runs for
//! a data connection. Its state is split by concern, each with its methods:
//! [`Download`] (interest, requests, the pipeline, received blocks),
//! [`Upload`] (choking, the peer's requests, disk reads, the upload limit)
//! and [`Pex`] (BEP 11 in both directions); metadata serving (BEP 9) is a
//! method of its own. It talks to the torrent only through short locks on
//! its shared state.
//!
//! Life of a block we download: `Download::fill` asks the picker for blocks,
//! `Request`s go out; a `Piece` is copied into the picker's piece buffer; a
//! completed piece goes to the disk pool for hashing and writing; its
//! verification bumps `have_tx`, and every peer sends `have`.
//!
//! Life of a block we upload: a valid `Request` from an unchoked peer is
//! queued (capped at [`MAX_QUEUED_REQUESTS`]); batches are read from storage
//! on the disk pool and come back as ready-made messages.
//!
//! With a peer that also speaks the fast extension (BEP 6, see [`super::fast`])
//! every request gets exactly one answer: the block or a `reject_request`,
//! and blocks of its allowed-fast pieces are served while we choke it. Its
//! `choke` keeps our requests outstanding until a block or a reject answers
//! each; a reject hands the block back to the picker at once.

use super::fast::{self, AllowedIn, FastCounters, Refusal, RequestFacts, StrayRejects};
use super::picker::{BlockOutcome, CompletePiece, PeerKey};
use super::{PeerHandle, TorrentShared};
use crate::conn::{ConnEnd, Handler, OutQueue};
use crate::extension::{self, ExtHandshake, MetadataMsg, PexMsg};
use crate::metadata::MetadataAssembler;
use crate::storage::disk::Job;
use crate::types::Bitfield;
use crate::wire::{self, BlockRef, Handshake, Message, BLOCK_LEN};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const SNUB_AFTER: Duration = Duration::from_secs(60);
/// Requests we accept queued from one peer (advertised as `reqq`).
pub const MAX_QUEUED_REQUESTS: usize = 500;
/// Blocks read from storage per disk job when uploading.
const READ_BATCH: usize = 16;
/// Disk read batches in flight per peer.
const READS_IN_FLIGHT: usize = 2;
/// Stop producing upload data while this much is waiting for the socket.
const OUT_HIGH_WATER: usize = 512 * 1024;
const MIN_PIPELINE: usize = 8;
const MAX_PIPELINE: usize = 256;
const START_PIPELINE: usize = 32;
/// PEX messages are sent this often, and accepted no more often than
/// [`PEX_MIN_GAP`] (BEP 11 asks for one a minute).
const PEX_EVERY: Duration = Duration::from_secs(60);
const PEX_MIN_GAP: Duration = Duration::from_secs(45);
/// With nothing new to tell, the peer list is looked at again this often
/// (not every tick: it costs a pass over all peers).
const PEX_RECHECK: Duration = Duration::from_secs(10);
/// Peers learned through PEX waiting for the torrent task, at most.
pub const MAX_PEX_BACKLOG: usize = 200;
/// A fast peer that chokes us has this long to answer our requests (block or
/// reject) before they are cancelled and given back to the picker.
const CHOKED_REQUESTS_HELD: Duration = Duration::from_secs(30);
/// Pieces a fast peer rejected while unchoking us, not asked of it again
/// until it unchokes us anew; the oldest is forgotten past this many.
const MAX_REFUSED: usize = 16;
/// A peer whose rejects pile up in our send queue this far does not read.
const MAX_OUT_FOR_REJECTS: usize = 4 * 1024 * 1024;

type ReadBatch = Vec<(BlockRef, Vec<u8>)>;

/// One data connection of a torrent.
pub struct PeerConn {
    shared: Arc<TorrentShared>,
    handle: Arc<PeerHandle>,
    key: PeerKey,
    /// The peer's handshake (extension, DHT and fast bits).
    theirs: Handshake,
    /// Both sides speak the fast extension (we always do).
    fast: bool,
    peer_has: Bitfield,
    /// The peer's id for ut_metadata, once it told us.
    peer_ut_metadata: Option<u8>,
    have_rx: watch::Receiver<usize>,
    /// How much of the torrent's completion order this peer heard of.
    haves_sent: usize,
    download: Download,
    upload: Upload,
    pex: Pex,
}

pub enum Wake {
    /// The choker or an endgame cancel changed something in our handle.
    Control,
    Have,
    ReadDone(ReadBatch),
    Throttle,
}

impl PeerConn {
    pub fn new(shared: Arc<TorrentShared>, handle: Arc<PeerHandle>, key: PeerKey, theirs: Handshake) -> PeerConn {
        let n = shared.meta.piece_count();
        let have_rx = shared.have_tx.subscribe();
        let fast = theirs.supports_fast();
        PeerConn {
            shared,
            handle,
            key,
            theirs,
            fast,
            peer_has: Bitfield::new(n),
            peer_ut_metadata: None,
            have_rx,
            haves_sent: 0,
            download: Download { fast, ..Download::default() },
            upload: Upload::new(fast),
            pex: Pex::default(),
        }
    }
}

impl Handler for PeerConn {
    type Wake = Wake;

    fn start(&mut self, out: &mut OutQueue) {
        self.send_have_state(out);
        let (shared, meta) = (&self.shared, &self.shared.meta);
        if self.theirs.supports_extensions() {
            let size = Some(meta.info_bytes.len());
            let hs =
                ExtHandshake::ours(shared.env.listen_port, MAX_QUEUED_REQUESTS, self.key.ip(), size, !meta.private);
            out.push_small(&Message::Extended { id: extension::HANDSHAKE_ID, payload: &hs.encode() });
        }
        if let Some(dht) = shared.env.dht.as_ref().filter(|_| self.theirs.supports_dht() && !meta.private) {
            out.push_small(&Message::Port(dht.port()));
        }
        if self.fast {
            self.send_allowed_fast(out);
        }
    }

    async fn wake(&mut self) -> Wake {
        let throttle = self.upload.throttled.front().map(|t| t.0);
        tokio::select! {
            _ = self.handle.notify.notified() => Wake::Control,
            _ = self.have_rx.changed() => Wake::Have,
            Some(batch) = self.upload.reads_rx.recv() => Wake::ReadDone(batch),
            _ = crate::conn::sleep_until(throttle), if throttle.is_some() => Wake::Throttle,
        }
    }

    fn on_wake(&mut self, wake: Wake, out: &mut OutQueue) -> Result<(), ConnEnd> {
        match wake {
            Wake::Control => {
                if self.handle.close.load(Ordering::Relaxed) {
                    return Err(ConnEnd::Banned);
                }
                self.upload.apply_choke(&self.handle, &self.shared, out);
                let cancels = std::mem::take(&mut *self.handle.cancels.lock().unwrap());
                for b in cancels {
                    if self.download.outstanding.remove(&b) {
                        out.push_small(&Message::Cancel(b));
                        self.download.strays.cancelled();
                    }
                }
            }
            Wake::Have => self.send_haves(out)?,
            Wake::ReadDone(batch) => self.upload.read_done(batch, &self.shared, &self.handle, out),
            Wake::Throttle => self.upload.release_throttled(Instant::now(), out),
        }
        Ok(())
    }

    fn on_message(&mut self, msg: Message<'_>, out: &mut OutQueue) -> Result<(), ConnEnd> {
        match msg {
            Message::KeepAlive | Message::Unknown(_) => {}
            Message::SuggestPiece(_)
            | Message::HaveAll
            | Message::HaveNone
            | Message::RejectRequest(_)
            | Message::AllowedFast(_) => self.on_fast_message(msg, out)?,
            Message::Port(port) => self.on_port(port),
            Message::Choke => {
                if !self.download.on_choke(Instant::now()) {
                    self.download.drop_outstanding(&self.shared);
                }
            }
            Message::Unchoke => self.download.on_unchoke(),
            Message::Interested => {
                self.handle.peer_interested.store(true, Ordering::Relaxed);
                self.upload.claim_free_slot(&self.shared, &self.handle, out);
            }
            Message::NotInterested => self.handle.peer_interested.store(false, Ordering::Relaxed),
            Message::Have(i) => self.on_have(i, out)?,
            Message::Bitfield(bytes) => self.on_bitfield(bytes, out)?,
            Message::Request(b) => self.upload.on_request(b, &self.shared, out)?,
            Message::Cancel(b) => self.upload.on_cancel(b, &self.shared, out)?,
            Message::Piece { piece, offset, data } => {
                self.download.on_piece(&self.shared, &self.handle, self.key, BlockRef { piece, offset, len: 0 }, data)
            }
            Message::Extended { id: extension::HANDSHAKE_ID, payload } => self.on_ext_handshake(payload),
            Message::Extended { id: extension::OUR_UT_METADATA, payload } => self.serve_metadata(payload, out),
            Message::Extended { id: extension::OUR_UT_PEX, payload } => self.pex.on_message(&self.shared, payload),
            Message::Extended { .. } => {}
        }
        Ok(())
    }

    async fn after_read(&mut self) -> Option<Instant> {
        for piece in std::mem::take(&mut self.download.completed) {
            self.shared.submit_piece(piece).await;
        }
        // The download limit pauses reading; TCP then slows the sender.
        match std::mem::take(&mut self.download.unmetered) {
            0 => None,
            got => self.shared.env.download_limit.reserve(got),
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut OutQueue) -> Result<(), ConnEnd> {
        self.pex.send(&self.shared, self.key, out);
        self.download.on_tick(now, &self.handle);
        let held = self.download.take_held(now);
        if !held.is_empty() {
            let mut inner = self.shared.inner.lock().unwrap();
            for b in held {
                inner.picker.request_dropped(&b);
                out.push_small(&Message::Cancel(b));
            }
        }
        // Interest can lapse when others delivered what this peer has.
        if self.download.am_interested && !self.download.outstanding.is_empty() {
            return Ok(());
        }
        let wants = self.shared.inner.lock().unwrap().picker.wants_any(&self.peer_has);
        self.download.set_interest(wants, &self.handle, out);
        Ok(())
    }

    fn pump(&mut self, out: &mut OutQueue) {
        self.download.fill(&self.shared, self.key, &self.peer_has, out);
        self.upload.serve(&self.shared, out);
    }

    fn idle_timeout(&self) -> Duration {
        IDLE_TIMEOUT
    }

    fn bitfield_len(&self) -> usize {
        self.peer_has.len().div_ceil(8)
    }
}

impl PeerConn {
    /// Our pieces, first of all as BEP 6 wants: `have_all` or `have_none` to
    /// a fast peer where they say it, else the bitfield (or, to a peer
    /// without the extension, nothing while it is empty: BEP 3 allows that).
    fn send_have_state(&mut self, out: &mut OutQueue) {
        let counters = &self.shared.fast;
        let inner = self.shared.inner.lock().unwrap();
        self.haves_sent = inner.completed_order.len();
        if self.fast && inner.have.is_full() {
            out.push_small(&Message::HaveAll);
            FastCounters::bump(&counters.have_all_sent);
        } else if self.fast && inner.have.count() == 0 {
            out.push_small(&Message::HaveNone);
            FastCounters::bump(&counters.have_none_sent);
        } else if inner.have.count() > 0 {
            out.push_small(&Message::Bitfield(inner.have.as_bytes()));
        }
        drop(inner);
        self.have_rx.mark_unchanged();
    }

    /// The pieces this peer may fetch while we choke it (BEP 6's set for its
    /// address); we announce those we have and serve their requests whatever
    /// the choker decides.
    fn send_allowed_fast(&mut self, out: &mut OutQueue) {
        let meta = &self.shared.meta;
        let (n, hash) = (meta.piece_count() as u32, &meta.info_hash.0);
        let set = fast::allowed_fast_set(self.key.ip(), hash, n, fast::ALLOWED_FAST_SENT);
        let inner = self.shared.inner.lock().unwrap();
        for &piece in set.iter().filter(|p| inner.have.get(**p as usize)) {
            out.push_small(&Message::AllowedFast(piece));
            FastCounters::bump(&self.shared.fast.allowed_fast_sent);
        }
        drop(inner);
        self.upload.allowed = set;
    }

    /// The five BEP 6 messages. From a peer whose handshake did not set the
    /// bit they end the connection, as BEP 6 asks.
    fn on_fast_message(&mut self, msg: Message<'_>, out: &mut OutQueue) -> Result<(), ConnEnd> {
        if !self.fast {
            return Err(ConnEnd::Protocol(format!("{msg:?} from a peer without the fast extension")));
        }
        let (n, counters) = (self.peer_has.len(), &self.shared.fast);
        match msg {
            Message::HaveAll => {
                FastCounters::bump(&counters.have_all_received);
                self.replace_peer_has(Bitfield::full(n), out)
            }
            Message::HaveNone => {
                FastCounters::bump(&counters.have_none_received);
                self.replace_peer_has(Bitfield::new(n), out)
            }
            Message::RejectRequest(b) => {
                FastCounters::bump(&counters.rejects_received);
                if self.download.on_reject(b)? {
                    self.shared.inner.lock().unwrap().picker.request_dropped(&b);
                }
                Ok(())
            }
            Message::AllowedFast(piece) => {
                if self.download.allowed.add(piece, n) {
                    FastCounters::bump(&counters.allowed_fast_received);
                }
                Ok(())
            }
            // A hint, counted and not acted on: rarest first decides, and a
            // peer's suggestions would let it steer what we fetch.
            _ => {
                FastCounters::bump(&counters.suggests_received);
                Ok(())
            }
        }
    }

    fn on_port(&self, port: u16) {
        if let (Some(dht), false) = (&self.shared.env.dht, self.shared.meta.private) {
            if port != 0 {
                dht.add_node(SocketAddr::new(self.key.ip(), port));
            }
        }
    }

    fn on_have(&mut self, i: u32, out: &mut OutQueue) -> Result<(), ConnEnd> {
        let n = self.peer_has.len();
        if i as usize >= n {
            return Err(ConnEnd::Protocol(format!("have {i} out of range ({n} pieces)")));
        }
        if self.peer_has.set(i as usize) {
            let mut inner = self.shared.inner.lock().unwrap();
            inner.picker.peer_have(i);
            if inner.picker.wants(i) {
                self.download.set_interest(true, &self.handle, out);
            }
        }
        self.note_seed()
    }

    /// BEP 3 wants it first, but some clients send it late or twice; it then
    /// replaces what we knew of the peer.
    fn on_bitfield(&mut self, bytes: &[u8], out: &mut OutQueue) -> Result<(), ConnEnd> {
        let n = self.peer_has.len();
        let bf = Bitfield::from_bytes(bytes, n).ok_or_else(|| {
            ConnEnd::Protocol(if bytes.len() == n.div_ceil(8) {
                format!("bitfield sets spare bits past piece {n}")
            } else {
                format!("bitfield of {} bytes for {n} pieces", bytes.len())
            })
        })?;
        self.replace_peer_has(bf, out)
    }

    /// What the peer has, from a bitfield, `have_all` or `have_none`.
    fn replace_peer_has(&mut self, bf: Bitfield, out: &mut OutQueue) -> Result<(), ConnEnd> {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.picker.peer_bitfield(&self.peer_has, false);
        self.peer_has = bf;
        inner.picker.peer_bitfield(&self.peer_has, true);
        let wants = inner.picker.wants_any(&self.peer_has);
        drop(inner);
        if wants {
            self.download.set_interest(true, &self.handle, out);
        }
        self.note_seed()
    }

    fn on_ext_handshake(&mut self, payload: &[u8]) {
        let Some(hs) = ExtHandshake::decode(payload) else {
            return;
        };
        if let Some(q) = hs.request_limit() {
            self.download.max_pipeline = q.min(MAX_PIPELINE);
            self.download.pipeline = self.download.pipeline.min(self.download.max_pipeline);
        }
        self.peer_ut_metadata = hs.id_of(extension::UT_METADATA);
        self.pex.peer_id = hs.id_of(extension::UT_PEX);
        if let Some(addr) = hs.listen_addr(self.key) {
            self.handle.listen.lock().unwrap().get_or_insert(addr);
        }
        tracing::debug!(peer = %self.key, client = %hs.client(), reqq = ?hs.reqq, "extension handshake");
    }

    /// Serves our metadata (BEP 9); refuses when the send queue is already
    /// long, so a peer cannot make us buffer without bound.
    fn serve_metadata(&mut self, payload: &[u8], out: &mut OutQueue) {
        let Some(id) = self.peer_ut_metadata else {
            return;
        };
        if let Ok(MetadataMsg::Request { piece }) = MetadataMsg::decode(payload) {
            let info = &self.shared.meta.info_bytes;
            let reply = match MetadataAssembler::serve(info, piece) {
                Some(data) if out.len() < OUT_HIGH_WATER => MetadataMsg::Data { piece, total_size: info.len(), data },
                _ => MetadataMsg::Reject { piece },
            };
            out.push_small(&Message::Extended { id, payload: &reply.encode() });
        }
    }

    /// Marks a peer that has everything; two seeds have nothing to say.
    fn note_seed(&mut self) -> Result<(), ConnEnd> {
        if self.peer_has.is_full() {
            self.handle.is_seed.store(true, Ordering::Relaxed);
            if self.shared.is_complete() {
                return Err(ConnEnd::BothSeeds);
            }
        }
        Ok(())
    }

    fn send_haves(&mut self, out: &mut OutQueue) -> Result<(), ConnEnd> {
        let (new, complete): (Vec<u32>, bool) = {
            let inner = self.shared.inner.lock().unwrap();
            (inner.completed_order[self.haves_sent..].to_vec(), inner.have.is_full())
        };
        self.haves_sent += new.len();
        for i in new {
            // A peer that has the piece does not need to hear about it.
            if !self.peer_has.get(i as usize) {
                out.push_small(&Message::Have(i));
            }
        }
        if complete {
            self.download.set_interest(false, &self.handle, out);
            if self.peer_has.is_full() {
                return Err(ConnEnd::BothSeeds);
            }
        }
        Ok(())
    }
}

/// The connection leaves the torrent however it ends, aborted included.
impl Drop for PeerConn {
    fn drop(&mut self) {
        self.download.drop_outstanding(&self.shared);
        let mut inner = self.shared.inner.lock().unwrap();
        inner.picker.peer_bitfield(&self.peer_has, false);
        if inner.peers.get(&self.key).is_some_and(|h| Arc::ptr_eq(h, &self.handle)) {
            inner.peers.remove(&self.key);
        }
    }
}

/// What we fetch from this peer.
struct Download {
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
    fn set_interest(&mut self, wants: bool, handle: &PeerHandle, out: &mut OutQueue) {
        if wants != self.am_interested {
            self.am_interested = wants;
            handle.am_interested.store(wants, Ordering::Relaxed);
            out.push_small(if wants { &Message::Interested } else { &Message::NotInterested });
        }
    }

    /// A `piece` message: `at` names the block (its length is the data's).
    fn on_piece(&mut self, shared: &TorrentShared, handle: &PeerHandle, key: PeerKey, at: BlockRef, data: &[u8]) {
        let block = BlockRef { len: data.len() as u32, ..at };
        self.outstanding.remove(&block);
        let len = data.len() as u64;
        // Every byte used the link; only blocks we asked for and still
        // needed count as downloaded (for trackers, ratios and the choker).
        self.unmetered += len;
        let (outcome, complete, endgame) = {
            let mut inner = shared.inner.lock().unwrap();
            let (o, c) = inner.picker.block_received(key, block.piece, block.offset, data);
            (o, c, inner.picker.in_endgame())
        };
        self.completed.extend(complete);
        if outcome != BlockOutcome::Accepted {
            shared.wasted.fetch_add(len, Ordering::Relaxed);
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

    fn on_tick(&mut self, now: Instant, handle: &PeerHandle) {
        // Smoothed rate sets the pipeline depth: about half a second of data.
        self.rate = (self.rate * 3 + self.bytes_this_tick) / 4;
        self.bytes_this_tick = 0;
        let snubbed = !self.peer_choking && !self.outstanding.is_empty() && now - self.last_block > SNUB_AFTER;
        handle.snubbed.store(snubbed, Ordering::Relaxed);
        self.pipeline = if snubbed {
            1
        } else {
            ((self.rate / 2 / BLOCK_LEN as u64) as usize)
                .clamp(MIN_PIPELINE, MAX_PIPELINE)
                .max(self.pipeline.min(MAX_PIPELINE))
        };
    }

    /// BEP 6: a fast peer's choke leaves our requests to be answered, each
    /// by its block or a reject; without the extension it cancels them all
    /// (false: the caller drops them).
    fn on_choke(&mut self, now: Instant) -> bool {
        self.peer_choking = true;
        if self.fast {
            self.choked_at.get_or_insert(now);
        }
        self.fast
    }

    fn on_unchoke(&mut self) {
        self.peer_choking = false;
        self.choked_at = None;
        self.refused.clear();
    }

    /// The peer will not send `b`: true when it was outstanding, and the
    /// caller hands it back to the picker at once, for another peer to
    /// fetch; its piece is not asked of this one again for now. A reject of
    /// nothing outstanding is tolerated, within bounds.
    fn on_reject(&mut self, b: BlockRef) -> Result<bool, ConnEnd> {
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
    fn fill(&mut self, shared: &TorrentShared, key: PeerKey, peer_has: &Bitfield, out: &mut OutQueue) {
        if !self.am_interested || self.outstanding.len() >= self.pipeline {
            return;
        }
        // Choked, only allowed-fast pieces may be asked for (fast peers only).
        if self.peer_choking && self.allowed.is_empty() {
            return;
        }
        // Grow the pipeline while the peer keeps it drained (slow start).
        if self.outstanding.len() < self.pipeline / 2 && self.pipeline < self.max_pipeline {
            self.pipeline += 4;
        }
        let want = self.pipeline - self.outstanding.len();
        let mut picked = Vec::with_capacity(want);
        let pickable = self.pickable(peer_has);
        {
            let outstanding = &self.outstanding;
            let mut inner = shared.inner.lock().unwrap();
            inner.picker.pick(key, &pickable, want, &|b| outstanding.contains(b), &mut picked);
        }
        for b in picked {
            self.outstanding.insert(b);
            out.push_small(&Message::Request(b));
        }
    }

    fn drop_outstanding(&mut self, shared: &TorrentShared) {
        if self.outstanding.is_empty() {
            return;
        }
        let mut inner = shared.inner.lock().unwrap();
        for b in self.outstanding.drain() {
            inner.picker.request_dropped(&b);
        }
    }
}

/// In endgame, a block that arrived is cancelled at every other peer.
fn broadcast_cancel(shared: &TorrentShared, from: PeerKey, block: BlockRef) {
    let inner = shared.inner.lock().unwrap();
    for (k, h) in &inner.peers {
        if *k != from {
            h.cancels.lock().unwrap().push(block);
            h.notify.notify_one();
        }
    }
}

/// What we serve to this peer.
struct Upload {
    am_choking: bool,
    /// The peer speaks the fast extension: every request is answered.
    fast: bool,
    /// Its allowed-fast set: served while we choke it.
    allowed: Vec<u32>,
    /// Requests to serve; while we choke a fast peer, only those of its
    /// allowed-fast pieces (the rest were rejected).
    queue: VecDeque<BlockRef>,
    reads_in_flight: usize,
    reads_tx: mpsc::Sender<ReadBatch>,
    reads_rx: mpsc::Receiver<ReadBatch>,
    /// Data waiting for the upload limit, with when it may go.
    throttled: VecDeque<(Instant, Vec<u8>)>,
    /// A read waiting for room in the disk queue.
    parked_read: Option<Job>,
}

impl Upload {
    fn new(fast: bool) -> Upload {
        let (reads_tx, reads_rx) = mpsc::channel(READS_IN_FLIGHT);
        Upload {
            am_choking: true,
            fast,
            allowed: Vec::new(),
            queue: VecDeque::new(),
            reads_in_flight: 0,
            reads_tx,
            reads_rx,
            throttled: VecDeque::new(),
            parked_read: None,
        }
    }

    /// Queues a request, or refuses it: a fast peer hears `reject_request`,
    /// another is ignored (BEP 3) but for a bad block, which ends it.
    fn on_request(&mut self, b: BlockRef, shared: &TorrentShared, out: &mut OutQueue) -> Result<(), ConnEnd> {
        let n = shared.meta.piece_count() as u32;
        let valid = b.piece < n && {
            let plen = shared.meta.piece_len(b.piece as usize);
            b.len > 0 && b.len <= BLOCK_LEN && b.offset.checked_add(b.len).is_some_and(|end| end <= plen)
        };
        let facts = RequestFacts {
            valid,
            choking: self.am_choking,
            allowed_fast: self.allowed.contains(&b.piece),
            queue_full: self.queue.len() >= MAX_QUEUED_REQUESTS,
            have: valid && shared.inner.lock().unwrap().have.get(b.piece as usize),
        };
        match fast::refusal(facts) {
            // A duplicate request costs one extra block at worst, bounded by
            // the queue cap; not worth a scan of the queue per request.
            None => self.queue.push_back(b),
            Some(_) if self.fast => return self.reject(b, shared, out),
            Some(Refusal::BadBlock) if b.piece >= n => {
                return Err(ConnEnd::Protocol(format!("request for piece {} of {n}", b.piece)))
            }
            Some(Refusal::BadBlock) => return Err(ConnEnd::Protocol(format!("bad request {b:?}"))),
            Some(_) => {}
        }
        Ok(())
    }

    /// BEP 6: a cancelled request is still answered, by a reject when it
    /// had not gone to the disk yet (else its block follows).
    fn on_cancel(&mut self, b: BlockRef, shared: &TorrentShared, out: &mut OutQueue) -> Result<(), ConnEnd> {
        let before = self.queue.len();
        self.queue.retain(|q| *q != b);
        if self.fast && self.queue.len() < before {
            return self.reject(b, shared, out);
        }
        Ok(())
    }

    /// Rejects a request of a fast peer. One that keeps requesting without
    /// reading our answers would grow the send queue: it is dropped.
    fn reject(&mut self, b: BlockRef, shared: &TorrentShared, out: &mut OutQueue) -> Result<(), ConnEnd> {
        if out.len() > MAX_OUT_FOR_REJECTS {
            return Err(ConnEnd::Protocol("requests without reading our answers".into()));
        }
        send_reject(b, shared, out);
        Ok(())
    }

    /// Unchokes at once when a slot is free, instead of waiting for the next
    /// choking round.
    fn claim_free_slot(&mut self, shared: &TorrentShared, handle: &PeerHandle, out: &mut OutQueue) {
        if !self.am_choking {
            return;
        }
        let slots = shared.env.config().limits.upload_slots;
        let inner = shared.inner.lock().unwrap();
        let used = inner.peers.values().filter(|p| p.unchoke.load(Ordering::Relaxed)).count();
        if used < slots {
            handle.unchoke.store(true, Ordering::Relaxed);
            drop(inner);
            self.apply_choke(handle, shared, out);
        }
    }

    /// Applies the choker's decision. Choking a fast peer rejects each of its
    /// queued requests but those of its allowed-fast pieces, which are
    /// still served; without the extension the queue is simply dropped.
    fn apply_choke(&mut self, handle: &PeerHandle, shared: &TorrentShared, out: &mut OutQueue) {
        let want_unchoked = handle.unchoke.load(Ordering::Relaxed);
        if want_unchoked && self.am_choking {
            self.am_choking = false;
            out.push_small(&Message::Unchoke);
        } else if !want_unchoked && !self.am_choking {
            self.am_choking = true;
            out.push_small(&Message::Choke);
            if !self.fast {
                self.queue.clear();
                return;
            }
            let allowed = &self.allowed;
            for b in std::mem::take(&mut self.queue) {
                if allowed.contains(&b.piece) {
                    self.queue.push_back(b);
                } else {
                    send_reject(b, shared, out);
                }
            }
        }
    }

    /// Whether a block may go out now: we unchoke the peer, or it is fast
    /// and the block is of its allowed-fast set.
    fn may_send(&self, block: &BlockRef) -> bool {
        !self.am_choking || (self.fast && self.allowed.contains(&block.piece))
    }

    fn read_done(&mut self, batch: ReadBatch, shared: &TorrentShared, handle: &PeerHandle, out: &mut OutQueue) {
        self.reads_in_flight -= 1;
        for (block, msg) in batch {
            if !self.may_send(&block) {
                // Choked while it was read: a fast peer is told.
                if self.fast {
                    send_reject(block, shared, out);
                }
                continue;
            }
            if self.am_choking {
                FastCounters::bump(&shared.fast.allowed_fast_served);
            }
            shared.uploaded.fetch_add(block.len as u64, Ordering::Relaxed);
            handle.bytes_up.fetch_add(block.len as u64, Ordering::Relaxed);
            match shared.env.upload_limit.reserve(block.len as u64) {
                Some(at) if at > Instant::now() || !self.throttled.is_empty() => self.throttled.push_back((at, msg)),
                _ => out.push_owned(msg),
            }
        }
    }

    fn release_throttled(&mut self, now: Instant, out: &mut OutQueue) {
        while self.throttled.front().is_some_and(|t| t.0 <= now) {
            out.push_owned(self.throttled.pop_front().unwrap().1);
        }
    }

    /// Starts disk reads for queued requests while there is room: in the
    /// socket's queue, in flight, and under the upload limit.
    fn serve(&mut self, shared: &Arc<TorrentShared>, out: &OutQueue) {
        let disk = &shared.env.disk;
        // A read the disk queue had no room for goes first.
        if let Some(job) = self.parked_read.take() {
            if let Err(back) = disk.try_spawn(job) {
                self.parked_read = back;
                return;
            }
        }
        // While we choke a fast peer its queue holds only allowed-fast requests.
        while (!self.am_choking || self.fast)
            && self.throttled.is_empty()
            && !self.queue.is_empty()
            && self.reads_in_flight < READS_IN_FLIGHT
            && out.len() < OUT_HIGH_WATER
        {
            let take = self.queue.len().min(READ_BATCH);
            let blocks: Vec<BlockRef> = self.queue.drain(..take).collect();
            self.reads_in_flight += 1;
            // A full queue parks the job here (retried on the next event, at
            // the latest the next tick) rather than waiting in this loop.
            if let Err(back) = disk.try_spawn(read_job(shared.clone(), blocks, self.reads_tx.clone())) {
                self.parked_read = back;
                return;
            }
        }
    }
}

fn send_reject(b: BlockRef, shared: &TorrentShared, out: &mut OutQueue) {
    out.push_small(&Message::RejectRequest(b));
    FastCounters::bump(&shared.fast.rejects_sent);
}

/// A disk job reading blocks as ready-made `piece` messages. A failed read
/// is a disk error of the torrent, like a failed write.
fn read_job(shared: Arc<TorrentShared>, blocks: Vec<BlockRef>, tx: mpsc::Sender<ReadBatch>) -> Job {
    Box::new(move || {
        let Some(storage) = shared.storage() else {
            let _ = tx.try_send(Vec::new());
            return;
        };
        let mut batch = Vec::with_capacity(blocks.len());
        for b in blocks {
            let mut msg = Vec::with_capacity(13 + b.len as usize);
            wire::encode_piece_header(b.piece, b.offset, b.len as usize, &mut msg);
            msg.resize(13 + b.len as usize, 0);
            match storage.read(b.piece as u64 * shared.meta.piece_length + b.offset as u64, &mut msg[13..]) {
                Ok(()) => batch.push((b, msg)),
                Err(e) => {
                    shared.disk_failed(format!("reading piece {} for upload: {e}", b.piece));
                    break;
                }
            }
        }
        let _ = tx.try_send(batch);
    })
}

/// Peer exchange (BEP 11) with this peer; never for private torrents.
#[derive(Default)]
struct Pex {
    /// The peer's id for ut_pex, once it told us.
    peer_id: Option<u8>,
    /// Listening addresses we told this peer of.
    sent: HashSet<SocketAddr>,
    /// When to look again at what to tell it.
    next_at: Option<Instant>,
    last_in: Option<Instant>,
}

impl Pex {
    /// Takes peers from a PEX message, within BEP 11's limits.
    fn on_message(&mut self, shared: &TorrentShared, payload: &[u8]) {
        if shared.meta.private || self.last_in.is_some_and(|t| t.elapsed() < PEX_MIN_GAP) {
            return;
        }
        self.last_in = Some(Instant::now());
        let Ok(msg) = PexMsg::decode(payload) else {
            return;
        };
        let mut inner = shared.inner.lock().unwrap();
        let room = MAX_PEX_BACKLOG.saturating_sub(inner.pex_learned.len());
        // A seed has nothing for another seed.
        let seeding = inner.have.is_full();
        let useful = msg.added.into_iter().filter(|(_, f)| !(seeding && f & extension::PEX_SEED != 0));
        inner.pex_learned.extend(useful.map(|(a, _)| a).take(room));
    }

    /// Tells the peer which peers joined and left since the last message.
    fn send(&mut self, shared: &TorrentShared, key: PeerKey, out: &mut OutQueue) {
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
    let inner = shared.inner.lock().unwrap();
    inner
        .peers
        .iter()
        .filter(|(k, _)| **k != except)
        .filter_map(|(k, h)| {
            let listen = (*h.listen.lock().unwrap())?;
            let seed = if h.is_seed.load(Ordering::Relaxed) { extension::PEX_SEED } else { 0 };
            // We dialled it at that address, so it is reachable.
            let reachable = if listen == *k { extension::PEX_REACHABLE } else { 0 };
            Some((listen, seed | reachable))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(piece: u32, offset: u32) -> BlockRef {
        BlockRef { piece, offset, len: BLOCK_LEN }
    }

    fn fast_download(outstanding: &[BlockRef]) -> Download {
        let mut d = Download { fast: true, peer_choking: false, am_interested: true, ..Download::default() };
        d.outstanding.extend(outstanding.iter().copied());
        d
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
