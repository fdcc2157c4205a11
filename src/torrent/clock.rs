//! The clocks of an active torrent: when to run a choking round, when a
//! download has stalled, how much seeding time to count, when to save the
//! resume record, and when to tick next. Pure: time is passed in, so every
//! rule is unit-tested without sleeps.

use std::time::{Duration, Instant};

pub const TICK: Duration = Duration::from_secs(1);
/// A seeding torrent with no peers and none to call wakes at most this
/// often (sooner when something falls due: [`ActiveClock::next_tick`]); what wakes
/// it otherwise (a peer, a tracker's list, a command) does not wait for a
/// tick, so ten thousand idle torrents cost next to nothing. Such a tick
/// only counts seeding time (the status adds what it has not counted) and
/// looks whether the files are there, every five minutes anyway; at 30 s,
/// ten thousand idle torrents spent a third of their idle CPU ticking.
pub const IDLE_TICK: Duration = Duration::from_secs(300);
pub const CHOKE_EVERY: Duration = Duration::from_secs(10);
/// Resume records without new pieces but with new transfer counters are
/// rewritten this often (upload credit survives a kill -9).
pub const MOVED_SAVE_EVERY: Duration = Duration::from_secs(300);
/// Resume records where only the clocks moved (seeding and running time)
/// are rewritten this seldom: a save is two fsyncs, and ten thousand idle
/// torrents saving every hour still spent a third of their idle CPU (and
/// three fsyncs a second) on it. A kill -9 (or a power cut) loses at most
/// this much counted seeding time, which only makes a seeding time limit
/// come later; a pause, a shutdown or any transfer saves it sooner.
pub const QUIET_SAVE_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Idle ticks fall on this grid, shared by every torrent of the process,
/// so the idle torrents due within one step wake together: one wakeup of
/// the runtime instead of one per torrent.
pub const IDLE_GRID: Duration = Duration::from_secs(1);

/// `t` rounded up to the next point of a grid of `step` starting at `epoch`.
pub fn on_grid(t: Instant, epoch: Instant, step: Duration) -> Instant {
    let since = t.saturating_duration_since(epoch).as_nanos();
    let step_ns = step.as_nanos().max(1);
    let steps = since.div_ceil(step_ns);
    epoch + Duration::from_nanos((steps * step_ns).min(u64::MAX as u128) as u64)
}

/// The process's grid origin for [`on_grid`].
pub fn grid_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// What the torrent task knows at a tick.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// Payload bytes received so far (any counter that grows with data).
    pub received: u64,
    /// Verified pieces.
    pub have: usize,
    /// Holds a download slot.
    pub downloading: bool,
    /// Other torrents wait for a download slot.
    pub others_queued: bool,
    /// Seeding time counts: complete and delivered to its folder.
    pub seeding: bool,
    /// Payload bytes sent so far.
    pub sent: u64,
    /// `limits.stall_secs`.
    pub stall_after: Duration,
    /// `storage.resume_interval_secs`.
    pub save_every: Duration,
}

/// What to do at this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Since the previous tick, for rates.
    pub elapsed: Duration,
    pub choke: bool,
    /// The download got nothing for this long and should yield its slot.
    pub stalled: Option<Duration>,
    /// Whole seconds of seeding to add to the record.
    pub seeded_secs: u64,
    /// Whole seconds running (downloading or seeding) to add to the record.
    pub active_secs: u64,
    pub save: bool,
}

#[derive(Debug)]
pub struct ActiveClock {
    last_tick: Instant,
    last_choke: Instant,
    last_data: Instant,
    last_received: u64,
    last_save: Instant,
    /// Counted as already passed since `last_save` before the first save:
    /// where this torrent's quiet saves fall in their interval. (Moving
    /// `last_save` back instead fails hours after boot, when the monotonic
    /// clock cannot go back that far, and every torrent would save at once.)
    save_head_start: Duration,
    last_saved_have: usize,
    /// The transfer counters (received, sent) at the last save.
    last_saved_moved: (u64, u64),
    /// Where idle ticks' grid starts ([`grid_epoch`] outside tests).
    grid: Instant,
    /// Whether seeding counted at the last tick (None before the first):
    /// an interval counts as seeding only if it began seeding, so the
    /// tick that finds the data delivered does not count the move.
    was_seeding: Option<bool>,
    /// Seeding time not yet counted in whole seconds.
    seeding_carry: Duration,
    /// Running time not yet counted in whole seconds.
    active_carry: Duration,
}

impl ActiveClock {
    /// `save_phase` in [0, 1) places this torrent's quiet saves within
    /// their interval, so torrents started together do not save together.
    pub fn new(now: Instant, moved: (u64, u64), have: usize, save_phase: f64) -> ActiveClock {
        ActiveClock::on(now, moved, have, save_phase, grid_epoch())
    }

    fn on(now: Instant, moved: (u64, u64), have: usize, save_phase: f64, grid: Instant) -> ActiveClock {
        let back = QUIET_SAVE_EVERY.mul_f64(save_phase.clamp(0.0, 1.0));
        ActiveClock {
            grid,
            last_tick: now,
            last_choke: now,
            last_data: now,
            last_received: moved.0,
            last_save: now,
            save_head_start: back,
            last_saved_have: have,
            last_saved_moved: moved,
            was_seeding: None,
            seeding_carry: Duration::ZERO,
            active_carry: Duration::ZERO,
        }
    }

    pub fn first_tick(&self) -> Instant {
        self.last_tick + TICK
    }

    /// Seconds since the last choking round, for the rates it compares.
    pub fn since_choke(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_choke)
    }

    pub fn tick(&mut self, now: Instant, f: Facts) -> Plan {
        let elapsed = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        if f.received != self.last_received {
            self.last_received = f.received;
            self.last_data = now;
        }
        let quiet = now.saturating_duration_since(self.last_data);
        let stalled = (f.downloading && f.others_queued && quiet >= f.stall_after).then_some(quiet);
        let choke = self.since_choke(now) >= CHOKE_EVERY;
        let mut seeded_secs = 0;
        let began_seeding = self.was_seeding.replace(f.seeding).unwrap_or(f.seeding);
        if f.seeding && began_seeding {
            self.seeding_carry += elapsed;
            seeded_secs = self.seeding_carry.as_secs();
            self.seeding_carry -= Duration::from_secs(seeded_secs);
        }
        self.active_carry += elapsed;
        let active_secs = self.active_carry.as_secs();
        self.active_carry -= Duration::from_secs(active_secs);
        let since_save = now.saturating_duration_since(self.last_save) + self.save_head_start;
        let moved = (f.received, f.sent) != self.last_saved_moved;
        let save = since_save >= f.save_every
            && (f.have != self.last_saved_have
                || (moved && since_save >= MOVED_SAVE_EVERY)
                || since_save >= QUIET_SAVE_EVERY);
        if save {
            self.saved(now, f.have, (f.received, f.sent));
        }
        Plan { elapsed, choke, stalled, seeded_secs, active_secs, save }
    }

    /// When to tick after the tick at `now`: in a second, or for an
    /// `idle` torrent (seeding, no peers, nobody to dial) at most
    /// [`IDLE_TICK`] later, by `wake_by`, the soonest thing it must wake
    /// for (a dial retry, a presence check, a seeding limit). Asked once
    /// the tick's own counting is done, so `wake_by` is not a tick stale.
    pub fn next_tick(&self, now: Instant, idle: bool, wake_by: Option<Instant>) -> Instant {
        match (idle, wake_by) {
            (false, _) => now + TICK,
            (true, Some(by)) => on_grid(by.clamp(now + TICK, now + IDLE_TICK), self.grid, IDLE_GRID),
            (true, None) => on_grid(now + IDLE_TICK, self.grid, IDLE_GRID),
        }
    }

    pub fn choked(&mut self, now: Instant) {
        self.last_choke = now;
    }

    /// A save made (on completion, or at a tick).
    pub fn saved(&mut self, now: Instant, have: usize, moved: (u64, u64)) {
        self.last_save = now;
        self.save_head_start = Duration::ZERO;
        self.last_saved_have = have;
        self.last_saved_moved = moved;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            received: 0,
            have: 0,
            downloading: true,
            others_queued: false,
            seeding: false,
            sent: 0,
            stall_after: Duration::from_secs(30),
            save_every: Duration::from_secs(10),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn choke_rounds_every_ten_seconds() {
        let t0 = Instant::now();
        let mut c = ActiveClock::new(t0, (0, 0), 0, 0.0);
        let mut rounds = 0;
        for s in 1..=35 {
            let now = t0 + secs(s);
            if c.tick(now, facts()).choke {
                rounds += 1;
                c.choked(now);
            }
        }
        assert_eq!(rounds, 3);
    }

    #[test]
    fn a_stall_needs_silence_and_others_waiting() {
        let t0 = Instant::now();
        let mut c = ActiveClock::new(t0, (0, 0), 0, 0.0);
        let f = Facts { others_queued: true, received: 5, ..facts() };
        assert_eq!(c.tick(t0 + secs(20), f).stalled, None, "data came");
        assert_eq!(c.tick(t0 + secs(49), f).stalled, None, "29 s of silence");
        assert_eq!(c.tick(t0 + secs(50), f).stalled, Some(secs(30)));
        // Nobody waiting: a quiet download keeps its slot.
        assert_eq!(c.tick(t0 + secs(90), Facts { others_queued: false, ..f }).stalled, None);
        // Seeding holds no slot.
        assert_eq!(c.tick(t0 + secs(91), Facts { downloading: false, ..f }).stalled, None);
    }

    #[test]
    fn seeding_time_is_counted_in_whole_seconds_without_loss() {
        let t0 = Instant::now();
        let mut c = ActiveClock::new(t0, (0, 0), 0, 0.0);
        let f = Facts { seeding: true, downloading: false, ..facts() };
        let mut total = 0;
        for i in 1..=10 {
            total += c.tick(t0 + Duration::from_millis(700 * i), f).seeded_secs;
        }
        assert_eq!(total, 7);
    }

    #[test]
    fn seeding_counts_from_the_tick_the_data_was_delivered_not_before() {
        let t0 = Instant::now();
        let mut c = ActiveClock::new(t0, (0, 0), 0, 0.0);
        let moving = Facts { seeding: false, downloading: false, ..facts() };
        let settled = Facts { seeding: true, ..moving };
        assert_eq!(c.tick(t0 + secs(1), moving).seeded_secs, 0);
        // An idle tick 30 s on finds the move done: those 30 s were the move's.
        assert_eq!(c.tick(t0 + secs(31), settled).seeded_secs, 0, "the move counted as seeding");
        assert_eq!(c.tick(t0 + secs(32), settled).seeded_secs, 1);
    }

    #[test]
    fn running_time_counts_downloading_and_seeding_alike() {
        let t0 = Instant::now();
        let mut c = ActiveClock::new(t0, (0, 0), 0, 0.0);
        let mut total = 0;
        for i in 1..=10 {
            let f = Facts { seeding: i > 5, downloading: i <= 5, ..facts() };
            total += c.tick(t0 + Duration::from_millis(700 * i), f).active_secs;
        }
        assert_eq!(total, 7);
    }

    #[test]
    fn saves_on_new_pieces_at_the_interval_on_moved_counters_seldom_and_rarely_when_quiet() {
        let t0 = Instant::now() + secs(3600);
        let mut c = ActiveClock::new(t0, (0, 0), 0, 0.0);
        assert!(!c.tick(t0 + secs(5), Facts { have: 3, ..facts() }).save, "before the interval");
        assert!(c.tick(t0 + secs(10), Facts { have: 3, ..facts() }).save);
        assert!(!c.tick(t0 + secs(60), Facts { have: 3, ..facts() }).save, "nothing new");
        let sent = Facts { have: 3, sent: 1000, ..facts() };
        assert!(!c.tick(t0 + secs(300), sent).save, "uploaded, but not for long");
        assert!(c.tick(t0 + secs(310), sent).save, "uploaded: saved after five minutes");
        assert!(!c.tick(t0 + secs(1000), sent).save, "only the clocks moved");
        assert!(c.tick(t0 + secs(310) + QUIET_SAVE_EVERY, sent).save, "quiet, but overdue");
    }

    #[test]
    fn quiet_saves_of_torrents_started_together_are_spread() {
        // Just after boot too: the monotonic clock may not reach back hours.
        let t0 = Instant::now();
        let first_save = |phase: f64| {
            let mut c = ActiveClock::new(t0, (0, 0), 0, phase);
            (1..=QUIET_SAVE_EVERY.as_secs()).find(|&s| c.tick(t0 + secs(s), facts()).save).unwrap()
        };
        assert_eq!(first_save(0.0), QUIET_SAVE_EVERY.as_secs());
        assert_eq!(first_save(0.5), QUIET_SAVE_EVERY.as_secs() / 2);
        assert_eq!(first_save(0.99999), 1);
    }

    #[test]
    fn idle_seeders_tick_seldom_but_wake_for_what_falls_due() {
        let t0 = Instant::now();
        let c = ActiveClock::on(t0, (0, 0), 0, 0.0, t0);
        let now = t0 + secs(1);
        assert_eq!(c.next_tick(now, true, None), now + IDLE_TICK);
        assert_eq!(c.next_tick(now, false, None), now + TICK);
        assert_eq!(c.next_tick(now, true, Some(now + secs(7))), now + secs(7), "a retry");
        assert_eq!(c.next_tick(now, true, Some(now)), now + TICK, "never a busy loop");
        assert_eq!(c.next_tick(now, true, Some(now + secs(3600))), now + IDLE_TICK);
    }

    #[test]
    fn idle_ticks_of_different_torrents_fall_together_on_the_grid() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        let next = |started: Duration| {
            let c = ActiveClock::on(epoch + started, (0, 0), 0, 0.0, epoch);
            c.next_tick(epoch + started + secs(1), true, None)
        };
        assert_eq!(next(ms(120)), next(ms(870)), "started 750 ms apart, woken together");
        assert_eq!(next(ms(120)), epoch + secs(2) + IDLE_TICK);
        assert_eq!(on_grid(epoch + secs(5), epoch, secs(1)), epoch + secs(5), "on the grid already");
        assert_eq!(on_grid(epoch, epoch + secs(5), secs(1)), epoch + secs(5), "before the origin");
    }
}
