//! Protocol encryption (MSE/PE) against real clients on loopback, every
//! byte compared: libtorrent, aria2 and Transmission each set to require
//! RC4; `encryption = "require"` refusing a plaintext-only peer both ways;
//! hostile bytes on the listener ending within the spec's bounds.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEBUG: &str = "[log]\nlevel = \"debug\"\n";

#[test]
fn libtorrent_forcing_rc4_seeds_to_dropseed_and_leeches_from_it() {
    if !(Swarm::tools_present() && require_libtorrent()) {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let (t, hash, data) = tracked_torrent(&tracker, work.path(), "lt-enc.bin", 5 * 1024 * 1024 + 77, 301);
    let seed =
        Libtorrent::start("seed", t.to_str().unwrap(), &data, &work.path().join("lt-seed.log"), &["--enc", "forced"]);
    tracker.wait_seeders(&hash, 1);

    // dropseed dials the seed (the default policy, "prefer").
    let ds = Dropseed::start_with(DEBUG);
    ds.drop_file(&t, "lt.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(90));
    assert_same_tree(&data, &ds.download_dir());
    assert!(ds.log_text().contains("mse/rc4"), "connected over RC4");

    // A libtorrent leecher forcing RC4 dials dropseed: the incoming path.
    // dropseed is the only seed left.
    drop(seed);
    let dl = work.path().join("lt-dl");
    let mut leech = Libtorrent::start(
        "leech",
        t.to_str().unwrap(),
        &dl,
        &work.path().join("lt-leech.log"),
        &["--enc", "forced", "--peer", &format!("127.0.0.1:{}", ds.port)],
    );
    let status = wait_for("libtorrent to finish", Duration::from_secs(90), || leech.proc.0.try_wait().unwrap());
    assert!(status.success(), "{}", std::fs::read_to_string(work.path().join("lt-leech.log")).unwrap());
    assert_same_tree(&data, &dl);
    let log = ds.log_text();
    assert!(log.lines().any(|l| l.contains("accepted") && l.contains("mse/rc4")), "accepted over RC4: {log}");
}

#[test]
fn aria2_requiring_rc4_seeds_to_dropseed() {
    if !Swarm::tools_present() {
        return;
    }
    let s = Swarm::single_with(
        "aria-enc.bin",
        4 * 1024 * 1024 + 5,
        16,
        302,
        &["--bt-require-crypto=true", "--bt-min-crypto-level=arc4"],
    );
    let ds = Dropseed::start_with(DEBUG);
    ds.drop_file(&s.torrent, "a.torrent");
    ds.wait_state(&s.hash, "seeding", Duration::from_secs(90));
    assert_same_tree(&s.data, &ds.download_dir());
    assert!(ds.log_text().contains("mse/rc4"), "connected over RC4");
}

#[test]
fn transmission_requiring_encryption_seeds_to_dropseed() {
    if !(Swarm::tools_present()
        && require("transmission-daemon", "transmission-daemon")
        && require("transmission-remote", "transmission-cli"))
    {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let (t, hash, data) = tracked_torrent(&tracker, work.path(), "tr-enc.bin", 6 * 1024 * 1024 + 3, 303);
    // Transmission never dials loopback peers: dropseed dials it.
    let tr = Transmission::start_with(&data, serde_json::json!({"encryption": 2}));
    tr.add(&t);
    wait_for("transmission to verify its data", Duration::from_secs(60), || (tr.percent_done()? == 100).then_some(()));
    tracker.wait_seeders(&hash, 1);

    let ds = Dropseed::start_with(DEBUG);
    ds.drop_file(&t, "tr.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(90));
    assert_same_tree(&data, &ds.download_dir());
    assert!(ds.log_text().contains("mse/rc4"), "connected over RC4");
}

/// Sends a plaintext handshake for `hash`; true if anything came back.
fn plaintext_answered(port: u16, hash: &str) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hs = vec![19u8];
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0; 8]);
    hs.extend((0..20).map(|i| u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap()));
    hs.extend_from_slice(b"-XX0001-plaintextpeer");
    hs.truncate(68);
    s.write_all(&hs).unwrap();
    let mut buf = [0u8; 68];
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}

#[test]
fn require_refuses_a_plaintext_only_peer_both_ways() {
    if !(Swarm::tools_present() && require_libtorrent()) {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let (t, hash, data) = tracked_torrent(&tracker, work.path(), "plain.bin", 1024 * 1024, 304);
    let _seed =
        Libtorrent::start("seed", t.to_str().unwrap(), &data, &work.path().join("lt-seed.log"), &["--enc", "disabled"]);
    tracker.wait_seeders(&hash, 1);

    let ds = Dropseed::start_with(&format!("encryption = \"require\"\n{DEBUG}"));
    ds.drop_file(&t, "p.torrent");
    // Outgoing: the plaintext-only seed hangs up on our MSE handshake, and
    // there is no plaintext fallback.
    let log = ds.wait_log("peer connection ended", Duration::from_secs(30));
    assert!(
        log.lines().any(|l| l.contains("peer connection ended") && l.contains("encryption:")),
        "the reason is the encryption: {log}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let st = ds.torrent(&hash).unwrap();
    assert_eq!(st["downloaded"], 0, "nothing came over plaintext: {st}");
    assert!(!ds.log_text().contains("transport=tcp"));

    // Incoming: a plaintext handshake is refused, and the log says why.
    assert!(!plaintext_answered(ds.port, &hash), "no answer to plaintext");
    ds.wait_log("plaintext handshake refused", Duration::from_secs(5));

    // The default policy, "prefer", falls back to plaintext once for the
    // same seed, and answers the same plaintext handshake.
    let open = Dropseed::start_with(DEBUG);
    open.drop_file(&t, "p.torrent");
    open.wait_state(&hash, "seeding", Duration::from_secs(60));
    assert_same_tree(&data, &open.download_dir());
    let log = open.log_text();
    assert!(log.contains("trying Plaintext once"), "{log}");
    assert!(log.lines().any(|l| l.contains("connected") && l.contains("transport=tcp")), "{log}");
    assert!(plaintext_answered(open.port, &hash), "plaintext accepted by default");
}

/// Connects to the listener, sends `first`, and then junk until the
/// daemon closes: how long that took and how many bytes went.
fn feed_until_closed(port: u16, first: &[u8]) -> (Duration, usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let started = Instant::now();
    s.write_all(first).unwrap();
    let mut sent = first.len();
    let mut buf = [0u8; 4096];
    loop {
        assert!(started.elapsed() < Duration::from_secs(20), "still open after {sent} bytes");
        match s.read(&mut buf) {
            Ok(0) => return (started.elapsed(), sent),
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut => {
                return (started.elapsed(), sent)
            }
            _ => {}
        }
        if s.write_all(&[0x5a; 16]).is_err() {
            return (started.elapsed(), sent);
        }
        sent += 16;
    }
}

#[test]
fn hostile_encryption_handshakes_end_at_the_bound_not_the_timeout() {
    if !Swarm::tools_present() {
        return;
    }
    let ds = Dropseed::start_with(DEBUG);
    wait_for("the listener", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", ds.port)).ok());
    // A valid-looking key, then an endless stream with no HASH('req1', S):
    // the daemon hangs up once 96 + 512 + 20 bytes went by without it.
    let mut key = vec![0x12u8];
    key.extend([0x34; 95]);
    let (took, sent) = feed_until_closed(ds.port, &key);
    assert!(took < Duration::from_secs(8), "closed at the bound ({sent} bytes), not the 10 s timeout: {took:?}");
    assert!(sent >= 628, "not before the bound: {sent}");
    ds.wait_log("no HASH('req1', S) within 628 bytes", Duration::from_secs(5));
    // A key out of range (all ones, above the prime) ends it at once.
    let (took, _) = feed_until_closed(ds.port, &[0xff; 96]);
    assert!(took < Duration::from_secs(8), "{took:?}");
    ds.wait_log("key is out of range", Duration::from_secs(5));
}

fn write_magnet(dir: &Path, uri: &str) -> PathBuf {
    let p = dir.join("in.magnet");
    std::fs::write(&p, format!("{uri}\n")).unwrap();
    p
}

#[test]
fn magnets_fetch_metadata_over_rc4_dialling_and_dialled() {
    if !(require("mktorrent", "mktorrent") && require_libtorrent()) {
        return;
    }
    let work = tempdir();
    let data = work.path().join("data");
    payload(&data.join("mag-enc.bin"), 2 * 1024 * 1024 + 9, 305);
    let t = work.path().join("mag.torrent");
    mktorrent(&data.join("mag-enc.bin"), "http://127.0.0.1:1/announce", 16, &t, &[]);
    let hash = info_hash(&t);
    let lt_args = ["--enc", "forced"];
    let seed = Libtorrent::start("seed", t.to_str().unwrap(), &data, &work.path().join("lt1.log"), &lt_args);

    // dropseed dials the seed for the metadata, then for the data.
    let ds = Dropseed::start_with(&format!("encryption = \"require\"\n{DEBUG}"));
    let magnet = write_magnet(work.path(), &format!("magnet:?xt=urn:btih:{hash}&x.pe=127.0.0.1:{}", seed.port));
    ds.drop_file(&magnet, "m.magnet");
    ds.wait_state(&hash, "seeding", Duration::from_secs(90));
    assert_same_tree(&data, &ds.download_dir());
    drop(seed);

    // A magnet nobody is named for: a seed dials in, and the listener finds
    // the magnet by HASH('req2', info hash) among everything we have.
    let ds2 = Dropseed::start_with(&format!("encryption = \"require\"\n{DEBUG}"));
    let magnet = write_magnet(work.path(), &format!("magnet:?xt=urn:btih:{hash}"));
    ds2.drop_file(&magnet, "m.magnet");
    ds2.wait_state(&hash, "metadata", Duration::from_secs(10));
    let peer = format!("127.0.0.1:{}", ds2.port);
    let _seed2 = Libtorrent::start(
        "seed",
        t.to_str().unwrap(),
        &data,
        &work.path().join("lt2.log"),
        &["--enc", "forced", "--peer", &peer],
    );
    wait_for("the metadata over the incoming connection", Duration::from_secs(60), || {
        let st = ds2.torrent(&hash)?;
        (st["state"] != "metadata").then_some(())
    });
    assert_eq!(ds2.torrent(&hash).unwrap()["name"], "mag-enc.bin");
}
