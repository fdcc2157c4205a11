//! The DHT's two address families (BEP 32). An IPv4 and an IPv6 node run
//! side by side, each on its own socket with its own routing table; they
//! meet in KRPC, where a node list comes in two keys (`nodes`: 26-byte
//! entries, `nodes6`: 38-byte ones) and a query's `want` key names the
//! families whose nodes the querier would like back. Pure: no I/O.

use super::krpc::NodeId;
use crate::compact;
use serde_bytes::ByteBuf;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Node entries taken from one `nodes` or `nodes6` key. A 1500-byte packet
/// holds at most 57, so this only matters if the packet limit grows.
pub const MAX_NODES_PER_KEY: usize = 64;
/// Items of a `want` list looked at; a longer list is cut short.
const MAX_WANT_ITEMS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of `addr`; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn of(addr: &SocketAddr) -> Family {
        match compact::normalize(*addr).ip() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    /// Bytes of one compact node entry: id, address, port.
    pub fn node_len(self) -> usize {
        match self {
            Family::V4 => 20 + 4 + 2,
            Family::V6 => 20 + 16 + 2,
        }
    }

    /// Its name in a `want` list.
    fn want_name(self) -> &'static [u8] {
        match self {
            Family::V4 => b"n4",
            Family::V6 => b"n6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// The families named in a query's `want` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    pub v4: bool,
    pub v6: bool,
}

impl Want {
    pub fn only(f: Family) -> Want {
        Want::default().with(f)
    }

    pub fn with(mut self, f: Family) -> Want {
        match f {
            Family::V4 => self.v4 = true,
            Family::V6 => self.v6 = true,
        }
        self
    }

    pub fn has(self, f: Family) -> bool {
        match f {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    /// The families to answer a query with: those it asked for, or, when it
    /// named none we know (or had no `want`), the family of the socket it
    /// came in on, as BEP 32 says.
    pub fn resolve(want: Option<Want>, socket: Family) -> Want {
        match want {
            Some(w) if w.v4 || w.v6 => w,
            _ => Want::only(socket),
        }
    }

    pub(super) fn encode(self) -> Vec<ByteBuf> {
        [Family::V4, Family::V6].into_iter().filter(|f| self.has(*f)).map(|f| ByteBuf::from(f.want_name())).collect()
    }

    /// Unknown names are ignored (future families, typos).
    pub(super) fn decode(items: &[ByteBuf]) -> Want {
        items.iter().take(MAX_WANT_ITEMS).fold(Want::default(), |w, item| {
            match [Family::V4, Family::V6].into_iter().find(|f| f.want_name() == &item[..]) {
                Some(f) => w.with(f),
                None => w,
            }
        })
    }
}

/// Parses a `nodes` (IPv4) or `nodes6` (IPv6) value. A length that is not
/// a whole number of entries is refused: the list is garbled, and guessing
/// where entries start would hand us made-up addresses. IPv4-mapped
/// addresses in `nodes6` are dropped (they belong in `nodes`).
pub fn parse_nodes(b: &[u8], family: Family) -> Result<Vec<(NodeId, SocketAddr)>, String> {
    let len = family.node_len();
    if !b.len().is_multiple_of(len) {
        return Err(format!("{} bytes of {family} nodes: not a multiple of {len}", b.len()));
    }
    let entry = |c: &[u8]| {
        let id = NodeId(c[..20].try_into().ok()?);
        let addr = match family {
            Family::V4 => compact::parse_v4(&c[20..]).next()?,
            Family::V6 => compact::parse_v6(&c[20..]).next()?,
        };
        (Family::of(&addr) == family).then_some((id, addr))
    };
    Ok(b.chunks_exact(len).take(MAX_NODES_PER_KEY).filter_map(entry).collect())
}

/// Writes the entries of `family` among `nodes` in compact form; `None`
/// when there are none (the key is then left out).
pub fn encode_nodes(nodes: &[(NodeId, SocketAddr)], family: Family) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for (id, addr) in nodes.iter().filter(|(_, a)| Family::of(a) == family) {
        out.extend_from_slice(&id.0);
        compact::push(addr, &mut out);
    }
    (!out.is_empty()).then_some(out)
}

/// Which sockets the DHT binds for the peer listen address: each family's
/// node binds the address of its family, and `::` (every address) means
/// both unspecified addresses. An IPv4 address leaves IPv6 out; an IPv6
/// one leaves IPv4 out; `ipv6 = false` leaves IPv6 out.
pub fn bind_addresses(listen: IpAddr, ipv6: bool) -> (Option<IpAddr>, Option<Ipv6Addr>) {
    let (v4, v6) = match listen {
        IpAddr::V6(v6) if v6.is_unspecified() => (Some(IpAddr::from([0, 0, 0, 0])), Some(v6)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (Some(IpAddr::V4(v4)), None),
            None => (None, Some(v6)),
        },
        v4 => (Some(v4), None),
    };
    (v4, v6.filter(|_| ipv6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn want_names_and_defaults() {
        let both = Want::only(Family::V4).with(Family::V6);
        assert_eq!(Want::decode(&both.encode()), both);
        assert_eq!(both.encode(), vec![ByteBuf::from(&b"n4"[..]), ByteBuf::from(&b"n6"[..])]);
        // No want, or only names we do not know: the socket's family.
        assert_eq!(Want::resolve(None, Family::V6), Want::only(Family::V6));
        let odd = Want::decode(&[ByteBuf::from(&b"n5"[..]), ByteBuf::from(&b""[..])]);
        assert_eq!(Want::resolve(Some(odd), Family::V4), Want::only(Family::V4));
        // Asked for the other family only: that is what is answered.
        assert_eq!(Want::resolve(Some(Want::only(Family::V6)), Family::V4), Want::only(Family::V6));
        // A long list is looked at only so far.
        let mut long = vec![ByteBuf::from(&b"x"[..]); 100];
        long.push(ByteBuf::from(&b"n6"[..]));
        assert_eq!(Want::decode(&long), Want::default());
    }

    #[test]
    fn node_lists_round_trip_by_family() {
        let nodes = vec![
            (NodeId([1; 20]), "10.0.0.1:6881".parse().unwrap()),
            (NodeId([2; 20]), "[2001:db8::2]:6882".parse().unwrap()),
            (NodeId([3; 20]), "[::1]:7000".parse().unwrap()),
        ];
        let v4 = encode_nodes(&nodes, Family::V4).unwrap();
        let v6 = encode_nodes(&nodes, Family::V6).unwrap();
        assert_eq!((v4.len(), v6.len()), (26, 2 * 38));
        assert_eq!(parse_nodes(&v4, Family::V4).unwrap(), nodes[..1]);
        assert_eq!(parse_nodes(&v6, Family::V6).unwrap(), nodes[1..]);
        assert_eq!(encode_nodes(&nodes[..1], Family::V6), None);
    }

    #[test]
    fn garbled_node_lists_are_refused() {
        for n in [1, 25, 27, 37, 39, 75] {
            assert!(parse_nodes(&vec![7; n], Family::V6).is_err(), "{n}");
        }
        assert!(parse_nodes(&[7; 38 + 26], Family::V6).is_err());
        assert!(parse_nodes(&[7; 38], Family::V4).is_err(), "38 is not a multiple of 26");
        assert_eq!(parse_nodes(&[], Family::V6).unwrap(), vec![]);
        // A v4-mapped address has no place in nodes6.
        let mut mapped = vec![9u8; 20];
        mapped.extend_from_slice(&"::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
        mapped.extend_from_slice(&[0x1a, 0xe1]);
        assert_eq!(parse_nodes(&mapped, Family::V6).unwrap(), vec![]);
        // However long, at most MAX_NODES_PER_KEY entries come out.
        assert_eq!(parse_nodes(&vec![7; 38 * 100], Family::V6).unwrap().len(), MAX_NODES_PER_KEY);
    }

    #[test]
    fn each_family_binds_the_listen_address_of_its_own() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v6 = |s: &str| Some(s.parse::<Ipv6Addr>().unwrap());
        assert_eq!(bind_addresses(ip("::"), true), (Some(ip("0.0.0.0")), v6("::")));
        assert_eq!(bind_addresses(ip("::"), false), (Some(ip("0.0.0.0")), None));
        assert_eq!(bind_addresses(ip("0.0.0.0"), true), (Some(ip("0.0.0.0")), None));
        assert_eq!(bind_addresses(ip("127.0.0.1"), true), (Some(ip("127.0.0.1")), None));
        assert_eq!(bind_addresses(ip("::1"), true), (None, v6("::1")));
        assert_eq!(bind_addresses(ip("::1"), false), (None, None));
        assert_eq!(bind_addresses(ip("::ffff:10.0.0.1"), true), (Some(ip("10.0.0.1")), None));
    }
}
