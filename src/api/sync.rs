//! `sync/maindata` (what web UIs poll every second or two) and
//! `transfer/info`. In this step every answer is a full update
//! (`full_update: true`, with a fresh `rid`), which is well-formed for any
//! `rid` a client sends back; real deltas come later.

use super::torrents::{categories_json, infos_of};
use super::{Api, Params};
use crate::torrent::TorrentStatus;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/sync/maindata", get(maindata).post(maindata))
        .route("/sync/torrentPeers", get(torrent_peers).post(torrent_peers))
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
    })
}

/// What `server_state` says beyond the torrents: the disk and the DHT.
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    pub free_space_on_disk: u64,
    pub dht_nodes: usize,
}

/// Free space where downloads go (as the control socket's `status`) and
/// the DHT's nodes.
pub async fn machine(api: &Api) -> Machine {
    let dir = api.session.env.download_dir.clone();
    let free = tokio::task::spawn_blocking(move || crate::control::disk_free(&dir)).await.ok().flatten();
    Machine {
        free_space_on_disk: free.unwrap_or(0),
        dht_nodes: api.session.env.dht.as_ref().map_or(0, |d| d.node_count()),
    }
}

pub async fn transfer_info(State(api): State<Arc<Api>>) -> Json<Value> {
    Json(server_state(&api.session.statuses(), &api.config(), machine(&api).await))
}

async fn maindata(State(api): State<Arc<Api>>, _p: Params) -> Json<Value> {
    // One snapshot for the torrents and the totals.
    let all = api.session.statuses();
    let torrents: serde_json::Map<String, Value> = infos_of(&api, &all)
        .into_iter()
        .map(|t| (t.hash.clone(), serde_json::to_value(t).unwrap_or(Value::Null)))
        .collect();
    let rid = api.rid.fetch_add(1, Ordering::Relaxed) + 1;
    Json(json!({
        "rid": rid,
        "full_update": true,
        "torrents": torrents,
        "torrents_removed": [],
        "categories": categories_json(&api).await,
        "categories_removed": [],
        "tags": [],
        "tags_removed": [],
        "trackers": {},
        "server_state": server_state(&all, &api.config(), machine(&api).await),
    }))
}

async fn torrent_peers(State(api): State<Arc<Api>>, p: Params) -> axum::response::Response {
    use axum::response::IntoResponse;
    let known = crate::types::InfoHash::parse(p.get("hash")).and_then(|h| api.session.status_of(&h));
    if known.is_none() {
        return (axum::http::StatusCode::NOT_FOUND, "Torrent hash was not found").into_response();
    }
    Json(json!({"rid": api.rid.fetch_add(1, Ordering::Relaxed) + 1, "full_update": true, "peers": {}})).into_response()
}
