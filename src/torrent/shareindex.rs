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
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Default)]
pub struct ShareIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The torrents filed under a key: nearly always one, so a list (one
    /// small allocation) rather than a set (a table per key).
    by_key: HashMap<Key, Vec<InfoHash>>,
    keys: HashMap<InfoHash, Vec<Key>>,
}

/// What two torrents sharing data have in common.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    /// The path of the top-level item.
    Item(PathBuf),
    /// A file's (device, inode).
    File(u64, u64),
}

impl ShareIndex {
    /// Files `hash`'s keys: its item at `top`, its files `files`.
    pub fn set(&self, hash: InfoHash, top: PathBuf, files: impl IntoIterator<Item = (u64, u64)>) {
        let mut keys: Vec<Key> = files.into_iter().map(|(dev, ino)| Key::File(dev, ino)).collect();
        keys.push(Key::Item(top));
        let mut inner = locked(&self.inner);
        inner.remove(&hash);
        for k in &keys {
            let hashes = inner.by_key.entry(k.clone()).or_default();
            if !hashes.contains(&hash) {
                hashes.push(hash);
            }
        }
        inner.keys.insert(hash, keys);
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
            .flatten()
            .flat_map(|k| inner.by_key.get(k).into_iter().flatten())
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
        for k in self.keys.remove(hash).unwrap_or_default() {
            if let Some(hashes) = self.by_key.get_mut(&k) {
                hashes.retain(|h| h != hash);
                if hashes.is_empty() {
                    self.by_key.remove(&k);
                }
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
