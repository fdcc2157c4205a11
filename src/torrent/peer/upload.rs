//! What we serve to one peer: our choke, its requests (queued, or refused),
//! the disk reads that answer them and the upload limit they pass. With a
//! fast peer (BEP 6) every request gets an answer, the block or a
//! `reject_request`, and its allowed-fast pieces are served while we choke it.
//! To a plain TCP peer without an upload limit, blocks go as file ranges the
//! connection's writer sends from the page cache (`sendfile`); to the others
//! they are copied out of storage.

use super::OUT_HIGH_WATER;
use crate::conn::{ConnEnd, FileRange, OutQueue};
use crate::storage::disk::Job;
use crate::storage::Span;
use crate::storage::TorrentStorage;
use crate::torrent::fast::{self, FastCounters, Refusal, RequestFacts};
use crate::torrent::{PeerHandle, TorrentShared};
use crate::wire::{self, BlockRef, Message, BLOCK_LEN};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Requests we accept queued from one peer (advertised as `reqq`).
pub const MAX_QUEUED_REQUESTS: usize = 500;
/// Blocks read from storage per disk job when uploading.
const READ_BATCH: usize = 16;
/// Disk read batches in flight per peer.
const READS_IN_FLIGHT: usize = 2;
/// A peer whose rejects pile up in our send queue this far does not read.
const MAX_OUT_FOR_REJECTS: usize = 4 * 1024 * 1024;

pub(super) type ReadBatch = Vec<(BlockRef, Outgoing)>;

/// A block read for a peer, ready to queue.
pub enum Outgoing {
    /// The whole `piece` message, copied out of storage.
    Copied(Vec<u8>),
    /// Its header, and where the payload is on disk, to send from the page
    /// cache (plain TCP only).
    OnDisk { header: Vec<u8>, spans: Vec<Span> },
}

impl Outgoing {
    fn queue(self, shared: &Arc<TorrentShared>, out: &mut OutQueue) {
        let spans = match self {
            Outgoing::Copied(msg) => return out.push_owned(msg),
            Outgoing::OnDisk { header, spans } => {
                out.push_bytes(&header);
                spans
            }
        };
        let s = shared.clone();
        let on_short: Arc<dyn Fn(String) + Send + Sync> = Arc::new(move |why| s.disk_failed(why));
        for span in spans {
            match span {
                Span::Zeros(n) => out.push_owned(vec![0; n]),
                Span::File { file, offset, len } => {
                    shared.env.metrics().uploaded_zero_copy.inc_by(len as u64);
                    out.push_file(FileRange { file, offset, len, on_short: on_short.clone() });
                }
            }
        }
    }
}

/// What we serve to this peer.
pub(super) struct Upload {
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
    pub(super) reads_rx: mpsc::Receiver<ReadBatch>,
    /// Data waiting for the upload limit, with when it may go.
    throttled: VecDeque<(Instant, Outgoing)>,
    /// A read waiting for room in the disk queue.
    parked_read: Option<Job>,
}

impl Upload {
    pub(super) fn new(fast: bool) -> Upload {
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

    /// The pieces this peer may fetch while we choke it (BEP 6's set for its
    /// address); we announce those we have and serve their requests whatever
    /// the choker decides.
    pub(super) fn send_allowed_fast(&mut self, shared: &TorrentShared, ip: IpAddr, out: &mut OutQueue) {
        let meta = &shared.meta;
        let (n, hash) = (meta.piece_count() as u32, &meta.info_hash.0);
        let set = fast::allowed_fast_set(ip, hash, n, fast::ALLOWED_FAST_SENT);
        let inner = shared.lock();
        for &piece in set.iter().filter(|p| inner.have().get(**p as usize)) {
            out.push_small(&Message::AllowedFast(piece));
            FastCounters::bump(&shared.fast.allowed_fast_sent);
        }
        drop(inner);
        self.allowed = set;
    }

    /// Queues a request, or refuses it: a fast peer hears `reject_request`,
    /// another is ignored (BEP 3) but for a bad block, which ends it.
    pub(super) fn on_request(
        &mut self,
        b: BlockRef,
        shared: &TorrentShared,
        out: &mut OutQueue,
    ) -> Result<(), ConnEnd> {
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
            have: valid && shared.lock().have().get(b.piece as usize),
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
    pub(super) fn on_cancel(&mut self, b: BlockRef, shared: &TorrentShared, out: &mut OutQueue) -> Result<(), ConnEnd> {
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
    pub(super) fn claim_free_slot(&mut self, shared: &TorrentShared, handle: &PeerHandle, out: &mut OutQueue) {
        if !self.am_choking {
            return;
        }
        let slots = shared.env.config().limits.upload_slots;
        let inner = shared.lock();
        let used = inner.peers().handles().filter(|p| p.unchoke.load(Ordering::Relaxed)).count();
        if used < slots {
            handle.unchoke.store(true, Ordering::Relaxed);
            drop(inner);
            self.apply_choke(handle, shared, out);
        }
    }

    /// Applies the choker's decision. Choking a fast peer rejects each of its
    /// queued requests but those of its allowed-fast pieces, which are
    /// still served; without the extension the queue is simply dropped.
    pub(super) fn apply_choke(&mut self, handle: &PeerHandle, shared: &TorrentShared, out: &mut OutQueue) {
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

    pub(super) fn read_done(
        &mut self,
        batch: ReadBatch,
        shared: &Arc<TorrentShared>,
        handle: &PeerHandle,
        out: &mut OutQueue,
    ) {
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
            shared.env.metrics().uploaded.inc_by(block.len as u64);
            handle.bytes_up.fetch_add(block.len as u64, Ordering::Relaxed);
            match shared.reserve_upload(block.len as u64) {
                Some(at) if at > Instant::now() || !self.throttled.is_empty() => self.throttled.push_back((at, msg)),
                _ => msg.queue(shared, out),
            }
        }
    }

    /// When the first data held back by the upload limit may go.
    pub(super) fn next_release(&self) -> Option<Instant> {
        self.throttled.front().map(|t| t.0)
    }

    pub(super) fn release_throttled(&mut self, shared: &Arc<TorrentShared>, now: Instant, out: &mut OutQueue) {
        while self.throttled.front().is_some_and(|t| t.0 <= now) {
            self.throttled.pop_front().unwrap().1.queue(shared, out);
        }
    }

    /// Starts disk reads for queued requests while there is room: in the
    /// socket's queue, in flight, and under the upload limit.
    pub(super) fn serve(&mut self, shared: &Arc<TorrentShared>, out: &OutQueue) {
        let disk = shared.env.disk();
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
            let how = if zero_copy(shared, out) { Read::Spans } else { Read::Copy };
            // A full queue parks the job here (retried on the next event, at
            // the latest the next tick) rather than waiting in this loop.
            if let Err(back) = disk.try_spawn(read_job(shared.clone(), blocks, how, self.reads_tx.clone())) {
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

/// Whether blocks for this connection go from the page cache: the
/// transport is plain TCP, it is configured, and no upload limit holds
/// them back (the copying path serves limited peers).
fn zero_copy(shared: &TorrentShared, out: &OutQueue) -> bool {
    out.takes_files() && shared.env.config().network.sendfile && shared.upload_unlimited()
}

/// How a read job gets its blocks.
#[derive(Clone, Copy)]
enum Read {
    /// Copied out of storage into messages.
    Copy,
    /// As file ranges to send from, where the backend can (else copied).
    Spans,
}

/// One block read as `how` asks.
fn read_block(storage: &TorrentStorage, at: u64, b: BlockRef, how: Read) -> std::io::Result<Outgoing> {
    // Room for the payload only where it is copied in.
    let mut msg = Vec::with_capacity(if let Read::Copy = how { 13 + b.len as usize } else { 13 });
    wire::encode_piece_header(b.piece, b.offset, b.len as usize, &mut msg);
    if let Read::Spans = how {
        if let Some(spans) = storage.spans(at, b.len as usize)? {
            return Ok(Outgoing::OnDisk { header: msg, spans });
        }
    }
    // Copied out of the mapping behind the header, never zeroed first.
    storage.read_append(at, b.len as usize, &mut msg)?;
    Ok(Outgoing::Copied(msg))
}

/// A disk job reading blocks as ready-made `piece` messages, or as file
/// ranges with their pages read in. A failed read is a disk error of the
/// torrent, like a failed write.
fn read_job(shared: Arc<TorrentShared>, blocks: Vec<BlockRef>, how: Read, tx: mpsc::Sender<ReadBatch>) -> Job {
    Box::new(move || {
        let Some(storage) = shared.storage() else {
            let _ = tx.try_send(Vec::new());
            return;
        };
        let mut batch = Vec::with_capacity(blocks.len());
        for b in blocks {
            let at = b.piece as u64 * shared.meta.piece_length + b.offset as u64;
            match read_block(storage, at, b, how) {
                Ok(msg) => batch.push((b, msg)),
                Err(e) => {
                    shared.disk_failed(format!("reading piece {} for upload: {e}", b.piece));
                    break;
                }
            }
        }
        let _ = tx.try_send(batch);
    })
}
