//! A real web front end on dropseed's qBittorrent-compatible API: Flood
//! (npm `flood`, pinned in tests/flood/package-lock.json and installed by
//! scripts/install-test-deps.sh) manages dropseed as a qBittorrent client,
//! and headless Chromium (Debian's `chromium`, driven by `playwright-core`)
//! logs in to Flood and reads its torrent list: names, Flood's status of
//! each row and the progress, as a user sees them.
//!
//! Everything runs on loopback on free ports and is killed when the test
//! ends, passed or failed (`Proc` and `Dropseed` are guards). The screenshot
//! goes to the test's temp dir, or to `$DROPSEED_FLOOD_SCREENSHOT` (the
//! docs' docs/images/flood.png is made that way).

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "flood's password";
/// The torrent the swarm's aria2 seeds, slowly.
const DOWNLOADING: &str = "Elephants.Dream.2006.mkv";
/// The torrent added through Flood (no seeder: it waits for peers).
const ADDED: &str = "Big.Buck.Bunny.2008.mkv";

/// tests/flood with its pinned packages installed, if they are.
fn flood_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flood");
    let installed = ["flood/dist/index.js", "playwright-core/package.json"]
        .iter()
        .all(|f| dir.join("node_modules").join(f).is_file());
    if !(require("node", "nodejs") && require("chromium", "chromium")) {
        return None;
    }
    if !installed {
        missing("Flood is not installed: run scripts/install-test-deps.sh (npm ci in tests/flood)");
        return None;
    }
    Some(dir)
}

/// The PHC string the real `dropseed api hash-password` makes of `password`.
fn hash_of(password: &str) -> String {
    let mut hasher = Command::new(dropseed_bin())
        .args(["api", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    hasher.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = hasher.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Copies `data`'s files into `dir`, as a user who has the data already.
fn preload(data: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in std::fs::read_dir(data).unwrap().flatten() {
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
}

/// dropseed with the API on, and three torrents as a seedbox has them:
/// one seeding (complete, category `movies`), one stopped (category `tv`),
/// one downloading from a slow aria2 seeder (no category; 64 KiB/s, so it
/// is still downloading when Flood shows it). Returns it, the API port, the
/// names and the hashes, in that order.
fn seedbox(swarm: &Swarm, work: &Path) -> (Dropseed, u16, [String; 3], [String; 3]) {
    let names = ["Sintel.2010.720p.mkv", "Tears.of.Steel.2012.mkv", DOWNLOADING].map(String::from);
    let seeding = tracked_torrent(&swarm.tracker, work, &names[0], 3 << 20, 70);
    let stopped = tracked_torrent(&swarm.tracker, work, &names[1], 2 << 20, 71);
    let hashes = [seeding.1.clone(), stopped.1.clone(), swarm.hash.clone()];
    let api = free_port();
    let mut d = Dropseed::new(&format!(
        "[api]\nlisten = \"127.0.0.1:{api}\"\nusername = \"admin\"\npassword_hash = \"{}\"\n\
         [log]\nlevel = \"info,dropseed::api=debug\"\n",
        hash_of(PASSWORD)
    ));
    preload(&seeding.2, &d.download_dir().join("movies"));
    d.start();
    let drop_in = |torrent: &Path, folder: &str| {
        let dir = d.watch_dir().join(folder);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(torrent, dir.join("t.part")).unwrap();
        std::fs::rename(dir.join("t.part"), dir.join(torrent.file_name().unwrap())).unwrap();
    };
    drop_in(&seeding.0, "movies");
    drop_in(&stopped.0, "tv");
    drop_in(&swarm.torrent, "");
    d.wait_state(&hashes[0], "seeding", Duration::from_secs(30));
    d.wait_state(&hashes[1], "downloading", Duration::from_secs(30));
    let out = d.cli(&["pause", &hashes[1]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.wait_state(&hashes[1], "paused", Duration::from_secs(10));
    wait_for("some of the download", Duration::from_secs(30), || {
        d.torrent(&hashes[2]).filter(|t| t["progress"].as_f64().unwrap_or(0.0) > 0.02)
    });
    wait_for("the API listener", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", api)).ok());
    (d, api, names, hashes)
}

/// Flood on a free port with its database in `rundir`, up when it answers.
fn start_flood(dir: &Path, rundir: &Path, log: &Path) -> (Proc, u16) {
    let port = free_port();
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new("node")
        .arg(dir.join("node_modules/flood/dist/index.js"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--rundir"])
        .arg(rundir)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("node");
    let flood = Proc(child);
    wait_for("Flood's listener", Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).ok());
    (flood, port)
}

/// A child and all it started (its process group), killed on drop: the
/// Chromium of drive.js goes with it, even if node died first.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// What drive.js printed: one JSON object a line, by its `what`.
fn lines_of(out: &str, what: &str) -> Vec<Value> {
    out.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["what"] == what).collect()
}

/// Flood's API requests as dropseed logged them: `METHOD path` and count.
fn requests_seen(log: &str) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for line in log.lines().filter(|l| l.contains("msg=\"api request\"")) {
        let field = |k: &str| {
            line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap_or("?").to_string()
        };
        *counts.entry(format!("{} {} {}", field("method"), field("path"), field("status"))).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// Whether Flood gave a row this CSS class (its status: seeding, stopped...).
fn has(r: &Value, class: &str) -> bool {
    r["classes"].as_str().unwrap().split(' ').any(|c| c == class)
}

/// The list, as Chromium rendered it: each torrent's name, Flood's status
/// classes and its progress.
fn check_rows(said: &str, names: &[String; 3], context: &dyn Fn() -> String) {
    let rows = lines_of(said, "row");
    assert_eq!(rows.len(), 4, "{}", context());
    let row = |name: &str| {
        rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name} not listed\n{}", context())).clone()
    };
    let text = |r: &Value| r["text"].as_str().unwrap().to_string();

    let seeding = row(&names[0]);
    assert!(has(&seeding, "torrent--is-seeding") && has(&seeding, "torrent--is-completed"), "{seeding}");
    assert!(!has(&seeding, "torrent--is-stopped"), "{seeding}");
    assert!(text(&seeding).contains("100%"), "{seeding}");
    let stopped = row(&names[1]);
    assert!(has(&stopped, "torrent--is-stopped") && !has(&stopped, "torrent--is-seeding"), "{stopped}");
    assert!(text(&stopped).contains("0%") && !text(&stopped).contains("100%"), "{stopped}");
    let downloading = row(&names[2]);
    assert!(has(&downloading, "torrent--is-downloading"), "{downloading}");
    assert!(!has(&downloading, "torrent--is-stopped") && !has(&downloading, "torrent--is-completed"), "{downloading}");
    let percent = text(&downloading).split_whitespace().find_map(|w| w.strip_suffix('%')?.parse::<f64>().ok());
    assert!(percent.is_some_and(|p| p > 0.0 && p < 100.0), "{downloading}");
    let added = row(ADDED);
    assert!(has(&added, "torrent--is-downloading") && text(&added).contains("0%"), "{added}");

    // The status filters in the sidebar count them by Flood's status
    // ("Seeding 1 2MB": the name, the count, their size).
    let filters: Vec<String> = lines_of(said, "sidebar")[0]["filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    for want in ["All 4 ", "Downloading 2 ", "Seeding 1 ", "Stopped 1 ", "Complete 1 "] {
        assert!(filters.iter().any(|f| f.starts_with(want)), "{want} in {filters:?}");
    }
}

/// What Flood asked of dropseed, printed for the docs: every request answered.
fn check_requests(said: &str, d: &Dropseed) {
    let reloads = lines_of(said, "overlay-gone")[0]["reloads"].clone();
    eprintln!("Flood's loading overlay needed {reloads} page reloads to go away");
    let seen = requests_seen(&d.log_text());
    eprintln!("Flood's requests to dropseed (method path status: count):");
    for (req, n) in &seen {
        eprintln!("  {req}: {n}");
    }
    assert!(seen.iter().any(|(r, _)| r.starts_with("POST /api/v2/torrents/info 200")), "{seen:?}");
    assert!(seen.iter().all(|(r, _)| r.ends_with(" 200")), "dropseed refused some of Flood's requests: {seen:?}");
}

#[test]
fn flood_in_chromium_shows_the_torrent_list_of_dropseed() {
    let Some(flood_dir) = flood_dir() else { return };
    if !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let swarm = Swarm::single_with(DOWNLOADING, 8 << 20, 16, 72, &["--max-upload-limit=64K"]);
    let (d, api, names, hashes) = seedbox(&swarm, work.path());
    let (added_torrent, added_hash, _) = tracked_torrent(&swarm.tracker, work.path(), ADDED, 1 << 20, 73);
    let flood_log = work.path().join("flood.log");
    let (_flood, flood_port) = start_flood(&flood_dir, &work.path().join("flood-run"), &flood_log);
    let screenshot = std::env::var_os("DROPSEED_FLOOD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.path().join("flood.png"));

    let (said_path, err_path) = (work.path().join("drive.out"), work.path().join("drive.err"));
    let child = Command::new("node")
        .arg(flood_dir.join("drive.js"))
        .env("FLOOD_URL", format!("http://127.0.0.1:{flood_port}"))
        .env("QBT_URL", format!("http://127.0.0.1:{api}"))
        .env("QBT_USER", "admin")
        .env("QBT_PASSWORD", PASSWORD)
        .env("CHROMIUM", "/usr/bin/chromium")
        .env("EXPECT_NAMES", serde_json::to_string(&[&names[0], &names[1], &names[2], ADDED]).unwrap())
        .env("ADD_TORRENT", &added_torrent)
        .env("SCREENSHOT", &screenshot)
        .env("START_NAME", &names[1])
        .env("DETAILS_HASH", &hashes[2])
        .env("LINGER_MS", std::env::var("FLOOD_LINGER_MS").unwrap_or_default())
        .env("TIMEOUT_MS", "30000")
        .stdout(std::fs::File::create(&said_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .expect("node");
    let mut drive = Group(child);
    let status = wait_for("drive.js", Duration::from_secs(180), || drive.0.try_wait().unwrap());
    drop(drive);
    let said = std::fs::read_to_string(&said_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let context = || {
        format!(
            "drive.js said:\n{said}\n{stderr}\nFlood's log:\n{}\ndropseed's API requests: {:?}",
            std::fs::read_to_string(&flood_log).unwrap_or_default(),
            requests_seen(&d.log_text())
        )
    };
    assert!(status.success() && !lines_of(&said, "done").is_empty(), "{}", context());

    // Flood's server reached dropseed as a qBittorrent client.
    let test = &lines_of(&said, "connection-test")[0];
    assert_eq!(test["status"], 200, "{}", context());
    assert!(test["body"].as_str().unwrap().contains("\"isConnected\":true"), "{}", context());

    // Added through Flood: dropseed has it.
    let add = &lines_of(&said, "add")[0];
    assert_eq!(add["status"], 200, "{add}\n{}", context());
    assert!(d.torrent(&added_hash).is_some(), "{add}");

    check_rows(&said, &names, &context);

    // Flood's preferences view reads these qBittorrent keys.
    let settings: Value =
        serde_json::from_str(lines_of(&said, "client-settings")[0]["body"].as_str().unwrap()).unwrap();
    for key in ["networkPortRandom", "throttleMaxUploads", "throttleMaxUploadsGlobal"] {
        assert!(settings.get(key).is_some(), "{key} missing from {settings}");
    }
    assert!(settings["networkLocalAddress"][0].is_string(), "{settings}");

    // Started with Flood's start button: dropseed resumes it.
    let started = &lines_of(&said, "started")[0];
    assert!(!has(started, "torrent--is-stopped"), "{started}");
    d.wait_state(&hashes[1], "downloading", Duration::from_secs(10));

    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a screenshot of {} bytes", png.len());

    // Flood's details view: the file and the tracker, read through dropseed.
    let details = &lines_of(&said, "details")[0];
    assert_eq!(details["status"], 200, "{details}");
    let details: Value = serde_json::from_str(details["body"].as_str().unwrap()).unwrap();
    assert_eq!(details["contents"][0]["filename"], names[2], "{details}");
    let file_percent = details["contents"][0]["percentComplete"].as_f64().unwrap_or(-1.0);
    assert!(file_percent > 0.0 && file_percent <= 100.0, "{details}");
    assert_eq!(details["trackers"][0]["url"], swarm.tracker.announce_url(), "{details}");
    // Its peers tab: the aria2 seeder it downloads from (sync/torrentPeers).
    let peers = details["peers"].as_array().cloned().unwrap_or_default();
    let seeder = peers.iter().find(|p| p["clientVersion"].as_str().is_some_and(|c| c.starts_with("aria2")));
    let seeder = seeder.unwrap_or_else(|| panic!("no aria2 peer in Flood's details: {details}"));
    assert_eq!(seeder["completedPercent"].as_f64(), Some(100.0), "{seeder}");
    assert!(seeder["downloadRate"].as_u64().is_some_and(|r| r > 0), "{seeder}");

    check_requests(&said, &d);
}
