//! The `Active` phase: the torrent is in its swarm. It owns the peer tasks,
//! the tracker task and the DHT lookups, ticks its clocks (`clock.rs`), runs
//! choking rounds, notices completion (and then moves the data to the
//! complete folder, `handoff.rs`, while seeding goes on), seeding limits and
//! disk trouble, and stops everything it started before it returns.

use super::choker::{ChokeInput, Choker};
use super::clock::{self, ActiveClock};
use super::handoff::{self, MoveControl};
use super::peerbook::PeerBook;
use super::phase::Outcome;
use super::picker::PeerKey;
use super::queue::Slot;
use super::task::{limit_reached, Command, Control};
use super::{connect, evict};
use super::{PeerHandle, TorrentShared};
use crate::conn::{Transport, Way};
use crate::hookcmd::HookEvent;
use crate::storage::Place;
use crate::tracker::{self, TrackerConfig, TransferCounters};
use crate::types::{human_bytes, human_duration};
use crate::wallclock::now_unix;
use crate::wire::Handshake;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// New outgoing connection attempts per second per torrent.
const CONNECTS_PER_TICK: usize = 8;
/// How often a torrent looks itself up in the DHT (and announces).
const DHT_DOWNLOADING_EVERY: Duration = Duration::from_secs(120);
const DHT_SEEDING_EVERY: Duration = Duration::from_secs(15 * 60);
/// Peer tasks get this long to end on their own before they are aborted.
const PEERS_DRAIN: Duration = Duration::from_secs(5);
/// How often a seeding torrent with peers looks whether its files are
/// still there.
const PRESENCE_EVERY: Duration = Duration::from_secs(60);
/// The same for an idle one: nothing reads its files, so it looks seldom,
/// and again as soon as it has a peer or an address to dial (see
/// [`PresenceCheck::due`]). Each look walks the files' paths without
/// following links: every five minutes, that was most of ten thousand
/// idle torrents' CPU.
const PRESENCE_IDLE_EVERY: Duration = Duration::from_secs(30 * 60);

/// When a settled, complete torrent next checks its files are there.
#[derive(Clone, Copy, Debug)]
struct PresenceCheck {
    next: Instant,
    /// The last check was made idle, at the idle interval.
    made_idle: bool,
}

impl PresenceCheck {
    fn first(now: Instant) -> Self {
        Self { next: now + PRESENCE_EVERY, made_idle: false }
    }

    /// Whether the files are to be checked now: when the interval is up,
    /// or at the first busy tick after a check made idle (an idle seeder's
    /// files may have gone half an hour ago; a peer must not be served
    /// from what replaced them).
    fn due(&self, now: Instant, idle: bool) -> bool {
        now >= self.next || (self.made_idle && !idle)
    }

    /// A check is made now.
    fn made(now: Instant, idle: bool) -> Self {
        Self { next: now + if idle { PRESENCE_IDLE_EVERY } else { PRESENCE_EVERY }, made_idle: idle }
    }
}

/// An outgoing connection's end: its address, whether it is worth dialling
/// again, how long it lasted, and how it was made (if it was).
type Dialled = (SocketAddr, bool, Duration, Option<Way>);

struct Active<'a> {
    shared: &'a Arc<TorrentShared>,
    /// Peer tasks; outgoing ones return how they went.
    peers: JoinSet<Option<Dialled>>,
    /// Cancels everything this phase started.
    child: CancellationToken,
    /// Every address heard of, and when to dial it.
    book: PeerBook,
    /// Hosts of recent evictions, turned away for a while (see [`evict`]).
    penalty: evict::PenaltyBox,
    choker: Choker,
    clock: ActiveClock,
    /// (downloaded, uploaded, seconds) per tick, the last few seconds.
    rate_window: VecDeque<(u64, u64, f64)>,
    last_totals: (u64, u64),
    /// Peers known from the last run (or a magnet's x.pe), tried again when
    /// the torrent is alone.
    remembered: Vec<SocketAddr>,
    /// Turns true when the torrent completes, for its announce loop; none
    /// when it was complete from the start (see [`tracker::Completion`]).
    completed_tx: Option<watch::Sender<bool>>,
    /// When the phase began and what had been downloaded then, for the
    /// completion line.
    started: (Instant, u64),
    /// The move to the complete folder, while it runs.
    handoff: Option<(JoinHandle<std::io::Result<Place>>, Arc<MoveControl>)>,
    presence: PresenceCheck,
    /// The upload counter at the last tick (for the idle-seeding limit).
    last_uploaded: u64,
}

/// Helpers started with the phase and stopped with it.
struct Helpers {
    tracker: JoinHandle<()>,
    dht: Option<JoinHandle<()>>,
    /// The torrent's place in LSD's roster (public torrents only).
    lsd: Option<crate::lsd::Registration>,
    peers_rx: flume::Receiver<tracker::PeerList>,
}

pub(super) async fn run(
    shared: &Arc<TorrentShared>,
    ctl: &mut Control<'_>,
    slot: &mut Option<Slot>,
) -> Option<Outcome> {
    let complete = shared.is_complete();
    let mut a = Active::new(shared, ctl.cancel.child_token(), complete);
    let mut helpers = a.start_helpers();
    let remembered = a.remembered.clone();
    a.add_candidates(remembered);
    // Complete already (a check found every piece after a restart): the
    // handoff that completion would have started starts now.
    Box::pin(a.start_handoff()).await;
    let outcome = a.run(ctl, slot, &mut helpers.peers_rx).await;
    Box::pin(a.stop(helpers)).await;
    outcome
}

impl<'a> Active<'a> {
    fn new(shared: &'a Arc<TorrentShared>, child: CancellationToken, complete: bool) -> Active<'a> {
        let totals = (shared.received.load(Ordering::Relaxed), shared.uploaded.load(Ordering::Relaxed));
        let have = shared.lock().have().count();
        let remembered = shared.status_cell().record.peers.iter().filter_map(|p| p.parse().ok()).collect();
        Active {
            shared,
            peers: JoinSet::new(),
            child,
            book: PeerBook::default(),
            penalty: evict::PenaltyBox::default(),
            choker: Choker::new(shared.env.config().limits.upload_slots, rand::random()),
            clock: ActiveClock::new(Instant::now(), totals, have, rand::random()),
            rate_window: VecDeque::new(),
            last_totals: totals,
            remembered,
            completed_tx: (!complete).then(|| watch::Sender::new(false)),
            started: (Instant::now(), totals.0),
            handoff: None,
            presence: PresenceCheck::first(Instant::now()),
            last_uploaded: shared.uploaded.load(Ordering::Relaxed),
        }
    }

    /// The tracker task and, for public torrents, DHT lookups (often while
    /// downloading, seldom while seeding) and LSD announces.
    fn start_helpers(&self) -> Helpers {
        let (shared, env) = (self.shared, &self.shared.env);
        let (peers_tx, peers_rx) = flume::bounded(16);
        let cfg = TrackerConfig {
            info_hash: shared.meta.info_hash,
            name: shared.meta.name.clone(),
            peer_id: env.peer_id(),
            port: env.listen_port(),
            tiers: shared.meta.trackers.clone(),
            numwant: env.config().network.numwant,
            book: env.announces().clone(),
        };
        let counters = shared.clone() as Arc<dyn TransferCounters>;
        let completed = match &self.completed_tx {
            Some(tx) => tracker::Completion::Pending(tx.subscribe()),
            None => tracker::Completion::Done,
        };
        let tracker = tokio::spawn(
            tracker::run(cfg, env.http().clone(), counters, peers_tx.clone(), completed, self.child.clone())
                .in_current_span(),
        );
        let public = !shared.meta.private;
        let lsd = env.lsd().filter(|_| public).map(|l| l.register(shared.meta.info_hash, peers_tx.clone()));
        let dht = env.dht().filter(|_| public).map(|dht| {
            let torrent = shared.clone();
            let every = move |_found| if torrent.is_complete() { DHT_SEEDING_EVERY } else { DHT_DOWNLOADING_EVERY };
            let hash = shared.meta.info_hash;
            tokio::spawn(
                dht.clone()
                    .keep_looking_up(hash, env.listen_port(), peers_tx, self.child.clone(), every)
                    .in_current_span(),
            )
        });
        Helpers { tracker, dht, lsd, peers_rx }
    }

    async fn run(
        &mut self,
        ctl: &mut Control<'_>,
        slot: &mut Option<Slot>,
        peers_rx: &mut flume::Receiver<tracker::PeerList>,
    ) -> Option<Outcome> {
        // Only completion is watched for: a torrent complete already has no
        // need of the channel, and most never make one (see `have_changes`).
        let mut have_rx = (!self.shared.is_complete()).then(|| self.shared.have_changes());
        let mut next_tick = self.clock.first_tick();
        loop {
            tokio::select! {
                cmd = ctl.next() => match cmd.ok()? {
                    Command::Incoming(stream, addr, hs) => self.accept(stream, addr, hs),
                    Command::Wake => next_tick = Instant::now(),
                    Command::Outcome(o @ (Outcome::Paused | Outcome::RecheckAsked | Outcome::Relocate(_))) => return Some(o),
                    Command::Outcome(_) => {}
                },
                Ok(list) = peers_rx.recv_async() => self.add_candidates(*list),
                moved = async { (&mut self.handoff.as_mut().unwrap().0).await }, if self.handoff.is_some() => {
                    self.handoff = None;
                    let moved = moved.unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    if let Some(o) = Box::pin(self.on_moved(moved)).await {
                        return Some(o);
                    }
                    // Seeding time counts from now: a tick marks the start.
                    next_tick = Instant::now();
                }
                Some(ended) = self.peers.join_next(), if !self.peers.is_empty() => {
                    if let Ok(Some((addr, retry, lasted, how))) = ended {
                        self.book.ended(addr, retry, lasted, Instant::now());
                        self.book.made(addr, how);
                    }
                }
                r = async { have_rx.as_mut().unwrap().changed().await }, if have_rx.is_some() => {
                    r.ok()?;
                    if let Some(o) = Box::pin(self.on_new_piece(slot)).await {
                        return Some(o);
                    }
                }
                () = self.shared.disk_trouble() => {
                    if let Some(e) = self.shared.lock().take_disk_error() {
                        return Some(Outcome::DiskFailed(e));
                    }
                }
                _ = tokio::time::sleep_until(next_tick.into()) => {
                    // Boxed, like the other rare events here: the idle future
                    // of every torrent stays small.
                    let (next, outcome) = Box::pin(self.on_tick(slot.is_some())).await;
                    if outcome.is_some() {
                        return outcome;
                    }
                    next_tick = next;
                }
            }
            // An idle torrent woken by a peer (one dialling in, one ending,
            // a tracker's list with more than one tick's dials) ticks again
            // in a second, not at its idle tick.
            if !self.idle() {
                next_tick = next_tick.min(Instant::now() + clock::TICK);
            }
        }
    }

    /// A piece was verified: notes completion, which frees the download slot.
    async fn on_new_piece(&mut self, slot: &mut Option<Slot>) -> Option<Outcome> {
        if slot.is_none() || !self.shared.is_complete() {
            return None;
        }
        *slot = None;
        self.shared.env.queue().leave(&self.shared.meta.info_hash);
        if let Some(tx) = &self.completed_tx {
            tx.send_replace(true);
        }
        self.shared.status_cell().record.completed_at = now_unix();
        let secs = self.started.0.elapsed().as_secs_f64().max(0.001);
        let got = self.shared.received.load(Ordering::Relaxed).saturating_sub(self.started.1);
        let category = self.shared.status_cell().record.category.clone();
        tracing::info!(
            torrent = %self.shared.name(),
            size = %human_bytes(self.shared.meta.total_length),
            duration = %human_duration(secs as u64),
            avg = %format!("{}/s", human_bytes((got as f64 / secs) as u64)),
            path = %self.shared.place().top().display(),
            category = %category,
            "completed"
        );
        // `on_complete` sees the data in its final folder: now if it is
        // there already, else once the move is done.
        if self.shared.place().settled {
            self.shared.run_hook(HookEvent::Complete);
        }
        self.shared.save_resume(false).await;
        let have = self.shared.lock().have().count();
        let moved = (self.shared.received.load(Ordering::Relaxed), self.shared.uploaded.load(Ordering::Relaxed));
        self.clock.saved(Instant::now(), have, moved);
        self.start_handoff().await;
        None
    }

    /// A complete torrent not in its final place moves there: its target is
    /// written into the record (with every piece flushed first) before the
    /// move begins, so a restart at any point finishes it.
    async fn start_handoff(&mut self) {
        let from = self.shared.place();
        if from.settled || self.handoff.is_some() || !self.shared.is_complete() {
            return;
        }
        let (shared, env) = (self.shared.clone(), &self.shared.env);
        let ((root, sub), meta) = (shared.complete_folder(), shared.meta.clone());
        let target = match env.disk().run(move || handoff::target_in(&root, &sub, &meta)).await {
            Ok(t) => t,
            Err(_) => return,
        };
        if target.name != shared.meta.name {
            tracing::warn!(torrent = %shared.name(), taken = %target.dir.join(&shared.meta.name).display(),
                instead = %target.name, "name already taken in the complete folder; not overwriting it");
        }
        shared.status_cell().record.moving = Some(target.clone());
        if !shared.save_resume(true).await {
            // Not moved without the record naming the target (tried again
            // at the next start or resume).
            return;
        }
        let recorded = shared.status_cell().record.stamps.clone();
        let ctl = Arc::new(MoveControl::default());
        let c = ctl.clone();
        let span = tracing::Span::current();
        let job = tokio::task::spawn_blocking(move || {
            let _in_span = span.enter();
            let _one_move = shared.hold_moves();
            handoff::finish_move(&shared.meta, &from, &target, shared.storage().map(|s| &**s), &recorded, &c)
        });
        self.handoff = Some((job, ctl));
    }

    /// The move ended: the data's new place is recorded, or the torrent
    /// errs (it is tried again from where it stopped).
    async fn on_moved(&mut self, moved: std::io::Result<Place>) -> Option<Outcome> {
        let place = match moved {
            Ok(p) => p,
            Err(e) => return Some(Outcome::MoveFailed(format!("moving to the complete folder: {e}"))),
        };
        tracing::info!(torrent = %self.shared.name(), path = %place.top().display(), "moved to the complete folder");
        {
            let mut s = self.shared.status_cell();
            s.record.place = Some(place);
            s.record.moving = None;
        }
        self.shared.save_resume(false).await;
        self.shared.run_hook(HookEvent::Complete);
        None
    }

    /// Once a second (idle, up to every 30 s): rates, choking, dialling,
    /// seeding time and limits, stalls, the resume record.
    async fn on_tick(&mut self, downloading: bool) -> (Instant, Option<Outcome>) {
        let now = Instant::now();
        let env = &self.shared.env;
        let config = env.config();
        let seeding = self.shared.is_complete();
        // Each lock taken alone: a guard in the literal below would live
        // to the end of the statement.
        let have = self.shared.lock().have().count();
        let force_start = self.shared.status_cell().record.force_start;
        let counted = self.counts_seeding();
        let facts = clock::Facts {
            received: self.shared.received.load(Ordering::Relaxed),
            sent: self.shared.uploaded.load(Ordering::Relaxed),
            have,
            downloading,
            // A forced download never yields its slot: it would get it back at once.
            others_queued: env.queued().load(Ordering::Relaxed) > 0 && !force_start,
            seeding: counted,
            stall_after: Duration::from_secs(config.limits.stall_secs),
            save_every: Duration::from_secs(config.storage.resume_interval_secs),
        };
        let plan = self.clock.tick(now, facts);
        self.update_rates(plan.elapsed);
        // What the record has not counted yet shows in the status.
        let uncounted = super::Uncounted { since: now, seeding: counted };
        {
            let mut s = self.shared.status_cell();
            s.record.active_secs += plan.active_secs;
            s.uncounted = Some(uncounted);
        }
        if let Some(quiet) = plan.stalled {
            tracing::debug!(torrent = %self.shared.name(), quiet = %human_duration(quiet.as_secs()), "download stalled");
            return (now, Some(Outcome::Stalled));
        }
        if plan.choke {
            self.choke_round(now);
        }
        self.dial_learned(now);
        if let Some(e) = self.shared.lock().take_disk_error() {
            return (now, Some(Outcome::DiskFailed(e)));
        }
        // Limits wait for the data to be delivered to its complete folder.
        if counted {
            let uploaded = self.shared.uploaded.load(Ordering::Relaxed);
            let moved = std::mem::replace(&mut self.last_uploaded, uploaded) != uploaded;
            {
                let record = &mut self.shared.status_cell().record;
                record.seeding_secs += plan.seeded_secs;
                record.seed_idle_secs = if moved { 0 } else { record.seed_idle_secs + plan.seeded_secs };
            }
            if let Some(why) = limit_reached(self.shared) {
                let action = config.seeding.action;
                tracing::info!(torrent = %self.shared.name(), reason = %why, action = ?action, "seeding limit reached");
                self.shared.run_hook(HookEvent::SeedingDone);
                return (now, Some(Outcome::LimitReached));
            }
        }
        // After this tick's dialling: idle, it has nothing to do until
        // `wake_by`, computed from what this tick counted.
        let idle = self.idle();
        if seeding && self.presence.due(now, idle) {
            self.presence = PresenceCheck::made(now, idle);
            if let Some(missing) = self.files_gone().await {
                return (now, Some(Outcome::DataMissing(missing)));
            }
        }
        if plan.save {
            self.shared.save_resume(false).await;
        }
        let wake_by = if idle { self.wake_by(now) } else { None };
        (self.clock.next_tick(now, idle, wake_by), None)
    }

    /// Seeding with no peers and nobody to dial: it ticks seldom.
    fn idle(&self) -> bool {
        // The lock last: asked after every event, busy torrents stop at peers.
        self.peers.is_empty() && !self.book.has_queued() && self.shared.is_complete()
    }

    /// Whether seeding time counts (and seeding limits apply): complete,
    /// and delivered to its complete folder.
    fn counts_seeding(&self) -> bool {
        self.shared.is_complete() && self.handoff.is_none() && self.shared.place().settled
    }

    /// The soonest thing an idle seeder must wake for: a dial retry, its
    /// presence check, a seeding time limit.
    fn wake_by(&self, now: Instant) -> Option<Instant> {
        let limit = self.counts_seeding().then(|| {
            let s = self.shared.status_cell();
            let limits = self.shared.limits_of(&s.record).effective;
            let left = |max: Option<u64>, done: u64| max.map(|m| now + Duration::from_secs(m.saturating_sub(done)));
            let by_time = left(limits.seeding_secs, s.record.seeding_secs);
            let by_idle = left(limits.idle_secs, s.record.seed_idle_secs);
            by_time.into_iter().chain(by_idle).min()
        });
        [self.book.next_retry(), Some(self.presence.next), limit.flatten()].into_iter().flatten().min()
    }

    /// Files of a complete torrent in its settled place that left it (an
    /// importer moved, replaced or deleted them): seeding stops, and
    /// nothing is written there until the user says so.
    async fn files_gone(&self) -> Option<String> {
        let place = self.shared.place();
        let storage = self.shared.storage()?.clone();
        if !place.settled || self.handoff.is_some() {
            return None;
        }
        let (meta, p) = (self.shared.meta.clone(), place.clone());
        let gone = self.shared.env.disk().run(move || storage.files_gone(&p, &meta)).await.ok()?;
        if gone.is_empty() {
            return None;
        }
        let names: Vec<String> =
            gone.iter().take(5).map(|&i| place.file_path(&self.shared.meta, i).display().to_string()).collect();
        let more = gone.len() - names.len();
        Some(format!(
            "files moved, replaced or deleted: {}{} (`dropseed recheck` downloads what is gone)",
            names.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        ))
    }

    /// Peers from PEX, due retries, and when alone, the remembered ones.
    fn dial_learned(&mut self, now: Instant) {
        let mut learned = self.shared.lock().take_pex();
        self.book.queue_due(now);
        if self.peers.is_empty() && !self.book.has_queued() {
            learned.extend_from_slice(&self.remembered);
        }
        self.add_candidates(learned);
    }

    /// Stops everything the phase started and persists the torrent.
    async fn stop(mut self, helpers: Helpers) {
        self.child.cancel();
        drop(helpers.lsd); // no more announces, no more LSD peers
                           // A copy stops at its next chunk and goes on at the next start; a
                           // move that finished meanwhile is recorded.
        if let Some((job, ctl)) = self.handoff.take() {
            ctl.stop.store(true, Ordering::Relaxed);
            if let Ok(Ok(place)) = job.await {
                {
                    let mut s = self.shared.status_cell();
                    s.record.place = Some(place);
                    s.record.moving = None;
                }
                self.shared.run_hook(HookEvent::Complete);
            }
        }
        let drain = async { while self.peers.join_next().await.is_some() {} };
        if tokio::time::timeout(PEERS_DRAIN, drain).await.is_err() {
            self.peers.shutdown().await;
        }
        // Both end on the cancel; the tracker's `stopped` announce is bounded.
        let _ = helpers.tracker.await;
        if let Some(d) = helpers.dht {
            let _ = d.await;
        }
        {
            let mut s = self.shared.status_cell();
            s.download_rate = 0;
            s.upload_rate = 0;
            s.count_uncounted();
        }
        self.shared.save_resume(true).await;
    }

    fn add_candidates(&mut self, list: Vec<SocketAddr>) {
        // Our own address, as trackers list it, is known session-wide once
        // one torrent dialled it: not kept in every torrent's book (10,000
        // torrents, 400 bytes each).
        let env = &self.shared.env;
        self.book.heard(list.into_iter().filter(|a| !env.is_ourselves(a)), Instant::now());
        self.connect_candidates();
    }

    fn connect_candidates(&mut self) {
        let (max, per_ip) = {
            let limits = &self.shared.env.config().limits;
            (limits.max_peers_per_torrent, limits.max_peers_per_ip)
        };
        let mut started = 0;
        // Dialling only ever fills room, so the penalty box (which guards
        // evictions) does not apply: a boxed host is dialled like any other.
        while started < CONNECTS_PER_TICK && self.peers.len() < max {
            let Some(addr) = self.book.next_to_dial() else {
                break;
            };
            if self.shared.env.is_ourselves(&addr) || !self.shared.lock().peers().may_dial(addr, per_ip) {
                continue;
            }
            let Ok(permit) = self.shared.env.connections().clone().try_acquire_owned() else {
                self.book.put_back(addr);
                break;
            };
            started += 1;
            let (shared, cancel) = (self.shared.clone(), self.child.clone());
            let worked = self.book.made_by(addr);
            self.peers.spawn(
                async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let (end, how) = connect::outgoing(shared, addr, worked, cancel).await;
                    tracing::debug!(peer = %addr, reason = %end, "peer connection ended");
                    Some((addr, end.worth_redialling(), started.elapsed(), how))
                }
                .in_current_span(),
            );
        }
    }

    /// Takes a connection the listener routed here. When the torrent is
    /// full, an idle peer gives way to the newcomer, if there is one and the
    /// newcomer's host is not in the penalty box (with room, the box is not
    /// consulted).
    fn accept(&mut self, transport: Transport, addr: SocketAddr, hs: Handshake) {
        let (max, per_ip) = {
            let limits = &self.shared.env.config().limits;
            (limits.max_peers_per_torrent, limits.max_peers_per_ip)
        };
        if self.shared.lock().peers().at_host(addr.ip()) >= per_ip {
            return;
        }
        let Ok(permit) = self.shared.env.connections().clone().try_acquire_owned() else {
            return;
        };
        if !self.make_room(addr.ip(), self.peers.len() >= max) {
            return;
        }
        let (shared, cancel) = (self.shared.clone(), self.child.clone());
        self.peers.spawn(
            async move {
                let _permit = permit;
                let end = connect::incoming(shared, transport, addr, hs, cancel).await;
                tracing::debug!(peer = %addr, reason = %end, "peer connection ended");
                None
            }
            .in_current_span(),
        );
    }

    /// Whether a newcomer from `ip` gets in (see [`evict::admit`]); when
    /// the torrent is `full`, closes the idle peer that gives way to it and
    /// puts the newcomer's host in the penalty box.
    fn make_room(&mut self, ip: std::net::IpAddr, full: bool) -> bool {
        let now = Instant::now();
        let inner = self.shared.lock();
        let peers = if full { eviction_candidates(inner.peers()) } else { Vec::new() };
        match evict::admit(ip, full, &peers, &self.penalty, now) {
            evict::Admission::Room => true,
            evict::Admission::Evict(victim) => {
                tracing::debug!(torrent = %self.shared.name(), peer = %victim, "idle peer closed to make room");
                if let Some(victim) = inner.peers().get(&victim) {
                    victim.kick();
                }
                self.penalty.evicted(ip, now);
                true
            }
            evict::Admission::Refused(why) => {
                tracing::trace!(torrent = %self.shared.name(), peer = %ip, reason = ?why, "newcomer turned away");
                false
            }
        }
    }

    /// Rates over the last few ticks, whatever their length.
    fn update_rates(&mut self, elapsed: Duration) {
        let now = (self.shared.received.load(Ordering::Relaxed), self.shared.uploaded.load(Ordering::Relaxed));
        if elapsed > 2 * clock::TICK {
            // After an idle stretch: the rate is this tick's alone.
            self.rate_window.clear();
        }
        self.rate_window.push_back((now.0 - self.last_totals.0, now.1 - self.last_totals.1, elapsed.as_secs_f64()));
        self.last_totals = now;
        if self.rate_window.len() > 5 {
            self.rate_window.pop_front();
        }
        let (d, u, secs) = self.rate_window.iter().fold((0, 0, 0.0), |acc, x| (acc.0 + x.0, acc.1 + x.1, acc.2 + x.2));
        let secs = secs.max(0.001);
        let moved = self.rate_window.back().is_some_and(|x| x.0 > 0 || x.1 > 0);
        let mut s = self.shared.status_cell();
        s.download_rate = (d as f64 / secs) as u64;
        s.upload_rate = (u as f64 / secs) as u64;
        if moved {
            s.last_active = crate::wallclock::now_unix();
        }
    }

    fn choke_round(&mut self, now: Instant) {
        let secs = self.clock.since_choke(now).as_secs_f64().max(1.0);
        self.clock.choked(now);
        let seeding = self.shared.is_complete();
        let handles: Vec<(PeerKey, Arc<PeerHandle>)> = self.shared.lock().peers().snapshot();
        let inputs = choke_inputs(&handles, seeding, secs);
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

/// What eviction looks at in each peer not already being closed.
fn eviction_candidates(peers: &super::PeerTable) -> Vec<evict::Candidate> {
    peers
        .iter()
        .filter(|(_, h)| !h.close.load(Ordering::Relaxed))
        .map(|(k, h)| evict::Candidate {
            key: *k,
            connected_secs: h.connected_at.elapsed().as_secs(),
            peer_interested: h.peer_interested.load(Ordering::Relaxed),
            am_interested: h.am_interested.load(Ordering::Relaxed),
            bytes: h.bytes_down.load(Ordering::Relaxed) + h.bytes_up.load(Ordering::Relaxed),
        })
        .collect()
}

/// What the choker needs of each peer: its rate since the last round. The
/// mark lives in the connection's own handle, so a peer redialled at the
/// same address starts from zero.
fn choke_inputs(handles: &[(PeerKey, Arc<PeerHandle>)], seeding: bool, secs: f64) -> Vec<ChokeInput> {
    handles
        .iter()
        .map(|(k, h)| {
            let (down, up) = h.bytes_since_mark();
            ChokeInput {
                key: *k,
                interested: h.peer_interested.load(Ordering::Relaxed),
                rate: (if seeding { up } else { down } as f64 / secs) as u64,
                connected_secs: h.connected_at.elapsed().as_secs(),
                snubbed: h.snubbed.load(Ordering::Relaxed),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_seeder_checks_its_files_seldom_but_at_once_when_a_peer_comes() {
        let now = Instant::now();
        let idle = PresenceCheck::made(now, true);
        assert_eq!(idle.next, now + PRESENCE_IDLE_EVERY);
        assert!(!idle.due(now, true), "idle, not yet due");
        assert!(idle.due(now, false), "busy after an idle check: now");
        let busy = PresenceCheck::made(now, false);
        assert!(!busy.due(now, false), "busy, checked busy: at its interval");
        assert!(busy.due(now + PRESENCE_EVERY, false), "busy, due");
        assert!(idle.due(idle.next, true), "idle, due");
    }

    #[test]
    fn a_peer_redialled_at_the_same_address_starts_from_zero() {
        let key: PeerKey = "127.0.0.1:7000".parse().unwrap();
        let first = Arc::new(PeerHandle::new([1; 20], None));
        first.bytes_up.store(10_000_000, Ordering::Relaxed);
        let inputs = choke_inputs(&[(key, first)], true, 10.0);
        assert_eq!(inputs[0].rate, 1_000_000);
        // The connection ends; the peer comes back from the same address and
        // has taken 50 kB by the next round.
        let again = Arc::new(PeerHandle::new([1; 20], None));
        again.bytes_up.store(50_000, Ordering::Relaxed);
        let inputs = choke_inputs(&[(key, again.clone())], true, 10.0);
        assert_eq!(inputs[0].rate, 5_000, "a new connection's rate counts from its own start");
        again.bytes_up.store(150_000, Ordering::Relaxed);
        let inputs = choke_inputs(&[(key, again)], true, 10.0);
        assert_eq!(inputs[0].rate, 10_000);
    }
}
