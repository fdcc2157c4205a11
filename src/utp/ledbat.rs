//! How much a uTP connection may have in flight: LEDBAT (RFC 6817, as
//! BEP 29 applies it), which backs off as soon as its own packets start to
//! queue, so a seedbox's uploads yield to the owner's other traffic and to
//! TCP instead of filling the uplink's buffer.
//!
//! The peer echoes, on every packet, how late our packets reached it by its
//! clock (`timestamp_diff`). The clocks are unrelated, so one sample means
//! nothing; the lowest over the last two minutes is the path's base delay,
//! and a sample above it is time spent in a queue. With the queue under the
//! 100 ms target the window grows (at most 3000 bytes a round trip, less
//! the closer it gets); over it, it shrinks in proportion. Losses halve it
//! once a round trip, a timeout drops it to one packet. Slow start doubles
//! it each round trip, as TCP's does, until a queue over half the target,
//! the first loss, or (after a timeout) half the window the timeout cut.
//!
//! Pure: times are microseconds from the caller.

pub const TARGET_US: u64 = 100_000;
/// Window growth per round trip with an empty queue.
const GAIN_BYTES: f64 = 3000.0;
/// The window at most: bounds what one connection keeps in flight.
pub const MAX_WINDOW: usize = 1 << 20;
/// Base delay history: one minimum per minute, two minutes.
const BASE_SLOT_US: u64 = 60_000_000;
/// The last few samples: the smallest filters out one slow packet.
const RECENT: usize = 3;

/// The lowest delay sample per minute for the last minutes. Samples are
/// wrapping 32-bit microsecond differences between two clocks.
#[derive(Debug, Default)]
struct DelayBase {
    /// Minimum of the current minute, then of the one before.
    slots: [Option<u32>; 2],
    slot_started: u64,
}

/// `a < b` on wrapping samples (they sit within a few seconds of each other).
fn lower(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

impl DelayBase {
    fn add(&mut self, sample: u32, now: u64) {
        if now.saturating_sub(self.slot_started) >= BASE_SLOT_US {
            self.slots = [None, self.slots[0]];
            self.slot_started = now;
        }
        match self.slots[0] {
            Some(m) if !lower(sample, m) => {}
            _ => self.slots[0] = Some(sample),
        }
    }

    fn base(&self) -> Option<u32> {
        match self.slots {
            [Some(a), Some(b)] => Some(if lower(b, a) { b } else { a }),
            [a, b] => a.or(b),
        }
    }
}

#[derive(Debug)]
pub struct Ledbat {
    window: f64,
    mss: usize,
    slow_start: bool,
    /// Where slow start ends: half the window a timeout found.
    slow_start_until: f64,
    base: DelayBase,
    recent: [u32; RECENT],
    recent_len: usize,
    recent_at: usize,
    /// When the window was last cut, so losses cut it once a round trip.
    last_cut: Option<u64>,
}

impl Ledbat {
    pub fn new(mss: usize) -> Ledbat {
        Ledbat {
            window: (2 * mss) as f64,
            mss,
            slow_start: true,
            slow_start_until: MAX_WINDOW as f64,
            base: DelayBase::default(),
            recent: [0; RECENT],
            recent_len: 0,
            recent_at: 0,
            last_cut: None,
        }
    }

    /// Bytes that may be in flight.
    pub fn window(&self) -> usize {
        self.window as usize
    }

    /// A `timestamp_diff` from the peer: how late our packet reached it.
    pub fn on_delay_sample(&mut self, sample: u32, now: u64) {
        self.base.add(sample, now);
        self.recent[self.recent_at] = sample;
        self.recent_at = (self.recent_at + 1) % RECENT;
        self.recent_len = (self.recent_len + 1).min(RECENT);
    }

    /// Our packets' time in queues now, from the recent samples.
    pub fn queuing_delay(&self) -> Option<u64> {
        let base = self.base.base()?;
        let recent = self.recent[..self.recent_len].iter().copied();
        let least = recent.reduce(|a, b| if lower(b, a) { b } else { a })?;
        Some(if lower(least, base) { 0 } else { u64::from(least.wrapping_sub(base)) })
    }

    /// `acked` bytes left the network; `window_full`: whether the sender
    /// was held back by the window (an idle sender earns no growth).
    pub fn on_ack(&mut self, acked: usize, window_full: bool) {
        if acked == 0 || !window_full {
            return;
        }
        let queued = self.queuing_delay().unwrap_or(0);
        if self.slow_start && queued < TARGET_US / 2 && self.window < self.slow_start_until {
            self.window = (self.window + acked as f64).min(self.slow_start_until);
        } else {
            self.slow_start = false;
            let off_target = (TARGET_US as f64 - queued as f64) / TARGET_US as f64;
            let share = acked as f64 / self.window.max(acked as f64);
            self.window += GAIN_BYTES * off_target.max(-1.0) * share;
        }
        self.clamp();
    }

    /// A packet was lost (three later packets arrived without it).
    pub fn on_loss(&mut self, now: u64, rtt: u64) {
        if self.last_cut.is_some_and(|at| now.saturating_sub(at) < rtt) {
            return;
        }
        self.last_cut = Some(now);
        self.slow_start = false;
        self.window /= 2.0;
        self.clamp();
    }

    /// Nothing came back for a whole timeout: one packet, then slow start
    /// back to half the window that met the timeout (as libtorrent does; in
    /// congestion avoidance alone, regaining it took seconds).
    pub fn on_timeout(&mut self) {
        self.slow_start = true;
        self.slow_start_until = (self.window / 2.0).max(2.0 * self.mss as f64);
        self.window = self.mss as f64;
    }

    fn clamp(&mut self) {
        self.window = self.window.clamp(self.mss as f64, MAX_WINDOW as f64);
    }
}

/// Round-trip time and the retransmission timeout (RFC 6298's estimator,
/// BEP 29's bounds: at least 500 ms, 1 s before the first sample).
#[derive(Debug)]
pub struct Rtt {
    smoothed: Option<(u64, u64)>,
    backoff: u32,
}

const MIN_RTO_US: u64 = 500_000;
const MAX_RTO_US: u64 = 60_000_000;

impl Rtt {
    pub fn new() -> Rtt {
        Rtt { smoothed: None, backoff: 0 }
    }

    pub fn sample(&mut self, rtt: u64) {
        self.smoothed = Some(match self.smoothed {
            None => (rtt, rtt / 2),
            Some((srtt, var)) => {
                let var = (3 * var + srtt.abs_diff(rtt)) / 4;
                ((7 * srtt + rtt) / 8, var)
            }
        });
        self.backoff = 0;
    }

    /// The smoothed round trip (a guess of 100 ms before the first sample).
    pub fn srtt(&self) -> u64 {
        self.smoothed.map_or(100_000, |(s, _)| s)
    }

    pub fn rto(&self) -> u64 {
        let base = self.smoothed.map_or(1_000_000, |(s, v)| (s + 4 * v).max(MIN_RTO_US));
        (base << self.backoff.min(7)).min(MAX_RTO_US)
    }

    /// A timeout: the next one waits twice as long.
    pub fn back_off(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1400;

    fn grown(queue_us: u32, rounds: usize) -> usize {
        let mut cc = Ledbat::new(MSS);
        cc.on_loss(0, 1); // past slow start
        let base = 4_000_000_000u32; // near the wrap on purpose
        cc.on_delay_sample(base, 0);
        for i in 0..rounds {
            cc.on_delay_sample(base.wrapping_add(queue_us), i as u64 * 1000);
            let w = cc.window();
            cc.on_ack(w, true);
        }
        cc.window()
    }

    #[test]
    fn the_window_grows_under_the_target_and_shrinks_over_it() {
        let start = Ledbat::new(MSS).window() / 2;
        let empty = grown(0, 100);
        // 3000 bytes a round trip at most with an empty queue.
        assert!(empty > start + 250_000 && empty <= start + 300_000 + MSS, "{empty}");
        let near = grown(90_000, 100);
        assert!(near > start && near < empty / 5, "{near} vs {empty}");
        assert_eq!(grown(250_000, 100), MSS, "a long queue shrinks it to one packet");
    }

    #[test]
    fn slow_start_doubles_until_the_queue_builds() {
        let mut cc = Ledbat::new(MSS);
        cc.on_delay_sample(1000, 0);
        for _ in 0..5 {
            let w = cc.window();
            cc.on_ack(w, true);
        }
        assert_eq!(cc.window(), 2 * MSS * 32);
        // A queue of 60 ms ends it: the next ack grows by the gain only.
        for now in 1..=3 {
            cc.on_delay_sample(61_000, now);
        }
        let before = cc.window();
        cc.on_ack(before, true);
        assert!(cc.window() < before + 3000, "{} after {before}", cc.window());
    }

    #[test]
    fn after_a_timeout_slow_start_regains_half_the_window() {
        let mut cc = Ledbat::new(MSS);
        cc.on_delay_sample(1000, 0);
        cc.on_loss(0, 1); // congestion avoidance from here
        cc.window = (64 * MSS) as f64;
        cc.on_timeout();
        assert_eq!(cc.window(), MSS);
        for _ in 0..5 {
            let w = cc.window();
            cc.on_ack(w, true);
        }
        assert_eq!(cc.window(), 32 * MSS, "doubled each round trip up to half");
        let before = cc.window();
        cc.on_ack(before, true);
        assert!(cc.window() <= before + 3000, "then grows by the gain only: {}", cc.window());
    }

    #[test]
    fn an_idle_sender_earns_nothing_and_losses_cut_once_a_round_trip() {
        let mut cc = Ledbat::new(MSS);
        cc.on_ack(10 * MSS, false);
        assert_eq!(cc.window(), 2 * MSS);
        for _ in 0..6 {
            let w = cc.window();
            cc.on_ack(w, true);
        }
        let w = cc.window();
        cc.on_loss(1_000_000, 50_000);
        cc.on_loss(1_010_000, 50_000);
        assert_eq!(cc.window(), w / 2, "the second loss is in the same round trip");
        cc.on_loss(1_100_000, 50_000);
        assert_eq!(cc.window(), w / 4);
        cc.on_timeout();
        assert_eq!(cc.window(), MSS);
    }

    #[test]
    fn the_base_delay_forgets_after_two_minutes() {
        let mut cc = Ledbat::new(MSS);
        cc.on_delay_sample(5_000, 0);
        cc.on_delay_sample(50_000, 1);
        assert_eq!(cc.queuing_delay(), Some(0), "the least of the recent samples");
        for i in 0..3 {
            cc.on_delay_sample(50_000, 2 + i);
        }
        assert_eq!(cc.queuing_delay(), Some(45_000));
        // The route changed for good: two minutes on, 50 ms is the base.
        cc.on_delay_sample(50_000, 61_000_000);
        assert_eq!(cc.queuing_delay(), Some(45_000), "the old minute still counts");
        cc.on_delay_sample(50_000, 122_000_000);
        assert_eq!(cc.queuing_delay(), Some(0));
    }

    #[test]
    fn the_timeout_follows_the_round_trip_and_backs_off() {
        let mut rtt = Rtt::new();
        assert_eq!(rtt.rto(), 1_000_000);
        rtt.sample(10_000);
        assert_eq!(rtt.rto(), MIN_RTO_US);
        for _ in 0..20 {
            rtt.sample(400_000);
        }
        assert!(rtt.rto() > 400_000 && rtt.rto() < 700_000, "{}", rtt.rto());
        rtt.back_off();
        rtt.back_off();
        assert!(rtt.rto() > 1_600_000);
        for _ in 0..20 {
            rtt.back_off();
        }
        assert_eq!(rtt.rto(), MAX_RTO_US);
        rtt.sample(400_000);
        assert!(rtt.rto() < 700_000, "a sample ends the back-off");
    }
}
