//! The JSON shapes of qBittorrent's Web API v2, and the pure mapping from
//! dropseed's torrent status to them: state strings, `torrents/info`'s
//! filters, sort and paging. Field names and types follow what the callers
//! read (Sonarr's `QBittorrentTorrent`, cross-seed, qbittorrent-api); numbers
//! are true numbers, hashes lowercase.

use crate::torrent::{TorrentState, TorrentStatus};
use serde::Serialize;
use std::path::Path;

/// qBittorrent's "infinite" ETA (100 days), sent when nothing is expected.
pub const ETA_NONE: u64 = 8_640_000;
/// qBittorrent caps ratios here.
const MAX_RATIO: f64 = 9999.0;

/// What `torrents/info` and `sync/maindata` say of one torrent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TorrentInfo {
    pub hash: String,
    pub infohash_v1: String,
    pub infohash_v2: String,
    pub name: String,
    pub state: &'static str,
    pub progress: f64,
    pub size: u64,
    pub total_size: u64,
    pub completed: u64,
    pub amount_left: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub downloaded_session: u64,
    pub uploaded_session: u64,
    pub dlspeed: u64,
    pub upspeed: u64,
    pub eta: u64,
    pub ratio: f64,
    pub ratio_limit: f64,
    pub max_ratio: f64,
    pub seeding_time: u64,
    pub seeding_time_limit: i64,
    pub max_seeding_time: i64,
    pub inactive_seeding_time_limit: i64,
    pub max_inactive_seeding_time: i64,
    pub time_active: u64,
    pub added_on: u64,
    pub completion_on: i64,
    pub last_activity: u64,
    pub seen_complete: u64,
    pub category: String,
    pub tags: String,
    pub save_path: String,
    pub download_path: String,
    pub content_path: String,
    pub root_path: String,
    pub num_seeds: u64,
    pub num_leechs: u64,
    pub num_complete: u64,
    pub num_incomplete: u64,
    pub tracker: String,
    pub trackers_count: u64,
    pub magnet_uri: String,
    pub priority: i64,
    pub dl_limit: i64,
    pub up_limit: i64,
    pub availability: f64,
    pub popularity: f64,
    pub reannounce: u64,
    pub force_start: bool,
    pub auto_tmm: bool,
    pub seq_dl: bool,
    pub f_l_piece_prio: bool,
    pub super_seeding: bool,
    pub has_metadata: bool,
    pub private: bool,
    pub comment: String,
}

/// qBittorrent's state string for a status (API 2.11 names: `stoppedUP`).
pub fn state_name(t: &TorrentStatus) -> &'static str {
    let complete = t.progress >= 1.0;
    match t.state {
        TorrentState::Metadata => "metaDL",
        TorrentState::Queued if complete => "queuedUP",
        TorrentState::Queued => "queuedDL",
        // A torrent verifying data it seeds from (cross-seeding) never downloads.
        TorrentState::Checking if complete || t.borrowed => "checkingUP",
        TorrentState::Checking => "checkingDL",
        // Forced (`setForceStart`), as qBittorrent: stalled or not.
        TorrentState::Downloading if t.force_start => "forcedDL",
        TorrentState::Seeding if t.force_start => "forcedUP",
        TorrentState::Downloading if t.download_rate > 0 => "downloading",
        TorrentState::Downloading => "stalledDL",
        TorrentState::Seeding if t.upload_rate > 0 => "uploading",
        TorrentState::Seeding => "stalledUP",
        // A seeding limit reached is `stoppedUP`: what Sonarr removes.
        TorrentState::Paused | TorrentState::Stopped if complete => "stoppedUP",
        TorrentState::Paused | TorrentState::Stopped => "stoppedDL",
        TorrentState::Error => "error",
        TorrentState::Missing => "missingFiles",
        TorrentState::Moving => "moving",
    }
}

/// Share ratio as qBittorrent computes it: uploaded over what was
/// downloaded or, for data that was here already, what is complete.
pub fn ratio(t: &TorrentStatus) -> f64 {
    let done = completed_bytes(t);
    let base = t.downloaded.max(done);
    if base == 0 {
        return 0.0;
    }
    (t.uploaded as f64 / base as f64).min(MAX_RATIO)
}

fn completed_bytes(t: &TorrentStatus) -> u64 {
    ((t.size as f64) * t.progress.clamp(0.0, 1.0)).round() as u64
}

/// The folder a torrent's content is in (qBittorrent's `save_path`).
pub fn save_path(t: &TorrentStatus, complete_dir: &Path) -> String {
    match Path::new(&t.path).parent() {
        Some(p) if !t.path.is_empty() => p.display().to_string(),
        _ => complete_dir.display().to_string(),
    }
}

/// The API's view of a status. `complete_dir` is where the category's
/// torrents finish (the save path of a magnet not yet placed).
pub fn torrent_info(t: &TorrentStatus, complete_dir: &Path, now: u64) -> TorrentInfo {
    let hash = t.info_hash.to_ascii_lowercase();
    let completed = completed_bytes(t);
    let save = save_path(t, complete_dir);
    let content = if t.path.is_empty() { save.clone() } else { t.path.clone() };
    let eta = t.eta_secs.unwrap_or(ETA_NONE).min(ETA_NONE);
    let tracker = t.trackers.first().map(|v| v.url.clone()).unwrap_or_default();
    let active = t.download_rate > 0 || t.upload_rate > 0;
    TorrentInfo {
        magnet_uri: format!("magnet:?xt=urn:btih:{hash}"),
        infohash_v1: hash.clone(),
        infohash_v2: String::new(),
        hash,
        name: t.name.clone(),
        state: state_name(t),
        progress: t.progress.clamp(0.0, 1.0),
        size: t.size,
        total_size: t.size,
        completed,
        amount_left: t.size.saturating_sub(completed),
        downloaded: t.downloaded,
        uploaded: t.uploaded,
        downloaded_session: t.downloaded,
        uploaded_session: t.uploaded,
        dlspeed: t.download_rate,
        upspeed: t.upload_rate,
        eta,
        ratio: ratio(t),
        ratio_limit: t.limits.ratio_limit(),
        max_ratio: t.limits.max_ratio(),
        seeding_time: t.times.seeding_secs,
        seeding_time_limit: t.limits.seeding_time_limit(),
        max_seeding_time: t.limits.max_seeding_time(),
        inactive_seeding_time_limit: t.limits.inactive_seeding_time_limit(),
        max_inactive_seeding_time: t.limits.max_inactive_seeding_time(),
        time_active: t.times.active_secs,
        added_on: t.times.added_at,
        completion_on: if t.times.completed_at > 0 { t.times.completed_at as i64 } else { -1 },
        // Payload moving now, else the last time it did this run, else
        // the last event known (completed, added).
        last_activity: if active { now } else { t.times.last_active.max(t.times.completed_at).max(t.times.added_at) },
        seen_complete: if t.progress >= 1.0 { now } else { 0 },
        category: t.category.clone(),
        tags: t.tags.join(", "),
        root_path: content.clone(),
        content_path: content,
        save_path: save,
        download_path: String::new(),
        num_seeds: t.seeds as u64,
        num_leechs: t.peers.saturating_sub(t.seeds) as u64,
        // The whole swarm when a tracker counted it, else those connected.
        num_complete: t.swarm.map_or(t.seeds as u64, |s| s.seeders),
        num_incomplete: t.swarm.map_or(t.peers.saturating_sub(t.seeds) as u64, |s| s.leechers),
        trackers_count: t.trackers.len() as u64,
        tracker,
        priority: 0,
        dl_limit: t.rate_limits.download as i64,
        up_limit: t.rate_limits.upload as i64,
        availability: if t.seeds > 0 { 1.0 } else { 0.0 },
        popularity: 0.0,
        reannounce: 0,
        force_start: t.force_start,
        auto_tmm: false,
        seq_dl: false,
        f_l_piece_prio: false,
        super_seeding: false,
        has_metadata: t.state != TorrentState::Metadata && t.size > 0,
        private: false,
        comment: String::new(),
    }
}

/// `torrents/info`'s `filter`, old names (`paused`, `resumed`) included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    All,
    Downloading,
    Seeding,
    Completed,
    Stopped,
    Running,
    Active,
    Inactive,
    Stalled,
    StalledUploading,
    StalledDownloading,
    Checking,
    Moving,
    Errored,
}

impl Filter {
    /// None for a name qBittorrent does not know (it then lists all).
    pub fn parse(name: &str) -> Option<Filter> {
        Some(match name {
            "" | "all" => Filter::All,
            "downloading" => Filter::Downloading,
            "seeding" => Filter::Seeding,
            "completed" => Filter::Completed,
            "paused" | "stopped" => Filter::Stopped,
            "resumed" | "running" => Filter::Running,
            "active" => Filter::Active,
            "inactive" => Filter::Inactive,
            "stalled" => Filter::Stalled,
            "stalled_uploading" => Filter::StalledUploading,
            "stalled_downloading" => Filter::StalledDownloading,
            "checking" => Filter::Checking,
            "moving" => Filter::Moving,
            "errored" => Filter::Errored,
            _ => return None,
        })
    }

    pub fn accepts(self, t: &TorrentInfo) -> bool {
        let s = t.state;
        let stopped = matches!(s, "stoppedUP" | "stoppedDL");
        match self {
            Filter::All => true,
            Filter::Downloading => {
                matches!(
                    s,
                    "downloading" | "stalledDL" | "metaDL" | "queuedDL" | "checkingDL" | "forcedDL" | "stoppedDL"
                )
            }
            Filter::Seeding => matches!(s, "uploading" | "stalledUP" | "queuedUP" | "checkingUP" | "forcedUP"),
            Filter::Completed => t.progress >= 1.0,
            Filter::Stopped => stopped,
            Filter::Running => !stopped,
            Filter::Active => t.dlspeed > 0 || t.upspeed > 0,
            Filter::Inactive => t.dlspeed == 0 && t.upspeed == 0,
            Filter::Stalled => matches!(s, "stalledUP" | "stalledDL"),
            Filter::StalledUploading => s == "stalledUP",
            Filter::StalledDownloading => s == "stalledDL",
            Filter::Checking => matches!(s, "checkingUP" | "checkingDL" | "checkingResumeData"),
            Filter::Moving => s == "moving",
            Filter::Errored => matches!(s, "error" | "missingFiles"),
        }
    }
}

/// `torrents/info`'s selection: everything but the filter is optional.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub filter: Option<Filter>,
    pub category: Option<String>,
    /// Lowercase hashes; None = all.
    pub hashes: Option<Vec<String>>,
    pub sort: Option<String>,
    pub reverse: bool,
    pub limit: Option<usize>,
    pub offset: Option<i64>,
}

/// Filters, sorts (by any field, as its JSON value) and pages `all`.
pub fn select(all: Vec<TorrentInfo>, q: &Query) -> Vec<TorrentInfo> {
    let filter = q.filter.unwrap_or(Filter::All);
    // Up to 10,000 hashes: looked up, not scanned.
    let wanted: Option<std::collections::HashSet<&str>> =
        q.hashes.as_ref().map(|hs| hs.iter().map(String::as_str).collect());
    let mut out: Vec<TorrentInfo> = all
        .into_iter()
        .filter(|t| filter.accepts(t))
        .filter(|t| q.category.as_ref().is_none_or(|c| &t.category == c))
        .filter(|t| wanted.as_ref().is_none_or(|hs| hs.contains(t.hash.as_str())))
        .collect();
    if let Some(key) = &q.sort {
        let mut keyed: Vec<(serde_json::Value, TorrentInfo)> = out.into_iter().map(|t| (field(&t, key), t)).collect();
        keyed.sort_by(|a, b| compare(&a.0, &b.0));
        out = keyed.into_iter().map(|(_, t)| t).collect();
    }
    if q.reverse {
        out.reverse();
    }
    let len = out.len() as i64;
    // A negative offset counts from the end, as in qBittorrent.
    let start = match q.offset.unwrap_or(0) {
        o if o < 0 => (len + o).max(0),
        o => o.min(len),
    } as usize;
    let end = q.limit.filter(|l| *l > 0).map_or(out.len(), |l| start.saturating_add(l).min(out.len()));
    out.drain(start..end).collect()
}

fn field(t: &TorrentInfo, key: &str) -> serde_json::Value {
    serde_json::to_value(t).ok().and_then(|v| v.get(key).cloned()).unwrap_or(serde_json::Value::Null)
}

fn compare(a: &serde_json::Value, b: &serde_json::Value) -> std::cmp::Ordering {
    use serde_json::Value::{Bool, Number, String as Str};
    match (a, b) {
        (Number(x), Number(y)) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(std::cmp::Ordering::Equal)
        }
        (Str(x), Str(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Bool(x), Bool(y)) => x.cmp(y),
        _ => std::cmp::Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, state: TorrentState, progress: f64, down: u64, up: u64) -> TorrentStatus {
        TorrentStatus {
            info_hash: format!("{:A<40}", name.to_ascii_uppercase()),
            name: name.into(),
            state,
            progress,
            size: 1000,
            downloaded: (1000.0 * progress) as u64,
            uploaded: 500,
            wasted: 0,
            fast: Default::default(),
            corrupt: 0,
            path: format!("/srv/dl/tv/{name}"),
            category: "tv".into(),
            download_rate: down,
            upload_rate: up,
            peers: 3,
            seeds: 1,
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

    fn info(t: &TorrentStatus) -> TorrentInfo {
        torrent_info(t, Path::new("/srv/dl/tv"), 1_000)
    }

    #[test]
    fn states_map_to_qbittorrent_names() {
        use TorrentState::*;
        let cases = [
            (Metadata, 0.0, 0, 0, "metaDL"),
            (Queued, 0.5, 0, 0, "queuedDL"),
            (Checking, 1.0, 0, 0, "checkingUP"),
            (Downloading, 0.5, 10, 0, "downloading"),
            (Downloading, 0.5, 0, 0, "stalledDL"),
            (Seeding, 1.0, 0, 5, "uploading"),
            (Seeding, 1.0, 0, 0, "stalledUP"),
            (Paused, 0.5, 0, 0, "stoppedDL"),
            (Stopped, 1.0, 0, 0, "stoppedUP"),
            (Error, 0.5, 0, 0, "error"),
            (Missing, 1.0, 0, 0, "missingFiles"),
            (Moving, 1.0, 0, 0, "moving"),
        ];
        for (state, progress, down, up, want) in cases {
            assert_eq!(state_name(&status("x", state, progress, down, up)), want, "{state:?}");
        }
    }

    #[test]
    fn forced_torrents_show_forced_states() {
        let forced = |state, progress| TorrentStatus { force_start: true, ..status("f", state, progress, 0, 0) };
        assert_eq!(state_name(&forced(TorrentState::Downloading, 0.5)), "forcedDL");
        assert_eq!(state_name(&forced(TorrentState::Seeding, 1.0)), "forcedUP");
        assert_eq!(state_name(&forced(TorrentState::Stopped, 1.0)), "stoppedUP", "stopped wins");
        let i = info(&forced(TorrentState::Downloading, 0.5));
        assert!(i.force_start && Filter::Downloading.accepts(&i));
    }

    #[test]
    fn a_cross_seed_verifying_its_shared_data_is_checking_up() {
        let verifying = TorrentStatus { borrowed: true, ..status("x", TorrentState::Checking, 0.3, 0, 0) };
        assert_eq!(state_name(&verifying), "checkingUP");
    }

    #[test]
    fn numbers_are_true_and_hashes_lowercase() {
        let i = info(&status("show", TorrentState::Downloading, 0.25, 10, 0));
        assert_eq!(i.hash, i.hash.to_ascii_lowercase());
        assert_eq!((i.completed, i.amount_left), (250, 750));
        assert_eq!(i.ratio, 2.0, "500 up over 250 down");
        assert_eq!(i.eta, ETA_NONE);
        assert_eq!(i.content_path, "/srv/dl/tv/show");
        assert_eq!(i.save_path, "/srv/dl/tv");
        assert_eq!((i.num_seeds, i.num_leechs), (1, 2));
        let seed = info(&TorrentStatus { downloaded: 0, ..status("s", TorrentState::Seeding, 1.0, 0, 0) });
        assert_eq!(seed.ratio, 0.5, "data here already: uploaded over its size");
    }

    #[test]
    fn a_magnet_has_its_category_folder_as_paths() {
        let m = TorrentStatus { path: String::new(), size: 0, ..status("m", TorrentState::Metadata, 0.0, 0, 0) };
        let i = info(&m);
        assert_eq!((i.save_path.as_str(), i.content_path.as_str()), ("/srv/dl/tv", "/srv/dl/tv"));
        assert!(!i.has_metadata);
    }

    #[test]
    fn filters_accept_old_and_new_names() {
        assert_eq!(Filter::parse("paused"), Some(Filter::Stopped));
        assert_eq!(Filter::parse("resumed"), Some(Filter::Running));
        assert_eq!(Filter::parse("bogus"), None);
        let stopped = info(&status("a", TorrentState::Stopped, 1.0, 0, 0));
        let seeding = info(&status("b", TorrentState::Seeding, 1.0, 0, 9));
        let stalled = info(&status("c", TorrentState::Downloading, 0.5, 0, 0));
        assert!(Filter::Stopped.accepts(&stopped) && !Filter::Stopped.accepts(&seeding));
        assert!(Filter::Seeding.accepts(&seeding) && !Filter::Seeding.accepts(&stopped));
        assert!(Filter::Completed.accepts(&stopped) && !Filter::Completed.accepts(&stalled));
        assert!(Filter::StalledDownloading.accepts(&stalled) && Filter::Active.accepts(&seeding));
        assert!(Filter::Downloading.accepts(&stalled) && !Filter::Downloading.accepts(&seeding));
    }

    #[test]
    fn select_filters_sorts_and_pages() {
        let all: Vec<TorrentInfo> = [("c", 3), ("a", 1), ("b", 2)]
            .iter()
            .map(|(n, up)| info(&status(n, TorrentState::Seeding, 1.0, 0, *up)))
            .collect();
        let names = |v: Vec<TorrentInfo>| v.into_iter().map(|t| t.name).collect::<Vec<_>>();
        let q = Query { sort: Some("name".into()), ..Default::default() };
        assert_eq!(names(select(all.clone(), &q)), ["a", "b", "c"]);
        let q = Query { sort: Some("upspeed".into()), reverse: true, limit: Some(2), ..Default::default() };
        assert_eq!(names(select(all.clone(), &q)), ["c", "b"]);
        let q = Query { sort: Some("name".into()), offset: Some(-1), ..Default::default() };
        assert_eq!(names(select(all.clone(), &q)), ["c"]);
        let q = Query { offset: Some(99), ..Default::default() };
        assert!(select(all.clone(), &q).is_empty());
        let hash_b = all[2].hash.clone();
        let q = Query { hashes: Some(vec![hash_b]), ..Default::default() };
        assert_eq!(names(select(all.clone(), &q)), ["b"]);
        let q = Query { category: Some("movies".into()), ..Default::default() };
        assert!(select(all, &q).is_empty());
    }
}
