//! Cross-seeding against real clients: torrent A downloads from a
//! libtorrent seeder; torrents B (the same files, private, each with its own
//! `source`, so another info hash) come in by the watch folder, by
//! `dropseed add --save-path` and by the qBittorrent API (`savepath` and
//! `skip_checking`, as the `cross-seed` tool sends them). Each seeds at once
//! from A's files with nothing downloaded, and aria2 fetches every byte of
//! one from dropseed. `remove --delete-data` of A keeps the files B uses,
//! and a corrupted shared file puts B in error without B rewriting it.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

const PASSWORD: &str = "cross seed";
const MIB: u64 = 1024 * 1024;

/// One HTTP/1.1 exchange with the API: (status, head, body).
fn http(port: u16, head: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let mut raw =
        format!("{head}Host: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    raw.extend_from_slice(body);
    s.write_all(&raw).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Logs in; the cookie header to send.
fn login(port: u16) -> String {
    let form = format!("username=admin&password={}", PASSWORD.replace(' ', "%20"));
    let (status, head, _) = http(
        port,
        "POST /api/v2/auth/login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        form.as_bytes(),
    );
    assert_eq!(status, 200);
    let line = head.lines().find(|l| l.starts_with("set-cookie:")).expect("a cookie");
    let sid = line.split("sid=").nth(1).unwrap().split(';').next().unwrap().trim();
    format!("Cookie: SID={sid}\r\n")
}

/// `torrents/add` as cross-seed sends it (QBittorrent.ts `inject`, for an
/// exact match with `skipRecheck`, against a client reporting v5): the file
/// as `NAME.cross-seed.torrent`, `downloadPath` and `savepath` (the
/// matched torrent's `save_path`), `autoTMM=false`, `tags`,
/// `contentLayout=Original`, `skip_checking=true`, `stopped=false`, and the
/// sentinel `foo=bar` it appends last.
fn api_add(port: u16, cookie: &str, torrent: &Path, savepath: &Path) -> (u16, String) {
    let boundary = "----crossseedboundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"torrents\"; filename=\"Show.S01.cross-seed.torrent\"\r\n\
             Content-Type: application/x-bittorrent\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&std::fs::read(torrent).unwrap());
    body.extend_from_slice(b"\r\n");
    let save = savepath.to_str().unwrap();
    let fields = [
        ("downloadPath", save),
        ("savepath", save),
        ("autoTMM", "false"),
        ("tags", "cross-seed"),
        ("contentLayout", "Original"),
        ("skip_checking", "true"),
        ("stopped", "false"),
        ("foo", "bar"),
    ];
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let head = format!(
        "POST /api/v2/torrents/add HTTP/1.1\r\n{cookie}Content-Type: multipart/form-data; boundary={boundary}\r\n"
    );
    let (status, _, body) = http(port, &head, &body);
    (status, body)
}

/// The API's view of one torrent.
fn api_info(port: u16, cookie: &str, hash: &str) -> Option<serde_json::Value> {
    // cross-seed asks with a POST form, as for every request.
    let head =
        format!("POST /api/v2/torrents/info HTTP/1.1\r\n{cookie}Content-Type: application/x-www-form-urlencoded\r\n");
    let (_, _, body) = http(port, &head, format!("hashes={hash}").as_bytes());
    serde_json::from_str::<serde_json::Value>(&body).ok()?.as_array()?.first().cloned()
}

/// A private torrent of `src` on `tracker` with its own `source`.
fn private_torrent(tracker: &Tracker, src: &Path, out: &Path, source: &str) -> String {
    mktorrent(src, &tracker.announce_url(), 16, out, &["-p", "-s", source]);
    let hash = info_hash(out);
    tracker.allow(&hash);
    hash
}

#[test]
fn cross_seeds_come_in_every_way_seed_at_once_and_share_the_files_safely() {
    if !(Swarm::tools_present() && require_libtorrent()) {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let data = work.path().join("data");
    let show = data.join("Show.S01");
    payload(&show.join("e01.mkv"), 3 * MIB + 5, 1);
    payload(&show.join("e02.mkv"), 2 * MIB + 77, 2);
    let a_torrent = work.path().join("a.torrent");
    mktorrent(&show, &tracker.announce_url(), 16, &a_torrent, &[]);
    let a = info_hash(&a_torrent);
    tracker.allow(&a);
    let _seeder = Libtorrent::start("seed", a_torrent.to_str().unwrap(), &data, &work.path().join("lt.log"), &[]);
    let api_port = free_port();
    let phc = dropseed::api::auth::hash_password(PASSWORD);
    let d = Dropseed::start_with(&format!("[api]\nlisten = \"127.0.0.1:{api_port}\"\npassword_hash = \"{phc}\"\n"));
    wait_for("the API listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", api_port)).ok());

    // A downloads from libtorrent.
    d.drop_file(&a_torrent, "a.torrent");
    d.wait_state(&a, "seeding", Duration::from_secs(120));
    let kept = d.download_dir().join("Show.S01");
    assert_same_data(&show, &kept);

    // B by the watch folder: seeds at once, nothing downloaded.
    let b1_torrent = work.path().join("b1.torrent");
    let b1 = private_torrent(&tracker, &show, &b1_torrent, "TRACKER-B");
    d.drop_file(&b1_torrent, "b1.torrent");
    let t = d.wait_state(&b1, "seeding", Duration::from_secs(60));
    assert_eq!(t["downloaded"], 0);
    d.wait_log(&format!("matched={}", &a[..8]), Duration::from_secs(10));
    assert!(!d.watch_dir().join("b1.torrent.invalid").exists());
    // `status TORRENT` names the torrents sharing its data.
    let out = d.cli(&["status", &b1]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&a[..8]), "{}", String::from_utf8_lossy(&out.stdout));

    // B by `add --save-path`.
    let b2_torrent = work.path().join("b2.torrent");
    let b2 = private_torrent(&tracker, &show, &b2_torrent, "TRACKER-C");
    let out = d.cli(&["add", b2_torrent.to_str().unwrap(), "--save-path", d.download_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(d.wait_state(&b2, "seeding", Duration::from_secs(60))["downloaded"], 0);

    // B by the API, as cross-seed injects it.
    let cookie = login(api_port);
    let b3_torrent = work.path().join("b3.torrent");
    let b3 = private_torrent(&tracker, &show, &b3_torrent, "TRACKER-D");
    let outside = work.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    let (status, body) = api_add(api_port, &cookie, &b3_torrent, &outside);
    assert!(status == 400 && body.contains("outside the folders"), "a savepath outside is refused: {status} {body}");
    let (status, body) = api_add(api_port, &cookie, &b3_torrent, &d.download_dir());
    assert_eq!((status, body.as_str()), (200, "Ok."));
    let info = wait_for("B3 seeding through the API", Duration::from_secs(60), || {
        api_info(api_port, &cookie, &b3).filter(|t| t["state"] == "stalledUP" || t["state"] == "uploading")
    });
    assert_eq!(info["downloaded"], 0);

    // A real leecher fetches every byte of a B from dropseed (only dropseed has B1).
    let leech_dir = work.path().join("leech");
    let mut leecher = Aria2::leech(&b1_torrent, &leech_dir, &work.path().join("aria2.log"));
    assert!(leecher.wait_exit(Duration::from_secs(120)), "aria2 did not finish B1");
    assert_same_data(&show, &leech_dir.join("Show.S01"));

    // Removing A with its data keeps what the Bs seed, and says so.
    let out = d.cli(&["remove", "--delete-data", &a]);
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("still used by another torrent"), "{said}");
    assert_same_data(&show, &kept);
    // The log is written behind the reply: wait for the line.
    d.wait_log("still used by another torrent", Duration::from_secs(10));

    // A corrupted shared file: B errs naming it, and never rewrites it.
    let e02 = kept.join("e02.mkv");
    let mut f = std::fs::OpenOptions::new().write(true).open(&e02).unwrap();
    f.write_all(&[0xAB; 4096]).unwrap();
    drop(f);
    let corrupted = std::fs::read(&e02).unwrap();
    assert!(d.cli(&["recheck", &b2]).status.success());
    let t = d.wait_state(&b2, "error", Duration::from_secs(60));
    assert!(t["error"].as_str().unwrap().contains("e02.mkv"), "{t}");
    assert_eq!(t["downloaded"], 0);
    assert_eq!(std::fs::read(&e02).unwrap(), corrupted, "the shared file was rewritten");
}

#[test]
fn a_kill_during_the_verification_of_shared_data_loses_nothing() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let mut d = Dropseed::start_with("[storage]\ndisk_threads = 1\n");
    // 3 GiB of sparse zeros: long enough to check that a kill lands mid-way.
    let big = d.download_dir().join("big.bin");
    std::fs::create_dir_all(d.download_dir()).unwrap();
    std::fs::File::create(&big).unwrap().set_len(3 << 30).unwrap();
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.len(), m.modified().unwrap())
    };
    let before = stamp(&big);
    let torrent = d.dir.path().join("big.torrent");
    mktorrent(&big, "http://127.0.0.1:1/announce", 20, &torrent, &["-p", "-s", "TRACKER-K"]);
    let hash = info_hash(&torrent);
    let out = d.cli(&["add", torrent.to_str().unwrap(), "--save-path", d.download_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.wait_state(&hash, "checking", Duration::from_secs(30));
    d.kill9();
    assert_eq!(stamp(&big), before, "the shared file was touched");
    d.start();
    let t = d.wait_state(&hash, "seeding", Duration::from_secs(300));
    assert_eq!((t["downloaded"].as_u64(), t["progress"].as_f64()), (Some(0), Some(1.0)));
    assert_eq!(stamp(&big), before, "the shared file was touched");
}

/// `len` bytes of data no filesystem stores sparse, written fast: one
/// random MiB, each copy stamped with its index.
fn dense_file(path: &Path, len: u64) {
    let block = path.with_extension("block");
    payload(&block, MIB, 11);
    let mut buf = std::fs::read(&block).unwrap();
    std::fs::remove_file(&block).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..len / MIB {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

/// Two files hold the same bytes.
fn same_bytes(want: &Path, got: &Path) {
    let (a, b) = (std::fs::read(want).unwrap(), std::fs::read(got).unwrap());
    assert!(a == b, "{} differs from {}", got.display(), want.display());
}

/// A daemon without an incomplete folder (matched files are copied beside
/// their final names in the complete folder), copying matches (`link =
/// "copy"`), one disk thread; and in it, torrent A seeding `len` bytes of
/// `Show.A/ep.mkv`. Returns the daemon, A's data kept aside to compare,
/// and B: the same bytes as the single file `Other.mkv` (another name,
/// matched by size), its torrent and hash.
fn source_and_match(work: &Path, len: u64) -> (Dropseed, std::path::PathBuf, std::path::PathBuf, String) {
    let mut d = Dropseed::new("[storage]\ndisk_threads = 1\n[cross_seed]\nmatch = \"size\"\nlink = \"copy\"\n");
    let text = std::fs::read_to_string(&d.config).unwrap();
    let inc = format!("incomplete_dir = \"{}\"\n", d.incomplete_dir().display());
    std::fs::write(&d.config, text.replace(&inc, "incomplete_dir = \"\"\n")).unwrap();
    d.start();
    let kept = work.join("kept.mkv");
    dense_file(&kept, len);
    let a_data = d.download_dir().join("Show.A");
    std::fs::create_dir_all(&a_data).unwrap();
    std::fs::copy(&kept, a_data.join("ep.mkv")).unwrap();
    let a_torrent = work.join("a.torrent");
    mktorrent(&a_data, "http://127.0.0.1:1/announce", 20, &a_torrent, &[]);
    let a = info_hash(&a_torrent);
    let out = d.cli(&["add", a_torrent.to_str().unwrap(), "--save-path", d.download_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.wait_state(&a, "seeding", Duration::from_secs(120));
    let other = work.join("Other.mkv");
    std::fs::hard_link(&kept, &other).unwrap();
    let b_torrent = work.join("b.torrent");
    mktorrent(&other, "http://127.0.0.1:1/announce", 20, &b_torrent, &["-p", "-s", "TRACKER-B"]);
    let b = info_hash(&b_torrent);
    (d, kept, b_torrent, b)
}

/// The add of a torrent whose file matches answers at once, the torrent
/// checking while the match is verified and copied. A kill -9 while the
/// matched file is being copied in: the source's data is
/// untouched, nothing half-copied is under the final name, the hidden copy
/// is gone after the restart (there is no incomplete folder: it was in the
/// complete one), and the new torrent ends up seeding with nothing
/// downloaded (the match is made again).
#[test]
fn a_kill_during_the_copy_of_a_matched_file_leaves_nothing_half_copied() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let len = 512 * MIB;
    let (mut d, kept, b_torrent, b) = source_and_match(work.path(), len);
    let (final_name, hidden) = (d.download_dir().join("Other.mkv"), d.download_dir().join(".Other.mkv.dropseed-link"));
    // The add answers at once: the match is the torrent's own checking.
    let out = d.cli(&["add", b_torrent.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = d.torrent(&b).expect("B is listed once added");
    assert_eq!(t["state"], "checking", "{t}");
    assert!(!final_name.exists(), "the add waited for the match to be copied");
    let size = wait_for("the hidden copy to be under way", Duration::from_secs(120), || {
        std::fs::metadata(&hidden).ok().map(|m| m.len()).filter(|&n| n > 0)
    });
    d.kill9();
    let copied = std::fs::metadata(&hidden).map(|m| m.len()).unwrap_or(0);
    assert!(size < len && copied < len, "the kill landed after the copy ({copied} of {len} bytes)");
    assert!(!final_name.exists(), "a half copy is visible under its final name");
    same_bytes(&kept, &d.download_dir().join("Show.A/ep.mkv"));

    d.start();
    let t = d.wait_state(&b, "seeding", Duration::from_secs(120));
    assert_eq!((t["downloaded"].as_u64(), t["progress"].as_f64()), (Some(0), Some(1.0)), "{t}");
    assert!(!hidden.exists(), "the hidden copy was left behind");
    same_bytes(&kept, &final_name);
    same_bytes(&kept, &d.download_dir().join("Show.A/ep.mkv"));
}

/// A pause stops a match under way: the copy stops at its next MiB and its
/// hidden name goes, nothing appears under the final name; a resume makes
/// the match again, and the torrent seeds with nothing downloaded.
#[test]
fn a_pause_stops_a_match_copy_and_a_resume_makes_it_again() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let len = 512 * MIB;
    let (d, kept, b_torrent, b) = source_and_match(work.path(), len);
    let (final_name, hidden) = (d.download_dir().join("Other.mkv"), d.download_dir().join(".Other.mkv.dropseed-link"));
    let out = d.cli(&["add", b_torrent.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the hidden copy to be under way", Duration::from_secs(120), || {
        std::fs::metadata(&hidden).ok().filter(|m| m.len() > 0)
    });
    let out = d.cli(&["pause", &b]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.wait_state(&b, "paused", Duration::from_secs(10));
    wait_for("the hidden copy to go", Duration::from_secs(30), || (!hidden.exists()).then_some(()));
    assert!(!final_name.exists(), "a copy stopped by a pause is under its final name");
    assert!(d.cli(&["resume", &b]).status.success());
    let t = d.wait_state(&b, "seeding", Duration::from_secs(120));
    assert_eq!((t["downloaded"].as_u64(), t["progress"].as_f64()), (Some(0), Some(1.0)), "{t}");
    same_bytes(&kept, &final_name);
}

/// A source file replaced (another inode under its name) after it verified
/// and before it is linked is not linked: the file linked must be the one
/// whose pieces were checked. Here the replacement has the same bytes, so
/// only its identity tells it apart; it is downloaded instead (there is no
/// peer: the torrent stays incomplete).
#[test]
fn a_source_file_replaced_between_its_check_and_its_link_is_not_linked() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let mut d = Dropseed::new("[storage]\ndisk_threads = 1\n[cross_seed]\nmatch = \"size\"\nlink = \"copy\"\n");
    let text = std::fs::read_to_string(&d.config).unwrap();
    let inc = format!("incomplete_dir = \"{}\"\n", d.incomplete_dir().display());
    std::fs::write(&d.config, text.replace(&inc, "incomplete_dir = \"\"\n")).unwrap();
    d.start();
    // A: a big file and a small one; B: the same two under other names.
    let a_data = d.download_dir().join("Show.A");
    std::fs::create_dir_all(&a_data).unwrap();
    dense_file(&a_data.join("ep.mkv"), 512 * MIB);
    payload(&a_data.join("extra.mkv"), 2 * MIB, 5);
    let a_torrent = work.path().join("a.torrent");
    mktorrent(&a_data, "http://127.0.0.1:1/announce", 20, &a_torrent, &[]);
    let a = info_hash(&a_torrent);
    let out = d.cli(&["add", a_torrent.to_str().unwrap(), "--save-path", d.download_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.wait_state(&a, "seeding", Duration::from_secs(120));
    let pack = work.path().join("Pack");
    std::fs::create_dir_all(&pack).unwrap();
    std::fs::hard_link(a_data.join("ep.mkv"), pack.join("big.mkv")).unwrap();
    std::fs::copy(a_data.join("extra.mkv"), pack.join("small.mkv")).unwrap();
    let b_torrent = work.path().join("b.torrent");
    mktorrent(&pack, "http://127.0.0.1:1/announce", 20, &b_torrent, &["-p", "-s", "TRACKER-B"]);
    let b = info_hash(&b_torrent);

    let out = d.cli(&["add", b_torrent.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Both files verified, the big one being copied: the small one's
    // source is replaced by a copy of the same bytes (another inode).
    let hidden = d.download_dir().join("Pack/.big.mkv.dropseed-link");
    wait_for("the big file's copy to be under way", Duration::from_secs(120), || {
        std::fs::metadata(&hidden).ok().filter(|m| m.len() > 0)
    });
    let extra = a_data.join("extra.mkv");
    std::fs::copy(&extra, work.path().join("extra.new")).unwrap();
    std::fs::rename(work.path().join("extra.new"), &extra).unwrap();
    d.wait_log("the source file was replaced since it was verified", Duration::from_secs(60));
    let t = d.wait_state(&b, "downloading", Duration::from_secs(60));
    assert_eq!(t["downloaded"], 0, "{t}");
    assert!(t["progress"].as_f64().unwrap() < 1.0, "{t}");
    let big = std::fs::metadata(d.download_dir().join("Pack/big.mkv")).unwrap();
    assert_eq!(big.len(), 512 * MIB, "the big file is linked");
}
