//! The BEP 10 extension protocol: the handshake (what we advertise in `m`,
//! `p`, `v`, `reqq`, `yourip`, `metadata_size`, and what we read of the
//! peer's), and the two extensions we speak over it: `ut_metadata` (BEP 9)
//! and `ut_pex` (BEP 11). These are pure codecs; unknown keys and extensions
//! are ignored.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Extended message id of the handshake itself.
pub const HANDSHAKE_ID: u8 = 0;
/// The ids peers use to send us each extension (we choose them).
pub const OUR_UT_METADATA: u8 = 1;
pub const OUR_UT_PEX: u8 = 2;
pub const UT_METADATA: &str = "ut_metadata";
pub const UT_PEX: &str = "ut_pex";
/// Metadata is exchanged in blocks of this size (BEP 9).
pub const METADATA_BLOCK: usize = 16 * 1024;
/// Largest `metadata_size` we accept from a peer.
pub const MAX_METADATA_SIZE: usize = 16 * 1024 * 1024;
/// Most peers taken from, or put into, one PEX message (BEP 11).
pub const MAX_PEX_PEERS: usize = 50;

/// Keys in bencode's sorted order, as serde_bencode writes fields in order.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtHandshake {
    #[serde(default)]
    pub m: BTreeMap<String, i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub metadata_size: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub p: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reqq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub v: Option<ByteBuf>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub yourip: Option<ByteBuf>,
}

impl ExtHandshake {
    /// Our handshake; `pex` is false for private torrents.
    pub fn ours(
        listen_port: u16,
        reqq: usize,
        peer_ip: IpAddr,
        metadata_size: Option<usize>,
        pex: bool,
    ) -> ExtHandshake {
        let yourip = match peer_ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => {
                v6.to_ipv4_mapped().map(|v4| v4.octets().to_vec()).unwrap_or_else(|| v6.octets().to_vec())
            }
        };
        let mut m = BTreeMap::from([(UT_METADATA.to_string(), OUR_UT_METADATA as i64)]);
        if pex {
            m.insert(UT_PEX.to_string(), OUR_UT_PEX as i64);
        }
        ExtHandshake {
            m,
            metadata_size: metadata_size.map(|n| n as i64),
            p: Some(listen_port as i64),
            reqq: Some(reqq as i64),
            v: Some(ByteBuf::from(concat!("dropseed ", env!("CARGO_PKG_VERSION")).as_bytes().to_vec())),
            yourip: Some(ByteBuf::from(yourip)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_bencode::to_bytes(self).unwrap_or_default()
    }

    pub fn decode(payload: &[u8]) -> Option<ExtHandshake> {
        crate::bencode::top_level_value(payload, b"m").ok()?;
        serde_bencode::from_bytes(payload).ok()
    }

    /// The peer's request queue limit, within sane bounds.
    pub fn request_limit(&self) -> Option<usize> {
        self.reqq.filter(|&q| q > 0).map(|q| q.min(4096) as usize)
    }

    pub fn client(&self) -> String {
        self.v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
    }

    /// The id the peer wants for extension `name`, if it speaks it (0 means
    /// disabled, BEP 10).
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.m.get(name).and_then(|&id| u8::try_from(id).ok()).filter(|&id| id != 0)
    }

    /// The peer's metadata size, refused when zero, negative or over the cap.
    pub fn metadata_size(&self) -> Result<Option<usize>, String> {
        match self.metadata_size {
            None => Ok(None),
            Some(n) if n <= 0 => Err(format!("metadata_size {n} is not positive")),
            Some(n) if n as u64 > MAX_METADATA_SIZE as u64 => {
                Err(format!("metadata_size {n} is over the {MAX_METADATA_SIZE}-byte cap"))
            }
            Some(n) => Ok(Some(n as usize)),
        }
    }

    /// The peer's listening address, from its `p` and the address it came from.
    pub fn listen_addr(&self, from: SocketAddr) -> Option<SocketAddr> {
        let p = u16::try_from(self.p?).ok().filter(|&p| p != 0)?;
        Some(SocketAddr::new(from.ip(), p))
    }
}

/// A ut_metadata message (BEP 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataMsg<'a> {
    Request { piece: u32 },
    Data { piece: u32, total_size: usize, data: &'a [u8] },
    Reject { piece: u32 },
}

#[derive(Serialize, Deserialize)]
struct MetadataHeader {
    msg_type: i64,
    piece: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    total_size: Option<i64>,
}

impl MetadataMsg<'_> {
    /// The extended message's payload: a bencoded dictionary, followed by
    /// the block itself for `Data`.
    pub fn encode(&self) -> Vec<u8> {
        let (msg_type, piece, total_size, data): (i64, u32, Option<i64>, &[u8]) = match *self {
            MetadataMsg::Request { piece } => (0, piece, None, &[]),
            MetadataMsg::Data { piece, total_size, data } => (1, piece, Some(total_size as i64), data),
            MetadataMsg::Reject { piece } => (2, piece, None, &[]),
        };
        let mut out =
            serde_bencode::to_bytes(&MetadataHeader { msg_type, piece: piece as i64, total_size }).unwrap_or_default();
        out.extend_from_slice(data);
        out
    }

    pub fn decode(payload: &[u8]) -> Result<MetadataMsg<'_>, String> {
        let end = crate::bencode::skip_value(payload, 0).map_err(|e| format!("ut_metadata: {e}"))?;
        let h: MetadataHeader =
            serde_bencode::from_bytes(&payload[..end]).map_err(|e| format!("ut_metadata header: {e}"))?;
        let piece = u32::try_from(h.piece).map_err(|_| format!("ut_metadata piece {} out of range", h.piece))?;
        let rest = &payload[end..];
        match h.msg_type {
            0 => Ok(MetadataMsg::Request { piece }),
            1 => {
                let total = h.total_size.ok_or("ut_metadata data without total_size")?;
                if total <= 0 || total as u64 > MAX_METADATA_SIZE as u64 {
                    return Err(format!("ut_metadata total_size {total} refused"));
                }
                Ok(MetadataMsg::Data { piece, total_size: total as usize, data: rest })
            }
            2 => Ok(MetadataMsg::Reject { piece }),
            t => Err(format!("ut_metadata msg_type {t} unknown")),
        }
    }
}

/// BEP 11 flags of an added peer: it is a seed (or upload-only).
pub const PEX_SEED: u8 = 0x02;
/// It accepts incoming connections (we reached it).
pub const PEX_REACHABLE: u8 = 0x10;

/// A ut_pex message (BEP 11): peers connected since the last message (with
/// their flags), and peers gone since then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMsg {
    pub added: Vec<(SocketAddr, u8)>,
    pub dropped: Vec<SocketAddr>,
}

#[derive(Serialize, Deserialize, Default)]
struct RawPex {
    #[serde(default)]
    added: ByteBuf,
    #[serde(rename = "added.f", default)]
    added_f: ByteBuf,
    #[serde(default)]
    added6: ByteBuf,
    #[serde(rename = "added6.f", default)]
    added6_f: ByteBuf,
    #[serde(default)]
    dropped: ByteBuf,
    #[serde(default)]
    dropped6: ByteBuf,
}

impl PexMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut raw = RawPex::default();
        for &(a, f) in &self.added {
            let a = crate::compact::normalize(a);
            let (list, flags) =
                if a.is_ipv4() { (&mut raw.added, &mut raw.added_f) } else { (&mut raw.added6, &mut raw.added6_f) };
            crate::compact::push(&a, list);
            flags.push(f);
        }
        for d in &self.dropped {
            let d = crate::compact::normalize(*d);
            crate::compact::push(&d, if d.is_ipv4() { &mut raw.dropped } else { &mut raw.dropped6 });
        }
        serde_bencode::to_bytes(&raw).unwrap_or_default()
    }

    /// Decodes a message; each list is cut at [`MAX_PEX_PEERS`] and port 0 is
    /// dropped. Missing flags read as 0.
    pub fn decode(payload: &[u8]) -> Result<PexMsg, String> {
        crate::bencode::top_level_value(payload, b"added").map_err(|e| format!("ut_pex: {e}"))?;
        let raw: RawPex = serde_bencode::from_bytes(payload).map_err(|e| format!("ut_pex: {e}"))?;
        let flag = |flags: &[u8], i: usize| flags.get(i).copied().unwrap_or(0);
        let added = crate::compact::parse_v4(&raw.added)
            .enumerate()
            .map(|(i, a)| (a, flag(&raw.added_f, i)))
            .chain(crate::compact::parse_v6(&raw.added6).enumerate().map(|(i, a)| (a, flag(&raw.added6_f, i))))
            .filter(|(a, _)| a.port() != 0)
            .take(MAX_PEX_PEERS)
            .collect();
        let dropped = crate::compact::parse_v4(&raw.dropped)
            .chain(crate::compact::parse_v6(&raw.dropped6))
            .filter(|a| a.port() != 0)
            .take(MAX_PEX_PEERS)
            .collect();
        Ok(PexMsg { added, dropped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_sorted_key_order() {
        let h = ExtHandshake::ours(6881, 500, "127.0.0.1".parse().unwrap(), Some(1234), true);
        let bytes = h.encode();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei1234e1:pi6881e4:reqqi500e1:v"),
            "{text}"
        );
        let private = ExtHandshake::ours(6881, 500, "127.0.0.1".parse().unwrap(), None, false);
        assert_eq!(private.id_of(UT_PEX), None);
        assert_eq!(private.id_of(UT_METADATA), Some(OUR_UT_METADATA));
        assert_eq!(ExtHandshake::decode(&bytes).unwrap(), h);
    }

    #[test]
    fn tolerates_unknown_keys_and_rejects_junk() {
        let h =
            ExtHandshake::decode(b"d1:ei1e1:md11:ut_metadatai3e6:ut_pexi1ee4:reqqi250e1:v13:qBittorrent 4e").unwrap();
        assert_eq!(h.m.get("ut_metadata"), Some(&3));
        assert_eq!(h.request_limit(), Some(250));
        assert_eq!(h.client(), "qBittorrent 4");
        assert!(ExtHandshake::decode(b"li1ee").is_none());
        assert!(ExtHandshake::decode(b"d4:reqqi-5ee").unwrap().request_limit().is_none());
    }

    #[test]
    fn metadata_size_limits() {
        let size = |n: i64| ExtHandshake { metadata_size: Some(n), ..Default::default() }.metadata_size();
        assert_eq!(size(100), Ok(Some(100)));
        assert!(size(0).unwrap_err().contains("not positive"));
        assert!(size(-5).unwrap_err().contains("not positive"));
        assert!(size(MAX_METADATA_SIZE as i64 + 1).unwrap_err().contains("cap"));
        assert_eq!(ExtHandshake::default().metadata_size(), Ok(None));
        let disabled = ExtHandshake::decode(b"d1:md11:ut_metadatai0eee").unwrap();
        assert_eq!(disabled.id_of(UT_METADATA), None);
    }

    #[test]
    fn metadata_messages_round_trip() {
        let data = vec![7u8; 100];
        for msg in [
            MetadataMsg::Request { piece: 3 },
            MetadataMsg::Reject { piece: 0 },
            MetadataMsg::Data { piece: 1, total_size: 16484, data: &data },
        ] {
            assert_eq!(MetadataMsg::decode(&msg.encode()).unwrap(), msg);
        }
        assert_eq!(MetadataMsg::Request { piece: 2 }.encode(), b"d8:msg_typei0e5:piecei2ee");
    }

    #[test]
    fn metadata_junk_is_refused() {
        for bad in [
            &b""[..],
            b"d8:msg_typei1e5:piecei0ee",                        // data without total_size
            b"d8:msg_typei1e5:piecei0e10:total_sizei0ee",        // zero size
            b"d8:msg_typei1e5:piecei0e10:total_sizei-4ee",       // negative
            b"d8:msg_typei1e5:piecei0e10:total_sizei99999999ee", // over the cap
            b"d8:msg_typei9e5:piecei0ee",
            b"d8:msg_typei0e5:piecei-1ee",
            b"d8:msg_typei0e",
            b"le",
        ] {
            assert!(MetadataMsg::decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn pex_round_trip_and_caps() {
        let msg = PexMsg {
            added: vec![("10.0.0.1:6881".parse().unwrap(), PEX_SEED), ("[2001:db8::2]:7000".parse().unwrap(), 0)],
            dropped: vec!["10.0.0.9:1234".parse().unwrap()],
        };
        assert_eq!(PexMsg::decode(&msg.encode()).unwrap(), msg);
        let many =
            PexMsg { added: (0..80).map(|i| (SocketAddr::from(([10, 0, 0, i], 6881)), 0)).collect(), dropped: vec![] };
        assert_eq!(PexMsg::decode(&many.encode()).unwrap().added.len(), MAX_PEX_PEERS);
        assert!(PexMsg::decode(b"d5:added3:abce").unwrap().added.is_empty());
        // Flags may be missing or short: they read as 0.
        let no_flags =
            PexMsg::decode(b"d5:added12:\x0a\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\x1a\xe17:added.f1:\x02e").unwrap();
        assert_eq!(no_flags.added.iter().map(|a| a.1).collect::<Vec<_>>(), vec![PEX_SEED, 0]);
        assert!(PexMsg::decode(b"junk").is_err());
        assert!(PexMsg::decode(b"d5:addedi5ee").is_err());
    }
}
