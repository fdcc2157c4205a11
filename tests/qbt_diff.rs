//! A differential test of the qBittorrent Web API: the same
//! `qbittorrent-api` script (tests/qbt/diff.py) drives Debian's
//! `qbittorrent-nox` (the real thing, API 2.8) and dropseed, both seeding
//! one small multi-file torrent from the same data in category `tv`. The
//! JSON of the read endpoints must have qbittorrent-nox's fields with its
//! types, and the states must agree at each step; a failure prints every
//! difference.

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "correct horse";

/// Debian's or pyenv's python3 with `qbittorrentapi` importable.
fn python_with_client() -> Option<String> {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import qbittorrentapi, requests"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py.to_string());
        }
    }
    missing("the PyPI package qbittorrent-api is missing (scripts/install-test-deps.sh)");
    None
}

/// qbittorrent-nox, headless in a profile of its own, its Web UI on
/// `web_port` without a login from localhost.
fn start_qbittorrent(work: &Path, save: &Path, web_port: u16) -> Proc {
    let config = work.join("profile/qBittorrent/config");
    std::fs::create_dir_all(&config).unwrap();
    let conf = format!(
        "[LegalNotice]\nAccepted=true\n\n[BitTorrent]\nSession\\DHTEnabled=false\nSession\\LSDEnabled=false\n\
         Session\\PeXEnabled=false\nSession\\Port={peer}\nSession\\DefaultSavePath={save}\n\n\
         [Preferences]\nWebUI\\Port={web_port}\nWebUI\\Address=127.0.0.1\nWebUI\\LocalHostAuth=false\n\
         WebUI\\CSRFProtection=false\n",
        peer = free_port(),
        save = save.display(),
    );
    std::fs::write(config.join("qBittorrent.conf"), conf).unwrap();
    let log = std::fs::File::create(work.join("qbittorrent.log")).unwrap();
    let child = Command::new("qbittorrent-nox")
        .arg(format!("--profile={}", work.join("profile").display()))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start qbittorrent-nox");
    let proc = Proc(child);
    wait_for("qbittorrent-nox's Web UI", Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", web_port)).ok());
    proc
}

/// The PHC string the real `dropseed api hash-password` makes.
fn hash_of(password: &str) -> String {
    let mut hasher = Command::new(dropseed_bin())
        .args(["api", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    hasher.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    String::from_utf8(hasher.wait_with_output().unwrap().stdout).unwrap().trim().to_string()
}

/// A small multi-file torrent: files in a subfolder, one not a whole piece.
fn multi_file_data(root: &Path) -> PathBuf {
    let pack = root.join("pack");
    payload(&pack.join("a.bin"), 300 * 1024 + 7, 1);
    payload(&pack.join("sub/b.bin"), 64 * 1024, 2);
    payload(&pack.join("sub/deeper/c.txt"), 1000, 3);
    pack
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

#[test]
fn qbittorrent_api_sees_dropseed_as_it_sees_qbittorrent_nox() {
    let Some(python) = python_with_client() else { return };
    if !require("qbittorrent-nox", "qbittorrent-nox") || !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let pack = multi_file_data(&work.path().join("data"));
    let torrent = work.path().join("pack.torrent");
    mktorrent(&pack, &tracker.announce_url(), 16, &torrent, &[]);
    let hash = info_hash(&torrent);
    tracker.allow(&hash);

    // The same data where each will look for it.
    let ref_save = work.path().join("qbt-tv");
    std::fs::create_dir_all(&ref_save).unwrap();
    copy_tree(&pack, &ref_save);
    let web_port = free_port();
    let _qbt = start_qbittorrent(work.path(), &ref_save, web_port);

    let api_port = free_port();
    let mut d = Dropseed::new(&format!(
        "[api]\nlisten = \"127.0.0.1:{api_port}\"\nusername = \"admin\"\npassword_hash = \"{}\"\n",
        hash_of(PASSWORD)
    ));
    let ds_save = d.download_dir().join("tv");
    std::fs::create_dir_all(&ds_save).unwrap();
    copy_tree(&pack, &ds_save);
    d.start();
    wait_for("the API listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", api_port)).ok());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qbt/diff.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("DIFF_TORRENT", &torrent)
        .env("DIFF_HASH", &hash)
        .env("DIFF_REF_URL", format!("http://127.0.0.1:{web_port}"))
        .env("DIFF_REF_SAVE", &ref_save)
        .env("DIFF_DS_URL", format!("http://127.0.0.1:{api_port}"))
        .env("DIFF_DS_PASSWORD", PASSWORD)
        .env("DIFF_DS_SAVE", &ds_save)
        .output()
        .unwrap();
    let said = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("DIFF OK"), "{said}");
}
