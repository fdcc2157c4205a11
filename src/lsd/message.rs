//! The BEP 14 announce, as bytes: building ours and reading others'.
//!
//! An announce is an HTTP-like request sent to the multicast group:
//!
//! ```text
//! BT-SEARCH * HTTP/1.1\r\n
//! Host: 239.192.152.143:6771\r\n
//! Port: 6881\r\n
//! Infohash: <40 hex digits>\r\n      (one or more)
//! cookie: <opaque>\r\n               (optional; ours tells our own echo apart)
//! \r\n
//! ```
//!
//! Pure: no socket, no clock. Anyone on the LAN can send us anything, so
//! reading is bounded (datagram size, header lines, info hashes) and every
//! way a datagram can be wrong is a [`Reject`], never a panic.

use crate::types::InfoHash;
use std::fmt::Write;

/// The IPv4 group and port every BEP 14 client uses.
pub const GROUP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(239, 192, 152, 143);
pub const PORT: u16 = 6771;
/// BEP 14: a message with several info hashes stays under this, to avoid
/// fragmentation.
pub const MAX_SENT: usize = 1400;
/// Larger datagrams are refused unread (one Ethernet frame's payload).
pub const MAX_ACCEPTED: usize = 1500;
/// Header lines read at most, and `Infohash` lines among them (a
/// 1400-byte announce holds about 25).
pub const MAX_HEADERS: usize = 40;
pub const MAX_HASHES: usize = 32;
const MAX_COOKIE: usize = 64;
const HASH_LINE: usize = "Infohash: \r\n".len() + 40;
/// The most bytes an announce takes besides its hash lines (a 5-digit port
/// and a cookie of [`MAX_COOKIE`] characters).
const FIXED_PART: usize =
    "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 65535\r\ncookie: \r\n\r\n\r\n".len() + MAX_COOKIE;
/// Info hashes in one announce we send.
pub const HASHES_PER_MESSAGE: usize = (MAX_SENT - FIXED_PART) / HASH_LINE;
const _: () = assert!(HASHES_PER_MESSAGE >= 20, "batching is the point of a multi-hash announce");

/// A valid announce from someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Where the sender accepts BitTorrent connections.
    pub port: u16,
    /// Distinct, in the order sent.
    pub hashes: Vec<InfoHash>,
}

/// Why a datagram is not an announce we act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("oversize ({0} bytes)")]
    Oversize(usize),
    #[error("not text")]
    NotText,
    #[error("no blank line ending the headers")]
    Unterminated,
    #[error("not a BT-SEARCH request")]
    NotBtSearch,
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("a header line without a colon")]
    BadHeader,
    #[error("no valid Port header")]
    BadPort,
    #[error("no valid Infohash header")]
    NoInfohash,
    #[error("more than {MAX_HASHES} info hashes")]
    TooManyInfohashes,
    #[error("our own announce")]
    OwnCookie,
}

/// Our announce for `hashes` (at most [`HASHES_PER_MESSAGE`]; a longer list
/// is cut there) with our listen `port` and `cookie` (at most 64 characters).
pub fn build(port: u16, cookie: &str, hashes: &[InfoHash]) -> Vec<u8> {
    debug_assert!(cookie.len() <= MAX_COOKIE && !hashes.is_empty());
    let mut text = format!("BT-SEARCH * HTTP/1.1\r\nHost: {GROUP}:{PORT}\r\nPort: {port}\r\n");
    for h in hashes.iter().take(HASHES_PER_MESSAGE) {
        let _ = write!(text, "Infohash: {}\r\n", h.hex());
    }
    let _ = write!(text, "cookie: {cookie}\r\n\r\n\r\n");
    text.into_bytes()
}

/// Reads a datagram; an announce carrying `own_cookie` is [`Reject::OwnCookie`].
pub fn parse(datagram: &[u8], own_cookie: &str) -> Result<Announce, Reject> {
    if datagram.len() > MAX_ACCEPTED {
        return Err(Reject::Oversize(datagram.len()));
    }
    let text = std::str::from_utf8(datagram).map_err(|_| Reject::NotText)?;
    // Lines end in CRLF; a bare LF is tolerated, as HTTP readers do.
    let head = text.split_once("\r\n\r\n").or_else(|| text.split_once("\n\n")).ok_or(Reject::Unterminated)?.0;
    let mut lines = head.lines();
    if !is_bt_search(lines.next().unwrap_or("")) {
        return Err(Reject::NotBtSearch);
    }
    let (mut port, mut hashes, mut cookie, mut hash_lines) = (None, Vec::new(), None, 0);
    for (n, line) in lines.enumerate() {
        if n >= MAX_HEADERS {
            return Err(Reject::TooManyHeaders);
        }
        let (name, value) = line.split_once(':').ok_or(Reject::BadHeader)?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "port" => port = Some(parse_port(value).ok_or(Reject::BadPort)?),
            "infohash" => {
                hash_lines += 1;
                if hash_lines > MAX_HASHES {
                    return Err(Reject::TooManyInfohashes);
                }
                // One bad hash spoils only itself (libtorrent reads it so).
                if let Some(h) = InfoHash::parse(value).filter(|_| value.len() == 40) {
                    if !hashes.contains(&h) {
                        hashes.push(h);
                    }
                }
            }
            "cookie" => cookie = Some(value),
            _ => {} // BEP 14: headers not understood are ignored
        }
    }
    if cookie.is_some_and(|c| c == own_cookie) {
        return Err(Reject::OwnCookie);
    }
    let port = port.ok_or(Reject::BadPort)?;
    if hashes.is_empty() {
        return Err(Reject::NoInfohash);
    }
    Ok(Announce { port, hashes })
}

fn is_bt_search(request_line: &str) -> bool {
    let mut parts = request_line.split_ascii_whitespace();
    let method = parts.next().is_some_and(|m| m.eq_ignore_ascii_case("BT-SEARCH"));
    let target = parts.next() == Some("*");
    let version = parts.next().is_some_and(|v| v.starts_with("HTTP/1."));
    method && target && version && parts.next().is_none()
}

/// A port in decimal, 1 to 65535 (0 names no listener).
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> InfoHash {
        InfoHash([n; 20])
    }

    #[test]
    fn our_announce_reads_back_and_stays_under_1400_bytes() {
        let hashes: Vec<InfoHash> = (0..100).map(hash).collect();
        let cookie = "c".repeat(MAX_COOKIE);
        let msg = build(65535, &cookie, &hashes);
        assert!(msg.len() <= MAX_SENT, "{} bytes", msg.len());
        let a = parse(&msg, "not ours").unwrap();
        assert_eq!(a.port, 65535);
        assert_eq!(a.hashes, hashes[..HASHES_PER_MESSAGE]);
        assert_eq!(parse(&msg, &cookie), Err(Reject::OwnCookie));
        let one = build(6881, "1a2b", &[hash(7)]);
        let text = String::from_utf8(one).unwrap();
        assert_eq!(
            text,
            format!(
                "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: {}\r\ncookie: 1a2b\r\n\r\n\r\n",
                hash(7).hex()
            )
        );
    }

    #[test]
    fn libtorrents_announce_is_read() {
        // As libtorrent 2.0 sends it: one hash, a hex cookie.
        let h = "0123456789abcdef0123456789ABCDEF01234567";
        let msg = format!(
            "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 51413\r\nInfohash: {h}\r\ncookie: 5f3a9c\r\n\r\n\r\n"
        );
        let a = parse(msg.as_bytes(), "1234").unwrap();
        assert_eq!(a, Announce { port: 51413, hashes: vec![InfoHash::parse(h).unwrap()] });
        // No cookie, other headers, bare LFs, odd case: still an announce.
        let msg = format!("bt-search * HTTP/1.0\nHOST: x\nX-Other: y\nport:  6881 \ninfohash:{h}\n\n");
        assert_eq!(parse(msg.as_bytes(), "1234").unwrap().port, 6881);
    }

    #[test]
    fn several_infohashes_distinct_and_bad_ones_skipped() {
        let (a, b) = (hash(1).hex(), hash(2).hex());
        let msg = format!(
            "BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: {a}\r\nInfohash: {b}\r\nInfohash: {a}\r\nInfohash: zz{}\r\nInfohash: 12\r\n\r\n",
            &a[2..]
        );
        assert_eq!(parse(msg.as_bytes(), "").unwrap().hashes, vec![hash(1), hash(2)]);
    }

    #[test]
    fn each_kind_of_wrong_is_named() {
        let h = hash(3).hex();
        let ok = |port: &str, hashes: &str| format!("BT-SEARCH * HTTP/1.1\r\nPort: {port}\r\n{hashes}\r\n");
        let cases: Vec<(Vec<u8>, Reject)> = vec![
            (vec![b'a'; MAX_ACCEPTED + 1], Reject::Oversize(MAX_ACCEPTED + 1)),
            (vec![0xff, 0xfe, b'\r', b'\n', b'\r', b'\n'], Reject::NotText),
            (format!("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: {h}\r\n").into_bytes(), Reject::Unterminated),
            (format!("M-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: {h}\r\n\r\n").into_bytes(), Reject::NotBtSearch),
            (format!("BT-SEARCH / HTTP/1.1\r\nPort: 1\r\nInfohash: {h}\r\n\r\n").into_bytes(), Reject::NotBtSearch),
            (format!("BT-SEARCH * HTTP/1.1\r\nPort 1\r\nInfohash: {h}\r\n\r\n").into_bytes(), Reject::BadHeader),
            (ok("0", &format!("Infohash: {h}\r\n")).into_bytes(), Reject::BadPort),
            (ok("70000", &format!("Infohash: {h}\r\n")).into_bytes(), Reject::BadPort),
            (ok("-1", &format!("Infohash: {h}\r\n")).into_bytes(), Reject::BadPort),
            (format!("BT-SEARCH * HTTP/1.1\r\nInfohash: {h}\r\n\r\n").into_bytes(), Reject::BadPort),
            (ok("1", "").into_bytes(), Reject::NoInfohash),
            (ok("1", &format!("Infohash: {}\r\n", &h[1..])).into_bytes(), Reject::NoInfohash),
            (ok("1", &"Infohash: 1\r\n".repeat(MAX_HASHES + 1)).into_bytes(), Reject::TooManyInfohashes),
            (ok("1", &"X: y\r\n".repeat(MAX_HEADERS + 1)).into_bytes(), Reject::TooManyHeaders),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(&bytes, "me"), Err(want.clone()), "{:?}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn garbage_of_every_length_is_refused_without_panic() {
        let valid = build(6881, "c", &[hash(9)]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut noise = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        };
        for len in 0..=MAX_ACCEPTED + 2 {
            let junk: Vec<u8> = (0..len).map(|_| noise()).collect();
            let _ = parse(&junk, "c");
            // Every prefix of a valid announce, and one byte flipped in it.
            if len <= valid.len() {
                let _ = parse(&valid[..len], "x");
                let mut flipped = valid.clone();
                if len < flipped.len() {
                    flipped[len] ^= noise() | 1;
                }
                let _ = parse(&flipped, "x");
            }
        }
        assert!(parse(&valid[..valid.len() - 5], "x").is_err(), "cut before its blank line");
    }
}
