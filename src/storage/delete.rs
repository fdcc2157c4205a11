//! Deleting a torrent's files: `remove --delete-data`, and the source of a
//! move once its copy is proven in place. Other members of dropseed's group
//! can change what lies under a torrent's name (a folder made a link to
//! elsewhere, a file of the same length put in a file's place), so a file
//! is deleted only when it is proven the torrent's: reached from the
//! configured folder without a link (see [`super::nofollow`]) and, where
//! the torrent recorded them, with the device, inode, size and mtime it had
//! when the torrent last had it open. Anything else is kept and named.
//!
//! Several torrents may seed one file (cross-seeding): a file another
//! torrent names at the same path is kept, named. A name of ours whose
//! inode another torrent holds under another name (a hard link made by
//! matching) goes: the other name keeps the data.

use super::nofollow::{self, FileStamp};
use crate::metainfo::Metainfo;
use crate::storage::Place;
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

/// What proves a file the torrent's.
pub enum Expect<'a> {
    /// The stamp of each of the torrent's files (by index) as it last had
    /// them open: only that very file, unchanged, is deleted.
    Stamps(&'a [FileStamp]),
    /// A record from before stamps were kept: a regular file of the
    /// torrent's length, reached without a link.
    Length,
}

impl Expect<'_> {
    fn proves(&self, meta: &Metainfo, i: usize, found: &FileStamp) -> bool {
        match self {
            Expect::Stamps(stamps) => match stamps.get(i) {
                // Not held open (a zero-length file is not mapped): its
                // length is all that is known.
                Some(s) if *s == FileStamp::default() => found.size == meta.files[i].length,
                s => s == Some(found),
            },
            Expect::Length => found.size == meta.files[i].length,
        }
    }
}

/// Why a file was not deleted.
#[derive(Debug)]
pub enum Kept {
    /// The file, or a folder on its way, is a link or not what it should be.
    NotPlain,
    /// Another file than the one the torrent had, or changed since.
    NotOurs,
    /// It could not be looked at or deleted.
    Failed(io::Error),
    /// Another torrent still seeds from this very file.
    InUse,
    /// A borrowed torrent (cross-seed) not complete: its pieces were never
    /// all verified, so the files are not proven its own.
    NotVerified,
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kept::NotPlain => write!(f, "a link, or under one"),
            Kept::NotOurs => write!(f, "not the file the torrent had"),
            Kept::Failed(e) => write!(f, "{e}"),
            Kept::InUse => write!(f, "still used by another torrent"),
            Kept::NotVerified => write!(f, "not verified as this torrent's data"),
        }
    }
}

/// What a deletion did.
#[derive(Debug, Default)]
pub struct Deleted {
    pub removed: usize,
    /// Files left in place, and why (at most one per torrent file).
    pub kept: Vec<(PathBuf, Kept)>,
}

impl Deleted {
    /// "; kept 2 files: /a (why), /b (why)", or "".
    pub fn kept_note(&self) -> String {
        if self.kept.is_empty() {
            return String::new();
        }
        let shown: Vec<String> = self.kept.iter().take(5).map(|(p, why)| format!("{} ({why})", p.display())).collect();
        let more = self.kept.len() - shown.len();
        format!(
            "; kept {} file{}: {}{}",
            self.kept.len(),
            if self.kept.len() == 1 { "" } else { "s" },
            shown.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        )
    }
}

/// Deletes the files of `meta` in `place` that `expect` proves ours, then
/// the torrent's folders left empty (never anything else they hold).
pub fn delete_files(meta: &Metainfo, place: &Place, expect: &Expect) -> io::Result<Deleted> {
    delete_files_unused(meta, place, expect, &HashSet::new())
}

/// [`delete_files`], keeping the files whose path below the item is in
/// `in_use` (those other torrents seed from at the same path).
pub fn delete_files_unused(
    meta: &Metainfo,
    place: &Place,
    expect: &Expect,
    in_use: &HashSet<Vec<String>>,
) -> io::Result<Deleted> {
    let root = match nofollow::open_place_dir(place, false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Deleted::default()),
        r => r?,
    };
    let mut done = Deleted::default();
    for (i, _) in meta.files.iter().enumerate().filter(|(_, f)| !f.padding) {
        match delete_one(root.as_fd(), meta, place, i, expect, in_use) {
            Ok(true) => done.removed += 1,
            Ok(false) => {}
            Err(why) => done.kept.push((place.file_path(meta, i), why)),
        }
    }
    remove_empty_folders(root.as_fd(), meta, place);
    nofollow::sync(root.as_fd())?;
    Ok(done)
}

/// Deletes file `i` if proven ours: Ok(false) when it is not there.
fn delete_one(
    root: BorrowedFd<'_>,
    meta: &Metainfo,
    place: &Place,
    i: usize,
    expect: &Expect,
    in_use: &HashSet<Vec<String>>,
) -> Result<bool, Kept> {
    if in_use.contains(meta.files[i].path.get(1..).unwrap_or_default()) {
        return Err(Kept::InUse);
    }
    let (dirs, name) = nofollow::names(place, meta, i);
    let dir = match nofollow::walk(root, &dirs) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(if nofollow::is_link_error(&e) { Kept::NotPlain } else { Kept::Failed(e) }),
    };
    match nofollow::stamp_at(dir.as_fd(), name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Kept::Failed(e)),
        Ok(None) => Err(Kept::NotPlain),
        Ok(Some(found)) if !expect.proves(meta, i, &found) => Err(Kept::NotOurs),
        // unlinkat never follows the name: whatever is there now, only
        // that name in our folder goes.
        Ok(Some(_)) => nofollow::unlink(dir.as_fd(), name).map(|()| true).map_err(Kept::Failed),
    }
}

/// The torrent's folders, deepest first, each removed if empty.
fn remove_empty_folders(root: BorrowedFd<'_>, meta: &Metainfo, place: &Place) {
    let mut folders: Vec<Vec<&str>> = Vec::new();
    for i in 0..meta.files.len() {
        let (dirs, _) = nofollow::names(place, meta, i);
        for n in 1..=dirs.len() {
            folders.push(dirs[..n].to_vec());
        }
    }
    folders.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    folders.dedup();
    for f in folders {
        let (last, parents) = f.split_last().expect("not empty");
        if let Ok(parent) = nofollow::walk(root, parents) {
            let _ = nofollow::rmdir(parent.as_fd(), last); // fails, as it should, if not empty
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendKind;
    use crate::metainfo::tests::torrent;
    use crate::storage::TorrentStorage;

    /// `dir/a` (5 bytes) and `dir/sub/b` (20 bytes), written in `root`.
    fn opened(root: &std::path::Path) -> (Metainfo, Place, TorrentStorage) {
        let info = format!(
            "d5:filesld6:lengthi5e4:pathl1:aeed6:lengthi20e4:pathl3:sub1:beee4:name3:dir12:piece lengthi16e6:pieces40:{}e",
            "a".repeat(40)
        );
        let meta = Metainfo::from_torrent_bytes(&torrent(&info)).unwrap();
        let place = Place::new(root, "", "dir", true);
        let s = TorrentStorage::open(&place, &meta, BackendKind::File).unwrap();
        s.write(0, &[1; 25]).unwrap();
        (meta, place, s)
    }

    #[test]
    fn only_files_proven_ours_are_deleted() {
        let (root, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (meta, place, storage) = opened(root.path());
        let stamps = storage.stamps();
        drop(storage);
        // `sub` becomes a link to a folder outside holding a `b` of the
        // same length; `a` is replaced by another file of the same length.
        std::fs::write(outside.path().join("b"), [9; 20]).unwrap();
        std::fs::remove_dir_all(root.path().join("dir/sub")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("dir/sub")).unwrap();
        std::fs::remove_file(root.path().join("dir/a")).unwrap();
        std::fs::write(root.path().join("dir/a"), [7; 5]).unwrap();
        let done = delete_files(&meta, &place, &Expect::Stamps(&stamps)).unwrap();
        assert_eq!(std::fs::read(outside.path().join("b")).unwrap(), [9; 20], "followed the link");
        assert!(root.path().join("dir/sub").is_symlink(), "the link itself is not the torrent's either");
        assert!(matches!(done.kept.iter().find(|(p, _)| p.ends_with("sub/b")), Some((_, Kept::NotPlain))));
        assert!(matches!(done.kept.iter().find(|(p, _)| p.ends_with("dir/a")), Some((_, Kept::NotOurs))));
        assert_eq!(std::fs::read(root.path().join("dir/a")).unwrap(), [7; 5]);
        assert!(done.kept_note().contains("dir/a (not the file the torrent had)"), "{}", done.kept_note());
        // A record without stamps: the link still stops it, but a regular
        // file of the right length is taken for the torrent's.
        let done = delete_files(&meta, &place, &Expect::Length).unwrap();
        assert_eq!(std::fs::read(outside.path().join("b")).unwrap(), [9; 20], "followed the link");
        assert_eq!((done.removed, done.kept.len()), (1, 1));
    }

    #[test]
    fn the_torrents_files_and_empty_folders_go_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let (meta, place, storage) = opened(root.path());
        std::fs::write(root.path().join("dir/sub/users.nfo"), b"mine").unwrap();
        let done = delete_files(&meta, &place, &Expect::Stamps(&storage.stamps())).unwrap();
        assert_eq!((done.removed, done.kept.len()), (2, 0));
        assert!(!root.path().join("dir/a").exists() && !root.path().join("dir/sub/b").exists());
        assert!(root.path().join("dir/sub/users.nfo").exists(), "a folder holding the user's file stays");
        std::fs::remove_file(root.path().join("dir/sub/users.nfo")).unwrap();
        delete_files(&meta, &place, &Expect::Length).unwrap();
        assert!(!root.path().join("dir").exists(), "empty folders go");
    }

    #[test]
    fn files_another_torrent_uses_are_kept_and_named() {
        let root = tempfile::tempdir().unwrap();
        let (meta, place, storage) = opened(root.path());
        let stamps = storage.stamps();
        // A cross-seed opened the very same `sub/b` read-only.
        let other = TorrentStorage::open_existing(&place, &meta).unwrap();
        let b = other.stamps()[1];
        assert_eq!((b.dev, b.ino), (stamps[1].dev, stamps[1].ino));
        let in_use = HashSet::from([vec!["sub".to_string(), "b".to_string()]]);
        let done = delete_files_unused(&meta, &place, &Expect::Stamps(&stamps), &in_use).unwrap();
        assert_eq!(done.removed, 1);
        assert!(!root.path().join("dir/a").exists());
        assert_eq!(std::fs::read(root.path().join("dir/sub/b")).unwrap(), [1; 20]);
        assert!(done.kept_note().contains("sub/b (still used by another torrent)"), "{}", done.kept_note());
        // The read-only side cannot write, whatever asks it to.
        assert!(other.write(0, &[2; 25]).is_err());
        assert_eq!(std::fs::read(root.path().join("dir/sub/b")).unwrap(), [1; 20]);
    }
}
