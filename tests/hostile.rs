//! Hostile input against the real binary: a resume record built to blow the
//! stack, a FIFO handed to `add`, an endless control request, a `.magnet`
//! file of thousands of hashes, peers that send junk blocks or announce
//! oversized messages, uTP SYNs from many addresses that never follow up.
//! Each attack must leave the daemon up, answering `status`, and its
//! numbers true.

mod common;

use common::{Dropseed, Proc};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A single-file torrent of `len` bytes under `dir`, made by mktorrent.
fn torrent_in(dir: &Path, name: &str, len: u64) -> Option<(std::path::PathBuf, String)> {
    if !common::require("mktorrent", "mktorrent") {
        return None;
    }
    let src = dir.join(name);
    common::payload(&src, len, 7);
    let t = dir.join(format!("{name}.torrent"));
    common::mktorrent(&src, "http://127.0.0.1:1/announce", 15, &t, &[]);
    let hash = common::info_hash(&t);
    Some((t, hash))
}

/// A daemon downloading a fresh torrent of 1 MiB (no peer has it).
fn downloading(name: &str) -> Option<(Dropseed, String)> {
    let d = Dropseed::start_with("");
    let (t, hash) = torrent_in(d.dir.path(), &format!("{name}.bin"), 1 << 20)?;
    d.drop_file(&t, &format!("{name}.torrent"));
    d.wait_state(&hash, "downloading", Duration::from_secs(30));
    Some((d, hash))
}

/// Runs a CLI command, killed if it takes longer than `limit`.
fn cli_within(d: &Dropseed, args: &[&str], limit: Duration) -> Option<std::process::Output> {
    let child = Command::new(common::dropseed_bin())
        .args(args)
        .arg("-c")
        .arg(&d.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = Proc(child);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if p.0.try_wait().unwrap().is_some() {
            let child = std::mem::replace(&mut p.0, Command::new("true").spawn().unwrap());
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_resume_record_nested_100000_deep_does_not_stop_the_daemon() {
    let mut d = Dropseed::new("");
    let Some((t, hash)) = torrent_in(d.dir.path(), "deep.bin", 100_000) else { return };
    let state = d.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::copy(&t, state.join(format!("{hash}.torrent"))).unwrap();
    let mut deep = vec![b'l'; 100_000];
    deep.extend(std::iter::repeat_n(b'e', 100_000));
    std::fs::write(state.join(format!("{hash}.resume")), deep).unwrap();
    d.start();
    // The torrent is restored (its data rechecked), the daemon answers.
    assert!(d.torrent(&hash).is_some(), "the torrent is restored despite its record");
    let log = d.wait_log("resume record unreadable", Duration::from_secs(10));
    assert!(log.contains(&format!("{hash}.resume")), "the warning names the record file");
    assert!(d.proc.as_mut().unwrap().0.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn add_of_a_fifo_or_a_device_is_refused_without_blocking() {
    let d = Dropseed::start_with("");
    let fifo = d.dir.path().join("x.torrent");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = cli_within(&d, &["add", fifo.to_str().unwrap()], Duration::from_secs(10))
        .expect("`add` of a FIFO answered within 10 s");
    let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && said.contains("not a regular file"), "{said}");
    let zero = d.dir.path().join("zero.torrent");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let out = cli_within(&d, &["add", zero.to_str().unwrap()], Duration::from_secs(10))
        .expect("`add` of a link to /dev/zero answered within 10 s");
    // The CLI reads the file itself and refuses the device behind the link.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && (said.contains("not a regular file") || said.contains("not a .torrent")),
        "{said}"
    );
    assert!(d.status()["torrents"].as_array().unwrap().is_empty());
}

#[test]
fn an_endless_control_request_is_cut_off() {
    let d = Dropseed::start_with("");
    let mut s = std::os::unix::net::UnixStream::connect(d.state_dir().join("control.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Megabytes without a newline; the daemon stops reading long before.
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..16 {
        if s.write_all(&chunk).is_err() {
            break; // it hung up: what we want
        }
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("request longer than"), "reply: {reply:?}");
    assert!(d.status()["torrents"].is_array(), "the daemon still answers");
}

#[test]
fn a_magnet_file_of_24000_hashes_is_refused_whole() {
    let d = Dropseed::start_with("");
    let text: String = (1..=24_000u32).map(|i| format!("{i:040x}\n")).collect();
    let src = d.dir.path().join("many.magnet");
    std::fs::write(&src, text).unwrap();
    d.drop_file(&src, "many.magnet");
    let log = d.wait_log("invalid file", Duration::from_secs(90));
    assert!(log.contains("24000 magnets"), "the reason is given: {log}");
    assert!(d.watch_dir().join("many.magnet.invalid").exists());
    assert!(d.status()["torrents"].as_array().unwrap().is_empty(), "nothing was added");
}

/// Connects to the daemon as a peer of `hash` and completes the handshake.
fn peer_of(d: &Dropseed, hash: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let info = dropseed::types::InfoHash::parse(hash).unwrap();
    let ours = dropseed::wire::Handshake::new(info, dropseed::types::PeerId([9; 20]), false);
    s.write_all(&ours.encode()).unwrap();
    let mut theirs = [0u8; 68];
    s.read_exact(&mut theirs).unwrap();
    s
}

/// Reads until the daemon closes the connection; false if it stays open.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn junk_blocks_are_waste_not_downloaded_bytes() {
    let Some((d, hash)) = downloading("junk") else { return };
    let mut s = peer_of(&d, &hash);
    // Everything, unchoked: it will ask for blocks; we send others instead.
    let mut out = Vec::new();
    dropseed::wire::encode(&dropseed::wire::Message::Bitfield(&[0xff; 4]), &mut out);
    dropseed::wire::encode(&dropseed::wire::Message::Unchoke, &mut out);
    s.write_all(&out).unwrap();
    let junk = vec![0xAAu8; 16384];
    for i in 0..40u32 {
        let mut m = Vec::new();
        // Offsets no one asks for (not block-aligned).
        dropseed::wire::encode(
            &dropseed::wire::Message::Piece { piece: i % 32, offset: 1, data: &junk[..16000] },
            &mut m,
        );
        s.write_all(&m).unwrap();
    }
    let t0 = Instant::now();
    let st = loop {
        let st = d.torrent(&hash).unwrap();
        if st["wasted"].as_u64().unwrap_or(0) >= 40 * 16000 || t0.elapsed() > Duration::from_secs(10) {
            break st;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(st["wasted"], 40 * 16000, "{st}");
    assert_eq!(st["downloaded"], 0, "junk is not downloaded payload: {st}");
}

#[test]
fn an_oversized_message_is_refused_from_its_header() {
    let Some((d, hash)) = downloading("big") else { return };
    for (what, head) in [("a 1 MiB piece", (1u32 << 20, 7u8)), ("a bitfield of 900 KB", (900_000, 5))] {
        let mut s = peer_of(&d, &hash);
        let mut m = head.0.to_be_bytes().to_vec();
        m.push(head.1);
        m.extend_from_slice(&[0u8; 1000]);
        s.write_all(&m).unwrap();
        // Only the header and a little: the daemon must not wait for the rest.
        assert!(closed_within(&mut s, Duration::from_secs(5)), "{what}: the connection is closed at once");
    }
    assert!(d.torrent(&hash).is_some());
}

/// Cuts a file down to `len` bytes behind the daemon's back.
fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn still_running(d: &mut Dropseed) -> bool {
    d.proc.as_mut().unwrap().0.try_wait().unwrap().is_none()
}

#[test]
fn a_file_truncated_while_it_is_checked_is_a_torrent_error_not_a_crash() {
    let mut d = Dropseed::start_with("");
    let dl = d.download_dir();
    std::fs::create_dir_all(&dl).unwrap();
    // A bystander that must keep seeding, and the victim: 512 MiB in 16 MiB
    // pieces, so each piece is hashed straight from the map for a while.
    let Some((other, other_hash)) = torrent_in(&dl, "bystander.bin", 1 << 20) else { return };
    common::payload(&dl.join("victim.bin"), 512 << 20, 3);
    let t16 = d.dir.path().join("victim.torrent");
    common::mktorrent(&dl.join("victim.bin"), "http://127.0.0.1:1/announce", 24, &t16, &[]);
    let hash16 = common::info_hash(&t16);
    d.drop_file(&other, "bystander.torrent");
    d.drop_file(&t16, "victim.torrent");
    d.wait_state(&other_hash, "seeding", Duration::from_secs(30));
    d.wait_state(&hash16, "seeding", Duration::from_secs(60));

    // The check of a cached file is quick: look as often as we can, and cut
    // once it has verified a first piece (before, the check would find the
    // file short and make it whole; after, there is nothing left to cut).
    let mut cut = false;
    for _ in 0..5 {
        assert!(d.cli(&["recheck", &hash16]).status.success());
        let t0 = Instant::now();
        let checking = |t: &serde_json::Value| t["state"] == "checking";
        while let Some(t) = d.torrent(&hash16).filter(|t| !checking(t) || t["progress"].as_f64() == Some(0.0)) {
            if t0.elapsed() > Duration::from_millis(500) && !checking(&t) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "the recheck never showed: {t}");
        }
        if d.torrent(&hash16).is_some_and(|t| checking(&t)) {
            truncate(&dl.join("victim.bin"), 1 << 20);
            cut = true;
            break;
        }
        d.wait_state(&hash16, "seeding", Duration::from_secs(60));
    }
    assert!(cut, "five rechecks ended before one could be cut short");

    let st = d.wait_state(&hash16, "error", Duration::from_secs(30));
    assert!(still_running(&mut d), "the daemon survives the truncation");
    let msg = st["error"].as_str().unwrap_or_default();
    assert!(msg.contains("truncated"), "the error names the cause: {st}");
    assert_eq!(d.torrent(&other_hash).unwrap()["state"], "seeding", "the other torrent is untouched");
    // Resumed, the file is made whole again and its lost pieces are wanted.
    assert!(d.cli(&["resume", &hash16]).status.success());
    let st = d.wait_state(&hash16, "downloading", Duration::from_secs(60));
    assert!(st["progress"].as_f64().unwrap() < 0.1, "{st}");
    assert_eq!(std::fs::metadata(dl.join("victim.bin")).unwrap().len(), 512 << 20);
}

#[test]
fn a_file_truncated_while_it_downloads_is_a_torrent_error_not_a_crash() {
    if !common::Swarm::tools_present() {
        return;
    }
    let swarm = common::Swarm::single("cut.bin", 64 << 20, 18, 11);
    // Slow enough to cut the file at about a fifth.
    let mut d = Dropseed::start_with("[limits]\ndownload_rate = \"8M\"\n");
    d.drop_file(&swarm.torrent, "cut.torrent");
    let path = d.incomplete_dir().join("cut.bin");
    common::wait_for("a fifth downloaded", Duration::from_secs(60), || {
        d.torrent(&swarm.hash).filter(|t| t["progress"].as_f64().unwrap_or(0.0) >= 0.2)
    });
    truncate(&path, 1 << 20);
    let st = d.wait_state(&swarm.hash, "error", Duration::from_secs(30));
    assert!(still_running(&mut d), "the daemon survives the truncation");
    assert!(st["error"].as_str().unwrap_or_default().contains("truncated"), "{st}");
}

#[test]
fn a_seeded_file_cut_short_is_a_torrent_error_not_silence() {
    let d = Dropseed::start_with("");
    let dl = d.download_dir();
    std::fs::create_dir_all(&dl).unwrap();
    let Some((t, hash)) = torrent_in(&dl, "served.bin", 4 << 20) else { return };
    d.drop_file(&t, "served.torrent");
    d.wait_state(&hash, "seeding", Duration::from_secs(30));
    truncate(&dl.join("served.bin"), 1 << 20);
    // A leecher asks for a block past the cut, once unchoked.
    let mut s = peer_of(&d, &hash);
    let mut out = Vec::new();
    dropseed::wire::encode(&dropseed::wire::Message::Interested, &mut out);
    s.write_all(&out).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let unchoked = loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break false;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let mut seen = false;
        while let Ok(Some((m, used))) = dropseed::wire::decode(&buf[at..]) {
            seen |= matches!(m, dropseed::wire::Message::Unchoke);
            at += used;
        }
        buf.drain(..at);
        if seen {
            break true;
        }
    };
    assert!(unchoked, "the seeder unchokes an interested leecher");
    let mut req = Vec::new();
    dropseed::wire::encode(
        &dropseed::wire::Message::Request(dropseed::wire::BlockRef { piece: 100, offset: 0, len: 16384 }),
        &mut req,
    );
    s.write_all(&req).unwrap();
    let st = d.wait_state(&hash, "error", Duration::from_secs(15));
    assert!(st["error"].as_str().unwrap_or_default().contains("truncated"), "{st}");
    // The retry finds the seeded file cut short: it waits for the user
    // instead of growing the file back and downloading into it.
    let st = d.wait_state(&hash, "missing", Duration::from_secs(90));
    assert!(st["error"].as_str().unwrap_or_default().contains("served.bin"), "{st}");
    assert_eq!(std::fs::metadata(dl.join("served.bin")).unwrap().len(), 1 << 20);
}

/// A blocking TCP connection to the daemon from source address `from`
/// (another loopback address stands for another host).
fn connect_from(from: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind((from, 0).into())?;
        sock.connect(([127, 0, 0, 1], port).into()).await
    })?;
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}

/// Handshakes as a peer of `hash` from `from`; `None` when the daemon closes
/// the connection instead of answering.
fn handshake_from(from: [u8; 4], d: &Dropseed, hash: &str, id: u8) -> Option<TcpStream> {
    handshake_to(from, d.port, hash, id)
}

/// [`handshake_from`] to the daemon's `port`.
fn handshake_to(from: [u8; 4], port: u16, hash: &str, id: u8) -> Option<TcpStream> {
    let mut s = connect_from(from, port).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let info = dropseed::types::InfoHash::parse(hash).unwrap();
    let ours = dropseed::wire::Handshake::new(info, dropseed::types::PeerId([id; 20]), false);
    s.write_all(&ours.encode()).ok()?;
    let mut theirs = [0u8; 68];
    s.read_exact(&mut theirs).ok()?;
    Some(s)
}

/// Whether the daemon still holds the connection open (a keep-alive goes
/// through and nothing says it closed).
fn held_open(s: &mut TcpStream) -> bool {
    if s.write_all(&[0, 0, 0, 0]).is_err() {
        return false;
    }
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let open = loop {
        match s.read(&mut buf) {
            Ok(0) => break false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
            Err(_) => break false,
        }
    };
    s.set_nonblocking(false).unwrap();
    open
}

#[test]
fn one_host_cannot_take_every_slot_and_idle_peers_make_room() {
    let d = Dropseed::start_with("[limits]\nmax_peers_per_torrent = 4\n");
    let dl = d.download_dir();
    std::fs::create_dir_all(&dl).unwrap();
    let Some((t, hash)) = torrent_in(&dl, "slots.bin", 1 << 20) else { return };
    d.drop_file(&t, "slots.torrent");
    d.wait_state(&hash, "seeding", Duration::from_secs(30));

    // One host opens ten valid connections: three are kept, the rest closed.
    let mut one_host: Vec<TcpStream> = (0..10).filter_map(|i| handshake_from([127, 0, 0, 2], &d, &hash, i)).collect();
    std::thread::sleep(Duration::from_millis(500));
    one_host.retain_mut(held_open);
    assert_eq!(one_host.len(), 3, "three connections per address");
    // A fourth host fills the torrent; a fifth finds it full (no one is idle yet).
    let mut filler = handshake_from([127, 0, 0, 3], &d, &hash, 20).expect("room for one more");
    std::thread::sleep(Duration::from_millis(300));
    assert!(held_open(&mut filler));
    let late = handshake_from([127, 0, 0, 4], &d, &hash, 21);
    assert!(late.is_none_or(|mut s| !held_open(&mut s)), "full, and nobody idle long enough to give way");

    // After a minute of keep-alives and no interest, a newcomer gets in.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(62) {
        std::thread::sleep(Duration::from_secs(15));
        one_host.retain_mut(held_open);
        assert!(held_open(&mut filler));
    }
    assert_eq!(one_host.len(), 3, "idle peers stay while nobody needs the room");
    let mut newcomer = handshake_from([127, 0, 0, 5], &d, &hash, 22).expect("an idle peer gives way");
    std::thread::sleep(Duration::from_millis(500));
    assert!(held_open(&mut newcomer), "the newcomer is kept");
    let closed = one_host.iter_mut().map(held_open).filter(|open| !open).count() + usize::from(!held_open(&mut filler));
    assert_eq!(closed, 1, "exactly one idle peer was closed to make room");
}

#[test]
fn a_torrent_file_whose_name_is_not_utf8_is_added_and_logged_printably() {
    use std::os::unix::ffi::OsStrExt;
    let d = Dropseed::start_with("");
    let Some((t, hash)) = torrent_in(d.dir.path(), "latin.bin", 100_000) else { return };
    // "café" in Latin-1, with a newline that must not forge a log line.
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9\nforged.torrent");
    std::fs::create_dir_all(d.watch_dir()).unwrap();
    std::fs::copy(&t, d.watch_dir().join(name)).unwrap();
    d.wait_state(&hash, "downloading", Duration::from_secs(30));
    let log = d.wait_log("added", Duration::from_secs(10));
    assert!(log.contains("caf\u{fffd}?forged.torrent"), "the file is named printably in the log");
    assert!(!log.lines().any(|l| l.starts_with("forged")), "no forged line");
}

#[test]
fn a_bitfield_with_spare_bits_is_named_as_such() {
    let d = Dropseed::start_with("[log]\nlevel = \"dropseed=debug\"\n");
    // 100,000 bytes in 32 KiB pieces: 4 pieces, one byte with 4 spare bits.
    let Some((t, hash)) = torrent_in(d.dir.path(), "spare.bin", 100_000) else { return };
    d.drop_file(&t, "spare.torrent");
    d.wait_state(&hash, "downloading", Duration::from_secs(30));
    let mut s = peer_of(&d, &hash);
    let mut m = Vec::new();
    dropseed::wire::encode(&dropseed::wire::Message::Bitfield(&[0xff]), &mut m);
    s.write_all(&m).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    let log = d.wait_log("spare bits", Duration::from_secs(5));
    assert!(!log.contains("bitfield of 1 bytes"), "the cause is named, not a length");
}

#[test]
fn a_download_completes_while_one_host_holds_all_it_may() {
    if !common::Swarm::tools_present() {
        return;
    }
    let tracker = common::Tracker::start();
    let mut d = Dropseed::new("[limits]\nmax_peers_per_torrent = 4\n");
    let dl = d.download_dir();
    common::payload(&dl.join("held.bin"), 8 << 20, 13);
    let t = d.dir.path().join("held.torrent");
    common::mktorrent(&dl.join("held.bin"), &tracker.announce_url(), 16, &t, &[]);
    let hash = common::info_hash(&t);
    tracker.allow(&hash);
    d.start();
    d.drop_file(&t, "held.torrent");
    d.wait_state(&hash, "seeding", Duration::from_secs(30));
    // The attacker's host opens as many valid, idle connections as it can.
    let attackers: Vec<TcpStream> = (0..20).filter_map(|i| handshake_from([127, 0, 0, 2], &d, &hash, i)).collect();
    assert!(!attackers.is_empty());
    // A real leecher on another address still gets a slot and finishes.
    let out = d.dir.path().join("leech");
    let mut leech = common::Aria2::leech(&t, &out, &d.dir.path().join("leech.log"));
    assert!(leech.wait_exit(Duration::from_secs(90)), "aria2 finished while the attack ran");
    assert!(std::fs::read(dl.join("held.bin")).unwrap() == std::fs::read(out.join("held.bin")).unwrap());
    drop(attackers);
}

/// Holds an idle, handshaken connection from `from` for as long as the
/// daemon keeps it, and knocks again soon after it is closed or refused,
/// until `stop`; `held` counts the connections held at the moment.
fn idle_attacker(
    from: [u8; 4],
    port: u16,
    hash: String,
    id: u8,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while !stop.load(Relaxed) {
        if let Some(mut s) = handshake_to(from, port, &hash, id) {
            held.fetch_add(1, Relaxed);
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut buf = [0u8; 4096];
            while !stop.load(Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            held.fetch_sub(1, Relaxed);
        }
        // Back at once (a pause only to spare the test machine's CPU).
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Reads messages from `s` until one satisfies `want`; false when the
/// connection ends or stays silent for the read timeout.
fn read_until(s: &mut TcpStream, want: impl Fn(&dropseed::wire::Message<'_>) -> bool) -> bool {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 16384];
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Ok(Some((m, used))) = dropseed::wire::decode(&buf[at..]) {
            if want(&m) {
                return true;
            }
            at += used;
        }
        buf.drain(..at);
    }
}

/// An honest leecher's visit: in, interested, unchoked, one block received.
fn fetch_one_block(from: [u8; 4], port: u16, hash: &str, id: u8) -> bool {
    use dropseed::wire::{encode, BlockRef, Message};
    let Some(mut s) = handshake_to(from, port, hash, id) else { return false };
    let mut out = Vec::new();
    encode(&Message::Interested, &mut out);
    if s.write_all(&out).is_err() || !read_until(&mut s, |m| matches!(m, Message::Unchoke)) {
        return false;
    }
    out.clear();
    encode(&Message::Request(BlockRef { piece: 0, offset: 0, len: 16384 }), &mut out);
    s.write_all(&out).is_ok() && read_until(&mut s, |m| matches!(m, Message::Piece { .. }))
}

#[test]
fn an_honest_peer_gets_in_while_many_addresses_hold_and_retake_every_slot() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;
    const SLOTS: usize = 10;
    let d = Dropseed::start_with(&format!("[limits]\nmax_peers_per_torrent = {SLOTS}\n"));
    let dl = d.download_dir();
    std::fs::create_dir_all(&dl).unwrap();
    let Some((t, hash)) = torrent_in(&dl, "fair.bin", 1 << 20) else { return };
    d.drop_file(&t, "fair.torrent");
    d.wait_state(&hash, "seeding", Duration::from_secs(30));

    // Eight addresses, three idle connections each (more than the torrent
    // has room for), each back the moment it is dropped.
    let (stop, held) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let attackers: Vec<_> = (0..24u8)
        .map(|i| {
            let (hash, stop, held, port) = (hash.clone(), stop.clone(), held.clone(), d.port);
            std::thread::spawn(move || idle_attacker([127, 0, 0, 2 + i / 3], port, hash, 30 + i, stop, held))
        })
        .collect();
    let t0 = Instant::now();
    while held.load(Relaxed) < SLOTS {
        assert!(t0.elapsed() < Duration::from_secs(20), "the attackers never filled the torrent");
        std::thread::sleep(Duration::from_millis(50));
    }

    // An honest leecher knocks every second; it must get in, and get data,
    // within a minute.
    let t0 = Instant::now();
    let mut visits = 0;
    let got_in = loop {
        visits += 1;
        if fetch_one_block([127, 0, 0, 100], d.port, &hash, 200) {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    stop.store(true, Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    assert!(got_in, "the honest peer was kept out for a minute ({visits} visits)");
}

/// Sends `count` uTP SYNs from `from` that it will never follow up, then
/// a stray packet, and waits for the RESET that answers it: by then the
/// daemon has read every SYN (nothing is lost to a full socket buffer).
fn silent_syns(from: &std::net::UdpSocket, to: std::net::SocketAddr, first_id: u16, count: u16) {
    use dropseed::utp::packet::{self, Header, Kind};
    let header =
        |kind, conn_id| Header { kind, conn_id, timestamp: 0, timestamp_diff: 0, wnd_size: 0, seq_nr: 1, ack_nr: 0 };
    let mut d = Vec::new();
    for i in 0..count {
        packet::write_header(&mut d, &header(Kind::Syn, first_id.wrapping_add(2 * i)), None);
        from.send_to(&d, to).unwrap();
    }
    packet::write_header(&mut d, &header(Kind::Data, first_id.wrapping_sub(7)), None);
    from.send_to(&d, to).unwrap();
    from.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1500];
    loop {
        let n = from.recv(&mut buf).unwrap();
        if packet::parse(&buf[..n]).is_ok_and(|p| p.header.kind == Kind::Reset) {
            break;
        }
    }
}

/// Issue #23 (9): uTP SYNs from 40 addresses that never answer (as from
/// spoofed sources; a uTP stream has no bytes when it is accepted, so the
/// listener counted them silent and turned later uTP peers away), then an
/// honest uTP peer from another address: it completes its handshake.
#[test]
fn silent_utp_syns_from_many_addresses_do_not_lock_out_a_utp_peer() {
    let Some((d, hash)) = downloading("utp-syns") else { return };
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], d.port));
    for host in 0..40u8 {
        let flood = std::net::UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 2, host + 1), 0)).unwrap();
        silent_syns(&flood, to, u16::from(host) * 1000, 60);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let theirs = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (utp, _) = dropseed::utp::UtpSocket::start(std::sync::Arc::new(udp), None);
        let mut s = tokio::time::timeout(Duration::from_secs(10), utp.connect(to)).await.unwrap().unwrap();
        // Its first data a little after the handshake (a long path, a lost
        // packet): the daemon has taken the connection before it spoke.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let info = dropseed::types::InfoHash::parse(&hash).unwrap();
        let ours = dropseed::wire::Handshake::new(info, dropseed::types::PeerId([9; 20]), false);
        s.write_all(&ours.encode()).await.unwrap();
        let mut theirs = [0u8; 68];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut theirs)).await;
        drop(s);
        utp.shut_down().await;
        read.map(|r| r.map(|_| theirs))
    });
    let theirs = theirs.expect("the handshake came in time").expect("the daemon kept the connection");
    assert_eq!(&theirs[28..48], &dropseed::types::InfoHash::parse(&hash).unwrap().0[..]);
    assert!(cli_within(&d, &["status"], Duration::from_secs(10)).is_some_and(|o| o.status.success()));
}
