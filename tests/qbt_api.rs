//! The qBittorrent Web API against the real daemon: its security (raw
//! HTTP, so every header is the test's) and the life automation gives a
//! torrent, driven by the PyPI client `qbittorrent-api`
//! (scripts/install-test-deps.sh installs it).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "correct horse";

/// A daemon with the API on a free port; the password hash made by the
/// real `dropseed api hash-password`.
fn daemon_with_api() -> (Dropseed, u16) {
    daemon_with_api_and("")
}

/// The same, with more config (TOML sections) after `[api]`.
fn daemon_with_api_and(more: &str) -> (Dropseed, u16) {
    let phc = hash_of(PASSWORD);
    let port = free_port();
    let mut d = Dropseed::new(&format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\nusername = \"admin\"\npassword_hash = \"{phc}\"\n{more}"
    ));
    d.start();
    wait_for("the API listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).ok());
    (d, port)
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
    let phc = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(phc.starts_with("$pbkdf2-sha256$") && !phc.contains(password), "{phc}");
    phc
}

/// One HTTP/1.1 exchange: status, headers (lowercase names) and body.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

fn exchange(port: u16, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Long enough for queued password checks (debug builds, busy machines).
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    // The server may answer (413) and close before the whole request is
    // sent: that is the point of some tests, so a write error is fine.
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_ascii_lowercase(), body: body.to_string() }
}

struct Req<'a> {
    method: &'a str,
    path: &'a str,
    host: String,
    headers: Vec<String>,
    body: String,
}

impl<'a> Req<'a> {
    fn new(port: u16, method: &'a str, path: &'a str) -> Req<'a> {
        Req { method, path, host: format!("127.0.0.1:{port}"), headers: Vec::new(), body: String::new() }
    }
    fn header(mut self, h: &str) -> Self {
        self.headers.push(h.to_string());
        self
    }
    fn form(mut self, body: &str) -> Self {
        self.headers.push("Content-Type: application/x-www-form-urlencoded".into());
        self.body = body.to_string();
        self
    }
    fn host(mut self, h: &str) -> Self {
        self.host = h.to_string();
        self
    }
    fn send(self, port: u16) -> Reply {
        let mut raw = format!("{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.method, self.path, self.host);
        for h in &self.headers {
            raw.push_str(&format!("{h}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n{}", self.body.len(), self.body));
        exchange(port, raw.as_bytes())
    }
}

fn login(port: u16, password: &str) -> Reply {
    Req::new(port, "POST", "/api/v2/auth/login").form(&format!("username=admin&password={password}")).send(port)
}

fn sid_of(r: &Reply) -> String {
    let line = r.head.lines().find(|l| l.starts_with("set-cookie:")).expect("a cookie");
    let sid = line.split("sid=").nth(1).unwrap().split(';').next().unwrap().trim().to_string();
    assert!(line.contains("httponly") && line.contains("samesite=strict"), "{line}");
    format!("Cookie: SID={sid}")
}

#[test]
fn the_daemon_will_not_serve_the_api_without_a_password_hash() {
    let d = Dropseed::new(&format!("[api]\nlisten = \"127.0.0.1:{}\"\n", free_port()));
    let out = Command::new(dropseed_bin()).arg("run").arg("-c").arg(&d.config).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started");
    assert!(said.contains("api.password_hash") && said.contains("dropseed api hash-password"), "{said}");
}

#[test]
fn only_login_works_without_a_session() {
    let (_d, port) = daemon_with_api();
    for path in ["/api/v2/app/webapiVersion", "/api/v2/torrents/info", "/api/v2/app/preferences"] {
        let r = Req::new(port, "GET", path).send(port);
        assert_eq!((r.status, r.body.as_str()), (403, "Forbidden"), "{path}");
    }
    let r = Req::new(port, "POST", "/api/v2/torrents/delete").form("hashes=all&deleteFiles=true").send(port);
    assert_eq!(r.status, 403);
    let r = Req::new(port, "GET", "/api/v2/torrents/info").header("Cookie: SID=forged").send(port);
    assert_eq!(r.status, 403, "a made-up session");
    let r = Req::new(port, "GET", "/api/v2/torrents/info").header("Authorization: Bearer guessed").send(port);
    assert_eq!(r.status, 403, "a key when none was made");

    assert_eq!(login(port, "wrong").body, "Fails.");
    let ok = login(port, "correct%20horse");
    assert_eq!(ok.body, "Ok.");
    let cookie = sid_of(&ok);
    let r = Req::new(port, "GET", "/api/v2/app/webapiVersion").header(&cookie).send(port);
    assert_eq!((r.status, r.body.as_str()), (200, "2.11.2"));
    let r = Req::new(port, "GET", "/api/v2/app/version").header(&cookie).send(port);
    assert!(r.body.starts_with('v'), "{}", r.body);
    let r = Req::new(port, "POST", "/api/v2/auth/logout").header(&cookie).send(port);
    assert_eq!(r.status, 200);
    let r = Req::new(port, "GET", "/api/v2/torrents/info").header(&cookie).send(port);
    assert_eq!(r.status, 403, "the session ended at logout");
}

#[test]
fn a_rebound_host_and_a_cross_origin_post_are_refused() {
    let (_d, port) = daemon_with_api();
    let cookie = sid_of(&login(port, "correct%20horse"));
    let r =
        Req::new(port, "GET", "/api/v2/torrents/info").header(&cookie).host(&format!("evil.example:{port}")).send(port);
    assert_eq!(r.status, 401, "DNS rebinding: {}", r.body);
    let r = Req::new(port, "POST", "/api/v2/auth/login")
        .host("evil.example")
        .form("username=admin&password=correct%20horse")
        .send(port);
    assert_eq!(r.status, 401, "login through a rebound name");
    let r =
        Req::new(port, "GET", "/api/v2/torrents/info").header(&cookie).host(&format!("localhost:{port}")).send(port);
    assert_eq!(r.status, 200, "localhost is ours");

    let pause = |origin: &str| {
        Req::new(port, "POST", "/api/v2/torrents/stop").header(&cookie).header(origin).form("hashes=all").send(port)
    };
    assert_eq!(pause("Origin: http://evil.example").status, 401, "CSRF from another site");
    assert_eq!(pause("Referer: http://evil.example/x").status, 401, "CSRF by referer");
    assert_eq!(pause(&format!("Origin: http://127.0.0.1:{port}")).status, 200, "our own page");
}

#[test]
fn oversized_bodies_are_refused_before_they_are_read() {
    let (_d, port) = daemon_with_api();
    let cookie = sid_of(&login(port, "correct%20horse"));
    // Announced as 100 MB, but only the headers are sent: the answer must
    // come from the announced length, without waiting for the body.
    for (path, ctype) in [
        ("/api/v2/auth/login", "application/x-www-form-urlencoded"),
        ("/api/v2/torrents/info", "application/x-www-form-urlencoded"),
        ("/api/v2/torrents/addTags", "application/x-www-form-urlencoded"),
        ("/api/v2/torrents/setShareLimits", "application/x-www-form-urlencoded"),
        ("/api/v2/torrents/add", "multipart/form-data; boundary=xyz"),
    ] {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{cookie}\r\nContent-Type: {ctype}\r\n\
             Content-Length: 100000000\r\nConnection: close\r\n\r\nusername=admin&"
        );
        let r = exchange(port, raw.as_bytes());
        assert_eq!(r.status, 413, "{path}: {}", r.body);
    }
    // A form of many small fields, within the byte bound.
    let many = "a=1&".repeat(5000);
    let r = Req::new(port, "POST", "/api/v2/torrents/info").header(&cookie).form(&many).send(port);
    assert_eq!(r.status, 413, "too many fields");
}

/// Whether the server closes `s` (EOF or reset) before `limit`; what it
/// sent first is ignored.
fn closed_by_server(mut s: TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_and_silent_clients_are_let_go() {
    let (_d, port) = daemon_with_api();
    // Connected, never a byte: it must not hold one of the few slots forever.
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Headers trickled and never finished (slowloris).
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /api/v2/app/version HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    // The server's limit is 10 s; 40 s is only the test's patience.
    assert!(closed_by_server(silent, Duration::from_secs(40)), "a silent connection stayed open");
    assert!(closed_by_server(slow, Duration::from_secs(40)), "unfinished headers kept the connection");
}

#[test]
fn repeated_failed_logins_ban_the_address() {
    let (_d, port) = daemon_with_api();
    for _ in 0..5 {
        assert_eq!(login(port, "guess").body, "Fails.");
    }
    let r = login(port, "correct%20horse");
    assert_eq!(r.status, 403, "banned even with the right password: {}", r.body);
    assert!(r.body.contains("banned"), "{}", r.body);
}

#[test]
fn an_api_key_is_accepted_as_bearer() {
    let mut d = Dropseed::new("");
    let port = free_port();
    let phc = dropseed::api::auth::hash_password(PASSWORD);
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{text}\n[api]\nlisten = \"127.0.0.1:{port}\"\npassword_hash = \"{phc}\"\n"))
        .unwrap();
    std::fs::create_dir_all(d.state_dir()).unwrap();
    let out = d.cli(&["api", "new-key"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let stored = std::fs::read_to_string(d.state_dir().join("api-key.sha256")).unwrap();
    assert!(!stored.contains(&key), "only the key's hash is stored");
    d.start();
    wait_for("the API listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).ok());
    let r = Req::new(port, "GET", "/api/v2/torrents/info").header(&format!("Authorization: Bearer {key}")).send(port);
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    let r = Req::new(port, "GET", "/api/v2/torrents/info").header("Authorization: Bearer 0123").send(port);
    assert_eq!(r.status, 403);
}

/// Debian's or pyenv's python3 with `qbittorrentapi` importable.
fn python_with_client() -> Option<String> {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import qbittorrentapi"])
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

#[test]
fn qbittorrent_api_drives_a_torrent_through_its_life() {
    let Some(python) = python_with_client() else { return };
    if !Swarm::tools_present() {
        return;
    }
    let first = Swarm::single("episode.mkv", 3 * 1024 * 1024 + 17, 18, 41);
    let second = Swarm::single("special.mkv", 1024 * 1024 + 5, 16, 42);
    let (d, port) = daemon_with_api();
    let magnet =
        format!("magnet:?xt=urn:btih:{}&dn=special.mkv&tr={}", second.hash, percent(&second.tracker.announce_url()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qbt/life.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("QBT_URL", format!("http://127.0.0.1:{port}"))
        .env("QBT_PASSWORD", PASSWORD)
        .env("QBT_TORRENT", &first.torrent)
        .env("QBT_TORRENT_DATA", first.data.join("episode.mkv"))
        .env("QBT_MAGNET", &magnet)
        .env("QBT_MAGNET_DATA", second.data.join("special.mkv"))
        .env("QBT_EXPECTED_DIR", d.download_dir().join("tv"))
        .env("QBT_WATCH_DIR", d.watch_dir())
        .output()
        .unwrap();
    let said = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let log = d.log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!("the qbittorrent-api script failed:\n{said}\nlog tail (newest first):\n{}", tail.join("\n"));
    }
    assert!(said.contains("LIFE OK"), "{said}");
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("seeding limit reached")).expect("an INFO line for the limit reached");
    assert!(line.contains("level=info") && line.contains("the torrent's own ratio limit"), "{line}");
    // The failed fetch is logged with why, its passkey-like path redacted.
    let log = d.log_text();
    let failed = log.lines().find(|l| l.contains("cannot fetch the .torrent") && l.contains("missing.torrent"));
    let failed = failed.unwrap_or_else(|| panic!("no fetch failure logged:\n{log}"));
    assert!(failed.contains("404") && failed.contains("/dl/***/missing.torrent"), "{failed}");
    assert!(!log.contains("abcdefghijklmnop1234"), "the passkey reached the log");
    assert!(log.contains("not a .torrent file"), "a page that is no .torrent is logged as such");
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `/metrics` on the API's listener: refused without credentials, served to
/// the session cookie and to HTTP Basic, and the text is what Prometheus's
/// own Python parser reads.
#[test]
fn metrics_need_the_api_credentials_and_parse_as_openmetrics() {
    let (_d, port) = daemon_with_api();
    let r = Req::new(port, "GET", "/metrics").send(port);
    assert_eq!(r.status, 401, "no credentials");
    assert!(r.head.contains("www-authenticate: basic"), "{}", r.head);
    let wrong = Req::new(port, "GET", "/metrics").header("Authorization: Basic YWRtaW46d3Jvbmc=").send(port);
    assert_eq!(wrong.status, 401, "admin:wrong");

    let cookie = sid_of(&login(port, "correct%20horse"));
    let by_cookie = Req::new(port, "GET", "/metrics").header(&cookie).send(port);
    assert_eq!(by_cookie.status, 200);
    // admin:correct horse
    let basic = "Authorization: Basic YWRtaW46Y29ycmVjdCBob3JzZQ==";
    for _ in 0..2 {
        let r = Req::new(port, "GET", "/metrics").header(basic).send(port);
        assert_eq!(r.status, 200, "HTTP Basic, as a Prometheus scrape config sends it");
        assert!(r.head.contains("content-type: application/openmetrics-text"), "{}", r.head);
    }
    let mut py = Command::new("python3")
        .args(["-c", "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nprint(len(list(p(sys.stdin.read()))))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-test-deps.sh installs prometheus-client)");
    py.stdin.take().unwrap().write_all(by_cookie.body.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    let families: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    assert!(out.status.success() && families > 10, "the parser read {families} families of:\n{}", by_cookie.body);
}

/// A delete whose client hangs up at once still runs to its end: the
/// torrent is gone from `torrents/info` and can be added again (`Ok.`, not
/// `Fails.` from a slot left reserved), time after time.
#[test]
fn a_delete_dropped_by_its_client_is_carried_out_whole() {
    let (_d, port) = daemon_with_api();
    let cookie = sid_of(&login(port, "correct%20horse"));
    let origin = format!("Origin: http://127.0.0.1:{port}");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let add = || {
        Req::new(port, "POST", "/api/v2/torrents/add")
            .header(&cookie)
            .header(&origin)
            .form(&format!("urls={}", percent(&format!("magnet:?xt=urn:btih:{hash}&dn=x"))))
            .send(port)
    };
    let listed = || Req::new(port, "GET", "/api/v2/torrents/info").header(&cookie).send(port).body.contains(hash);
    let main = Req::new(port, "GET", "/api/v2/sync/maindata").header(&cookie).send(port);
    let main: serde_json::Value = serde_json::from_str(&main.body).unwrap();
    assert!(main["server_state"]["free_space_on_disk"].as_u64().unwrap() > 0, "{main}");
    for round in 0..10 {
        // A removal still under way holds the slot for a moment (the add
        // says `Fails.`); one left reserved would hold it forever.
        let r = wait_for("a re-add after a dropped delete", Duration::from_secs(20), || {
            let r = add();
            (r.body == "Ok.").then_some(r)
        });
        assert_eq!(r.status, 200, "round {round}");
        assert!(listed(), "round {round}: added but not listed");
        let body = "hashes=all&deleteFiles=true";
        let raw = format!(
            "POST /api/v2/torrents/delete HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{cookie}\r\n{origin}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        drop(s);
        // The dropped delete either never began (hyper saw the close first)
        // or ran to its end, never half-way: a delete of our own then
        // finishes the job, and the next round's re-add must be taken.
        wait_for("the torrent deleted", Duration::from_secs(20), || {
            if !listed() {
                return Some(());
            }
            Req::new(port, "POST", "/api/v2/torrents/delete").header(&cookie).header(&origin).form(body).send(port);
            None
        });
    }
}

/// Many wrong logins at once from one address get no more guesses than
/// one after another: the ban is checked again once a password check slot
/// is free (two checks run at once, so the one beside the fifth may still
/// be answered: six at most).
#[test]
fn concurrent_failed_logins_get_five_guesses_only() {
    let (_d, port) = daemon_with_api();
    let tries: Vec<_> = (0..12).map(|_| std::thread::spawn(move || login(port, "guess"))).collect();
    let answers: Vec<Reply> = tries.into_iter().map(|t| t.join().unwrap()).collect();
    let guessed = answers.iter().filter(|r| r.body == "Fails.").count();
    assert!(guessed <= 6, "{guessed} guesses checked");
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert!(answers.iter().all(|r| r.body == "Fails." || r.status == 403), "{statuses:?}");
}

/// A new password hash sent with SIGHUP takes effect at once: the old
/// password and the sessions opened with it stop working.
#[test]
fn a_reloaded_password_hash_replaces_the_old_one_and_its_sessions() {
    let (d, port) = daemon_with_api();
    let cookie = sid_of(&login(port, "correct%20horse"));
    let version = |c: &str| Req::new(port, "GET", "/api/v2/app/webapiVersion").header(c).send(port).status;
    assert_eq!(version(&cookie), 200);
    let text = std::fs::read_to_string(&d.config).unwrap();
    let old = text.lines().find(|l| l.starts_with("password_hash")).unwrap().to_string();
    let new = format!("password_hash = \"{}\"", hash_of("battery staple"));
    std::fs::write(&d.config, text.replace(&old, &new)).unwrap();
    d.signal(libc::SIGHUP);
    wait_for("the reload", Duration::from_secs(20), || d.log_text().contains("config reloaded").then_some(()));
    assert_eq!(version(&cookie), 403, "a session of the old password");
    assert_eq!(login(port, "correct%20horse").body, "Fails.", "the old password");
    let fresh = login(port, "battery%20staple");
    assert_eq!(fresh.body, "Ok.");
    assert_eq!(version(&sid_of(&fresh)), 200);
}

/// The write side: tags, share limits, categories and the refusals, each
/// answered with a status and a text that names the problem; nothing
/// without a session.
#[test]
fn tags_limits_categories_and_refusals_over_http() {
    let (d, port) = daemon_with_api_and("[categories.films]\n");
    for path in ["addTags", "createTags", "deleteTags", "setShareLimits", "setLocation", "removeCategories"] {
        let r = Req::new(port, "POST", &format!("/api/v2/torrents/{path}")).form("hashes=all&tags=x").send(port);
        assert_eq!(r.status, 403, "{path} without a session");
    }
    let api = Session { port, cookie: sid_of(&login(port, "correct%20horse")) };
    let (post, get) = (|path: &str, form: &str| api.post(path, form), |path: &str| api.get(path));
    let hash = "ab".repeat(20);
    let magnet = format!("magnet:?xt=urn:btih:{hash}%26dn=show");
    let added = post("add", &format!("urls={magnet}&tags=sonarr,%20cross-seed&ratioLimit=1.5&seedingTimeLimit=-1"));
    assert_eq!((added.status, added.body.as_str()), (200, "Ok."));
    let info: serde_json::Value = serde_json::from_str(&get("info").body).unwrap();
    let t = &info[0];
    assert_eq!(t["tags"], "cross-seed, sonarr");
    assert_eq!((t["ratio_limit"].as_f64(), t["seeding_time_limit"].as_i64()), (Some(1.5), Some(-1)));
    assert_eq!((t["max_ratio"].as_f64(), t["max_seeding_time"].as_i64()), (Some(1.5), Some(-1)));
    assert_eq!(get("tags").body, r#"["cross-seed","sonarr"]"#);
    let shown = d.torrent(&hash).expect("in status --json");
    assert_eq!(shown["tags"], serde_json::json!(["cross-seed", "sonarr"]), "status --json shows the tags");
    let text = String::from_utf8_lossy(&d.cli(&["status", &hash]).stdout).to_string();
    assert!(text.contains("tags      cross-seed, sonarr") && text.contains("limits    ratio 1.5"), "{text}");

    bad_tags_are_refused(&api, &d, &hash);
    share_limits_are_checked_and_kept(&api, &d, &hash);
    paths_outside_the_folders_are_refused(&api, &d, &hash);
    missing_features_are_refused_plainly(&api, &d, &hash);
    categories_are_managed_safely(&api, &d, &hash);
    the_shown_name_changes(&api, &d, &hash);
    set_preferences_applies_what_dropseed_can(&api, &d, &hash);

    // Tags, limits and the name survive a restart.
    let mut d = d;
    d.stop();
    d.start();
    wait_for("the API listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).ok());
    let cookie = sid_of(&login(port, "correct%20horse"));
    let info = Req::new(port, "GET", &format!("/api/v2/torrents/info?hashes={hash}")).header(&cookie).send(port).body;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        (info[0]["tags"].as_str(), info[0]["seeding_time_limit"].as_i64()),
        (Some("cross-seed, sonarr"), Some(30))
    );
    assert_eq!(info[0]["name"], "Shown Name");
    assert_eq!(info[0]["category"], "films", "the category set survives a restart");
    let tags = Req::new(port, "GET", "/api/v2/torrents/tags").header(&cookie).send(port).body;
    assert_eq!(tags, r#"["cross-seed","keep","sonarr","spare"]"#, "removeTags keeps a tag known, deleteTags not");
}

/// A logged-in API session: `torrents/...` requests with its cookie.
struct Session {
    port: u16,
    cookie: String,
}

impl Session {
    fn post(&self, path: &str, form: &str) -> Reply {
        Req::new(self.port, "POST", &format!("/api/v2/torrents/{path}")).header(&self.cookie).form(form).send(self.port)
    }

    fn get(&self, path: &str) -> Reply {
        Req::new(self.port, "GET", &format!("/api/v2/torrents/{path}")).header(&self.cookie).send(self.port)
    }
}

/// Bad tags: 400 naming the problem; nothing changed.
fn bad_tags_are_refused(api: &Session, _d: &Dropseed, hash: &str) {
    let (post, get) = (|path: &str, form: &str| api.post(path, form), |path: &str| api.get(path));
    let (port, cookie) = (api.port, &api.cookie);
    for (form, says) in [
        ("tags=new%0Aline", "newline"),
        ("tags=bell%07", "control character"),
        (&*format!("tags={}", "x".repeat(200)), "longer than"),
        ("tags=", "no tag"),
    ] {
        let r = post("addTags", &format!("hashes={hash}&{form}"));
        assert_eq!(r.status, 400, "{form}: {}", r.body);
        assert!(r.body.contains(says), "{form}: {}", r.body);
    }
    let r = post("add", &format!("urls=magnet:?xt=urn:btih:{}&tags=a%0Ab", "cd".repeat(20)));
    assert!(r.status == 400 && r.body.contains("newline"), "{}", r.body);
    assert_eq!(post("addTags", &format!("hashes={hash}&tags=keep,drop")).status, 200);
    assert_eq!(post("addTags", &format!("hashes={}&tags=ghost", "0".repeat(40))).status, 200, "unknown: skipped");
    assert_eq!(get("tags").body, r#"["cross-seed","drop","keep","sonarr"]"#);
    let tagged = |tag: &str| {
        let list: serde_json::Value = serde_json::from_str(&get(&format!("info?tag={tag}")).body).unwrap();
        list.as_array().unwrap().len()
    };
    assert_eq!((tagged("keep"), tagged("kee"), tagged("")), (1, 0, 0));
    assert_eq!(post("removeTags", &format!("hashes={hash}&tags=keep")).status, 200);
    assert_eq!(post("deleteTags", "tags=drop").status, 200);
    let info: serde_json::Value = serde_json::from_str(&get("info").body).unwrap();
    assert_eq!(info[0]["tags"], "cross-seed, sonarr");
    assert_eq!(post("createTags", "tags=spare").status, 200);
    assert!(get("tags").body.contains("spare"));
    let main = Req::new(port, "GET", "/api/v2/sync/maindata").header(cookie).send(port).body;
    let main: serde_json::Value = serde_json::from_str(&main).unwrap();
    assert_eq!(main["tags"], serde_json::json!(["cross-seed", "keep", "sonarr", "spare"]), "web UIs see the tags");
}

/// Share limits.
fn share_limits_are_checked_and_kept(api: &Session, _d: &Dropseed, hash: &str) {
    let (post, get) = (|path: &str, form: &str| api.post(path, form), |path: &str| api.get(path));
    let r = post("setShareLimits", &format!("hashes={hash}&ratioLimit=lots&seedingTimeLimit=1"));
    assert!(r.status == 400 && r.body.contains("ratioLimit"), "{}", r.body);
    let r = post("setShareLimits", &format!("hashes={hash}&ratioLimit=-5&seedingTimeLimit=1"));
    assert!(r.status == 400 && r.body.contains("-2 (global)"), "{}", r.body);
    let r = post("setShareLimits", &format!("hashes={hash}&ratioLimit=1"));
    assert!(r.status == 400 && r.body.contains("required"), "{}", r.body);
    assert_eq!(post("setShareLimits", &format!("hashes={hash}&ratioLimit=-2&seedingTimeLimit=30")).status, 200);
    let info: serde_json::Value = serde_json::from_str(&get("info").body).unwrap();
    assert_eq!((info[0]["ratio_limit"].as_f64(), info[0]["seeding_time_limit"].as_i64()), (Some(-2.0), Some(30)));
    assert_eq!((info[0]["max_ratio"].as_f64(), info[0]["max_seeding_time"].as_i64()), (Some(-1.0), Some(30)));
}

/// Paths: an escape is 400 naming the allowed folders; inside, a move is refused.
fn paths_outside_the_folders_are_refused(api: &Session, d: &Dropseed, hash: &str) {
    let post = |path: &str, form: &str| api.post(path, form);
    let r = post("setLocation", &format!("hashes={hash}&location=/etc"));
    assert!(r.status == 400 && r.body.contains("outside the folders"), "{}", r.body);
    let escape = format!("{}/../../etc", d.download_dir().display());
    let r = post("setLocation", &format!("hashes={hash}&location={escape}"));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post("setLocation", &format!("hashes={hash}&location={}/x", d.download_dir().display()));
    assert!(r.status == 409 && r.body.contains("no data to move"), "{}", r.body);
    let r = post("add", &format!("urls=magnet:?xt=urn:btih:{}&savepath=/etc", "cd".repeat(20)));
    assert!(r.status == 400 && r.body.contains("outside the folders"), "{}", r.body);
}

/// Refused until dropseed has them; an unknown hash is 404 first.
fn missing_features_are_refused_plainly(api: &Session, _d: &Dropseed, hash: &str) {
    let post = |path: &str, form: &str| api.post(path, form);
    for path in ["renameFile", "renameFolder", "filePrio"] {
        assert_eq!(post(path, &format!("hash={}&id=0&priority=0", "0".repeat(40))).status, 404, "{path}");
        let r = post(path, &format!("hash={hash}&id=0&priority=0&oldPath=a&newPath=b"));
        assert_eq!(r.status, 409, "{path}: {}", r.body);
    }
    assert_eq!(post("setForceStart", &format!("hashes={}&value=true", "0".repeat(40))).status, 404);
    let r = post("setUploadLimit", &format!("hashes={hash}&limit=lots"));
    assert!(r.status == 400 && r.body.contains("limit"), "{}", r.body);
}

/// Categories: the config's stay, a used one stays, an unused one goes.
fn categories_are_managed_safely(api: &Session, d: &Dropseed, hash: &str) {
    let post = |path: &str, form: &str| api.post(path, form);
    let (port, cookie) = (api.port, &api.cookie);
    let r = post("removeCategories", "categories=films");
    assert!(r.status == 409 && r.body.contains("config file"), "{}", r.body);
    let r = post("createCategory", "category=tv&savePath=/etc");
    assert!(r.status == 400 && r.body.contains("outside the folders"), "{}", r.body);
    let r = post("createCategory", &format!("category=tv&savePath={}/films", d.download_dir().display()));
    assert!(r.status == 400 && r.body.contains("puts this category's torrents in"), "{}", r.body);
    assert!(!d.watch_dir().join("tv").exists(), "nothing made");
    assert_eq!(post("createCategory", "category=tv").status, 200);
    assert_eq!(post("createCategory", "category=old").status, 200);
    let r = post("editCategory", "category=tv&savePath=/srv/elsewhere");
    assert!(r.status == 409 && r.body.contains("[categories.tv] download_dir"), "{}", r.body);
    let own = d.download_dir().join("tv");
    assert_eq!(post("editCategory", &format!("category=tv&savePath={}", own.display())).status, 200);
    assert_eq!(post("editCategory", "category=nope&savePath=").status, 409);
    let r = post("add", &format!("urls=magnet:?xt=urn:btih:{}&category=tv", "ef".repeat(20)));
    assert_eq!(r.body, "Ok.");
    let r = post("removeCategories", "categories=tv");
    assert!(r.status == 409 && r.body.contains("still has 1 torrent"), "{}", r.body);
    assert_eq!(post("removeCategories", "categories=old").status, 200);
    // The label moves (the data would stay where it is); an unknown
    // category is refused as qBittorrent refuses it.
    let r = post("setCategory", &format!("hashes={hash}&category=nope"));
    assert!(r.status == 409 && r.body.contains("Incorrect category name"), "{}", r.body);
    assert_eq!(post("setCategory", &format!("hashes={hash}&category=films")).status, 200);
    let info: serde_json::Value = serde_json::from_str(&api.get(&format!("info?hashes={hash}")).body).unwrap();
    assert_eq!(info[0]["category"], "films");
    assert!(!d.watch_dir().join("old").exists() && d.watch_dir().join("tv").is_dir());
    let cats = Req::new(port, "GET", "/api/v2/torrents/categories").header(cookie).send(port).body;
    assert!(!cats.contains("\"old\"") && cats.contains("\"tv\""), "{cats}");
}

/// The name shown (the files keep theirs).
fn the_shown_name_changes(api: &Session, _d: &Dropseed, hash: &str) {
    let post = |path: &str, form: &str| api.post(path, form);
    assert_eq!(post("rename", &format!("hash={}&name=x", "0".repeat(40))).status, 404);
    let r = post("rename", &format!("hash={hash}&name=two%0Alines"));
    assert!(r.status == 400 && r.body.contains("control character"), "{}", r.body);
    assert_eq!(post("rename", &format!("hash={hash}&name=")).status, 400);
    assert_eq!(post("rename", &format!("hash={hash}&name=Shown%20Name")).status, 200);
}

/// setPreferences and transfer/set*Limit change the running config (not
/// the file): what dropseed honours shows in the preferences, the rest is
/// named in the log, a bad value is 400 naming its field.
fn set_preferences_applies_what_dropseed_can(api: &Session, d: &Dropseed, _hash: &str) {
    let (port, cookie) = (api.port, &api.cookie);
    let file = std::fs::read_to_string(&d.config).unwrap();
    let set = |json: &str| {
        let form = format!("json={}", percent(json));
        Req::new(port, "POST", "/api/v2/app/setPreferences").header(cookie).form(&form).send(port)
    };
    let prefs = || -> serde_json::Value {
        serde_json::from_str(&Req::new(port, "GET", "/api/v2/app/preferences").header(cookie).send(port).body).unwrap()
    };
    let r = set(r#"{"max_ratio_enabled":true,"max_ratio":1,"dl_limit":2048,"upnp":true,"queueing_enabled":false}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let p = prefs();
    assert_eq!((&p["max_ratio_enabled"], &p["max_ratio"], &p["dl_limit"]), (&true.into(), &1.0.into(), &2048.into()));
    assert_eq!((&p["queueing_enabled"], &p["upnp"]), (&false.into(), &false.into()));
    let log = d.wait_log("app/setPreferences ignored", Duration::from_secs(10));
    let line = log.lines().find(|l| l.contains("app/setPreferences ignored")).unwrap();
    assert!(line.contains("fields=upnp"), "{line}");
    let r = api.post("topPrio", "hashes=all");
    assert!(r.status == 409 && r.body.contains("queueing"), "queueing off: {}", r.body);
    let r = set(r#"{"dl_limit":"fast"}"#);
    assert!(r.status == 400 && r.body.contains("dl_limit"), "{}", r.body);
    assert_eq!(prefs()["dl_limit"], 2048, "nothing changed by a refused request");
    let r = Req::new(port, "POST", "/api/v2/transfer/setUploadLimit").header(cookie).form("limit=4096").send(port);
    assert_eq!(r.status, 200);
    let r = Req::new(port, "GET", "/api/v2/transfer/uploadLimit").header(cookie).send(port);
    assert_eq!(r.body, "4096");
    assert_eq!(prefs()["up_limit"], 4096);
    let r = Req::new(port, "POST", "/api/v2/transfer/setDownloadLimit").header(cookie).form("limit=x").send(port);
    assert_eq!(r.status, 400);
    let r = set(r#"{"max_ratio_enabled":false,"queueing_enabled":true,"dl_limit":0,"up_limit":0}"#);
    assert_eq!(r.status, 200);
    assert_eq!(api.post("topPrio", "hashes=all").status, 200, "queueing on again");
    assert_eq!(std::fs::read_to_string(&d.config).unwrap(), file, "the config file is never written");
}

/// A connection from `from` to the API.
fn connect_from(from: &str, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&format!("{from}:0").parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    s.connect(&format!("127.0.0.1:{port}").parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    s.into()
}

/// One address cannot hold every connection slot: past its share, its
/// next connection is closed at once, while another address is served.
#[test]
fn one_address_cannot_take_every_connection() {
    let (_d, port) = daemon_with_api();
    let share = dropseed::api::MAX_PER_ADDRESS;
    assert!(share < dropseed::api::MAX_CONNECTIONS);
    // Each answered once (so the server has taken it) and held open, idle.
    let held: Vec<TcpStream> = (0..share).map(|_| answered_and_kept(connect_from("127.0.0.1", port), port)).collect();
    let extra = connect_from("127.0.0.1", port);
    assert!(closed_by_server(extra, Duration::from_secs(3)), "a connection past the address's share was kept");
    let mut other = connect_from("127.0.0.2", port);
    other
        .write_all(
            format!("GET /api/v2/app/version HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    other.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = other.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "another address was not served: {answer:?}");
    drop(held);
}

/// Sends one request on `s` and reads its answer, leaving it open.
fn answered_and_kept(mut s: TcpStream, port: u16) -> TcpStream {
    s.write_all(format!("GET /api/v2/app/version HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"Forbidden") {
        let n = s.read(&mut buf).expect("an answer");
        assert!(n > 0, "closed before answering: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// `torrents/add` with one `.torrent` file part and a category.
fn add_file(port: u16, cookie: &str, torrent: &[u8], category: &str) -> Reply {
    let mut body = Vec::new();
    body.extend_from_slice(b"--xyz\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\n");
    body.extend_from_slice(category.as_bytes());
    body.extend_from_slice(
        b"\r\n--xyz\r\nContent-Disposition: form-data; name=\"torrents\"; filename=\"t.torrent\"\r\n",
    );
    body.extend_from_slice(b"Content-Type: application/x-bittorrent\r\n\r\n");
    body.extend_from_slice(torrent);
    body.extend_from_slice(b"\r\n--xyz--\r\n");
    let mut raw = format!(
        "POST /api/v2/torrents/add HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{cookie}\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    exchange(port, &raw)
}

/// One torrent's `torrents/info` entry once it seeds, its paths made
/// relative to the daemon's download folder.
fn seeding_info(d: &Dropseed, port: u16, cookie: &str, hash: &str) -> serde_json::Value {
    let mut t = wait_for("seeding", Duration::from_secs(90), || {
        let r = Req::new(port, "GET", &format!("/api/v2/torrents/info?hashes={hash}")).header(cookie).send(port);
        let list: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let t = list.get(0)?.clone();
        matches!(t["state"].as_str(), Some("stalledUP" | "uploading")).then_some(t)
    });
    let root = format!("{}/", d.download_dir().display());
    for key in ["save_path", "content_path", "root_path"] {
        let relative =
            t[key].as_str().unwrap().strip_prefix(&root).unwrap_or("(outside the download folder)").to_string();
        t[key] = relative.into();
    }
    t
}

/// A torrent added through the API in category `tv` and the same torrent
/// dropped into `watch/tv/` end in the same place, with the same
/// `torrents/info` fields but for times, rates and peer counts.
#[test]
fn the_api_and_the_watch_folder_add_alike() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("show.mkv", 2 * 1024 * 1024 + 3, 16, 51);
    let (by_api, api_port) = daemon_with_api();
    let (by_watch, watch_port) = daemon_with_api();
    let api_cookie = sid_of(&login(api_port, "correct%20horse"));
    let watch_cookie = sid_of(&login(watch_port, "correct%20horse"));

    let r = add_file(api_port, &api_cookie, &std::fs::read(&swarm.torrent).unwrap(), "tv");
    assert_eq!((r.status, r.body.as_str()), (200, "Ok."));
    std::fs::create_dir_all(by_watch.watch_dir().join("tv")).unwrap();
    by_watch.drop_file(&swarm.torrent, "tv/show.mkv.torrent");

    let mut a = seeding_info(&by_api, api_port, &api_cookie, &swarm.hash);
    let mut w = seeding_info(&by_watch, watch_port, &watch_cookie, &swarm.hash);
    assert_eq!(a["content_path"], "tv/show.mkv");
    let source = std::fs::read(swarm.data.join("show.mkv")).unwrap();
    for d in [&by_api, &by_watch] {
        assert!(std::fs::read(d.download_dir().join("tv/show.mkv")).unwrap() == source, "the bytes differ");
    }
    // What depends on when and with whom, not on how it was added.
    for key in [
        "state",
        "added_on",
        "completion_on",
        "last_activity",
        "seen_complete",
        "time_active",
        "seeding_time",
        "dlspeed",
        "upspeed",
        "eta",
        "downloaded",
        "uploaded",
        "downloaded_session",
        "uploaded_session",
        "ratio",
        "num_seeds",
        "num_leechs",
        "num_complete",
        "num_incomplete",
        "availability",
        "popularity",
        "reannounce",
    ] {
        a.as_object_mut().unwrap().remove(key);
        w.as_object_mut().unwrap().remove(key);
    }
    assert_eq!(a, w, "torrents/info differs between the API's add and the watch folder's");
}

/// `log/main` serves the daemon's recent log lines in qBittorrent's shape:
/// ids that grow, types by level (2 info, 4 warning, 8 critical), the type
/// filters and `last_known_id`.
#[test]
fn log_main_serves_the_recent_log_lines() {
    let (d, port) = daemon_with_api();
    let api = Session { port, cookie: sid_of(&login(port, "correct%20horse")) };
    let log = |query: &str| {
        let r = Req::new(port, "GET", &format!("/api/v2/log/main?{query}")).header(&api.cookie).send(port);
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str::<Vec<serde_json::Value>>(&r.body).unwrap()
    };
    // A magnet cannot name a folder of data: refused with a WARN.
    let elsewhere = d.download_dir().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let form = format!("urls=magnet:?xt=urn:btih:{}&savepath={}", "cd".repeat(20), elsewhere.display());
    assert_eq!(api.post("add", &form).body, "Fails.");
    d.wait_log("API add refused", Duration::from_secs(10));

    let all = log("");
    assert!(all.len() > 3, "{all:?}");
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "consecutive ids: {ids:?}");
    let listening = all.iter().find(|e| e["message"].as_str().unwrap().contains("qBittorrent API listening"));
    let listening = listening.unwrap_or_else(|| panic!("no listening line in {all:?}"));
    assert_eq!(listening["type"], 2, "an INFO line is type 2: {listening}");
    assert!(listening["timestamp"].as_i64().unwrap() > 1_700_000_000, "{listening}");
    assert!(!listening["message"].as_str().unwrap().contains("level="), "{listening}");

    let warnings = log("normal=false&info=false");
    assert!(!warnings.is_empty() && warnings.iter().all(|e| e["type"] == 4 || e["type"] == 8), "{warnings:?}");
    assert!(warnings.iter().any(|e| e["message"].as_str().unwrap().contains("API add refused")), "{warnings:?}");
    let newest = *ids.last().unwrap();
    let later = log(&format!("last_known_id={newest}"));
    assert!(later.iter().all(|e| e["id"].as_u64().unwrap() > newest), "{later:?}");
}

/// The daemon's peak resident memory so far (VmHWM: a buffer freed at once
/// still counts), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Bodies past the limits, really sent (announced, and chunked without a
/// length), are refused while they stream: the daemon's memory, even at its
/// peak, does not grow with what clients send.
#[test]
fn oversized_bodies_sent_in_full_do_not_raise_the_peak_memory() {
    let (d, port) = daemon_with_api();
    let cookie = sid_of(&login(port, "correct%20horse"));
    let chunk = vec![b'a'; 1 << 20];
    let send = |chunked: bool| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let length = if chunked { "Transfer-Encoding: chunked".to_string() } else { "Content-Length: 33554432".into() };
        let head = format!(
            "POST /api/v2/torrents/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{cookie}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n{length}\r\n\r\n"
        );
        let _ = s.write_all(head.as_bytes());
        // 32 MiB, until the server stops reading (a refused body is not read).
        for _ in 0..32 {
            let sent = if chunked {
                s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|_| s.write_all(&chunk))
                    .and_then(|_| s.write_all(b"\r\n"))
            } else {
                s.write_all(&chunk)
            };
            if sent.is_err() {
                break;
            }
        }
    };
    send(false);
    let before = peak_rss_kib(d.proc.as_ref().unwrap().pid());
    for i in 0..10 {
        send(i % 2 == 0);
    }
    let grown = peak_rss_kib(d.proc.as_ref().unwrap().pid()).saturating_sub(before);
    assert!(grown < 16 << 10, "10 x 32 MiB refused bodies raised the peak memory by {grown} KiB");
    // Still serving.
    let r = Req::new(port, "GET", "/api/v2/app/version").header(&cookie).send(port);
    assert_eq!(r.status, 200);
}

/// Runs a script of tests/qbt with `qbittorrent-api` and these QBT_*
/// variables; fails with its output and the log's tail unless it printed `ok`.
fn run_script(python: &str, d: &Dropseed, port: u16, script: &str, vars: &[(&str, String)], ok: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qbt").join(script);
    let out = Command::new(python)
        .arg(&script)
        .env("QBT_URL", format!("http://127.0.0.1:{port}"))
        .env("QBT_PASSWORD", PASSWORD)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let said = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || !said.contains(ok) {
        let log = d.log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!("{} failed:\n{said}\nlog tail (newest first):\n{}", script.display(), tail.join("\n"));
    }
}

/// `setLocation` moves a seeding torrent's data (a rename on the same
/// filesystem, a verified copy to another), refuses data shared with a
/// cross-seed, and the new place holds after a restart.
#[test]
fn set_location_moves_the_data_and_the_new_place_holds() {
    let Some(python) = python_with_client() else { return };
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let (same_fs, other_fs) = (work.path().join("moved"), work.path().join("other"));
    std::fs::create_dir_all(&same_fs).unwrap();
    let Some(_disk) = small_disk(&other_fs) else { return };
    let allowed = format!("allowed_paths = [\"{}\", \"{}\"]\n", same_fs.display(), other_fs.display());
    let phc = hash_of(PASSWORD);
    let port = free_port();
    let mut d = Dropseed::new(&format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\nusername = \"admin\"\npassword_hash = \"{phc}\"\n{allowed}"
    ));
    // The data is in the download folder already: seeded where it is.
    let data = d.download_dir().join("pack");
    payload(&data.join("a.bin"), 600 * 1024 + 7, 61);
    payload(&data.join("sub/b.bin"), 300 * 1024, 62);
    let original = work.path().join("original");
    payload(&original.join("a.bin"), 600 * 1024 + 7, 61);
    payload(&original.join("sub/b.bin"), 300 * 1024, 62);
    let (torrent, cross) = (work.path().join("pack.torrent"), work.path().join("cross.torrent"));
    mktorrent(&data, "http://127.0.0.1:1/announce", 16, &torrent, &["-c", "from the test"]);
    mktorrent(&data, "http://127.0.0.1:1/announce", 16, &cross, &["-s", "other-tracker"]);
    let (hash, cross_hash) = (info_hash(&torrent), info_hash(&cross));
    d.start();
    wait_for("the API listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).ok());
    let vars = [
        ("QBT_TORRENT", torrent.display().to_string()),
        ("QBT_HASH", hash.clone()),
        ("QBT_CROSS_TORRENT", cross.display().to_string()),
        ("QBT_CROSS_HASH", cross_hash),
        ("QBT_DATA", original.display().to_string()),
        ("QBT_DOWNLOAD_DIR", d.download_dir().display().to_string()),
        ("QBT_SAME_FS", same_fs.display().to_string()),
        ("QBT_OTHER_FS", other_fs.display().to_string()),
        ("QBT_LOG", d.log_dir().join("dropseed.log").display().to_string()),
    ];
    run_script(&python, &d, port, "move.py", &vars, "MOVE OK");
    let log = d.log_text();
    assert_eq!(log.matches("moved to another folder").count(), 4, "each move is logged");
    assert!(log.contains("copy verified and in place"), "the move to the tmpfs was a copy");

    d.stop();
    d.start();
    wait_for("the API listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).ok());
    let cookie = sid_of(&login(port, "correct%20horse"));
    let t = wait_for("seeding from the new place after a restart", Duration::from_secs(30), || {
        let r = Req::new(port, "GET", &format!("/api/v2/torrents/info?hashes={hash}")).header(&cookie).send(port);
        let list: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let t = list.get(0)?.clone();
        matches!(t["state"].as_str(), Some("stalledUP" | "uploading")).then_some(t)
    });
    assert_eq!(t["content_path"].as_str(), Some(other_fs.join("pack").to_str().unwrap()));
    assert_same_tree(&original, &other_fs.join("pack"));
    assert!(!data.exists() && !same_fs.join("pack").exists(), "an old copy stays");
    // The .torrent's comment, creator and date, kept through the restart.
    let r = Req::new(port, "GET", &format!("/api/v2/torrents/properties?hash={hash}")).header(&cookie).send(port);
    let props: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(props["comment"], "from the test");
    assert!(props["created_by"].as_str().unwrap().starts_with("mktorrent"), "{props}");
    let made = props["creation_date"].as_i64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - 600..=now).contains(&made), "creation_date {made}");
}

/// Each torrent's `priority` (its place in the download queue) by hash.
fn priorities(api: &Session) -> std::collections::HashMap<String, (i64, String)> {
    let list: serde_json::Value = serde_json::from_str(&api.get("info").body).unwrap();
    let list = list.as_array().unwrap();
    list.iter()
        .map(|t| {
            let (h, p, s) =
                (t["hash"].as_str().unwrap(), t["priority"].as_i64().unwrap(), t["state"].as_str().unwrap());
            (h.to_string(), (p, s.to_string()))
        })
        .collect()
}

/// Downloads and one slot: the queue's order, changed through the API,
/// decides which starts next, and survives a restart.
#[test]
fn the_queue_order_decides_which_download_starts() {
    if !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    // A and D have no seeder: each holds the slot until it stalls (3 s)
    // and yields it; B and C have one.
    let (a, a_hash, _) = tracked_torrent(&tracker, work.path(), "a.bin", 512 * 1024, 71);
    let (b, b_hash, b_data) = tracked_torrent(&tracker, work.path(), "b.bin", 512 * 1024, 72);
    let (c, c_hash, c_data) = tracked_torrent(&tracker, work.path(), "c.bin", 512 * 1024, 73);
    let (d_torrent, d_hash, _) = tracked_torrent(&tracker, work.path(), "d.bin", 512 * 1024, 74);
    let _seeders =
        [Aria2::seed(&b, &b_data, &work.path().join("b.log")), Aria2::seed(&c, &c_data, &work.path().join("c.log"))];
    tracker.wait_seeders(&b_hash, 1);
    tracker.wait_seeders(&c_hash, 1);
    let (mut d, port) = daemon_with_api_and("[limits]\nmax_active_downloads = 1\nstall_secs = 3\n");
    let api = Session { port, cookie: sid_of(&login(port, "correct%20horse")) };
    let state = |h: &str| priorities(&api).get(h).cloned().unwrap_or_default();
    assert_eq!(add_file(port, &api.cookie, &std::fs::read(&a).unwrap(), "").body, "Ok.");
    wait_for("a holding the slot", Duration::from_secs(20), || {
        matches!(state(&a_hash).1.as_str(), "downloading" | "stalledDL" | "metaDL").then_some(())
    });
    for t in [&b, &c, &d_torrent] {
        assert_eq!(add_file(port, &api.cookie, &std::fs::read(t).unwrap(), "").body, "Ok.");
    }
    let order = || [&a_hash, &b_hash, &c_hash, &d_hash].map(|h| state(h).0);
    wait_for("b, c and d queued in order", Duration::from_secs(20), || (order() == [1, 2, 3, 4]).then_some(()));
    assert_eq!(api.post("topPrio", &format!("hashes={c_hash}")).status, 200);
    assert_eq!(api.post("bottomPrio", &format!("hashes={b_hash}")).status, 200);
    assert_eq!(order(), [2, 4, 1, 3]);
    // When a yields the slot, c (first) gets it, not b (who came first).
    wait_for("c seeding", Duration::from_secs(60), || {
        let (b_now, c_now) = (state(&b_hash).1, state(&c_hash).1);
        assert_eq!(b_now, "queuedDL", "b started before c");
        matches!(c_now.as_str(), "stalledUP" | "uploading").then_some(())
    });
    // d has the slot now (a yielded it, b is last); all held before b's turn.
    assert_eq!(api.post("stop", &format!("hashes={a_hash}|{b_hash}|{d_hash}")).status, 200);
    assert_eq!(state(&b_hash).1, "stoppedDL", "b still had not started");
    assert_eq!(state(&c_hash).0, 0, "a complete torrent leaves the queue");
    assert_eq!(api.post("increasePrio", &format!("hashes={b_hash}")).status, 200);
    assert_eq!([&a_hash, &b_hash, &d_hash].map(|h| state(h).0), [1, 2, 3]);
    // Held, they keep their places across a restart.
    d.stop();
    d.start();
    wait_for("the API listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).ok());
    let api = Session { port, cookie: sid_of(&login(port, "correct%20horse")) };
    let p = priorities(&api);
    assert_eq!([&a_hash, &b_hash, &d_hash].map(|h| p[h].0), [1, 2, 3], "the order after a restart: {p:?}");
    assert_eq!(api.post("decreasePrio", &format!("hashes={a_hash}")).status, 200);
    let p = priorities(&api);
    assert_eq!([&a_hash, &b_hash, &d_hash].map(|h| p[h].0), [2, 1, 3]);
}

/// One download holds the only slot; a second, queued and then stopped,
/// is force-started: it resumes, downloads beside the first (`forcedDL`)
/// without taking its slot, completes (`forcedUP`), and stays forced
/// across a restart until `value=false` clears it.
#[test]
fn a_forced_start_downloads_outside_the_queue_and_is_kept() {
    if !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    // A has no seeder: it holds the slot (it never stalls in this test).
    let (a, a_hash, _) = tracked_torrent(&tracker, work.path(), "a.bin", 512 * 1024, 91);
    let (b, b_hash, b_data) = tracked_torrent(&tracker, work.path(), "b.bin", 1024 * 1024, 92);
    let _seeder = Aria2::seed(&b, &b_data, &work.path().join("b.log"));
    tracker.wait_seeders(&b_hash, 1);
    let (mut d, port) = daemon_with_api_and("[limits]\nmax_active_downloads = 1\nstall_secs = 600\n");
    let api = Session { port, cookie: sid_of(&login(port, "correct%20horse")) };
    let info = |api: &Session, h: &str| {
        let list: serde_json::Value = serde_json::from_str(&api.get(&format!("info?hashes={h}")).body).unwrap();
        list[0].clone()
    };
    let state = |api: &Session, h: &str| info(api, h)["state"].as_str().unwrap_or_default().to_string();
    assert_eq!(add_file(port, &api.cookie, &std::fs::read(&a).unwrap(), "").body, "Ok.");
    wait_for("a holding the slot", Duration::from_secs(20), || {
        matches!(state(&api, &a_hash).as_str(), "downloading" | "stalledDL").then_some(())
    });
    assert_eq!(add_file(port, &api.cookie, &std::fs::read(&b).unwrap(), "").body, "Ok.");
    wait_for("b queued", Duration::from_secs(20), || (state(&api, &b_hash) == "queuedDL").then_some(()));
    assert_eq!(api.post("stop", &format!("hashes={b_hash}")).status, 200);
    wait_for("b stopped", Duration::from_secs(20), || (state(&api, &b_hash) == "stoppedDL").then_some(()));
    assert_eq!(api.post("setForceStart", &format!("hashes={}&value=true", "0".repeat(40))).status, 404);
    // Its own limit (256 KiB/s) makes it download for seconds: forcedDL is seen.
    assert_eq!(api.post("setDownloadLimit", &format!("hashes={b_hash}&limit=262144")).status, 200);
    let r = api.post("setForceStart", &format!("hashes={b_hash}&value=true"));
    assert_eq!(r.status, 200, "{}", r.body);
    let mut seen = std::collections::BTreeSet::new();
    let done = wait_for("b downloaded, forced", Duration::from_secs(90), || {
        let t = info(&api, &b_hash);
        seen.insert(t["state"].as_str().unwrap_or_default().to_string());
        let a_now = state(&api, &a_hash);
        assert!(matches!(a_now.as_str(), "downloading" | "stalledDL"), "a lost its slot: {a_now}");
        (t["state"] == "forcedUP").then_some(t)
    });
    assert_eq!(done["force_start"], true, "{done}");
    assert!(seen.contains("forcedDL"), "{seen:?}");
    assert!(
        seen.iter().all(|s| matches!(
            s.as_str(),
            "stoppedDL" | "checkingDL" | "queuedDL" | "forcedDL" | "moving" | "forcedUP"
        )),
        "{seen:?}"
    );
    assert_same_tree(&b_data, &d.download_dir());
    // Kept across a restart.
    d.stop();
    d.start();
    wait_for("the API listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).ok());
    let api = Session { port, cookie: sid_of(&login(port, "correct%20horse")) };
    let t = wait_for("b forced after the restart", Duration::from_secs(30), || {
        let t = info(&api, &b_hash);
        (t["state"] == "forcedUP").then_some(t)
    });
    assert_eq!(t["force_start"], true);
    let maindata = |rid: u64| {
        let r = Req::new(port, "GET", &format!("/api/v2/sync/maindata?rid={rid}")).header(&api.cookie).send(port);
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()
    };
    let rid = maindata(0)["rid"].as_u64().unwrap();
    // `all` clears it: b seeds as any other, a still downloads.
    assert_eq!(api.post("setForceStart", "hashes=all&value=false").status, 200);
    let t = wait_for("b no longer forced", Duration::from_secs(20), || {
        let t = info(&api, &b_hash);
        matches!(t["state"].as_str(), Some("stalledUP" | "uploading")).then_some(t)
    });
    assert_eq!(t["force_start"], false);
    let delta = maindata(rid);
    assert_eq!(delta["torrents"][&b_hash]["force_start"], false, "sync/maindata carries the change: {delta}");
    assert!(matches!(state(&api, &a_hash).as_str(), "downloading" | "stalledDL"));
}

/// A torrent's own upload limit, set through the API, is kept across a
/// restart and holds: a leecher takes its 1 MiB at about 128 KiB/s.
#[test]
fn a_torrents_own_upload_limit_is_kept_and_holds() {
    if !Swarm::tools_present() {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let (torrent, hash, data) = tracked_torrent(&tracker, work.path(), "limited.bin", 1024 * 1024, 81);
    let (mut d, port) = daemon_with_api();
    payload(&d.download_dir().join("limited.bin"), 1024 * 1024, 81);
    let api = Session { port, cookie: sid_of(&login(port, "correct%20horse")) };
    assert_eq!(add_file(port, &api.cookie, &std::fs::read(&torrent).unwrap(), "").body, "Ok.");
    seeding_info(&d, port, &api.cookie, &hash);
    assert_eq!(api.post("setUploadLimit", &format!("hashes={hash}&limit=131072")).status, 200);
    let shown = api.post("uploadLimit", &format!("hashes={hash}")).body;
    assert_eq!(shown, format!("{{\"{hash}\":131072}}"));
    d.stop();
    d.start();
    wait_for("the API listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).ok());
    let api = Session { port, cookie: sid_of(&login(port, "correct%20horse")) };
    let info = seeding_info(&d, port, &api.cookie, &hash);
    assert_eq!((info["up_limit"].as_i64(), info["dl_limit"].as_i64()), (Some(131072), Some(0)), "{info}");
    tracker.wait_seeders(&hash, 1);
    let leech_dir = work.path().join("leech");
    let mut leech = Aria2::leech(&torrent, &leech_dir, &work.path().join("leech.log"));
    // From the first byte dropseed counted as uploaded to the leecher's end.
    let uploaded = || {
        let r = Req::new(port, "GET", &format!("/api/v2/torrents/info?hashes={hash}")).header(&api.cookie).send(port);
        let list: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        list[0]["uploaded"].as_u64().unwrap()
    };
    wait_for("the upload to begin", Duration::from_secs(60), || (uploaded() > 0).then_some(()));
    let started = std::time::Instant::now();
    assert!(leech.wait_exit(Duration::from_secs(60)), "the leecher failed");
    let took = started.elapsed().as_secs_f64();
    assert_same_tree(&data, &leech_dir);
    // 1 MiB at 128 KiB/s: 8 s, less the first 100 ms of burst and what
    // went before the first look (unlimited, aria2 takes about 2 s here).
    assert!(took >= 6.0, "1 MiB uploaded in {took:.1} s: the limit did not hold");
}
