//! uTP (BEP 29) against libtorrent on loopback, every byte compared:
//! libtorrent with TCP off both ways seeds to dropseed and leeches from it,
//! encrypted too; a magnet's metadata comes over uTP; and one download
//! takes from a TCP-only and a uTP-only peer at once.

mod common;
use common::*;
use std::time::Duration;

const DEBUG: &str = "[log]\nlevel = \"debug\"\n";

/// Log lines that name a connection and its transport.
fn connections(ds: &Dropseed, what: &str, transport: &str) -> usize {
    let (msg, field) = (format!("msg={what}"), format!("transport={transport}"));
    let fields = |l: &str| l.split(' ').map(String::from).collect::<Vec<_>>();
    ds.log_text().lines().map(fields).filter(|f| f.contains(&msg) && f.contains(&field)).count()
}

#[test]
fn libtorrent_speaking_only_utp_seeds_to_dropseed_and_leeches_from_it() {
    if !(Swarm::tools_present() && require_libtorrent()) {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let (t, hash, data) = tracked_torrent(&tracker, work.path(), "lt-utp.bin", 6 * 1024 * 1024 + 501, 401);
    let seed = Libtorrent::start(
        "seed",
        t.to_str().unwrap(),
        &data,
        &work.path().join("lt-seed.log"),
        &["--transport", "utp", "--enc", "disabled"],
    );
    tracker.wait_seeders(&hash, 1);

    // dropseed dials: TCP is refused, uTP works.
    let ds = Dropseed::start_with(DEBUG);
    ds.drop_file(&t, "lt.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(120));
    assert_same_tree(&data, &ds.download_dir());
    assert!(connections(&ds, "connected", "utp") >= 1, "connected over uTP:\n{}", ds.log_text());
    drop(seed);

    // A uTP-only libtorrent leecher dials dropseed, the only seed left.
    let dl = work.path().join("lt-dl");
    let mut leech = Libtorrent::start(
        "leech",
        t.to_str().unwrap(),
        &dl,
        &work.path().join("lt-leech.log"),
        &["--transport", "utp", "--enc", "disabled", "--peer", &format!("127.0.0.1:{}", ds.port)],
    );
    let status = wait_for("libtorrent to finish", Duration::from_secs(120), || leech.proc.0.try_wait().unwrap());
    assert!(status.success(), "{}", std::fs::read_to_string(work.path().join("lt-leech.log")).unwrap());
    assert_same_tree(&data, &dl);
    assert!(connections(&ds, "accepted", "utp") >= 1, "accepted over uTP:\n{}", ds.log_text());
}

#[test]
fn utp_carries_encrypted_connections_both_ways() {
    if !(Swarm::tools_present() && require_libtorrent()) {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let (t, hash, data) = tracked_torrent(&tracker, work.path(), "utp-rc4.bin", 3 * 1024 * 1024 + 5, 402);
    let lt = ["--transport", "utp", "--enc", "forced"];
    let seed = Libtorrent::start("seed", t.to_str().unwrap(), &data, &work.path().join("lt-seed.log"), &lt);
    tracker.wait_seeders(&hash, 1);
    let ds = Dropseed::start_with(&format!("encryption = \"require\"\n{DEBUG}"));
    ds.drop_file(&t, "lt.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(120));
    assert_same_tree(&data, &ds.download_dir());
    assert!(connections(&ds, "connected", "utp/mse/rc4") >= 1, "{}", ds.log_text());
    drop(seed);

    let dl = work.path().join("lt-dl");
    let peer = format!("127.0.0.1:{}", ds.port);
    let mut leech = Libtorrent::start(
        "leech",
        t.to_str().unwrap(),
        &dl,
        &work.path().join("lt-leech.log"),
        &[&lt[..], &["--peer", &peer]].concat(),
    );
    let status = wait_for("libtorrent to finish", Duration::from_secs(120), || leech.proc.0.try_wait().unwrap());
    assert!(status.success(), "{}", std::fs::read_to_string(work.path().join("lt-leech.log")).unwrap());
    assert_same_tree(&data, &dl);
    assert!(connections(&ds, "accepted", "utp/mse/rc4") >= 1, "{}", ds.log_text());
}

#[test]
fn a_magnets_metadata_comes_over_utp() {
    if !(require("mktorrent", "mktorrent") && require_libtorrent()) {
        return;
    }
    let work = tempdir();
    let data = work.path().join("data");
    payload(&data.join("mag-utp.bin"), 2 * 1024 * 1024 + 9, 403);
    let t = work.path().join("mag.torrent");
    mktorrent(&data.join("mag-utp.bin"), "http://127.0.0.1:1/announce", 16, &t, &[]);
    let hash = info_hash(&t);
    let lt = ["--transport", "utp", "--enc", "disabled"];
    let _seed = Libtorrent::start("seed", t.to_str().unwrap(), &data, &work.path().join("lt.log"), &lt);
    std::thread::sleep(Duration::from_secs(1));
    let ds = Dropseed::start_with(DEBUG);
    let magnet = work.path().join("in.magnet");
    std::fs::write(&magnet, format!("magnet:?xt=urn:btih:{hash}&x.pe=127.0.0.1:{}\n", _seed.port)).unwrap();
    ds.drop_file(&magnet, "m.magnet");
    ds.wait_state(&hash, "seeding", Duration::from_secs(120));
    assert_same_tree(&data, &ds.download_dir());
    let log = ds.log_text();
    assert!(
        log.lines().any(|l| l.contains("no luck over Tcp; trying Utp once")),
        "the metadata fetch fell back to uTP:\n{log}"
    );
}

#[test]
fn one_download_takes_from_a_tcp_peer_and_a_utp_peer_at_once() {
    if !(Swarm::tools_present() && require_libtorrent()) {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let (t, hash, data) = tracked_torrent(&tracker, work.path(), "mixed.bin", 24 * 1024 * 1024 + 3, 404);
    // Both seeds are slowed so that neither finishes the torrent alone.
    let limit = ["--upload-limit", "2000000", "--enc", "disabled"];
    let _tcp = Libtorrent::start(
        "seed",
        t.to_str().unwrap(),
        &data,
        &work.path().join("lt-tcp.log"),
        &[&limit[..], &["--transport", "tcp"]].concat(),
    );
    let _utp = Libtorrent::start(
        "seed",
        t.to_str().unwrap(),
        &data,
        &work.path().join("lt-utp.log"),
        &[&limit[..], &["--transport", "utp"]].concat(),
    );
    tracker.wait_seeders(&hash, 2);
    let ds = Dropseed::start_with(DEBUG);
    ds.drop_file(&t, "mixed.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(120));
    assert_same_tree(&data, &ds.download_dir());
    assert!(connections(&ds, "connected", "tcp") >= 1, "{}", ds.log_text());
    assert!(connections(&ds, "connected", "utp") >= 1, "{}", ds.log_text());
}
