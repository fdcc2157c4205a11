//! A torrent's phases and the one place that moves it between them.
//!
//! ```text
//!   Held(paused|stopped) ──resume──┐
//!        ▲                         ▼
//!        │       Preparing: space check, open files, hash what needs it
//!      pause     │ ok                      │ fails
//!        │       ▼                         ▼
//!        └── Queued ─slot─> Active ──> Errored ─retry (60 s) or resume─> Preparing
//!                 ▲           │ stalled with others queued: back to Queued
//!                 └───────────┘ complete: seeding; a seeding limit: Held(stopped)
//!
//!   Preparing ─complete data gone from its folder─> Missing ─resume or recheck─> Preparing
//! ```
//!
//! Pure: [`next`] maps a phase and what happened to the next phase, and is
//! unit-tested without tasks or clocks. The torrent task (`task.rs`) runs
//! each phase and feeds its outcome back here.

use super::TorrentState;
use crate::config::LimitAction;
use crate::resume::Hold;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Still until resumed; `recheck` remembers a recheck asked for meanwhile.
    Held { hold: Hold, recheck: bool },
    /// Checking space, opening files, hashing what may be on disk (all of it
    /// with `recheck`).
    Preparing { recheck: bool },
    /// Waiting for a download slot.
    Queued,
    /// Connected to the swarm: downloading, or seeding once complete.
    Active,
    /// Cannot go on; retried after a while or when resumed.
    Errored { message: String, recheck: bool },
    /// Complete data is gone from where it was settled (an importer moved
    /// it): nothing is downloaded into the user's library until they ask.
    Missing { message: String },
}

/// What ended a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Paused,
    Resumed,
    RecheckAsked,
    /// Preparing finished; `complete` when every piece is verified.
    Prepared {
        complete: bool,
    },
    PrepareFailed(String),
    /// Preparing found complete data gone from its settled place.
    DataMissing(String),
    GotSlot,
    /// Downloading received nothing for `limits.stall_secs` while others wait.
    Stalled,
    LimitReached,
    DiskFailed(String),
    /// The move to the complete folder failed (no room there, no rights);
    /// the data is whole where it was.
    MoveFailed(String),
    RetryDue,
    /// The user asked for the complete data to move (`setLocation`); the
    /// move runs between this phase and the next.
    Relocate(crate::storage::Place),
}

/// Where to go next, or that the torrent leaves the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Phase(Phase),
    /// A seeding limit with `action = "remove"`.
    Remove,
}

impl Phase {
    /// The phase a torrent starts in, from its persisted hold.
    pub fn initial(hold: Hold) -> Phase {
        match hold {
            Hold::Running => Phase::Preparing { recheck: false },
            hold => Phase::Held { hold, recheck: false },
        }
    }

    /// What is persisted of this phase.
    pub fn hold(&self) -> Hold {
        match self {
            Phase::Held { hold, .. } => *hold,
            _ => Hold::Running,
        }
    }

    /// The state shown to the user.
    pub fn state(&self, complete: bool) -> TorrentState {
        match self {
            Phase::Held { hold: Hold::Stopped, .. } => TorrentState::Stopped,
            Phase::Held { .. } => TorrentState::Paused,
            Phase::Preparing { .. } => TorrentState::Checking,
            Phase::Queued => TorrentState::Queued,
            Phase::Active if complete => TorrentState::Seeding,
            Phase::Active => TorrentState::Downloading,
            Phase::Errored { .. } => TorrentState::Error,
            Phase::Missing { .. } => TorrentState::Missing,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Phase::Errored { message, .. } | Phase::Missing { message } => Some(message),
            _ => None,
        }
    }
}

/// The transition table. Anything a phase cannot meet leaves it unchanged.
pub fn next(phase: &Phase, outcome: Outcome, action: LimitAction) -> Next {
    use Outcome as O;
    let pause = |recheck| Phase::Held { hold: Hold::Paused, recheck };
    Next::Phase(match (phase.clone(), outcome) {
        (Phase::Held { recheck, .. }, O::Resumed) => Phase::Preparing { recheck },
        (Phase::Held { hold, .. }, O::RecheckAsked) => Phase::Held { hold, recheck: true },
        (Phase::Held { hold, recheck }, O::Paused) => Phase::Held { hold, recheck },
        (Phase::Preparing { recheck }, O::Paused) => pause(recheck),
        (Phase::Errored { recheck, .. }, O::Paused) => pause(recheck),
        (_, O::Paused) => pause(false),
        (Phase::Preparing { .. }, O::Prepared { complete: true }) => Phase::Active,
        (Phase::Preparing { .. }, O::Prepared { complete: false }) => Phase::Queued,
        (Phase::Preparing { recheck }, O::PrepareFailed(message)) => Phase::Errored { message, recheck },
        (Phase::Preparing { .. } | Phase::Active, O::DataMissing(message)) => Phase::Missing { message },
        (Phase::Missing { .. }, O::Resumed) => Phase::Preparing { recheck: false },
        (Phase::Queued, O::GotSlot) => Phase::Active,
        (Phase::Active, O::Stalled) => Phase::Queued,
        (Phase::Active, O::LimitReached) if action == LimitAction::Remove => return Next::Remove,
        (Phase::Active, O::LimitReached) => Phase::Held { hold: Hold::Stopped, recheck: false },
        // The data may be damaged: everything is checked again on retry.
        (Phase::Active, O::DiskFailed(message)) => Phase::Errored { message, recheck: true },
        (Phase::Active, O::MoveFailed(message)) => Phase::Errored { message, recheck: false },
        (Phase::Errored { recheck, .. }, O::RetryDue | O::Resumed) => Phase::Preparing { recheck },
        // Seeding again from the new place (its files checked there); a
        // held torrent stays held.
        (Phase::Active, O::Relocate(_)) => Phase::Preparing { recheck: false },
        (_, O::RecheckAsked) => Phase::Preparing { recheck: true },
        (phase, _) => phase,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use LimitAction::{Remove, Stop};

    fn go(p: &Phase, o: Outcome) -> Phase {
        match next(p, o, Stop) {
            Next::Phase(p) => p,
            Next::Remove => panic!("removed"),
        }
    }

    #[test]
    fn a_download_runs_its_course() {
        let mut p = Phase::initial(Hold::Running);
        assert_eq!(p.state(false), TorrentState::Checking);
        p = go(&p, Outcome::Prepared { complete: false });
        assert_eq!(p, Phase::Queued);
        p = go(&p, Outcome::GotSlot);
        assert_eq!(p.state(false), TorrentState::Downloading);
        assert_eq!(p.state(true), TorrentState::Seeding);
        p = go(&p, Outcome::LimitReached);
        assert_eq!(p.state(true), TorrentState::Stopped);
        assert_eq!(p.hold(), Hold::Stopped);
        assert_eq!(go(&p, Outcome::Resumed), Phase::Preparing { recheck: false });
        assert_eq!(next(&Phase::Active, Outcome::LimitReached, Remove), Next::Remove);
    }

    #[test]
    fn a_relocated_seed_checks_its_new_place_and_a_held_one_stays_held() {
        let to = crate::storage::Place::new(std::path::Path::new("/srv/other"), "", "x", true);
        assert_eq!(go(&Phase::Active, Outcome::Relocate(to.clone())), Phase::Preparing { recheck: false });
        let held = Phase::Held { hold: Hold::Paused, recheck: false };
        assert_eq!(go(&held, Outcome::Relocate(to)), held);
    }

    #[test]
    fn complete_data_seeds_without_a_slot_and_stalls_requeue() {
        assert_eq!(go(&Phase::Preparing { recheck: false }, Outcome::Prepared { complete: true }), Phase::Active);
        assert_eq!(go(&Phase::Active, Outcome::Stalled), Phase::Queued);
    }

    #[test]
    fn pause_from_anywhere_and_a_recheck_asked_while_held_waits_for_resume() {
        for p in [Phase::Queued, Phase::Active, Phase::Preparing { recheck: false }] {
            assert_eq!(go(&p, Outcome::Paused), Phase::Held { hold: Hold::Paused, recheck: false });
        }
        // A recheck interrupted by a pause is taken up again on resume.
        let held = go(&Phase::Preparing { recheck: true }, Outcome::Paused);
        assert_eq!(go(&held, Outcome::Resumed), Phase::Preparing { recheck: true });
        let held = go(&Phase::initial(Hold::Paused), Outcome::RecheckAsked);
        assert_eq!(held.state(false), TorrentState::Paused);
        assert_eq!(go(&held, Outcome::Resumed), Phase::Preparing { recheck: true });
        // Pausing a torrent stopped by a limit keeps it stopped.
        let stopped = Phase::initial(Hold::Stopped);
        assert_eq!(go(&stopped, Outcome::Paused), stopped);
    }

    #[test]
    fn errors_retry_and_disk_errors_recheck() {
        let e = go(&Phase::Preparing { recheck: false }, Outcome::PrepareFailed("no space".into()));
        assert_eq!(e.state(false), TorrentState::Error);
        assert_eq!(e.error(), Some("no space"));
        assert_eq!(go(&e, Outcome::RetryDue), Phase::Preparing { recheck: false });
        let e = go(&Phase::Active, Outcome::DiskFailed("EIO".into()));
        assert_eq!(go(&e, Outcome::Resumed), Phase::Preparing { recheck: true });
        assert_eq!(go(&Phase::Active, Outcome::RecheckAsked), Phase::Preparing { recheck: true });
        // A failed move left the data whole: no recheck.
        let e = go(&Phase::Active, Outcome::MoveFailed("ENOSPC".into()));
        assert_eq!(go(&e, Outcome::RetryDue), Phase::Preparing { recheck: false });
    }

    #[test]
    fn missing_data_waits_for_the_user() {
        let m = go(&Phase::Preparing { recheck: false }, Outcome::DataMissing("a.mkv".into()));
        assert_eq!((m.state(true), m.error()), (TorrentState::Missing, Some("a.mkv")));
        assert_eq!(go(&m, Outcome::RetryDue), m, "no retry of its own");
        assert_eq!(go(&m, Outcome::Resumed), Phase::Preparing { recheck: false });
        assert_eq!(go(&m, Outcome::RecheckAsked), Phase::Preparing { recheck: true });
        assert_eq!(go(&m, Outcome::Paused).state(true), TorrentState::Paused);
        assert_eq!(go(&Phase::Active, Outcome::DataMissing("b".into())).state(true), TorrentState::Missing);
    }

    #[test]
    fn outcomes_a_phase_cannot_meet_change_nothing() {
        assert_eq!(go(&Phase::Active, Outcome::Resumed), Phase::Active);
        assert_eq!(go(&Phase::Queued, Outcome::RetryDue), Phase::Queued);
        let held = Phase::initial(Hold::Paused);
        assert_eq!(go(&held, Outcome::GotSlot), held);
    }
}
