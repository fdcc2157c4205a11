//! Small file and I/O helpers with no place of their own, at the bottom of
//! the crate so that the state files, the DHT, the watch folder, the torrent
//! handoff and the startup messages share them without importing each other.

use rustix::fs::{self as rfs, AtFlags, RenameFlags};
use rustix::io::Errno;
use rustix::path::Arg;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::path::Path;

/// Writes `bytes` to `path` so that a crash leaves the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("state")));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Renames `from` in `from_dir` to `to` in `to_dir`, failing with
/// `AlreadyExists` instead of replacing anything (where the filesystem
/// cannot promise that, a look just before a plain rename).
pub fn rename_noreplace<P: Arg + Copy, Q: Arg + Copy>(
    from_dir: BorrowedFd<'_>,
    from: P,
    to_dir: BorrowedFd<'_>,
    to: Q,
) -> io::Result<()> {
    match rfs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL) | Err(Errno::NOSYS) => match rfs::statat(to_dir, to, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, "the name is taken")),
            Err(Errno::NOENT) => Ok(rfs::renameat(from_dir, from, to_dir, to)?),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// The system's reason without the "(os error N)" tail.
pub fn reason(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::symlink;

    #[test]
    fn rename_noreplace_never_replaces() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a"), b"a").unwrap();
        symlink("/nonexistent", root.path().join("b")).unwrap();
        let r = File::open(root.path()).unwrap();
        let e = rename_noreplace(r.as_fd(), "a", r.as_fd(), "b").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        rename_noreplace(r.as_fd(), "a", r.as_fd(), "c").unwrap();
        assert_eq!(std::fs::read(root.path().join("c")).unwrap(), b"a");
    }

    #[test]
    fn write_atomic_replaces_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn reason_drops_the_os_error_number() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(reason(&e), "No such file or directory");
    }
}
