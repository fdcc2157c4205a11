//! One torrent: its shared state (pieces, peers, counters) and the pieces of
//! logic that touch it from several tasks.
//!
//! Lock order: the session's torrent map, then [`TorrentShared::lock`], then
//! a peer's control mutex. No lock here is ever held across an `.await`.

mod active;
pub mod choker;
pub mod clock;
mod connect;
pub mod detail;
pub mod env;
pub mod evict;
pub mod fast;
pub mod fetch;
pub mod handoff;
pub mod matching;
pub mod peer;
pub mod peerbook;
pub mod phase;
pub mod picker;
pub mod prepare;
pub mod queue;
pub mod ratelimit;
mod relocate;
pub mod shareindex;
mod state;
pub mod task;

use crate::locks::locked;
use crate::metainfo::Metainfo;
use crate::resume::ResumeRecord;
use crate::share;
use crate::storage::{Place, TorrentStorage};
use crate::types::Bitfield;
use crate::wire::BlockRef;
use picker::{PeerKey, Picker};
use serde::Serialize;
use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;
use tokio::sync::{watch, Notify};

/// The later of two reservations (`None`: no limit, at once).
fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// A verified piece is flushed and claimed in the resume record once this
/// old; the kernel has usually written it back by then.
pub const FLUSH_DELAY: std::time::Duration = std::time::Duration::from_secs(30);

pub use state::{Inner, PeerTable, Refusal, STRIKES_TO_BAN};

pub use env::{Env, MatchSources, Services};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TorrentState {
    Metadata,
    Queued,
    Checking,
    Downloading,
    Seeding,
    Paused,
    Stopped,
    Error,
    /// Complete, and being moved to the complete folder (seeding goes on).
    Moving,
    /// Complete data went missing from its settled place; waits for the
    /// user (resume once it is back, or recheck to download it again).
    Missing,
}

impl TorrentState {
    pub fn as_str(self) -> &'static str {
        match self {
            TorrentState::Metadata => "metadata",
            TorrentState::Queued => "queued",
            TorrentState::Checking => "checking",
            TorrentState::Downloading => "downloading",
            TorrentState::Seeding => "seeding",
            TorrentState::Paused => "paused",
            TorrentState::Stopped => "stopped",
            TorrentState::Error => "error",
            TorrentState::Missing => "missing",
            TorrentState::Moving => "moving",
        }
    }
}

/// What other tasks see of one connected peer.
pub struct PeerHandle {
    pub peer_id: [u8; 20],
    pub connected_at: Instant,
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
    pub peer_interested: AtomicBool,
    /// We told the peer we are interested.
    pub am_interested: AtomicBool,
    pub is_seed: AtomicBool,
    pub snubbed: AtomicBool,
    /// The choker's decision; the peer task applies it.
    pub unchoke: AtomicBool,
    pub close: AtomicBool,
    /// Where the peer accepts connections: the address we dialled, or its
    /// extension handshake's `p`. What PEX and the resume record pass on.
    listen: Mutex<Option<SocketAddr>>,
    cancels: Mutex<Vec<BlockRef>>,
    pub notify: Notify,
    /// `(bytes_down, bytes_up)` at the last choking round.
    choke_mark: Mutex<(u64, u64)>,
}

impl PeerHandle {
    pub fn new(peer_id: [u8; 20], listen: Option<SocketAddr>) -> PeerHandle {
        PeerHandle {
            peer_id,
            connected_at: Instant::now(),
            bytes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            peer_interested: AtomicBool::new(false),
            am_interested: AtomicBool::new(false),
            is_seed: AtomicBool::new(false),
            snubbed: AtomicBool::new(false),
            unchoke: AtomicBool::new(false),
            close: AtomicBool::new(false),
            listen: Mutex::new(listen),
            cancels: Mutex::new(Vec::new()),
            notify: Notify::new(),
            choke_mark: Mutex::new((0, 0)),
        }
    }

    /// Bytes down and up since the last call (the choking round's window).
    pub fn bytes_since_mark(&self) -> (u64, u64) {
        let now = (self.bytes_down.load(Ordering::Relaxed), self.bytes_up.load(Ordering::Relaxed));
        let before = std::mem::replace(&mut *locked(&self.choke_mark), now);
        (now.0.saturating_sub(before.0), now.1.saturating_sub(before.1))
    }

    /// Where the peer accepts connections, when known.
    pub fn listen(&self) -> Option<SocketAddr> {
        *locked(&self.listen)
    }

    /// The address from the peer's extension handshake, unless one is
    /// known already (the address we dialled stays).
    pub fn learn_listen(&self, addr: SocketAddr) {
        locked(&self.listen).get_or_insert(addr);
    }

    /// Asks the peer task to cancel a request it sent (endgame), and wakes it.
    pub fn cancel(&self, block: BlockRef) {
        locked(&self.cancels).push(block);
        self.notify.notify_one();
    }

    /// The cancels asked for since the last call.
    pub fn take_cancels(&self) -> Vec<BlockRef> {
        std::mem::take(&mut *locked(&self.cancels))
    }

    pub fn kick(&self) {
        self.close.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

pub struct TorrentShared {
    meta: Arc<Metainfo>,
    env: Arc<Env>,
    storage: OnceLock<Arc<TorrentStorage>>,
    inner: Mutex<Inner>,
    /// Payload bytes of pieces downloaded and verified, and sent, this
    /// session plus what the resume record carried: what trackers and
    /// ratios count.
    downloaded: AtomicU64,
    uploaded: AtomicU64,
    /// Bytes of downloaded pieces that failed their hash check, in all.
    corrupt: AtomicU64,
    /// Payload bytes accepted in blocks this session, verified or not yet:
    /// what rates and stall detection see.
    received: AtomicU64,
    /// Payload received that was not asked for or no longer needed.
    wasted: AtomicU64,
    /// Fast-extension (BEP 6) messages sent and received, this session.
    fast: fast::FastCounters,
    /// Count of verified pieces: peers wait on it to send `have`, a
    /// downloading torrent's active phase to notice completion. Made by the
    /// first subscriber: a torrent seeding since it started, with no peer,
    /// has none (a channel costs 350 bytes).
    have_changes: OnceLock<watch::Sender<usize>>,
    /// Woken when a read or write of the data failed: the torrent task then
    /// takes the error (kept in [`Inner`]) into `error`.
    disk_trouble: Notify,
    status: Mutex<StatusCell>,
    /// One resume save at a time: the torrent task and the tracker task both
    /// save, and two saves at once would share a temp file and could claim
    /// pieces the other has not flushed yet.
    saving: Mutex<()>,
    /// The user asked for a recheck (not a retry after a disk error): only
    /// then may data gone from its complete folder be downloaded again.
    recheck_asked: AtomicBool,
    /// One move of the data at a time (a move cut short and the next one,
    /// or a removal with its data), held on the blocking thread doing it.
    moving: Mutex<()>,
    /// The data is being moved to a folder the user named (`relocate.rs`).
    relocating: AtomicBool,
    /// Its own rate limits (the record's `rate_limits`), under the global ones.
    pub download_limit: ratelimit::RateLimiter,
    pub upload_limit: ratelimit::RateLimiter,
    /// Counts phase changes; `pause` and `resume` wait on it to report the
    /// state reached.
    /// Made by the first subscriber: most torrents never have one, and
    /// a channel costs 350 bytes.
    phase_changes: OnceLock<watch::Sender<u64>>,
}

#[derive(Debug, Clone)]
pub struct StatusCell {
    pub phase: phase::Phase,
    pub download_rate: u64,
    pub upload_rate: u64,
    /// When payload last moved either way (Unix seconds, 0 = not since start).
    pub last_active: u64,
    pub record: ResumeRecord,
    /// Running (and seeding) time since the active phase's last tick, not
    /// yet in the record: an idle seeder ticks seldom.
    pub uncounted: Option<Uncounted>,
}

#[derive(Debug, Clone, Copy)]
pub struct Uncounted {
    pub since: std::time::Instant,
    /// Seeding time counts too.
    pub seeding: bool,
}

impl StatusCell {
    /// (running, seeding) seconds, what the record has not counted yet
    /// included.
    fn times(&self) -> (u64, u64) {
        let (active, seeding) = (self.record.active_secs, self.record.seeding_secs);
        match self.uncounted {
            Some(u) => {
                let more = u.since.elapsed().as_secs();
                (active + more, seeding + if u.seeding { more } else { 0 })
            }
            None => (active, seeding),
        }
    }

    /// Puts the time not yet counted into the record, as the status showed
    /// it (the active phase ends: it must not go back).
    pub fn count_uncounted(&mut self) {
        (self.record.active_secs, self.record.seeding_secs) = self.times();
        self.uncounted = None;
    }
}

impl TorrentShared {
    pub fn new(meta: Arc<Metainfo>, env: Arc<Env>, record: ResumeRecord) -> Arc<TorrentShared> {
        let n = meta.piece_count();
        env.announces().restore(meta.info_hash, record.announce);
        let have = Bitfield::from_bytes(&record.have, n).unwrap_or_else(|| Bitfield::new(n));
        // At least four pieces, whatever the setting, or large pieces would
        // leave peers idle.
        let budget = (env.config().storage.piece_buffer.0 as usize).max(4 * meta.piece_length as usize);
        let picker = Picker::new(meta.piece_length, meta.total_length, &have, budget, rand::random());
        let verified = have.iter_ones().map(|i| meta.piece_len(i) as u64).sum();
        let rates = record.rate_limits;
        if !have.is_full() {
            // Paused or not, an incomplete torrent has its place in the queue.
            env.queue().join(meta.info_hash);
        }
        if record.force_start {
            env.queue().set_forced(meta.info_hash, true);
        }
        let shared = Arc::new(TorrentShared {
            downloaded: AtomicU64::new(record.downloaded),
            uploaded: AtomicU64::new(record.uploaded),
            corrupt: AtomicU64::new(record.corrupt),
            received: AtomicU64::new(0),
            wasted: AtomicU64::new(0),
            fast: fast::FastCounters::default(),
            have_changes: OnceLock::new(),
            disk_trouble: Notify::new(),
            inner: Mutex::new(Inner::new(have, picker, verified)),
            status: Mutex::new(StatusCell {
                phase: phase::Phase::initial(record.hold),
                download_rate: 0,
                upload_rate: 0,
                last_active: 0,
                record,
                uncounted: None,
            }),
            storage: OnceLock::new(),
            phase_changes: OnceLock::new(),
            saving: Mutex::new(()),
            recheck_asked: AtomicBool::new(false),
            moving: Mutex::new(()),
            relocating: AtomicBool::new(false),
            download_limit: ratelimit::RateLimiter::new(rates.download),
            upload_limit: ratelimit::RateLimiter::new(rates.upload),
            meta,
            env,
        });
        shared.index_shares();
        shared
    }

    /// Files where this torrent's data is (its item, its files' device and
    /// inode as the record knows them) in the session's [`Env::shares`].
    pub fn index_shares(&self) {
        let (top, files) = (self.place().top(), self.with_record(|r| r.stamps.clone()));
        let files = files.into_iter().filter(|s| s.ino != 0).map(|s| (s.dev, s.ino));
        self.env.shares().set(self.meta.info_hash, top, files);
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The torrent's state, locked: the one place its lock is taken.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        locked(&self.inner)
    }

    /// The torrent's phase, rates and resume record, locked (after
    /// [`TorrentShared::lock`] when both are held).
    pub fn status_cell(&self) -> MutexGuard<'_, StatusCell> {
        locked(&self.status)
    }

    /// Reads or changes the resume record under its lock; the change goes
    /// to disk with the next save.
    pub fn with_record<R>(&self, f: impl FnOnce(&mut ResumeRecord) -> R) -> R {
        f(&mut self.status_cell().record)
    }

    pub fn meta(&self) -> &Arc<Metainfo> {
        &self.meta
    }

    /// Wakes on each verified piece (and after a check): subscribe before
    /// reading what the torrent has.
    pub(crate) fn have_changes(&self) -> watch::Receiver<usize> {
        self.have_changes.get_or_init(|| watch::Sender::new(self.lock().have().count())).subscribe()
    }

    /// Tells the subscribers, if there are any, that `count` pieces are verified.
    fn have_changed(&self, count: usize) {
        if let Some(tx) = self.have_changes.get() {
            tx.send_replace(count);
        }
    }

    /// Wakes on every phase change: subscribe before sending a command to
    /// see the phase it leads to.
    pub fn phase_changes(&self) -> watch::Receiver<u64> {
        self.phase_changes.get_or_init(|| watch::Sender::new(0)).subscribe()
    }

    /// Held while the data moves or is deleted, on the blocking thread
    /// doing it: one at a time.
    pub fn hold_moves(&self) -> MutexGuard<'_, ()> {
        locked(&self.moving)
    }

    /// Each piece as the API's `pieceStates` sees it, with how many peers
    /// have it: one copy under the lock, for this torrent alone.
    pub fn pieces(&self) -> PieceView {
        let inner = self.lock();
        PieceView {
            have: inner.have().clone(),
            in_progress: inner.picker().in_progress().collect(),
            availability: inner.picker().availability().to_vec(),
        }
    }

    /// The torrent's top-level item on disk where it lives now: its single
    /// file, or its root folder.
    pub fn data_path(&self) -> PathBuf {
        self.place().top()
    }

    /// Runs the hook configured for `event`, if any; never waits for it.
    pub fn run_hook(&self, event: crate::hookcmd::HookEvent) {
        let facts = crate::hooks::Facts {
            hash: self.meta.info_hash.hex(),
            name: self.meta.name.clone(),
            path: self.data_path().into_os_string(),
            category: self.category(),
            size: Some(self.meta.total_length),
        };
        self.env.hooks().fire(&self.env.config(), event, facts);
    }

    /// When `bytes` just received may be followed by more: under the
    /// global download limit and the torrent's own (`None`: at once).
    pub fn reserve_download(&self, bytes: u64) -> Option<Instant> {
        later(self.env.download_limit().reserve(bytes), self.download_limit.reserve(bytes))
    }

    /// When `bytes` may be sent: under the global upload limit and the torrent's own.
    /// No upload limit holds this torrent's uploads back (the session's
    /// nor its own).
    pub fn upload_unlimited(&self) -> bool {
        self.env.upload_limit().rate() == 0 && self.upload_limit.rate() == 0
    }

    pub fn reserve_upload(&self, bytes: u64) -> Option<Instant> {
        later(self.env.upload_limit().reserve(bytes), self.upload_limit.reserve(bytes))
    }

    /// Forces the torrent's start, or clears it (kept with the next resume
    /// save); a forced torrent downloads outside the queue's limit.
    pub fn set_force_start(&self, forced: bool) {
        self.env.queue().set_forced(self.meta.info_hash, forced);
        self.with_record(|r| r.force_start = forced);
    }

    /// Sets the torrent's own rate limits (kept with the next resume save).
    pub fn set_rate_limits(&self, limits: crate::resume::RateLimits) {
        self.download_limit.set_rate(limits.download);
        self.upload_limit.set_rate(limits.upload);
        self.with_record(|r| r.rate_limits = limits);
    }

    pub fn storage(&self) -> Option<&Arc<TorrentStorage>> {
        self.storage.get()
    }

    /// The torrent's category, "" for none.
    pub fn category(&self) -> String {
        self.status_cell().record.category.clone()
    }

    /// The share limits that hold for this torrent, its own and the config's.
    pub fn limits_of(&self, record: &ResumeRecord) -> share::LimitsView {
        let own = record.share.unwrap_or_default();
        let config = self.env.config().seeding_limits(&record.category);
        share::LimitsView { own, effective: own.effective(config) }
    }

    /// Where the data goes once complete: its category's complete folder,
    /// as the configured folder and the folder made in it ("" for none).
    pub fn complete_folder(&self) -> (PathBuf, String) {
        self.env.config().complete_folder(&self.category())
    }

    /// Where the data lives now. A record from before `incomplete_dir`
    /// (and a torrent not yet prepared) has it in `download_dir`.
    pub fn place(&self) -> Place {
        let place = self.status_cell().record.place.clone();
        place.unwrap_or_else(|| {
            let (root, sub) = self.complete_folder();
            Place::new(&root, &sub, &self.meta.name, true)
        })
    }

    /// A new torrent's place: `incomplete_dir`, unless that is off or the
    /// data is in `download_dir` already (the user re-seeds what they
    /// have: checked and seeded there, never moved). Blocking (a stat).
    pub fn first_place(&self) -> Place {
        let here = self.place();
        let had_pieces = self.status_cell().record.have.iter().any(|&b| b != 0);
        // A link at the item or its folder counts as there: opening it then
        // fails and says so.
        if self.env.incomplete_dir().as_os_str().is_empty()
            || had_pieces
            || crate::storage::nofollow::item_exists(&here).unwrap_or(true)
        {
            return here;
        }
        Place::new(self.env.incomplete_dir(), "", &self.meta.name, false)
    }

    pub fn left(&self) -> u64 {
        self.meta.total_length - self.lock().verified_bytes()
    }

    pub fn is_complete(&self) -> bool {
        self.lock().have().is_full()
    }

    /// Enters a phase; its hold goes into the record saved next.
    pub fn set_phase(&self, phase: phase::Phase) {
        {
            let mut s = self.status_cell();
            s.record.hold = phase.hold();
            s.phase = phase;
        }
        // No sender yet: no one to tell (a later subscriber waits for the
        // next change, as it would have).
        if let Some(changes) = self.phase_changes.get() {
            changes.send_modify(|n| *n += 1);
        }
    }

    pub fn state(&self) -> TorrentState {
        let complete = self.is_complete();
        self.status_cell().phase.state(complete)
    }

    /// Hands a complete piece to the disk pool: hash, write if good, then
    /// record the outcome. Waits only for room in the pool's queue.
    pub async fn submit_piece(self: &Arc<Self>, piece: picker::CompletePiece) {
        let shared = self.clone();
        let _ = self
            .env
            .disk()
            .spawn(move || {
                let index = piece.index as usize;
                let hashing = Instant::now();
                let good = <[u8; 20]>::from(Sha1::digest(&piece.data)) == shared.meta.piece_hashes[index];
                shared.env.metrics().piece_verify.observe(hashing.elapsed().as_secs_f64());
                let write = match (good, shared.storage()) {
                    (true, Some(s)) => {
                        s.write(index as u64 * shared.meta.piece_length, &piece.data).map_err(|e| e.to_string())
                    }
                    (true, None) => Err("storage is not open".to_string()),
                    (false, _) => Ok(()),
                };
                shared.piece_done(piece.index, good, &piece.contributors, write);
                shared.lock().picker_mut().recycle(piece.data);
            })
            .await;
    }

    /// Runs on a disk thread once a piece was hashed (and written).
    fn piece_done(&self, index: u32, good: bool, contributors: &[PeerKey], write: Result<(), String>) {
        let mut inner = self.lock();
        if let Err(e) = write {
            inner.picker_mut().piece_failed(index, 0);
            drop(inner);
            self.disk_failed(format!("writing piece {index}: {e}"));
            return;
        }
        let len = self.meta.piece_len(index as usize);
        if good {
            self.downloaded.fetch_add(len as u64, Ordering::Relaxed);
            self.env.metrics().downloaded.inc_by(len as u64);
            inner.mark_verified(index, len, Instant::now());
            let count = inner.have().count();
            drop(inner);
            self.have_changed(count);
            return;
        }
        self.corrupt.fetch_add(len as u64, Ordering::Relaxed);
        self.env.metrics().hash_failures.inc();
        self.env.metrics().corrupt_bytes.inc_by(len as u64);
        inner.picker_mut().piece_failed(index, contributors.len());
        let shown: Vec<String> = contributors.iter().map(|c| c.to_string()).collect();
        tracing::warn!(torrent = %self.meta.name, hash = %self.meta.info_hash.short(), piece = index, peers = %shown.join(","), "piece failed its hash check; downloading it again");
        if let [culprit] = contributors {
            if let Some(handle) = inner.peers_mut().strike(*culprit) {
                self.env.metrics().peers_banned.inc();
                tracing::warn!(torrent = %self.meta.name, hash = %self.meta.info_hash.short(), peer = %culprit, "peer sent {STRIKES_TO_BAN} corrupt pieces; disconnected and banned for this torrent");
                handle.kick();
            }
        }
    }

    /// A read or write of the torrent's data failed: the torrent task takes
    /// it into `error`. Any thread may call it.
    pub fn disk_failed(&self, what: String) {
        tracing::warn!(torrent = %self.meta.name, hash = %self.meta.info_hash.short(), error = %what, "disk trouble");
        self.lock().note_disk_error(what);
        // A stored permit if the task is not waiting: never lost.
        self.disk_trouble.notify_one();
    }

    /// Resolves once a disk error was noted since the last call.
    pub async fn disk_trouble(&self) {
        self.disk_trouble.notified().await;
    }

    /// Writes the resume record. Pieces verified at least [`FLUSH_DELAY`] ago
    /// (or all, with `flush_all`) are flushed first and claimed as verified;
    /// younger ones are listed as candidates to hash-check on restart. So the
    /// record never claims a piece that is not on disk, and the flush mostly
    /// finds pages the kernel has written back already instead of forcing
    /// writeback on our thread. Blocking: run on the disk pool.
    pub fn save_resume_blocking(&self, flush_all: bool) -> std::io::Result<()> {
        let _one_at_a_time = locked(&self.saving);
        let (flush, pending, mut have) = {
            let mut inner = self.lock();
            let (flush, pending) = inner.take_flushable(flush_all, FLUSH_DELAY);
            (flush, pending, inner.have().clone())
        };
        if let Some(storage) = self.storage() {
            for &(p, _) in &flush {
                let r = storage.layout().piece_range(p as usize);
                if let Err(e) = storage.flush(r.start, (r.end - r.start) as usize) {
                    self.lock().unflush(&flush);
                    return Err(e);
                }
            }
        }
        let mut candidates = Bitfield::new(have.len());
        for &(p, _) in &pending {
            have.clear(p as usize);
            candidates.set(p as usize);
        }
        let mut record = self.status_cell().record.clone();
        if self.storage().is_some() || record.have.is_empty() {
            record.have = have.as_bytes().to_vec();
            record.unverified = if pending.is_empty() { Vec::new() } else { candidates.as_bytes().to_vec() };
        }
        if let Some(storage) = self.storage() {
            // After the flush: what the files are now, for `--delete-data`.
            record.stamps = storage.stamps();
        }
        record.piece_count = self.meta.piece_count() as u64;
        record.name = self.meta.name.clone();
        record.uploaded = self.uploaded.load(Ordering::Relaxed);
        record.downloaded = self.downloaded.load(Ordering::Relaxed);
        record.corrupt = self.corrupt.load(Ordering::Relaxed);
        record.announce = self.env.announces().get(self.meta.info_hash);
        // Where to find peers again after a restart (what PEX would tell).
        let peers: Vec<String> = {
            let inner = self.lock();
            inner.peers().handles().filter_map(|h| h.listen()).take(50).map(|a| a.to_string()).collect()
        };
        if !peers.is_empty() {
            record.peers = peers;
        }
        record.save(self.env.state_dir(), &self.meta.info_hash)?;
        // Only what this save computed goes back: the place, the move's
        // target or the hold may have changed meanwhile, and the next save
        // writes them.
        let mut s = self.status_cell();
        let kept = &mut s.record;
        (kept.have, kept.unverified, kept.piece_count) = (record.have, record.unverified, record.piece_count);
        (kept.name, kept.peers, kept.announce) = (record.name, record.peers, record.announce);
        (kept.uploaded, kept.downloaded, kept.corrupt) = (record.uploaded, record.downloaded, record.corrupt);
        kept.stamps = record.stamps;
        drop(s);
        self.index_shares();
        Ok(())
    }

    /// Saves the resume record on the disk pool; false (and a WARN) when it
    /// could not be written.
    pub async fn save_resume(self: &Arc<Self>, flush_all: bool) -> bool {
        let shared = self.clone();
        match self.env.disk().run(move || shared.save_resume_blocking(flush_all)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(torrent = %self.meta.name, hash = %self.meta.info_hash.short(), error = %e, "could not save resume state");
                false
            }
            Err(_) => false,
        }
    }

    /// Snapshot for the control socket and the status lines.
    pub fn status(&self) -> TorrentStatus {
        let (peers, seeds, done, complete) = {
            let inner = self.lock();
            let seeds = inner.peers().handles().filter(|p| p.is_seed.load(Ordering::Relaxed)).count();
            (inner.peers().len(), seeds, inner.verified_bytes(), inner.have().is_full())
        };
        let s = self.status_cell().clone();
        let size = self.meta.total_length;
        let downloaded = self.downloaded.load(Ordering::Relaxed);
        let uploaded = self.uploaded.load(Ordering::Relaxed);
        let ratio = if downloaded > 0 {
            uploaded as f64 / downloaded as f64
        } else if uploaded > 0 {
            f64::INFINITY
        } else {
            0.0
        };
        let unsettled = s.record.place.as_ref().is_some_and(|p| !p.settled);
        let state = match s.phase.state(complete) {
            // Seeding is what automation waits for: only once the data is
            // in its complete folder.
            TorrentState::Seeding if unsettled => TorrentState::Moving,
            _ if self.relocating.load(Ordering::Relaxed) => TorrentState::Moving,
            state => state,
        };
        let trackers = self.env.announces().trackers(self.meta.info_hash);
        let eta = (state == TorrentState::Downloading && s.download_rate > 0).then(|| (size - done) / s.download_rate);
        TorrentStatus {
            info_hash: self.meta.info_hash.hex(),
            name: s.record.shown_name.clone().unwrap_or_else(|| self.meta.name.clone()),
            state,
            progress: done as f64 / size as f64,
            size,
            downloaded,
            uploaded,
            wasted: self.wasted.load(Ordering::Relaxed),
            fast: self.fast.snapshot(),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            path: self.place().top().display().to_string(),
            category: s.record.category.clone(),
            download_rate: s.download_rate,
            upload_rate: s.upload_rate,
            peers,
            seeds,
            ratio: if ratio.is_finite() { ratio } else { -1.0 },
            eta_secs: eta,
            error: s.phase.error().map(str::to_string),
            tracker_error: latest_tracker_error(&trackers),
            trackers,
            swarm: self.env.announces().swarm(self.meta.info_hash),
            times: StatusTimes {
                added_at: s.record.added_at,
                completed_at: s.record.completed_at,
                seeding_secs: s.times().1,
                last_active: s.last_active,
                active_secs: s.times().0,
            },
            tags: s.record.tags.clone(),
            limits: self.limits_of(&s.record),
            borrowed: s.record.borrowed,
            shared_with: Vec::new(),
            rate_limits: s.record.rate_limits,
            force_start: s.record.force_start,
        }
    }
}

/// A copy of one torrent's piece states ([`TorrentShared::pieces`]).
#[derive(Debug, Clone)]
pub struct PieceView {
    pub have: Bitfield,
    /// Started and not verified yet.
    pub in_progress: Vec<u32>,
    /// Connected peers having each piece.
    pub availability: Vec<u32>,
}

/// The latest announce's error, if the latest one failed.
pub fn latest_tracker_error(trackers: &[crate::tracker::pace::TrackerView]) -> Option<String> {
    let latest = trackers.iter().filter(|t| t.attempt > 0).max_by_key(|t| t.attempt)?;
    let error = latest.result.as_deref()?.strip_prefix("error: ")?;
    Some(format!("{}: {error}", crate::tracker::redacted(&latest.url)))
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TorrentStatus {
    pub info_hash: String,
    pub name: String,
    pub state: TorrentState,
    pub progress: f64,
    pub size: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    /// Bytes of downloaded pieces that failed their hash check.
    #[serde(default)]
    pub corrupt: u64,
    /// The torrent's top-level item on disk (file or folder); empty for a
    /// magnet.
    #[serde(default)]
    pub path: String,
    /// Its category (watch subfolder), "" for none.
    #[serde(default)]
    pub category: String,
    /// Bytes received that were not asked for or no longer needed.
    #[serde(default)]
    pub wasted: u64,
    /// Fast-extension (BEP 6) counters, this session.
    #[serde(default)]
    pub fast: fast::FastStats,
    pub download_rate: u64,
    pub upload_rate: u64,
    pub peers: usize,
    #[serde(default)]
    pub seeds: usize,
    /// uploaded / downloaded; -1 when nothing was downloaded but something uploaded.
    pub ratio: f64,
    #[serde(default)]
    pub eta_secs: Option<u64>,
    pub error: Option<String>,
    /// "URL: error" when the latest announce failed; none after a good one.
    #[serde(default)]
    pub tracker_error: Option<String>,
    /// Each tracker's last answer and the counters last sent to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trackers: Vec<crate::tracker::pace::TrackerView>,
    /// The whole swarm as its tracker last counted it (announce or scrape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<crate::tracker::pace::Swarm>,
    /// When it was added and completed, and how long it seeded (the API's
    /// added_on, completion_on, seeding_time).
    #[serde(default)]
    pub times: StatusTimes,
    /// Its tags, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Its own share limits and those that hold for it.
    #[serde(default)]
    pub limits: share::LimitsView,
    /// It seeds data it found there, read-only, verified first (cross-seeding).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowed: bool,
    /// The other torrents seeding the same data (their hashes); filled in
    /// by the session, which sees them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
    /// Its own rate limits (bytes/s, 0 = none).
    #[serde(default, skip_serializing_if = "crate::resume::RateLimits::is_none")]
    pub rate_limits: crate::resume::RateLimits,
    /// Started by force, outside the download queue's limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_start: bool,
}

/// A torrent's times from its resume record: Unix seconds (0 = not yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatusTimes {
    pub added_at: u64,
    pub completed_at: u64,
    pub seeding_secs: u64,
    /// When payload last moved, this run (the API's `last_activity`).
    #[serde(default)]
    pub last_active: u64,
    /// Seconds running, downloading or seeding (the API's `time_active`).
    #[serde(default)]
    pub active_secs: u64,
}

impl<'de> serde::Deserialize<'de> for TorrentState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "metadata" => TorrentState::Metadata,
            "queued" => TorrentState::Queued,
            "checking" => TorrentState::Checking,
            "downloading" => TorrentState::Downloading,
            "seeding" => TorrentState::Seeding,
            "paused" => TorrentState::Paused,
            "stopped" => TorrentState::Stopped,
            "missing" => TorrentState::Missing,
            "moving" => TorrentState::Moving,
            _ => TorrentState::Error,
        })
    }
}

/// Hashes piece `index` from disk and compares it with the metainfo; an
/// error means the piece could not be read at all.
pub fn piece_matches(meta: &Metainfo, storage: &TorrentStorage, index: usize) -> std::io::Result<bool> {
    storage.hash_piece(index).map(|h| h == meta.piece_hashes[index])
}
