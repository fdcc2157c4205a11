//! KRPC, the DHT's message format (BEP 5): bencoded dictionaries over UDP,
//! queries (`ping`, `find_node`, `get_peers`, `announce_peer`), responses
//! and errors, with BEP 32's `nodes6` and `want` keys (see `family.rs`). A
//! pure codec: decoding never panics, whatever the bytes.

use super::family::{self, Family, Want};
use crate::compact;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::net::SocketAddr;

/// Largest datagram we read or write.
pub const MAX_PACKET: usize = 1500;
/// Peers taken from one `values` list (a packet holds at most 187).
pub const MAX_VALUES_PARSED: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 20]);

impl NodeId {
    pub fn random() -> NodeId {
        NodeId(rand::random())
    }

    pub fn distance(&self, other: &NodeId) -> [u8; 20] {
        let mut d = [0u8; 20];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// Leading bits shared with `other` (160 when equal).
    pub fn common_prefix(&self, other: &NodeId) -> usize {
        for (i, b) in self.distance(other).iter().enumerate() {
            if *b != 0 {
                return i * 8 + b.leading_zeros() as usize;
            }
        }
        160
    }

    fn from_bytes(b: &[u8]) -> Option<NodeId> {
        Some(NodeId(b.try_into().ok()?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Ping,
    /// `want`: the families whose nodes the querier asks for (BEP 32);
    /// `None` when the key is absent.
    FindNode {
        target: NodeId,
        want: Option<Want>,
    },
    GetPeers {
        info_hash: [u8; 20],
        want: Option<Want>,
    },
    AnnouncePeer {
        info_hash: [u8; 20],
        port: u16,
        token: Vec<u8>,
        implied_port: bool,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// Nodes of both families: IPv4 ones travel in `nodes`, IPv6 ones in
    /// `nodes6`.
    pub nodes: Vec<(NodeId, SocketAddr)>,
    pub values: Vec<SocketAddr>,
    pub token: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Query(Query),
    Response(Response),
    Error { code: i64, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Transaction id, echoed by the responder.
    pub t: Vec<u8>,
    /// The sender's node id (errors carry none).
    pub id: Option<NodeId>,
    pub body: Body,
}

#[derive(Serialize, Deserialize, Default)]
struct RawArgs {
    #[serde(default)]
    id: ByteBuf,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    implied_port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    info_hash: Option<ByteBuf>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    nodes: Option<ByteBuf>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    nodes6: Option<ByteBuf>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    target: Option<ByteBuf>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    token: Option<ByteBuf>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    values: Option<Vec<ByteBuf>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    want: Option<Vec<ByteBuf>>,
}

#[derive(Serialize, Deserialize)]
struct RawMessage {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    a: Option<RawArgs>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    e: Option<(i64, ByteBuf)>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    q: Option<ByteBuf>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    r: Option<RawArgs>,
    t: ByteBuf,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    v: Option<ByteBuf>,
    y: ByteBuf,
}

const VERSION: &[u8] = b"DS01";

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let id = ByteBuf::from(self.id.map(|i| i.0.to_vec()).unwrap_or_default());
        let mut raw = RawMessage {
            a: None,
            e: None,
            q: None,
            r: None,
            t: ByteBuf::from(self.t.clone()),
            v: Some(ByteBuf::from(VERSION)),
            y: ByteBuf::from(b"q".to_vec()),
        };
        match &self.body {
            Body::Query(q) => {
                let mut args = RawArgs { id, ..Default::default() };
                let name: &[u8] = match q {
                    Query::Ping => b"ping",
                    Query::FindNode { target, want } => {
                        args.target = Some(ByteBuf::from(target.0.to_vec()));
                        args.want = want.map(Want::encode);
                        b"find_node"
                    }
                    Query::GetPeers { info_hash, want } => {
                        args.info_hash = Some(ByteBuf::from(info_hash.to_vec()));
                        args.want = want.map(Want::encode);
                        b"get_peers"
                    }
                    Query::AnnouncePeer { info_hash, port, token, implied_port } => {
                        args.info_hash = Some(ByteBuf::from(info_hash.to_vec()));
                        args.port = Some(*port as i64);
                        args.token = Some(ByteBuf::from(token.clone()));
                        args.implied_port = implied_port.then_some(1);
                        b"announce_peer"
                    }
                };
                raw.q = Some(ByteBuf::from(name.to_vec()));
                raw.a = Some(args);
            }
            Body::Response(r) => {
                let mut args = RawArgs { id, ..Default::default() };
                args.nodes = family::encode_nodes(&r.nodes, Family::V4).map(ByteBuf::from);
                args.nodes6 = family::encode_nodes(&r.nodes, Family::V6).map(ByteBuf::from);
                if !r.values.is_empty() {
                    args.values = Some(
                        r.values
                            .iter()
                            .map(|a| {
                                let mut v = Vec::with_capacity(18);
                                compact::push(a, &mut v);
                                ByteBuf::from(v)
                            })
                            .collect(),
                    );
                }
                args.token = r.token.clone().map(ByteBuf::from);
                raw.y = ByteBuf::from(b"r".to_vec());
                raw.r = Some(args);
            }
            Body::Error { code, message } => {
                raw.y = ByteBuf::from(b"e".to_vec());
                raw.e = Some((*code, ByteBuf::from(message.as_bytes().to_vec())));
            }
        }
        serde_bencode::to_bytes(&raw).unwrap_or_default()
    }

    /// Decodes one datagram. `Err` names what is wrong, for a `203` reply.
    pub fn decode(buf: &[u8]) -> Result<Message, String> {
        if buf.len() > MAX_PACKET {
            return Err("packet too large".into());
        }
        // The scanner bounds nesting before serde sees the bytes.
        crate::bencode::top_level_value(buf, b"t").map_err(|e| e.to_string())?;
        let raw: RawMessage = serde_bencode::from_bytes(buf).map_err(|e| e.to_string())?;
        let t = raw.t.into_vec();
        let node_id = |args: &RawArgs| NodeId::from_bytes(&args.id).ok_or("node id is not 20 bytes");
        let hash20 = |b: &Option<ByteBuf>, what: &str| -> Result<[u8; 20], String> {
            b.as_ref()
                .and_then(|b| <[u8; 20]>::try_from(&b[..]).ok())
                .ok_or_else(|| format!("{what} missing or not 20 bytes"))
        };
        match &raw.y[..] {
            b"q" => {
                let args = raw.a.ok_or("query without arguments")?;
                let id = node_id(&args)?;
                let want = args.want.as_deref().map(Want::decode);
                let q = match raw.q.as_ref().map(|q| &q[..]).unwrap_or_default() {
                    b"ping" => Query::Ping,
                    b"find_node" => Query::FindNode { target: NodeId(hash20(&args.target, "target")?), want },
                    b"get_peers" => Query::GetPeers { info_hash: hash20(&args.info_hash, "info_hash")?, want },
                    b"announce_peer" => {
                        let port = args.port.and_then(|p| u16::try_from(p).ok());
                        let implied_port = args.implied_port.unwrap_or(0) != 0;
                        Query::AnnouncePeer {
                            info_hash: hash20(&args.info_hash, "info_hash")?,
                            port: match (port, implied_port) {
                                (Some(p), _) => p,
                                (None, true) => 0,
                                (None, false) => return Err("announce_peer without a valid port".into()),
                            },
                            token: args.token.ok_or("announce_peer without token")?.into_vec(),
                            implied_port,
                        }
                    }
                    other => return Err(format!("unknown method {}", String::from_utf8_lossy(other))),
                };
                Ok(Message { t, id: Some(id), body: Body::Query(q) })
            }
            b"r" => {
                let args = raw.r.ok_or("response without body")?;
                let id = node_id(&args)?;
                let mut nodes = family::parse_nodes(args.nodes.as_ref().map_or(&[][..], |b| &b[..]), Family::V4)?;
                nodes.extend(family::parse_nodes(args.nodes6.as_ref().map_or(&[][..], |b| &b[..]), Family::V6)?);
                let values = args
                    .values
                    .unwrap_or_default()
                    .iter()
                    .take(MAX_VALUES_PARSED)
                    .filter_map(|v| match v.len() {
                        6 => compact::parse_v4(v).next(),
                        18 => compact::parse_v6(v).next(),
                        _ => None,
                    })
                    .collect();
                let token = args.token.map(|t| t.into_vec());
                Ok(Message { t, id: Some(id), body: Body::Response(Response { nodes, values, token }) })
            }
            b"e" => {
                let (code, msg) = raw.e.unwrap_or((0, ByteBuf::new()));
                Ok(Message {
                    t,
                    id: None,
                    body: Body::Error { code, message: String::from_utf8_lossy(&msg).into_owned() },
                })
            }
            other => Err(format!("unknown message type {}", String::from_utf8_lossy(other))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 20])
    }

    #[test]
    fn round_trips() {
        let msgs = vec![
            Message { t: b"aa".to_vec(), id: Some(id(1)), body: Body::Query(Query::Ping) },
            Message {
                t: b"ab".to_vec(),
                id: Some(id(1)),
                body: Body::Query(Query::FindNode { target: id(9), want: None }),
            },
            Message {
                t: b"ac".to_vec(),
                id: Some(id(1)),
                body: Body::Query(Query::GetPeers { info_hash: [5; 20], want: Some(Want::only(Family::V6)) }),
            },
            Message {
                t: b"a1".to_vec(),
                id: Some(id(1)),
                body: Body::Query(Query::FindNode {
                    target: id(8),
                    want: Some(Want::only(Family::V4).with(Family::V6)),
                }),
            },
            Message {
                t: b"ad".to_vec(),
                id: Some(id(1)),
                body: Body::Query(Query::AnnouncePeer {
                    info_hash: [5; 20],
                    port: 6881,
                    token: b"tok".to_vec(),
                    implied_port: false,
                }),
            },
            Message {
                t: b"ae".to_vec(),
                id: Some(id(2)),
                body: Body::Response(Response {
                    nodes: vec![
                        (id(3), "10.0.0.3:6881".parse().unwrap()),
                        (id(4), "10.0.0.4:1".parse().unwrap()),
                        (id(5), "[2001:db8::7]:6881".parse().unwrap()),
                    ],
                    values: vec!["10.0.0.5:51413".parse().unwrap(), "[2001:db8::5]:7000".parse().unwrap()],
                    token: Some(b"secret".to_vec()),
                }),
            },
            Message {
                t: b"a2".to_vec(),
                id: Some(id(2)),
                body: Body::Response(Response {
                    nodes: vec![(id(6), "[::1]:6881".parse().unwrap())],
                    ..Default::default()
                }),
            },
            Message { t: b"af".to_vec(), id: Some(id(2)), body: Body::Response(Response::default()) },
            Message { t: b"ag".to_vec(), id: None, body: Body::Error { code: 203, message: "Protocol Error".into() } },
        ];
        for m in msgs {
            let bytes = m.encode();
            assert_eq!(Message::decode(&bytes).unwrap(), m, "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn decodes_the_bep5_examples() {
        let ping = Message::decode(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe").unwrap();
        assert_eq!(ping.body, Body::Query(Query::Ping));
        assert_eq!(ping.t, b"aa");
        let err = Message::decode(b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee").unwrap();
        assert_eq!(err.body, Body::Error { code: 201, message: "A Generic Error Ocurred".into() });
        let implied = Message::decode(
            b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234565:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
        )
        .unwrap();
        assert!(matches!(implied.body, Body::Query(Query::AnnouncePeer { implied_port: true, port: 0, .. })));
    }

    /// The keys as BEP 32 spells them, byte for byte.
    #[test]
    fn speaks_bep32_nodes6_and_want() {
        let q = Message {
            t: b"aa".to_vec(),
            id: Some(id(b'a')),
            body: Body::Query(Query::FindNode {
                target: id(b'b'),
                want: Some(Want::only(Family::V4).with(Family::V6)),
            }),
        };
        let bytes = String::from_utf8(q.encode()).unwrap();
        assert!(bytes.contains("6:target20:bbbbbbbbbbbbbbbbbbbb4:wantl2:n42:n6e"), "{bytes}");
        assert!(bytes.contains("4:wantl2:n42:n6e"), "{bytes}");
        let mut r = b"d1:rd2:id20:abcdefghij01234567896:nodes638:".to_vec();
        r.extend_from_slice(&[7; 20]);
        r.extend_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        r.extend_from_slice(&[0x1a, 0xe1]);
        r.extend_from_slice(b"e1:t2:aa1:y1:re");
        let Body::Response(resp) = Message::decode(&r).unwrap().body else { panic!() };
        assert_eq!(resp.nodes, vec![(id(7), "[2001:db8::1]:6881".parse().unwrap())]);
        // A response carrying only IPv6 nodes has no `nodes` key at all.
        let back = String::from_utf8_lossy(
            &Message { t: b"aa".to_vec(), id: Some(id(1)), body: Body::Response(resp) }.encode(),
        )
        .into_owned();
        assert!(back.contains("6:nodes638:") && !back.contains("5:nodes"), "{back}");
    }

    #[test]
    fn garbled_nodes6_and_want_are_refused() {
        // 37 bytes of nodes6: not one whole entry, so the reply is refused.
        let mut r = b"d1:rd2:id20:abcdefghij01234567896:nodes637:".to_vec();
        r.extend_from_slice(&[7; 37]);
        r.extend_from_slice(b"e1:t2:aa1:y1:re");
        assert!(Message::decode(&r).is_err());
        // A `want` that is not a list of strings: refused, not guessed at.
        let bad_want =
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:wanti4ee1:q9:find_node1:t2:aa1:y1:qe";
        assert!(Message::decode(bad_want).is_err());
        // Unknown names in `want` are ignored; the query still decodes.
        let odd = b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:wantl2:n92:n6ee1:q9:find_node1:t2:aa1:y1:qe";
        let Body::Query(Query::FindNode { want, .. }) = Message::decode(odd).unwrap().body else { panic!() };
        assert_eq!(want, Some(Want::only(Family::V6)));
    }

    #[test]
    fn junk_is_refused_without_panics() {
        let good = Message {
            t: b"xy".to_vec(),
            id: Some(id(1)),
            body: Body::Query(Query::FindNode { target: id(2), want: Some(Want::only(Family::V6)) }),
        }
        .encode();
        // Every prefix, and every single-byte corruption, decodes or errs; never panics.
        for n in 0..good.len() {
            let _ = Message::decode(&good[..n]);
            for b in [0u8, b'e', b'd', b'9', 0xff] {
                let mut c = good.clone();
                c[n] = b;
                let _ = Message::decode(&c);
            }
        }
        for bad in [
            &b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe"[..],              // short id
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:nope1:t2:aa1:y1:qe", // unknown method
            b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:aa1:y1:qe", // no target
            b"d1:t2:aa1:y1:ze",
            b"i5e",
            b"d1:t2:aae",
        ] {
            assert!(Message::decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = format!("d1:t2:aa1:y1:q1:a{}e", "l".repeat(500));
        assert!(Message::decode(deep.as_bytes()).is_err());
        assert!(Message::decode(&vec![b'x'; MAX_PACKET + 1]).is_err());
    }

    #[test]
    fn prefix_and_distance() {
        let a = NodeId([0; 20]);
        let mut b = [0u8; 20];
        b[1] = 0b0010_0000;
        assert_eq!(a.common_prefix(&NodeId(b)), 10);
        assert_eq!(a.common_prefix(&a), 160);
        assert_eq!(a.distance(&NodeId(b))[1], 0b0010_0000);
    }
}
