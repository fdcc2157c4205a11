//! The session: every torrent of the daemon, the TCP listener that routes
//! incoming peers to them by info hash, and the shared environment (peer id,
//! disk pool, HTTP client, connection and download budgets).
//!
//! It owns each torrent's task and stops them all on shutdown. Torrents are
//! persisted in `state_dir` as soon as they are added, and restored from it at
//! start in the state they had.

use crate::config::Config;
use crate::magnet::Magnet;
use crate::metainfo::Metainfo;
use crate::resume::{self, now_unix, ResumeRecord};
use crate::storage::disk::DiskPool;
use crate::torrent::fetch::{self, Fetched, IncomingPeer, MagnetProgress};
use crate::torrent::peer::{read_handshake, HANDSHAKE_TIMEOUT};
use crate::torrent::ratelimit::RateLimiter;
use crate::torrent::task::{self, Cmd, Exit};
use crate::torrent::{Env, TorrentShared, TorrentState, TorrentStatus};
use crate::types::{InfoHash, PeerId};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TorrentHandle {
    pub shared: Arc<TorrentShared>,
    cmd: mpsc::Sender<Cmd>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<Exit>>>,
}

/// A magnet whose metadata is still to come; `fetch` is `None` while the
/// user has it paused.
struct MagnetHandle {
    magnet: Magnet,
    fetch: Option<Fetching>,
}

/// The task fetching a magnet's metadata, and what the session sees of it.
struct Fetching {
    progress: Arc<MagnetProgress>,
    incoming: mpsc::Sender<IncomingPeer>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Fetching {
    /// Stops the task and waits for it.
    async fn stop(&self) {
        self.cancel.cancel();
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

pub struct Session {
    pub env: Arc<Env>,
    torrents: Mutex<HashMap<InfoHash, Arc<TorrentHandle>>>,
    /// Magnets whose metadata we do not have yet.
    magnets: Mutex<HashMap<InfoHash, Arc<MagnetHandle>>>,
    cancel: CancellationToken,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// The loop that removes torrents and turns fetched magnets into torrents.
    housekeeping: Mutex<Option<JoinHandle<()>>>,
    removals: mpsc::UnboundedSender<InfoHash>,
    fetched: mpsc::UnboundedSender<Fetched>,
    /// Tasks of magnets made obsolete by a .torrent, still winding down.
    retired: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    AlreadyManaged,
}

impl Session {
    /// Binds the listener, restores the torrents in `state_dir`, and starts them.
    pub async fn start(config: Arc<Config>) -> anyhow::Result<Arc<Session>> {
        for dir in [&config.paths.download_dir, &config.paths.state_dir] {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let ip: IpAddr = config.network.listen_address.parse()?;
        let port = config.network.listen_port;
        let listener = match TcpListener::bind(SocketAddr::new(ip, port)).await {
            Ok(l) => l,
            // A host without IPv6 still gets IPv4.
            Err(_) if ip.is_unspecified() && ip.is_ipv6() => TcpListener::bind(("0.0.0.0", port)).await?,
            Err(e) => return Err(anyhow::anyhow!("cannot listen on {ip} port {port}: {e}")),
        };
        let listen_port = listener.local_addr()?.port();
        tracing::info!(port = listen_port, "listening for peers");
        let dht = if config.dht.enabled {
            match crate::dht::Dht::start(ip, listen_port, &config.paths.state_dir, config.dht.bootstrap.clone()).await {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, port = listen_port, "cannot start the DHT; trackers and PEX only");
                    None
                }
            }
        } else {
            None
        };
        let env = Arc::new(Env {
            peer_id: PeerId::generate(),
            listen_port,
            disk: Arc::new(DiskPool::new(config.storage.disk_threads, 64)),
            http: reqwest::Client::builder().user_agent(concat!("dropseed/", env!("CARGO_PKG_VERSION"))).build()?,
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            download_slots: Arc::new(Semaphore::new(match config.limits.max_active_downloads {
                0 => Semaphore::MAX_PERMITS,
                n => n,
            })),
            queued: Default::default(),
            download_limit: RateLimiter::new(config.limits.download_rate.0),
            upload_limit: RateLimiter::new(config.limits.upload_rate.0),
            download_dir: config.paths.download_dir.clone(),
            state_dir: config.paths.state_dir.clone(),
            config: RwLock::new(config),
            dht,
        });
        let (removals, mut removal_rx) = mpsc::unbounded_channel();
        let (fetched, mut fetched_rx) = mpsc::unbounded_channel::<Fetched>();
        let session = Arc::new(Session {
            env,
            torrents: Mutex::new(HashMap::new()),
            magnets: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            listener: Mutex::new(None),
            housekeeping: Mutex::new(None),
            removals,
            fetched,
            retired: Mutex::new(Vec::new()),
        });
        session.restore();
        let s = session.clone();
        *session.listener.lock().unwrap() = Some(tokio::spawn(async move { s.accept_loop(listener).await }));
        // Torrents that asked to be removed (seeding limit with action=remove),
        // and magnets whose metadata arrived.
        let s = Arc::downgrade(&session);
        let cancel = session.cancel.clone();
        let housekeeping = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    Some(h) = removal_rx.recv() => {
                        if let Some(s) = s.upgrade() {
                            let _ = s.remove(&h.hex(), false).await;
                        }
                    }
                    Some(f) = fetched_rx.recv() => {
                        if let Some(s) = s.upgrade() {
                            s.metadata_arrived(f).await;
                        }
                    }
                }
            }
        });
        *session.housekeeping.lock().unwrap() = Some(housekeeping);
        Ok(session)
    }

    pub fn listen_port(&self) -> u16 {
        self.env.listen_port
    }

    fn restore(self: &Arc<Self>) {
        let dir = self.env.state_dir.clone();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let ext = path.extension().and_then(|x| x.to_str()).unwrap_or("");
            let result = match ext {
                "torrent" => std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| Metainfo::from_torrent_bytes(&b).map_err(|e| e.to_string()))
                    .map(|m| {
                        let record = ResumeRecord::load(&dir, &m.info_hash).unwrap_or_else(|e| {
                            tracing::warn!(file = %path.display(), error = %e, "resume record unreadable; the data will be rechecked");
                            None
                        });
                        self.spawn_torrent(Arc::new(m), record.unwrap_or_default());
                    }),
                "magnet" => std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| {
                    let paused = t.lines().any(|l| l.trim() == PAUSED_MARK.trim());
                    let m = crate::magnet::parse_file(&t)?.swap_remove(0);
                    if resume::torrent_path(&dir, &m.info_hash).exists() {
                        let _ = std::fs::remove_file(&path); // fetched just before a crash
                    } else if paused {
                        self.insert_paused_magnet(m);
                    } else {
                        self.spawn_magnet(m);
                    }
                    Ok(())
                }),
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(file = %path.display(), error = %e, "cannot restore torrent from state");
            }
        }
        let n = self.torrents.lock().unwrap().len();
        if n > 0 {
            tracing::info!(torrents = n, "restored torrents from state");
        }
    }

    fn spawn_torrent(self: &Arc<Self>, meta: Arc<Metainfo>, record: ResumeRecord) {
        let hash = meta.info_hash;
        let shared = TorrentShared::new(meta, self.env.clone(), record);
        let (cmd, cmd_rx) = mpsc::channel(32);
        let cancel = self.cancel.child_token();
        let removals = self.removals.clone();
        let task = tokio::spawn({
            let (shared, cancel) = (shared.clone(), cancel.clone());
            async move {
                let exit = task::run(shared, cmd_rx, cancel).await;
                if let Exit::RemoveRequested = exit {
                    let _ = removals.send(hash);
                }
                exit
            }
        });
        let handle = Arc::new(TorrentHandle { shared, cmd, cancel, task: Mutex::new(Some(task)) });
        self.torrents.lock().unwrap().insert(hash, handle);
    }

    /// Adds a torrent; persisted before it starts, so a crash right after
    /// still knows it. A magnet of the same torrent still fetching is dropped.
    pub fn add_metainfo(self: &Arc<Self>, meta: Metainfo) -> std::io::Result<AddOutcome> {
        self.add_metainfo_with_peers(meta, Vec::new())
    }

    fn add_metainfo_with_peers(
        self: &Arc<Self>,
        meta: Metainfo,
        peers: Vec<SocketAddr>,
    ) -> std::io::Result<AddOutcome> {
        let hash = meta.info_hash;
        if self.torrents.lock().unwrap().contains_key(&hash) {
            return Ok(AddOutcome::AlreadyManaged);
        }
        let dir = &self.env.state_dir;
        resume::write_atomic(&resume::torrent_path(dir, &hash), &meta.to_torrent_bytes())?;
        let record = ResumeRecord {
            name: meta.name.clone(),
            added_at: now_unix(),
            peers: peers.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        record.save(dir, &hash)?;
        let replaced = self.magnets.lock().unwrap().remove(&hash);
        if let Some(fetching) = replaced.as_ref().and_then(|m| m.fetch.as_ref()) {
            // Its task ends within seconds; shutdown still waits for it.
            fetching.cancel.cancel();
            let task = fetching.task.lock().unwrap().take();
            self.retired.lock().unwrap().extend(task);
        }
        let _ = std::fs::remove_file(resume::magnet_path(dir, &hash));
        self.spawn_torrent(Arc::new(meta), record);
        Ok(AddOutcome::Added)
    }

    /// A magnet's metadata arrived: it becomes a torrent like any other.
    async fn metadata_arrived(self: &Arc<Self>, f: Fetched) {
        let hash = f.meta.info_hash;
        let name = f.meta.name.clone();
        let magnet = self.magnets.lock().unwrap().get(&hash).cloned();
        let Some(magnet) = magnet else {
            return; // removed meanwhile
        };
        // The task sent what it fetched and is ending.
        let Some(fetching) = &magnet.fetch else { return };
        fetching.stop().await;
        match self.add_metainfo_with_peers(f.meta, f.peers) {
            Ok(_) => tracing::info!(torrent = %name, hash = %hash.hex(), "metadata received; starting the torrent"),
            Err(e) => {
                tracing::warn!(torrent = %name, error = %e, "cannot save the fetched metadata");
                *fetching.progress.error.lock().unwrap() = Some(format!("cannot save the metadata: {e}"));
            }
        }
    }

    fn spawn_magnet(self: &Arc<Self>, magnet: Magnet) {
        let hash = magnet.info_hash;
        let progress = Arc::new(MagnetProgress::default());
        let (incoming, incoming_rx) = mpsc::channel(8);
        let cancel = self.cancel.child_token();
        let task = tokio::spawn({
            let (m, env, p, c, done) =
                (magnet.clone(), self.env.clone(), progress.clone(), cancel.clone(), self.fetched.clone());
            async move {
                if let Some(f) = fetch::run(m, env, p, incoming_rx, c).await {
                    let _ = done.send(f);
                }
            }
        });
        let fetch = Fetching { progress, incoming, cancel, task: Mutex::new(Some(task)) };
        self.magnets.lock().unwrap().insert(hash, Arc::new(MagnetHandle { magnet, fetch: Some(fetch) }));
    }

    fn insert_paused_magnet(&self, magnet: Magnet) {
        if self.torrents.lock().unwrap().contains_key(&magnet.info_hash) {
            return; // the metadata arrived as it was being paused
        }
        self.magnets.lock().unwrap().insert(magnet.info_hash, Arc::new(MagnetHandle { magnet, fetch: None }));
    }

    /// Pause and resume of a magnet still fetching; it has nothing to check.
    async fn magnet_command(self: &Arc<Self>, m: Arc<MagnetHandle>, cmd: Cmd) -> Result<String, String> {
        let name = m.magnet.display_name();
        match (cmd, &m.fetch) {
            (Cmd::Pause, Some(fetching)) => {
                fetching.stop().await;
                save_magnet(&self.env.state_dir, &m.magnet, true).map_err(|e| e.to_string())?;
                self.insert_paused_magnet(m.magnet.clone());
                tracing::info!(torrent = %name, "paused");
                Ok(format!("pausing {name}"))
            }
            (Cmd::Resume, None) => {
                save_magnet(&self.env.state_dir, &m.magnet, false).map_err(|e| e.to_string())?;
                self.spawn_magnet(m.magnet.clone());
                tracing::info!(torrent = %name, "resumed");
                Ok(format!("resuming {name}"))
            }
            (Cmd::Pause, None) => Ok(format!("{name} is already paused")),
            (Cmd::Resume, Some(_)) => Ok(format!("{name} is not paused")),
            _ => Err(format!("{name} has no data to check until its metadata arrives")),
        }
    }

    /// Records a magnet; it waits in state `metadata` for its metadata.
    pub fn add_magnet(self: &Arc<Self>, magnet: Magnet) -> std::io::Result<AddOutcome> {
        let hash = magnet.info_hash;
        if self.torrents.lock().unwrap().contains_key(&hash) || self.magnets.lock().unwrap().contains_key(&hash) {
            return Ok(AddOutcome::AlreadyManaged);
        }
        save_magnet(&self.env.state_dir, &magnet, false)?;
        self.spawn_magnet(magnet);
        Ok(AddOutcome::Added)
    }

    pub fn statuses(&self) -> Vec<TorrentStatus> {
        let handles: Vec<Arc<TorrentHandle>> = self.torrents.lock().unwrap().values().cloned().collect();
        let mut out: Vec<TorrentStatus> = handles.iter().map(|h| h.shared.status()).collect();
        for (hash, h) in self.magnets.lock().unwrap().iter() {
            let error = h.fetch.as_ref().and_then(|f| f.progress.error.lock().unwrap().clone());
            out.push(TorrentStatus {
                info_hash: hash.hex(),
                name: h.magnet.display_name(),
                state: match (&error, h.fetch.is_none()) {
                    (Some(_), _) => TorrentState::Error,
                    (None, true) => TorrentState::Paused,
                    (None, false) => TorrentState::Metadata,
                },
                progress: 0.0,
                size: 0,
                downloaded: 0,
                uploaded: 0,
                download_rate: 0,
                upload_rate: 0,
                peers: h.fetch.as_ref().map_or(0, |f| f.progress.peers.load(std::sync::atomic::Ordering::Relaxed)),
                seeds: 0,
                ratio: 0.0,
                eta_secs: None,
                error,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.info_hash.cmp(&b.info_hash)));
        out
    }

    /// Finds a torrent by exact name or unique info-hash prefix.
    pub fn find(&self, id: &str) -> Result<InfoHash, String> {
        let id_lower = id.to_ascii_lowercase();
        let statuses = self.statuses();
        let by_name: Vec<&TorrentStatus> = statuses.iter().filter(|s| s.name == id).collect();
        if by_name.len() == 1 {
            return Ok(InfoHash::parse(&by_name[0].info_hash).unwrap());
        }
        let by_hash: Vec<&TorrentStatus> =
            statuses.iter().filter(|s| !id_lower.is_empty() && s.info_hash.starts_with(&id_lower)).collect();
        match (by_name.len(), by_hash.len()) {
            (_, 1) => Ok(InfoHash::parse(&by_hash[0].info_hash).unwrap()),
            (0, 0) => Err(format!("no torrent named or hashed '{id}'")),
            _ => Err(format!("'{id}' matches several torrents; give more of the info hash")),
        }
    }

    fn handle(&self, hash: &InfoHash) -> Option<Arc<TorrentHandle>> {
        self.torrents.lock().unwrap().get(hash).cloned()
    }

    pub async fn command(self: &Arc<Self>, id: &str, cmd: Cmd) -> Result<String, String> {
        let hash = self.find(id)?;
        let magnet = self.magnets.lock().unwrap().get(&hash).cloned();
        if let Some(m) = magnet {
            return self.magnet_command(m, cmd).await;
        }
        let h = self.handle(&hash).ok_or_else(|| "no such torrent".to_string())?;
        let what = match cmd {
            Cmd::Pause => "pausing",
            Cmd::Resume => "resuming",
            Cmd::Recheck => "rechecking",
            Cmd::Incoming(..) => "",
        };
        h.cmd.send(cmd).await.map_err(|_| "torrent task has stopped".to_string())?;
        Ok(format!("{what} {}", h.shared.name()))
    }

    /// Removes a torrent (and with `delete_data`, its files).
    pub async fn remove(&self, id: &str, delete_data: bool) -> Result<String, String> {
        let hash = self.find(id)?;
        let dir = self.env.state_dir.clone();
        let magnet = self.magnets.lock().unwrap().remove(&hash);
        if let Some(m) = magnet {
            if let Some(fetching) = &m.fetch {
                fetching.stop().await;
            }
            let _ = std::fs::remove_file(resume::magnet_path(&dir, &hash));
            return Ok(format!("removed {}", m.magnet.display_name()));
        }
        let h = self.torrents.lock().unwrap().remove(&hash).ok_or("no such torrent")?;
        h.cancel.cancel();
        let task = h.task.lock().unwrap().take();
        if let Some(t) = task {
            let _ = t.await;
        }
        for p in [resume::torrent_path(&dir, &hash), resume::resume_path(&dir, &hash)] {
            let _ = std::fs::remove_file(p);
        }
        let name = h.shared.name().to_string();
        if delete_data {
            let meta = h.shared.meta.clone();
            let base = self.env.download_dir.clone();
            let r = self.env.disk.run(move || delete_files(&base, &meta)).await;
            if let Ok(Err(e)) = r {
                return Err(format!("removed {name}, but deleting its data failed: {e}"));
            }
        }
        tracing::info!(torrent = %name, delete_data, "removed");
        Ok(format!("removed {name}{}", if delete_data { " and its data" } else { "" }))
    }

    /// Replaces the live configuration (SIGHUP); limits apply from the next
    /// use, paths and ports need a restart.
    pub fn set_config(&self, config: Arc<Config>) {
        self.env.download_limit.set_rate(config.limits.download_rate.0);
        self.env.upload_limit.set_rate(config.limits.upload_rate.0);
        *self.env.config.write().unwrap() = config;
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
                r = listener.accept() => {
                    let Ok((mut stream, addr)) = r else { continue };
                    if handshakes.len() >= 256 {
                        continue; // shed load: too many half-open handshakes
                    }
                    let s = self.clone();
                    handshakes.spawn(async move {
                        let hs = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_handshake(&mut stream)).await {
                            Ok(Ok(hs)) => hs,
                            _ => return,
                        };
                        if let Some(h) = s.handle(&hs.info_hash) {
                            let _ = h.cmd.try_send(Cmd::Incoming(stream, addr, hs));
                        } else {
                            let magnet = s.magnets.lock().unwrap().get(&hs.info_hash).cloned();
                            if let Some(m) = magnet {
                                if let Some(fetching) = &m.fetch {
                                    let _ = fetching.incoming.try_send((stream, addr, hs));
                                }
                            }
                        }
                    });
                }
            }
        }
        handshakes.shutdown().await;
    }

    /// Stops every torrent (each announces `stopped` and saves its state),
    /// then the disk pool.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let listener = self.listener.lock().unwrap().take();
        if let Some(l) = listener {
            let _ = l.await;
        }
        let housekeeping = self.housekeeping.lock().unwrap().take();
        if let Some(h) = housekeeping {
            let _ = h.await;
        }
        let handles: Vec<Arc<TorrentHandle>> = self.torrents.lock().unwrap().values().cloned().collect();
        let mut tasks = Vec::new();
        for h in &handles {
            if let Some(t) = h.task.lock().unwrap().take() {
                tasks.push(t);
            }
        }
        let mut magnet_tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.retired.lock().unwrap());
        for m in self.magnets.lock().unwrap().values() {
            magnet_tasks.extend(m.fetch.as_ref().and_then(|f| f.task.lock().unwrap().take()));
        }
        for t in tasks {
            let _ = t.await;
        }
        for t in magnet_tasks {
            let _ = t.await;
        }
        if let Some(dht) = &self.env.dht {
            dht.shutdown().await;
        }
        let disk = self.env.disk.clone();
        let _ = tokio::task::spawn_blocking(move || disk.shutdown()).await;
    }
}

/// A magnet in `state_dir`: its URI, and a `# paused` line while paused.
fn save_magnet(state_dir: &Path, magnet: &Magnet, paused: bool) -> std::io::Result<()> {
    let text = format!("{}\n{}", magnet.to_uri(), if paused { PAUSED_MARK } else { "" });
    resume::write_atomic(&resume::magnet_path(state_dir, &magnet.info_hash), text.as_bytes())
}

const PAUSED_MARK: &str = "# paused\n";

fn delete_files(base: &Path, meta: &Metainfo) -> std::io::Result<()> {
    for (i, f) in meta.files.iter().enumerate() {
        if f.padding {
            continue;
        }
        match std::fs::remove_file(crate::storage::file_path(base, meta, i)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    // Remove the torrent's now-empty directories, deepest first; never base.
    if meta.files.len() > 1 || meta.files[0].path.len() > 1 {
        let mut dirs: Vec<std::path::PathBuf> = meta
            .files
            .iter()
            .flat_map(|f| (1..f.path.len()).map(|n| base.join(f.path[..n].iter().collect::<std::path::PathBuf>())))
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        dirs.dedup();
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
    Ok(())
}
