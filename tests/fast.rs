//! The fast extension (BEP 6) against the real binary: a raw-socket peer
//! that dropseed seeds to while choking it, scripted peers that choke
//! dropseed but allow some pieces fast or reject every request, a peer
//! that sends fast messages without advertising them, and libtorrent.
//! What happened is read from `status --json` (`fast` counters) and the
//! bytes on disk.

mod common;

use common::*;
use dropseed::torrent::fast::allowed_fast_set;
use dropseed::types::{InfoHash, PeerId};
use dropseed::wire::{self, BlockRef, Handshake, Message, BLOCK_LEN};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PIECE: usize = 32 * 1024;

fn hash_bytes(hash: &str) -> [u8; 20] {
    dropseed::types::from_hex(hash).unwrap().try_into().unwrap()
}

/// A 1 MiB file of 32 KiB pieces at `file`, its torrent announcing to
/// `announce`: (torrent, info hash, the bytes).
fn torrent_of(file: &Path, announce: &str, len: u64, seed: u64) -> (std::path::PathBuf, String, Vec<u8>) {
    payload(file, len, seed);
    let t = file.with_extension("torrent");
    mktorrent(file, announce, 15, &t, &[]);
    let hash = info_hash(&t);
    (t, hash, std::fs::read(file).unwrap())
}

fn frame(msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(msg, &mut out);
    out
}

/// One whole message from the socket (keep-alives skipped), as its bytes.
fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("a message");
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 {
            continue;
        }
        let mut f = len.to_vec();
        f.resize(4 + n, 0);
        s.read_exact(&mut f[4..]).expect("its body");
        return f;
    }
}

fn decoded(f: &[u8]) -> Message<'_> {
    wire::decode(f).unwrap().unwrap().0
}

/// Connects to the daemon as a peer of `hash` with these reserved bytes.
fn connect(d: &Dropseed, hash: &str, fast: bool) -> (TcpStream, Handshake) {
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ours = Handshake::new(InfoHash(hash_bytes(hash)), PeerId([7; 20]), false);
    if !fast {
        ours.reserved[7] &= !0x04;
    }
    s.write_all(&ours.encode()).unwrap();
    let mut theirs = [0u8; 68];
    s.read_exact(&mut theirs).unwrap();
    (s, Handshake::decode(&theirs).unwrap())
}

/// A seeding daemon of a fresh 1 MiB torrent (32 pieces).
fn seeding(extra: &str) -> Option<(Dropseed, String, Vec<u8>)> {
    if !require("mktorrent", "mktorrent") {
        return None;
    }
    let mut d = Dropseed::new(extra);
    let (t, hash, data) = torrent_of(&d.download_dir().join("af.bin"), "http://127.0.0.1:1/announce", 1 << 20, 61);
    d.start();
    d.drop_file(&t, "af.torrent");
    d.wait_state(&hash, "seeding", Duration::from_secs(30));
    Some((d, hash, data))
}

#[test]
fn a_seed_choking_a_fast_peer_serves_its_allowed_fast_pieces_and_rejects_the_rest() {
    let Some((d, hash, data)) = seeding("") else { return };
    let (mut s, theirs) = connect(&d, &hash, true);
    assert!(theirs.supports_fast(), "advertised in reserved[7]");
    assert_eq!(decoded(&read_frame(&mut s)), Message::HaveAll, "have_all stands in for the bitfield, first");
    let expected = allowed_fast_set("127.0.0.1".parse().unwrap(), &hash_bytes(&hash), 32, 10);
    let mut allowed = Vec::new();
    while allowed.len() < expected.len() {
        match decoded(&read_frame(&mut s)) {
            Message::AllowedFast(p) => allowed.push(p),
            Message::Unchoke => panic!("a peer that is not interested stays choked"),
            _ => {}
        }
    }
    assert_eq!(allowed, expected, "BEP 6's set for 127.0.0.0/24, k = 10");

    // Still choked (never interested): one allowed block, and three we refuse.
    let a = expected[0];
    let other = (0..32).find(|p| !expected.contains(p)).unwrap();
    let served = BlockRef { piece: a, offset: BLOCK_LEN, len: BLOCK_LEN };
    let refused = [
        BlockRef { piece: other, offset: 0, len: BLOCK_LEN },
        BlockRef { piece: 999, offset: 0, len: BLOCK_LEN },
        BlockRef { piece: a, offset: 0, len: 2 * BLOCK_LEN },
    ];
    for b in std::iter::once(&served).chain(&refused) {
        s.write_all(&frame(&Message::Request(*b))).unwrap();
    }
    let (mut got_piece, mut rejected) = (false, HashSet::new());
    while !got_piece || rejected.len() < refused.len() {
        let f = read_frame(&mut s);
        match decoded(&f) {
            Message::Piece { piece, offset, data: bytes } => {
                assert_eq!((piece, offset), (served.piece, served.offset));
                let at = a as usize * PIECE + BLOCK_LEN as usize;
                assert!(bytes == &data[at..at + BLOCK_LEN as usize], "the block's bytes");
                got_piece = true;
            }
            Message::RejectRequest(b) => {
                assert!(refused.contains(&b), "{b:?}");
                rejected.insert(b);
            }
            Message::Unchoke => panic!("still choked"),
            _ => {}
        }
    }
    let fast = &d.torrent(&hash).unwrap()["fast"];
    assert_eq!(fast["allowed_fast_sent"], 10, "{fast}");
    assert!(fast["have_all_sent"].as_u64() >= Some(1), "{fast}");
    assert!(fast["rejects_sent"].as_u64() >= Some(3), "{fast}");
    assert!(fast["allowed_fast_served"].as_u64() >= Some(1), "{fast}");
}

#[test]
fn fast_messages_from_a_peer_that_did_not_advertise_them_end_the_connection() {
    let Some((d, hash, _)) = seeding("[log]\nlevel = \"dropseed=debug\"\n") else { return };
    let (mut s, _) = connect(&d, &hash, false);
    assert!(matches!(decoded(&read_frame(&mut s)), Message::Bitfield(_)), "no have_all without the extension");
    s.write_all(&frame(&Message::HaveNone)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    assert!(closed, "the connection is closed");
    d.wait_log("without the fast extension", Duration::from_secs(5));
}

/// A scripted peer with every piece that answers requests through `serve`.
fn scripted<F>(hash: &str, id: &[u8; 20], greeting: Vec<Message<'static>>, serve: F) -> u16
where
    F: Fn(&BlockRef, &mut Vec<u8>) + Send + Sync + 'static,
{
    let mut hello = Vec::new();
    for m in &greeting {
        wire::encode(m, &mut hello);
    }
    let serve = Arc::new(serve);
    spawn_scripted_peer(hash_bytes(hash), *id, hello, move || {
        let serve = serve.clone();
        move |msg: &Message<'_>, reply: &mut Vec<u8>| {
            if let Message::Request(b) = msg {
                serve(b, reply);
            }
        }
    })
    .0
}

fn piece_msg(data: &[u8], b: &BlockRef, reply: &mut Vec<u8>) {
    let at = b.piece as usize * PIECE + b.offset as usize;
    wire::encode(&Message::Piece { piece: b.piece, offset: b.offset, data: &data[at..at + b.len as usize] }, reply);
}

#[test]
fn a_choked_download_completes_the_pieces_a_peer_allows_fast() {
    if !(require("opentracker", "opentracker") && require("mktorrent", "mktorrent")) {
        return;
    }
    let (work, tracker) = (tempdir(), Tracker::start());
    let (t, hash, data) = torrent_of(&work.path().join("choked.bin"), &tracker.announce_url(), 1 << 20, 62);
    tracker.allow(&hash);
    const ALLOWED: [u32; 3] = [1, 4, 30];
    let asked_other = Arc::new(AtomicUsize::new(0));
    let mut greeting = vec![Message::HaveAll];
    greeting.extend(ALLOWED.map(Message::AllowedFast));
    let (data2, other) = (data.clone(), asked_other.clone());
    // It never unchokes: only its allowed-fast pieces may be asked for.
    let port = scripted(&hash, b"-XX0001-allowedfast0", greeting, move |b, reply| {
        if ALLOWED.contains(&b.piece) {
            piece_msg(&data2, b, reply);
        } else {
            other.fetch_add(1, Ordering::SeqCst);
            wire::encode(&Message::RejectRequest(*b), reply);
        }
    });
    tracker.announce(&hash, port, 0);
    tracker.wait_seeders(&hash, 1);

    let ds = Dropseed::start_with("");
    ds.drop_file(&t, "choked.torrent");
    let want = ALLOWED.len() as f64 / 32.0;
    wait_for("the allowed-fast pieces verified", Duration::from_secs(60), || {
        (ds.torrent(&hash)?["progress"].as_f64()? >= want - 1e-9).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let st = ds.torrent(&hash).unwrap();
    assert_eq!(st["state"], "downloading", "{st}");
    assert!((st["progress"].as_f64().unwrap() - want).abs() < 1e-9, "those pieces and no others: {st}");
    assert_eq!(st["fast"]["allowed_fast_received"], 3, "{st}");
    assert!(st["fast"]["have_all_received"].as_u64() >= Some(1), "{st}");
    assert_eq!(asked_other.load(Ordering::SeqCst), 0, "choked, nothing else is asked for");
    // Every byte of those pieces, where the torrent keeps its data.
    let on_disk = std::fs::read(st["path"].as_str().unwrap()).unwrap();
    for p in ALLOWED.map(|p| p as usize) {
        assert!(on_disk[p * PIECE..(p + 1) * PIECE] == data[p * PIECE..(p + 1) * PIECE], "piece {p}");
    }
}

#[test]
fn rejected_blocks_are_fetched_from_another_peer() {
    if !(require("opentracker", "opentracker") && require("mktorrent", "mktorrent")) {
        return;
    }
    let (work, tracker) = (tempdir(), Tracker::start());
    let (t, hash, data) = torrent_of(&work.path().join("rej.bin"), &tracker.announce_url(), 2 << 20, 63);
    tracker.allow(&hash);
    let rejected = Arc::new(Mutex::new(HashSet::new()));
    let served = Arc::new(Mutex::new(Vec::new()));
    // One peer unchokes and rejects every request ...
    let r = rejected.clone();
    let rejecter =
        scripted(&hash, b"-XX0001-rejecterall0", vec![Message::HaveAll, Message::Unchoke], move |b, reply| {
            r.lock().unwrap().insert(*b);
            wire::encode(&Message::RejectRequest(*b), reply);
        });
    // ... the other serves, but only once the first has rejected something.
    let (r, s, data2) = (rejected.clone(), served.clone(), data.clone());
    let honest = scripted(&hash, b"-XX0001-honestserve0", vec![Message::HaveAll, Message::Unchoke], move |b, reply| {
        let t0 = Instant::now();
        while r.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        s.lock().unwrap().push(*b);
        piece_msg(&data2, b, reply);
    });
    tracker.announce(&hash, rejecter, 0);
    tracker.announce(&hash, honest, 0);
    tracker.wait_seeders(&hash, 2);

    let ds = Dropseed::start_with("");
    ds.drop_file(&t, "rej.torrent");
    let st = ds.wait_state(&hash, "seeding", Duration::from_secs(60));
    assert!(std::fs::read(ds.download_dir().join("rej.bin")).unwrap() == data, "every byte");
    let (rejected, served) = (rejected.lock().unwrap(), served.lock().unwrap());
    assert!(!rejected.is_empty());
    assert!(rejected.iter().all(|b| served.contains(b)), "every rejected block was asked of the other peer");
    // At once, not in the endgame: a block the picker did not get back
    // would only be asked again once every other block was.
    let first = served.iter().position(|b| rejected.contains(b)).unwrap();
    assert!(first < served.len() / 2, "first re-request at {first} of {}", served.len());
    assert!(st["fast"]["rejects_received"].as_u64() >= Some(rejected.len() as u64), "{st}");
}

#[test]
fn dropseed_leeches_from_libtorrent_over_have_all_and_allowed_fast() {
    if !(require("opentracker", "opentracker") && require("mktorrent", "mktorrent") && require_libtorrent()) {
        return;
    }
    let (work, tracker) = (tempdir(), Tracker::start());
    let seed_dir = work.path().join("seed");
    let (t, hash, data) = torrent_of(&seed_dir.join("lt.bin"), &tracker.announce_url(), 1 << 20, 64);
    tracker.allow(&hash);
    let _lt = Libtorrent::start("seed", t.to_str().unwrap(), &seed_dir, &work.path().join("lt.log"), &[]);
    tracker.wait_seeders(&hash, 1);

    let ds = Dropseed::start_with("");
    ds.drop_file(&t, "lt.torrent");
    let st = ds.wait_state(&hash, "seeding", Duration::from_secs(90));
    assert!(std::fs::read(ds.download_dir().join("lt.bin")).unwrap() == data, "every byte");
    let fast = &st["fast"];
    assert!(fast["have_none_sent"].as_u64() >= Some(1), "we started with nothing: {fast}");
    assert!(fast["have_all_received"].as_u64() >= Some(1), "{fast}");
    // libtorrent answers have_none with its allowed-fast set (5 pieces).
    assert!(fast["allowed_fast_received"].as_u64() >= Some(1), "{fast}");
}

#[test]
fn libtorrent_leeches_from_dropseed_over_have_all_and_allowed_fast() {
    if !(require("mktorrent", "mktorrent") && require_libtorrent()) {
        return;
    }
    let Some((d, hash, data)) = seeding("") else { return };
    let work = tempdir();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let t = d.download_dir().join("af.torrent");
    let lt_log = work.path().join("lt.log");
    let peer = format!("127.0.0.1:{}", d.port);
    let mut leech =
        Libtorrent::start("leech", t.to_str().unwrap(), &out, &lt_log, &["--peer", &peer, "--timeout", "90"]);
    let status = wait_for("libtorrent to finish", Duration::from_secs(100), || leech.proc.0.try_wait().unwrap());
    assert!(status.success(), "libtorrent did not complete:\n{}", std::fs::read_to_string(&lt_log).unwrap());
    assert!(std::fs::read(out.join("af.bin")).unwrap() == data, "every byte");
    let fast = &d.torrent(&hash).unwrap()["fast"];
    assert!(fast["have_all_sent"].as_u64() >= Some(1), "{fast}");
    assert!(fast["have_none_received"].as_u64() >= Some(1), "libtorrent started with nothing: {fast}");
    assert_eq!(fast["allowed_fast_sent"], 10, "{fast}");
}

#[test]
fn dropseed_and_transmission_speak_fast_both_ways() {
    if !(require("opentracker", "opentracker")
        && require("mktorrent", "mktorrent")
        && require("transmission-daemon", "transmission-daemon")
        && require("transmission-remote", "transmission-cli"))
    {
        return;
    }
    let (work, tracker) = (tempdir(), Tracker::start());
    // Transmission seeds one torrent to dropseed ...
    let seed_dir = work.path().join("tr-seed");
    let (t1, h1, d1) = torrent_of(&seed_dir.join("from-tr.bin"), &tracker.announce_url(), 1 << 20, 65);
    // ... and leeches another from it. It never dials loopback peers: it is
    // in the tracker's list first, and dropseed dials it.
    let (t2, h2, d2) = torrent_of(&work.path().join("src/to-tr.bin"), &tracker.announce_url(), 1 << 20, 66);
    tracker.allow(&h1);
    tracker.allow(&h2);
    let tr = Transmission::start(&seed_dir);
    tr.add(&t1);
    tr.add(&t2);
    tracker.wait_seeders(&h1, 1);
    tracker.wait_peers(&h2, 1);

    let mut ds = Dropseed::new("");
    std::fs::create_dir_all(ds.download_dir()).unwrap();
    std::fs::copy(work.path().join("src/to-tr.bin"), ds.download_dir().join("to-tr.bin")).unwrap();
    ds.start();
    ds.drop_file(&t1, "from-tr.torrent");
    ds.drop_file(&t2, "to-tr.torrent");
    let s1 = ds.wait_state(&h1, "seeding", Duration::from_secs(90));
    assert!(std::fs::read(ds.download_dir().join("from-tr.bin")).unwrap() == d1, "every byte");
    let f1 = &s1["fast"];
    assert!(f1["have_all_received"].as_u64() >= Some(1), "transmission's have_all: {f1}");
    assert!(f1["have_none_sent"].as_u64() >= Some(1), "{f1}");

    wait_for("transmission to finish", Duration::from_secs(90), || {
        (std::fs::read(seed_dir.join("to-tr.bin")).ok()? == d2).then_some(())
    });
    let f2 = &ds.torrent(&h2).unwrap()["fast"];
    assert!(f2["have_all_sent"].as_u64() >= Some(1), "{f2}");
    assert!(f2["have_none_received"].as_u64() >= Some(1), "transmission's have_none: {f2}");
    assert_eq!(f2["allowed_fast_sent"], 10, "{f2}");
}

#[test]
fn a_fast_peer_abusing_rejects_or_requests_is_dropped() {
    let Some((d, hash, _)) = seeding("[log]\nlevel = \"dropseed=debug\"\n") else { return };
    // Rejects of requests never made: tolerated up to a bound, then the end.
    let (mut s, _) = connect(&d, &hash, true);
    let mut flood = Vec::new();
    for i in 0..400u32 {
        wire::encode(&Message::RejectRequest(BlockRef { piece: i % 32, offset: 0, len: BLOCK_LEN }), &mut flood);
    }
    s.write_all(&flood).unwrap();
    d.wait_log("too many rejects of requests never made", Duration::from_secs(10));

    // Requests while choked, our rejects never read: dropped, not buffered.
    let (s, _) = connect(&d, &hash, true);
    let mut w = s.try_clone().unwrap();
    let allowed = allowed_fast_set("127.0.0.1".parse().unwrap(), &hash_bytes(&hash), 32, 10);
    let other = (0..32).find(|p| !allowed.contains(p)).unwrap();
    let writer = std::thread::spawn(move || {
        let one = frame(&Message::Request(BlockRef { piece: other, offset: 0, len: BLOCK_LEN }));
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 10_000).collect();
        // 64 MiB of requests at most; the daemon hangs up long before.
        for _ in 0..400 {
            if w.write_all(&batch).is_err() {
                return true;
            }
        }
        false
    });
    assert!(writer.join().unwrap(), "the daemon hung up on a peer that does not read");
    d.wait_log("requests without reading our answers", Duration::from_secs(10));
    drop(s);
    assert!(d.torrent(&hash).is_some(), "the daemon is still up");
}

#[test]
fn libtorrent_rotating_its_one_upload_slot_rejects_on_choke_and_the_download_completes() {
    if !(require("opentracker", "opentracker") && require("mktorrent", "mktorrent") && require_libtorrent()) {
        return;
    }
    let (work, tracker) = (tempdir(), Tracker::start());
    let seed_dir = work.path().join("seed");
    let (t, hash, data) = torrent_of(&seed_dir.join("rot.bin"), &tracker.announce_url(), 4 << 20, 67);
    tracker.allow(&hash);
    // One slot, a new choking round every second, 512 KiB/s: the seed keeps
    // choking one of its two leechers while its requests wait.
    let seed_args = ["--unchoke-slots", "1", "--unchoke-interval", "1", "--upload-limit", "524288"];
    let _seed = Libtorrent::start("seed", t.to_str().unwrap(), &seed_dir, &work.path().join("seed.log"), &seed_args);
    tracker.wait_seeders(&hash, 1);
    let other = work.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let _other = Libtorrent::start("leech", t.to_str().unwrap(), &other, &work.path().join("other.log"), &[]);

    let ds = Dropseed::start_with("");
    ds.drop_file(&t, "rot.torrent");
    let st = ds.wait_state(&hash, "seeding", Duration::from_secs(120));
    assert!(std::fs::read(ds.download_dir().join("rot.bin")).unwrap() == data, "every byte");
    assert!(st["fast"]["rejects_received"].as_u64() >= Some(1), "libtorrent rejected on choke: {st}");
}
