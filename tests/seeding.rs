//! dropseed as a seeder: real clients download from it, its counters persist,
//! and the owner's limits (ratio, upload rate) hold.

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Copies a payload tree into dropseed's download_dir, as a user who already
/// has the data would, so the dropped torrent is checked and seeds at once.
fn preload(ds: &Dropseed, data: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", data.display()))
        .arg(ds.download_dir())
        .status()
        .unwrap();
    assert!(status.success());
}

fn swarm_without_seeder(
    name: &str,
    multi: bool,
    len: u64,
    seed: u64,
    tracker: &Tracker,
    work: &Path,
) -> (std::path::PathBuf, String, std::path::PathBuf) {
    let data = work.join(format!("data-{name}"));
    let src = if multi {
        let root = data.join(name);
        payload(&root.join("a.bin"), len / 3, seed);
        std::fs::write(root.join("empty"), b"").unwrap();
        payload(&root.join("sub/b.bin"), len - len / 3, seed + 1);
        root
    } else {
        payload(&data.join(name), len, seed);
        data.join(name)
    };
    let torrent = work.join(format!("{name}.torrent"));
    mktorrent(&src, &tracker.announce_url(), 16, &torrent, &[]);
    let hash = info_hash(&torrent);
    tracker.allow(&hash);
    (torrent, hash, data)
}

#[test]
fn three_clients_download_from_a_dropseed_seeder_at_once() {
    if !(Swarm::tools_present()
        && require("transmission-daemon", "transmission-daemon")
        && require("transmission-remote", "transmission-cli"))
    {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let (t1, h1, d1) = swarm_without_seeder("single.bin", false, 6 * 1024 * 1024 + 3, 61, &tracker, work.path());
    let (t2, h2, d2) = swarm_without_seeder("multi", true, 5 * 1024 * 1024, 62, &tracker, work.path());

    // Leechers first: transmission never dials loopback peers, so it must be
    // in the tracker's list when dropseed announces, and dropseed dials it.
    let tr_dir = work.path().join("tr-dl");
    std::fs::create_dir_all(&tr_dir).unwrap();
    let tr = Transmission::start(&tr_dir);
    tr.add(&t2);
    tracker.wait_peers(&h2, 1);
    let a_dir1 = work.path().join("aria-dl1");
    let a_dir2 = work.path().join("aria-dl2");
    let mut a1 = Aria2::leech(&t1, &a_dir1, &work.path().join("a1.log"));
    let mut a2 = Aria2::leech(&t2, &a_dir2, &work.path().join("a2.log"));
    tracker.wait_peers(&h1, 1);
    tracker.wait_peers(&h2, 2);

    let ds = Dropseed::new("");
    std::fs::create_dir_all(ds.download_dir()).unwrap();
    preload(&ds, &d1);
    preload(&ds, &d2);
    let mut ds = ds;
    ds.start();
    ds.drop_file(&t1, "single.torrent");
    ds.drop_file(&t2, "multi.torrent");
    let s1 = ds.wait_state(&h1, "seeding", Duration::from_secs(30));
    assert_eq!(s1["downloaded"], 0, "data already present is checked, not downloaded");

    assert!(a1.wait_exit(Duration::from_secs(120)), "aria2 (single-file) finished");
    assert!(a2.wait_exit(Duration::from_secs(120)), "aria2 (multi-file) finished");
    wait_for("transmission to finish", Duration::from_secs(120), || (tr.percent_done()? == 100).then_some(()));
    assert_same_tree(&d1, &a_dir1);
    assert_same_tree(&d2, &a_dir2);
    assert_same_data(&d2, &tr_dir);
    let up2 = ds.torrent(&h2).unwrap()["uploaded"].as_u64().unwrap();
    assert!(up2 >= 2 * 5 * 1024 * 1024, "uploaded {up2} for two full copies");

    // Restarted mid-seeding: still seeding, the uploaded counter intact.
    let before = ds.torrent(&h1).unwrap()["uploaded"].as_u64().unwrap();
    assert!(before >= 6 * 1024 * 1024);
    assert!(ds.stop().success());
    ds.start();
    let after = ds.wait_state(&h1, "seeding", Duration::from_secs(20));
    assert_eq!(after["uploaded"].as_u64().unwrap(), before);
}

#[test]
fn ratio_limit_stops_the_torrent_and_tells_the_tracker() {
    if !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let size = 8 * 1024 * 1024;
    let (t, h, d) = swarm_without_seeder("ratio.bin", false, size, 71, &tracker, work.path());
    let mut ds = Dropseed::new("[seeding]\nratio_limit = 0.5\n");
    std::fs::create_dir_all(ds.download_dir()).unwrap();
    preload(&ds, &d);
    ds.start();
    ds.drop_file(&t, "ratio.torrent");
    ds.wait_state(&h, "seeding", Duration::from_secs(30));
    tracker.wait_seeders(&h, 1);
    let _leech = Aria2::leech(&t, &work.path().join("dl"), &work.path().join("leech.log"));
    let st = ds.wait_state(&h, "stopped", Duration::from_secs(60));
    assert!(st["uploaded"].as_u64().unwrap() >= size / 2);
    let log = ds.wait_log("seeding limit reached", Duration::from_secs(5));
    assert_eq!(log.matches("seeding limit reached").count(), 1, "logged once");
    // The stopped announce reached opentracker: no seeder left.
    wait_for("the tracker to drop the seeder", Duration::from_secs(10), || {
        tracker.scrape(&h).filter(|s| s.0 == 0).map(|_| ())
    });
    // Resumable by hand... and it stops again at once, the ratio being met.
    assert!(ds.cli(&["resume", "ratio.bin"]).status.success());
    ds.wait_log("resumed", Duration::from_secs(5));
    ds.wait_state(&h, "stopped", Duration::from_secs(15));
}

#[test]
fn upload_rate_limit_holds_within_ten_percent() {
    if !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let size = 40 * 1024 * 1024;
    let (t, h, d) = swarm_without_seeder("slow.bin", false, size, 81, &tracker, work.path());
    let limit = 2 * 1024 * 1024;
    let mut ds = Dropseed::new(&format!("[limits]\nupload_rate = {limit}\n"));
    std::fs::create_dir_all(ds.download_dir()).unwrap();
    preload(&ds, &d);
    ds.start();
    ds.drop_file(&t, "slow.torrent");
    ds.wait_state(&h, "seeding", Duration::from_secs(30));
    tracker.wait_seeders(&h, 1);
    let _l1 = Aria2::leech(&t, &work.path().join("dl1"), &work.path().join("l1.log"));
    let _l2 = Aria2::leech(&t, &work.path().join("dl2"), &work.path().join("l2.log"));
    // Let the transfer settle, then measure over a sustained window.
    let uploaded = || ds.torrent(&h).unwrap()["uploaded"].as_u64().unwrap();
    wait_for("upload to start", Duration::from_secs(30), || (uploaded() > 2 * 1024 * 1024).then_some(()));
    let (u0, t0) = (uploaded(), Instant::now());
    std::thread::sleep(Duration::from_secs(8));
    let (u1, t1) = (uploaded(), Instant::now());
    let rate = (u1 - u0) as f64 / (t1 - t0).as_secs_f64();
    let ratio = rate / limit as f64;
    eprintln!("measured upload {rate:.0} B/s against a limit of {limit} B/s ({ratio:.3})");
    assert!((0.9..=1.1).contains(&ratio), "upload ran at {ratio:.3} of the limit");
}

#[test]
fn a_stalled_download_yields_its_slot_to_a_queued_one() {
    if !Swarm::tools_present() {
        return;
    }
    // `stalled` has no seeder at all; `live` has one but waits for the slot.
    let live = Swarm::single("live.bin", 2 * 1024 * 1024, 16, 95);
    let (t_stalled, h_stalled, _) =
        swarm_without_seeder("stalled.bin", false, 1024 * 1024, 96, &live.tracker, live.work.path());
    let ds = Dropseed::start_with("[limits]\nmax_active_downloads = 1\nstall_secs = 3\n");
    ds.drop_file(&t_stalled, "stalled.torrent");
    ds.wait_state(&h_stalled, "downloading", Duration::from_secs(10));
    ds.drop_file(&live.torrent, "live.torrent");
    ds.wait_state(&live.hash, "queued", Duration::from_secs(10));
    ds.wait_state(&live.hash, "seeding", Duration::from_secs(60));
    assert_same_tree(&live.data, &ds.download_dir().join("live.bin").parent().unwrap().join(""));
    assert!(ds.log_text().contains("yielding the download slot"));
    // The stalled one queued again behind it, then got the free slot back.
    ds.wait_state(&h_stalled, "downloading", Duration::from_secs(10));
}

#[test]
fn an_idle_seeding_limit_stops_a_torrent_only_once_nobody_downloads() {
    if !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let size = 6 * 1024 * 1024;
    let (t, h, d) = swarm_without_seeder("idle.bin", false, size, 73, &tracker, work.path());
    // Uploading takes about 6 s, longer than the idle limit.
    let mut ds = Dropseed::new("[limits]\nupload_rate = \"1M\"\n[seeding]\nidle_seed_limit = \"4s\"\n");
    std::fs::create_dir_all(ds.download_dir()).unwrap();
    preload(&ds, &d);
    ds.start();
    ds.drop_file(&t, "idle.torrent");
    ds.wait_state(&h, "seeding", Duration::from_secs(30));
    tracker.wait_seeders(&h, 1);
    let mut leech = Aria2::leech(&t, &work.path().join("dl"), &work.path().join("leech.log"));
    assert!(leech.wait_exit(Duration::from_secs(60)), "the leecher finished");
    let st = ds.wait_state(&h, "stopped", Duration::from_secs(30));
    assert!(st["uploaded"].as_u64().unwrap() >= size, "not stopped while uploading: {st}");
    assert!(ds.log_text().contains("nothing uploaded for"));
    // Resumed by hand, it seeds again until idle for the limit once more.
    assert!(ds.cli(&["resume", &h]).status.success());
    ds.wait_state(&h, "seeding", Duration::from_secs(15));
    ds.wait_state(&h, "stopped", Duration::from_secs(30));
}
