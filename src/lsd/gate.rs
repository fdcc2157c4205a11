//! How much of the multicast group we listen to. Any host on the LAN can
//! send announces as fast as it likes; each costs a parse and may hand a
//! torrent an address to dial. Two token buckets bound that: one for every
//! datagram (checked before parsing), one per sending host for valid
//! announces. The table of hosts is bounded too. Pure: the caller passes
//! the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Datagrams read per second from everyone, with this burst.
const ALL_PER_SEC: f64 = 100.0;
const ALL_BURST: f64 = 200.0;
/// Announces taken per second from one host, with this burst: libtorrent
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

impl Gate {
    pub fn new(now: Instant) -> Gate {
        Gate { all: Bucket::full(ALL_BURST, now), hosts: HashMap::new() }
    }

    /// Whether to read a datagram at all.
    pub fn datagram(&mut self, now: Instant) -> bool {
        self.all.take(now, ALL_PER_SEC, ALL_BURST)
    }

    /// Whether to act on a valid announce from `host`.
    pub fn announce(&mut self, host: IpAddr, now: Instant) -> bool {
        if !self.hosts.contains_key(&host) && self.hosts.len() >= MAX_HOSTS {
            // A refilled bucket is the same as none: forget those.
            self.hosts.retain(|_, b| {
                b.refill(now, HOST_PER_SEC, HOST_BURST);
                b.tokens < HOST_BURST
            });
            if self.hosts.len() >= MAX_HOSTS {
                return false;
            }
        }
        let bucket = self.hosts.entry(host).or_insert_with(|| Bucket::full(HOST_BURST, now));
        bucket.take(now, HOST_PER_SEC, HOST_BURST)
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
        let taken = (0..1000).filter(|_| g.announce(flood, t0)).count();
        assert_eq!(taken, HOST_BURST as usize);
        assert!(g.announce([192, 168, 1, 7].into(), t0), "another host is not held back");
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..1000).filter(|_| g.announce(flood, later)).count(), 10);
    }

    #[test]
    fn datagrams_overall_are_capped() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        assert_eq!((0..10_000).filter(|_| g.datagram(t0)).count(), ALL_BURST as usize);
        let later = t0 + Duration::from_millis(500);
        assert_eq!((0..10_000).filter(|_| g.datagram(later)).count(), 50);
    }

    #[test]
    fn the_host_table_is_bounded() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        for i in 0..(MAX_HOSTS as u32 * 3) {
            g.announce(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(g.hosts.len() <= MAX_HOSTS);
        // Once their buckets refill, old hosts make room for new ones.
        let later = t0 + Duration::from_secs(60);
        assert!(g.announce([10, 9, 9, 9].into(), later));
    }
}
