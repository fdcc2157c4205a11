//! The README's install, done for real as root: `scripts/install.sh` puts
//! the binary, config, unit and user in place; the daemon is then started
//! the way the unit starts it (its User, Group, UMask, WorkingDirectory and
//! ExecStart, read from the installed unit), as far as a machine without a
//! running systemd allows. A second user in the `dropseed` group (Sonarr's
//! place) drops a torrent, reads the status through the CLI from another
//! folder without flags, and hardlinks the finished file into its library.
//!
//! It changes the machine (users, /usr/local, /etc, /var/lib), so it runs as
//! root only and refuses to touch an existing installation.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const UNIT: &str = "/etc/systemd/system/dropseed.service";
const TEMPLATE: &str = "/etc/systemd/system/dropseed@.service";
const CONFIG: &str = "/etc/dropseed/dropseed.toml";
const DATA: &str = "/var/lib/dropseed";
const SONARR: &str = "dstest-sonarr";
const LIBRARY: &str = "/var/lib/dstest-library";

/// Undoes the installation, also when the test fails half-way.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-KILL", "-u", "dropseed"]).status();
        for user in [SONARR, "dropseed"] {
            let _ = Command::new("userdel").arg(user).output();
        }
        let _ = Command::new("groupdel").arg("dropseed").output();
        for p in [DATA, "/etc/dropseed", LIBRARY, "/usr/local/share/doc/dropseed"] {
            let _ = std::fs::remove_dir_all(p);
        }
        for f in ["/usr/local/bin/dropseed", UNIT, TEMPLATE] {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?} failed: {}{}", text(&out.stdout), text(&out.stderr));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `args` run as `user` with that user's groups, from `cwd`, with the
/// environment cleared (no DROPSEED_CONFIG, a plain PATH).
fn as_user(user: &str, cwd: &str, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([&format!("--reuid={user}"), &format!("--regid={user}"), "--init-groups", "--"])
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    c
}

/// The value of `key=` in the unit's [Service] section.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next()
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .trim()
        .to_string()
}

#[test]
fn the_readme_install_works_for_the_service_and_for_sonarr() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 && missing("this test installs dropseed system-wide: run it as root") {
        return;
    }
    if !Swarm::tools_present() {
        return;
    }
    for p in ["/usr/local/bin/dropseed", CONFIG, UNIT, DATA, "/etc/dropseed"] {
        assert!(!Path::new(p).exists(), "{p} exists: refusing to test over a real installation");
    }
    for name in ["passwd", "group"] {
        let out = Command::new("getent").args([name, "dropseed"]).output().unwrap();
        assert!(!out.status.success(), "a dropseed {name} entry exists: refusing to test over a real installation");
    }
    let _undo = Installed;
    let repo = env!("CARGO_MANIFEST_DIR");

    // The install, as the README says, with this build's binary.
    // NO_START: on a machine where systemd runs, the test starts the daemon
    // itself rather than a real service.
    let out = run(Command::new("sh")
        .arg("scripts/install.sh")
        .current_dir(repo)
        .env("BIN", dropseed_bin())
        .env("NO_START", "1"));
    let said = text(&out.stdout);
    assert!(said.contains("wrote /etc/dropseed/dropseed.toml"), "{said}");
    verify_unit(UNIT);
    for_a_test(CONFIG, DATA, 6881);
    let _daemon = start_as_unit(&std::fs::read_to_string(UNIT).unwrap(), DATA);

    // Sonarr's user, in the dropseed group.
    run(Command::new("useradd").args(["--no-create-home", "--groups", "dropseed", SONARR]));
    run(Command::new("install").args(["-d", "-o", SONARR, "-m", "755", LIBRARY]));
    let swarm = Swarm::single("episode.mkv", 3 << 20, 16, 91);
    let staged = format!("{LIBRARY}/episode.torrent");
    std::fs::copy(&swarm.torrent, &staged).unwrap();
    run(Command::new("chown").args([SONARR, &staged]));
    run(&mut as_user(SONARR, "/", &["cp", &staged, &format!("{DATA}/watch/episode.torrent")]));

    // Status from another folder, no flags, no environment.
    let finished = wait_for("the download to finish", Duration::from_secs(90), || {
        let out = as_user(SONARR, "/", &["dropseed", "status", "--json"]).output().unwrap();
        assert!(out.status.success(), "sonarr's status: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let t = v["torrents"].as_array()?.iter().find(|t| t["info_hash"] == swarm.hash.as_str())?.clone();
        (t["state"] == "seeding").then_some(t)
    });
    let path = finished["path"].as_str().unwrap().to_string();
    assert_eq!(path, format!("{DATA}/downloads/episode.mkv"));
    let table = run(&mut as_user(SONARR, "/tmp", &["dropseed", "status"]));
    assert!(text(&table.stdout).contains(&swarm.hash[..8]), "{}", text(&table.stdout));

    // Sonarr's import: a hardlink into its library (protected_hardlinks
    // needs the file readable and writable by the linking user).
    let linked = format!("{LIBRARY}/episode.mkv");
    run(&mut as_user(SONARR, "/", &["ln", &path, &linked]));
    let (want, got) = (std::fs::read(swarm.data.join("episode.mkv")).unwrap(), std::fs::read(&linked).unwrap());
    assert!(want == got, "the linked file differs from the source");
    let log = std::fs::read_to_string(format!("{DATA}/logs/dropseed.log")).unwrap();
    let bad = logfmt::bad_lines(&log);
    assert!(bad.is_empty(), "log lines: {bad:#?}");

    a_second_instance_runs_beside_the_first(&swarm);
}

/// `INSTANCE=second sh scripts/install.sh`: a daemon of its own from the
/// template unit (config, folders, port, control socket), running beside
/// the first, each seeing only its own torrents.
fn a_second_instance_runs_beside_the_first(first: &Swarm) {
    let repo = env!("CARGO_MANIFEST_DIR");
    let (config, data) = ("/etc/dropseed/second.toml", format!("{DATA}/second"));
    let first_port: u16 = std::fs::read_to_string(CONFIG)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("listen_port = ")?.split_whitespace().next()?.parse().ok())
        .expect("the first config's listen_port");
    let out = run(Command::new("sh")
        .arg("scripts/install.sh")
        .current_dir(repo)
        .env("BIN", dropseed_bin())
        .env("INSTANCE", "second")
        .env("NO_START", "1"));
    let said = text(&out.stdout);
    assert!(said.contains(&format!("wrote {config}")), "{said}");
    // A port of its own: the one above those the other configs use.
    let port = first_port + 1;
    assert!(said.contains(&format!("listen port {port}")), "{said}");
    let instance = std::fs::read_to_string(TEMPLATE).unwrap().replace("%i", "second");
    let unit_path = std::env::temp_dir().join(format!("dstest-{}/dropseed@second.service", std::process::id()));
    std::fs::create_dir_all(unit_path.parent().unwrap()).unwrap();
    std::fs::write(&unit_path, &instance).unwrap();
    verify_unit(unit_path.to_str().unwrap());
    assert_eq!(unit_value(&instance, "ExecStart"), format!("/usr/local/bin/dropseed run --config {config}"));
    for_a_test(config, &data, port);
    let _daemon = start_as_unit(&instance, &data);

    let swarm = Swarm::single("other.mkv", 2 << 20, 16, 92);
    std::fs::copy(&swarm.torrent, format!("{data}/watch/other.torrent")).unwrap();
    let status = |config: Option<&str>| {
        let mut args = vec!["dropseed"];
        args.extend(config.map(|c| ["-c", c]).into_iter().flatten());
        args.extend(["status", "--json"]);
        let out = as_user(SONARR, "/", &args).output().unwrap();
        assert!(out.status.success(), "status: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["torrents"].as_array().unwrap().clone()
    };
    let seeding = wait_for("the second instance's download", Duration::from_secs(90), || {
        let t = status(Some(config)).into_iter().find(|t| t["info_hash"] == swarm.hash.as_str())?;
        (t["state"] == "seeding").then_some(t)
    });
    assert_eq!(seeding["path"], format!("{data}/downloads/other.mkv"));
    let theirs: Vec<_> = status(Some(config)).iter().map(|t| t["info_hash"].clone()).collect();
    let ours: Vec<_> = status(None).iter().map(|t| t["info_hash"].clone()).collect();
    assert_eq!(theirs, [serde_json::json!(swarm.hash)]);
    assert_eq!(ours, [serde_json::json!(first.hash)]);
}

/// `systemd-analyze verify` finds nothing to say about the unit file.
fn verify_unit(path: &str) {
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        return;
    }
    let out = Command::new("systemd-analyze").args(["verify", path]).output().unwrap();
    let complaints: Vec<String> = text(&out.stderr)
        .lines()
        // A container without a running systemd cannot resolve these.
        .filter(|l| !l.contains("Failed to connect") && !l.contains("System has not been booted"))
        .map(String::from)
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify {path}: {complaints:#?}");
}

/// What an admin edits: a free port (the installed one was `port`),
/// loopback, no public DHT in a test.
fn for_a_test(config_path: &str, data: &str, port: u16) {
    let free = free_port();
    let config = std::fs::read_to_string(config_path).unwrap();
    assert!(config.contains(&format!("\"{data}/watch\"")), "the config's folders are under {data}");
    let config = config
        .replace(&format!("listen_port = {port}"), &format!("listen_port = {free}"))
        .replace("listen_address = \"::\"", "listen_address = \"127.0.0.1\"")
        .replacen("enabled = true", "enabled = false", 1);
    assert!(config.contains("[dht]") && config.contains(&format!("listen_port = {free}")));
    std::fs::write(config_path, config).unwrap();
}

/// The daemon as `unit` runs it (User, Group, UMask, WorkingDirectory,
/// ExecStart), once its control socket is there.
fn start_as_unit(unit: &str, data: &str) -> Proc {
    let (user, group) = (unit_value(unit, "User"), unit_value(unit, "Group"));
    assert_eq!((user.as_str(), group.as_str()), ("dropseed", "dropseed"));
    let umask = unit_value(unit, "UMask");
    let cwd = unit_value(unit, "WorkingDirectory");
    let exec = unit_value(unit, "ExecStart");
    let script = format!("umask {umask}; exec {exec}");
    let daemon = as_user(&user, &cwd, &["sh", "-c", &script]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let daemon = Proc(daemon);
    wait_for("the control socket", Duration::from_secs(20), || {
        Path::new(&format!("{data}/state/control.sock")).exists().then_some(())
    });
    daemon
}
