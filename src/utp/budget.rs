//! The bytes that all uTP connections on a socket hold out of order, together.
//!
//! Each connection bounds its own reorder buffer, but a thousand peers that
//! each park data behind a gap they never fill would still add up to
//! gigabytes. So every packet held past a gap is also charged here (its
//! payload and what keeping it costs), and a packet that does not fit is
//! dropped: its sender resends it once the gap is filled. In-order data
//! never touches the budget, so the hot path is unchanged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Out-of-order bytes all connections on one socket hold at most.
pub const REORDER_BUDGET: usize = 32 << 20;

#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { used: AtomicUsize::new(0), limit })
    }

    /// Takes `n` bytes if they fit; false (and nothing taken) if not.
    pub fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken before.
    pub fn give(&self, n: usize) {
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
        let b = Budget::new(100);
        assert!(b.take(60) && b.take(40));
        assert!(!b.take(1), "full");
        assert!(!b.take(usize::MAX), "no overflow");
        b.give(40);
        assert!(!b.take(41) && b.take(40));
        b.give(100);
        assert_eq!(b.used(), 0);
    }
}
