//! Where a torrent's data may be put through the API (`setLocation` moves
//! it, see `session::relocate`), and the requests about it dropseed
//! refuses for now, each with a plain reason:
//! `renameFile`, `renameFolder`, `filePrio`. And `setForceStart`, which
//! puts a torrent outside the download queue's limit (`torrent::queue`).
//!
//! Why a module: no path given through the API may reach outside the
//! folders dropseed writes (`download_dir`, `incomplete_dir`, the category
//! folders) and `[api] allowed_paths`. [`check_path`] resolves symlinks
//! before it compares, so a link inside an allowed folder that points
//! elsewhere does not pass.

use super::torrents::{one, parse_hash, status};
use super::{hash_list, Api, Params};
use crate::config::Config;
use crate::session::relocate::Relocation;
use crate::session::ErrorKind;
use crate::torrent::task::Cmd;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/torrents/setLocation", post(set_location))
        .route("/torrents/renameFile", post(no_file_renames))
        .route("/torrents/renameFolder", post(no_file_renames))
        .route("/torrents/filePrio", post(no_file_priorities))
        .route("/torrents/setForceStart", post(set_force_start))
}

/// The folders a path from the API may be in.
pub fn allowed_roots(c: &Config) -> Vec<PathBuf> {
    let mut roots = vec![c.paths.download_dir.clone()];
    if !c.paths.incomplete_dir.as_os_str().is_empty() {
        roots.push(c.paths.incomplete_dir.clone());
    }
    roots.extend(c.categories.values().filter_map(|cat| cat.download_dir.clone()));
    roots.extend(c.api.allowed_paths.iter().cloned());
    roots
}

/// `path` resolved (symlinks of the part that exists followed, the rest
/// without `..`), if it lies in one of the allowed folders; else why not.
/// Blocking: call off the async workers.
pub fn check_path(c: &Config, path: &str) -> Result<PathBuf, String> {
    let shown = crate::types::printable(path, 300);
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("'{shown}' is not an absolute path"));
    }
    let resolved = resolve(p).ok_or_else(|| format!("'{shown}' cannot be resolved"))?;
    let inside = allowed_roots(c).iter().filter_map(|r| resolve(r)).any(|root| resolved.starts_with(&root));
    if !inside {
        return Err(format!(
            "'{shown}' is outside the folders dropseed may write: download_dir, incomplete_dir, \
             the category folders and [api] allowed_paths"
        ));
    }
    Ok(resolved)
}

/// The deepest existing ancestor canonicalized, the rest appended; None
/// when the rest climbs with `..` (which a later link could redirect).
fn resolve(p: &Path) -> Option<PathBuf> {
    let mut base = p.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&base) {
            Ok(real) => {
                let tail: Option<Vec<_>> =
                    rest.iter().rev().map(|c: &std::ffi::OsString| (c != "..").then_some(c.clone())).collect();
                return Some(tail?.into_iter().fold(real, |acc, c| acc.join(c)));
            }
            Err(_) => {
                let name = match base.components().next_back()? {
                    Component::Normal(n) => n.to_os_string(),
                    Component::ParentDir => "..".into(),
                    Component::CurDir => ".".into(),
                    _ => return None,
                };
                rest.push(name);
                base = base.parent()?.to_path_buf();
            }
        }
    }
}

/// The path is checked first (400 when it escapes); then each torrent's
/// data moves there through the verified handoff (it shows `moving`
/// meanwhile). A torrent that must stay (its data shared with another, not
/// complete) is 409 naming why; unknown hashes are skipped, as qBittorrent
/// does.
async fn set_location(State(api): State<Arc<Api>>, p: Params) -> Response {
    let location = p.get("location").to_string();
    if location.trim().is_empty() {
        return status(StatusCode::BAD_REQUEST, "location: no path given");
    }
    let config = api.config();
    let checked =
        tokio::task::spawn_blocking(move || check_path(&config, &location).and_then(|p| split_root(&config, &p))).await;
    let (root, sub) = match checked {
        Ok(Ok(at)) => at,
        Ok(Err(why)) => return status(StatusCode::BAD_REQUEST, &why),
        Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "the path check failed"),
    };
    let mut refused = Vec::new();
    for hash in super::torrents::targets(&api, &p) {
        match api.session.relocate(hash, root.clone(), sub.clone()).await {
            Ok(Relocation::Started(t, to)) => {
                tracing::info!(hash = %t.hash.short(), to = %to.display(), "moving through the API")
            }
            Ok(Relocation::AlreadyThere(_)) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => refused.push(e.to_string()),
        }
    }
    if refused.is_empty() {
        return "".into_response();
    }
    status(StatusCode::CONFLICT, &refused.join("\n"))
}

/// A checked path as the deepest allowed folder holding it and the folders
/// below it (made by dropseed, reached without a link). Blocking.
fn split_root(c: &Config, resolved: &Path) -> Result<(PathBuf, String), String> {
    let root = allowed_roots(c)
        .iter()
        .filter_map(|r| resolve(r))
        .filter(|root| resolved.starts_with(root))
        .max_by_key(|r| r.as_os_str().len())
        .ok_or_else(|| "the path is outside the folders dropseed may write".to_string())?;
    let sub = resolved.strip_prefix(&root).unwrap_or(Path::new(""));
    let sub = sub.to_str().ok_or_else(|| {
        format!(
            "{}: the folders below {} must be UTF-8 names",
            crate::types::printable(&resolved.display().to_string(), 300),
            root.display()
        )
    })?;
    Ok((root.clone(), sub.to_string()))
}

/// 404 for an unknown torrent (as qBittorrent), else the refusal.
async fn no_file_renames(State(api): State<Arc<Api>>, p: Params) -> Response {
    match one(&api, &p) {
        Ok(_) => status(StatusCode::CONFLICT, "dropseed cannot rename a torrent's files or folders yet"),
        Err(r) => r.into_response(),
    }
}

async fn no_file_priorities(State(api): State<Arc<Api>>, p: Params) -> Response {
    match one(&api, &p) {
        Ok(_) => {
            status(StatusCode::CONFLICT, "dropseed has no file selection yet: every file of a torrent is downloaded")
        }
        Err(r) => r.into_response(),
    }
}

/// Forces or clears the start of every torrent named (`all`: every one);
/// 404 if a named hash is not known. `value=true` then resumes those held,
/// as qBittorrent does, through the same path as `torrents/start`. The
/// flags are set in a task of their own: a client that hangs up does not
/// stop it half-way.
async fn set_force_start(State(api): State<Arc<Api>>, p: Params) -> Response {
    let known = hash_list(p.get("hashes"))
        .unwrap_or_default()
        .iter()
        .all(|h| parse_hash(h).is_some_and(|h| api.session.status_of(&h).is_some()));
    if !known {
        return status(StatusCode::NOT_FOUND, "Torrent hash was not found");
    }
    let (forced, hashes, session) = (p.flag("value"), super::torrents::targets(&api, &p), api.session.clone());
    let _ = tokio::spawn(async move {
        for hash in hashes {
            if let Err(e) = session.set_force_start(hash, forced).await {
                tracing::debug!(hash = %hash.short(), error = %e, "force start not carried out");
            }
        }
    })
    .await;
    if !forced {
        return "".into_response();
    }
    super::torrents::run_command(&api, &p, || Cmd::Resume).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_in_the_allowed_folders_links_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let mut c = Config::default();
        c.paths.download_dir = root.join("downloads");
        c.paths.incomplete_dir = root.join("incomplete");
        c.api.allowed_paths = vec![root.join("extra")];
        for d in ["downloads", "extra", "outside"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(root.join("outside"), root.join("downloads/link")).unwrap();
        let ok = |p: PathBuf| check_path(&c, p.to_str().unwrap());
        assert_eq!(ok(root.join("downloads/new/deeper")).unwrap(), root.join("downloads/new/deeper"));
        assert!(ok(root.join("extra")).is_ok());
        assert!(ok(root.join("incomplete/x")).is_ok(), "not made yet, still inside");
        let escape = ok(root.join("downloads/link/x")).unwrap_err();
        assert!(escape.contains("outside the folders"), "{escape}");
        assert!(ok(root.join("downloads/../outside")).is_err());
        assert!(ok(root.join("downloads/missing/../../outside")).is_err());
        assert!(check_path(&c, "relative/path").unwrap_err().contains("absolute"));
        assert!(ok(root.join("outside")).is_err());
    }
}
