//! The `Preparing` phase's work: check free space, open (create) the files,
//! and hash whatever pieces the disk may hold that the resume record does
//! not vouch for (every piece on a recheck).
//!
//! The future may be dropped at any await (pause, remove, shutdown): every
//! piece's result is applied on its own, so a check cut short leaves each
//! piece either as the record had it or as the check found it.

use super::{piece_matches, TorrentShared};
use crate::storage::{self, TorrentStorage};
use crate::types::{human_bytes, Bitfield};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

pub async fn prepare(shared: &Arc<TorrentShared>, recheck: bool) -> Result<(), String> {
    let survey = check_space(shared).await?;
    let storage = open_storage(shared, &survey).await?;
    let to_check = pieces_to_check(shared, &storage, &survey, recheck);
    if to_check.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let total = to_check.len();
    let Checked { good, first_error } = hash_pieces(shared, &storage, to_check).await;
    let count = shared.inner.lock().unwrap().have.count();
    shared.have_tx.send_replace(count);
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
    first_error.map_or(Ok(()), Err)
}

/// Surveys the files and refuses to start without room for what is missing.
async fn check_space(shared: &TorrentShared) -> Result<storage::DiskSurvey, String> {
    let (meta, dir) = (shared.meta.clone(), shared.env.download_dir.clone());
    let (survey, free) = shared
        .env
        .disk
        .run(move || (storage::survey(&dir, &meta), storage::free_space(&dir).map_err(|e| (dir, e))))
        .await
        .map_err(|e| e.to_string())?;
    let free = free.map_err(|(dir, e)| format!("cannot read free space of {}: {e}", dir.display()))?;
    if survey.bytes_needed > free {
        return Err(format!(
            "not enough disk space in {}: {} needed, {} free",
            shared.env.download_dir.display(),
            human_bytes(survey.bytes_needed),
            human_bytes(free)
        ));
    }
    Ok(survey)
}

/// Opens the files, or, when they are open already, makes whole again those
/// found missing or short (truncated or deleted behind our back).
async fn open_storage(shared: &TorrentShared, survey: &storage::DiskSurvey) -> Result<Arc<TorrentStorage>, String> {
    let env = &shared.env;
    if let Some(s) = shared.storage() {
        if survey.short_files.is_empty() {
            return Ok(s.clone());
        }
        let (s, meta, dir, short) =
            (s.clone(), shared.meta.clone(), env.download_dir.clone(), survey.short_files.clone());
        return env
            .disk
            .run(move || s.restore_files(&dir, &meta, &short).map(|()| s).map_err(|e| (dir, e)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|(dir, e)| format!("cannot restore files in {}: {e}", dir.display()));
    }
    let (meta, dir, kind) = (shared.meta.clone(), env.download_dir.clone(), env.config().storage.backend);
    let storage = env
        .disk
        .run(move || TorrentStorage::open(&dir, &meta, kind).map_err(|e| (dir, e)))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|(dir, e)| format!("cannot create files in {}: {e}", dir.display()))?;
    Ok(shared.storage.get_or_init(|| Arc::new(storage)).clone())
}

/// All pieces on a recheck; for a torrent without a record, those touching
/// files that already held data; otherwise the claimed pieces of files that
/// were missing or short. Plus, always, pieces written but not flushed
/// before a crash.
fn pieces_to_check(
    shared: &TorrentShared,
    storage: &TorrentStorage,
    survey: &storage::DiskSurvey,
    recheck: bool,
) -> Vec<usize> {
    let meta = &shared.meta;
    let (had_record, candidates) = {
        let s = shared.status.lock().unwrap();
        (s.record.have.iter().any(|&b| b != 0), Bitfield::from_bytes(&s.record.unverified, meta.piece_count()))
    };
    let inner = shared.inner.lock().unwrap();
    let layout = storage.layout();
    let mut set = BTreeSet::new();
    if recheck {
        set.extend(0..meta.piece_count());
    } else if !had_record {
        for &f in &survey.existing_files {
            set.extend(layout.pieces_of_file(f));
        }
    } else {
        for &f in &survey.short_files {
            set.extend(layout.pieces_of_file(f).filter(|&p| inner.have.get(p)));
        }
    }
    if let Some(c) = &candidates {
        set.extend(c.iter_ones());
    }
    set.into_iter().collect()
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
    let disk = &shared.env.disk;
    let parallel = disk.threads() * 2;
    let mut jobs = JoinSet::new();
    let mut checked = Checked::default();
    to_check.reverse();
    loop {
        while jobs.len() < parallel {
            let Some(p) = to_check.pop() else { break };
            let (m, s, disk) = (shared.meta.clone(), storage.clone(), disk.clone());
            jobs.spawn(async move {
                let result = disk.run(move || piece_matches(&m, &s, p).map_err(|e| e.to_string())).await;
                (p, result.unwrap_or(Ok(false)))
            });
        }
        let Some(done) = jobs.join_next().await else {
            return checked;
        };
        let Ok((p, result)) = done else { continue };
        let len = shared.meta.piece_len(p);
        let mut inner = shared.inner.lock().unwrap();
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
