//! `torrents/editCategory` and `torrents/removeCategories`, on the watch
//! folder's categories (one set, however a category was made).
//!
//! Why a module: a category is a watch subfolder and perhaps a
//! `[categories.NAME]` section of the config file. The API may remove the
//! subfolder of a category nothing uses; what the config file says stays
//! the config file's (edit it and send SIGHUP), and is refused clearly.

use super::torrents::{category_names, status};
use super::{Api, Params};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use std::path::Path;
use std::sync::Arc;

/// Categories one `removeCategories` may name.
const MAX_REMOVALS: usize = 100;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/torrents/editCategory", post(edit_category))
        .route("/torrents/removeCategories", post(remove_categories))
}

/// A category's save path is its complete folder: only that one is taken.
async fn edit_category(State(api): State<Arc<Api>>, p: Params) -> Response {
    let name = p.get("category").to_string();
    if !crate::config::valid_category(&name) {
        return status(StatusCode::BAD_REQUEST, "Invalid category name");
    }
    if !category_names(&api).await.contains(&name) {
        return status(StatusCode::CONFLICT, "Category does not exist");
    }
    let own = api.config().complete_dir(&name);
    let save = p.get("savePath").to_string();
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (own_shown, same) = (own.display().to_string(), {
        let own = own.clone();
        tokio::task::spawn_blocking(move || save.is_empty() || resolve(Path::new(&save)) == resolve(&own))
            .await
            .unwrap_or(false)
    });
    if same {
        return "".into_response();
    }
    status(
        StatusCode::CONFLICT,
        &format!(
            "category '{name}' puts its torrents in {own_shown}; to change that, set [categories.{name}] \
             download_dir in the config file and send SIGHUP"
        ),
    )
}

/// Removes the watch subfolders of the named categories. Every name is
/// checked before any is removed: a category in the config file or one
/// with torrents is refused, naming it; so is a subfolder with files in it.
async fn remove_categories(State(api): State<Arc<Api>>, p: Params) -> Response {
    let names: Vec<String> =
        p.get("categories").lines().map(str::trim).filter(|n| !n.is_empty()).map(str::to_string).collect();
    if names.len() > MAX_REMOVALS {
        return status(StatusCode::BAD_REQUEST, &format!("at most {MAX_REMOVALS} categories at once"));
    }
    let config = api.config();
    let known = category_names(&api).await;
    let statuses = api.session.statuses();
    for name in &names {
        let shown = crate::types::printable(name, 100);
        if config.categories.contains_key(name) {
            let why = format!("category '{shown}' is set in the config file ([categories.{shown}]): remove it there");
            return status(StatusCode::CONFLICT, &why);
        }
        let used = statuses.iter().filter(|t| &t.category == name).count();
        if used > 0 {
            let why =
                format!("category '{shown}' still has {used} torrent(s): remove them or wait until they are gone");
            return status(StatusCode::CONFLICT, &why);
        }
    }
    // Unknown names are skipped, as qBittorrent skips them.
    let folders: Vec<(String, std::path::PathBuf)> =
        names.into_iter().filter(|n| known.contains(n)).map(|n| (n.clone(), config.paths.watch_dir.join(&n))).collect();
    let removed = tokio::task::spawn_blocking(move || {
        for (name, folder) in folders {
            // Only an empty, real folder: remove_dir refuses anything else.
            std::fs::remove_dir(&folder).map_err(|e| match e.kind() {
                std::io::ErrorKind::DirectoryNotEmpty => {
                    format!("watch folder '{}' is not empty", crate::types::printable(&name, 100))
                }
                _ => format!("cannot remove watch folder '{}': {e}", crate::types::printable(&name, 100)),
            })?;
            tracing::info!(category = %name, "category removed through the API");
        }
        Ok::<(), String>(())
    })
    .await;
    match removed {
        Ok(Ok(())) => "".into_response(),
        Ok(Err(why)) => status(StatusCode::CONFLICT, &why),
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "removing the categories failed"),
    }
}
