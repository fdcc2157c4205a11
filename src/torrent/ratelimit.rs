//! Global rate limits (`[limits] download_rate`, `upload_rate`) as a
//! reservation clock: each transfer reserves its bytes and is told when it
//! may go. Reservations queue in the order they are made, and a peer reserves
//! its next block only after its last one went, so peers interleave and none
//! starves. A short burst allowance keeps idle time from being saved up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle time that may be spent later at once.
const BURST: Duration = Duration::from_millis(100);

pub struct RateLimiter {
    /// Bytes per second; 0 = unlimited.
    rate: AtomicU64,
    next_free: Mutex<Instant>,
    charged: AtomicU64,
}

impl RateLimiter {
    pub fn new(rate: u64) -> RateLimiter {
        RateLimiter { rate: AtomicU64::new(rate), next_free: Mutex::new(Instant::now()), charged: AtomicU64::new(0) }
    }

    /// A new rate, from now: what a lower one had reserved ahead of time
    /// is forgotten, so raising a limit takes effect at once.
    pub fn set_rate(&self, rate: u64) {
        if self.rate.swap(rate, Ordering::Relaxed) != rate {
            let mut next = crate::locks::locked(&self.next_free);
            *next = (*next).min(Instant::now());
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Total bytes reserved while a rate was set (what the limit was charged).
    pub fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` at `now`; returns when they may be sent (`None`:
    /// unlimited, go now).
    pub fn reserve_at(&self, bytes: u64, now: Instant) -> Option<Instant> {
        let rate = self.rate();
        if rate == 0 {
            return None;
        }
        self.charged.fetch_add(bytes, Ordering::Relaxed);
        let mut next = self.next_free.lock().unwrap();
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let start = (*next).max(earliest);
        *next = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        Some(start.max(now))
    }

    pub fn reserve(&self, bytes: u64) -> Option<Instant> {
        self.reserve_at(bytes, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_a_limit_takes_effect_at_once() {
        let limit = RateLimiter::new(1);
        for _ in 0..20 {
            limit.reserve(16384);
        }
        // Hours of 1 B/s reserved ahead; then the limit goes up.
        limit.set_rate(10 << 20);
        let at = limit.reserve(16384).unwrap();
        assert!(at <= Instant::now() + Duration::from_millis(100), "still waiting {:?}", at - Instant::now());
    }

    #[test]
    fn unlimited_never_waits() {
        let l = RateLimiter::new(0);
        assert_eq!(l.reserve(1 << 30), None);
    }

    #[test]
    fn charged_counts_bytes_reserved_under_a_rate() {
        let l = RateLimiter::new(0);
        l.reserve(500);
        assert_eq!(l.charged(), 0, "unlimited charges nothing");
        l.set_rate(1 << 30);
        let t0 = Instant::now();
        l.reserve_at(100, t0);
        l.reserve_at(16384, t0);
        assert_eq!(l.charged(), 16484);
        l.set_rate(0);
        l.reserve(1000);
        assert_eq!(l.charged(), 16484);
    }

    #[test]
    fn sustained_rate_is_the_limit() {
        let l = RateLimiter::new(1000);
        let t0 = Instant::now();
        // 100 reservations of 100 bytes all made at t0: the last may go at ~9.9 s.
        let mut last = t0;
        for _ in 0..100 {
            last = l.reserve_at(100, t0).unwrap();
        }
        let secs = (last - t0).as_secs_f64();
        assert!((9.7..=10.0).contains(&secs), "{secs}");
    }

    #[test]
    fn idle_time_is_not_saved_beyond_the_burst() {
        let l = RateLimiter::new(1000);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        // After a minute idle, only BURST worth (100 bytes) goes free.
        assert_eq!(l.reserve_at(100, later), Some(later));
        let next = l.reserve_at(1000, later).unwrap();
        assert!(next <= later + Duration::from_millis(1));
        let after = l.reserve_at(1, later).unwrap();
        assert!(after >= later + Duration::from_millis(990), "{:?}", after - later);
    }

    #[test]
    fn interleaved_peers_share_evenly() {
        // Two peers alternate reservations: each gets every other slot.
        let l = RateLimiter::new(16384);
        let t0 = Instant::now();
        let mut times = [Vec::new(), Vec::new()];
        for i in 0..20 {
            times[i % 2].push(l.reserve_at(16384, t0).unwrap());
        }
        let spread = |v: &Vec<Instant>| (v[v.len() - 1] - v[0]).as_secs_f64();
        assert!((spread(&times[0]) - spread(&times[1])).abs() < 1.01);
    }
}
