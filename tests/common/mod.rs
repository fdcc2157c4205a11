//! The local swarm every integration test uses: real programs on 127.0.0.1,
//! each with free ports and its own temp dir, killed when dropped.
//!
//! * [`Tracker`]: Debian's opentracker (HTTP and UDP on one port) with a
//!   whitelist that [`Tracker::allow`] extends and reloads with SIGHUP.
//! * [`Aria2`], [`Transmission`], [`Libtorrent`]: reference peers.
//! * [`Dropseed`]: the real `dropseed` binary with a config of the test's.
//! * [`payload`] writes deterministic pseudo-random data; [`mktorrent`]
//!   makes the torrent with a real tool.
//!
//! A missing tool fails the test with the package to install, unless the
//! user set `DROPSEED_SKIP_EXTERNAL=1` (never under `CI`): see [`missing`].

#![allow(dead_code)]

pub mod logfmt;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn dropseed_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dropseed"))
}

/// True when `tool` is on PATH; otherwise fails (CI) or asks to skip.
pub fn require(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    found
        || missing(&format!("{tool} is missing: install the Debian package '{package}' (scripts/install-test-deps.sh)"))
}

/// Debian's python3 with python3-libtorrent importable, if present.
pub fn require_libtorrent() -> bool {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok || missing(
        "libtorrent is missing: install the Debian package 'python3-libtorrent' (scripts/install-test-deps.sh)",
    )
}

/// A test's missing prerequisite: fails naming what to install, unless the
/// user opted out with `DROPSEED_SKIP_EXTERNAL=1`; then the test is skipped
/// (returns false) and counted in the log `scripts/test` sums up, so a
/// passing run never hides what it did not test.
pub fn missing(msg: &str) -> bool {
    let opted_out = std::env::var_os("DROPSEED_SKIP_EXTERNAL").is_some_and(|v| v == "1");
    assert!(
        opted_out && std::env::var_os("CI").is_none(),
        "{msg}\n(scripts/test installs the test tools; DROPSEED_SKIP_EXTERNAL=1 skips the tests that need them)"
    );
    eprintln!("SKIPPED: {msg}");
    let log = std::env::var_os("DROPSEED_SKIPPED_LOG")
        .map_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.log"), PathBuf::from);
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(file, "{msg}");
    }
    false
}

/// A 4 MiB tmpfs mounted on `dir` (created if need be), unmounted when
/// dropped: a small disk. `None` where it cannot be mounted (tmpfs needs
/// root), which fails under CI.
pub fn small_disk(dir: &Path) -> Option<SmallDisk> {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        missing("cannot mount a small tmpfs (needs root)");
        return None;
    }
    Some(SmallDisk(dir.to_path_buf()))
}

pub struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

pub fn free_port() -> u16 {
    // Ports from the OS, so parallel tests do not collide; free for UDP too,
    // as dropseed's DHT and libtorrent use the same number there.
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A temp dir others can read (opentracker drops to `nobody`).
pub fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("dropseed-test").tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Writes `len` deterministic pseudo-random bytes (xorshift from `seed`).
pub fn payload(path: &Path, len: u64, seed: u64) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Makes a torrent of `src` (file or directory) with mktorrent.
pub fn mktorrent(src: &Path, announce: &str, piece_log2: u32, out: &Path, extra: &[&str]) {
    let st = Command::new("mktorrent")
        .args(["-a", announce, "-l", &piece_log2.to_string(), "-o"])
        .arg(out)
        .args(extra)
        .arg(src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run mktorrent");
    assert!(st.success(), "mktorrent failed");
}

/// The info hash of a torrent file, via dropseed's own parser.
pub fn info_hash(torrent: &Path) -> String {
    let bytes = std::fs::read(torrent).unwrap();
    dropseed::metainfo::Metainfo::from_torrent_bytes(&bytes).unwrap().info_hash.hex()
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every file under `expected` equals the same path under `actual`.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    compare_tree(expected, actual, false)
}

/// The same, but zero-length files may be absent (transmission never
/// creates them).
pub fn assert_same_data(expected: &Path, actual: &Path) {
    compare_tree(expected, actual, true)
}

fn compare_tree(expected: &Path, actual: &Path, skip_empty: bool) {
    let mut files = 0;
    for rel in files_under(expected) {
        let want = std::fs::read(expected.join(&rel)).unwrap();
        if skip_empty && want.is_empty() {
            continue;
        }
        let got =
            std::fs::read(actual.join(&rel)).unwrap_or_else(|err| panic!("{}: {err}", actual.join(&rel).display()));
        assert!(want == got, "{} differs from the source", actual.join(&rel).display());
        files += 1;
    }
    assert!(files > 0, "no files compared");
}

/// Every file under `dir`, relative and sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = dir.join(&rel);
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        } else {
            out.push(rel);
        }
    }
    out.sort();
    out
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

pub struct Tracker {
    pub port: u16,
    dir: tempfile::TempDir,
    proc: Proc,
}

impl Tracker {
    pub fn start() -> Tracker {
        let dir = tempdir();
        let wl = dir.path().join("wl.txt");
        std::fs::write(&wl, "").unwrap();
        std::fs::set_permissions(&wl, std::fs::Permissions::from_mode(0o644)).unwrap();
        let port = free_port();
        let child = Command::new("opentracker")
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-P", &port.to_string(), "-d"])
            .arg(dir.path())
            .args(["-w", "wl.txt"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start opentracker");
        let t = Tracker { port, dir, proc: Proc(child) };
        wait_for("opentracker to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        t
    }

    pub fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    pub fn udp_url(&self) -> String {
        format!("udp://127.0.0.1:{}/announce", self.port)
    }

    /// Adds an info hash to the whitelist and makes opentracker reload it.
    pub fn allow(&self, hash: &str) {
        let wl = self.dir.path().join("wl.txt");
        let mut f = std::fs::OpenOptions::new().append(true).open(&wl).unwrap();
        writeln!(f, "{hash}").unwrap();
        drop(f);
        self.proc.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Adds many info hashes to the whitelist with one reload.
    pub fn allow_all(&self, hashes: &[String]) {
        let wl = self.dir.path().join("wl.txt");
        let mut f = std::fs::OpenOptions::new().append(true).open(&wl).unwrap();
        for h in hashes {
            writeln!(f, "{h}").unwrap();
        }
        drop(f);
        self.proc.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Scrape: (seeders, leechers, completed) as opentracker counts them.
    pub fn scrape(&self, hash: &str) -> Option<(u64, u64, u64)> {
        use std::io::Read;
        let bytes = dropseed::types::from_hex(hash)?;
        let enc: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET /scrape?info_hash={enc} HTTP/1.0\r\n\r\n").ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).ok()?;
        let find = |key: &[u8]| -> Option<u64> {
            let pos = body.windows(key.len()).position(|w| w == key)? + key.len();
            let rest = &body[pos..];
            let end = rest.iter().position(|&c| c == b'e')?;
            std::str::from_utf8(&rest[1..end]).ok()?.parse().ok()
        };
        Some((find(b"8:complete")?, find(b"10:incomplete")?, find(b"10:downloaded")?))
    }

    /// Announces a peer at `port` by hand (for test peers that cannot).
    pub fn announce(&self, hash: &str, port: u16, left: u64) {
        use std::io::Read;
        let bytes = dropseed::types::from_hex(hash).unwrap();
        let enc: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET /announce?info_hash={enc}&peer_id=-XX0001-{port:012}&port={port}&uploaded=0&downloaded=0&left={left}&compact=1&event=started HTTP/1.0\r\n\r\n"
        )
        .unwrap();
        let mut body = Vec::new();
        let _ = s.read_to_end(&mut body);
    }

    /// Waits until the tracker counts at least `n` seeders for `hash`.
    pub fn wait_seeders(&self, hash: &str, n: u64) {
        wait_for(&format!("{n} seeder(s) announced to the tracker"), Duration::from_secs(60), || {
            self.scrape(hash).filter(|s| s.0 >= n).map(|_| ())
        });
    }

    /// Waits until the tracker counts at least `n` peers (seeders + leechers).
    pub fn wait_peers(&self, hash: &str, n: u64) {
        wait_for(&format!("{n} peer(s) announced to the tracker"), Duration::from_secs(60), || {
            self.scrape(hash).filter(|s| s.0 + s.1 >= n).map(|_| ())
        });
    }
}

pub struct Aria2 {
    pub port: u16,
    pub proc: Proc,
}

impl Aria2 {
    fn spawn(torrent: &Path, dir: &Path, seed: bool, log: &Path) -> Aria2 {
        Aria2::spawn_with(torrent, dir, seed, log, &[])
    }

    /// Seeds with extra aria2c options (e.g. `--max-upload-limit=1M`).
    pub fn seed_with(torrent: &Path, dir: &Path, log: &Path, extra: &[&str]) -> Aria2 {
        Aria2::spawn_with(torrent, dir, true, log, extra)
    }

    fn spawn_with(torrent: &Path, dir: &Path, seed: bool, log: &Path, extra: &[&str]) -> Aria2 {
        let port = free_port();
        let mut cmd = Command::new("aria2c");
        cmd.args([
            "--enable-dht=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--file-allocation=none",
            "--bt-tracker-connect-timeout=5",
            "--bt-request-peer-speed-limit=0",
            "--allow-overwrite=true",
            &format!("--listen-port={port}"),
            &format!("--dir={}", dir.display()),
        ]);
        if seed {
            cmd.args(["-V", "--seed-ratio=0.0"]);
        } else {
            cmd.args(["--seed-time=0"]);
        }
        cmd.args(extra);
        let log = std::fs::File::create(log).unwrap();
        let child = cmd.arg(torrent).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("start aria2c");
        Aria2 { port, proc: Proc(child) }
    }

    /// Seeds `torrent` from the data in `dir` (checks it first).
    pub fn seed(torrent: &Path, dir: &Path, log: &Path) -> Aria2 {
        Aria2::spawn(torrent, dir, true, log)
    }

    /// Downloads into `dir` and exits when complete.
    pub fn leech(torrent: &Path, dir: &Path, log: &Path) -> Aria2 {
        Aria2::spawn(torrent, dir, false, log)
    }

    /// Waits for aria2 to exit; true when it exited successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        wait_for("aria2c to finish", timeout, || self.proc.0.try_wait().unwrap()).success()
    }
}

pub struct Transmission {
    pub rpc_port: u16,
    pub peer_port: u16,
    pub proc: Proc,
    _home: tempfile::TempDir,
}

impl Transmission {
    pub fn start(download_dir: &Path) -> Transmission {
        Transmission::start_with(download_dir, serde_json::json!({}))
    }

    /// With extra settings.json keys (e.g. `{"encryption": 2}`).
    pub fn start_with(download_dir: &Path, extra: serde_json::Value) -> Transmission {
        let home = tempdir();
        let (rpc_port, peer_port) = (free_port(), free_port());
        let mut settings = serde_json::json!({
            "dht-enabled": false, "lpd-enabled": false, "pex-enabled": false, "utp-enabled": false,
            "port-forwarding-enabled": false, "rpc-port": rpc_port, "rpc-bind-address": "127.0.0.1",
            "rpc-authentication-required": false, "rpc-whitelist-enabled": false, "peer-port": peer_port,
            "download-dir": download_dir, "incomplete-dir-enabled": false, "ratio-limit-enabled": false,
            "speed-limit-up-enabled": false, "speed-limit-down-enabled": false, "message-level": 1
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            settings[k] = v.clone();
        }
        std::fs::write(home.path().join("settings.json"), settings.to_string()).unwrap();
        let child = Command::new("transmission-daemon")
            .args(["-f", "-g"])
            .arg(home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start transmission-daemon");
        let t = Transmission { rpc_port, peer_port, proc: Proc(child), _home: home };
        wait_for("transmission RPC", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", rpc_port)).ok()
        });
        t
    }

    fn remote(&self, args: &[&str]) -> String {
        let out = Command::new("transmission-remote")
            .arg(self.rpc_port.to_string())
            .args(args)
            .output()
            .expect("transmission-remote");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn add(&self, torrent: &Path) {
        let out = self.remote(&["-a", torrent.to_str().unwrap()]);
        assert!(out.contains("success"), "transmission-remote -a: {out}");
    }

    /// Percent done of the first torrent, from `transmission-remote -l`.
    pub fn percent_done(&self) -> Option<u32> {
        let out = self.remote(&["-l"]);
        let line = out.lines().nth(1)?;
        let field = line.split_whitespace().nth(1)?;
        field.trim_end_matches('%').parse().ok()
    }
}

/// A libtorrent session driven by scripts/lt_peer.py.
pub struct Libtorrent {
    pub port: u16,
    pub proc: Proc,
}

impl Libtorrent {
    pub fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lt_peer.py")
    }

    /// `mode` is "seed" or "leech"; extra args go to the script.
    pub fn start(mode: &str, torrent_or_magnet: &str, dir: &Path, log: &Path, extra: &[&str]) -> Libtorrent {
        Libtorrent::start_on(free_port(), mode, torrent_or_magnet, dir, log, extra)
    }

    /// The same on a given port (TCP and, with the DHT, UDP).
    pub fn start_on(
        port: u16,
        mode: &str,
        torrent_or_magnet: &str,
        dir: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Libtorrent {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("/usr/bin/python3")
            .arg(Libtorrent::script())
            .args([mode, torrent_or_magnet, "--dir"])
            .arg(dir)
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start libtorrent");
        Libtorrent { port, proc: Proc(child) }
    }
}

/// The real dropseed binary with its own data directory and config.
pub struct Dropseed {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub proc: Option<Proc>,
    /// RLIMIT_NOFILE (soft and hard) the daemon starts under, if set.
    pub nofile: Option<u64>,
}

impl Dropseed {
    /// Writes a config (`extra` is appended TOML) without starting.
    pub fn new(extra: &str) -> Dropseed {
        let dir = tempdir();
        let port = free_port();
        let d = dir.path();
        let config = d.join("dropseed.toml");
        // Keys before the first section header belong to [network].
        let split = if extra.starts_with('[') { 0 } else { extra.find("\n[").map_or(extra.len(), |i| i + 1) };
        let (net, extra) = extra.split_at(split);
        let text = format!(
            "[paths]\nwatch_dir = \"{w}\"\ndownload_dir = \"{dl}\"\nincomplete_dir = \"{inc}\"\nstate_dir = \"{st}\"\nlog_dir = \"{lg}\"\n\
             [network]\nlisten_port = {port}\nlisten_address = \"127.0.0.1\"\n{net}\n{dht}{extra}\n",
            // Tests never reach the public DHT: off unless the test sets it up.
            dht = if extra.contains("[dht]") { "" } else { "[dht]\nenabled = false\n" },
            w = d.join("watch").display(),
            dl = d.join("downloads").display(),
            inc = d.join("incomplete").display(),
            st = d.join("state").display(),
            lg = d.join("logs").display(),
        );
        std::fs::write(&config, text).unwrap();
        Dropseed { dir, config, port, proc: None, nofile: None }
    }

    pub fn start_with(extra: &str) -> Dropseed {
        let mut d = Dropseed::new(extra);
        d.start();
        d
    }

    /// Starts the daemon and waits for its control socket. A daemon that
    /// exits first fails the test with its console output; one that lost
    /// its port to a parallel test (free ports are only free when asked)
    /// is started again on another.
    pub fn start(&mut self) {
        for attempt in 1..=3 {
            let console = self.dir.path().join("console.log");
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&console).unwrap();
            let mut cmd = Command::new(dropseed_bin());
            cmd.arg("run").arg("-c").arg(&self.config).env("NO_COLOR", "1");
            if let Some(n) = self.nofile {
                use std::os::unix::process::CommandExt;
                // SAFETY: setrlimit is async-signal-safe; nothing else runs
                // between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
                        match libc::setrlimit(libc::RLIMIT_NOFILE, &lim) {
                            0 => Ok(()),
                            _ => Err(std::io::Error::last_os_error()),
                        }
                    });
                }
            }
            let child = cmd.stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("start dropseed");
            self.proc = Some(Proc(child));
            let sock = self.dir.path().join("state/control.sock");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                    return;
                }
                let exited = self.proc.as_mut().unwrap().0.try_wait().unwrap();
                if let Some(status) = exited {
                    let said = std::fs::read_to_string(&console).unwrap_or_default();
                    if said.contains("Address already in use") && attempt < 3 {
                        let port = free_port();
                        let text = std::fs::read_to_string(&self.config).unwrap();
                        let text =
                            text.replace(&format!("listen_port = {}\n", self.port), &format!("listen_port = {port}\n"));
                        std::fs::write(&self.config, text).unwrap();
                        self.port = port;
                        break;
                    }
                    panic!("dropseed exited ({status}) before its control socket was up:\n{said}");
                }
                assert!(
                    Instant::now() < deadline,
                    "no control socket after 30 s; console:\n{}",
                    std::fs::read_to_string(&console).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn watch_dir(&self) -> PathBuf {
        self.dir.path().join("watch")
    }
    pub fn download_dir(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }
    /// Where torrents download until complete.
    pub fn incomplete_dir(&self) -> PathBuf {
        self.dir.path().join("incomplete")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Drops a file into the watch folder the way a careful user does:
    /// written under a temporary name, then renamed in.
    pub fn drop_file(&self, src: &Path, name: &str) {
        let tmp = self.watch_dir().join(format!("{name}.part"));
        std::fs::create_dir_all(self.watch_dir()).unwrap();
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, self.watch_dir().join(name)).unwrap();
    }

    /// Runs a CLI subcommand against this daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(dropseed_bin()).args(args).arg("-c").arg(&self.config).output().unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The status entry of the torrent with this info hash, if any.
    pub fn torrent(&self, hash: &str) -> Option<serde_json::Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["torrents"].as_array()?.iter().find(|t| t["info_hash"] == hash).cloned()
    }

    pub fn wait_state(&self, hash: &str, state: &str, timeout: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let t = self.torrent(hash);
            if let Some(t) = t.as_ref().filter(|t| t["state"] == state) {
                return t.clone();
            }
            if std::time::Instant::now() > deadline {
                let log = self.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
                panic!(
                    "timed out after {timeout:?} waiting for torrent {} to be {state}; last status: {t:?}\nlog tail:\n{}",
                    &hash[..8],
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Everything the daemon logged to its files so far.
    pub fn log_text(&self) -> String {
        let mut all = String::new();
        let Ok(entries) = std::fs::read_dir(self.log_dir()) else {
            return all;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| !p.is_symlink()).collect();
        paths.sort();
        for p in paths {
            all.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        all
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(&format!("log line containing {needle:?}"), timeout, || {
            let t = self.log_text();
            t.contains(needle).then_some(t)
        })
    }

    pub fn signal(&self, sig: i32) {
        self.proc.as_ref().expect("running").signal(sig);
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut p = self.proc.take().expect("running");
        p.signal(libc::SIGTERM);
        let status = wait_for("dropseed to exit", Duration::from_secs(15), || p.0.try_wait().unwrap());
        drop(p);
        status
    }

    pub fn kill9(&mut self) {
        let mut p = self.proc.take().expect("running");
        let _ = p.0.kill();
        let _ = p.0.wait();
    }
}

/// Every test that runs the daemon also checks every line it logged: valid
/// logfmt, one key for a torrent's name, its short hash beside it.
impl Drop for Dropseed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        drop(self.proc.take());
        let text = self.log_text();
        // A line cut by a kill is not the format's fault.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let bad = logfmt::bad_lines(whole);
        if !bad.is_empty() {
            let shown: Vec<&String> = bad.iter().take(10).collect();
            panic!(
                "{} log lines break the format:\n{}",
                bad.len(),
                shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A ready swarm: opentracker, a torrent made by mktorrent over fresh
/// payload, and an aria2 seeder announced to the tracker.
pub struct Swarm {
    pub work: tempfile::TempDir,
    pub tracker: Tracker,
    pub torrent: PathBuf,
    pub hash: String,
    /// The directory holding the payload (what a downloader's tree must equal).
    pub data: PathBuf,
    pub seeder: Option<Aria2>,
}

impl Swarm {
    /// A single-file torrent named `name` of `len` bytes, seeded by aria2.
    pub fn single(name: &str, len: u64, piece_log2: u32, seed: u64) -> Swarm {
        Swarm::single_with(name, len, piece_log2, seed, &[])
    }

    /// The same, with extra options for the aria2 seeder.
    pub fn single_with(name: &str, len: u64, piece_log2: u32, seed: u64, aria2: &[&str]) -> Swarm {
        let work = tempdir();
        let tracker = Tracker::start();
        let data = work.path().join("data");
        payload(&data.join(name), len, seed);
        let torrent = work.path().join(format!("{name}.torrent"));
        mktorrent(&data.join(name), &tracker.announce_url(), piece_log2, &torrent, &[]);
        let hash = info_hash(&torrent);
        tracker.allow(&hash);
        let seeder = Aria2::seed_with(&torrent, &data, &work.path().join("aria2-seed.log"), aria2);
        tracker.wait_seeders(&hash, 1);
        Swarm { work, tracker, torrent, hash, data, seeder: Some(seeder) }
    }

    pub fn tools_present() -> bool {
        require("opentracker", "opentracker") && require("aria2c", "aria2") && require("mktorrent", "mktorrent")
    }
}

/// A scripted peer for hostile-input tests. It accepts connections for
/// `info_hash`, answers the handshake as `peer_id` followed by `greeting`
/// (already encoded messages), then hands every message it receives to a
/// handler made fresh for each connection, which appends its replies.
/// Returns its port and how many connections it accepted with a plaintext
/// handshake for `info_hash` (an encryption handshake, which it does not
/// speak, is not a connection it took: dropseed's default dials encrypted
/// first and falls back to plaintext).
pub fn spawn_scripted_peer<F, H>(
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    greeting: Vec<u8>,
    new_handler: F,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn() -> H + Send + 'static,
    H: FnMut(&dropseed::wire::Message<'_>, &mut Vec<u8>) + Send + 'static,
{
    use std::io::Read;
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let (greeting, mut handler, count) = (greeting.clone(), new_handler(), count.clone());
            std::thread::spawn(move || {
                let mut hs = [0u8; 68];
                if s.read_exact(&mut hs).is_err() || hs[28..48] != info_hash {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let mut out = hs.to_vec();
                out[48..68].copy_from_slice(&peer_id);
                out.extend_from_slice(&greeting);
                if s.write_all(&out).is_err() {
                    return;
                }
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let Ok(n) = s.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let mut used = 0;
                    let mut reply = Vec::new();
                    while let Ok(Some((msg, len))) = dropseed::wire::decode(&buf[used..]) {
                        handler(&msg, &mut reply);
                        used += len;
                    }
                    buf.drain(..used);
                    if s.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// A single-file torrent of `len` bytes on `tracker`, allowed there:
/// (torrent, hash, data dir).
pub fn tracked_torrent(tracker: &Tracker, work: &Path, name: &str, len: u64, seed: u64) -> (PathBuf, String, PathBuf) {
    let data = work.join(format!("data-{name}"));
    payload(&data.join(name), len, seed);
    let torrent = work.join(format!("{name}.torrent"));
    mktorrent(&data.join(name), &tracker.announce_url(), 16, &torrent, &[]);
    let hash = info_hash(&torrent);
    tracker.allow(&hash);
    (torrent, hash, data)
}
