//! Open file descriptors stay bounded whatever the number of torrent files
//! (issue 26): 2,000 complete three-file torrents seeded by one daemon under
//! RLIMIT_NOFILE 1,024, a peer downloading from a few of them meanwhile.

mod common;

use common::{Aria2, Dropseed, Tracker};
use sha1::{Digest, Sha1};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TORRENTS: usize = 2_000;
const NOFILE: u64 = 1_024;
/// `[storage] max_open_files` for this run: the default is 512.
const BUDGET: usize = 256;
const FILE_LEN: usize = 3_000;

/// Bencoded byte string.
fn bstr(s: &[u8]) -> Vec<u8> {
    let mut v = format!("{}:", s.len()).into_bytes();
    v.extend_from_slice(s);
    v
}

/// Writes torrent `n`'s three files under `data/tN/` and returns its
/// .torrent bytes and info hash (one 16 KiB piece spans the three files).
fn make_torrent(n: usize, data: &Path, announce: &str) -> (Vec<u8>, String) {
    let name = format!("t{n:04}");
    let mut all = Vec::with_capacity(3 * FILE_LEN);
    let mut files = Vec::new();
    for f in ["a", "b", "c"] {
        let bytes: Vec<u8> = (0..FILE_LEN).map(|i| (i * 31 + n * 7 + f.as_bytes()[0] as usize) as u8).collect();
        std::fs::create_dir_all(data.join(&name)).unwrap();
        std::fs::write(data.join(&name).join(f), &bytes).unwrap();
        all.extend_from_slice(&bytes);
        files.extend(format!("d6:lengthi{FILE_LEN}e4:pathl").into_bytes());
        files.extend(bstr(f.as_bytes()));
        files.extend(b"ee");
    }
    let mut info = b"d5:filesl".to_vec();
    info.extend(files);
    info.extend(b"e4:name");
    info.extend(bstr(name.as_bytes()));
    info.extend(b"12:piece lengthi16384e6:pieces");
    info.extend(bstr(&Sha1::digest(&all)));
    info.extend(b"e");
    let hash = Sha1::digest(&info).iter().map(|b| format!("{b:02x}")).collect();
    let mut t = b"d8:announce".to_vec();
    t.extend(bstr(announce.as_bytes()));
    t.extend(b"4:info");
    t.extend(info);
    t.extend(b"e");
    (t, hash)
}

/// The daemon's open descriptors: all, and those on torrent data (under
/// one of the `data` folders).
fn open_fds(pid: u32, data: &[PathBuf]) -> (usize, usize) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return (0, 0) };
    let links: Vec<PathBuf> = dir.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()).collect();
    let on_data = links.iter().filter(|l| data.iter().any(|d| l.starts_with(d))).count();
    (links.len(), on_data)
}

/// The most descriptors the daemon had open, all and on torrent data.
#[derive(Default)]
struct Most {
    all: AtomicUsize,
    data: AtomicUsize,
}

/// Samples the daemon's open descriptors every 50 ms until `stop`.
fn watch_fds(pid: u32, data: Vec<PathBuf>, stop: Arc<AtomicBool>) -> (Arc<Most>, std::thread::JoinHandle<()>) {
    let most = Arc::new(Most::default());
    let m = most.clone();
    let t = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let (all, on_data) = open_fds(pid, &data);
            m.all.fetch_max(all, Ordering::Relaxed);
            m.data.fetch_max(on_data, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (most, t)
}

#[test]
fn two_thousand_multi_file_torrents_seed_under_a_limit_of_1024_descriptors() {
    if !common::require("opentracker", "opentracker") || !common::require("aria2c", "aria2") {
        return;
    }
    let tracker = Tracker::start();
    // Announces unpaced: at the default 10 a second to one host, the last
    // of 2,000 would reach the tracker 200 s after the adds (pacing has its
    // own tests in trackers.rs and tracker::hostpace).
    let mut d = Dropseed::new(&format!("announces_per_host = 0\n[storage]\nmax_open_files = {BUDGET}\n"));
    d.nofile = Some(NOFILE);
    let t0 = std::time::Instant::now();
    let staged = d.dir.path().join("staged");
    std::fs::create_dir_all(&staged).unwrap();
    // Most found whole in the complete folder (hashed before the storage
    // opens); one in four in the incomplete folder: checked through the
    // storage, every file opened (1,500 files for a budget of 256), then
    // moved to the complete folder and opened again from there.
    let made: Vec<(PathBuf, String)> = (0..TORRENTS)
        .map(|n| {
            let data = if n % 4 != 1 { d.download_dir() } else { d.incomplete_dir() };
            let (bytes, hash) = make_torrent(n, &data, &tracker.announce_url());
            let path = staged.join(format!("t{n:04}.torrent"));
            std::fs::write(&path, bytes).unwrap();
            (path, hash)
        })
        .collect();
    let hashes: Vec<String> = made.iter().map(|(_, h)| h.clone()).collect();
    tracker.allow_all(&hashes);
    eprintln!("made {TORRENTS} torrents in {:.1?}", t0.elapsed());

    d.start();
    let pid = d.proc.as_ref().unwrap().pid();
    let stop = Arc::new(AtomicBool::new(false));
    let (most, sampler) = watch_fds(pid, vec![d.download_dir(), d.incomplete_dir()], stop.clone());
    // All at once, each renamed in whole.
    std::fs::create_dir_all(d.watch_dir()).unwrap();
    for (path, _) in &made {
        std::fs::rename(path, d.watch_dir().join(path.file_name().unwrap())).unwrap();
    }
    // Polled once a second: a status of 2,000 torrents is not free.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let s = d.status();
        let torrents = s["torrents"].as_array().cloned().unwrap_or_default();
        let seeding = torrents.iter().filter(|t| t["state"] == "seeding").count();
        let broken: Vec<_> = torrents.iter().filter(|t| t["state"] == "error" || t["state"] == "missing").collect();
        assert!(broken.is_empty(), "{} torrents failed, e.g. {}", broken.len(), broken[0]);
        if seeding == TORRENTS {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(std::time::Instant::now() < deadline, "not every torrent seeding after 120 s");
    eprintln!(
        "all {TORRENTS} seeding after {:.1?}; most fds so far {}",
        t0.elapsed(),
        most.all.load(Ordering::Relaxed)
    );

    // A peer downloads three of them (every file of each read back).
    let work = common::tempdir();
    for n in [0, 1, TORRENTS - 3] {
        let (bytes, _) = make_torrent(n, &work.path().join("expect"), &tracker.announce_url());
        let file = work.path().join(format!("t{n:04}.torrent"));
        std::fs::write(&file, bytes).unwrap();
        tracker.wait_seeders(&hashes[n], 1);
        let mut leech = Aria2::leech(&file, &work.path().join("got"), &work.path().join(format!("aria2-{n}.log")));
        assert!(leech.wait_exit(Duration::from_secs(60)), "aria2 failed to download t{n:04}");
        common::assert_same_tree(
            &work.path().join("expect").join(format!("t{n:04}")),
            &work.path().join("got").join(format!("t{n:04}")),
        );
    }
    let data_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.starts_with(d.download_dir())))
        .count();
    eprintln!("torrent files open at the end: {data_fds}");
    let log = d.log_text();
    let (checked, moved) = (log.matches("checking done").count(), log.matches("moved to").count());
    eprintln!("checked through the storage: {checked}; moved: {moved}");
    assert_eq!(checked, TORRENTS / 4, "the incomplete folder's torrents were checked");
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (all, on_data) = (most.all.load(Ordering::Relaxed), most.data.load(Ordering::Relaxed));
    eprintln!(
        "most open descriptors: {all}, {on_data} of them on torrent data (budget {BUDGET}, limit {NOFILE}); {:.1?} in all",
        t0.elapsed()
    );
    assert!(!d.log_text().contains("Too many open files"), "EMFILE logged");
    assert!(all < NOFILE as usize, "{all} descriptors open");
    // The pool's budget, plus the few handles in use beyond it at once (one
    // per disk thread at most) and the files a check of data found whole
    // in the complete folder reads outside the pool (one per disk thread):
    // never one per torrent or per file.
    assert!(on_data <= BUDGET + 16, "{on_data} descriptors on torrent data for a budget of {BUDGET}");
}
