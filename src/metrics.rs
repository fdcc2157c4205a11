//! Prometheus metrics (`GET /metrics` on the `[api]` listener): what a VPS
//! owner's dashboards want to see of dropseed, in the OpenMetrics text format.
//!
//! Why a module of its own: the engine only bumps cheap counters
//! ([`crate::counters`], one set per session, in [`crate::torrent::Env`])
//! where bytes, hash failures, bans and connections happen; everything else is read at scrape time from
//! what the engine already keeps (torrent statuses, the announce book, the
//! disk pool, the DHT, the hook runner, `/proc/self`). A scrape makes one pass
//! over the statuses and builds a fresh registry, so nothing here grows with
//! time: per-category series exist while a torrent is in the category, tracker
//! hosts are capped by the announce book, and per-torrent series are off
//! unless `[api] metrics_per_torrent` asks for them.

use crate::counters::{way_labels, Metrics, Seen};
use crate::session::Session;
use crate::torrent::{TorrentState, TorrentStatus};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// One label, as the registry's families take them.
type Label = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];

/// Every state a torrent can be in, so that each has a series (at 0 too).
const STATES: [TorrentState; 10] = [
    TorrentState::Metadata,
    TorrentState::Queued,
    TorrentState::Checking,
    TorrentState::Downloading,
    TorrentState::Seeding,
    TorrentState::Paused,
    TorrentState::Stopped,
    TorrentState::Error,
    TorrentState::Moving,
    TorrentState::Missing,
];

impl Metrics {
    /// The text for one scrape. `proc` is read off the async workers (see
    /// [`render`]). One pass over the statuses.
    pub fn encode(&self, session: &Session, proc: &ProcStats) -> String {
        let statuses = session.statuses();
        let per_torrent = session.env.config().api.metrics_per_torrent;
        let mut registry = Registry::with_prefix("dropseed");
        self.register_engine(&mut registry);
        register_torrents(&mut registry, &statuses, per_torrent);
        self.register_categories(&mut registry, &statuses);
        register_session(&mut registry, session);
        register_proc(&mut registry, proc);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }

    /// Takes the restored torrents' counters as the start of this process's
    /// per-category totals (the session calls it once, after restoring).
    pub fn start_counting(&self, statuses: &[TorrentStatus]) {
        self.ledger.lock().unwrap().prime(statuses.iter().map(seen_of));
    }

    /// The counters the engine bumps, shared with the registry (clones of
    /// the same atomics).
    fn register_engine(&self, r: &mut Registry) {
        let bytes = Unit::Bytes;
        r.register_with_unit(
            "downloaded",
            "Payload bytes downloaded and verified",
            bytes.clone(),
            self.downloaded.clone(),
        );
        r.register_with_unit("uploaded", "Payload bytes uploaded to peers", bytes.clone(), self.uploaded.clone());
        r.register_with_unit(
            "uploaded_zero_copy",
            "Of the payload bytes uploaded, those sent from the page cache (sendfile), never copied",
            bytes.clone(),
            self.uploaded_zero_copy.clone(),
        );
        r.register("hash_failures", "Downloaded pieces that failed their hash check", self.hash_failures.clone());
        r.register_with_unit(
            "corrupt",
            "Bytes of pieces that failed their hash check",
            bytes.clone(),
            self.corrupt_bytes.clone(),
        );
        r.register_with_unit(
            "wasted",
            "Bytes received but not asked for or no longer needed",
            bytes,
            self.wasted_bytes.clone(),
        );
        r.register("peers_banned", "Peers banned from a torrent for corrupt pieces", self.peers_banned.clone());
        r.register_with_unit(
            "piece_verify",
            "Time to hash a downloaded piece",
            Unit::Seconds,
            self.piece_verify.clone(),
        );
        let peers = Family::<Labels2, Gauge>::default();
        for (i, g) in self.peers.iter().enumerate() {
            let (transport, encryption) = way_labels(i);
            peers.get_or_create(&[("transport", transport.into()), ("encryption", encryption.into())]).set(g.get());
        }
        r.register("peers_connected", "Peers connected, by transport and encryption", peers);
    }

    /// Bytes by category: totals carried across scrapes by the ledger.
    fn register_categories(&self, r: &mut Registry, statuses: &[TorrentStatus]) {
        let totals = {
            let mut ledger = self.ledger.lock().unwrap();
            ledger.observe(statuses.iter().map(seen_of));
            ledger.totals()
        };
        let (down, up) = (Family::<Label, Counter>::default(), Family::<Label, Counter>::default());
        for (category, t) in totals {
            down.get_or_create(&[("category", category.clone())]).inc_by(t.down);
            up.get_or_create(&[("category", category)]).inc_by(t.up);
        }
        let help_down = "Payload bytes downloaded by the torrents of a category (\"\" for none)";
        r.register_with_unit("category_downloaded", help_down, Unit::Bytes, down);
        let help_up = "Payload bytes uploaded by the torrents of a category (\"\" for none)";
        r.register_with_unit("category_uploaded", help_up, Unit::Bytes, up);
    }
}

/// Rates, states and (when asked) one series per torrent: one pass.
fn register_torrents(r: &mut Registry, statuses: &[TorrentStatus], per_torrent: bool) {
    let (down_rate, up_rate) = (Gauge::<i64>::default(), Gauge::<i64>::default());
    let states = Family::<Label, Gauge>::default();
    for state in STATES {
        states.get_or_create(&[("state", state.as_str().into())]).set(0);
    }
    let torrent = TorrentFamilies::default();
    for s in statuses {
        down_rate.inc_by(clamp(s.download_rate));
        up_rate.inc_by(clamp(s.upload_rate));
        states.get_or_create(&[("state", s.state.as_str().into())]).inc();
        if per_torrent {
            torrent.add(s);
        }
    }
    r.register_with_unit("download", "Download rate", per_second(), down_rate);
    r.register_with_unit("upload", "Upload rate", per_second(), up_rate);
    r.register("torrents", "Torrents and magnets by state", states);
    if per_torrent {
        torrent.register(r);
    }
}

/// `[api] metrics_per_torrent`: series labelled by info hash and name.
#[derive(Default)]
struct TorrentFamilies {
    downloaded: Family<Labels2, Counter>,
    uploaded: Family<Labels2, Counter>,
    download_rate: Family<Labels2, Gauge>,
    upload_rate: Family<Labels2, Gauge>,
    peers: Family<Labels2, Gauge>,
}

impl TorrentFamilies {
    fn add(&self, s: &TorrentStatus) {
        let labels: Labels2 = [("info_hash", s.info_hash.clone()), ("name", crate::types::printable(&s.name, 200))];
        self.downloaded.get_or_create(&labels).inc_by(s.downloaded);
        self.uploaded.get_or_create(&labels).inc_by(s.uploaded);
        self.download_rate.get_or_create(&labels).set(clamp(s.download_rate));
        self.upload_rate.get_or_create(&labels).set(clamp(s.upload_rate));
        self.peers.get_or_create(&labels).set(clamp(s.peers as u64));
    }

    fn register(self, r: &mut Registry) {
        r.register_with_unit(
            "torrent_downloaded",
            "A torrent's payload bytes downloaded, over its life",
            Unit::Bytes,
            self.downloaded,
        );
        r.register_with_unit(
            "torrent_uploaded",
            "A torrent's payload bytes uploaded, over its life",
            Unit::Bytes,
            self.uploaded,
        );
        r.register_with_unit("torrent_download", "A torrent's download rate", per_second(), self.download_rate);
        r.register_with_unit("torrent_upload", "A torrent's upload rate", per_second(), self.upload_rate);
        r.register("torrent_peers", "A torrent's connected peers", self.peers);
    }
}

/// What the session's parts keep: trackers, disk, DHT, hooks.
fn register_session(r: &mut Registry, session: &Session) {
    let env = &session.env;
    let (announces, failures) = (Family::<Label, Counter>::default(), Family::<Label, Counter>::default());
    for (host, tally) in env.announces().host_tallies() {
        announces.get_or_create(&[("host", host.clone())]).inc_by(tally.attempts);
        failures.get_or_create(&[("host", host)]).inc_by(tally.failures);
    }
    r.register("tracker_announces", "Announces sent, by tracker host", announces);
    r.register("tracker_announce_failures", "Announces that failed, by tracker host", failures);
    let io = crate::storage::io_counters();
    r.register_with_unit("disk_read", "Bytes read from torrent data", Unit::Bytes, counter(io.read));
    r.register_with_unit("disk_written", "Bytes written to torrent data", Unit::Bytes, counter(io.written));
    r.register("disk_queue_depth", "Jobs waiting for a disk thread", gauge(env.disk().queued() as u64));
    let dht = Family::<Label, Gauge>::default();
    if let Some(d) = &env.dht() {
        for (family, label) in [(crate::dht::family::Family::V4, "v4"), (crate::dht::family::Family::V6, "v6")] {
            if let Some(n) = d.node_count_of(family) {
                dht.get_or_create(&[("family", label.into())]).set(clamp(n as u64));
            }
        }
    }
    r.register("dht_nodes", "Nodes in the DHT routing table, by address family", dht);
    let hooks = env.hooks().tally();
    r.register("hook_runs", "Hooks started", counter(hooks.runs));
    r.register("hook_failures", "Hooks that did not exit with status 0 (or did not start)", counter(hooks.failures));
}

fn register_proc(r: &mut Registry, proc: &ProcStats) {
    let memory = Family::<Label, Gauge>::default();
    if let Some(m) = proc.memory {
        memory.get_or_create(&[("kind", "anon".into())]).set(clamp(m.anon));
        memory.get_or_create(&[("kind", "file".into())]).set(clamp(m.file));
    }
    r.register_with_unit("memory", "Resident memory (RssAnon, RssFile)", Unit::Bytes, memory);
    if let Some(n) = proc.open_files {
        r.register("open_files", "File descriptors open", gauge(n));
    }
}

/// Rates: `dropseed_upload_bytes_per_second`.
fn per_second() -> Unit {
    Unit::Other("bytes_per_second".into())
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn gauge(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(clamp(value));
    g
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metrics text for one scrape; `/proc/self` is read on the blocking pool.
pub async fn render(session: &Session) -> String {
    let proc = tokio::task::spawn_blocking(ProcStats::read).await.unwrap_or_default();
    session.env.metrics().encode(session, &proc)
}

// ---------------------------------------------------------------------------
// Bytes by category
// ---------------------------------------------------------------------------

fn seen_of(s: &TorrentStatus) -> Seen<'_> {
    Seen { hash: &s.info_hash, category: &s.category, down: s.downloaded, up: s.uploaded }
}

// ---------------------------------------------------------------------------
// /proc/self
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub anon: u64,
    pub file: u64,
}

/// What the kernel says of the process; `None` where it cannot be read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub memory: Option<Memory>,
    pub open_files: Option<u64>,
}

impl ProcStats {
    /// Blocking: reads `/proc/self/status` and lists `/proc/self/fd`.
    pub fn read() -> ProcStats {
        let memory = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_status(&s));
        let open_files = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        ProcStats { memory, open_files }
    }
}

/// RssAnon and RssFile of a `/proc/PID/status` text, in bytes.
fn parse_status(text: &str) -> Option<Memory> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
        let value = line.trim().strip_suffix("kB")?.trim();
        value.parse::<u64>().ok()?.checked_mul(1024)
    };
    Some(Memory { anon: kib("RssAnon")?, file: kib("RssFile")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_memory_lines() {
        let text =
            "Name:\tdropseed\nVmRSS:\t   9000 kB\nRssAnon:\t    4096 kB\nRssFile:\t    2048 kB\nRssShmem:\t0 kB\n";
        assert_eq!(parse_status(text), Some(Memory { anon: 4096 * 1024, file: 2048 * 1024 }));
        assert_eq!(parse_status("RssAnon:\t12 kB\n"), None, "RssFile missing");
        assert_eq!(parse_status("RssAnon:\tlots kB\nRssFile:\t1 kB\n"), None);
        assert_eq!(parse_status("RssAnon:\t99999999999999999999 kB\nRssFile:\t1 kB\n"), None);
    }

    #[test]
    fn the_live_process_has_memory_and_open_files() {
        let p = ProcStats::read();
        assert!(p.memory.is_some_and(|m| m.anon > 0), "{p:?}");
        assert!(p.open_files.is_some_and(|n| n >= 3), "{p:?}");
    }

    /// A status as the session gives it, with a hostile name and category.
    fn hostile_status() -> TorrentStatus {
        let evil = "x\"} dropseed_downloaded_bytes_total 1e18\n# EOF\n";
        serde_json::from_value(serde_json::json!({
            "info_hash": "ab".repeat(20), "name": evil, "category": evil, "state": "seeding",
            "progress": 1.0, "size": 10, "downloaded": 10, "uploaded": 5, "download_rate": 0,
            "upload_rate": 0, "peers": 0, "ratio": 0.5, "error": null,
        }))
        .unwrap()
    }

    #[test]
    fn names_and_categories_cannot_inject_samples() {
        let statuses = [hostile_status()];
        let m = Metrics::default();
        m.start_counting(&[]);
        let mut r = Registry::with_prefix("dropseed");
        register_torrents(&mut r, &statuses, true);
        m.register_categories(&mut r, &statuses);
        let mut text = String::new();
        encode(&mut text, &r).unwrap();
        assert_eq!(text.lines().filter(|l| *l == "# EOF").count(), 1, "{text}");
        assert!(!text.lines().any(|l| l.starts_with("dropseed_downloaded_bytes_total")), "{text}");
        let torrent_lines = text.lines().filter(|l| l.starts_with("dropseed_torrent_downloaded_bytes_total{"));
        assert_eq!(torrent_lines.count(), 1, "one series, on one line:\n{text}");
    }

    #[test]
    fn per_torrent_series_only_when_asked() {
        let statuses = [hostile_status()];
        for per_torrent in [false, true] {
            let mut r = Registry::default();
            register_torrents(&mut r, &statuses, per_torrent);
            let mut text = String::new();
            encode(&mut text, &r).unwrap();
            assert_eq!(text.contains("torrent_downloaded"), per_torrent, "{text}");
            assert!(text.contains("torrents{state=\"seeding\"} 1"), "{text}");
        }
    }
}
