//! What every torrent shares with the session around it: the config, the
//! disk pool, the connection and download budgets, the rate limiters and the
//! network services (DHT, uTP, LSD). Built once at start-up; its fields are
//! private so that the budgets are only ever taken and given back through
//! the methods below, never replaced under the torrents' feet.

use super::ratelimit::RateLimiter;
use crate::config::Config;
use crate::storage::disk::DiskPool;
use crate::types::PeerId;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock, RwLock};
use tokio::sync::{watch, Semaphore};

/// The network services started before the torrents, each when enabled.
pub struct Services {
    pub dht: Option<Arc<crate::dht::Dht>>,
    pub utp: Option<Arc<crate::utp::UtpSocket>>,
    pub lsd: Option<Arc<crate::lsd::Lsd>>,
    pub hooks: crate::hooks::HookRunner,
}

/// Everything a torrent needs from the session around it.
pub struct Env {
    peer_id: PeerId,
    listen_port: u16,
    config: RwLock<Arc<Config>>,
    disk: Arc<DiskPool>,
    http: reqwest::Client,
    /// Global peer-connection budget (`limits.max_connections`).
    connections: Arc<Semaphore>,
    /// Downloads allowed at once (`limits.max_active_downloads`), in the
    /// user's order.
    queue: Arc<super::queue::DownloadQueue>,
    /// Torrents waiting for a download slot.
    queued: AtomicUsize,
    download_dir: PathBuf,
    /// Where torrents download until complete; empty to use `download_dir`.
    incomplete_dir: PathBuf,
    state_dir: PathBuf,
    download_limit: RateLimiter,
    upload_limit: RateLimiter,
    services: Services,
    /// When each torrent last announced, and its tracker key.
    announces: Arc<crate::tracker::pace::AnnounceBook>,
    /// What `/metrics` shows that the engine counts as it goes.
    metrics: crate::counters::Metrics,
    /// The torrents a new one's files may be found among (cross-seed
    /// matching), given by the session once it exists.
    match_sources: OnceLock<MatchSources>,
    /// Bounds the match checks running at once, session-wide.
    match_checks: Semaphore,
    /// Which torrents share data, for a status without a scan of all.
    shares: super::shareindex::ShareIndex,
    /// Set once the torrents of the last run are all back: a match waits
    /// for it, or it would miss the sources not restored yet.
    restored: watch::Sender<bool>,
    /// Addresses that turned out to be this daemon (a tracker lists our
    /// own address among the peers): never dialled again.
    ourselves: std::sync::Mutex<std::collections::HashSet<std::net::SocketAddr>>,
}

/// Addresses of ourselves remembered at most (one per interface a tracker
/// may see us by, and a few more).
const MAX_OURSELVES: usize = 64;

/// Lists the torrents the session manages (see [`Env::match_sources`]).
pub type MatchSources = Box<dyn Fn() -> Vec<Arc<super::TorrentShared>> + Send + Sync>;

impl Env {
    /// The environment for `config`, listening on `listen_port`.
    pub fn new(
        config: Arc<Config>,
        listen_port: u16,
        services: Services,
        queue: super::queue::DownloadQueue,
    ) -> anyhow::Result<Env> {
        let limits = &config.limits;
        let disk = Arc::new(DiskPool::new(config.storage.disk_threads, 64));
        // Match checks leave disk threads to the torrents seeding.
        let match_checks = Semaphore::new((disk.threads() / 2).max(1));
        let budget = crate::storage::pool::raise_fd_limit(config.storage.max_open_files);
        crate::storage::pool::FilePool::global().set_budget(budget);
        let announces = crate::tracker::pace::AnnounceBook::with_host_rate(config.network.announces_per_host)
            .journaled(&config.paths.state_dir);
        Ok(Env {
            peer_id: PeerId::generate(),
            listen_port,
            disk,
            http: crate::tracker::http::client()?,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            queue: Arc::new(queue),
            queued: AtomicUsize::new(0),
            download_limit: RateLimiter::new(limits.download_rate.0),
            upload_limit: RateLimiter::new(limits.upload_rate.0),
            download_dir: config.paths.download_dir.clone(),
            incomplete_dir: config.paths.incomplete_dir.clone(),
            state_dir: config.paths.state_dir.clone(),
            config: RwLock::new(config),
            services,
            announces: Arc::new(announces),
            metrics: Default::default(),
            match_sources: OnceLock::new(),
            match_checks,
            shares: Default::default(),
            restored: watch::Sender::new(false),
            ourselves: Default::default(),
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    /// A reloaded config: what [`Env::config`] returns from now on.
    pub fn set_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap() = config;
    }

    /// What outgoing connections may use, as configured now.
    pub fn reach(&self) -> crate::conn::Reach<'_> {
        let network = &self.config.read().unwrap().network;
        crate::conn::Reach {
            encryption: network.encryption,
            utp: self.services.utp.as_ref(),
            utp_first: network.utp == crate::config::Utp::Prefer,
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    pub fn disk(&self) -> &Arc<DiskPool> {
        &self.disk
    }

    /// The HTTP client trackers and `.torrent` URLs are fetched with.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Global peer-connection budget (`limits.max_connections`).
    pub fn connections(&self) -> &Arc<Semaphore> {
        &self.connections
    }

    /// Downloads allowed at once (`limits.max_active_downloads`), in the
    /// user's order.
    pub fn queue(&self) -> &Arc<super::queue::DownloadQueue> {
        &self.queue
    }

    /// How many torrents wait for a download slot.
    pub fn queued(&self) -> &AtomicUsize {
        &self.queued
    }

    pub fn download_dir(&self) -> &Path {
        &self.download_dir
    }

    /// Where torrents download until complete; empty to use `download_dir`.
    pub fn incomplete_dir(&self) -> &Path {
        &self.incomplete_dir
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn download_limit(&self) -> &RateLimiter {
        &self.download_limit
    }

    pub fn upload_limit(&self) -> &RateLimiter {
        &self.upload_limit
    }

    /// The DHT node, when enabled.
    pub fn dht(&self) -> Option<&Arc<crate::dht::Dht>> {
        self.services.dht.as_ref()
    }

    /// uTP on the listen port's UDP side, when `[network] utp` is on.
    pub fn utp(&self) -> Option<&Arc<crate::utp::UtpSocket>> {
        self.services.utp.as_ref()
    }

    /// Local Service Discovery, when enabled.
    pub fn lsd(&self) -> Option<&Arc<crate::lsd::Lsd>> {
        self.services.lsd.as_ref()
    }

    /// Runs the user's hooks (`[hooks]`) off the engine.
    pub fn hooks(&self) -> &crate::hooks::HookRunner {
        &self.services.hooks
    }

    pub fn announces(&self) -> &Arc<crate::tracker::pace::AnnounceBook> {
        &self.announces
    }

    pub fn metrics(&self) -> &crate::counters::Metrics {
        &self.metrics
    }

    /// The torrents the session manages, for matching; none before it is up.
    pub fn match_sources(&self) -> Vec<Arc<super::TorrentShared>> {
        self.match_sources.get().map(|f| f()).unwrap_or_default()
    }

    /// Given once by the session, when it exists.
    pub fn set_match_sources(&self, sources: MatchSources) {
        let _ = self.match_sources.set(sources);
    }

    /// Bounds the match checks running at once, session-wide.
    pub fn match_checks(&self) -> &Semaphore {
        &self.match_checks
    }

    /// Which torrents share data.
    pub fn shares(&self) -> &super::shareindex::ShareIndex {
        &self.shares
    }

    /// A connection to `addr` reached this daemon itself.
    pub fn note_ourselves(&self, addr: std::net::SocketAddr) {
        let mut known = crate::locks::locked(&self.ourselves);
        if known.len() < MAX_OURSELVES {
            known.insert(addr);
        }
    }

    /// Whether `addr` is known to be this daemon: not worth a dial.
    pub fn is_ourselves(&self, addr: &std::net::SocketAddr) -> bool {
        crate::locks::locked(&self.ourselves).contains(addr)
    }

    /// True once the torrents of the last run are all back.
    pub fn restored(&self) -> &watch::Sender<bool> {
        &self.restored
    }
}
