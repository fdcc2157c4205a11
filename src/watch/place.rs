//! A file of the watch folder reached without following a link. Its folder
//! is opened once (a category folder with `O_NOFOLLOW`), then the file is
//! looked at, read, renamed and deleted by name under that handle. A group
//! member who swaps a category folder for a link between the scan and the
//! read cannot make dropseed read or rename anything outside the folder.

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A file name in an opened folder of the watch folder.
pub struct Place {
    dir: OwnedFd,
    name: OsString,
}

impl Place {
    /// `path` is `root/NAME` or `root/CATEGORY/NAME`; the root is the
    /// admin's folder (a link there is theirs), a category must be no link.
    pub fn open(root: &Path, path: &Path) -> io::Result<Place> {
        let outside = || io::Error::other("not in the watch folder");
        let (folder, name) = (path.parent().ok_or_else(outside)?, path.file_name().ok_or_else(outside)?);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root_dir = rustix::fs::open(root, flags, Mode::empty())?;
        let dir = if folder == root {
            root_dir
        } else if folder.parent() == Some(root) {
            let category = folder.file_name().ok_or_else(outside)?;
            rustix::fs::openat(&root_dir, category, flags | OFlags::NOFOLLOW, Mode::empty())?
        } else {
            return Err(outside());
        };
        Ok(Place { dir, name: name.to_os_string() })
    }

    /// Size and mtime of a regular file (anything else: an error).
    pub fn stat(&self) -> io::Result<(u64, Option<SystemTime>)> {
        let st = rustix::fs::statat(&self.dir, &self.name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::other("not a regular file"));
        }
        let mtime = u64::try_from(st.st_mtime)
            .ok()
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::new(s, st.st_mtime_nsec as u32)));
        Ok((st.st_size as u64, mtime))
    }

    /// The file's bytes, at most `limit` (see [`super::read_open_file`]).
    pub fn read(&self, limit: u64) -> Result<Vec<u8>, String> {
        // O_NONBLOCK: a FIFO put here must not hold the thread.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, &self.name, flags, Mode::empty())
            .map_err(|e| io::Error::from(e).to_string())?;
        super::read_open_file(std::fs::File::from(fd), limit)
    }

    /// Whether `name` is taken in the folder (by anything, links too).
    pub fn exists(&self, name: &OsStr) -> bool {
        rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Renames the file to `to` in the same folder, never over another.
    pub fn rename_noreplace(&self, to: &OsStr) -> io::Result<()> {
        let d = self.dir.as_fd();
        crate::fsutil::rename_noreplace(d, self.name.as_os_str(), d, to)
    }

    pub fn remove(&self) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.dir, &self.name, AtFlags::empty())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    /// watch/tv/x.torrent, and outside/x.torrent.
    fn layout() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("watch"), t.path().join("outside"));
        std::fs::create_dir_all(root.join("tv")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("tv/x.torrent"), b"inside").unwrap();
        std::fs::write(outside.join("x.torrent"), b"outside").unwrap();
        (t, root, outside)
    }

    #[test]
    fn a_category_swapped_for_a_link_after_opening_is_not_followed() {
        let (_t, root, outside) = layout();
        let place = Place::open(&root, &root.join("tv/x.torrent")).unwrap();
        // The group member swaps the folder for a link to elsewhere.
        std::fs::rename(root.join("tv"), root.join("tv.old")).unwrap();
        symlink(&outside, root.join("tv")).unwrap();
        assert_eq!(place.read(100).unwrap(), b"inside");
        assert_eq!(place.stat().unwrap().0, 6);
        place.rename_noreplace(OsStr::new("x.torrent.added")).unwrap();
        assert!(outside.join("x.torrent").exists(), "the file outside was renamed");
        assert!(root.join("tv.old/x.torrent.added").exists());
        assert!(place.exists(OsStr::new("x.torrent.added")) && !outside.join("x.torrent.added").exists());
    }

    #[test]
    fn a_linked_category_or_a_linked_file_is_refused() {
        let (_t, root, outside) = layout();
        symlink(&outside, root.join("evil")).unwrap();
        assert!(Place::open(&root, &root.join("evil/x.torrent")).is_err());
        assert!(Place::open(&root, &root.join("tv/deeper/x.torrent")).is_err());
        symlink(outside.join("x.torrent"), root.join("tv/link.torrent")).unwrap();
        let place = Place::open(&root, &root.join("tv/link.torrent")).unwrap();
        assert!(place.stat().is_err() && place.read(100).is_err());
        // The root itself may be a link (the admin's choice).
        let via = root.with_file_name("via");
        symlink(&root, &via).unwrap();
        let place = Place::open(&via, &via.join("tv/x.torrent")).unwrap();
        assert_eq!(place.read(100).unwrap(), b"inside");
        place.remove().unwrap();
        assert!(!root.join("tv/x.torrent").exists());
    }
}
