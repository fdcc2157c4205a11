//! The session: one registry of every torrent and magnet by info hash, the
//! listener that routes incoming peers to them, and the environment they
//! share (peer id, disk pool, HTTP client, connection and download budgets).
//!
//! Every task the session starts is tracked and stopped on shutdown. A slot
//! in the registry is reserved before anything is written or spawned for a
//! hash, so two adds of one torrent (watch folder and control socket at once,
//! or a `.torrent` dropped while its magnet's metadata arrives) cannot start
//! two tasks over the same files. Torrents are persisted in `state_dir` as
//! soon as they are added, and restored from it at start as they were.

mod entry;
mod labels;
mod listener;
pub mod lookup;
pub mod outcome;
mod registry;
pub mod relocate;
mod restore;
mod shared;
pub mod tags;

use crate::config::Config;
use crate::hookcmd::HookEvent;
use crate::hooks::{Facts, HookRunner};
use crate::magnet::Magnet;
use crate::metainfo::Metainfo;
use crate::resume::{self, ResumeRecord};
use crate::storage::delete::{delete_files_unused, Deleted, Expect, Kept};
use crate::storage::Place;
use crate::torrent::fetch::{self, Fetched, MagnetProgress};
use crate::torrent::task::{self, Cmd, Exit};
use crate::torrent::{Env, Services, TorrentShared, TorrentStatus};
use crate::types::InfoHash;
use crate::utp::{UtpSocket, UtpStream};
use crate::wallclock::now_unix;
use entry::{Entry, Fetching, MagnetEntry, StatusSource, TorrentEntry};
use registry::{Registry, SlotEvent, Slots};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use labels::{check_name, AddOptions, LabelChange};
pub use listener::AcceptBackoff;
pub use outcome::{CommandOutcome, ErrorKind, Named, Reannounce, Removed, SessionError};

/// How long `pause` and `resume` wait to report the state reached.
const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Session {
    pub env: Arc<Env>,
    registry: Registry,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Torrents that asked to be removed (a seeding limit with `remove`).
    removals: mpsc::UnboundedSender<InfoHash>,
    /// Magnets whose metadata arrived.
    fetched: mpsc::UnboundedSender<Fetched>,
    /// The known tags; also held while a torrent's tags or limits change,
    /// so that changes are saved one at a time.
    tags: tokio::sync::Mutex<tags::TagBook>,
}

impl Session {
    /// `registry`, locked.
    fn registry(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.registry.lock()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    AlreadyManaged,
    /// Not added, for the reason given (its files would be another's).
    Refused(String),
}

/// Who adds a torrent: the user, or a magnet whose metadata arrived (which
/// must still be there, or it was removed meanwhile).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    User,
    Fetched,
}

impl Session {
    /// The info hash whose HASH('req2', ·) is `req2`: how an encrypted
    /// incoming connection names its torrent (or magnet). One look-up in
    /// the registry's index.
    pub fn find_req2(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self.registry().find_req2(req2).map(|h| h.0)
    }

    /// Binds the listener, restores the torrents in `state_dir`, and starts them.
    pub async fn start(config: Arc<Config>) -> anyhow::Result<Arc<Session>> {
        let dirs: Vec<_> = [
            ("download folder", config.paths.download_dir.clone(), "download_dir"),
            ("incomplete folder", config.paths.incomplete_dir.clone(), "incomplete_dir"),
            ("state folder", config.paths.state_dir.clone(), "state_dir"),
        ]
        .into_iter()
        .filter(|(_, d, _)| !d.as_os_str().is_empty())
        .collect();
        tokio::task::spawn_blocking(move || {
            dirs.iter().try_for_each(|(what, d, key)| {
                crate::startup::create_folder(what, d, key).map(drop).map_err(|e| anyhow::anyhow!(e))
            })
        })
        .await??;
        let ip: IpAddr = config.network.listen_address.parse()?;
        let listener = listener::bind(ip, config.network.listen_port).await?;
        let listen_port = listener.local_addr()?.port();
        tracing::info!(port = listen_port, "listening for peers");
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let hooks = HookRunner::start(config.hooks.max_running, &tasks, cancel.clone());
        let udp = udp_side(&config, ip, listen_port).await;
        let env = Arc::new(make_env(config, listen_port, hooks, udp.dht, udp.utp).await?);
        let (removals, removal_rx) = mpsc::unbounded_channel();
        let (fetched, fetched_rx) = mpsc::unbounded_channel();
        let dir = env.state_dir().to_path_buf();
        let book = tokio::task::spawn_blocking(move || tags::TagBook::load(&dir)).await.unwrap_or_default();
        let tags = tokio::sync::Mutex::new(book);
        // What the announce book keeps of a torrent goes with its slot.
        let book = env.clone();
        let registry = Registry::new(move |event| match event {
            SlotEvent::Entered(hash) => book.announces().unretire(&hash),
            SlotEvent::Left(hash) => book.announces().retire(hash, now_unix()),
        });
        let session = Arc::new(Session { env, registry, cancel, tasks, removals, fetched, tags });
        let weak = Arc::downgrade(&session);
        let sources: crate::torrent::MatchSources =
            Box::new(move || weak.upgrade().map(|s| s.all_torrents()).unwrap_or_default());
        session.env.set_match_sources(sources);
        let state_dir = session.env.state_dir().to_path_buf();
        let journaled = tokio::task::spawn_blocking(move || crate::tracker::journal::Journal::read(&state_dir));
        session.env.announces().recall(journaled.await.unwrap_or_default());
        session.restore().await;
        session.env.announces().restoring_done();
        session.env.metrics().start_counting(&session.statuses());
        session.tasks.spawn(listener::accept_loop(session.clone(), listener, udp.incoming));
        let (book, http) = (session.env.announces().clone(), session.env.http().clone());
        session.tasks.spawn(crate::tracker::scrape::run(book, http, session.cancel.clone()));
        session.tasks.spawn(housekeeping(Arc::downgrade(&session), removal_rx, fetched_rx, session.cancel.clone()));
        Ok(session)
    }

    pub fn listen_port(&self) -> u16 {
        self.env.listen_port()
    }

    async fn restore(self: &Arc<Self>) {
        let dir = self.env.state_dir().to_path_buf();
        let found = tokio::task::spawn_blocking(move || restore::scan(&dir)).await.unwrap_or_default();
        let mut torrents = 0;
        for item in found {
            match item {
                restore::Restored::Torrent(meta, mut record) => {
                    if let Some(p) = record.place.as_mut().filter(|p| p.dir.as_os_str().is_empty()) {
                        p.dir = self.env.download_dir().to_path_buf();
                    }
                    // Saved before places knew their category folder is derived.
                    let (root, sub) = self.env.config().complete_folder(&record.category);
                    for p in record.place.iter_mut().chain(record.moving.iter_mut()) {
                        p.learn_sub(&root, &sub);
                    }
                    // Torrents seeding shared data (cross-seeding) share a name by design.
                    let owner = name_owner(&self.registry(), &meta.name);
                    if let Some(other) = owner.filter(|_| !record.borrowed) {
                        // Saved by a version that let two torrents share files.
                        tracing::warn!(torrent = %meta.name, hash = %meta.info_hash.short(), other = %other.short(),
                            "not started: its files would be another torrent's; remove one of the two");
                        continue;
                    }
                    torrents += 1;
                    // Restored, not added: no `on_added` hook.
                    self.start_torrent(Arc::new(*meta), *record);
                }
                restore::Restored::Magnet(magnet, paused, announce, opts) => {
                    self.env.announces().restore(magnet.info_hash, announce);
                    self.start_magnet(magnet, paused, *opts)
                }
            }
        }
        if torrents > 0 {
            tracing::info!(torrents, "restored torrents from state");
        }
        self.env.restored().send_replace(true);
    }

    /// Spawns a torrent's task and puts it in the registry.
    fn start_torrent(self: &Arc<Self>, meta: Arc<Metainfo>, record: ResumeRecord) -> Arc<TorrentShared> {
        let hash = meta.info_hash;
        let shared = TorrentShared::new(meta, self.env.clone(), record);
        let (cmd, cmd_rx) = flume::bounded(32);
        let cancel = self.cancel.child_token();
        let removals = self.removals.clone();
        // Spawned under the registry's lock, so that nothing the task does
        // can find its entry missing.
        let mut registry = self.registry();
        let span = crate::logfmt::torrent_span(&shared.meta().name, &hash);
        let task = self.tasks.spawn({
            let (shared, cancel) = (shared.clone(), cancel.clone());
            async move {
                let exit = task::run(shared, cmd_rx, cancel).await;
                if exit == Exit::RemoveRequested {
                    let _ = removals.send(hash);
                }
                exit
            }
            .instrument(span)
        });
        registry.insert(hash, Entry::Torrent(TorrentEntry { shared: shared.clone(), cmd, cancel, task }));
        shared
    }

    /// Puts a magnet in the registry, fetching unless paused.
    fn start_magnet(self: &Arc<Self>, magnet: Magnet, paused: bool, opts: AddOptions) {
        let hash = magnet.info_hash;
        // Spawned under the registry's lock: a fetch can finish within a
        // millisecond, and its metadata must find the magnet in place.
        let mut registry = self.registry();
        let fetch = (!paused).then(|| self.spawn_fetch(&magnet));
        registry.insert(hash, Entry::Magnet(MagnetEntry { magnet, fetch, error: None, opts: Box::new(opts) }));
    }

    fn spawn_fetch(self: &Arc<Self>, magnet: &Magnet) -> Fetching {
        let progress = Arc::new(MagnetProgress::default());
        let (incoming, incoming_rx) = mpsc::channel(8);
        let cancel = self.cancel.child_token();
        let (m, env, p, c, done) =
            (magnet.clone(), self.env.clone(), progress.clone(), cancel.clone(), self.fetched.clone());
        let span = crate::logfmt::torrent_span(&magnet.display_name(), &magnet.info_hash);
        let task = self.tasks.spawn(
            async move {
                if let Some(f) = fetch::run(m, env, p, incoming_rx, c).await {
                    let _ = done.send(f);
                }
            }
            .instrument(span),
        );
        Fetching { progress, incoming, cancel, task }
    }

    /// Adds a torrent; persisted before it starts, so a crash right after
    /// still knows it. A magnet of the same torrent still fetching is dropped.
    pub async fn add_metainfo(self: &Arc<Self>, meta: Metainfo) -> std::io::Result<AddOutcome> {
        self.add_metainfo_in(meta, "").await
    }

    /// Adds a torrent in `category` ("" for none).
    pub async fn add_metainfo_in(self: &Arc<Self>, meta: Metainfo, category: &str) -> std::io::Result<AddOutcome> {
        self.add_metainfo_with(meta, AddOptions { category: category.to_string(), ..Default::default() }).await
    }

    /// Adds a torrent with a category, tags and share limits (the API's add).
    pub async fn add_metainfo_with(self: &Arc<Self>, meta: Metainfo, opts: AddOptions) -> std::io::Result<AddOutcome> {
        if let Err(e) = self.create_tags(&opts.tags).await {
            return Ok(AddOutcome::Refused(e.to_string()));
        }
        self.add_torrent(meta, Vec::new(), Origin::User, opts, None).await
    }

    /// Adds a torrent whose data is already in the folder `save` (inside
    /// dropseed's folders or `[api] allowed_paths`): it seeds from it in
    /// place, read-only, once every piece is verified (cross-seeding). A
    /// `save` that is the category's own folder, without the data there,
    /// is an ordinary add.
    pub async fn add_metainfo_at(
        self: &Arc<Self>,
        meta: Metainfo,
        opts: AddOptions,
        save: PathBuf,
    ) -> std::io::Result<AddOutcome> {
        let (config, cat, name) = (self.env.config(), opts.category.clone(), meta.name.clone());
        let downloading = shared::downloading_named(&self.registry(), &name);
        let found = tokio::task::spawn_blocking(move || {
            let at = shared::save_path_place(&config, &save, &cat, &name)?;
            at.iter().try_for_each(|place| shared::downloading_here(place, &downloading))?;
            Ok(at)
        })
        .await
        .map_err(std::io::Error::other)?;
        let at = match found {
            Err(why) => return Ok(AddOutcome::Refused(why)),
            Ok(at) => at,
        };
        if let Err(e) = self.create_tags(&opts.tags).await {
            return Ok(AddOutcome::Refused(e.to_string()));
        }
        self.add_torrent(meta, Vec::new(), Origin::User, opts, at).await
    }

    /// Every torrent (not the magnets), for cross-seed matching.
    fn all_torrents(&self) -> Vec<Arc<TorrentShared>> {
        let registry = self.registry();
        registry
            .values()
            .filter_map(|e| match e {
                Entry::Torrent(t) => Some(t.shared.clone()),
                _ => None,
            })
            .collect()
    }

    /// The other torrents seeding `hash`'s data (the same files).
    pub fn sharing(&self, hash: &InfoHash) -> Vec<InfoHash> {
        // Indexed: no other torrent is looked at.
        self.env.shares().others(hash)
    }

    async fn add_torrent(
        self: &Arc<Self>,
        meta: Metainfo,
        peers: Vec<SocketAddr>,
        origin: Origin,
        opts: AddOptions,
        mut at: Option<Place>,
    ) -> std::io::Result<AddOutcome> {
        let hash = meta.info_hash;
        let (reservation, replaced) = {
            let mut registry = self.registry();
            let fresh = matches!((registry.get(&hash), origin), (Some(Entry::Magnet(_)), _) | (None, Origin::User));
            if !fresh {
                return Ok(AddOutcome::AlreadyManaged);
            }
            // Another torrent's files under this name: seeded from, never written.
            match &at {
                None => match shared::borrowable(&registry, &meta.name) {
                    Err(why) => return Ok(AddOutcome::Refused(why)),
                    Ok(place) => at = place,
                },
                Some(place) => {
                    if let Err(why) = shared::owner_downloading(&registry, place) {
                        return Ok(AddOutcome::Refused(why));
                    }
                }
            }
            self.registry.reserve(&mut registry, hash, Some(meta.name.clone()))
        };
        let mut magnet = match replaced {
            Some(Entry::Magnet(m)) => Some(m),
            _ => None,
        };
        // Metadata that arrives just after the user paused the magnet makes
        // a paused torrent.
        let paused = magnet.as_ref().is_some_and(|m| m.fetch.is_none());
        // A magnet's torrent keeps the magnet's category, tags and limits.
        let opts = magnet.as_ref().map_or(opts, |m| (*m.opts).clone());
        if let Some(m) = magnet.as_mut() {
            m.stop_fetch().await;
        }
        let record = ResumeRecord {
            name: meta.name.clone(),
            added_at: now_unix(),
            peers: peers.iter().map(|p| p.to_string()).collect(),
            hold: if paused { resume::Hold::Paused } else { resume::Hold::Running },
            category: opts.category,
            tags: opts.tags,
            share: opts.share,
            shown_name: opts.name,
            borrowed: at.is_some(),
            // Made in the torrent's checking (torrent::matching), not here.
            match_pending: at.is_none() && matching_on(&self.env.config()),
            place: at,
            ..Default::default()
        };
        let meta = Arc::new(meta);
        let (dir, m, r) = (self.env.state_dir().to_path_buf(), meta.clone(), record.clone());
        let saved =
            tokio::task::spawn_blocking(move || persist_torrent(&dir, &m, &r)).await.map_err(std::io::Error::other);
        match saved.and_then(|r| r) {
            Ok(()) => {
                let borrowed = record.borrowed;
                let shared = self.start_torrent(meta, record);
                if borrowed {
                    let matched =
                        self.sharing(&hash).iter().map(|h| h.short().to_string()).collect::<Vec<_>>().join(",");
                    tracing::info!(torrent = %shared.name(), hash = %hash.short(), matched = %matched,
                        path = %shared.data_path().display(), "seeding data already there once every piece is verified");
                }
                // A magnet's metadata arriving is not a new add: its hook ran.
                if origin == Origin::User {
                    shared.run_hook(HookEvent::Added);
                }
                Ok(AddOutcome::Added)
            }
            Err(e) => {
                match magnet {
                    // The magnet stays, paused, saying why.
                    Some(mut m) => {
                        m.error = Some(format!("cannot save the metadata: {e}"));
                        reservation.commit(Entry::Magnet(m));
                    }
                    // Dropped: the slot is free again.
                    None => drop(reservation),
                }
                Err(e)
            }
        }
    }

    /// A magnet's metadata arrived: it becomes a torrent like any other.
    async fn metadata_arrived(self: &Arc<Self>, f: Fetched) {
        let (hash, name) = (f.meta.info_hash, f.meta.name.clone());
        match self.add_torrent(f.meta, f.peers, Origin::Fetched, AddOptions::default(), None).await {
            Ok(AddOutcome::Added) => {
                tracing::info!(torrent = %name, hash = %hash.short(), "metadata received; starting the torrent")
            }
            Ok(AddOutcome::AlreadyManaged) => {}
            Ok(AddOutcome::Refused(why)) => self.magnet_failed(&hash, &name, why),
            Err(e) => {
                tracing::warn!(torrent = %name, hash = %hash.short(), error = %e, "cannot save the fetched metadata")
            }
        }
    }

    /// A magnet's metadata cannot become a torrent: it stays, in error.
    fn magnet_failed(&self, hash: &InfoHash, name: &str, why: String) {
        tracing::warn!(torrent = %name, hash = %hash.short(), reason = %why, "cannot start the torrent of this magnet");
        if let Some(Entry::Magnet(m)) = self.registry().get_mut(hash) {
            m.error = Some(why);
        }
    }

    /// Records a magnet; it waits in state `metadata` for its metadata.
    pub async fn add_magnet(self: &Arc<Self>, magnet: Magnet) -> std::io::Result<AddOutcome> {
        self.add_magnet_in(magnet, "").await
    }

    /// Adds a magnet in `category` ("" for none).
    pub async fn add_magnet_in(self: &Arc<Self>, magnet: Magnet, category: &str) -> std::io::Result<AddOutcome> {
        self.add_magnet_with(magnet, AddOptions { category: category.to_string(), ..Default::default() }).await
    }

    /// Adds a magnet with a category, tags and share limits, which the
    /// torrent it becomes keeps.
    pub async fn add_magnet_with(self: &Arc<Self>, magnet: Magnet, opts: AddOptions) -> std::io::Result<AddOutcome> {
        if let Err(e) = self.create_tags(&opts.tags).await {
            return Ok(AddOutcome::Refused(e.to_string()));
        }
        let hash = magnet.info_hash;
        let reservation = {
            let mut registry = self.registry();
            if registry.contains_key(&hash) {
                return Ok(AddOutcome::AlreadyManaged);
            }
            self.registry.reserve(&mut registry, hash, None).0
        };
        match save_magnet(self.env.state_dir(), &magnet, false, &opts).await {
            Ok(()) => {
                let facts = Facts {
                    hash: hash.hex(),
                    name: magnet.display_name(),
                    path: Default::default(),
                    category: opts.category.clone(),
                    size: None,
                };
                self.env.hooks().fire(&self.env.config(), HookEvent::Added, facts);
                self.start_magnet(magnet, false, opts);
                drop(reservation);
                Ok(AddOutcome::Added)
            }
            // The reservation, dropped, frees the slot.
            Err(e) => Err(e),
        }
    }

    pub fn statuses(&self) -> Vec<TorrentStatus> {
        let sources: Vec<StatusSource> = {
            let registry = self.registry();
            registry.iter().filter_map(|(hash, e)| e.status_source(hash)).collect()
        };
        let mut files = HashMap::new();
        let mut out: Vec<TorrentStatus> = sources
            .into_iter()
            .map(|s| match s {
                StatusSource::Torrent(shared) => {
                    files.insert(shared.meta().info_hash.hex(), shared::inodes(&shared));
                    shared.status()
                }
                StatusSource::Ready(status) => self.magnet_status(*status),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.info_hash.cmp(&b.info_hash)));
        shared::fill_shared_with(&mut out, &files);
        out
    }

    /// A magnet's status with the share limits that will hold for its torrent.
    fn magnet_status(&self, mut status: TorrentStatus) -> TorrentStatus {
        let config = self.env.config().seeding_limits(&status.category);
        status.limits.effective = status.limits.own.effective(config);
        status
    }

    fn with_shares(&self, hash: &InfoHash, mut status: TorrentStatus) -> TorrentStatus {
        status.shared_with = self.sharing(hash).iter().map(InfoHash::hex).collect();
        status
    }

    /// The status of one torrent or magnet, without building every other's.
    pub fn status_of(&self, hash: &InfoHash) -> Option<TorrentStatus> {
        let source = self.registry().get(hash)?.status_source(hash)?;
        Some(match source {
            StatusSource::Torrent(shared) => self.with_shares(hash, shared.status()),
            StatusSource::Ready(status) => self.magnet_status(*status),
        })
    }

    /// One torrent's shared state (its metainfo, pieces, counters), for a
    /// detail of that torrent alone; none for a magnet or a stranger.
    pub fn torrent(&self, hash: &InfoHash) -> Option<Arc<TorrentShared>> {
        match self.registry().get(hash)? {
            Entry::Torrent(t) => Some(t.shared.clone()),
            _ => None,
        }
    }

    /// One torrent's status with its files and peers (`dropseed top`'s
    /// detail view); a magnet has no files yet and an empty detail.
    pub fn detail_of(&self, hash: &InfoHash) -> Option<(TorrentStatus, crate::torrent::detail::TorrentDetail)> {
        let source = self.registry().get(hash)?.status_source(hash)?;
        Some(match source {
            StatusSource::Torrent(shared) => (self.with_shares(hash, shared.status()), shared.detail()),
            StatusSource::Ready(status) => (self.magnet_status(*status), Default::default()),
        })
    }

    /// Finds a torrent by name, name prefix or hash (see `lookup`), reading
    /// only names and hashes: no torrent's status is built.
    pub fn find(&self, id: &str) -> Result<InfoHash, SessionError> {
        let registry = self.registry();
        let named: Vec<(String, InfoHash)> =
            registry.iter().filter_map(|(hash, e)| Some((e.display_name()?, *hash))).collect();
        drop(registry);
        let hexes: Vec<String> = named.iter().map(|(_, h)| h.hex()).collect();
        let all: Vec<lookup::Candidate> =
            named.iter().zip(&hexes).map(|((name, _), hex)| lookup::Candidate { name, hash: hex }).collect();
        lookup::find(id, &all).map(|i| named[i].1)
    }

    /// The torrent or magnet of `hash` as replies name it.
    fn named(&self, hash: &InfoHash) -> Result<Named, SessionError> {
        let registry = self.registry();
        match registry.get(hash) {
            None => Err(not_managed(hash)),
            Some(e) => e.display_name().map(|name| Named { name, hash: *hash }).ok_or(SessionError::Busy(*hash)),
        }
    }

    /// Pause, resume or recheck, for torrents and magnets alike. A pause or
    /// resume answers with the state the torrent reached.
    pub async fn command(self: &Arc<Self>, hash: InfoHash, cmd: Cmd) -> Result<CommandOutcome, SessionError> {
        let torrent = match self.registry().get(&hash) {
            Some(Entry::Torrent(t)) => Some((t.cmd.clone(), t.shared.clone())),
            Some(Entry::Magnet(_)) => None,
            Some(Entry::Reserved(_)) => return Err(SessionError::Busy(hash)),
            None => return Err(not_managed(&hash)),
        };
        let Some((sender, shared)) = torrent else {
            return self.magnet_command(&hash, cmd).await;
        };
        let named = Named { name: shared.name().to_string(), hash };
        let pause = match cmd {
            Cmd::Pause => true,
            Cmd::Resume => false,
            _ => {
                sender.send_async(cmd).await.map_err(|_| SessionError::Gone(hash))?;
                return Ok(CommandOutcome::Rechecking(named));
            }
        };
        use crate::torrent::TorrentState::{Error, Missing, Paused, Stopped};
        let before = shared.status().state;
        match (pause, before) {
            (true, Paused | Stopped) => return Ok(CommandOutcome::AlreadyPaused(named, before)),
            (false, Paused | Stopped | Missing | Error) => {}
            (false, _) => return Ok(CommandOutcome::NotPaused(named, before)),
            (true, _) => {}
        }
        // Subscribed before the command goes, so its phase change is seen.
        let mut changes = shared.phase_changes();
        sender.send_async(cmd).await.map_err(|_| SessionError::Gone(hash))?;
        let deadline = tokio::time::Instant::now() + STATE_WAIT;
        loop {
            let changed = tokio::time::timeout_at(deadline, changes.changed()).await;
            let state = shared.status().state;
            match changed {
                // A resume reports the first state after it (checking,
                // queued, downloading...); a pause waits for the hold.
                Ok(Ok(())) if !pause || matches!(state, Paused | Stopped) => {
                    return Ok(CommandOutcome::Reached(named, state))
                }
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Ok(CommandOutcome::RemovedMeanwhile(named)),
                Err(_) => return Ok(CommandOutcome::UnderWay { torrent: named, state, pausing: pause }),
            }
        }
    }

    /// Pause and resume of a magnet still fetching; it has nothing to check.
    async fn magnet_command(self: &Arc<Self>, hash: &InfoHash, cmd: Cmd) -> Result<CommandOutcome, SessionError> {
        use crate::torrent::TorrentState::{Metadata, Paused};
        // What changes nothing is answered without taking the entry out.
        let (fetching, named) = match self.registry().get(hash) {
            Some(Entry::Magnet(m)) => (m.fetch.is_some(), Named { name: m.magnet.display_name(), hash: *hash }),
            _ => return Err(SessionError::Busy(*hash)),
        };
        match (&cmd, fetching) {
            (Cmd::Pause, false) => return Ok(CommandOutcome::AlreadyPaused(named, Paused)),
            (Cmd::Resume, true) => return Ok(CommandOutcome::NotPaused(named, Metadata)),
            (Cmd::Pause | Cmd::Resume, _) => {}
            _ => return Err(SessionError::NotApplicable(named, "has no data to check until its metadata arrives")),
        }
        let (reservation, mut m) = match self.registry.take(hash) {
            Some((reservation, Entry::Magnet(m))) => (reservation, m),
            // Became a torrent meanwhile (its metadata arrived): put back.
            Some((reservation, other)) => {
                reservation.commit(other);
                return Err(SessionError::Busy(*hash));
            }
            None => return Err(SessionError::Busy(*hash)),
        };
        let io = |e: std::io::Error| SessionError::Io(e.to_string());
        if matches!(cmd, Cmd::Pause) {
            m.stop_fetch().await;
            let r = save_magnet(self.env.state_dir(), &m.magnet, true, &m.opts).await;
            tracing::info!(torrent = %named.name, hash = %hash.short(), "paused");
            reservation.commit(Entry::Magnet(m));
            return r.map(|_| CommandOutcome::Reached(named, Paused)).map_err(io);
        }
        let r = save_magnet(self.env.state_dir(), &m.magnet, false, &m.opts).await;
        tracing::info!(torrent = %named.name, hash = %hash.short(), "resumed");
        let mut registry = self.registry();
        m.error = None;
        m.fetch = Some(self.spawn_fetch(&m.magnet));
        reservation.commit_in(&mut registry, Entry::Magnet(m));
        r.map(|_| CommandOutcome::Reached(named, Metadata)).map_err(io)
    }

    /// Forces a torrent's start (a download slot outside the queue's
    /// limit, kept in its record), or clears the force. It does not resume
    /// a held torrent: `command(Resume)` does. A magnet fetching its
    /// metadata has no slot to force: nothing changes.
    pub async fn set_force_start(&self, hash: InfoHash, forced: bool) -> Result<(), SessionError> {
        let Some(t) = self.torrent(&hash) else {
            return self.registry().get(&hash).map(|_| ()).ok_or_else(|| not_managed(&hash));
        };
        if t.with_record(|r| r.force_start) != forced {
            t.set_force_start(forced);
            t.save_resume(false).await;
        }
        Ok(())
    }

    /// Removes a torrent (and with `delete_data`, its files).
    pub async fn remove(&self, hash: InfoHash, delete_data: bool) -> Result<Removed, SessionError> {
        let named = self.named(&hash)?;
        // The slot stays reserved until the reservation drops at the end.
        let (_reservation, entry) = self.registry.take(&hash).ok_or(SessionError::Busy(hash))?;
        let dir = self.env.state_dir().to_path_buf();
        let result = match entry {
            Entry::Magnet(mut m) => {
                m.stop_fetch().await;
                let paths = [resume::magnet_path(&dir, &hash), resume::resume_path(&dir, &hash)];
                let _ = tokio::task::spawn_blocking(move || paths.map(std::fs::remove_file)).await;
                Ok(Removed { torrent: named, data_deleted: false, kept: None })
            }
            Entry::Torrent(t) => {
                let shared = t.shared.clone();
                t.stop().await;
                self.forget_torrent(&shared, delete_data).await
            }
            Entry::Reserved(_) => Err(SessionError::Busy(hash)),
        };
        // After the task stopped: one reaching its queue meanwhile would
        // have joined it again.
        self.env.queue().leave(&hash);
        self.env.queue().set_forced(hash, false);
        result
    }

    /// Wakes a torrent's announce loop; the pace still decides when it
    /// announces, and the reply says when that is.
    pub fn reannounce(&self, hash: InfoHash) -> Result<Reannounce, SessionError> {
        let named = self.named(&hash)?;
        let announcing = |t: &TorrentStatus| {
            use crate::torrent::TorrentState::{Downloading, Moving, Seeding};
            matches!(t.state, Downloading | Seeding | Moving) && !t.trackers.is_empty()
        };
        if !self.status_of(&hash).is_some_and(|t| announcing(&t)) {
            return Err(SessionError::NotApplicable(
                named,
                "is not announcing (paused, queued, checking, or no tracker)",
            ));
        }
        let book = self.env.announces();
        let now = now_unix();
        let at = book.get(hash).pace(crate::tracker::http::Event::None, now);
        book.waker(hash).notify_one();
        Ok(if at > now { Reannounce::In(named, at - now) } else { Reannounce::Now(named) })
    }

    /// Deletes a stopped torrent's state files, and its data if asked.
    async fn forget_torrent(&self, shared: &Arc<TorrentShared>, delete_data: bool) -> Result<Removed, SessionError> {
        let (dir, hash, name) =
            (self.env.state_dir().to_path_buf(), shared.meta().info_hash, shared.name().to_string());
        let _ = tokio::task::spawn_blocking(move || {
            for p in [resume::torrent_path(&dir, &hash), resume::resume_path(&dir, &hash)] {
                let _ = std::fs::remove_file(p);
            }
        })
        .await;
        self.env.shares().forget(&hash);
        let torrent = Named { name: name.clone(), hash };
        let mut kept = None;
        if delete_data {
            let others = shared::others(&self.registry(), &hash);
            let (s, place) = (shared.clone(), shared.place());
            let (recorded, borrowed) = shared.with_record(|r| (r.stamps.clone(), r.borrowed));
            let r = self.env.disk().run(move || {
                let _no_move_under_way = s.hold_moves();
                // Borrowed data is the torrent's only once every piece of
                // it verified: until then nothing of it goes.
                if borrowed && !s.is_complete() {
                    return Ok(Deleted { removed: 0, kept: vec![(place.top(), Kept::NotVerified)] });
                }
                // Files other torrents seed are kept (cross-seeding).
                let in_use = shared::files_in_use(&place, &others);
                // Only files proven the torrent's go: those it has open, or
                // after a restart, those its record stamped (older records:
                // regular files of the right length, reached without a link).
                let stamps = s.storage().map(|st| st.stamps()).unwrap_or(recorded);
                let expect = if stamps.is_empty() { Expect::Length } else { Expect::Stamps(&stamps) };
                delete_files_unused(s.meta(), &place, &expect, &in_use)
            });
            match r.await {
                Ok(Err(e)) => return Err(SessionError::DataLeft { torrent, why: e.to_string() }),
                Ok(Ok(done)) if !done.kept.is_empty() => {
                    tracing::warn!(torrent = %name, hash = %hash.short(), "deleting the data{}", done.kept_note());
                    kept = Some(done);
                }
                _ => {}
            }
        }
        tracing::info!(torrent = %name, hash = %hash.short(), delete_data, "removed");
        Ok(Removed { torrent, data_deleted: delete_data, kept })
    }

    /// Replaces the live configuration (SIGHUP); limits apply from the next
    /// use, paths and ports need a restart.
    pub fn set_config(&self, config: Arc<Config>) {
        self.env.download_limit().set_rate(config.limits.download_rate.0);
        self.env.upload_limit().set_rate(config.limits.upload_rate.0);
        self.env.queue().set_limit(config.limits.max_active_downloads);
        self.env.set_config(config);
    }

    /// Stops every task (each torrent announces `stopped` and saves its
    /// state), then the DHT, LSD and the disk pool.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(utp) = &self.env.utp() {
            utp.shut_down().await;
        }
        if let Some(dht) = &self.env.dht() {
            dht.shutdown().await;
        }
        if let Some(lsd) = &self.env.lsd() {
            lsd.shutdown().await;
        }
        let disk = self.env.disk().clone();
        let _ = tokio::task::spawn_blocking(move || disk.shutdown()).await;
    }
}

/// The listen port's UDP side: the DHT node and uTP, sharing one socket.
struct UdpSide {
    dht: Option<Arc<crate::dht::Dht>>,
    utp: Option<Arc<UtpSocket>>,
    incoming: Option<mpsc::Receiver<UtpStream>>,
}

async fn udp_side(config: &Config, ip: IpAddr, listen_port: u16) -> UdpSide {
    let mut side = UdpSide { dht: None, utp: None, incoming: None };
    let mut shared_v4 = None;
    if config.network.utp != crate::config::Utp::Disable {
        match crate::dht::family::bind_addresses(ip, false).0 {
            Some(v4) => match crate::dht::bind_v4(v4, listen_port).await {
                Ok(udp) => {
                    let udp = Arc::new(udp);
                    let port = udp.local_addr().map_or(0, |a| a.port());
                    if port != listen_port {
                        tracing::warn!(port, listen_port, "the UDP port is taken: uTP dials out only");
                    }
                    let (to_dht, inbox) = mpsc::channel(crate::utp::OTHER_QUEUE);
                    let (utp, incoming) = UtpSocket::start(udp.clone(), config.dht.enabled.then_some(to_dht));
                    (side.utp, side.incoming) = (Some(utp), Some(incoming));
                    shared_v4 = Some(crate::dht::Bound { socket: udp, inbox: Some(inbox) });
                }
                Err(e) => tracing::warn!(error = %e, port = listen_port, "cannot bind the UDP port; no uTP"),
            },
            None => tracing::warn!(address = %ip, "uTP runs over IPv4 only: no uTP on this listen address"),
        }
    }
    if config.dht.enabled {
        let dir = &config.paths.state_dir;
        match crate::dht::Dht::start(ip, listen_port, dir, &config.dht, shared_v4).await {
            Ok(d) => side.dht = Some(d),
            Err(e) => tracing::warn!(error = %e, port = listen_port, "cannot start the DHT; trackers and PEX only"),
        }
    }
    side
}

async fn make_env(
    config: Arc<Config>,
    listen_port: u16,
    hooks: HookRunner,
    dht: Option<Arc<crate::dht::Dht>>,
    utp: Option<Arc<UtpSocket>>,
) -> anyhow::Result<Env> {
    let lsd = if config.lsd.enabled {
        let interface = config.lsd_interface();
        match crate::lsd::Lsd::start(interface, listen_port) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, %interface, "cannot start local service discovery; going on without it");
                None
            }
        }
    } else {
        None
    };
    let (limit, order) = (config.limits.max_active_downloads, config.paths.state_dir.join("queue"));
    let queue =
        tokio::task::spawn_blocking(move || crate::torrent::queue::DownloadQueue::new(limit, Some(order))).await?;
    Env::new(config, listen_port, Services { dht, utp, lsd, hooks }, queue)
}

fn not_managed(hash: &InfoHash) -> SessionError {
    SessionError::NotFound(format!("no torrent has the hash {}", hash.hex()))
}

/// Removes torrents that asked to be removed, and turns fetched magnets
/// into torrents, one at a time.
async fn housekeeping(
    session: std::sync::Weak<Session>,
    mut removals: mpsc::UnboundedReceiver<InfoHash>,
    mut fetched: mpsc::UnboundedReceiver<Fetched>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(h) = removals.recv() => {
                if let Some(s) = session.upgrade() {
                    let _ = s.remove(h, false).await;
                }
            }
            Some(f) = fetched.recv() => {
                if let Some(s) = session.upgrade() {
                    s.metadata_arrived(f).await;
                }
            }
        }
    }
}

/// The torrent that writes the files of `name` (not one seeding them
/// shared): no two torrents may write one file, or one would overwrite the
/// other's data.
fn name_owner(registry: &HashMap<InfoHash, Entry>, name: &str) -> Option<InfoHash> {
    registry.iter().find(|(_, e)| e.claimed_name() == Some(name) && !e.is_borrowed()).map(|(h, _)| *h)
}

/// Whether `[cross_seed]` asks for automatic matching.
fn matching_on(config: &crate::config::Config) -> bool {
    use crate::config::{LinkMode, MatchMode};
    config.cross_seed.matching != MatchMode::Off && config.cross_seed.link != LinkMode::Off
}

/// Writes a new torrent's metainfo and first record, and drops its magnet.
fn persist_torrent(dir: &Path, meta: &Metainfo, record: &ResumeRecord) -> std::io::Result<()> {
    let hash = meta.info_hash;
    crate::fsutil::write_atomic(&resume::torrent_path(dir, &hash), &meta.to_torrent_bytes())?;
    record.save(dir, &hash)?;
    match std::fs::remove_file(resume::magnet_path(dir, &hash)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A magnet in `state_dir`: its URI, and a `# paused` line while paused.
async fn save_magnet(state_dir: &Path, magnet: &Magnet, paused: bool, opts: &AddOptions) -> std::io::Result<()> {
    let mut text = format!("{}\n{}", magnet.to_uri(), if paused { restore::PAUSED_MARK } else { "" });
    text.push_str(&restore::option_marks(opts));
    let path = resume::magnet_path(state_dir, &magnet.info_hash);
    tokio::task::spawn_blocking(move || crate::fsutil::write_atomic(&path, text.as_bytes()))
        .await
        .map_err(std::io::Error::other)?
}
