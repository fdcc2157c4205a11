//! One peer connection: a task that owns the socket, reads and writes in one
//! `select!` loop (never blocking one direction on the other), and talks to
//! the torrent only through short locks on its shared state.
//!
//! Life of a block we download: `fill_requests` asks the picker for blocks,
//! `Request`s go out; a `Piece` is copied into the picker's piece buffer;
//! a completed piece goes to the disk pool for hashing and writing; its
//! verification bumps `have_tx`, and every peer task sends `have`.
//!
//! Life of a block we upload: a valid `Request` from an unchoked peer is
//! queued (capped at [`MAX_QUEUED_REQUESTS`]); batches are read from storage
//! on the disk pool and come back on `reads_rx` as ready-made messages.

use super::picker::{BlockOutcome, PeerKey};
use super::{PeerHandle, TorrentShared};
use crate::extension::{self, ExtHandshake, MetadataMsg, PexMsg};
use crate::metadata::MetadataAssembler;
use crate::types::Bitfield;
use crate::wire::{self, BlockRef, Handshake, Message, BLOCK_LEN, HANDSHAKE_LEN};
use bytes::{Buf, BytesMut};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(90);
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

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Wire(#[from] wire::WireError),
    #[error("{0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
}

type ReadBatch = Vec<(BlockRef, Vec<u8>)>;

/// Sends our handshake and reads theirs (outgoing side).
pub async fn handshake_outgoing(stream: &mut TcpStream, ours: &Handshake) -> Result<Handshake, PeerError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        stream.write_all(&ours.encode()).await?;
        read_handshake(stream).await
    })
    .await
    .map_err(|_| PeerError::Timeout)?
}

pub async fn read_handshake(stream: &mut TcpStream) -> Result<Handshake, PeerError> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    stream.read_exact(&mut buf).await?;
    Ok(Handshake::decode(&buf)?)
}

struct Peer {
    shared: Arc<TorrentShared>,
    handle: Arc<PeerHandle>,
    key: PeerKey,
    peer_has: Bitfield,
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    outstanding: HashSet<BlockRef>,
    pipeline: usize,
    upload_queue: VecDeque<BlockRef>,
    reads_in_flight: usize,
    haves_sent: usize,
    last_recv: Instant,
    last_sent: Instant,
    last_block: Instant,
    bytes_this_tick: u64,
    /// Payload received but not yet charged to the download limit.
    bytes_unmetered: u64,
    rate: u64,
    completed: Vec<super::picker::CompletePiece>,
    /// The peer's handshake (extension and DHT bits).
    theirs: Handshake,
    /// The peer's ids for the extensions we speak, once it told us.
    peer_ut_metadata: Option<u8>,
    peer_ut_pex: Option<u8>,
    /// Listening addresses we told this peer of through PEX, and when.
    pex_sent: HashSet<SocketAddr>,
    /// When to look again at what to tell this peer through PEX.
    next_pex_at: Instant,
    last_pex_in: Option<Instant>,
    /// Our pipeline's ceiling: ours, or the peer's `reqq` if lower.
    max_pipeline: usize,
    /// Upload data waiting for the upload limit, with when it may go.
    throttled: VecDeque<(Instant, Vec<u8>)>,
    /// Reading paused until then by the download limit.
    read_resume_at: Option<Instant>,
    /// An upload read waiting for room in the disk queue.
    parked_read: Option<crate::storage::disk::Job>,
}

/// Runs an established connection (handshakes done) until it ends.
pub async fn run(
    shared: Arc<TorrentShared>,
    handle: Arc<PeerHandle>,
    stream: TcpStream,
    key: PeerKey,
    theirs: Handshake,
    cancel: CancellationToken,
) -> Result<(), PeerError> {
    let _ = stream.set_nodelay(true);
    let n = shared.meta.piece_count();
    let mut peer = Peer {
        shared: shared.clone(),
        handle: handle.clone(),
        key,
        peer_has: Bitfield::new(n),
        am_choking: true,
        am_interested: false,
        peer_choking: true,
        outstanding: HashSet::new(),
        pipeline: START_PIPELINE,
        upload_queue: VecDeque::new(),
        reads_in_flight: 0,
        haves_sent: 0,
        last_recv: Instant::now(),
        last_sent: Instant::now(),
        last_block: Instant::now(),
        bytes_this_tick: 0,
        bytes_unmetered: 0,
        rate: 0,
        completed: Vec::new(),
        theirs,
        peer_ut_metadata: None,
        peer_ut_pex: None,
        pex_sent: HashSet::new(),
        next_pex_at: Instant::now(),
        last_pex_in: None,
        max_pipeline: MAX_PIPELINE,
        throttled: VecDeque::new(),
        read_resume_at: None,
        parked_read: None,
    };
    let result = peer.run(stream, cancel).await;
    peer.cleanup();
    result
}

enum Event {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Control,
    Have,
    ReadDone(ReadBatch),
    Throttle,
    Tick,
    Cancelled,
}

impl Peer {
    async fn run(&mut self, stream: TcpStream, cancel: CancellationToken) -> Result<(), PeerError> {
        let (mut rd, mut wr) = stream.into_split();
        let mut rbuf = BytesMut::with_capacity(256 * 1024);
        let mut out = OutQueue::default();
        let (reads_tx, mut reads_rx) = mpsc::channel::<ReadBatch>(READS_IN_FLIGHT);
        let mut have_rx = self.shared.have_tx.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        if self.theirs.supports_extensions() {
            let hs = ExtHandshake::ours(
                self.shared.env.listen_port,
                MAX_QUEUED_REQUESTS,
                self.key.ip(),
                Some(self.shared.meta.info_bytes.len()),
                !self.shared.meta.private,
            );
            out.push_small(&Message::Extended { id: extension::HANDSHAKE_ID, payload: &hs.encode() });
        }
        if let Some(dht) =
            self.shared.env.dht.as_ref().filter(|_| self.theirs.supports_dht() && !self.shared.meta.private)
        {
            out.push_small(&Message::Port(dht.port()));
        }
        // Our bitfield (and where it is empty, nothing: that is allowed).
        {
            let inner = self.shared.inner.lock().unwrap();
            self.haves_sent = inner.completed_order.len();
            if inner.have.count() > 0 {
                out.push_small(&Message::Bitfield(inner.have.as_bytes()));
            }
        }
        have_rx.mark_unchanged();

        loop {
            let event = {
                let slices = out.slices();
                let reading = self.read_resume_at.is_none();
                let wake = self
                    .read_resume_at
                    .into_iter()
                    .chain(self.throttled.front().map(|t| t.0))
                    .min()
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    r = rd.read_buf(&mut rbuf), if reading => Event::Read(r),
                    _ = tokio::time::sleep_until(wake.into()), if !reading || !self.throttled.is_empty() => Event::Throttle,
                    w = wr.write_vectored(&slices), if !slices.is_empty() => Event::Wrote(w),
                    _ = self.handle.notify.notified() => Event::Control,
                    r = have_rx.changed() => if r.is_ok() { Event::Have } else { Event::Cancelled },
                    Some(batch) = reads_rx.recv() => Event::ReadDone(batch),
                    _ = tick.tick() => Event::Tick,
                    _ = cancel.cancelled() => Event::Cancelled,
                }
            };
            match event {
                Event::Read(r) => {
                    if r? == 0 {
                        return Ok(());
                    }
                    self.last_recv = Instant::now();
                    let mut consumed = 0;
                    while let Some((msg, used)) = wire::decode(&rbuf[consumed..])? {
                        self.on_message(msg, &mut out)?;
                        consumed += used;
                    }
                    rbuf.advance(consumed);
                    if rbuf.capacity() - rbuf.len() < 64 * 1024 {
                        rbuf.reserve(256 * 1024);
                    }
                    // The download limit pauses reading; TCP then slows the sender.
                    let got = std::mem::take(&mut self.bytes_unmetered);
                    if got > 0 {
                        if let Some(at) = self.shared.env.download_limit.reserve(got) {
                            if at > Instant::now() {
                                self.read_resume_at = Some(at);
                            }
                        }
                    }
                    for piece in std::mem::take(&mut self.completed) {
                        self.shared.submit_piece(piece).await;
                    }
                }
                Event::Wrote(w) => {
                    let n = w?;
                    if n == 0 {
                        return Err(PeerError::Protocol("connection closed while writing".into()));
                    }
                    out.advance(n);
                    self.last_sent = Instant::now();
                }
                Event::Control => {
                    if self.handle.close.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    self.apply_choke(&mut out);
                    let cancels = std::mem::take(&mut *self.handle.cancels.lock().unwrap());
                    for b in cancels {
                        if self.outstanding.remove(&b) {
                            out.push_small(&Message::Cancel(b));
                        }
                    }
                }
                Event::Have => self.send_haves(&mut out)?,
                Event::ReadDone(batch) => {
                    self.reads_in_flight -= 1;
                    for (block, msg) in batch {
                        if self.am_choking {
                            continue;
                        }
                        self.shared.uploaded.fetch_add(block.len as u64, Ordering::Relaxed);
                        self.handle.bytes_up.fetch_add(block.len as u64, Ordering::Relaxed);
                        match self.shared.env.upload_limit.reserve(block.len as u64) {
                            Some(at) if at > Instant::now() || !self.throttled.is_empty() => {
                                self.throttled.push_back((at, msg))
                            }
                            _ => out.push_owned(msg),
                        }
                    }
                }
                Event::Throttle => {
                    let now = Instant::now();
                    if self.read_resume_at.is_some_and(|t| t <= now) {
                        self.read_resume_at = None;
                    }
                    while self.throttled.front().is_some_and(|t| t.0 <= now) {
                        out.push_owned(self.throttled.pop_front().unwrap().1);
                    }
                }
                Event::Tick => self.on_tick(&mut out)?,
                Event::Cancelled => return Ok(()),
            }
            self.fill_requests(&mut out);
            self.serve_uploads(&out, &reads_tx);
        }
    }

    fn on_message(&mut self, msg: Message<'_>, out: &mut OutQueue) -> Result<(), PeerError> {
        let n = self.peer_has.len();
        match msg {
            Message::KeepAlive | Message::Unknown(_) => {}
            Message::Port(port) => {
                if let (Some(dht), false) = (&self.shared.env.dht, self.shared.meta.private) {
                    if port != 0 {
                        dht.add_node(SocketAddr::new(self.key.ip(), port));
                    }
                }
            }
            Message::Choke => {
                self.peer_choking = true;
                self.drop_outstanding();
            }
            Message::Unchoke => self.peer_choking = false,
            Message::Interested => {
                self.handle.peer_interested.store(true, Ordering::Relaxed);
                self.claim_free_slot(out);
            }
            Message::NotInterested => {
                self.handle.peer_interested.store(false, Ordering::Relaxed);
            }
            Message::Have(i) => {
                if i as usize >= n {
                    return Err(PeerError::Protocol(format!("have {i} out of range ({n} pieces)")));
                }
                if self.peer_has.set(i as usize) {
                    let mut inner = self.shared.inner.lock().unwrap();
                    inner.picker.peer_have(i);
                    if !self.am_interested && inner.picker.wants(i) {
                        self.am_interested = true;
                        out.push_small(&Message::Interested);
                    }
                }
                self.note_seed()?;
            }
            Message::Bitfield(bytes) => {
                // BEP 3 wants it first, but some clients send it late or
                // twice; it then replaces what we knew of the peer.
                let bf = Bitfield::from_bytes(bytes, n)
                    .ok_or_else(|| PeerError::Protocol(format!("bitfield of {} bytes for {n} pieces", bytes.len())))?;
                let mut inner = self.shared.inner.lock().unwrap();
                inner.picker.peer_bitfield(&self.peer_has, false);
                self.peer_has = bf;
                inner.picker.peer_bitfield(&self.peer_has, true);
                if !self.am_interested && inner.picker.wants_any(&self.peer_has) {
                    self.am_interested = true;
                    out.push_small(&Message::Interested);
                }
                drop(inner);
                self.note_seed()?;
            }
            Message::Request(b) => self.on_request(b)?,
            Message::Cancel(b) => self.upload_queue.retain(|q| *q != b),
            Message::Piece { piece, offset, data } => self.on_piece(piece, offset, data),
            Message::Extended { id: extension::HANDSHAKE_ID, payload } => {
                if let Some(hs) = ExtHandshake::decode(payload) {
                    if let Some(q) = hs.request_limit() {
                        self.max_pipeline = q.min(MAX_PIPELINE);
                        self.pipeline = self.pipeline.min(self.max_pipeline);
                    }
                    self.peer_ut_metadata = hs.id_of(extension::UT_METADATA);
                    self.peer_ut_pex = hs.id_of(extension::UT_PEX);
                    if let Some(addr) = hs.listen_addr(self.key) {
                        self.handle.listen.lock().unwrap().get_or_insert(addr);
                    }
                    tracing::debug!(peer = %self.key, client = %hs.client(), reqq = ?hs.reqq, "extension handshake");
                }
            }
            Message::Extended { id: extension::OUR_UT_METADATA, payload } => self.on_metadata(payload, out),
            Message::Extended { id: extension::OUR_UT_PEX, payload } => self.on_pex(payload),
            Message::Extended { .. } => {}
        }
        Ok(())
    }

    /// Serves our metadata (BEP 9); refuses when the send queue is already
    /// long, so a peer cannot make us buffer without bound.
    fn on_metadata(&mut self, payload: &[u8], out: &mut OutQueue) {
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

    /// Takes peers from a PEX message, within BEP 11's limits.
    fn on_pex(&mut self, payload: &[u8]) {
        if self.shared.meta.private || self.last_pex_in.is_some_and(|t| t.elapsed() < PEX_MIN_GAP) {
            return;
        }
        self.last_pex_in = Some(Instant::now());
        let Ok(msg) = PexMsg::decode(payload) else {
            return;
        };
        let mut inner = self.shared.inner.lock().unwrap();
        let room = MAX_PEX_BACKLOG.saturating_sub(inner.pex_learned.len());
        // A seed has nothing for another seed.
        let seeding = inner.have.is_full();
        let useful = msg.added.into_iter().filter(|(_, f)| !(seeding && f & extension::PEX_SEED != 0));
        inner.pex_learned.extend(useful.map(|(a, _)| a).take(room));
    }

    /// Tells the peer which peers joined and left since the last message.
    fn send_pex(&mut self, out: &mut OutQueue) {
        let Some(id) = self.peer_ut_pex else {
            return;
        };
        if self.shared.meta.private || Instant::now() < self.next_pex_at {
            return;
        }
        // Nothing new is checked for again soon; a message sent waits a minute.
        self.next_pex_at = Instant::now() + PEX_RECHECK;
        // Connected peers by listening address, with their BEP 11 flags.
        let current: HashMap<SocketAddr, u8> = {
            let inner = self.shared.inner.lock().unwrap();
            inner
                .peers
                .iter()
                .filter(|(k, _)| **k != self.key)
                .filter_map(|(k, h)| {
                    let listen = (*h.listen.lock().unwrap())?;
                    let seed = if h.is_seed.load(Ordering::Relaxed) { extension::PEX_SEED } else { 0 };
                    // We dialled it at that address, so it is reachable.
                    let reachable = if listen == *k { extension::PEX_REACHABLE } else { 0 };
                    Some((listen, seed | reachable))
                })
                .collect()
        };
        let added: Vec<(SocketAddr, u8)> = current
            .iter()
            .filter(|(a, _)| !self.pex_sent.contains(*a))
            .map(|(a, f)| (*a, *f))
            .take(extension::MAX_PEX_PEERS)
            .collect();
        let dropped: Vec<SocketAddr> = self
            .pex_sent
            .iter()
            .filter(|a| !current.contains_key(*a))
            .copied()
            .take(extension::MAX_PEX_PEERS)
            .collect();
        if added.is_empty() && dropped.is_empty() {
            return;
        }
        self.next_pex_at = Instant::now() + PEX_EVERY;
        for (a, _) in &added {
            self.pex_sent.insert(*a);
        }
        for d in &dropped {
            self.pex_sent.remove(d);
        }
        out.push_small(&Message::Extended { id, payload: &PexMsg { added, dropped }.encode() });
    }

    /// Marks a peer that has everything; two seeds have nothing to say.
    fn note_seed(&mut self) -> Result<(), PeerError> {
        if self.peer_has.is_full() {
            self.handle.is_seed.store(true, Ordering::Relaxed);
            if self.shared.is_complete() {
                return Err(PeerError::Protocol("both sides are seeds".into()));
            }
        }
        Ok(())
    }

    fn on_request(&mut self, b: BlockRef) -> Result<(), PeerError> {
        let n = self.peer_has.len() as u32;
        if b.piece >= n {
            return Err(PeerError::Protocol(format!("request for piece {} of {n}", b.piece)));
        }
        let plen = self.shared.meta.piece_len(b.piece as usize);
        if b.len == 0 || b.len > BLOCK_LEN || b.offset.checked_add(b.len).is_none_or(|end| end > plen) {
            return Err(PeerError::Protocol(format!("bad request {b:?}")));
        }
        if self.am_choking || self.upload_queue.len() >= MAX_QUEUED_REQUESTS {
            return Ok(()); // dropped, as BEP 3 allows for choked peers
        }
        if !self.shared.inner.lock().unwrap().have.get(b.piece as usize) {
            return Ok(());
        }
        // A duplicate request costs one extra block at worst, bounded by the
        // queue cap; not worth a scan of the queue per request.
        self.upload_queue.push_back(b);
        Ok(())
    }

    fn on_piece(&mut self, piece: u32, offset: u32, data: &[u8]) {
        let block = BlockRef { piece, offset, len: data.len() as u32 };
        self.outstanding.remove(&block);
        let len = data.len() as u64;
        self.shared.downloaded.fetch_add(len, Ordering::Relaxed);
        self.handle.bytes_down.fetch_add(len, Ordering::Relaxed);
        self.bytes_this_tick += len;
        self.bytes_unmetered += len;
        let (outcome, complete, endgame) = {
            let mut inner = self.shared.inner.lock().unwrap();
            let (o, c) = inner.picker.block_received(self.key, piece, offset, data);
            (o, c, inner.picker.in_endgame())
        };
        if outcome == BlockOutcome::Accepted {
            self.last_block = Instant::now();
            self.handle.snubbed.store(false, Ordering::Relaxed);
            if endgame {
                self.broadcast_cancel(block);
            }
        }
        if let Some(c) = complete {
            self.completed.push(c);
        }
    }

    fn broadcast_cancel(&self, block: BlockRef) {
        let inner = self.shared.inner.lock().unwrap();
        for (k, h) in &inner.peers {
            if *k != self.key {
                h.cancels.lock().unwrap().push(block);
                h.notify.notify_one();
            }
        }
    }

    /// Unchokes at once when a slot is free, instead of waiting for the next
    /// choking round.
    fn claim_free_slot(&mut self, out: &mut OutQueue) {
        if !self.am_choking {
            return;
        }
        let slots = self.shared.env.config().limits.upload_slots;
        let inner = self.shared.inner.lock().unwrap();
        let used = inner.peers.values().filter(|p| p.unchoke.load(Ordering::Relaxed)).count();
        if used < slots {
            self.handle.unchoke.store(true, Ordering::Relaxed);
            drop(inner);
            self.apply_choke(out);
        }
    }

    fn apply_choke(&mut self, out: &mut OutQueue) {
        let want_unchoked = self.handle.unchoke.load(Ordering::Relaxed);
        if want_unchoked && self.am_choking {
            self.am_choking = false;
            out.push_small(&Message::Unchoke);
        } else if !want_unchoked && !self.am_choking {
            self.am_choking = true;
            self.upload_queue.clear();
            out.push_small(&Message::Choke);
        }
    }

    fn send_haves(&mut self, out: &mut OutQueue) -> Result<(), PeerError> {
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
            if self.am_interested {
                self.am_interested = false;
                out.push_small(&Message::NotInterested);
            }
            if self.peer_has.is_full() {
                return Err(PeerError::Protocol("both sides are seeds".into()));
            }
        }
        Ok(())
    }

    fn on_tick(&mut self, out: &mut OutQueue) -> Result<(), PeerError> {
        let now = Instant::now();
        if now - self.last_recv > IDLE_TIMEOUT {
            return Err(PeerError::Timeout);
        }
        if now - self.last_sent > KEEPALIVE_EVERY && out.is_empty() {
            out.push_small(&Message::KeepAlive);
        }
        self.send_pex(out);
        // Smoothed rate sets the pipeline depth: about half a second of data.
        self.rate = (self.rate * 3 + self.bytes_this_tick) / 4;
        self.bytes_this_tick = 0;
        let snubbed = !self.peer_choking && !self.outstanding.is_empty() && now - self.last_block > SNUB_AFTER;
        self.handle.snubbed.store(snubbed, Ordering::Relaxed);
        self.pipeline = if snubbed {
            1
        } else {
            ((self.rate / 2 / BLOCK_LEN as u64) as usize)
                .clamp(MIN_PIPELINE, MAX_PIPELINE)
                .max(self.pipeline.min(MAX_PIPELINE))
        };
        // Interest can lapse when others delivered what this peer has.
        if self.am_interested && !self.outstanding.is_empty() {
            return Ok(());
        }
        let wants = self.shared.inner.lock().unwrap().picker.wants_any(&self.peer_has);
        if wants != self.am_interested {
            self.am_interested = wants;
            out.push_small(if wants { &Message::Interested } else { &Message::NotInterested });
        }
        Ok(())
    }

    fn fill_requests(&mut self, out: &mut OutQueue) {
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
            let mut inner = self.shared.inner.lock().unwrap();
            inner.picker.pick(self.key, &self.peer_has, want, &|b| outstanding.contains(b), &mut picked);
        }
        for b in picked {
            self.outstanding.insert(b);
            out.push_small(&Message::Request(b));
        }
    }

    fn serve_uploads(&mut self, out: &OutQueue, reads_tx: &mpsc::Sender<ReadBatch>) {
        let disk = self.shared.env.disk.clone();
        // A read the disk queue had no room for goes first.
        if let Some(job) = self.parked_read.take() {
            if let Err(back) = disk.try_spawn(job) {
                self.parked_read = back;
                return;
            }
        }
        while !self.am_choking
            && self.throttled.is_empty()
            && !self.upload_queue.is_empty()
            && self.reads_in_flight < READS_IN_FLIGHT
            && out.len() < OUT_HIGH_WATER
        {
            let Some(storage) = self.shared.storage().cloned() else {
                return;
            };
            let take = self.upload_queue.len().min(READ_BATCH);
            let blocks: Vec<BlockRef> = self.upload_queue.drain(..take).collect();
            let piece_length = self.shared.meta.piece_length;
            let tx = reads_tx.clone();
            self.reads_in_flight += 1;
            // The disk job sends its result back to this task.
            let job = move || {
                let mut batch = Vec::with_capacity(blocks.len());
                for b in blocks {
                    let mut msg = Vec::with_capacity(13 + b.len as usize);
                    wire::encode_piece_header(b.piece, b.offset, b.len as usize, &mut msg);
                    msg.resize(13 + b.len as usize, 0);
                    if storage.read(b.piece as u64 * piece_length + b.offset as u64, &mut msg[13..]).is_ok() {
                        batch.push((b, msg));
                    }
                }
                let _ = tx.try_send(batch);
            };
            // A full queue parks the job here (retried on the next event,
            // at the latest the next tick) rather than waiting in this loop.
            if let Err(back) = disk.try_spawn(Box::new(job)) {
                self.parked_read = back;
                return;
            }
        }
    }

    fn drop_outstanding(&mut self) {
        if self.outstanding.is_empty() {
            return;
        }
        let mut inner = self.shared.inner.lock().unwrap();
        for b in self.outstanding.drain() {
            inner.picker.request_dropped(&b);
        }
    }

    fn cleanup(&mut self) {
        self.drop_outstanding();
        let mut inner = self.shared.inner.lock().unwrap();
        inner.picker.peer_bitfield(&self.peer_has, false);
        if inner.peers.get(&self.key).is_some_and(|h| Arc::ptr_eq(h, &self.handle)) {
            inner.peers.remove(&self.key);
        }
    }
}

/// Outgoing bytes as a queue of buffers: small messages share one buffer,
/// piece messages from the disk pool are queued as they came, and the socket
/// gets them in one vectored write.
#[derive(Default)]
struct OutQueue {
    bufs: VecDeque<Vec<u8>>,
    /// Bytes of the front buffer already written.
    front_pos: usize,
    total: usize,
}

impl OutQueue {
    fn push_small(&mut self, msg: &Message<'_>) {
        // Appending to the back buffer is safe even while it is the front one
        // being written: only bytes past `front_pos` are still to go.
        if self.bufs.back().is_none_or(|b| b.len() >= 4096) {
            self.bufs.push_back(Vec::with_capacity(256));
        }
        let back = self.bufs.back_mut().unwrap();
        let before = back.len();
        wire::encode(msg, back);
        self.total += back.len() - before;
    }

    fn push_owned(&mut self, buf: Vec<u8>) {
        self.total += buf.len();
        self.bufs.push_back(buf);
    }

    fn len(&self) -> usize {
        self.total
    }

    fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn slices(&self) -> Vec<IoSlice<'_>> {
        self.bufs
            .iter()
            .take(64)
            .enumerate()
            .map(|(i, b)| IoSlice::new(if i == 0 { &b[self.front_pos..] } else { b }))
            .collect()
    }

    fn advance(&mut self, mut n: usize) {
        self.total -= n;
        while n > 0 {
            let front_left = self.bufs[0].len() - self.front_pos;
            if n >= front_left {
                n -= front_left;
                self.bufs.pop_front();
                self.front_pos = 0;
            } else {
                self.front_pos += n;
                n = 0;
            }
        }
    }
}
