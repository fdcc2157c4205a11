//! The watch folder: `*.torrent` and `*.magnet` files dropped in are added.
//!
//! inotify (notify) makes us look quickly; a full scan at start and every
//! `poll_secs` catches what inotify misses (NFS, SMB). A file is acted on only
//! once complete: after a close-after-write or moved-to event, or when its
//! size and mtime held still between two looks a second apart. A file that
//! does not parse is retried for [`INVALID_AFTER`] (it may still be arriving,
//! in pieces, from a slow network filesystem), then renamed `NAME.invalid`
//! with the reason in the log. A handled file is renamed `NAME.added`; when
//! that name is taken (the same file dropped again), `NAME.2.added`,
//! `NAME.3.added`, ... so that no file is ever lost.
//!
//! A subfolder is a category: `watch/tv/x.torrent` is added in category
//! `tv` (one level deep; folders whose names start with `.` are skipped).
//! Anyone in dropseed's group may write here, so nothing is followed out of
//! the folder: links to folders are not categories (nor, for files, drops),
//! inotify watches the folder and each category folder one level each (never
//! recursively, so a deep tree or a link to `/usr` costs nothing), and the
//! category folders taken are bounded ([`categories`]). [`overlap`] refuses
//! at start a watch folder reaching into dropseed's own folders.
//!
//! A file that cannot be renamed or deleted after it was handled (a
//! read-only folder) stays where it is and is taken once, like a file kept
//! with `on_added = "keep"` ([`kept`]); the folder gets one warning, not one
//! per scan.
//!
//! The folder may be on NFS, where a `stat` can hang for minutes, so all of
//! this runs on a thread of its own, never on the async workers; it calls
//! into the session through the runtime's handle. The daemon creates the
//! folder before it starts this thread, and refuses to start if it cannot.

mod categories;
mod kept;
mod overlap;
mod place;

pub use overlap::check as check_overlap;

use crate::config::{Config, OnAdded};
use crate::magnet;
use crate::metainfo::{Metainfo, MAX_TORRENT_FILE};
use crate::session::{AddOutcome, Session};
use categories::{Categories, MAX_CATEGORIES, MAX_FILES_PER_FOLDER, MAX_FILES_PER_SCAN};
use notify::{EventKind, RecursiveMode, Watcher};
use place::Place;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub const INVALID_AFTER: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(1);

/// What a file holds, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Torrent,
    Magnet,
}

impl Kind {
    /// The largest file of this kind read, from the folder or the control socket.
    pub fn size_limit(self) -> u64 {
        match self {
            Kind::Torrent => MAX_TORRENT_FILE as u64,
            Kind::Magnet => MAX_MAGNET_FILE,
        }
    }
}

/// The largest `.magnet` file read.
pub const MAX_MAGNET_FILE: u64 = 1024 * 1024;

/// `*.torrent` or `*.magnet` (any case); `None` for every other name,
/// dot-files and `*~` included.
pub fn kind_of(path: &Path) -> Option<Kind> {
    // Bytes, not text: a name that is not UTF-8 is still a name.
    let name = std::os::unix::ffi::OsStrExt::as_bytes(path.file_name()?);
    if name.starts_with(b".") || name.ends_with(b"~") {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(b".torrent") {
        Some(Kind::Torrent)
    } else if lower.ends_with(b".magnet") {
        Some(Kind::Magnet)
    } else {
        None // *.part, *.tmp, *.added, *.invalid and anything else
    }
}

struct Pending {
    first_seen: Instant,
    last_look: Instant,
    size: u64,
    mtime: Option<SystemTime>,
    /// A close-after-write or moved-to event vouched for it.
    closed: bool,
}

/// What reaches the watch thread.
enum Msg {
    /// inotify saw this path; `true` when it is known to be complete.
    Seen(PathBuf, bool),
    /// Scan now and reread the live config (SIGHUP).
    Rescan,
    Stop,
}

/// The running watch thread.
pub struct WatchThread {
    tx: SyncSender<Msg>,
    thread: std::thread::JoinHandle<()>,
}

impl WatchThread {
    pub fn rescan(&self) {
        let _ = self.tx.try_send(Msg::Rescan);
    }

    /// Stops the thread and waits for it (blocking: call off the runtime).
    pub fn stop(self) {
        let _ = self.tx.send(Msg::Stop);
        let _ = self.thread.join();
    }
}

pub struct WatchFolder {
    session: Arc<Session>,
    rt: tokio::runtime::Handle,
    dir: PathBuf,
    on_added: OnAdded,
    poll: Duration,
    pending: HashMap<PathBuf, Pending>,
    /// Files taken and left in place (kept, or the folder is read-only).
    kept: kept::KeptFiles,
    /// The folder was said to be unwritable (said again after it recovers).
    warned_unwritable: bool,
    /// The folder was said to be unreadable.
    warned_unlistable: bool,
    /// inotify, when the filesystem offers it: the folder and each category.
    inotify: Option<notify::RecommendedWatcher>,
    /// The category folders taken.
    categories: Categories,
    /// inotify saw a folder come or go in the watch folder: scan soon.
    folders_changed: bool,
    /// A category folder could not be given an inotify watch (said once).
    warned_no_watch: bool,
    /// The folders' modification times before the last whole scan; none
    /// when that scan left files for the next (see [`Self::poll_may_skip`]).
    listed_stamps: Option<Vec<FolderStamp>>,
    /// Polls skipped in a row since the last scan.
    polls_skipped: u32,
}

/// Every this many polls the folder is scanned whatever its stamps say
/// (see [`poll_may_skip`]).
const FULL_SCAN_EVERY_POLLS: u32 = 6;

/// A folder and its modification time, when it could be read.
type FolderStamp = (PathBuf, Option<SystemTime>);

/// The modification times of `folders` (links not followed).
fn folder_stamps(folders: impl Iterator<Item = PathBuf>) -> Vec<FolderStamp> {
    folders
        .map(|f| {
            let modified = std::fs::symlink_metadata(&f).and_then(|m| m.modified()).ok();
            (f, modified)
        })
        .collect()
}

/// Whether a poll, with inotify watching and nothing waiting to settle,
/// can skip its scan: no folder's modification time moved since the last
/// whole scan (`listed`), so no file came, went or was renamed. Ten
/// thousand handled files cost a listing of ten milliseconds at every poll
/// otherwise. Every [`FULL_SCAN_EVERY_POLLS`]th poll scans anyway: a file
/// rewritten in place on a network filesystem (inotify silent, the folder's
/// time unchanged) is still seen within a few polls.
fn poll_may_skip(skipped: u32, listed: Option<&[FolderStamp]>, now: impl FnOnce() -> Vec<FolderStamp>) -> bool {
    skipped + 1 < FULL_SCAN_EVERY_POLLS && listed.is_some_and(|l| l == now().as_slice())
}

/// Parses a dropped file into what it adds.
pub enum Parsed {
    Torrent(Box<Metainfo>),
    Magnets(Vec<magnet::Magnet>),
}

/// Parses a `.torrent` or `.magnet` file. Blocking: call off the runtime.
pub fn parse_file(path: &Path) -> Result<Parsed, String> {
    let kind = kind_of(path).ok_or("not a .torrent or .magnet file")?;
    parse_bytes(kind, read_regular_file(path, kind.size_limit())?)
}

/// Parses the contents of a `.torrent` or `.magnet` file. CPU-bound for a
/// large torrent: call off the async workers.
pub fn parse_bytes(kind: Kind, bytes: Vec<u8>) -> Result<Parsed, String> {
    match kind {
        Kind::Torrent => {
            Metainfo::from_torrent_bytes(&bytes).map(|m| Parsed::Torrent(Box::new(m))).map_err(|e| e.to_string())
        }
        Kind::Magnet => {
            let text = String::from_utf8(bytes).map_err(|_| "magnet file is not UTF-8 text".to_string())?;
            magnet::parse_file(&text).map(Parsed::Magnets)
        }
    }
}

/// Reads a regular file of at most `limit` bytes. Anything else (a FIFO,
/// a device, a symlink to one) is refused without blocking on it, and a file
/// that grows past the limit while read is refused too.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    read_open_file(file, limit)
}

/// Reads an opened file the same way: regular, at most `limit` bytes.
fn read_open_file(file: std::fs::File, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > limit {
        return Err(format!("file is {} bytes, over the {limit}-byte limit", meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("file grew past the {limit}-byte limit while read"));
    }
    Ok(bytes)
}

impl WatchFolder {
    pub fn new(session: Arc<Session>, config: &Config, rt: tokio::runtime::Handle) -> WatchFolder {
        WatchFolder {
            session,
            rt,
            dir: config.paths.watch_dir.clone(),
            on_added: config.watch.on_added,
            poll: Duration::from_secs(config.watch.poll_secs),
            pending: HashMap::new(),
            kept: kept::KeptFiles::new(&config.paths.state_dir, &config.paths.watch_dir),
            warned_unwritable: false,
            warned_unlistable: false,
            inotify: None,
            categories: Categories::new(),
            folders_changed: false,
            warned_no_watch: false,
            listed_stamps: None,
            polls_skipped: 0,
        }
    }

    /// Starts the watch thread.
    pub fn spawn(self) -> std::io::Result<WatchThread> {
        let (tx, rx) = sync_channel(1024);
        let events = tx.clone();
        let thread = std::thread::Builder::new().name("watch".into()).spawn(move || self.run(events, rx))?;
        Ok(WatchThread { tx, thread })
    }

    /// Runs until told to stop; a rescan rereads the session's live config,
    /// which SIGHUP replaces.
    fn run(mut self, events: SyncSender<Msg>, rx: Receiver<Msg>) {
        self.kept.load();
        self.inotify = self.start_inotify(events);
        tracing::info!(dir = %self.dir.display(), "watching for .torrent and .magnet files");
        self.scan();
        let mut last_full = Instant::now();
        loop {
            self.kept.save();
            // Look again soon while files are settling, else at the poll interval.
            let busy = !self.pending.is_empty() || self.folders_changed;
            let wait = if busy { SETTLE } else { self.poll.saturating_sub(last_full.elapsed()) };
            match rx.recv_timeout(wait) {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    self.kept.save();
                    break;
                }
                Ok(Msg::Rescan) => {
                    let c = self.session.env.config();
                    self.on_added = c.watch.on_added;
                    self.poll = Duration::from_secs(c.watch.poll_secs);
                    self.scan();
                    last_full = Instant::now();
                }
                Ok(Msg::Seen(path, complete)) => self.seen(&path, complete),
                Err(RecvTimeoutError::Timeout) if last_full.elapsed() >= self.poll || self.folders_changed => {
                    if self.folders_changed || !self.poll_may_skip() {
                        self.scan();
                    }
                    last_full = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {
                    let paths: Vec<PathBuf> = self.pending.keys().cloned().collect();
                    for p in paths {
                        self.consider(&p);
                    }
                }
            }
        }
    }

    /// What inotify saw: a drop to consider, or a folder come or gone.
    fn seen(&mut self, path: &Path, complete: bool) {
        if path.parent() == Some(&self.dir) && kind_of(path).is_none() {
            // A category folder come, gone or replaced (not a `.part` file
            // renamed): scanned within a second, a burst at once.
            let folder = self.categories.contains(path) || is_real_folder(path);
            self.folders_changed |= folder && category_of_folder(path).is_some();
            return;
        }
        if kind_of(path).is_some() && self.is_watched(path) && path.exists() {
            let p = self.pending.entry(path.to_path_buf()).or_insert_with(|| new_pending(path));
            p.closed |= complete;
            if complete {
                self.consider(path);
            }
        }
    }

    /// inotify on the folder, when the filesystem offers it.
    fn start_inotify(&self, events: SyncSender<Msg>) -> Option<notify::RecommendedWatcher> {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                // Close-after-write and moved-to mean the file is complete.
                let complete = matches!(
                    ev.kind,
                    EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write))
                        | EventKind::Modify(notify::event::ModifyKind::Name(notify::event::RenameMode::To))
                        | EventKind::Modify(notify::event::ModifyKind::Name(notify::event::RenameMode::Both))
                );
                for p in ev.paths {
                    // A full channel only delays us until the next scan.
                    let _ = events.try_send(Msg::Seen(p, complete));
                }
            }
        });
        // One level: category folders get their own watch as they are taken.
        let result = watcher.and_then(|mut w| w.watch(&self.dir, RecursiveMode::NonRecursive).map(|()| w));
        result
            .map_err(|e| tracing::warn!(dir = %self.dir.display(), error = %e, "inotify unavailable; polling only"))
            .ok()
    }

    /// A file in the folder itself, or in a category folder taken (and
    /// still a real folder, not a link put in its place).
    fn is_watched(&self, path: &Path) -> bool {
        match path.parent() {
            Some(parent) if parent == self.dir => true,
            Some(parent) => self.categories.contains(parent) && is_real_folder(parent),
            None => false,
        }
    }

    /// Whether a poll can skip its scan (see [`poll_may_skip`]).
    fn poll_may_skip(&mut self) -> bool {
        let listed = self.listed_stamps.as_deref();
        let skip = self.inotify.is_some()
            && self.pending.is_empty()
            && poll_may_skip(self.polls_skipped, listed, || self.folder_stamps());
        self.polls_skipped = if skip { self.polls_skipped + 1 } else { 0 };
        skip
    }

    /// The watch folder and the category folders taken, with their
    /// modification times.
    fn folder_stamps(&self) -> Vec<FolderStamp> {
        folder_stamps(std::iter::once(self.dir.clone()).chain(self.categories.in_scan_order()))
    }

    /// Lists the folder, takes in its category folders and considers the
    /// candidate files: the folder's own, then the categories' from where
    /// the last scan's budget ran out.
    pub fn scan(&mut self) {
        self.folders_changed = false;
        // Taken before the listing: a change while it runs shows next poll.
        let stamps_before = self.folder_stamps();
        let Some(entries) = self.list_watch_folder() else { return };
        let config = self.session.env.config();
        let mut root = Listing::new(MAX_FILES_PER_FOLDER);
        let kept = &self.kept;
        let folders = entries.flatten().filter_map(|e| {
            let path = e.path();
            match e.file_type() {
                // file_type does not follow links: a link is neither.
                Ok(t) if t.is_dir() => category_of_folder(&path).is_some().then_some(path),
                Ok(t) if t.is_file() && kind_of(&path).is_some() => {
                    let known = kept.knows(&path);
                    root.offer(path, known);
                    None
                }
                _ => None,
            }
        });
        let configured = |f: &Path| category_of_folder(f).is_some_and(|n| config.categories.contains_key(&n));
        let change = self.categories.sync(folders, configured);
        self.apply(&change);
        let mut scan = Scan { present: HashSet::new(), listed: HashSet::new(), budget: MAX_FILES_PER_SCAN };
        self.take_files(&self.dir.clone(), root, &mut scan);
        let order = self.categories.in_scan_order();
        for (i, folder) in order.iter().enumerate() {
            if scan.budget == 0 {
                self.categories.stopped_after(i);
                break;
            }
            let listing = self.list_category(folder, scan.budget.min(MAX_FILES_PER_FOLDER));
            self.take_files(folder, listing, &mut scan);
        }
        // Forget only what a whole listing showed gone.
        let listed = |p: &PathBuf| scan.present.contains(p) || !p.parent().is_some_and(|f| scan.listed.contains(f));
        self.pending.retain(|p, _| listed(p));
        self.kept.retain(listed);
        // Unless every folder was listed whole, the next poll scans (and
        // when this scan took in or let go of categories, the stamps of
        // the next poll name other folders, and it scans too).
        let whole = scan.listed.len() == order.len() + 1;
        self.listed_stamps = whole.then_some(stamps_before);
    }

    fn list_watch_folder(&mut self) -> Option<std::fs::ReadDir> {
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                self.warned_unlistable = false;
                Some(entries)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.warned_unlistable, true) {
                    tracing::warn!(dir = %shown(&self.dir), error = %e,
                        "cannot list the watch folder; give dropseed's user read access to it");
                }
                None
            }
        }
    }

    /// Watches the category folders taken, unwatches the gone ones, and
    /// names the refused ones.
    fn apply(&mut self, change: &categories::Change) {
        for folder in &change.removed {
            if let Some(w) = self.inotify.as_mut() {
                let _ = w.unwatch(folder); // already gone with the folder, mostly
            }
        }
        for folder in &change.added {
            let Some(w) = self.inotify.as_mut() else { break };
            if let Err(e) = w.watch(folder, RecursiveMode::NonRecursive) {
                if !std::mem::replace(&mut self.warned_no_watch, true) {
                    tracing::warn!(dir = %shown(folder), error = %e, "no inotify watch on a category folder; \
                        its files are found by the scan every poll_secs");
                }
            }
        }
        if self.categories.should_warn(change) {
            let names: Vec<String> = change.refused_named.iter().map(|f| shown(f)).collect();
            tracing::warn!(refused = change.refused, folders = %names.join(", "),
                "category folders past the limit of {MAX_CATEGORIES} are not watched, and files in them are \
                 not added; remove the folders you do not use");
        }
    }

    /// The candidate files of a category folder, up to `limit` new ones.
    fn list_category(&self, folder: &Path, limit: usize) -> Listing {
        let mut listing = Listing::new(limit);
        // A link put in the folder's place since the listing is not followed.
        if !is_real_folder(folder) {
            listing.whole = false;
            return listing;
        }
        for e in std::fs::read_dir(folder).into_iter().flatten().flatten() {
            let path = e.path();
            if kind_of(&path).is_some() && e.file_type().is_ok_and(|t| t.is_file()) {
                let known = self.kept.knows(&path);
                if !listing.offer(path, known) {
                    break;
                }
            }
        }
        listing
    }

    /// Considers the files of a listing of `folder`, spending the scan's budget.
    fn take_files(&mut self, folder: &Path, listing: Listing, scan: &mut Scan) {
        if listing.whole {
            scan.listed.insert(folder.to_path_buf());
        }
        scan.budget = scan.budget.saturating_sub(listing.new);
        for path in listing.files {
            scan.present.insert(path.clone());
            self.pending.entry(path.clone()).or_insert_with(|| new_pending(&path));
            self.consider(&path);
        }
    }

    /// Adds a file once it is complete, or renames it `.invalid` once it has
    /// failed to parse for [`INVALID_AFTER`].
    fn consider(&mut self, path: &Path) {
        // Regular files only, reached without a link: nothing outside the
        // watch folder is read or renamed.
        let place = Place::open(&self.dir, path).ok();
        let Some((place, (size, mtime))) = place.and_then(|p| p.stat().ok().map(|s| (p, s))) else {
            self.pending.remove(path);
            return;
        };
        let stamp = kept::stamp(size, mtime);
        if self.kept.holds(path, stamp) {
            self.pending.remove(path);
            return;
        }
        let Some(p) = self.pending.get_mut(path) else {
            return;
        };
        let unchanged = p.size == size && p.mtime == mtime;
        let settled = size > 0 && (p.closed || (unchanged && p.last_look.elapsed() >= SETTLE));
        if !unchanged {
            p.size = size;
            p.mtime = mtime;
            p.last_look = Instant::now();
            p.closed = false;
        }
        if !settled {
            return;
        }
        p.last_look = Instant::now();
        let kind = kind_of(path).unwrap_or(Kind::Torrent);
        match place.read(kind.size_limit()).and_then(|bytes| parse_bytes(kind, bytes)) {
            Ok(parsed) => {
                self.pending.remove(path);
                self.add(path, &place, parsed, stamp);
            }
            Err(e) if p.first_seen.elapsed() >= INVALID_AFTER => {
                self.pending.remove(path);
                let target = free_suffix(&place, path, "invalid");
                match self.rename(&place, path, &target, stamp) {
                    true => {
                        tracing::warn!(file = %shown(path), reason = %e, "invalid file; renamed to {}", shown(&target))
                    }
                    false => tracing::warn!(file = %shown(path), reason = %e, "invalid file; left in place"),
                }
            }
            // Within the retry window it may still be arriving: look again later.
            Err(_) => {}
        }
    }

    /// Renames a handled file, never over another; if the folder will not
    /// have it, the file stays, is taken no more, and the folder is warned
    /// about once.
    fn rename(&mut self, place: &Place, from: &Path, to: &Path, stamp: kept::Stamp) -> bool {
        let result = match to.file_name() {
            Some(name) => place.rename_noreplace(name),
            None => Err(std::io::Error::other("no file name")),
        };
        self.done_with(from, stamp, result)
    }

    /// Notes how moving a handled file out of the way went.
    fn done_with(&mut self, path: &Path, stamp: kept::Stamp, result: std::io::Result<()>) -> bool {
        match result {
            Ok(()) => {
                self.warned_unwritable = false;
                true
            }
            Err(e) => {
                self.kept.insert(path, stamp);
                if !std::mem::replace(&mut self.warned_unwritable, true) {
                    tracing::warn!(dir = %shown(&self.dir), error = %e,
                        "cannot rename or delete files in the watch folder: files stay as they are and are taken \
                         once each (as with on_added = \"keep\"); give dropseed's user write access to the folder");
                }
                false
            }
        }
    }

    fn add(&mut self, path: &Path, place: &Place, parsed: Parsed, stamp: kept::Stamp) {
        let file = shown(path);
        // A file in a subfolder belongs to that folder's category.
        let category = match path.parent() {
            Some(parent) if parent != self.dir => category_of_folder(parent).unwrap_or_default(),
            _ => String::new(),
        };
        let results: Vec<(String, String, std::io::Result<AddOutcome>)> = match parsed {
            Parsed::Torrent(meta) => {
                let (name, hash) = (meta.name.clone(), meta.info_hash.hex());
                vec![(name, hash, self.rt.block_on(self.session.add_metainfo_in(*meta, &category)))]
            }
            Parsed::Magnets(list) => list
                .into_iter()
                .map(|m| {
                    let name = m.name.clone().unwrap_or_else(|| m.info_hash.hex());
                    let hash = m.info_hash.hex();
                    (name, hash, self.rt.block_on(self.session.add_magnet_in(m, &category)))
                })
                .collect(),
        };
        for (name, hash, r) in &results {
            match r {
                Ok(AddOutcome::Added) => {
                    // Torrents whose data it seeds (cross-seeding), if any.
                    let shares =
                        crate::types::InfoHash::parse(hash).map(|h| self.session.sharing(&h)).unwrap_or_default();
                    let matched = shares.iter().map(|h| h.short().to_string()).collect::<Vec<_>>().join(",");
                    match matched.is_empty() {
                        true => {
                            tracing::info!(file = %file, torrent = %name, hash = %&hash[..8], category = %category, "added")
                        }
                        false => {
                            tracing::info!(file = %file, torrent = %name, hash = %&hash[..8], category = %category, matched = %matched, "added")
                        }
                    }
                }
                Ok(AddOutcome::AlreadyManaged) => {
                    tracing::info!(file = %file, torrent = %name, hash = %&hash[..8], "already managed; nothing to add")
                }
                Ok(AddOutcome::Refused(why)) => {
                    let target = free_suffix(place, path, "invalid");
                    match self.rename(place, path, &target, stamp) {
                        true => {
                            tracing::warn!(file = %file, torrent = %name, hash = %&hash[..8], reason = %why, "not added; renamed to {}", shown(&target))
                        }
                        false => {
                            tracing::warn!(file = %file, torrent = %name, hash = %&hash[..8], reason = %why, "not added; left in place")
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(file = %file, torrent = %name, hash = %&hash[..8], error = %e, "could not record the torrent in state_dir; will retry");
                    return; // leave the file for the next scan
                }
            }
        }
        match self.on_added {
            OnAdded::Rename => {
                let target = free_suffix(place, path, "added");
                self.rename(place, path, &target, stamp);
            }
            OnAdded::Delete => {
                let result = place.remove();
                self.done_with(path, stamp, result);
            }
            OnAdded::Keep => self.kept.insert(path, stamp),
        }
    }
}

fn new_pending(path: &Path) -> Pending {
    let meta = std::fs::symlink_metadata(path).ok();
    Pending {
        first_seen: Instant::now(),
        last_look: Instant::now(),
        size: meta.as_ref().map_or(0, |m| m.len()),
        mtime: meta.and_then(|m| m.modified().ok()),
        closed: false,
    }
}

/// A path as logged: control characters escaped, bytes that are not UTF-8
/// replaced, cut to a sane length.
fn shown(path: &Path) -> String {
    crate::types::printable(&path.to_string_lossy(), 500)
}

/// The candidate files of one folder: every kept one (they cost a look,
/// not a parse, so they cannot crowd out new drops) and up to `limit` new.
struct Listing {
    files: Vec<PathBuf>,
    new: usize,
    limit: usize,
    /// Every entry was seen (none left out for the limit).
    whole: bool,
}

impl Listing {
    fn new(limit: usize) -> Listing {
        Listing { files: Vec::new(), new: 0, limit, whole: true }
    }

    /// Adds a file unless the limit of new ones is reached (then `false`).
    fn offer(&mut self, path: PathBuf, kept: bool) -> bool {
        if !kept {
            if self.new == self.limit {
                self.whole = false;
                return false;
            }
            self.new += 1;
        }
        self.files.push(path);
        true
    }
}

/// What one scan saw and may still do.
struct Scan {
    /// Candidate files listed.
    present: HashSet<PathBuf>,
    /// Folders listed whole: what is not in `present` has left them.
    listed: HashSet<PathBuf>,
    /// New files it may still look at.
    budget: usize,
}

/// A folder, not a link to one (nor anything else).
fn is_real_folder(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// The category a watch subfolder stands for, if its name can be one.
fn category_of_folder(folder: &Path) -> Option<String> {
    let name = folder.file_name()?.to_str()?;
    crate::config::valid_category(name).then(|| name.to_string())
}

/// `path.suffix`, or the first of `path.2.suffix`, `path.3.suffix`, ...
/// that does not exist: a file handled twice keeps both of its traces.
fn free_suffix(place: &Place, path: &Path, suffix: &str) -> PathBuf {
    (1..10_000)
        .map(|n| if n == 1 { with_suffix(path, suffix) } else { with_suffix(path, &format!("{n}.{suffix}")) })
        .find(|p| p.file_name().is_some_and(|name| !place.exists(name)))
        .unwrap_or_else(|| with_suffix(path, suffix))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.torrent");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opening a FIFO without a writer would block; it is refused at once.
        assert_eq!(read_regular_file(&fifo, 100), Err("not a regular file".to_string()));
        let zero = dir.path().join("zero.torrent");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(read_regular_file(&zero, 100), Err("not a regular file".to_string()));
        let big = dir.path().join("big.torrent");
        std::fs::write(&big, vec![b'x'; 101]).unwrap();
        assert!(read_regular_file(&big, 100).unwrap_err().contains("over the 100-byte limit"));
        std::fs::write(&big, b"d4:infoe").unwrap();
        assert_eq!(read_regular_file(&big, 100).unwrap(), b"d4:infoe");
    }

    #[test]
    fn which_files_count() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(kind_of(Path::new("/w/a.torrent")), Some(Kind::Torrent));
        assert_eq!(kind_of(Path::new("/w/A.TORRENT")), Some(Kind::Torrent));
        assert_eq!(kind_of(Path::new("/w/x.Magnet")), Some(Kind::Magnet));
        // Not UTF-8 (Latin-1 "café"): still a torrent file, shown printable.
        let latin1 = Path::new(std::ffi::OsStr::from_bytes(b"/w/caf\xe9\n.torrent"));
        assert_eq!(kind_of(latin1), Some(Kind::Torrent));
        assert_eq!(shown(latin1), "/w/caf\u{fffd}?.torrent");
        for ignored in [
            ".hidden.torrent",
            "a.torrent.part",
            "a.tmp",
            "a.torrent~",
            "a.torrent.added",
            "a.torrent.invalid",
            "notes.txt",
        ] {
            assert_eq!(kind_of(&Path::new("/w").join(ignored)), None, "{ignored}");
        }
    }

    #[test]
    fn a_poll_skips_its_scan_only_while_no_folder_changed_and_not_forever() {
        let dir = tempfile::tempdir().unwrap();
        let cat = dir.path().join("tv");
        std::fs::create_dir(&cat).unwrap();
        let stamps = || folder_stamps([dir.path().to_path_buf(), cat.clone()].into_iter());
        let listed = stamps();
        assert!(listed.iter().all(|(_, t)| t.is_some()));
        assert!(poll_may_skip(0, Some(&listed), stamps), "nothing changed");
        assert!(!poll_may_skip(0, None, stamps), "the last scan was not whole");
        assert!(!poll_may_skip(FULL_SCAN_EVERY_POLLS - 1, Some(&listed), stamps), "a full scan is due");
        // A drop renamed into a category folder moves that folder's time
        // (set here: two changes within one clock tick may share one).
        let before = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::open(&cat).unwrap().set_modified(before).unwrap();
        let listed = stamps();
        std::fs::write(cat.join("a.torrent.part"), b"x").unwrap();
        std::fs::rename(cat.join("a.torrent.part"), cat.join("a.torrent")).unwrap();
        assert!(!poll_may_skip(0, Some(&listed), stamps), "a file came");
        // A category folder gone or replaced: the stamps name other folders.
        let listed = stamps();
        let fewer = || folder_stamps(std::iter::once(dir.path().to_path_buf()));
        assert!(!poll_may_skip(0, Some(&listed), fewer));
    }
}
