//! The announce loop of one torrent: BEP 12 tiers of HTTP(S) and UDP
//! (BEP 15) trackers, mixed, tried in order (a tracker
//! that answers moves to the front of its tier), `started` first, re-announces
//! at the tracker's `interval` (never faster than `min interval`),
//! `completed` once, `stopped` when the torrent stops, and exponential
//! back-off on failures. Failures are logged once per streak, not per retry.
//! When each announce may go out, across pauses and restarts, is [`pace`]'s.
//! The counters sent are this announce session's: they start from zero at
//! each `started` and only grow until its `stopped`.

pub mod hostpace;
pub mod http;
pub mod journal;
pub mod pace;
pub mod scrape;
pub mod udp;

use crate::types::printable;
use crate::types::{InfoHash, PeerId};
use crate::wallclock::now_unix;
use http::{AnnounceParams, Event};
use pace::AnnounceBook;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Counters the tracker reports, read fresh for every announce.
pub trait TransferCounters: Send + Sync {
    fn uploaded(&self) -> u64;
    fn downloaded(&self) -> u64;
    /// Bytes of pieces that failed their hash check (never in `downloaded`).
    fn corrupt(&self) -> u64 {
        0
    }
    fn left(&self) -> u64;
    /// An announce is about to go out: the torrent saves the announce
    /// book's record for it first, so a restart (even a kill -9 a moment
    /// later) knows and does not announce again too soon.
    fn persist(self: Arc<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async {})
    }
}

/// Peer addresses handed to a torrent (by its trackers, the DHT, LSD and
/// PEX), boxed: each torrent's channel of them allocates a block of 32
/// slots from the start, 256 bytes so, where bare lists took 768.
pub type PeerList = Box<Vec<SocketAddr>>;

pub struct TrackerConfig {
    pub info_hash: InfoHash,
    pub name: String,
    pub peer_id: PeerId,
    pub port: u16,
    pub tiers: Vec<Vec<String>>,
    /// Peers asked for in each announce.
    pub numwant: u32,
    pub book: Arc<AnnounceBook>,
}

const DEFAULT_INTERVAL: u64 = 1800;
const MIN_BACKOFF: u64 = 15;
const MAX_BACKOFF: u64 = 1800;
const STOPPED_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after a torrent starts a "not registered" failure is retried
/// at the pace's floor rather than with back-off.
const QUICK_RETRY_FOR: Duration = Duration::from_secs(5 * 60);
/// Peers taken from one announce reply; a tracker may list far more.
const MAX_PEERS_PER_REPLY: usize = 200;

/// Whether a torrent is complete, as its announce loop sees it.
pub enum Completion {
    /// Complete when its active phase began: most of a seedbox's torrents,
    /// which then keep no channel (350 bytes each).
    Done,
    /// A channel that turns true when the last piece is verified.
    Pending(watch::Receiver<bool>),
}

impl Completion {
    fn is_complete(&self) -> bool {
        match self {
            Completion::Done => true,
            Completion::Pending(rx) => *rx.borrow(),
        }
    }

    /// Resolves when the value may have changed, or with an error once the
    /// sender is gone; never for `Done`.
    async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match self {
            Completion::Done => std::future::pending().await,
            Completion::Pending(rx) => rx.changed().await,
        }
    }
}

/// Runs until `cancel`; then sends `stopped` (bounded in time) if `started`
/// was ever accepted. `completed` is sent when `completion` turns true.
/// An announce under way is abandoned at once on `cancel`.
pub async fn run(
    mut cfg: TrackerConfig,
    client: reqwest::Client,
    counters: Arc<dyn TransferCounters>,
    peers_tx: flume::Sender<PeerList>,
    mut completion: Completion,
    cancel: CancellationToken,
) {
    let Some(mut a) = Announcer::new(&cfg, client, counters, completion.is_complete()) else {
        return;
    };
    // The announcer has the usable ones; this copy would stay for the
    // torrent's whole life.
    cfg.tiers = Vec::new();
    cfg.book.show_trackers(cfg.info_hash, &a.tiers);
    // `dropseed reannounce` cuts a wait short; the pace still holds.
    let reannounce = cfg.book.waker(cfg.info_hash);
    loop {
        if completion.is_complete() && !a.completed_sent && a.started {
            a.next_event = Event::Completed;
        }
        let now = now_unix();
        let at = cfg.book.get(cfg.info_hash).pace(a.next_event, now);
        if at > now {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(at - now)) => {}
                changed = completion.changed(), if !a.completed_sent => {
                    if changed.is_err() { break; }
                }
            }
            continue;
        }
        // Boxed, like the sends and `stopped` below: they live only while
        // they run, and this task's idle future stays small (ten thousand
        // torrents each keep one).
        let (wait, peers) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = Box::pin(a.announce(&cfg)) => r,
        };
        // The torrent may be stopping and no longer reading: never wait on it
        // past the cancel, so `stopped` still goes out.
        if !peers.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                sent = peers_tx.send_async(Box::new(peers)) => if sent.is_err() { return },
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            _ = reannounce.notified() => {}
            changed = completion.changed(), if !a.completed_sent => {
                if changed.is_err() { break; }
            }
        }
    }
    Box::pin(a.stop(&cfg)).await;
}

/// One torrent's announce state across its trackers.
struct Announcer {
    client: reqwest::Client,
    counters: Arc<dyn TransferCounters>,
    tiers: Vec<Vec<String>>,
    udp_connections: udp::Connections,
    key: u32,
    /// The torrent's counters when this announce session started:
    /// uploaded, downloaded, corrupt.
    base: (u64, u64, u64),
    tracker_id: Option<Vec<u8>>,
    /// This session's `started` was answered.
    started: bool,
    /// An earlier session (before a kill -9, or a `stopped` that got no
    /// answer) may still be held active by a tracker: `stopped` is owed
    /// even if this session's `started` never goes out.
    inherited: bool,
    completed_sent: bool,
    failures: u32,
    next_event: Event,
    /// The tracker's last warning, and the last outcome ("ok URL" or
    /// "failed URL ERROR"): each logged once per change.
    last_warning: Option<String>,
    last_outcome: Option<String>,
    /// When this announce session began (for the quick "not registered" retry).
    born: std::time::Instant,
    /// The first announce took its slot among the session's starts.
    start_paced: bool,
}

impl Announcer {
    /// `None` when no tracker has a scheme we speak.
    fn new(
        cfg: &TrackerConfig,
        client: reqwest::Client,
        counters: Arc<dyn TransferCounters>,
        complete: bool,
    ) -> Option<Announcer> {
        let tiers = usable_tiers(&cfg.tiers);
        if tiers.is_empty() {
            if cfg.tiers.iter().flatten().next().is_some() {
                tracing::warn!(torrent = %cfg.name, "no tracker with a supported scheme (http, https, udp)");
            }
            return None;
        }
        let base = (counters.uploaded(), counters.downloaded(), counters.corrupt());
        let record = cfg.book.get(cfg.info_hash);
        Some(Announcer {
            client,
            counters,
            tiers,
            udp_connections: udp::Connections::default(),
            key: record.key,
            base,
            tracker_id: None,
            started: false,
            inherited: record.active,
            completed_sent: complete,
            failures: 0,
            last_warning: None,
            last_outcome: None,
            born: std::time::Instant::now(),
            start_paced: false,
            next_event: Event::Started,
        })
    }

    /// One announce; returns when to announce next, and the peers it got.
    async fn announce(&mut self, cfg: &TrackerConfig) -> (Duration, Vec<SocketAddr>) {
        // The host's pace first: the announce counts from when it goes out.
        let host = self.tiers.first().and_then(|t| t.first()).and_then(|u| tracker_host(u)).unwrap_or_default();
        cfg.book.pacer().wait(&host, !self.start_paced).await;
        self.start_paced = true;
        let params = self.params(cfg, self.next_event, cfg.numwant);
        self.mark_sent(cfg, self.next_event).await;
        let mut attempts = Vec::new();
        let pacing = Some((cfg.book.pacer(), host.as_str()));
        let result =
            announce_tiers(&self.client, &mut self.udp_connections, &mut self.tiers, &params, pacing, &mut attempts)
                .await;
        if let Ok(reply) = &result {
            let now = now_unix();
            cfg.book.announced(cfg.info_hash, now, Some(reply.min_interval.unwrap_or(0)));
            if let (Some(seeders), Some(leechers)) = (reply.seeders, reply.leechers) {
                cfg.book.swarm_seen(cfg.info_hash, pace::Swarm { seeders, leechers, at: now });
            }
        }
        // The tracker that answered, or the last one that failed.
        let url = attempts.last().map(|(url, _)| redacted(url)).unwrap_or_default();
        let (wait, peers) = self.on_result(cfg, result, &url);
        show_attempts(cfg, &params, attempts, Some(wait));
        (wait, peers)
    }

    /// Learns from an announce's result: what to send next, what to log,
    /// and when to announce again.
    fn on_result(
        &mut self,
        cfg: &TrackerConfig,
        result: Result<http::AnnounceReply, http::TrackerError>,
        url: &str,
    ) -> (Duration, Vec<SocketAddr>) {
        match result {
            Ok(reply) => {
                // Logged at info once per change: the first good answer, the
                // first after failures, or from another tracker.
                let outcome = format!("ok {url}");
                if self.last_outcome.as_ref() != Some(&outcome) {
                    tracing::info!(torrent = %cfg.name, tracker = %url, peers = reply.peers.len(), "announce ok");
                    self.last_outcome = Some(outcome);
                }
                self.failures = 0;
                self.started |= self.next_event == Event::Started;
                self.completed_sent |= self.next_event == Event::Completed;
                self.next_event = Event::None;
                if reply.warning != self.last_warning {
                    if let Some(w) = &reply.warning {
                        tracing::warn!(torrent = %cfg.name, warning = %w, "tracker warning");
                    }
                    self.last_warning = reply.warning.clone();
                }
                if reply.tracker_id.is_some() {
                    self.tracker_id = reply.tracker_id.clone();
                }
                tracing::debug!(torrent = %cfg.name, tracker = %url, peers = reply.peers.len(), "announce ok");
                let interval = reply.interval.unwrap_or(DEFAULT_INTERVAL).max(reply.min_interval.unwrap_or(0)).max(30);
                let mut peers = reply.peers;
                peers.truncate(MAX_PEERS_PER_REPLY);
                (Duration::from_secs(interval), peers)
            }
            Err(e) => {
                self.failures += 1;
                let text = printable(&e.to_string(), 300);
                let outcome = format!("failed {url} {text}");
                if self.last_outcome.as_ref() != Some(&outcome) {
                    tracing::warn!(torrent = %cfg.name, tracker = %url, error = %text, "announce failed; retrying with back-off");
                    self.last_outcome = Some(outcome);
                }
                // An upload often reaches us before its tracker knows it:
                // then retry as soon as the pace allows, for a few minutes.
                if not_registered(&e) && self.born.elapsed() < QUICK_RETRY_FOR {
                    return (backoff(1), Vec::new());
                }
                (backoff(self.failures), Vec::new())
            }
        }
    }

    /// Announces `stopped`, bounded in time, if `started` was accepted in
    /// this session or a tracker may still hold an earlier one.
    async fn stop(mut self, cfg: &TrackerConfig) {
        if !self.started && !self.inherited {
            return;
        }
        let params = self.params(cfg, Event::Stopped, 0);
        let mut attempts = Vec::new();
        // The book is enough here: the torrent saves its record right after
        // its announce loop ends, and a slow save must not eat the 3 s.
        cfg.book.announced(cfg.info_hash, now_unix(), None);
        // Never paced: see `hostpace`.
        let announce = async {
            announce_tiers(&self.client, &mut self.udp_connections, &mut self.tiers, &params, None, &mut attempts).await
        };
        match tokio::time::timeout(STOPPED_TIMEOUT, announce).await {
            Ok(Ok(_)) => {
                cfg.book.stopped(cfg.info_hash);
                tracing::debug!(torrent = %cfg.name, "announced stopped")
            }
            _ => tracing::debug!(torrent = %cfg.name, "stopped announce did not complete"),
        }
        show_attempts(cfg, &params, attempts, None);
    }

    /// Notes the time of an announce before it goes out (one that never
    /// reaches the tracker only delays the next by the floor). A `started`
    /// (once per run of the torrent) or an announce that makes a tracker
    /// hold us saves the resume record, so it carries the key and `active`
    /// across a restart; the regular re-announces only go in the announce
    /// journal (unless it cannot be written).
    async fn mark_sent(&self, cfg: &TrackerConfig, event: Event) {
        let at = now_unix();
        let now_active = cfg.book.sending(cfg.info_hash, at, event);
        if now_active || event == Event::Started || !cfg.book.journal(cfg.info_hash, at).await {
            self.counters.clone().persist().await;
        }
    }

    /// An announce's parameters, with this session's counters read now.
    fn params(&self, cfg: &TrackerConfig, event: Event, numwant: u32) -> AnnounceParams {
        let c = self.counters.as_ref();
        AnnounceParams {
            info_hash: cfg.info_hash,
            peer_id: cfg.peer_id,
            port: cfg.port,
            uploaded: c.uploaded().saturating_sub(self.base.0),
            downloaded: c.downloaded().saturating_sub(self.base.1),
            corrupt: c.corrupt().saturating_sub(self.base.2),
            left: c.left(),
            event,
            key: self.key,
            numwant,
            tracker_id: self.tracker_id.clone(),
        }
    }
}

/// Puts what each tracker tried answered where `dropseed trackers` sees it.
fn show_attempts(
    cfg: &TrackerConfig,
    params: &AnnounceParams,
    attempts: Vec<(String, Result<String, String>)>,
    wait: Option<Duration>,
) {
    let now = now_unix();
    let sent = pace::Sent {
        event: params.event.name().to_string(),
        uploaded: params.uploaded,
        downloaded: params.downloaded,
        left: params.left,
    };
    for (url, outcome) in attempts {
        let answered = outcome.is_ok();
        cfg.book.tally(host_label(&url), answered);
        cfg.book.update_tracker(cfg.info_hash, &url, |v| {
            v.last_announce = Some(now);
            v.next_announce = wait.filter(|_| answered).map(|w| now + w.as_secs());
            v.result = Some(outcome.unwrap_or_else(|e| format!("error: {e}")));
            v.sent = Some(sent.clone());
        });
    }
}

/// A successful answer as `dropseed trackers` shows it.
fn summary(r: &http::AnnounceReply) -> String {
    let count = |n: Option<u64>| n.map_or("?".to_string(), |n| n.to_string());
    let mut s = format!("{} peers, {} seeders, {} leechers", r.peers.len(), count(r.seeders), count(r.leechers));
    if let Some(w) = &r.warning {
        s.push_str(&format!("; warning: {w}"));
    }
    s
}

/// The wait before retrying after `failures` failures in a row (at least
/// 1): 15 s doubling up to 30 min, and up to a quarter more at random, so
/// that torrents failing together (a tracker's outage) do not retry
/// together. Only ever longer than the doubling: the pace's rules hold.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs((MIN_BACKOFF << failures.saturating_sub(1).min(7)).min(MAX_BACKOFF));
    base + (base / 4).mul_f64(rand::random::<f64>())
}

/// A tracker's way of saying it does not know the torrent (yet).
fn not_registered(e: &http::TrackerError) -> bool {
    let http::TrackerError::Failure(text) = e else { return false };
    let t = text.to_ascii_lowercase();
    ["not registered", "unregistered", "torrent not found", "unknown torrent", "torrent does not exist"]
        .iter()
        .any(|s| t.contains(s))
}

/// The trackers we can speak to (http, https, udp), each URL once (the
/// first time it is listed), empty tiers dropped.
pub fn usable_tiers(listed: &[Vec<String>]) -> Vec<Vec<String>> {
    let supported = |u: &str| ["http://", "https://", "udp://"].iter().any(|s| u.starts_with(s));
    let mut seen = std::collections::HashSet::new();
    let mut tiers: Vec<Vec<String>> = listed
        .iter()
        .map(|t| t.iter().filter(|u| supported(u) && seen.insert(u.to_string())).cloned().collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .map(|mut t| {
            // A filter collects room for 4: every torrent keeps these.
            t.shrink_to_fit();
            t
        })
        .collect();
    tiers.shrink_to_fit();
    tiers
}

/// A tracker URL as logs and `status` show it: scheme, host, port and path,
/// without the query, the user info or any path part that looks like a
/// key. Private trackers put the passkey in one of those, and logs are
/// pasted into bug reports; `dropseed trackers` still shows the whole URL.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "(not a URL)".into() };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest[..end].split_once('/').unwrap_or((&rest[..end], ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path: Vec<&str> = path
        .split('/')
        .map(|part| {
            let keylike = part.len() >= 16 && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if keylike {
                "***"
            } else {
                part
            }
        })
        .collect();
    let query = if end < rest.len() { "?***" } else { "" };
    printable(&format!("{scheme}://{host}/{}{query}", path.join("/")), 200)
}

/// The host a tracker URL names, lowercased: one announce round reaches
/// each host at most once, whatever its URLs (http and udp, two paths).
fn tracker_host(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://")?.1;
    let authority = after_scheme.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// A tracker as `/metrics` labels it: its host only (never the scheme,
/// port, path, query or user info, where private trackers put passkeys),
/// with any part of the name that looks like a key hidden, at most 100
/// characters of `[a-z0-9.:_-]`.
pub fn host_label(url: &str) -> String {
    let Some(host) = tracker_host(url).filter(|h| !h.is_empty()) else { return "(invalid)".into() };
    let safe = |c: char| if c.is_ascii_alphanumeric() || ".:-".contains(c) { c } else { '_' };
    let parts: Vec<String> = host
        .split('.')
        .map(|part| {
            // A passkey as a subdomain: long, letters and digits.
            let keylike = part.len() >= 16
                && part.chars().all(|c| c.is_ascii_alphanumeric())
                && part.chars().any(|c| c.is_ascii_digit());
            if keylike {
                "***".to_string()
            } else {
                part.chars().map(safe).collect()
            }
        })
        .collect();
    parts.join(".").chars().take(100).collect()
}

/// BEP 12: try each tier in order, each tracker of a tier in order; the one
/// that answers moves to the front of its tier. A host that may have heard
/// this announce (anything but an unreachable address) is not asked again
/// in the same round under another URL: to the tracker, that would be a
/// second announce within the same second. With `pacing`, a host other
/// than the one named (its slot taken already) is asked once its pace allows.
async fn announce_tiers(
    client: &reqwest::Client,
    udp_connections: &mut udp::Connections,
    tiers: &mut [Vec<String>],
    params: &AnnounceParams,
    pacing: Option<(&hostpace::HostPacer, &str)>,
    attempts: &mut Vec<(String, Result<String, String>)>,
) -> Result<http::AnnounceReply, http::TrackerError> {
    let mut last_err = None;
    let mut heard: Vec<String> = Vec::new();
    for tier in tiers.iter_mut() {
        for i in 0..tier.len() {
            let host = tracker_host(&tier[i]).unwrap_or_default();
            if heard.contains(&host) {
                attempts.push((tier[i].clone(), Err("not asked: its host had this announce already".into())));
                continue;
            }
            if let Some((pacer, _)) = pacing.filter(|(_, paced)| *paced != host) {
                pacer.wait(&host, false).await;
            }
            let reply = if tier[i].starts_with("udp://") {
                udp::announce(udp_connections, &tier[i], params, &udp::RETRY_TIMEOUTS).await
            } else {
                http::announce(client, &tier[i], params).await
            };
            match reply {
                Ok(reply) => {
                    attempts.push((tier[i].clone(), Ok(summary(&reply))));
                    let url = tier.remove(i);
                    tier.insert(0, url);
                    return Ok(reply);
                }
                Err(e) => {
                    attempts.push((tier[i].clone(), Err(e.to_string())));
                    if e.reached() {
                        heard.push(host);
                    }
                    last_err = Some(e);
                }
            }
        }
    }
    Err(last_err.unwrap_or_else(|| http::TrackerError::Http("no trackers".into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{InfoHash, PeerId};
    use http::TrackerError;
    use std::sync::atomic::Ordering::SeqCst;

    struct Zero;
    impl TransferCounters for Zero {
        fn uploaded(&self) -> u64 {
            0
        }
        fn downloaded(&self) -> u64 {
            0
        }
        fn left(&self) -> u64 {
            0
        }
    }

    #[test]
    fn a_peer_list_message_is_small() {
        // Every torrent's peer channel allocates 32 of them up front.
        assert_eq!(std::mem::size_of::<PeerList>(), 8);
    }

    #[test]
    fn an_idle_announce_loop_is_small() {
        // Every seeding torrent keeps one: announces and `stopped` are
        // boxed while they run, so they add nothing to its idle size.
        let cfg = TrackerConfig {
            info_hash: InfoHash([1; 20]),
            name: "t".into(),
            peer_id: PeerId::generate(),
            port: 6881,
            tiers: vec![vec!["http://127.0.0.1:1/announce".into()]],
            numwant: 50,
            book: Arc::new(AnnounceBook::default()),
        };
        let (tx, _rx) = flume::bounded(1);
        let (_done, done_rx) = watch::channel(false);
        let fut = run(
            cfg,
            reqwest::Client::new(),
            Arc::new(Zero),
            tx,
            Completion::Pending(done_rx),
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1024, "{size}");
    }

    #[test]
    fn logged_tracker_urls_keep_no_passkey() {
        assert_eq!(redacted("https://t.example/announce.php?passkey=0123abcd"), "https://t.example/announce.php?***");
        assert_eq!(
            redacted("https://user:pw@t.example:8443/0a1b2c3d4e5f6a7b8c9d/announce"),
            "https://t.example:8443/***/announce"
        );
        assert_eq!(
            redacted("udp://tracker.opentrackr.org:1337/announce"),
            "udp://tracker.opentrackr.org:1337/announce"
        );
        assert_eq!(redacted("http://127.0.0.1:6969/announce"), "http://127.0.0.1:6969/announce");
        assert_eq!(redacted("nonsense"), "(not a URL)");
    }

    #[test]
    fn the_metrics_host_label_never_holds_a_passkey_or_path() {
        let key = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6";
        let cases = [
            (format!("https://user:{key}@Tracker.Example.org:443/{key}/announce?passkey={key}"), "tracker.example.org"),
            (format!("http://tracker.example.org/announce.php?passkey={key}&uid=1"), "tracker.example.org"),
            (format!("udp://{key}.tracker.example.org:6969/announce"), "***.tracker.example.org"),
            (format!("http://[2001:db8::1]:8080/{key}/announce"), "2001:db8::1"),
            ("http://opentracker-example.net./announce".to_string(), "opentracker-example.net"),
            ("http://exa\u{1b}[31mmple\"} x=\"y/announce".to_string(), "exa__31mmple___x__y"),
            ("not a url".to_string(), "(invalid)"),
        ];
        for (url, want) in &cases {
            let label = host_label(url);
            assert_eq!(&label, want, "{url}");
            assert!(!label.contains(key) && !label.contains('/') && !label.contains("announce"), "{url} -> {label}");
        }
        let long = format!("http://{}.example/announce", "a".repeat(300));
        assert_eq!(host_label(&long).len(), 100);
    }

    #[test]
    fn back_off_doubles_and_spreads_by_up_to_a_quarter() {
        for (failures, base) in [(1, 15), (2, 30), (3, 60), (8, 1800), (30, 1800)] {
            let waits: Vec<Duration> = (0..200).map(|_| backoff(failures)).collect();
            let base = Duration::from_secs(base);
            assert!(waits.iter().all(|w| *w >= base && *w <= base + base / 4), "{failures}: {waits:?}");
            let distinct: std::collections::HashSet<_> = waits.iter().collect();
            assert!(distinct.len() > 100, "torrents failing together retry apart: {failures}");
        }
    }

    #[test]
    fn not_registered_failures_are_recognised() {
        for t in ["Torrent not registered with this tracker", "Unregistered torrent", "torrent not found"] {
            assert!(not_registered(&TrackerError::Failure(t.into())), "{t}");
        }
        assert!(!not_registered(&TrackerError::Failure("Passkey is invalid".into())));
        assert!(!not_registered(&TrackerError::Failure("passkey not found".into())), "about the user, not the torrent");
        assert!(!not_registered(&TrackerError::Http("not found".into())), "an HTTP 404 is not the tracker's word");
    }

    /// A tracker on loopback that answers every request with `status`,
    /// counting them.
    fn counting_tracker(status: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}/announce", listener.local_addr().unwrap().port());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = "d8:intervali60e5:peers0:e";
                let _ =
                    write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
        });
        (url, count)
    }

    fn params() -> AnnounceParams {
        AnnounceParams {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([2; 20]),
            port: 6881,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            event: Event::Started,
            key: 1,
            numwant: 50,
            tracker_id: None,
            corrupt: 0,
        }
    }

    #[tokio::test]
    async fn a_host_that_heard_the_announce_is_not_asked_again_in_the_round() {
        let (failing, failing_count) = counting_tracker("500 Internal Server Error");
        let (good, good_count) = counting_tracker("200 OK");
        // A port just freed: nothing listens there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let refused = format!("http://127.0.0.1:{closed}/announce");
        let client = reqwest::Client::new();
        let mut udp = udp::Connections::default();

        // The first URL answered (with an error): the host's other URL waits
        // for the next round.
        let mut tiers = vec![vec![failing.clone()], vec![good.clone()]];
        let mut attempts = Vec::new();
        assert!(announce_tiers(&client, &mut udp, &mut tiers, &params(), None, &mut attempts).await.is_err());
        assert_eq!((failing_count.load(SeqCst), good_count.load(SeqCst)), (1, 0), "{attempts:?}");

        // A refused connection carried nothing: the next URL is asked.
        let mut tiers = vec![vec![refused, good]];
        let mut attempts = Vec::new();
        assert!(
            announce_tiers(&client, &mut udp, &mut tiers, &params(), None, &mut attempts).await.is_ok(),
            "{attempts:?}"
        );
        assert_eq!(good_count.load(SeqCst), 1);
    }

    #[test]
    fn each_url_is_used_once_and_hosts_are_compared_by_name() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let listed = vec![
            t(&["http://a.example/announce", "wss://b.example/announce"]),
            t(&["udp://a.example:6969", "http://a.example/announce"]),
            t(&["magnet:?xt=x"]),
        ];
        assert_eq!(usable_tiers(&listed), vec![t(&["http://a.example/announce"]), t(&["udp://a.example:6969"])]);
        for (url, host) in [
            ("http://Tracker.Example.:80/a/announce?passkey=x", "tracker.example"),
            ("udp://tracker.example:6969/announce", "tracker.example"),
            ("https://user:pw@tracker.example/announce", "tracker.example"),
            ("http://[2001:db8::1]:6969/announce", "2001:db8::1"),
            ("http://10.0.0.1?x", "10.0.0.1"),
        ] {
            assert_eq!(tracker_host(url).as_deref(), Some(host), "{url}");
        }
    }
}
