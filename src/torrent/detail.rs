//! One torrent's details for `dropseed top`'s detail view (the control
//! socket's `detail` request): each file with its verified bytes and each
//! connected peer with its client, rates and flags. Built only for the one
//! torrent asked, and bounded ([`MAX_FILES`], [`MAX_PEERS`]) whatever the
//! torrent holds.

use super::TorrentShared;
use crate::metainfo::FileEntry;
use crate::types::{printable, Bitfield};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// Files listed at most (the count of all is given beside them).
pub const MAX_FILES: usize = 1000;
/// Peers listed at most.
pub const MAX_PEERS: usize = 200;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TorrentDetail {
    pub files: Vec<FileView>,
    pub files_total: usize,
    pub peers: Vec<PeerView>,
    pub peers_total: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileView {
    pub path: String,
    pub size: u64,
    /// Bytes of the file inside verified pieces.
    pub done: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub addr: String,
    pub client: String,
    /// Average rates since the connection began, bytes/s.
    pub down_rate: u64,
    pub up_rate: u64,
    /// Payload bytes since the connection began.
    #[serde(default)]
    pub downloaded: u64,
    #[serde(default)]
    pub uploaded: u64,
    /// `S` seed, `i` it is interested, `I` we are, `u` unchoked by us, `s` snubbed.
    pub flags: String,
}

impl TorrentShared {
    pub fn detail(&self) -> TorrentDetail {
        let (have, peers) = {
            let inner = self.lock();
            (inner.have().clone(), inner.peers().snapshot())
        };
        let files: Vec<&FileEntry> = self.meta.files.iter().filter(|f| !f.padding).collect();
        TorrentDetail {
            files_total: files.len(),
            files: files.iter().take(MAX_FILES).map(|f| file_view(f, &have, self.meta.piece_length)).collect(),
            peers_total: peers.len(),
            peers: peers.iter().take(MAX_PEERS).map(|(addr, p)| peer_view(*addr, p)).collect(),
        }
    }
}

fn file_view(f: &FileEntry, have: &Bitfield, piece_length: u64) -> FileView {
    FileView { path: printable(&f.path.join("/"), 500), size: f.length, done: verified_in(f, have, piece_length) }
}

/// Bytes of `[offset, offset + length)` that lie in verified pieces.
pub fn verified_in(f: &FileEntry, have: &Bitfield, piece_length: u64) -> u64 {
    if f.length == 0 || piece_length == 0 {
        return 0;
    }
    let end = f.offset + f.length;
    let (first, last) = (f.offset / piece_length, (end - 1) / piece_length);
    (first..=last)
        .filter(|&i| have.get(i as usize))
        .map(|i| {
            let (start, stop) = (i * piece_length, (i + 1) * piece_length);
            stop.min(end) - start.max(f.offset)
        })
        .sum()
}

fn peer_view(addr: std::net::SocketAddr, p: &super::PeerHandle) -> PeerView {
    let secs = p.connected_at.elapsed().as_secs().max(1);
    let flag = |on: bool, c: char| if on { Some(c) } else { None };
    let flags = [
        flag(p.is_seed.load(Ordering::Relaxed), 'S'),
        flag(p.peer_interested.load(Ordering::Relaxed), 'i'),
        flag(p.am_interested.load(Ordering::Relaxed), 'I'),
        flag(p.unchoke.load(Ordering::Relaxed), 'u'),
        flag(p.snubbed.load(Ordering::Relaxed), 's'),
    ];
    let (downloaded, uploaded) = (p.bytes_down.load(Ordering::Relaxed), p.bytes_up.load(Ordering::Relaxed));
    PeerView {
        addr: addr.to_string(),
        client: client_of(&p.peer_id),
        down_rate: downloaded / secs,
        up_rate: uploaded / secs,
        downloaded,
        uploaded,
        flags: flags.into_iter().flatten().collect(),
    }
}

/// The client a peer id names in the common `-XX1234-` form; `?` otherwise.
pub fn client_of(id: &[u8; 20]) -> String {
    if let Some(version) = aria2_version(id) {
        return format!("aria2 {version}");
    }
    let tag = &id[..8];
    let azureus = tag[0] == b'-' && tag[7] == b'-' && tag[1..7].iter().all(|c| c.is_ascii_alphanumeric());
    if !azureus {
        return "?".to_string();
    }
    let name = match &tag[1..3] {
        b"TR" => "Transmission",
        b"qB" => "qBittorrent",
        b"LT" | b"lt" => "libtorrent",
        b"DE" => "Deluge",
        b"UT" => "uTorrent",
        b"AR" => "aria2",
        b"DS" => "dropseed",
        b"RQ" => "rqbit",
        other => return String::from_utf8_lossy(other).into_owned() + " " + &String::from_utf8_lossy(&tag[3..7]),
    };
    format!("{name} {}", String::from_utf8_lossy(&tag[3..7]))
}

/// aria2's own form, `A2-1-36-0-` then random bytes: the version
/// `1.36.0`, digits only (anything else in the id is the peer's to choose).
fn aria2_version(id: &[u8; 20]) -> Option<String> {
    let rest = id.strip_prefix(b"A2-")?;
    let parts: Vec<&[u8]> = rest.splitn(4, |&b| b == b'-').take(3).collect();
    let numeric = |p: &&[u8]| !p.is_empty() && p.len() <= 3 && p.iter().all(u8::is_ascii_digit);
    (parts.len() == 3 && parts.iter().all(numeric))
        .then(|| parts.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>().join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_verified_bytes_count_only_its_part_of_each_piece() {
        // Pieces of 10 bytes; the file spans bytes 5..25 (pieces 0, 1, 2).
        let f = FileEntry { path: vec!["a".into()], length: 20, offset: 5, padding: false };
        let mut have = Bitfield::new(3);
        assert_eq!(verified_in(&f, &have, 10), 0);
        have.set(0);
        assert_eq!(verified_in(&f, &have, 10), 5);
        have.set(2);
        assert_eq!(verified_in(&f, &have, 10), 10);
        have.set(1);
        assert_eq!(verified_in(&f, &have, 10), 20);
    }

    #[test]
    fn clients_are_named_from_their_peer_ids() {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(b"-TR3000-");
        assert_eq!(client_of(&id), "Transmission 3000");
        id[..8].copy_from_slice(b"-ZZ0102-");
        assert_eq!(client_of(&id), "ZZ 0102");
        id[..8].copy_from_slice(b"\x1b[31mabc");
        assert_eq!(client_of(&id), "?");
        id[..10].copy_from_slice(b"A2-1-36-0-");
        assert_eq!(client_of(&id), "aria2 1.36.0");
        id[..10].copy_from_slice(b"A2-1-\x1b[-0-");
        assert_eq!(client_of(&id), "?", "only digits are shown");
    }
}
