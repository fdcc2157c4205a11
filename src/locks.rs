//! Taking a `std::sync::Mutex` one way everywhere, at the bottom of the
//! crate so every layer may use it. Each struct holding a mutex has one
//! small accessor calling [`locked`], so the rule about poisoning lives here
//! and not at each of the places that take a lock.

use std::sync::{Mutex, MutexGuard};

/// A mutex's guard. A lock is poisoned only when a thread panicked while
/// holding it, which is a bug: the data may be half-changed, so the panic
/// spreads to whoever takes the lock next rather than letting it work on
/// state no rule vouches for (as unwrapping the lock at each place did).
pub fn locked<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("a lock is poisoned only after a panic (a bug) while it was held")
}
