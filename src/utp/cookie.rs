//! Stateless SYN cookies for incoming uTP connections.
//!
//! A SYN costs us nothing but a STATE of its own size in reply: no table
//! entry, no task. Our first sequence number in that STATE is a keyed hash
//! of the peer's address, port, connection id and SYN sequence number; a
//! peer that got it proves so by acknowledging that number minus one in its
//! first packet, and only then is the connection built. So a flood of
//! spoofed SYNs, however fast, leaves nothing behind that could push an
//! honest half-open peer out, whatever its round trip.
//!
//! The key is random per process and changes every [`SLOT_US`]; the one
//! before is still accepted, so a handshake spanning a change works.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::SocketAddr;
use std::sync::Mutex;

/// How long one key is in use (microseconds of the socket's clock).
pub const SLOT_US: u64 = 60_000_000;

/// One key: SipHash's random keys and a random salt on top.
struct Key {
    hasher: RandomState,
    salt: u64,
}

impl Key {
    fn new() -> Key {
        Key { hasher: RandomState::new(), salt: rand::random() }
    }

    fn cookie(&self, from: SocketAddr, conn_id: u16, syn_seq: u16) -> u16 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(self.salt);
        match from.ip() {
            std::net::IpAddr::V4(v4) => h.write(&v4.octets()),
            std::net::IpAddr::V6(v6) => h.write(&v6.octets()),
        }
        h.write_u16(from.port());
        h.write_u16(conn_id);
        h.write_u16(syn_seq);
        h.finish() as u16
    }
}

struct Keys {
    slot: u64,
    current: Key,
    previous: Key,
}

pub struct Cookies {
    keys: Mutex<Keys>,
}

impl Cookies {
    /// `keys`, locked.
    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        crate::locks::locked(&self.keys)
    }
}

impl Default for Cookies {
    fn default() -> Cookies {
        Cookies { keys: Mutex::new(Keys { slot: 0, current: Key::new(), previous: Key::new() }) }
    }
}

impl Cookies {
    /// Our first sequence number for a SYN from `from` with `conn_id`
    /// and `syn_seq`, at `now`.
    pub fn issue(&self, now: u64, from: SocketAddr, conn_id: u16, syn_seq: u16) -> u16 {
        let mut keys = self.keys();
        keys.rotate(now);
        keys.current.cookie(from, conn_id, syn_seq)
    }

    /// Whether `cookie` is one we issued for that SYN in this slot or the one before.
    pub fn check(&self, now: u64, from: SocketAddr, conn_id: u16, syn_seq: u16, cookie: u16) -> bool {
        let mut keys = self.keys();
        keys.rotate(now);
        keys.current.cookie(from, conn_id, syn_seq) == cookie || keys.previous.cookie(from, conn_id, syn_seq) == cookie
    }
}

impl Keys {
    fn rotate(&mut self, now: u64) {
        let slot = now / SLOT_US;
        if slot == self.slot {
            return;
        }
        let current = std::mem::replace(&mut self.current, Key::new());
        // After a longer gap the old key is too old to keep.
        self.previous = if slot == self.slot + 1 { current } else { Key::new() };
        self.slot = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_holds_for_its_slot_and_the_next_only() {
        let c = Cookies::default();
        let from = SocketAddr::from(([10, 0, 0, 1], 6881));
        let at = 5 * SLOT_US + 1;
        let cookie = c.issue(at, from, 7, 100);
        assert!(c.check(at + 1, from, 7, 100, cookie));
        assert!(c.check(at + SLOT_US, from, 7, 100, cookie), "the key before is still good");
        // A cookie is 16 bits: a different SYN may collide once in 65536;
        // these four all colliding would be one chance in 2^64.
        let other = SocketAddr::from(([10, 0, 0, 2], 6881));
        let others =
            [(other, 7, 100), (SocketAddr::from(([10, 0, 0, 1], 6882)), 7, 100), (from, 8, 100), (from, 7, 101)];
        assert!(!others.iter().all(|&(f, id, seq)| c.check(at + 1, f, id, seq, cookie)));
        assert!(
            !c.check(at + 2 * SLOT_US, from, 7, 100, cookie) || !c.check(at + 2 * SLOT_US, from, 7, 100, cookie ^ 1)
        );
    }
}
