//! The watch folder against a member of dropseed's group (Sonarr, Radarr,
//! anyone who may write there): linked category folders, links into
//! dropseed's own folders, thousands of category folders, deep trees and
//! links to large system folders. None of it may make dropseed read or
//! rename files elsewhere, lose a torrent, miss a category or take inotify
//! watches without bound. The real binary throughout.

mod common;

use common::{tempdir, wait_for, Dropseed};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A tiny torrent (one byte, no peer has it) whose info hash `name` sets.
fn tiny_torrent(name: &str) -> Vec<u8> {
    let mut t = b"d8:announce27:http://127.0.0.1:1/announce4:infod6:lengthi1e".to_vec();
    t.extend(format!("4:name{}:{name}", name.len()).bytes());
    t.extend(b"12:piece lengthi16384e6:pieces20:");
    t.extend([7u8; 20]);
    t.extend(b"ee");
    t
}

/// Writes a tiny torrent at `path` in one go; its info hash.
fn write_torrent(path: &Path, name: &str) -> String {
    std::fs::write(path, tiny_torrent(name)).unwrap();
    common::info_hash(path)
}

/// The info hashes the daemon manages.
fn managed(d: &Dropseed) -> Vec<String> {
    let s = d.status();
    s["torrents"].as_array().unwrap().iter().map(|t| t["info_hash"].as_str().unwrap().to_string()).collect()
}

/// Drops a torrent into `folder` (a category) and waits until it is added:
/// everything dropped before it had its chance too.
fn drop_and_wait(d: &Dropseed, folder: &Path, name: &str) {
    std::fs::create_dir_all(folder).unwrap();
    let hash = write_torrent(&folder.join(format!("{name}.torrent")), name);
    wait_for(&format!("{name} to be added"), Duration::from_secs(30), || d.torrent(&hash));
}

/// The inotify watches the daemon holds (`inotify wd:` lines of its inotify descriptors).
fn inotify_watches(pid: u32) -> usize {
    let mut watches = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let is_inotify = std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("anon_inode:inotify"));
        if is_inotify {
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()));
            watches += info.unwrap_or_default().lines().filter(|l| l.starts_with("inotify wd:")).count();
        }
    }
    watches
}

/// Runs the daemon on `config`, which must refuse to start: its stderr.
/// One that starts after all is killed and fails the test.
fn refused_start(config: &Path) -> String {
    let child = std::process::Command::new(common::dropseed_bin())
        .args(["run", "-c"])
        .arg(config)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = common::Proc(child);
    let status = wait_for("dropseed to refuse to start", Duration::from_secs(20), || p.0.try_wait().unwrap());
    assert!(!status.success());
    let mut said = String::new();
    std::io::Read::read_to_string(p.0.stderr.as_mut().unwrap(), &mut said).unwrap();
    said
}

/// A daemon whose watch folder is scanned every second.
fn fast_scanning() -> Dropseed {
    Dropseed::new("[watch]\npoll_secs = 1\n")
}

#[test]
fn a_linked_category_folder_is_not_followed() {
    let mut d = fast_scanning();
    let elsewhere = d.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(d.watch_dir()).unwrap();
    symlink(&elsewhere, d.watch_dir().join("evil")).unwrap();
    d.start();
    // Written after start, through inotify's view of the link and the scan's.
    let outside = elsewhere.join("outside.torrent");
    let hash = write_torrent(&outside, "outside");
    drop_and_wait(&d, &d.watch_dir().join("tv"), "after");
    // Two more scans (poll_secs = 1) after the later file was taken.
    d.signal(libc::SIGHUP);
    drop_and_wait(&d, &d.watch_dir(), "later");
    assert!(!managed(&d).contains(&hash), "a torrent outside the watch folder was added through a link");
    assert!(outside.exists(), "a file outside the watch folder was renamed");
    assert!(!elsewhere.join("outside.torrent.added").exists());
}

#[test]
fn plain_folders_in_a_category_and_links_to_system_folders_take_no_watches() {
    let mut d = fast_scanning();
    let tv = d.watch_dir().join("tv");
    for i in 0..3000 {
        std::fs::create_dir_all(tv.join(format!("season {i}"))).unwrap();
    }
    symlink("/usr/share", d.watch_dir().join("share")).unwrap();
    d.start();
    // A file in a later category: the watches it needed are set up by now.
    drop_and_wait(&d, &d.watch_dir().join("movies"), "film");
    drop_and_wait(&d, &tv, "show");
    let watches = inotify_watches(d.proc.as_ref().unwrap().pid());
    // The watch folder, tv and movies: one each.
    assert_eq!(watches, 3, "inotify watches held");
}

#[test]
fn a_hundred_and_fifty_categories_at_start_are_all_added() {
    let mut d = fast_scanning();
    let mut hashes = Vec::new();
    for i in 0..150 {
        let folder = d.watch_dir().join(format!("cat{i:03}"));
        std::fs::create_dir_all(&folder).unwrap();
        hashes.push(write_torrent(&folder.join("x.torrent"), &format!("item{i:03}")));
    }
    d.start();
    wait_for("every category's torrent to be added", Duration::from_secs(60), || {
        let m = managed(&d);
        hashes.iter().all(|h| m.contains(h)).then_some(())
    });
}

#[test]
fn categories_made_after_start_are_all_picked_up() {
    let mut d = fast_scanning();
    d.start();
    let mut hashes = Vec::new();
    for i in 0..150 {
        let folder = d.watch_dir().join(format!("late{i:03}"));
        std::fs::create_dir_all(&folder).unwrap();
        // A file written at once, before any watch on the new folder can exist.
        hashes.push(write_torrent(&folder.join("x.torrent"), &format!("late{i:03}")));
    }
    wait_for("every category's torrent to be added", Duration::from_secs(60), || {
        let m = managed(&d);
        hashes.iter().all(|h| m.contains(h)).then_some(())
    });
}

#[test]
fn category_folders_past_the_limit_are_refused_loudly_and_watch_nothing() {
    let mut d = fast_scanning();
    let limit = 1000;
    for i in 0..limit + 5 {
        std::fs::create_dir_all(d.watch_dir().join(format!("f{i:04}"))).unwrap();
    }
    d.start();
    let log = d.wait_log("category folders past the limit", Duration::from_secs(30));
    let line = log.lines().find(|l| l.contains("category folders past the limit")).unwrap().to_string();
    assert!(line.contains("level=warn") && line.contains("refused=5"), "{line}");
    let named = (0..limit + 5).filter(|i| line.contains(&format!("f{i:04}"))).count();
    assert_eq!(named, 5, "the refused folders are named: {line}");
    // Another scan finds the same: no second warning.
    drop_and_wait(&d, &d.watch_dir(), "root");
    d.signal(libc::SIGHUP);
    drop_and_wait(&d, &d.watch_dir(), "root2");
    assert_eq!(d.log_text().matches("category folders past the limit").count(), 1);
    // One watch per taken folder and the watch folder's own.
    assert_eq!(inotify_watches(d.proc.as_ref().unwrap().pid()), limit + 1);
}

#[test]
fn a_link_into_state_dir_made_while_running_loses_no_torrent() {
    let mut d = fast_scanning();
    d.start();
    drop_and_wait(&d, &d.watch_dir(), "kept");
    let hash = managed(&d)[0].clone();
    let saved: PathBuf = d.state_dir().join(format!("{hash}.torrent"));
    assert!(saved.exists(), "the torrent is saved in state_dir");
    symlink(d.state_dir(), d.watch_dir().join("st")).unwrap();
    d.signal(libc::SIGHUP);
    drop_and_wait(&d, &d.watch_dir().join("tv"), "after");
    drop_and_wait(&d, &d.watch_dir(), "later");
    assert!(saved.exists(), "dropseed renamed its own state file");
    d.stop();
    // The link is still there: the watch never follows it, so the next start
    // goes ahead (a group member must not be able to stop the daemon),
    // naming the ignored link in one WARN.
    d.start();
    assert!(managed(&d).contains(&hash), "the torrent is gone after a restart");
    let log = d.log_text();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("linked folders in the watch folder")).collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("level=warn") && warned[0].contains("watch/st"), "{}", warned[0]);
    drop_and_wait(&d, &d.watch_dir(), "restarted");
    assert!(saved.exists(), "dropseed renamed its own state file after the restart");
}

#[test]
fn a_watch_folder_overlapping_dropseeds_own_folders_stops_the_start() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("watch")).unwrap();
    std::fs::create_dir_all(d.join("state/w")).unwrap();
    // The admin's own watch_dir through a link is resolved.
    symlink(d.join("state/w"), d.join("linked-watch")).unwrap();
    let config = d.join("dropseed.toml");
    let text = |watch: &str| {
        format!(
            "[paths]\nwatch_dir = \"{watch}\"\ndownload_dir = \"{r}/downloads\"\nstate_dir = \"{r}/state\"\n\
             log_dir = \"{r}/logs\"\n[network]\nlisten_port = {port}\nlisten_address = \"127.0.0.1\"\n\
             [dht]\nenabled = false\n",
            r = d.display(),
            port = common::free_port()
        )
    };
    let cases = [
        (format!("{}/linked-watch", d.display()), "[paths] state_dir"),
        (format!("{}/downloads/watch", d.display()), "[paths] download_dir"),
        (format!("{}/logs", d.display()), "[paths] log_dir"),
    ];
    for (watch, other) in cases {
        std::fs::write(&config, text(&watch)).unwrap();
        let said = refused_start(&config);
        assert!(said.contains("[paths] watch_dir") && said.contains(other), "{said}");
        let log = std::fs::read_to_string(d.join("logs/dropseed.log")).unwrap_or_default();
        let last = log.lines().rev().find(|l| l.contains("level=error")).unwrap_or_default().to_string();
        assert!(last.contains("[paths] watch_dir") && last.contains(other), "the log's ERROR line: {last}");
    }
}
