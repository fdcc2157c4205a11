//! What the session's commands answer, as data. The session decides; the
//! edges (the control socket's replies and the CLI today, the qBittorrent
//! API next) turn these values into their own words or status codes, so no
//! caller ever has to match on a message's text.
//!
//! `Display` gives the sentences the CLI prints. Names come from `.torrent`
//! files and magnets: they are made printable here, once.

use crate::storage::delete::Deleted;
use crate::torrent::TorrentState;
use crate::types::{printable, InfoHash};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A torrent as a reply names it: its name and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub hash: InfoHash,
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", printable(&self.name, 200), self.hash.short())
    }
}

/// What a pause, resume or recheck did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// A pause reached its hold; a resume, the first state after it
    /// (checking, queued, downloading, metadata...).
    Reached(Named, TorrentState),
    /// A pause of what is already held: nothing was sent.
    AlreadyPaused(Named, TorrentState),
    /// A resume of what is not held: nothing was sent.
    NotPaused(Named, TorrentState),
    /// Sent, but the state had not changed when the wait ran out.
    UnderWay { torrent: Named, state: TorrentState, pausing: bool },
    /// A recheck was sent.
    Rechecking(Named),
    /// Removed by someone else while the command waited.
    RemovedMeanwhile(Named),
}

impl fmt::Display for CommandOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandOutcome::Reached(t, s) => write!(f, "{t}: {}", s.as_str()),
            CommandOutcome::AlreadyPaused(t, s) => write!(f, "{t}: already {}", s.as_str()),
            CommandOutcome::NotPaused(t, s) => write!(f, "{t}: not paused ({})", s.as_str()),
            CommandOutcome::UnderWay { torrent, state, pausing } => {
                let what = if *pausing { "pause" } else { "resume" };
                write!(f, "{torrent}: still {}; the {what} is under way", state.as_str())
            }
            CommandOutcome::Rechecking(t) => write!(f, "{t}: rechecking"),
            CommandOutcome::RemovedMeanwhile(t) => write!(f, "{t}: removed meanwhile"),
        }
    }
}

/// What a removal did.
#[derive(Debug)]
pub struct Removed {
    pub torrent: Named,
    /// The data was deleted too (`--delete-data`).
    pub data_deleted: bool,
    /// With `data_deleted`: the files not proven the torrent's, kept.
    pub kept: Option<Deleted>,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let and_data = if self.data_deleted { " and its data" } else { "" };
        let kept = self.kept.as_ref().map(Deleted::kept_note).unwrap_or_default();
        write!(f, "removed {}{and_data}{kept}", printable(&self.torrent.name, 200))
    }
}

/// When a reannounce will reach the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reannounce {
    Now(Named),
    /// Held back this many seconds by the tracker's min interval or our pace.
    In(Named, u64),
}

impl fmt::Display for Reannounce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reannounce::Now(t) => write!(f, "{}: announcing now", printable(&t.name, 200)),
            Reannounce::In(t, secs) => write!(
                f,
                "{}: announcing in {secs} s (the tracker's min interval, or 30 s since the last announce)",
                printable(&t.name, 200)
            ),
        }
    }
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// Nothing is named so; the text says what was looked for.
    NotFound(String),
    /// Several torrents fit the name; the text lists them.
    Ambiguous(String),
    /// Being added or removed at this moment: try again.
    Busy(InfoHash),
    /// Its task has stopped (the daemon is shutting down).
    Gone(InfoHash),
    /// The command does not apply to the torrent as it is now.
    NotApplicable(Named, &'static str),
    /// The torrent must stay as it is, for the reason given.
    Refused(Named, String),
    /// Removed, but deleting its data failed.
    DataLeft { torrent: Named, why: String },
    /// A file could not be written or read.
    Io(String),
    /// The request asks for what cannot be (a bad tag, a bound passed); the text says why.
    Invalid(String),
}

impl SessionError {
    /// The error's kind as the control protocol names it, for callers that
    /// branch on it rather than on the text.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::NotFound(_) => ErrorKind::NotFound,
            SessionError::Ambiguous(_) => ErrorKind::Ambiguous,
            SessionError::Busy(_) => ErrorKind::Busy,
            SessionError::Gone(_) => ErrorKind::Gone,
            SessionError::NotApplicable(..) | SessionError::Refused(..) => ErrorKind::NotApplicable,
            SessionError::DataLeft { .. } | SessionError::Io(_) => ErrorKind::Io,
            SessionError::Invalid(_) => ErrorKind::BadRequest,
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::NotFound(s) | SessionError::Ambiguous(s) | SessionError::Io(s) | SessionError::Invalid(s) => {
                f.write_str(s)
            }
            SessionError::Busy(h) => write!(f, "{} is being added or removed; try again", h.short()),
            SessionError::Gone(h) => write!(f, "{}: the torrent's task has stopped", h.short()),
            SessionError::NotApplicable(t, why) => write!(f, "{t} {why}"),
            SessionError::Refused(t, why) => write!(f, "{t} {why}"),
            SessionError::DataLeft { torrent, why } => {
                write!(f, "removed {}, but deleting its data failed: {why}", printable(&torrent.name, 200))
            }
        }
    }
}

impl std::error::Error for SessionError {}

/// The kinds of [`SessionError`], as carried in control replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    Ambiguous,
    Busy,
    Gone,
    NotApplicable,
    Io,
    /// The request itself was malformed or refused (not a session error).
    BadRequest,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Named {
        Named { name: name.into(), hash: InfoHash([0xab; 20]) }
    }

    #[test]
    fn outcomes_read_as_the_cli_prints_them() {
        let t = named("Film");
        assert_eq!(CommandOutcome::Reached(t.clone(), TorrentState::Paused).to_string(), "Film (abababab): paused");
        assert_eq!(
            CommandOutcome::UnderWay { torrent: t.clone(), state: TorrentState::Seeding, pausing: true }.to_string(),
            "Film (abababab): still seeding; the pause is under way"
        );
        assert_eq!(
            Removed { torrent: t.clone(), data_deleted: true, kept: None }.to_string(),
            "removed Film and its data"
        );
        assert_eq!(Reannounce::In(t, 12).to_string().split(" (").next(), Some("Film: announcing in 12 s"));
    }

    #[test]
    fn a_hostile_name_is_shown_printable() {
        let t = named("evil\u{1b}[2J\nname");
        for text in [
            CommandOutcome::Rechecking(t.clone()).to_string(),
            SessionError::NotApplicable(t.clone(), "is not announcing").to_string(),
            Removed { torrent: t, data_deleted: false, kept: None }.to_string(),
        ] {
            assert!(!text.contains('\u{1b}') && !text.contains('\n'), "{text:?}");
        }
    }

    #[test]
    fn every_error_has_its_kind() {
        let h = InfoHash([1; 20]);
        assert_eq!(SessionError::Busy(h).kind(), ErrorKind::Busy);
        assert_eq!(SessionError::NotFound("x".into()).kind(), ErrorKind::NotFound);
        assert_eq!(SessionError::DataLeft { torrent: named("a"), why: "EIO".into() }.kind(), ErrorKind::Io);
        assert_eq!(serde_json::to_string(&ErrorKind::NotApplicable).unwrap(), "\"not_applicable\"");
    }
}
