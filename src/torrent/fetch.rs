//! A magnet's task until its metadata arrives: find peers (the magnet's
//! `x.pe`, its trackers, the DHT, PEX), fetch the info dictionary from
//! several of them at once over ut_metadata (BEP 9), check it against the
//! info hash, and hand the torrent to the session.
//!
//! Each connection is short-lived and only speaks the extension protocol;
//! once the metadata is whole they all close, and the torrent task dials the
//! peers that served it.

use super::peer::{handshake_outgoing, HANDSHAKE_TIMEOUT, MAX_QUEUED_REQUESTS};
use super::peerbook::PeerBook;
use super::Env;
use crate::extension::{self, ExtHandshake, MetadataMsg, PexMsg};
use crate::magnet::Magnet;
use crate::metadata::{DataOutcome, MetadataAssembler};
use crate::metainfo::Metainfo;
use crate::tracker::{self, TrackerConfig, TransferCounters};
use crate::types::InfoHash;
use crate::wire::{self, Handshake, Message};
use bytes::{Buf, BytesMut};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Metadata connections open at once.
const MAX_CONNECTIONS: usize = 8;
/// Metadata requests outstanding per peer.
const REQUESTS_PER_PEER: usize = 4;
/// A peer that sends nothing for this long while we wait on it is dropped;
/// one we ask nothing of, after [`IDLE_TIMEOUT`].
const READ_TIMEOUT: Duration = Duration::from_secs(20);
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const IDLE_RECHECK: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DHT_EVERY: Duration = Duration::from_secs(30);
const SELF_CONNECTION: &str = "connected to ourselves";

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

pub type IncomingPeer = (TcpStream, SocketAddr, Handshake);

struct Ctx {
    hash: InfoHash,
    env: Arc<Env>,
    assembler: Mutex<MetadataAssembler>,
    result: Mutex<Option<Vec<u8>>>,
    /// Cancelled once the metadata is whole (or the magnet goes away).
    done: CancellationToken,
    discovered: mpsc::Sender<Vec<SocketAddr>>,
    /// Woken when blocks go back to the pool (a peer left, an attempt failed).
    blocks_freed: tokio::sync::Notify,
    good_peers: Mutex<Vec<SocketAddr>>,
    progress: Arc<MagnetProgress>,
}

/// The tracker sees a magnet as a leecher with unknown bytes left.
struct NothingYet;

impl TransferCounters for NothingYet {
    fn uploaded(&self) -> u64 {
        0
    }
    fn downloaded(&self) -> u64 {
        0
    }
    fn left(&self) -> u64 {
        16 * 1024
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
    let name = magnet.display_name();
    let done = cancel.child_token();
    let (discovered, mut discovered_rx) = mpsc::channel::<Vec<SocketAddr>>(16);
    let ctx = Arc::new(Ctx {
        hash,
        env: env.clone(),
        assembler: Mutex::new(MetadataAssembler::new(hash)),
        result: Mutex::new(None),
        done: done.clone(),
        discovered: discovered.clone(),
        blocks_freed: tokio::sync::Notify::new(),
        good_peers: Mutex::new(Vec::new()),
        progress: progress.clone(),
    });
    let mut helpers = JoinSet::new();
    // Each `tr` is a tier of its own, for the announces and the torrent.
    let tiers: Vec<Vec<String>> = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
    if !tiers.is_empty() {
        // A magnet never completes as such; the sender lives as long as the
        // tracker task, which would otherwise see the channel closed.
        let (never_completed, completed_rx) = watch::channel(false);
        let cfg = TrackerConfig {
            info_hash: hash,
            name: name.clone(),
            peer_id: env.peer_id,
            port: env.listen_port,
            tiers: tiers.clone(),
        };
        let (http, tx, d) = (env.http.clone(), discovered.clone(), done.clone());
        helpers.spawn(async move {
            let _never_completed = never_completed;
            tracker::run(cfg, http, Arc::new(NothingYet), tx, completed_rx, d).await
        });
    }
    if let Some(dht) = env.dht.clone() {
        helpers.spawn(dht.keep_looking_up(hash, env.listen_port, discovered.clone(), done.clone(), || DHT_EVERY));
    }
    tracing::info!(torrent = %name, trackers = magnet.trackers.len(), peers = magnet.peers.len(), "fetching metadata");

    // Every address heard of, and when to dial it.
    let mut book = PeerBook::default();
    book.heard(magnet.peers.iter().copied(), Instant::now());
    let mut connected: HashSet<SocketAddr> = HashSet::new();
    // Outgoing connections end with their address, whether another try makes
    // sense, and how long they lasted; incoming ones with nothing.
    let mut conns: JoinSet<Option<(SocketAddr, bool, Duration)>> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        while conns.len() < MAX_CONNECTIONS {
            let Some(addr) = book.next_to_dial() else { break };
            if connected.contains(&addr) || ctx.assembler.lock().unwrap().is_banned(&addr) {
                continue;
            }
            connected.insert(addr);
            let ctx = ctx.clone();
            conns.spawn(async move {
                let started = Instant::now();
                let r = outgoing(&ctx, addr).await;
                if let Err(e) = &r {
                    tracing::debug!(peer = %addr, error = %e, "metadata connection ended");
                }
                // Our own address (the tracker lists us too) is not dialled again.
                let ourselves = r.as_ref().is_err_and(|e| e == SELF_CONNECTION);
                Some((addr, !ourselves, started.elapsed()))
            });
        }
        ctx.progress.peers.store(conns.len(), Ordering::Relaxed);
        tokio::select! {
            _ = done.cancelled() => break,
            Some(list) = discovered_rx.recv() => book.heard(list, Instant::now()),
            Some(r) = conns.join_next(), if !conns.is_empty() => {
                if let Ok(Some((addr, retry, lasted))) = r {
                    connected.remove(&addr);
                    book.ended(addr, retry, lasted, Instant::now());
                }
            }
            Some((stream, addr, theirs)) = incoming.recv() => {
                if conns.len() < MAX_CONNECTIONS * 2 && !connected.contains(&addr) {
                    let ctx = ctx.clone();
                    conns.spawn(async move {
                        if let Err(e) = accepted(&ctx, stream, addr, theirs).await {
                            tracing::debug!(peer = %addr, error = %e, "metadata connection ended");
                        }
                        None
                    });
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                book.queue_due(now);
                if conns.is_empty() && !book.has_queued() {
                    // Alone: the magnet's own peers are worth another try now and then.
                    book.heard(magnet.peers.iter().copied(), now);
                }
            }
        }
    }
    done.cancel();
    conns.shutdown().await;
    // The tracker task announces `stopped`; give it its few seconds.
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while helpers.join_next().await.is_some() {} }).await;
    helpers.abort_all();
    let info = ctx.result.lock().unwrap().take()?;
    match Metainfo::from_info_bytes(&info, tiers) {
        Ok(meta) => {
            let mut peers = std::mem::take(&mut *ctx.good_peers.lock().unwrap());
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

async fn outgoing(ctx: &Ctx, addr: SocketAddr) -> Result<(), String> {
    let ours = Handshake::new(ctx.hash, ctx.env.peer_id, ctx.env.dht.is_some());
    let connect = async {
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let theirs = handshake_outgoing(&mut stream, &ours).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((stream, theirs))
    };
    let (stream, theirs) = tokio::select! {
        _ = ctx.done.cancelled() => return Ok(()),
        r = connect => r?,
    };
    if theirs.info_hash != ctx.hash {
        return Err("peer answered for another torrent".into());
    }
    ctx.good_peers.lock().unwrap().push(addr);
    exchange(ctx, stream, addr, theirs).await
}

async fn accepted(ctx: &Ctx, mut stream: TcpStream, addr: SocketAddr, theirs: Handshake) -> Result<(), String> {
    let ours = Handshake::new(ctx.hash, ctx.env.peer_id, ctx.env.dht.is_some());
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(&ours.encode()))
        .await
        .map_err(|_| "handshake write timed out".to_string())?
        .map_err(|e| e.to_string())?;
    exchange(ctx, stream, addr, theirs).await
}

/// The extension-protocol conversation with one peer.
async fn exchange(ctx: &Ctx, stream: TcpStream, addr: SocketAddr, theirs: Handshake) -> Result<(), String> {
    if theirs.peer_id == ctx.env.peer_id {
        return Err(SELF_CONNECTION.into());
    }
    if !theirs.supports_extensions() {
        return Err("peer does not speak the extension protocol".into());
    }
    let result = talk(ctx, stream, addr, theirs).await;
    ctx.assembler.lock().unwrap().release(addr);
    ctx.blocks_freed.notify_waiters();
    result
}

async fn talk(ctx: &Ctx, stream: TcpStream, addr: SocketAddr, theirs: Handshake) -> Result<(), String> {
    let (mut rd, mut wr) = stream.into_split();
    let mut out = Vec::new();
    let hs = ExtHandshake::ours(ctx.env.listen_port, MAX_QUEUED_REQUESTS, addr.ip(), None, true);
    wire::encode(&Message::Extended { id: extension::HANDSHAKE_ID, payload: &hs.encode() }, &mut out);
    if let Some(dht) = ctx.env.dht.as_ref().filter(|_| theirs.supports_dht()) {
        wire::encode(&Message::Port(dht.port()), &mut out);
    }
    let mut buf = BytesMut::with_capacity(32 * 1024);
    let mut their_metadata_id = None;
    // The size this peer announced, offered again after a failed attempt
    // reset the assembler.
    let mut their_size = None;
    let mut outstanding = 0usize;
    loop {
        if !out.is_empty() {
            tokio::time::timeout(READ_TIMEOUT, wr.write_all(&out))
                .await
                .map_err(|_| "write timed out".to_string())?
                .map_err(|e| e.to_string())?;
            out.clear();
        }
        // An idle connection (nothing left to ask this peer) also wakes when
        // blocks are handed back by another peer or a failed attempt.
        let idle = outstanding == 0 && their_metadata_id.is_some();
        // A peer we are not waiting on may stay quiet longer.
        let limit = if idle { IDLE_TIMEOUT } else { READ_TIMEOUT };
        let n = tokio::select! {
            _ = ctx.done.cancelled() => return Ok(()),
            _ = ctx.blocks_freed.notified(), if idle => None,
            // In case the wake-up came between two waits.
            _ = tokio::time::sleep(IDLE_RECHECK), if idle => None,
            r = tokio::time::timeout(limit, rd.read_buf(&mut buf)) => {
                Some(r.map_err(|_| "timed out".to_string())?.map_err(|e| e.to_string())?)
            }
        };
        if n == Some(0) {
            return Err("connection closed".into());
        }
        let mut consumed = 0;
        while let Some((msg, used)) = wire::decode(&buf[consumed..]).map_err(|e| e.to_string())? {
            consumed += used;
            let Message::Extended { id, payload } = msg else {
                continue; // bitfields, haves and the rest mean nothing yet
            };
            match id {
                extension::HANDSHAKE_ID => {
                    let hs = ExtHandshake::decode(payload).ok_or("unreadable extension handshake")?;
                    if let Some(l) = hs.listen_addr(addr) {
                        let mut good = ctx.good_peers.lock().unwrap();
                        if !good.contains(&l) {
                            good.push(l);
                        }
                    }
                    their_metadata_id = Some(hs.id_of(extension::UT_METADATA).ok_or("peer does not serve metadata")?);
                    let size = hs.metadata_size()?.ok_or("peer does not have the metadata")?;
                    ctx.assembler.lock().unwrap().offer_size(addr, size)?;
                    their_size = Some(size);
                }
                extension::OUR_UT_METADATA => match MetadataMsg::decode(payload)? {
                    MetadataMsg::Request { piece } => {
                        // We have nothing to serve yet; their id is needed to say so.
                        if let Some(id) = their_metadata_id {
                            let reply = MetadataMsg::Reject { piece }.encode();
                            wire::encode(&Message::Extended { id, payload: &reply }, &mut out);
                        }
                    }
                    MetadataMsg::Reject { .. } => return Err("peer rejected a metadata request".into()),
                    MetadataMsg::Data { piece, total_size, data } => {
                        outstanding = outstanding.saturating_sub(1);
                        let outcome = ctx.assembler.lock().unwrap().on_data(addr, piece, total_size, data)?;
                        match outcome {
                            DataOutcome::Stored => {}
                            DataOutcome::Complete(info) => {
                                *ctx.result.lock().unwrap() = Some(info);
                                ctx.done.cancel();
                                return Ok(());
                            }
                            DataOutcome::Mismatch { banned } => {
                                tracing::warn!(peer = %addr, banned = banned.len(), "metadata failed the info-hash check; discarded");
                                outstanding = 0;
                                ctx.blocks_freed.notify_waiters();
                                if banned.contains(&addr) {
                                    return Err("sent metadata that fails the hash check".into());
                                }
                            }
                        }
                    }
                },
                extension::OUR_UT_PEX => {
                    if let Ok(pex) = PexMsg::decode(payload) {
                        let _ = ctx.discovered.try_send(pex.added.into_iter().map(|(a, _)| a).collect());
                    }
                }
                _ => {}
            }
        }
        buf.advance(consumed);
        if let Some(id) = their_metadata_id {
            let mut assembler = ctx.assembler.lock().unwrap();
            if let (None, Some(size)) = (assembler.size(), their_size) {
                // Refused if this peer's size is not the one now taken.
                let _ = assembler.offer_size(addr, size);
            }
            while outstanding < REQUESTS_PER_PEER {
                let Some(piece) = assembler.next_request(addr) else { break };
                outstanding += 1;
                wire::encode(&Message::Extended { id, payload: &MetadataMsg::Request { piece }.encode() }, &mut out);
            }
        }
    }
}
