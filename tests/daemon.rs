//! The daemon as a user meets it: the real binary, its watch folder, log
//! files, signals, control CLI and config checks.

mod common;
use common::*;
use std::time::Duration;

/// A hand-made bad torrent (bad cases only; good ones come from mktorrent).
fn bad_torrent(info: &str) -> Vec<u8> {
    format!("d8:announce22:http://127.0.0.1:1/ann4:info{info}e").into_bytes()
}

#[test]
fn watch_folder_picks_up_files_and_rejects_bad_ones() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("good.bin", 3 * 1024 * 1024 + 17, 16, 11);
    let mut ds = Dropseed::new("[log]\nlevel = \"info\"\n");
    // Dropped before the daemon starts.
    std::fs::create_dir_all(ds.watch_dir()).unwrap();
    std::fs::copy(&swarm.torrent, ds.watch_dir().join("Early.TORRENT")).unwrap();
    // Ignored names stay as they are.
    std::fs::write(ds.watch_dir().join(".hidden.torrent"), b"x").unwrap();
    std::fs::write(ds.watch_dir().join("upload.torrent.part"), b"x").unwrap();
    ds.start();
    ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    assert_same_tree(&swarm.data, &ds.download_dir());
    assert!(ds.watch_dir().join("Early.TORRENT.added").exists());

    // Invalid files of several kinds, each with its reason in the log.
    let p20 = format!("20:{}", "a".repeat(20));
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "pieces.torrent",
            bad_torrent(
                "d6:lengthi10e4:name1:x12:piece lengthi16384e6:pieces41:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxe",
            ),
            "pieces length 41 is not a multiple of 20",
        ),
        (
            "escape.torrent",
            bad_torrent(&format!(
                "d5:filesld6:lengthi5e4:pathl2:..6:passwdeee4:name1:d12:piece lengthi16384e6:pieces{p20}e"
            )),
            "unsafe path element",
        ),
        ("junk.torrent", b"this is not bencode at all".to_vec(), "bencode is invalid"),
        (
            "count.torrent",
            bad_torrent(&format!("d6:lengthi99999e4:name1:x12:piece lengthi16384e6:pieces{p20}e")),
            "piece hashes but the total length",
        ),
        ("v2.magnet", b"magnet:?xt=urn:btmh:1220aaaa\n".to_vec(), "v2-only"),
    ];
    for (name, bytes, _) in &bad {
        std::fs::write(ds.watch_dir().join(name), bytes).unwrap();
    }
    // A partial write: half now, the rest after a pause shorter than the retry window.
    // Another file: a torrent over good.bin again would be refused, as its
    // files would be the first torrent's.
    let good2 = swarm.work.path().join("second.torrent");
    std::fs::copy(swarm.data.join("good.bin"), swarm.work.path().join("slow.bin")).unwrap();
    mktorrent(&swarm.work.path().join("slow.bin"), &swarm.tracker.announce_url(), 15, &good2, &[]);
    let bytes = std::fs::read(&good2).unwrap();
    let partial = ds.watch_dir().join("slow.torrent");
    std::fs::write(&partial, &bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(partial.exists(), "a half-written file is left alone while it may still grow");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&partial).unwrap();
        f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    }
    wait_for("the completed slow file to be added", Duration::from_secs(20), || {
        ds.watch_dir().join("slow.torrent.added").exists().then_some(())
    });

    for (name, _, reason) in &bad {
        let invalid = ds.watch_dir().join(format!("{name}.invalid"));
        wait_for(&format!("{name} to become .invalid"), Duration::from_secs(90), || invalid.exists().then_some(()));
        // The log is written by its own thread: the line may trail the rename.
        let line = wait_for(&format!("the WARN for {name}"), Duration::from_secs(5), || {
            ds.log_text().lines().find(|l| l.contains("invalid file") && l.contains(name)).map(String::from)
        });
        assert!(line.contains("level=warn") && line.contains(reason), "{name}: {line}");
    }
    // The same torrent under another name: treated as added, said to be known.
    std::fs::copy(&swarm.torrent, ds.watch_dir().join("again.torrent")).unwrap();
    wait_for("duplicate to be marked added", Duration::from_secs(20), || {
        ds.watch_dir().join("again.torrent.added").exists().then_some(())
    });
    assert!(ds.log_text().contains("already managed"));
    // Re-dropping a name seen before works (dedup is by hash, not name).
    std::fs::copy(&swarm.torrent, ds.watch_dir().join("Early.TORRENT")).unwrap();
    wait_for("re-dropped name to be handled", Duration::from_secs(20), || {
        (!ds.watch_dir().join("Early.TORRENT").exists()).then_some(())
    });
    assert!(ds.watch_dir().join(".hidden.torrent").exists());
    assert!(ds.watch_dir().join("upload.torrent.part").exists());
    // The good torrent kept seeding through all of it.
    assert_eq!(ds.torrent(&swarm.hash).unwrap()["state"], "seeding");
    assert_eq!(ds.status()["torrents"].as_array().unwrap().len(), 2);
}

#[test]
fn control_cli_adds_pauses_resumes_and_removes() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("cli.bin", 2 * 1024 * 1024, 16, 21);
    let ds = Dropseed::start_with("");
    let out = ds.cli(&["add", swarm.torrent.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("added cli.bin"));
    let t = ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    for key in [
        "info_hash",
        "name",
        "state",
        "progress",
        "size",
        "downloaded",
        "uploaded",
        "download_rate",
        "upload_rate",
        "peers",
        "ratio",
        "error",
    ] {
        assert!(t.get(key).is_some(), "status --json lacks {key}: {t}");
    }
    assert_eq!(t["size"], 2 * 1024 * 1024);
    assert!(t["downloaded"].as_u64().unwrap() >= 2 * 1024 * 1024);

    // The table names the torrent, with the short hash every command takes.
    let stdout = |args: &[&str]| {
        let out = ds.cli(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = stdout(&["status"]);
    let short = &swarm.hash[..8];
    assert!(table.starts_with("HASH ") && table.contains(&format!("{short} cli.bin")), "{table}");
    assert!(table.contains("seeding"), "{table}");

    // Pause by name, resume by short hash: each says the state reached.
    let said = stdout(&["pause", "cli.bin"]);
    assert_eq!(said.trim(), format!("cli.bin ({short}): paused"));
    assert_eq!(ds.torrent(&swarm.hash).unwrap()["state"], "paused", "reached when said");
    let said = stdout(&["resume", short]);
    assert!(said.trim().starts_with(&format!("cli.bin ({short}): ")) && !said.contains("paused"), "{said}");

    // Unknown ids are errors.
    let out = ds.cli(&["pause", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no torrent"));

    // A magnet is accepted and waits for metadata.
    let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=cli.waiting";
    assert!(ds.cli(&["add", magnet]).status.success());
    ds.wait_state("0123456789abcdef0123456789abcdef01234567", "metadata", Duration::from_secs(5));
    ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(10));

    // Filters, order and details.
    let only = |args: &[&str]| -> Vec<String> {
        stdout(args).lines().skip(1).filter(|l| !l.starts_with(' ')).map(|l| l[..8].to_string()).collect()
    };
    assert_eq!(only(&["status", "--state", "metadata"]), ["01234567"]);
    assert_eq!(only(&["status", "--state", "seeding,metadata", "--sort", "size"]), ["01234567", short]);
    assert_eq!(only(&["status", "--sort", "size", "--reverse"]), [short, "01234567"]);
    assert_eq!(stdout(&["status", "--category", "tv"]).trim(), "no torrents");
    let bad = ds.cli(&["status", "--state", "done"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("seeding"));
    let details = stdout(&["status", "cli.b"]);
    let path = ds.download_dir().join("cli.bin");
    assert!(details.contains(&swarm.hash) && details.contains(&path.display().to_string()), "{details}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&["status", "--json", short])).unwrap();
    assert_eq!(json["torrents"][0]["path"], path.display().to_string());
    assert!(json["torrents"][0].get("tracker_error").is_some(), "{json}");
    // "cli." starts both names: refused, with both named.
    let out = ds.cli(&["pause", "cli."]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("matches 2 torrents") && err.contains(short) && err.contains("01234567"), "{err}");
    assert!(ds.cli(&["remove", "cli.waiting"]).status.success());

    // Remove keeps the data unless asked.
    let data = ds.download_dir().join("cli.bin");
    assert!(ds.cli(&["remove", "cli.bin"]).status.success());
    assert!(data.exists());
    assert!(ds.torrent(&swarm.hash).is_none());
    assert!(!ds.state_dir().join(format!("{}.resume", swarm.hash)).exists());
    assert!(ds.cli(&["add", swarm.torrent.to_str().unwrap()]).status.success());
    ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(30));
    let out = ds.cli(&["remove", "--delete-data", &swarm.hash]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!data.exists(), "--delete-data removes the files");
}

#[test]
fn cli_without_daemon_says_so() {
    let ds = Dropseed::new("");
    let out = ds.cli(&["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dropseed is not running"));
}

#[test]
fn config_default_and_check() {
    let out = std::process::Command::new(dropseed_bin()).args(["config", "--default"]).output().unwrap();
    assert!(out.status.success());
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), example);

    let dir = tempdir();
    for (text, needle) in [
        ("[network]\nlisten_prot = 1\n", "listen_prot"),
        ("[log]\nrotation = \"weekly\"\n", "weekly"),
        ("[log]\nlevel = \"chatty\"\n", "log.level"),
        ("[limits]\nupload_rate = \"fast\"\n", "fast"),
        ("[seeding]\nratio_limit = -2.0\n", "seeding.ratio_limit"),
        ("not toml [", "TOML"),
        ("[network]\nlisten_port = 70000\n", "line 2: [network] listen_port: must be a whole number from 0 to 65535"),
        ("[dht]\nenabled = \"yes\"\n", "[dht] enabled: must be true or false"),
    ] {
        let f = dir.path().join("c.toml");
        std::fs::write(&f, text).unwrap();
        let out =
            std::process::Command::new(dropseed_bin()).args(["config", "--check", "-c"]).arg(&f).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(err.contains(needle) || (needle == "TOML" && err.contains("c.toml")), "{text}: {err}");
    }
    let f = dir.path().join("ok.toml");
    std::fs::write(&f, "[limits]\nupload_rate = \"10MB/s\"\n[seeding]\nseed_time_limit = \"1.5d\"\n").unwrap();
    let out = std::process::Command::new(dropseed_bin()).args(["config", "--check", "-c"]).arg(&f).output().unwrap();
    assert!(out.status.success());
    // The daemon refuses to start on a bad config, naming the key.
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[watch]\non_added = \"shred\"\n").unwrap();
    let out = std::process::Command::new(dropseed_bin()).args(["run", "-c"]).arg(&f).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shred"));
}

#[test]
fn sigterm_saves_state_and_restart_restores_it() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("keep.bin", 4 * 1024 * 1024, 16, 31);
    let other = Swarm::single("paused.bin", 1024 * 1024, 16, 32);
    let mut ds = Dropseed::start_with("");
    ds.drop_file(&swarm.torrent, "keep.torrent");
    ds.drop_file(&other.torrent, "paused.torrent");
    ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    ds.wait_state(&other.hash, "seeding", Duration::from_secs(60));
    assert!(ds.cli(&["pause", "paused.bin"]).status.success());
    ds.wait_state(&other.hash, "paused", Duration::from_secs(10));
    let downloaded = ds.torrent(&swarm.hash).unwrap()["downloaded"].as_u64().unwrap();

    let started = std::time::Instant::now();
    let status = ds.stop();
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "graceful stop took {:?}", started.elapsed());
    assert!(ds.log_text().contains("stopped"));
    for h in [&swarm.hash, &other.hash] {
        assert!(ds.state_dir().join(format!("{h}.resume")).exists());
        assert!(ds.state_dir().join(format!("{h}.torrent")).exists());
    }
    assert!(!ds.state_dir().join("control.sock").exists(), "socket removed on exit");

    // Restart: the same states, nothing downloaded again.
    ds.start();
    let t = ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(20));
    assert_eq!(t["downloaded"].as_u64().unwrap(), downloaded, "no data downloaded again");
    ds.wait_state(&other.hash, "paused", Duration::from_secs(10));
    assert_same_tree(&swarm.data, &ds.download_dir().join("keep.bin").parent().unwrap().join(""));
}

#[test]
fn second_signal_exits_at_once() {
    let mut ds = Dropseed::start_with("");
    ds.signal(libc::SIGTERM);
    ds.signal(libc::SIGTERM);
    let mut p = ds.proc.take().unwrap();
    let status = wait_for("exit", Duration::from_secs(10), || p.0.try_wait().unwrap());
    drop(p);
    let _ = status; // 0 when the first stop won the race, 1 when the second did
}

#[test]
fn sighup_reloads_config_and_rescans() {
    let ds = Dropseed::start_with("[watch]\npoll_secs = 3600\n");
    ds.wait_log("dropseed started", Duration::from_secs(10));
    let text = std::fs::read_to_string(&ds.config).unwrap().replace(
        "poll_secs = 3600",
        "poll_secs = 3600\non_added = \"delete\"\n[log]\nlevel = \"debug\"\n[limits]\nupload_rate = \"1MiB\"",
    );
    std::fs::write(&ds.config, text).unwrap();
    ds.signal(libc::SIGHUP);
    let log = ds.wait_log("config reloaded", Duration::from_secs(10));
    let line = log.lines().find(|l| l.contains("config reloaded")).unwrap();
    assert!(line.contains("log.level=debug") && line.contains("limits") && line.contains("watch"), "{line}");
    // The watch folder follows the reloaded settings: added files are now deleted.
    let magnet = ds.watch_dir().join("reload.magnet");
    std::fs::write(&magnet, "0123456789abcdef0123456789abcdef01234567\n").unwrap();
    ds.wait_state("0123456789abcdef0123456789abcdef01234567", "metadata", Duration::from_secs(10));
    wait_for("the added file to be deleted", Duration::from_secs(10), || (!magnet.exists()).then_some(()));
    assert!(!ds.watch_dir().join("reload.magnet.added").exists(), "renamed instead of deleted");
    // A bad config on SIGHUP keeps the running one.
    let good = std::fs::read_to_string(&ds.config).unwrap();
    std::fs::write(&ds.config, "[log]\nlevel = 5\n").unwrap();
    ds.signal(libc::SIGHUP);
    ds.wait_log("config not reloaded", Duration::from_secs(10));
    std::fs::write(&ds.config, good).unwrap();
    assert_eq!(ds.status()["torrents"].as_array().unwrap().len(), 1, "still serving");
}

#[test]
fn status_lines_and_log_link_survive_rotation() {
    let ds = Dropseed::start_with(
        "[log]\nrotation = \"minutely\"\nstatus_interval_secs = 1\nfull_status_interval_secs = 4\n",
    );
    let link = ds.log_dir().join("dropseed.log");
    let first = wait_for("dropseed.log link", Duration::from_secs(10), || std::fs::read_link(&link).ok());
    let text = wait_for("a summary line in dropseed.log", Duration::from_secs(10), || {
        let t = std::fs::read_to_string(&link).ok()?;
        t.contains("msg=summary torrents=0").then_some(t)
    });
    assert!(text.contains("mem_anon="), "{text}");
    // An idle torrent (a magnet no one answers) gets no line of its own,
    // only in the full listing.
    let idle = "0123456789abcdef0123456789abcdef01234567";
    assert!(ds.cli(&["add", idle]).status.success());
    // Status lines naming the magnet, in ordinary intervals and in full
    // listings (an interval's lines come before its summary).
    let count = |text: &str| {
        let (mut ordinary, mut full, mut pending) = (0, 0, 0);
        for line in text.lines() {
            if line.contains("msg=status ") && line.contains("hash=01234567") {
                pending += 1;
            } else if line.contains("msg=\"summary (full listing above)\"") {
                full += std::mem::take(&mut pending);
            } else if line.contains("msg=summary ") {
                ordinary += std::mem::take(&mut pending);
            }
        }
        (ordinary, full)
    };
    let (ordinary, _) = wait_for("a full listing naming the idle magnet", Duration::from_secs(15), || {
        let counts = count(&ds.log_text());
        (counts.1 > 0).then_some(counts)
    });
    assert_eq!(ordinary, 0, "an idle torrent gets a line only in full listings");
    // Across the next minute boundary the link moves to the new file.
    let second =
        wait_for("rotation", Duration::from_secs(75), || std::fs::read_link(&link).ok().filter(|t| *t != first));
    wait_for("new lines after rotation", Duration::from_secs(10), || {
        std::fs::read_to_string(ds.log_dir().join(&second)).ok().filter(|t| t.contains("summary")).map(|_| ())
    });
}

/// The reader every daemon test checks the logs with (`common::logfmt`)
/// refuses what a log tool would misread.
#[test]
fn the_log_line_checker_refuses_broken_lines() {
    use common::logfmt::check_line;
    let good = r#"time=2026-11-26T01:00:00.000Z level=info msg="added" torrent="A \"B\" = C\n" hash=0123abcd"#;
    assert_eq!(check_line(good), Ok(()));
    for (bad, why) in [
        (r#"time=t level=info msg=added torrent=My Film hash=0123abcd"#, "unquoted space"),
        (r#"time=t level=info msg="added" torrent="x""#, "torrent without hash"),
        (r#"time=t level=info msg="added" name="x" hash=0123abcd"#, "a second name key"),
        (r#"time=t level=info msg="a" msg="b""#, "a key twice"),
        (r#"time=t level=info msg="unterminated"#, "unterminated quote"),
        ("time=t level=info msg=\"raw\x1b[31m\"", "raw escape code"),
        (r#"2026-11-26T01:00:00Z  INFO dropseed: added torrent=x"#, "not logfmt at all"),
        (r#"time=t level=loud msg=x"#, "unknown level"),
        (r#"time=t level=info msg="a\u{1b}b""#, "an escape go-logfmt cannot read"),
    ] {
        assert!(check_line(bad).is_err(), "accepted ({why}): {bad}");
    }
}
