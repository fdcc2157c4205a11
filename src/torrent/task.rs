//! The torrent task: owns one torrent's lifecycle and everything running for
//! it (tracker task, peer tasks), and stops them when it stops.
//!
//! ```text
//!   Paused/Stopped ──resume──┐
//!        ▲                   ▼
//!        │   prepare: space check ─ fail ─> Error (retry every 60 s)
//!      pause         │ open files, check pieces ("checking")
//!        │           ▼
//!        └──── Queued ─slot─> Downloading ─complete─> Seeding ─limit─> Stopped
//! ```

use super::choker::{ChokeInput, Choker};
use super::peer::{self, HANDSHAKE_TIMEOUT};
use super::peerbook::PeerBook;
use super::picker::PeerKey;
use super::{piece_matches, PeerHandle, TorrentShared, TorrentState};
use crate::config::LimitAction;
use crate::resume::now_unix;
use crate::storage::{self, TorrentStorage};
use crate::tracker::{self, TrackerConfig, TransferCounters};
use crate::types::{human_bytes, human_duration, Bitfield};
use crate::wire::Handshake;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ERROR_RETRY: Duration = Duration::from_secs(60);
const CHOKE_EVERY: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_secs(1);
/// A seeding torrent with no peers and none to call wakes this seldom, so
/// hundreds of idle torrents cost next to nothing.
const IDLE_TICK: Duration = Duration::from_secs(5);
/// Resume records without new pieces are rewritten this often.
const IDLE_SAVE_EVERY: Duration = Duration::from_secs(300);
/// New outgoing connection attempts per second per torrent.
const CONNECTS_PER_TICK: usize = 8;
/// How often a torrent looks itself up in the DHT (and announces).
const DHT_DOWNLOADING_EVERY: Duration = Duration::from_secs(120);
const DHT_SEEDING_EVERY: Duration = Duration::from_secs(15 * 60);
pub enum Cmd {
    Pause,
    Resume,
    Recheck,
    Incoming(TcpStream, SocketAddr, Handshake),
}

/// What the session learns when a torrent task ends on its own account.
pub enum Exit {
    Cancelled,
    RemoveRequested,
}

enum ActiveExit {
    Cancelled,
    /// Downloading, received nothing for `limits.stall_secs`, others queued.
    Stalled(Duration),
    Paused,
    Recheck,
    Limit(String),
    DiskError(String),
}

impl TransferCounters for TorrentShared {
    fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }
    fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }
    fn left(&self) -> u64 {
        TorrentShared::left(self)
    }
}

pub async fn run(shared: Arc<TorrentShared>, mut cmds: mpsc::Receiver<Cmd>, cancel: CancellationToken) -> Exit {
    let mut recheck_all = false;
    loop {
        let (paused, stopped) = {
            let s = shared.status.lock().unwrap();
            (s.record.paused == 1, s.record.stopped == 1)
        };
        if paused || stopped {
            shared.set_state(if paused { TorrentState::Paused } else { TorrentState::Stopped }, None);
            shared.save_resume(true).await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Exit::Cancelled,
                    cmd = cmds.recv() => match cmd {
                        None => return Exit::Cancelled,
                        Some(Cmd::Resume) => break,
                        Some(Cmd::Recheck) => recheck_all = true,
                        Some(_) => {}
                    }
                }
            }
            let mut s = shared.status.lock().unwrap();
            s.record.paused = 0;
            s.record.stopped = 0;
            drop(s);
            tracing::info!(torrent = %shared.name(), "resumed");
        }

        if shared.storage().is_none() || recheck_all {
            if let Err(msg) = prepare(&shared, recheck_all).await {
                tracing::warn!(torrent = %shared.name(), error = %msg, "cannot start; retrying in 60s");
                shared.set_state(TorrentState::Error, Some(msg));
                match wait_or_command(&mut cmds, &cancel, ERROR_RETRY).await {
                    Some(ActiveExit::Cancelled) => return Exit::Cancelled,
                    Some(ActiveExit::Paused) => shared.status.lock().unwrap().record.paused = 1,
                    Some(ActiveExit::Recheck) => recheck_all = true,
                    _ => {}
                }
                continue;
            }
            recheck_all = false;
        }

        let mut permit = None;
        if !shared.is_complete() {
            shared.set_state(TorrentState::Queued, None);
            let slots = shared.env.download_slots.clone();
            let _waiting = QueuedGuard::new(&shared.env.queued);
            tokio::select! {
                _ = cancel.cancelled() => return Exit::Cancelled,
                p = slots.acquire_owned() => permit = p.ok(),
                cmd = cmds.recv() => {
                    match cmd {
                        None => return Exit::Cancelled,
                        Some(Cmd::Pause) => { pause(&shared); continue; }
                        Some(Cmd::Recheck) => { recheck_all = true; continue; }
                        Some(_) => continue,
                    }
                }
            }
        }

        match run_active(&shared, &mut cmds, &cancel, permit).await {
            ActiveExit::Cancelled => return Exit::Cancelled,
            ActiveExit::Paused => pause(&shared),
            ActiveExit::Recheck => recheck_all = true,
            ActiveExit::Stalled(idle) => {
                tracing::info!(torrent = %shared.name(), idle = %human_duration(idle.as_secs()), "no data; yielding the download slot to a queued torrent");
            }
            ActiveExit::Limit(why) => {
                let action = shared.env.config().seeding.action;
                tracing::info!(torrent = %shared.name(), reason = %why, action = ?action, "seeding limit reached");
                shared.status.lock().unwrap().record.stopped = 1;
                if action == LimitAction::Remove {
                    shared.save_resume(true).await;
                    return Exit::RemoveRequested;
                }
            }
            ActiveExit::DiskError(msg) => {
                tracing::warn!(torrent = %shared.name(), error = %msg, "disk trouble; torrent paused in error, retrying in 60s");
                shared.set_state(TorrentState::Error, Some(msg));
                shared.inner.lock().unwrap().disk_error = None;
                match wait_or_command(&mut cmds, &cancel, ERROR_RETRY).await {
                    Some(ActiveExit::Cancelled) => return Exit::Cancelled,
                    Some(ActiveExit::Paused) => pause(&shared),
                    _ => recheck_all = true,
                }
            }
        }
    }
}

/// Counts a torrent as waiting for a download slot while it lives.
struct QueuedGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> QueuedGuard<'a> {
    fn new(counter: &'a std::sync::atomic::AtomicUsize) -> QueuedGuard<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        QueuedGuard(counter)
    }
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn pause(shared: &TorrentShared) {
    shared.status.lock().unwrap().record.paused = 1;
    tracing::info!(torrent = %shared.name(), "paused");
}

async fn wait_or_command(
    cmds: &mut mpsc::Receiver<Cmd>,
    cancel: &CancellationToken,
    d: Duration,
) -> Option<ActiveExit> {
    let deadline = tokio::time::sleep(d);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Some(ActiveExit::Cancelled),
            _ = &mut deadline => return None,
            cmd = cmds.recv() => match cmd {
                None => return Some(ActiveExit::Cancelled),
                Some(Cmd::Pause) => return Some(ActiveExit::Paused),
                Some(Cmd::Recheck) => return Some(ActiveExit::Recheck),
                Some(Cmd::Resume) => return None,
                Some(Cmd::Incoming(..)) => {}
            }
        }
    }
}

/// Checks free space, creates the files, and verifies whatever pieces the
/// disk may already hold (all of them when `full` is set).
async fn prepare(shared: &Arc<TorrentShared>, full: bool) -> Result<(), String> {
    let env = &shared.env;
    let meta = shared.meta.clone();
    let dir = env.download_dir.clone();
    let survey = {
        let (meta, dir) = (meta.clone(), dir.clone());
        env.disk.run(move || storage::survey(&dir, &meta)).await.map_err(|e| e.to_string())?
    };
    let free = storage::free_space(&dir).map_err(|e| format!("cannot read free space of {}: {e}", dir.display()))?;
    if survey.bytes_needed > free {
        return Err(format!(
            "not enough disk space in {}: {} needed, {} free",
            dir.display(),
            human_bytes(survey.bytes_needed),
            human_bytes(free)
        ));
    }
    shared.set_state(TorrentState::Checking, None);
    let storage = match shared.storage() {
        Some(s) => s.clone(),
        None => {
            let kind = env.config().storage.backend;
            let (m, d) = (meta.clone(), dir.clone());
            let s = env
                .disk
                .run(move || TorrentStorage::open(&d, &m, kind))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot create files in {}: {e}", dir.display()))?;
            let s = Arc::new(s);
            let _ = shared.storage.set(s.clone());
            s
        }
    };

    // Which pieces to hash: all on a full recheck; for a new torrent, those
    // touching files that already held data; otherwise the pieces the resume
    // record claims in files that were missing or short.
    let (had_record, candidates) = {
        let s = shared.status.lock().unwrap();
        let candidates = Bitfield::from_bytes(&s.record.unverified, meta.piece_count());
        (s.record.have.iter().any(|&b| b != 0), candidates)
    };
    let mut to_check: Vec<usize> = {
        let inner = shared.inner.lock().unwrap();
        let layout = storage.layout();
        let mut set = std::collections::BTreeSet::new();
        if full {
            set.extend(0..meta.piece_count());
        } else if !had_record {
            for &f in &survey.existing_files {
                set.extend(layout.pieces_of_file(f));
            }
        } else {
            for &f in &survey.short_files {
                set.extend(layout.pieces_of_file(f).filter(|&p| inner.have.get(p)));
            }
        }
        // Written but not flushed before a crash: keep what still verifies.
        if let Some(c) = &candidates {
            set.extend(c.iter_ones());
        }
        set.into_iter().collect()
    };
    if to_check.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    {
        let mut inner = shared.inner.lock().unwrap();
        for &p in &to_check {
            if inner.have.get(p) {
                inner.have.clear(p);
                inner.picker.piece_lost(p as u32);
                shared.verified_bytes.fetch_sub(meta.piece_len(p) as u64, Ordering::Relaxed);
            }
        }
    }
    // Hash in parallel on the disk pool, a bounded number of pieces at a time.
    let parallel = env.disk.threads() * 2;
    let mut jobs = JoinSet::new();
    let mut good = 0usize;
    let total = to_check.len();
    to_check.reverse();
    loop {
        while jobs.len() < parallel {
            let Some(p) = to_check.pop() else { break };
            let (m, s, disk) = (meta.clone(), storage.clone(), env.disk.clone());
            jobs.spawn(async move { (p, disk.run(move || piece_matches(&m, &s, p)).await.unwrap_or(false)) });
        }
        let Some(done) = jobs.join_next().await else {
            break;
        };
        if let Ok((p, true)) = done {
            good += 1;
            let mut inner = shared.inner.lock().unwrap();
            if inner.have.set(p) {
                inner.picker.piece_verified(p as u32);
                inner.unflushed.push((p as u32, Instant::now()));
                shared.verified_bytes.fetch_add(meta.piece_len(p) as u64, Ordering::Relaxed);
            }
        }
    }
    let count = shared.inner.lock().unwrap().have.count();
    shared.have_tx.send_replace(count);
    tracing::info!(
        torrent = %shared.name(),
        checked = total,
        valid = good,
        have = count,
        pieces = meta.piece_count(),
        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
        "checking done"
    );
    shared.save_resume(false).await;
    Ok(())
}

struct Active<'a> {
    shared: &'a Arc<TorrentShared>,
    /// Peer tasks; outgoing ones return their address and whether it is
    /// worth dialling again.
    peers: JoinSet<Option<(SocketAddr, bool, Duration)>>,
    child: CancellationToken,
    /// Every address heard of, and when to dial it.
    book: PeerBook,
    choker: Choker,
    last_counts: HashMap<PeerKey, (u64, u64)>,
    /// (downloaded, uploaded, seconds) per tick, the last few seconds.
    rate_window: VecDeque<(u64, u64, f64)>,
    last_choke: Instant,
    last_totals: (u64, u64),
}

async fn run_active(
    shared: &Arc<TorrentShared>,
    cmds: &mut mpsc::Receiver<Cmd>,
    cancel: &CancellationToken,
    mut permit: Option<OwnedSemaphorePermit>,
) -> ActiveExit {
    let env = shared.env.clone();
    let config = env.config();
    let complete = shared.is_complete();
    shared.set_state(if complete { TorrentState::Seeding } else { TorrentState::Downloading }, None);
    let started = Instant::now();
    let downloaded_at_start = shared.downloaded.load(Ordering::Relaxed);

    let child = cancel.child_token();
    let (peers_tx, mut peers_rx) = mpsc::channel(16);
    let (completed_tx, completed_rx) = watch::channel(complete);
    let tracker = tokio::spawn(tracker::run(
        TrackerConfig {
            info_hash: shared.meta.info_hash,
            name: shared.meta.name.clone(),
            peer_id: env.peer_id,
            port: env.listen_port,
            tiers: shared.meta.trackers.clone(),
        },
        env.http.clone(),
        shared.clone() as Arc<dyn TransferCounters>,
        peers_tx.clone(),
        completed_rx,
        child.clone(),
    ));
    let mut a = Active {
        shared,
        peers: JoinSet::new(),
        child: child.clone(),
        book: PeerBook::default(),
        choker: Choker::new(config.limits.upload_slots, rand::random()),
        last_counts: HashMap::new(),
        rate_window: VecDeque::new(),
        last_choke: Instant::now(),
        last_totals: (shared.downloaded.load(Ordering::Relaxed), shared.uploaded.load(Ordering::Relaxed)),
    };
    let dht = match (&env.dht, shared.meta.private) {
        (Some(dht), false) => {
            // Often while downloading, seldom while seeding.
            let torrent = shared.clone();
            let every = move || if torrent.is_complete() { DHT_SEEDING_EVERY } else { DHT_DOWNLOADING_EVERY };
            let lookups = dht.clone().keep_looking_up(
                shared.meta.info_hash,
                env.listen_port,
                peers_tx.clone(),
                child.clone(),
                every,
            );
            Some(tokio::spawn(lookups))
        }
        _ => None,
    };
    // Peers known from the last run (or a magnet's x.pe) are dialled first.
    let remembered: Vec<SocketAddr> =
        shared.status.lock().unwrap().record.peers.iter().filter_map(|p| p.parse().ok()).collect();
    a.add_candidates(remembered.clone());
    let mut have_rx = shared.have_tx.subscribe();
    let mut last_tick = Instant::now();
    let mut next_tick = last_tick + TICK;
    let mut seeding_ms = 0u64;
    let mut last_data = Instant::now();
    let mut last_save = Instant::now();
    let mut last_saved_have = shared.inner.lock().unwrap().have.count();
    let exit = loop {
        tokio::select! {
            _ = cancel.cancelled() => break ActiveExit::Cancelled,
            cmd = cmds.recv() => match cmd {
                None => break ActiveExit::Cancelled,
                Some(Cmd::Pause) => break ActiveExit::Paused,
                Some(Cmd::Recheck) => break ActiveExit::Recheck,
                Some(Cmd::Resume) => {}
                Some(Cmd::Incoming(stream, addr, hs)) => a.accept(stream, addr, hs),
            },
            Some(list) = peers_rx.recv() => a.add_candidates(list),
            Some(ended) = a.peers.join_next(), if !a.peers.is_empty() => {
                if let Ok(Some((addr, retry, lasted))) = ended {
                    a.book.ended(addr, retry, lasted, Instant::now());
                }
            }
            r = have_rx.changed() => {
                if r.is_err() { break ActiveExit::Cancelled; }
                if let Some(e) = shared.inner.lock().unwrap().disk_error.clone() {
                    break ActiveExit::DiskError(e);
                }
                if permit.is_some() && shared.is_complete() {
                    permit = None;
                    completed_tx.send_replace(true);
                    shared.set_state(TorrentState::Seeding, None);
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    let got = shared.downloaded.load(Ordering::Relaxed) - downloaded_at_start;
                    {
                        let mut s = shared.status.lock().unwrap();
                        s.record.completed_at = now_unix();
                    }
                    tracing::info!(
                        torrent = %shared.name(),
                        size = %human_bytes(shared.meta.total_length),
                        duration = %human_duration(secs as u64),
                        avg = %format!("{}/s", human_bytes((got as f64 / secs) as u64)),
                        "completed"
                    );
                    shared.save_resume(false).await;
                    last_save = Instant::now();
                }
            }
            _ = tokio::time::sleep_until(next_tick.into()) => {
                let elapsed = last_tick.elapsed();
                last_tick = Instant::now();
                let idle = shared.state() == TorrentState::Seeding && a.peers.is_empty() && !a.book.has_queued();
                next_tick = last_tick + if idle { IDLE_TICK } else { TICK };
                let before = a.last_totals.0;
                a.update_rates(elapsed);
                if a.last_totals.0 != before {
                    last_data = Instant::now();
                }
                let stall = Duration::from_secs(env.config().limits.stall_secs);
                if permit.is_some() && last_data.elapsed() >= stall && env.queued.load(Ordering::Relaxed) > 0 {
                    break ActiveExit::Stalled(last_data.elapsed());
                }
                if a.last_choke.elapsed() >= CHOKE_EVERY {
                    a.choke_round();
                }
                let mut learned = std::mem::take(&mut shared.inner.lock().unwrap().pex_learned);
                a.book.queue_due(Instant::now());
                if a.peers.is_empty() && !a.book.has_queued() {
                    // Alone: the peers of last time are worth another try now and then.
                    learned.extend_from_slice(&remembered);
                }
                a.add_candidates(learned);
                if let Some(e) = shared.inner.lock().unwrap().disk_error.clone() {
                    break ActiveExit::DiskError(e);
                }
                let seeding = shared.state() == TorrentState::Seeding;
                if seeding {
                    seeding_ms += elapsed.as_millis() as u64;
                    shared.status.lock().unwrap().record.seeding_secs += seeding_ms / 1000;
                    seeding_ms %= 1000;
                    if let Some(why) = limit_reached(shared) {
                        break ActiveExit::Limit(why);
                    }
                }
                let interval = Duration::from_secs(env.config().storage.resume_interval_secs);
                let have = shared.inner.lock().unwrap().have.count();
                // Counters and seeding time are refreshed on disk now and then
                // even when no piece arrived; rarely, as hundreds of idle
                // torrents would otherwise fsync constantly.
                let overdue = last_save.elapsed() >= IDLE_SAVE_EVERY;
                if last_save.elapsed() >= interval && (have != last_saved_have || overdue) {
                    last_saved_have = have;
                    last_save = Instant::now();
                    shared.save_resume(false).await;
                }
            }
        }
    };
    // Stop everything this activity started, then persist.
    child.cancel();
    let drain = async { while a.peers.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        a.peers.abort_all();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker).await;
    if let Some(d) = dht {
        let _ = d.await;
    }
    shared.set_state(shared.state(), None);
    {
        let mut s = shared.status.lock().unwrap();
        s.download_rate = 0;
        s.upload_rate = 0;
    }
    shared.save_resume(true).await;
    exit
}

fn limit_reached(shared: &TorrentShared) -> Option<String> {
    let cfg = shared.env.config();
    let s = shared.status.lock().unwrap();
    if cfg.seeding.ratio_limit > 0.0 {
        let up = shared.uploaded.load(Ordering::Relaxed) as f64;
        let down = shared.downloaded.load(Ordering::Relaxed);
        let base = if down > 0 { down } else { shared.meta.total_length } as f64;
        if up / base >= cfg.seeding.ratio_limit {
            return Some(format!("ratio {:.2} >= {}", up / base, cfg.seeding.ratio_limit));
        }
    }
    if let Some(limit) = cfg.seed_time_limit() {
        if s.record.seeding_secs >= limit.as_secs() {
            return Some(format!("seeded for {}", human_duration(s.record.seeding_secs)));
        }
    }
    None
}

impl Active<'_> {
    fn add_candidates(&mut self, list: Vec<SocketAddr>) {
        self.book.heard(list, Instant::now());
        self.connect_candidates();
    }

    fn connect_candidates(&mut self) {
        let max = self.shared.env.config().limits.max_peers_per_torrent;
        let mut started = 0;
        while started < CONNECTS_PER_TICK && self.peers.len() < max {
            let Some(addr) = self.book.next_to_dial() else {
                break;
            };
            {
                let inner = self.shared.inner.lock().unwrap();
                if inner.peers.contains_key(&addr) || inner.banned_addrs.contains(&addr) {
                    continue;
                }
            }
            let Ok(permit) = self.shared.env.connections.clone().try_acquire_owned() else {
                break;
            };
            started += 1;
            let (shared, cancel) = (self.shared.clone(), self.child.clone());
            self.peers.spawn(async move {
                let _permit = permit;
                let started = Instant::now();
                let retry = match outgoing(shared, addr, cancel).await {
                    Ok(()) => true,
                    Err((e, retry)) => {
                        tracing::debug!(peer = %addr, error = %e, "peer connection ended");
                        retry
                    }
                };
                Some((addr, retry, started.elapsed()))
            });
        }
    }

    fn accept(&mut self, stream: TcpStream, addr: SocketAddr, hs: Handshake) {
        let max = self.shared.env.config().limits.max_peers_per_torrent;
        if self.peers.len() >= max {
            return;
        }
        let Ok(permit) = self.shared.env.connections.clone().try_acquire_owned() else {
            return;
        };
        let (shared, cancel) = (self.shared.clone(), self.child.clone());
        self.peers.spawn(async move {
            let _permit = permit;
            if let Err(e) = incoming(shared, stream, addr, hs, cancel).await {
                tracing::debug!(peer = %addr, error = %e, "peer connection ended");
            }
            None
        });
    }

    /// Rates over the last few ticks, whatever their length.
    fn update_rates(&mut self, elapsed: Duration) {
        let now = (self.shared.downloaded.load(Ordering::Relaxed), self.shared.uploaded.load(Ordering::Relaxed));
        self.rate_window.push_back((now.0 - self.last_totals.0, now.1 - self.last_totals.1, elapsed.as_secs_f64()));
        self.last_totals = now;
        if self.rate_window.len() > 5 {
            self.rate_window.pop_front();
        }
        let (d, u, secs) = self.rate_window.iter().fold((0, 0, 0.0), |acc, x| (acc.0 + x.0, acc.1 + x.1, acc.2 + x.2));
        let secs = secs.max(0.001);
        let mut s = self.shared.status.lock().unwrap();
        s.download_rate = (d as f64 / secs) as u64;
        s.upload_rate = (u as f64 / secs) as u64;
    }

    fn choke_round(&mut self) {
        let secs = self.last_choke.elapsed().as_secs_f64().max(1.0);
        self.last_choke = Instant::now();
        let seeding = self.shared.is_complete();
        let handles: Vec<(PeerKey, Arc<PeerHandle>)> =
            self.shared.inner.lock().unwrap().peers.iter().map(|(k, h)| (*k, h.clone())).collect();
        let mut inputs = Vec::with_capacity(handles.len());
        let mut counts = HashMap::with_capacity(handles.len());
        for (k, h) in &handles {
            let now = (h.bytes_down.load(Ordering::Relaxed), h.bytes_up.load(Ordering::Relaxed));
            let before = self.last_counts.get(k).copied().unwrap_or((0, 0));
            counts.insert(*k, now);
            let rate = (if seeding { now.1 - before.1 } else { now.0 - before.0 } as f64 / secs) as u64;
            inputs.push(ChokeInput {
                key: *k,
                interested: h.peer_interested.load(Ordering::Relaxed),
                rate,
                connected_secs: h.connected_at.elapsed().as_secs(),
                snubbed: h.snubbed.load(Ordering::Relaxed),
            });
        }
        self.last_counts = counts;
        self.choker.set_slots(self.shared.env.config().limits.upload_slots);
        let unchoked = self.choker.run(&inputs);
        for (k, h) in handles {
            let want = unchoked.contains(&k);
            if h.unchoke.swap(want, Ordering::Relaxed) != want {
                h.notify.notify_one();
            }
        }
    }
}

/// Admits a peer into the torrent's peer map, or says why not.
fn register(
    shared: &TorrentShared,
    addr: SocketAddr,
    peer_id: [u8; 20],
    listen: Option<SocketAddr>,
) -> Result<Arc<PeerHandle>, String> {
    if peer_id == shared.env.peer_id.0 {
        return Err("connected to ourselves".into());
    }
    let mut inner = shared.inner.lock().unwrap();
    if inner.banned_ids.contains(&peer_id) || inner.banned_addrs.contains(&addr) {
        return Err("banned".into());
    }
    if inner.peers.contains_key(&addr) || inner.peers.values().any(|p| p.peer_id == peer_id) {
        return Err("already connected".into());
    }
    let handle = Arc::new(PeerHandle::new(peer_id, listen));
    inner.peers.insert(addr, handle.clone());
    Ok(handle)
}

/// Dials `addr`; `Err((reason, worth_retrying))`. Reaching ourselves, a
/// banned peer or another torrent is not worth another try.
async fn outgoing(
    shared: Arc<TorrentShared>,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> Result<(), (String, bool)> {
    let ours = our_handshake(&shared);
    let connect = async {
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let theirs = peer::handshake_outgoing(&mut stream, &ours).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((stream, theirs))
    };
    let (stream, theirs) = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = connect => r.map_err(|e| (e, true))?,
    };
    if theirs.info_hash != shared.meta.info_hash {
        return Err(("peer answered for another torrent".into(), false));
    }
    let handle = register(&shared, addr, theirs.peer_id.0, Some(addr)).map_err(|e| (e, false))?;
    tracing::debug!(torrent = %shared.name(), peer = %addr, "connected");
    let result = peer::run(shared.clone(), handle.clone(), stream, addr, theirs, cancel).await;
    // Two seeds part for good; anything else may be worth another try.
    let both_seeds = handle.is_seed.load(Ordering::Relaxed) && shared.is_complete();
    result.map_err(|e| (e.to_string(), !both_seeds))
}

async fn incoming(
    shared: Arc<TorrentShared>,
    mut stream: TcpStream,
    addr: SocketAddr,
    theirs: Handshake,
    cancel: CancellationToken,
) -> Result<(), String> {
    let handle = register(&shared, addr, theirs.peer_id.0, None)?;
    let ours = our_handshake(&shared);
    let send = async {
        use tokio::io::AsyncWriteExt;
        stream.write_all(&ours.encode()).await
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, send).await {
        Ok(Ok(())) => {}
        _ => {
            shared.inner.lock().unwrap().peers.remove(&addr);
            return Err("handshake write failed".into());
        }
    }
    tracing::debug!(torrent = %shared.name(), peer = %addr, "accepted");
    peer::run(shared, handle, stream, addr, theirs, cancel).await.map_err(|e| e.to_string())
}

/// The DHT bit is set only where the DHT may be used: never for private torrents.
fn our_handshake(shared: &TorrentShared) -> Handshake {
    Handshake::new(shared.meta.info_hash, shared.env.peer_id, shared.env.dht.is_some() && !shared.meta.private)
}
