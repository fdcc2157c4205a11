//! `dropseed download`: one torrent fetched in the foreground, no daemon
//! needed. An ephemeral in-process [`Session`] writes the files to the
//! output folder and keeps its state (resume records) in a hidden folder
//! there, [`STATE_DIR`], so a run cut short (Ctrl-C, a crash) resumes from
//! what is on disk; the folder is removed once the files are verified (and
//! seeded to the limit asked). It is also the fair way to compare dropseed
//! with `aria2c` or `rqbit download` one to one.

use crate::config::{Config, LimitAction};
use crate::session::{AddOutcome, Session};
use crate::torrent::{TorrentState, TorrentStatus};
use crate::types::{human_bytes, human_duration, printable, InfoHash};
use crate::watch::Parsed;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The hidden folder under the output folder holding the session's state.
pub const STATE_DIR: &str = ".dropseed-download";
/// How often a line is printed when the output is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Options {
    /// A magnet URI, a 40-digit info hash or a `.torrent`/`.magnet` file.
    pub source: String,
    pub dir: PathBuf,
    pub seed_ratio: Option<f64>,
    pub seed_time: Option<Duration>,
    pub timeout: Option<Duration>,
    /// Where the progress goes: a terminal gets one line redrawn.
    pub tty: bool,
}

/// How a download ended; [`Outcome::exit_code`] is the process's.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Done {
        name: String,
    },
    Interrupted,
    TimedOut(Duration),
    /// Bad input, or the torrent failed (its error).
    Failed(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Done { .. } => 0,
            Outcome::Failed(_) => 1,
            Outcome::TimedOut(_) => 3,
            Outcome::Interrupted => 130,
        }
    }
}

/// The session's config: the base (defaults or `-c`) with its paths under
/// `dir`, an OS-chosen port, and the seeding limits asked (stop at them).
pub fn config_for(base: &Config, opts: &Options) -> Config {
    let mut c = base.clone();
    let state = opts.dir.join(STATE_DIR);
    c.paths.download_dir = opts.dir.clone();
    c.paths.incomplete_dir = PathBuf::new();
    c.paths.state_dir = state.clone();
    c.paths.watch_dir = state.join("watch");
    c.paths.log_dir = state.join("logs");
    c.network.listen_port = 0;
    c.categories.clear();
    c.hooks.commands = Default::default();
    c.seeding.ratio_limit = opts.seed_ratio.unwrap_or(0.0);
    c.seeding.seed_time_limit = crate::config::Span(opts.seed_time.map_or(0, |d| d.as_secs()));
    c.seeding.idle_seed_limit = crate::config::Span(0);
    c.seeding.action = LimitAction::Stop;
    c
}

/// What the source names, parsed off the runtime (a file read may block).
enum Source {
    Torrent(Box<crate::metainfo::Metainfo>),
    Magnet(crate::magnet::Magnet),
}

fn parse_source(source: &str) -> Result<Source, String> {
    let s = source.trim();
    if s.starts_with("magnet:") || InfoHash::parse(s).is_some() {
        return crate::magnet::Magnet::parse(s).map(Source::Magnet);
    }
    let shown = printable(s, 300);
    match crate::watch::parse_file(Path::new(s)).map_err(|e| format!("{shown}: {e}"))? {
        Parsed::Torrent(meta) => Ok(Source::Torrent(meta)),
        Parsed::Magnets(mut list) if list.len() == 1 => Ok(Source::Magnet(list.remove(0))),
        Parsed::Magnets(list) => Err(format!("{shown}: holds {} magnets; download takes one", list.len())),
    }
}

/// Runs the download until it is done, times out, fails or `stop` resolves.
pub async fn run(base: &Config, opts: Options, stop: impl std::future::Future<Output = ()>) -> Outcome {
    let src = opts.source.clone();
    let source = match tokio::task::spawn_blocking(move || parse_source(&src)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Outcome::Failed(e),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let config = config_for(base, &opts);
    if let Err((key, why)) = config.validate() {
        return Outcome::Failed(format!("{key}: {why}"));
    }
    let session = match Session::start(Arc::new(config)).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("cannot start: {e}")),
    };
    let outcome = match add(&session, source).await {
        Ok(hash) => follow(&session, hash, &opts, stop).await,
        Err(e) => Outcome::Failed(e),
    };
    session.shutdown().await;
    if let Outcome::Done { .. } = outcome {
        // Verified and seeded as asked: nothing is left to resume.
        let state = opts.dir.join(STATE_DIR);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(state)).await;
    }
    outcome
}

async fn add(session: &Arc<Session>, source: Source) -> Result<InfoHash, String> {
    let (hash, outcome) = match source {
        Source::Torrent(meta) => (meta.info_hash, session.add_metainfo(*meta).await),
        Source::Magnet(m) => (m.info_hash, session.add_magnet(m).await),
    };
    match outcome.map_err(|e| e.to_string())? {
        // Already there: restored from the state folder of an earlier run.
        AddOutcome::Added | AddOutcome::AlreadyManaged => Ok(hash),
        AddOutcome::Refused(why) => Err(why.to_string()),
    }
}

/// What the torrent's status means for the download.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Going,
    Done,
    Failed(String),
}

/// Done once verified; with a seeding limit, once it stopped at it.
pub fn verdict(s: &TorrentStatus, seeding_limit: bool) -> Verdict {
    match s.state {
        TorrentState::Error | TorrentState::Missing => {
            Verdict::Failed(s.error.as_deref().map_or_else(|| s.state.as_str().to_string(), |e| printable(e, 500)))
        }
        TorrentState::Seeding if !seeding_limit => Verdict::Done,
        TorrentState::Stopped if s.progress >= 1.0 => Verdict::Done,
        _ => Verdict::Going,
    }
}

/// One line of progress: percent, bytes, rates, peers, ETA.
pub fn progress_line(s: &TorrentStatus) -> String {
    let done = (s.progress * s.size as f64) as u64;
    let eta = s.eta_secs.map_or("-".to_string(), human_duration);
    format!(
        "{} {:5.1}% {}/{} down {}/s up {}/s peers {} ({} seeds) ratio {:.2} ETA {eta} {}",
        s.state.as_str(),
        s.progress * 100.0,
        human_bytes(done),
        human_bytes(s.size),
        human_bytes(s.download_rate),
        human_bytes(s.upload_rate),
        s.peers,
        s.seeds,
        s.ratio.max(0.0),
        printable(&s.name, 60),
    )
}

async fn follow(
    session: &Arc<Session>,
    hash: InfoHash,
    opts: &Options,
    stop: impl std::future::Future<Output = ()>,
) -> Outcome {
    let limited = opts.seed_ratio.is_some_and(|r| r > 0.0) || opts.seed_time.is_some_and(|t| !t.is_zero());
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_plain: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => {
                end_line(opts.tty);
                return Outcome::Interrupted;
            }
            _ = tick.tick() => {}
        }
        let Some(status) = session.status_of(&hash) else { continue };
        match verdict(&status, limited) {
            Verdict::Done => {
                end_line(opts.tty);
                println!("{}", progress_line(&status));
                return Outcome::Done { name: printable(&status.name, 300) };
            }
            Verdict::Failed(why) => {
                end_line(opts.tty);
                return Outcome::Failed(why);
            }
            Verdict::Going => {}
        }
        if opts.tty {
            use std::io::Write;
            // Redrawn in place: carriage return, the line, clear to its end.
            print!("\r{}\x1b[K", progress_line(&status));
            let _ = std::io::stdout().flush();
        } else if last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            println!("{}", progress_line(&status));
            last_plain = Some(Instant::now());
        }
        if let (Some(d), Some(t)) = (deadline, opts.timeout) {
            if Instant::now() >= d {
                end_line(opts.tty);
                return Outcome::TimedOut(t);
            }
        }
    }
}

fn end_line(tty: bool) {
    if tty {
        println!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, progress: f64) -> TorrentStatus {
        serde_json::from_value(serde_json::json!({
            "info_hash": "a".repeat(40), "name": "film\u{1b}.mkv", "state": state, "progress": progress,
            "size": 2048, "downloaded": 0, "uploaded": 0, "download_rate": 1024, "upload_rate": 0,
            "peers": 3, "seeds": 1, "ratio": 0.0, "eta_secs": 1, "error": null,
        }))
        .unwrap()
    }

    #[test]
    fn done_when_verified_or_when_stopped_at_the_seeding_limit() {
        assert_eq!(verdict(&status("downloading", 0.5), false), Verdict::Going);
        assert_eq!(verdict(&status("checking", 1.0), false), Verdict::Going);
        assert_eq!(verdict(&status("moving", 1.0), false), Verdict::Going);
        assert_eq!(verdict(&status("seeding", 1.0), false), Verdict::Done);
        assert_eq!(verdict(&status("seeding", 1.0), true), Verdict::Going);
        assert_eq!(verdict(&status("stopped", 1.0), true), Verdict::Done);
        let mut e = status("error", 0.5);
        e.error = Some("disk full\n".into());
        assert_eq!(verdict(&e, false), Verdict::Failed("disk full?".into()));
    }

    #[test]
    fn the_progress_line_has_rate_eta_and_a_printable_name() {
        let line = progress_line(&status("downloading", 0.5));
        assert!(line.contains(" 50.0% 1.0KiB/2.0KiB down 1.0KiB/s"), "{line}");
        assert!(line.contains("ETA 1s") && line.contains("film?.mkv"), "{line}");
    }

    #[test]
    fn the_session_lives_under_the_output_folder() {
        let opts = Options {
            source: String::new(),
            dir: PathBuf::from("/out"),
            seed_ratio: Some(1.5),
            seed_time: None,
            timeout: None,
            tty: false,
        };
        let c = config_for(&Config::default(), &opts);
        assert_eq!(c.paths.download_dir, Path::new("/out"));
        assert_eq!(c.paths.state_dir, Path::new("/out").join(STATE_DIR));
        assert!(c.paths.incomplete_dir.as_os_str().is_empty());
        assert_eq!((c.network.listen_port, c.seeding.ratio_limit), (0, 1.5));
        c.validate().unwrap();
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Outcome::Done { name: String::new() }.exit_code(), 0);
        assert_eq!(Outcome::Failed(String::new()).exit_code(), 1);
        assert_eq!(Outcome::TimedOut(Duration::ZERO).exit_code(), 3);
        assert_eq!(Outcome::Interrupted.exit_code(), 130);
    }
}
