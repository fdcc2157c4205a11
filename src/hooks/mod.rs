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

pub use argv::Facts;
use tracing::Instrument;

use crate::config::Config;
use crate::hookcmd::HookEvent;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Hooks waiting for a free slot, at most; more are dropped with a WARN.
pub const QUEUE_LEN: usize = 100;

/// The session's handle for running hooks.
pub struct HookRunner {
    queue: mpsc::Sender<run::Job>,
    max_running: usize,
    counts: Arc<Counts>,
}

/// Hooks started and failed, for `/metrics`.
#[derive(Default)]
struct Counts {
    runs: AtomicU64,
    failures: AtomicU64,
}

/// What [`HookRunner::tally`] answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookTally {
    pub runs: u64,
    /// Exited with another status than 0, timed out, killed, or not started.
    pub failures: u64,
}

/// What became of a hook [`HookRunner::fire`] was asked to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// None is configured for the event.
    NoHook,
    /// Queued; it runs when a slot is free.
    Queued,
    /// Dropped: the queue was full (logged).
    Dropped,
    /// Dropped: dropseed is stopping.
    Stopping,
}

impl HookRunner {
    /// Starts the dispatcher under `tasks`; it and every hook stop on `cancel`.
    pub fn start(max_running: usize, tasks: &TaskTracker, cancel: CancellationToken) -> HookRunner {
        let (queue, jobs) = mpsc::channel(QUEUE_LEN);
        let max_running = max_running.max(1);
        let counts = Arc::new(Counts::default());
        tasks.spawn(dispatch(jobs, max_running, tasks.clone(), cancel, counts.clone()));
        HookRunner { queue, max_running, counts }
    }

    pub fn tally(&self) -> HookTally {
        HookTally {
            runs: self.counts.runs.load(Ordering::Relaxed),
            failures: self.counts.failures.load(Ordering::Relaxed),
        }
    }

    /// Runs the hook `config` sets for `event`, if any, without waiting.
    pub fn fire(&self, config: &Config, event: HookEvent, facts: Facts) -> Fired {
        let Some(template) = config.hook_for(&facts.category, event).filter(|t| !t.is_empty()) else {
            return Fired::NoHook;
        };
        let job = run::Job {
            event,
            argv: argv::argv(template, &facts),
            env: argv::env(event, &facts),
            timeout: Duration::from_secs(config.hooks.timeout.0),
            span: tracing::error_span!("torrent", torrent = %facts.name, hash = %facts.hash.get(..8).unwrap_or_default()),
        };
        match self.queue.try_send(job) {
            Ok(()) => Fired::Queued,
            Err(mpsc::error::TrySendError::Full(job)) => {
                let _in_span = job.span.enter();
                tracing::warn!(
                    hook = %event.key(),
                    "hook not run: {QUEUE_LEN} hooks are already waiting behind the {} running (hooks.max_running)",
                    self.max_running
                );
                Fired::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                let _in_span = job.span.enter();
                tracing::debug!(hook = %event.key(), "hook not run: dropseed is stopping");
                Fired::Stopping
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
    counts: Arc<Counts>,
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
        let (cancel, counts) = (cancel.clone(), counts.clone());
        let span = job.span.clone();
        counts.runs.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(
            async move {
                if !run::run(job, cancel).await {
                    counts.failures.fetch_add(1, Ordering::Relaxed);
                }
                drop(slot);
            }
            .instrument(span),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts { hash: "00".repeat(20), name: "t".into(), path: "/d/t".into(), category: String::new(), size: Some(1) }
    }

    fn config_with(on_added: &[&str], timeout: &str) -> Config {
        let argv: Vec<String> = on_added.iter().map(|a| format!("{a:?}")).collect();
        let text = format!("[hooks]\non_added = [{}]\ntimeout = \"{timeout}\"\n", argv.join(", "));
        Config::parse(&text, std::path::Path::new("t.toml")).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_the_hook_and_stopping_drops_the_queued_ones() {
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let runner = HookRunner::start(1, &tasks, cancel.clone());
        let config = config_with(&["/bin/sleep", "30"], "1m");
        assert_eq!(runner.fire(&Config::default(), HookEvent::Added, facts()), Fired::NoHook);
        // Nothing runs until this task yields: the queue fills up.
        for _ in 0..QUEUE_LEN {
            assert_eq!(runner.fire(&config, HookEvent::Added, facts()), Fired::Queued);
        }
        assert_eq!(runner.fire(&config, HookEvent::Added, facts()), Fired::Dropped);
        cancel.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await.expect("the runner stops");
        assert_eq!(runner.fire(&config, HookEvent::Added, facts()), Fired::Stopping);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_more_than_max_running_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let script = format!("echo start >> '{0}'; sleep 0.3; echo end >> '{0}'", log.display());
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let runner = HookRunner::start(1, &tasks, cancel.clone());
        let config = config_with(&["/bin/sh", "-c", &script], "1m");
        for _ in 0..3 {
            assert_eq!(runner.fire(&config, HookEvent::Added, facts()), Fired::Queued);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() == 6 || tokio::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(text, "start\nend\n".repeat(3), "one at a time");
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runs_and_failures_are_counted() {
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let runner = HookRunner::start(4, &tasks, cancel.clone());
        for argv in [&["/bin/true"][..], &["/bin/false"], &["/nonexistent/hook"]] {
            assert_eq!(runner.fire(&config_with(argv, "1m"), HookEvent::Added, facts()), Fired::Queued);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runner.tally().runs < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stopping waits for the running hooks, which end at once.
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
        assert_eq!(runner.tally(), HookTally { runs: 3, failures: 2 });
    }
}
