//! A torrent's peer connection: the [`Handler`] the connection core runs for
//! a data connection, and the glue from its events to the state that acts
//! on them. That state is split by concern, a module each:
//! [`download`] (interest, requests, the pipeline, received blocks),
//! [`upload`] (choking, the peer's requests, disk reads, the upload limit),
//! [`haves`] (who has which pieces), [`ext`] (the extension handshake and
//! metadata serving, BEP 10 and 9) and [`pex`] (BEP 11 in both directions).
//! It talks to the torrent only through short locks on its shared state.
//!
//! Life of a block we download: `Download::fill` asks the picker for blocks,
//! `Request`s go out; a `Piece` is copied into the picker's piece buffer; a
//! completed piece goes to the disk pool for hashing and writing; its
//! verification bumps `have_changes`, and every peer sends `have`.
//!
//! Life of a block we upload: a valid `Request` from an unchoked peer is
//! queued (capped at [`MAX_QUEUED_REQUESTS`]); batches are read from storage
//! on the disk pool and come back as ready-made messages, or, for a plain
//! TCP peer, as file ranges (pages read in) that the writer sends with
//! `sendfile` after each block's header.
//!
//! With a peer that also speaks the fast extension (BEP 6, see [`super::fast`])
//! every request gets exactly one answer: the block or a `reject_request`,
//! and blocks of its allowed-fast pieces are served while we choke it. Its
//! `choke` keeps our requests outstanding until a block or a reject answers
//! each; a reject hands the block back to the picker at once.

mod download;
mod ext;
mod haves;
mod pex;
mod upload;

pub use pex::MAX_PEX_BACKLOG;
pub use upload::MAX_QUEUED_REQUESTS;

use super::fast::FastCounters;
use super::picker::PeerKey;
use super::{PeerHandle, TorrentShared};
use crate::conn::{ConnEnd, Handler, OutQueue};
use crate::extension::{self, ExtHandshake};
use crate::types::Bitfield;
use crate::wire::{BlockRef, Handshake, Message};
use download::Download;
use pex::Pex;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use upload::{ReadBatch, Upload};

const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Stop producing upload data while this much is waiting for the socket.
const OUT_HIGH_WATER: usize = 512 * 1024;

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
        let have_rx = shared.have_changes();
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
            download: Download::new(fast),
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
                ExtHandshake::ours(shared.env.listen_port(), MAX_QUEUED_REQUESTS, self.key.ip(), size, !meta.private);
            out.push_small(&Message::Extended { id: extension::HANDSHAKE_ID, payload: &hs.encode() });
        }
        if let Some(dht) = shared.env.dht().filter(|_| self.theirs.supports_dht() && !meta.private) {
            out.push_small(&Message::Port(dht.port_for(self.key.ip())));
        }
        if self.fast {
            self.upload.send_allowed_fast(&self.shared, self.key.ip(), out);
        }
    }

    async fn wake(&mut self) -> Wake {
        let throttle = self.upload.next_release();
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
                let cancels = self.handle.take_cancels();
                self.download.on_endgame_cancels(cancels, out);
            }
            Wake::Have => self.send_haves(out)?,
            Wake::ReadDone(batch) => self.upload.read_done(batch, &self.shared, &self.handle, out),
            Wake::Throttle => self.upload.release_throttled(&self.shared, Instant::now(), out),
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
        for piece in self.download.take_completed() {
            self.shared.submit_piece(piece).await;
        }
        // The download limit pauses reading; TCP then slows the sender.
        match self.download.take_unmetered() {
            0 => None,
            got => self.shared.reserve_download(got),
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut OutQueue) -> Result<(), ConnEnd> {
        self.pex.send(&self.shared, self.key, out);
        self.download.on_tick(now, &self.handle);
        self.download.cancel_held(now, &self.shared, out);
        self.download.renew_interest(&self.shared, &self.handle, &self.peer_has, out);
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
                    self.shared.lock().picker_mut().request_dropped(&b);
                }
                Ok(())
            }
            Message::AllowedFast(piece) => {
                if self.download.on_allowed_fast(piece, n) {
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
        if let (Some(dht), false) = (&self.shared.env.dht(), self.shared.meta.private) {
            if port != 0 {
                dht.add_node(SocketAddr::new(self.key.ip(), port));
            }
        }
    }
}

/// The connection leaves the torrent however it ends, aborted included.
impl Drop for PeerConn {
    fn drop(&mut self) {
        self.download.drop_outstanding(&self.shared);
        let mut inner = self.shared.lock();
        inner.picker_mut().peer_bitfield(&self.peer_has, false);
        inner.peers_mut().remove(self.key, &self.handle);
    }
}
