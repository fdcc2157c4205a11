//! The bytes that all uTP connections on a socket hold out of order, together.
//!
//! Each connection bounds its own reorder buffer, but a thousand peers that
//! each park data behind a gap they never fill would still add up to
//! gigabytes. So every packet held past a gap is also charged here (its
//! payload and what keeping it costs), and a packet that does not fit is
//! dropped: its sender resends it once the gap is filled. In-order data
//! never touches the budget, so the hot path is unchanged.

use crate::types::host_of;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Out-of-order bytes all connections on one socket hold at most.
pub const REORDER_BUDGET: usize = 32 << 20;
/// One host (all its connections, whatever torrent) holds at most this
/// fraction of the budget: 2 MiB, four full connections' worth. Without
/// it one host's 64 connections would take the whole budget and every
/// honest peer's out-of-order packets would be dropped.
pub const HOST_SHARE: usize = 16;

#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// What each host holds; only hosts holding something (so at most one
    /// entry per connection). Touched only for packets held out of order.
    hosts: Mutex<HashMap<IpAddr, usize>>,
}

impl Budget {
    /// `hosts`, locked.
    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        crate::locks::locked(&self.hosts)
    }
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { used: AtomicUsize::new(0), limit, hosts: Mutex::default() })
    }

    /// Takes `n` bytes for a connection from `ip` if they fit in its
    /// host's share and in the total; false (and nothing taken) if not.
    pub fn take(&self, ip: IpAddr, n: usize) -> bool {
        let mut hosts = self.hosts();
        let host = host_of(ip);
        let held = hosts.get(&host).copied().unwrap_or(0);
        if held.checked_add(n).is_none_or(|h| h > self.limit / HOST_SHARE) || !self.take_total(n) {
            return false;
        }
        *hosts.entry(host).or_default() += n;
        true
    }

    fn take_total(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken before for `ip`.
    pub fn give(&self, ip: IpAddr, n: usize) {
        if n == 0 {
            return;
        }
        let mut hosts = self.hosts();
        let host = host_of(ip);
        if let Some(held) = hosts.get_mut(&host) {
            debug_assert!(*held >= n, "a host gave back more than it took");
            *held = held.saturating_sub(n);
            if *held == 0 {
                hosts.remove(&host);
            }
        }
        let before = self.used.fetch_sub(n, Ordering::Relaxed);
        debug_assert!(before >= n, "gave back more than was taken");
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_what_fits_and_gets_it_back() {
        let b = Budget::new(100 * HOST_SHARE);
        let host = |i: u8| IpAddr::from([10, 0, 0, i]);
        for i in 0..HOST_SHARE as u8 - 1 {
            assert!(b.take(host(i), 100));
        }
        assert!(!b.take(host(0), 1), "a host's share is full");
        assert!(b.take(host(99), 60) && b.take(host(99), 40));
        assert!(!b.take(host(100), 1), "full");
        assert!(!b.take(host(100), usize::MAX), "no overflow");
        b.give(host(99), 40);
        assert!(!b.take(host(100), 41) && b.take(host(100), 40));
        b.give(host(99), 60);
        b.give(host(100), 40);
        for i in 0..HOST_SHARE as u8 - 1 {
            b.give(host(i), 100);
        }
        assert_eq!(b.used(), 0);
        assert!(b.hosts().is_empty(), "hosts holding nothing are forgotten");
    }
}
