//! The handoff to automation: a finished torrent's top-level item moves from
//! `incomplete_dir` to its complete folder in one `rename(2)` that never
//! replaces anything, so a tool watching the complete folder sees the item
//! appear whole or not at all. Across filesystems the item is copied under a
//! hidden name in the target folder, synced, verified against the piece
//! hashes, renamed into place, and only then is the source removed.
//!
//! Others in dropseed's group can write in both folders, so a name may turn
//! into a link at any moment: everything is made and opened one name at a
//! time from an open folder handle without following links
//! ([`crate::storage::nofollow`]), the copy is checked through the handles
//! it was written with, the source goes only once the item in place is
//! proven to be that very copy, and only the source files proven ours go
//! ([`crate::storage::delete`]).
//!
//! The caller writes the target into the resume record before calling
//! [`finish_move`], which is idempotent: after a crash at any point it is
//! called again with the same places and picks up where things stand.
//! Everything here blocks; run it on a blocking thread.

use crate::fsutil;
use crate::metainfo::Metainfo;
use crate::storage::delete::{self, Expect};
use crate::storage::nofollow::{self, FileStamp};
use crate::storage::place::free_name;
use crate::storage::{Place, TorrentStorage};
use sha1::Digest;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
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
    /// Run between the copy's steps, where a test plants what an attacker
    /// in dropseed's group would.
    #[cfg(test)]
    between_steps: std::sync::Mutex<Option<StepHook>>,
    /// Every move copies, as across filesystems: the copy's tests then
    /// need no second filesystem (and never skip for want of one).
    #[cfg(test)]
    force_copy: bool,
}

#[cfg(test)]
type StepHook = Box<dyn FnMut(Step) + Send>;

/// Points of a copy across filesystems a test can act at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum Step {
    /// A stale hidden copy is gone; nothing is created yet.
    Cleared,
    /// About to copy file `i` (its folders not made yet).
    File(usize),
}

impl MoveControl {
    /// Whether a move must copy even where one rename would do.
    fn copy_forced(&self) -> bool {
        #[cfg(test)]
        return self.force_copy;
        #[cfg(not(test))]
        false
    }

    fn step(&self, _step: Step) {
        #[cfg(test)]
        if let Some(f) = self.between_steps.lock().unwrap().as_mut() {
            f(_step);
        }
    }
}

/// Brings the data from `from` to `target`, whatever part of that was done
/// before, and returns where the data now is (`target`, or another free
/// name beside it if something else took `target`'s name meanwhile).
/// `storage`, if open, is pointed at the new files before the old go;
/// `recorded` is what the resume record stamped of the files (see
/// [`crate::storage::delete`]), which proves the source ours when the
/// storage is not open.
pub fn finish_move(
    meta: &Metainfo,
    from: &Place,
    target: &Place,
    storage: Option<&TorrentStorage>,
    recorded: &[FileStamp],
    ctl: &MoveControl,
) -> io::Result<Place> {
    let settled = Place { settled: true, ..target.clone() };
    if same_item(from, target) {
        // Asked to move where it is (a second request for one folder):
        // the "both exist" case below would take it for a finished copy
        // and remove the source, which is the data itself.
        return Ok(settled);
    }
    let placed = match (nofollow::item_exists(from)?, nofollow::item_exists(target)?) {
        // Done before a restart (a same-filesystem rename is all or nothing).
        (false, true) => Ok(settled),
        (true, false) => move_item(meta, from, &settled, storage, ctl),
        (true, true) => match our_files(meta, &settled, true, &ctl.stop)? {
            // A copy renamed into place (every file reached without a link
            // and every piece checked); the source was not yet removed.
            Some(files) => {
                let proof = storage.map(|s| s.stamps()).unwrap_or_else(|| recorded.to_vec());
                if let Some(s) = storage {
                    s.relocate(meta, &settled, files)?;
                }
                let expect = if proof.is_empty() { Expect::Length } else { Expect::Stamps(&proof) };
                remove_source(meta, from, &expect)?;
                Ok(settled)
            }
            // Someone else's item (or a link to anywhere) took the name:
            // never touch it.
            None => {
                let dir = nofollow::open_place_dir(target, false)?;
                let other = Place { name: free_name(dir.as_fd(), &meta.name, single_file(meta)), ..settled };
                tracing::warn!(torrent = %meta.name, hash = %meta.info_hash.short(), taken = %target.top().display(), instead = %other.name,
                    "the complete folder's name was taken during the move");
                move_item(meta, from, &other, storage, ctl)
            }
        },
        // Gone from both (imported right after the rename, before the
        // record said so): it belongs at the target, where the check for
        // missing data will find it gone and wait for the user.
        (false, false) => Ok(settled),
    };
    // Files closed by the pool are opened again from where the data is now.
    if let (Ok(p), Some(s)) = (&placed, storage) {
        s.moved_to(p);
    }
    placed
}

/// Whether two places name one item: the same path, or the same file or
/// folder on disk (device and inode) reached by another.
fn same_item(a: &Place, b: &Place) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (a.top(), b.top());
    a == b
        || match (std::fs::symlink_metadata(&a), std::fs::symlink_metadata(&b)) {
            (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
            _ => false,
        }
}

/// The complete folder's place for a torrent now in `from`: the torrent's
/// name in `sub` of the configured folder `root`, or the first free
/// variant of it. (A folder that cannot be reached without a link keeps
/// the name: the move then fails and names the link.)
pub fn target_in(root: &Path, sub: &str, meta: &Metainfo) -> Place {
    let mut place = Place::new(root, sub, &meta.name, true);
    if let Ok(dir) = nofollow::open_place_dir(&place, false) {
        place.name = free_name(dir.as_fd(), &meta.name, single_file(meta));
    }
    place
}

pub fn single_file(meta: &Metainfo) -> bool {
    meta.files.len() == 1 && meta.files[0].path.len() == 1
}

/// One rename when both folders share a filesystem, else a verified copy.
/// Returns where the item went.
fn move_item(
    meta: &Metainfo,
    from: &Place,
    to: &Place,
    storage: Option<&TorrentStorage>,
    ctl: &MoveControl,
) -> io::Result<Place> {
    // Only the configured folders are the admin's (made by path); a
    // category folder made in one is reached without a link.
    let (src, dst) = (nofollow::open_place_dir(from, false)?, nofollow::open_place_dir(to, true)?);
    if ctl.copy_forced() {
        return copy_across(meta, from, to, dst.as_fd(), storage, ctl);
    }
    match fsutil::rename_noreplace(src.as_fd(), from.name.as_str(), dst.as_fd(), to.name.as_str()) {
        Ok(()) => {
            if let Some(s) = storage {
                s.moved_to(to);
            }
            nofollow::sync(dst.as_fd())?;
            nofollow::sync(src.as_fd())?;
            Ok(to.clone())
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_across(meta, from, to, dst.as_fd(), storage, ctl),
        Err(e) => Err(e),
    }
}

/// The hidden name a copy is made under in the complete folder.
fn hidden_name(meta: &Metainfo) -> String {
    // Dot-names are what automation skips; a stale one is from a crash.
    format!(".dropseed-{}.part", &meta.info_hash.hex()[..16])
}

/// Copies into a hidden name in the target folder (`root`), verifies,
/// renames, and removes the source only once the item in place is proven
/// the copy verified. Refuses at once when the target's filesystem has not
/// the room: a retry must not fill the user's disk with a copy that cannot
/// finish.
fn copy_across(
    meta: &Metainfo,
    from: &Place,
    to: &Place,
    root: BorrowedFd<'_>,
    storage: Option<&TorrentStorage>,
    ctl: &MoveControl,
) -> io::Result<Place> {
    let tmp = hidden_name(meta);
    match nofollow::remove_tree(root, &tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    ctl.step(Step::Cleared);
    let free = crate::storage::free_space_at(root)?;
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
    let copy = match copy_and_verify(meta, from, root, &tmp, ctl) {
        Ok(copy) => copy,
        Err(e) => {
            // A half copy is not left to fill the complete folder's disk.
            let _ = nofollow::remove_tree(root, &tmp);
            return Err(e);
        }
    };
    let placed = rename_into_place(meta, root, &tmp, to)?;
    nofollow::sync(root)?;
    copy.confirm(meta, root, &placed)?;
    if let Some(s) = storage {
        s.relocate(meta, &placed, copy.written)?;
    }
    tracing::info!(torrent = %meta.name, hash = %meta.info_hash.short(), to = %placed.top().display(), "copy verified and in place");
    remove_source(meta, from, &Expect::Stamps(&copy.sources))?;
    Ok(placed)
}

/// Renames the hidden copy to `to`'s name or, if something took that name
/// during the copy, to the first free one: never over anything.
fn rename_into_place(meta: &Metainfo, root: BorrowedFd<'_>, tmp: &str, to: &Place) -> io::Result<Place> {
    match fsutil::rename_noreplace(root, tmp, root, to.name.as_str()) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let other = Place { name: free_name(root, &meta.name, single_file(meta)), ..to.clone() };
            tracing::warn!(torrent = %meta.name, hash = %meta.info_hash.short(), taken = %to.top().display(), instead = %other.name,
                "the complete folder's name was taken during the move");
            fsutil::rename_noreplace(root, tmp, root, other.name.as_str())?;
            Ok(other)
        }
        r => r.map(|()| to.clone()),
    }
}

/// A copy written and verified under the hidden name.
struct Copied {
    /// The copy's files, open read-write (None for padding): verified
    /// through these handles, and handed to the storage once in place.
    written: Vec<Option<File>>,
    /// The source files as they were read: only these are removed after.
    sources: Vec<FileStamp>,
}

impl Copied {
    /// Fails unless every file at `placed` is the very file written and
    /// verified, reached without a link: only then may the source go.
    fn confirm(&self, meta: &Metainfo, root: BorrowedFd<'_>, placed: &Place) -> io::Result<()> {
        for (i, written) in self.written.iter().enumerate() {
            let Some(written) = written else { continue };
            let (dirs, name) = nofollow::names(placed, meta, i);
            let found = nofollow::walk(root, &dirs).and_then(|d| nofollow::stamp_at(d.as_fd(), name));
            let ours = FileStamp::of(&written.metadata()?);
            if !found.is_ok_and(|f| f.is_some_and(|f| f.same_file(&ours))) {
                return Err(io::Error::other(format!(
                    "{} is not the copy just verified; the source is kept",
                    placed.file_path(meta, i).display()
                )));
            }
        }
        Ok(())
    }
}

/// Copies every file into the hidden `tmp` in `root`, each made new
/// (`O_EXCL`) in folders reached without a link, syncs, and checks every
/// piece through the handles written.
fn copy_and_verify(
    meta: &Metainfo,
    from: &Place,
    root: BorrowedFd<'_>,
    tmp: &str,
    ctl: &MoveControl,
) -> io::Result<Copied> {
    let src_root = nofollow::open_place_dir(from, false)?;
    let tmp_place = Place::new(Path::new(""), "", tmp, false);
    if !single_file(meta) {
        // Made here, never found: anything of that name now was planted.
        nofollow::make_new_dir(root, tmp)?;
    }
    let mut copy =
        Copied { written: Vec::with_capacity(meta.files.len()), sources: Vec::with_capacity(meta.files.len()) };
    let mut folders = std::collections::BTreeSet::new();
    for (i, f) in meta.files.iter().enumerate() {
        if f.padding {
            copy.written.push(None);
            copy.sources.push(FileStamp::default());
            continue;
        }
        ctl.step(Step::File(i));
        let (dirs, name) = nofollow::names(from, meta, i);
        let input = nofollow::open_file(nofollow::walk(src_root.as_fd(), &dirs)?.as_fd(), name, false)?;
        copy.sources.push(FileStamp::of(&input.metadata()?));
        let (dirs, name) = nofollow::names(&tmp_place, meta, i);
        let output = nofollow::create_new(nofollow::walk_making(root, &dirs)?.as_fd(), name)?;
        copy_file(meta, input, &output, f.length, ctl)?;
        copy.written.push(Some(output));
        folders.insert(dirs);
    }
    for dirs in &folders {
        nofollow::sync(nofollow::walk(root, dirs)?.as_fd())?;
    }
    nofollow::sync(root)?;
    if !pieces_match(meta, &copy.written, &ctl.stop)? {
        return Err(io::Error::other(format!("the copy in {} does not match the torrent", from.top().display())));
    }
    Ok(copy)
}

/// A line per tenth of a long copy (one of a few seconds says nothing).
fn log_progress(meta: &Metainfo, ctl: &MoveControl) {
    let (done, total) = (ctl.copied.load(Ordering::Relaxed), meta.total_length.max(1));
    let tenth = done * 10 / total;
    if total >= 1 << 30 && ctl.logged_tenths.fetch_max(tenth, Ordering::Relaxed) < tenth {
        tracing::info!(torrent = %meta.name, hash = %meta.info_hash.short(), copied = done, of = total, "copying to the complete folder: {}%", tenth * 10);
    }
}

fn copy_file(meta: &Metainfo, mut input: File, output: &File, len: u64, ctl: &MoveControl) -> io::Result<()> {
    let mut out = output;
    let mut buf = vec![0u8; CHUNK.min(len.max(1) as usize)];
    let mut left = len;
    while left > 0 {
        if ctl.stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "move interrupted; it goes on at the next start"));
        }
        let n = (left as usize).min(buf.len());
        input.read_exact(&mut buf[..n])?;
        out.write_all(&buf[..n])?;
        left -= n as u64;
        ctl.copied.fetch_add(n as u64, Ordering::Relaxed);
        log_progress(meta, ctl);
    }
    output.sync_all()
}

/// Whether `place` holds this torrent's data, whole and verified.
pub fn is_our_data(meta: &Metainfo, place: &Place, stop: &AtomicBool) -> io::Result<bool> {
    our_files(meta, place, false, stop).map(|files| files.is_some())
}

/// This torrent's files in `place`, whole and verified, each reached from
/// the folder without a link and opened (read-write if `write`); None when
/// `place` holds anything else (a link, a file of another length or that
/// cannot be read, a piece that differs). Stops when `stop` is set.
fn our_files(meta: &Metainfo, place: &Place, write: bool, stop: &AtomicBool) -> io::Result<Option<Vec<Option<File>>>> {
    let Ok(root) = nofollow::open_place_dir(place, false) else { return Ok(None) };
    let mut files = Vec::with_capacity(meta.files.len());
    for (i, f) in meta.files.iter().enumerate() {
        if f.padding {
            files.push(None);
            continue;
        }
        let (dirs, name) = nofollow::names(place, meta, i);
        match nofollow::walk(root.as_fd(), &dirs).and_then(|d| nofollow::open_file(d.as_fd(), name, write)) {
            Ok(file) if file.metadata().is_ok_and(|m| m.len() == f.length) => files.push(Some(file)),
            _ => return Ok(None),
        }
    }
    Ok(pieces_match(meta, &files, stop)?.then_some(files))
}

/// Every piece read through `files` (None for padding) against the
/// metainfo's hashes, stopping at the first that differs.
fn pieces_match(meta: &Metainfo, files: &[Option<File>], stop: &AtomicBool) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
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

/// Removes the source's files that `expect` proves the torrent's, then its
/// folders left empty; anything else stays, and a WARN line names it.
fn remove_source(meta: &Metainfo, from: &Place, expect: &Expect) -> io::Result<()> {
    let done = delete::delete_files(meta, from, expect)?;
    if !done.kept.is_empty() {
        tracing::warn!(torrent = %meta.name, hash = %meta.info_hash.short(), "the move is done{}", done.kept_note());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendKind;
    use sha1::Sha1;
    use std::path::PathBuf;

    /// A torrent whose info dictionary starts with `head` (its files and
    /// name), over `bytes` in 16 KiB pieces, written in `dir` under its name.
    fn torrent_in(dir: &Path, head: &[u8], bytes: &[u8]) -> (Metainfo, Place) {
        let mut pieces = Vec::new();
        for chunk in bytes.chunks(16384) {
            pieces.extend_from_slice(&Sha1::digest(chunk));
        }
        let mut t = b"d4:infod".to_vec();
        t.extend_from_slice(head);
        t.extend_from_slice(format!("12:piece lengthi16384e6:pieces{}:", pieces.len()).as_bytes());
        t.extend_from_slice(&pieces);
        t.extend_from_slice(b"ee");
        let meta = Metainfo::from_torrent_bytes(&t).unwrap();
        let place = Place::new(dir, "", &meta.name, false);
        TorrentStorage::open(&place, &meta, BackendKind::File).unwrap().write(0, bytes).unwrap();
        (meta, place)
    }

    /// A multi-file torrent (`set/a`, `set/sub/b`, `set/empty`) and its
    /// data, written in `dir` under the torrent's name.
    fn data_in(dir: &Path) -> (Metainfo, Place) {
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let files = b"5:filesld6:lengthi40000e4:pathl1:aeed6:lengthi30000e4:pathl3:sub1:beed6:lengthi0e4:pathl5:emptyeee4:name3:set";
        torrent_in(dir, files, &bytes)
    }

    #[test]
    fn a_move_within_a_filesystem_is_one_rename_and_resumes_after_a_crash() {
        let root = tempfile::tempdir().unwrap();
        let (incomplete, complete) = (root.path().join("incomplete"), root.path().join("complete"));
        let (meta, from) = data_in(&incomplete);
        let target = target_in(&complete, "", &meta);
        let ctl = MoveControl::default();
        let placed = finish_move(&meta, &from, &target, None, &[], &ctl).unwrap();
        assert_eq!(placed.top(), complete.join(&meta.name));
        assert!(!from.top().exists());
        assert_eq!(ctl.copied.load(Ordering::Relaxed), 0, "nothing copied");
        // Called again (a crash after the rename, before the record): done.
        assert_eq!(finish_move(&meta, &from, &target, None, &[], &ctl).unwrap(), placed);
    }

    #[test]
    fn a_move_onto_the_place_the_data_is_at_touches_nothing() {
        // Two setLocation requests for one folder: the second moves the
        // data from where the first put it to the same place.
        let root = tempfile::tempdir().unwrap();
        let (meta, here) = data_in(root.path());
        let settled = Place { settled: true, ..here.clone() };
        let placed = finish_move(&meta, &settled, &settled, None, &[], &MoveControl::default()).unwrap();
        assert_eq!(placed.top(), here.top());
        assert!(is_our_data(&meta, &placed, &AtomicBool::new(false)).unwrap(), "the data is still whole");
    }

    #[test]
    fn a_name_taken_meanwhile_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let (incomplete, complete) = (root.path().join("incomplete"), root.path().join("complete"));
        let (meta, from) = data_in(&incomplete);
        let target = target_in(&complete, "", &meta);
        std::fs::create_dir_all(target.top()).unwrap();
        std::fs::write(target.top().join("library.mkv"), b"the user's").unwrap();
        let placed = finish_move(&meta, &from, &target, None, &[], &MoveControl::default()).unwrap();
        assert_eq!(placed.name, format!("{} (2)", meta.name));
        assert_eq!(std::fs::read(target.top().join("library.mkv")).unwrap(), b"the user's");
        assert!(!from.top().exists());
    }

    #[test]
    fn a_copy_across_filesystems_is_verified_and_a_stale_one_replaced() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let (meta, from) = data_in(&root.path().join("incomplete"));
        let target = target_in(other.path(), "", &meta);
        // A half copy from a crash sits under the hidden name.
        let stale = other.path().join(format!(".dropseed-{}.part", &meta.info_hash.hex()[..16]));
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("junk"), b"half").unwrap();
        let ctl = across();
        let placed = finish_move(&meta, &from, &target, None, &[], &ctl).unwrap();
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
        let other = tempfile::tempdir().unwrap();
        let (meta, from) = data_in(&root.path().join("incomplete"));
        let target = target_in(other.path(), "", &meta);
        let ctl = across();
        ctl.stop.store(true, Ordering::Relaxed);
        let e = finish_move(&meta, &from, &target, None, &[], &ctl).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(is_our_data(&meta, &from, &AtomicBool::new(false)).unwrap() && !target.top().exists());
        ctl.stop.store(false, Ordering::Relaxed);
        finish_move(&meta, &from, &target, None, &[], &ctl).unwrap();
        assert!(is_our_data(&meta, &Place { settled: true, ..target }, &AtomicBool::new(false)).unwrap());
    }

    /// A control that makes the move a copy, as across filesystems.
    fn across() -> MoveControl {
        MoveControl { force_copy: true, ..Default::default() }
    }

    #[test]
    fn a_category_folder_made_a_link_is_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let complete = root.path().join("complete");
        std::fs::create_dir(&complete).unwrap();
        // A group member's `ln -s /elsewhere download/evil`.
        std::os::unix::fs::symlink(outside.path(), complete.join("evil")).unwrap();
        for (meta, from) in [data_in(&root.path().join("a")), single_in(&root.path().join("b"))] {
            for ctl in [MoveControl::default(), across()] {
                let target = target_in(&complete, "evil", &meta);
                let e = finish_move(&meta, &from, &target, None, &[], &ctl).expect_err("moved through the link");
                assert!(e.to_string().contains(&complete.join("evil").display().to_string()), "{e}");
                let written: Vec<_> = std::fs::read_dir(outside.path()).unwrap().flatten().map(|e| e.path()).collect();
                assert!(written.is_empty(), "written outside dropseed's folders: {written:?}");
                assert!(is_our_data(&meta, &from, &AtomicBool::new(false)).unwrap(), "the source is whole");
            }
        }
        // A real folder of that name is made (and used) without a link.
        std::fs::remove_file(complete.join("evil")).unwrap();
        let (meta, from) = single_in(&root.path().join("c"));
        let placed = finish_move(&meta, &from, &target_in(&complete, "evil", &meta), None, &[], &across()).unwrap();
        assert_eq!(placed.top(), complete.join("evil").join(&meta.name));
        assert!(is_our_data(&meta, &placed, &AtomicBool::new(false)).unwrap());
    }

    /// A single-file torrent (`film.mkv`, 40000 bytes) written in `dir`.
    fn single_in(dir: &Path) -> (Metainfo, Place) {
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 13 % 253) as u8).collect();
        torrent_in(dir, b"6:lengthi40000e4:name8:film.mkv", &bytes)
    }

    fn hidden(dir: &Path, meta: &Metainfo) -> PathBuf {
        dir.join(format!(".dropseed-{}.part", &meta.info_hash.hex()[..16]))
    }

    /// Sets what runs between the copy's steps.
    fn plant(ctl: &MoveControl, f: impl FnMut(Step) + Send + 'static) {
        *ctl.between_steps.lock().unwrap() = Some(Box::new(f));
    }

    fn is_link(p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
    }

    #[test]
    fn a_link_planted_at_a_folder_inside_the_hidden_copy_is_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let (meta, from) = data_in(&root.path().join("incomplete"));
        let target = target_in(other.path(), "", &meta);
        let sub_file = meta.files.iter().position(|f| f.path.len() == 3).unwrap();
        let ctl = across();
        let (tmp, out) = (hidden(other.path(), &meta), outside.path().to_path_buf());
        // Once the hidden folder exists, its `sub` becomes a link outside.
        plant(&ctl, move |step| {
            if step == Step::File(sub_file) {
                let _ = std::os::unix::fs::symlink(&out, tmp.join("sub"));
            }
        });
        let _ = finish_move(&meta, &from, &target, None, &[], &ctl);
        let written: Vec<_> = std::fs::read_dir(outside.path()).unwrap().flatten().map(|e| e.path()).collect();
        assert!(written.is_empty(), "written outside dropseed's folders: {written:?}");
        assert!(is_our_data(&meta, &from, &AtomicBool::new(false)).unwrap(), "the source is whole");
        // Tried again with no one interfering: the move completes.
        let placed = finish_move(&meta, &from, &target, None, &[], &across()).unwrap();
        assert!(is_our_data(&meta, &placed, &AtomicBool::new(false)).unwrap());
        assert!(!is_link(&placed.top().join("sub")));
    }

    #[test]
    fn a_link_planted_at_the_hidden_name_of_a_single_file_is_never_written_through() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("precious");
        std::fs::write(&victim, b"someone else's file").unwrap();
        let (meta, from) = single_in(&root.path().join("incomplete"));
        let target = target_in(other.path(), "", &meta);
        let ctl = across();
        let (tmp, v) = (hidden(other.path(), &meta), victim.clone());
        plant(&ctl, move |step| {
            if step == Step::Cleared {
                let _ = std::os::unix::fs::symlink(&v, &tmp);
            }
        });
        let _ = finish_move(&meta, &from, &target, None, &[], &ctl);
        assert_eq!(std::fs::read(&victim).unwrap(), b"someone else's file", "overwritten through the link");
        assert!(is_our_data(&meta, &from, &AtomicBool::new(false)).unwrap(), "the source is whole");
    }

    #[test]
    fn a_link_planted_at_the_target_during_a_copy_never_costs_the_only_copy() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        for (meta, from) in [data_in(&root.path().join("a")), single_in(&root.path().join("b"))] {
            let target = target_in(other.path(), "", &meta);
            let ctl = across();
            // During the copy, the target's name becomes a link back at the source.
            let (link, source) = (target.top(), from.top());
            plant(&ctl, move |step| {
                if step == Step::Cleared {
                    let _ = std::os::unix::fs::symlink(&source, &link);
                }
            });
            let first = finish_move(&meta, &from, &target, None, &[], &ctl);
            // Tried again (after the error's minute), and once more.
            let placed = first.or_else(|_| finish_move(&meta, &from, &target, None, &[], &across()));
            let placed = placed.unwrap();
            assert!(!is_link(&placed.top()), "{} is the link", placed.top().display());
            assert!(
                is_our_data(&meta, &placed, &AtomicBool::new(false)).unwrap(),
                "the data is where it is said to be"
            );
            assert!(is_link(&target.top()), "the link is left alone");
        }
    }
}
