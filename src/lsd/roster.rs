//! Which torrents we announce, and when each is due. A torrent joins when
//! its active phase starts and leaves when it ends; it is announced a
//! moment after it joins, then every [`EVERY`]. BEP 14 asks for at most one
//! announce a minute, so each message carries every due torrent that fits
//! (the longest waiting first) and the rest wait for the next one. Pure:
//! the caller passes the time.

use crate::types::InfoHash;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a torrent is announced (BEP 14: every 5 minutes).
pub const EVERY: Duration = Duration::from_secs(5 * 60);
/// Messages are at least this far apart (BEP 14: one a minute at most).
pub const MIN_GAP: Duration = Duration::from_secs(60);
/// A torrent's first announce waits this long, so torrents starting
/// together (the daemon starting) share a message.
pub const FIRST_AFTER: Duration = Duration::from_secs(2);

struct Member<T> {
    /// Tells this membership from an earlier one of the same torrent.
    id: u64,
    due: Instant,
    value: T,
}

/// The torrents we announce, each with what the receiving side needs (`T`:
/// where its peers go).
pub struct Roster<T> {
    members: HashMap<InfoHash, Member<T>>,
    next_id: u64,
    last_sent: Option<Instant>,
}

impl<T> Default for Roster<T> {
    fn default() -> Roster<T> {
        Roster { members: HashMap::new(), next_id: 0, last_sent: None }
    }
}

impl<T> Roster<T> {
    /// Adds (or replaces) `hash`; returns its membership id for [`Roster::leave`].
    pub fn join(&mut self, hash: InfoHash, value: T, now: Instant) -> u64 {
        self.next_id += 1;
        self.members.insert(hash, Member { id: self.next_id, due: now + FIRST_AFTER, value });
        self.next_id
    }

    /// Removes `hash` if its membership is still `id`.
    pub fn leave(&mut self, hash: InfoHash, id: u64) {
        if self.members.get(&hash).is_some_and(|m| m.id == id) {
            self.members.remove(&hash);
        }
    }

    pub fn get(&self, hash: &InfoHash) -> Option<&T> {
        self.members.get(hash).map(|m| &m.value)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The torrents to announce now (at most `max`, the longest due first),
    /// marked as sent; empty while the last message is under a minute old.
    pub fn take_due(&mut self, now: Instant, max: usize) -> Vec<InfoHash> {
        if self.last_sent.is_some_and(|t| now < t + MIN_GAP) {
            return Vec::new();
        }
        let mut due: Vec<(Instant, InfoHash)> =
            self.members.iter().filter(|(_, m)| m.due <= now).map(|(h, m)| (m.due, *h)).collect();
        due.sort();
        due.truncate(max);
        for (_, h) in &due {
            if let Some(m) = self.members.get_mut(h) {
                m.due = now + EVERY;
            }
        }
        if !due.is_empty() {
            self.last_sent = Some(now);
        }
        due.into_iter().map(|(_, h)| h).collect()
    }

    /// When [`Roster::take_due`] may next return something (None: nobody to announce).
    pub fn next_wake(&self) -> Option<Instant> {
        let soonest = self.members.values().map(|m| m.due).min()?;
        Some(match self.last_sent {
            Some(t) => soonest.max(t + MIN_GAP),
            None => soonest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> InfoHash {
        InfoHash([n; 20])
    }

    #[test]
    fn announced_soon_after_joining_then_every_five_minutes() {
        let t0 = Instant::now();
        let mut r = Roster::default();
        r.join(hash(1), (), t0);
        assert_eq!(r.take_due(t0, 25), vec![], "not before FIRST_AFTER");
        assert_eq!(r.next_wake(), Some(t0 + FIRST_AFTER));
        let t1 = t0 + FIRST_AFTER;
        assert_eq!(r.take_due(t1, 25), vec![hash(1)]);
        assert_eq!(r.take_due(t1 + EVERY - Duration::from_secs(1), 25), vec![]);
        assert_eq!(r.next_wake(), Some(t1 + EVERY));
        assert_eq!(r.take_due(t1 + EVERY, 25), vec![hash(1)]);
    }

    #[test]
    fn one_message_a_minute_carrying_the_longest_due_first() {
        let t0 = Instant::now();
        let mut r = Roster::default();
        for n in 0..60 {
            r.join(hash(n), (), t0 + Duration::from_millis(n as u64));
        }
        let t1 = t0 + Duration::from_secs(3);
        let first = r.take_due(t1, 25);
        assert_eq!(first, (0..25).map(hash).collect::<Vec<_>>());
        // A torrent joining now waits for the minute to pass.
        r.join(hash(200), (), t1);
        assert_eq!(r.take_due(t1 + Duration::from_secs(30), 25), vec![]);
        assert_eq!(r.next_wake(), Some(t1 + MIN_GAP));
        let second = r.take_due(t1 + MIN_GAP, 25);
        assert_eq!(second, (25..50).map(hash).collect::<Vec<_>>());
        let third = r.take_due(t1 + 2 * MIN_GAP, 25);
        assert_eq!(third.len(), 11, "the last ten and the newcomer");
        assert!(third.contains(&hash(200)));
    }

    #[test]
    fn leaving_takes_only_the_same_membership() {
        let t0 = Instant::now();
        let mut r = Roster::default();
        let old = r.join(hash(1), "old", t0);
        let new = r.join(hash(1), "new", t0);
        r.leave(hash(1), old);
        assert_eq!(r.get(&hash(1)), Some(&"new"), "a stale leave does not remove a rejoined torrent");
        r.leave(hash(1), new);
        assert!(r.is_empty());
        assert_eq!(r.next_wake(), None);
    }
}
