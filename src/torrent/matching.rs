//! Automatic cross-seed matching, the first step of a new torrent's
//! checking: its files are looked for among the data of the complete
//! torrents already seeded (`[cross_seed] match`), each candidate is
//! verified against the new torrent's own piece hashes (the pieces lying
//! wholly inside the file), and the files that pass are linked into the new
//! torrent's own folder (`[cross_seed] link`) under a hidden name, then
//! renamed into place; the rest is downloaded as usual. A season pack whose
//! episodes are seeded already downloads only what is missing.
//!
//! It runs in the torrent's `Preparing` phase (state `checking`), not in the
//! add: the add answers at once. A session-wide semaphore bounds the match
//! checks running together; pause, remove and shutdown drop the phase, and
//! the blocking work stops at its next piece or chunk. The record says the
//! match is pending until it is done, so a kill -9 makes it again at the
//! next start (after clearing what a cut link left under its hidden name).
//!
//! A linked file keeps the other torrent's inode: the new torrent never
//! writes into it while another name holds it (see
//! `TorrentStorage::linked`), and `remove --delete-data` keeps it while
//! another torrent uses it.

use super::TorrentShared;
use crate::config::{LinkMode, MatchMode};
use crate::metainfo::{FileEntry, Metainfo};
use crate::storage::nofollow;
use crate::storage::Place;
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A file of another torrent that verified as one of the new torrent's.
struct Found {
    /// The new torrent's file index.
    file: usize,
    source: Arc<TorrentShared>,
    /// The source torrent's file index.
    source_file: usize,
    /// (device, inode) of the source file that verified: the file linked
    /// must be that one, not another put under its name since.
    id: (u64, u64),
}

/// Set when the phase is dropped (pause, remove, shutdown): the blocking
/// work stops at its next piece or chunk.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The pending match of `shared`, made: the files found verified and
/// linked, the record's place and `linked` set, the match no longer
/// pending. Nothing found leaves the place to be chosen as for any add.
pub async fn run(shared: &Arc<TorrentShared>) {
    let config = shared.env.config();
    let (mode, link) = (config.cross_seed.matching, config.cross_seed.link);
    let (retry, stale, category) = {
        let s = shared.status_cell();
        (s.record.place.clone(), s.record.linked.clone(), s.record.category.clone())
    };
    if mode != MatchMode::Off && link != LinkMode::Off {
        // At a start, the sources may not be back yet.
        let _ = shared.env.restored().subscribe().wait_for(|done| *done).await;
        await_candidate_checks(shared, mode).await;
        let Ok(_permit) = shared.env.match_checks().acquire().await else { return };
        let (root, sub) = config.complete_folder(&category);
        let done = Place::new(&root, &sub, &shared.meta.name, true);
        let place = retry.clone().unwrap_or_else(|| match shared.env.incomplete_dir().as_os_str().is_empty() {
            true => done.clone(),
            false => Place::new(shared.env.incomplete_dir(), "", &shared.meta.name, false),
        });
        let sources = shared.env.match_sources();
        let me = shared.meta.info_hash;
        let sources: Vec<_> = sources.into_iter().filter(|s| s.meta().info_hash != me && s.is_complete()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_if_dropped = StopOnDrop(stop.clone());
        let (m, p, st) = (shared.meta.clone(), place.clone(), stop.clone());
        let found = shared.env.disk().run(move || {
            if retry.is_some() {
                // A kill -9 cut the last attempt short: what it left under
                // hidden names goes; the names it finished are ours.
                crate::storage::place::clear_stale_links(&p, &m, &stale);
            } else if nofollow_exists(&done) || nofollow_exists(&p) {
                // Nothing is linked into an item that exists already.
                return Vec::new();
            }
            if sources.is_empty() {
                return Vec::new();
            }
            find(&m, &sources, mode, &st)
        });
        let found = found.await.unwrap_or_default();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if !found.is_empty() {
            link_found(shared, place, found, link, stop).await;
        }
    }
    shared.status_cell().record.match_pending = false;
    shared.save_resume(true).await;
}

/// Waits while a torrent holding candidate files is checking (at a start,
/// every torrent checks at once): once done, it is complete or it is not.
async fn await_candidate_checks(shared: &TorrentShared, mode: MatchMode) {
    let wanted: std::collections::HashSet<_> = shared.meta.files.iter().map(|f| key(f, mode)).collect();
    loop {
        let checking = shared.env.match_sources().into_iter().find(|s| {
            s.meta().info_hash != shared.meta.info_hash
                && s.state() == super::TorrentState::Checking
                && !s.status_cell().record.match_pending
                && s.meta().files.iter().any(|f| !f.padding && f.length > 0 && wanted.contains(&key(f, mode)))
        });
        let Some(source) = checking else { return };
        let mut changes = source.phase_changes();
        // A phase change is the news; a second bounds the wait for one
        // missed between the look and the subscription.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), changes.changed()).await;
    }
}

/// Links the files found into `place` once the record names them (a crash
/// between leaves hidden names the next start clears, and the match is
/// made again).
async fn link_found(
    shared: &Arc<TorrentShared>,
    place: Place,
    found: Vec<Found>,
    link: LinkMode,
    stop: Arc<AtomicBool>,
) {
    {
        let mut s = shared.status_cell();
        s.record.place = Some(place.clone());
        s.record.linked = found.iter().map(|f| f.file as u32).collect();
    }
    shared.index_shares();
    shared.save_resume(true).await;
    let mut sources: Vec<String> = found.iter().map(|f| f.source.meta().info_hash.short().to_string()).collect();
    sources.dedup();
    let m = shared.meta.clone();
    let linked = shared.env.disk().run(move || link_all(&m, &place, &found, link, &stop)).await.unwrap_or_default();
    tracing::info!(torrent = %shared.name(), matched = %sources.join(","), files = linked.len(),
        "files found among the data seeded already, verified and linked; downloading the rest");
    shared.status_cell().record.linked = linked;
}

fn nofollow_exists(place: &Place) -> bool {
    nofollow::open_place_dir(place, false)
        .ok()
        .is_some_and(|dir| rustix::fs::statat(&dir, place.name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok())
}

/// The new torrent's files found, verified, among `sources` (complete
/// torrents; their files opened here, by name, never through a link).
fn find(meta: &Metainfo, sources: &[Arc<TorrentShared>], mode: MatchMode, stop: &AtomicBool) -> Vec<Found> {
    let mut by_key: HashMap<(Vec<String>, u64), (usize, usize)> = HashMap::new();
    for (si, s) in sources.iter().enumerate() {
        for (fi, f) in s.meta().files.iter().enumerate().filter(|(_, f)| !f.padding && f.length > 0) {
            by_key.entry(key(f, mode)).or_insert((si, fi));
        }
    }
    let mut found = Vec::new();
    for (i, f) in meta.files.iter().enumerate().filter(|(_, f)| !f.padding && f.length > 0) {
        let Some(&(si, fi)) = by_key.get(&key(f, mode)) else { continue };
        let source = &sources[si];
        let Ok(file) = open_source(source, fi) else { continue };
        // The identity of the file read, kept for the link.
        let Ok(st) = rustix::fs::fstat(&file) else { continue };
        if st.st_size as u64 == f.length && verifies(meta, i, &file, stop) {
            found.push(Found { file: i, source: source.clone(), source_file: fi, id: (st.st_dev, st.st_ino) });
        }
        if stop.load(Ordering::Relaxed) {
            return Vec::new();
        }
    }
    found
}

/// File `fi` of `source`, read-only, reached without following a link.
fn open_source(source: &TorrentShared, fi: usize) -> io::Result<std::fs::File> {
    let place = source.place();
    let (dirs, name) = nofollow::names(&place, source.meta(), fi);
    let root = nofollow::open_place_dir(&place, false)?;
    let dir = nofollow::walk(root.as_fd(), &dirs)?;
    nofollow::open_file(dir.as_fd(), name, false)
}

/// What a file is matched by: its path below the top folder (a single
/// file's own name) in exact mode, nothing in size mode; and its length.
fn key(f: &FileEntry, mode: MatchMode) -> (Vec<String>, u64) {
    match mode {
        MatchMode::Exact if f.path.len() > 1 => (f.path[1..].to_vec(), f.length),
        MatchMode::Exact => (f.path.clone(), f.length),
        _ => (Vec::new(), f.length),
    }
}

/// Whether every piece of `meta` lying wholly inside its file `i` hashes
/// right when read from `file` (a file with no such piece cannot be told
/// apart alone, and is not taken).
fn verifies(meta: &Metainfo, i: usize, file: &std::fs::File, stop: &AtomicBool) -> bool {
    let f = &meta.files[i];
    let first = f.offset.div_ceil(meta.piece_length) as usize;
    let mut checked = 0;
    let mut buf = Vec::new();
    for p in first..meta.piece_count() {
        let start = p as u64 * meta.piece_length;
        let len = meta.piece_len(p) as usize;
        if start + len as u64 > f.offset + f.length || stop.load(Ordering::Relaxed) {
            break;
        }
        buf.resize(len, 0);
        let read = file.read_exact_at(&mut buf, start - f.offset);
        if read.is_err() || <[u8; 20]>::from(Sha1::digest(&buf)) != meta.piece_hashes[p] {
            return false;
        }
        checked += 1;
    }
    checked > 0 && !stop.load(Ordering::Relaxed)
}

/// Links (or copies) each found file into `place`, the new torrent's
/// folder: under a hidden name, then renamed, so that a file appears whole
/// or not at all. Returns the indices linked; a file that cannot be is
/// left to download (and said so).
fn link_all(meta: &Metainfo, place: &Place, found: &[Found], mode: LinkMode, stop: &AtomicBool) -> Vec<u32> {
    let mut linked = Vec::new();
    for m in found {
        match link_one(meta, place, m, mode, stop) {
            Ok(()) => linked.push(m.file as u32),
            // Paused, removed or shut down: the match is made again later.
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) => tracing::warn!(torrent = %meta.name, hash = %meta.info_hash.short(),
                file = %place.file_path(meta, m.file).display(), error = %e,
                "cannot link a matched file; downloading it"),
        }
    }
    linked
}

fn link_one(meta: &Metainfo, place: &Place, m: &Found, mode: LinkMode, stop: &AtomicBool) -> io::Result<()> {
    let source_place = m.source.place();
    let (src_dirs, src_name) = nofollow::names(&source_place, m.source.meta(), m.source_file);
    let src_root = nofollow::open_place_dir(&source_place, false)?;
    let src_dir = nofollow::walk(src_root.as_fd(), &src_dirs)?;
    let (dirs, name) = nofollow::names(place, meta, m.file);
    let root = nofollow::open_place_dir(place, true)?;
    let dir = nofollow::walk_making(root.as_fd(), &dirs)?;
    if rustix::fs::statat(&dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        // Renamed into place by an attempt a kill -9 cut short (nothing is
        // linked into an item that was there before): whole, and checked
        // with the rest of the torrent.
        return Ok(());
    }
    let hidden = crate::storage::place::link_name(name);
    let _ = nofollow::unlink(dir.as_fd(), &hidden);
    let made = make_hidden(src_dir.as_fd(), src_name, dir.as_fd(), &hidden, m.id, mode, stop).and_then(|()| {
        crate::fsutil::rename_noreplace(dir.as_fd(), hidden.as_str(), dir.as_fd(), name)?;
        nofollow::sync(dir.as_fd())
    });
    if made.is_err() {
        let _ = nofollow::unlink(dir.as_fd(), &hidden);
    }
    made
}

/// The source file `src_name` (which must still be the file `id` that
/// verified) linked or copied (synced) to `hidden`.
fn make_hidden(
    src_dir: BorrowedFd<'_>,
    src_name: &str,
    dir: BorrowedFd<'_>,
    hidden: &str,
    id: (u64, u64),
    mode: LinkMode,
    stop: &AtomicBool,
) -> io::Result<()> {
    let changed = || io::Error::other("the source file was replaced since it was verified");
    if mode == LinkMode::Hardlink {
        match rustix::fs::linkat(src_dir, src_name, dir, hidden, rustix::fs::AtFlags::empty()) {
            Ok(()) => {
                let st = rustix::fs::statat(dir, hidden, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
                return if (st.st_dev, st.st_ino) == id { Ok(()) } else { Err(changed()) };
            }
            // Another filesystem: a copy.
            Err(rustix::io::Errno::XDEV) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut from = nofollow::open_file(src_dir, src_name, false)?;
    let st = rustix::fs::fstat(&from)?;
    if (st.st_dev, st.st_ino) != id {
        return Err(changed());
    }
    let mut to = nofollow::create_new(dir, hidden)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("stopped"));
        }
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n])?;
    }
    to.flush()?;
    to.sync_all()
}
