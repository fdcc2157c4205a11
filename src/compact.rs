//! Compact peer and node addresses (BEP 23, BEP 5, BEP 11): 6 bytes per IPv4
//! address and 18 per IPv6 one, port in network order. Trackers, PEX and the
//! DHT all speak them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub fn parse_v4(b: &[u8]) -> impl Iterator<Item = SocketAddr> + '_ {
    b.chunks_exact(6)
        .map(|c| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])), u16::from_be_bytes([c[4], c[5]])))
}

pub fn parse_v6(b: &[u8]) -> impl Iterator<Item = SocketAddr> + '_ {
    b.chunks_exact(18).map(|c| {
        let ip: [u8; 16] = c[..16].try_into().unwrap();
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), u16::from_be_bytes([c[16], c[17]]))
    })
}

/// Appends `addr` in compact form (6 or 18 bytes). IPv4-mapped IPv6
/// addresses are written as IPv4.
pub fn push(addr: &SocketAddr, out: &mut Vec<u8>) {
    match normalize(*addr).ip() {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// `::ffff:a.b.c.d` becomes `a.b.c.d`; other addresses are unchanged.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        let a: SocketAddr = "10.1.2.3:6881".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:51413".parse().unwrap();
        let mut v4 = Vec::new();
        push(&a, &mut v4);
        let mut v6 = Vec::new();
        push(&b, &mut v6);
        assert_eq!((v4.len(), v6.len()), (6, 18));
        assert_eq!(parse_v4(&v4).collect::<Vec<_>>(), vec![a]);
        assert_eq!(parse_v6(&v6).collect::<Vec<_>>(), vec![b]);
        // A trailing partial entry is ignored, never misread.
        v4.push(1);
        assert_eq!(parse_v4(&v4).count(), 1);
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:6881".parse().unwrap();
        let mut m = Vec::new();
        push(&mapped, &mut m);
        assert_eq!(m, &v4[..6]);
    }
}
