//! `dropseed download`: one torrent fetched in the foreground from a real
//! seeder (aria2 on the test tracker), byte-identical; cut short with
//! SIGINT and resumed; and its exit codes.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A config for the command: nothing beyond the test swarm.
fn config(dir: &Path) -> PathBuf {
    let c = dir.join("download.toml");
    std::fs::write(&c, "[network]\nlisten_address = \"127.0.0.1\"\n[dht]\nenabled = false\n[lsd]\nenabled = false\n")
        .unwrap();
    c
}

/// Starts `dropseed download SOURCE -o OUT` with stdout and stderr in files.
fn start(source: &str, out: &Path, extra: &[&str]) -> (Proc, PathBuf) {
    let work = out.parent().unwrap();
    let log = work.join(format!("{}.out", out.file_name().unwrap().to_string_lossy()));
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(dropseed_bin())
        .args(["download", source, "-o"])
        .arg(out)
        .arg("-c")
        .arg(config(work))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    (Proc(child), log)
}

fn finish(p: &mut Proc, log: &Path, timeout: Duration) -> i32 {
    let status = wait_for("dropseed download to exit", timeout, || p.0.try_wait().unwrap());
    let said = std::fs::read_to_string(log).unwrap_or_default();
    eprintln!("dropseed download said:\n{said}");
    status.code().unwrap_or(-1)
}

#[test]
fn a_single_file_torrent_downloads_byte_identical_and_leaves_no_state() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("one.bin", 3 << 20, 16, 11);
    let out = swarm.work.path().join("out");
    let (mut p, log) = start(swarm.torrent.to_str().unwrap(), &out, &[]);
    assert_eq!(finish(&mut p, &log, Duration::from_secs(90)), 0);
    assert_same_tree(&swarm.data, &out);
    assert!(!out.join(".dropseed-download").exists(), "the state folder is removed when done");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("done: one.bin"), "{said}");
}

#[test]
fn a_multi_file_torrent_downloads_from_a_magnet() {
    if !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let data = work.path().join("data");
    payload(&data.join("multi/a.bin"), 700_000, 21);
    payload(&data.join("multi/sub/b.bin"), 1_300_000, 22);
    payload(&data.join("multi/c.txt"), 10, 23);
    let torrent = work.path().join("multi.torrent");
    mktorrent(&data.join("multi"), &tracker.announce_url(), 16, &torrent, &[]);
    let hash = info_hash(&torrent);
    tracker.allow(&hash);
    let _seeder = Aria2::seed(&torrent, &data, &work.path().join("aria2.log"));
    tracker.wait_seeders(&hash, 1);
    let magnet = format!("magnet:?xt=urn:btih:{hash}&dn=multi&tr={}", tracker.announce_url());
    let out = work.path().join("out");
    let (mut p, log) = start(&magnet, &out, &[]);
    assert_eq!(finish(&mut p, &log, Duration::from_secs(90)), 0);
    assert_same_tree(&data, &out);
}

#[test]
fn sigint_stops_cleanly_and_a_second_run_resumes() {
    if !Swarm::tools_present() {
        return;
    }
    // A slow seeder, so the first run is cut in the middle.
    let swarm = Swarm::single_with("slow.bin", 6 << 20, 16, 31, &["--max-upload-limit=600K"]);
    let out = swarm.work.path().join("out");
    let (mut p, log) = start(swarm.torrent.to_str().unwrap(), &out, &[]);
    // Plain (not a terminal) progress lines, one every few seconds.
    wait_for("some progress", Duration::from_secs(60), || {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        said.lines().any(|l| l.starts_with("downloading") && !l.contains("  0.0%")).then_some(())
    });
    p.signal(libc::SIGINT);
    assert_eq!(finish(&mut p, &log, Duration::from_secs(20)), 130);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("interrupted"), "{said}");
    assert!(out.join(".dropseed-download").is_dir(), "the state is kept to resume");

    let out2 = out.clone();
    let (mut p, log) = start(swarm.torrent.to_str().unwrap(), &out2, &[]);
    assert_eq!(finish(&mut p, &log, Duration::from_secs(90)), 0);
    let said = std::fs::read_to_string(&log).unwrap();
    // The second run started from the pieces the first one verified.
    let first =
        said.lines().find(|l| l.starts_with("downloading")).or_else(|| said.lines().find(|l| l.starts_with("seeding")));
    let first = first.unwrap_or_else(|| panic!("no progress line:\n{said}"));
    assert!(!first.contains("  0.0%"), "the second run started from nothing: {first}");
    assert_same_tree(&swarm.data, &out);
}

#[test]
fn bad_input_and_a_timeout_fail_with_a_message() {
    if !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let out = work.path().join("out");
    let (mut p, log) = start("no-such-thing", &out, &[]);
    assert_eq!(finish(&mut p, &log, Duration::from_secs(20)), 1);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("error: no-such-thing: not a .torrent or .magnet file"), "{said}");

    // Nobody seeds it: --timeout ends the run with 3.
    let tracker = Tracker::start();
    let (torrent, _, _) = tracked_torrent(&tracker, work.path(), "lonely.bin", 1 << 20, 41);
    let (mut p, log) = start(torrent.to_str().unwrap(), &out, &["--timeout", "3s"]);
    assert_eq!(finish(&mut p, &log, Duration::from_secs(30)), 3);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("error: not complete within 3s"), "{said}");
}

#[test]
fn with_a_seed_time_it_seeds_that_long_then_exits() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("seeded.bin", 1 << 20, 16, 51);
    let out = swarm.work.path().join("out");
    let started = std::time::Instant::now();
    let (mut p, log) = start(swarm.torrent.to_str().unwrap(), &out, &["--seed-time", "3s", "--timeout", "2m"]);
    assert_eq!(finish(&mut p, &log, Duration::from_secs(150)), 0);
    assert!(started.elapsed() >= Duration::from_secs(3), "exited before seeding 3 s");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.lines().any(|l| l.starts_with("stopped 100.0%")), "not stopped at the limit:\n{said}");
    assert_same_tree(&swarm.data, &out);
}
