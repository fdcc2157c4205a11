//! A magnet's task until its metadata arrives: find peers (the magnet's
//! `x.pe`, its trackers, the DHT, PEX), fetch the info dictionary from
//! several of them at once over ut_metadata (BEP 9), check it against the
//! info hash, and hand the torrent to the session.
//!
//! Each connection is short-lived and only speaks the extension protocol
//! (a [`MetadataConn`] handler under the connection core); once the metadata
//! is whole they all close, and the torrent task dials the peers that served
//! it.

use super::peer::MAX_QUEUED_REQUESTS;
use super::peerbook::PeerBook;
use super::Env;
use crate::conn::{self, ConnEnd, Handler, OutQueue, Transport};
use crate::extension::{self, ExtHandshake, MetadataMsg, PexMsg};
use crate::magnet::Magnet;
use crate::metadata::{DataOutcome, MetadataAssembler};
use crate::metainfo::Metainfo;
use crate::resume::ResumeRecord;
use crate::tracker::{self, TrackerConfig, TransferCounters};
use crate::types::InfoHash;
use crate::wire::{Handshake, Message};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Metadata connections open at once.
const MAX_CONNECTIONS: usize = 8;
/// Metadata requests outstanding per peer.
const REQUESTS_PER_PEER: usize = 4;
/// A peer that sends nothing for this long while we wait on it is dropped;
/// one we ask nothing of, after [`IDLE_TIMEOUT`].
const READ_TIMEOUT: Duration = Duration::from_secs(20);
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const IDLE_RECHECK: Duration = Duration::from_secs(2);
/// DHT lookups for a magnet: every 30 s while they find peers; each empty
/// one doubles the wait, up to 15 minutes, so a thousand magnets nobody
/// seeds cost the DHT (and us) little.
const DHT_EVERY: Duration = Duration::from_secs(30);
const DHT_EVERY_AT_MOST: Duration = Duration::from_secs(15 * 60);
/// How often the connection loop looks at its book of addresses.
const BUSY_TICK: Duration = Duration::from_secs(1);
const IDLE_TICK: Duration = Duration::from_secs(5);

/// What the status shows of a magnet still fetching.
#[derive(Default)]
pub struct MagnetProgress {
    pub peers: AtomicUsize,
    pub error: Mutex<Option<String>>,
}

pub struct Fetched {
    pub meta: Metainfo,
    /// Listening addresses of the peers that took part.
    pub peers: Vec<SocketAddr>,
}

pub type IncomingPeer = (Transport, SocketAddr, Handshake);

struct Ctx {
    hash: InfoHash,
    env: Arc<Env>,
    assembler: Mutex<MetadataAssembler>,
    result: Mutex<Option<Vec<u8>>>,
    /// Cancelled once the metadata is whole (or the magnet goes away).
    done: CancellationToken,
    discovered: flume::Sender<crate::tracker::PeerList>,
    /// Woken when blocks go back to the pool (a peer left, an attempt failed).
    blocks_freed: tokio::sync::Notify,
    good_peers: Mutex<Vec<SocketAddr>>,
    progress: Arc<MagnetProgress>,
}

impl Ctx {
    /// `good_peers`, locked.
    fn good_peers(&self) -> std::sync::MutexGuard<'_, Vec<SocketAddr>> {
        crate::locks::locked(&self.good_peers)
    }
}

impl Ctx {
    /// `result`, locked.
    fn result(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        crate::locks::locked(&self.result)
    }
}

impl Ctx {
    /// `assembler`, locked.
    fn assembler(&self) -> std::sync::MutexGuard<'_, MetadataAssembler> {
        crate::locks::locked(&self.assembler)
    }
}

/// The tracker sees a magnet as a leecher with unknown bytes left. Its
/// announce record is kept in a resume record of its own, so a restart
/// during the fetch does not announce again too soon (the torrent it turns
/// into writes its own record over it).
struct MagnetCounters {
    hash: InfoHash,
    env: Arc<Env>,
}

impl TransferCounters for MagnetCounters {
    fn uploaded(&self) -> u64 {
        0
    }
    fn downloaded(&self) -> u64 {
        0
    }
    fn left(&self) -> u64 {
        16 * 1024
    }
    fn persist(self: Arc<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let record = ResumeRecord { announce: self.env.announces().get(self.hash), ..ResumeRecord::default() };
            let (dir, hash) = (self.env.state_dir().to_path_buf(), self.hash);
            let saved = tokio::task::spawn_blocking(move || record.save(&dir, &hash)).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(hash = %&hash.hex()[..8], error = %e, "could not save the magnet's announce record");
            }
        })
    }
}

pub async fn run(
    magnet: Magnet,
    env: Arc<Env>,
    progress: Arc<MagnetProgress>,
    mut incoming: mpsc::Receiver<IncomingPeer>,
    cancel: CancellationToken,
) -> Option<Fetched> {
    let hash = magnet.info_hash;
    let done = cancel.child_token();
    let (discovered, mut discovered_rx) = flume::bounded::<crate::tracker::PeerList>(16);
    let ctx = Arc::new(Ctx {
        hash,
        env,
        assembler: Mutex::new(MetadataAssembler::new(hash)),
        result: Mutex::new(None),
        done: done.clone(),
        discovered,
        blocks_freed: tokio::sync::Notify::new(),
        good_peers: Mutex::new(Vec::new()),
        progress,
    });
    // Each `tr` is a tier of its own, for the announces and the torrent.
    let tiers: Vec<Vec<String>> = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
    let mut helpers = start_discovery(&ctx, &magnet, &tiers);
    let name = magnet.display_name();
    tracing::info!(torrent = %name, trackers = magnet.trackers.len(), peers = magnet.peers.len(), "fetching metadata");
    if let Some(why) = no_way_to_peers(&magnet, &tiers, ctx.env.dht().is_some()) {
        tracing::warn!(torrent = %name, "{why}");
    }
    let mut conns = Connections::default();
    conns.run(&ctx, &magnet, &mut incoming, &mut discovered_rx).await;
    done.cancel();
    conns.tasks.shutdown().await;
    // Both end on `done`; the tracker's `stopped` announce is bounded.
    while helpers.join_next().await.is_some() {}
    let info = ctx.result().take()?;
    match Metainfo::from_info_bytes(&info, tiers) {
        Ok(meta) => {
            let mut peers = std::mem::take(&mut *ctx.good_peers());
            peers.extend(magnet.peers.iter().copied());
            peers.sort();
            peers.dedup();
            Some(Fetched { meta, peers })
        }
        Err(e) => {
            // The hash matched, so every peer will send the same bytes.
            let msg = format!("metadata matches the info hash but is not a usable torrent: {e}");
            tracing::warn!(torrent = %name, error = %msg, "cannot use the metadata");
            *ctx.progress.error.lock().unwrap() = Some(msg);
            cancel.cancelled().await;
            None
        }
    }
}

/// Why a magnet can never find a peer: no tracker we speak, no DHT, no
/// peer address in it. Only an incoming connection could still bring the
/// metadata: the magnet waits, and the log says why.
fn no_way_to_peers(magnet: &Magnet, tiers: &[Vec<String>], dht: bool) -> Option<String> {
    let no_tracker = tracker::usable_tiers(tiers).is_empty();
    (no_tracker && !dht && magnet.peers.is_empty()).then(|| {
        "this magnet cannot find peers: it names no usable tracker and no peer (x.pe), and the DHT is off \
         ([dht] enabled); add a tracker to the magnet or turn the DHT on"
            .to_string()
    })
}

/// The magnet's trackers and DHT lookups, reporting peers to `discovered`.
fn start_discovery(ctx: &Ctx, magnet: &Magnet, tiers: &[Vec<String>]) -> JoinSet<()> {
    let (env, hash) = (&ctx.env, ctx.hash);
    let mut helpers = JoinSet::new();
    if !tiers.is_empty() {
        // A magnet never completes as such; the sender lives as long as the
        // tracker task, which would otherwise see the channel closed.
        let (never_completed, completed_rx) = watch::channel(false);
        let cfg = TrackerConfig {
            info_hash: hash,
            name: magnet.display_name(),
            peer_id: env.peer_id(),
            port: env.listen_port(),
            tiers: tiers.to_vec(),
            numwant: env.config().network.numwant,
            book: env.announces().clone(),
        };
        let (http, tx, d) = (env.http().clone(), ctx.discovered.clone(), ctx.done.clone());
        let counters = Arc::new(MagnetCounters { hash, env: env.clone() });
        helpers.spawn(
            async move {
                let _never_completed = never_completed;
                tracker::run(cfg, http, counters.clone(), tx, tracker::Completion::Pending(completed_rx), d).await;
                // The `stopped` announce counts too.
                counters.persist().await;
            }
            .in_current_span(),
        );
    }
    if let Some(dht) = env.dht().cloned() {
        let (tx, d) = (ctx.discovered.clone(), ctx.done.clone());
        let mut wait = DHT_EVERY / 2;
        let every = move |found: usize| {
            wait = next_dht_wait(wait, found);
            wait
        };
        helpers.spawn(dht.keep_looking_up(hash, env.listen_port(), tx, d, every).in_current_span());
    }
    helpers
}

/// The wait before a magnet's next DHT lookup, after one that found `found`.
fn next_dht_wait(previous: Duration, found: usize) -> Duration {
    if found > 0 {
        DHT_EVERY
    } else {
        (previous * 2).clamp(DHT_EVERY, DHT_EVERY_AT_MOST)
    }
}

/// The magnet's metadata connections and the book of peers to dial. Each
/// holds one of the session's connection permits (`limits.max_connections`)
/// and counts against `limits.max_peers_per_ip`, as a torrent's peers do.
#[derive(Default)]
struct Connections {
    /// Every address heard of, and when to dial it.
    book: PeerBook,
    /// Every live connection, dialled or accepted.
    connected: HashSet<SocketAddr>,
    /// Connections end with their address and, for outgoing ones, whether
    /// another try makes sense and how long they lasted.
    tasks: JoinSet<(SocketAddr, Option<(bool, Duration)>)>,
}

impl Connections {
    /// Dials and accepts until the metadata is whole or the magnet stops.
    async fn run(
        &mut self,
        ctx: &Arc<Ctx>,
        magnet: &Magnet,
        incoming: &mut mpsc::Receiver<IncomingPeer>,
        discovered: &mut flume::Receiver<crate::tracker::PeerList>,
    ) {
        self.book.heard(magnet.peers.iter().copied(), Instant::now());
        let mut next_tick = tokio::time::Instant::now() + BUSY_TICK;
        loop {
            self.dial(ctx);
            ctx.progress.peers.store(self.tasks.len(), Ordering::Relaxed);
            tokio::select! {
                _ = ctx.done.cancelled() => return,
                Ok(list) = discovered.recv_async() => self.book.heard(*list, Instant::now()),
                Some(r) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok((addr, dialled)) = r {
                        self.connected.remove(&addr);
                        if let Some((retry, lasted)) = dialled {
                            self.book.ended(addr, retry, lasted, Instant::now());
                        }
                    }
                }
                Some((transport, addr, theirs)) = incoming.recv() => self.accept(ctx, transport, addr, theirs),
                _ = tokio::time::sleep_until(next_tick) => {
                    // A magnet nobody answers looks again every few seconds,
                    // not every second: a thousand of them stay cheap.
                    let idle = self.tasks.is_empty() && !self.book.has_queued();
                    next_tick = tokio::time::Instant::now() + if idle { IDLE_TICK } else { BUSY_TICK };
                    let now = Instant::now();
                    self.book.queue_due(now);
                    if self.tasks.is_empty() && !self.book.has_queued() {
                        // Alone: the magnet's own peers are worth another try now and then.
                        self.book.heard(magnet.peers.iter().copied(), now);
                    }
                }
            }
        }
    }

    /// Whether `ip`'s host has room for one more connection.
    fn host_has_room(&self, ip: std::net::IpAddr, per_host: usize) -> bool {
        let host = crate::types::host_of(ip);
        self.connected.iter().filter(|a| crate::types::host_of(a.ip()) == host).count() < per_host
    }

    fn dial(&mut self, ctx: &Arc<Ctx>) {
        let per_host = ctx.env.config().limits.max_peers_per_ip;
        while self.tasks.len() < MAX_CONNECTIONS {
            let Some(addr) = self.book.next_to_dial() else { break };
            if self.connected.contains(&addr) || ctx.assembler().is_banned(&addr) || ctx.env.is_ourselves(&addr) {
                continue;
            }
            if !self.host_has_room(addr.ip(), per_host) {
                // As a torrent does: the address comes back when a source names it again.
                continue;
            }
            let Ok(permit) = ctx.env.connections().clone().try_acquire_owned() else {
                self.book.put_back(addr);
                break;
            };
            self.connected.insert(addr);
            let ctx = ctx.clone();
            self.tasks.spawn(
                async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let end = outgoing(&ctx, addr).await;
                    tracing::debug!(peer = %addr, reason = %end, "metadata connection ended");
                    (addr, Some((end.worth_redialling(), started.elapsed())))
                }
                .in_current_span(),
            );
        }
    }

    fn accept(&mut self, ctx: &Arc<Ctx>, transport: Transport, addr: SocketAddr, theirs: Handshake) {
        let per_host = ctx.env.config().limits.max_peers_per_ip;
        if self.tasks.len() >= MAX_CONNECTIONS * 2
            || self.connected.contains(&addr)
            || !self.host_has_room(addr.ip(), per_host)
        {
            return;
        }
        let Ok(permit) = ctx.env.connections().clone().try_acquire_owned() else {
            return;
        };
        self.connected.insert(addr);
        let ctx = ctx.clone();
        self.tasks.spawn(
            async move {
                let _permit = permit;
                let end = accepted(&ctx, transport, addr, theirs).await;
                tracing::debug!(peer = %addr, reason = %end, "metadata connection ended");
                (addr, None)
            }
            .in_current_span(),
        );
    }
}

/// Dials a peer for metadata.
async fn outgoing(ctx: &Arc<Ctx>, addr: SocketAddr) -> ConnEnd {
    let ours = Handshake::new(ctx.hash, ctx.env.peer_id(), ctx.env.dht().is_some());
    let (transport, theirs) = tokio::select! {
        _ = ctx.done.cancelled() => return ConnEnd::Cancelled,
        r = conn::dial(addr, &ours, ctx.env.reach(), None) => match r {
            Ok(x) => x,
            Err(end) => return end,
        },
    };
    if theirs.peer_id == ctx.env.peer_id() {
        ctx.env.note_ourselves(addr);
        return ConnEnd::Ourselves;
    }
    ctx.good_peers().push(addr);
    exchange(ctx, transport, addr, theirs).await
}

/// Answers a peer the listener routed to this magnet.
async fn accepted(ctx: &Arc<Ctx>, mut transport: Transport, addr: SocketAddr, theirs: Handshake) -> ConnEnd {
    let ours = Handshake::new(ctx.hash, ctx.env.peer_id(), ctx.env.dht().is_some());
    if let Err(end) = conn::answer(&mut transport, &ours).await {
        return end;
    }
    exchange(ctx, transport, addr, theirs).await
}

/// The extension-protocol conversation with one peer.
async fn exchange(ctx: &Arc<Ctx>, transport: Transport, addr: SocketAddr, theirs: Handshake) -> ConnEnd {
    if theirs.peer_id == ctx.env.peer_id() {
        return ConnEnd::Ourselves;
    }
    if !theirs.supports_extensions() {
        return ConnEnd::Unsuitable("no extension protocol".into());
    }
    let mut handler = MetadataConn {
        ctx: ctx.clone(),
        addr,
        dht: theirs.supports_dht(),
        fast: theirs.supports_fast(),
        their_metadata_id: None,
        their_size: None,
        outstanding: 0,
    };
    let end = conn::run(transport, &mut handler, &ctx.done).await;
    ctx.assembler().release(addr);
    ctx.blocks_freed.notify_waiters();
    end
}

/// One metadata connection: asks for blocks, answers requests with
/// `reject` (we have nothing yet), passes PEX peers on.
struct MetadataConn {
    ctx: Arc<Ctx>,
    addr: SocketAddr,
    /// The peer set the DHT bit.
    dht: bool,
    /// Both speak the fast extension: we say `have_none` (BEP 6 wants one
    /// of bitfield, `have_all`, `have_none` first).
    fast: bool,
    their_metadata_id: Option<u8>,
    /// The size this peer announced, offered again after a failed attempt
    /// reset the assembler.
    their_size: Option<usize>,
    outstanding: usize,
}

impl MetadataConn {
    /// Nothing left to ask this peer for now.
    fn idle(&self) -> bool {
        self.outstanding == 0 && self.their_metadata_id.is_some()
    }

    fn on_ext_handshake(&mut self, payload: &[u8]) -> Result<(), ConnEnd> {
        let hs = ExtHandshake::decode(payload).ok_or(ConnEnd::Protocol("unreadable extension handshake".into()))?;
        if let Some(l) = hs.listen_addr(self.addr) {
            let mut good = self.ctx.good_peers();
            if !good.contains(&l) {
                good.push(l);
            }
        }
        let unsuitable = |why: &str| ConnEnd::Unsuitable(why.to_string());
        self.their_metadata_id = Some(hs.id_of(extension::UT_METADATA).ok_or(unsuitable("does not serve metadata"))?);
        let size = hs.metadata_size().map_err(ConnEnd::Protocol)?.ok_or(unsuitable("does not have the metadata"))?;
        self.ctx.assembler().offer_size(self.addr, size).map_err(ConnEnd::Protocol)?;
        self.their_size = Some(size);
        Ok(())
    }

    fn on_metadata(&mut self, payload: &[u8], out: &mut OutQueue) -> Result<(), ConnEnd> {
        match MetadataMsg::decode(payload).map_err(ConnEnd::Protocol)? {
            MetadataMsg::Request { piece } => {
                // We have nothing to serve yet; their id is needed to say so.
                if let Some(id) = self.their_metadata_id {
                    out.push_small(&Message::Extended { id, payload: &MetadataMsg::Reject { piece }.encode() });
                }
                Ok(())
            }
            MetadataMsg::Reject { .. } => Err(ConnEnd::Unsuitable("rejected a metadata request".into())),
            MetadataMsg::Data { piece, total_size, data } => self.on_data(piece, total_size, data),
        }
    }

    fn on_data(&mut self, piece: u32, total_size: usize, data: &[u8]) -> Result<(), ConnEnd> {
        self.outstanding = self.outstanding.saturating_sub(1);
        let outcome = self
            .ctx
            .assembler
            .lock()
            .unwrap()
            .on_data(self.addr, piece, total_size, data)
            .map_err(ConnEnd::Protocol)?;
        match outcome {
            DataOutcome::Stored => Ok(()),
            DataOutcome::Complete(info) => {
                *self.ctx.result() = Some(info);
                self.ctx.done.cancel();
                Err(ConnEnd::Cancelled)
            }
            DataOutcome::Mismatch { banned } => {
                tracing::warn!(peer = %self.addr, banned = banned.len(), "metadata failed the info-hash check; discarded");
                self.outstanding = 0;
                self.ctx.blocks_freed.notify_waiters();
                match banned.contains(&self.addr) {
                    true => Err(ConnEnd::Banned),
                    false => Ok(()),
                }
            }
        }
    }
}

impl Handler for MetadataConn {
    type Wake = ();

    fn start(&mut self, out: &mut OutQueue) {
        if self.fast {
            out.push_small(&Message::HaveNone);
        }
        let hs = ExtHandshake::ours(self.ctx.env.listen_port(), MAX_QUEUED_REQUESTS, self.addr.ip(), None, true);
        out.push_small(&Message::Extended { id: extension::HANDSHAKE_ID, payload: &hs.encode() });
        if let Some(dht) = self.ctx.env.dht().filter(|_| self.dht) {
            out.push_small(&Message::Port(dht.port_for(self.addr.ip())));
        }
    }

    /// An idle connection wakes when blocks are handed back by another peer
    /// or a failed attempt (and now and then, in case the wake-up came
    /// between two waits).
    async fn wake(&mut self) {
        if !self.idle() {
            return std::future::pending().await;
        }
        tokio::select! {
            _ = self.ctx.blocks_freed.notified() => {}
            _ = tokio::time::sleep(IDLE_RECHECK) => {}
        }
    }

    fn on_wake(&mut self, _: (), _: &mut OutQueue) -> Result<(), ConnEnd> {
        Ok(())
    }

    fn on_message(&mut self, msg: Message<'_>, out: &mut OutQueue) -> Result<(), ConnEnd> {
        let Message::Extended { id, payload } = msg else {
            return Ok(()); // bitfields, haves and the rest mean nothing yet
        };
        match id {
            extension::HANDSHAKE_ID => self.on_ext_handshake(payload),
            extension::OUR_UT_METADATA => self.on_metadata(payload, out),
            extension::OUR_UT_PEX => {
                if let Ok(pex) = PexMsg::decode(payload) {
                    let _ = self.ctx.discovered.try_send(Box::new(pex.added.into_iter().map(|(a, _)| a).collect()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn after_read(&mut self) -> Option<Instant> {
        None
    }

    fn on_tick(&mut self, _: Instant, _: &mut OutQueue) -> Result<(), ConnEnd> {
        Ok(())
    }

    /// Asks for as many blocks as this peer may have outstanding.
    fn pump(&mut self, out: &mut OutQueue) {
        let Some(id) = self.their_metadata_id else {
            return;
        };
        let mut assembler = self.ctx.assembler();
        if let (None, Some(size)) = (assembler.size(), self.their_size) {
            // Refused if this peer's size is not the one now taken.
            let _ = assembler.offer_size(self.addr, size);
        }
        while self.outstanding < REQUESTS_PER_PEER {
            let Some(piece) = assembler.next_request(self.addr) else { break };
            self.outstanding += 1;
            out.push_small(&Message::Extended { id, payload: &MetadataMsg::Request { piece }.encode() });
        }
    }

    /// A peer we are waiting on must answer soon; one we ask nothing of may
    /// stay quiet longer.
    fn idle_timeout(&self) -> Duration {
        if self.idle() {
            IDLE_TIMEOUT
        } else {
            READ_TIMEOUT
        }
    }

    /// The piece count is unknown yet: the largest a torrent we accept can have.
    fn bitfield_len(&self) -> usize {
        (crate::metainfo::MAX_TORRENT_FILE / 20).div_ceil(8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dht_lookups_for_a_magnet_nobody_has_back_off_and_recover() {
        let mut wait = DHT_EVERY / 2;
        let waits: Vec<u64> = (0..8)
            .map(|_| {
                wait = next_dht_wait(wait, 0);
                wait.as_secs()
            })
            .collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(next_dht_wait(wait, 3), DHT_EVERY, "peers found: back to the short wait");
    }
}
