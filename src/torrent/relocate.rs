//! Moving a complete torrent's data to another folder the user names (the
//! API's `torrents/setLocation`), through the same verified handoff as the
//! move from `incomplete_dir` to the complete folder ([`handoff`]): one
//! rename on the same filesystem, else a copy verified against the piece
//! hashes before the source goes.
//!
//! Why a module of its own: unlike the handoff, a relocation may fail
//! without harm and is then given up, not retried: the data stays whole
//! where it was, the torrent seeds on from there, and a WARN line names why.
//! The new place is written into the resume record before the move begins
//! (`moving`), so a restart during a copy finishes it; the session decides
//! beforehand whether the torrent may move at all.

use super::{handoff, TorrentShared};
use crate::storage::Place;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Moves the data to `target` now, between two phases (no peer reads the
/// files). None when the torrent was cancelled meanwhile: a copy stops at
/// its next chunk and is finished at the next start.
pub(super) async fn move_now(shared: &Arc<TorrentShared>, target: Place, cancel: &CancellationToken) -> Option<()> {
    shared.with_record(|r| r.moving = Some(target.clone()));
    if !shared.save_resume(true).await {
        shared.with_record(|r| r.moving = None);
        tracing::warn!(torrent = %shared.name(), to = %target.top().display(),
            "not moved: the resume record naming the new place cannot be written");
        return Some(());
    }
    tokio::select! {
        _ = cancel.cancelled() => None,
        () = finish(shared, target) => Some(()),
    }
}

/// Brings the data from its settled place to `target` (the record's
/// `moving`), whatever part of that was done before a restart; on failure
/// the move is given up and the data stays where it is.
pub(super) async fn finish(shared: &Arc<TorrentShared>, target: Place) {
    let from = shared.place();
    let _shown = Relocating::start(&shared.relocating);
    let control = Arc::new(handoff::MoveControl::default());
    let _stop_if_dropped = StopOnDrop(control.clone());
    let (s, to, c) = (shared.clone(), target.clone(), control.clone());
    let recorded = shared.with_record(|r| r.stamps.clone());
    let span = tracing::Span::current();
    let moved = tokio::task::spawn_blocking(move || {
        let _in_span = span.enter();
        let _one_move = s.hold_moves();
        handoff::finish_move(&s.meta, &from, &to, s.storage().map(|s| &**s), &recorded, &c)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let from = shared.place();
    match moved {
        Ok(place) => {
            tracing::info!(torrent = %shared.name(), from = %from.top().display(), to = %place.top().display(),
                "moved to another folder");
            shared.with_record(|r| {
                r.place = Some(place);
                r.moving = None;
            });
        }
        Err(e) => match moved_anyway(&from, &target).await {
            // Failed after the point of no return (a folder's sync after
            // the rename, say): the data is at the target; so is the record.
            Some(place) => {
                tracing::warn!(torrent = %shared.name(), from = %from.top().display(), to = %place.top().display(), error = %e,
                    "moved to another folder, with an error after the data had moved");
                shared.with_record(|r| {
                    r.place = Some(place);
                    r.moving = None;
                });
            }
            None => {
                tracing::warn!(torrent = %shared.name(), to = %target.top().display(), error = %e,
                    "cannot move to another folder; the data stays where it is: {}", from.top().display());
                shared.with_record(|r| r.moving = None);
            }
        },
    }
    shared.save_resume(true).await;
}

/// After a failed move: the target's place, if the data left `from` and is
/// at `target` all the same.
async fn moved_anyway(from: &Place, target: &Place) -> Option<Place> {
    let (from, target) = (from.clone(), target.clone());
    tokio::task::spawn_blocking(move || {
        use crate::storage::nofollow::item_exists;
        // Unsure (an error looking) counts as "still at the source".
        let gone = item_exists(&from).is_ok_and(|e| !e);
        let there = item_exists(&target).unwrap_or(false);
        (gone && there).then_some(Place { settled: true, ..target })
    })
    .await
    .ok()
    .flatten()
}

/// Shows the torrent `moving` while it is set.
struct Relocating<'a>(&'a AtomicBool);

impl<'a> Relocating<'a> {
    fn start(flag: &'a AtomicBool) -> Relocating<'a> {
        flag.store(true, Ordering::Relaxed);
        Relocating(flag)
    }
}

impl Drop for Relocating<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Stops a copy when the future waiting for it is dropped.
struct StopOnDrop(Arc<handoff::MoveControl>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}
