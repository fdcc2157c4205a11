//! Files the watch folder took and left where they are: with `on_added =
//! "keep"`, or because the folder cannot be written (a rename or delete
//! failed). Each is known by name, size and mtime, and is not taken again
//! until one of those changes (the user rewrote or touched it). The list is
//! saved in `state_dir/watch-kept.json`, so a restart does not add again a
//! kept file's torrent that the user removed meanwhile, nor log every kept
//! file as "already managed".
//!
//! Runs on the watch thread (blocking file work is fine there); the list is
//! written once per change of the set, not per file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub const KEPT_FILE: &str = "watch-kept.json";

/// Size and mtime (nanoseconds since 1970) of a file.
pub type Stamp = (u64, Option<u64>);

pub fn stamp(size: u64, mtime: Option<SystemTime>) -> Stamp {
    let ns = mtime.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos() as u64);
    (size, ns)
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Saved {
    /// The watch folder the names are in (another folder: the list is dropped).
    dir: String,
    files: Vec<SavedFile>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedFile {
    /// The file name's bytes in hex: names need not be UTF-8.
    name_hex: String,
    size: u64,
    mtime_ns: Option<u64>,
}

pub struct KeptFiles {
    file: PathBuf,
    dir: PathBuf,
    files: HashMap<PathBuf, Stamp>,
    dirty: bool,
}

impl KeptFiles {
    /// An empty list for `watch_dir`, saved in `state_dir` (no I/O yet).
    pub fn new(state_dir: &Path, watch_dir: &Path) -> KeptFiles {
        KeptFiles { file: state_dir.join(KEPT_FILE), dir: watch_dir.to_path_buf(), files: HashMap::new(), dirty: false }
    }

    /// Reads the saved list, if any (blocking: on the watch thread).
    pub fn load(&mut self) {
        let saved: Option<Saved> = std::fs::read(&self.file).ok().and_then(|b| serde_json::from_slice(&b).ok());
        for f in saved.into_iter().filter(|s| s.dir == self.dir.to_string_lossy()).flat_map(|s| s.files) {
            if let Some(name) = crate::types::from_hex(&f.name_hex) {
                let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&name);
                self.files.insert(self.dir.join(name), (f.size, f.mtime_ns));
            }
        }
    }

    /// Whether `path` was kept as it is now.
    pub fn holds(&self, path: &Path, stamp: Stamp) -> bool {
        self.files.get(path) == Some(&stamp)
    }

    pub fn insert(&mut self, path: &Path, stamp: Stamp) {
        if self.files.insert(path.to_path_buf(), stamp) != Some(stamp) {
            self.dirty = true;
        }
    }

    /// Whether `path` was kept, as it was then or not.
    pub fn knows(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }

    /// Forgets the files `still_there` says left the folder.
    pub fn retain(&mut self, still_there: impl Fn(&PathBuf) -> bool) {
        let before = self.files.len();
        self.files.retain(|p, _| still_there(p));
        self.dirty |= self.files.len() != before;
    }

    /// Writes the list if it changed since the last write.
    pub fn save(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let files = self
            .files
            .iter()
            .filter_map(|(p, &(size, mtime_ns))| {
                let name = std::os::unix::ffi::OsStrExt::as_bytes(p.file_name()?);
                let name_hex = name.iter().map(|b| format!("{b:02x}")).collect();
                Some(SavedFile { name_hex, size, mtime_ns })
            })
            .collect();
        let saved = Saved { dir: self.dir.to_string_lossy().into_owned(), files };
        let bytes = serde_json::to_vec(&saved).unwrap_or_default();
        if let Err(e) = crate::fsutil::write_atomic(&self.file, &bytes) {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot save the list of kept watch files");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn the_list_survives_a_restart_names_and_all() {
        let state = tempfile::tempdir().unwrap();
        let watch = Path::new("/srv/watch");
        let odd = watch.join(std::ffi::OsStr::from_bytes(b"caf\xe9.torrent"));
        let load = |dir: &Path| {
            let mut k = KeptFiles::new(state.path(), dir);
            k.load();
            k
        };
        let mut k = load(watch);
        k.insert(&odd, (10, Some(7)));
        k.insert(&watch.join("b.magnet"), (3, None));
        k.save();
        let k = load(watch);
        assert!(k.holds(&odd, (10, Some(7))));
        assert!(!k.holds(&odd, (10, Some(8))), "a touched file is a new drop");
        assert!(k.holds(&watch.join("b.magnet"), (3, None)));
        // Another watch folder does not inherit the list.
        let other = Path::new("/other");
        assert!(!load(other).holds(&other.join("b.magnet"), (3, None)));
    }
}
