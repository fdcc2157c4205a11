//! Files reached from an open folder handle, one name at a time, never
//! through a symlink.
//!
//! Other members of dropseed's group (Sonarr, Radarr, scripts) may write in
//! its folders, so any name below them may turn into a link at any moment.
//! Resolving a path again, as `create_dir_all`, `File::create` or
//! `remove_file` do, would follow such a link out of dropseed's folders.
//! Here a configured folder is opened once (its own path is the admin's, and
//! links in it are followed); every name below it is opened relative to its
//! parent's handle with `O_NOFOLLOW`, files are made with `O_EXCL`, renames
//! never replace, and a link met anywhere is an error, never a way out.
//! Everything blocks.

use crate::metainfo::Metainfo;
use crate::storage::Place;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;
use rustix::path::Arg;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Folders deeper than this in a tree being removed are left (a tree is
/// ours to remove only when dropseed made it; none is this deep).
const MAX_DEPTH: usize = 64;

/// Names read from a folder at a time while emptying it, and the most
/// batches one folder may take (someone adding names as fast as they go
/// must not keep the removal going for ever).
const BATCH: usize = 256;
const MAX_BATCHES: usize = 4096;

/// What identifies a file as the one dropseed had open: a file put in its
/// place (another inode), or rewritten since (size, mtime), differs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    // Bencode integers are read as i64: the u64s are kept as their bits.
    #[serde(with = "as_i64")]
    pub dev: u64,
    #[serde(with = "as_i64")]
    pub ino: u64,
    #[serde(with = "as_i64")]
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i64,
}

impl FileStamp {
    pub fn of(m: &std::fs::Metadata) -> FileStamp {
        let mtime_ns = m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec());
        FileStamp { dev: m.dev(), ino: m.ino(), size: m.size(), mtime_ns }
    }

    /// The same inode (whatever its size and times).
    pub fn same_file(&self, other: &FileStamp) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// A u64 saved as the i64 of the same bits: serde_bencode reads every
/// integer as an i64, so one above 2^63 would make the whole record
/// unreadable.
mod as_i64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(*v as i64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(i64::deserialize(d)? as u64)
    }
}

/// Reads a record's stamps, or none if they are malformed: a bad stamp
/// costs only the proof it gave (`remove --delete-data` then keeps files
/// it cannot prove), never the rest of the record.
pub fn lenient_stamps<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<FileStamp>, D::Error> {
    let value = serde_bencode::value::Value::deserialize(d)?;
    let stamps = serde_bencode::to_bytes(&value).and_then(|b| serde_bencode::from_bytes::<Vec<FileStamp>>(&b));
    Ok(stamps.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "resume record: malformed file stamps ignored");
        Vec::new()
    }))
}

/// The folders from `place.dir` down to file `i` of `meta`, and the file's
/// own name: `([], name)` for a single file, `([name, sub..], file)` else.
pub fn names<'a>(place: &'a Place, meta: &'a Metainfo, i: usize) -> (Vec<&'a str>, &'a str) {
    let mut all: Vec<&str> =
        std::iter::once(place.name.as_str()).chain(meta.files[i].path.iter().skip(1).map(String::as_str)).collect();
    let file = all.pop().expect("the item's name at least");
    (all, file)
}

/// A folder the admin configured (`download_dir`, `incomplete_dir`, a
/// category's `download_dir`), opened by path: links in its own path are
/// the admin's and followed. Never for a folder derived below one (an
/// automatic category folder, a torrent's item): group members can replace
/// those with links, so they are reached with [`open_place_dir`] or
/// [`walk`] from this handle.
pub fn open_configured_root(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?)
}

/// The folder holding `place`'s item: its configured folder by path, then
/// the folder made in it (if any) without following a link. With `make`,
/// what is absent is made (the configured folder by path, as the admin
/// named it). A link at the made folder is an error naming it.
pub fn open_place_dir(place: &Place, make: bool) -> io::Result<OwnedFd> {
    if make {
        std::fs::create_dir_all(place.root())?;
    }
    let root = open_configured_root(place.root())?;
    if place.sub.is_empty() {
        return Ok(root);
    }
    let names: Vec<&str> = place.sub_names().collect();
    let sub = if make { walk_making(root.as_fd(), &names) } else { walk(root.as_fd(), &names) };
    sub.map_err(|e| match is_link_error(&e) {
        true => io::Error::new(e.kind(), format!("{} is a link or not a folder; not followed", place.dir.display())),
        false => e,
    })
}

/// Whether `place`'s item exists (as anything, a link included); an error
/// when its folder cannot be reached without a link.
pub fn item_exists(place: &Place) -> io::Result<bool> {
    let dir = match open_place_dir(place, false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        r => r?,
    };
    match rfs::statat(dir.as_fd(), place.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The folder `name` in `dir`; a link there is an error (ELOOP/ENOTDIR).
pub fn open_dir<P: Arg>(dir: BorrowedFd<'_>, name: P) -> io::Result<OwnedFd> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rfs::openat(dir, name, flags, Mode::empty())?)
}

/// The folder `name` in `dir`, made if absent (never through a link).
pub fn make_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    match rfs::mkdirat(dir, name, Mode::from_raw_mode(0o777)) {
        Ok(()) | Err(Errno::EXIST) => open_dir(dir, name),
        Err(e) => Err(e.into()),
    }
}

/// A new folder `name` in `dir`: anything already there is an error.
pub fn make_new_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    rfs::mkdirat(dir, name, Mode::from_raw_mode(0o777))?;
    open_dir(dir, name)
}

/// The folder reached from `root` through `dirs`, none of them a link.
pub fn walk(root: BorrowedFd<'_>, dirs: &[&str]) -> io::Result<OwnedFd> {
    let mut at = root.try_clone_to_owned()?;
    for d in dirs {
        at = open_dir(at.as_fd(), *d)?;
    }
    Ok(at)
}

/// [`walk`], making the folders that are absent.
pub fn walk_making(root: BorrowedFd<'_>, dirs: &[&str]) -> io::Result<OwnedFd> {
    let mut at = root.try_clone_to_owned()?;
    for d in dirs {
        at = make_dir(at.as_fd(), d)?;
    }
    Ok(at)
}

/// A new file `name` in `dir`, open read-write; anything already there (a
/// link included) is an error.
pub fn create_new(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(File::from(rfs::openat(dir, name, flags, Mode::from_raw_mode(0o666))?))
}

/// The regular file `name` in `dir`, open read-write, made if absent; a
/// link there is an error.
pub fn open_or_create(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    let flags = OFlags::CREATE | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = File::from(rfs::openat(dir, name, flags, Mode::from_raw_mode(0o666))?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is not a regular file")));
    }
    Ok(file)
}

/// The regular file `name` in `dir`: a link, a FIFO (never waited on) or a
/// device there is an error.
pub fn open_file(dir: BorrowedFd<'_>, name: &str, write: bool) -> io::Result<File> {
    let mode = if write { OFlags::RDWR } else { OFlags::RDONLY };
    let flags = mode | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let file = File::from(rfs::openat(dir, name, flags, Mode::empty())?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is not a regular file")));
    }
    Ok(file)
}

/// The stamp of `name` in `dir` as it is (a link is not followed), or None
/// when it is not a regular file. Needs no read permission.
pub fn stamp_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<FileStamp>> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let m = File::from(rfs::openat(dir, name, flags, Mode::empty())?).metadata()?;
    Ok(m.is_file().then(|| FileStamp::of(&m)))
}

/// Whether an error says a name was a link (or not a folder) on the way.
pub fn is_link_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
}

/// Removes the name `name` from `dir` (a file, or a link itself).
pub fn unlink(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(rfs::unlinkat(dir, name, AtFlags::empty())?)
}

/// Removes the empty folder `name` from `dir` (never one a link points at).
pub fn rmdir(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// Removes `name` in `dir` and, if it is a folder, everything under it,
/// without following a link anywhere (a link is removed, not its target).
/// `NotFound` if there is nothing of that name.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let c = CString::new(name).map_err(|_| io::Error::other("NUL in a name"))?;
    remove_tree_at(dir, &c, MAX_DEPTH)
}

fn remove_tree_at(dir: BorrowedFd<'_>, name: &std::ffi::CStr, depth: usize) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Err(Errno::ISDIR) => {}
        r => return Ok(r?),
    }
    if depth == 0 {
        return Err(io::Error::other("folders nested too deep to remove"));
    }
    let sub = open_dir(dir, name)?;
    empty_folder(sub.as_fd(), depth - 1)?;
    Ok(rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// Removes everything in the folder `dir`, a bounded batch of names at a
/// time (a folder of a million names costs no more memory than one).
fn empty_folder(dir: BorrowedFd<'_>, depth: usize) -> io::Result<()> {
    for _ in 0..MAX_BATCHES {
        let mut names = Vec::with_capacity(BATCH);
        for entry in rfs::Dir::read_from(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                names.push(name.to_owned());
            }
            if names.len() == BATCH {
                break;
            }
        }
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            match remove_tree_at(dir, &name, depth) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
    }
    Err(io::Error::other("a folder that does not empty"))
}

/// fsync of an open folder: the names made or removed in it are durable.
pub fn sync(dir: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rfs::fsync(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_link_anywhere_on_the_way_is_an_error_not_followed() {
        let (root, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir(root.path().join("item")).unwrap();
        symlink(outside.path(), root.path().join("item/sub")).unwrap();
        symlink(outside.path().join("f"), root.path().join("item/f")).unwrap();
        let r = open_configured_root(root.path()).unwrap();
        let e = walk(r.as_fd(), &["item", "sub"]).unwrap_err();
        assert!(is_link_error(&e), "{e}");
        assert!(is_link_error(&walk_making(r.as_fd(), &["item", "sub", "deeper"]).unwrap_err()));
        let item = walk(r.as_fd(), &["item"]).unwrap();
        assert_eq!(create_new(item.as_fd(), "f").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(open_file(item.as_fd(), "f", true).is_err());
        assert_eq!(stamp_at(item.as_fd(), "sub").unwrap(), None, "a link is not a file");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing made outside");
    }

    #[test]
    fn remove_tree_removes_links_not_what_they_point_at() {
        let (root, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let t = root.path().join(".part");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), b"x").unwrap();
        symlink(outside.path(), t.join("a/link")).unwrap();
        let r = open_configured_root(root.path()).unwrap();
        remove_tree(r.as_fd(), ".part").unwrap();
        assert!(!t.exists());
        assert!(outside.path().join("keep").exists());
        assert_eq!(remove_tree(r.as_fd(), ".part").unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
