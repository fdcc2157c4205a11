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

use super::picker::{BlockOutcome, CompletePiece, PeerKey};
use super::{PeerHandle, TorrentShared};
use crate::conn::{ConnEnd, Handler, OutQueue};
use crate::extension::{self, ExtHandshake, MetadataMsg, PexMsg};
use crate::metadata::MetadataAssembler;
use crate::storage::disk::Job;
use crate::types::Bitfield;
use crate::wire::{self, BlockRef, Handshake, Message, BLOCK_LEN};
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

type ReadBatch = Vec<(BlockRef, Vec<u8>)>;

/// One data connection of a torrent.
pub struct PeerConn {
    shared: Arc<TorrentShared>,
    handle: Arc<PeerHandle>,
    key: PeerKey,
    /// The peer's handshake (extension and DHT bits).
    theirs: Handshake,
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
        PeerConn {
            shared,
            handle,
            key,
            theirs,
            peer_has: Bitfield::new(n),
            peer_ut_metadata: None,
            have_rx,
            haves_sent: 0,
            download: Download::default(),
            upload: Upload::new(),
            pex: Pex::default(),
        }
    }
}

impl Handler for PeerConn {
    type Wake = Wake;

    fn start(&mut self, out: &mut OutQueue) {
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
        // Our bitfield (and where it is empty, nothing: that is allowed).
        let inner = shared.inner.lock().unwrap();
        self.haves_sent = inner.completed_order.len();
        if inner.have.count() > 0 {
            out.push_small(&Message::Bitfield(inner.have.as_bytes()));
        }
        drop(inner);
        self.have_rx.mark_unchanged();
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
                self.upload.apply_choke(&self.handle, out);
                let cancels = std::mem::take(&mut *self.handle.cancels.lock().unwrap());
                for b in cancels {
                    if self.download.outstanding.remove(&b) {
                        out.push_small(&Message::Cancel(b));
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
            Message::Port(port) => self.on_port(port),
            Message::Choke => {
                self.download.peer_choking = true;
                self.download.drop_outstanding(&self.shared);
            }
            Message::Unchoke => self.download.peer_choking = false,
            Message::Interested => {
                self.handle.peer_interested.store(true, Ordering::Relaxed);
                self.upload.claim_free_slot(&self.shared, &self.handle, out);
            }
            Message::NotInterested => self.handle.peer_interested.store(false, Ordering::Relaxed),
            Message::Have(i) => self.on_have(i, out)?,
            Message::Bitfield(bytes) => self.on_bitfield(bytes, out)?,
            Message::Request(b) => self.upload.on_request(b, &self.shared)?,
            Message::Cancel(b) => self.upload.queue.retain(|q| *q != b),
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

    /// Tops the pipeline up from the picker.
    fn fill(&mut self, shared: &TorrentShared, key: PeerKey, peer_has: &Bitfield, out: &mut OutQueue) {
        if self.peer_choking || !self.am_interested || self.outstanding.len() >= self.pipeline {
            return;
        }
        // Grow the pipeline while the peer keeps it drained (slow start).
        if self.outstanding.len() < self.pipeline / 2 && self.pipeline < self.max_pipeline {
            self.pipeline += 4;
        }
        let want = self.pipeline - self.outstanding.len();
        let mut picked = Vec::with_capacity(want);
        {
            let outstanding = &self.outstanding;
            let mut inner = shared.inner.lock().unwrap();
            inner.picker.pick(key, peer_has, want, &|b| outstanding.contains(b), &mut picked);
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
    fn new() -> Upload {
        let (reads_tx, reads_rx) = mpsc::channel(READS_IN_FLIGHT);
        Upload {
            am_choking: true,
            queue: VecDeque::new(),
            reads_in_flight: 0,
            reads_tx,
            reads_rx,
            throttled: VecDeque::new(),
            parked_read: None,
        }
    }

    fn on_request(&mut self, b: BlockRef, shared: &TorrentShared) -> Result<(), ConnEnd> {
        let n = shared.meta.piece_count() as u32;
        if b.piece >= n {
            return Err(ConnEnd::Protocol(format!("request for piece {} of {n}", b.piece)));
        }
        let plen = shared.meta.piece_len(b.piece as usize);
        if b.len == 0 || b.len > BLOCK_LEN || b.offset.checked_add(b.len).is_none_or(|end| end > plen) {
            return Err(ConnEnd::Protocol(format!("bad request {b:?}")));
        }
        if self.am_choking || self.queue.len() >= MAX_QUEUED_REQUESTS {
            return Ok(()); // dropped, as BEP 3 allows for choked peers
        }
        if !shared.inner.lock().unwrap().have.get(b.piece as usize) {
            return Ok(());
        }
        // A duplicate request costs one extra block at worst, bounded by the
        // queue cap; not worth a scan of the queue per request.
        self.queue.push_back(b);
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
            self.apply_choke(handle, out);
        }
    }

    /// Applies the choker's decision.
    fn apply_choke(&mut self, handle: &PeerHandle, out: &mut OutQueue) {
        let want_unchoked = handle.unchoke.load(Ordering::Relaxed);
        if want_unchoked && self.am_choking {
            self.am_choking = false;
            out.push_small(&Message::Unchoke);
        } else if !want_unchoked && !self.am_choking {
            self.am_choking = true;
            self.queue.clear();
            out.push_small(&Message::Choke);
        }
    }

    fn read_done(&mut self, batch: ReadBatch, shared: &TorrentShared, handle: &PeerHandle, out: &mut OutQueue) {
        self.reads_in_flight -= 1;
        for (block, msg) in batch {
            if self.am_choking {
                continue;
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
        while !self.am_choking
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
