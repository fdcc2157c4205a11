//! Refuses at start a watch folder that overlaps dropseed's own folders.
//!
//! Whoever may write into the watch folder (Sonarr, the group) must not
//! reach dropseed's state, logs or data through it. With `watch/st ->
//! state_dir`, `state/HASH.torrent` would look like a drop, be renamed
//! `.added`, and the torrent would be gone after a restart; with the watch
//! folder inside `download_dir`, a payload's `x.torrent` would be taken. So
//! the watch folder and its category folders (links included, resolved) must
//! lie outside `state_dir`, `log_dir`, `incomplete_dir`, `download_dir` and
//! every `[categories.NAME] download_dir`, and none of those inside them.
//! Links made later are skipped by the watch thread itself.
//!
//! Blocking (it resolves paths): call off the async workers.

use crate::config::Config;
use std::path::{Path, PathBuf};

/// A folder and the setting that names it.
struct Named {
    setting: String,
    path: PathBuf,
}

/// The one ERROR line's reason when a watch folder overlaps one of ours.
pub fn check(config: &Config) -> Result<(), String> {
    let own = own_folders(config);
    let watched = watched_folders(&config.paths.watch_dir);
    match watched.into_iter().find_map(|w| conflict(&w, &own)) {
        Some(why) => Err(why),
        None => Ok(()),
    }
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

/// The watch folder and its category folders that are links, resolved. A
/// real subfolder can only overlap ours if the watch folder itself does.
fn watched_folders(watch_dir: &Path) -> Vec<Named> {
    let mut watched = vec![named("[paths] watch_dir", watch_dir)];
    for e in std::fs::read_dir(watch_dir).into_iter().flatten().flatten() {
        let path = e.path();
        let is_link = e.file_type().is_ok_and(|t| t.is_symlink());
        if is_link && super::category_of_folder(&path).is_some() && path.is_dir() {
            let setting = format!("a category folder of [paths] watch_dir, {}", super::shown(&path));
            watched.push(named(&setting, &path));
        }
    }
    watched
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
    fn a_linked_category_resolving_into_our_folders_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let text = paths(root.path(), "");
        for dir in ["watch", "state", "elsewhere"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        // A link to a folder of nobody's concern passes (the watch thread skips it).
        std::os::unix::fs::symlink(root.path().join("elsewhere"), root.path().join("watch/other")).unwrap();
        assert_eq!(check(&config(&text)), Ok(()));
        std::os::unix::fs::symlink(root.path().join("state"), root.path().join("watch/st")).unwrap();
        let why = check(&config(&text)).unwrap_err();
        assert!(why.contains("a category folder of [paths] watch_dir") && why.contains("[paths] state_dir"), "{why}");
        assert!(why.contains("watch/st"), "{why}");
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
