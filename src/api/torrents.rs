//! `torrents/*`: listing, adding, pausing, removing, and the categories
//! (the watch folder's: `createCategory` makes `watch_dir/NAME/`, so a
//! torrent added through the API in `tv` lands exactly where one dropped in
//! `watch/tv/` does). Every change goes through the session's typed
//! methods, as the watch folder and the control socket do; errors are
//! mapped by their kind, never by their text.
//!
//! http(s) `.torrent` URLs in `torrents/add` are fetched (`fetch`). A
//! `savepath` other than the category's own folder names data already
//! there (cross-seeding: what the `cross-seed` tool sends): the torrent
//! seeds it in place, read-only, once every piece is verified, showing
//! `checkingUP` meanwhile; `skip_checking` changes nothing (dropseed always
//! verifies shared data). The folder must be inside dropseed's folders or
//! `[api] allowed_paths` (`location`). Tags and share limits are in `tags`.
//! Queue order (`topPrio` and the like) moves torrents in the download
//! queue (`torrent::queue`); `priority` shows the place.

use super::content;
use super::fetch;
use super::model::{self, Filter, Query};
use super::{hash_list, Api, Params, Refusal, ADD_LIMIT, MAX_FIELDS};
use crate::magnet::Magnet;
use crate::metainfo::{Metainfo, MAX_TORRENT_FILE};
use crate::session::{AddOutcome, ErrorKind, LabelChange, SessionError};
use crate::torrent::queue::Move;
use crate::torrent::task::Cmd;
use crate::types::InfoHash;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

/// Files and magnets one `torrents/add` may carry.
const MAX_ADDS: usize = 100;
/// Category folders listed, as many as the watch folder takes.
const MAX_CATEGORIES: usize = 1000;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/torrents/info", get(info).post(info))
        .route("/torrents/properties", get(properties).post(properties))
        .route("/torrents/files", get(files).post(files))
        .route("/torrents/pieceStates", get(piece_states).post(piece_states))
        .route("/torrents/pieceHashes", get(piece_hashes).post(piece_hashes))
        .route("/torrents/trackers", get(trackers).post(trackers))
        .route("/torrents/webseeds", get(webseeds).post(webseeds))
        .route("/torrents/categories", get(categories).post(categories))
        .route("/torrents/createCategory", post(create_category))
        .route("/torrents/setCategory", post(set_category))
        .route("/torrents/add", post(add).layer(DefaultBodyLimit::max(ADD_LIMIT)))
        .route("/torrents/delete", post(delete))
        .route("/torrents/stop", post(stop))
        .route("/torrents/pause", post(stop))
        .route("/torrents/start", post(start))
        .route("/torrents/resume", post(start))
        .route("/torrents/recheck", post(recheck))
        .route("/torrents/reannounce", post(reannounce))
        .route("/torrents/topPrio", post(top_prio))
        .route("/torrents/bottomPrio", post(bottom_prio))
        .route("/torrents/increasePrio", post(increase_prio))
        .route("/torrents/decreasePrio", post(decrease_prio))
        .route("/torrents/setSuperSeeding", post(set_super_seeding))
}

/// Moves torrents in the download queue. 409 with queueing off
/// (`max_active_downloads = 0`), as qBittorrent answers then; complete
/// torrents and unknown hashes are skipped.
async fn queue_move(api: &Api, p: &Params, how: Move) -> Response {
    let queue = api.session.env.queue();
    if !queue.enabled() {
        return status(
            StatusCode::CONFLICT,
            "Torrent queueing must be enabled: [limits] max_active_downloads is 0 (no download queue)",
        );
    }
    queue.reorder(&targets(api, p), how);
    "".into_response()
}

async fn top_prio(State(api): State<Arc<Api>>, p: Params) -> Response {
    queue_move(&api, &p, Move::Top).await
}

async fn bottom_prio(State(api): State<Arc<Api>>, p: Params) -> Response {
    queue_move(&api, &p, Move::Bottom).await
}

async fn increase_prio(State(api): State<Arc<Api>>, p: Params) -> Response {
    queue_move(&api, &p, Move::Up).await
}

async fn decrease_prio(State(api): State<Arc<Api>>, p: Params) -> Response {
    queue_move(&api, &p, Move::Down).await
}

/// Flood turns super-seeding off after every add; dropseed has none, so
/// "off" is already true and "on" is refused.
async fn set_super_seeding(p: Params) -> Response {
    if p.flag("value") {
        return status(StatusCode::CONFLICT, "dropseed has no super-seeding (initial seeding) mode");
    }
    StatusCode::OK.into_response()
}

pub(super) fn status(code: StatusCode, text: &str) -> Response {
    (code, text.to_string()).into_response()
}

/// Every torrent in the API's shape.
pub fn all_infos(api: &Api) -> Vec<model::TorrentInfo> {
    infos_of(api, &api.session.statuses())
}

/// These torrents in the API's shape.
pub fn infos_of(api: &Api, all: &[crate::torrent::TorrentStatus]) -> Vec<model::TorrentInfo> {
    let config = api.config();
    let now = crate::wallclock::now_unix();
    let mut infos: Vec<model::TorrentInfo> =
        all.iter().map(|t| model::torrent_info(t, &config.complete_dir(&t.category), now)).collect();
    let queue = api.session.env.queue();
    if queue.enabled() {
        let ranks = queue.ranks();
        let rank_of = |i: &model::TorrentInfo| parse_hash(&i.hash).and_then(|h| ranks.get(&h).copied());
        let mut queued: Vec<(usize, usize)> = infos
            .iter()
            .enumerate()
            .filter(|(_, i)| i.progress < 1.0)
            .filter_map(|(at, i)| rank_of(i).map(|r| (r, at)))
            .collect();
        queued.sort_unstable();
        for (position, (_, at)) in queued.into_iter().enumerate() {
            infos[at].priority = position as i64 + 1;
        }
    }
    infos
}

async fn info(State(api): State<Arc<Api>>, p: Params) -> Json<Vec<model::TorrentInfo>> {
    let q = Query {
        filter: Filter::parse(p.get("filter")),
        category: p.opt("category").map(str::to_string),
        hashes: p.opt("hashes").and_then(hash_list),
        sort: p.opt("sort").filter(|s| !s.is_empty()).map(str::to_string),
        reverse: p.flag("reverse"),
        limit: p.get("limit").parse().ok(),
        offset: p.get("offset").parse().ok(),
    };
    let mut all = all_infos(&api);
    if let Some(tag) = p.opt("tag") {
        all.retain(|t| super::tags::has_tag(&t.tags, tag));
    }
    Json(model::select(all, &q))
}

pub(super) fn parse_hash(s: &str) -> Option<InfoHash> {
    (s.trim().len() == 40).then(|| InfoHash::parse(s.trim())).flatten()
}

/// The status of `hash=...`, or qBittorrent's 404.
pub(super) fn one(api: &Api, p: &Params) -> Result<crate::torrent::TorrentStatus, Refusal> {
    parse_hash(p.get("hash"))
        .and_then(|h| api.session.status_of(&h))
        .ok_or_else(|| Refusal(StatusCode::NOT_FOUND, "Torrent hash was not found".into()))
}

async fn properties(State(api): State<Arc<Api>>, p: Params) -> Response {
    let t = match one(&api, &p) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let shared = parse_hash(p.get("hash")).and_then(|h| api.session.torrent(&h));
    let pieces = shared.as_ref().map(|s| (s.meta().piece_length as i64, s.meta().piece_count() as i64, s.pieces()));
    let (piece_size, pieces_num, pieces_have) =
        pieces.map_or((-1, -1, -1), |(size, n, v)| (size, n, v.have.count() as i64));
    let about = shared.as_ref().map(|s| s.meta().about.clone()).unwrap_or_default();
    let i = model::torrent_info(&t, &api.config().complete_dir(&t.category), crate::wallclock::now_unix());
    let mut out = json!({
        "hash": i.hash, "infohash_v1": i.infohash_v1, "infohash_v2": "", "name": i.name,
        "save_path": i.save_path, "download_path": "", "comment": about.comment.unwrap_or_default(),
        "creation_date": about.creation_date.unwrap_or(-1), "created_by": about.created_by.unwrap_or_default(),
        "addition_date": i.added_on, "completion_date": i.completion_on, "last_seen": i.seen_complete,
        "total_size": i.size, "total_downloaded": i.downloaded, "total_downloaded_session": i.downloaded_session,
        "total_uploaded": i.uploaded, "total_uploaded_session": i.uploaded_session, "total_wasted": t.wasted,
    });
    let more = json!({
        "dl_speed": i.dlspeed, "up_speed": i.upspeed, "dl_speed_avg": 0, "up_speed_avg": 0,
        "dl_limit": -1, "up_limit": -1, "eta": i.eta, "time_elapsed": i.time_active, "seeding_time": i.seeding_time,
        "nb_connections": t.peers, "nb_connections_limit": -1, "peers": i.num_leechs, "peers_total": i.num_leechs,
        "seeds": i.num_seeds, "seeds_total": i.num_seeds, "share_ratio": i.ratio, "reannounce": 0,
        "pieces_have": pieces_have, "pieces_num": pieces_num, "piece_size": piece_size, "popularity": 0.0,
        "private": i.private, "is_private": i.private, "isPrivate": i.private, "has_metadata": i.has_metadata,
        "progress": i.progress, "last_activity": i.last_activity,
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut out, more) {
        a.extend(b);
    }
    Json(out).into_response()
}

/// The torrent of `hash=...` (None for a magnet without its metadata yet),
/// or qBittorrent's 404 for a hash it does not know.
fn one_torrent(api: &Api, p: &Params) -> Result<Option<Arc<crate::torrent::TorrentShared>>, Refusal> {
    let not_found = || Refusal(StatusCode::NOT_FOUND, "Torrent hash was not found".into());
    let hash = parse_hash(p.get("hash")).ok_or_else(not_found)?;
    match api.session.torrent(&hash) {
        Some(t) => Ok(Some(t)),
        None => api.session.status_of(&hash).map(|_| None).ok_or_else(not_found),
    }
}

/// Every file of the torrent (or those `indexes` names), with its verified
/// progress: what cross-seed matches files by.
async fn files(State(api): State<Arc<Api>>, p: Params) -> Response {
    let shared = match one_torrent(&api, &p) {
        Ok(Some(t)) => t,
        Ok(None) => return Json(Vec::<Value>::new()).into_response(),
        Err(r) => return r.into_response(),
    };
    let indexes = content::parse_indexes(p.get("indexes"));
    Json(content::files(shared.meta(), &shared.pieces(), indexes.as_ref())).into_response()
}

async fn piece_states(State(api): State<Arc<Api>>, p: Params) -> Response {
    match one_torrent(&api, &p) {
        Ok(Some(t)) => Json(content::piece_states(&t.pieces())).into_response(),
        Ok(None) => Json(Vec::<u8>::new()).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn piece_hashes(State(api): State<Arc<Api>>, p: Params) -> Response {
    match one_torrent(&api, &p) {
        Ok(Some(t)) => Json(content::piece_hashes(t.meta())).into_response(),
        Ok(None) => Json(Vec::<String>::new()).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn trackers(State(api): State<Arc<Api>>, p: Params) -> Response {
    let t = match one(&api, &p) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let list: Vec<Value> = t
        .trackers
        .iter()
        .enumerate()
        .map(|(tier, v)| {
            let failed = v.result.as_deref().is_some_and(|r| r.starts_with("error"));
            // qBittorrent: 1 not contacted, 2 working, 4 not working.
            let code = match (&v.result, failed) {
                (None, _) => 1,
                (Some(_), false) => 2,
                (Some(_), true) => 4,
            };
            json!({"url": v.url, "status": code, "tier": tier, "num_peers": 0, "num_seeds": 0,
                   "num_leeches": 0, "num_downloaded": 0, "msg": v.result.clone().unwrap_or_default()})
        })
        .collect();
    Json(list).into_response()
}

async fn webseeds(State(api): State<Arc<Api>>, p: Params) -> Response {
    match one(&api, &p) {
        Ok(_) => Json(Vec::<Value>::new()).into_response(),
        Err(r) => r.into_response(),
    }
}

/// The categories: watch subfolders and `[categories.NAME]` sections.
pub async fn category_names(api: &Api) -> Vec<String> {
    let config = api.config();
    let watch = config.paths.watch_dir.clone();
    let mut names: Vec<String> =
        tokio::task::spawn_blocking(move || list_category_folders(&watch)).await.unwrap_or_default();
    names.extend(config.categories.keys().cloned());
    names.sort();
    names.dedup();
    names
}

fn list_category_folders(watch: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(watch) else { return Vec::new() };
    dir.flatten()
        .take(10_000)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| crate::config::valid_category(n))
        .take(MAX_CATEGORIES)
        .collect()
}

pub async fn categories_json(api: &Api) -> Value {
    let config = api.config();
    let map: serde_json::Map<String, Value> = category_names(api)
        .await
        .into_iter()
        .map(|n| {
            let path = config.complete_dir(&n).display().to_string();
            (n.clone(), json!({"name": n, "savePath": path, "download_path": null}))
        })
        .collect();
    Value::Object(map)
}

async fn categories(State(api): State<Arc<Api>>) -> Json<Value> {
    Json(categories_json(&api).await)
}

async fn create_category(State(api): State<Arc<Api>>, p: Params) -> Response {
    let name = p.get("category").to_string();
    if !crate::config::valid_category(&name) {
        return status(StatusCode::BAD_REQUEST, "Invalid category name");
    }
    let config = api.config();
    let (c, own, save) = (config.clone(), config.complete_dir(&name), p.get("savePath").to_string());
    let checked = tokio::task::spawn_blocking(move || check_save_path(&c, &own, &save)).await;
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(AddError::Refused(why))) => return status(StatusCode::BAD_REQUEST, &why),
        _ => return status(StatusCode::BAD_REQUEST, "savePath cannot be checked"),
    }
    let folder = config.paths.watch_dir.join(&name);
    // A name already there counts only as a real folder: a link to one is
    // no category for the watch folder.
    let made = tokio::task::spawn_blocking(move || match std::fs::create_dir(&folder) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match std::fs::symlink_metadata(&folder) {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(e),
        },
        r => r,
    })
    .await;
    match made {
        Ok(Ok(())) => "".into_response(),
        _ => status(StatusCode::CONFLICT, "Unable to create category"),
    }
}

/// Moves torrents to another category ("" for none), which must exist:
/// the label only, as qBittorrent's manual mode does; the data stays where
/// it is, and a torrent still downloading lands in the new category's
/// folder. Unknown hashes are skipped, as qBittorrent does.
async fn set_category(State(api): State<Arc<Api>>, p: Params) -> Response {
    let want = p.get("category").to_string();
    if !want.is_empty() {
        let known = categories_json(&api).await;
        if known.get(&want).is_none() {
            return status(StatusCode::CONFLICT, "Incorrect category name");
        }
    }
    for hash in targets(&api, &p) {
        match api.session.change_labels(hash, LabelChange::Category(want.clone())).await {
            Ok(_) | Err(SessionError::NotFound(_)) => {}
            Err(e) => return status(StatusCode::CONFLICT, &e.to_string()),
        }
    }
    "".into_response()
}

/// The hashes a command names: `all` is every torrent.
pub(super) fn targets(api: &Api, p: &Params) -> Vec<InfoHash> {
    match hash_list(p.get("hashes")) {
        None => api.session.statuses().iter().filter_map(|t| parse_hash(&t.info_hash)).collect(),
        Some(list) => list.iter().filter_map(|h| parse_hash(h)).collect(),
    }
}

/// Commands running at once for one request.
const COMMANDS_AT_ONCE: usize = 16;
/// How long a command request waits for its commands before it answers:
/// qBittorrent answers at once, the change is seen in `torrents/info`.
const COMMAND_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Pause, resume or recheck of every target. Each command runs in its own
/// task (at most [`COMMANDS_AT_ONCE`] at a time), so a request dropped by
/// its client or by the request timeout never cancels one half-way, and a
/// torrent slow to reach its state does not hold up the others nor the
/// answer, which comes once the commands are under way.
pub(super) async fn run_command(api: &Arc<Api>, p: &Params, cmd: fn() -> Cmd) -> Response {
    let hashes = targets(api, p);
    let session = api.session.clone();
    let driver = tokio::spawn(async move {
        let mut running = tokio::task::JoinSet::new();
        for hash in hashes {
            while running.len() >= COMMANDS_AT_ONCE {
                running.join_next().await;
            }
            let session = session.clone();
            running.spawn(async move {
                if let Err(e) = session.command(hash, cmd()).await {
                    // qBittorrent ignores hashes it does not know.
                    tracing::debug!(hash = %hash.short(), error = %e, "api command not carried out");
                }
            });
        }
        while running.join_next().await.is_some() {}
    });
    // Dropping the handle on time-out leaves the driver running.
    let _ = tokio::time::timeout(COMMAND_ANSWER_WAIT, driver).await;
    "".into_response()
}

async fn stop(State(api): State<Arc<Api>>, p: Params) -> Response {
    run_command(&api, &p, || Cmd::Pause).await
}

async fn start(State(api): State<Arc<Api>>, p: Params) -> Response {
    run_command(&api, &p, || Cmd::Resume).await
}

async fn recheck(State(api): State<Arc<Api>>, p: Params) -> Response {
    run_command(&api, &p, || Cmd::Recheck).await
}

async fn reannounce(State(api): State<Arc<Api>>, p: Params) -> Response {
    let (hashes, session) = (targets(&api, &p), api.session.clone());
    let _ = tokio::spawn(async move {
        for hash in hashes {
            let _ = session.reannounce(hash);
        }
    })
    .await;
    "".into_response()
}

/// Removals run in a task of their own and the request awaits it: a client
/// that hangs up (or the request timeout) drops the request, never a
/// removal half-way, which would leave its registry slot reserved.
async fn delete(State(api): State<Arc<Api>>, p: Params) -> Response {
    let delete_files = p.flag("deleteFiles");
    let (hashes, session) = (targets(&api, &p), api.session.clone());
    let _ = tokio::spawn(async move {
        for hash in hashes {
            match session.remove(hash, delete_files).await {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(hash = %hash.short(), error = %e, "api delete not carried out"),
            }
        }
    })
    .await;
    "".into_response()
}

/// What a `torrents/add` carries.
#[derive(Default)]
struct AddRequest {
    files: Vec<Vec<u8>>,
    params: Vec<(String, String)>,
}

/// Reads a multipart body: each part bounded, the number of parts too.
async fn read_multipart(mut mp: Multipart) -> Result<AddRequest, Refusal> {
    let mut req = AddRequest::default();
    let too_large = || Refusal(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large".into());
    let bad = |e: axum::extract::multipart::MultipartError| Refusal(e.status(), e.body_text());
    while let Some(mut field) = mp.next_field().await.map_err(bad)? {
        if req.files.len() + req.params.len() >= MAX_FIELDS {
            return Err(too_large());
        }
        let name = field.name().unwrap_or("").to_string();
        // Any file part is a torrent, whatever its field name (the web UI
        // says `torrents`, qbittorrent-api names each part after its file).
        let is_file = name == "torrents" || field.file_name().is_some();
        let limit = if is_file { MAX_TORRENT_FILE } else { super::FORM_LIMIT };
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        if is_file {
            req.files.push(bytes);
        } else {
            req.params.push((name, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    Ok(req)
}

async fn add(State(api): State<Arc<Api>>, req: Request) -> Response {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("multipart/form-data"));
    let body = if multipart {
        match Multipart::from_request(req, &api).await {
            Ok(mp) => read_multipart(mp).await,
            Err(e) => Err(Refusal(e.status(), e.body_text())),
        }
    } else {
        Params::from_request(req, &api)
            .await
            .map(|p| AddRequest { files: Vec::new(), params: p.0.into_iter().collect() })
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let params = match Params::from_pairs(body.params) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match add_all(&api, body.files, &params).await {
        Ok(()) => "Ok.".into_response(),
        Err(AddError::Fails) => "Fails.".into_response(),
        Err(AddError::Refused(why)) => status(StatusCode::BAD_REQUEST, &why),
    }
}

enum AddError {
    /// Nothing valid was added: qBittorrent's `Fails.`.
    Fails,
    /// A parameter dropseed cannot honour, said plainly.
    Refused(String),
}

/// One thing to add.
enum Item {
    Torrent(Box<Metainfo>),
    Magnet(Magnet),
}

async fn add_all(api: &Arc<Api>, files: Vec<Vec<u8>>, p: &Params) -> Result<(), AddError> {
    let category = p.get("category").to_string();
    if !category.is_empty() && !crate::config::valid_category(&category) {
        return Err(AddError::Refused(format!("'{category}' cannot be a category name")));
    }
    let (config, save) = (api.config(), p.get("savepath").to_string());
    if !save.is_empty() {
        let checked = save.clone();
        tokio::task::spawn_blocking(move || super::location::check_path(&config, &checked))
            .await
            .map_err(|_| AddError::Fails)?
            .map_err(|why| AddError::Refused(format!("savepath: {why}")))?;
    }
    let save = Some(save).filter(|s| !s.is_empty()).map(std::path::PathBuf::from);
    // An unknown layout is Original, as in qBittorrent (Flood sends the
    // word "undefined" when its user chose none).
    if matches!(p.get("contentLayout"), "Subfolder" | "NoSubfolder") {
        return Err(AddError::Refused("contentLayout: only Original is supported".into()));
    }
    let urls: Vec<String> =
        p.get("urls").lines().map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect();
    if files.len() + urls.len() > MAX_ADDS {
        return Err(AddError::Refused(format!("at most {MAX_ADDS} torrents in one request")));
    }
    let (web, urls): (Vec<String>, Vec<String>) = urls.into_iter().partition(|u| fetch::is_http(u));
    let fetched = fetch::fetch_all(api.session.env.http(), web).await;
    let mut items = tokio::task::spawn_blocking(move || parse_items(files, urls)).await.map_err(|_| AddError::Fails)?;
    items.extend(fetched.into_iter().map(|m| m.map(|m| Item::Torrent(Box::new(m)))));
    let stopped = p.flag("stopped") || p.flag("paused");
    let opts = super::tags::add_options(api, p, category).await.map_err(AddError::Refused)?;
    // In a task of its own, awaited: a dropped request never cancels an add
    // half-way (its registry slot reserved, its state files half written).
    let api = api.clone();
    let added = tokio::spawn(async move {
        let mut added = 0;
        for item in items.into_iter().flatten() {
            if add_one(&api, item, &opts, save.clone(), stopped).await {
                added += 1;
            }
        }
        added
    })
    .await
    .unwrap_or(0);
    if added == 0 {
        return Err(AddError::Fails);
    }
    Ok(())
}

fn parse_items(files: Vec<Vec<u8>>, urls: Vec<String>) -> Vec<Option<Item>> {
    let torrents = files.into_iter().map(|b| Metainfo::from_torrent_bytes(&b).ok().map(|m| Item::Torrent(Box::new(m))));
    let magnets = urls.into_iter().map(|u| Magnet::parse(&u).ok().map(Item::Magnet));
    torrents.chain(magnets).collect()
}

/// Adds one torrent or magnet; true when it is managed afterwards.
async fn add_one(
    api: &Arc<Api>,
    item: Item,
    opts: &crate::session::AddOptions,
    save: Option<std::path::PathBuf>,
    stopped: bool,
) -> bool {
    let category = opts.category.as_str();
    let (hash, result) = match (item, save) {
        (Item::Torrent(m), Some(dir)) => (m.info_hash, api.session.add_metainfo_at(*m, opts.clone(), dir).await),
        (Item::Torrent(m), None) => (m.info_hash, api.session.add_metainfo_with(*m, opts.clone()).await),
        // A magnet has no files yet: only the category's own folder.
        (Item::Magnet(m), Some(dir)) => {
            let own = api.config().complete_dir(category);
            let same = tokio::task::spawn_blocking(move || same_folder(&own, &dir)).await.unwrap_or(false);
            if !same {
                tracing::warn!(hash = %m.info_hash.short(), "API add refused: a savepath other than the category's folder needs a .torrent file (a magnet has no files yet)");
                return false;
            }
            (m.info_hash, api.session.add_magnet_with(m, opts.clone()).await)
        }
        (Item::Magnet(m), None) => (m.info_hash, api.session.add_magnet_with(m, opts.clone()).await),
    };
    match result {
        Ok(AddOutcome::Added) => {
            if stopped {
                let _ = api.session.command(hash, Cmd::Pause).await;
            }
            tracing::info!(hash = %hash.short(), category, "added through the API");
            true
        }
        Ok(AddOutcome::AlreadyManaged) => false,
        Ok(AddOutcome::Refused(why)) => {
            tracing::warn!(hash = %hash.short(), reason = %why, "API add refused");
            false
        }
        Err(e) => {
            tracing::warn!(hash = %hash.short(), error = %e, "API add failed");
            false
        }
    }
}

/// A category's `savePath` outside the folders dropseed may write is
/// refused, naming them; one inside is honoured only when it is where the
/// category's torrents go anyway (links resolved): a category's folder is
/// set in the config. Blocking (it resolves links).
fn check_save_path(config: &crate::config::Config, own: &Path, save: &str) -> Result<(), AddError> {
    if save.is_empty() {
        return Ok(());
    }
    super::location::check_path(config, save).map_err(|why| AddError::Refused(format!("savePath: {why}")))?;
    if same_folder(Path::new(save), own) {
        return Ok(());
    }
    Err(AddError::Refused(format!(
        "savePath: dropseed puts this category's torrents in {}; other folders are not supported yet",
        own.display()
    )))
}

/// Whether two folders are one, links resolved. Blocking.
fn same_folder(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    resolve(a) == resolve(b)
}
