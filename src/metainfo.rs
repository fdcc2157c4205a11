//! `.torrent` parsing and validation (BEP 3, 12, 27, 47).
//!
//! Everything a hostile file could use against us is checked here, before a
//! torrent exists: path elements that escape `download_dir`, inconsistent
//! piece tables, absurd sizes, duplicate files and deep nesting. The info hash
//! is taken over the raw `info` bytes found by [`crate::bencode`], never over a
//! re-serialisation, so keys we do not model keep their place in the hash.

use crate::bencode;
use crate::types::InfoHash;
use serde::Deserialize;
use serde_bytes::ByteBuf;
use sha1::{Digest, Sha1};
use std::collections::HashSet;
use std::path::PathBuf;

/// Largest `.torrent` file accepted.
pub const MAX_TORRENT_FILE: usize = 10 * 1024 * 1024;
/// Largest piece length accepted; the engine buffers whole pieces in memory.
pub const MAX_PIECE_LENGTH: u64 = 128 * 1024 * 1024;
/// Most files in one torrent.
pub const MAX_FILES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetainfoError {
    #[error("file is {0} bytes, over the {MAX_TORRENT_FILE}-byte limit for .torrent files")]
    TooLarge(usize),
    #[error("{0}")]
    Bencode(#[from] bencode::ScanError),
    #[error("no 'info' dictionary")]
    NoInfo,
    #[error("bad field: {0}")]
    Field(String),
    #[error("piece length {0} is out of range (1 to {MAX_PIECE_LENGTH})")]
    PieceLength(i64),
    #[error("pieces length {0} is not a multiple of 20")]
    PiecesLength(usize),
    #[error("{pieces} piece hashes but the total length {total} needs {expected}")]
    PieceCount { pieces: usize, total: u64, expected: u64 },
    #[error("negative length {0} for file '{1}'")]
    NegativeLength(i64, String),
    #[error("unsafe path element {0:?} in '{1}'")]
    UnsafePath(String, String),
    #[error("duplicate file path '{0}'")]
    DuplicatePath(String),
    #[error("both 'length' and 'files', or neither")]
    Shape,
    #[error("torrent holds no data (total length 0)")]
    Empty,
    #[error("{0} files, over the limit of {MAX_FILES}")]
    TooManyFiles(usize),
}

/// One file of the torrent, in torrent order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path below `download_dir`, the torrent name first for multi-file torrents.
    pub path: Vec<String>,
    pub length: u64,
    /// Offset of the file's first byte within the torrent's byte stream.
    pub offset: u64,
    /// BEP 47 padding: part of the piece layout, never written to disk.
    pub padding: bool,
}

impl FileEntry {
    pub fn relative_path(&self) -> PathBuf {
        self.path.iter().collect()
    }
}

#[derive(Debug, Clone)]
pub struct Metainfo {
    pub info_hash: InfoHash,
    pub name: String,
    pub piece_length: u64,
    pub piece_hashes: Vec<[u8; 20]>,
    pub files: Vec<FileEntry>,
    pub total_length: u64,
    /// BEP 12 tiers; a single `announce` becomes one tier.
    pub trackers: Vec<Vec<String>>,
    /// BEP 27: no DHT, no PEX.
    pub private: bool,
    /// The raw bencoded `info` dictionary (served to magnet peers, BEP 9).
    pub info_bytes: Vec<u8>,
    /// What the `.torrent` says about itself outside `info` (none for a
    /// magnet's metadata).
    pub about: About,
}

/// A `.torrent`'s `comment`, `created by` and `creation date`, as the API's
/// `torrents/properties` shows them: bounded, kept with the torrent in
/// `state_dir`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct About {
    pub comment: Option<String>,
    pub created_by: Option<String>,
    /// Unix seconds.
    pub creation_date: Option<i64>,
}

/// The longest `comment` or `created by` kept, in bytes.
const MAX_ABOUT: usize = 4096;

impl About {
    fn from_raw(raw: &RawTorrent) -> About {
        let text = |b: &Option<ByteBuf>| {
            b.as_ref().map(|b| {
                let s = String::from_utf8_lossy(&b[..b.len().min(MAX_ABOUT)]).into_owned();
                s.trim_end_matches('\u{FFFD}').to_string()
            })
        };
        About {
            comment: text(&raw.comment),
            created_by: text(&raw.created_by),
            creation_date: raw.creation_date.filter(|d| *d > 0),
        }
    }

    /// The keys as bencode, in their sorted places before `info`.
    fn encode(&self, out: &mut Vec<u8>) {
        let mut text = |key: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.extend_from_slice(format!("{}:{key}{}:", key.len(), v.len()).as_bytes());
                out.extend_from_slice(v.as_bytes());
            }
        };
        text("comment", &self.comment);
        text("created by", &self.created_by);
        if let Some(d) = self.creation_date {
            out.extend_from_slice(format!("13:creation datei{d}e").as_bytes());
        }
    }
}

#[derive(Deserialize)]
struct RawTorrent {
    announce: Option<ByteBuf>,
    #[serde(rename = "announce-list")]
    announce_list: Option<Vec<Vec<ByteBuf>>>,
    comment: Option<ByteBuf>,
    #[serde(rename = "created by")]
    created_by: Option<ByteBuf>,
    #[serde(rename = "creation date")]
    creation_date: Option<i64>,
}

#[derive(Deserialize)]
struct RawInfo {
    name: ByteBuf,
    #[serde(rename = "piece length")]
    piece_length: i64,
    pieces: ByteBuf,
    length: Option<i64>,
    files: Option<Vec<RawFile>>,
    private: Option<i64>,
}

#[derive(Deserialize)]
struct RawFile {
    length: i64,
    path: Vec<ByteBuf>,
    attr: Option<ByteBuf>,
}

/// A multi-file torrent's files under `name`, with their offsets, and the
/// total length. Paths must be safe and distinct, and no file may stand where
/// another file's directory is.
fn file_list(name: &str, raw_files: Vec<RawFile>) -> Result<(Vec<FileEntry>, u64), MetainfoError> {
    if raw_files.len() > MAX_FILES {
        return Err(MetainfoError::TooManyFiles(raw_files.len()));
    }
    let mut files = Vec::with_capacity(raw_files.len());
    let mut offset = 0u64;
    let (mut seen, mut dirs) = (HashSet::new(), HashSet::new());
    for f in raw_files {
        let shown = f.path.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>().join("/");
        if f.path.is_empty() {
            return Err(MetainfoError::UnsafePath(String::new(), shown));
        }
        let mut path = vec![name.to_string()];
        for element in &f.path {
            path.push(path_element(element, &shown)?);
        }
        if f.length < 0 {
            return Err(MetainfoError::NegativeLength(f.length, shown));
        }
        let padding = f.attr.as_ref().is_some_and(|a| a.contains(&b'p'));
        if !padding {
            // Every prefix as a running hash, not a joined string: a path of
            // N parts costs N steps, not N² bytes.
            let prefixes = path_prefixes(&path);
            let (key, dirs_of) = prefixes.split_last().expect("a path has a name and an element");
            if !seen.insert(*key) || dirs.contains(key) {
                return Err(MetainfoError::DuplicatePath(shown));
            }
            for (i, dir) in dirs_of.iter().enumerate() {
                if seen.contains(dir) {
                    return Err(MetainfoError::DuplicatePath(path[..=i].join("/")));
                }
                dirs.insert(*dir);
            }
        }
        files.push(FileEntry { path, length: f.length as u64, offset, padding });
        offset =
            offset.checked_add(f.length as u64).ok_or_else(|| MetainfoError::Field("total length overflows".into()))?;
    }
    Ok((files, offset))
}

/// Hashes of `path[..1]`, `path[..2]`, … `path[..]`, each from the one
/// before it. Equal hashes stand for equal paths (a collision of 64-bit
/// hashes could only refuse a torrent, never merge two files).
fn path_prefixes(path: &[String]) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    let mut running = 0u64;
    path.iter()
        .map(|element| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (running, element).hash(&mut h);
            running = h.finish();
            running
        })
        .collect()
}

impl Metainfo {
    /// Parses a whole `.torrent` file.
    pub fn from_torrent_bytes(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        if bytes.len() > MAX_TORRENT_FILE {
            return Err(MetainfoError::TooLarge(bytes.len()));
        }
        let span = bencode::top_level_value(bytes, b"info")?.ok_or(MetainfoError::NoInfo)?;
        let raw: RawTorrent = serde_bencode::from_bytes(bytes).map_err(|e| MetainfoError::Field(e.to_string()))?;
        let about = About::from_raw(&raw);
        let mut trackers: Vec<Vec<String>> = raw
            .announce_list
            .unwrap_or_default()
            .into_iter()
            .map(|tier| tier.iter().filter_map(|u| tracker_url(u)).collect::<Vec<_>>())
            .filter(|tier| !tier.is_empty())
            .collect();
        if trackers.is_empty() {
            if let Some(url) = raw.announce.as_deref().and_then(|u| tracker_url(u)) {
                trackers.push(vec![url]);
            }
        }
        Ok(Metainfo { about, ..Metainfo::from_info_bytes(&bytes[span], trackers)? })
    }

    /// Builds from a raw `info` dictionary, as a magnet's metadata arrives.
    pub fn from_info_bytes(info_bytes: &[u8], trackers: Vec<Vec<String>>) -> Result<Metainfo, MetainfoError> {
        if info_bytes.len() > MAX_TORRENT_FILE {
            return Err(MetainfoError::TooLarge(info_bytes.len()));
        }
        if info_bytes.first() != Some(&b'd') {
            return Err(MetainfoError::NoInfo);
        }
        let end = bencode::skip_value(info_bytes, 0)?;
        if end != info_bytes.len() {
            return Err(bencode::ScanError::Invalid(end, "trailing bytes after the info dictionary").into());
        }
        let info: RawInfo =
            serde_bencode::from_bytes(info_bytes).map_err(|e| MetainfoError::Field(format!("info: {e}")))?;
        let name = path_element(&info.name, "name")?;
        if info.piece_length <= 0 || info.piece_length as u64 > MAX_PIECE_LENGTH {
            return Err(MetainfoError::PieceLength(info.piece_length));
        }
        let piece_length = info.piece_length as u64;
        if !info.pieces.len().is_multiple_of(20) {
            return Err(MetainfoError::PiecesLength(info.pieces.len()));
        }
        let piece_hashes: Vec<[u8; 20]> = info.pieces.chunks(20).map(|c| c.try_into().unwrap()).collect();

        let (files, offset) = match (info.length, info.files) {
            (Some(length), None) if length < 0 => return Err(MetainfoError::NegativeLength(length, name)),
            (Some(length), None) => (
                vec![FileEntry { path: vec![name.clone()], length: length as u64, offset: 0, padding: false }],
                length as u64,
            ),
            (None, Some(raw_files)) => file_list(&name, raw_files)?,
            _ => return Err(MetainfoError::Shape),
        };
        let total_length = offset;
        if total_length == 0 {
            return Err(MetainfoError::Empty);
        }
        let expected = total_length.div_ceil(piece_length);
        if expected != piece_hashes.len() as u64 {
            return Err(MetainfoError::PieceCount { pieces: piece_hashes.len(), total: total_length, expected });
        }
        Ok(Metainfo {
            info_hash: InfoHash(Sha1::digest(info_bytes).into()),
            name,
            piece_length,
            piece_hashes,
            files,
            total_length,
            trackers,
            private: info.private == Some(1),
            info_bytes: info_bytes.to_vec(),
            about: About::default(),
        })
    }

    pub fn piece_count(&self) -> usize {
        self.piece_hashes.len()
    }

    /// Length of piece `index` (the last one may be short).
    pub fn piece_len(&self, index: usize) -> u32 {
        let start = index as u64 * self.piece_length;
        (self.total_length - start).min(self.piece_length) as u32
    }

    /// Re-encodes a minimal `.torrent` around the raw info bytes (for state_dir).
    pub fn to_torrent_bytes(&self) -> Vec<u8> {
        let mut out = b"d".to_vec();
        if !self.trackers.is_empty() {
            out.extend_from_slice(b"13:announce-listl");
            for tier in &self.trackers {
                out.push(b'l');
                for url in tier {
                    out.extend_from_slice(format!("{}:{}", url.len(), url).as_bytes());
                }
                out.push(b'e');
            }
            out.push(b'e');
        }
        self.about.encode(&mut out);
        out.extend_from_slice(b"4:info");
        out.extend_from_slice(&self.info_bytes);
        out.push(b'e');
        out
    }
}

fn tracker_url(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    let lower = s.to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("udp://"))
        .then(|| s.to_string())
}

/// A single path component that is safe to join below `download_dir`.
fn path_element(raw: &[u8], context: &str) -> Result<String, MetainfoError> {
    let s = String::from_utf8_lossy(raw).into_owned();
    // Control characters (newlines, escapes) are refused, as Transmission
    // does: they would reach file names, logs and terminals.
    let unsafe_element = s.is_empty()
        || s == "."
        || s == ".."
        || s.contains(['/', '\\', '\0'])
        || s.chars().any(char::is_control)
        || s.len() > 255;
    if unsafe_element {
        return Err(MetainfoError::UnsafePath(s, context.to_string()));
    }
    Ok(s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bencodes a torrent by hand for the *bad* cases only; good cases in the
    /// integration tests come from real tools.
    pub(crate) fn torrent(info: &str) -> Vec<u8> {
        format!("d8:announce22:http://127.0.0.1:1/ann4:info{info}e").into_bytes()
    }

    fn pieces(n: usize) -> String {
        format!("{}:{}", n * 20, "a".repeat(n * 20))
    }

    #[test]
    fn control_characters_in_names_are_refused() {
        for name in ["4:a\nb", "4:a\x1bc", "4:ab\tc"] {
            let info = format!("d6:lengthi40000e4:name{name}12:piece lengthi16384e6:pieces{}e", pieces(3));
            let name = &name[2..];
            let info = info.replace(&format!("4:name4:{name}"), &format!("4:name{}:{name}", name.len()));
            let e = Metainfo::from_torrent_bytes(&torrent(&info)).unwrap_err();
            assert!(matches!(e, MetainfoError::UnsafePath(..)), "{name:?}: {e}");
        }
    }

    #[test]
    fn comment_creator_and_date_are_kept_through_state_dir() {
        let info = format!("d6:lengthi5e4:name1:a12:piece lengthi16e6:pieces{}e", pieces(1));
        let head = "d7:comment9:from here10:created by9:mktorrent13:creation datei1700000000e4:info";
        let bytes = [head.as_bytes(), info.as_bytes(), b"e"].concat();
        let m = Metainfo::from_torrent_bytes(&bytes).unwrap();
        let about = About {
            comment: Some("from here".into()),
            created_by: Some("mktorrent".into()),
            creation_date: Some(1_700_000_000),
        };
        assert_eq!(m.about, about);
        let again = Metainfo::from_torrent_bytes(&m.to_torrent_bytes()).unwrap();
        assert_eq!((again.about, again.info_hash), (about, m.info_hash));
        let long = format!("d7:comment{}:{}4:info{info}e", 10_000, "x".repeat(10_000));
        assert_eq!(Metainfo::from_torrent_bytes(long.as_bytes()).unwrap().about.comment.unwrap().len(), 4096);
    }

    #[test]
    fn single_file_parses() {
        let info = format!("d6:lengthi40000e4:name5:a.bin12:piece lengthi16384e6:pieces{}e", pieces(3));
        let m = Metainfo::from_torrent_bytes(&torrent(&info)).unwrap();
        assert_eq!(m.name, "a.bin");
        assert_eq!(m.piece_count(), 3);
        assert_eq!(m.piece_len(2), 40000 - 2 * 16384);
        assert_eq!(m.trackers, vec![vec!["http://127.0.0.1:1/ann".to_string()]]);
        assert_eq!(m.info_hash.0, <[u8; 20]>::from(Sha1::digest(info.as_bytes())));
    }

    #[test]
    fn unknown_keys_stay_in_the_hash() {
        let plain = format!("d6:lengthi10e4:name1:x12:piece lengthi16384e6:pieces{}e", pieces(1));
        let extra = format!("d6:lengthi10e4:name1:x12:piece lengthi16384e6:pieces{}7:zzextrai5ee", pieces(1));
        let a = Metainfo::from_torrent_bytes(&torrent(&plain)).unwrap();
        let b = Metainfo::from_torrent_bytes(&torrent(&extra)).unwrap();
        assert_ne!(a.info_hash, b.info_hash);
        assert_eq!(b.info_hash.0, <[u8; 20]>::from(Sha1::digest(extra.as_bytes())));
        // Round trip through the state_dir form keeps the hash.
        let again = Metainfo::from_torrent_bytes(&b.to_torrent_bytes()).unwrap();
        assert_eq!(again.info_hash, b.info_hash);
        assert_eq!(again.trackers, b.trackers);
    }

    #[test]
    fn multi_file_with_padding_and_empty_file() {
        let info = format!(
            "d5:filesld6:lengthi5e4:pathl1:aeed4:attr1:p6:lengthi16379e4:pathl4:.pad1:1eed6:lengthi0e4:pathl5:emptyeed6:lengthi7e4:pathl3:sub1:beee4:name3:dir12:piece lengthi16384e6:pieces{}7:privatei1ee",
            pieces(2)
        );
        let m = Metainfo::from_torrent_bytes(&torrent(&info)).unwrap();
        assert!(m.private);
        assert_eq!(m.files.len(), 4);
        assert!(m.files[1].padding);
        assert_eq!(m.files[3].offset, 16384);
        assert_eq!(m.files[3].path, vec!["dir", "sub", "b"]);
        assert_eq!(m.total_length, 16391);
    }

    fn err(info: &str) -> MetainfoError {
        Metainfo::from_torrent_bytes(&torrent(info)).unwrap_err()
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let p1 = pieces(1);
        assert_eq!(
            err("d6:lengthi10e4:name1:x12:piece lengthi16384e6:pieces41:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxe")
                .to_string(),
            "pieces length 41 is not a multiple of 20"
        );
        assert!(matches!(
            err(&format!("d6:lengthi10e4:name2:..12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::UnsafePath(..)
        ));
        assert!(matches!(
            err(&format!("d6:lengthi10e4:name0:12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::UnsafePath(..)
        ));
        assert!(matches!(
            err(&format!("d6:lengthi10e4:name3:a/b12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::UnsafePath(..)
        ));
        assert!(matches!(
            err(&format!("d6:lengthi10e4:name3:a\\b12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::UnsafePath(..)
        ));
        assert!(matches!(
            err(&format!("d6:lengthi10e4:name3:a\0b12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::UnsafePath(..)
        ));
        assert!(matches!(
            err(&format!("d5:filesld6:lengthi5e4:pathl2:..1:xeee4:name1:d12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::UnsafePath(..)
        ));
        assert!(matches!(
            err(&format!("d5:filesld6:lengthi5e4:pathl1:.eee4:name1:d12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::UnsafePath(..)
        ));
        assert!(matches!(
            err(&format!("d5:filesld6:lengthi5e4:pathleee4:name1:d12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::UnsafePath(..)
        ));
        assert!(matches!(
            err(&format!("d6:lengthi10e4:name1:x12:piece lengthi0e6:pieces{p1}e")),
            MetainfoError::PieceLength(0)
        ));
        assert!(matches!(
            err(&format!("d6:lengthi10e4:name1:x12:piece lengthi-5e6:pieces{p1}e")),
            MetainfoError::PieceLength(-5)
        ));
        assert!(matches!(
            err(&format!("d6:lengthi10e4:name1:x12:piece lengthi999999999999e6:pieces{p1}e")),
            MetainfoError::PieceLength(_)
        ));
        assert!(matches!(
            err(&format!("d6:lengthi-10e4:name1:x12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::NegativeLength(..)
        ));
        assert!(matches!(
            err(&format!("d6:lengthi99999e4:name1:x12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::PieceCount { .. }
        ));
        assert!(matches!(err("d6:lengthi0e4:name1:x12:piece lengthi16384e6:pieces0:e"), MetainfoError::Empty));
        assert!(matches!(err(&format!("d5:filesld6:lengthi5e4:pathl1:aeed6:lengthi5e4:pathl1:aeee4:name1:d12:piece lengthi16384e6:pieces{p1}e")), MetainfoError::DuplicatePath(_)));
        assert!(matches!(err(&format!("d5:filesld6:lengthi5e4:pathl1:aeed6:lengthi5e4:pathl1:a1:beee4:name1:d12:piece lengthi16384e6:pieces{p1}e")), MetainfoError::DuplicatePath(_)));
        assert!(matches!(
            err(&format!("d6:lengthi5e5:filesle4:name1:x12:piece lengthi16384e6:pieces{p1}e")),
            MetainfoError::Shape
        ));
        assert!(matches!(err("d4:name1:xe"), MetainfoError::Field(_)));
        assert!(matches!(Metainfo::from_torrent_bytes(b"d8:announce1:xe"), Err(MetainfoError::NoInfo)));
        assert!(matches!(
            Metainfo::from_torrent_bytes(&vec![b'x'; MAX_TORRENT_FILE + 1]),
            Err(MetainfoError::TooLarge(_))
        ));
        assert!(matches!(Metainfo::from_torrent_bytes(b"not bencode"), Err(MetainfoError::Bencode(_))));
    }
}
