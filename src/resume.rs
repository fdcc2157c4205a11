//! Per-torrent state in `state_dir`: `<hash>.torrent` (the metainfo) and
//! `<hash>.resume` (verified pieces, counters, flags), each written atomically
//! (temp file, fsync, rename, fsync of the directory), so a kill -9 at any
//! moment leaves either the old record or the new one, never a torn one.

use crate::types::InfoHash;
use serde::{Deserialize, Serialize};
use std::io;
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
    /// Payload of pieces downloaded and verified.
    pub downloaded: u64,
    /// Bytes of downloaded pieces that failed their hash check.
    #[serde(default)]
    pub corrupt: u64,
    /// Unix seconds.
    pub added_at: u64,
    /// Unix seconds; 0 while incomplete.
    pub completed_at: u64,
    /// Seconds spent seeding, for the seed-time limit.
    pub seeding_secs: u64,
    /// Seconds seeding since the last uploaded byte, for the idle limit.
    #[serde(default)]
    pub seed_idle_secs: u64,
    /// Seconds running, downloading or seeding (the API's `time_active`).
    #[serde(default)]
    pub active_secs: u64,
    /// Why the torrent is held still, if it is.
    #[serde(default)]
    pub hold: Hold,
    /// Records written before `hold` existed said `paused = 1` or
    /// `stopped = 1`; read once, folded into `hold`, never written again.
    #[serde(default, skip_serializing)]
    pub(crate) paused: u8,
    #[serde(default, skip_serializing)]
    pub(crate) stopped: u8,
    /// Listening addresses of peers last connected (or a magnet's `x.pe`
    /// peers), dialled first after a restart.
    #[serde(default)]
    pub peers: Vec<String>,
    /// When the torrent last announced, and its tracker key.
    #[serde(default)]
    pub announce: crate::tracker::pace::AnnounceRecord,
    /// Where the data lives. None until the torrent first prepares its
    /// files, and in records from before `incomplete_dir` (whose data lives
    /// in `download_dir` under the torrent's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<crate::storage::Place>,
    /// The version of dropseed's record format that wrote it: 0 for records
    /// from before `place` existed.
    #[serde(default)]
    pub version: u32,
    /// The torrent's category (the watch subfolder it came from), "" for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub category: String,
    /// The complete folder's place for the data, written before a move
    /// begins and cleared when it is done: a restart finishes the move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<crate::storage::Place>,
    /// Device, inode, size and mtime of each of the torrent's files (by
    /// index) when it last had them open: `remove --delete-data` deletes
    /// only files that still match. Empty in older records.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::storage::nofollow::lenient_stamps"
    )]
    pub stamps: Vec<crate::storage::nofollow::FileStamp>,
    /// The torrent's tags (the API's `torrents/addTags`); older records have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Its own share limits (the API's `setShareLimits`); None = the config's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<crate::share::ShareLimits>,
    /// The name shown instead of the metainfo's (the API's `torrents/rename`);
    /// the files keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown_name: Option<String>,
    /// The data was there before the torrent (another torrent's, or put
    /// there by the user for it: cross-seeding): every piece is verified
    /// against this torrent's hashes before a byte is served, the files are
    /// opened read-only, and a piece that fails puts the torrent in error
    /// rather than being downloaded into a file others use.
    #[serde(default, skip_serializing_if = "std::ops::Not::not", with = "crate::storage::place::bool_as_int")]
    pub borrowed: bool,
    /// Files (by index) linked in at add from another torrent's data whose
    /// pieces verified (automatic cross-seed matching): never rewritten
    /// while another name holds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked: Vec<u32>,
    /// Automatic cross-seed matching is still to be made (see
    /// `torrent::matching`): set at the add, cleared once done, so a kill -9
    /// in the middle makes it again at the next start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not", with = "crate::storage::place::bool_as_int")]
    pub match_pending: bool,
    /// Its own rate limits (the API's `torrents/setDownloadLimit`), under
    /// the global ones.
    #[serde(default, skip_serializing_if = "RateLimits::is_none")]
    pub rate_limits: RateLimits,
    /// Forced start (the API's `setForceStart`): a download slot at once,
    /// outside `[limits] max_active_downloads` (see `torrent::queue`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not", with = "crate::storage::place::bool_as_int")]
    pub force_start: bool,
}

/// A torrent's own rates in bytes/s; 0 = none (the global `[limits]` still hold).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    #[serde(default)]
    pub download: u64,
    #[serde(default)]
    pub upload: u64,
}

impl RateLimits {
    pub fn is_none(&self) -> bool {
        *self == RateLimits::default()
    }
}

/// A torrent the user paused, or one a seeding limit stopped, stays still
/// until resumed, across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hold {
    #[default]
    Running,
    Paused,
    Stopped,
}

/// Records with a `place` (the incomplete and complete folders) are version 1.
pub const RECORD_VERSION: u32 = 1;

pub fn torrent_path(state_dir: &Path, hash: &InfoHash) -> PathBuf {
    state_dir.join(format!("{}.torrent", hash.hex()))
}

pub fn resume_path(state_dir: &Path, hash: &InfoHash) -> PathBuf {
    state_dir.join(format!("{}.resume", hash.hex()))
}

pub fn magnet_path(state_dir: &Path, hash: &InfoHash) -> PathBuf {
    state_dir.join(format!("{}.magnet", hash.hex()))
}

impl ResumeRecord {
    pub fn save(&self, state_dir: &Path, hash: &InfoHash) -> io::Result<()> {
        let current = ResumeRecord { version: RECORD_VERSION, ..self.clone() };
        let bytes = serde_bencode::to_bytes(&current).map_err(io::Error::other)?;
        crate::fsutil::write_atomic(&resume_path(state_dir, hash), &bytes)
    }

    pub fn load(state_dir: &Path, hash: &InfoHash) -> io::Result<Option<ResumeRecord>> {
        match std::fs::read(resume_path(state_dir, hash)) {
            // The bounded scanner first: serde_bencode recurses without a limit.
            Ok(bytes) => crate::bencode::skip_value(&bytes, 0)
                .map_err(|e| e.to_string())
                .and_then(|_| serde_bencode::from_bytes::<ResumeRecord>(&bytes).map_err(|e| e.to_string()))
                .map(|r| Some(r.upgraded()))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("resume record: {e}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Folds the flags of older records into `hold`.
    fn upgraded(mut self) -> ResumeRecord {
        if self.hold == Hold::Running {
            if self.paused == 1 {
                self.hold = Hold::Paused;
            } else if self.stopped == 1 {
                self.hold = Hold::Stopped;
            }
        }
        (self.paused, self.stopped) = (0, 0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let h = InfoHash([7; 20]);
        assert_eq!(ResumeRecord::load(dir.path(), &h).unwrap(), None);
        let stamp = crate::storage::nofollow::FileStamp { dev: 2049, ino: 1 << 40, size: 7, mtime_ns: -5 };
        let mut r = ResumeRecord {
            name: "x".into(),
            have: vec![0xf0],
            piece_count: 4,
            uploaded: 9,
            stamps: vec![stamp, Default::default()],
            ..Default::default()
        };
        r.save(dir.path(), &h).unwrap();
        // What is saved says which format wrote it.
        r.version = RECORD_VERSION;
        assert_eq!(ResumeRecord::load(dir.path(), &h).unwrap(), Some(r.clone()));
        r.uploaded = 10;
        r.save(dir.path(), &h).unwrap();
        assert_eq!(ResumeRecord::load(dir.path(), &h).unwrap().unwrap().uploaded, 10);
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(resume_path(dir.path(), &h), b"garbage").unwrap();
        assert!(ResumeRecord::load(dir.path(), &h).is_err());
    }

    #[test]
    fn hold_is_typed_and_old_flags_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let h = InfoHash([8; 20]);
        let r = ResumeRecord { hold: Hold::Stopped, ..Default::default() };
        r.save(dir.path(), &h).unwrap();
        let bytes = std::fs::read(resume_path(dir.path(), &h)).unwrap();
        assert!(bytes.windows(15).any(|w| w == b"4:hold7:stopped"), "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(ResumeRecord::load(dir.path(), &h).unwrap().unwrap().hold, Hold::Stopped);
        // A record of an earlier version, paused by the user.
        let old = b"d8:added_ati0e12:completed_ati0e10:downloadedi0e4:have0:4:name1:x6:pausedi1e11:piece_counti0e12:seeding_secsi0e7:stoppedi0e8:uploadedi0ee";
        std::fs::write(resume_path(dir.path(), &h), old).unwrap();
        let loaded = ResumeRecord::load(dir.path(), &h).unwrap().unwrap();
        assert_eq!((loaded.hold, loaded.stamps.len()), (Hold::Paused, 0), "no stamps in an old record");
        std::fs::write(resume_path(dir.path(), &h), b"garbage").unwrap();
        assert!(ResumeRecord::load(dir.path(), &h).is_err());
    }

    #[test]
    fn a_stamp_of_any_inode_number_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let h = InfoHash([9; 20]);
        let big =
            crate::storage::nofollow::FileStamp { dev: u64::MAX, ino: u64::MAX, size: 1 << 63, mtime_ns: i64::MIN };
        let r = ResumeRecord { name: "x".into(), hold: Hold::Paused, stamps: vec![big], ..Default::default() };
        r.save(dir.path(), &h).unwrap();
        let loaded = ResumeRecord::load(dir.path(), &h).unwrap().unwrap();
        assert_eq!((loaded.stamps, loaded.hold), (vec![big], Hold::Paused));
    }

    #[test]
    fn malformed_stamps_empty_the_stamps_not_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let h = InfoHash([10; 20]);
        let head = b"d8:added_ati0e12:completed_ati0e10:downloadedi0e4:have0:4:hold".to_vec();
        for stamps in [
            &b"6:stampsi5e"[..],
            b"6:stampsld3:inoi1eee",
            b"6:stampsl3:abce",
            b"6:stampsld3:dev3:abc3:inoi1e8:mtime_nsi0e4:sizei1eee",
        ] {
            let mut rec = head.clone();
            rec.extend_from_slice(b"6:paused4:name1:x11:piece_counti0e12:seeding_secsi0e");
            rec.extend_from_slice(stamps);
            rec.extend_from_slice(b"8:uploadedi7ee");
            std::fs::write(resume_path(dir.path(), &h), &rec).unwrap();
            let loaded = ResumeRecord::load(dir.path(), &h)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(stamps)));
            let loaded = loaded.unwrap();
            assert_eq!((loaded.uploaded, loaded.hold, loaded.stamps.len()), (7, Hold::Paused, 0));
        }
    }
}
