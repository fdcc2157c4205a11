//! The peer wire protocol (BEP 3, with the BEP 10 extension message, the
//! BEP 5 `port` message and the five BEP 6 fast-extension messages) as a
//! pure codec: bytes in, messages out, no I/O.
//!
//! The codec decodes fast messages whoever sends them; whether the peer may
//! (both sides set [`FAST_BIT`]) is the connection's judgement, not the
//! codec's.
//!
//! `decode` tells "incomplete" (`Ok(None)`: read more) from "invalid"
//! (`Err`: disconnect). A length prefix over [`MAX_MESSAGE_LEN`] is refused
//! before a single byte of the body is buffered.

use crate::types::{InfoHash, PeerId};

pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
pub const HANDSHAKE_LEN: usize = 68;
/// Standard block size; requests above it are refused.
pub const BLOCK_LEN: u32 = 16 * 1024;
/// A piece message of one block plus headroom for a large bitfield or
/// extension message (1 MiB + header).
pub const MAX_MESSAGE_LEN: usize = 1024 * 1024 + 13;

/// Reserved-bits flags in the handshake.
pub const EXTENSION_BIT: (usize, u8) = (5, 0x10);
pub const DHT_BIT: (usize, u8) = (7, 0x01);
/// BEP 6, the fast extension: always advertised.
pub const FAST_BIT: (usize, u8) = (7, 0x04);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
}

impl Handshake {
    pub fn new(info_hash: InfoHash, peer_id: PeerId, dht: bool) -> Handshake {
        let mut reserved = [0u8; 8];
        reserved[EXTENSION_BIT.0] |= EXTENSION_BIT.1;
        reserved[FAST_BIT.0] |= FAST_BIT.1;
        if dht {
            reserved[DHT_BIT.0] |= DHT_BIT.1;
        }
        Handshake { reserved, info_hash, peer_id }
    }

    pub fn supports_dht(&self) -> bool {
        self.reserved[DHT_BIT.0] & DHT_BIT.1 != 0
    }

    pub fn supports_extensions(&self) -> bool {
        self.reserved[EXTENSION_BIT.0] & EXTENSION_BIT.1 != 0
    }

    /// The fast extension is on for a connection only when both handshakes
    /// set the bit; ours always does.
    pub fn supports_fast(&self) -> bool {
        self.reserved[FAST_BIT.0] & FAST_BIT.1 != 0
    }

    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = 19;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash.0);
        out[48..68].copy_from_slice(&self.peer_id.0);
        out
    }

    pub fn decode(buf: &[u8; HANDSHAKE_LEN]) -> Result<Handshake, WireError> {
        if buf[0] != 19 || &buf[1..20] != PROTOCOL {
            return Err(WireError::NotBitTorrent);
        }
        Ok(Handshake {
            reserved: buf[20..28].try_into().unwrap(),
            info_hash: InfoHash(buf[28..48].try_into().unwrap()),
            peer_id: PeerId(buf[48..68].try_into().unwrap()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    pub piece: u32,
    pub offset: u32,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(&'a [u8]),
    Request(BlockRef),
    Piece {
        piece: u32,
        offset: u32,
        data: &'a [u8],
    },
    Cancel(BlockRef),
    Port(u16),
    Extended {
        id: u8,
        payload: &'a [u8],
    },
    /// BEP 6: a piece the sender would like us to fetch (a hint).
    SuggestPiece(u32),
    /// BEP 6: stands in for a full or an empty bitfield.
    HaveAll,
    HaveNone,
    /// BEP 6: a request of ours the sender will not serve.
    RejectRequest(BlockRef),
    /// BEP 6: a piece whose blocks we may request while choked.
    AllowedFast(u32),
    /// An id we do not speak (v2 hashes and others): skipped, not fatal.
    Unknown(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a BitTorrent handshake")]
    NotBitTorrent,
    #[error("message length {0} exceeds the limit of {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    #[error("message id {id} with a body of {len} bytes")]
    BadLength { id: u8, len: usize },
    #[error("message id {id} with a body of {len} bytes, over its limit of {max}")]
    TooLongFor { id: u8, len: usize, max: usize },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Decodes one message from the front of `buf`; returns it with the number of
/// bytes it used, `Ok(None)` when more bytes are needed.
pub fn decode(buf: &[u8]) -> Result<Option<(Message<'_>, usize)>, WireError> {
    decode_bounded(buf, MAX_MESSAGE_LEN)
}

/// The longest body a message of type `id` may have: what it can
/// legitimately be, so a peer cannot make us buffer a megabyte of anything.
/// `bitfield` is the torrent's bitfield length.
pub fn max_body(id: u8, bitfield: usize) -> usize {
    match id {
        0..=3 | 14 | 15 => 0,
        4 | 13 | 17 => 4,
        5 => bitfield,
        6 | 8 | 16 => 12,
        // We ask for blocks of BLOCK_LEN; more is never an answer.
        7 => 8 + BLOCK_LEN as usize,
        9 => 2,
        20 => 1 + MAX_EXTENDED,
        // Unknown ids (v2 hashes): small, and ignored.
        _ => 16 * 1024,
    }
}

/// An extension message's payload at most: a metadata block with its
/// header, a PEX message, a handshake.
pub const MAX_EXTENDED: usize = 64 * 1024;

/// [`decode`] with each message type held to [`max_body`], judged from the
/// first five bytes, before the body is buffered.
pub fn decode_bounded(buf: &[u8], bitfield: usize) -> Result<Option<(Message<'_>, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32_at(buf, 0) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(WireError::TooLong(len));
    }
    if let (Some(&id), true) = (buf.get(4), len > 0) {
        let max = max_body(id, bitfield);
        if len - 1 > max {
            return Err(WireError::TooLongFor { id, len: len - 1, max });
        }
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    if len == 0 {
        return Ok(Some((Message::KeepAlive, 4)));
    }
    let id = buf[4];
    let body = &buf[5..4 + len];
    let fixed = |n: usize| {
        if body.len() == n {
            Ok(())
        } else {
            Err(WireError::BadLength { id, len: body.len() })
        }
    };
    let msg = match id {
        0 => fixed(0).map(|_| Message::Choke)?,
        1 => fixed(0).map(|_| Message::Unchoke)?,
        2 => fixed(0).map(|_| Message::Interested)?,
        3 => fixed(0).map(|_| Message::NotInterested)?,
        4 => fixed(4).map(|_| Message::Have(u32_at(body, 0)))?,
        5 => Message::Bitfield(body),
        6 | 8 | 16 => {
            fixed(12)?;
            let block = BlockRef { piece: u32_at(body, 0), offset: u32_at(body, 4), len: u32_at(body, 8) };
            match id {
                6 => Message::Request(block),
                8 => Message::Cancel(block),
                _ => Message::RejectRequest(block),
            }
        }
        7 => {
            if body.len() < 8 {
                return Err(WireError::BadLength { id, len: body.len() });
            }
            Message::Piece { piece: u32_at(body, 0), offset: u32_at(body, 4), data: &body[8..] }
        }
        9 => fixed(2).map(|_| Message::Port(u16::from_be_bytes([body[0], body[1]])))?,
        20 => {
            if body.is_empty() {
                return Err(WireError::BadLength { id, len: 0 });
            }
            Message::Extended { id: body[0], payload: &body[1..] }
        }
        13 => fixed(4).map(|_| Message::SuggestPiece(u32_at(body, 0)))?,
        14 => fixed(0).map(|_| Message::HaveAll)?,
        15 => fixed(0).map(|_| Message::HaveNone)?,
        17 => fixed(4).map(|_| Message::AllowedFast(u32_at(body, 0)))?,
        other => Message::Unknown(other),
    };
    Ok(Some((msg, 4 + len)))
}

/// Appends the encoded message to `out`.
pub fn encode(msg: &Message<'_>, out: &mut Vec<u8>) {
    let header = |out: &mut Vec<u8>, body_len: usize, id: u8| {
        out.extend_from_slice(&(body_len as u32 + 1).to_be_bytes());
        out.push(id);
    };
    let block = |out: &mut Vec<u8>, b: &BlockRef| {
        out.extend_from_slice(&b.piece.to_be_bytes());
        out.extend_from_slice(&b.offset.to_be_bytes());
        out.extend_from_slice(&b.len.to_be_bytes());
    };
    match msg {
        Message::KeepAlive => out.extend_from_slice(&[0, 0, 0, 0]),
        Message::Choke => header(out, 0, 0),
        Message::Unchoke => header(out, 0, 1),
        Message::Interested => header(out, 0, 2),
        Message::NotInterested => header(out, 0, 3),
        Message::Have(i) => {
            header(out, 4, 4);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Message::Bitfield(b) => {
            header(out, b.len(), 5);
            out.extend_from_slice(b);
        }
        Message::Request(b) => {
            header(out, 12, 6);
            block(out, b);
        }
        Message::Piece { piece, offset, data } => {
            header(out, 8 + data.len(), 7);
            out.extend_from_slice(&piece.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(data);
        }
        Message::Cancel(b) => {
            header(out, 12, 8);
            block(out, b);
        }
        Message::Port(p) => {
            header(out, 2, 9);
            out.extend_from_slice(&p.to_be_bytes());
        }
        Message::Extended { id, payload } => {
            header(out, 1 + payload.len(), 20);
            out.push(*id);
            out.extend_from_slice(payload);
        }
        Message::SuggestPiece(i) => {
            header(out, 4, 13);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Message::HaveAll => header(out, 0, 14),
        Message::HaveNone => header(out, 0, 15),
        Message::RejectRequest(b) => {
            header(out, 12, 16);
            block(out, b);
        }
        Message::AllowedFast(i) => {
            header(out, 4, 17);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Message::Unknown(id) => header(out, 0, *id),
    }
}

/// Writes only the 13-byte header of a piece message, so the block can be
/// copied straight after it from storage.
pub fn encode_piece_header(piece: u32, offset: u32, data_len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&(data_len as u32 + 9).to_be_bytes());
    out.push(7);
    out.extend_from_slice(&piece.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message<'static>> {
        let b = BlockRef { piece: 7, offset: 16384, len: 16384 };
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(123456),
            Message::Bitfield(&[0xff, 0x80]),
            Message::Bitfield(&[]),
            Message::Request(b),
            Message::Piece { piece: 3, offset: 0, data: b"hello" },
            Message::Piece { piece: 3, offset: 0, data: b"" },
            Message::Cancel(b),
            Message::Port(6881),
            Message::Extended { id: 0, payload: b"d1:md11:ut_metadatai1eee" },
            Message::SuggestPiece(42),
            Message::HaveAll,
            Message::HaveNone,
            Message::RejectRequest(b),
            Message::AllowedFast(u32::MAX),
            Message::Unknown(21),
        ]
    }

    #[test]
    fn each_message_type_is_held_to_its_own_size_from_its_header() {
        // A piece announcing 1 MiB is refused from its first five bytes.
        let mut head = ((1024 * 1024) as u32).to_be_bytes().to_vec();
        head.push(7);
        assert!(matches!(decode_bounded(&head, 10), Err(WireError::TooLongFor { id: 7, .. })));
        // A bitfield longer than the torrent's.
        let mut bf = 12u32.to_be_bytes().to_vec();
        bf.push(5);
        assert!(matches!(decode_bounded(&bf, 10), Err(WireError::TooLongFor { id: 5, len: 11, max: 10 })));
        assert_eq!(decode_bounded(&bf, 11), Ok(None), "within its limit it waits for the body");
        // A block of the size we ask for passes; a keep-alive is no body at all.
        let mut piece = Vec::new();
        encode_piece_header(0, 0, BLOCK_LEN as usize, &mut piece);
        piece.resize(13 + BLOCK_LEN as usize, 0);
        piece.extend_from_slice(&[0, 0, 0, 0]);
        let (msg, used) = decode_bounded(&piece, 1).unwrap().unwrap();
        assert!(matches!(msg, Message::Piece { .. }));
        assert_eq!(decode_bounded(&piece[used..], 1).unwrap().unwrap().0, Message::KeepAlive);
        let mut ext = ((3 + MAX_EXTENDED) as u32).to_be_bytes().to_vec();
        ext.push(20);
        assert!(decode_bounded(&ext, 1).is_err());
    }

    #[test]
    fn round_trips() {
        for m in samples() {
            let mut buf = Vec::new();
            encode(&m, &mut buf);
            let (back, used) = decode(&buf).unwrap().unwrap();
            assert_eq!(back, m);
            assert_eq!(used, buf.len());
            // Every strict prefix is "incomplete", never an error.
            for cut in 0..buf.len() {
                assert_eq!(decode(&buf[..cut]), Ok(None), "{m:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn piece_header_matches_full_encoding() {
        let mut a = Vec::new();
        encode(&Message::Piece { piece: 9, offset: 32768, data: &[1, 2, 3] }, &mut a);
        let mut b = Vec::new();
        encode_piece_header(9, 32768, 3, &mut b);
        b.extend_from_slice(&[1, 2, 3]);
        assert_eq!(a, b);
    }

    #[test]
    fn oversized_prefix_is_refused_before_body() {
        let buf = ((MAX_MESSAGE_LEN + 1) as u32).to_be_bytes();
        assert_eq!(decode(&buf), Err(WireError::TooLong(MAX_MESSAGE_LEN + 1)));
    }

    #[test]
    fn wrong_fixed_lengths_are_invalid() {
        // have with 3 bytes, request with 11, choke with 1, port with 3, piece with 4.
        for (id, len) in [(4u8, 3usize), (6, 11), (0, 1), (9, 3), (7, 4), (8, 13), (20, 0)] {
            let mut buf = ((len + 1) as u32).to_be_bytes().to_vec();
            buf.push(id);
            buf.extend(std::iter::repeat_n(0u8, len));
            assert!(decode(&buf).is_err(), "id {id} len {len}");
        }
    }

    #[test]
    fn fast_messages_have_exact_lengths_judged_from_the_header() {
        // One byte short and one byte long, for each of the five.
        for (id, len) in [(13u8, 4usize), (14, 0), (15, 0), (16, 12), (17, 4)] {
            for bad in [len.wrapping_sub(1), len + 1] {
                if bad == usize::MAX {
                    continue;
                }
                let mut buf = ((bad + 1) as u32).to_be_bytes().to_vec();
                buf.push(id);
                buf.extend(std::iter::repeat_n(0u8, bad));
                assert!(decode(&buf).is_err(), "id {id} len {bad}");
            }
            // Longer than the message can be: refused before the body.
            let mut head = ((len + 100) as u32).to_be_bytes().to_vec();
            head.push(id);
            assert!(matches!(decode(&head), Err(WireError::TooLongFor { .. })), "id {id}");
        }
        // Ids past the fast range stay unknown and tolerated.
        let mut buf = 1u32.to_be_bytes().to_vec();
        buf.push(18);
        assert_eq!(decode(&buf).unwrap().unwrap().0, Message::Unknown(18));
    }

    #[test]
    fn fast_messages_encode_as_bep6_lays_them_out() {
        let mut out = Vec::new();
        encode(&Message::HaveAll, &mut out);
        encode(&Message::HaveNone, &mut out);
        encode(&Message::AllowedFast(0x0102_0304), &mut out);
        encode(&Message::RejectRequest(BlockRef { piece: 1, offset: 2, len: 3 }), &mut out);
        let expected: Vec<u8> = [
            &[0, 0, 0, 1, 0x0e][..],
            &[0, 0, 0, 1, 0x0f],
            &[0, 0, 0, 5, 0x11, 1, 2, 3, 4],
            &[0, 0, 0, 13, 0x10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3],
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn junk_of_every_length_never_panics() {
        let mut seed = 99u64;
        for len in 0..600 {
            for _ in 0..20 {
                let junk: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        (seed >> 56) as u8
                    })
                    .collect();
                let _ = decode(&junk);
                let mut small = junk.clone();
                if small.len() >= 4 {
                    small[..4].copy_from_slice(&((len as u32).saturating_sub(4)).to_be_bytes());
                    let _ = decode(&small);
                }
            }
        }
    }

    #[test]
    fn handshake_round_trip_and_rejects_other_protocols() {
        let h = Handshake::new(InfoHash([3; 20]), PeerId([4; 20]), true);
        let bytes = h.encode();
        let back = Handshake::decode(&bytes).unwrap();
        assert_eq!(back, h);
        assert!(back.supports_extensions());
        assert!(back.supports_fast());
        assert_eq!(bytes[27], 0x05, "reserved[7]: fast (0x04) and DHT (0x01)");

        let mut bad = bytes;
        bad[3] = b'x';
        assert_eq!(Handshake::decode(&bad), Err(WireError::NotBitTorrent));
    }
}
