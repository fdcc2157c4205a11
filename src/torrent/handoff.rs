//! The handoff to automation: a finished torrent's top-level item moves from
//! `incomplete_dir` to its complete folder in one `rename(2)` that never
//! replaces anything, so a tool watching the complete folder sees the item
//! appear whole or not at all. Across filesystems the item is copied under a
//! hidden name in the target folder, synced, verified against the piece
//! hashes, renamed into place, and only then is the source removed.
//!
//! The caller writes the target into the resume record before calling
//! [`finish_move`], which is idempotent: after a crash at any point it is
//! called again with the same places and picks up where things stand.
//! Everything here blocks; run it on a blocking thread.

use crate::metainfo::Metainfo;
use crate::storage::place::free_name;
use crate::storage::{Place, TorrentStorage};
use sha1::Digest;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Bytes copied between two looks at the stop flag.
const CHUNK: usize = 8 << 20;

/// What a move shares with the torrent while it runs.
#[derive(Default)]
pub struct MoveControl {
    /// Set to give up a copy at the next chunk (pause, shutdown); the move
    /// is finished at the next start.
    pub stop: AtomicBool,
    /// Bytes copied so far (a rename copies nothing).
    pub copied: AtomicU64,
    /// Tenths of the copy already logged.
    logged_tenths: AtomicU64,
}

/// Brings the data from `from` to `target`, whatever part of that was done
/// before, and returns where the data now is (`target`, or another free
/// name beside it if something else took `target`'s name meanwhile).
/// `storage`, if open, is pointed at the new files before the old go.
pub fn finish_move(
    meta: &Metainfo,
    from: &Place,
    target: &Place,
    storage: Option<&TorrentStorage>,
    ctl: &MoveControl,
) -> io::Result<Place> {
    let settled = Place { settled: true, ..target.clone() };
    match (exists(&from.top()), exists(&target.top())) {
        // Done before a restart (a same-filesystem rename is all or nothing).
        (false, true) => Ok(settled),
        (true, false) => move_item(meta, from, &settled, storage, ctl).map(|()| settled),
        (true, true) if is_our_data(meta, &settled, &ctl.stop)? => {
            // A copy renamed into place; the source was not yet removed.
            if let Some(s) = storage {
                s.relocate(&settled, meta)?;
            }
            remove_source(meta, from)?;
            Ok(settled)
        }
        (true, true) => {
            // Someone else's item took the name: never touch it.
            let other = Place { name: free_name(&target.dir, &meta.name, single_file(meta)), ..settled };
            tracing::warn!(torrent = %meta.name, hash = %meta.info_hash.short(), taken = %target.top().display(), instead = %other.name,
                "the complete folder's name was taken during the move");
            move_item(meta, from, &other, storage, ctl).map(|()| other)
        }
        // Gone from both (imported right after the rename, before the
        // record said so): it belongs at the target, where the check for
        // missing data will find it gone and wait for the user.
        (false, false) => Ok(settled),
    }
}

/// The complete folder's place for a torrent now in `from`: the torrent's
/// name in `dir`, or the first free variant of it.
pub fn target_in(dir: &Path, meta: &Metainfo) -> Place {
    Place { dir: dir.to_path_buf(), name: free_name(dir, &meta.name, single_file(meta)), settled: true }
}

pub fn single_file(meta: &Metainfo) -> bool {
    meta.files.len() == 1 && meta.files[0].path.len() == 1
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// One rename when both folders share a filesystem, else a verified copy.
fn move_item(
    meta: &Metainfo,
    from: &Place,
    to: &Place,
    storage: Option<&TorrentStorage>,
    ctl: &MoveControl,
) -> io::Result<()> {
    std::fs::create_dir_all(&to.dir)?;
    match rename_noreplace(&from.top(), &to.top()) {
        Ok(()) => {
            sync_dir(&to.dir)?;
            sync_dir(&from.dir)
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_across(meta, from, to, storage, ctl),
        Err(e) => Err(e),
    }
}

/// Copies into a hidden name in the target folder, verifies, renames.
/// Refuses at once when the target's filesystem has not the room: a retry
/// must not fill the user's disk with a copy that cannot finish.
fn copy_across(
    meta: &Metainfo,
    from: &Place,
    to: &Place,
    storage: Option<&TorrentStorage>,
    ctl: &MoveControl,
) -> io::Result<()> {
    // Dot-names are what automation skips; a stale one is from a crash.
    let tmp = Place { name: format!(".dropseed-{}.part", &meta.info_hash.hex()[..16]), ..to.clone() };
    if exists(&tmp.top()) {
        remove_all(&tmp.top())?;
    }
    let free = crate::storage::free_space(&to.dir)?;
    if free < meta.total_length {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "No space left in {}: {} needed, {} free",
                to.dir.display(),
                crate::types::human_bytes(meta.total_length),
                crate::types::human_bytes(free)
            ),
        ));
    }
    tracing::info!(torrent = %meta.name, hash = %meta.info_hash.short(), to = %to.top().display(), size = meta.total_length,
        "copying to the complete folder (another filesystem)");
    if let Err(e) = copy_and_verify(meta, from, &tmp, ctl) {
        // A half copy is not left to fill the complete folder's disk.
        let _ = remove_all(&tmp.top());
        return Err(e);
    }
    rename_noreplace(&tmp.top(), &to.top())?;
    sync_dir(&to.dir)?;
    if let Some(s) = storage {
        s.relocate(to, meta)?;
    }
    tracing::info!(torrent = %meta.name, hash = %meta.info_hash.short(), to = %to.top().display(), "copy verified and in place");
    remove_source(meta, from)
}

/// Copies every file into `tmp`, syncs, and checks every piece there.
fn copy_and_verify(meta: &Metainfo, from: &Place, tmp: &Place, ctl: &MoveControl) -> io::Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (i, f) in meta.files.iter().enumerate().filter(|(_, f)| !f.padding) {
        let dst = tmp.file_path(meta, i);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
            if !dirs.iter().any(|d| d == parent) {
                dirs.push(parent.to_path_buf());
            }
        }
        copy_file(meta, &from.file_path(meta, i), &dst, f.length, ctl)?;
    }
    for d in dirs.iter().rev() {
        sync_dir(d)?;
    }
    sync_dir(&tmp.dir)?;
    verify(meta, tmp, &ctl.stop)
}

/// A line per tenth of a long copy (one of a few seconds says nothing).
fn log_progress(meta: &Metainfo, ctl: &MoveControl) {
    let (done, total) = (ctl.copied.load(Ordering::Relaxed), meta.total_length.max(1));
    let tenth = done * 10 / total;
    if total >= 1 << 30 && ctl.logged_tenths.fetch_max(tenth, Ordering::Relaxed) < tenth {
        tracing::info!(torrent = %meta.name, hash = %meta.info_hash.short(), copied = done, of = total, "copying to the complete folder: {}%", tenth * 10);
    }
}

fn copy_file(meta: &Metainfo, src: &Path, dst: &Path, len: u64, ctl: &MoveControl) -> io::Result<()> {
    let mut input = File::open(src)?;
    let mut output = File::create(dst)?;
    let mut buf = vec![0u8; CHUNK.min(len.max(1) as usize)];
    let mut left = len;
    while left > 0 {
        if ctl.stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "move interrupted; it goes on at the next start"));
        }
        let n = (left as usize).min(buf.len());
        input.read_exact(&mut buf[..n])?;
        output.write_all(&buf[..n])?;
        left -= n as u64;
        ctl.copied.fetch_add(n as u64, Ordering::Relaxed);
        log_progress(meta, ctl);
    }
    output.sync_all()
}

/// Every piece of the data in `place` against the metainfo's hashes.
fn verify(meta: &Metainfo, place: &Place, stop: &AtomicBool) -> io::Result<()> {
    if !is_our_data(meta, place, stop)? {
        return Err(io::Error::other(format!("the copy in {} does not match the torrent", place.top().display())));
    }
    Ok(())
}

/// Whether `place` holds this torrent's data, whole and verified: files
/// opened read-only (one of another length, or that cannot be read, is not
/// ours), stopping at the first piece that differs, or when `stop` is set.
pub fn is_our_data(meta: &Metainfo, place: &Place, stop: &AtomicBool) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut files = Vec::with_capacity(meta.files.len());
    for (i, f) in meta.files.iter().enumerate() {
        if f.padding {
            files.push(None);
            continue;
        }
        let Ok(file) = File::open(place.file_path(meta, i)) else { return Ok(false) };
        if !file.metadata().is_ok_and(|m| m.is_file() && m.len() == f.length) {
            return Ok(false);
        }
        files.push(Some(file));
    }
    let layout = crate::storage::layout::Layout::new(meta);
    let mut buf = Vec::new();
    for p in 0..meta.piece_count() {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "check interrupted"));
        }
        let r = layout.piece_range(p);
        buf.clear();
        buf.resize((r.end - r.start) as usize, 0);
        for s in layout.segments(r.start, buf.len()) {
            if let Some(file) = files[s.file].as_ref().filter(|_| !s.padding) {
                if file.read_exact_at(&mut buf[s.buf_offset..s.buf_offset + s.len], s.file_offset).is_err() {
                    return Ok(false);
                }
            }
        }
        if <[u8; 20]>::from(sha1::Sha1::digest(&buf)) != meta.piece_hashes[p] {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes the torrent's files from `from`, then its folders left empty
/// (never anything else the folder holds). Also `remove --delete-data`.
pub fn remove_source(meta: &Metainfo, from: &Place) -> io::Result<()> {
    remove_files_except(meta, from, &[])
}

/// [`remove_source`], but files in `keep` (no longer the torrent's: another
/// file took their name) stay.
pub fn remove_files_except(meta: &Metainfo, from: &Place, keep: &[usize]) -> io::Result<()> {
    for (i, _) in meta.files.iter().enumerate().filter(|(i, f)| !f.padding && !keep.contains(i)) {
        match std::fs::remove_file(from.file_path(meta, i)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    if !single_file(meta) {
        let mut dirs: Vec<PathBuf> = (0..meta.files.len())
            .filter_map(|i| from.file_path(meta, i).parent().map(Path::to_path_buf))
            .flat_map(|d| d.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
            .filter(|d| d.starts_with(from.top()))
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        dirs.dedup();
        for d in dirs {
            let _ = std::fs::remove_dir(d); // fails, as it should, if not empty
        }
    }
    sync_dir(&from.dir)
}

fn remove_all(p: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(p)?.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// rename(2) that fails with EEXIST instead of replacing `to` (where the
/// filesystem cannot promise that, a check just before the plain rename).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"));
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two valid C strings; AT_FDCWD with absolute or relative paths.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            if exists(to) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", to.display())));
            }
            std::fs::rename(from, to)
        }
        _ => Err(e),
    }
}

fn sync_dir(d: &Path) -> io::Result<()> {
    File::open(d)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::BackendKind;
    use sha1::Sha1;

    /// A multi-file torrent (`set/a`, `set/sub/b`, `set/empty`) and its
    /// data, written in `dir` under the torrent's name.
    fn data_in(dir: &Path) -> (Metainfo, Place) {
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut pieces = Vec::new();
        for chunk in bytes.chunks(16384) {
            pieces.extend_from_slice(&Sha1::digest(chunk));
        }
        let mut t = b"d4:infod5:filesld6:lengthi40000e4:pathl1:aeed6:lengthi30000e4:pathl3:sub1:beed6:lengthi0e4:pathl5:emptyeee4:name3:set12:piece lengthi16384e6:pieces".to_vec();
        t.extend_from_slice(format!("{}:", pieces.len()).as_bytes());
        t.extend_from_slice(&pieces);
        t.extend_from_slice(b"ee");
        let meta = Metainfo::from_torrent_bytes(&t).unwrap();
        let place = Place { dir: dir.to_path_buf(), name: meta.name.clone(), settled: false };
        TorrentStorage::open(&place, &meta, BackendKind::File).unwrap().write(0, &bytes).unwrap();
        (meta, place)
    }

    #[test]
    fn a_move_within_a_filesystem_is_one_rename_and_resumes_after_a_crash() {
        let root = tempfile::tempdir().unwrap();
        let (incomplete, complete) = (root.path().join("incomplete"), root.path().join("complete"));
        let (meta, from) = data_in(&incomplete);
        let target = target_in(&complete, &meta);
        let ctl = MoveControl::default();
        let placed = finish_move(&meta, &from, &target, None, &ctl).unwrap();
        assert_eq!(placed.top(), complete.join(&meta.name));
        assert!(!from.top().exists());
        assert_eq!(ctl.copied.load(Ordering::Relaxed), 0, "nothing copied");
        // Called again (a crash after the rename, before the record): done.
        assert_eq!(finish_move(&meta, &from, &target, None, &ctl).unwrap(), placed);
    }

    #[test]
    fn a_name_taken_meanwhile_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let (incomplete, complete) = (root.path().join("incomplete"), root.path().join("complete"));
        let (meta, from) = data_in(&incomplete);
        let target = target_in(&complete, &meta);
        std::fs::create_dir_all(target.top()).unwrap();
        std::fs::write(target.top().join("library.mkv"), b"the user's").unwrap();
        let placed = finish_move(&meta, &from, &target, None, &MoveControl::default()).unwrap();
        assert_eq!(placed.name, format!("{} (2)", meta.name));
        assert_eq!(std::fs::read(target.top().join("library.mkv")).unwrap(), b"the user's");
        assert!(!from.top().exists());
    }

    #[test]
    fn a_copy_across_filesystems_is_verified_and_a_stale_one_replaced() {
        let shm = Path::new("/dev/shm");
        let root = tempfile::tempdir().unwrap();
        let Ok(other) = tempfile::tempdir_in(shm) else {
            eprintln!("skipped: no /dev/shm");
            return;
        };
        let (meta, from) = data_in(&root.path().join("incomplete"));
        let target = target_in(other.path(), &meta);
        // A half copy from a crash sits under the hidden name.
        let stale = other.path().join(format!(".dropseed-{}.part", &meta.info_hash.hex()[..16]));
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("junk"), b"half").unwrap();
        let ctl = MoveControl::default();
        let placed = finish_move(&meta, &from, &target, None, &ctl).unwrap();
        assert!(is_our_data(&meta, &placed, &AtomicBool::new(false)).unwrap());
        assert!(!stale.exists() && !from.top().exists());
        assert_eq!(
            ctl.copied.load(Ordering::Relaxed),
            meta.files.iter().filter(|f| !f.padding).map(|f| f.length).sum::<u64>()
        );
    }

    #[test]
    fn a_stopped_copy_leaves_the_source_whole() {
        let root = tempfile::tempdir().unwrap();
        let Ok(other) = tempfile::tempdir_in("/dev/shm") else { return };
        let (meta, from) = data_in(&root.path().join("incomplete"));
        let target = target_in(other.path(), &meta);
        let ctl = MoveControl::default();
        ctl.stop.store(true, Ordering::Relaxed);
        let e = finish_move(&meta, &from, &target, None, &ctl).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(is_our_data(&meta, &from, &AtomicBool::new(false)).unwrap() && !target.top().exists());
        ctl.stop.store(false, Ordering::Relaxed);
        finish_move(&meta, &from, &target, None, &ctl).unwrap();
        assert!(is_our_data(&meta, &Place { settled: true, ..target }, &AtomicBool::new(false)).unwrap());
    }
}
