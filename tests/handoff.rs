//! The handoff to automation, as a tool watching the complete folder sees
//! it: an item appears whole (every file at full size and byte-identical to
//! the source) or not at all, and never changes afterwards while dropseed
//! seeds it from there; a move across filesystems, a kill -9 during one, a
//! name already taken, files removed under a finished torrent, and
//! `incomplete_dir = ""`.

mod common;

use common::{assert_same_tree, files_under, Aria2, Dropseed, Swarm, Tracker};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A watcher of the complete folder that acts like Sonarr's scanner, but
/// every 20 ms: it takes each item (hidden names skipped) the first time
/// it sees it, compares it with its source, and from then on notes any
/// change of size or mtime.
struct Scanner {
    stop: Arc<AtomicBool>,
    problems: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scanner {
    /// `sources` maps an item's name to the folder holding its source.
    fn watch(dir: PathBuf, sources: HashMap<String, PathBuf>) -> Scanner {
        Scanner::watch_all(vec![dir], sources)
    }

    /// The same over several complete folders (one per category).
    fn watch_all(dirs: Vec<PathBuf>, sources: HashMap<String, PathBuf>) -> Scanner {
        let stop = Arc::new(AtomicBool::new(false));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, p, n) = (stop.clone(), problems.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut known: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
            while !s.load(Ordering::Relaxed) {
                let entries = dirs.iter().flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten());
                for entry in entries {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    let item = entry.path();
                    if !n.lock().unwrap().contains(&name) {
                        n.lock().unwrap().push(name.clone());
                        if let Err(e) = same_as_source(&item, &sources[&name]) {
                            p.lock().unwrap().push(format!("{name} at first sight: {e}"));
                        }
                    }
                    for path in files_of(&item) {
                        let Ok(m) = std::fs::metadata(&path) else {
                            p.lock().unwrap().push(format!("{} vanished", path.display()));
                            continue;
                        };
                        let now = (m.len(), m.modified().unwrap());
                        if let Some(before) = known.insert(path.clone(), now) {
                            if before != now {
                                p.lock().unwrap().push(format!("{} changed: {before:?} -> {now:?}", path.display()));
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Scanner { stop, problems, seen, thread: Some(thread) }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.problems.lock().unwrap().clone()
    }
}

/// The files of an item: itself, or every file under it.
fn files_of(item: &Path) -> Vec<PathBuf> {
    if item.is_dir() {
        files_under(item).into_iter().map(|f| item.join(f)).collect()
    } else {
        vec![item.to_path_buf()]
    }
}

/// Whether `item` (a file or a folder) equals its source, file by file.
fn same_as_source(item: &Path, source_dir: &Path) -> Result<(), String> {
    let source = source_dir.join(item.file_name().unwrap());
    let wanted = files_of(&source);
    let got_files = files_of(item);
    if wanted.len() != got_files.len() {
        return Err(format!("{} files of {}", got_files.len(), wanted.len()));
    }
    for (want, got) in wanted.iter().zip(&got_files) {
        let (want, path) = (std::fs::read(want).unwrap(), got);
        let got = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if got.len() != want.len() {
            return Err(format!("{} has {} of {} bytes", path.display(), got.len(), want.len()));
        }
        if got != want {
            return Err(format!("{} differs from its source", path.display()));
        }
    }
    Ok(())
}

/// A multi-file payload seeded by aria2 through `tracker`.
fn album(tracker: &Tracker, work: &Path) -> (PathBuf, String, PathBuf, Aria2) {
    let src = work.join("src");
    common::payload(&src.join("album/disc 1/01.flac"), 700_000, 61);
    common::payload(&src.join("album/disc 2/01.flac"), 500_000, 62);
    common::payload(&src.join("album/cover.jpg"), 33_333, 63);
    let torrent = work.join("album.torrent");
    common::mktorrent(&src.join("album"), &tracker.announce_url(), 15, &torrent, &[]);
    let hash = common::info_hash(&torrent);
    tracker.allow(&hash);
    let seeder = Aria2::seed(&torrent, &src, &work.join("aria2-album.log"));
    tracker.wait_seeders(&hash, 1);
    (torrent, hash, src, seeder)
}

#[test]
fn finished_items_appear_whole_and_never_change_while_seeding() {
    if !Swarm::tools_present() {
        return;
    }
    let mut single = Swarm::single("film.mkv", 6 << 20, 16, 60);
    let work = common::tempdir();
    let (album_torrent, album_hash, album_src, album_seeder) = album(&single.tracker, work.path());
    let d = Dropseed::start_with("");
    // The user's own file of the same name: never overwritten.
    std::fs::create_dir_all(d.download_dir()).unwrap();
    std::fs::write(d.download_dir().join("film.mkv"), b"the user's own film").unwrap();
    let users = work.path().join("users");
    std::fs::create_dir_all(&users).unwrap();
    std::fs::write(users.join("film.mkv"), b"the user's own film").unwrap();
    let sources = HashMap::from([
        ("film.mkv".to_string(), users),
        ("film (2).mkv".to_string(), single.data.clone()),
        ("album".to_string(), album_src.clone()),
    ]);
    // The source of "film (2).mkv" is film.mkv: give the scanner a copy by that name.
    std::fs::copy(single.data.join("film.mkv"), single.data.join("film (2).mkv")).unwrap();
    let scanner = Scanner::watch(d.download_dir(), sources);
    d.drop_file(&single.torrent, "film.torrent");
    d.drop_file(&album_torrent, "album.torrent");
    let film = d.wait_state(&single.hash, "seeding", Duration::from_secs(90));
    let album = d.wait_state(&album_hash, "seeding", Duration::from_secs(90));
    common::wait_for("both items in the complete folder", Duration::from_secs(30), || {
        (scanner.seen().len() >= 3).then_some(())
    });
    assert_eq!(std::fs::read(d.download_dir().join("film.mkv")).unwrap(), b"the user's own film");
    let film = d.torrent(&single.hash).unwrap_or(film);
    assert!(film["path"].as_str().unwrap().ends_with("film (2).mkv"), "{film}");
    assert!(album["path"].as_str().unwrap().ends_with("album"), "{album}");
    assert!(d.log_text().contains("name already taken in the complete folder"));
    // Nothing is left in the incomplete folder.
    let left: Vec<_> = files_under(&d.incomplete_dir());
    assert!(left.is_empty(), "{left:?}");

    // Seeding goes on from the new place: a real leecher gets every byte,
    // and the scanner sees nothing change meanwhile.
    drop(single.seeder.take());
    drop(album_seeder);
    let leech_dir = work.path().join("leech");
    let mut leech = Aria2::leech(&album_torrent, &leech_dir, &work.path().join("aria2-leech.log"));
    assert!(leech.wait_exit(Duration::from_secs(90)), "the leecher finished");
    assert_same_tree(&album_src.join("album"), &leech_dir.join("album"));
    let problems = scanner.finish();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_move_across_filesystems_survives_a_kill9_and_downloads_nothing_again() {
    if !Swarm::tools_present() {
        return;
    }
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        // Fails under CI: a skipped test must not pass there.
        common::missing("/dev/shm is not available, so there is no second filesystem");
        return;
    };
    let mut swarm = Swarm::single("big.bin", 128 << 20, 20, 64);
    let mut d = Dropseed::new("");
    let config = std::fs::read_to_string(&d.config).unwrap();
    let incomplete = shm.path().join("incomplete");
    let config = config.replace(
        &format!("incomplete_dir = \"{}\"", d.incomplete_dir().display()),
        &format!("incomplete_dir = \"{}\"", incomplete.display()),
    );
    std::fs::write(&d.config, config).unwrap();
    d.start();
    d.drop_file(&swarm.torrent, "big.torrent");
    // Killed while the copy is under way (its hidden name is there): looked
    // for every 2 ms, the copy and its check take far longer.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let hidden = loop {
        let found = std::fs::read_dir(d.download_dir()).into_iter().flatten().flatten();
        if let Some(e) = found.into_iter().find(|e| e.file_name().to_string_lossy().starts_with('.')) {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "the copy never started");
        std::thread::sleep(Duration::from_millis(2));
    };
    drop(swarm.seeder.take());
    d.kill9();
    assert!(!d.download_dir().join("big.bin").exists(), "nothing visible before the copy is whole");
    assert!(hidden.path().exists());
    // No seeder any more: only what is on disk can complete it.
    d.start();
    let t = d.wait_state(&swarm.hash, "seeding", Duration::from_secs(120));
    assert!(t["path"].as_str().unwrap().ends_with("downloads/big.bin"), "{t}");
    assert_same_tree(&swarm.data, &d.download_dir());
    assert!(!incomplete.join("big.bin").exists(), "the source is removed");
    let names: Vec<_> = std::fs::read_dir(d.download_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, ["big.bin"], "no copy left under a hidden name");
    assert!(d.log_text().contains("move to the complete folder finished"));
}

#[test]
fn files_removed_under_a_finished_torrent_are_not_downloaded_again_unasked() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("gone.bin", 2 << 20, 15, 65);
    let mut d = Dropseed::start_with("");
    d.drop_file(&swarm.torrent, "gone.torrent");
    d.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    let file = d.download_dir().join("gone.bin");
    common::wait_for("the move", Duration::from_secs(10), || file.exists().then_some(()));
    d.stop();
    // An importer moved the file away while dropseed was down.
    std::fs::rename(&file, swarm.work.path().join("imported.bin")).unwrap();
    d.start();
    let t = d.wait_state(&swarm.hash, "missing", Duration::from_secs(30));
    assert!(t["error"].as_str().unwrap().contains("gone.bin"), "{t}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!file.exists(), "nothing written into the library unasked");
    assert!(files_under(&d.incomplete_dir()).is_empty());
    // The user asks: the data comes back, where it was.
    assert!(d.cli(&["recheck", &swarm.hash]).status.success());
    d.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    assert_same_tree(&swarm.data, &d.download_dir());
    // Another file now has the name (longer: retagged); removing the torrent
    // with its data leaves that file, which is the user's.
    d.stop();
    let retagged = vec![3u8; (2 << 20) + 100];
    std::fs::write(&file, &retagged).unwrap();
    d.start();
    d.wait_state(&swarm.hash, "missing", Duration::from_secs(30));
    assert!(d.cli(&["remove", &swarm.hash, "--delete-data"]).status.success());
    assert!(std::fs::read(&file).unwrap() == retagged, "the user's file is kept");
}

#[test]
fn with_no_incomplete_dir_torrents_download_in_place() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("inplace.bin", 2 << 20, 15, 66);
    let mut d = Dropseed::new("");
    let config = std::fs::read_to_string(&d.config).unwrap();
    let config = config.replace(&format!("\"{}\"", d.incomplete_dir().display()), "\"\"");
    std::fs::write(&d.config, config).unwrap();
    d.start();
    d.drop_file(&swarm.torrent, "inplace.torrent");
    d.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    assert_same_tree(&swarm.data, &d.download_dir());
    assert!(!d.incomplete_dir().exists());
    assert!(!d.log_text().contains("moved to the complete folder"));
}

#[test]
fn files_moved_away_while_seeding_stop_it_until_they_are_back() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("retagged.bin", 1 << 20, 15, 67);
    let d = Dropseed::start_with("");
    d.drop_file(&swarm.torrent, "retagged.torrent");
    d.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    let file = d.download_dir().join("retagged.bin");
    let away = swarm.work.path().join("library.bin");
    std::fs::rename(&file, &away).unwrap();
    // Noticed within the minute; nothing is recreated.
    let t = d.wait_state(&swarm.hash, "missing", Duration::from_secs(75));
    assert!(t["error"].as_str().unwrap().contains("retagged.bin"), "{t}");
    assert!(d.log_text().contains("data missing; waiting for the user"));
    assert!(!file.exists());
    // Another file under that name (retagged, longer): resuming does not
    // make it the torrent's, and nothing is written into it.
    let retagged = vec![7u8; (1 << 20) + 4096];
    std::fs::write(&file, &retagged).unwrap();
    assert!(d.cli(&["resume", &swarm.hash]).status.success());
    d.wait_log("resumed", Duration::from_secs(10));
    d.wait_state(&swarm.hash, "missing", Duration::from_secs(30));
    assert!(std::fs::read(&file).unwrap() == retagged, "the user's file is untouched");
    // The original put back, then resumed: seeding again without downloading.
    std::fs::rename(&away, &file).unwrap();
    assert!(d.cli(&["resume", &swarm.hash]).status.success());
    d.wait_state(&swarm.hash, "seeding", Duration::from_secs(30));
    assert_same_tree(&swarm.data, &d.download_dir());
}

#[test]
fn a_complete_folder_without_room_keeps_the_data_whole_where_it_was() {
    if !Swarm::tools_present() {
        return;
    }
    // The complete folder is a 4 MiB filesystem.
    let mut d = Dropseed::new("");
    let small = d.download_dir();
    let Some(_small_disk) = common::small_disk(&small) else { return };
    let swarm = Swarm::single("toobig.bin", 6 << 20, 16, 68);
    d.start();
    d.drop_file(&swarm.torrent, "toobig.torrent");
    let t = d.wait_state(&swarm.hash, "error", Duration::from_secs(60));
    assert!(t["error"].as_str().unwrap().contains("No space left"), "{t}");
    assert!(d.log_text().contains("the data stays where it is"));
    // Whole where it was, and no half copy left in the complete folder.
    assert_same_tree(&swarm.data, &d.incomplete_dir());
    let left: Vec<_> = std::fs::read_dir(&small).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_watch_subfolder_is_a_category_with_its_own_complete_folder() {
    if !Swarm::tools_present() {
        return;
    }
    let episode = Swarm::single("episode.mkv", 1 << 20, 15, 70);
    let film = Swarm::single("feature.mkv", 1 << 20, 15, 71);
    let work = common::tempdir();
    let movies = work.path().join("movies");
    let mut d = Dropseed::start_with(&format!("[categories.movies]\ndownload_dir = \"{}\"\n", movies.display()));
    for sub in ["tv", "movies"] {
        std::fs::create_dir_all(d.watch_dir().join(sub)).unwrap();
    }
    d.drop_file(&episode.torrent, "tv/episode.torrent");
    d.drop_file(&film.torrent, "movies/feature.torrent");
    // A category without a section finishes under download_dir/NAME.
    let t = d.wait_state(&episode.hash, "seeding", Duration::from_secs(60));
    assert_eq!(t["category"], "tv", "{t}");
    assert_same_tree(&episode.data, &d.download_dir().join("tv"));
    let t = d.wait_state(&film.hash, "seeding", Duration::from_secs(60));
    assert_eq!(t["category"], "movies", "{t}");
    assert_same_tree(&film.data, &movies);
    assert!(d.watch_dir().join("tv/episode.torrent.added").exists());
    assert!(d.log_text().lines().any(|l| l.contains("added") && l.contains("category=tv")));
    // The category outlives a restart.
    d.stop();
    d.start();
    let t = d.wait_state(&episode.hash, "seeding", Duration::from_secs(30));
    assert_eq!(t["category"], "tv", "{t}");
}

#[test]
fn the_watch_folder_waits_for_slow_writers_and_keeps_every_file() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("slow.bin", 1 << 20, 15, 72);
    let d = Dropseed::start_with("");
    std::fs::create_dir_all(d.watch_dir()).unwrap();
    // Written under its final name, in four pieces over 20 s (a slow share).
    let bytes = std::fs::read(&swarm.torrent).unwrap();
    let target = d.watch_dir().join("slow.torrent");
    let quarter = bytes.len() / 4 + 1;
    for (i, chunk) in bytes.chunks(quarter).enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(7));
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&target).unwrap();
        std::io::Write::write_all(&mut f, chunk).unwrap();
    }
    d.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    assert!(d.watch_dir().join("slow.torrent.added").exists());
    // The same file dropped again: the first trace is kept beside the second.
    std::fs::write(d.watch_dir().join("slow.torrent.added"), b"the first trace").unwrap();
    d.drop_file(&swarm.torrent, "slow.torrent");
    common::wait_for("the second drop handled", Duration::from_secs(20), || {
        d.watch_dir().join("slow.torrent.2.added").exists().then_some(())
    });
    assert_eq!(std::fs::read(d.watch_dir().join("slow.torrent.added")).unwrap(), b"the first trace");
    let invalid: Vec<_> = std::fs::read_dir(d.watch_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".invalid"))
        .collect();
    assert!(invalid.is_empty(), "{invalid:?}");
}

#[test]
fn two_categories_and_a_magnet_reach_their_complete_folders_whole() {
    if !Swarm::tools_present() {
        return;
    }
    let episode = Swarm::single("episode.mkv", 3 << 20, 15, 74);
    let work = common::tempdir();
    let (album_torrent, album_hash, album_src, _album_seeder) = album(&episode.tracker, work.path());
    let d = Dropseed::start_with("");
    let (tv, music) = (d.download_dir().join("tv"), d.download_dir().join("music"));
    for dir in [&tv, &music] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let sources =
        HashMap::from([("episode.mkv".to_string(), episode.data.clone()), ("album".to_string(), album_src.clone())]);
    let scanner = Scanner::watch_all(vec![tv.clone(), music.clone()], sources);
    for sub in ["tv", "music"] {
        std::fs::create_dir_all(d.watch_dir().join(sub)).unwrap();
    }
    // The episode as Sonarr saves a magnet: one line, no newline at the end.
    let enc: String = episode.tracker.announce_url().bytes().map(|b| format!("%{b:02X}")).collect();
    let magnet = work.path().join("episode.magnet");
    std::fs::write(&magnet, format!("magnet:?xt=urn:btih:{}&dn=episode.mkv&tr={enc}", episode.hash)).unwrap();
    d.drop_file(&magnet, "tv/episode.magnet");
    d.drop_file(&album_torrent, "music/album.torrent");
    let t = d.wait_state(&episode.hash, "seeding", Duration::from_secs(90));
    assert_eq!(t["category"], "tv", "{t}");
    let t = d.wait_state(&album_hash, "seeding", Duration::from_secs(90));
    assert_eq!(t["category"], "music", "{t}");
    common::wait_for("both items seen", Duration::from_secs(10), || (scanner.seen().len() >= 2).then_some(()));
    assert_same_tree(&episode.data, &tv);
    assert_same_tree(&album_src, &music);
    let problems = scanner.finish();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn remove_delete_data_deletes_only_what_is_proven_the_torrents() {
    if !Swarm::tools_present() {
        return;
    }
    let tracker = Tracker::start();
    let work = common::tempdir();
    let (torrent, hash, _src, _seeder) = album(&tracker, work.path());
    let mut d = Dropseed::start_with("");
    d.drop_file(&torrent, "album.torrent");
    d.wait_state(&hash, "seeding", Duration::from_secs(90));
    let album = d.download_dir().join("album");
    common::wait_for("the move", Duration::from_secs(30), || album.join("cover.jpg").exists().then_some(()));
    assert!(d.cli(&["pause", &hash]).status.success());
    d.wait_state(&hash, "paused", Duration::from_secs(10));
    d.stop();
    // While the files are not open: a group member makes `disc 2` a link to
    // a folder outside holding a file of the same name and length, and puts
    // another file of the same length in the place of `cover.jpg`.
    let outside = work.path().join("outside");
    common::payload(&outside.join("01.flac"), 500_000, 99);
    std::fs::remove_dir_all(album.join("disc 2")).unwrap();
    std::os::unix::fs::symlink(&outside, album.join("disc 2")).unwrap();
    let cover = album.join("cover.jpg");
    std::fs::remove_file(&cover).unwrap();
    common::payload(&cover, 33_333, 98);
    let users_cover = std::fs::read(&cover).unwrap();
    d.start();
    d.wait_state(&hash, "paused", Duration::from_secs(30));
    let out = d.cli(&["remove", &hash, "--delete-data"]);
    let reply = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{reply}");
    assert!(outside.join("01.flac").exists(), "a file outside dropseed's folders was deleted through a link");
    assert_eq!(std::fs::read(&cover).unwrap(), users_cover, "a file put in the torrent's place was deleted");
    assert!(!album.join("disc 1/01.flac").exists(), "the torrent's own file is deleted");
    assert!(reply.contains("kept") && reply.contains("cover.jpg") && reply.contains("disc 2"), "{reply}");
    // The log names what was kept; it is written by its own thread and may
    // trail the reply a little.
    d.wait_log("cover.jpg", Duration::from_secs(10));
}

#[test]
fn a_category_folder_made_a_link_outside_is_never_written_through() {
    if !Swarm::tools_present() {
        return;
    }
    // `ln -s ~dropseed/.ssh download/evil; mkdir watch/evil`, then a
    // single-file torrent named authorized_keys: with incomplete_dir on (the
    // move) and off (the file opened in place).
    let swarm = Swarm::single("authorized_keys", 1 << 20, 15, 72);
    for incomplete in [true, false] {
        let outside = common::tempdir();
        let keys = outside.path().join("authorized_keys");
        std::fs::write(&keys, b"ssh-ed25519 the admin's key").unwrap();
        let mut d = Dropseed::new("");
        if !incomplete {
            let config = std::fs::read_to_string(&d.config).unwrap();
            let config = config.replace(&format!("\"{}\"", d.incomplete_dir().display()), "\"\"");
            std::fs::write(&d.config, config).unwrap();
        }
        std::fs::create_dir_all(d.download_dir()).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.download_dir().join("evil")).unwrap();
        std::fs::create_dir_all(d.watch_dir().join("evil")).unwrap();
        d.start();
        d.drop_file(&swarm.torrent, "evil/keys.torrent");
        let t = d.wait_state(&swarm.hash, "error", Duration::from_secs(60));
        let link = d.download_dir().join("evil");
        assert!(t["error"].as_str().unwrap().contains(&link.display().to_string()), "incomplete_dir {incomplete}: {t}");
        assert_eq!(std::fs::read(&keys).unwrap(), b"ssh-ed25519 the admin's key", "overwritten through the link");
        assert_eq!(
            files_under(outside.path()),
            vec![PathBuf::from("authorized_keys")],
            "written outside dropseed's folders"
        );
        d.stop();
    }
}
