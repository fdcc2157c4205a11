//! The daemon as an admin installs it: where the config and its paths are
//! found, startup failures in the log, `add` of a file the daemon cannot
//! read, folder trouble, the umask and the control socket's group. The real
//! binary throughout; some tests run a process as `nobody` to see what a
//! second user sees (the tests run as root).

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The binary with a clean environment: no DROPSEED_CONFIG leaking in.
fn bin() -> Command {
    let mut c = Command::new(dropseed_bin());
    c.env_remove("DROPSEED_CONFIG").env("NO_COLOR", "1");
    c
}

/// The binary where another user (nobody) can run it: the build folder may
/// sit where only root can enter (a clone under /root, a 0700 temp dir).
/// One copy per test process, in a folder the copies of earlier runs are
/// cleared from.
fn bin_for_others() -> Command {
    use std::os::unix::fs::PermissionsExt;
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let path = COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join("dropseed-test-bin");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join(format!("dropseed-{}", std::process::id()));
        std::fs::copy(dropseed_bin(), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    });
    let mut c = Command::new(path);
    c.env_remove("DROPSEED_CONFIG").env("NO_COLOR", "1");
    c
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A config in `dir` whose paths are all relative to it.
fn relative_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let config = dir.join("dropseed.toml");
    std::fs::write(
        &config,
        format!(
            "[paths]\nwatch_dir = \"watch\"\ndownload_dir = \"downloads\"\nstate_dir = \"state\"\nlog_dir = \"logs\"\n{extra}\n\
             [network]\nlisten_port = {port}\nlisten_address = \"127.0.0.1\"\n[dht]\nenabled = false\n"
        ),
    )
    .unwrap();
    config
}

/// Starts `cmd` (a daemon) and waits for its control socket.
fn start_daemon(mut cmd: Command, socket: &Path, console: &Path) -> Proc {
    let log = std::fs::File::create(console).unwrap();
    let child = cmd.stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("start dropseed");
    let mut p = Proc(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Some(status) = p.0.try_wait().unwrap() {
            panic!("dropseed exited ({status}): {}", std::fs::read_to_string(console).unwrap_or_default());
        }
        assert!(std::time::Instant::now() < deadline, "no control socket at {}", socket.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

#[test]
fn relative_paths_are_the_config_files_and_the_cli_finds_the_daemon_from_anywhere() {
    let conf_dir = tempdir();
    let elsewhere = tempdir();
    let config = relative_config(conf_dir.path(), free_port(), "");
    // The daemon is started in another directory, as systemd or a shell would.
    let mut run = bin();
    run.current_dir(elsewhere.path()).arg("run").arg("-c").arg(&config);
    let socket = conf_dir.path().join("state/control.sock");
    let _daemon = start_daemon(run, &socket, &conf_dir.path().join("console.log"));
    for d in ["watch", "downloads", "state", "logs"] {
        assert!(conf_dir.path().join(d).is_dir(), "{d} is made beside the config");
        assert!(!elsewhere.path().join(d).exists(), "{d} is not made in the working directory");
    }
    // The CLI from a third directory: with -c, and with DROPSEED_CONFIG alone.
    let third = tempdir();
    let out = bin().current_dir(third.path()).arg("status").arg("-c").arg(&config).output().unwrap();
    assert!(out.status.success(), "status -c from elsewhere: {}", text(&out));
    let out = bin().current_dir(third.path()).env("DROPSEED_CONFIG", &config).arg("status").output().unwrap();
    assert!(out.status.success(), "status with DROPSEED_CONFIG: {}", text(&out));
    // A relative -c is taken from the CLI's working directory.
    let out = bin().current_dir(conf_dir.path()).args(["status", "-c", "dropseed.toml"]).output().unwrap();
    assert!(out.status.success(), "status -c dropseed.toml: {}", text(&out));
    // -c wins over DROPSEED_CONFIG.
    let out = bin()
        .current_dir(third.path())
        .env("DROPSEED_CONFIG", third.path().join("nowhere.toml"))
        .arg("status")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "-c before DROPSEED_CONFIG: {}", text(&out));
}

#[test]
fn config_check_says_which_file_it_checked() {
    let dir = tempdir();
    let config = relative_config(dir.path(), 6881, "");
    let out = bin().args(["config", "--check", "-c"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(&config.display().to_string()) && said.contains("-c"), "{said}");
    // The paths it would use, made absolute beside the file.
    assert!(said.contains(&dir.path().join("watch").display().to_string()), "{said}");

    let out = bin().args(["config", "--check"]).env("DROPSEED_CONFIG", &config).output().unwrap();
    let said = text(&out);
    assert!(out.status.success() && said.contains(&config.display().to_string()), "{said}");
    assert!(said.contains("DROPSEED_CONFIG"), "{said}");

    // DROPSEED_CONFIG naming a missing file is an error, not the defaults.
    let missing = dir.path().join("missing.toml");
    let out = bin().args(["config", "--check"]).env("DROPSEED_CONFIG", &missing).output().unwrap();
    let said = text(&out);
    assert!(!out.status.success() && said.contains("missing.toml") && said.contains("DROPSEED_CONFIG"), "{said}");
}

#[test]
fn a_tilde_path_is_expanded_to_home_and_said_so() {
    let dir = tempdir();
    let home = tempdir();
    let config = dir.path().join("dropseed.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "[paths]\nwatch_dir = \"~/seedbox/watch\"\ndownload_dir = \"~/seedbox/downloads\"\nstate_dir = \"state\"\nlog_dir = \"logs\"\n\
             [network]\nlisten_port = {port}\nlisten_address = \"127.0.0.1\"\n[dht]\nenabled = false\n"
        ),
    )
    .unwrap();
    let out = bin().env("HOME", home.path()).args(["config", "--check", "-c"]).arg(&config).output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&home.path().join("seedbox/watch").display().to_string()), "{said}");

    let mut run = bin();
    run.env("HOME", home.path()).current_dir(home.path()).arg("run").arg("-c").arg(&config);
    let _daemon = start_daemon(run, &dir.path().join("state/control.sock"), &dir.path().join("console.log"));
    assert!(home.path().join("seedbox/watch").is_dir() && home.path().join("seedbox/downloads").is_dir());
    assert!(!home.path().join("~").exists() && !dir.path().join("~").exists(), "no literal ~ folder");
    let log = wait_for("the expansion in the log", Duration::from_secs(10), || {
        let t = std::fs::read_to_string(dir.path().join("logs/dropseed.log")).ok()?;
        t.contains("paths.watch_dir").then_some(t)
    });
    let line = log.lines().find(|l| l.contains("paths.watch_dir")).unwrap();
    assert!(line.contains("~/seedbox/watch") && line.contains(&home.path().display().to_string()), "{line}");

    // ~user is not expanded: refused, naming the key.
    std::fs::write(&config, "[paths]\nwatch_dir = \"~seed/watch\"\n").unwrap();
    let out = bin().env("HOME", home.path()).args(["config", "--check", "-c"]).arg(&config).output().unwrap();
    let said = text(&out);
    assert!(!out.status.success() && said.contains("paths.watch_dir") && said.contains("~seed"), "{said}");
    // Without HOME, ~ is refused rather than guessed.
    std::fs::write(&config, "[paths]\nlog_dir = \"~/logs\"\n").unwrap();
    let out = bin().env_remove("HOME").args(["config", "--check", "-c"]).arg(&config).output().unwrap();
    let said = text(&out);
    assert!(!out.status.success() && said.contains("paths.log_dir") && said.contains("HOME"), "{said}");
}

/// Runs a daemon that is expected to fail at startup; returns its output.
fn run_failing(config: &Path) -> Output {
    let mut child = bin()
        .arg("run")
        .arg("-c")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dropseed");
    let status = wait_for("dropseed to give up", Duration::from_secs(15), || child.try_wait().unwrap());
    let out = child.wait_with_output().unwrap();
    assert!(!status.success(), "dropseed started: {}", text(&out));
    out
}

/// The ERROR lines of every log file under `dir`.
fn error_lines(log_dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for e in std::fs::read_dir(log_dir).into_iter().flatten().flatten() {
        if e.path().is_symlink() {
            continue;
        }
        let t = std::fs::read_to_string(e.path()).unwrap_or_default();
        lines.extend(t.lines().filter(|l| l.contains("level=error")).map(String::from));
    }
    lines
}

/// The failure is on stderr and is the one ERROR line of the log file.
fn assert_fatal(out: &Output, log_dir: &Path, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
    let errors = error_lines(log_dir);
    assert_eq!(errors.len(), 1, "one ERROR line in the log: {errors:?}");
    for n in needles {
        assert!(errors[0].contains(n), "the log's ERROR line lacks {n:?}: {}", errors[0]);
    }
}

#[test]
fn a_port_in_use_is_a_clear_error_in_the_log_too() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = tempdir();
    let config = relative_config(dir.path(), port, "");
    let out = run_failing(&config);
    assert_fatal(
        &out,
        &dir.path().join("logs"),
        &[&format!("cannot listen on 127.0.0.1:{port}"), "in use", "set [network] listen_port"],
    );
}

#[test]
fn an_unusable_control_socket_path_is_a_clear_error_in_the_log_too() {
    let dir = tempdir();
    // Longer than a Unix socket address can be (108 bytes).
    let state = dir.path().join("s".repeat(120));
    let config = dir.path().join("dropseed.toml");
    std::fs::write(
        &config,
        format!(
            "[paths]\nstate_dir = \"{}\"\nwatch_dir = \"w\"\ndownload_dir = \"d\"\nlog_dir = \"logs\"\n\
             [network]\nlisten_port = {}\nlisten_address = \"127.0.0.1\"\n[dht]\nenabled = false\n",
            state.display(),
            free_port()
        ),
    )
    .unwrap();
    let out = run_failing(&config);
    assert_fatal(&out, &dir.path().join("logs"), &["control socket", "control.sock", "set [paths] state_dir"]);
}

#[test]
fn an_uncreatable_download_folder_is_a_clear_error_in_the_log_too() {
    let dir = tempdir();
    std::fs::write(dir.path().join("file"), b"not a folder").unwrap();
    let config = relative_config(dir.path(), free_port(), "");
    let changed = std::fs::read_to_string(&config).unwrap().replace("\"downloads\"", "\"file/downloads\"");
    std::fs::write(&config, changed).unwrap();
    let out = run_failing(&config);
    let folder = dir.path().join("file/downloads").display().to_string();
    assert_fatal(&out, &dir.path().join("logs"), &[&folder, "set [paths] download_dir"]);
}

#[test]
fn a_second_daemon_is_refused_without_writing_into_the_first_ones_log() {
    let dir = tempdir();
    let config = relative_config(dir.path(), free_port(), "");
    let mut run = bin();
    run.arg("run").arg("-c").arg(&config);
    let mut first = start_daemon(run, &dir.path().join("state/control.sock"), &dir.path().join("console.log"));
    let log_dir = dir.path().join("logs");
    // Its last start-up line: the watch folder starts after "dropseed started".
    wait_for("the first daemon's start-up", Duration::from_secs(10), || {
        std::fs::read_to_string(log_dir.join("dropseed.log")).ok().filter(|t| t.contains("watching for .torrent"))
    });
    let before: Vec<(PathBuf, String)> = std::fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), std::fs::read_to_string(e.path()).unwrap_or_default()))
        .collect();
    // The same config again, and a different listen port: still the same state_dir.
    let first_text = std::fs::read_to_string(&config).unwrap();
    let second_config = dir.path().join("second.toml");
    std::fs::write(&second_config, first_text.replace("listen_port", "listen_port = 0\n#")).unwrap();
    let out = run_failing(&second_config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another dropseed") && stderr.contains("state"), "{stderr}");
    assert!(stderr.contains(&first.pid().to_string()), "names the running daemon's pid: {stderr}");
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<(PathBuf, String)> = std::fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), std::fs::read_to_string(e.path()).unwrap_or_default()))
        .collect();
    assert_eq!(before, after, "the refused daemon wrote nothing into the running one's log");
    // The first one still serves.
    let out = bin().arg("status").arg("-c").arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(first.0.try_wait().unwrap().is_none());
}

/// The user the tests use as "another user": nobody.
const NOBODY: u32 = 65534;

/// Running processes as `nobody` needs root (as CI runs the tests).
fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    euid == 0 || missing("this test runs processes as nobody: run it as root")
}

/// A dropseed config whose whole data folder belongs to `nobody`.
fn nobody_daemon(dir: &Path, extra: &str) -> (PathBuf, Proc) {
    let config = relative_config(dir, free_port(), extra);
    std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut run = bin_for_others();
    run.uid(NOBODY).gid(NOBODY).current_dir("/").arg("run").arg("-c").arg(&config);
    let p = start_daemon(run, &dir.join("state/control.sock"), &dir.join("console.log"));
    (config, p)
}

/// A small torrent (no tracker needed) and its info hash.
fn small_torrent(dir: &Path, name: &str) -> Option<(PathBuf, String)> {
    if !require("mktorrent", "mktorrent") {
        return None;
    }
    let data = dir.join(name);
    payload(&data, 100_000, 7);
    let t = dir.join(format!("{name}.torrent"));
    mktorrent(&data, "http://127.0.0.1:1/announce", 15, &t, &[]);
    let hash = info_hash(&t);
    Some((t, hash))
}

#[test]
fn add_sends_the_file_so_a_daemon_running_as_another_user_can_add_it() {
    if !root() {
        return;
    }
    let dir = tempdir();
    let (config, _daemon) = nobody_daemon(dir.path(), "");
    // A folder only root may enter: the daemon (nobody) cannot read in it.
    let private = tempfile::Builder::new().prefix("dropseed-private").tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let Some((torrent, hash)) = small_torrent(private.path(), "private.bin") else { return };
    let magnet = private.path().join("one.magnet");
    let magnet_hash = "1123456789abcdef0123456789abcdef01234567";
    std::fs::write(&magnet, format!("magnet:?xt=urn:btih:{magnet_hash}&dn=from-file\n")).unwrap();
    for (file, h) in [(&torrent, hash.as_str()), (&magnet, magnet_hash)] {
        let out = bin().arg("add").arg(file).arg("-c").arg(&config).output().unwrap();
        assert!(out.status.success(), "add {}: {}", file.display(), text(&out));
        let out = bin().args(["status", "--json", "-c"]).arg(&config).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            v["torrents"].as_array().unwrap().iter().any(|t| t["info_hash"] == h),
            "{} is managed: {v}",
            file.display()
        );
    }
    // Nothing depends on the file afterwards.
    drop(private);
    let out = bin().args(["status", "-c"]).arg(&config).output().unwrap();
    assert!(text(&out).contains("private.bin") && text(&out).contains("from-file"), "{}", text(&out));
}

#[test]
fn add_of_a_malformed_or_oversized_file_says_why() {
    let dir = tempdir();
    let ds = Dropseed::start_with("");
    let junk = dir.path().join("junk.torrent");
    std::fs::write(&junk, b"this is not bencode").unwrap();
    let out = ds.cli(&["add", junk.to_str().unwrap()]);
    assert!(
        !out.status.success() && text(&out).contains("junk.torrent") && text(&out).contains("bencode"),
        "{}",
        text(&out)
    );
    let big = dir.path().join("big.torrent");
    std::fs::write(&big, vec![b'd'; 10 * 1024 * 1024 + 1]).unwrap();
    let out = ds.cli(&["add", big.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("limit"), "{}", text(&out));
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"hello").unwrap();
    let out = ds.cli(&["add", other.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("not a .torrent or .magnet"), "{}", text(&out));
    let out = ds.cli(&["add", dir.path().join("absent.torrent").to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("absent.torrent"), "{}", text(&out));
    assert!(ds.status()["torrents"].as_array().unwrap().is_empty());
}

/// Sends raw bytes on the control socket and reads one reply line.
fn control_exchange(socket: &Path, bytes: &[u8]) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

#[test]
fn the_daemon_bounds_an_added_files_size_before_reading_it() {
    let ds = Dropseed::start_with("");
    let socket = ds.state_dir().join("control.sock");
    // Announced as 20 MB: refused at once, without waiting for the bytes.
    let reply = control_exchange(&socket, b"{\"cmd\":\"add_file\",\"name\":\"huge.torrent\",\"size\":20000000}\n");
    assert_eq!(reply["ok"], false, "{reply}");
    let msg = reply["message"].as_str().unwrap();
    assert!(msg.contains("huge.torrent") && msg.contains("10485760-byte limit"), "{msg}");
    let reply = control_exchange(&socket, b"{\"cmd\":\"add_file\",\"name\":\"m.magnet\",\"size\":2000000}\n");
    assert!(reply["message"].as_str().unwrap().contains("1048576-byte limit"), "{reply}");
    // The bytes follow the line; they are what is parsed.
    let mut req = b"{\"cmd\":\"add_file\",\"name\":\"x.magnet\",\"size\":41}\n".to_vec();
    req.extend_from_slice(b"2123456789abcdef0123456789abcdef01234567\n");
    let reply = control_exchange(&socket, &req);
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(ds.torrent("2123456789abcdef0123456789abcdef01234567").is_some());
    // The old request, a path for the daemon to read, still works.
    let dir = tempdir();
    let m = dir.path().join("old.magnet");
    std::fs::write(&m, "3123456789abcdef0123456789abcdef01234567\n").unwrap();
    let reply =
        control_exchange(&socket, format!("{{\"cmd\":\"add\",\"source\":{:?}}}\n", m.display().to_string()).as_bytes());
    assert_eq!(reply["ok"], true, "{reply}");
}

#[test]
fn an_uncreatable_watch_folder_stops_the_daemon_naming_it() {
    let dir = tempdir();
    std::fs::write(dir.path().join("file"), b"not a folder").unwrap();
    let config = relative_config(dir.path(), free_port(), "");
    let changed = std::fs::read_to_string(&config).unwrap().replace("\"watch\"", "\"file/watch\"");
    std::fs::write(&config, changed).unwrap();
    let out = run_failing(&config);
    let folder = dir.path().join("file/watch").display().to_string();
    assert_fatal(&out, &dir.path().join("logs"), &["watch folder", &folder, "set [paths] watch_dir"]);
}

/// Log lines of a daemon whose logs are in `dir/logs` containing `needle`.
fn log_lines(dir: &Path, needle: &str) -> Vec<String> {
    let t = std::fs::read_to_string(dir.join("logs/dropseed.log")).unwrap_or_default();
    t.lines().filter(|l| l.contains(needle)).map(String::from).collect()
}

#[test]
fn a_read_only_watch_folder_is_warned_about_once_and_still_read() {
    if !root() {
        return;
    }
    let dir = tempdir();
    // The folder belongs to root: the daemon (nobody) can read it, not change it.
    let watch = dir.path().join("watch");
    std::fs::create_dir(&watch).unwrap();
    std::fs::set_permissions(&watch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hash = "4123456789abcdef0123456789abcdef01234567";
    std::fs::write(watch.join("early.magnet"), format!("{hash}\n")).unwrap();
    std::fs::write(watch.join("junk.torrent"), b"not bencode").unwrap();
    let (config, _daemon) = nobody_daemon(dir.path(), "[watch]\npoll_secs = 1\n");
    let status = || {
        let out = bin().args(["status", "--json", "-c"]).arg(&config).output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    wait_for("the magnet to be added", Duration::from_secs(10), || {
        status()["torrents"].as_array().unwrap().iter().any(|t| t["info_hash"] == hash).then_some(())
    });
    // A file dropped later is taken too.
    let later = "5123456789abcdef0123456789abcdef01234567";
    std::fs::write(watch.join("later.magnet"), format!("{later}\n")).unwrap();
    wait_for("the later magnet to be added", Duration::from_secs(10), || {
        status()["torrents"].as_array().unwrap().iter().any(|t| t["info_hash"] == later).then_some(())
    });
    // The invalid file is given up on after the retry window, once.
    wait_for("the invalid file to be reported", Duration::from_secs(90), || {
        (!log_lines(dir.path(), "junk.torrent").is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(4)); // four more scans
    let warnings = log_lines(dir.path(), "level=warn");
    let folder = warnings.iter().filter(|l| l.contains("watch folder")).count();
    assert_eq!(folder, 1, "one warning about the folder: {warnings:#?}");
    assert!(warnings.iter().any(|l| l.contains(&watch.display().to_string())), "{warnings:#?}");
    assert_eq!(log_lines(dir.path(), "junk.torrent").len(), 1, "{:#?}", log_lines(dir.path(), "junk"));
    assert!(log_lines(dir.path(), "already managed").is_empty(), "{:#?}", log_lines(dir.path(), "already"));
    assert!(watch.join("early.magnet").exists() && watch.join("junk.torrent").exists());
}

#[test]
fn a_kept_file_does_not_bring_a_removed_torrent_back_at_the_next_start() {
    let mut ds = Dropseed::start_with("[watch]\non_added = \"keep\"\npoll_secs = 1\n");
    let hash = "6123456789abcdef0123456789abcdef01234567";
    let kept = ds.watch_dir().join("kept.magnet");
    std::fs::write(&kept, format!("magnet:?xt=urn:btih:{hash}&dn=kept\n")).unwrap();
    ds.wait_state(hash, "metadata", Duration::from_secs(10));
    let out = ds.cli(&["remove", "kept"]);
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_secs(2)); // scans see the kept file again
    assert!(ds.torrent(hash).is_none(), "not re-added while running");
    assert!(ds.stop().success());
    ds.start();
    std::thread::sleep(Duration::from_secs(3)); // the first scan and two more
    assert!(ds.torrent(hash).is_none(), "the removed torrent came back at the next start");
    assert!(kept.exists(), "the file is kept");
    // A changed file is a new drop: taken again.
    let t = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(&kept).unwrap().set_modified(t).unwrap();
    ds.wait_state(hash, "metadata", Duration::from_secs(10));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

/// A test daemon (not started) with more keys in its `[paths]`.
fn with_paths(lines: &str) -> Dropseed {
    let ds = Dropseed::new("");
    let text = std::fs::read_to_string(&ds.config).unwrap().replacen("[paths]\n", &format!("[paths]\n{lines}"), 1);
    std::fs::write(&ds.config, text).unwrap();
    ds
}

/// Starts a daemon with `paths` lines in its config, adds a magnet (so it writes a state
/// file), and returns the modes of what it created.
fn modes_with(paths: &str) -> (Dropseed, Vec<(String, u32)>) {
    let mut ds = with_paths(paths);
    ds.start();
    let hash = "7123456789abcdef0123456789abcdef01234567";
    assert!(ds.cli(&["add", hash]).status.success());
    ds.wait_state(hash, "metadata", Duration::from_secs(10));
    let log_file = wait_for("the log file", Duration::from_secs(5), || {
        std::fs::canonicalize(ds.log_dir().join("dropseed.log")).ok()
    });
    let modes = vec![
        ("watch".to_string(), mode(&ds.watch_dir())),
        ("downloads".to_string(), mode(&ds.download_dir())),
        ("state".to_string(), mode(&ds.state_dir())),
        ("logs".to_string(), mode(&ds.log_dir())),
        ("log file".to_string(), mode(&log_file)),
        ("state file".to_string(), mode(&ds.state_dir().join(format!("{hash}.magnet")))),
        ("socket".to_string(), mode(&ds.state_dir().join("control.sock"))),
    ];
    (ds, modes)
}

#[test]
fn the_umask_and_the_socket_mode_let_the_group_in_and_no_one_else() {
    // The default: the group may read and write, others nothing.
    let (_ds, modes) = modes_with("");
    let want = [0o770, 0o770, 0o770, 0o770, 0o660, 0o660, 0o660];
    for ((what, got), want) in modes.iter().zip(want) {
        assert_eq!(*got, want, "{what}: {got:o}, want {want:o} ({modes:?})");
    }
    // A stricter umask from the config.
    let (_ds, modes) = modes_with("umask = \"0027\"\n");
    let want = [0o750, 0o750, 0o750, 0o750, 0o640, 0o640, 0o660];
    for ((what, got), want) in modes.iter().zip(want) {
        assert_eq!(*got, want, "{what}: {got:o}, want {want:o} ({modes:?})");
    }
}

#[test]
fn the_control_socket_belongs_to_socket_group_and_its_members_can_use_the_cli() {
    if !root() {
        return;
    }
    let users = 100; // Debian's "users" group
    let mut ds = with_paths("socket_group = \"users\"\n");
    // state_dir as an admin would set it up: reachable by others, so that
    // only the socket's own mode and group decide.
    std::fs::create_dir_all(ds.state_dir()).unwrap();
    std::fs::set_permissions(ds.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    ds.start();
    let socket = ds.state_dir().join("control.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.gid(), meta.permissions().mode() & 0o777), (users, 0o660));
    let cli_as =
        |gid: u32| bin_for_others().uid(NOBODY).gid(gid).args(["status", "-c"]).arg(&ds.config).output().unwrap();
    let out = cli_as(users);
    assert!(out.status.success(), "a member of the group: {}", text(&out));
    let out = cli_as(NOBODY);
    let said = text(&out);
    assert!(!out.status.success() && said.contains("Permission denied"), "not a member: {said}");
    assert!(said.contains("socket_group") && !said.contains("not running"), "says what to do: {said}");

    // An unknown group is refused by key, by config --check and by the daemon.
    std::fs::write(&ds.config, "[paths]\nsocket_group = \"no-such-group-here\"\n").unwrap();
    let out = bin().args(["config", "--check", "-c"]).arg(&ds.config).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("paths.socket_group"), "{}", text(&out));
    let _ = ds.stop();
}

#[test]
fn an_unreadable_watch_folder_is_warned_about_once_and_read_once_it_can_be() {
    if !root() {
        return;
    }
    let dir = tempdir();
    let watch = dir.path().join("watch");
    std::fs::create_dir(&watch).unwrap();
    std::fs::set_permissions(&watch, std::fs::Permissions::from_mode(0o700)).unwrap(); // root's alone
    let (config, _daemon) = nobody_daemon(dir.path(), "[watch]\npoll_secs = 1\n");
    wait_for("the warning", Duration::from_secs(10), || {
        (!log_lines(dir.path(), "cannot list the watch folder").is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3)); // three more scans
    assert_eq!(log_lines(dir.path(), "cannot list the watch folder").len(), 1);
    let hash = "8123456789abcdef0123456789abcdef01234567";
    std::fs::write(watch.join("late.magnet"), format!("{hash}\n")).unwrap();
    std::fs::set_permissions(&watch, std::fs::Permissions::from_mode(0o777)).unwrap();
    wait_for("the magnet to be added once the folder can be read", Duration::from_secs(10), || {
        let out = bin().args(["status", "--json", "-c"]).arg(&config).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["torrents"].as_array()?.iter().any(|t| t["info_hash"] == hash).then_some(())
    });
}

/// Sockets in `dir`, or in a folder of it that others may enter, whose mode
/// lets in more than owner and group (0660): what another user could
/// connect to.
fn reachable_wide_sockets(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let list = |d: &Path| -> Vec<(PathBuf, std::fs::Metadata)> {
        let Ok(entries) = std::fs::read_dir(d) else { return Vec::new() };
        entries.flatten().filter_map(|e| Some((e.path(), e.path().symlink_metadata().ok()?))).collect()
    };
    let mut folders = vec![dir.to_path_buf()];
    folders.extend(list(dir).into_iter().filter(|(_, m)| m.is_dir() && m.mode() & 0o001 != 0).map(|(p, _)| p));
    folders
        .iter()
        .flat_map(|d| list(d))
        .filter(|(_, m)| m.file_type().is_socket() && m.mode() & 0o777 & !0o660 != 0)
        .map(|(p, m)| format!("{} mode {:o}", p.display(), m.mode() & 0o7777))
        .collect()
}

/// Issue #23, 15: under `umask = "0000"` the control socket must never be
/// reachable with more than its 0660, not even between its bind and its
/// chmod. strace holds every chmod for half a second, so that moment, a few
/// microseconds otherwise, cannot be missed by a watcher polling state_dir.
#[test]
fn the_control_socket_is_never_reachable_with_wider_rights_than_0660() {
    if !require("strace", "strace") {
        return;
    }
    let ds = with_paths("umask = \"0000\"\n");
    let socket = ds.state_dir().join("control.sock");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (state, done) = (ds.state_dir(), done.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                seen.extend(reachable_wide_sockets(&state));
            }
            seen
        })
    };
    let mut run = Command::new("strace");
    run.args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=chmod,fchmodat"])
        .args(["-e", "inject=chmod,fchmodat:delay_enter=500000"])
        .arg(dropseed_bin())
        .args(["run", "-c"])
        .arg(&ds.config)
        .env("NO_COLOR", "1");
    let mut strace = start_daemon(run, &socket, &ds.dir.path().join("console.log"));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert!(seen.is_empty(), "a socket others could connect to: {seen:?}");

    // And it works, as configured, with nothing left of its making.
    assert_eq!(mode(&socket), 0o660);
    let out = ds.cli(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let folders: Vec<PathBuf> = std::fs::read_dir(ds.state_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    assert!(folders.is_empty(), "left behind: {folders:?}");

    // strace's child is the daemon: stopped the usual way.
    let pid = strace.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let daemon: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on the test's own grandchild.
    unsafe { libc::kill(daemon, libc::SIGTERM) };
    let status = wait_for("dropseed to stop", Duration::from_secs(20), || strace.0.try_wait().unwrap());
    assert!(status.success(), "{status}");
}
