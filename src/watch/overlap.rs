//! Refuses at start a watch folder that overlaps dropseed's own folders.
//!
//! Whoever may write into the watch folder (Sonarr, the group) must not
//! reach dropseed's state, logs or data through it. With the watch folder
//! inside `download_dir`, a payload's `x.torrent` would be taken; inside
//! `state_dir`, `state/HASH.torrent` would look like a drop, be renamed
//! `.added`, and the torrent would be gone after a restart. So the watch
//! folder (its links resolved: the admin chose it) must lie outside
//! `state_dir`, `log_dir`, `incomplete_dir`, `download_dir` and every
//! `[categories.NAME] download_dir`, and none of those inside it.
//!
//! Links found *inside* the watch folder are another matter: any group
//! member can plant one (`watch/x -> /var/lib/dropseed`), and the watch
//! never follows them, so refusing to start over one would protect nothing
//! and hand that member a way to stop the daemon. Nor are they looked
//! through (a planted FUSE or NFS target can hang a `stat`): they are named
//! in one WARN, as ignored.
//!
//! Blocking (it resolves paths): call off the async workers.

use crate::config::Config;
use std::path::{Path, PathBuf};

/// A folder and the setting that names it.
struct Named {
    setting: String,
    path: PathBuf,
}

/// The one ERROR line's reason when the watch folder overlaps one of ours.
/// Warns about linked subfolders, which are ignored.
pub fn check(config: &Config) -> Result<(), String> {
    let watch_dir = &config.paths.watch_dir;
    let watched = named("[paths] watch_dir", watch_dir);
    if let Some(why) = conflict(&watched, &own_folders(config)) {
        return Err(why);
    }
    let (named, count) = linked_subfolders(watch_dir);
    warn_linked(&named, count);
    Ok(())
}

/// dropseed's own folders, resolved.
fn own_folders(config: &Config) -> Vec<Named> {
    let p = &config.paths;
    let mut own = vec![
        named("[paths] state_dir", &p.state_dir),
        named("[paths] log_dir", &p.log_dir),
        named("[paths] download_dir", &p.download_dir),
    ];
    if !p.incomplete_dir.as_os_str().is_empty() {
        own.push(named("[paths] incomplete_dir", &p.incomplete_dir));
    }
    for (name, c) in &config.categories {
        if let Some(dir) = &c.download_dir {
            own.push(named(&format!("[categories.{name}] download_dir"), dir));
        }
    }
    own
}

/// Linked subfolders named in the warning at most.
const MAX_NAMED_LINKS: usize = 20;

/// The links among the watch folder's entries (what they point to is not
/// looked at: the entry's own type says it is a link), at most
/// [`MAX_NAMED_LINKS`] of them, and how many there are.
fn linked_subfolders(watch_dir: &Path) -> (Vec<PathBuf>, usize) {
    let mut named = Vec::new();
    let mut count = 0;
    for e in std::fs::read_dir(watch_dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_symlink()) && super::category_of_folder(&e.path()).is_some() {
            count += 1;
            if named.len() < MAX_NAMED_LINKS {
                named.push(e.path());
            }
        }
    }
    (named, count)
}

/// One WARN for the links among the watch folder's entries, if any.
fn warn_linked(named: &[PathBuf], count: usize) {
    if count == 0 {
        return;
    }
    let folders = named.iter().map(|p| super::shown(p)).collect::<Vec<_>>().join(", ");
    tracing::warn!(count, folders, "linked folders in the watch folder are ignored (never followed)");
}

fn named(setting: &str, path: &Path) -> Named {
    Named { setting: setting.to_string(), path: resolve(path) }
}

/// Why `w` may not be watched, if it overlaps one of `own`.
fn conflict(w: &Named, own: &[Named]) -> Option<String> {
    let o = own.iter().find(|o| w.path.starts_with(&o.path) || o.path.starts_with(&w.path))?;
    let how = if w.path.starts_with(&o.path) { "is inside" } else { "contains" };
    Some(format!(
        "the watch folder {} ({}) {how} {} ({}): anyone who can write into the watch folder would reach \
         dropseed's own files; give them separate places",
        super::shown(&w.path),
        w.setting,
        super::shown(&o.path),
        o.setting
    ))
}

/// `path` with links resolved as far as it exists (the rest, not yet
/// made, appended as written).
fn resolve(path: &Path) -> PathBuf {
    let mut tail = Vec::new();
    let mut here = path;
    loop {
        if let Ok(real) = here.canonicalize() {
            return tail.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (here.parent(), here.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                here = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("c.toml")).unwrap()
    }

    fn paths(root: &Path, extra: &str) -> String {
        let r = root.display();
        format!(
            "[paths]\nwatch_dir = \"{r}/watch\"\ndownload_dir = \"{r}/dl\"\nincomplete_dir = \"{r}/inc\"\n\
             state_dir = \"{r}/state\"\nlog_dir = \"{r}/logs\"\n{extra}"
        )
    }

    #[test]
    fn separate_folders_pass_and_a_category_may_finish_anywhere_else() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().display();
        let text = paths(root.path(), &format!("[categories.tv]\ndownload_dir = \"{r}/dl/tv\"\n"));
        assert_eq!(check(&config(&text)), Ok(()));
    }

    #[test]
    fn a_watch_folder_inside_or_around_our_folders_is_refused_naming_both_settings() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().display();
        let cases = [
            (format!("watch_dir = \"{r}/state/w\"\n"), "is inside", "[paths] state_dir"),
            (format!("watch_dir = \"{r}/dl\"\n"), "is inside", "[paths] download_dir"),
            (format!("watch_dir = \"{r}\"\n"), "contains", "[paths] state_dir"),
            (format!("watch_dir = \"{r}/inc/x\"\n"), "is inside", "[paths] incomplete_dir"),
            (format!("watch_dir = \"{r}/logs\"\n"), "is inside", "[paths] log_dir"),
        ];
        for (watch, how, setting) in cases {
            let text = paths(root.path(), "").replace(&format!("watch_dir = \"{r}/watch\"\n"), &watch);
            let why = check(&config(&text)).unwrap_err();
            assert!(why.contains("([paths] watch_dir)") && why.contains(how) && why.contains(setting), "{why}");
        }
        let text = paths(root.path(), &format!("[categories.tv]\ndownload_dir = \"{r}/watch/done\"\n"));
        let why = check(&config(&text)).unwrap_err();
        assert!(why.contains("contains") && why.contains("[categories.tv] download_dir"), "{why}");
    }

    #[test]
    fn a_link_planted_in_the_watch_folder_does_not_stop_the_start_and_is_named() {
        let root = tempfile::tempdir().unwrap();
        let text = paths(root.path(), "");
        for dir in ["watch/real", "state"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        std::os::unix::fs::symlink(root.path().join("state"), root.path().join("watch/st")).unwrap();
        // A dangling link (or one to a hung mount) is a link all the same.
        std::os::unix::fs::symlink(root.path().join("nowhere"), root.path().join("watch/gone")).unwrap();
        assert_eq!(check(&config(&text)), Ok(()));
        let (mut named, count) = linked_subfolders(&root.path().join("watch"));
        named.sort();
        assert_eq!(count, 2);
        assert_eq!(named, [root.path().join("watch/gone"), root.path().join("watch/st")]);
    }

    #[test]
    fn a_watch_dir_that_is_itself_a_link_into_our_folders_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().display();
        std::fs::create_dir_all(root.path().join("state/w")).unwrap();
        std::os::unix::fs::symlink(root.path().join("state/w"), root.path().join("lw")).unwrap();
        let text = paths(root.path(), "").replace(&format!("{r}/watch\""), &format!("{r}/lw\""));
        let why = check(&config(&text)).unwrap_err();
        assert!(why.contains("is inside") && why.contains("[paths] state_dir"), "{why}");
    }

    #[test]
    fn links_are_resolved_as_far_as_the_path_exists() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("real")).unwrap();
        std::os::unix::fs::symlink(root.path().join("real"), root.path().join("link")).unwrap();
        let real = root.path().canonicalize().unwrap().join("real");
        assert_eq!(resolve(&root.path().join("link/not/yet")), real.join("not/yet"));
    }
}
