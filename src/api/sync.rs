//! `sync/maindata` (what web UIs poll every second or two) with real `rid`
//! deltas, `sync/torrentPeers` and `transfer/info`.
//!
//! Each answer carries a fresh `rid`; the state it showed is remembered as
//! a [`Digest`] (one 64-bit hash per torrent field, not the values) under
//! that rid. A client sending it back gets only what changed since: new
//! torrents whole, changed fields of changed torrents, `torrents_removed`,
//! changed categories and `categories_removed`, tags added and removed,
//! trackers whose torrents changed and `trackers_removed`,
//! changed `server_state` fields; empty parts are left out, as qBittorrent
//! does. A rid that is unknown, already used or forgotten gets a
//! `full_update`. A digest is taken when used, so each client's chain holds
//! one; at most [`MAX_SNAPSHOTS`] digests and [`MAX_ROWS`] torrent rows
//! are kept over all clients, the oldest going first.

use super::torrents::{categories_json, infos_of};
use super::{Api, Params};
use crate::torrent::TorrentStatus;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Digests remembered at most (about one per polling client).
pub const MAX_SNAPSHOTS: usize = 32;
/// Torrent rows remembered at most over all digests (a row is its hash
/// and 8 bytes per field, about 600 bytes: 100,000 rows are about 60 MB);
/// the newest digest is kept whatever its size.
pub const MAX_ROWS: usize = 100_000;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/sync/maindata", get(maindata).post(maindata))
        .route("/sync/torrentPeers", get(torrent_peers).post(torrent_peers))
}

/// What `sync/maindata` shows now, whole.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// By lowercase hash.
    pub torrents: Vec<(String, Map<String, Value>)>,
    /// By category name.
    pub categories: Map<String, Value>,
    pub tags: Vec<String>,
    /// Each tracker URL with the hashes of the torrents announcing to it.
    pub trackers: Map<String, Value>,
    pub server_state: Map<String, Value>,
}

/// What a client was shown, compactly: a hash of each torrent field (its
/// name and value), in the fields' order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Digest {
    torrents: HashMap<String, Vec<u64>>,
    categories: Map<String, Value>,
    tags: BTreeSet<String>,
    /// A hash of each tracker's list of torrents.
    trackers: HashMap<String, u64>,
    server_state: Map<String, Value>,
}

/// A field's hash: its name, and its value written straight from its
/// serialization.
fn field_hash(key: &str, v: &Value) -> u64 {
    struct Sink(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.write(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Sink(Default::default());
    sink.0.write(key.as_bytes());
    sink.0.write_u8(0);
    let _ = serde_json::to_writer(&mut sink, v);
    sink.0.finish()
}

impl Frame {
    pub fn digest(&self) -> Digest {
        let row = |fields: &Map<String, Value>| fields.iter().map(|(k, v)| field_hash(k, v)).collect();
        Digest {
            torrents: self.torrents.iter().map(|(h, fields)| (h.clone(), row(fields))).collect(),
            categories: self.categories.clone(),
            tags: self.tags.iter().cloned().collect(),
            trackers: self.trackers.iter().map(|(url, v)| (url.clone(), field_hash("", v))).collect(),
            server_state: self.server_state.clone(),
        }
    }

    /// The whole state, as the first answer and the answer to a rid not known.
    pub fn full(&self) -> Map<String, Value> {
        let torrents: Map<String, Value> =
            self.torrents.iter().map(|(h, f)| (h.clone(), Value::Object(f.clone()))).collect();
        let mut out = Map::new();
        out.insert("full_update".into(), true.into());
        out.insert("torrents".into(), Value::Object(torrents));
        out.insert("categories".into(), Value::Object(self.categories.clone()));
        out.insert("tags".into(), json!(self.tags));
        out.insert("trackers".into(), Value::Object(self.trackers.clone()));
        out.insert("server_state".into(), Value::Object(self.server_state.clone()));
        out
    }

    /// What changed since `before` was shown.
    pub fn delta(&self, before: &Digest) -> Map<String, Value> {
        self.delta_to(before, &self.digest())
    }

    /// The same, given this frame's own digest (`now`), computed once.
    fn delta_to(&self, before: &Digest, now: &Digest) -> Map<String, Value> {
        let mut torrents = Map::new();
        for (hash, fields) in &self.torrents {
            let changed: Map<String, Value> = match (before.torrents.get(hash), now.torrents.get(hash)) {
                (Some(old), Some(new)) => changed_fields(fields, old, new),
                _ => fields.clone(),
            };
            if !changed.is_empty() {
                torrents.insert(hash.clone(), Value::Object(changed));
            }
        }
        let now: std::collections::HashSet<&str> = self.torrents.iter().map(|(h, _)| h.as_str()).collect();
        let mut removed: Vec<&String> = before.torrents.keys().filter(|h| !now.contains(h.as_str())).collect();
        removed.sort();
        let categories: Map<String, Value> = self
            .categories
            .iter()
            .filter(|(k, v)| before.categories.get(k.as_str()) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let categories_removed: Vec<&String> =
            before.categories.keys().filter(|k| !self.categories.contains_key(k.as_str())).collect();
        let tags_now: BTreeSet<&String> = self.tags.iter().collect();
        let tags: Vec<&&String> = tags_now.iter().filter(|t| !before.tags.contains(t.as_str())).collect();
        let tags_removed: Vec<&String> = before.tags.iter().filter(|t| !tags_now.contains(t)).collect();
        let trackers: Map<String, Value> = self
            .trackers
            .iter()
            .filter(|(url, v)| before.trackers.get(url.as_str()) != Some(&field_hash("", v)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let trackers_removed: Vec<&String> =
            before.trackers.keys().filter(|k| !self.trackers.contains_key(k.as_str())).collect();
        let server_state: Map<String, Value> = self
            .server_state
            .iter()
            .filter(|(k, v)| before.server_state.get(k.as_str()) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let parts = [
            ("torrents", Value::Object(torrents)),
            ("torrents_removed", json!(removed)),
            ("categories", Value::Object(categories)),
            ("categories_removed", json!(categories_removed)),
            ("tags", json!(tags)),
            ("tags_removed", json!(tags_removed)),
            ("trackers", Value::Object(trackers)),
            ("trackers_removed", json!(trackers_removed)),
            ("server_state", Value::Object(server_state)),
        ];
        let mut out = Map::new();
        out.insert("full_update".into(), false.into());
        for (key, value) in parts {
            let empty = match &value {
                Value::Object(m) => m.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => false,
            };
            if !empty {
                out.insert(key.into(), value);
            }
        }
        out
    }
}

/// The fields of a torrent whose hash differs between two digests, side
/// by side (a torrent's fields always come in the same sorted order; were
/// they to differ, more fields would be sent, never fewer).
fn changed_fields(fields: &Map<String, Value>, old: &[u64], new: &[u64]) -> Map<String, Value> {
    fields
        .iter()
        .zip(new)
        .enumerate()
        .filter(|(i, (_, hash))| old.get(*i) != Some(*hash))
        .map(|(_, ((k, v), _))| (k.clone(), v.clone()))
        .collect()
}

/// The digests clients may still send a rid of, oldest first.
#[derive(Debug, Default)]
pub struct History {
    kept: VecDeque<(u64, Arc<Digest>)>,
    rows: usize,
}

impl History {
    /// The digest shown under `rid`, taken out: a rid answers once.
    pub fn take(&mut self, rid: u64) -> Option<Arc<Digest>> {
        let at = self.kept.iter().position(|(r, _)| *r == rid)?;
        let (_, d) = self.kept.remove(at)?;
        self.rows -= d.torrents.len();
        Some(d)
    }

    /// Remembers what `rid` showed, forgetting the oldest past the bounds.
    pub fn keep(&mut self, rid: u64, digest: Arc<Digest>) {
        self.rows += digest.torrents.len();
        self.kept.push_back((rid, digest));
        while self.kept.len() > 1 && (self.kept.len() > MAX_SNAPSHOTS || self.rows > MAX_ROWS) {
            if let Some((_, d)) = self.kept.pop_front() {
                self.rows -= d.torrents.len();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

/// The answer to `rid`: a delta from what it showed, or a full update.
pub fn answer(history: &mut History, rid: u64, new_rid: u64, frame: &Frame) -> Map<String, Value> {
    let before = (rid != 0).then(|| history.take(rid)).flatten();
    let now = Arc::new(frame.digest());
    let mut out = match before {
        Some(d) => frame.delta_to(&d, &now),
        None => frame.full(),
    };
    history.keep(new_rid, now);
    out.insert("rid".into(), new_rid.into());
    out
}

/// Totals over all torrents, in `transfer/info`'s shape.
pub fn server_state(all: &[TorrentStatus], config: &crate::config::Config, machine: Machine) -> Value {
    let sum = |f: fn(&TorrentStatus) -> u64| all.iter().map(f).sum::<u64>();
    json!({
        "dl_info_speed": sum(|t| t.download_rate),
        "dl_info_data": sum(|t| t.downloaded),
        "up_info_speed": sum(|t| t.upload_rate),
        "up_info_data": sum(|t| t.uploaded),
        "dl_rate_limit": config.limits.download_rate.0,
        "up_rate_limit": config.limits.upload_rate.0,
        "dht_nodes": machine.dht_nodes,
        "connection_status": "connected",
        "use_alt_speed_limits": false,
        "refresh_interval": 1500,
        "free_space_on_disk": machine.free_space_on_disk,
        "queueing": config.limits.max_active_downloads > 0,
        // What qBittorrent adds in sync/maindata: all-time totals are the
        // torrents' recorded ones; libtorrent's cache figures have no
        // counterpart (dropseed keeps no read cache).
        "alltime_dl": sum(|t| t.downloaded),
        "alltime_ul": sum(|t| t.uploaded),
        "global_ratio": global_ratio(sum(|t| t.uploaded), sum(|t| t.downloaded)),
        "total_wasted_session": sum(|t| t.wasted),
        "total_peer_connections": all.iter().map(|t| t.peers).sum::<usize>(),
        "queued_io_jobs": machine.disk_queue,
        "average_time_queue": 0,
        "total_buffers_size": 0,
        "total_queued_size": 0,
        "read_cache_hits": "0",
        "read_cache_overload": "0",
        "write_cache_overload": "0",
    })
}

/// Uploaded over downloaded with two decimals, `-` before any download (a
/// string, as qBittorrent sends it).
fn global_ratio(up: u64, down: u64) -> String {
    if down == 0 {
        return "-".into();
    }
    format!("{:.2}", up as f64 / down as f64)
}

/// What `server_state` says beyond the torrents: the disk and the DHT.
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    pub free_space_on_disk: u64,
    pub dht_nodes: usize,
    /// Jobs waiting for a disk thread.
    pub disk_queue: usize,
}

/// Free space where downloads go (as the control socket's `status`) and
/// the DHT's nodes.
pub async fn machine(api: &Api) -> Machine {
    let dir = api.session.env.download_dir().to_path_buf();
    let free = tokio::task::spawn_blocking(move || crate::control::disk_free(&dir)).await.ok().flatten();
    Machine {
        free_space_on_disk: free.unwrap_or(0),
        dht_nodes: api.session.env.dht().map_or(0, |d| d.node_count()),
        disk_queue: api.session.env.disk().queued(),
    }
}

pub async fn transfer_info(State(api): State<Arc<Api>>) -> Json<Value> {
    Json(server_state(&api.session.statuses(), &api.config(), machine(&api).await))
}

/// The state now, from one snapshot of the torrents.
async fn frame(api: &Api) -> Frame {
    let all = api.session.statuses();
    let torrents = infos_of(api, &all)
        .into_iter()
        .filter_map(|t| match serde_json::to_value(&t) {
            Ok(Value::Object(fields)) => Some((t.hash, fields)),
            _ => None,
        })
        .collect();
    let categories = match categories_json(api).await {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let server_state = match server_state(&all, &api.config(), machine(api).await) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Frame { torrents, categories, tags: api.session.known_tags().await, trackers: trackers_of(&all), server_state }
}

/// Each tracker URL with the hashes of the torrents announcing to it.
pub fn trackers_of(all: &[TorrentStatus]) -> Map<String, Value> {
    let mut by_url: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for t in all {
        for v in &t.trackers {
            by_url.entry(v.url.as_str()).or_default().push(t.info_hash.to_ascii_lowercase());
        }
    }
    by_url.into_iter().map(|(url, hashes)| (url.to_string(), json!(hashes))).collect()
}

async fn maindata(State(api): State<Arc<Api>>, p: Params) -> Json<Value> {
    let frame = frame(&api).await;
    let rid = p.get("rid").trim().parse().unwrap_or(0);
    let new_rid = api.rid.fetch_add(1, Ordering::Relaxed) + 1;
    // The diff runs off the async workers: 10,000 torrents are a few ms.
    let api2 = api.clone();
    let out = tokio::task::spawn_blocking(move || answer(&mut api2.sync_history(), rid, new_rid, &frame))
        .await
        .unwrap_or_default();
    Json(Value::Object(out))
}

async fn torrent_peers(State(api): State<Arc<Api>>, p: Params) -> axum::response::Response {
    use axum::response::IntoResponse;
    let detail = crate::types::InfoHash::parse(p.get("hash")).and_then(|h| api.session.detail_of(&h));
    let Some((_, detail)) = detail else {
        return (axum::http::StatusCode::NOT_FOUND, "Torrent hash was not found").into_response();
    };
    let peers: Map<String, Value> = detail.peers.iter().map(|peer| (peer.addr.clone(), peer_json(peer))).collect();
    let rid = api.rid.fetch_add(1, Ordering::Relaxed) + 1;
    Json(json!({"rid": rid, "full_update": true, "show_flags": true, "peers": peers})).into_response()
}

/// One connected peer in qBittorrent's shape (at most
/// `detail::MAX_PEERS` of them). Rates are averages since the connection
/// began; a peer's progress is known here only for seeds (1).
fn peer_json(peer: &crate::torrent::detail::PeerView) -> Value {
    let (ip, port) = match peer.addr.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => (peer.addr.clone(), 0),
    };
    let seed = peer.flags.contains('S');
    json!({
        "client": peer.client, "peer_id_client": peer.client, "connection": "BT", "country": "", "country_code": "",
        "dl_speed": peer.down_rate, "up_speed": peer.up_rate, "downloaded": peer.downloaded,
        "uploaded": peer.uploaded, "files": "", "flags": qbt_flags(&peer.flags), "flags_desc": "",
        "ip": ip, "port": port, "progress": if seed { 1.0 } else { 0.0 }, "relevance": if seed { 1.0 } else { 0.0 },
    })
}

/// Our peer flags (`S` seed, `i` it is interested, `I` we are, `u` we
/// unchoked it, `s` snubbed) as qBittorrent's letters, which web UIs filter
/// on: `D`/`d` we download from it (or want to, choked: here, snubbed),
/// `U`/`u` we upload to it (or it wants us to, choked), `S` snubbed.
fn qbt_flags(ours: &str) -> String {
    let has = |c: char| ours.contains(c);
    let mut out = Vec::new();
    if has('I') {
        out.push(if has('s') { "d" } else { "D" });
    }
    if has('i') {
        out.push(if has('u') { "U" } else { "u" });
    }
    if has('s') {
        out.push("S");
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_flags_use_qbittorrent_letters() {
        assert_eq!(qbt_flags("SIu"), "D");
        assert_eq!(qbt_flags("iIu"), "D U");
        assert_eq!(qbt_flags("Is"), "d S");
        assert_eq!(qbt_flags("i"), "u");
        assert_eq!(qbt_flags(""), "");
    }

    fn torrent(hash: &str, state: &str, up: u64) -> (String, Map<String, Value>) {
        let v = json!({"hash": hash, "name": format!("n-{hash}"), "state": state, "upspeed": up, "progress": 1.0});
        (hash.to_string(), v.as_object().unwrap().clone())
    }

    fn frame(torrents: Vec<(String, Map<String, Value>)>, cats: &[&str], tags: &[&str], free: u64) -> Frame {
        Frame {
            torrents,
            categories: cats
                .iter()
                .map(|c| (c.to_string(), json!({"name": c, "savePath": format!("/d/{c}")})))
                .collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            trackers: json!({"http://t/a": ["aa"]}).as_object().unwrap().clone(),
            server_state: json!({"free_space_on_disk": free, "dht_nodes": 0}).as_object().unwrap().clone(),
        }
    }

    #[test]
    fn a_delta_carries_only_what_changed() {
        let before =
            frame(vec![torrent("aa", "stalledUP", 0), torrent("bb", "stalledUP", 0)], &["tv", "old"], &["x"], 5);
        let now = frame(
            vec![torrent("aa", "uploading", 7), torrent("bb", "stalledUP", 0), torrent("cc", "metaDL", 0)],
            &["tv", "movies"],
            &["y"],
            5,
        );
        let d = now.delta(&before.digest());
        assert_eq!(d["full_update"], false);
        assert_eq!(d["torrents"]["aa"], json!({"state": "uploading", "upspeed": 7}), "changed fields only");
        assert!(d["torrents"].get("bb").is_none(), "an unchanged torrent is left out");
        assert_eq!(d["torrents"]["cc"]["name"], "n-cc", "a new torrent comes whole");
        assert!(d.get("torrents_removed").is_none());
        assert_eq!(d["categories"], json!({"movies": {"name": "movies", "savePath": "/d/movies"}}));
        assert_eq!(d["categories_removed"], json!(["old"]));
        assert_eq!((d["tags"].clone(), d["tags_removed"].clone()), (json!(["y"]), json!(["x"])));
        assert!(d.get("server_state").is_none(), "nothing changed there");
        assert!(d.get("trackers").is_none() && d.get("trackers_removed").is_none());

        let mut later = frame(vec![torrent("cc", "metaDL", 0)], &["tv", "movies"], &["y"], 4);
        later.trackers = json!({"http://t/b": ["cc"]}).as_object().unwrap().clone();
        let d = later.delta(&now.digest());
        assert_eq!(d["torrents_removed"], json!(["aa", "bb"]));
        assert!(d.get("torrents").is_none() && d.get("categories").is_none() && d.get("tags").is_none());
        assert_eq!(d["server_state"], json!({"free_space_on_disk": 4}));
        assert_eq!(
            (d["trackers"].clone(), d["trackers_removed"].clone()),
            (json!({"http://t/b": ["cc"]}), json!(["http://t/a"]))
        );
    }

    #[test]
    fn unknown_used_or_forgotten_rids_get_a_full_update() {
        let mut h = History::default();
        let f = frame(vec![torrent("aa", "stalledUP", 0)], &["tv"], &[], 1);
        let first = answer(&mut h, 0, 1, &f);
        assert_eq!((first["rid"].clone(), first["full_update"].clone()), (json!(1), json!(true)));
        assert_eq!(first["torrents"]["aa"]["state"], "stalledUP");
        let second = answer(&mut h, 1, 2, &f);
        assert_eq!(second, json!({"rid": 2, "full_update": false}).as_object().unwrap().clone(), "nothing changed");
        assert_eq!(answer(&mut h, 1, 3, &f)["full_update"], true, "rid 1 was used already");
        assert_eq!(answer(&mut h, 999, 4, &f)["full_update"], true, "a rid never given");
        assert_eq!(answer(&mut h, 2, 5, &f)["full_update"], false, "rid 2 still answers");
    }

    #[test]
    fn memory_stays_bounded_whatever_the_clients() {
        let mut h = History::default();
        let f = frame(vec![torrent("aa", "stalledUP", 0)], &[], &[], 1);
        for rid in 1..=1000 {
            answer(&mut h, 0, rid, &f);
        }
        assert_eq!(h.len(), MAX_SNAPSHOTS);
        assert_eq!(answer(&mut h, 1, 1001, &f)["full_update"], true, "the oldest was forgotten");
        assert_eq!(answer(&mut h, 1000, 1002, &f)["full_update"], false, "a recent one answers");

        let big: Vec<_> = (0..MAX_ROWS / 2 + 1).map(|i| torrent(&format!("{i:040x}"), "stalledUP", 0)).collect();
        let big = frame(big, &[], &[], 1);
        let mut h = History::default();
        for rid in 1..=5 {
            answer(&mut h, 0, rid, &big);
        }
        assert_eq!(h.len(), 1, "rows over the bound: the newest alone stays");
        assert_eq!(answer(&mut h, 5, 6, &big)["full_update"], false);
    }
}
