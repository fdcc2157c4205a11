//! One torrent's content as qBittorrent shows it: `torrents/files` (every
//! file with its verified progress and piece range), `torrents/pieceStates`
//! and `torrents/pieceHashes`. Pure mappings from the metainfo and a copy
//! of the torrent's piece states ([`crate::torrent::PieceView`]), taken for
//! that torrent alone: a request costs its own list, nothing more.

use crate::metainfo::{FileEntry, Metainfo};
use crate::torrent::detail::verified_in;
use crate::torrent::PieceView;
use serde::Serialize;
use std::collections::HashSet;

/// qBittorrent's piece states.
pub const NOT_DOWNLOADED: u8 = 0;
pub const DOWNLOADING: u8 = 1;
pub const DOWNLOADED: u8 = 2;

/// One entry of `torrents/files`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileInfo {
    pub index: usize,
    /// The path qBittorrent shows: relative to the save path, the
    /// torrent's folder first for a multi-file torrent.
    pub name: String,
    pub size: u64,
    /// Share of the file inside verified pieces.
    pub progress: f64,
    /// Normal: every file is downloaded (file selection does not exist yet).
    pub priority: u8,
    /// qBittorrent sends it with the first file only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_seed: Option<bool>,
    /// First and last piece holding the file, both included.
    pub piece_range: [u64; 2],
    /// Share of its pieces some connected peer has; -1 once complete (as
    /// libtorrent gives no availability for a seed).
    pub availability: f64,
}

/// The files of `meta` (padding files left out, as qBittorrent does),
/// only those at `indexes` when given.
pub fn files(meta: &Metainfo, pieces: &PieceView, indexes: Option<&HashSet<usize>>) -> Vec<FileInfo> {
    let complete = pieces.have.is_full();
    meta.files
        .iter()
        .filter(|f| !f.padding)
        .enumerate()
        .filter(|(i, _)| indexes.is_none_or(|set| set.contains(i)))
        .map(|(index, f)| {
            let done = verified_in(f, &pieces.have, meta.piece_length);
            let (first, last) = piece_range(f, meta.piece_length);
            FileInfo {
                index,
                name: f.path.join("/"),
                size: f.length,
                progress: if f.length == 0 { 1.0 } else { done as f64 / f.length as f64 },
                priority: 1,
                is_seed: (index == 0).then_some(complete),
                piece_range: [first, last],
                availability: if complete { -1.0 } else { availability(pieces, first, last) },
            }
        })
        .collect()
}

/// First and last piece of a file; a file of no bytes sits in the piece
/// where it starts.
fn piece_range(f: &FileEntry, piece_length: u64) -> (u64, u64) {
    let first = f.offset / piece_length.max(1);
    let last = if f.length == 0 { first } else { (f.offset + f.length - 1) / piece_length.max(1) };
    (first, last)
}

fn availability(pieces: &PieceView, first: u64, last: u64) -> f64 {
    let range = first as usize..=last as usize;
    let total = range.clone().count().max(1);
    let seen = range.filter(|&i| pieces.availability.get(i).is_some_and(|&n| n > 0)).count();
    seen as f64 / total as f64
}

/// `torrents/pieceStates`: one number per piece.
pub fn piece_states(pieces: &PieceView) -> Vec<u8> {
    let mut states: Vec<u8> =
        (0..pieces.have.len()).map(|i| if pieces.have.get(i) { DOWNLOADED } else { NOT_DOWNLOADED }).collect();
    for &i in &pieces.in_progress {
        if let Some(s) = states.get_mut(i as usize).filter(|s| **s == NOT_DOWNLOADED) {
            *s = DOWNLOADING;
        }
    }
    states
}

/// `torrents/pieceHashes`: each piece's SHA-1 in hex.
pub fn piece_hashes(meta: &Metainfo) -> Vec<String> {
    meta.piece_hashes.iter().map(|h| crate::types::to_hex(h)).collect()
}

/// `torrents/files`' `indexes=1|3`: None for all (or nothing readable).
pub fn parse_indexes(s: &str) -> Option<HashSet<usize>> {
    let set: HashSet<usize> = s.split('|').filter_map(|i| i.trim().parse().ok()).take(100_000).collect();
    (!s.is_empty()).then_some(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Bitfield;

    /// Pieces of 10 bytes: `dir/a` bytes 0..15, a padding file 15..20,
    /// `dir/sub/b` 20..45, `dir/empty` at 45.
    fn meta() -> Metainfo {
        let file = |path: &[&str], offset, length, padding| FileEntry {
            path: path.iter().map(|s| s.to_string()).collect(),
            length,
            offset,
            padding,
        };
        Metainfo {
            info_hash: crate::types::InfoHash([7; 20]),
            name: "dir".into(),
            piece_length: 10,
            piece_hashes: (0..5u8).map(|i| [i; 20]).collect(),
            files: vec![
                file(&["dir", "a"], 0, 15, false),
                file(&["dir", ".pad", "5"], 15, 5, true),
                file(&["dir", "sub", "b"], 20, 25, false),
                file(&["dir", "empty"], 45, 0, false),
            ],
            total_length: 45,
            trackers: Vec::new(),
            about: Default::default(),
            private: false,
            info_bytes: Vec::new(),
        }
    }

    fn view(have: &[usize], busy: &[u32], avail: [u32; 5]) -> PieceView {
        let mut bits = Bitfield::new(5);
        for &i in have {
            bits.set(i);
        }
        PieceView { have: bits, in_progress: busy.to_vec(), availability: avail.to_vec() }
    }

    #[test]
    fn every_file_with_its_folder_progress_and_pieces() {
        let m = meta();
        let list = files(&m, &view(&[0, 2], &[1], [0, 1, 0, 0, 2]), None);
        let names: Vec<&str> = list.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["dir/a", "dir/sub/b", "dir/empty"], "padding left out, the folder first");
        assert_eq!(list.iter().map(|f| f.index).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(list[0].piece_range, [0, 1]);
        assert_eq!(list[0].progress, 10.0 / 15.0, "piece 0 of it is verified");
        assert_eq!(list[1].piece_range, [2, 4]);
        assert_eq!(list[1].progress, 10.0 / 25.0);
        assert_eq!(list[1].availability, 1.0 / 3.0, "piece 4 is with a peer");
        assert_eq!((list[0].is_seed, list[1].is_seed), (Some(false), None));
        assert_eq!(list[2].progress, 1.0, "an empty file is whole");
        let json = serde_json::to_value(&list[1]).unwrap();
        assert!(json.get("is_seed").is_none(), "only the first file says is_seed");
    }

    #[test]
    fn a_complete_torrent_is_whole_and_seeds() {
        let m = meta();
        let list = files(&m, &view(&[0, 1, 2, 3, 4], &[], [0; 5]), None);
        assert!(list.iter().all(|f| f.progress == 1.0 && f.availability == -1.0));
        assert_eq!(list[0].is_seed, Some(true));
    }

    #[test]
    fn indexes_pick_files() {
        let m = meta();
        let only = parse_indexes("2|0|x").unwrap();
        let list = files(&m, &view(&[], &[], [0; 5]), Some(&only));
        assert_eq!(list.iter().map(|f| f.index).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(parse_indexes(""), None);
    }

    #[test]
    fn piece_states_and_hashes() {
        assert_eq!(piece_states(&view(&[0, 3], &[1, 3, 9], [0; 5])), [2, 1, 0, 2, 0]);
        let h = piece_hashes(&meta());
        assert_eq!(h.len(), 5);
        assert_eq!(h[1], "01".repeat(20));
    }
}
