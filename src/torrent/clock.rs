//! The clocks of an active torrent: when to run a choking round, when a
//! download has stalled, how much seeding time to count, when to save the
//! resume record, and when to tick next. Pure: time is passed in, so every
//! rule is unit-tested without sleeps.

use std::time::{Duration, Instant};

pub const TICK: Duration = Duration::from_secs(1);
/// A seeding torrent with no peers and none to call wakes this seldom, so
/// hundreds of idle torrents cost next to nothing.
pub const IDLE_TICK: Duration = Duration::from_secs(5);
pub const CHOKE_EVERY: Duration = Duration::from_secs(10);
/// Resume records without new pieces are rewritten this often (counters and
/// seeding time); rarely, as hundreds of idle torrents would otherwise fsync
/// constantly.
pub const IDLE_SAVE_EVERY: Duration = Duration::from_secs(300);

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
    pub seeding: bool,
    /// Seeding with no peers and nobody to dial.
    pub idle: bool,
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
    pub next_tick: Instant,
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
    last_saved_have: usize,
    /// Seeding time not yet counted in whole seconds.
    seeding_carry: Duration,
    /// Running time not yet counted in whole seconds.
    active_carry: Duration,
}

impl ActiveClock {
    pub fn new(now: Instant, received: u64, have: usize) -> ActiveClock {
        ActiveClock {
            last_tick: now,
            last_choke: now,
            last_data: now,
            last_received: received,
            last_save: now,
            last_saved_have: have,
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
        if f.seeding {
            self.seeding_carry += elapsed;
            seeded_secs = self.seeding_carry.as_secs();
            self.seeding_carry -= Duration::from_secs(seeded_secs);
        }
        self.active_carry += elapsed;
        let active_secs = self.active_carry.as_secs();
        self.active_carry -= Duration::from_secs(active_secs);
        let since_save = now.saturating_duration_since(self.last_save);
        let save = since_save >= f.save_every && (f.have != self.last_saved_have || since_save >= IDLE_SAVE_EVERY);
        if save {
            self.last_save = now;
            self.last_saved_have = f.have;
        }
        let next_tick = now + if f.idle { IDLE_TICK } else { TICK };
        Plan { elapsed, next_tick, choke, stalled, seeded_secs, active_secs, save }
    }

    pub fn choked(&mut self, now: Instant) {
        self.last_choke = now;
    }

    /// A save made outside the tick (on completion).
    pub fn saved(&mut self, now: Instant, have: usize) {
        self.last_save = now;
        self.last_saved_have = have;
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
            idle: false,
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
        let mut c = ActiveClock::new(t0, 0, 0);
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
        let mut c = ActiveClock::new(t0, 0, 0);
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
        let mut c = ActiveClock::new(t0, 0, 0);
        let f = Facts { seeding: true, downloading: false, ..facts() };
        let mut total = 0;
        for i in 1..=10 {
            total += c.tick(t0 + Duration::from_millis(700 * i), f).seeded_secs;
        }
        assert_eq!(total, 7);
    }

    #[test]
    fn running_time_counts_downloading_and_seeding_alike() {
        let t0 = Instant::now();
        let mut c = ActiveClock::new(t0, 0, 0);
        let mut total = 0;
        for i in 1..=10 {
            let f = Facts { seeding: i > 5, downloading: i <= 5, ..facts() };
            total += c.tick(t0 + Duration::from_millis(700 * i), f).active_secs;
        }
        assert_eq!(total, 7);
    }

    #[test]
    fn saves_on_new_pieces_at_the_interval_and_rarely_when_idle() {
        let t0 = Instant::now();
        let mut c = ActiveClock::new(t0, 0, 0);
        assert!(!c.tick(t0 + secs(5), Facts { have: 3, ..facts() }).save, "before the interval");
        assert!(c.tick(t0 + secs(10), Facts { have: 3, ..facts() }).save);
        assert!(!c.tick(t0 + secs(60), Facts { have: 3, ..facts() }).save, "nothing new");
        assert!(c.tick(t0 + secs(310), Facts { have: 3, ..facts() }).save, "overdue");
    }

    #[test]
    fn idle_seeders_tick_slowly() {
        let t0 = Instant::now();
        let mut c = ActiveClock::new(t0, 0, 0);
        let now = t0 + secs(1);
        assert_eq!(c.tick(now, Facts { idle: true, ..facts() }).next_tick, now + IDLE_TICK);
        assert_eq!(c.tick(now, facts()).next_tick, now + TICK);
    }
}
