//! The engine under stress: a kill -9 in the middle of a download, and a
//! peer that sends corrupt data beside an honest one.

mod common;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn kill_9_mid_download_resumes_without_refetching() {
    if !Swarm::tools_present() {
        return;
    }
    let size: u64 = 12 * 1024 * 1024;
    // A slow seeder so the kill lands mid-transfer.
    let swarm = Swarm::single_with("crash.bin", size, 18, 41, &["--max-upload-limit=1M"]);
    let mut ds = Dropseed::start_with("[storage]\nresume_interval_secs = 1\n");
    ds.drop_file(&swarm.torrent, "crash.torrent");
    let progress_at_kill = wait_for("a third of the download", Duration::from_secs(60), || {
        let p = ds.torrent(&swarm.hash)?["progress"].as_f64()?;
        (p >= 0.33).then_some(p)
    });
    ds.kill9();

    ds.start();
    let t = wait_for("the restarted torrent to run", Duration::from_secs(30), || {
        ds.torrent(&swarm.hash).filter(|t| t["state"] == "downloading" || t["state"] == "seeding")
    });
    let progress_at_restart = t["progress"].as_f64().unwrap();
    let downloaded_at_restart = t["downloaded"].as_u64().unwrap();
    // At most the last resume interval (1 s at 1 MiB/s) plus pieces in flight is lost.
    assert!(
        progress_at_restart >= progress_at_kill - 0.15,
        "restart knows {progress_at_restart:.3}, kill was at {progress_at_kill:.3}"
    );
    let done = ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    assert_same_tree(&swarm.data, &ds.download_dir());
    let fetched_again = done["downloaded"].as_u64().unwrap() - downloaded_at_restart;
    let missing = ((1.0 - progress_at_restart) * size as f64) as u64;
    assert!(
        fetched_again <= missing + 2 * 256 * 1024,
        "downloaded {fetched_again} after restart for {missing} missing bytes"
    );
}

/// A peer that claims every piece and answers every request with garbage.
fn spawn_corrupt_peer(info_hash: [u8; 20], pieces: usize) -> (u16, Arc<AtomicUsize>) {
    use dropseed::wire::{encode, Message};
    let mut greeting = Vec::new();
    encode(&Message::Bitfield(dropseed::types::Bitfield::full(pieces).as_bytes()), &mut greeting);
    encode(&Message::Unchoke, &mut greeting);
    spawn_scripted_peer(info_hash, *b"-XX0001-corruptcorru", greeting, || {
        |msg: &Message<'_>, reply: &mut Vec<u8>| {
            if let Message::Request(b) = msg {
                let junk = vec![0xA5u8; b.len as usize];
                encode(&Message::Piece { piece: b.piece, offset: b.offset, data: &junk }, reply);
            }
        }
    })
}

#[test]
fn corrupt_peer_is_banned_and_pieces_come_from_an_honest_one() {
    if !Swarm::tools_present() {
        return;
    }
    let size = 4 * 1024 * 1024;
    let swarm = Swarm::single_with("honest.bin", size, 15, 51, &["--max-upload-limit=512K"]);
    let hash_bytes: [u8; 20] = dropseed::types::from_hex(&swarm.hash).unwrap().try_into().unwrap();
    let (port, accepted) = spawn_corrupt_peer(hash_bytes, (size / 32768) as usize);
    swarm.tracker.announce(&swarm.hash, port, 0);
    swarm.tracker.wait_seeders(&swarm.hash, 2);

    let ds = Dropseed::start_with("");
    ds.drop_file(&swarm.torrent, "honest.torrent");
    ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(120));
    assert_same_tree(&swarm.data, &ds.download_dir());
    let log = ds.log_text();
    assert!(log.contains("piece failed its hash check"), "hash failures are logged");
    let ban = log.lines().find(|l| l.contains("banned")).expect("the corrupt peer is banned");
    assert!(ban.contains(&format!("127.0.0.1:{port}")), "{ban}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "a banned peer is not dialled again");
    // What trackers are told: the junk is corrupt, not downloaded.
    let t = ds.torrent(&swarm.hash).unwrap();
    assert_eq!(t["downloaded"], size, "{t}");
    let corrupt = t["corrupt"].as_u64().unwrap();
    assert!(corrupt > 0 && corrupt.is_multiple_of(32768), "{t}");
}

#[test]
fn missing_and_truncated_files_wait_for_a_recheck_then_are_fetched_again() {
    if !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let src = work.path().join("data/set");
    payload(&src.join("a.bin"), 700_000, 91);
    payload(&src.join("b.bin"), 900_000, 92);
    payload(&src.join("c.bin"), 500_000, 93);
    let torrent = work.path().join("set.torrent");
    mktorrent(&src, &tracker.announce_url(), 16, &torrent, &[]);
    let hash = info_hash(&torrent);
    tracker.allow(&hash);
    let _seed = Aria2::seed(&torrent, &work.path().join("data"), &work.path().join("seed.log"));
    tracker.wait_seeders(&hash, 1);

    let mut ds = Dropseed::start_with("");
    ds.drop_file(&torrent, "set.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(60));
    assert!(ds.stop().success());

    // Behind the daemon's back: one file gone, one cut short.
    let got = ds.download_dir().join("set");
    std::fs::remove_file(got.join("a.bin")).unwrap();
    std::fs::OpenOptions::new().write(true).open(got.join("c.bin")).unwrap().set_len(1000).unwrap();
    ds.start();
    // Complete data gone from the complete folder waits for the user ...
    let t = ds.wait_state(&hash, "missing", Duration::from_secs(30));
    let error = t["error"].as_str().unwrap();
    assert!(error.contains("a.bin") && error.contains("c.bin"), "{t}");
    assert!(!got.join("a.bin").exists(), "nothing recreated unasked");
    // ... who asks for a recheck: what is gone is downloaded again.
    assert!(ds.cli(&["recheck", &hash]).status.success());
    ds.wait_state(&hash, "seeding", Duration::from_secs(60));
    assert_same_tree(&src, &got);
    let log = ds.log_text();
    let check = log.lines().rfind(|l| l.contains("checking done")).expect("a recheck at start");
    assert!(!check.contains("checked=0"), "{check}");
}
