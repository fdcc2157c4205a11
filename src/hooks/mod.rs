//! Completion hooks: programs the user configures to run when a torrent is
//! added, completes, or reaches a seeding limit (`[hooks]` in the config).
//!
//! They run off the engine. [`HookRunner::fire`] never waits: it builds the
//! command line (`argv.rs`) and puts the job in a bounded queue
//! ([`QUEUE_LEN`]; when full, the job is dropped with a WARN). One dispatcher
//! task starts at most `hooks.max_running` jobs at once, each in a task of
//! its own (`run.rs`) that logs its output and exit status and kills its
//! process group at `hooks.timeout`. The dispatcher and the jobs are tracked
//! by the session's `TaskTracker` and stop with its cancellation: queued jobs
//! are dropped, running ones get [`run::SHUTDOWN_GRACE`] to finish before
//! they are killed. A hook's failure never reaches a torrent.

pub mod argv;
mod run;

pub use argv::{check_command, Facts};

use crate::config::Config;
use crate::types::printable;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Hooks waiting for a free slot, at most; more are dropped with a WARN.
pub const QUEUE_LEN: usize = 100;

/// The moments a hook can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    /// A torrent or magnet was added (not restored at startup).
    Added,
    /// A download finished here.
    Complete,
    /// A seeding limit was reached.
    SeedingDone,
}

impl HookEvent {
    pub const ALL: [HookEvent; 3] = [HookEvent::Added, HookEvent::Complete, HookEvent::SeedingDone];

    /// The config key, also the hook's name in logs.
    pub fn key(self) -> &'static str {
        match self {
            HookEvent::Added => "on_added",
            HookEvent::Complete => "on_complete",
            HookEvent::SeedingDone => "on_seeding_done",
        }
    }

    /// The key in the global section, as errors name it.
    pub fn global_key(self) -> &'static str {
        match self {
            HookEvent::Added => "hooks.on_added",
            HookEvent::Complete => "hooks.on_complete",
            HookEvent::SeedingDone => "hooks.on_seeding_done",
        }
    }

    /// `DROPSEED_EVENT`.
    pub fn env_value(self) -> &'static str {
        match self {
            HookEvent::Added => "added",
            HookEvent::Complete => "complete",
            HookEvent::SeedingDone => "seeding_done",
        }
    }
}

/// The session's handle for running hooks.
pub struct HookRunner {
    queue: mpsc::Sender<run::Job>,
}

impl HookRunner {
    /// Starts the dispatcher under `tasks`; it and every hook stop on `cancel`.
    pub fn start(max_running: usize, tasks: &TaskTracker, cancel: CancellationToken) -> HookRunner {
        let (queue, jobs) = mpsc::channel(QUEUE_LEN);
        tasks.spawn(dispatch(jobs, max_running.max(1), tasks.clone(), cancel));
        HookRunner { queue }
    }

    /// Runs the hook `config` sets for `event`, if any, without waiting.
    pub fn fire(&self, config: &Config, event: HookEvent, facts: Facts) {
        let Some(template) = config.hooks.commands.get(event).filter(|t| !t.is_empty()) else {
            return;
        };
        let job = run::Job {
            event,
            torrent: printable(&facts.name, 200),
            argv: argv::argv(template, &facts),
            env: argv::env(event, &facts),
            timeout: Duration::from_secs(config.hooks.timeout.0),
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => tracing::warn!(
                torrent = %job.torrent,
                hook = %event.key(),
                "hook not run: {QUEUE_LEN} hooks are already waiting behind the {} running (hooks.max_running)",
                config.hooks.max_running
            ),
            Err(mpsc::error::TrySendError::Closed(job)) => {
                tracing::debug!(torrent = %job.torrent, hook = %event.key(), "hook not run: dropseed is stopping")
            }
        }
    }
}

/// Starts queued jobs as slots free up, until cancelled; then drops what
/// is still queued (running jobs see the same cancellation).
async fn dispatch(
    mut jobs: mpsc::Receiver<run::Job>,
    max_running: usize,
    tasks: TaskTracker,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_running));
    loop {
        let slot = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let job = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        let cancel = cancel.clone();
        tasks.spawn(async move {
            run::run(job, cancel).await;
            drop(slot);
        });
    }
    jobs.close();
    let mut dropped = 0;
    while jobs.try_recv().is_ok() {
        dropped += 1;
    }
    if dropped > 0 {
        tracing::info!(dropped, "queued hooks not run: dropseed is stopping");
    }
}
