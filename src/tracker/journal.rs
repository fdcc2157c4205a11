//! When each torrent last announced, kept across a kill -9 without a
//! resume save per announce.
//!
//! The pace's floor (see [`super::pace`]) must hold across a restart: a
//! daemon killed a second after an announce must not announce again at
//! once. Each announce used to save the torrent's whole resume record with
//! two fsyncs for that, which at 10,000 torrents re-announcing every 30
//! minutes was most of the day's idle CPU. The floor is 30 s, so only the
//! last 30 s of announces matter, and only across the death of the process:
//! a power cut means a reboot, longer than the floor. So a line per
//! announce is appended to a small file without fsync (the page cache
//! outlives the process). The file is swapped for a fresh one once it
//! grows past [`ROTATE_AT`] bytes, the last one kept: together they always
//! hold far more than the last 30 s.
//!
//! The resume record still carries the announce record (key, `min
//! interval`, whether a tracker holds us): it is saved at each `started`,
//! whenever a tracker comes to hold us, and at every regular save.

use crate::types::InfoHash;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file, in the state folder.
pub const JOURNAL_FILE: &str = "announces.journal";
/// The one before it.
pub const JOURNAL_OLD: &str = "announces.journal.old";
/// A file this long is set aside for a fresh one (about 4,000 announces,
/// minutes of them even at the pace of ten a second).
const ROTATE_AT: u64 = 256 * 1024;

pub struct Journal {
    dir: PathBuf,
    /// The file appended to and its length, once opened.
    open: Mutex<Option<(File, u64)>>,
}

impl Journal {
    pub fn new(state_dir: &Path) -> Journal {
        Journal { dir: state_dir.to_path_buf(), open: Mutex::new(None) }
    }

    /// Notes that `hash` announced at unix second `at`. Blocking (a write
    /// to the page cache): call it from a blocking thread.
    pub fn note(&self, hash: InfoHash, at: u64) -> io::Result<()> {
        let line = format!("{} {at}\n", hash.hex());
        let mut open = crate::locks::locked(&self.open);
        let full = open.as_ref().map(|(_, len)| *len >= ROTATE_AT);
        if full != Some(false) {
            if full == Some(true) {
                // Failing, it fails the note (the caller saves the record
                // instead) and is tried again at the next.
                std::fs::rename(self.dir.join(JOURNAL_FILE), self.dir.join(JOURNAL_OLD))?;
            }
            let file = OpenOptions::new().create(true).append(true).open(self.dir.join(JOURNAL_FILE))?;
            let len = file.metadata()?.len();
            *open = Some((file, len));
        }
        let (file, len) = open.as_mut().expect("opened above");
        // One write per line: a kill mid-write leaves at most a cut last
        // line, which reading skips.
        file.write_all(line.as_bytes())?;
        *len += line.len() as u64;
        Ok(())
    }

    /// The latest announce of each torrent in the state folder's two
    /// files. Lines that do not parse (a cut last line, a file someone
    /// edited) are skipped; at most [`ROTATE_AT`] and a line is read of
    /// each file.
    pub fn read(state_dir: &Path) -> HashMap<InfoHash, u64> {
        let mut latest = HashMap::new();
        for name in [JOURNAL_OLD, JOURNAL_FILE] {
            let Ok(file) = File::open(state_dir.join(name)) else { continue };
            let mut bytes = Vec::new();
            if file.take(ROTATE_AT + 128).read_to_end(&mut bytes).is_err() {
                continue;
            }
            for (hash, at) in String::from_utf8_lossy(&bytes).lines().filter_map(parse_line) {
                let kept = latest.entry(hash).or_insert(at);
                *kept = (*kept).max(at);
            }
        }
        latest
    }
}

fn parse_line(line: &str) -> Option<(InfoHash, u64)> {
    let (hex, at) = line.split_once(' ')?;
    Some((InfoHash::parse(hex)?, at.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_announce_of_each_torrent_survives_rotation_and_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        let (a, b) = (InfoHash([1; 20]), InfoHash([2; 20]));
        journal.note(a, 100).unwrap();
        // Enough announces of another torrent to rotate the file twice.
        let line = format!("{} 0\n", b.hex()).len() as u64;
        for at in 0..(2 * ROTATE_AT / line + 10) {
            journal.note(b, 1000 + at).unwrap();
        }
        journal.note(a, 200).unwrap();
        let last_b = 1000 + 2 * ROTATE_AT / line + 9;
        let mut f = OpenOptions::new().append(true).open(dir.path().join(JOURNAL_FILE)).unwrap();
        f.write_all(b"0101").unwrap();
        let read = Journal::read(dir.path());
        assert_eq!(read.get(&a), Some(&200));
        assert_eq!(read.get(&b), Some(&last_b));
        assert_eq!(read.len(), 2, "the cut line is skipped");
        let old = std::fs::metadata(dir.path().join(JOURNAL_OLD)).unwrap().len();
        let new = std::fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len();
        assert!(old <= ROTATE_AT + line && new <= ROTATE_AT + line, "bounded: {old} and {new} bytes");
    }

    #[test]
    fn nothing_or_garbage_reads_as_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Journal::read(dir.path()).is_empty());
        std::fs::write(dir.path().join(JOURNAL_FILE), b"\xff\xfe not a line\nzz 12\n").unwrap();
        assert!(Journal::read(dir.path()).is_empty());
    }
}
