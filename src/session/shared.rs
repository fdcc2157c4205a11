//! Cross-seeding: several torrents (the same files under other info hashes,
//! one per tracker) seeding one copy of the data.
//!
//! A file belongs to the torrent that wrote it. Another torrent may seed it
//! only once that torrent is complete, and only after verifying every piece
//! against its own hashes; it opens the files read-only and never writes
//! them (see `ResumeRecord::borrowed` and the `Preparing` phase). Here: which
//! place a new torrent may borrow, whether a save path the user named is
//! one dropseed may read from, which torrents share a torrent's data, and
//! which files (by device and inode) others still use, so that
//! `remove --delete-data` keeps them.

use super::entry::Entry;
use crate::config::Config;
use crate::storage::Place;
use crate::torrent::TorrentShared;
use crate::types::InfoHash;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The place a new torrent named `name` would seed from: the data of a
/// complete torrent of that name, settled where it stays. `Ok(None)` when no
/// torrent has the name; an error when one has it but is not complete (its
/// files are still being written).
pub(super) fn borrowable(registry: &HashMap<InfoHash, Entry>, name: &str) -> Result<Option<Place>, String> {
    let mut claimed_by = None;
    for (hash, e) in registry.iter().filter(|(_, e)| e.claimed_name() == Some(name)) {
        if let Entry::Torrent(t) = e {
            let place = t.shared.place();
            let moving = t.shared.with_record(|r| r.moving.is_some());
            if place.settled && !moving && t.shared.is_complete() {
                return Ok(Some(place));
            }
        }
        claimed_by = Some(*hash);
    }
    match claimed_by {
        None => Ok(None),
        Some(other) => Err(format!(
            "its files would be those of torrent {} ({name:?}), which is not complete yet: \
             add it again once that one seeds, and it will seed from the same data",
            &other.hex()[..8]
        )),
    }
}

/// For a save path naming `place`: an error when a torrent of its own
/// downloads into that very item, named by the same path (its files are
/// still being written). Cheap, under the registry's lock; the same item
/// under another path is told by [`downloading_here`].
pub(super) fn owner_downloading(registry: &HashMap<InfoHash, Entry>, place: &Place) -> Result<(), String> {
    let top = place.top();
    match downloading_named(registry, &place.name).into_iter().find(|(_, p)| p.top() == top) {
        Some((hash, _)) => Err(not_complete_yet(&hash, &place.name)),
        None => Ok(()),
    }
}

/// The torrents still downloading an item named `name` (not those seeding
/// shared data), with their places.
pub(super) fn downloading_named(registry: &HashMap<InfoHash, Entry>, name: &str) -> Vec<(InfoHash, Place)> {
    registry
        .iter()
        .filter_map(|(hash, e)| match e {
            Entry::Torrent(t) => Some((*hash, t)),
            _ => None,
        })
        .filter(|(_, t)| t.shared.place().name == name && !t.shared.with_record(|r| r.borrowed))
        .filter(|(_, t)| !t.shared.is_complete())
        .map(|(hash, t)| (hash, t.shared.place()))
        .collect()
}

/// For a save path naming `place`: an error when one of `downloading` (see
/// [`downloading_named`]) is that very item, the same device and inode,
/// whatever path names it (a link in a configured folder, `..`).
/// Blocking: run it off the async workers.
pub(super) fn downloading_here(place: &Place, downloading: &[(InfoHash, Place)]) -> Result<(), String> {
    let Some(mine) = item_id(place) else { return Ok(()) };
    match downloading.iter().find(|(_, p)| item_id(p) == Some(mine)) {
        Some((hash, _)) => Err(not_complete_yet(hash, &place.name)),
        None => Ok(()),
    }
}

/// (device, inode) of a place's item, its root folder opened by path and
/// the rest walked without following a link; none if absent.
fn item_id(place: &Place) -> Option<(u64, u64)> {
    let dir = crate::storage::nofollow::open_place_dir(place, false).ok()?;
    let st = rustix::fs::statat(&dir, place.name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
    Some((st.st_dev, st.st_ino))
}

fn not_complete_yet(hash: &InfoHash, name: &str) -> String {
    format!(
        "its files would be those of torrent {} ({:?}), which is not complete yet: \
         add it again once that one seeds, and it will seed from the same data",
        &hash.hex()[..8],
        crate::types::printable(name, 200)
    )
}

/// (device, inode) of a torrent's files as its record last stamped them
/// (no system call: statuses are built on the async workers).
pub(super) fn inodes(t: &TorrentShared) -> HashSet<(u64, u64)> {
    t.with_record(|record| record.stamps.iter().filter(|s| s.ino != 0).map(|s| (s.dev, s.ino)).collect())
}

/// Fills each status's `shared_with`: the torrents whose data is at the
/// same path, or whose files (`files`, by hash) share an inode with its own.
pub(super) fn fill_shared_with(
    statuses: &mut [crate::torrent::TorrentStatus],
    files: &HashMap<String, HashSet<(u64, u64)>>,
) {
    let mut by_path: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in statuses.iter().filter(|s| !s.path.is_empty()) {
        by_path.entry(&s.path).or_default().push(&s.info_hash);
    }
    let mut by_inode: HashMap<(u64, u64), Vec<&str>> = HashMap::new();
    for (hash, set) in files {
        for inode in set {
            by_inode.entry(*inode).or_default().push(hash);
        }
    }
    let shares: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            let mut others: Vec<&str> = by_path.get(s.path.as_str()).cloned().unwrap_or_default();
            for inode in files.get(&s.info_hash).into_iter().flatten() {
                others.extend(by_inode.get(inode).into_iter().flatten());
            }
            others.sort_unstable();
            others.dedup();
            others.into_iter().filter(|h| *h != s.info_hash && !s.path.is_empty()).map(str::to_string).collect()
        })
        .collect();
    for (s, shared_with) in statuses.iter_mut().zip(shares) {
        s.shared_with = shared_with;
    }
}

/// The files of `place`'s item (each as its path below the item) that other
/// torrents name at the very same path: their item is the same entry of the
/// same folder, whether or not they have it open (paused, `missing`). A
/// file of ours another torrent holds under another name (hard-linked in by
/// matching) is not among them: unlinking our name leaves theirs.
/// Blocking (opens and `fstat`s the folders): run it on the disk pool.
pub(super) fn files_in_use(place: &Place, others: &[Arc<TorrentShared>]) -> HashSet<Vec<String>> {
    let mut used = HashSet::new();
    let same_name: Vec<_> = others.iter().filter(|t| t.place().name == place.name).collect();
    if same_name.is_empty() {
        return used;
    }
    let Some(mine) = folder_id(place) else { return used };
    for t in same_name.into_iter().filter(|t| folder_id(&t.place()) == Some(mine)) {
        used.extend(t.meta().files.iter().filter(|f| !f.padding).map(|f| f.path.iter().skip(1).cloned().collect()));
    }
    used
}

/// (device, inode) of the folder holding `place`'s item, reached without a
/// link; none if it cannot be.
fn folder_id(place: &Place) -> Option<(u64, u64)> {
    let dir = crate::storage::nofollow::open_place_dir(place, false).ok()?;
    let st = rustix::fs::fstat(&dir).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// Every torrent but `hash`, for [`files_in_use`].
pub(super) fn others(registry: &HashMap<InfoHash, Entry>, hash: &InfoHash) -> Vec<Arc<TorrentShared>> {
    registry
        .iter()
        .filter(|(h, _)| *h != hash)
        .filter_map(|(_, e)| match e {
            Entry::Torrent(t) => Some(t.shared.clone()),
            _ => None,
        })
        .collect()
}

/// The folders a save path may name: the download folder, each category's,
/// and `[api] allowed_paths`, links resolved.
fn readable_roots(config: &Config) -> Vec<PathBuf> {
    let mut roots = vec![config.paths.download_dir.clone()];
    roots.extend(config.categories.values().filter_map(|c| c.download_dir.clone()));
    roots.extend(config.api.allowed_paths.iter().cloned());
    roots.iter().filter_map(|r| r.canonicalize().ok()).collect()
}

/// Where a torrent added with a save path seeds from: `Ok(Some(place))`
/// when its item is in `save` (a folder inside dropseed's folders or
/// `[api] allowed_paths`), `Ok(None)` when the item is absent and `save` is
/// the category's own complete folder (an ordinary add). Blocking (it
/// resolves links and looks on disk): call off the async workers.
pub fn save_path_place(config: &Config, save: &Path, category: &str, name: &str) -> Result<Option<Place>, String> {
    let shown = crate::types::printable(&save.display().to_string(), 300);
    let real = save.canonicalize().map_err(|e| format!("save path {shown}: {e}"))?;
    // The deepest configured folder holding it is opened by path; the rest
    // is walked a name at a time, never through a link (group members can
    // replace a folder below it with one after the add).
    let root =
        readable_roots(config).into_iter().filter(|root| real.starts_with(root)).max_by_key(|r| r.as_os_str().len());
    let Some(root) = root else {
        return Err(format!(
            "save path {shown} is outside dropseed's folders (download_dir, the categories' folders, \
             [api] allowed_paths)"
        ));
    };
    let sub = real
        .strip_prefix(&root)
        .unwrap_or(Path::new(""))
        .to_str()
        .ok_or_else(|| format!("save path {shown}: its folders below {} must be UTF-8 names", root.display()))?;
    let place = Place::new(&root, sub, name, true);
    if crate::storage::nofollow::item_exists(&place).map_err(|e| format!("{}: {e}", place.top().display()))? {
        return Ok(Some(place));
    }
    let own = config.complete_dir(category).canonicalize().ok();
    if own.as_deref() == Some(real.as_path()) {
        return Ok(None);
    }
    Err(format!(
        "nothing named {:?} in the save path {shown}: a save path is for seeding data already there",
        crate::types::printable(name, 200)
    ))
}
