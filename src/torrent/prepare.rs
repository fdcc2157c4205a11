//! The `Preparing` phase's work: settle where the data lives (a new
//! torrent's first place; a move to the complete folder that a restart
//! interrupted), check free space, open (create) the files, and hash
//! whatever pieces the disk may hold that the resume record does not vouch
//! for (every piece on a recheck). Data gone from its settled place is not
//! recreated there unless the user asks for a recheck.
//!
//! A torrent seeding data it found there (cross-seeding: another torrent's
//! files, or the user's) opens them read-only and leaves this phase only
//! with every piece verified against its own hashes: a file missing is
//! `missing`, a piece that fails is an error naming its file, never a
//! download into a file others seed.

//!
//! The future may be dropped at any await (pause, remove, shutdown): every
//! piece's result is applied on its own, so a check cut short leaves each
//! piece either as the record had it or as the check found it.

use super::{handoff, piece_matches, TorrentShared};
use crate::storage::layout::Layout;
use crate::storage::Place;
use crate::storage::{self, TorrentStorage};
use crate::types::{human_bytes, Bitfield};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Why preparing did not end with the torrent ready.
pub enum Stop {
    Failed(String),
    /// Complete data gone from its settled place (see [`refuse_if_missing`]).
    Missing(String),
}

impl From<String> for Stop {
    fn from(message: String) -> Stop {
        Stop::Failed(message)
    }
}

pub async fn prepare(shared: &Arc<TorrentShared>, recheck: bool) -> Result<(), Stop> {
    if shared.status_cell().record.match_pending {
        super::matching::run(shared).await;
    }
    settle_place(shared).await?;
    clear_stale_links(shared).await;
    let borrowed = shared.status_cell().record.borrowed;
    let mut survey = if borrowed { borrowed_survey(shared).await? } else { check_space(shared).await? };
    let asked = recheck && shared.recheck_asked.swap(false, Ordering::Relaxed);
    if !asked {
        refuse_if_missing(shared, &survey).await.map_err(Stop::Missing)?;
    }
    let storage = open_storage(shared, &mut survey).await?;
    if borrowed {
        forget_changed_files(shared, &storage);
    }
    note_stamps(shared, &storage).await;
    let to_check = pieces_to_check(shared, &storage, &survey, recheck);
    if to_check.is_empty() {
        return if borrowed { borrowed_whole(shared) } else { Ok(()) };
    }
    let started = Instant::now();
    let total = to_check.len();
    let Checked { good, first_error } = hash_pieces(shared, &storage, to_check).await;
    let count = shared.lock().have().count();
    shared.have_changed(count);
    tracing::info!(
        torrent = %shared.name(),
        checked = total,
        valid = good,
        have = count,
        pieces = shared.meta.piece_count(),
        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
        "checking done"
    );
    shared.save_resume(false).await;
    first_error.map_or(Ok(()), |e| Err(Stop::Failed(e)))?;
    if borrowed {
        return borrowed_whole(shared);
    }
    Ok(())
}

/// A kill -9 while matched files were being linked in may have left one
/// under its hidden name (in the incomplete folder, or in the complete one
/// when there is none): gone before the item can move anywhere.
async fn clear_stale_links(shared: &TorrentShared) {
    let linked = shared.status_cell().record.linked.clone();
    let place = shared.place();
    if linked.is_empty() {
        return;
    }
    let meta = shared.meta.clone();
    let _ = shared.env.disk().run(move || storage::place::clear_stale_links(&place, &meta, &linked)).await;
}

/// The survey of a torrent seeding data it does not own: every file must be
/// there at its length (a file gone is `missing`: nothing is recreated).
async fn borrowed_survey(shared: &TorrentShared) -> Result<storage::DiskSurvey, Stop> {
    let (meta, place) = (shared.meta.clone(), shared.place());
    let survey = shared.env.disk().run(move || storage::survey(&place, &meta)).await.map_err(|e| e.to_string())?;
    let off: BTreeSet<usize> = survey.short_files.iter().chain(&survey.grown_files).copied().collect();
    if off.is_empty() {
        return Ok(survey);
    }
    Err(Stop::Missing(format!(
        "files it seeds from (shared data, never recreated) are missing or of another length: {}",
        file_list(shared, &off)
    )))
}

/// Shared data may change behind a torrent's back (its owner rechecks and
/// repairs it, the user replaces a file): the pieces of every file that is
/// not the one the record stamped (device, inode, size, mtime) are verified
/// again before they are served.
fn forget_changed_files(shared: &TorrentShared, storage: &TorrentStorage) {
    let recorded = shared.status_cell().record.stamps.clone();
    if recorded.is_empty() {
        return;
    }
    let now = storage.stamps();
    let mut inner = shared.lock();
    for (i, (was, is)) in recorded.iter().zip(&now).enumerate() {
        if was != is {
            // mark_lost leaves a piece not held as it is.
            for p in storage.layout().pieces_of_file(i) {
                inner.mark_lost(p as u32, shared.meta.piece_len(p));
            }
        }
    }
}

/// The record learns which files are open (device, inode): what `status`
/// shows as shared with other torrents, before the next save writes them.
async fn note_stamps(shared: &TorrentShared, storage: &Arc<TorrentStorage>) {
    let st = storage.clone();
    if let Ok(stamps) = shared.env.disk().run(move || st.stamps()).await {
        shared.status_cell().record.stamps = stamps;
        shared.index_shares();
    }
}

/// A torrent seeding data it does not own leaves preparing only complete:
/// pieces that failed its hashes name their files, and it never downloads
/// into them.
fn borrowed_whole(shared: &TorrentShared) -> Result<(), Stop> {
    let files: BTreeSet<usize> = {
        let inner = shared.lock();
        let meta = &shared.meta;
        (0..meta.piece_count())
            .filter(|&p| !inner.have().get(p))
            .flat_map(|p| {
                let start = p as u64 * meta.piece_length;
                let end = start + meta.piece_len(p) as u64;
                meta.files
                    .iter()
                    .enumerate()
                    .filter(move |(_, f)| !f.padding && f.length > 0 && f.offset < end && f.offset + f.length > start)
            })
            .map(|(i, _)| i)
            .collect()
    };
    if files.is_empty() {
        return Ok(());
    }
    Err(Stop::Failed(format!(
        "pieces over {} fail this torrent's hashes: the data it seeds from is another's or was changed, \
         and shared data is never rewritten (remove this torrent, or give it data of its own)",
        file_list(shared, &files)
    )))
}

/// Up to five files' paths, and how many more.
fn file_list(shared: &TorrentShared, files: &BTreeSet<usize>) -> String {
    let place = shared.place();
    let names: Vec<String> =
        files.iter().take(5).map(|&i| place.file_path(&shared.meta, i).display().to_string()).collect();
    let more = files.len().saturating_sub(names.len());
    format!("{}{}", names.join(", "), if more > 0 { format!(" and {more} more") } else { String::new() })
}

/// Gives a new torrent its first place, and finishes a move to the
/// complete folder that was under way when the daemon stopped.
async fn settle_place(shared: &Arc<TorrentShared>) -> Result<(), String> {
    let (placed, moving) = {
        let s = shared.status_cell();
        (s.record.place.is_some(), s.record.moving.clone())
    };
    if !placed {
        let first = first_place(shared).await?;
        shared.status_cell().record.place = Some(first);
        shared.index_shares();
    }
    let Some(target) = moving else { return Ok(()) };
    let (s, from) = (shared.clone(), shared.place());
    if from.settled {
        // A move the user asked for (`setLocation`), cut short by a restart.
        super::relocate::finish(shared, target).await;
        return Ok(());
    }
    let recorded = shared.status_cell().record.stamps.clone();
    let control = Arc::new(handoff::MoveControl::default());
    // Paused or removed meanwhile: the copy stops at its next chunk.
    let _stop_if_dropped = StopOnDrop(control.clone());
    let span = tracing::Span::current();
    let moved = tokio::task::spawn_blocking(move || {
        let _in_span = span.enter();
        let _one_move = s.hold_moves();
        handoff::finish_move(&s.meta, &from, &target, s.storage().map(|s| &**s), &recorded, &control)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("moving to the complete folder: {e}"))?;
    tracing::info!(torrent = %shared.name(), path = %moved.top().display(), "move to the complete folder finished");
    {
        let mut s = shared.status_cell();
        s.record.place = Some(moved);
        s.record.moving = None;
    }
    shared.index_shares();
    shared.save_resume(true).await;
    // The download finished before a restart cut its move short.
    shared.run_hook(crate::hookcmd::HookEvent::Complete);
    Ok(())
}

/// A new torrent's place. An item of its name in the complete folder is
/// seeded there only if it is this torrent's data, whole (the user re-seeds
/// what they have); anything else of that name is the user's: never opened
/// for writing, and the download goes to `incomplete_dir` as usual.
async fn first_place(shared: &Arc<TorrentShared>) -> Result<Place, String> {
    let s = shared.clone();
    let candidate = shared.env.disk().run(move || s.first_place()).await.map_err(|e| e.to_string())?;
    let had_pieces = shared.status_cell().record.have.iter().any(|&b| b != 0);
    if !candidate.settled || shared.env.incomplete_dir().as_os_str().is_empty() || had_pieces {
        return Ok(candidate);
    }
    let control = Arc::new(handoff::MoveControl::default());
    let _stop_if_dropped = StopOnDrop(control.clone());
    let (meta, place) = (shared.meta.clone(), candidate.clone());
    let ours = tokio::task::spawn_blocking(move || handoff::is_our_data(&meta, &place, &control.stop))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("checking {}: {e}", candidate.top().display()))?;
    if ours {
        tracing::info!(torrent = %shared.name(), path = %candidate.top().display(), "data found whole in the complete folder; seeding it there");
        let mut inner = shared.lock();
        for p in 0..shared.meta.piece_count() {
            inner.mark_verified(p as u32, shared.meta.piece_len(p), Instant::now());
        }
        let (count, have) = (inner.have().count(), inner.have().as_bytes().to_vec());
        drop(inner);
        shared.status_cell().record.have = have;
        shared.have_changed(count);
        return Ok(candidate);
    }
    tracing::info!(torrent = %shared.name(), other = %candidate.top().display(),
        "something else of this name is in the complete folder; leaving it alone and downloading to the incomplete folder");
    Ok(Place::new(shared.env.incomplete_dir(), "", &shared.meta.name, false))
}

/// Stops a blocking check or move when its phase ends (the future that
/// waits for it is dropped).
struct StopOnDrop(Arc<handoff::MoveControl>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// A complete torrent whose files left its settled place (an importer
/// moved, replaced or rewrote them, the user deleted them) waits for the
/// user: writing into their library again is what `dropseed recheck` is for.
async fn refuse_if_missing(shared: &TorrentShared, survey: &storage::DiskSurvey) -> Result<(), String> {
    let place = shared.place();
    if !place.settled || !shared.is_complete() {
        return Ok(());
    }
    let mut gone: BTreeSet<usize> = survey.short_files.iter().chain(&survey.grown_files).copied().collect();
    if let Some(storage) = shared.storage().cloned() {
        // Replaced by another file of the same name and length.
        let (meta, p) = (shared.meta.clone(), place.clone());
        gone.extend(shared.env.disk().run(move || storage.files_gone(&p, &meta)).await.unwrap_or_default());
    }
    if gone.is_empty() {
        return Ok(());
    }
    let names: Vec<String> =
        gone.iter().take(5).map(|&i| place.file_path(&shared.meta, i).display().to_string()).collect();
    let more = gone.len().saturating_sub(names.len());
    Err(format!(
        "files missing or cut short: {}{} (`dropseed recheck` downloads what is gone)",
        names.join(", "),
        if more > 0 { format!(" and {more} more") } else { String::new() }
    ))
}

/// Surveys the files and refuses to start without room for what is missing.
async fn check_space(shared: &TorrentShared) -> Result<storage::DiskSurvey, String> {
    let (meta, place) = (shared.meta.clone(), shared.place());
    let (survey, free) = shared
        .env
        .disk()
        .run(move || (storage::survey(&place, &meta), storage::place_free_space(&place).map_err(|e| (place.dir, e))))
        .await
        .map_err(|e| e.to_string())?;
    let free = free.map_err(|(dir, e)| format!("cannot read free space of {}: {e}", dir.display()))?;
    if survey.bytes_needed > free {
        return Err(format!(
            "not enough disk space in {}: {} needed, {} free",
            shared.place().dir.display(),
            human_bytes(survey.bytes_needed),
            human_bytes(free)
        ));
    }
    Ok(survey)
}

/// Opens the files, or, when they are open already, makes whole again those
/// found missing or short (truncated or deleted behind our back).
async fn open_storage(shared: &TorrentShared, survey: &mut storage::DiskSurvey) -> Result<Arc<TorrentStorage>, String> {
    let env = &shared.env;
    if let Some(s) = shared.storage() {
        // Files replaced under us (put back after going missing) are opened
        // anew and their pieces checked.
        let (s, meta, place, short) = (s.clone(), shared.meta.clone(), shared.place(), survey.short_files.clone());
        let (s, replaced) = env
            .disk()
            .run(move || {
                let replaced: Vec<usize> =
                    s.files_gone(&place, &meta).into_iter().filter(|i| !short.contains(i)).collect();
                let all: Vec<usize> = short.iter().chain(&replaced).copied().collect();
                s.restore_files(&place, &meta, &all).map(|()| (s, replaced)).map_err(|e| (place.dir, e))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|(dir, e)| format!("cannot restore files in {}: {e}", dir.display()))?;
        survey.replaced_files = replaced;
        return Ok(s);
    }
    let (meta, place, kind) = (shared.meta.clone(), shared.place(), env.config().storage.backend);
    let (borrowed, linked) = {
        let s = shared.status_cell();
        (s.record.borrowed, s.record.linked.clone())
    };
    let storage = env
        .disk()
        .run(move || {
            let opened = if borrowed {
                TorrentStorage::open_existing(&place, &meta)
            } else {
                TorrentStorage::open(&place, &meta, kind)
            };
            opened.map(|s| with_links(s, &linked, meta.files.len())).map_err(|e| (place.dir, e))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|(dir, e)| format!("cannot create files in {}: {e}", dir.display()))?;
    Ok(shared.storage.get_or_init(|| Arc::new(storage)).clone())
}

/// Marks the files linked in from another torrent's data (never rewritten).
fn with_links(mut storage: TorrentStorage, linked: &[u32], files: usize) -> TorrentStorage {
    storage.linked = (0..files).map(|i| linked.contains(&(i as u32))).collect();
    storage
}

/// The pieces a start hashes, and those of them to sync before a record
/// claims them (their pages may hold data this process never wrote).
#[derive(Debug, Default, PartialEq)]
struct ToCheck {
    hash: Vec<usize>,
    sync_first: Vec<usize>,
}

/// What this start knows before it looks at the pieces.
enum Start<'a> {
    Recheck,
    /// Shared data: nothing is served that this torrent has not verified.
    ReadOnly {
        have: &'a Bitfield,
    },
    /// No record: whatever is on disk was put there by someone else.
    Fresh,
    FromRecord {
        have: &'a Bitfield,
    },
}

fn pieces_to_check(
    shared: &TorrentShared,
    storage: &TorrentStorage,
    survey: &storage::DiskSurvey,
    recheck: bool,
) -> Vec<usize> {
    let meta = &shared.meta;
    let (had_record, candidates) = {
        let s = shared.status_cell();
        (s.record.have.iter().any(|&b| b != 0), Bitfield::from_bytes(&s.record.unverified, meta.piece_count()))
    };
    let inner = shared.lock();
    let start = match () {
        () if recheck => Start::Recheck,
        () if storage.read_only => Start::ReadOnly { have: inner.have() },
        () if !had_record => Start::Fresh,
        () => Start::FromRecord { have: inner.have() },
    };
    let plan = plan_check(start, storage.layout(), survey, candidates.as_ref());
    storage.flush_before_claiming(plan.sync_first);
    plan.hash
}

/// All pieces on a recheck; for a torrent without a record, those touching
/// files that already held data (synced first: a copy or a crashed run may
/// have left them in the page cache only); otherwise the claimed pieces of
/// files that were missing, short or replaced. Plus, always, the
/// `candidates`: pieces the last run wrote but may not have flushed.
fn plan_check(
    start: Start<'_>,
    layout: &Layout,
    survey: &storage::DiskSurvey,
    candidates: Option<&Bitfield>,
) -> ToCheck {
    let pieces = layout.piece_count();
    let mut hash = BTreeSet::new();
    let mut sync_first = Vec::new();
    match start {
        Start::Recheck => hash.extend(0..pieces),
        Start::ReadOnly { have } => hash.extend((0..pieces).filter(|&p| !have.get(p))),
        Start::Fresh => {
            sync_first.extend(survey.existing_files.iter().flat_map(|&f| layout.pieces_of_file(f)));
            hash.extend(sync_first.iter().copied());
        }
        Start::FromRecord { have } => {
            for &f in survey.short_files.iter().chain(&survey.replaced_files) {
                hash.extend(layout.pieces_of_file(f).filter(|&p| have.get(p)));
            }
        }
    }
    if let Some(c) = candidates {
        // Never written by this run either.
        sync_first.extend(c.iter_ones());
        hash.extend(c.iter_ones());
    }
    ToCheck { hash: hash.into_iter().collect(), sync_first }
}

/// What a check found.
#[derive(Default)]
struct Checked {
    good: usize,
    /// The first piece that could not be read (a file cut short or gone, an
    /// I/O error): the check goes on, then the torrent errs with this.
    first_error: Option<String>,
}

/// Hashes pieces on the disk pool, a bounded number at a time. Each result is
/// recorded as it comes; a piece that cannot be read counts as missing.
async fn hash_pieces(shared: &Arc<TorrentShared>, storage: &Arc<TorrentStorage>, mut to_check: Vec<usize>) -> Checked {
    let disk = shared.env.disk();
    let parallel = disk.threads() * 2;
    let mut jobs = JoinSet::new();
    let mut checked = Checked::default();
    to_check.reverse();
    loop {
        while jobs.len() < parallel {
            let Some(p) = to_check.pop() else { break };
            let (m, s, disk) = (shared.meta.clone(), storage.clone(), disk.clone());
            jobs.spawn(
                async move {
                    let result = disk.run(move || piece_matches(&m, &s, p).map_err(|e| e.to_string())).await;
                    (p, result.unwrap_or(Ok(false)))
                }
                .in_current_span(),
            );
        }
        let Some(done) = jobs.join_next().await else {
            return checked;
        };
        let Ok((p, result)) = done else { continue };
        let len = shared.meta.piece_len(p);
        let mut inner = shared.lock();
        match result {
            Ok(true) => {
                checked.good += 1;
                inner.mark_verified(p as u32, len, Instant::now());
            }
            Ok(false) => inner.mark_lost(p as u32, len),
            Err(e) => {
                inner.mark_lost(p as u32, len);
                checked.first_error.get_or_insert_with(|| format!("checking piece {p}: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files of 20, 12 and 32 bytes in pieces of 16: file 0 is in pieces 0
    /// and 1, file 1 in piece 1, file 2 in pieces 2 and 3.
    fn layout() -> Layout {
        Layout::from_parts(&[(20, false), (12, false), (32, false)], 16)
    }

    #[test]
    fn a_fresh_add_syncs_the_data_it_finds_before_claiming_it() {
        let survey = storage::DiskSurvey { existing_files: vec![0, 2], ..Default::default() };
        let plan = plan_check(Start::Fresh, &layout(), &survey, None);
        assert_eq!(plan.hash, vec![0, 1, 2, 3]);
        assert_eq!(plan.sync_first, vec![0, 1, 2, 3], "someone else's data may be in the page cache only");
    }

    #[test]
    fn a_start_from_a_record_hashes_only_claimed_pieces_of_changed_files_and_syncs_only_candidates() {
        let mut have = Bitfield::new(4);
        [0, 2].iter().for_each(|&p| {
            have.set(p);
        });
        let mut candidates = Bitfield::new(4);
        candidates.set(3);
        let survey = storage::DiskSurvey { existing_files: vec![0, 1, 2], short_files: vec![2], ..Default::default() };
        let plan = plan_check(Start::FromRecord { have: &have }, &layout(), &survey, Some(&candidates));
        assert_eq!(plan.hash, vec![2, 3], "file 2's claimed piece, and the candidate");
        assert_eq!(plan.sync_first, vec![3]);
        let plan = plan_check(Start::ReadOnly { have: &have }, &layout(), &survey, None);
        assert_eq!(plan.hash, vec![1, 3], "shared data: every piece not verified here");
        assert!(plan.sync_first.is_empty(), "shared data is never written, nor synced");
        assert_eq!(plan_check(Start::Recheck, &layout(), &survey, None).hash, vec![0, 1, 2, 3]);
    }
}
