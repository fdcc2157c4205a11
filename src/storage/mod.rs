//! Torrent data on disk: one [`TorrentStorage`] per torrent, over a
//! [`FileBackend`] (memory maps by default, positional read/write for
//! filesystems where mmap misbehaves). Every method here blocks and may page
//! fault: call them only from the [`disk::DiskPool`] threads.

pub mod delete;
pub mod disk;
pub mod layout;
pub mod nofollow;
pub mod place;
pub mod pool;
mod sigbus;

use crate::config::BackendKind;
use crate::metainfo::Metainfo;
use crate::types::Bitfield;
use layout::Layout;
use memmap2::{MmapOptions, MmapRaw};
use nofollow::FileStamp;
pub use place::Place;
use pool::{FilePool, Mapping, Opened};
use sha1::{Digest, Sha1};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of torrent data read and written by every torrent of the process
/// (`/metrics`). Counted here, where every byte passes, rather than at each
/// caller; process-wide, like `/proc/self/io`.
static READ: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Totals of [`READ`] and [`WRITTEN`].
#[derive(Debug, Clone, Copy, Default)]
pub struct IoCounters {
    pub read: u64,
    pub written: u64,
}

pub fn io_counters() -> IoCounters {
    IoCounters { read: READ.load(Ordering::Relaxed), written: WRITTEN.load(Ordering::Relaxed) }
}

/// A part of a block as it is on disk, for a send without a copy.
pub enum Span {
    /// Padding: zeros, never stored.
    Zeros(usize),
    /// `len` bytes of an open file from `offset`. While held, the pool
    /// never closes the handle.
    File { file: Arc<Opened>, offset: u64, len: usize },
}

/// An open torrent's files.
pub struct TorrentStorage {
    layout: Layout,
    pub kind: BackendKind,
    /// Opened read-only over data the torrent does not own (cross-seeding):
    /// a write fails, and files are never created or grown.
    pub read_only: bool,
    /// Files linked in from another torrent's data (cross-seeding), by
    /// index: while another name still holds one, a write into it must
    /// find the same bytes there (nothing is written), or it fails.
    pub linked: Vec<bool>,
    /// This storage's files in the [`pool::FilePool`], opened on demand.
    id: u64,
    pool: Arc<FilePool>,
    /// Where the files are now, to open them again (moved with the data).
    place: Mutex<Place>,
    /// Per file; None for padding.
    files: Vec<Option<FileSlot>>,
    /// Ranges made durable (msync / fdatasync calls), for tests and stats.
    flushes: AtomicU64,
    /// Pieces written through this storage since they were last flushed:
    /// only those need a flush. Data found on disk (a torrent seeding from
    /// the start) never does, so its first resume save syncs nothing.
    written: Mutex<Bitfield>,
}

/// What is needed to open a file again and know it for the one opened first.
struct FileSlot {
    /// As in the metainfo: the torrent's name first.
    path: Vec<String>,
    len: u64,
    /// The file as last seen open: opening a name that is another file
    /// now is an error, never data served from it.
    known: Mutex<Known>,
}

/// When a file was made (statx btime), where the filesystem tells: with
/// the inode number it tells our file from one made later under the same
/// number (freed once we closed ours, and reused).
type Birth = (i64, u32);

struct Known {
    stamp: FileStamp,
    born: Option<Birth>,
}

impl Known {
    fn of(file: &File) -> io::Result<Known> {
        Ok(Known { stamp: FileStamp::of(&file.metadata()?), born: birth(file.as_fd(), "") })
    }

    /// The same file (a birth time unknown on either side proves nothing).
    fn same(&self, stamp: &FileStamp, born: Option<Birth>) -> bool {
        self.stamp.same_file(stamp) && (self.born.is_none() || born.is_none() || self.born == born)
    }
}

/// The birth time of `name` in `dir` (of `dir` itself for ""), never
/// through a link.
fn birth(dir: BorrowedFd<'_>, name: &str) -> Option<Birth> {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let flags = if name.is_empty() { AtFlags::EMPTY_PATH } else { AtFlags::SYMLINK_NOFOLLOW };
    let st = statx(dir, name, flags, StatxFlags::BTIME).ok()?;
    (st.stx_mask & StatxFlags::BTIME.bits() != 0).then_some((st.stx_btime.tv_sec, st.stx_btime.tv_nsec))
}

impl Drop for TorrentStorage {
    fn drop(&mut self) {
        self.pool.forget(self.id, self.files.len());
    }
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
    /// Files longer than their torrent length (rewritten by someone else).
    pub grown_files: Vec<usize>,
    /// Files at full length that are not the ones open (filled in when the
    /// storage is open already): their pieces are checked again.
    pub replaced_files: Vec<usize>,
}

/// File `i` of `meta` as found in the open place folder.
struct Found<'m> {
    /// The folder holding it, open.
    folder: OwnedFd,
    /// Its name in that folder.
    name: &'m str,
    stamp: FileStamp,
}

/// File `i` of `meta` in the open place folder `dir`, reached without a
/// link; None when absent, a link, under one or not a regular file. One
/// walk of its path serves every look at it.
fn found_in<'m>(dir: Option<&OwnedFd>, place: &'m Place, meta: &'m Metainfo, i: usize) -> Option<Found<'m>> {
    let (dirs, name) = nofollow::names(place, meta, i);
    let folder = nofollow::walk(dir?.as_fd(), &dirs).ok()?;
    let stamp = nofollow::stamp_at(folder.as_fd(), name).ok().flatten()?;
    Some(Found { folder, name, stamp })
}

/// Looks at what is on disk for `meta` without changing anything (a link
/// counts as absent: it is never opened).
pub fn survey(place: &Place, meta: &Metainfo) -> DiskSurvey {
    let mut s = DiskSurvey::default();
    let dir = nofollow::open_place_dir(place, false).ok();
    for (i, f) in meta.files.iter().enumerate() {
        if f.padding {
            continue;
        }
        let len = found_in(dir.as_ref(), place, meta, i).map_or(0, |f| f.stamp.size);
        if len > 0 {
            s.existing_files.push(i);
        }
        if len > f.length {
            s.grown_files.push(i);
        }
        if len < f.length {
            s.short_files.push(i);
            s.bytes_needed += f.length - len;
        }
    }
    s
}

/// Free bytes available to us on the filesystem holding the open folder `dir`.
pub fn free_space_at(dir: BorrowedFd<'_>) -> io::Result<u64> {
    let st = rustix::fs::fstatvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Free bytes where `place`'s item is (its configured folder while the
/// folder made in it is absent), never looked up through a link.
pub fn place_free_space(place: &Place) -> io::Result<u64> {
    match nofollow::open_place_dir(place, false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !place.sub.is_empty() => {
            free_space_at(nofollow::open_configured_root(place.root())?.as_fd())
        }
        r => free_space_at(r?.as_fd()),
    }
}

/// Free bytes available to us on the filesystem holding the configured
/// folder `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))?;
    // SAFETY: statvfs is plain old data (integers only); all-zero is a valid value.
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

/// The place's folder, made if absent (the configured folder by path, the
/// one made in it never through a link), open for [`open_full_size`].
fn open_place_dir(place: &Place) -> io::Result<OwnedFd> {
    nofollow::open_place_dir(place, true)
}

/// Opens (creating it and its folders if need be, never through a link:
/// others may write in the folder) file `i` of `meta` in `place`, and
/// grows it to full size; says whether its blocks were reserved.
fn open_full_size(root: BorrowedFd<'_>, place: &Place, meta: &Metainfo, i: usize) -> io::Result<(File, bool)> {
    let (dirs, name) = nofollow::names(place, meta, i);
    let file = nofollow::open_or_create(nofollow::walk_making(root, &dirs)?.as_fd(), name)?;
    let len = meta.files[i].length;
    let preallocated = file.metadata()?.len() >= len || preallocate(&file, len)?;
    Ok((file, preallocated))
}

/// File `i` of `meta` in `place`, open read-only, checked whole (None for padding).
fn open_existing_file(root: BorrowedFd<'_>, place: &Place, meta: &Metainfo, i: usize) -> io::Result<Option<File>> {
    let f = &meta.files[i];
    if f.padding {
        return Ok(None);
    }
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", place.file_path(meta, i).display()));
    let (dirs, name) = nofollow::names(place, meta, i);
    let file = nofollow::open_file(nofollow::walk(root, &dirs).map_err(named)?.as_fd(), name, false).map_err(named)?;
    let len = file.metadata()?.len();
    if len != f.length {
        return Err(named(io::Error::other(format!("{len} bytes where the torrent has {}", f.length))));
    }
    Ok(Some(file))
}

impl TorrentStorage {
    /// Creates every file at full size (zero-length files too, padding never)
    /// and opens the backend. Nothing is written outside the place's folder:
    /// metainfo validation already refused unsafe path elements, and a link
    /// planted under the folder is an error, never followed.
    pub fn open(place: &Place, meta: &Metainfo, kind: BackendKind) -> io::Result<TorrentStorage> {
        let mut files = Vec::with_capacity(meta.files.len());
        let mut all_preallocated = true;
        let root = open_place_dir(place)?;
        for (i, f) in meta.files.iter().enumerate() {
            if f.padding {
                files.push(None);
                continue;
            }
            // Closed again at once: opened on demand through the pool.
            let (file, preallocated) = open_full_size(root.as_fd(), place, meta, i)?;
            all_preallocated &= preallocated;
            files.push(Some(file));
        }
        let kind = if kind == BackendKind::Mmap && !all_preallocated {
            tracing::warn!(torrent = %meta.name, hash = %meta.info_hash.short(), "filesystem cannot preallocate; using the file backend for this torrent (mmap would risk SIGBUS on a full disk)");
            BackendKind::File
        } else {
            kind
        };
        if kind == BackendKind::Mmap {
            sigbus::install();
        }
        TorrentStorage::new(place, meta, kind, false, files)
    }

    /// The storage over `opened` (one per file of `meta`, None for padding),
    /// which are stamped and closed.
    fn new(
        place: &Place,
        meta: &Metainfo,
        kind: BackendKind,
        read_only: bool,
        opened: Vec<Option<File>>,
    ) -> io::Result<TorrentStorage> {
        let mut files: Vec<_> = opened
            .into_iter()
            .zip(&meta.files)
            .map(|(file, f)| {
                let Some(file) = file else { return Ok(None) };
                let known = Mutex::new(Known::of(&file)?);
                Ok(Some(FileSlot { path: f.path.clone(), len: f.length, known }))
            })
            .collect::<io::Result<_>>()?;
        // Collected through a Result, it has room for 4 at least; every
        // torrent keeps it (10,000 single-file ones: 2.8 MiB of room).
        files.shrink_to_fit();
        Ok(TorrentStorage {
            layout: Layout::new(meta),
            kind,
            read_only,
            linked: Vec::new(),
            id: pool::next_id(),
            pool: FilePool::global().clone(),
            place: Mutex::new(place.clone()),
            files,
            flushes: AtomicU64::new(0),
            written: Mutex::new(Bitfield::new(Layout::new(meta).piece_count())),
        })
    }

    /// Uses `pool` instead of the process's (tests of the bound).
    #[cfg(test)]
    fn in_pool(mut self, pool: &Arc<FilePool>) -> TorrentStorage {
        self.pool = pool.clone();
        self
    }

    /// Opens the files already in `place` read-only, for a torrent seeding
    /// data it does not own (see [`crate::resume::ResumeRecord::borrowed`]):
    /// nothing is created, grown or ever written, and a file missing, of
    /// another length, or reached through a link is an error naming it.
    pub fn open_existing(place: &Place, meta: &Metainfo) -> io::Result<TorrentStorage> {
        let root = nofollow::open_place_dir(place, false)?;
        let files = (0..meta.files.len())
            .map(|i| open_existing_file(root.as_fd(), place, meta, i))
            .collect::<io::Result<_>>()?;
        TorrentStorage::new(place, meta, BackendKind::File, true, files)
    }

    /// Makes files found missing or short whole again (sparse zeros where
    /// data went missing) and points the backend at them: the pieces they
    /// held are then checked again and downloaded anew.
    pub fn restore_files(&self, place: &Place, meta: &Metainfo, files: &[usize]) -> io::Result<()> {
        if self.read_only {
            // Data shared with others is never recreated: only reopened as it is.
            let root = nofollow::open_place_dir(place, false)?;
            for &i in files {
                if let Some(file) = open_existing_file(root.as_fd(), place, meta, i)? {
                    self.reopen(i, file)?;
                }
            }
            self.moved_to(place);
            return Ok(());
        }
        let root = open_place_dir(place)?;
        for &i in files {
            let (file, _) = open_full_size(root.as_fd(), place, meta, i)?;
            self.reopen(i, file)?;
        }
        self.moved_to(place);
        Ok(())
    }

    /// The files of `meta` that are no longer in `place` as they were opened:
    /// gone, cut short or grown, or replaced by another file of that name
    /// (an importer moved or retagged them). Blocking (a stat per file).
    pub fn files_gone(&self, place: &Place, meta: &Metainfo) -> Vec<usize> {
        let dir = nofollow::open_place_dir(place, false).ok();
        // A link (or one on the way) is not the file: gone.
        let changed = |i: usize, length: u64| match found_in(dir.as_ref(), place, meta, i) {
            None => true,
            Some(f) => f.stamp.size != length || self.replaced(i, &f.stamp, || birth(f.folder.as_fd(), f.name)),
        };
        meta.files.iter().enumerate().filter(|(i, f)| !f.padding && changed(*i, f.length)).map(|(i, _)| i).collect()
    }

    /// Points the backend at the same data in another place, `to`: `files`
    /// (one per torrent file, None for padding), a copy made and verified
    /// there and opened read-write. Every file must be whole.
    pub fn relocate(&self, meta: &Metainfo, to: &Place, files: Vec<Option<File>>) -> io::Result<()> {
        for (i, file) in files.iter().enumerate() {
            if file
                .as_ref()
                .map(|f| f.metadata().map(|m| m.len()))
                .transpose()?
                .is_some_and(|l| l != meta.files[i].length)
            {
                return Err(io::Error::other(format!("{} is not whole", meta.files[i].path.join("/"))));
            }
        }
        // The new place first: a file the pool closes between two reopens
        // below is opened again from there, never from the old folder.
        self.moved_to(to);
        for (i, file) in files.into_iter().enumerate() {
            if let Some(file) = file {
                self.reopen(i, file)?;
            }
        }
        Ok(())
    }

    /// The data is now in `place` (renamed or copied there): files are
    /// opened again from there.
    pub fn moved_to(&self, place: &Place) {
        *crate::locks::locked(&self.place) = place.clone();
    }

    /// The stamp of each file as open now, or as last seen open (the
    /// default, which proves nothing but a length, for padding).
    pub fn stamps(&self) -> Vec<FileStamp> {
        (0..self.layout.file_count()).map(|i| self.stamp(i).unwrap_or_default()).collect()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Writes `data` at stream offset `offset`; padding is skipped.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "data shared with other torrents is never written",
            ));
        }
        let result = self.layout.segments(offset, data.len()).into_iter().try_for_each(|s| {
            let bytes = &data[s.buf_offset..s.buf_offset + s.len];
            if !s.padding && self.shared_file(s.file) {
                self.same_bytes(s.file, s.file_offset, bytes)?;
            } else if !s.padding {
                self.write_at(s.file, s.file_offset, bytes)?;
                WRITTEN.fetch_add(s.len as u64, Ordering::Relaxed);
            }
            Ok(())
        });
        // After the copy (a flush asked for once this returns sees it), and
        // even after a failure: part of the range may have been written.
        let mut written = crate::locks::locked(&self.written);
        self.layout.pieces_in(offset, data.len()).0.for_each(|p| {
            written.set(p);
        });
        result
    }

    /// A file linked in from another torrent's data that another name still holds.
    fn shared_file(&self, file: usize) -> bool {
        self.linked.get(file).copied().unwrap_or(false) && self.links(file).unwrap_or(1) > 1
    }

    /// A write into a shared file: the bytes must be there already.
    fn same_bytes(&self, file: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut there = vec![0u8; data.len()];
        self.read_at(file, offset, &mut there)?;
        if there != data {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("file {file} is another torrent's data (a hard link) and differs here: never rewritten"),
            ));
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
                self.read_at(s.file, s.file_offset, dst)?;
                READ.fetch_add(s.len as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Appends `len` bytes from stream offset `offset` to `out`: with the
    /// mmap backend copied from the mapping straight into `out`'s spare
    /// capacity, never zeroed first (a block sent to a peer costs one copy,
    /// not a memset and a copy). Padding appends zeros. On an error `out`
    /// is as it was.
    pub fn read_append(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        out.reserve(len);
        let result = self.layout.segments(offset, len).into_iter().try_for_each(|s| {
            if s.padding {
                out.resize(out.len() + s.len, 0);
                return Ok(());
            }
            self.append_at(s.file, s.file_offset, s.len, out)?;
            READ.fetch_add(s.len as u64, Ordering::Relaxed);
            Ok(())
        });
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// The file ranges holding `len` bytes from stream offset `offset`,
    /// their pages read in (a send from them then does not wait for the
    /// disk), checked inside the files as they are now. Only with the mmap
    /// backend, whose mapping can read them in and wait: None with the file
    /// backend, and while the pool is over its budget (handles held for
    /// sends would keep it there: the caller copies).
    pub fn spans(&self, offset: u64, len: usize) -> io::Result<Option<Vec<Span>>> {
        if self.kind != BackendKind::Mmap || self.pool.len() > self.pool.budget() {
            return Ok(None);
        }
        let spans = self.layout.segments(offset, len).into_iter().map(|s| {
            if s.padding {
                return Ok(Span::Zeros(s.len));
            }
            let h = self.mapped(s.file, s.file_offset, s.len)?;
            populate_for_read(&h.map.as_ref().expect("checked by mapped").map, s.file_offset as usize, s.len);
            READ.fetch_add(s.len as u64, Ordering::Relaxed);
            Ok(Span::File { file: h, offset: s.file_offset, len: s.len })
        });
        spans.collect::<io::Result<_>>().map(Some)
    }

    /// Makes the bytes of a range durable (msync / fdatasync), if this
    /// storage wrote any of them since they were last flushed: a piece
    /// never written in this process's life is left alone.
    pub fn flush(&self, offset: u64, len: usize) -> io::Result<()> {
        let (touched, whole) = self.layout.pieces_in(offset, len);
        let cleaned: Vec<usize> = {
            let mut written = crate::locks::locked(&self.written);
            if !touched.clone().any(|p| written.get(p)) {
                return Ok(());
            }
            // Cleared before the sync: a write landing meanwhile sets its
            // piece again, for the next flush.
            let cleaned: Vec<usize> = whole.filter(|&p| written.get(p)).collect();
            cleaned.iter().for_each(|&p| written.clear(p));
            cleaned
        };
        let result = self
            .layout
            .segments(offset, len)
            .into_iter()
            .filter(|s| !s.padding)
            .try_for_each(|s| self.flush_file(s.file, s.file_offset, s.len));
        if result.is_err() {
            let mut written = crate::locks::locked(&self.written);
            cleaned.iter().for_each(|&p| {
                written.set(p);
            });
        }
        result
    }

    /// Pieces whose pages may not be on the disk yet though this storage
    /// never wrote them: a previous run wrote them and ended before it
    /// flushed them (its record lists them as unverified). The next
    /// [`TorrentStorage::flush`] of each syncs it before it is claimed.
    pub fn flush_before_claiming(&self, pieces: impl IntoIterator<Item = usize>) {
        let mut written = crate::locks::locked(&self.written);
        for p in pieces {
            if p < written.len() {
                written.set(p);
            }
        }
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
                self.hash_range(s.file, s.file_offset, s.len, &mut hasher)?;
                READ.fetch_add(s.len as u64, Ordering::Relaxed);
            }
        }
        Ok(hasher.finalize().into())
    }

    /// How many file ranges were made durable (msync / fdatasync calls).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    pub fn read_piece(&self, index: usize) -> io::Result<Vec<u8>> {
        let r = self.layout.piece_range(index);
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        self.read(r.start, &mut buf)?;
        Ok(buf)
    }
}

/// File access through the pool; offsets are within the file.
impl TorrentStorage {
    fn slot(&self, i: usize) -> io::Result<&FileSlot> {
        self.files.get(i).and_then(Option::as_ref).ok_or_else(|| io::Error::other("access to a padding file"))
    }

    fn key(&self, i: usize) -> pool::Key {
        (self.id, i)
    }

    /// File `i`'s handle, opened again if the pool closed it.
    fn handle(&self, i: usize) -> io::Result<Arc<Opened>> {
        let slot = self.slot(i)?;
        self.pool.get(self.key(i), || self.open_again(slot))
    }

    /// Opens a file of this storage again, by the same rules as the first
    /// time (no link on the way, a regular file), and only if it is the
    /// file opened then: one put in its place since is an error.
    fn open_again(&self, slot: &FileSlot) -> io::Result<Opened> {
        let place = crate::locks::locked(&self.place).clone();
        let named = |e: io::Error| {
            let mut path = place.top();
            path.extend(slot.path.iter().skip(1));
            io::Error::new(e.kind(), format!("{}: {e}", path.display()))
        };
        let (dirs, name) = slot_names(&place, &slot.path);
        let dir = nofollow::open_place_dir(&place, false).and_then(|root| nofollow::walk(root.as_fd(), &dirs));
        let file = nofollow::open_file(dir.map_err(named)?.as_fd(), name, !self.read_only).map_err(named)?;
        let now = Known::of(&file)?;
        {
            let mut known = crate::locks::locked(&slot.known);
            if !known.same(&now.stamp, now.born) {
                return Err(named(io::Error::other("another file was put in its place since it was opened")));
            }
            *known = now;
        }
        self.opened(file, slot.len)
    }

    /// A handle over `file`, mapped with the mmap backend.
    fn opened(&self, file: File, len: u64) -> io::Result<Opened> {
        let map = match self.kind {
            BackendKind::Mmap if len > 0 => {
                Some(Mapping::new(MmapOptions::new().len(len as usize).map_raw(&file)?, len))
            }
            _ => None,
        };
        Ok(Opened { file, map })
    }

    /// The stamp and birth of file `slot` found under its name now, if it
    /// can be reached without a link.
    fn by_name(&self, slot: &FileSlot) -> Option<(FileStamp, Option<Birth>)> {
        let place = crate::locks::locked(&self.place).clone();
        let (dirs, name) = slot_names(&place, &slot.path);
        let root = nofollow::open_place_dir(&place, false).ok()?;
        let at = nofollow::walk(root.as_fd(), &dirs).ok()?;
        let stamp = nofollow::stamp_at(at.as_fd(), name).ok().flatten()?;
        Some((stamp, birth(at.as_fd(), name)))
    }

    /// File `i` as open now, or as last seen open (when closed and its
    /// name no longer holds the same file).
    fn stamp(&self, i: usize) -> Option<FileStamp> {
        let slot = self.files.get(i)?.as_ref()?;
        let now = match self.pool.peek(self.key(i)) {
            Some(h) => file_stamp(&h.file).map(|s| (s, None)),
            None => self.by_name(slot),
        };
        let mut known = crate::locks::locked(&slot.known);
        match now {
            Some((now, born)) if known.same(&now, born) => {
                known.stamp = now;
                Some(now)
            }
            _ => Some(known.stamp),
        }
    }

    /// Whether `found` under file `i`'s name is another file than ours;
    /// `born` is that file's birth time, asked only when it is not held
    /// open.
    fn replaced(&self, i: usize, found: &FileStamp, born: impl FnOnce() -> Option<Birth>) -> bool {
        let Some(slot) = self.files.get(i).and_then(Option::as_ref) else { return false };
        match self.pool.peek(self.key(i)) {
            // Held open: its inode number cannot have been reused.
            Some(h) => file_stamp(&h.file).is_some_and(|s| !s.same_file(found)),
            None => !crate::locks::locked(&slot.known).same(found, born()),
        }
    }

    /// How many names file `i` has (hard links).
    fn links(&self, i: usize) -> Option<u64> {
        Some(std::os::unix::fs::MetadataExt::nlink(&self.handle(i).ok()?.file.metadata().ok()?))
    }

    /// Puts `fresh` (the file recreated, grown back to full size, or
    /// copied elsewhere) in the place of the one opened before.
    fn reopen(&self, i: usize, fresh: File) -> io::Result<()> {
        let Some(slot) = self.files.get(i).and_then(Option::as_ref) else { return Ok(()) };
        *crate::locks::locked(&slot.known) = Known::of(&fresh)?;
        self.pool.replace(self.key(i), self.opened(fresh, slot.len)?);
        Ok(())
    }

    /// File `i`'s mapped handle, once the range is known to be inside the
    /// mapping and inside the file as it is now, and the mapping is
    /// trustworthy. The length check catches a file cut short within a
    /// page (which reads as zeros, no fault); the guard around each copy
    /// catches one cut short after the check.
    fn mapped(&self, i: usize, offset: u64, len: usize) -> io::Result<Arc<Opened>> {
        let slot = self.slot(i)?;
        let end = offset + len as u64;
        if end > slot.len {
            return Err(io::Error::other("access beyond the end of the file"));
        }
        let mut h = self.handle(i)?;
        let m = h.map.as_ref().ok_or_else(|| io::Error::other("access to an unmapped file"))?;
        let actual = h.file.metadata()?.len();
        let stale = m.stale.load(Ordering::Acquire);
        if actual < end || (actual < slot.len && stale) {
            return Err(truncated(Some(actual), slot.len));
        }
        if stale {
            // Zero pages may be in it: the file, whole again, is mapped anew.
            self.pool.discard(self.key(i), &h);
            h = self.handle(i)?;
        }
        Ok(h)
    }

    fn write_at(&self, i: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.kind == BackendKind::File {
            return self.handle(i)?.file.write_all_at(data, offset);
        }
        let h = self.mapped(i, offset, data.len())?;
        let m = h.map.as_ref().expect("checked by mapped");
        populate_for_write(&m.map, offset as usize, data.len());
        m.dirty.store(true, Ordering::Release);
        // SAFETY: the range is inside the mapping (checked). Pieces are
        // disjoint ranges and each piece is written by one disk job, so no two
        // threads write the same bytes at once.
        guarded(m, offset, data.len(), |at| unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), at, data.len()) })
    }

    fn read_at(&self, i: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.kind == BackendKind::File {
            // A file cut short reads as an early end, never as the missing bytes.
            return self.handle(i)?.file.read_exact_at(buf, offset);
        }
        let h = self.mapped(i, offset, buf.len())?;
        let m = h.map.as_ref().expect("checked by mapped");
        // SAFETY: in range (checked); readers only see verified pieces, which
        // are never written again.
        guarded(m, offset, buf.len(), |at| unsafe { std::ptr::copy_nonoverlapping(at, buf.as_mut_ptr(), buf.len()) })
    }

    fn append_at(&self, i: usize, offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.kind == BackendKind::File {
            let at = out.len();
            out.resize(at + len, 0);
            return self.read_at(i, offset, &mut out[at..]);
        }
        let h = self.mapped(i, offset, len)?;
        let m = h.map.as_ref().expect("checked by mapped");
        // Room first: nothing allocates inside the guard.
        out.reserve(len);
        // SAFETY: in range (checked); readers only see verified pieces, which
        // are never written again.
        guarded(m, offset, len, |at| out.extend_from_slice(unsafe { std::slice::from_raw_parts(at, len) }))
    }

    fn flush_file(&self, i: usize, offset: u64, len: usize) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if self.kind == BackendKind::File {
            return self.handle(i)?.file.sync_data();
        }
        let h = self.mapped(i, offset, len)?;
        h.map.as_ref().expect("checked by mapped").map.flush_range(offset as usize, len)
    }

    /// Feeds a range to `hasher`: straight from the mapping, or read in chunks.
    fn hash_range(&self, i: usize, offset: u64, len: usize, hasher: &mut Sha1) -> io::Result<()> {
        if self.kind == BackendKind::File {
            let mut buf = vec![0u8; len.min(1 << 16)];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len());
                self.read_at(i, offset + done as u64, &mut buf[..n])?;
                hasher.update(&buf[..n]);
                done += n;
            }
            return Ok(());
        }
        let h = self.mapped(i, offset, len)?;
        let m = h.map.as_ref().expect("checked by mapped");
        // SAFETY: in range (checked); hashed straight from the mapping on a
        // disk thread, so no copy and no page fault on an async worker.
        guarded(m, offset, len, |at| hasher.update(unsafe { std::slice::from_raw_parts(at, len) }))
    }
}

/// The folders from `place.dir` down to a file at `path` (the metainfo's,
/// the torrent's name first), and the file's own name.
fn slot_names<'a>(place: &'a Place, path: &'a [String]) -> (Vec<&'a str>, &'a str) {
    let mut all: Vec<&str> =
        std::iter::once(place.name.as_str()).chain(path.iter().skip(1).map(String::as_str)).collect();
    let file = all.pop().expect("the item's name at least");
    (all, file)
}

/// Runs a copy touching `len` bytes of the mapping at `offset` under the
/// SIGBUS guard; a fault marks the mapping stale and becomes an error.
fn guarded<T>(m: &Mapping, offset: u64, len: usize, copy: impl FnOnce(*mut u8) -> T) -> io::Result<T> {
    // SAFETY: offset is inside the mapping (checked by the caller).
    let at = unsafe { m.map.as_mut_ptr().add(offset as usize) };
    sigbus::guarded(at, len, || copy(at)).map_err(|sigbus::Faulted| {
        m.stale.store(true, Ordering::Release);
        truncated(None, m.len)
    })
}

fn truncated(actual: Option<u64>, expected: u64) -> io::Error {
    let msg = match actual {
        Some(actual) => format!("file was truncated to {actual} bytes (expected {expected})"),
        None => format!("file was truncated while in use (expected {expected} bytes)"),
    };
    io::Error::new(io::ErrorKind::UnexpectedEof, msg)
}

fn file_stamp(f: &File) -> Option<FileStamp> {
    f.metadata().ok().map(|m| FileStamp::of(&m))
}

/// Reads the pages of a range in (from the disk if need be) and waits,
/// before they are sent from the page cache on an async worker (Linux
/// 5.14+; elsewhere the send reads them in itself). A file cut short fails
/// here without a signal, and the send finds it short.
fn populate_for_read(map: &MmapRaw, offset: usize, len: usize) {
    const MADV_POPULATE_READ: libc::c_int = 22;
    let page = 4096;
    let start = offset / page * page;
    let end = (offset + len).min(map.len());
    // SAFETY: the range lies within the mapping; madvise does not change its
    // contents, it only makes the pages resident.
    unsafe {
        libc::madvise(map.as_mut_ptr().add(start).cast(), end - start, MADV_POPULATE_READ);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::tests::torrent;

    /// The torrent's own name in `dir`.
    fn at(dir: &Path, meta: &Metainfo) -> Place {
        Place::new(dir, "", &meta.name, false)
    }

    #[test]
    fn a_category_folder_made_a_link_is_never_written_through() {
        // `ln -s ~dropseed/.ssh download/evil; mkdir watch/evil`, then a
        // single-file torrent named authorized_keys, incomplete_dir off.
        let (dl, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let keys = outside.path().join("authorized_keys");
        std::fs::write(&keys, b"ssh-ed25519 the admin's key").unwrap();
        std::os::unix::fs::symlink(outside.path(), dl.path().join("evil")).unwrap();
        let info = format!("d6:lengthi40e4:name15:authorized_keys12:piece lengthi16e6:pieces60:{}e", "a".repeat(60));
        let meta = Metainfo::from_torrent_bytes(&torrent(&info)).unwrap();
        let place = Place::new(dl.path(), "evil", &meta.name, true);
        assert!(survey(&place, &meta).existing_files.is_empty(), "nothing is found through the link");
        for kind in [BackendKind::Mmap, BackendKind::File] {
            let e = TorrentStorage::open(&place, &meta, kind).err().expect("opened through the link");
            assert!(e.to_string().contains(&dl.path().join("evil").display().to_string()), "{e}");
        }
        assert_eq!(std::fs::read(&keys).unwrap(), b"ssh-ed25519 the admin's key");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1, "nothing made outside");
    }

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
            let s = TorrentStorage::open(&at(dir.path(), &meta), &meta, kind).unwrap();
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
    fn truncated_file_is_an_error_not_sigbus_and_comes_back_when_restored() {
        for kind in [BackendKind::Mmap, BackendKind::File] {
            let dir = tempfile::tempdir().unwrap();
            let meta = multi();
            let s = TorrentStorage::open(&at(dir.path(), &meta), &meta, kind).unwrap();
            let data: Vec<u8> = (1..=20).collect();
            s.write(16, &data).unwrap();
            let b = dir.path().join("dir/sub/b");
            std::fs::OpenOptions::new().write(true).open(&b).unwrap().set_len(2).unwrap();
            let mut buf = vec![0u8; 20];
            for _ in 0..2 {
                let err = s.read(16, &mut buf).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{kind:?}: {err}");
                assert!(s.hash_piece(1).is_err());
            }
            // (A positional write would simply grow the file again.)
            if kind == BackendKind::Mmap {
                assert!(s.write(16, &data).is_err());
            }
            // Deleted, then restored: whole again, zeros where data was lost.
            std::fs::remove_file(&b).unwrap();
            assert_eq!(survey(&at(dir.path(), &meta), &meta).short_files, vec![3]);
            s.restore_files(&at(dir.path(), &meta), &meta, &[3]).unwrap();
            s.read(16, &mut buf).unwrap();
            assert_eq!(buf, vec![0u8; 20]);
            s.write(16, &data).unwrap();
            s.flush(16, 20).unwrap();
            assert_eq!(std::fs::read(&b).unwrap(), data, "{kind:?}");
        }
    }

    #[test]
    fn reads_append_across_files_and_padding_and_leave_the_buffer_as_it_was_on_an_error() {
        for kind in [BackendKind::Mmap, BackendKind::File] {
            let dir = tempfile::tempdir().unwrap();
            let meta = multi();
            let s = TorrentStorage::open(&at(dir.path(), &meta), &meta, kind).unwrap();
            let data: Vec<u8> = (1..=36).collect();
            s.write(0, &data).unwrap();
            let mut out = b"header".to_vec();
            s.read_append(2, 30, &mut out).unwrap();
            let mut expect = b"header".to_vec();
            expect.extend_from_slice(&data[2..5]);
            expect.extend_from_slice(&[0; 11]);
            expect.extend_from_slice(&data[16..32]);
            assert_eq!(out, expect, "{kind:?}");
            // Cut short under us: an error, and nothing half-read is kept.
            std::fs::OpenOptions::new().write(true).open(dir.path().join("dir/sub/b")).unwrap().set_len(2).unwrap();
            let e = s.read_append(0, 36, &mut out).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{kind:?}: {e}");
            assert_eq!(out, expect, "{kind:?}");
        }
    }

    #[test]
    fn files_are_never_made_or_opened_through_a_link_in_the_torrents_folder() {
        let (root, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let meta = multi();
        std::fs::create_dir_all(root.path().join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("dir/sub")).unwrap();
        assert!(TorrentStorage::open(&at(root.path(), &meta), &meta, BackendKind::File).is_err());
        let made: Vec<_> = std::fs::read_dir(outside.path()).unwrap().flatten().map(|e| e.path()).collect();
        assert!(made.is_empty(), "made outside the folder: {made:?}");
        // A link at a file's own name is not opened (nor grown) either.
        std::fs::remove_file(root.path().join("dir/sub")).unwrap();
        std::fs::remove_file(root.path().join("dir/a")).unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"x").unwrap();
        std::os::unix::fs::symlink(&victim, root.path().join("dir/a")).unwrap();
        assert!(TorrentStorage::open(&at(root.path(), &meta), &meta, BackendKind::File).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"x");
    }

    /// Three files of 16 bytes, one piece each.
    fn three() -> Metainfo {
        let files: String = ["a", "b", "c"].iter().map(|n| format!("d6:lengthi16e4:pathl1:{n}ee")).collect();
        let info = format!("d5:filesl{files}e4:name3:tri12:piece lengthi16e6:pieces60:{}e", "a".repeat(60));
        Metainfo::from_torrent_bytes(&torrent(&info)).unwrap()
    }

    /// `three()` opened in `dir` with a pool of `budget` handles.
    fn pooled(dir: &Path, kind: BackendKind, budget: usize) -> (Arc<FilePool>, TorrentStorage, Metainfo) {
        let meta = three();
        let pool = Arc::new(FilePool::new(budget));
        let s = TorrentStorage::open(&at(dir, &meta), &meta, kind).unwrap().in_pool(&pool);
        (pool, s, meta)
    }

    fn is_open(pool: &FilePool, s: &TorrentStorage, i: usize) -> bool {
        pool.peek(s.key(i)).is_some()
    }

    #[test]
    fn the_pool_closes_the_least_recently_used_file_and_opens_it_again_on_demand() {
        for kind in [BackendKind::Mmap, BackendKind::File] {
            let dir = tempfile::tempdir().unwrap();
            let (pool, s, _) = pooled(dir.path(), kind, 2);
            assert!(pool.is_empty(), "nothing held open once opened");
            let data: Vec<u8> = (1..=48).collect();
            s.write(0, &data[..16]).unwrap();
            s.write(16, &data[16..32]).unwrap();
            s.write(0, &data[..16]).unwrap(); // a used again: b is now the oldest
            s.write(32, &data[32..]).unwrap();
            assert_eq!(pool.len(), 2);
            assert!(is_open(&pool, &s, 0) && !is_open(&pool, &s, 1) && is_open(&pool, &s, 2), "{kind:?}");
            let mut back = vec![0u8; 48];
            s.read(0, &mut back).unwrap();
            assert_eq!(back, data, "{kind:?}: b opened again for the read");
            assert!(pool.len() <= 2);
            drop(s);
            assert!(pool.is_empty(), "a storage dropped closes its files");
        }
    }

    #[test]
    fn a_file_replaced_or_deleted_while_closed_is_never_read_and_is_found_gone() {
        for kind in [BackendKind::Mmap, BackendKind::File] {
            let dir = tempfile::tempdir().unwrap();
            let (pool, s, meta) = pooled(dir.path(), kind, 1);
            s.write(0, &[7u8; 48]).unwrap();
            assert!(!is_open(&pool, &s, 0) && !is_open(&pool, &s, 1));
            let (a, b) = (dir.path().join("tri/a"), dir.path().join("tri/b"));
            // Another file of the same size takes a's name; b is deleted.
            std::fs::remove_file(&a).unwrap();
            std::fs::write(&a, [9u8; 16]).unwrap();
            std::fs::remove_file(&b).unwrap();
            let mut buf = [0u8; 16];
            let e = s.read(0, &mut buf).unwrap_err();
            assert!(e.to_string().contains("another file was put in its place"), "{kind:?}: {e}");
            assert!(e.to_string().contains(&a.display().to_string()), "{e}");
            assert_eq!(s.read(16, &mut buf).unwrap_err().kind(), io::ErrorKind::NotFound, "{kind:?}");
            assert_eq!(s.files_gone(&at(dir.path(), &meta), &meta), vec![0, 1], "{kind:?}");
            // Restored: used again, and stamped as the new files.
            s.restore_files(&at(dir.path(), &meta), &meta, &[0, 1]).unwrap();
            assert!(s.files_gone(&at(dir.path(), &meta), &meta).is_empty());
            s.read(0, &mut buf).unwrap();
            assert_eq!(buf, [9u8; 16]);
        }
    }

    #[test]
    fn a_handle_in_use_is_never_closed_under_its_user() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, s, _) = pooled(dir.path(), BackendKind::Mmap, 1);
        let held = s.handle(0).unwrap();
        s.write(16, &[1u8; 16]).unwrap();
        s.write(32, &[2u8; 16]).unwrap();
        assert!(pool.peek(s.key(0)).is_some_and(|h| Arc::ptr_eq(&h, &held)), "a in use, still open");
        assert_eq!(pool.len(), 2, "over budget by the handle in use only");
        drop(held);
        s.write(16, &[1u8; 16]).unwrap();
        assert!(!is_open(&pool, &s, 0), "closed once no longer in use");
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn spans_hold_their_handles_and_are_refused_while_the_pool_is_over_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, s, _) = pooled(dir.path(), BackendKind::Mmap, 1);
        s.write(0, &[1u8; 48]).unwrap();
        let a = s.spans(0, 16).unwrap().expect("within budget");
        assert!(matches!(&a[..], [Span::File { offset: 0, len: 16, .. }]));
        let b = s.spans(20, 4).unwrap().expect("at the budget: one more");
        assert!(matches!(&b[..], [Span::File { offset: 4, len: 4, .. }]));
        assert_eq!(pool.len(), 2, "both held for their sends");
        assert!(s.spans(32, 16).unwrap().is_none(), "over budget: copied instead");
        drop((a, b));
        s.read(32, &mut [0u8; 16]).unwrap();
        assert!(pool.len() <= 1, "released once sent");
        assert!(s.spans(32, 16).unwrap().is_some());
    }

    #[test]
    fn a_mapping_written_through_is_flushed_before_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, s, _) = pooled(dir.path(), BackendKind::Mmap, 1);
        let mut buf = [0u8; 16];
        s.read(0, &mut buf).unwrap();
        s.read(16, &mut buf).unwrap();
        assert_eq!(pool.evictions(), (1, 0), "a clean mapping closes without msync");
        s.write(16, &[5u8; 16]).unwrap();
        s.read(32, &mut buf).unwrap();
        assert_eq!(pool.evictions(), (2, 1), "the written mapping was flushed");
        assert_eq!(std::fs::read(dir.path().join("tri/b")).unwrap(), [5u8; 16]);
    }

    #[test]
    fn data_found_on_disk_is_never_flushed_only_what_was_written() {
        for kind in [BackendKind::Mmap, BackendKind::File] {
            let dir = tempfile::tempdir().unwrap();
            let meta = three();
            std::fs::create_dir(dir.path().join("tri")).unwrap();
            for n in ["a", "b", "c"] {
                std::fs::write(dir.path().join("tri").join(n), [3u8; 16]).unwrap();
            }
            let s = TorrentStorage::open(&at(dir.path(), &meta), &meta, kind).unwrap();
            let mut buf = [0u8; 48];
            s.read(0, &mut buf).unwrap();
            // A torrent seeding what it found: its first save flushes nothing.
            for p in 0..3 {
                s.flush(p * 16, 16).unwrap();
            }
            assert_eq!(s.flushes(), 0, "{kind:?}: pages never written were flushed");
            s.write(16, &[4u8; 16]).unwrap();
            for p in 0..3 {
                s.flush(p * 16, 16).unwrap();
            }
            assert_eq!(s.flushes(), 1, "{kind:?}: only the piece written is flushed");
            s.flush(16, 16).unwrap();
            assert_eq!(s.flushes(), 1, "{kind:?}: and only once");
            assert_eq!(std::fs::read(dir.path().join("tri/b")).unwrap(), [4u8; 16]);
        }
    }

    #[test]
    fn pieces_a_crash_left_unflushed_are_flushed_once_verified_though_not_written_here() {
        let dir = tempfile::tempdir().unwrap();
        let meta = three();
        std::fs::create_dir(dir.path().join("tri")).unwrap();
        for n in ["a", "b", "c"] {
            std::fs::write(dir.path().join("tri").join(n), [3u8; 16]).unwrap();
        }
        let s = TorrentStorage::open(&at(dir.path(), &meta), &meta, BackendKind::Mmap).unwrap();
        // The last run wrote piece 1 and was killed before flushing it: its
        // pages may still wait for writeback.
        s.flush_before_claiming([1]);
        for p in 0..3 {
            s.flush(p * 16, 16).unwrap();
        }
        assert_eq!(s.flushes(), 1, "the crash's piece is flushed, the others are not");
    }

    #[test]
    fn a_range_flushed_in_part_stays_to_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (_pool, s, _) = pooled(dir.path(), BackendKind::Mmap, 4);
        s.write(0, &[1u8; 32]).unwrap();
        s.flush(8, 16).unwrap();
        let after_part = s.flushes();
        assert!(after_part > 0);
        s.flush(0, 16).unwrap();
        s.flush(16, 16).unwrap();
        assert_eq!(s.flushes(), after_part + 2, "pieces flushed only in part are flushed whole later");
    }

    #[test]
    fn survey_reports_missing_and_existing() {
        let dir = tempfile::tempdir().unwrap();
        let meta = multi();
        let before = survey(&at(dir.path(), &meta), &meta);
        assert_eq!(before.bytes_needed, 25);
        assert!(before.existing_files.is_empty());
        TorrentStorage::open(&at(dir.path(), &meta), &meta, BackendKind::File).unwrap();
        let after = survey(&at(dir.path(), &meta), &meta);
        assert_eq!(after.bytes_needed, 0);
        assert_eq!(after.existing_files, vec![0, 3]);
        assert!(free_space(dir.path()).unwrap() > 0);
    }
}
