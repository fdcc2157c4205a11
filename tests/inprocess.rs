//! The engine in process: several `Session`s in one tokio runtime, talking to
//! each other over 127.0.0.1, with torrents built here (no outside program).
//! Only the accept-loop tests run the real binary, to lower its fd limit.
//!
//! Tests that measure time or CPU take [`SERIAL`] so they do not load the
//! machine for one another.

mod common;

use dropseed::config::{ByteSize, Config};
use dropseed::magnet::Magnet;
use dropseed::metainfo::Metainfo;
use dropseed::session::{AddOutcome, CommandOutcome, ErrorKind, Reannounce, Session, SessionError};
use dropseed::torrent::task::Cmd;
use dropseed::torrent::{TorrentState, TorrentStatus};
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The rig
// ---------------------------------------------------------------------------

/// Held by the tests whose assertions are about time or CPU.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A config with every path under `dir`, an OS-chosen port on 127.0.0.1 and
/// no DHT.
fn config_in(dir: &Path) -> Config {
    let mut c = Config::default();
    c.paths.watch_dir = dir.join("watch");
    c.paths.download_dir = dir.join("downloads");
    c.paths.incomplete_dir = dir.join("incomplete");
    c.paths.state_dir = dir.join("state");
    c.paths.log_dir = dir.join("logs");
    c.network.listen_port = 0;
    c.network.listen_address = "127.0.0.1".into();
    c.dht.enabled = false;
    c.dht.bootstrap.clear();
    c
}

/// A session with its own temp dir.
struct Node {
    dir: tempfile::TempDir,
    session: Arc<Session>,
}

impl Node {
    async fn start() -> Node {
        Node::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut Config)) -> Node {
        let dir = tempfile::Builder::new().prefix("dropseed-inproc").tempdir().unwrap();
        Node::start_in(dir, tweak).await
    }

    /// Starts in `dir`, which may already hold data under `downloads/`.
    async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Node {
        let mut c = config_in(dir.path());
        tweak(&mut c);
        c.validate().unwrap();
        let session = Session::start(Arc::new(c)).await.unwrap();
        Node { dir, session }
    }

    fn download_dir(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.session.listen_port()))
    }

    fn status(&self, hash: &str) -> Option<TorrentStatus> {
        self.session.statuses().into_iter().find(|s| s.info_hash == hash)
    }

    /// Polls every 20 ms until the torrent's status satisfies `pred`.
    async fn wait_for(
        &self,
        hash: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&TorrentStatus) -> bool,
    ) -> TorrentStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(hash);
            if let Some(s) = s.as_ref().filter(|s| pred(s)) {
                return s.clone();
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; last status: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_state(&self, hash: &str, state: TorrentState, timeout: Duration) -> TorrentStatus {
        self.wait_for(hash, state.as_str(), timeout, |s| s.state == state).await
    }
}

/// A multi-file tree `root/name/...` of pseudo-random files; returns its size.
fn payload_tree(root: &Path, name: &str, files: &[(&str, u64)], seed: u64) -> u64 {
    for (i, (rel, len)) in files.iter().enumerate() {
        common::payload(&root.join(name).join(rel), *len, seed.wrapping_add(i as u64 * 7919));
    }
    files.iter().map(|f| f.1).sum()
}

/// A minimal bencode value.
enum Be {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Be>),
    Dict(BTreeMap<Vec<u8>, Be>),
}

impl Be {
    fn str(s: &str) -> Be {
        Be::Bytes(s.as_bytes().to_vec())
    }

    fn dict<const N: usize>(pairs: [(&str, Be); N]) -> Be {
        Be::Dict(pairs.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Be::Int(n) => out.extend_from_slice(format!("i{n}e").as_bytes()),
            Be::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Be::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Be::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Be::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }
}

/// The torrent of `root/name`, built the way mktorrent would: a file gives a
/// single-file torrent, a directory a multi-file one (paths sorted).
fn make_torrent(root: &Path, name: &str, piece_len: u64) -> Metainfo {
    make_torrent_with(root, name, piece_len, Vec::new())
}

/// [`make_torrent`] with more keys in the info dictionary (`source`,
/// `private`: another tracker's torrent of the same files).
fn make_torrent_with(root: &Path, name: &str, piece_len: u64, extra: Vec<(&str, Be)>) -> Metainfo {
    let top = root.join(name);
    let (sources, files): (Vec<PathBuf>, Option<Vec<Be>>) = if top.is_dir() {
        let rels = common::files_under(&top);
        let entries = rels
            .iter()
            .map(|rel| {
                let len = std::fs::metadata(top.join(rel)).unwrap().len();
                let path = rel.iter().map(|c| Be::str(c.to_str().unwrap())).collect();
                Be::dict([("length", Be::Int(len as i64)), ("path", Be::List(path))])
            })
            .collect();
        (rels.iter().map(|r| top.join(r)).collect(), Some(entries))
    } else {
        (vec![top.clone()], None)
    };
    // Hash the concatenated files, piece by piece.
    let mut pieces = Vec::new();
    let mut hasher = Sha1::new();
    let mut in_piece = 0u64;
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for src in &sources {
        let mut f = std::fs::File::open(src).unwrap();
        loop {
            let want = buf.len().min((piece_len - in_piece) as usize);
            let n = f.read(&mut buf[..want]).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            in_piece += n as u64;
            total += n as u64;
            if in_piece == piece_len {
                pieces.extend_from_slice(&hasher.finalize_reset());
                in_piece = 0;
            }
        }
    }
    if in_piece > 0 {
        pieces.extend_from_slice(&hasher.finalize_reset());
    }
    let mut info = BTreeMap::new();
    info.insert(b"name".to_vec(), Be::str(name));
    info.insert(b"piece length".to_vec(), Be::Int(piece_len as i64));
    info.insert(b"pieces".to_vec(), Be::Bytes(pieces));
    for (k, v) in extra {
        info.insert(k.as_bytes().to_vec(), v);
    }
    match files {
        Some(f) => info.insert(b"files".to_vec(), Be::List(f)),
        None => info.insert(b"length".to_vec(), Be::Int(total as i64)),
    };
    let mut bytes = Vec::new();
    Be::dict([("info", Be::Dict(info))]).encode(&mut bytes);
    Metainfo::from_torrent_bytes(&bytes).unwrap()
}

fn magnet_of(meta: &Metainfo, peers: Vec<SocketAddr>) -> Magnet {
    Magnet { info_hash: meta.info_hash, name: None, trackers: vec![], peers }
}

/// Every file of `meta` under `actual` equals the same file under `expected`, byte for byte.
fn assert_same_files(meta: &Metainfo, expected: &Path, actual: &Path) {
    assert!(!meta.files.is_empty());
    for f in &meta.files {
        let rel = f.relative_path();
        let want = std::fs::read(expected.join(&rel)).unwrap();
        let got = std::fs::read(actual.join(&rel)).unwrap_or_else(|e| panic!("{}: {e}", actual.join(&rel).display()));
        assert_eq!(want.len() as u64, f.length, "{}", rel.display());
        assert!(want == got, "{} differs from the seeder's", rel.display());
    }
}

const PIECE_256K: u64 = 256 * 1024;

/// A few MiB over files of odd sizes, so pieces straddle file boundaries.
const TREE: &[(&str, u64)] =
    &[("a.bin", 1_500_000), ("sub/b.bin", 2 * 1024 * 1024 + 17), ("sub/deeper/c.bin", 700_001), ("z.bin", 3)];

/// A seeder with `TREE` in its download dir and the torrent added, seeding.
async fn seeder(seed: u64) -> (Node, Metainfo) {
    let a = Node::start().await;
    payload_tree(&a.download_dir(), "tree", TREE, seed);
    let meta = make_torrent(&a.download_dir(), "tree", PIECE_256K);
    assert_eq!(a.session.add_metainfo(meta.clone()).await.unwrap(), AddOutcome::Added);
    a.wait_state(&meta.info_hash.hex(), TorrentState::Seeding, Duration::from_secs(30)).await;
    (a, meta)
}

// ---------------------------------------------------------------------------
// 1. A magnet with x.pe downloads from an in-process seeder
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_and_leeches_in_process() {
    let (a, meta) = seeder(1).await;
    let hash = meta.info_hash.hex();
    let b = Node::start().await;
    assert_eq!(b.session.add_magnet(magnet_of(&meta, vec![a.addr()])).await.unwrap(), AddOutcome::Added);
    let done = b.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(60)).await;
    assert_eq!(done.progress, 1.0);
    assert_eq!(done.size, meta.total_length);
    assert_same_files(&meta, &a.download_dir(), &b.download_dir());
    b.session.shutdown().await;
    a.session.shutdown().await;
}

/// Two dropseeds over uTP (the leecher dials uTP first), encrypted: our uTP
/// and LEDBAT on both ends, in one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_and_leeches_over_utp_encrypted() {
    use dropseed::config::{Encryption, Utp};
    let (a, meta) = seeder(11).await;
    let hash = meta.info_hash.hex();
    let b = Node::start_with(|c| {
        c.network.utp = Utp::Prefer;
        c.network.encryption = Encryption::Require;
    })
    .await;
    assert_eq!(b.session.add_magnet(magnet_of(&meta, vec![a.addr()])).await.unwrap(), AddOutcome::Added);
    b.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(60)).await;
    assert_same_files(&meta, &a.download_dir(), &b.download_dir());
    let opened = |n: &Node| n.session.env.utp().map_or(0, |u| u.opened());
    assert!(opened(&a) >= 1 && opened(&b) >= 1, "uTP connections: {} and {}", opened(&a), opened(&b));
    b.session.shutdown().await;
    a.session.shutdown().await;
}

/// A plain TCP leecher gets its blocks from the seeder's page cache
/// (sendfile), each piece passing its hash check; an encrypted one gets
/// them copied (RC4 needs the bytes), as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_blocks_go_from_the_page_cache_and_encrypted_ones_are_copied() {
    use dropseed::config::Encryption;
    let (a, meta) = seeder(21).await;
    let hash = meta.info_hash.hex();
    let zero_copy = |n: &Node| n.session.env.metrics().uploaded_zero_copy.get();
    let (a, meta, hash) = (&a, &meta, &hash);
    let leech = |enc| async move {
        let n = Node::start_with(|c| c.network.encryption = enc).await;
        assert_eq!(n.session.add_magnet(magnet_of(meta, vec![a.addr()])).await.unwrap(), AddOutcome::Added);
        n.wait_state(hash, TorrentState::Seeding, Duration::from_secs(60)).await;
        assert_same_files(meta, &a.download_dir(), &n.download_dir());
        assert_eq!(n.session.env.metrics().hash_failures.get(), 0, "{enc:?}: a piece failed its hash check");
        n.session.shutdown().await;
    };
    leech(Encryption::Disable).await;
    let sent = zero_copy(a);
    assert!(sent >= meta.total_length, "{sent} bytes of {} sent from the page cache", meta.total_length);
    leech(Encryption::Require).await;
    assert_eq!(zero_copy(a), sent, "an encrypted peer's blocks are copied");
    a.session.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. The download limit is charged once per received byte
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_limit_charges_each_byte_once() {
    let (a, meta) = seeder(2).await;
    let hash = meta.info_hash.hex();
    // A limit far above what loopback reaches here: it is consulted, never waited for.
    let b = Node::start_with(|c| c.limits.download_rate = ByteSize(1 << 30)).await;
    b.session.add_magnet(magnet_of(&meta, vec![a.addr()])).await.unwrap();
    b.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(60)).await;
    let charged = b.session.env.download_limit().charged();
    let size = meta.total_length;
    assert_same_files(&meta, &a.download_dir(), &b.download_dir());
    b.session.shutdown().await;
    a.session.shutdown().await;
    // Piece data is what the limit meters; 10 % covers blocks fetched twice
    // in endgame and anything else metered beside the piece data.
    assert!(
        (size..=size + size / 10).contains(&charged),
        "download limit charged {charged} bytes ({:.2}x) for a {size}-byte torrent",
        charged as f64 / size as f64
    );
}

// ---------------------------------------------------------------------------
// 3. Concurrent adds of one info hash start one task
// ---------------------------------------------------------------------------

// Even rounds add the .torrent 16 times; odd rounds make every third adder
// bring the magnet of the same torrent instead. Added sequentially, a magnet
// and then its .torrent are both `Added` (the torrent replaces the magnet
// still fetching: session.rs add_metainfo), so in mixed rounds a magnet that
// wins the race may be `Added` too (alone, if the .torrent adds come while
// it is being written); what may never happen is two torrent
// tasks (more than one `Added` .torrent), a magnet beside the torrent
// (two entries, or one in state `metadata`), or an add failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_of_one_hash_start_one_task() {
    const ADDERS: usize = 16;
    const ROUNDS: usize = 8;
    let node = Node::start().await;
    let src = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let mixed = round % 2 == 1;
        // A fresh info hash each round: same shape, other bytes.
        let name = format!("race-{round}.bin");
        common::payload(&src.path().join(&name), 100_000, 1000 + round as u64);
        let meta = make_torrent(src.path(), &name, 16 * 1024);
        let hash = meta.info_hash.hex();
        let barrier = Arc::new(tokio::sync::Barrier::new(ADDERS));
        let mut tasks = Vec::new();
        for i in 0..ADDERS {
            let (s, b, m) = (node.session.clone(), barrier.clone(), meta.clone());
            tasks.push(tokio::spawn(async move {
                b.wait().await;
                if mixed && i % 3 == 2 {
                    ("magnet", s.add_magnet(magnet_of(&m, vec![])).await)
                } else {
                    ("torrent", s.add_metainfo(m).await)
                }
            }));
        }
        let (mut torrents_added, mut magnets_added) = (0, 0);
        let mut errors = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                ("torrent", Ok(AddOutcome::Added)) => torrents_added += 1,
                (_, Ok(AddOutcome::Added)) => magnets_added += 1,
                (_, Ok(AddOutcome::AlreadyManaged)) => {}
                (how, Ok(AddOutcome::Refused(why))) => errors.push(format!("{how}: refused: {why}")),
                (how, Err(e)) => errors.push(format!("{how}: {e}")),
            }
        }
        let entries: Vec<&'static str> =
            node.session.statuses().into_iter().filter(|s| s.info_hash == hash).map(|s| s.state.as_str()).collect();
        // A magnet whose add is still being written when the .torrent adds
        // arrive wins alone: they find the hash managed, and it fetches.
        let magnet_alone = mixed && torrents_added == 0 && magnets_added == 1;
        let one_task = (torrents_added == 1 || magnet_alone)
            && magnets_added <= usize::from(mixed)
            && errors.is_empty()
            && entries.len() == 1
            && (entries[0] != TorrentState::Metadata.as_str() || magnet_alone);
        if !one_task {
            failures.push(format!(
                "round {round} ({}): {torrents_added} .torrent Added, {magnets_added} magnet Added, \
                 status entries {entries:?}, errors {errors:?}",
                if mixed { "mixed" } else { "torrents only" },
            ));
        }
    }
    node.session.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} rounds started other than one task for one info hash:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 4. Pause and remove during a check are prompt
// ---------------------------------------------------------------------------

const BIG_PIECE: u64 = 1 << 20;
const BIG_PIECES: u64 = 3 * 1024;

/// A complete single-file torrent of `pieces` zero-filled pieces, written
/// the fastest way there is: a sparse file (the engine preallocates it, and
/// reads of it cost page-cache zero-fill, not disk). Every piece hashes alike,
/// which a torrent allows and the check does not care about.
fn write_big(root: &Path, name: &str, pieces: u64) -> Metainfo {
    std::fs::create_dir_all(root).unwrap();
    std::fs::File::create(root.join(name)).unwrap().set_len(pieces * BIG_PIECE).unwrap();
    let zero: [u8; 20] = Sha1::digest(vec![0u8; BIG_PIECE as usize]).into();
    let mut bytes = Vec::new();
    Be::dict([(
        "info",
        Be::dict([
            ("length", Be::Int((pieces * BIG_PIECE) as i64)),
            ("name", Be::str(name)),
            ("piece length", Be::Int(BIG_PIECE as i64)),
            ("pieces", Be::Bytes(zero.repeat(pieces as usize))),
        ]),
    )])
    .encode(&mut bytes);
    Metainfo::from_torrent_bytes(&bytes).unwrap()
}

/// A node with a complete multi-GiB torrent on disk (not added), and how
/// long a full check of it takes: added fresh, timed from the add to
/// `seeding`, then removed again (keeping the data). The first check fills
/// the page cache and is several times slower than the next, so it is a
/// warm-up and the second one is timed: the tests' own checks are warm too.
/// One disk thread: the check then takes one core and leaves the other to
/// the runtime and the test, so what is measured is the engine's reaction,
/// not CPU contention.
async fn big_checked_node() -> (Node, Metainfo, Duration) {
    let dir = tempfile::Builder::new().prefix("dropseed-inproc").tempdir().unwrap();
    let meta = write_big(&dir.path().join("downloads"), "big.bin", BIG_PIECES);
    let node = Node::start_in(dir, |c| c.storage.disk_threads = 1).await;
    let hash = meta.info_hash.hex();
    let mut full = Duration::ZERO;
    for _ in 0..2 {
        let t0 = Instant::now();
        node.session.add_metainfo(meta.clone()).await.unwrap();
        node.wait_state(&hash, TorrentState::Checking, Duration::from_secs(30)).await;
        let done = node.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(300)).await;
        full = t0.elapsed();
        assert_eq!(done.progress, 1.0, "the data on disk is complete");
        node.session.remove(meta.info_hash, false).await.unwrap();
        assert!(node.status(&hash).is_none());
        eprintln!("full check of {BIG_PIECES} MiB: {full:.2?}");
    }
    // Below this, "prompt" could not be told from "after the check" here.
    assert!(full >= Duration::from_millis(1500), "a full check took only {full:?}; the test needs more data");
    (node, meta, full)
}

// How these are judged: the full check time is measured in the same test on
// the same data, so a loaded machine slows both sides alike. A prompt pause
// or remove waits for the pieces already being hashed (a few MiB), i.e.
// milliseconds; one that waits for the check takes the whole check. Half the
// full check time separates the two with a wide margin either way. The pause
// test also asserts the torrent is paused with the check unfinished
// (progress < 1), which holds however slow the machine is.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_during_recheck_is_prompt() {
    let _serial = SERIAL.lock().await;
    let (node, meta, full) = big_checked_node().await;
    let hash = meta.info_hash.hex();
    // Added fresh with the data on disk: every piece is hashed again.
    node.session.add_metainfo(meta.clone()).await.unwrap();
    node.wait_state(&hash, TorrentState::Checking, Duration::from_secs(30)).await;
    let t0 = Instant::now();
    node.session.command(meta.info_hash, Cmd::Pause).await.unwrap();
    let paused = node.wait_state(&hash, TorrentState::Paused, full * 3 + Duration::from_secs(30)).await;
    let took = t0.elapsed();
    let prompt = paused.progress < 1.0 && took < full / 2;
    if !prompt {
        node.session.shutdown().await;
    }
    assert!(
        prompt,
        "pause during the check took {took:.2?} (a full check takes {full:.2?}) and the torrent was paused \
         at progress {:.3} (1.000: the check ran to its end first)",
        paused.progress
    );
    // Resuming finishes the check and seeds.
    node.session.command(meta.info_hash, Cmd::Resume).await.unwrap();
    node.wait_state(&hash, TorrentState::Seeding, full * 3 + Duration::from_secs(30)).await;
    node.session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_during_recheck_is_prompt() {
    let _serial = SERIAL.lock().await;
    let (node, meta, full) = big_checked_node().await;
    let hash = meta.info_hash.hex();
    node.session.add_metainfo(meta.clone()).await.unwrap();
    let checking = node.wait_state(&hash, TorrentState::Checking, Duration::from_secs(30)).await;
    let t0 = Instant::now();
    node.session.remove(meta.info_hash, false).await.unwrap();
    let took = t0.elapsed();
    let gone = node.status(&hash).is_none();
    node.session.shutdown().await;
    assert!(
        took < full / 2,
        "remove during the check took {took:.2?} (a full check takes {full:.2?}; it began at progress {:.3})",
        checking.progress
    );
    assert!(gone);
}

// ---------------------------------------------------------------------------
// 5. Accept loops do not spin when the process is out of file descriptors
// ---------------------------------------------------------------------------

const NOFILE: u64 = 64;

/// The real daemon with its fd limit lowered to `NOFILE`; killed on drop
/// (the `Proc` inside `Dropseed`).
fn daemon_with_few_fds() -> common::Dropseed {
    use std::os::unix::process::CommandExt;
    let mut d = common::Dropseed::new("");
    let log = std::fs::File::create(d.dir.path().join("console.log")).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dropseed"));
    cmd.arg("run").arg("-c").arg(&d.config).env("NO_COLOR", "1").stdout(log.try_clone().unwrap()).stderr(log);
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: NOFILE as libc::rlim_t, rlim_max: NOFILE as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    d.proc = Some(common::Proc(cmd.spawn().expect("start dropseed")));
    let sock = d.state_dir().join("control.sock");
    common::wait_for("dropseed control socket", Duration::from_secs(15), || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    d
}

fn pid_of(d: &common::Dropseed) -> u32 {
    d.proc.as_ref().unwrap().pid()
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Waits until the daemon holds (nearly) all the fds it may, then returns
/// the CPU it uses over the next 3 s. 0.5 s over 3 s is far above an idle
/// daemon (~0) and far below a loop retrying a failed accept (~3 s, or
/// ~1.5 s when sharing two cores with a busy neighbour).
fn cpu_over_3s_when_out_of_fds(d: &common::Dropseed) -> f64 {
    let pid = pid_of(d);
    common::wait_for("the daemon to run out of fds", Duration::from_secs(10), || {
        (open_fds(pid) as u64 >= NOFILE - 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_secs(pid) - before;
    assert!(open_fds(pid) > 0, "the daemon died");
    used
}

#[test]
fn accept_loop_does_not_spin_on_emfile() {
    let _serial = SERIAL.blocking_lock();
    let d = daemon_with_few_fds();
    // More than the daemon can take: the rest wait in the listen backlog,
    // so accept stays ready (and failing) while they are held open. Each
    // sends the first byte of a handshake and no more, so the daemon keeps
    // it until its 10 s handshake timeout (silent ones it drops sooner).
    // They come from several loopback addresses, as the daemon keeps few
    // handshakes per address.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conns: Vec<std::net::TcpStream> = (0..NOFILE * 2)
        .map(|i| {
            let from = SocketAddr::from(([127, 0, 0, 2 + (i % 16) as u8], 0));
            let s = rt.block_on(async {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(from).unwrap();
                sock.connect(SocketAddr::from(([127, 0, 0, 1], d.port))).await.unwrap()
            });
            let mut s = s.into_std().unwrap();
            s.set_nonblocking(false).unwrap();
            std::io::Write::write_all(&mut s, &[19]).unwrap();
            s
        })
        .collect();
    let used = cpu_over_3s_when_out_of_fds(&d);
    assert!(used < 0.5, "with its fds exhausted by peer connections the daemon used {used:.2} s of CPU in 3 s");
    drop(conns);
}

#[test]
fn control_loop_does_not_spin_on_emfile() {
    let _serial = SERIAL.blocking_lock();
    let d = daemon_with_few_fds();
    // Control connections are kept as long as the client keeps them; the
    // extra ones wait in the socket's backlog (128, so connect never blocks).
    let sock = d.state_dir().join("control.sock");
    let conns: Vec<std::os::unix::net::UnixStream> =
        (0..NOFILE + 32).map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap()).collect();
    let used = cpu_over_3s_when_out_of_fds(&d);
    assert!(used < 0.5, "with its fds exhausted by control connections the daemon used {used:.2} s of CPU in 3 s");
    drop(conns);
}

// ---------------------------------------------------------------------------
// 6. A tracker that never answers holds up neither a pause nor a shutdown
// ---------------------------------------------------------------------------

/// A "tracker" that accepts HTTP connections and never answers; it reports
/// each connection it sees opened, and when the client closes it.
async fn silent_tracker() -> (String, tokio::sync::mpsc::UnboundedReceiver<&'static str>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/announce", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            let _ = tx.send("opened");
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = tx.send("closed");
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tracker_does_not_hold_up_a_pause() {
    let (url, mut seen) = silent_tracker().await;
    let a = Node::start().await;
    payload_tree(&a.download_dir(), "tree", TREE, 6);
    let mut meta = make_torrent(&a.download_dir(), "tree", PIECE_256K);
    meta.trackers = vec![vec![url]];
    let (info_hash, hash) = (meta.info_hash, meta.info_hash.hex());
    a.session.add_metainfo(meta).await.unwrap();
    a.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(30)).await;
    let opened = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await;
    assert_eq!(opened.ok().flatten(), Some("opened"), "the torrent announces to its tracker");
    // The announce now hangs (the HTTP timeout is 15 s). A pause cancels it:
    // the tracker sees its connection closed, and the torrent is paused,
    // both at once rather than after a grace period.
    let t0 = Instant::now();
    a.session.command(info_hash, Cmd::Pause).await.unwrap();
    a.wait_state(&hash, TorrentState::Paused, Duration::from_secs(30)).await;
    let paused_after = t0.elapsed();
    let closed = tokio::time::timeout(Duration::from_secs(2), seen.recv()).await.ok().flatten();
    a.session.shutdown().await;
    assert_eq!(closed, Some("closed"), "the announce under way is abandoned, not left running");
    assert!(paused_after < Duration::from_secs(3), "pausing took {paused_after:?} with a silent tracker");
}

// ---------------------------------------------------------------------------
// 7. Cross-seeding: torrents of the same files share one verified copy
// ---------------------------------------------------------------------------

/// The torrent of `root/name` another tracker would give: the same files
/// under another info hash (its `source` field).
fn cross_torrent(root: &Path, name: &str, source: &str) -> Metainfo {
    make_torrent_with(root, name, PIECE_256K, vec![("source", Be::str(source))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_seed_seeds_the_same_files_and_delete_data_keeps_them() {
    let (a, first) = seeder(7).await;
    let second = cross_torrent(&a.download_dir(), "tree", "OTHER-TRACKER");
    assert_ne!(first.info_hash, second.info_hash);
    let (h1, h2) = (first.info_hash.hex(), second.info_hash.hex());
    assert_eq!(a.session.add_metainfo(second.clone()).await.unwrap(), AddOutcome::Added);
    let b = a.wait_state(&h2, TorrentState::Seeding, Duration::from_secs(30)).await;
    assert_eq!((b.progress, b.downloaded, b.borrowed), (1.0, 0, true), "{b:?}");
    assert_eq!(b.path, a.status(&h1).unwrap().path, "seeded in place, not copied");
    assert_eq!(a.session.status_of(&second.info_hash).unwrap().shared_with, vec![h1.clone()]);
    assert_eq!(a.status(&h1).unwrap().shared_with, vec![h2.clone()]);
    // A leecher fetches every byte of the second torrent from it.
    let c = Node::start().await;
    c.session.add_magnet(magnet_of(&second, vec![a.addr()])).await.unwrap();
    c.wait_state(&h2, TorrentState::Seeding, Duration::from_secs(60)).await;
    assert_same_files(&second, &a.download_dir(), &c.download_dir());
    // Removing the first with its data keeps the files the second seeds.
    let removed = a.session.remove(first.info_hash, true).await.unwrap();
    let text = removed.to_string();
    assert!(text.contains("still used by another torrent") && text.contains("a.bin"), "{text}");
    let theirs = tempfile::tempdir().unwrap();
    payload_tree(theirs.path(), "tree", TREE, 7);
    assert_same_files(&second, theirs.path(), &a.download_dir());
    assert_eq!(a.status(&h2).unwrap().state, TorrentState::Seeding);
    // The last one to go takes them.
    let removed = a.session.remove(second.info_hash, true).await.unwrap();
    assert!(!removed.to_string().contains("kept"), "{removed}");
    assert!(!a.download_dir().join("tree").exists());
    c.session.shutdown().await;
    a.session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_seed_over_other_content_errs_naming_the_file_and_never_writes() {
    let (a, first) = seeder(17).await;
    // Same name, other content in one file: its pieces there fail.
    let other_src = tempfile::tempdir().unwrap();
    payload_tree(other_src.path(), "tree", TREE, 17);
    common::payload(&other_src.path().join("tree/sub/b.bin"), TREE[1].1, 999);
    let second = make_torrent(other_src.path(), "tree", PIECE_256K);
    let h2 = second.info_hash.hex();
    assert_eq!(a.session.add_metainfo(second.clone()).await.unwrap(), AddOutcome::Added);
    let failed = a.wait_for(&h2, "an error", Duration::from_secs(30), |s| s.state == TorrentState::Error).await;
    let error = failed.error.unwrap();
    // b.bin, and the files whose pieces it straddles.
    assert!(error.contains("sub/b.bin") && !error.contains("z.bin"), "{error}");
    assert_eq!(failed.downloaded, 0);
    // A magnet of it, with a peer that has it, is refused the same way: the
    // shared file is never downloaded into.
    let b = Node::start().await;
    payload_tree(&b.download_dir(), "tree", TREE, 17);
    common::payload(&b.download_dir().join("tree/sub/b.bin"), TREE[1].1, 999);
    b.session.add_metainfo(second.clone()).await.unwrap();
    b.wait_state(&h2, TorrentState::Seeding, Duration::from_secs(30)).await;
    a.session.remove(second.info_hash, false).await.unwrap();
    assert_eq!(a.session.add_magnet(magnet_of(&second, vec![b.addr()])).await.unwrap(), AddOutcome::Added);
    let failed = a.wait_for(&h2, "an error", Duration::from_secs(30), |s| s.state == TorrentState::Error).await;
    assert_eq!(failed.downloaded, 0);
    // The first torrent's data was never touched.
    let status = a.status(&first.info_hash.hex()).unwrap();
    assert_eq!((status.state, status.progress), (TorrentState::Seeding, 1.0));
    let theirs = tempfile::tempdir().unwrap();
    payload_tree(theirs.path(), "tree", TREE, 17);
    assert_same_files(&first, theirs.path(), &a.download_dir());
    b.session.shutdown().await;
    a.session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torrent_added_at_a_save_path_seeds_in_place_and_survives_a_restart() {
    let a = Node::start().await;
    let library = a.download_dir().join("library");
    payload_tree(&library, "tree", TREE, 27);
    let meta = cross_torrent(&library, "tree", "TRACKER-ONE");
    let hash = meta.info_hash.hex();
    // Outside dropseed's folders: refused, saying why.
    let outside = tempfile::tempdir().unwrap();
    payload_tree(outside.path(), "tree", TREE, 27);
    let o = a.session.add_metainfo_at(meta.clone(), Default::default(), outside.path().to_path_buf()).await.unwrap();
    assert!(matches!(&o, AddOutcome::Refused(why) if why.contains("outside dropseed's folders")), "{o:?}");
    let o = a
        .session
        .add_metainfo_at(meta.clone(), Default::default(), library.join("..").join("..").join(".."))
        .await
        .unwrap();
    assert!(matches!(o, AddOutcome::Refused(_)), "{o:?}");
    assert_eq!(
        a.session.add_metainfo_at(meta.clone(), Default::default(), library.clone()).await.unwrap(),
        AddOutcome::Added
    );
    let s = a.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(30)).await;
    assert_eq!((s.downloaded, s.path.as_str()), (0, library.join("tree").to_str().unwrap()));
    // A second tracker's torrent of the same files, by name in the same place.
    let other = cross_torrent(&library, "tree", "TRACKER-TWO");
    assert_eq!(
        a.session.add_metainfo_at(other.clone(), Default::default(), library.clone()).await.unwrap(),
        AddOutcome::Added
    );
    a.wait_state(&other.info_hash.hex(), TorrentState::Seeding, Duration::from_secs(30)).await;
    // Both come back after a restart (two torrents of one name, both shared).
    a.session.shutdown().await;
    let Node { dir, .. } = a;
    let a = Node::start_in(dir, |_| {}).await;
    for h in [&hash, &other.info_hash.hex()] {
        let s = a.wait_state(h, TorrentState::Seeding, Duration::from_secs(30)).await;
        assert_eq!(s.downloaded, 0);
    }
    // A file changed behind their backs while stopped (same size, other
    // bytes) is verified again at the next start: both err, naming it.
    a.session.shutdown().await;
    let Node { dir, .. } = a;
    common::payload(&library.join("tree/sub/deeper/c.bin"), TREE[2].1, 4242);
    let a = Node::start_in(dir, |_| {}).await;
    for h in [&hash, &other.info_hash.hex()] {
        let s = a.wait_for(h, "an error", Duration::from_secs(30), |s| s.state == TorrentState::Error).await;
        assert!(s.error.as_deref().unwrap().contains("deeper/c.bin"), "{s:?}");
    }
    // A file moved away puts both in `missing`, never into a download.
    std::fs::rename(library.join("tree/a.bin"), library.join("a.bin.moved")).unwrap();
    for h in [meta.info_hash, other.info_hash] {
        a.session.command(h, Cmd::Pause).await.unwrap();
        a.session.command(h, Cmd::Resume).await.unwrap();
        a.wait_state(&h.hex(), TorrentState::Missing, Duration::from_secs(30)).await;
    }
    assert!(!library.join("tree/a.bin").exists());
    a.session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_season_pack_links_the_episodes_seeded_already_and_downloads_only_the_rest() {
    use std::os::unix::fs::MetadataExt;
    // Two episodes seeded under one name; the pack, under another, has a third.
    let episodes: &[(&str, u64)] = &[("e01.mkv", 1_300_001), ("e02.mkv", 1_100_007)];
    let a = Node::start().await;
    payload_tree(&a.download_dir(), "Show.S01.WEB", episodes, 61);
    let season = make_torrent(&a.download_dir(), "Show.S01.WEB", PIECE_256K);
    a.session.add_metainfo(season.clone()).await.unwrap();
    a.wait_state(&season.info_hash.hex(), TorrentState::Seeding, Duration::from_secs(30)).await;
    let b = Node::start().await;
    let pack_dir = b.download_dir().join("Show.S01.PACK");
    for (name, _) in episodes {
        std::fs::create_dir_all(&pack_dir).unwrap();
        std::fs::copy(a.download_dir().join("Show.S01.WEB").join(name), pack_dir.join(name)).unwrap();
    }
    let e03 = 900_013;
    common::payload(&pack_dir.join("e03.mkv"), e03, 62);
    let pack = make_torrent(&b.download_dir(), "Show.S01.PACK", PIECE_256K);
    b.session.add_metainfo(pack.clone()).await.unwrap();
    b.wait_state(&pack.info_hash.hex(), TorrentState::Seeding, Duration::from_secs(30)).await;

    a.session.add_magnet(magnet_of(&pack, vec![b.addr()])).await.unwrap();
    let done = a.wait_state(&pack.info_hash.hex(), TorrentState::Seeding, Duration::from_secs(60)).await;
    assert_same_files(&pack, &b.download_dir(), &a.download_dir());
    // Only the third episode came over the wire (and the piece it shares with the second).
    assert!(done.downloaded <= e03 + PIECE_256K, "downloaded {} of {}", done.downloaded, pack.total_length);
    // That piece spans a matched file and the missing one: downloaded and
    // verified, never assumed from the matched half.
    let e03_at = pack.files.iter().find(|f| f.path.last().is_some_and(|n| n == "e03.mkv")).unwrap().offset;
    let from_piece = e03_at / PIECE_256K * PIECE_256K;
    assert!(e03_at % PIECE_256K != 0, "the test needs a piece over the second and third episodes");
    assert!(done.downloaded >= pack.total_length - from_piece, "downloaded {}", done.downloaded);
    for (name, _) in episodes {
        let theirs = std::fs::metadata(a.download_dir().join("Show.S01.WEB").join(name)).unwrap();
        let ours = std::fs::metadata(a.download_dir().join("Show.S01.PACK").join(name)).unwrap();
        assert_eq!((theirs.dev(), theirs.ino()), (ours.dev(), ours.ino()), "{name} is linked, not copied");
    }
    let first = a.status(&season.info_hash.hex()).unwrap();
    assert_eq!((first.state, first.progress), (TorrentState::Seeding, 1.0));
    // Each names the other as sharing its data (by inode).
    assert_eq!(first.shared_with, vec![pack.info_hash.hex()]);
    assert_eq!(a.session.status_of(&pack.info_hash).unwrap().shared_with, vec![season.info_hash.hex()]);
    for (name, _) in episodes {
        let theirs = std::fs::read(a.download_dir().join("Show.S01.WEB").join(name)).unwrap();
        assert!(theirs == std::fs::read(pack_dir.join(name)).unwrap(), "{name} of the season changed");
    }
    // Removing the pack with its data unlinks its own names (the season's
    // names keep the data): no space is left behind.
    let removed = a.session.remove(pack.info_hash, true).await.unwrap().to_string();
    assert!(!removed.contains("kept"), "{removed}");
    assert!(!a.download_dir().join("Show.S01.PACK").exists(), "{removed}");
    for (name, _) in episodes {
        let theirs = std::fs::read(a.download_dir().join("Show.S01.WEB").join(name)).unwrap();
        assert!(theirs == std::fs::read(pack_dir.join(name)).unwrap(), "{name} of the season changed");
    }
    assert_eq!(a.status(&season.info_hash.hex()).unwrap().state, TorrentState::Seeding);
    b.session.shutdown().await;
    a.session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_file_that_differs_where_a_piece_spans_it_is_never_rewritten() {
    // The pack's e01 differs from the seeded one in its last bytes only,
    // which lie in the piece it shares with e02: its inner pieces verify,
    // it is linked, and the shared piece, once downloaded, does not match it.
    let a = Node::start_with(|c| c.cross_seed.matching = dropseed::config::MatchMode::Size).await;
    payload_tree(&a.download_dir(), "Season.WEB", &[("one.mkv", 1_300_001)], 71);
    let season = make_torrent(&a.download_dir(), "Season.WEB", PIECE_256K);
    a.session.add_metainfo(season.clone()).await.unwrap();
    a.wait_state(&season.info_hash.hex(), TorrentState::Seeding, Duration::from_secs(30)).await;
    let seeded = std::fs::read(a.download_dir().join("Season.WEB/one.mkv")).unwrap();
    let b = Node::start().await;
    let pack_dir = b.download_dir().join("Pack");
    std::fs::create_dir_all(&pack_dir).unwrap();
    let mut e01 = seeded.clone();
    let n = e01.len();
    e01[n - 10..].copy_from_slice(&[0xEE; 10]);
    std::fs::write(pack_dir.join("e01.mkv"), &e01).unwrap();
    common::payload(&pack_dir.join("e02.mkv"), 700_003, 72);
    let pack = make_torrent(&b.download_dir(), "Pack", PIECE_256K);
    b.session.add_metainfo(pack.clone()).await.unwrap();
    b.wait_state(&pack.info_hash.hex(), TorrentState::Seeding, Duration::from_secs(30)).await;

    // Size mode: "e01.mkv" matches "one.mkv" by its size alone.
    a.session.add_magnet(magnet_of(&pack, vec![b.addr()])).await.unwrap();
    let failed = a
        .wait_for(&pack.info_hash.hex(), "an error", Duration::from_secs(60), |s| s.state == TorrentState::Error)
        .await;
    assert!(failed.error.as_deref().unwrap().contains("never rewritten"), "{failed:?}");
    assert!(std::fs::read(a.download_dir().join("Season.WEB/one.mkv")).unwrap() == seeded, "the seeded file changed");
    let first = a.status(&season.info_hash.hex()).unwrap();
    assert_eq!((first.state, first.progress), (TorrentState::Seeding, 1.0));
    b.session.shutdown().await;
    a.session.shutdown().await;
}

// ---------------------------------------------------------------------------
// 8. Silent sockets on the listen port do not lock peers out (slowloris)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_completes_while_silent_sockets_flood_the_listener() {
    // A load test: it must not slow the timing tests down.
    let _serial = SERIAL.lock().await;
    let (a, meta) = seeder(8).await;
    let target = a.addr();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Keeps 300 sockets open to the seeder's port, saying nothing, and opens
    // a new one as soon as one is closed.
    let flood = tokio::spawn({
        let (stop, open) = (stop.clone(), open.clone());
        async move {
            let mut socks: Vec<tokio::net::TcpStream> = Vec::new();
            let mut buf = [0u8; 64];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Still open: nothing to read yet. Closed by the seeder: end of stream.
                socks.retain(
                    |s| matches!(s.try_read(&mut buf), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
                );
                while socks.len() < 300 {
                    match tokio::net::TcpStream::connect(target).await {
                        Ok(s) => socks.push(s),
                        Err(_) => break,
                    }
                }
                open.store(socks.len(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let t0 = Instant::now();
    while open.load(std::sync::atomic::Ordering::Relaxed) < 300 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the flood could not open its sockets");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hash = meta.info_hash.hex();
    let b = Node::start().await;
    b.session.add_magnet(magnet_of(&meta, vec![a.addr()])).await.unwrap();
    let done = b.wait_for(&hash, "seeding", Duration::from_secs(90), |s| s.state == TorrentState::Seeding).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flood.await;
    assert_eq!(done.progress, 1.0);
    assert_same_files(&meta, &a.download_dir(), &b.download_dir());
    b.session.shutdown().await;
    a.session.shutdown().await;
}

// ---------------------------------------------------------------------------
// 9. A barely binding download limit with a slow, one-at-a-time peer
// ---------------------------------------------------------------------------

/// A seeder of `data` that dials `to` and answers our requests one at a
/// time, each `delay` after the last (a slow peer: its rate is set by the
/// delay, not by how many requests wait). Returns once the connection ends.
async fn slow_seeder(to: SocketAddr, meta: Metainfo, data: Arc<Vec<u8>>, delay: Duration) {
    use dropseed::wire::{self, Handshake, Message};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
    // A peer id of its own (from its port), so several may connect at once.
    let mut id = [7; 20];
    id[..2].copy_from_slice(&s.local_addr().unwrap().port().to_be_bytes());
    let ours = Handshake::new(meta.info_hash, dropseed::types::PeerId(id), false);
    s.write_all(&ours.encode()).await.unwrap();
    let mut theirs = [0u8; 68];
    s.read_exact(&mut theirs).await.unwrap();
    let pieces = meta.piece_count();
    let mut bits = vec![0u8; pieces.div_ceil(8)];
    for i in 0..pieces {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    let mut out = Vec::new();
    wire::encode(&Message::Bitfield(&bits), &mut out);
    wire::encode(&Message::Unchoke, &mut out);
    s.write_all(&out).await.unwrap();
    // Requests are read as they come and queued; blocks go out one by one.
    let (mut rd, mut wr) = s.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while let Ok(Some((m, used))) = wire::decode(&buf[at..]) {
                if let Message::Request(b) = m {
                    let _ = tx.send(b);
                }
                at += used;
            }
            buf.drain(..at);
        }
    });
    let piece_len = meta.piece_length;
    while let Some(b) = rx.recv().await {
        tokio::time::sleep(delay).await;
        let start = (b.piece as u64 * piece_len + b.offset as u64) as usize;
        let mut msg = Vec::new();
        wire::encode(
            &Message::Piece { piece: b.piece, offset: b.offset, data: &data[start..start + b.len as usize] },
            &mut msg,
        );
        if wr.write_all(&msg).await.is_err() {
            return;
        }
    }
}

/// Seconds a leecher limited to `rate` (0: none) takes to fetch `mib` MiB
/// from a [`slow_seeder`], from its connection to the last piece checked.
async fn fetch_from_slow_seeder(rate: u64, mib: u64, delay: Duration) -> f64 {
    let src = tempfile::tempdir().unwrap();
    common::payload(&src.path().join("slow.bin"), mib << 20, 91);
    let meta = make_torrent(src.path(), "slow.bin", PIECE_256K);
    let data = Arc::new(std::fs::read(src.path().join("slow.bin")).unwrap());
    let b = Node::start_with(|c| c.limits.download_rate = ByteSize(rate)).await;
    assert_eq!(b.session.add_metainfo(meta.clone()).await.unwrap(), AddOutcome::Added);
    let hash = meta.info_hash.hex();
    b.wait_state(&hash, TorrentState::Downloading, Duration::from_secs(30)).await;
    let t0 = Instant::now();
    let peer = tokio::spawn(slow_seeder(b.addr(), meta.clone(), data, delay));
    b.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(120)).await;
    let secs = t0.elapsed().as_secs_f64();
    b.session.shutdown().await;
    peer.abort();
    secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barely_binding_download_limit_holds_with_a_slow_peer() {
    let _serial = SERIAL.lock().await;
    // 16 KiB every 10 ms is at most 1.6 MiB/s (less with the timer's rounding
    // and the round trips); the limit is 1 MiB/s.
    const MIB: u64 = 6;
    let delay = Duration::from_millis(10);
    let unlimited = fetch_from_slow_seeder(0, MIB, delay).await;
    let limited = fetch_from_slow_seeder(1 << 20, MIB, delay).await;
    let (free, got) = (MIB as f64 / unlimited, MIB as f64 / limited);
    eprintln!("slow peer: {free:.2} MiB/s unlimited, {got:.2} MiB/s under a 1 MiB/s limit");
    // On a loaded machine the peer may serve less than the limit; the bug
    // this guards against (the limit halving the rate) shows either way as
    // far less than what both the peer and the limit allow.
    let allowed = free.min(1.0);
    assert!(got >= 0.8 * allowed, "a limit of 1 MiB/s gave {got:.2} MiB/s (the peer could do {free:.2})");
    // Over 6 s, a read of up to 256 KiB past the clock and the 100 ms burst.
    assert!(got <= 1.25, "the limit did not hold: {got:.2} MiB/s");
}

// ---------------------------------------------------------------------------
// 10. The session's commands answer in types, not text
// ---------------------------------------------------------------------------

/// What the control socket and (next) the qBittorrent API build on: every
/// command takes an info hash and answers a value whose kind a caller can
/// branch on; the lookup by name is its own step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_answer_typed_outcomes_and_errors() {
    let a = Node::start().await;
    payload_tree(&a.download_dir(), "typed", TREE, 9);
    let meta = make_torrent(&a.download_dir(), "typed", PIECE_256K);
    let (h, hash) = (meta.info_hash, meta.info_hash.hex());
    let stranger = dropseed::types::InfoHash([0x5a; 20]);

    assert!(matches!(a.session.find("typed"), Err(SessionError::NotFound(_))), "nothing is added yet");
    a.session.add_metainfo(meta).await.unwrap();
    a.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(30)).await;
    assert_eq!(a.session.find("typ").unwrap(), h, "a name's start");
    assert_eq!(a.session.find(&hash[..8]).unwrap(), h, "the short hash");
    assert_eq!(a.session.status_of(&h).map(|s| s.info_hash), Some(hash.clone()));
    assert!(a.session.status_of(&stranger).is_none());

    // Resuming what runs changes nothing; pausing reaches the hold; twice is a no-op.
    let r = a.session.command(h, Cmd::Resume).await.unwrap();
    assert!(matches!(r, CommandOutcome::NotPaused(_, TorrentState::Seeding)), "{r:?}");
    let r = a.session.command(h, Cmd::Pause).await.unwrap();
    assert!(matches!(r, CommandOutcome::Reached(_, TorrentState::Paused)), "{r:?}");
    let r = a.session.command(h, Cmd::Pause).await.unwrap();
    assert!(matches!(r, CommandOutcome::AlreadyPaused(ref t, TorrentState::Paused) if t.name == "typed"), "{r:?}");
    assert_eq!(r.to_string(), format!("typed ({}): already paused", &hash[..8]));

    // A paused torrent with no tracker does not announce: refused, by kind.
    let e = a.session.reannounce(h).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotApplicable, "{e}");
    assert!(!matches!(a.session.reannounce(stranger), Ok(Reannounce::Now(_))));

    // Unknown hashes are NotFound for every command.
    assert_eq!(a.session.command(stranger, Cmd::Pause).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(a.session.remove(stranger, false).await.unwrap_err().kind(), ErrorKind::NotFound);

    let removed = a.session.remove(h, false).await.unwrap();
    assert!(removed.torrent.hash == h && !removed.data_deleted);
    assert!(a.status(&hash).is_none());
    assert_eq!(a.session.remove(h, false).await.unwrap_err().kind(), ErrorKind::NotFound, "removed once only");
    a.session.shutdown().await;
}

// ---------------------------------------------------------------------------
// 10. /metrics: the byte counters are the bytes transferred
// ---------------------------------------------------------------------------

/// Parses metrics text with Python's `prometheus_client` OpenMetrics parser
/// (what Prometheus-side tooling accepts); answers `(name, labels, value)`
/// of every sample. Fails the test if the text does not parse.
fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    use std::io::Write;
    const SCRIPT: &str = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
        out = [[s.name, s.labels, s.value] for f in parse(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-test-deps.sh installs prometheus-client)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the metrics text does not parse ({stderr}):\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sample(samples: &[(String, BTreeMap<String, String>, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.2)
}

fn within_1_percent(what: &str, got: Option<f64>, want: u64) {
    let got = got.unwrap_or_else(|| panic!("no sample {what}"));
    let want = want as f64;
    assert!((got - want).abs() <= want / 100.0, "{what}: {got} for {want} bytes transferred");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_bytes_transferred_and_hide_tracker_passkeys() {
    let passkey = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6";
    // A tracker that refuses connections: each announce is a failure.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let a = Node::start().await;
    payload_tree(&a.download_dir(), "tree", TREE, 9);
    let mut meta = make_torrent(&a.download_dir(), "tree", PIECE_256K);
    meta.trackers = vec![vec![format!("http://127.0.0.1:{port}/{passkey}/announce?passkey={passkey}")]];
    let hash = meta.info_hash.hex();
    a.session.add_metainfo(meta.clone()).await.unwrap();
    a.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(30)).await;
    let b = Node::start_with(|c| c.api.metrics_per_torrent = true).await;
    assert_eq!(b.session.add_magnet(magnet_of(&meta, vec![a.addr()])).await.unwrap(), AddOutcome::Added);
    b.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(60)).await;
    assert_same_files(&meta, &a.download_dir(), &b.download_dir());
    let total = meta.total_length;

    let got = parse_metrics(&dropseed::metrics::render(&b.session).await);
    within_1_percent("b downloaded", sample(&got, "dropseed_downloaded_bytes_total", &[]), total);
    let none = [("category", "")];
    within_1_percent("b category downloaded", sample(&got, "dropseed_category_downloaded_bytes_total", &none), total);
    let this = [("info_hash", hash.as_str()), ("name", "tree")];
    within_1_percent("b torrent downloaded", sample(&got, "dropseed_torrent_downloaded_bytes_total", &this), total);
    assert_eq!(sample(&got, "dropseed_torrents", &[("state", "seeding")]), Some(1.0));
    assert_eq!(sample(&got, "dropseed_torrents", &[("state", "downloading")]), Some(0.0));
    assert_eq!(sample(&got, "dropseed_hash_failures_total", &[]), Some(0.0));
    let verified = sample(&got, "dropseed_piece_verify_seconds_count", &[]).unwrap();
    assert_eq!(verified as usize, meta.piece_count(), "every downloaded piece's hashing is timed");
    assert!(sample(&got, "dropseed_disk_written_bytes_total", &[]).unwrap() >= total as f64);
    assert!(sample(&got, "dropseed_memory_bytes", &[("kind", "anon")]).unwrap() > 0.0);
    assert!(sample(&got, "dropseed_open_files", &[]).unwrap() > 0.0);
    for (transport, encryption) in [("tcp", "plain"), ("tcp", "encrypted"), ("utp", "plain"), ("utp", "encrypted")] {
        let labels = [("transport", transport), ("encryption", encryption)];
        assert!(sample(&got, "dropseed_peers_connected", &labels).is_some(), "{labels:?}");
    }

    // The seeder: what it uploaded, and its tracker by host only.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, got) = loop {
        let text = dropseed::metrics::render(&a.session).await;
        let got = parse_metrics(&text);
        if sample(&got, "dropseed_tracker_announce_failures_total", &[("host", "127.0.0.1")]).is_some_and(|n| n >= 1.0)
        {
            break (text, got);
        }
        assert!(Instant::now() < deadline, "no failed announce counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    within_1_percent("a uploaded", sample(&got, "dropseed_uploaded_bytes_total", &[]), total);
    within_1_percent("a category uploaded", sample(&got, "dropseed_category_uploaded_bytes_total", &none), total);
    assert!(!text.contains(passkey) && !text.contains("announce?"), "a tracker's passkey or path in:\n{text}");
    assert!(!text.contains("dropseed_torrent_"), "per-torrent series are off by default:\n{text}");
    b.session.shutdown().await;
    a.session.shutdown().await;
}

// ---------------------------------------------------------------------------
// Tags and share limits (the API's labels), through the session
// ---------------------------------------------------------------------------

/// Tags and share limits given at the add and changed later are kept in
/// the resume record (and a magnet's state file), across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_share_limits_persist_across_a_restart() {
    use dropseed::session::{AddOptions, LabelChange};
    use dropseed::share::{ShareLimit, ShareLimits};
    let a = Node::start().await;
    payload_tree(&a.download_dir(), "tree", TREE, 5);
    let meta = make_torrent(&a.download_dir(), "tree", PIECE_256K);
    let hash = meta.info_hash.hex();
    let share = ShareLimits::from_api(2.5, 90, -1).unwrap();
    let opts = AddOptions { tags: vec!["cross-seed".into()], share: Some(share), ..Default::default() };
    assert_eq!(a.session.add_metainfo_with(meta.clone(), opts).await.unwrap(), AddOutcome::Added);
    a.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(30)).await;
    let added = a.session.change_labels(meta.info_hash, LabelChange::AddTags(vec!["keep".into()])).await.unwrap();
    assert_eq!(added.hash, meta.info_hash);
    let other = meta_of_magnet();
    let magnet_opts = AddOptions { category: "tv".into(), tags: vec!["m".into()], share: None, name: None };
    a.session.add_magnet_with(other.clone(), magnet_opts).await.unwrap();
    a.session.change_labels(other.info_hash, LabelChange::Share(share)).await.unwrap();
    // Too many tags on one torrent is refused, typed.
    let many: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    let err = a.session.change_labels(meta.info_hash, LabelChange::AddTags(many)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRequest, "{err}");
    let unknown = dropseed::types::InfoHash([7; 20]);
    let err = a.session.change_labels(unknown, LabelChange::AddTags(vec!["x".into()])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    let Node { dir, session } = a;
    session.shutdown().await;
    let b = Node::start_in(dir, |_| {}).await;
    let t = b.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(30)).await;
    assert_eq!(t.tags, ["cross-seed", "keep"]);
    assert_eq!(t.limits.own, share);
    assert_eq!(t.limits.effective.ratio, Some(2.5));
    assert_eq!(t.limits.effective.seeding_secs, Some(90 * 60));
    assert_eq!(t.limits.effective.idle_secs, None);
    let m = b.status(&other.info_hash.hex()).expect("the magnet is back");
    assert_eq!(
        (m.category.as_str(), m.tags.clone(), m.limits.own.seeding_minutes),
        ("tv", vec!["m".into()], ShareLimit::At(90))
    );
    assert_eq!(b.session.known_tags().await, ["cross-seed", "keep", "m"]);
    // Deleting a tag takes it off every torrent.
    b.session.delete_tags(&["keep".into()]).await.unwrap();
    assert_eq!(b.status(&hash).unwrap().tags, ["cross-seed"]);
    assert_eq!(b.session.known_tags().await, ["cross-seed", "m"]);
    b.session.shutdown().await;
}

fn meta_of_magnet() -> Magnet {
    Magnet::parse(&format!("magnet:?xt=urn:btih:{}&dn=later", "ef".repeat(20))).unwrap()
}

/// A torrent's own share limits override the config's: unlimited keeps it
/// seeding past `[seeding] seed_time_limit`; back to -2 (global) it stops
/// there; a ratio limit of 0 stops it at once. (The seeding clock is the
/// wall clock, so the config's limit here is one second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torrent_stops_at_its_own_share_limits() {
    use dropseed::session::{AddOptions, LabelChange};
    use dropseed::share::ShareLimits;
    let a = Node::start_with(|c| c.seeding.seed_time_limit = dropseed::config::Span(1)).await;
    payload_tree(&a.download_dir(), "tree", TREE, 6);
    let meta = make_torrent(&a.download_dir(), "tree", PIECE_256K);
    let hash = meta.info_hash.hex();
    let limits = |ratio, minutes| ShareLimits::from_api(ratio, minutes, -2).unwrap();
    let opts = AddOptions { share: Some(limits(-1.0, -1)), ..Default::default() };
    assert_eq!(a.session.add_metainfo_with(meta.clone(), opts).await.unwrap(), AddOutcome::Added);
    let t = a.wait_for(&hash, "3 s seeded", Duration::from_secs(30), |t| t.times.seeding_secs >= 3).await;
    assert_eq!(t.state, TorrentState::Seeding, "unlimited: the config's 1 s does not hold");
    assert_eq!(t.limits.effective.seeding_secs, None);

    a.session.change_labels(meta.info_hash, LabelChange::Share(limits(-2.0, -2))).await.unwrap();
    let t = a.wait_state(&hash, TorrentState::Stopped, Duration::from_secs(30)).await;
    assert_eq!(t.limits.effective.seeding_secs, Some(1), "global again: the config's limit");

    a.session.change_labels(meta.info_hash, LabelChange::Share(limits(0.0, -1))).await.unwrap();
    a.session.command(meta.info_hash, Cmd::Resume).await.unwrap();
    let t = a.wait_state(&hash, TorrentState::Stopped, Duration::from_secs(30)).await;
    assert_eq!(t.limits.effective.ratio, Some(0.0));
    a.session.shutdown().await;
}

/// An idle seeder ticks every 30 s but wakes for its seeding time limit:
/// it stops within a tick of the limit, not at the idle tick after it
/// (the wake-up was computed from the seconds counted at the tick before,
/// up to 30 s stale: a 35 s limit stopped it at about 61 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_seeder_stops_within_a_tick_of_its_seeding_time_limit() {
    let a = Node::start_with(|c| c.seeding.seed_time_limit = dropseed::config::Span(35)).await;
    payload_tree(&a.download_dir(), "tree", TREE, 8);
    let meta = make_torrent(&a.download_dir(), "tree", PIECE_256K);
    let hash = meta.info_hash.hex();
    assert_eq!(a.session.add_metainfo(meta).await.unwrap(), AddOutcome::Added);
    let t = a.wait_state(&hash, TorrentState::Stopped, Duration::from_secs(90)).await;
    let seeded = t.times.seeding_secs;
    assert!((35..=37).contains(&seeded), "stopped after {seeded} s seeded; the limit is 35 s");
    a.session.shutdown().await;
}

/// The seeding and running time an idle seeder showed between its seldom
/// ticks is kept when it stops: a pause never turns them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_time_shown_between_idle_ticks_survives_a_pause() {
    let a = Node::start().await;
    payload_tree(&a.download_dir(), "tree", TREE, 9);
    let meta = make_torrent(&a.download_dir(), "tree", PIECE_256K);
    let hash = meta.info_hash.hex();
    assert_eq!(a.session.add_metainfo(meta.clone()).await.unwrap(), AddOutcome::Added);
    let shown = a.wait_for(&hash, "5 s seeded", Duration::from_secs(30), |t| t.times.seeding_secs >= 5).await;
    a.session.command(meta.info_hash, Cmd::Pause).await.unwrap();
    let paused = a.wait_state(&hash, TorrentState::Paused, Duration::from_secs(30)).await;
    assert!(
        paused.times.seeding_secs >= shown.times.seeding_secs && paused.times.active_secs >= shown.times.active_secs,
        "shown {:?}, then paused {:?}",
        shown.times,
        paused.times
    );
    a.session.shutdown().await;
}

/// An idle seeder (its next tick up to 30 s away) that a leecher dials
/// is busy at once: it ticks again within a second, so its rates and
/// choking (and a tracker's list past the first few dials) do not wait
/// for the idle tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_seeder_ticks_again_soon_after_a_peer_arrives() {
    let (a, meta) = seeder(31).await;
    let hash = meta.info_hash.hex();
    // Past its first tick: idle, the next one is about 30 s on.
    a.wait_for(&hash, "idle", Duration::from_secs(30), |t| t.times.seeding_secs >= 2).await;
    let b = Node::start().await;
    assert_eq!(b.session.add_magnet(magnet_of(&meta, vec![a.addr()])).await.unwrap(), AddOutcome::Added);
    b.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(20)).await;
    let seen = a.wait_for(&hash, "the upload seen", Duration::from_secs(5), |t| t.times.last_active > 0).await;
    assert!(seen.times.seeding_secs < 25, "seen at the idle tick only: {:?}", seen.times);
    b.session.shutdown().await;
    a.session.shutdown().await;
}

/// A save path's folder is reached from the configured folder holding it,
/// one name at a time: replaced by a link (its files moved outside, the
/// same inodes), nothing outside is deleted, before or after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_path_folder_replaced_by_a_link_is_never_followed() {
    let a = Node::start().await;
    let library = a.download_dir().join("library");
    payload_tree(&library, "tree", TREE, 29);
    let meta = cross_torrent(&library, "tree", "TRACKER-ONE");
    let hash = meta.info_hash.hex();
    let added = a.session.add_metainfo_at(meta.clone(), Default::default(), library.clone()).await.unwrap();
    assert_eq!(added, AddOutcome::Added);
    a.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(30)).await;
    // A group member moves the folder out (same files, same inodes) and
    // puts a link in its place.
    let outside = a.dir.path().join("outside");
    std::fs::rename(&library, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &library).unwrap();
    let removed = format!("{:?}", a.session.remove(meta.info_hash, true).await);
    assert!(outside.join("tree/a.bin").exists(), "followed the link: {removed}");
    assert!(removed.contains("not followed"), "{removed}");
    // The same after a restart, from the record's stamps.
    std::fs::remove_file(&library).unwrap();
    std::fs::rename(&outside, &library).unwrap();
    assert_eq!(
        a.session.add_metainfo_at(meta.clone(), Default::default(), library.clone()).await.unwrap(),
        AddOutcome::Added
    );
    a.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(30)).await;
    a.session.shutdown().await;
    let Node { dir, .. } = a;
    std::fs::rename(&library, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &library).unwrap();
    let a = Node::start_in(dir, |_| {}).await;
    a.wait_for(&hash, "not seeding", Duration::from_secs(30), |s| s.state != TorrentState::Checking).await;
    let removed = format!("{:?}", a.session.remove(meta.info_hash, true).await);
    assert!(outside.join("tree/a.bin").exists(), "followed the link after a restart: {removed}");
    assert!(removed.contains("not followed"), "{removed}");
    a.session.shutdown().await;
}

/// A borrowed torrent whose data failed verification never deletes it: the
/// files were never proven its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrowed_torrent_that_failed_verification_keeps_the_files_on_delete() {
    let a = Node::start().await;
    let library = a.download_dir().join("library");
    payload_tree(&library, "tree", TREE, 31);
    let other_src = tempfile::tempdir().unwrap();
    payload_tree(other_src.path(), "tree", TREE, 31);
    common::payload(&other_src.path().join("tree/sub/b.bin"), TREE[1].1, 999);
    let meta = make_torrent(other_src.path(), "tree", PIECE_256K);
    let hash = meta.info_hash.hex();
    let added = a.session.add_metainfo_at(meta.clone(), Default::default(), library.clone()).await.unwrap();
    assert_eq!(added, AddOutcome::Added);
    a.wait_for(&hash, "an error", Duration::from_secs(30), |s| s.state == TorrentState::Error).await;
    let removed = a.session.remove(meta.info_hash, true).await.unwrap().to_string();
    assert!(removed.contains("not verified as this torrent's data"), "{removed}");
    let theirs = tempfile::tempdir().unwrap();
    payload_tree(theirs.path(), "tree", TREE, 31);
    for (rel, _) in TREE {
        let (want, got) = (theirs.path().join("tree").join(rel), library.join("tree").join(rel));
        assert!(std::fs::read(want).unwrap() == std::fs::read(&got).unwrap(), "{} was touched", got.display());
    }
    a.session.shutdown().await;
}

/// Files a cross-seed names at the same path are kept when their owner is
/// removed with its data, even while that cross-seed has none of them open
/// (here `missing`: it has a file more, absent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_data_keeps_the_files_of_a_cross_seed_that_has_them_closed() {
    let (a, first) = seeder(37).await;
    let src = tempfile::tempdir().unwrap();
    payload_tree(src.path(), "tree", TREE, 37);
    common::payload(&src.path().join("tree/extra.nfo"), 1000, 5);
    let second = make_torrent(src.path(), "tree", PIECE_256K);
    let h2 = second.info_hash.hex();
    assert_eq!(a.session.add_metainfo(second.clone()).await.unwrap(), AddOutcome::Added);
    a.wait_state(&h2, TorrentState::Missing, Duration::from_secs(30)).await;
    let removed = a.session.remove(first.info_hash, true).await.unwrap().to_string();
    assert!(removed.contains("still used by another torrent"), "{removed}");
    let theirs = tempfile::tempdir().unwrap();
    payload_tree(theirs.path(), "tree", TREE, 37);
    assert_same_files(&first, theirs.path(), &a.download_dir());
    a.session.shutdown().await;
}

/// A save path naming an item its owner is still downloading into (here
/// after a recheck found a file damaged) is refused, as an add by name is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_path_into_data_still_downloading_is_refused() {
    let (a, first) = seeder(41).await;
    let second = cross_torrent(&a.download_dir(), "tree", "OTHER-TRACKER");
    common::payload(&a.download_dir().join("tree/a.bin"), TREE[0].1, 4141);
    a.session.command(first.info_hash, Cmd::Recheck).await.unwrap();
    a.wait_for(&first.info_hash.hex(), "incomplete", Duration::from_secs(30), |s| {
        s.progress < 1.0 && s.state != TorrentState::Checking
    })
    .await;
    let o = a.session.add_metainfo_at(second.clone(), Default::default(), a.download_dir()).await.unwrap();
    assert!(matches!(&o, AddOutcome::Refused(why) if why.contains("not complete yet")), "{o:?}");
    a.session.shutdown().await;
}

/// The same, with the save path naming the item by another path: the
/// download folder in the config is a link, the save path its real folder.
/// The item is told by what it is (device, inode), not by the path's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_path_into_data_still_downloading_is_refused_by_any_path() {
    let dir = tempfile::Builder::new().prefix("dropseed-inproc").tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("downloads")).unwrap();
    let a = Node::start_in(dir, |_| {}).await;
    payload_tree(&a.download_dir(), "tree", TREE, 43);
    let first = make_torrent(&a.download_dir(), "tree", PIECE_256K);
    assert_eq!(a.session.add_metainfo(first.clone()).await.unwrap(), AddOutcome::Added);
    a.wait_state(&first.info_hash.hex(), TorrentState::Seeding, Duration::from_secs(30)).await;
    let second = cross_torrent(&a.download_dir(), "tree", "OTHER-TRACKER");
    common::payload(&a.download_dir().join("tree/a.bin"), TREE[0].1, 4343);
    a.session.command(first.info_hash, Cmd::Recheck).await.unwrap();
    a.wait_for(&first.info_hash.hex(), "incomplete", Duration::from_secs(30), |s| {
        s.progress < 1.0 && s.state != TorrentState::Checking
    })
    .await;
    let o = a.session.add_metainfo_at(second.clone(), Default::default(), real).await.unwrap();
    assert!(matches!(&o, AddOutcome::Refused(why) if why.contains("not complete yet")), "{o:?}");
    a.session.shutdown().await;
}

/// A cross-seed whose data failed verification waits for the user: it is
/// not hashed again every minute (the clock is paused: a minute passes at
/// once), and a resume checks it again.
#[tokio::test(start_paused = true)]
async fn a_borrowed_torrent_that_failed_verification_is_not_retried_until_resumed() {
    let a = Node::start().await;
    let library = a.download_dir().join("library");
    payload_tree(&library, "tree", TREE, 43);
    let meta = cross_torrent(&library, "tree", "TRACKER-ONE");
    let hash = meta.info_hash.hex();
    let good = std::fs::read(library.join("tree/a.bin")).unwrap();
    common::payload(&library.join("tree/a.bin"), TREE[0].1, 4343);
    let added = a.session.add_metainfo_at(meta.clone(), Default::default(), library.clone()).await.unwrap();
    assert_eq!(added, AddOutcome::Added);
    a.wait_state(&hash, TorrentState::Error, Duration::from_secs(30)).await;
    // The data is put right; only the user's resume looks at it again.
    std::fs::write(library.join("tree/a.bin"), &good).unwrap();
    tokio::time::sleep(Duration::from_secs(180)).await;
    assert_eq!(a.status(&hash).unwrap().state, TorrentState::Error, "retried on its own");
    a.session.command(meta.info_hash, Cmd::Resume).await.unwrap();
    a.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(30)).await;
    a.session.shutdown().await;
}

// ---------------------------------------------------------------------------
// 11. A magnet's metadata connections count against the session's limits
// ---------------------------------------------------------------------------

/// Peers that accept and never answer, so that each connection stays open
/// until the dialler gives up; counts how many are open at once at most.
struct SilentPeers {
    addrs: Vec<SocketAddr>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentPeers {
    async fn on(hosts: &[[u8; 4]]) -> SilentPeers {
        use std::sync::atomic::Ordering::SeqCst;
        let (open, peak) = (Arc::new(Default::default()), Arc::new(Default::default()));
        let mut addrs = Vec::new();
        for host in hosts {
            let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::from(*host), 0)).await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let (open, peak): (Arc<std::sync::atomic::AtomicUsize>, Arc<std::sync::atomic::AtomicUsize>) =
                (Arc::clone(&open), Arc::clone(&peak));
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let now = open.fetch_add(1, SeqCst) + 1;
                    peak.fetch_max(now, SeqCst);
                    let open = open.clone();
                    tokio::spawn(async move {
                        let mut sink = Vec::new();
                        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
                        open.fetch_sub(1, SeqCst);
                    });
                }
            });
        }
        SilentPeers { addrs, open, peak }
    }

    /// Waits until `want` connections are open at once, then watches a
    /// while longer; the most ever open.
    async fn peak_after_reaching(&self, want: usize) -> usize {
        use std::sync::atomic::Ordering::SeqCst;
        let t0 = Instant::now();
        while self.open.load(SeqCst) < want {
            assert!(t0.elapsed() < Duration::from_secs(20), "only {} connections came", self.open.load(SeqCst));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.peak.load(SeqCst)
    }
}

fn magnet_for(seed: u8, peers: Vec<SocketAddr>) -> Magnet {
    Magnet { info_hash: dropseed::types::InfoHash([seed; 20]), name: None, trackers: vec![], peers }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magnet_connections_hold_the_global_connection_permits() {
    // Eight hosts, two magnets that name them all: up to 16 dials without
    // the global budget of 3.
    let hosts: Vec<[u8; 4]> = (2..10).map(|i| [127, 0, 0, i]).collect();
    let peers = SilentPeers::on(&hosts).await;
    let b = Node::start_with(|c| c.limits.max_connections = 3).await;
    for seed in [1, 2] {
        b.session.add_magnet(magnet_for(seed, peers.addrs.clone())).await.unwrap();
    }
    assert_eq!(peers.peak_after_reaching(3).await, 3, "metadata dials beyond max_connections");
    b.session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magnet_connections_respect_the_per_host_limit() {
    // Six peers on one host: a magnet dials up to 8 without the per-host rule.
    let peers = SilentPeers::on(&[[127, 0, 0, 20]; 6]).await;
    let b = Node::start_with(|c| c.limits.max_peers_per_ip = 2).await;
    b.session.add_magnet(magnet_for(3, peers.addrs.clone())).await.unwrap();
    assert_eq!(peers.peak_after_reaching(2).await, 2, "metadata dials beyond max_peers_per_ip");
    b.session.shutdown().await;
}

// An add that fails on the disk (its metainfo cannot be written) leaves no
// entry behind: the hash is neither listed nor busy, and the same add
// succeeds once the disk lets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_failing_on_the_disk_leaves_no_entry() {
    let node = Node::start().await;
    let src = tempfile::tempdir().unwrap();
    common::payload(&src.path().join("blocked.bin"), 50_000, 77);
    let meta = make_torrent(src.path(), "blocked.bin", 16 * 1024);
    let hash = meta.info_hash.hex();
    // A folder where the metainfo file goes: writing it fails.
    let obstacle = node.session.env.state_dir().join(format!("{hash}.torrent"));
    std::fs::create_dir(&obstacle).unwrap();
    let failed = node.session.add_metainfo(meta.clone()).await;
    assert!(failed.is_err(), "the write must fail: {failed:?}");
    assert!(node.session.statuses().iter().all(|s| s.info_hash != hash), "no entry left behind");
    std::fs::remove_dir(&obstacle).unwrap();
    assert_eq!(node.session.add_metainfo(meta).await.unwrap(), AddOutcome::Added, "the slot is free again");
    node.session.shutdown().await;
}

// ---------------------------------------------------------------------------
// 12. A tracker that lists our own address: learnt once, never dialled again
// ---------------------------------------------------------------------------

/// A tracker answering every announce with the one peer `peer`.
async fn tracker_listing(peer: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/announce", listener.local_addr().unwrap());
    let SocketAddr::V4(v4) = peer else { panic!("an IPv4 peer") };
    let mut body = b"d8:intervali1800e5:peers6:".to_vec();
    body.extend(v4.ip().octets());
    body.extend(v4.port().to_be_bytes());
    body.push(b'e');
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_own_address_from_a_tracker_is_learnt_and_not_dialled_again() {
    let a = Node::start().await;
    let url = tracker_listing(a.addr()).await;
    // A download with nobody else: the tracker names only us.
    let src = tempfile::tempdir().unwrap();
    payload_tree(src.path(), "tree", TREE, 12);
    let mut meta = make_torrent(src.path(), "tree", PIECE_256K);
    meta.trackers = vec![vec![url]];
    a.session.add_metainfo(meta).await.unwrap();
    // Our listener answers our own dial before refusing it, so the dialling
    // side sees its own peer id (and no hang-up worth five retries).
    let t0 = Instant::now();
    while !a.session.env.is_ourselves(&a.addr()) {
        assert!(t0.elapsed() < Duration::from_secs(20), "never learnt that it dialled itself");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.session.shutdown().await;
}

// ---------------------------------------------------------------------------
// 13. Many slow peers: their capacity is used, not the piece buffer's
// ---------------------------------------------------------------------------

/// Issue #29: a seedbox downloading from many rate-limited peers. Each
/// [`slow_seeder`] serves one 16 KiB block per 40 ms (about 400 KiB/s, its
/// requests in a FIFO as a rate-limited libtorrent peer does), with 1 MiB
/// pieces and the smallest piece buffer (four pieces). The pieces in flight
/// are shared by all peers, so each peer only needs about half a second of
/// requests queued; a pipeline that grows while the picker has nothing to
/// give lets a few peers take the whole buffer for seconds while the others
/// wait, and the download ran at a fraction of what the peers offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_peers_are_all_kept_busy() {
    let _serial = SERIAL.lock().await;
    const PEERS: usize = 12;
    const MIB: u64 = 24;
    let delay = Duration::from_millis(40);
    let src = tempfile::tempdir().unwrap();
    common::payload(&src.path().join("many.bin"), MIB << 20, 93);
    let meta = make_torrent(src.path(), "many.bin", 1 << 20);
    let data = Arc::new(std::fs::read(src.path().join("many.bin")).unwrap());
    let b = Node::start_with(|c| {
        c.limits.max_peers_per_ip = PEERS;
        c.storage.piece_buffer = ByteSize(1 << 20);
    })
    .await;
    assert_eq!(b.session.add_metainfo(meta.clone()).await.unwrap(), AddOutcome::Added);
    let hash = meta.info_hash.hex();
    b.wait_state(&hash, TorrentState::Downloading, Duration::from_secs(30)).await;
    let t0 = Instant::now();
    let peers: Vec<_> =
        (0..PEERS).map(|_| tokio::spawn(slow_seeder(b.addr(), meta.clone(), data.clone(), delay))).collect();
    b.wait_state(&hash, TorrentState::Seeding, Duration::from_secs(120)).await;
    let got = MIB as f64 / t0.elapsed().as_secs_f64();
    b.session.shutdown().await;
    peers.iter().for_each(|p| p.abort());
    let offered = PEERS as f64 * 16.0 / 1024.0 / delay.as_secs_f64();
    eprintln!("{PEERS} slow peers offering {offered:.2} MiB/s in all: downloaded at {got:.2} MiB/s");
    assert!(got >= 0.75 * offered, "{got:.2} MiB/s of the {offered:.2} the peers offer");
}
