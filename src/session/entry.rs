//! What the session holds for one info hash: a magnet still fetching its
//! metadata (or paused), a torrent (its task drives its phases), or a slot
//! reserved while an add or a removal is under way, so that nothing else can
//! start for that hash meanwhile.

use crate::magnet::Magnet;
use crate::torrent::fetch::{IncomingPeer, MagnetProgress};
use crate::torrent::task::{Cmd, Exit};
use crate::torrent::{TorrentShared, TorrentState, TorrentStatus};
use crate::types::InfoHash;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(super) enum Entry {
    /// Being added or removed; nothing may start for this hash meanwhile.
    /// Holds the name (the top-level file or folder in the download folder)
    /// that an add is claiming, so that no other torrent takes it meanwhile.
    Reserved(Option<String>),
    Magnet(MagnetEntry),
    Torrent(TorrentEntry),
}

pub(super) struct TorrentEntry {
    pub shared: Arc<TorrentShared>,
    pub cmd: flume::Sender<Cmd>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Exit>,
}

impl TorrentEntry {
    /// Cancels the torrent's task and waits while it stops its peers,
    /// announces `stopped` and saves its record.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

pub(super) struct MagnetEntry {
    pub magnet: Magnet,
    /// `None` while paused.
    pub fetch: Option<Fetching>,
    /// Why the metadata could not be used or saved, if so.
    pub error: Option<String>,
    /// The category, tags and share limits the torrent it becomes will have.
    pub opts: Box<super::AddOptions>,
}

/// The task fetching a magnet's metadata, and what the session sees of it.
pub(super) struct Fetching {
    pub progress: Arc<MagnetProgress>,
    pub incoming: mpsc::Sender<IncomingPeer>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<()>,
}

impl MagnetEntry {
    /// Stops the fetch task, if any, and waits for it.
    pub async fn stop_fetch(&mut self) {
        if let Some(f) = self.fetch.take() {
            f.cancel.cancel();
            let _ = f.task.await;
        }
    }

    pub fn status(&self, hash: &InfoHash) -> TorrentStatus {
        let error = self.error.clone().or_else(|| self.fetch.as_ref()?.progress.error.lock().unwrap().clone());
        let state = match (&error, &self.fetch) {
            (Some(_), _) => TorrentState::Error,
            (None, None) => TorrentState::Paused,
            (None, Some(_)) => TorrentState::Metadata,
        };
        TorrentStatus {
            info_hash: hash.hex(),
            name: self.opts.name.clone().unwrap_or_else(|| self.magnet.display_name()),
            state,
            progress: 0.0,
            size: 0,
            downloaded: 0,
            uploaded: 0,
            wasted: 0,
            fast: Default::default(),
            corrupt: 0,
            path: String::new(),
            category: self.opts.category.clone(),
            download_rate: 0,
            upload_rate: 0,
            peers: self.fetch.as_ref().map_or(0, |f| f.progress.peers.load(Ordering::Relaxed)),
            seeds: 0,
            ratio: 0.0,
            eta_secs: None,
            error,
            tracker_error: None,
            swarm: None,
            trackers: Vec::new(),
            times: Default::default(),
            tags: self.opts.tags.clone(),
            limits: crate::share::LimitsView {
                own: self.opts.share.unwrap_or_default(),
                effective: Default::default(),
            },
            borrowed: false,
            shared_with: Vec::new(),
            rate_limits: Default::default(),
            force_start: false,
        }
    }
}

/// A cheap copy of what `status` needs, taken under the registry lock and
/// read after it is released.
pub(super) enum StatusSource {
    Torrent(Arc<TorrentShared>),
    Ready(Box<TorrentStatus>),
}

impl Entry {
    /// The name this entry owns in the download folder, if any.
    pub fn claimed_name(&self) -> Option<&str> {
        match self {
            Entry::Torrent(t) => Some(t.shared.name()),
            Entry::Reserved(name) => name.as_deref(),
            Entry::Magnet(_) => None,
        }
    }

    /// A torrent seeding data it does not own (cross-seeding).
    pub fn is_borrowed(&self) -> bool {
        matches!(self, Entry::Torrent(t) if t.shared.with_record(|r| r.borrowed))
    }

    /// The name `status` shows for this entry; none while it is reserved.
    pub fn display_name(&self) -> Option<String> {
        match self {
            Entry::Torrent(t) => Some(t.shared.name().to_string()),
            Entry::Magnet(m) => Some(m.magnet.display_name()),
            Entry::Reserved(_) => None,
        }
    }

    pub fn status_source(&self, hash: &InfoHash) -> Option<StatusSource> {
        match self {
            Entry::Reserved(_) => None,
            Entry::Magnet(m) => Some(StatusSource::Ready(Box::new(m.status(hash)))),
            Entry::Torrent(t) => Some(StatusSource::Torrent(t.shared.clone())),
        }
    }
}
