//! `app/*`: the versions the callers check (Sonarr trims the `v` of
//! `app/version`; qbittorrent-api picks `stopped` or `paused` by
//! `app/webapiVersion`), and the preferences, read from dropseed's config.
//!
//! `app/setPreferences` applies what dropseed can change at run time (the
//! global rates, the download queue, the global share limits) to the
//! running config, as a reload does, without touching the config file:
//! see `setprefs`. The `transfer/*Limit` calls are here too.

use super::{setprefs, Api, Params};
use crate::config::{Config, Encryption, LimitAction};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// The Web API version whose semantics we follow (`stopped`/`stoppedUP`).
pub const WEBAPI_VERSION: &str = "2.11.2";
/// The qBittorrent version we answer like.
pub const APP_VERSION: &str = "v5.0.0";

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/app/version", get(version).post(version))
        .route("/app/webapiVersion", get(webapi_version).post(webapi_version))
        .route("/app/buildInfo", get(build_info).post(build_info))
        .route("/app/preferences", get(preferences).post(preferences))
        .route("/app/setPreferences", axum::routing::post(set_preferences))
        .route("/app/defaultSavePath", get(default_save_path).post(default_save_path))
        .route("/transfer/downloadLimit", get(download_limit).post(download_limit))
        .route("/transfer/uploadLimit", get(upload_limit).post(upload_limit))
        .route("/transfer/setDownloadLimit", axum::routing::post(set_download_limit))
        .route("/transfer/setUploadLimit", axum::routing::post(set_upload_limit))
}

async fn version() -> &'static str {
    APP_VERSION
}

async fn webapi_version() -> &'static str {
    WEBAPI_VERSION
}

async fn build_info() -> Json<Value> {
    Json(json!({
        "qt": "", "libtorrent": format!("dropseed {}", env!("CARGO_PKG_VERSION")),
        "boost": "", "openssl": "", "zlib": "", "bitness": usize::BITS,
        "platform": std::env::consts::OS,
    }))
}

async fn preferences(State(api): State<Arc<Api>>) -> Json<Value> {
    Json(preferences_of(&api.config()))
}

/// Applies what dropseed honours (see `setprefs`) to the running config,
/// as a reload does; the rest is named in an INFO line. 400 naming a bad
/// field, with nothing changed.
async fn set_preferences(State(api): State<Arc<Api>>, params: Params) -> Response {
    let fields: serde_json::Map<String, Value> = match serde_json::from_str(params.get("json")) {
        Ok(f) => f,
        Err(_) => return (StatusCode::BAD_REQUEST, "json: not a JSON object").into_response(),
    };
    let (config, ignored) = match setprefs::apply(&api.config(), &fields) {
        Ok(applied) => applied,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let honoured: Vec<&str> = fields.keys().map(String::as_str).filter(|k| setprefs::HONOURED.contains(k)).collect();
    api.session.set_config(Arc::new(config));
    if !honoured.is_empty() {
        tracing::info!(fields = %honoured.join(","), "app/setPreferences applied until the next restart or reload (the config file is unchanged)");
    }
    if !ignored.is_empty() {
        let names: Vec<String> = ignored.iter().take(20).map(|k| crate::types::printable(k, 40)).collect();
        tracing::info!(
            fields = %names.join(","),
            "app/setPreferences ignored what dropseed cannot change at run time: set these in the config file"
        );
    }
    "".into_response()
}

/// `transfer/downloadLimit` and `uploadLimit`: the global rates in bytes/s, 0 for none.
async fn download_limit(State(api): State<Arc<Api>>) -> String {
    api.config().limits.download_rate.0.to_string()
}

async fn upload_limit(State(api): State<Arc<Api>>) -> String {
    api.config().limits.upload_rate.0.to_string()
}

async fn set_download_limit(State(api): State<Arc<Api>>, p: Params) -> Response {
    set_limit(&api, &p, "dl_limit")
}

async fn set_upload_limit(State(api): State<Arc<Api>>, p: Params) -> Response {
    set_limit(&api, &p, "up_limit")
}

/// `limit` (bytes/s; 0 or less for none) as the preference `field`.
fn set_limit(api: &Api, p: &Params, field: &str) -> Response {
    let Ok(limit) = p.get("limit").trim().parse::<i64>() else {
        return (StatusCode::BAD_REQUEST, "limit: not a whole number of bytes per second").into_response();
    };
    let fields = serde_json::Map::from_iter([(field.to_string(), Value::from(limit))]);
    match setprefs::apply(&api.config(), &fields) {
        Ok((config, _)) => {
            api.session.set_config(Arc::new(config));
            "".into_response()
        }
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

async fn default_save_path(State(api): State<Arc<Api>>) -> String {
    api.config().paths.download_dir.display().to_string()
}

/// qBittorrent's preference fields, true to dropseed's config (the ones
/// it has no setting for come from `prefs`).
pub fn preferences_of(c: &Config) -> Value {
    let mut all = super::prefs::fixed(c);
    if let Value::Object(own) = own_preferences(c) {
        all.extend(own);
    }
    Value::Object(all)
}

fn own_preferences(c: &Config) -> Value {
    let ratio = c.seeding.ratio_limit;
    let seed_mins = (c.seeding.seed_time_limit.0 / 60) as i64;
    let idle_mins = (c.seeding.idle_seed_limit.0 / 60) as i64;
    let incomplete = !c.paths.incomplete_dir.as_os_str().is_empty();
    json!({
        "save_path": c.paths.download_dir.display().to_string(),
        "temp_path": c.paths.incomplete_dir.display().to_string(),
        "temp_path_enabled": incomplete,
        "max_ratio": if ratio > 0.0 { ratio } else { -1.0 },
        "max_ratio_enabled": ratio > 0.0,
        "max_seeding_time": if seed_mins > 0 { seed_mins } else { -1 },
        "max_seeding_time_enabled": seed_mins > 0,
        "max_inactive_seeding_time": if idle_mins > 0 { idle_mins } else { -1 },
        "max_inactive_seeding_time_enabled": idle_mins > 0,
        // qBittorrent: 0 = stop, 1 = remove.
        "max_ratio_act": match c.seeding.action { LimitAction::Stop => 0, LimitAction::Remove => 1 },
        "queueing_enabled": c.limits.max_active_downloads > 0,
        "max_active_downloads": c.limits.max_active_downloads as i64,
        "max_active_uploads": -1,
        "max_active_torrents": -1,
        "dht": c.dht.enabled,
        "pex": true,
        "lsd": c.lsd.enabled,
        // qBittorrent: 0 = prefer, 1 = require, 2 = disable.
        "encryption": match c.network.encryption { Encryption::Require => 1, Encryption::Disable => 2, _ => 0 },
        "listen_port": c.network.listen_port,
        // Read by Flood's settings view; dropseed never picks a random port
        // and announces no other address.
        "random_port": false,
        "announce_ip": "",
        "max_uploads": -1,
        "max_uploads_per_torrent": c.limits.upload_slots,
        "up_limit": c.limits.upload_rate.0,
        "dl_limit": c.limits.download_rate.0,
        "max_connec": c.limits.max_connections,
        "max_connec_per_torrent": c.limits.max_peers_per_torrent,
        "auto_tmm_enabled": false,
        "create_subfolder_enabled": true,
        "start_paused_enabled": false,
        "add_stopped_enabled": false,
        "web_ui_address": c.api.listen.clone(),
        "web_ui_username": c.api.username.clone(),
        "locale": "en",
        "scan_dirs": {},
        "torrent_content_layout": "Original",
        "preallocate_all": false,
        "incomplete_files_ext": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_tell_the_config() {
        let mut c = Config::default();
        c.seeding.ratio_limit = 2.0;
        c.seeding.seed_time_limit = crate::config::Span(7200);
        let p = preferences_of(&c);
        assert_eq!(p["max_ratio"], 2.0);
        assert_eq!(p["max_ratio_enabled"], true);
        assert_eq!(p["max_seeding_time"], 120);
        assert_eq!(p["max_inactive_seeding_time_enabled"], false);
        assert_eq!(p["save_path"], c.paths.download_dir.display().to_string());
        assert_eq!(p["dht"], c.dht.enabled);
        assert_eq!(p["listen_port"], c.network.listen_port);
        assert_eq!(p["max_uploads_per_torrent"], c.limits.upload_slots);
        assert_eq!((&p["random_port"], &p["announce_ip"]), (&json!(false), &json!("")));
    }
}
