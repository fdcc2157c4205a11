//! The BEP 10 extension protocol's handshake: what we advertise (`m`, `p`,
//! `v`, `reqq`, `yourip`, `metadata_size`) and what we read of the peer's.
//! Unknown keys and extensions are ignored.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Extended message id of the handshake itself.
pub const HANDSHAKE_ID: u8 = 0;

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
    pub fn ours(listen_port: u16, reqq: usize, peer_ip: IpAddr, metadata_size: Option<usize>) -> ExtHandshake {
        let yourip = match peer_ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => {
                v6.to_ipv4_mapped().map(|v4| v4.octets().to_vec()).unwrap_or_else(|| v6.octets().to_vec())
            }
        };
        ExtHandshake {
            m: BTreeMap::new(),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_sorted_key_order() {
        let h = ExtHandshake::ours(6881, 500, "127.0.0.1".parse().unwrap(), Some(1234));
        let bytes = h.encode();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("d1:mde13:metadata_sizei1234e1:pi6881e4:reqqi500e1:v"), "{text}");
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
}
