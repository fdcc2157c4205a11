//! `torrents/tags`, `createTags`, `deleteTags`, `addTags`, `removeTags`,
//! `setShareLimits`, `rename`, and what `torrents/add` takes of them
//! (`tags`, `ratioLimit`, `seedingTimeLimit`, `inactiveSeedingTimeLimit`,
//! `rename`).
//!
//! Why a module: tags and share limits are labels the session keeps per
//! torrent (see `session::labels`), as is the name a torrent is shown
//! under (its files keep theirs); this is their HTTP edge. Every tag is
//! checked (`session::tags::check`) before the session sees it, and a bad
//! one is a 400 naming it. As in qBittorrent, hashes the session does not
//! know are skipped.

use super::torrents::{one, parse_hash, status, targets};
use super::{Api, Params};
use crate::session::tags::{self, MAX_TAGS_PER_TORRENT};
use crate::session::{check_name, AddOptions, LabelChange, SessionError};
use crate::share::ShareLimits;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/torrents/tags", get(list).post(list))
        .route("/torrents/createTags", post(create))
        .route("/torrents/deleteTags", post(delete))
        .route("/torrents/addTags", post(add_tags))
        .route("/torrents/removeTags", post(remove_tags))
        .route("/torrents/setShareLimits", post(set_share_limits))
        .route("/torrents/rename", post(rename))
}

/// Whether `torrents/info`'s `tags` field (comma+space joined) holds `tag`;
/// the empty tag asks for the untagged.
pub fn has_tag(joined: &str, tag: &str) -> bool {
    if tag.is_empty() {
        return joined.is_empty();
    }
    joined.split(", ").any(|t| t == tag.trim())
}

async fn list(State(api): State<Arc<Api>>) -> Json<Vec<String>> {
    Json(api.session.known_tags().await)
}

/// The `tags` parameter, checked: a 400 naming the bad tag.
fn tag_list(p: &Params) -> Result<Vec<String>, Box<Response>> {
    tags::parse_list(p.get("tags")).map_err(|why| Box::new(status(StatusCode::BAD_REQUEST, &why)))
}

fn refused(e: SessionError) -> Response {
    let code = match e {
        SessionError::Invalid(_) => StatusCode::BAD_REQUEST,
        SessionError::NotFound(_) => StatusCode::NOT_FOUND,
        SessionError::Busy(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    status(code, &e.to_string())
}

async fn create(State(api): State<Arc<Api>>, p: Params) -> Response {
    let new = match tag_list(&p) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match api.session.create_tags(&new).await {
        Ok(()) => "".into_response(),
        Err(e) => refused(e),
    }
}

async fn delete(State(api): State<Arc<Api>>, p: Params) -> Response {
    let gone = match tag_list(&p) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    // In a task of its own: a client that hangs up never stops it half-way.
    let session = api.session.clone();
    match tokio::spawn(async move { session.delete_tags(&gone).await }).await {
        Ok(Ok(())) => "".into_response(),
        Ok(Err(e)) => refused(e),
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "deleting the tags failed"),
    }
}

async fn add_tags(State(api): State<Arc<Api>>, p: Params) -> Response {
    match tag_list(&p) {
        Ok(new) if new.is_empty() => status(StatusCode::BAD_REQUEST, "tags: no tag given"),
        Ok(new) => relabel(&api, &p, LabelChange::AddTags(new)).await,
        Err(r) => *r,
    }
}

/// Without `tags`, every tag of the torrents goes (as in qBittorrent).
async fn remove_tags(State(api): State<Arc<Api>>, p: Params) -> Response {
    match tag_list(&p) {
        Ok(gone) if gone.is_empty() => {
            let all = targets(&api, &p).iter().filter_map(|h| api.session.status_of(h)).flat_map(|t| t.tags).collect();
            relabel(&api, &p, LabelChange::RemoveTags(all)).await
        }
        Ok(gone) => relabel(&api, &p, LabelChange::RemoveTags(gone)).await,
        Err(r) => *r,
    }
}

async fn set_share_limits(State(api): State<Arc<Api>>, p: Params) -> Response {
    match share_limits(&p, true) {
        Ok(Some(limits)) => relabel(&api, &p, LabelChange::Share(limits)).await,
        Ok(None) => status(StatusCode::BAD_REQUEST, "ratioLimit and seedingTimeLimit are required"),
        Err(why) => status(StatusCode::BAD_REQUEST, &why),
    }
}

/// The name shown for one torrent: 404 for an unknown hash, 400 for a bad name.
async fn rename(State(api): State<Arc<Api>>, p: Params) -> Response {
    if let Err(r) = one(&api, &p) {
        return r.into_response();
    }
    let Some(hash) = parse_hash(p.get("hash")) else {
        return status(StatusCode::NOT_FOUND, "Torrent hash was not found");
    };
    let name = match check_name(p.get("name")) {
        Ok(n) => n,
        Err(why) => return status(StatusCode::BAD_REQUEST, &why),
    };
    let session = api.session.clone();
    match tokio::spawn(async move { session.change_labels(hash, LabelChange::Rename(name)).await }).await {
        Ok(Ok(_)) => "".into_response(),
        Ok(Err(e)) => refused(e),
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "the rename failed"),
    }
}

/// Applies a change to every target, in a task of its own (a dropped
/// request never stops it half-way). Unknown hashes are skipped; a bad
/// tag or a bound passed is a 400 at the first torrent.
async fn relabel(api: &Arc<Api>, p: &Params, change: LabelChange) -> Response {
    let (hashes, session) = (targets(api, p), api.session.clone());
    let done = tokio::spawn(async move {
        for hash in hashes {
            match session.change_labels(hash, change.clone()).await {
                Ok(_) | Err(SessionError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    match done.await {
        Ok(Ok(())) => "".into_response(),
        Ok(Err(e)) => refused(e),
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "the change failed"),
    }
}

/// `ratioLimit`, `seedingTimeLimit`, `inactiveSeedingTimeLimit`: None when
/// the first two are absent (required with `required`, else none is given).
fn share_limits(p: &Params, required: bool) -> Result<Option<ShareLimits>, String> {
    let (ratio, seeding, inactive) =
        (p.opt("ratioLimit"), p.opt("seedingTimeLimit"), p.opt("inactiveSeedingTimeLimit"));
    if ratio.is_none() && seeding.is_none() && inactive.is_none() {
        return Ok(None);
    }
    if required && (ratio.is_none() || seeding.is_none()) {
        return Ok(None);
    }
    let ratio: f64 = number(ratio, "ratioLimit")?;
    let seeding: i64 = number(seeding, "seedingTimeLimit")?;
    let inactive: i64 = number(inactive, "inactiveSeedingTimeLimit")?;
    ShareLimits::from_api(ratio, seeding, inactive).map(Some)
}

/// A number parameter; absent is -2 (the global limit).
fn number<T: std::str::FromStr + From<i8>>(v: Option<&str>, name: &str) -> Result<T, String> {
    match v.map(str::trim) {
        None | Some("") => Ok(T::from(-2)),
        Some(v) => v.parse().map_err(|_| format!("{name}: '{}' is not a number", crate::types::printable(v, 40))),
    }
}

/// What `torrents/add` says besides the torrents: its category (checked
/// by the caller), tags (made known here) and share limits.
pub async fn add_options(api: &Api, p: &Params, category: String) -> Result<AddOptions, String> {
    let tags = tags::parse_list(p.get("tags"))?;
    if tags.len() > MAX_TAGS_PER_TORRENT {
        return Err(format!("a torrent carries at most {MAX_TAGS_PER_TORRENT} tags"));
    }
    let share = share_limits(p, false)?;
    let name = match p.get("rename").trim() {
        "" => None,
        n => Some(check_name(n)?),
    };
    api.session.create_tags(&tags).await.map_err(|e| e.to_string())?;
    Ok(AddOptions { category, tags, share, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
    }

    #[test]
    fn the_tag_filter_matches_whole_tags() {
        assert!(has_tag("a, b c", "b c"));
        assert!(!has_tag("a, b c", "b"));
        assert!(has_tag("", ""));
        assert!(!has_tag("a", ""));
    }

    #[test]
    fn share_limit_parameters() {
        let p = params(&[("ratioLimit", "1.5"), ("seedingTimeLimit", "-1")]);
        let l = share_limits(&p, true).unwrap().unwrap();
        assert_eq!(l, ShareLimits::from_api(1.5, -1, -2).unwrap());
        assert_eq!(share_limits(&params(&[("ratioLimit", "1")]), true).unwrap(), None, "seedingTimeLimit missing");
        assert_eq!(share_limits(&params(&[]), false).unwrap(), None);
        let err = share_limits(&params(&[("ratioLimit", "lots"), ("seedingTimeLimit", "1")]), true).unwrap_err();
        assert!(err.contains("ratioLimit"), "{err}");
        assert!(share_limits(&params(&[("ratioLimit", "-7"), ("seedingTimeLimit", "1")]), true).is_err());
    }
}
