//! Assembling a magnet's info dictionary from ut_metadata blocks (BEP 9).
//!
//! Pure logic: no sockets, no clock. Blocks are requested from several peers
//! at once; the whole is checked against the info hash. When the check fails
//! and one peer sent everything, that peer is banned; when several peers
//! contributed, everything is discarded and the next attempt takes every
//! block from a single peer, so a liar is caught on its own.

use crate::extension::{MAX_METADATA_SIZE, METADATA_BLOCK};
use crate::types::InfoHash;
use sha1::{Digest, Sha1};
use std::collections::HashSet;
use std::net::SocketAddr;

type PeerKey = SocketAddr;

#[derive(Debug, Clone, PartialEq)]
enum Block {
    Missing,
    Requested(PeerKey),
    Have(PeerKey, Vec<u8>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum DataOutcome {
    Stored,
    /// Every block arrived and the SHA-1 matches: the info dictionary.
    Complete(Vec<u8>),
    /// Every block arrived but the SHA-1 differs; all was discarded.
    Mismatch {
        banned: Vec<PeerKey>,
    },
}

pub struct MetadataAssembler {
    info_hash: InfoHash,
    size: Option<usize>,
    blocks: Vec<Block>,
    /// After a mismatch with several contributors: the one peer allowed to
    /// serve the next attempt (claimed by the first to ask).
    solo: Option<Option<PeerKey>>,
    banned: HashSet<PeerKey>,
}

impl MetadataAssembler {
    pub fn new(info_hash: InfoHash) -> MetadataAssembler {
        MetadataAssembler { info_hash, size: None, blocks: Vec::new(), solo: None, banned: HashSet::new() }
    }

    pub fn is_banned(&self, peer: &PeerKey) -> bool {
        self.banned.contains(peer)
    }

    pub fn size(&self) -> Option<usize> {
        self.size
    }

    /// Takes the `metadata_size` a peer announced. The first size wins until
    /// an attempt fails; a peer announcing another one is refused.
    pub fn offer_size(&mut self, peer: PeerKey, size: usize) -> Result<(), String> {
        if self.banned.contains(&peer) {
            return Err("peer sent metadata that failed the hash check".into());
        }
        if size == 0 || size > MAX_METADATA_SIZE {
            return Err(format!("metadata_size {size} refused"));
        }
        match self.size {
            Some(s) if s != size => Err(format!("peer's metadata_size {size} differs from {s}")),
            Some(_) => Ok(()),
            None => {
                self.size = Some(size);
                self.blocks = vec![Block::Missing; size.div_ceil(METADATA_BLOCK)];
                Ok(())
            }
        }
    }

    fn block_len(&self, piece: usize) -> usize {
        let size = self.size.unwrap_or(0);
        if piece + 1 == self.blocks.len() {
            size - piece * METADATA_BLOCK
        } else {
            METADATA_BLOCK
        }
    }

    /// The next block for `peer` to fetch, now marked as requested from it.
    pub fn next_request(&mut self, peer: PeerKey) -> Option<u32> {
        if self.banned.contains(&peer) || self.size.is_none() {
            return None;
        }
        match &mut self.solo {
            Some(Some(p)) if *p != peer => return None,
            Some(slot @ None) => *slot = Some(peer),
            _ => {}
        }
        let i = self.blocks.iter().position(|b| *b == Block::Missing)?;
        self.blocks[i] = Block::Requested(peer);
        Some(i as u32)
    }

    /// Forgets what `peer` was asked for (it left, rejected, or timed out).
    /// Blocks it already delivered stay.
    pub fn release(&mut self, peer: PeerKey) {
        for b in &mut self.blocks {
            if *b == Block::Requested(peer) {
                *b = Block::Missing;
            }
        }
        if self.solo == Some(Some(peer)) {
            self.solo = Some(None);
        }
    }

    /// Takes one data block. `Err` names why the block was refused; the
    /// caller should drop that peer.
    pub fn on_data(
        &mut self,
        peer: PeerKey,
        piece: u32,
        total_size: usize,
        data: &[u8],
    ) -> Result<DataOutcome, String> {
        let Some(size) = self.size else {
            // Asked for before a failed attempt reset everything: ignored.
            return Ok(DataOutcome::Stored);
        };
        if total_size != size {
            return Err(format!("block says total_size {total_size}, expected {size}"));
        }
        let i = piece as usize;
        if i >= self.blocks.len() {
            return Err(format!("metadata piece {piece} of {}", self.blocks.len()));
        }
        if data.len() != self.block_len(i) {
            return Err(format!("metadata piece {piece} has {} bytes, expected {}", data.len(), self.block_len(i)));
        }
        if self.blocks[i] != Block::Requested(peer) {
            return Ok(DataOutcome::Stored); // unasked for, or a late duplicate: ignored
        }
        self.blocks[i] = Block::Have(peer, data.to_vec());
        if !self.blocks.iter().all(|b| matches!(b, Block::Have(..))) {
            return Ok(DataOutcome::Stored);
        }
        let mut whole = Vec::with_capacity(size);
        let mut contributors = Vec::new();
        for b in std::mem::take(&mut self.blocks) {
            if let Block::Have(p, d) = b {
                whole.extend_from_slice(&d);
                if !contributors.contains(&p) {
                    contributors.push(p);
                }
            }
        }
        if <[u8; 20]>::from(Sha1::digest(&whole)) == self.info_hash.0 {
            return Ok(DataOutcome::Complete(whole));
        }
        // Start over; the size may have been the lie, so it is open again.
        self.size = None;
        let banned = if contributors.len() == 1 {
            self.banned.insert(contributors[0]);
            self.solo = None;
            contributors
        } else {
            self.solo = Some(None);
            Vec::new()
        };
        Ok(DataOutcome::Mismatch { banned })
    }

    /// Our reply to a peer's request for `piece` of metadata we hold in full.
    pub fn serve(info: &[u8], piece: u32) -> Option<&[u8]> {
        let start = (piece as usize).checked_mul(METADATA_BLOCK)?;
        (start < info.len()).then(|| &info[start..(start + METADATA_BLOCK).min(info.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerKey {
        SocketAddr::from(([127, 0, 0, n], 6881))
    }

    fn info(len: usize) -> (Vec<u8>, InfoHash) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let hash = InfoHash(Sha1::digest(&bytes).into());
        (bytes, hash)
    }

    fn block(info: &[u8], i: u32) -> &[u8] {
        MetadataAssembler::serve(info, i).unwrap()
    }

    #[test]
    fn assembles_from_two_peers() {
        let (bytes, hash) = info(40_000); // 3 blocks, the last 7232 bytes
        let mut a = MetadataAssembler::new(hash);
        assert_eq!(a.next_request(peer(1)), None, "nothing to ask before the size is known");
        a.offer_size(peer(1), bytes.len()).unwrap();
        a.offer_size(peer(2), bytes.len()).unwrap();
        let r1 = a.next_request(peer(1)).unwrap();
        let r2 = a.next_request(peer(2)).unwrap();
        let r3 = a.next_request(peer(1)).unwrap();
        assert_eq!((r1, r2, r3), (0, 1, 2));
        assert_eq!(a.next_request(peer(2)), None);
        assert_eq!(a.on_data(peer(1), 0, bytes.len(), block(&bytes, 0)), Ok(DataOutcome::Stored));
        assert_eq!(a.on_data(peer(1), 2, bytes.len(), block(&bytes, 2)), Ok(DataOutcome::Stored));
        assert_eq!(a.on_data(peer(2), 1, bytes.len(), block(&bytes, 1)), Ok(DataOutcome::Complete(bytes)));
    }

    #[test]
    fn released_blocks_go_to_others() {
        let (bytes, hash) = info(20_000);
        let mut a = MetadataAssembler::new(hash);
        a.offer_size(peer(1), bytes.len()).unwrap();
        assert_eq!(a.next_request(peer(1)), Some(0));
        assert_eq!(a.next_request(peer(1)), Some(1));
        a.release(peer(1));
        assert_eq!(a.next_request(peer(2)), Some(0));
        // A block from a peer it was not asked of is ignored.
        assert_eq!(a.on_data(peer(1), 0, bytes.len(), block(&bytes, 0)), Ok(DataOutcome::Stored));
        assert_eq!(a.next_request(peer(2)), Some(1));
        a.on_data(peer(2), 0, bytes.len(), block(&bytes, 0)).unwrap();
        assert!(matches!(a.on_data(peer(2), 1, bytes.len(), block(&bytes, 1)), Ok(DataOutcome::Complete(_))));
    }

    #[test]
    fn refuses_bad_sizes_and_blocks() {
        let (bytes, hash) = info(20_000);
        let mut a = MetadataAssembler::new(hash);
        assert!(a.offer_size(peer(1), 0).is_err());
        assert!(a.offer_size(peer(1), MAX_METADATA_SIZE + 1).is_err());
        assert_eq!(
            a.on_data(peer(1), 0, bytes.len(), block(&bytes, 0)),
            Ok(DataOutcome::Stored),
            "ignored before a size"
        );
        a.offer_size(peer(1), bytes.len()).unwrap();
        assert!(a.offer_size(peer(2), bytes.len() + 1).unwrap_err().contains("differs"));
        a.next_request(peer(1));
        a.next_request(peer(1));
        assert!(a.on_data(peer(1), 0, bytes.len() + 5, block(&bytes, 0)).unwrap_err().contains("total_size"));
        assert!(a.on_data(peer(1), 0, bytes.len(), &bytes[..100]).unwrap_err().contains("expected 16384"));
        assert!(a.on_data(peer(1), 1, bytes.len(), &bytes[..METADATA_BLOCK]).unwrap_err().contains("expected 3616"));
        assert!(a.on_data(peer(1), 2, bytes.len(), &bytes[..10]).unwrap_err().contains("piece 2 of 2"));
    }

    #[test]
    fn a_sole_liar_is_banned() {
        let (bytes, hash) = info(20_000);
        let mut a = MetadataAssembler::new(hash);
        a.offer_size(peer(9), bytes.len()).unwrap();
        let bad = vec![0u8; bytes.len()];
        a.next_request(peer(9));
        a.next_request(peer(9));
        a.on_data(peer(9), 0, bad.len(), block(&bad, 0)).unwrap();
        assert_eq!(
            a.on_data(peer(9), 1, bad.len(), block(&bad, 1)),
            Ok(DataOutcome::Mismatch { banned: vec![peer(9)] })
        );
        assert!(a.is_banned(&peer(9)));
        assert!(a.offer_size(peer(9), bytes.len()).is_err());
        // An honest peer then completes it.
        a.offer_size(peer(1), bytes.len()).unwrap();
        assert_eq!(a.next_request(peer(9)), None);
        a.next_request(peer(1));
        a.next_request(peer(1));
        a.on_data(peer(1), 0, bytes.len(), block(&bytes, 0)).unwrap();
        assert!(matches!(a.on_data(peer(1), 1, bytes.len(), block(&bytes, 1)), Ok(DataOutcome::Complete(_))));
    }

    #[test]
    fn mixed_failure_retries_one_peer_at_a_time() {
        let (bytes, hash) = info(20_000);
        let bad = vec![1u8; bytes.len()];
        let mut a = MetadataAssembler::new(hash);
        a.offer_size(peer(1), bytes.len()).unwrap();
        a.next_request(peer(1));
        a.next_request(peer(2));
        a.on_data(peer(1), 0, bytes.len(), block(&bytes, 0)).unwrap();
        let out = a.on_data(peer(2), 1, bytes.len(), block(&bad, 1)).unwrap();
        assert_eq!(out, DataOutcome::Mismatch { banned: vec![] });
        // A block asked for before the reset arrives late: ignored, no error.
        assert_eq!(a.on_data(peer(1), 1, bytes.len(), block(&bytes, 1)), Ok(DataOutcome::Stored));
        // Solo round: the liar claims it and is caught alone.
        a.offer_size(peer(2), bytes.len()).unwrap();
        assert_eq!(a.next_request(peer(2)), Some(0));
        assert_eq!(a.next_request(peer(1)), None, "only the solo peer may fetch");
        assert_eq!(a.next_request(peer(2)), Some(1));
        a.on_data(peer(2), 0, bytes.len(), block(&bad, 0)).unwrap();
        assert_eq!(
            a.on_data(peer(2), 1, bytes.len(), block(&bad, 1)),
            Ok(DataOutcome::Mismatch { banned: vec![peer(2)] })
        );
        a.offer_size(peer(1), bytes.len()).unwrap();
        a.next_request(peer(1));
        a.next_request(peer(1));
        a.on_data(peer(1), 0, bytes.len(), block(&bytes, 0)).unwrap();
        assert!(matches!(a.on_data(peer(1), 1, bytes.len(), block(&bytes, 1)), Ok(DataOutcome::Complete(_))));
    }

    #[test]
    fn serving_blocks() {
        let (bytes, _) = info(20_000);
        assert_eq!(MetadataAssembler::serve(&bytes, 0).unwrap().len(), METADATA_BLOCK);
        assert_eq!(MetadataAssembler::serve(&bytes, 1).unwrap().len(), 20_000 - METADATA_BLOCK);
        assert!(MetadataAssembler::serve(&bytes, 2).is_none());
        assert!(MetadataAssembler::serve(&bytes, u32::MAX).is_none());
    }
}
