//! Which torrents share data (cross-seeding), indexed: by the path of their
//! top-level item and by the (device, inode) of their files, so that one
//! torrent's `shared_with` is read without looking at every other torrent.
//!
//! Each torrent files its own keys when it is made and again whenever its
//! record learns where its data is or what its files are (a save, a check,
//! a move); the session forgets it when it is removed.

use crate::locks::locked;
use crate::types::InfoHash;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Default)]
pub struct ShareIndex {
    inner: Mutex<Inner>,
}

/// Keys are filed by a keyed 64-bit digest, not as paths: ten thousand
/// torrents each kept two copies of their path and a list per key (620
/// bytes per torrent). Two keys with one digest (odds about 1 in 10^9 at
/// 100,000 keys, and not to be aimed at: the digest's key is random per
/// run) would name a torrent as sharing data it does not share, which only
/// holds its data in place.
#[derive(Default)]
struct Inner {
    by_key: HashMap<u64, Filed>,
    keys: HashMap<InfoHash, Box<[u64]>>,
    digest: RandomState,
}

/// The torrents filed under a key: nearly always one, kept without an
/// allocation.
enum Filed {
    One(InfoHash),
    Many(Vec<InfoHash>),
}

impl Filed {
    fn hashes(&self) -> &[InfoHash] {
        match self {
            Filed::One(h) => std::slice::from_ref(h),
            Filed::Many(v) => v,
        }
    }

    fn add(&mut self, hash: InfoHash) {
        match self {
            Filed::One(h) if *h == hash => {}
            Filed::One(h) => *self = Filed::Many(vec![*h, hash]),
            Filed::Many(v) if v.contains(&hash) => {}
            Filed::Many(v) => v.push(hash),
        }
    }

    /// Takes `hash` out; false when none is left.
    fn remove(&mut self, hash: &InfoHash) -> bool {
        match self {
            Filed::One(h) => h != hash,
            Filed::Many(v) => {
                v.retain(|h| h != hash);
                !v.is_empty()
            }
        }
    }
}

/// What two torrents sharing data have in common.
#[derive(Hash)]
enum Key {
    /// The path of the top-level item.
    Item(PathBuf),
    /// A file's (device, inode).
    File(u64, u64),
}

impl ShareIndex {
    /// Files `hash`'s keys: its item at `top`, its files `files`.
    pub fn set(&self, hash: InfoHash, top: PathBuf, files: impl IntoIterator<Item = (u64, u64)>) {
        let mut inner = locked(&self.inner);
        let digest = |k: Key| inner.digest.hash_one(k);
        let mut keys: Vec<u64> = files.into_iter().map(|(dev, ino)| digest(Key::File(dev, ino))).collect();
        keys.push(digest(Key::Item(top)));
        inner.remove(&hash);
        for &k in &keys {
            inner.by_key.entry(k).and_modify(|f| f.add(hash)).or_insert(Filed::One(hash));
        }
        inner.keys.insert(hash, keys.into_boxed_slice());
    }

    pub fn forget(&self, hash: &InfoHash) {
        locked(&self.inner).remove(hash);
    }

    /// The other torrents sharing a key with `hash`, by hash.
    pub fn others(&self, hash: &InfoHash) -> Vec<InfoHash> {
        let inner = locked(&self.inner);
        let mut others: Vec<InfoHash> = inner
            .keys
            .get(hash)
            .into_iter()
            .flat_map(|keys| keys.iter())
            .flat_map(|k| inner.by_key.get(k).map(Filed::hashes).unwrap_or_default())
            .filter(|h| *h != hash)
            .copied()
            .collect();
        others.sort_unstable();
        others.dedup();
        others
    }
}

impl Inner {
    fn remove(&mut self, hash: &InfoHash) {
        for k in self.keys.remove(hash).unwrap_or_default().iter() {
            if self.by_key.get_mut(k).is_some_and(|f| !f.remove(hash)) {
                self.by_key.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torrents_share_by_item_or_by_file_and_go_when_forgotten() {
        let (a, b, c) = (InfoHash([1; 20]), InfoHash([2; 20]), InfoHash([3; 20]));
        let index = ShareIndex::default();
        index.set(a, "/d/x".into(), [(1, 10), (1, 11)]);
        index.set(b, "/d/x".into(), []);
        index.set(c, "/inc/y".into(), [(1, 11)]);
        assert_eq!(index.others(&a), [b, c]);
        assert_eq!(index.others(&b), [a]);
        assert_eq!(index.others(&c), [a]);
        // Moved: its keys are filed again.
        index.set(b, "/d/z".into(), []);
        assert_eq!(index.others(&a), [c]);
        index.forget(&c);
        assert!(index.others(&a).is_empty());
        assert_eq!(locked(&index.inner).by_key.len(), 4, "emptied keys go");
    }
}
