//! Completion hooks on the real binary: the programs are small shell scripts
//! written here that record their arguments (NUL-separated) and environment,
//! so each test sees exactly what a user's program would receive.

mod common;
use common::*;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A hook program that records each call as `EVENT.PID.args` (its
/// arguments, each ended by a NUL) and `EVENT.PID.env` (`env -0`) in `dir`,
/// written under a temporary name and renamed, then says hello on both
/// output streams.
fn recorder(dir: &Path) -> PathBuf {
    script(
        dir,
        "record.sh",
        &format!(
            "d='{d}'\n\
             printf '%s\\0' \"$@\" > \"$d/.args.$$\"\n\
             env -0 > \"$d/.env.$$\"\n\
             mv \"$d/.env.$$\" \"$d/$DROPSEED_EVENT.$$.env\"\n\
             mv \"$d/.args.$$\" \"$d/$DROPSEED_EVENT.$$.args\"\n\
             echo \"hello from $DROPSEED_EVENT\"\n\
             echo 'and from stderr' >&2\n",
            d = dir.display()
        ),
    )
}

/// Writes an executable `/bin/sh` script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// What the recorder saw for `event`: one (argv, env) per call.
fn calls(dir: &Path, event: &str) -> Vec<(Vec<String>, HashMap<String, String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        let Some(stem) = name.strip_prefix(&format!("{event}.")).and_then(|n| n.strip_suffix(".args")) else {
            continue;
        };
        let split0 = |bytes: Vec<u8>| -> Vec<String> {
            let text = String::from_utf8(bytes).unwrap();
            let mut parts: Vec<String> = text.split('\0').map(str::to_string).collect();
            assert_eq!(parts.pop().as_deref(), Some(""), "every record ends with a NUL");
            parts
        };
        let args = split0(std::fs::read(entry.path()).unwrap());
        let env = split0(std::fs::read(dir.join(format!("{event}.{stem}.env"))).unwrap())
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        out.push((args, env));
    }
    out
}

fn wait_calls(dir: &Path, event: &str, n: usize) -> Vec<(Vec<String>, HashMap<String, String>)> {
    wait_for(&format!("{n} {event} hook call(s)"), Duration::from_secs(30), || {
        let c = calls(dir, event);
        (c.len() >= n).then_some(c)
    })
}

/// A single-file torrent whose data already sits in the daemon's download
/// folder, so it is checked and seeds at once (completed elsewhere).
fn complete_torrent(ds: &Dropseed, work: &Path, name: &str, len: u64) -> (PathBuf, String) {
    let data = ds.download_dir().join(name);
    payload(&data, len, 7);
    let torrent = work.join("t.torrent");
    mktorrent(&data, "http://127.0.0.1:1/announce", 15, &torrent, &[]);
    let hash = info_hash(&torrent);
    (torrent, hash)
}

/// `extra` TOML with `{rec}` standing for the recorder script's path.
fn config(template: &str, script: &Path) -> String {
    template.replace("{rec}", &script.display().to_string())
}

/// Whether a process still runs (a zombie waiting for its reaper does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn a_hostile_name_reaches_the_hook_as_one_literal_argument_and_nothing_runs_in_a_shell() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let rec = recorder(work.path());
    let id = std::process::id();
    let name = format!("-rf it's \"q\" $(touch pwned{id}) `touch tick{id}` ; {{path}} x.bin");
    let mut ds = Dropseed::new(&config(
        "[hooks]\n\
         on_added = [\"{rec}\", \"{name}\", \"--name={name}\", \"{path}\", \"{hash}\", \"{size}\", \"{category}\"]\n\
         on_complete = [\"{rec}\", \"{name}\"]\n",
        &rec,
    ));
    let (torrent, hash) = complete_torrent(&ds, work.path(), &name, 100_000);
    ds.start();
    ds.drop_file(&torrent, "hostile.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(30));

    let added = wait_calls(work.path(), "added", 1);
    assert_eq!(added.len(), 1, "on_added ran once");
    let (args, env) = &added[0];
    let path = ds.download_dir().join(&name).display().to_string();
    assert_eq!(args, &[name.clone(), format!("--name={name}"), path.clone(), hash.clone(), "100000".into(), "".into()]);
    assert_eq!(env["DROPSEED_EVENT"], "added");
    assert_eq!(env["DROPSEED_NAME"], name);
    assert_eq!(env["DROPSEED_PATH"], path);
    assert_eq!(env["DROPSEED_HASH"], hash);
    assert_eq!(env["DROPSEED_SIZE"], "100000");
    assert_eq!(env["DROPSEED_CATEGORY"], "");

    // Output and exit status logged, named by torrent and hook.
    let log = ds.wait_log("hook finished", Duration::from_secs(10));
    assert!(log.contains("line=\"hello from added\"") && log.contains("line=\"and from stderr\""), "{log}");
    let finished = log.lines().find(|l| l.contains("hook finished")).unwrap();
    assert!(finished.contains("hook=\"on_added\"") || finished.contains("hook=on_added"), "{finished}");
    assert!(finished.contains("$(touch pwned"), "the line names the torrent: {finished}");

    // Complete when added: not completed here, so no on_complete.
    std::thread::sleep(Duration::from_secs(2));
    assert!(calls(work.path(), "complete").is_empty(), "on_complete ran for a torrent added complete");
    assert!(!ds.log_text().contains("on_complete"));

    // Nothing was run by a shell, wherever it would have run.
    let cwd = std::env::current_dir().unwrap();
    for dir in [cwd.as_path(), work.path(), ds.dir.path(), ds.download_dir().as_path()] {
        for f in [format!("pwned{id}"), format!("tick{id}")] {
            let p = dir.join(&f);
            let found = p.exists();
            let _ = std::fs::remove_file(&p);
            assert!(!found, "{} was created: the name went through a shell", p.display());
        }
    }

    // Restored at startup is not added: no second on_added.
    assert!(ds.stop().success());
    ds.start();
    ds.wait_state(&hash, "seeding", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(calls(work.path(), "added").len(), 1, "on_added ran again for a restored torrent");
}

#[test]
fn on_added_fires_for_a_magnet_with_empty_size_and_path() {
    let work = tempdir();
    let rec = recorder(work.path());
    let ds = Dropseed::start_with(&config(
        "[hooks]\non_added = [\"{rec}\", \"{name}\", \"[{size}]\", \"[{path}]\"]\n",
        &rec,
    ));
    let hash = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
    let out = ds.cli(&["add", &format!("magnet:?xt=urn:btih:{hash}&dn=a%20magnet")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (args, env) = wait_calls(work.path(), "added", 1).remove(0);
    assert_eq!(args, ["a magnet", "[]", "[]"]);
    assert_eq!(env["DROPSEED_HASH"], hash);
}

#[test]
fn on_complete_fires_once_a_download_finishes_here() {
    if !Swarm::tools_present() {
        return;
    }
    let swarm = Swarm::single("hooked.bin", 3 * 1024 * 1024 + 17, 16, 41);
    let work = tempdir();
    let rec = recorder(work.path());
    let ds = Dropseed::start_with(&config(
        "[hooks]\non_complete = [\"{rec}\", \"{name}\", \"{path}\", \"{size}\", \"{hash}\"]\n",
        &rec,
    ));
    ds.drop_file(&swarm.torrent, "hooked.torrent");
    ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(60));
    let complete = wait_calls(work.path(), "complete", 1);
    let path = ds.download_dir().join("hooked.bin");
    assert_eq!(
        complete[0].0,
        ["hooked.bin".to_string(), path.display().to_string(), (3 * 1024 * 1024 + 17).to_string(), swarm.hash.clone()]
    );
    assert_eq!(complete[0].1["DROPSEED_EVENT"], "complete");
    // The path names the data, complete when the hook runs.
    assert_same_tree(&swarm.data, &ds.download_dir());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(calls(work.path(), "complete").len(), 1, "on_complete ran once");
}

#[test]
fn a_seeding_limit_fires_on_seeding_done() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let rec = recorder(work.path());
    let mut ds = Dropseed::new(&config(
        "[seeding]\nseed_time_limit = \"2s\"\n[hooks]\non_seeding_done = [\"{rec}\", \"{name}\"]\n",
        &rec,
    ));
    let (torrent, hash) = complete_torrent(&ds, work.path(), "limited.bin", 50_000);
    ds.start();
    ds.drop_file(&torrent, "limited.torrent");
    ds.wait_state(&hash, "stopped", Duration::from_secs(30));
    let done = wait_calls(work.path(), "seeding_done", 1);
    assert_eq!(done[0].0, ["limited.bin"]);
    assert_eq!(done[0].1["DROPSEED_EVENT"], "seeding_done");
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_everything_it_started() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    // Starts a child that would outlive it, notes the child's pid, hangs.
    let hang = script(
        work.path(),
        "hang.sh",
        &format!(
            "sleep 300 &\necho $! > '{d}/child.tmp'\nmv '{d}/child.tmp' '{d}/child.pid'\nsleep 300\n",
            d = work.path().display()
        ),
    );
    let mut ds = Dropseed::new(&format!("[hooks]\ntimeout = \"2s\"\non_added = [\"{}\"]\n", hang.display()));
    let (torrent, hash) = complete_torrent(&ds, work.path(), "slowhook.bin", 50_000);
    ds.start();
    ds.drop_file(&torrent, "slowhook.torrent");
    let pid_file = work.path().join("child.pid");
    let child: u32 = wait_for("the hook's child pid", Duration::from_secs(20), || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    assert!(alive(child), "the hook's child runs while the hook does");
    let log = ds.wait_log("hook timed out", Duration::from_secs(15));
    let line = log.lines().find(|l| l.contains("hook timed out")).unwrap();
    assert!(line.contains("level=warn") && line.contains("after 2s") && line.contains("slowhook.bin"), "{line}");
    wait_for("the hook's child to be killed with its group", Duration::from_secs(5), || (!alive(child)).then_some(()));
    // The torrent and the daemon carry on.
    assert_eq!(ds.torrent(&hash).unwrap()["state"], "seeding");
}

#[test]
fn a_missing_hook_program_is_a_warning_and_the_torrent_keeps_seeding() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let mut ds = Dropseed::new("[hooks]\non_added = [\"/nonexistent/dropseed-notify\", \"{name}\"]\n");
    let (torrent, hash) = complete_torrent(&ds, work.path(), "nohook.bin", 50_000);
    ds.start();
    ds.drop_file(&torrent, "nohook.torrent");
    let log = ds.wait_log("program not found", Duration::from_secs(20));
    let line = log.lines().find(|l| l.contains("program not found")).unwrap();
    assert!(
        line.contains("level=warn") && line.contains("/nonexistent/dropseed-notify") && line.contains("nohook.bin"),
        "{line}"
    );
    ds.wait_state(&hash, "seeding", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ds.torrent(&hash).unwrap()["state"], "seeding");
}

#[test]
fn a_chatty_hook_gets_a_bounded_printable_log() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let chatty = script(
        work.path(),
        "chatty.sh",
        "printf 'red \\033[31m\\n'\nhead -c 100000 /dev/zero | tr '\\0' x\necho\nseq 1 1000\nexit 3\n",
    );
    let mut ds = Dropseed::new(&format!("[hooks]\non_added = [\"{}\"]\n", chatty.display()));
    let (torrent, _) = complete_torrent(&ds, work.path(), "chatty.bin", 50_000);
    ds.start();
    ds.drop_file(&torrent, "chatty.torrent");
    let log = ds.wait_log("hook failed", Duration::from_secs(20));
    assert!(log.contains("exit status 3"), "{log}");
    assert!(!log.contains('\u{1b}'), "an escape sequence reached the log");
    assert!(log.contains("line=\"red ?[31m\""), "{log}");
    let output: Vec<&str> = log.lines().filter(|l| l.contains("hook output") && l.contains("line=")).collect();
    assert_eq!(output.len(), 50, "output lines logged");
    assert!(output.iter().all(|l| l.len() < 1000), "a long line is cut");
    assert!(log.contains("more than 50 lines"));
}

#[test]
fn stopping_dropseed_kills_a_running_hook_after_a_short_grace() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let hang = script(
        work.path(),
        "hang.sh",
        &format!(
            "sleep 300 &\necho $! > '{d}/child.tmp'\nmv '{d}/child.tmp' '{d}/child.pid'\nsleep 300\n",
            d = work.path().display()
        ),
    );
    let mut ds = Dropseed::new(&format!("[hooks]\non_added = [\"{}\"]\n", hang.display()));
    let (torrent, _) = complete_torrent(&ds, work.path(), "stopping.bin", 50_000);
    ds.start();
    ds.drop_file(&torrent, "stopping.torrent");
    let child: u32 = wait_for("the hook's child pid", Duration::from_secs(20), || {
        std::fs::read_to_string(work.path().join("child.pid")).ok()?.trim().parse().ok()
    });
    let started = std::time::Instant::now();
    assert!(ds.stop().success());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "stopping took {took:?}");
    assert!(ds.log_text().contains("dropseed is stopping"));
    wait_for("the hook's child to be gone", Duration::from_secs(5), || (!alive(child)).then_some(()));
}

/// Issue #23, 13: a hook that exits at once but leaves a child holding its
/// stdout. Its end is its own exit, not the child's: the slot frees (the
/// second hook runs with `max_running = 1`), the log gives its exit status,
/// nothing says "timed out" under a one-hour timeout, and the child is
/// killed with the hook's process group once the output grace has passed.
#[test]
fn a_hook_that_exits_is_done_though_a_child_it_left_holds_its_output() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let d = work.path().display().to_string();
    let linger = script(
        work.path(),
        "linger.sh",
        &format!(
            "sleep 600 &\necho $! > \"{d}/child.$$.tmp\"\nmv \"{d}/child.$$.tmp\" \"{d}/child.$$.pid\"\necho done\n"
        ),
    );
    let mut ds =
        Dropseed::new(&format!("[hooks]\nmax_running = 1\ntimeout = \"1h\"\non_added = [\"{}\"]\n", linger.display()));
    let (first, _) = complete_torrent(&ds, work.path(), "linger1.bin", 50_000);
    let second = work.path().join("t2.torrent");
    payload(&ds.download_dir().join("linger2.bin"), 60_000, 9);
    mktorrent(&ds.download_dir().join("linger2.bin"), "http://127.0.0.1:1/announce", 15, &second, &[]);
    ds.start();
    ds.drop_file(&first, "linger1.torrent");
    ds.drop_file(&second, "linger2.torrent");

    // Both hooks ran to their end, one after the other, in well under the hour.
    let log = wait_for("both hooks to finish", Duration::from_secs(60), || {
        let log = ds.log_text();
        (log.matches("hook finished").count() >= 2).then_some(log)
    });
    let finished: Vec<&str> = log.lines().filter(|l| l.contains("hook finished")).collect();
    for line in &finished {
        assert!(line.contains("exit status 0"), "{line}");
    }
    assert!(finished.iter().any(|l| l.contains("linger1.bin")) && finished.iter().any(|l| l.contains("linger2.bin")));
    assert!(log.contains("line=done"), "the hook's output is logged: {log}");
    assert!(!log.contains("timed out"), "{log}");

    // The children it left are killed with its group.
    let children: Vec<u32> = wait_for("both children's pids", Duration::from_secs(10), || {
        let pids: Vec<u32> = std::fs::read_dir(work.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .collect();
        (pids.len() == 2).then_some(pids)
    });
    for child in children {
        wait_for("the lingering child to be killed", Duration::from_secs(10), || (!alive(child)).then_some(()));
    }
}
