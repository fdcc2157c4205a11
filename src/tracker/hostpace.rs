//! Announces paced per tracker host, session-wide.
//!
//! [`super::pace`] spaces the announces of one torrent; nothing there keeps
//! 10,000 torrents started together (or a restart, or all of them retrying
//! when a tracker is back from an outage) from sending 10,000 announces to
//! one host within seconds, which a private tracker reads as abuse and a
//! small one cannot serve. So every announce but `stopped` (HTTP and UDP
//! alike) first takes a slot from its host's token bucket here, and a
//! torrent's first announce also takes one from a session-wide bucket of
//! starts, so torrents of many hosts started together spread as well.
//!
//! `stopped` is never held: it carries the final upload counters, and at
//! shutdown each torrent's `stopped` has 3 s in all (`STOPPED_TIMEOUT`);
//! paced at 10 a second, 10,000 of them would all but 30 miss it. A burst
//! of `stopped` happens only when the user stops many torrents at once.
//!
//! Each bucket is kept as one instant (GCRA, the "theoretical arrival
//! time"): a slot is reserved at once, and the caller sleeps until it. A
//! host whose instant has passed has a full bucket: it holds nothing and
//! is forgotten, so the map only holds hosts announced to in the last
//! moments, at most [`MAX_HOSTS`]; hosts come from .torrent files, and a
//! flood of made-up ones past the cap shares one bucket.

use crate::locks::locked;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Announces a second to one tracker host by default. A private tracker
/// with 10,000 of our torrents then hears from us for 1,000 s per round, well
/// within the usual 30-60 min interval, and never more than it would from
/// a few dozen users announcing at once.
pub const DEFAULT_PER_HOST: u32 = 10;
/// Starts (first announces) a second across all hosts, after a burst of
/// twice as many.
pub const STARTS_PER_SECOND: u32 = 50;
/// Hosts with a bucket of their own, at most.
pub const MAX_HOSTS: usize = 1024;
/// The bucket hosts past [`MAX_HOSTS`] share (no host name is empty).
const OVERFLOW: &str = "";

/// A token bucket as GCRA: `burst` slots at once, then one every `every`.
#[derive(Debug, Clone, Copy)]
struct Rate {
    every: Duration,
    burst: u32,
}

impl Rate {
    /// `per_second` slots a second, twice as many at once; none for 0.
    fn per_second(per_second: u32) -> Option<Rate> {
        // The config holds it far lower; bounded here all the same.
        let per_second = per_second.min(1_000_000);
        (per_second > 0).then(|| Rate { every: Duration::from_secs(1) / per_second, burst: per_second * 2 })
    }

    /// Takes the next slot of a bucket whose theoretical arrival time is
    /// `tat`, asked at `now`: returns its new `tat` and when the slot is.
    fn take(self, tat: Option<Instant>, now: Instant) -> (Instant, Instant) {
        let tat = tat.map_or(now, |t| t.max(now));
        let tolerance = self.every * self.burst.saturating_sub(1);
        let at = tat.checked_sub(tolerance).map_or(now, |t| t.max(now));
        (tat + self.every, at)
    }
}

/// The session's announce pacer (kept in the announce book).
#[derive(Debug)]
pub struct HostPacer {
    /// None: announces are not paced per host.
    host_rate: Option<Rate>,
    start_rate: Option<Rate>,
    state: Mutex<State>,
}

/// A reserved slot: how long to wait for it, and the bucket it came from.
#[derive(Debug)]
pub struct Slot {
    pub wait: Duration,
    /// The host's bucket (none when hosts are not paced), with its instant
    /// before and after this reservation.
    key: Option<(String, Taken)>,
    /// Taken from the bucket of starts too.
    start: Option<Taken>,
}

/// A bucket's instant before and after one reservation: given back while
/// nobody reserved after it, the bucket is as it was.
#[derive(Debug, Clone, Copy)]
struct Taken {
    before: Option<Instant>,
    after: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Theoretical arrival time of each host's bucket.
    hosts: HashMap<String, Instant>,
    starts: Option<Instant>,
}

impl Default for HostPacer {
    fn default() -> HostPacer {
        HostPacer::new(DEFAULT_PER_HOST)
    }
}

impl HostPacer {
    /// At most `per_host` announces a second to one host (and bursts of
    /// twice as many); 0 paces nothing, starts included.
    pub fn new(per_host: u32) -> HostPacer {
        let start_rate = Rate::per_second(STARTS_PER_SECOND).filter(|_| per_host > 0);
        HostPacer { host_rate: Rate::per_second(per_host), start_rate, state: Mutex::default() }
    }

    /// Reserves a start slot (a torrent's first announce) asked for at
    /// `now`, from the session-wide bucket of starts only: its host's slot
    /// is reserved when the start slot comes, so that 5,000 starts queued
    /// here do not push that host's bucket 8 minutes out and hold back the
    /// re-announces of its torrents already running.
    fn reserve_start(&self, now: Instant) -> Slot {
        let mut state = locked(&self.state);
        let Some(rate) = self.start_rate else { return Slot { wait: Duration::ZERO, key: None, start: None } };
        let before = state.starts;
        let (tat, at) = rate.take(before, now);
        state.starts = Some(tat);
        Slot { wait: at - now, key: None, start: Some(Taken { before, after: tat }) }
    }

    /// Reserves the slot of an announce to `host` asked for at `now`.
    fn reserve_host(&self, host: &str, now: Instant) -> Slot {
        let mut state = locked(&self.state);
        let Some(rate) = self.host_rate else { return Slot { wait: Duration::ZERO, key: None, start: None } };
        let k = state.key(host, now);
        let before = state.hosts.get(k.as_str()).copied();
        let (tat, at) = rate.take(before, now);
        state.hosts.insert(k.clone(), tat);
        Slot { wait: at - now, key: Some((k, Taken { before, after: tat })), start: None }
    }

    /// How long an announce to `host` asked for at `now` (a torrent's first
    /// with `start`) waits, its slots reserved as [`HostPacer::wait`] would.
    #[cfg(test)]
    fn slot(&self, host: &str, start: bool, now: Instant) -> Duration {
        let started = if start { self.reserve_start(now).wait } else { Duration::ZERO };
        started + self.reserve_host(host, now + started).wait
    }

    /// A slot no longer waited for (its torrent stopped meanwhile) goes back
    /// to the next to ask: 10,000 torrents paused while they wait must not
    /// hold back the one resumed after them.
    pub fn give_back(&self, slot: &Slot, now: Instant) {
        let mut state = locked(&self.state);
        // The last reserved: the bucket as it was; else one step less.
        let back = |tat: &mut Instant, taken: Taken, rate: Option<Rate>| {
            if let (Some(rate), true) = (rate, *tat > now) {
                *tat = match taken.before {
                    Some(before) if *tat == taken.after => before.max(now),
                    None if *tat == taken.after => now,
                    _ => tat.checked_sub(rate.every).map_or(now, |t| t.max(now)),
                };
            }
        };
        if let Some((k, taken)) = &slot.key {
            if let Some(tat) = state.hosts.get_mut(k) {
                back(tat, *taken, self.host_rate);
            }
        }
        if let (Some(tat), Some(taken)) = (state.starts.as_mut(), slot.start) {
            back(tat, taken, self.start_rate);
        }
    }

    /// Waits for the slot of an announce to `host`: a start waits for its
    /// start slot first, then everything for its host's. Dropped before a
    /// slot comes, gives it back.
    pub async fn wait(&self, host: &str, start: bool) {
        if start {
            self.wait_for(|pacer| pacer.reserve_start(now())).await;
        }
        self.wait_for(|pacer| pacer.reserve_host(host, now())).await;
    }

    async fn wait_for(&self, reserve: impl FnOnce(&HostPacer) -> Slot) {
        /// Gives the slot back unless the wait ran to its end.
        struct Waiting<'p>(&'p HostPacer, Option<Slot>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if let Some(slot) = self.1.take() {
                    self.0.give_back(&slot, now());
                }
            }
        }
        let slot = reserve(self);
        if slot.wait.is_zero() {
            return;
        }
        let wait = slot.wait;
        let mut waiting = Waiting(self, Some(slot));
        tokio::time::sleep(wait).await;
        waiting.1 = None;
    }

    /// Hosts with a bucket of their own now (for tests).
    #[cfg(test)]
    fn hosts(&self) -> usize {
        locked(&self.state).hosts.len()
    }
}

/// Now on tokio's clock (the one its sleeps follow, paused in tests).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl State {
    /// The bucket `host` uses: its own, unless [`MAX_HOSTS`] hosts still
    /// hold slots (those idle are forgotten first).
    fn key(&mut self, host: &str, now: Instant) -> String {
        if self.hosts.contains_key(host) {
            return host.to_string();
        }
        if self.hosts.len() >= MAX_HOSTS {
            self.hosts.retain(|_, tat| *tat > now);
        }
        if self.hosts.len() >= MAX_HOSTS {
            OVERFLOW.to_string()
        } else {
            host.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_passes_at_once_then_one_a_tenth_of_a_second() {
        let pacer = HostPacer::new(10);
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..25).map(|_| pacer.slot("t.example", false, t0)).collect();
        assert!(waits[..20].iter().all(|w| w.is_zero()), "{waits:?}");
        assert_eq!(waits[20..], [ms(100), ms(200), ms(300), ms(400), ms(500)]);
        // Another host has its own bucket.
        assert_eq!(pacer.slot("u.example", false, t0), Duration::ZERO);
        // A second later: 10 slots came back, the 5 reserved ones taken.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(pacer.slot("t.example", false, t1), Duration::ZERO, "refilled");
        // Long idle: the whole burst is back.
        let t2 = t0 + Duration::from_secs(60);
        assert!((0..20).all(|_| pacer.slot("t.example", false, t2).is_zero()));
        assert_eq!(pacer.slot("t.example", false, t2), ms(100));
    }

    #[test]
    fn ten_thousand_announces_to_one_host_hold_the_rate_in_every_second() {
        let pacer = HostPacer::new(10);
        let t0 = Instant::now();
        let mut per_second = HashMap::<u64, u32>::new();
        // Asked over the first 5 s, as torrents come up.
        for i in 0..10_000u64 {
            let now = t0 + ms(i / 2);
            let at = now + pacer.slot("private.example", false, now) - t0;
            *per_second.entry(at.as_secs()).or_default() += 1;
        }
        let most = per_second.values().max().copied().unwrap();
        assert!(most <= 10 + 20, "at most the rate and one burst in a second: {most}");
        let last = per_second.keys().max().copied().unwrap();
        assert!((995..=1000).contains(&last), "the round takes 1,000 s: {last}");
    }

    #[test]
    fn starts_of_many_hosts_spread_too() {
        let pacer = HostPacer::new(10);
        let t0 = Instant::now();
        // 1,000 torrents, each of its own host, started together.
        let waits: Vec<Duration> = (0..1000).map(|i| pacer.slot(&format!("h{i}.example"), true, t0)).collect();
        let in_first_second = waits.iter().filter(|w| **w < Duration::from_secs(1)).count();
        assert!(in_first_second <= 100 + 50, "{in_first_second}");
        assert_eq!(waits[999], Duration::from_secs(1) / 50 * 900, "one start every 20 ms after the burst");
        // Not a start: a re-announce only waits for its host.
        assert_eq!(pacer.slot("h0.example", false, t0), Duration::ZERO);
    }

    #[test]
    fn the_config_default_is_this_default() {
        assert_eq!(crate::config::Network::default().announces_per_host, DEFAULT_PER_HOST);
    }

    #[test]
    fn slots_given_back_go_to_the_next_to_ask() {
        let pacer = HostPacer::new(10);
        let t0 = Instant::now();
        let slots: Vec<Slot> = (0..100).map(|_| pacer.reserve_host("t.example", t0)).collect();
        assert_eq!(pacer.slot("t.example", false, t0), ms(8100), "behind 100 reserved");
        // Those waiting (all but the burst) are paused meanwhile.
        for s in slots.iter().filter(|s| !s.wait.is_zero()) {
            pacer.give_back(s, t0 + ms(10));
        }
        let next = pacer.reserve_host("t.example", t0 + ms(10));
        assert!(next.wait <= ms(200), "not held back by the abandoned: {:?}", next.wait);
        // Given back long after, a slot changes nothing.
        pacer.give_back(&next, t0 + Duration::from_secs(60));
        assert_eq!(pacer.slot("t.example", false, t0 + Duration::from_secs(60)), Duration::ZERO);
    }

    #[test]
    fn a_start_given_back_goes_to_the_next_start() {
        let pacer = HostPacer::new(10);
        let t0 = Instant::now();
        // 500 torrents of other hosts start first: a start now waits 8 s.
        for i in 0..500 {
            pacer.slot(&format!("h{i}.example"), true, t0);
        }
        let start = pacer.reserve_start(t0);
        assert!(start.wait >= Duration::from_secs(8), "{:?}", start.wait);
        // Paused before its slot: the next start has it.
        pacer.give_back(&start, t0 + ms(10));
        assert_eq!(pacer.reserve_start(t0 + ms(10)).wait, start.wait - ms(10));
        // Its host was never asked for a slot.
        assert_eq!(pacer.slot("x.example", false, t0 + ms(10)), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_wait_dropped_before_its_slot_gives_it_back() {
        let pacer = HostPacer::new(1);
        for _ in 0..2 {
            pacer.wait("t.example", false).await;
        }
        let t0 = Instant::now();
        let abandoned = tokio::time::timeout(ms(10), pacer.wait("t.example", false)).await;
        assert!(abandoned.is_err(), "the third waits a second");
        assert!(pacer.slot("t.example", false, t0) <= Duration::from_secs(1), "not two");
    }

    #[test]
    fn zero_paces_nothing() {
        let pacer = HostPacer::new(0);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| pacer.slot("t.example", true, t0).is_zero()));
        assert_eq!(pacer.hosts(), 0);
    }

    #[test]
    fn the_map_of_hosts_is_bounded_and_forgets_idle_hosts() {
        let pacer = HostPacer::new(10);
        let t0 = Instant::now();
        for i in 0..MAX_HOSTS + 500 {
            pacer.slot(&format!("h{i}.example"), false, t0);
        }
        assert_eq!(pacer.hosts(), MAX_HOSTS + 1, "the cap and the shared bucket");
        // Past the cap, hosts share one bucket: its burst, then the rate.
        assert!(pacer.slot("new.example", false, t0) > Duration::ZERO);
        // A second on, every bucket is full again: idle hosts go.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(pacer.slot("new.example", false, later), Duration::ZERO);
        assert!(pacer.hosts() <= 2, "{}", pacer.hosts());
    }

    #[tokio::test(start_paused = true)]
    async fn starts_queued_for_a_host_do_not_hold_back_its_running_torrents() {
        let pacer = std::sync::Arc::new(HostPacer::new(10));
        // 1,000 torrents of one tracker start together: 100 s of its slots.
        let starts: Vec<_> = (0..1000)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move { pacer.wait("t.example", true).await })
            })
            .collect();
        // Each runs to its first sleep (the scheduler runs 61 at a turn).
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        // A torrent of that tracker already running re-announces meanwhile:
        // it waits behind the starts sent so far (a burst of 100 at most),
        // not behind every start still queued.
        let t0 = tokio::time::Instant::now();
        pacer.wait("t.example", false).await;
        let waited = t0.elapsed();
        assert!(waited < Duration::from_secs(15), "held back {waited:?}");
        drop(starts);
    }
}
