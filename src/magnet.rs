//! Magnet URIs (BEP 9) and the lines of a `.magnet` file.
//!
//! Limits are set, not assumed: a URI over [`MAX_URI_LEN`] or with more than
//! [`MAX_TRACKERS`] trackers or [`MAX_PEERS`] `x.pe` addresses is refused.

use crate::types::InfoHash;
use percent_encoding::percent_decode_str;
use std::net::SocketAddr;

pub const MAX_URI_LEN: usize = 64 * 1024;
/// What [`Magnet::to_uri`] may write for a magnet that [`Magnet::parse`]
/// accepted: percent-encoding at most triples each byte. Our own state
/// files are read back within this, so a magnet is never lost to a restart.
pub const MAX_STORED_URI_LEN: usize = 3 * MAX_URI_LEN + 1024;
pub const MAX_TRACKERS: usize = 200;
pub const MAX_PEERS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: InfoHash,
    pub name: Option<String>,
    pub trackers: Vec<String>,
    pub peers: Vec<SocketAddr>,
}

impl Magnet {
    /// Parses a `magnet:?` URI, or a bare 40-hex / 32-base32 info hash.
    pub fn parse(s: &str) -> Result<Magnet, String> {
        Magnet::parse_within(s, MAX_URI_LEN)
    }

    /// Parses a URI this program wrote with [`Magnet::to_uri`].
    pub fn parse_stored(s: &str) -> Result<Magnet, String> {
        Magnet::parse_within(s, MAX_STORED_URI_LEN)
    }

    fn parse_within(s: &str, limit: usize) -> Result<Magnet, String> {
        let s = s.trim();
        if s.len() > limit {
            return Err(format!("magnet URI of {} bytes is over the {limit}-byte limit", s.len()));
        }
        if let Some(h) = InfoHash::parse(s) {
            return Ok(Magnet { info_hash: h, name: None, trackers: vec![], peers: vec![] });
        }
        let query = s
            .strip_prefix("magnet:?")
            .or_else(|| s.strip_prefix("MAGNET:?"))
            .ok_or_else(|| "not a magnet URI or info hash".to_string())?;
        let mut hash = None;
        let mut m = Magnet { info_hash: InfoHash([0; 20]), name: None, trackers: vec![], peers: vec![] };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned();
            match k {
                "xt" => {
                    if let Some(h) = v.strip_prefix("urn:btih:") {
                        hash = Some(InfoHash::parse(h).ok_or_else(|| format!("bad info hash '{h}' in xt"))?);
                    } else if v.starts_with("urn:btmh:") && hash.is_none() {
                        return Err("v2-only magnet (urn:btmh) is not supported; a v1 btih hash is needed".into());
                    }
                }
                "dn" => m.name = Some(v),
                "tr" => {
                    if m.trackers.len() >= MAX_TRACKERS {
                        return Err(format!("more than {MAX_TRACKERS} trackers"));
                    }
                    m.trackers.push(v);
                }
                "x.pe" => {
                    if m.peers.len() >= MAX_PEERS {
                        return Err(format!("more than {MAX_PEERS} x.pe peers"));
                    }
                    let addr = v.parse().map_err(|_| format!("bad x.pe peer address '{v}'"))?;
                    m.peers.push(addr);
                }
                _ => {}
            }
        }
        m.info_hash = hash.ok_or_else(|| "no xt=urn:btih: info hash".to_string())?;
        Ok(m)
    }
}

impl Magnet {
    /// What to call it before the metadata arrives: its `dn`, or the hash.
    /// The `dn` made printable, or the info hash.
    pub fn display_name(&self) -> String {
        self.name.as_deref().map(|n| crate::types::printable(n, 200)).unwrap_or_else(|| self.info_hash.hex())
    }

    /// The magnet as a URI again (how it is kept in `state_dir`).
    pub fn to_uri(&self) -> String {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        let mut uri = format!("magnet:?xt=urn:btih:{}", self.info_hash.hex());
        if let Some(n) = &self.name {
            uri.push_str(&format!("&dn={}", utf8_percent_encode(n, NON_ALPHANUMERIC)));
        }
        for t in &self.trackers {
            uri.push_str(&format!("&tr={}", utf8_percent_encode(t, NON_ALPHANUMERIC)));
        }
        for p in &self.peers {
            // Encoded too: an IPv6 scope id is written with a '%'.
            uri.push_str(&format!("&x.pe={}", utf8_percent_encode(&p.to_string(), NON_ALPHANUMERIC)));
        }
        uri
    }
}

/// Parses a `.magnet` file: one URI or bare hash per line; blank lines and
/// `#` comments skipped.
/// Magnets one `.magnet` file may add; a larger file is refused whole,
/// so that one file cannot start thousands of fetches.
pub const MAX_PER_FILE: usize = 100;

pub fn parse_file(text: &str) -> Result<Vec<Magnet>, String> {
    // Some Windows tools start a text file with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let entries =
        || text.lines().enumerate().map(|(i, l)| (i, l.trim())).filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let count = entries().count();
    if count > MAX_PER_FILE {
        return Err(format!("the file holds {count} magnets; at most {MAX_PER_FILE} per file"));
    }
    let mut out = Vec::with_capacity(count);
    for (i, line) in entries() {
        out.push(Magnet::parse(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    if out.is_empty() {
        return Err("no magnet URI or info hash in the file".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_adds_at_most_its_share() {
        let hash = |i: u32| format!("{:040x}\n", i + 1);
        let ok: String = (0..MAX_PER_FILE as u32).map(hash).collect();
        assert_eq!(parse_file(&format!("# list\n{ok}\n")).unwrap().len(), MAX_PER_FILE);
        let too_many: String = (0..24_000).map(hash).collect();
        let e = parse_file(&too_many).unwrap_err();
        assert!(e.contains("24000 magnets") && e.contains("at most 100"), "{e}");
    }

    #[test]
    fn full_uri() {
        let m = Magnet::parse("magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=My+File%21&tr=http%3A%2F%2F127.0.0.1%3A6969%2Fannounce&tr=udp://127.0.0.1:6969&x.pe=127.0.0.1:7000&x.pe=[::1]:7001").unwrap();
        assert_eq!(m.info_hash.hex(), "c12fe1c06bba254a9dc9f519b335aa7c1367a88a");
        assert_eq!(m.name.as_deref(), Some("My File!"));
        assert_eq!(m.trackers, vec!["http://127.0.0.1:6969/announce", "udp://127.0.0.1:6969"]);
        assert_eq!(m.peers.len(), 2);
    }

    #[test]
    fn uri_round_trip() {
        let m = Magnet::parse("magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=a%26b+c&tr=udp%3A%2F%2F127.0.0.1%3A1&x.pe=[::1]:7001").unwrap();
        assert_eq!(Magnet::parse(&m.to_uri()).unwrap(), m);
    }

    #[test]
    fn base32_and_bare_hashes() {
        let a = Magnet::parse("magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK").unwrap();
        let b = Magnet::parse("c12fe1c06bba254a9dc9f519b335aa7c1367a88a").unwrap();
        assert_eq!(a.info_hash, b.info_hash);
    }

    #[test]
    fn rejections_are_clear() {
        assert!(Magnet::parse("magnet:?xt=urn:btmh:1220abcd").unwrap_err().contains("v2-only"));
        assert!(Magnet::parse("magnet:?dn=x").unwrap_err().contains("no xt"));
        assert!(Magnet::parse("magnet:?xt=urn:btih:xyz").unwrap_err().contains("bad info hash"));
        assert!(Magnet::parse("http://example").is_err());
        let many = format!(
            "magnet:?xt=urn:btih:{}{}",
            "c12fe1c06bba254a9dc9f519b335aa7c1367a88a",
            "&tr=http://a/".repeat(201)
        );
        assert!(Magnet::parse(&many).unwrap_err().contains("trackers"));
        assert!(Magnet::parse(&"a".repeat(MAX_URI_LEN + 1)).unwrap_err().contains("limit"));
        // What parse took, its stored form gives back (found by fuzzing): a
        // long non-ASCII name grows when encoded; a scope id carries a '%'.
        let long = format!("magnet:?xt=urn:btih:{}&dn={}", "c1".repeat(20), "é".repeat(MAX_URI_LEN / 2 - 40));
        let m = Magnet::parse(&long).unwrap();
        assert!(m.to_uri().len() > MAX_URI_LEN);
        assert_eq!(Magnet::parse_stored(&m.to_uri()), Ok(m));
        let scoped = Magnet::parse(&format!("magnet:?xt=urn:btih:{}&x.pe=[fe80::1%2525]:80", "c1".repeat(20))).unwrap();
        assert_eq!(Magnet::parse_stored(&scoped.to_uri()), Ok(scoped));
        assert!(Magnet::parse("magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&x.pe=nope").is_err());
    }

    #[test]
    fn file_with_comments() {
        let text = "# my magnets\n\nc12fe1c06bba254a9dc9f519b335aa7c1367a88a\n  magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&dn=x\n";
        assert_eq!(parse_file(text).unwrap().len(), 2);
        assert!(parse_file("# nothing\n").is_err());
        // As Sonarr writes it: one URI, no newline at the end; or CRLF and a BOM.
        let one = format!("magnet:?xt=urn:btih:{}&dn=show", "ab".repeat(20));
        assert_eq!(parse_file(&one).unwrap().len(), 1);
        assert_eq!(parse_file(&format!("\u{feff}{one}\r\n")).unwrap().len(), 1);
        assert!(parse_file("garbage\n").unwrap_err().starts_with("line 1"));
    }
}
