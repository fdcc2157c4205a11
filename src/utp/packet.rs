//! The uTP packet (BEP 29): a 20-byte header, a chain of extensions, and
//! the payload. Pure: bytes in, a borrowed view out; a header into bytes.
//!
//! Only the selective-ack extension (type 1) means anything to us; others
//! (libtorrent sends a close reason, type 3) are skipped by their length.
//! Everything is checked against the datagram's length, so a lying length
//! byte ends the parse instead of reading past the end.

use std::fmt;

pub const HEADER_LEN: usize = 20;
const VERSION: u8 = 1;
const EXT_NONE: u8 = 0;
const EXT_SACK: u8 = 1;
/// Extensions looked at per packet at most.
const MAX_EXTENSIONS: usize = 8;
/// The longest selective-ack bitmask we send: 1024 packets past the one
/// after `ack_nr` (what the reorder buffer holds). BEP 29 asks for a
/// multiple of 4 bytes.
pub const MAX_SACK_BYTES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data = 0,
    Fin = 1,
    State = 2,
    Reset = 3,
    Syn = 4,
}

impl Kind {
    fn from_nibble(n: u8) -> Option<Kind> {
        Some(match n {
            0 => Kind::Data,
            1 => Kind::Fin,
            2 => Kind::State,
            3 => Kind::Reset,
            4 => Kind::Syn,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub conn_id: u16,
    /// The sender's clock when it sent this, in microseconds (wrapping).
    pub timestamp: u32,
    /// The sender's clock minus our timestamp on the last packet it got.
    pub timestamp_diff: u32,
    /// Bytes the sender can still take in.
    pub wnd_size: u32,
    pub seq_nr: u16,
    /// The last packet the sender got in order.
    pub ack_nr: u16,
}

/// A parsed datagram, borrowing from it.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub header: Header,
    /// The selective-ack bitmask: bit i of byte j is packet ack_nr + 2 + 8j + i.
    pub sack: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Short(usize),
    Version(u8),
    Kind(u8),
    Extension,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Short(n) => write!(f, "{n} bytes is shorter than a uTP header"),
            ParseError::Version(v) => write!(f, "uTP version {v}"),
            ParseError::Kind(k) => write!(f, "uTP packet type {k}"),
            ParseError::Extension => write!(f, "a uTP extension runs past the packet"),
        }
    }
}

/// Whether a datagram could be uTP (for sharing the port with the DHT,
/// whose messages are bencoded dictionaries and start with `d`).
pub fn looks_like_utp(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] & 0x0f == VERSION && datagram[0] >> 4 <= Kind::Syn as u8
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn parse(d: &[u8]) -> Result<Packet<'_>, ParseError> {
    if d.len() < HEADER_LEN {
        return Err(ParseError::Short(d.len()));
    }
    if d[0] & 0x0f != VERSION {
        return Err(ParseError::Version(d[0] & 0x0f));
    }
    let kind = Kind::from_nibble(d[0] >> 4).ok_or(ParseError::Kind(d[0] >> 4))?;
    let header = Header {
        kind,
        conn_id: u16_at(d, 2),
        timestamp: u32_at(d, 4),
        timestamp_diff: u32_at(d, 8),
        wnd_size: u32_at(d, 12),
        seq_nr: u16_at(d, 16),
        ack_nr: u16_at(d, 18),
    };
    let (mut next, mut at, mut sack) = (d[1], HEADER_LEN, None);
    for _ in 0..=MAX_EXTENSIONS {
        if next == EXT_NONE {
            return Ok(Packet { header, sack, payload: &d[at..] });
        }
        let (Some(&following), Some(&len)) = (d.get(at), d.get(at + 1)) else {
            return Err(ParseError::Extension);
        };
        let body = d.get(at + 2..at + 2 + len as usize).ok_or(ParseError::Extension)?;
        // A selective ack is a whole number of 32-bit words.
        if next == EXT_SACK && !body.is_empty() && body.len() % 4 == 0 {
            sack = Some(body);
        }
        next = following;
        at += 2 + len as usize;
    }
    Err(ParseError::Extension)
}

/// Writes a header, and the selective ack if any, into `out` (cleared
/// first); the payload goes after it.
pub fn write_header(out: &mut Vec<u8>, h: &Header, sack: Option<&[u8]>) {
    out.clear();
    out.push(((h.kind as u8) << 4) | VERSION);
    out.push(if sack.is_some() { EXT_SACK } else { EXT_NONE });
    out.extend_from_slice(&h.conn_id.to_be_bytes());
    out.extend_from_slice(&h.timestamp.to_be_bytes());
    out.extend_from_slice(&h.timestamp_diff.to_be_bytes());
    out.extend_from_slice(&h.wnd_size.to_be_bytes());
    out.extend_from_slice(&h.seq_nr.to_be_bytes());
    out.extend_from_slice(&h.ack_nr.to_be_bytes());
    if let Some(mask) = sack {
        debug_assert!(mask.len() % 4 == 0 && mask.len() <= MAX_SACK_BYTES);
        out.extend_from_slice(&[EXT_NONE, mask.len() as u8]);
        out.extend_from_slice(mask);
    }
}

/// Whether sequence number `a` comes before `b`, wrapping.
pub fn seq_before(a: u16, b: u16) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: Kind) -> Header {
        Header {
            kind,
            conn_id: 0xBEEF,
            timestamp: 0x0102_0304,
            timestamp_diff: 7,
            wnd_size: 1 << 20,
            seq_nr: 65535,
            ack_nr: 3,
        }
    }

    #[test]
    fn a_packet_round_trips_with_and_without_a_selective_ack() {
        let mut out = Vec::new();
        for kind in [Kind::Data, Kind::Fin, Kind::State, Kind::Reset, Kind::Syn] {
            write_header(&mut out, &header(kind), None);
            out.extend_from_slice(b"payload");
            let p = parse(&out).unwrap();
            assert_eq!((p.header, p.sack, p.payload), (header(kind), None, &b"payload"[..]));
            assert!(looks_like_utp(&out));
        }
        write_header(&mut out, &header(Kind::State), Some(&[1, 2, 3, 4][..]));
        assert_eq!(out.len(), HEADER_LEN + 6);
        let p = parse(&out).unwrap();
        assert_eq!((p.sack, p.payload), (Some(&[1u8, 2, 3, 4][..]), &[][..]));
    }

    #[test]
    fn unknown_extensions_are_skipped_and_lying_lengths_refused() {
        let mut out = Vec::new();
        write_header(&mut out, &header(Kind::Data), None);
        out[1] = 3; // libtorrent's close reason, then a sack
        out.extend_from_slice(&[1, 4, 0, 0, 0, 9]);
        out.extend_from_slice(&[0, 4, 0xff, 0, 0, 0]);
        out.extend_from_slice(b"x");
        let p = parse(&out).unwrap();
        assert_eq!((p.sack, p.payload), (Some(&[0xffu8, 0, 0, 0][..]), &b"x"[..]));
        out.truncate(HEADER_LEN + 8);
        assert_eq!(parse(&out), Err(ParseError::Extension));
        // An endless chain of empty extensions ends.
        write_header(&mut out, &header(Kind::Data), None);
        out[1] = 9;
        for _ in 0..20 {
            out.extend_from_slice(&[9, 0]);
        }
        assert_eq!(parse(&out), Err(ParseError::Extension));
    }

    #[test]
    fn junk_of_every_length_is_refused_or_parsed_without_panic() {
        assert_eq!(parse(b"d1:ad2:id20:"), Err(ParseError::Short(12)));
        assert!(!looks_like_utp(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"));
        let mut seed = 0x1234_5678u32;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect();
            let _ = parse(&junk);
            let mut v = junk.clone();
            if v.len() >= 2 {
                v[0] = 0x01;
                let _ = parse(&v);
            }
        }
        assert_eq!(parse(&[0x51; 20]), Err(ParseError::Kind(5)));
        assert_eq!(parse(&[0x02; 20]), Err(ParseError::Version(2)));
    }

    #[test]
    fn sequence_numbers_compare_across_the_wrap() {
        assert!(seq_before(65535, 0));
        assert!(seq_before(1, 2));
        assert!(!seq_before(2, 1));
        assert!(!seq_before(5, 5));
        assert!(seq_before(65000, 100));
    }
}
