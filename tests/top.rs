//! `dropseed top` in a real terminal: tmux runs it in a detached 100x30
//! session against the real daemon; `send-keys` types, `capture-pane`
//! reads the screen, and the daemon's own `status --json` says whether the
//! keys did what they claim.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A tmux server of the test's own (`-L`), killed when dropped.
struct Tmux {
    server: String,
}

impl Tmux {
    /// Runs `dropseed top -c CONFIG` in a 100x30 pane; when it exits the
    /// pane prints its exit code and stays, so the screen after it can be read.
    fn top(config: &Path) -> Tmux {
        let server = format!("dropseed-top-{}-{}", std::process::id(), free_port());
        let script =
            format!("'{}' top -c '{}'; echo \"top exited $?\"; sleep 600", dropseed_bin().display(), config.display());
        let t = Tmux { server };
        let out = t.run(&["new-session", "-d", "-s", "top", "-x", "100", "-y", "30", "sh", "-c", &script]);
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
        t
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.server, "-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Keys by tmux name (`Enter`, `Escape`, `Space`, `q`).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// Text typed as it is.
    fn type_text(&self, text: &str) {
        assert!(self.run(&["send-keys", "-t", "top", "-l", text]).status.success());
    }

    /// Text pasted as a bracketed paste (top asks for them).
    fn paste(&self, text: &str) {
        assert!(self.run(&["set-buffer", "--", text]).status.success());
        assert!(self.run(&["paste-buffer", "-p", "-t", "top"]).status.success());
    }

    fn format(&self, fmt: &str) -> String {
        let out = self.run(&["display-message", "-p", "-t", "top", fmt]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until the screen satisfies `ok`; the last screen in the failure.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            last = self.screen();
            if ok(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; screen:\n{last}");
    }

    /// The pid of `dropseed top` (the pane's shell's child).
    fn top_pid(&self) -> i32 {
        let shell = self.format("#{pane_pid}");
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
        children.split_whitespace().next().expect("top runs").parse().unwrap()
    }

    /// After top exited: its code, and the terminal back to normal.
    fn assert_exited_and_restored(&self) {
        let screen = self.wait("top to exit", |s| s.contains("top exited"));
        assert!(screen.contains("top exited 0"), "{screen}");
        assert_eq!(self.format("#{alternate_on}"), "0", "still on the alternate screen");
        assert_eq!(self.format("#{cursor_flag}"), "1", "cursor still hidden");
        // Raw mode is off: the shell's line discipline echoes and maps CR again.
        assert!(!screen.contains("NAME"), "the table was left on the main screen:\n{screen}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The table's rows: between its header and the log pane.
fn table(screen: &str) -> Vec<&str> {
    let lines: Vec<&str> = screen.lines().collect();
    let start = lines.iter().position(|l| l.contains("NAME")).map_or(lines.len(), |i| i + 1);
    let end = lines.iter().position(|l| l.contains("log ─") || l.contains("─ log")).unwrap_or(lines.len());
    lines[start..end.max(start)].iter().copied().filter(|l| !l.trim().is_empty()).collect()
}

fn row<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    table(screen).into_iter().find(|l| l.contains(name))
}

fn tmux_present() -> bool {
    require("tmux", "tmux")
}

#[test]
fn top_lists_pauses_adds_filters_details_and_quits() {
    if !Swarm::tools_present() || !tmux_present() {
        return;
    }
    let swarm = Swarm::single("alpha.bin", 1 << 20, 16, 1);
    let (bravo, bravo_hash, _) = tracked_torrent(&swarm.tracker, swarm.work.path(), "bravo.bin", 1 << 20, 2);
    let d = Dropseed::start_with("");
    assert!(d.cli(&["add", swarm.torrent.to_str().unwrap()]).status.success());
    // In a category folder: `c` picks it out.
    std::fs::create_dir_all(d.watch_dir().join("tv")).unwrap();
    d.drop_file(&bravo, "tv/bravo.bin.torrent");
    d.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    d.wait_state(&bravo_hash, "downloading", Duration::from_secs(30));

    let tmux = Tmux::top(&d.config);
    let screen = tmux.wait("both torrents listed", |s| {
        row(s, "alpha.bin").is_some_and(|r| r.contains("seeding"))
            && row(s, "bravo.bin").is_some_and(|r| r.contains("downloading"))
    });
    // What the README shows (`--nocapture`).
    eprintln!("{screen}");
    assert!(row(&screen, "alpha.bin").unwrap().contains("100%"), "{screen}");
    assert!(row(&screen, "bravo.bin").unwrap().contains("  0%"), "{screen}");
    assert!(screen.lines().nth(1).unwrap().contains("2 torrents: 1 downloading, 1 seeding"), "{screen}");

    // Space on the first row (alpha, by name) pauses it, and again resumes it.
    tmux.keys(&["Space"]);
    d.wait_state(&swarm.hash, "paused", WAIT);
    tmux.wait("alpha shown paused", |s| row(s, "alpha.bin").is_some_and(|r| r.contains("paused")));
    tmux.keys(&["Space"]);
    d.wait_state(&swarm.hash, "seeding", WAIT);

    // `j` then space: bravo is paused, alpha untouched.
    tmux.keys(&["j", "Space"]);
    d.wait_state(&bravo_hash, "paused", WAIT);
    assert_eq!(d.torrent(&swarm.hash).unwrap()["state"], "seeding");
    tmux.keys(&["Space"]);

    // The filter by name.
    tmux.keys(&["/"]);
    tmux.type_text("BRAV");
    tmux.keys(&["Enter"]);
    let screen = tmux.wait("only bravo", |s| table(s).len() == 1 && row(s, "bravo.bin").is_some());
    assert!(row(&screen, "alpha.bin").is_none(), "{screen}");
    tmux.keys(&["/", "BSpace", "BSpace", "BSpace", "BSpace", "Enter"]);
    tmux.wait("both again", |s| table(s).len() == 2);

    // The category filter: "" (alpha) first, then tv (bravo), then all.
    tmux.keys(&["c", "c"]);
    let screen = tmux.wait("only the tv category", |s| s.contains("category: tv") && table(s).len() == 1);
    assert!(row(&screen, "bravo.bin").is_some(), "{screen}");
    tmux.keys(&["c"]);
    tmux.wait("all categories", |s| s.contains("category: all") && table(s).len() == 2);

    // The sort: by progress, alpha (done) stays first; by name again after a full cycle.
    tmux.keys(&["s"]);
    tmux.wait("sorted by progress", |s| s.contains("sort: progress"));

    tmux.keys(&["s", "s", "s", "s"]);
    tmux.wait("sorted by name", |s| s.contains("sort: name"));

    // The detail view of the selected torrent: files and trackers.
    tmux.keys(&["k", "Enter"]);
    let screen = tmux.wait("the detail view", |s| s.contains("Files (1)") && s.contains("Trackers (1)"));
    assert!(screen.contains("alpha.bin") && screen.contains("127.0.0.1"), "{screen}");
    tmux.keys(&["Escape"]);
    tmux.wait("the list again", |s| table(s).len() == 2);

    // A paste in the list is never keys (`r` recheck, `D` `y` delete the
    // data, `q` quit, space pause): it opens the add prompt holding it.
    tmux.paste("dn=The.Dying.Light rDy q ");
    let screen = tmux.wait("the add prompt holding the paste", |s| {
        s.contains("add (magnet, hash or path): dn=The.Dying.Light rDy q _")
    });
    assert_eq!(table(&screen).len(), 2, "{screen}");
    tmux.keys(&["Escape"]);
    tmux.wait("the list again, without the prompt", |s| table(s).len() == 2 && !s.contains("add (magnet"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.torrent(&swarm.hash).unwrap()["state"], "seeding", "neither rechecked nor paused");
    assert!(d.torrent(&bravo_hash).is_some());
    assert!(!tmux.screen().contains("top exited"));

    // `+` adds a magnet typed (or pasted) at the prompt.
    let magnet_hash = "0123456789abcdef0123456789abcdef01234567";
    tmux.keys(&["+"]);
    tmux.type_text(&format!("magnet:?xt=urn:btih:{magnet_hash}&dn=charlie"));
    tmux.keys(&["Enter"]);
    wait_for("the magnet added", WAIT, || d.torrent(magnet_hash));
    tmux.wait("charlie listed", |s| row(s, "charlie").is_some());

    // The log pane follows the daemon's log.
    let screen = tmux.screen();
    assert!(screen.contains("added from the control socket"), "{screen}");

    tmux.keys(&["q"]);
    tmux.assert_exited_and_restored();
}

#[test]
fn top_waits_for_a_daemon_that_goes_away_and_leaves_on_sigint() {
    if !tmux_present() {
        return;
    }
    let mut d = Dropseed::start_with("");
    let tmux = Tmux::top(&d.config);
    tmux.wait("the empty list", |s| s.contains("no torrents"));
    d.kill9();
    tmux.wait("the daemon said gone", |s| s.contains("daemon not running, waiting"));
    d.start();
    tmux.wait("the daemon back", |s| s.contains("0 torrents: none"));
    unsafe { libc::kill(tmux.top_pid(), libc::SIGINT) };
    tmux.assert_exited_and_restored();
}

/// A terminal that goes away (the SSH session or tmux dies under it) ends
/// `top` within seconds instead of leaving it spinning on a dead terminal.
#[test]
fn top_exits_when_its_terminal_goes_away() {
    if !tmux_present() {
        return;
    }
    let d = Dropseed::start_with("");
    let tmux = Tmux::top(&d.config);
    tmux.wait("the empty list", |s| s.contains("no torrents"));
    let pid = tmux.top_pid();
    assert!(tmux.run(&["kill-server"]).status.success());
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let still = running();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(!still, "top (pid {pid}) still runs 10 s after its terminal went away");
}

/// One request line to the control socket, its reply parsed.
fn ask(d: &Dropseed, line: &str) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(d.state_dir().join("control.sock")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn the_log_and_detail_requests_top_uses() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("gamma.bin", 1 << 20, 16, 3);
    let d = Dropseed::start_with("");
    assert!(d.cli(&["add", swarm.torrent.to_str().unwrap()]).status.success());
    d.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));

    let detail = ask(&d, &format!(r#"{{"cmd":"detail","id":"{}"}}"#, &swarm.hash[..8]));
    assert_eq!(detail["ok"], true, "{detail}");
    assert_eq!(detail["torrents"].as_array().unwrap().len(), 1, "only the torrent asked: {detail}");
    let files = &detail["detail"]["files"];
    assert_eq!(files, &serde_json::json!([{"path": "gamma.bin", "size": 1 << 20, "done": 1 << 20}]), "{detail}");
    assert!(detail["torrents"][0]["trackers"].as_array().is_some_and(|t| !t.is_empty()), "{detail}");
    let missing = ask(&d, r#"{"cmd":"detail","id":"ffffffff"}"#);
    assert_eq!((missing["ok"].as_bool(), missing["error"].as_str()), (Some(false), Some("not_found")), "{missing}");

    let log = ask(&d, r#"{"cmd":"log","after":0}"#);
    let lines = log["log"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 200, "{log}");
    assert!(lines.iter().any(|l| l.as_str().unwrap().contains("added from the control socket")), "{log}");
    let last = log["log_last"].as_u64().unwrap();
    let none = ask(&d, &format!(r#"{{"cmd":"log","after":{last}}}"#));
    assert!(none["log"].as_array().unwrap().iter().all(|l| !l.as_str().unwrap().contains("added from")), "{none}");
    let beyond = ask(&d, r#"{"cmd":"log","after":18446744073709551615}"#);
    assert_eq!(beyond["log"], serde_json::json!([]), "{beyond}");
}
