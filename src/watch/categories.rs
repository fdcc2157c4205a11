//! The category folders the watch thread looks into, and in what order.
//!
//! Anyone in dropseed's group can make folders in the watch folder, so the
//! set is bounded: at most [`MAX_CATEGORIES`] folders are taken (those named
//! by a `[categories.NAME]` section always), each watched by one
//! non-recursive inotify watch, and the extras are refused with one WARN
//! naming them, repeated only when more appear. A folder stays taken until
//! it is gone (or is no longer a real folder), so a flood of new folders
//! cannot push out the ones in use.
//!
//! A scan does bounded work ([`MAX_FILES_PER_SCAN`] new files); where it
//! stops, the next one starts, so no folder waits forever behind the others.
//!
//! Pure bookkeeping: the caller lists the folders and sets up the watches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Category folders taken at most (beyond those the config names).
pub const MAX_CATEGORIES: usize = 1000;
/// New files (not kept already) looked at per folder and per scan.
pub const MAX_FILES_PER_FOLDER: usize = 1000;
pub const MAX_FILES_PER_SCAN: usize = 10_000;
/// Refused folders named in the warning (the rest are counted).
const NAMED_IN_WARNING: usize = 20;

/// What one look at the watch folder changed.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    /// Taken now: to be watched and scanned.
    pub added: Vec<PathBuf>,
    /// Gone (or no longer a real folder): to be unwatched.
    pub removed: Vec<PathBuf>,
    /// Refused for want of room: how many, and the first few by name.
    pub refused: usize,
    pub refused_named: Vec<PathBuf>,
}

pub struct Categories {
    /// Taken folders, in the order they were taken.
    folders: Vec<PathBuf>,
    /// The same, for look-ups.
    taken: HashSet<PathBuf>,
    /// Where the next scan starts in `folders`.
    cursor: usize,
    /// How many refused folders the last warning counted (0: none pending).
    warned_refused: usize,
}

impl Categories {
    pub fn new() -> Categories {
        Categories { folders: Vec::new(), taken: HashSet::new(), cursor: 0, warned_refused: 0 }
    }

    pub fn contains(&self, folder: &Path) -> bool {
        self.taken.contains(folder)
    }

    /// Takes in the category folders a listing of the watch folder found
    /// (real folders with category names, each once); `configured` tells
    /// those with a config section, taken whatever the count.
    pub fn sync(&mut self, found: impl IntoIterator<Item = PathBuf>, configured: impl Fn(&Path) -> bool) -> Change {
        let mut change = Change::default();
        let mut present = HashSet::new();
        let mut waiting = Vec::new();
        let mut overflow = 0;
        for folder in found {
            if self.taken.contains(&folder) {
                present.insert(folder);
            } else if configured(&folder) {
                present.insert(folder.clone());
                self.take(folder, &mut change);
            } else if waiting.len() < MAX_CATEGORIES + NAMED_IN_WARNING {
                waiting.push(folder);
            } else {
                // Only counted: the listing may be huge.
                overflow += 1;
            }
        }
        let (kept, gone): (Vec<PathBuf>, Vec<PathBuf>) =
            std::mem::take(&mut self.folders).into_iter().partition(|f| present.contains(f));
        if !gone.is_empty() {
            self.cursor = 0;
        }
        for f in &gone {
            self.taken.remove(f);
        }
        self.folders = kept;
        change.removed = gone;
        // Configured ones take no room.
        let mut room = MAX_CATEGORIES.saturating_sub(self.folders.iter().filter(|f| !configured(f)).count());
        for folder in waiting {
            if room > 0 {
                room -= 1;
                self.take(folder, &mut change);
            } else {
                change.refused += 1;
                if change.refused_named.len() < NAMED_IN_WARNING {
                    change.refused_named.push(folder);
                }
            }
        }
        change.refused += overflow;
        change
    }

    fn take(&mut self, folder: PathBuf, change: &mut Change) {
        change.added.push(folder.clone());
        self.taken.insert(folder.clone());
        self.folders.push(folder);
    }

    /// Whether the refusals of `change` are news worth a WARN: the first
    /// ones, or more than last said.
    pub fn should_warn(&mut self, change: &Change) -> bool {
        let news = change.refused > self.warned_refused;
        self.warned_refused = if news || change.refused == 0 { change.refused } else { self.warned_refused };
        news
    }

    /// The folders in this scan's order: from where the last scan stopped,
    /// round to the one before it.
    pub fn in_scan_order(&self) -> Vec<PathBuf> {
        let start = self.cursor.min(self.folders.len());
        self.folders[start..].iter().chain(&self.folders[..start]).cloned().collect()
    }

    /// A scan stopped before the `visited`-th folder of [`Self::in_scan_order`]
    /// (its budget spent): the next one starts there.
    pub fn stopped_after(&mut self, visited: usize) {
        if !self.folders.is_empty() {
            self.cursor = (self.cursor.min(self.folders.len()) + visited) % self.folders.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folders(names: impl IntoIterator<Item = String>) -> Vec<PathBuf> {
        names.into_iter().map(|n| Path::new("/w").join(n)).collect()
    }

    fn numbered(range: std::ops::Range<usize>) -> Vec<PathBuf> {
        folders(range.map(|i| format!("c{i:05}")))
    }

    #[test]
    fn past_the_cap_folders_are_refused_by_name_and_warned_about_once_per_increase() {
        let mut c = Categories::new();
        let change = c.sync(numbered(0..MAX_CATEGORIES + 30), |_| false);
        assert_eq!(change.added, numbered(0..MAX_CATEGORIES));
        assert_eq!(change.refused, 30);
        assert_eq!(change.refused_named, numbered(MAX_CATEGORIES..MAX_CATEGORIES + NAMED_IN_WARNING));
        assert!(c.should_warn(&change));
        // The same refusals at the next scan: no second warning.
        let again = c.sync(numbered(0..MAX_CATEGORIES + 30), |_| false);
        assert_eq!((again.added.len(), again.refused), (0, 30));
        assert!(!c.should_warn(&again));
        // More of them: warned again.
        let more = c.sync(numbered(0..MAX_CATEGORIES + 50_000), |_| false);
        assert_eq!(more.refused, 50_000);
        assert!(c.should_warn(&more));
    }

    #[test]
    fn taken_folders_stay_taken_and_a_gone_one_makes_room() {
        let mut c = Categories::new();
        c.sync(numbered(0..MAX_CATEGORIES), |_| false);
        // A flood of new folders listed first does not push out the old ones.
        let mut listing = numbered(MAX_CATEGORIES..MAX_CATEGORIES + 10);
        listing.extend(numbered(1..MAX_CATEGORIES));
        let change = c.sync(listing.clone(), |_| false);
        assert_eq!(change.removed, numbered(0..1));
        assert_eq!(change.added, numbered(MAX_CATEGORIES..MAX_CATEGORIES + 1));
        assert_eq!(change.refused, 9);
        assert!(c.contains(&numbered(5..6)[0]) && !c.contains(&numbered(0..1)[0]));
    }

    #[test]
    fn a_configured_category_is_taken_past_the_cap() {
        let mut c = Categories::new();
        let mut listing = numbered(0..MAX_CATEGORIES);
        listing.push(Path::new("/w/tv").to_path_buf());
        let change = c.sync(listing, |f| f.ends_with("tv"));
        assert_eq!(change.added.len(), MAX_CATEGORIES + 1);
        assert_eq!(change.refused, 0);
    }

    #[test]
    fn the_scan_order_rotates_from_where_the_budget_ran_out() {
        let mut c = Categories::new();
        c.sync(numbered(0..5), |_| false);
        assert_eq!(c.in_scan_order(), numbered(0..5));
        c.stopped_after(3);
        let mut want = numbered(3..5);
        want.extend(numbered(0..3));
        assert_eq!(c.in_scan_order(), want);
        c.stopped_after(5);
        assert_eq!(c.in_scan_order(), want, "a whole round starts at the same place");
        c.stopped_after(4);
        assert_eq!(c.in_scan_order()[0], numbered(2..3)[0]);
    }
}
