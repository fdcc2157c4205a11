//! dropseed downloads from real reference clients seeding on loopback through
//! a real opentracker, and every byte is compared with the source.

mod common;
use common::*;
use std::time::Duration;

/// A multi-file payload: a file that spans piece boundaries, a zero-length
/// file, and files in a subdirectory.
fn multi_payload(root: &std::path::Path) -> std::path::PathBuf {
    let src = root.join("src/album");
    payload(&src.join("one.bin"), 100_000, 1);
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("empty.txt"), b"").unwrap();
    payload(&src.join("cd2/two.bin"), 333_333, 2);
    payload(&src.join("cd2/three.bin"), 7, 3);
    src
}

#[test]
fn multi_file_from_aria2() {
    if !(require("opentracker", "opentracker") && require("aria2c", "aria2") && require("mktorrent", "mktorrent")) {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let src = multi_payload(work.path());
    let torrent = work.path().join("album.torrent");
    mktorrent(&src, &tracker.announce_url(), 15, &torrent, &[]);
    let hash = info_hash(&torrent);
    tracker.allow(&hash);
    let _seed = Aria2::seed(&torrent, &work.path().join("src"), &work.path().join("aria2.log"));
    tracker.wait_seeders(&hash, 1);

    let ds = Dropseed::start_with("");
    ds.drop_file(&torrent, "album.torrent");
    let t = ds.wait_state(&hash, "seeding", Duration::from_secs(90));
    assert_eq!(t["progress"], 1.0);
    assert_eq!(t["size"], 100_000 + 333_333 + 7);
    assert_same_tree(&src, &ds.download_dir().join("album"));
    assert!(ds.download_dir().join("album/empty.txt").exists(), "zero-length file created");
    // The file was renamed once added, and the log says so.
    assert!(ds.watch_dir().join("album.torrent.added").exists());
    let log = ds.log_text();
    assert!(log.contains("added") && log.contains("completed"), "{log}");
}

#[test]
fn single_file_from_transmission() {
    if !(require("opentracker", "opentracker")
        && require("transmission-daemon", "transmission-daemon")
        && require("transmission-remote", "transmission-cli")
        && require("mktorrent", "mktorrent"))
    {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let data = work.path().join("seed");
    payload(&data.join("big.bin"), 24 * 1024 * 1024 + 12345, 7);
    let torrent = work.path().join("big.torrent");
    mktorrent(&data.join("big.bin"), &tracker.announce_url(), 18, &torrent, &[]);
    let hash = info_hash(&torrent);
    tracker.allow(&hash);
    let tr = Transmission::start(&data);
    tr.add(&torrent);
    wait_for("transmission to verify its data", Duration::from_secs(60), || (tr.percent_done()? == 100).then_some(()));

    tracker.wait_seeders(&hash, 1);
    let ds = Dropseed::start_with("");
    ds.drop_file(&torrent, "big.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(120));
    assert_same_tree(&data, &ds.download_dir());
}

#[test]
fn single_file_from_libtorrent() {
    if !(require("opentracker", "opentracker") && require("mktorrent", "mktorrent") && require_libtorrent()) {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let data = work.path().join("seed");
    payload(&data.join("lt.bin"), 9 * 1024 * 1024 + 1, 8);
    let torrent = work.path().join("lt.torrent");
    mktorrent(&data.join("lt.bin"), &tracker.announce_url(), 17, &torrent, &[]);
    let hash = info_hash(&torrent);
    tracker.allow(&hash);
    let _lt = Libtorrent::start("seed", torrent.to_str().unwrap(), &data, &work.path().join("lt.log"), &[]);
    tracker.wait_seeders(&hash, 1);

    let ds = Dropseed::start_with("");
    ds.drop_file(&torrent, "lt.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(90));
    assert_same_tree(&data, &ds.download_dir());
}

#[test]
fn a_full_disk_is_a_torrent_error_not_a_crash() {
    if !Swarm::tools_present() {
        return;
    }
    // A 4 MiB filesystem for the downloads in progress.
    let mut ds = Dropseed::new("");
    let Some(_small) = small_disk(&ds.incomplete_dir()) else { return };

    let big = Swarm::single("big.bin", 8 * 1024 * 1024, 16, 101);
    let fits = Swarm::single("fits.bin", 1024 * 1024, 16, 102);
    ds.start();
    ds.drop_file(&big.torrent, "big.torrent");
    let t = ds.wait_state(&big.hash, "error", Duration::from_secs(20));
    let err = t["error"].as_str().unwrap();
    assert!(err.contains("not enough disk space") && err.contains("needed") && err.contains("free"), "{err}");
    // The daemon goes on: another torrent that fits completes.
    ds.drop_file(&fits.torrent, "fits.torrent");
    ds.wait_state(&fits.hash, "seeding", Duration::from_secs(60));
    assert_same_tree(&fits.data, &ds.download_dir());
    assert!(ds.log_text().contains("not enough disk space"));
    assert!(ds.stop().success());
}
