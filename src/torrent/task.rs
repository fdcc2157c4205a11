//! The torrent task: drives one torrent through its phases (`phase.rs`) and
//! owns whatever a phase runs (the hash check, the active phase's peers,
//! tracker task and DHT lookups), stopping it before the next phase begins.
//!
//! Each phase is an async function that returns the [`Outcome`] that ended
//! it, or `None` when the torrent is cancelled (removed, or the session
//! stops); [`phase::next`] decides where to go from there.

use super::active;
use super::phase::{self, Next, Outcome, Phase};
use super::prepare::{prepare, Stop};
use super::queue::Slot;
use super::TorrentShared;
use crate::conn::Transport;
use crate::resume::Hold;
use crate::tracker::TransferCounters;
use crate::types::human_duration;
use crate::wire::Handshake;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ERROR_RETRY: Duration = Duration::from_secs(60);

/// A command to a torrent's task. Boxed payloads keep it small: every
/// torrent's channel holds a block of 32 of them from the start.
pub enum Cmd {
    Pause,
    Resume,
    Recheck,
    /// Move the complete data to this place (the API's `setLocation`):
    /// see `relocate.rs`.
    Relocate(Box<crate::storage::Place>),
    Incoming(Box<(Transport, SocketAddr, Handshake)>),
    /// Something the active phase weighs at its ticks changed (the
    /// torrent's share limits): tick now, not at the next idle tick.
    Wake,
}

/// What the session learns when a torrent task ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Cancelled,
    RemoveRequested,
}

impl TransferCounters for TorrentShared {
    fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }
    fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }
    fn corrupt(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }
    fn left(&self) -> u64 {
        TorrentShared::left(self)
    }
    fn persist(self: Arc<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.save_resume(false).await;
        })
    }
}

/// The commands a phase waits on, and the cancellation that ends them all.
pub(super) struct Control<'a> {
    pub cmds: &'a mut flume::Receiver<Cmd>,
    pub cancel: &'a CancellationToken,
    /// Set when the user asks for a recheck (the torrent's flag).
    pub recheck_asked: &'a std::sync::atomic::AtomicBool,
}

impl Control<'_> {
    /// The next command as an outcome; `Err(())` when cancelled. Incoming
    /// connections are handed back for the active phase (others drop them).
    pub async fn next(&mut self) -> Result<Command, ()> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(()),
            cmd = self.cmds.recv_async() => Ok(match cmd.map_err(|_| ())? {
                Cmd::Pause => Command::Outcome(Outcome::Paused),
                Cmd::Resume => Command::Outcome(Outcome::Resumed),
                Cmd::Recheck => {
                    self.recheck_asked.store(true, Ordering::Relaxed);
                    Command::Outcome(Outcome::RecheckAsked)
                }
                Cmd::Relocate(target) => Command::Outcome(Outcome::Relocate(*target)),
                Cmd::Incoming(incoming) => {
                    let (t, addr, hs) = *incoming;
                    Command::Incoming(t, addr, hs)
                }
                Cmd::Wake => Command::Wake,
            }),
        }
    }
}

pub(super) enum Command {
    Outcome(Outcome),
    Incoming(Transport, SocketAddr, Handshake),
    /// Tick now (only the active phase ticks).
    Wake,
}

pub async fn run(shared: Arc<TorrentShared>, mut cmds: flume::Receiver<Cmd>, cancel: CancellationToken) -> Exit {
    let mut phase = shared.status_cell().phase.clone();
    let mut slot: Option<Slot> = None;
    let mut ctl = Control { cmds: &mut cmds, cancel: &cancel, recheck_asked: &shared.recheck_asked };
    loop {
        if matches!(phase, Phase::Held { .. }) {
            Box::pin(shared.save_resume(true)).await;
        }
        // What runs seldom is boxed while it runs (here and in `active`):
        // ten thousand idle torrents each keep only their waiting.
        let outcome = match &phase {
            Phase::Held { .. } => held(&mut ctl).await,
            Phase::Preparing { recheck } => Box::pin(preparing(&shared, *recheck, &mut ctl)).await,
            Phase::Queued => queued(&shared, &mut ctl, &mut slot).await,
            Phase::Active => active::run(&shared, &mut ctl, &mut slot).await,
            Phase::Errored { .. } => errored(&mut ctl, !unproven(&shared)).await,
            Phase::Missing { .. } => held(&mut ctl).await,
        };
        let Some(outcome) = outcome else {
            return Exit::Cancelled;
        };
        log_outcome(&shared, &phase, &outcome);
        match outcome {
            Outcome::Prepared { complete: true } => shared.env.queue().leave(&shared.meta.info_hash),
            Outcome::Stalled => shared.env.queue().yielded(shared.meta.info_hash),
            _ => {}
        }
        if let Outcome::Relocate(target) = &outcome {
            // The phase that met it has ended: no peer reads the files.
            if Box::pin(super::relocate::move_now(&shared, target.clone(), ctl.cancel)).await.is_none() {
                return Exit::Cancelled;
            }
        }
        if outcome == Outcome::Resumed {
            // Resumed by hand: the idle limit counts from now.
            shared.status_cell().record.seed_idle_secs = 0;
        }
        let action = shared.env.config().seeding.action;
        phase = match phase::next(&phase, outcome, action) {
            Next::Phase(p) => p,
            Next::Remove => {
                shared.set_phase(Phase::Held { hold: Hold::Stopped, recheck: false });
                Box::pin(shared.save_resume(true)).await;
                return Exit::RemoveRequested;
            }
        };
        if phase != Phase::Active {
            slot = None;
        }
        let was_held = matches!(shared.status_cell().phase, Phase::Held { .. });
        shared.set_phase(phase.clone());
        if was_held {
            // Leaving a hold is persisted at once, or a restart would find it held.
            Box::pin(shared.save_resume(false)).await;
        }
    }
}

fn log_outcome(shared: &TorrentShared, phase: &Phase, outcome: &Outcome) {
    let name = shared.name();
    match (phase, outcome) {
        (Phase::Held { .. } | Phase::Missing { .. }, Outcome::Resumed) => tracing::info!(torrent = %name, "resumed"),
        (Phase::Held { .. }, _) => {}
        (_, Outcome::Paused) => tracing::info!(torrent = %name, "paused"),
        (_, Outcome::DataMissing(e)) => tracing::warn!(torrent = %name, error = %e,
            "data missing; waiting for the user (resume once it is back, or recheck to download it again)"),
        (_, Outcome::PrepareFailed(e)) if unproven(shared) => tracing::warn!(torrent = %name, error = %e,
            "cannot seed this data: not retried (resume or recheck it once the data is right)"),
        (_, Outcome::PrepareFailed(e)) => {
            tracing::warn!(torrent = %name, error = %e, "cannot start; retrying in 60s")
        }
        (_, Outcome::MoveFailed(e)) => {
            tracing::warn!(torrent = %name, error = %e, "cannot move to the complete folder; the data stays where it is, retrying in 60s")
        }
        (_, Outcome::DiskFailed(e)) => {
            tracing::warn!(torrent = %name, error = %e, "disk trouble; torrent in error, retrying in 60s")
        }
        (_, Outcome::Stalled) => {
            tracing::info!(torrent = %name, "no data; yielding the download slot to a queued torrent")
        }
        _ => {}
    }
}

/// Paused or stopped: waits for a command.
async fn held(ctl: &mut Control<'_>) -> Option<Outcome> {
    loop {
        if let Command::Outcome(o) = ctl.next().await.ok()? {
            return Some(o);
        }
    }
}

/// The hash check runs until done, a pause, a recheck request (which starts
/// a full check) or cancellation; dropping it stops its hashing at once.
async fn preparing(shared: &Arc<TorrentShared>, recheck: bool, ctl: &mut Control<'_>) -> Option<Outcome> {
    let work = prepare(shared, recheck);
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => return Some(match r {
                Ok(()) => Outcome::Prepared { complete: shared.is_complete() },
                Err(Stop::Failed(message)) => Outcome::PrepareFailed(message),
                Err(Stop::Missing(message)) => Outcome::DataMissing(message),
            }),
            cmd = ctl.next() => match cmd.ok()? {
                Command::Outcome(Outcome::Paused) => return Some(Outcome::Paused),
                Command::Outcome(Outcome::RecheckAsked) if !recheck => return Some(Outcome::RecheckAsked),
                _ => {}
            },
        }
    }
}

/// Waits for a download slot (`limits.max_active_downloads`).
async fn queued(shared: &TorrentShared, ctl: &mut Control<'_>, slot: &mut Option<Slot>) -> Option<Outcome> {
    let _waiting = QueuedGuard::new(shared.env.queued());
    loop {
        tokio::select! {
            permit = shared.env.queue().acquire(shared.meta.info_hash) => {
                *slot = Some(permit);
                return Some(Outcome::GotSlot);
            }
            cmd = ctl.next() => if let Command::Outcome(o @ (Outcome::Paused | Outcome::RecheckAsked)) = cmd.ok()? {
                return Some(o);
            },
        }
    }
}

/// In error: tries again after a while, or when the user says so.
/// A torrent seeding data it does not own whose pieces did not all verify:
/// trying again would hash the whole torrent again, every minute, to the
/// same end, so only the user (resume, recheck) makes it look again.
fn unproven(shared: &TorrentShared) -> bool {
    shared.status.lock().unwrap().record.borrowed && !shared.is_complete()
}

/// In error: retried after [`ERROR_RETRY`] (`retry`), or on a command.
async fn errored(ctl: &mut Control<'_>, retry: bool) -> Option<Outcome> {
    let retry = async move {
        match retry {
            true => tokio::time::sleep(ERROR_RETRY).await,
            false => std::future::pending().await,
        }
    };
    tokio::pin!(retry);
    loop {
        tokio::select! {
            _ = &mut retry => return Some(Outcome::RetryDue),
            cmd = ctl.next() => if let Command::Outcome(o) = cmd.ok()? {
                return Some(o);
            },
        }
    }
}

/// Counts a torrent as waiting for a download slot while it lives.
struct QueuedGuard<'a>(&'a AtomicUsize);

impl<'a> QueuedGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> QueuedGuard<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        QueuedGuard(counter)
    }
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a seeding torrent should stop, if it should: the limit reached,
/// named (its own from the API, else its category's or `[seeding]`).
pub(super) fn limit_reached(shared: &TorrentShared) -> Option<String> {
    let (limits, seeded, idle) = {
        let s = shared.status_cell();
        (shared.limits_of(&s.record), s.record.seeding_secs, s.record.seed_idle_secs)
    };
    let whose = |own: crate::share::ShareLimit| match own {
        crate::share::ShareLimit::At(_) => "the torrent's own",
        _ => "the configured",
    };
    let (own, limits) = (limits.own, limits.effective);
    if let Some(max) = limits.ratio {
        let up = shared.uploaded.load(Ordering::Relaxed) as f64;
        let down = shared.downloaded.load(Ordering::Relaxed);
        let base = if down > 0 { down } else { shared.meta.total_length } as f64;
        if up / base >= max {
            return Some(format!("ratio {:.2} >= {max} ({} ratio limit)", up / base, whose(own.ratio_milli)));
        }
    }
    if limits.seeding_secs.is_some_and(|max| seeded >= max) {
        return Some(format!(
            "seeded for {} ({} seeding time limit)",
            human_duration(seeded),
            whose(own.seeding_minutes)
        ));
    }
    limits.idle_secs.filter(|max| idle >= *max).map(|_| {
        format!(
            "nothing uploaded for {} ({} inactive seeding time limit)",
            human_duration(idle),
            whose(own.inactive_minutes)
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_command_is_small() {
        // Each torrent's command channel keeps room for a few of them once
        // it has carried one.
        assert!(std::mem::size_of::<super::Cmd>() <= 16, "{}", std::mem::size_of::<super::Cmd>());
    }

    /// The size of what `f` returns, without calling it.
    fn returned<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_idle_torrent_task_is_small() {
        // Every torrent keeps one: what runs seldom (checks, moves, saves,
        // ticks) is boxed while it runs, so only the waiting is kept.
        // 2,440 bytes (debug build) before that.
        let size = returned(super::run);
        assert!(size <= 2000, "{size}");
    }
}
