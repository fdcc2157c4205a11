//! Reading `state_dir` at start: every `HASH.torrent` with its resume record,
//! and every `HASH.magnet` still waiting for metadata. Blocking; the session
//! runs it off the async workers.

use crate::magnet::Magnet;
use crate::metainfo::Metainfo;
use crate::resume::{self, ResumeRecord};
use crate::tracker::pace::AnnounceRecord;
use std::path::Path;

/// The line that marks a magnet paused in its state file.
pub(super) const PAUSED_MARK: &str = "# paused\n";
/// The line that names a magnet's category in its state file.
pub(super) const CATEGORY_MARK: &str = "# category: ";
/// The line that lists a magnet's tags, comma-separated.
pub(super) const TAGS_MARK: &str = "# tags: ";
/// The line with the name a magnet is shown under.
pub(super) const NAME_MARK: &str = "# name: ";
/// The line with a magnet's own share limits, as qBittorrent numbers
/// (-2 global, -1 none): thousandths of a ratio, minutes, minutes.
pub(super) const SHARE_MARK: &str = "# share: ";

pub(super) enum Restored {
    Torrent(Box<Metainfo>, Box<ResumeRecord>),
    /// A magnet, whether it was paused, its announce record, its category,
    /// tags and share limits.
    Magnet(Magnet, bool, AnnounceRecord, Box<super::AddOptions>),
}

pub(super) fn scan(dir: &Path) -> Vec<Restored> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let result = match path.extension().and_then(|x| x.to_str()).unwrap_or("") {
            "torrent" => read_torrent(dir, &path).map(Some),
            "magnet" => read_magnet(dir, &path),
            _ => Ok(None),
        };
        match result {
            Ok(Some(r)) => found.push(r),
            Ok(None) => {}
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot restore torrent from state"),
        }
    }
    found
}

fn read_torrent(dir: &Path, path: &Path) -> Result<Restored, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let meta = Metainfo::from_torrent_bytes(&bytes).map_err(|e| e.to_string())?;
    let record = ResumeRecord::load(dir, &meta.info_hash).unwrap_or_else(|e| {
        let file = resume::resume_path(dir, &meta.info_hash);
        tracing::warn!(file = %file.display(), error = %e, "resume record unreadable; the data will be rechecked");
        None
    });
    let record = match record {
        // Saved before `incomplete_dir` existed: the data is in download_dir.
        Some(r) if r.version == 0 && r.place.is_none() => ResumeRecord { place: Some(legacy_place(&meta)), ..r },
        Some(r) => r,
        None => ResumeRecord::default(),
    };
    Ok(Restored::Torrent(Box::new(meta), Box::new(record)))
}

/// Where a torrent saved by an older version keeps its data: in
/// `download_dir` under its name. The folder is filled in by the session
/// (an empty `dir` here stands for `download_dir`).
fn legacy_place(meta: &Metainfo) -> crate::storage::Place {
    crate::storage::Place::new(std::path::Path::new(""), "", &meta.name, true)
}

/// A magnet, unless its metadata was fetched just before a crash.
fn read_magnet(dir: &Path, path: &Path) -> Result<Option<Restored>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let paused = text.lines().any(|l| l.trim() == PAUSED_MARK.trim());
    let category = text
        .lines()
        .find_map(|l| l.strip_prefix(CATEGORY_MARK))
        .map(str::trim)
        .filter(|c| crate::config::valid_category(c))
        .unwrap_or_default()
        .to_string();
    let mark = |m: &str| text.lines().find_map(|l| l.strip_prefix(m)).map(str::trim);
    let tags = mark(TAGS_MARK).and_then(|t| super::tags::parse_list(t).ok()).unwrap_or_default();
    let share = mark(SHARE_MARK).and_then(parse_share);
    let name = mark(NAME_MARK).and_then(|n| super::check_name(n).ok());
    let opts = super::AddOptions { category, tags, share, name };
    let uri = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).ok_or("empty magnet file")?;
    let magnet = crate::magnet::Magnet::parse_stored(uri)?;
    if resume::torrent_path(dir, &magnet.info_hash).exists() {
        let _ = std::fs::remove_file(path);
        return Ok(None);
    }
    // Only its announces are recorded; an unreadable record costs a wait.
    let announce = ResumeRecord::load(dir, &magnet.info_hash).ok().flatten().unwrap_or_default().announce;
    Ok(Some(Restored::Magnet(magnet, paused, announce, Box::new(opts))))
}

/// `R S I` as [`SHARE_MARK`] writes them.
fn parse_share(text: &str) -> Option<crate::share::ShareLimits> {
    let n: Vec<i64> = text.split_whitespace().map(|v| v.parse().ok()).collect::<Option<_>>()?;
    let &[ratio, seeding, inactive] = n.as_slice() else { return None };
    Some(crate::share::ShareLimits {
        ratio_milli: ratio.into(),
        seeding_minutes: seeding.into(),
        inactive_minutes: inactive.into(),
    })
}

/// The lines of a magnet's state file after its URI and pause mark.
pub(super) fn option_marks(opts: &super::AddOptions) -> String {
    let mut text = String::new();
    if !opts.category.is_empty() {
        text.push_str(&format!("{CATEGORY_MARK}{}\n", opts.category));
    }
    if !opts.tags.is_empty() {
        text.push_str(&format!("{TAGS_MARK}{}\n", opts.tags.join(",")));
    }
    if let Some(name) = &opts.name {
        text.push_str(&format!("{NAME_MARK}{name}\n"));
    }
    if let Some(s) = opts.share {
        let (r, t, i): (i64, i64, i64) = (s.ratio_milli.into(), s.seeding_minutes.into(), s.inactive_minutes.into());
        text.push_str(&format!("{SHARE_MARK}{r} {t} {i}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_magnet_state_file_gives_back_its_pause_and_category() {
        let dir = tempfile::tempdir().unwrap();
        let hash = "ab".repeat(20);
        let path = dir.path().join(format!("{hash}.magnet"));
        let uri = format!("magnet:?xt=urn:btih:{hash}&dn=show");
        std::fs::write(&path, format!("{uri}\n{PAUSED_MARK}{CATEGORY_MARK}tv\n")).unwrap();
        let Some(Restored::Magnet(m, paused, _, opts)) = read_magnet(dir.path(), &path).unwrap() else {
            panic!("not restored as a magnet");
        };
        assert_eq!((m.info_hash.hex(), paused, opts.category.as_str()), (hash.clone(), true, "tv"));
        // A category that could not be a folder name is dropped, not used.
        std::fs::write(&path, format!("{uri}\n{CATEGORY_MARK}../etc\n")).unwrap();
        let Some(Restored::Magnet(_, paused, _, opts)) = read_magnet(dir.path(), &path).unwrap() else {
            panic!("not restored as a magnet");
        };
        assert_eq!((paused, opts.category.as_str()), (false, ""));
    }

    #[test]
    fn a_magnet_keeps_its_tags_and_share_limits() {
        let dir = tempfile::tempdir().unwrap();
        let hash = "cd".repeat(20);
        let path = dir.path().join(format!("{hash}.magnet"));
        let opts = super::super::AddOptions {
            category: "tv".into(),
            tags: vec!["a b".into(), "x".into()],
            share: Some(crate::share::ShareLimits::from_api(1.5, -1, 30).unwrap()),
            name: Some("Shown name".into()),
        };
        std::fs::write(&path, format!("magnet:?xt=urn:btih:{hash}\n{}", option_marks(&opts))).unwrap();
        let Some(Restored::Magnet(_, _, _, back)) = read_magnet(dir.path(), &path).unwrap() else {
            panic!("not restored as a magnet");
        };
        assert_eq!(*back, opts);
        // A hand-edited bad tag list or share line is dropped, not fatal.
        std::fs::write(&path, format!("magnet:?xt=urn:btih:{hash}\n{TAGS_MARK}a\u{7}\n{SHARE_MARK}1 x\n")).unwrap();
        let Some(Restored::Magnet(_, _, _, back)) = read_magnet(dir.path(), &path).unwrap() else {
            panic!("not restored as a magnet");
        };
        assert_eq!((back.tags.len(), back.share), (0, None));
    }
}
