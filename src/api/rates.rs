//! A torrent's own rate limits: `torrents/setDownloadLimit`,
//! `setUploadLimit`, `downloadLimit`, `uploadLimit` (bytes/s; 0 or less
//! for none). They hold under the global `[limits]` rates, are kept in
//! the resume record, and show as `dl_limit`/`up_limit` in
//! `torrents/info`. Why a module: the four calls share their parsing and
//! their answers; the limiting itself is the torrent's (`TorrentShared`).

use super::torrents::{status, targets};
use super::{Api, Params};
use crate::resume::RateLimits;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Map, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/torrents/setDownloadLimit", post(set_download))
        .route("/torrents/setUploadLimit", post(set_upload))
        .route("/torrents/downloadLimit", post(download).get(download))
        .route("/torrents/uploadLimit", post(upload).get(upload))
}

#[derive(Clone, Copy)]
enum Way {
    Down,
    Up,
}

async fn set_download(State(api): State<Arc<Api>>, p: Params) -> Response {
    set(&api, &p, Way::Down).await
}

async fn set_upload(State(api): State<Arc<Api>>, p: Params) -> Response {
    set(&api, &p, Way::Up).await
}

async fn download(State(api): State<Arc<Api>>, p: Params) -> Json<Value> {
    shown(&api, &p, Way::Down)
}

async fn upload(State(api): State<Arc<Api>>, p: Params) -> Json<Value> {
    shown(&api, &p, Way::Up)
}

/// Sets one way's limit of every torrent named; unknown hashes (and
/// magnets, which move no payload yet) are skipped, as qBittorrent does.
async fn set(api: &Api, p: &Params, way: Way) -> Response {
    let Ok(limit) = p.get("limit").trim().parse::<i64>() else {
        return status(StatusCode::BAD_REQUEST, "limit: not a whole number of bytes per second");
    };
    let limit = limit.max(0) as u64;
    for hash in targets(api, p) {
        let Some(t) = api.session.torrent(&hash) else { continue };
        let now = t.with_record(|r| r.rate_limits);
        let new = match way {
            Way::Down => RateLimits { download: limit, ..now },
            Way::Up => RateLimits { upload: limit, ..now },
        };
        if new != now {
            t.set_rate_limits(new);
            t.save_resume(false).await;
        }
    }
    "".into_response()
}

/// `{hash: limit}` for every torrent named (0 = none).
fn shown(api: &Api, p: &Params, way: Way) -> Json<Value> {
    let mut out = Map::new();
    for hash in targets(api, p) {
        if let Some(t) = api.session.torrent(&hash) {
            let l = t.with_record(|r| r.rate_limits);
            out.insert(hash.hex(), Value::from(if let Way::Down = way { l.download } else { l.upload }));
        }
    }
    Json(Value::Object(out))
}
