//! The daemon: starts the session, the watch folder, the control socket and
//! the status logger; turns signals into reloads and an orderly shutdown.
//!
//! SIGTERM/SIGINT: stop accepting, announce `stopped` (bounded), flush and
//! write resume state, exit 0. A second one exits at once; resume records are
//! written atomically, so what is on disk stays consistent. SIGHUP: reload the
//! config, rescan the watch folder, re-point the log link.

use crate::config::Config;
use crate::confpath;
use crate::logging::LogHandle;
use crate::session::Session;
use crate::torrent::TorrentState;
use crate::types::{human_bytes, human_duration};
use crate::watch::{WatchFolder, WatchThread};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Runs the daemon until a stop signal. The caller holds the state_dir lock
/// ([`crate::startup::lock_state_dir`]) and logs what this returns as the
/// reason it could not start.
pub async fn run(config: Config, config_path: Option<PathBuf>, log: &LogHandle) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let control_path = config.control_socket();
    // The watch folder is made before anything starts: a daemon that cannot
    // watch its folder stops, naming it, rather than run deaf; nor does it
    // start with one that reaches into its own folders.
    let c = config.clone();
    tokio::task::spawn_blocking(move || {
        crate::startup::create_folder("watch folder", &c.paths.watch_dir, "watch_dir")?;
        crate::watch::check_overlap(&c)
    })
    .await?
    .map_err(|e| anyhow::anyhow!(e))?;
    // Binding, chmod, chown and the group lookup touch files: off the async workers.
    let c = config.clone();
    let control =
        tokio::task::spawn_blocking(move || crate::control::open(&c)).await?.map_err(|e| anyhow::anyhow!(e))?;
    let session = Session::start(config.clone()).await?;
    let cancel = CancellationToken::new();
    let api = crate::api::bind(&config).await?;

    // Signals arrive on a plain thread (signal-hook) and are forwarded.
    let (sig_tx, mut sig_rx) = mpsc::unbounded_channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let signals_handle = signals.handle();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut stops = 0;
        for sig in signals.forever() {
            if sig != SIGHUP {
                stops += 1;
                if stops > 1 {
                    eprintln!("second stop signal: exiting now");
                    std::process::exit(1);
                }
            }
            if sig_tx.send(sig).is_err() {
                break;
            }
        }
    })?;

    let watch = WatchFolder::new(session.clone(), &config, tokio::runtime::Handle::current()).spawn()?;
    let control_task = tokio::spawn(crate::control::serve(control, control_path, session.clone(), cancel.clone()));
    let status_task = tokio::spawn(status_logger(session.clone(), cancel.clone()));
    let api_task = tokio::spawn({
        let (session, cancel) = (session.clone(), cancel.clone());
        async move {
            if let Some((listener, local)) = api {
                crate::api::serve(listener, local, session, cancel).await;
            }
        }
    });
    tracing::info!(version = env!("CARGO_PKG_VERSION"), state_dir = %config.paths.state_dir.display(), "dropseed started");

    while let Some(SIGHUP) = sig_rx.recv().await {
        reload(&session, config_path.as_deref(), log, &watch);
    }
    tracing::info!("stopping: announcing to trackers and saving state");
    cancel.cancel();
    let _ = tokio::join!(tokio::task::spawn_blocking(move || watch.stop()), control_task, status_task, api_task);
    if tokio::time::timeout(Duration::from_secs(9), session.shutdown()).await.is_err() {
        tracing::warn!("shutdown took too long; exiting with state as last saved");
    }
    signals_handle.close();
    tracing::info!("stopped");
    Ok(())
}

fn reload(session: &Session, path: Option<&std::path::Path>, log: &LogHandle, watch: &WatchThread) {
    log.reopen();
    let Some(path) = path else {
        tracing::info!("SIGHUP: no config file to reload (running on defaults); rescanning the watch folder");
        watch.rescan();
        return;
    };
    match confpath::load(confpath::Source::Flag(path.to_path_buf())).map(|l| l.config) {
        Ok(new) => {
            let old = session.env.config();
            let mut changed = Vec::new();
            if new.log.level != old.log.level {
                match log.set_level(&new.log.level) {
                    Ok(()) => changed.push(format!("log.level={}", new.log.level)),
                    Err(e) => tracing::warn!(error = %e, "cannot apply log.level"),
                }
            }
            if new.limits != old.limits {
                changed.push("limits".into());
            }
            if new.seeding != old.seeding {
                changed.push("seeding".into());
            }
            if new.watch != old.watch {
                changed.push("watch".into());
            }
            if new.hooks.commands != old.hooks.commands || new.hooks.timeout != old.hooks.timeout {
                changed.push("hooks".into());
            }
            if new.log.status_interval_secs != old.log.status_interval_secs {
                changed.push(format!("log.status_interval_secs={}", new.log.status_interval_secs));
            }
            if new.log.full_status_interval_secs != old.log.full_status_interval_secs {
                changed.push(format!("log.full_status_interval_secs={}", new.log.full_status_interval_secs));
            }
            let mut restart = Vec::new();
            if new.paths != old.paths {
                restart.push("paths");
            }
            if new.network != old.network {
                restart.push("network");
            }
            if new.dht != old.dht {
                restart.push("dht");
            }
            if new.lsd != old.lsd {
                restart.push("lsd");
            }
            if new.storage != old.storage {
                restart.push("storage");
            }
            if new.limits.max_connections != old.limits.max_connections {
                restart.push("limits.max_connections");
            }
            if new.log.rotation != old.log.rotation || new.log.max_files != old.log.max_files {
                restart.push("log.rotation/max_files");
            }
            if new.hooks.max_running != old.hooks.max_running {
                restart.push("hooks.max_running");
            }
            // The API's user name and password hash are read live.
            if new.api.listen != old.api.listen || new.api.hosts != old.api.hosts {
                restart.push("api.listen/hosts");
            }
            session.set_config(Arc::new(new));
            tracing::info!(
                changed = %if changed.is_empty() { "nothing".to_string() } else { changed.join(",") },
                "SIGHUP: config reloaded"
            );
            if !restart.is_empty() {
                tracing::warn!(settings = %restart.join(","), "these changes take effect after a restart");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP: config not reloaded; keeping the running one")
        }
    }
    watch.rescan();
}

/// Per-torrent status lines logged per interval at most; the summary counts all.
const MAX_STATUS_LINES: usize = 50;
/// The same for a full listing, which names idle torrents too.
const MAX_FULL_STATUS_LINES: usize = 5000;

/// Whether a torrent gets its own status line: one that is busy (checking,
/// downloading, failing, moving data or talking to peers). Idle ones (held,
/// queued, seeding to no one, magnets nobody answers) are only counted in the
/// summary, so a thousand idle torrents do not write a thousand lines a minute.
fn worth_a_status_line(t: &crate::torrent::TorrentStatus) -> bool {
    match t.state {
        TorrentState::Paused | TorrentState::Stopped | TorrentState::Queued => false,
        TorrentState::Checking
        | TorrentState::Downloading
        | TorrentState::Moving
        | TorrentState::Error
        | TorrentState::Missing => true,
        TorrentState::Metadata | TorrentState::Seeding => t.peers > 0 || t.download_rate > 0 || t.upload_rate > 0,
    }
}

/// Every `status_interval_secs`: one line per busy torrent and a summary;
/// every `full_status_interval_secs`, one line for every torrent.
async fn status_logger(session: Arc<Session>, cancel: CancellationToken) {
    // The first interval lists every torrent: a restart shows them all.
    let mut last_full: Option<tokio::time::Instant> = None;
    loop {
        let secs = session.env.config().log.status_interval_secs;
        let wait = Duration::from_secs(if secs == 0 { 60 } else { secs });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let log = session.env.config().log.clone();
        if log.status_interval_secs == 0 {
            continue;
        }
        let full = log.full_status_interval_secs > 0
            && last_full.is_none_or(|at| at.elapsed() >= Duration::from_secs(log.full_status_interval_secs));
        if full {
            last_full = Some(tokio::time::Instant::now());
        }
        log_statuses(&session, full);
    }
}

/// The status lines of one interval, then the summary.
fn log_statuses(session: &Session, full: bool) {
    let all = session.statuses();
    let mut per_state: std::collections::BTreeMap<&str, usize> = Default::default();
    let (mut down, mut up, mut peers, mut lines) = (0, 0, 0, 0);
    let max_lines = if full { MAX_FULL_STATUS_LINES } else { MAX_STATUS_LINES };
    for t in &all {
        *per_state.entry(t.state.as_str()).or_default() += 1;
        down += t.download_rate;
        up += t.upload_rate;
        peers += t.peers;
        if !full && !worth_a_status_line(t) {
            continue;
        }
        lines += 1;
        if lines <= max_lines {
            status_line(t);
        }
    }
    if lines > max_lines {
        tracing::info!(not_listed = lines - max_lines, "status: more torrents than listed");
    }
    let states: Vec<String> = per_state.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let free = crate::storage::free_space(session.env.download_dir()).map(human_bytes).unwrap_or_else(|_| "?".into());
    let dht_nodes = session.env.dht().map(|d| d.node_count().to_string()).unwrap_or_else(|| "off".into());
    tracing::info!(
        torrents = all.len(),
        states = %states.join(","),
        down = %format!("{}/s", human_bytes(down)),
        up = %format!("{}/s", human_bytes(up)),
        peers,
        dht_nodes = %dht_nodes,
        disk_free = %free,
        mem_anon = %memory("RssAnon:").map(human_bytes).unwrap_or_else(|| "?".into()),
        mem_file = %memory("RssFile:").map(human_bytes).unwrap_or_else(|| "?".into()),
        "{}",
        if full { "summary (full listing above)" } else { "summary" }
    );
}

fn status_line(t: &crate::torrent::TorrentStatus) {
    let ratio = if t.ratio < 0.0 { "inf".to_string() } else { format!("{:.2}", t.ratio) };
    let eta = t.eta_secs.map(human_duration).unwrap_or_else(|| "-".into());
    tracing::info!(
        torrent = %t.name,
        hash = %&t.info_hash[..8],
        state = t.state.as_str(),
        progress = %format!("{:.1}%", t.progress * 100.0),
        size = %human_bytes(t.size),
        down = %format!("{}/s", human_bytes(t.download_rate)),
        up = %format!("{}/s", human_bytes(t.upload_rate)),
        peers = t.peers,
        seeds = t.seeds,
        ratio = %ratio,
        eta = %eta,
        "status"
    );
}

/// One of this process's resident memory figures from /proc: `RssAnon:`
/// (its own memory) or `RssFile:` (mapped file pages, the kernel's cache).
pub fn memory(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torrent::TorrentStatus;

    fn status(state: TorrentState, peers: usize, up: u64) -> TorrentStatus {
        TorrentStatus {
            info_hash: "ab".repeat(20),
            name: "t".into(),
            state,
            progress: 1.0,
            size: 1,
            downloaded: 0,
            uploaded: 0,
            wasted: 0,
            fast: Default::default(),
            corrupt: 0,
            path: String::new(),
            category: String::new(),
            download_rate: 0,
            upload_rate: up,
            peers,
            seeds: 0,
            ratio: 0.0,
            eta_secs: None,
            error: None,
            tracker_error: None,
            swarm: None,
            trackers: Vec::new(),
            times: Default::default(),
            tags: Vec::new(),
            limits: Default::default(),
            borrowed: false,
            shared_with: Vec::new(),
            rate_limits: Default::default(),
            force_start: false,
        }
    }

    #[test]
    fn only_busy_torrents_get_a_status_line() {
        use TorrentState::*;
        for idle in [status(Seeding, 0, 0), status(Metadata, 0, 0), status(Queued, 0, 0), status(Paused, 3, 0)] {
            assert!(!worth_a_status_line(&idle), "{:?}", idle.state);
        }
        for busy in [status(Seeding, 1, 0), status(Seeding, 0, 10), status(Downloading, 0, 0), status(Error, 0, 0)] {
            assert!(worth_a_status_line(&busy), "{:?}", busy.state);
        }
    }
}
