//! Automatic cross-seed matching: when a torrent is added, its files are
//! looked for among the data of the complete torrents already seeded
//! (`[cross_seed] match`), each candidate is verified against the new
//! torrent's own piece hashes (the pieces lying wholly inside the file),
//! and the files that pass are linked into the new torrent's own folder
//! (`[cross_seed] link`) under a hidden name, then renamed into place; the
//! rest is downloaded as usual. A season pack whose episodes are seeded
//! already downloads only what is missing.
//!
//! A linked file keeps the other torrent's inode: the new torrent never
//! writes into it while another name holds it (see
//! `TorrentStorage::linked`), and `remove --delete-data` keeps it while
//! another torrent uses it. Everything here blocks: run it on the disk pool.

use crate::config::{LinkMode, MatchMode};
use crate::metainfo::{FileEntry, Metainfo};
use crate::storage::nofollow;
use crate::storage::{Place, TorrentStorage};
use crate::torrent::TorrentShared;
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;

/// A file of another torrent that verified as one of the new torrent's.
pub(super) struct Found {
    /// The new torrent's file index.
    file: usize,
    source: Arc<TorrentShared>,
    /// The source torrent's file index.
    source_file: usize,
}

impl Found {
    pub fn file(&self) -> usize {
        self.file
    }
    pub fn source_hash(&self) -> crate::types::InfoHash {
        self.source.meta().info_hash
    }
}

/// The new torrent's files found, verified, among `sources` (complete
/// torrents with their files open).
pub(super) fn find(meta: &Metainfo, sources: &[Arc<TorrentShared>], mode: MatchMode) -> Vec<Found> {
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
        if verifies(meta, i, source, fi) {
            found.push(Found { file: i, source: source.clone(), source_file: fi });
        }
    }
    found
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
/// right when read from file `fi` of `source` (a file with no such piece
/// cannot be told apart alone, and is not taken).
fn verifies(meta: &Metainfo, i: usize, source: &TorrentShared, fi: usize) -> bool {
    let Some(storage) = source.storage() else { return false };
    let (f, g) = (&meta.files[i], &source.meta().files[fi]);
    let first = f.offset.div_ceil(meta.piece_length) as usize;
    let mut checked = 0;
    for p in first..meta.piece_count() {
        let start = p as u64 * meta.piece_length;
        let len = meta.piece_len(p) as u64;
        if start + len > f.offset + f.length {
            break;
        }
        if !piece_at(storage, g.offset + (start - f.offset), len, &meta.piece_hashes[p]) {
            return false;
        }
        checked += 1;
    }
    checked > 0
}

fn piece_at(storage: &TorrentStorage, offset: u64, len: u64, want: &[u8; 20]) -> bool {
    let mut buf = vec![0u8; len as usize];
    storage.read(offset, &mut buf).is_ok() && <[u8; 20]>::from(Sha1::digest(&buf)) == *want
}

/// Links (or copies) each found file into `place`, the new torrent's
/// folder: under a hidden name, then renamed, so that a file appears whole
/// or not at all. Returns the indices linked; a file that cannot be is
/// left to download (and said so).
pub(super) fn link_all(meta: &Metainfo, place: &Place, found: &[Found], mode: LinkMode) -> Vec<u32> {
    let mut linked = Vec::new();
    for m in found {
        match link_one(meta, place, m, mode) {
            Ok(()) => linked.push(m.file as u32),
            Err(e) => tracing::warn!(torrent = %meta.name, file = %place.file_path(meta, m.file).display(), error = %e,
                "cannot link a matched file; downloading it"),
        }
    }
    linked
}

fn link_one(meta: &Metainfo, place: &Place, m: &Found, mode: LinkMode) -> io::Result<()> {
    let source_place = m.source.place();
    let (src_dirs, src_name) = nofollow::names(&source_place, m.source.meta(), m.source_file);
    let src_root = nofollow::open_place_dir(&source_place, false)?;
    let src_dir = nofollow::walk(src_root.as_fd(), &src_dirs)?;
    let (dirs, name) = nofollow::names(place, meta, m.file);
    let root = nofollow::open_place_dir(place, true)?;
    let dir = nofollow::walk_making(root.as_fd(), &dirs)?;
    let hidden = crate::storage::place::link_name(name);
    let _ = nofollow::unlink(dir.as_fd(), &hidden);
    let linked = match mode {
        LinkMode::Hardlink => {
            rustix::fs::linkat(&src_dir, src_name, &dir, hidden.as_str(), rustix::fs::AtFlags::empty())
        }
        _ => Err(rustix::io::Errno::XDEV),
    };
    match linked {
        Ok(()) => {}
        // Another filesystem (or copies asked for): a copy, synced.
        Err(rustix::io::Errno::XDEV) => {
            let mut from = nofollow::open_file(src_dir.as_fd(), src_name, false)?;
            let mut to = nofollow::create_new(dir.as_fd(), &hidden)?;
            io::copy(&mut from, &mut to)?;
            to.flush()?;
            to.sync_all()?;
        }
        Err(e) => return Err(e.into()),
    }
    let r = crate::fsutil::rename_noreplace(dir.as_fd(), hidden.as_str(), dir.as_fd(), name);
    if r.is_err() {
        let _ = nofollow::unlink(dir.as_fd(), &hidden);
    }
    r?;
    nofollow::sync(dir.as_fd())
}
