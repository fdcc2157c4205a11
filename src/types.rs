//! Small value types shared by every layer: info hashes, peer ids, byte-size
//! formatting and parsing, a compact bitfield, and the host a peer address
//! counts as.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// SHA-1 of a torrent's bencoded `info` dictionary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    pub fn hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Accepts 40 hex digits or 32 base32 characters (as magnets carry them).
    pub fn parse(s: &str) -> Option<InfoHash> {
        let s = s.trim();
        let bytes = match s.len() {
            40 => from_hex(s)?,
            32 => from_base32(s)?,
            _ => return None,
        };
        Some(InfoHash(bytes.try_into().ok()?))
    }

    /// The first 8 hex digits, as the logs show it.
    pub fn short(&self) -> String {
        to_hex(&self.0[..4])
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.hex())
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.hex())
    }
}

/// Our 20-byte peer id: Azureus style `-DS0100-` and 12 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    pub fn generate() -> PeerId {
        let mut id = *b"-DS0100-000000000000";
        let tail: [u8; 12] = rand::random();
        for (dst, b) in id[8..].iter_mut().zip(tail) {
            // Printable characters keep tracker logs readable.
            *dst = b"0123456789abcdefghijklmnopqrstuvwxyz"[(b % 36) as usize];
        }
        PeerId(id)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// RFC 4648 base32 without padding, as BEP 9 allows for magnet hashes.
pub fn from_base32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u64, 0u32);
    for c in s.bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | v as u64;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Formats bytes as `1.4GiB`, the unit the status lines use.
/// Text from outside (a tracker's message, a magnet's name) made safe to
/// log and show: control characters become `?` (a newline could forge a
/// log line, an escape sequence recolour a terminal) and it is cut to `max`
/// characters.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { '?' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// Formats a duration in seconds as `3m12s`, `2h5m`, `4d3h`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// A byte count: "500000", "10M", "1.5 MiB", "10MB/s" (a rate's "/s" is
/// allowed and ignored). K, M, G, T and KiB… are powers of 1024; kB, MB…
/// powers of 1000, as people write them.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const UNITS: &str = "B, K/KiB, M/MiB, G/GiB, T/TiB (x1024) or kB, MB, GB, TB (x1000), optionally /s";
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("'{s}' is not a size (e.g. 500000, 10M, 1.5MiB, 10MB/s)"))?;
    let written = unit.trim();
    let base = written.strip_suffix("/s").unwrap_or(written).trim();
    // "Mb", "Gbit", "mbps": bits, which a byte count must not take as bytes.
    let bits = matches!(base, "Kb" | "Mb" | "Gb" | "Tb")
        || base.to_ascii_lowercase().contains("bit")
        || base.to_ascii_lowercase().ends_with("bps");
    if bits {
        return Err(format!("'{s}' looks like bits; write bytes, e.g. 10MB/s (units are {UNITS})"));
    }
    let unit = written.to_ascii_lowercase();
    let unit = unit.strip_suffix("/s").unwrap_or(&unit).trim();
    let mult: f64 = match unit {
        "" | "b" | "bytes" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        other => return Err(format!("unknown size unit '{other}' in '{s}'; units are {UNITS}")),
    };
    let bytes = num * mult;
    if !bytes.is_finite() || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("'{s}' is too large"));
    }
    Ok(bytes.round() as u64)
}

/// A fixed-length bitfield in the wire's bit order (bit 7 of byte 0 is index 0).
#[derive(Clone, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: usize,
    ones: usize,
}

impl Bitfield {
    pub fn new(len: usize) -> Bitfield {
        Bitfield { bytes: vec![0; len.div_ceil(8)], len, ones: 0 }
    }

    pub fn full(len: usize) -> Bitfield {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Builds from wire bytes; refuses a wrong length or set spare bits.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Option<Bitfield> {
        if bytes.len() != len.div_ceil(8) {
            return None;
        }
        let spare = bytes.len() * 8 - len;
        if spare > 0 && bytes[bytes.len() - 1] & ((1u8 << spare) - 1) != 0 {
            return None;
        }
        let ones = bytes.iter().map(|b| b.count_ones() as usize).sum();
        Some(Bitfield { bytes: bytes.to_vec(), len, ones })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn count(&self) -> usize {
        self.ones
    }
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.bytes[i / 8] & (0x80 >> (i % 8)) != 0
    }

    /// Sets bit `i`; returns false when it was already set or out of range.
    pub fn set(&mut self, i: usize) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bytes[i / 8] |= 0x80 >> (i % 8);
        self.ones += 1;
        true
    }

    pub fn clear(&mut self, i: usize) {
        if self.get(i) {
            self.bytes[i / 8] &= !(0x80 >> (i % 8));
            self.ones -= 1;
        }
    }

    pub fn iter_ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

/// The host an address belongs to: an IPv4 address (mapped ones unwrapped)
/// or an IPv6 /64.
pub fn host_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_text_is_made_printable() {
        assert_eq!(printable("ok\nlevel=ERROR forged\x1b[31m", 100), "ok?level=ERROR forged?[31m");
        assert_eq!(printable(&"w".repeat(500_000), 3), "www…");
        assert_eq!(printable("né", 5), "né");
    }

    #[test]
    fn hex_and_base32_agree() {
        let h = InfoHash::parse("c12fe1c06bba254a9dc9f519b335aa7c1367a88a").unwrap();
        // Same hash in base32.
        let b = InfoHash::parse("YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK").unwrap();
        assert_eq!(h, b);
        assert_eq!(h.hex(), "c12fe1c06bba254a9dc9f519b335aa7c1367a88a");
        assert!(InfoHash::parse("zz2fe1c06bba254a9dc9f519b335aa7c1367a88a").is_none());
        assert!(InfoHash::parse("abc").is_none());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("500000").unwrap(), 500000);
        assert_eq!(parse_size("10M").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_size("1.5 MiB").unwrap(), 1572864);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_size("10MB/s").unwrap(), 10_000_000, "a rate as people write it");
        assert_eq!(parse_size("1.5 MiB/s").unwrap(), 1572864);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        for bits in ["8mbps", "8Mb/s", "1Gbit", "100Mb"] {
            assert!(parse_size(bits).unwrap_err().contains("bits"), "{bits}: bits are not bytes");
        }
        assert_eq!(parse_size("500kb").unwrap(), 500_000, "kb is what people write for kB");
    }

    #[test]
    fn human_formats() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(7500), "2h5m");
    }

    #[test]
    fn bitfield_rules() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(9));
        assert!(!b.set(10));
        assert_eq!(b.count(), 2);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert!(Bitfield::from_bytes(&[0xff, 0xc0], 10).is_some());
        // Spare bits set: invalid.
        assert!(Bitfield::from_bytes(&[0xff, 0xe0], 10).is_none());
        // Wrong length: invalid.
        assert!(Bitfield::from_bytes(&[0xff], 10).is_none());
        assert!(Bitfield::full(10).is_full());
    }

    #[test]
    fn one_host_is_one_ipv4_address_or_one_ipv6_64() {
        let h = |s: &str| host_of(s.parse().unwrap());
        assert_eq!(h("::ffff:1.2.3.4"), h("1.2.3.4"), "mapped IPv4 is the same host");
        assert_ne!(h("1.2.3.4"), h("1.2.3.5"));
        assert_eq!(h("2001:db8:1:2::1"), h("2001:db8:1:2:ffff::9"), "same /64");
        assert_ne!(h("2001:db8:1:2::1"), h("2001:db8:1:3::1"));
    }
}
