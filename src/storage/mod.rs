//! Torrent data on disk: one [`TorrentStorage`] per torrent, over a
//! [`FileBackend`] (memory maps by default, positional read/write for
//! filesystems where mmap misbehaves). Every method here blocks and may page
//! fault: call them only from the [`disk::DiskPool`] threads.

pub mod disk;
pub mod layout;

use crate::metainfo::Metainfo;
use layout::Layout;
use memmap2::{MmapOptions, MmapRaw};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Mmap,
    File,
}

/// Per-file block access; offsets are within the file.
trait FileBackend: Send + Sync {
    fn write_at(&self, file: usize, offset: u64, data: &[u8]) -> io::Result<()>;
    fn read_at(&self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn flush(&self, file: usize, offset: u64, len: usize) -> io::Result<()>;

    /// Feeds a range to `hasher`; the default reads it in chunks.
    fn hash_range(&self, file: usize, offset: u64, len: usize, hasher: &mut Sha1) -> io::Result<()> {
        let mut buf = vec![0u8; len.min(1 << 16)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len());
            self.read_at(file, offset + done as u64, &mut buf[..n])?;
            hasher.update(&buf[..n]);
            done += n;
        }
        Ok(())
    }
}

/// An open torrent's files.
pub struct TorrentStorage {
    layout: Layout,
    backend: Box<dyn FileBackend>,
    pub kind: BackendKind,
}

/// What `prepare` found on disk before opening.
#[derive(Debug, Default)]
pub struct DiskSurvey {
    /// Bytes still to be allocated for files to reach full size.
    pub bytes_needed: u64,
    /// Files that exist with at least one byte.
    pub existing_files: Vec<usize>,
    /// Files missing or shorter than their torrent length.
    pub short_files: Vec<usize>,
}

pub fn file_path(download_dir: &Path, meta: &Metainfo, file: usize) -> PathBuf {
    download_dir.join(meta.files[file].relative_path())
}

/// Looks at what is on disk for `meta` without changing anything.
pub fn survey(download_dir: &Path, meta: &Metainfo) -> DiskSurvey {
    let mut s = DiskSurvey::default();
    for (i, f) in meta.files.iter().enumerate() {
        if f.padding {
            continue;
        }
        let len = std::fs::metadata(file_path(download_dir, meta, i)).map(|m| m.len()).unwrap_or(0);
        if len > 0 {
            s.existing_files.push(i);
        }
        if len < f.length {
            s.short_files.push(i);
            s.bytes_needed += f.length - len;
        }
    }
    s
}

/// Free bytes available to us on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Reserves real blocks for the whole file, so writes through a mapping can
/// not hit a full disk later (that would be SIGBUS). Returns false where the
/// filesystem cannot preallocate.
fn preallocate(file: &File, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            file.set_len(len)?;
            Ok(false)
        }
        _ => Err(err),
    }
}

impl TorrentStorage {
    /// Creates every file at full size (zero-length files too, padding never)
    /// and opens the backend. Nothing is written outside `download_dir`:
    /// metainfo validation already refused unsafe path elements.
    pub fn open(download_dir: &Path, meta: &Metainfo, kind: BackendKind) -> io::Result<TorrentStorage> {
        let mut files = Vec::with_capacity(meta.files.len());
        let mut all_preallocated = true;
        for (i, f) in meta.files.iter().enumerate() {
            if f.padding {
                files.push(None);
                continue;
            }
            let path = file_path(download_dir, meta, i);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
            if file.metadata()?.len() < f.length {
                all_preallocated &= preallocate(&file, f.length)?;
            }
            files.push(Some((file, f.length)));
        }
        let kind = if kind == BackendKind::Mmap && !all_preallocated {
            tracing::warn!(torrent = %meta.name, "filesystem cannot preallocate; using the file backend for this torrent (mmap would risk SIGBUS on a full disk)");
            BackendKind::File
        } else {
            kind
        };
        let backend: Box<dyn FileBackend> = match kind {
            BackendKind::Mmap => Box::new(MmapBackend::new(files)?),
            BackendKind::File => Box::new(PlainBackend { files }),
        };
        Ok(TorrentStorage { layout: Layout::new(meta), backend, kind })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Writes `data` at stream offset `offset`; padding is skipped.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        for s in self.layout.segments(offset, data.len()) {
            if !s.padding {
                self.backend.write_at(s.file, s.file_offset, &data[s.buf_offset..s.buf_offset + s.len])?;
            }
        }
        Ok(())
    }

    /// Reads into `buf` from stream offset `offset`; padding reads as zeros.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        for s in self.layout.segments(offset, buf.len()) {
            let dst = &mut buf[s.buf_offset..s.buf_offset + s.len];
            if s.padding {
                dst.fill(0);
            } else {
                self.backend.read_at(s.file, s.file_offset, dst)?;
            }
        }
        Ok(())
    }

    /// Makes the bytes of a range durable (msync / fdatasync).
    pub fn flush(&self, offset: u64, len: usize) -> io::Result<()> {
        for s in self.layout.segments(offset, len) {
            if !s.padding {
                self.backend.flush(s.file, s.file_offset, s.len)?;
            }
        }
        Ok(())
    }

    /// SHA-1 of piece `index` as it is on disk (padding hashes as zeros),
    /// without copying it out first where the backend allows.
    pub fn hash_piece(&self, index: usize) -> io::Result<[u8; 20]> {
        let r = self.layout.piece_range(index);
        let mut hasher = Sha1::new();
        for s in self.layout.segments(r.start, (r.end - r.start) as usize) {
            if s.padding {
                hasher.update(vec![0u8; s.len]);
            } else {
                self.backend.hash_range(s.file, s.file_offset, s.len, &mut hasher)?;
            }
        }
        Ok(hasher.finalize().into())
    }

    pub fn read_piece(&self, index: usize) -> io::Result<Vec<u8>> {
        let r = self.layout.piece_range(index);
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        self.read(r.start, &mut buf)?;
        Ok(buf)
    }
}

struct MmapBackend {
    /// Per file: the open file (to check its length) and its mapping.
    maps: Vec<Option<(File, u64, MmapRaw)>>,
}

impl MmapBackend {
    fn new(files: Vec<Option<(File, u64)>>) -> io::Result<MmapBackend> {
        let maps = files
            .into_iter()
            .map(|f| match f {
                Some((file, len)) if len > 0 => {
                    let map = MmapOptions::new().len(len as usize).map_raw(&file)?;
                    Ok(Some((file, len, map)))
                }
                _ => Ok(None),
            })
            .collect::<io::Result<_>>()?;
        Ok(MmapBackend { maps })
    }

    /// The mapping for `file`, after checking the file still covers the range:
    /// touching a mapped page past the end of a truncated file is SIGBUS, so a
    /// file cut short behind our back becomes an error instead.
    fn checked(&self, file: usize, offset: u64, len: usize) -> io::Result<&MmapRaw> {
        let (f, expected, map) =
            self.maps[file].as_ref().ok_or_else(|| io::Error::other("access to an unmapped file"))?;
        let end = offset + len as u64;
        if end > *expected {
            return Err(io::Error::other("access beyond the end of the file"));
        }
        let actual = f.metadata()?.len();
        if actual < end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file was truncated to {actual} bytes (expected {expected})"),
            ));
        }
        Ok(map)
    }
}

impl FileBackend for MmapBackend {
    fn write_at(&self, file: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        let map = self.checked(file, offset, data.len())?;
        populate_for_write(map, offset as usize, data.len());
        // SAFETY: the range is inside the mapping (checked above). Pieces are
        // disjoint ranges and each piece is written by one disk job, so no two
        // threads write the same bytes at once.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), map.as_mut_ptr().add(offset as usize), data.len()) };
        Ok(())
    }

    fn read_at(&self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let map = self.checked(file, offset, buf.len())?;
        // SAFETY: in range (checked); readers only see verified pieces, which
        // are never written again.
        unsafe { std::ptr::copy_nonoverlapping(map.as_ptr().add(offset as usize), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn flush(&self, file: usize, offset: u64, len: usize) -> io::Result<()> {
        let map = self.checked(file, offset, len)?;
        map.flush_range(offset as usize, len)
    }

    fn hash_range(&self, file: usize, offset: u64, len: usize, hasher: &mut Sha1) -> io::Result<()> {
        let map = self.checked(file, offset, len)?;
        // SAFETY: in range (checked); hashed straight from the mapping on a
        // disk thread, so no copy and no page fault on an async worker.
        hasher.update(unsafe { std::slice::from_raw_parts(map.as_ptr().add(offset as usize), len) });
        Ok(())
    }
}

/// Faults in the pages of a range in one system call before a copy, instead
/// of one page fault per 4 KiB page during it (Linux 5.14+; a no-op where the
/// kernel does not know MADV_POPULATE_WRITE, the copy then faults as usual).
fn populate_for_write(map: &MmapRaw, offset: usize, len: usize) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let page = 4096;
    let start = offset / page * page;
    let end = (offset + len).min(map.len());
    // SAFETY: the range lies within the mapping; madvise does not change its
    // contents, it only makes the pages resident and writable.
    unsafe {
        libc::madvise(map.as_mut_ptr().add(start).cast(), end - start, MADV_POPULATE_WRITE);
    }
}

struct PlainBackend {
    files: Vec<Option<(File, u64)>>,
}

impl PlainBackend {
    fn file(&self, file: usize) -> io::Result<&File> {
        self.files[file].as_ref().map(|f| &f.0).ok_or_else(|| io::Error::other("access to a padding file"))
    }
}

impl FileBackend for PlainBackend {
    fn write_at(&self, file: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file(file)?.write_all_at(data, offset)
    }
    fn read_at(&self, file: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file(file)?.read_exact_at(buf, offset)
    }
    fn flush(&self, file: usize, _offset: u64, _len: usize) -> io::Result<()> {
        self.file(file)?.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::tests::torrent;

    fn multi() -> Metainfo {
        let info = format!(
            "d5:filesld6:lengthi5e4:pathl1:aeed4:attr1:p6:lengthi11e4:pathl4:.pad1:1eed6:lengthi0e4:pathl5:emptyeed6:lengthi20e4:pathl3:sub1:beee4:name3:dir12:piece lengthi16e6:pieces60:{}e",
            "a".repeat(60)
        );
        Metainfo::from_torrent_bytes(&torrent(&info)).unwrap()
    }

    #[test]
    fn both_backends_write_and_read_across_files() {
        for kind in [BackendKind::Mmap, BackendKind::File] {
            let dir = tempfile::tempdir().unwrap();
            let meta = multi();
            let s = TorrentStorage::open(dir.path(), &meta, kind).unwrap();
            let data: Vec<u8> = (1..=36).collect();
            s.write(0, &data).unwrap();
            s.flush(0, 36).unwrap();
            let mut back = vec![0u8; 36];
            s.read(0, &mut back).unwrap();
            // Padding bytes read back as zeros, never stored.
            let mut expect = data.clone();
            expect[5..16].fill(0);
            assert_eq!(back, expect);
            assert_eq!(std::fs::read(dir.path().join("dir/a")).unwrap(), &data[..5]);
            assert_eq!(std::fs::read(dir.path().join("dir/sub/b")).unwrap(), &data[16..]);
            assert_eq!(std::fs::read(dir.path().join("dir/empty")).unwrap().len(), 0);
            assert!(!dir.path().join("dir/.pad").exists());
            // Hashing in place agrees with hashing a copy.
            let copy = s.read_piece(1).unwrap();
            assert_eq!(s.hash_piece(1).unwrap(), <[u8; 20]>::from(Sha1::digest(&copy)));
        }
    }

    #[test]
    fn truncated_file_is_an_error_not_sigbus() {
        let dir = tempfile::tempdir().unwrap();
        let meta = multi();
        let s = TorrentStorage::open(dir.path(), &meta, BackendKind::Mmap).unwrap();
        std::fs::OpenOptions::new().write(true).open(dir.path().join("dir/sub/b")).unwrap().set_len(2).unwrap();
        let mut buf = vec![0u8; 20];
        let err = s.read(16, &mut buf).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn survey_reports_missing_and_existing() {
        let dir = tempfile::tempdir().unwrap();
        let meta = multi();
        let before = survey(dir.path(), &meta);
        assert_eq!(before.bytes_needed, 25);
        assert!(before.existing_files.is_empty());
        TorrentStorage::open(dir.path(), &meta, BackendKind::File).unwrap();
        let after = survey(dir.path(), &meta);
        assert_eq!(after.bytes_needed, 0);
        assert_eq!(after.existing_files, vec![0, 3]);
        assert!(free_space(dir.path()).unwrap() > 0);
    }
}
