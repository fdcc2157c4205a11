//! How much of the multicast group we listen to. Any host on the LAN can
//! send announces as fast as it likes; each costs a parse and may hand a
//! torrent an address to dial. Two token buckets bound that: one for every
//! datagram and one per sending host, both checked before parsing, the
//! host's first: a host over its own rate is dropped without touching the
//! global budget, so one flooding host cannot starve the others. The table
//! of hosts is bounded too. Pure: the caller passes
//! the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Datagrams read per second from everyone, with this burst.
const ALL_PER_SEC: f64 = 100.0;
const ALL_BURST: f64 = 200.0;
/// Datagrams (one announce each) read per second from one host, with this burst: libtorrent
/// sends one per torrent, spread over its 5-minute round, and repeats a new
/// torrent's twice within 6 s.
const HOST_PER_SEC: f64 = 1.0;
const HOST_BURST: f64 = 20.0;
/// Hosts tracked at most; beyond, a new host waits for room.
pub const MAX_HOSTS: usize = 1024;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, at: now }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * rate).min(burst);
        self.at = now;
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }
}

pub struct Gate {
    all: Bucket,
    hosts: HashMap<IpAddr, Bucket>,
}

/// Why a datagram was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its host is over its own rate.
    Host,
    /// Everyone together is over the global rate.
    All,
}

impl Gate {
    pub fn new(now: Instant) -> Gate {
        Gate { all: Bucket::full(ALL_BURST, now), hosts: HashMap::new() }
    }

    /// Whether to read a datagram from `host` at all. Its host's budget is
    /// checked first, so a flooding host spends its own tokens, not
    /// everyone's; a host is charged only for what the global budget lets
    /// through.
    pub fn admit(&mut self, host: IpAddr, now: Instant) -> Result<(), Refused> {
        let Some(bucket) = self.host_bucket(host, now) else {
            return Err(Refused::Host);
        };
        bucket.refill(now, HOST_PER_SEC, HOST_BURST);
        if bucket.tokens < 1.0 {
            return Err(Refused::Host);
        }
        if !self.all.take(now, ALL_PER_SEC, ALL_BURST) {
            return Err(Refused::All);
        }
        if let Some(bucket) = self.hosts.get_mut(&host) {
            bucket.tokens -= 1.0;
        }
        Ok(())
    }

    /// `host`'s bucket, made full for a new host if the table has room.
    fn host_bucket(&mut self, host: IpAddr, now: Instant) -> Option<&mut Bucket> {
        if !self.hosts.contains_key(&host) && self.hosts.len() >= MAX_HOSTS {
            // A refilled bucket is the same as none: forget those.
            self.hosts.retain(|_, b| {
                b.refill(now, HOST_PER_SEC, HOST_BURST);
                b.tokens < HOST_BURST
            });
            if self.hosts.len() >= MAX_HOSTS {
                return None;
            }
        }
        Some(self.hosts.entry(host).or_insert_with(|| Bucket::full(HOST_BURST, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flooding_host_gets_its_burst_then_one_a_second() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        let flood: IpAddr = [192, 168, 1, 66].into();
        let taken = (0..1000).filter(|_| g.admit(flood, t0).is_ok()).count();
        assert_eq!(taken, HOST_BURST as usize);
        assert_eq!(g.admit([192, 168, 1, 7].into(), t0), Ok(()), "another host is not held back");
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..1000).filter(|_| g.admit(flood, later).is_ok()).count(), 10);
    }

    /// Issue #23, 14: one host at ~2,000 datagrams a second must not
    /// starve another announcing once a second.
    #[test]
    fn a_flooding_host_does_not_starve_a_steady_one() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        let (flood, steady): (IpAddr, IpAddr) = ([192, 168, 1, 66].into(), [192, 168, 1, 7].into());
        let (mut admitted, mut flood_admitted) = (0, 0);
        for ms in 0..18_000u64 {
            let now = t0 + Duration::from_millis(ms);
            flood_admitted += (0..2).filter(|_| g.admit(flood, now).is_ok()).count();
            if ms % 1000 == 500 {
                admitted += usize::from(g.admit(steady, now).is_ok());
            }
        }
        assert_eq!(admitted, 18, "every one of the steady host's announces is read");
        // The flood got its burst and then its own rate, no more.
        assert!(flood_admitted <= HOST_BURST as usize + 18, "{flood_admitted}");
    }

    #[test]
    fn datagrams_overall_are_capped() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        // Many hosts, each well within its own rate.
        let host = |i: u32| IpAddr::from((0x0a00_0000 + i % 1000).to_be_bytes());
        assert_eq!((0..10_000).filter(|&i| g.admit(host(i), t0).is_ok()).count(), ALL_BURST as usize);
        let later = t0 + Duration::from_millis(500);
        assert_eq!((0..10_000).filter(|&i| g.admit(host(i), later).is_ok()).count(), 50);
    }

    #[test]
    fn the_host_table_is_bounded() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        // Spread over time so the global budget lets each one in.
        for i in 0..(MAX_HOSTS as u32 * 3) {
            let _ = g.admit(IpAddr::from(i.to_be_bytes()), t0 + Duration::from_millis(u64::from(i) * 10));
        }
        assert!(g.hosts.len() <= MAX_HOSTS);
        // Once their buckets refill, old hosts make room for new ones.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(g.admit([10, 9, 9, 9].into(), later), Ok(()));
    }
}
