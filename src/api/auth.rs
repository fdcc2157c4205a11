//! Who may use the API: the password (a salted PBKDF2-SHA256 PHC string in
//! the config, never the password), the API key (only its hash is kept, in
//! `state_dir`), the session cookies handed out at login, and qBittorrent's
//! login throttle (a client IP failing [`MAX_FAILURES`] times is banned for
//! [`BAN`]).
//!
//! Everything here is pure and takes the time as an argument, so the
//! expiry and the ban are tested without clocks. The maps are bounded: an
//! attacker cycling source addresses or logging in in a loop cannot grow
//! them past [`MAX_SESSIONS`] / [`MAX_TRACKED_IPS`].

use pbkdf2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use pbkdf2::Pbkdf2;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// qBittorrent's defaults: 5 failures, then an hour's ban.
pub const MAX_FAILURES: u32 = 5;
pub const BAN: Duration = Duration::from_secs(3600);
/// A session cookie unused this long is gone (qBittorrent: 3600 s).
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
pub const MAX_SESSIONS: usize = 256;
pub const MAX_TRACKED_IPS: usize = 4096;

/// The PHC string of `password`, salted.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(rand::rngs::OsRng);
    Pbkdf2.hash_password(password.as_bytes(), &salt).expect("PBKDF2 with a generated salt").to_string()
}

/// Checks `password` against `phc` (slow on purpose: call off the async workers).
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Pbkdf2.verify_password(password.as_bytes(), &h).is_ok())
}

/// A fresh random token, hex: session ids and API keys.
pub fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the API key's hash is kept.
pub fn key_file(state_dir: &Path) -> PathBuf {
    state_dir.join("api-key.sha256")
}

/// The user name and password of an HTTP Basic header's value (after
/// `Basic `), if it is base64 of `user:password` in UTF-8.
pub fn basic_credentials(value: &str) -> Option<(String, String)> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(value.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The stored form of an API key. A key is 192 random bits, so a fast hash
/// is enough: nothing can be guessed from it.
pub fn key_digest(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first differing byte.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the throttle says about a login attempt from an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Banned until then.
    Banned(Instant),
}

/// Failed logins per address, and bans. An IPv6 client counts by its /64
/// (one host can hold a whole /64). The map never holds more than
/// [`MAX_TRACKED_IPS`] addresses, bans included: when full, expired entries
/// go, then the oldest counters, then the oldest bans, an eighth of the map
/// at once so that the cost of a flood stays amortised.
#[derive(Default)]
pub struct Throttle {
    ips: HashMap<IpAddr, Failures>,
}

#[derive(Debug, Clone, Copy)]
enum Failures {
    Counting { count: u32, last: Instant },
    Banned { until: Instant },
}

/// The address the throttle counts: IPv4 as is, IPv6 by its /64.
fn throttle_key(ip: IpAddr) -> IpAddr {
    crate::types::host_of(ip)
}

impl Throttle {
    pub fn gate(&mut self, ip: IpAddr, now: Instant) -> Gate {
        let ip = throttle_key(ip);
        match self.ips.get(&ip) {
            Some(Failures::Banned { until }) if *until > now => Gate::Banned(*until),
            Some(Failures::Banned { .. }) => {
                self.ips.remove(&ip);
                Gate::Open
            }
            _ => Gate::Open,
        }
    }

    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let ip = throttle_key(ip);
        if !self.ips.contains_key(&ip) && self.ips.len() >= MAX_TRACKED_IPS {
            self.make_room(now);
        }
        let next = match self.ips.get(&ip) {
            Some(Failures::Counting { count, last }) if now.duration_since(*last) < BAN => count + 1,
            _ => 1,
        };
        let entry = if next >= MAX_FAILURES {
            Failures::Banned { until: now + BAN }
        } else {
            Failures::Counting { count: next, last: now }
        };
        self.ips.insert(ip, entry);
    }

    pub fn succeeded(&mut self, ip: IpAddr) {
        self.ips.remove(&throttle_key(ip));
    }

    /// Makes room for an eighth of the map: expired entries go, then the
    /// oldest counters, then (a flood of banned addresses) the bans that
    /// began first.
    fn make_room(&mut self, now: Instant) {
        self.ips.retain(|_, f| match f {
            Failures::Banned { until } => *until > now,
            Failures::Counting { last, .. } => now.duration_since(*last) < BAN,
        });
        let keep = MAX_TRACKED_IPS - MAX_TRACKED_IPS / 8;
        if self.ips.len() <= keep {
            return;
        }
        let mut order: Vec<(bool, Instant, IpAddr)> = self
            .ips
            .iter()
            .map(|(ip, f)| match f {
                Failures::Counting { last, .. } => (false, *last, *ip),
                Failures::Banned { until } => (true, *until, *ip),
            })
            .collect();
        let excess = order.len() - keep;
        order.select_nth_unstable(excess - 1);
        for (_, _, ip) in &order[..excess] {
            self.ips.remove(ip);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ips.len()
    }
}

/// The session cookies handed out, with their last use.
#[derive(Default)]
pub struct Sessions {
    by_id: HashMap<String, Instant>,
}

impl Sessions {
    /// A new session; the least recently used goes when there are too many.
    pub fn open(&mut self, now: Instant) -> String {
        self.by_id.retain(|_, last| now.duration_since(*last) < SESSION_IDLE);
        if self.by_id.len() >= MAX_SESSIONS {
            if let Some(oldest) = self.by_id.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                self.by_id.remove(&oldest);
            }
        }
        let id = random_token();
        self.by_id.insert(id.clone(), now);
        id
    }

    /// Whether `id` is a live session; a use keeps it alive.
    pub fn touch(&mut self, id: &str, now: Instant) -> bool {
        match self.by_id.get_mut(id) {
            Some(last) if now.duration_since(*last) < SESSION_IDLE => {
                *last = now;
                true
            }
            Some(_) => {
                self.by_id.remove(id);
                false
            }
            None => false,
        }
    }

    pub fn close(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::is_phc;

    #[test]
    fn basic_credentials_are_base64_of_user_colon_password() {
        assert_eq!(basic_credentials("YWRtaW46czNjcjM6dA=="), Some(("admin".into(), "s3cr3:t".into())));
        assert_eq!(basic_credentials("bm9jb2xvbg=="), None, "no colon");
        assert_eq!(basic_credentials("!!!"), None, "not base64");
    }

    #[test]
    fn a_phc_string_verifies_its_password_only() {
        let phc = hash_password("s3cret");
        assert!(phc.starts_with("$pbkdf2-sha256$i="), "{phc}");
        assert!(is_phc(&phc));
        assert!(verify_password(&phc, "s3cret"));
        assert!(!verify_password(&phc, "s3cret "));
        assert!(!verify_password("not a phc", "s3cret"));
        assert!(!is_phc("s3cret"));
        assert_ne!(hash_password("s3cret"), phc, "salted");
    }

    #[test]
    fn five_failures_ban_for_an_hour() {
        let (mut t, ip, t0) = (Throttle::default(), "192.0.2.1".parse().unwrap(), Instant::now());
        for i in 0..MAX_FAILURES - 1 {
            t.failed(ip, t0 + Duration::from_secs(i.into()));
            assert_eq!(t.gate(ip, t0), Gate::Open);
        }
        t.failed(ip, t0 + Duration::from_secs(10));
        let until = t0 + Duration::from_secs(10) + BAN;
        assert_eq!(t.gate(ip, t0 + Duration::from_secs(11)), Gate::Banned(until));
        assert_eq!(t.gate("192.0.2.2".parse().unwrap(), t0), Gate::Open, "another address is not banned");
        assert_eq!(t.gate(ip, until), Gate::Open, "the ban ends");
    }

    #[test]
    fn a_success_clears_the_count() {
        let (mut t, ip, t0) = (Throttle::default(), "192.0.2.1".parse().unwrap(), Instant::now());
        for _ in 0..MAX_FAILURES - 1 {
            t.failed(ip, t0);
        }
        t.succeeded(ip);
        t.failed(ip, t0);
        assert_eq!(t.gate(ip, t0), Gate::Open);
    }

    #[test]
    fn the_throttle_stays_bounded_and_keeps_bans() {
        let (mut t, t0) = (Throttle::default(), Instant::now());
        let banned: IpAddr = "10.255.255.255".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            t.failed(banned, t0);
        }
        for i in 0..(MAX_TRACKED_IPS as u32 * 2) {
            t.failed(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t0 + Duration::from_millis(i.into()));
        }
        assert!(t.len() <= MAX_TRACKED_IPS);
        assert!(matches!(t.gate(banned, t0 + Duration::from_secs(60)), Gate::Banned(_)));
    }

    #[test]
    fn ten_times_the_cap_in_addresses_and_bans_never_grow_the_map_past_it() {
        let (mut t, t0) = (Throttle::default(), Instant::now());
        for i in 0..(MAX_TRACKED_IPS as u32 * 10) {
            let now = t0 + Duration::from_millis(i.into());
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            // Every address banned: bans count against the cap too.
            for _ in 0..MAX_FAILURES {
                t.failed(ip, now);
            }
            assert!(t.len() <= MAX_TRACKED_IPS, "{} after {i}", t.len());
        }
        let last = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + MAX_TRACKED_IPS as u32 * 10 - 1));
        assert!(matches!(t.gate(last, t0 + Duration::from_secs(60)), Gate::Banned(_)), "the newest ban is kept");
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address() {
        let (mut t, t0) = (Throttle::default(), Instant::now());
        for i in 0..MAX_FAILURES {
            t.failed(format!("2001:db8::{:x}", i + 1).parse().unwrap(), t0);
        }
        assert!(matches!(t.gate("2001:db8::ffff:1".parse().unwrap(), t0), Gate::Banned(_)));
        assert_eq!(t.gate("2001:db8:0:1::1".parse().unwrap(), t0), Gate::Open, "another /64");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn sessions_expire_when_idle_and_stay_bounded() {
        let (mut s, t0) = (Sessions::default(), Instant::now());
        let id = s.open(t0);
        assert!(s.touch(&id, t0 + SESSION_IDLE - Duration::from_secs(1)));
        assert!(s.touch(&id, t0 + SESSION_IDLE + Duration::from_secs(1)), "a use keeps it alive");
        assert!(!s.touch(&id, t0 + SESSION_IDLE * 3), "idle past the limit");
        assert!(!s.touch("forged", t0));
        for i in 0..MAX_SESSIONS * 2 {
            s.open(t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        let last = s.open(t0 + Duration::from_secs(10));
        s.close(&last);
        assert!(!s.touch(&last, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn keys_compare_by_digest() {
        let key = random_token();
        assert_eq!(key.len(), 48);
        assert!(same(&key_digest(&key), &key_digest(&key)));
        assert!(!same(&key_digest(&key), &key_digest("other")));
    }
}
