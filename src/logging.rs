//! Logging: console (when in the foreground) plus a rolling file in `log_dir`
//! (tracing-appender), keeping `max_files`. For rotating modes the stable
//! name `log_dir/dropseed.log` is a symlink moved to each new file as it is
//! started, so `tail -F dropseed.log` follows across rotations.
//!
//! Lines are logfmt (`logfmt.rs`). The level filter sits behind a reload
//! handle, so SIGHUP can change it.

use crate::config::{Log, Rotation};
use crate::logfmt::{Logfmt, SpanFields};
use crate::wallclock::civil_from_days;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Log lines queued for the writer thread before a logging task waits for
/// it. The queue's slots are all written when it is made, so they are
/// resident from the start: the default, 128,000 lines, took 4 MiB of
/// anonymous memory in an idle daemon; this many take 256 KiB.
const LOG_QUEUE_LINES: usize = 8192;
use tracing_appender::rolling::{RollingFileAppender, Rotation as AppenderRotation};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

pub const STABLE_NAME: &str = "dropseed.log";

pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    _guard: WorkerGuard,
    link: Option<Arc<LinkState>>,
}

impl LogHandle {
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.filter.reload(f).map_err(|e| e.to_string())
    }

    /// Points `dropseed.log` at the current file again (SIGHUP).
    pub fn reopen(&self) {
        if let Some(l) = &self.link {
            l.period.store(i64::MIN, Ordering::Relaxed);
            l.refresh();
        }
    }
}

fn filter_for(level: &str) -> EnvFilter {
    // A bare level applies to dropseed; other crates stay at warn.
    let directive =
        if level.contains('=') || level.contains(',') { level.to_string() } else { format!("warn,dropseed={level}") };
    EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber.
pub fn init(cfg: &Log, log_dir: &Path, console: bool) -> io::Result<LogHandle> {
    std::fs::create_dir_all(log_dir)?;
    let rotation = match cfg.rotation {
        Rotation::Minutely => AppenderRotation::MINUTELY,
        Rotation::Hourly => AppenderRotation::HOURLY,
        Rotation::Daily => AppenderRotation::DAILY,
        Rotation::Never => AppenderRotation::NEVER,
    };
    let mut builder =
        RollingFileAppender::builder().rotation(rotation).filename_prefix("dropseed").filename_suffix("log");
    if cfg.rotation != Rotation::Never {
        builder = builder.max_log_files(cfg.max_files);
    }
    let appender = builder.build(log_dir).map_err(io::Error::other)?;
    let (writer, guard) =
        NonBlockingBuilder::default().lossy(false).buffered_lines_limit(LOG_QUEUE_LINES).finish(appender);
    let link = (cfg.rotation != Rotation::Never).then(|| {
        let l = Arc::new(LinkState {
            dir: log_dir.to_path_buf(),
            rotation: cfg.rotation,
            period: AtomicI64::new(i64::MIN),
        });
        l.refresh();
        l
    });
    let file_writer = LinkedWriter { inner: writer, link: link.clone() };
    let (filter, handle) = reload::Layer::new(filter_for(&cfg.level));
    let file_layer = tracing_subscriber::fmt::layer().event_format(Logfmt).with_ansi(false).with_writer(file_writer);
    // The console shows the same lines as the file (journald keeps them).
    let console_layer = console
        .then(|| tracing_subscriber::fmt::layer().event_format(Logfmt).with_ansi(false).with_writer(std::io::stderr));
    // The recent lines `dropseed top` follows over the control socket.
    let ring_layer =
        tracing_subscriber::fmt::layer().event_format(Logfmt).with_ansi(false).with_writer(crate::logring::RingWriter);
    tracing_subscriber::registry()
        .with(filter)
        .with(SpanFields)
        .with(file_layer)
        .with(console_layer)
        .with(ring_layer)
        .try_init()
        .map_err(io::Error::other)?;
    Ok(LogHandle { filter: handle, _guard: guard, link })
}

/// Logging for a foreground command (`download`): `level` lines (a bare
/// level applies to dropseed) to stderr only, no file.
pub fn init_stderr(level: &str) -> Result<(), String> {
    tracing_subscriber::registry()
        .with(filter_for(level))
        .with(SpanFields)
        .with(tracing_subscriber::fmt::layer().event_format(Logfmt).with_ansi(false).with_writer(std::io::stderr))
        .try_init()
        .map_err(|e| e.to_string())
}

struct LinkState {
    dir: PathBuf,
    rotation: Rotation,
    /// Index of the period the link points into.
    period: AtomicI64,
}

impl LinkState {
    fn period_secs(&self) -> i64 {
        match self.rotation {
            Rotation::Minutely => 60,
            Rotation::Hourly => 3600,
            _ => 86400,
        }
    }

    /// Moves the link when a new period (so a new file) has begun.
    fn refresh(&self) {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let period = now / self.period_secs();
        if self.period.swap(period, Ordering::Relaxed) == period {
            return;
        }
        let name = file_name_for(self.rotation, now);
        let tmp = self.dir.join(".dropseed.log.link");
        let _ = std::fs::remove_file(&tmp);
        if std::os::unix::fs::symlink(&name, &tmp).is_ok() {
            let _ = std::fs::rename(&tmp, self.dir.join(STABLE_NAME));
        }
    }
}

/// The name tracing-appender gives the file of the period containing `unix`.
fn file_name_for(rotation: Rotation, unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(86400));
    let secs = unix.rem_euclid(86400);
    let (hh, mm) = (secs / 3600, secs % 3600 / 60);
    match rotation {
        Rotation::Minutely => format!("dropseed.{y:04}-{m:02}-{d:02}-{hh:02}-{mm:02}.log"),
        Rotation::Hourly => format!("dropseed.{y:04}-{m:02}-{d:02}-{hh:02}.log"),
        Rotation::Daily => format!("dropseed.{y:04}-{m:02}-{d:02}.log"),
        Rotation::Never => STABLE_NAME.to_string(),
    }
}

#[derive(Clone)]
struct LinkedWriter {
    inner: NonBlocking,
    link: Option<Arc<LinkState>>,
}

impl<'a> MakeWriter<'a> for LinkedWriter {
    type Writer = NonBlocking;
    fn make_writer(&'a self) -> NonBlocking {
        if let Some(l) = &self.link {
            l.refresh();
        }
        self.inner.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_match_the_appender() {
        // 2026-11-23 23:20:10 UTC
        let t = 1795476010;
        assert_eq!(file_name_for(Rotation::Daily, t), "dropseed.2026-11-23.log");
        assert_eq!(file_name_for(Rotation::Hourly, t), "dropseed.2026-11-23-23.log");
        assert_eq!(file_name_for(Rotation::Minutely, t), "dropseed.2026-11-23-23-20.log");
    }
}
