//! Message Stream Encryption (MSE/PE), the "protocol encryption" of Vuze,
//! uTorrent, libtorrent, Transmission and aria2: a Diffie-Hellman exchange,
//! then RC4 (or, if both sides agree, plaintext) for the peer wire protocol.
//! ISPs that throttle BitTorrent by its plaintext header see random bytes.
//!
//! The handshake itself is pure ([`handshake`]): bytes in, bytes out, no
//! sockets and no clock, so the spec's bounds and hostile input are unit
//! tested. [`io`] drives it over a TCP stream under one timeout, and the
//! connection's [`crate::conn::transport`] carries the RC4 streams after.
//!
//! Bounds (from the spec): PadA, PadB, PadC and PadD are at most 512 bytes;
//! the responder must find HASH('req1', S) within 512 + 20 bytes after the
//! initiator's key, the initiator the encrypted VC within 512 + 8 bytes after
//! the responder's; the initial payload is at most 65535 bytes. Anything
//! past a bound ends the handshake.

pub mod cipher;
pub mod dh;
pub mod handshake;
pub mod io;

pub use cipher::Rc4Stream;
pub use handshake::{Established, Initiator, Responder};

/// Longest padding either side may send.
pub const MAX_PAD: usize = 512;
/// A Diffie-Hellman public key on the wire (768 bits).
pub const KEY_LEN: usize = 96;

/// A crypto method of crypto_provide / crypto_select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Plaintext,
    Rc4,
}

impl Method {
    fn bit(self) -> u32 {
        match self {
            Method::Plaintext => 0x01,
            Method::Rc4 => 0x02,
        }
    }
}

/// The methods one side offers or accepts, and which a responder picks
/// when offered both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Methods {
    pub plaintext: bool,
    pub rc4: bool,
    pub plaintext_first: bool,
}

impl Methods {
    pub const RC4: Methods = Methods { plaintext: false, rc4: true, plaintext_first: false };
    pub const PLAINTEXT: Methods = Methods { plaintext: true, rc4: false, plaintext_first: true };
    /// Either; RC4 when offered both.
    pub const BOTH: Methods = Methods { plaintext: true, rc4: true, plaintext_first: false };
    /// Either; plaintext when offered both (less CPU).
    pub const BOTH_PLAINTEXT_FIRST: Methods = Methods { plaintext: true, rc4: true, plaintext_first: true };

    fn bits(self) -> u32 {
        (if self.plaintext { 1 } else { 0 }) | (if self.rc4 { 2 } else { 0 })
    }

    fn has(self, m: Method) -> bool {
        self.bits() & m.bit() != 0
    }

    /// What a responder selects from `offered`, in our order of preference.
    pub fn select(self, offered: u32) -> Option<Method> {
        let order = match self.plaintext_first {
            true => [Method::Plaintext, Method::Rc4],
            false => [Method::Rc4, Method::Plaintext],
        };
        order.into_iter().find(|m| self.has(*m) && offered & m.bit() != 0)
    }
}

/// Why a handshake failed. Each is the peer's doing (or its absence).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MseError {
    #[error("the peer's key is out of range")]
    BadKey,
    #[error("no {0} within {1} bytes")]
    NoSync(&'static str, usize),
    #[error("the peer asked for a torrent we do not have")]
    UnknownTorrent,
    #[error("wrong verification constant")]
    BadVc,
    #[error("{0} padding bytes (at most 512)")]
    PadTooLong(usize),
    #[error("no crypto method in common (offered {0:#x})")]
    NoCommonMethod(u32),
    #[error("the peer selected a method we did not offer ({0:#x})")]
    BadSelect(u32),
    #[error("closed during the encryption handshake")]
    Closed,
    #[error("encryption handshake timed out")]
    Timeout,
    #[error("io: {0}")]
    Io(String),
}

/// SHA-1 over the concatenation of `parts`: the spec's HASH().
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HASH('req2', SKEY): what a responder compares against its torrents.
pub fn req2(skey: &[u8; 20]) -> [u8; 20] {
    hash(&[b"req2", skey])
}
