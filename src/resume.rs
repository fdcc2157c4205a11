//! Per-torrent state in `state_dir`: `<hash>.torrent` (the metainfo) and
//! `<hash>.resume` (verified pieces, counters, flags), each written atomically
//! (temp file, fsync, rename, fsync of the directory), so a kill -9 at any
//! moment leaves either the old record or the new one, never a torn one.

use crate::types::InfoHash;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResumeRecord {
    pub name: String,
    /// Verified pieces, wire bit order; empty while the metadata is unknown.
    #[serde(with = "serde_bytes")]
    pub have: Vec<u8>,
    pub piece_count: u64,
    /// Pieces verified and written but not yet flushed when the record was
    /// saved: hash-checked on restart, never trusted.
    #[serde(with = "serde_bytes", default)]
    pub unverified: Vec<u8>,
    pub uploaded: u64,
    pub downloaded: u64,
    /// Unix seconds.
    pub added_at: u64,
    /// Unix seconds; 0 while incomplete.
    pub completed_at: u64,
    /// Seconds spent seeding, for the seed-time limit.
    pub seeding_secs: u64,
    /// 1 when paused by the user.
    pub paused: u8,
    /// 1 when stopped by a ratio or seed-time limit.
    pub stopped: u8,
    /// Listening addresses of peers last connected (or a magnet's `x.pe`
    /// peers), dialled first after a restart.
    #[serde(default)]
    pub peers: Vec<String>,
}

pub fn torrent_path(state_dir: &Path, hash: &InfoHash) -> PathBuf {
    state_dir.join(format!("{}.torrent", hash.hex()))
}

pub fn resume_path(state_dir: &Path, hash: &InfoHash) -> PathBuf {
    state_dir.join(format!("{}.resume", hash.hex()))
}

pub fn magnet_path(state_dir: &Path, hash: &InfoHash) -> PathBuf {
    state_dir.join(format!("{}.magnet", hash.hex()))
}

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

impl ResumeRecord {
    pub fn save(&self, state_dir: &Path, hash: &InfoHash) -> io::Result<()> {
        let bytes = serde_bencode::to_bytes(self).map_err(io::Error::other)?;
        write_atomic(&resume_path(state_dir, hash), &bytes)
    }

    pub fn load(state_dir: &Path, hash: &InfoHash) -> io::Result<Option<ResumeRecord>> {
        match std::fs::read(resume_path(state_dir, hash)) {
            Ok(bytes) => serde_bencode::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("resume record: {e}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let h = InfoHash([7; 20]);
        assert_eq!(ResumeRecord::load(dir.path(), &h).unwrap(), None);
        let mut r =
            ResumeRecord { name: "x".into(), have: vec![0xf0], piece_count: 4, uploaded: 9, ..Default::default() };
        r.save(dir.path(), &h).unwrap();
        assert_eq!(ResumeRecord::load(dir.path(), &h).unwrap(), Some(r.clone()));
        r.uploaded = 10;
        r.save(dir.path(), &h).unwrap();
        assert_eq!(ResumeRecord::load(dir.path(), &h).unwrap().unwrap().uploaded, 10);
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(resume_path(dir.path(), &h), b"garbage").unwrap();
        assert!(ResumeRecord::load(dir.path(), &h).is_err());
    }
}
