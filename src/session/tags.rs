//! Tags: free labels on torrents (qBittorrent's `tags`), which automation
//! uses to mark what it added (cross-seed, autobrr, qbit_manage). Each
//! torrent keeps its tags in its resume record; the known set (what
//! `torrents/tags` lists, made by `createTags` or by tagging a torrent)
//! is kept in `state_dir/tags`, one a line.
//!
//! Why a module: every tag comes from a remote client, so it is checked
//! here once (length, characters) and every set is bounded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 128;
/// Tags one torrent may carry.
pub const MAX_TAGS_PER_TORRENT: usize = 32;
/// Tags known at all.
pub const MAX_TAGS: usize = 1000;

/// Checks a tag as a client sent it (trimmed, as qBittorrent does).
pub fn check(raw: &str) -> Result<String, String> {
    let tag = raw.trim();
    let shown = crate::types::printable(tag, 40);
    if tag.is_empty() {
        return Err("a tag cannot be empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("tag '{shown}...' is longer than {MAX_TAG_LEN} bytes"));
    }
    if tag.contains(',') {
        return Err(format!("tag '{shown}' contains a comma, which separates tags"));
    }
    if tag.chars().any(char::is_control) {
        return Err(format!("tag '{shown}' contains a newline or another control character"));
    }
    Ok(tag.to_string())
}

/// A comma-separated list of tags (`tags=a,b`), each checked; empty
/// entries skipped, at most [`MAX_TAGS_PER_TORRENT`].
pub fn parse_list(list: &str) -> Result<Vec<String>, String> {
    let mut tags = BTreeSet::new();
    for raw in list.split(',').filter(|t| !t.trim().is_empty()) {
        tags.insert(check(raw)?);
        if tags.len() > MAX_TAGS_PER_TORRENT {
            return Err(format!("at most {MAX_TAGS_PER_TORRENT} tags at once"));
        }
    }
    Ok(tags.into_iter().collect())
}

/// Adds `new` to a torrent's `tags`, sorted, refusing to pass the bound.
pub fn merged(tags: &[String], new: &[String]) -> Result<Vec<String>, String> {
    let set: BTreeSet<String> = tags.iter().chain(new).cloned().collect();
    if set.len() > MAX_TAGS_PER_TORRENT {
        return Err(format!("a torrent carries at most {MAX_TAGS_PER_TORRENT} tags"));
    }
    Ok(set.into_iter().collect())
}

/// The known tags, as kept in `state_dir/tags`.
#[derive(Debug, Default)]
pub struct TagBook {
    known: BTreeSet<String>,
}

pub fn book_path(state_dir: &Path) -> PathBuf {
    state_dir.join("tags")
}

impl TagBook {
    /// Reads the file; lines that are no valid tag are skipped, as is what
    /// passes the bound. Blocking.
    pub fn load(state_dir: &Path) -> TagBook {
        let text = std::fs::read_to_string(book_path(state_dir)).unwrap_or_default();
        let known = text.lines().filter_map(|l| check(l).ok()).take(MAX_TAGS).collect();
        TagBook { known }
    }

    pub fn list(&self) -> Vec<String> {
        self.known.iter().cloned().collect()
    }

    /// The book with `tags` added, or why not (the bound); None if nothing changes.
    pub fn with(&self, tags: &[String]) -> Result<Option<TagBook>, String> {
        if tags.iter().all(|t| self.known.contains(t)) {
            return Ok(None);
        }
        let known: BTreeSet<String> = self.known.iter().chain(tags).cloned().collect();
        if known.len() > MAX_TAGS {
            return Err(format!("at most {MAX_TAGS} tags can exist; delete some first"));
        }
        Ok(Some(TagBook { known }))
    }

    /// The book without `tags`; None if nothing changes.
    pub fn without(&self, tags: &[String]) -> Option<TagBook> {
        let known: BTreeSet<String> = self.known.iter().filter(|t| !tags.contains(t)).cloned().collect();
        (known.len() != self.known.len()).then_some(TagBook { known })
    }

    /// Writes the file atomically. Blocking.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let text: String = self.known.iter().map(|t| format!("{t}\n")).collect();
        crate::fsutil::write_atomic(&book_path(state_dir), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked_and_bounded() {
        assert_eq!(check("  cross-seed ").unwrap(), "cross-seed");
        for bad in ["", "  ", "a,b", "new\nline", "bell\u{7}", &"x".repeat(MAX_TAG_LEN + 1)] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(check("a\nb").unwrap_err().contains("newline"));
        assert_eq!(parse_list("b, a,,a").unwrap(), ["a", "b"]);
        let many: Vec<String> = (0..=MAX_TAGS_PER_TORRENT).map(|i| i.to_string()).collect();
        assert!(parse_list(&many.join(",")).is_err());
        assert!(merged(&many[..MAX_TAGS_PER_TORRENT], &["new".into()]).is_err());
    }

    #[test]
    fn the_book_persists_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let book = TagBook::default().with(&["b".into(), "a".into()]).unwrap().unwrap();
        book.save(dir.path()).unwrap();
        let again = TagBook::load(dir.path());
        assert_eq!(again.list(), ["a", "b"]);
        assert!(again.with(&["a".into()]).unwrap().is_none(), "nothing new");
        assert_eq!(again.without(&["a".into()]).unwrap().list(), ["b"]);
        let full = TagBook { known: (0..MAX_TAGS).map(|i| i.to_string()).collect() };
        assert!(full.with(&["one more".into()]).is_err());
        std::fs::write(book_path(dir.path()), "ok\nbad,comma\n\n").unwrap();
        assert_eq!(TagBook::load(dir.path()).list(), ["ok"], "invalid lines are dropped");
    }
}
