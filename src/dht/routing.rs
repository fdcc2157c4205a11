//! The DHT routing table (BEP 5): k-buckets over the 160-bit id space, split
//! only where our own id lies, so the table knows many nodes near us and a
//! few far away. Pure: the caller passes the time in seconds.
//!
//! A node is good while it answered in the last 15 minutes, questionable
//! after that, and bad after two failed queries. A full bucket takes a new
//! node only in place of a bad one; questionable ones are handed back to be
//! pinged, and replaced once they fail.

use super::krpc::NodeId;
use std::net::SocketAddr;

pub const K: usize = 8;
/// Nodes one host may have in the table: one on the internet (one host with
/// many ports must not fill the table), a few where addresses are shared on
/// purpose (loopback, private networks: test swarms, a LAN). A host is an
/// IPv4 address or an IPv6 /64, whose 2^64 addresses one subscriber picks
/// from freely.
pub const NODES_PER_PUBLIC_IP: usize = 1;
pub const NODES_PER_LOCAL_IP: usize = 4;
/// Seconds without a reply after which a node is questionable.
pub const QUESTIONABLE_AFTER: u64 = 15 * 60;
/// Failed queries in a row after which a node is bad.
pub const BAD_AFTER_FAILURES: u8 = 2;
/// Failed queries in a row after which a node leaves the table.
pub const DROP_AFTER_FAILURES: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub last_seen: u64,
    pub failures: u8,
}

impl Node {
    fn is_bad(&self) -> bool {
        self.failures >= BAD_AFTER_FAILURES
    }

    fn is_questionable(&self, now: u64) -> bool {
        now.saturating_sub(self.last_seen) >= QUESTIONABLE_AFTER || self.failures > 0
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Insert {
    Added,
    Updated,
    /// A bad node made room.
    Replaced(SocketAddr),
    /// No room; these questionable nodes should be pinged.
    Full {
        ping: Vec<SocketAddr>,
    },
    Ignored,
}

pub struct RoutingTable {
    own: NodeId,
    /// Bucket `i` holds nodes sharing exactly `i` leading bits with us; the
    /// last holds every node sharing at least `len - 1`.
    buckets: Vec<Vec<Node>>,
}

impl RoutingTable {
    pub fn new(own: NodeId) -> RoutingTable {
        RoutingTable { own, buckets: vec![Vec::new()] }
    }

    pub fn own_id(&self) -> NodeId {
        self.own
    }

    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    fn bucket_of(&self, id: &NodeId) -> usize {
        self.own.common_prefix(id).min(self.buckets.len() - 1)
    }

    /// Records that `id` at `addr` was heard from now.
    pub fn insert(&mut self, id: NodeId, addr: SocketAddr, now: u64) -> Insert {
        if id == self.own || addr.port() == 0 {
            return Insert::Ignored;
        }
        loop {
            let b = self.bucket_of(&id);
            let bucket = &mut self.buckets[b];
            if let Some(n) = bucket.iter_mut().find(|n| n.id == id) {
                // An id that moved is not followed: that is how a node gets
                // hijacked. The old address must fail first.
                if n.addr != addr {
                    return Insert::Ignored;
                }
                n.last_seen = now;
                n.failures = 0;
                return Insert::Updated;
            }
            if bucket.iter().any(|n| n.addr == addr) {
                return Insert::Ignored; // one id per address
            }
            if self.nodes_at(addr.ip()) >= nodes_allowed(addr.ip()) || self.same_subnet_in_bucket(b, addr.ip()) {
                return Insert::Ignored;
            }
            let bucket = &mut self.buckets[b];
            let node = Node { id, addr, last_seen: now, failures: 0 };
            if bucket.len() < K {
                bucket.push(node);
                return Insert::Added;
            }
            if let Some(i) = bucket.iter().position(Node::is_bad) {
                let old = std::mem::replace(&mut bucket[i], node);
                return Insert::Replaced(old.addr);
            }
            let last = self.buckets.len() - 1;
            if b == last && last < 159 {
                self.split_last();
                continue;
            }
            let ping = self.buckets[b].iter().filter(|n| n.is_questionable(now)).map(|n| n.addr).collect();
            return Insert::Full { ping };
        }
    }

    fn nodes_at(&self, ip: std::net::IpAddr) -> usize {
        self.buckets.iter().flatten().filter(|n| host(n.addr.ip()) == host(ip)).count()
    }

    /// A public IPv4 /24 or IPv6 /48 may hold one host of a bucket: a block
    /// of addresses is still one operator.
    fn same_subnet_in_bucket(&self, b: usize, ip: std::net::IpAddr) -> bool {
        if is_local(ip) {
            return false;
        }
        let net = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V4(v4) => (4, u128::from(u32::from(v4) >> 8)),
            std::net::IpAddr::V6(v6) => (6, u128::from(v6) >> 80),
        };
        self.buckets[b].iter().any(|n| net(n.addr.ip()) == net(ip) && host(n.addr.ip()) != host(ip))
    }

    fn split_last(&mut self) {
        let depth = self.buckets.len(); // nodes with prefix >= depth move on
        let old = self.buckets.pop().unwrap_or_default();
        let (far, near): (Vec<Node>, Vec<Node>) = old.into_iter().partition(|n| self.own.common_prefix(&n.id) < depth);
        self.buckets.push(far);
        self.buckets.push(near);
    }

    /// A known node sent us a query: it is alive (BEP 5 counts that for a
    /// node that has answered before). Returns false for unknown nodes,
    /// which must answer a query of ours before they get in.
    pub fn heard_from(&mut self, id: NodeId, addr: SocketAddr, now: u64) -> bool {
        let b = self.bucket_of(&id);
        match self.buckets[b].iter_mut().find(|n| n.id == id && n.addr == addr) {
            Some(n) => {
                n.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// A query to `addr` went unanswered. A node that keeps failing long
    /// after it went bad is dropped, so the table does not hold the dead.
    pub fn failed(&mut self, addr: SocketAddr) {
        for bucket in &mut self.buckets {
            for n in bucket.iter_mut().filter(|n| n.addr == addr) {
                n.failures = n.failures.saturating_add(1);
            }
            bucket.retain(|n| n.failures < DROP_AFTER_FAILURES);
        }
    }

    /// The `n` good-or-questionable nodes closest to `target`.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<(NodeId, SocketAddr)> {
        let mut all: Vec<&Node> = self.buckets.iter().flatten().filter(|n| !n.is_bad()).collect();
        all.sort_by_key(|node| node.id.distance(target));
        all.into_iter().take(n).map(|node| (node.id, node.addr)).collect()
    }

    /// Nodes that have not answered for a while, to be pinged (bad ones are
    /// not: they wait to be replaced).
    pub fn questionable(&self, now: u64, max: usize) -> Vec<SocketAddr> {
        self.buckets
            .iter()
            .flatten()
            .filter(|n| n.is_questionable(now) && !n.is_bad())
            .take(max)
            .map(|n| n.addr)
            .collect()
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.buckets.iter().flatten().filter(|n| !n.is_bad()).map(|n| n.addr).collect()
    }
}

/// Loopback, private (unique local) and link-local addresses: shared by design.
pub fn is_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// The host an address belongs to: an IPv4 address, or an IPv6 /64.
fn host(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => std::net::Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128)).into(),
        v4 => v4,
    }
}

fn nodes_allowed(ip: std::net::IpAddr) -> usize {
    if is_local(ip) {
        NODES_PER_LOCAL_IP
    } else {
        NODES_PER_PUBLIC_IP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_with_many_ports_gets_few_places() {
        let mut t = RoutingTable::new(NodeId([0; 20]));
        let id = |i: u32| {
            let mut b = [0xffu8; 20];
            b[16..].copy_from_slice(&i.to_be_bytes());
            NodeId(b)
        };
        let public = |port: u16| SocketAddr::from(([203, 0, 113, 7], port));
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        for p in 1..300u16 {
            t.insert(id(p as u32), public(p), 0);
            t.insert(id(1000 + p as u32), local(p), 0);
        }
        assert_eq!(t.len(), NODES_PER_PUBLIC_IP + NODES_PER_LOCAL_IP);
        // Another host of the same public /24 waits for another bucket.
        assert_eq!(t.insert(id(5000), SocketAddr::from(([203, 0, 113, 8], 1)), 0), Insert::Ignored);
        assert!(matches!(t.insert(id(6000), SocketAddr::from(([198, 51, 100, 1], 1)), 0), Insert::Added));
    }

    #[test]
    fn one_ipv6_64_is_one_host() {
        let mut t = RoutingTable::new(NodeId([0; 20]));
        let id = |i: u16| {
            let mut b = [0xffu8; 20];
            b[18..].copy_from_slice(&i.to_be_bytes());
            NodeId(b)
        };
        let v6 = |s: &str| SocketAddr::new(s.parse().unwrap(), 6881);
        // Any number of addresses of one public /64: one place.
        for i in 1..50u16 {
            t.insert(id(i), v6(&format!("2001:db8:1:2::{i:x}")), 0);
        }
        assert_eq!(t.len(), 1);
        // Another /64 of the same /48 waits for another bucket; another /48 gets in.
        assert_eq!(t.insert(id(100), v6("2001:db8:1:3::1"), 0), Insert::Ignored);
        assert_eq!(t.insert(id(101), v6("2001:db8:2::1"), 0), Insert::Added);
        // Loopback is shared on purpose, as for IPv4.
        for p in 1..10u16 {
            t.insert(id(200 + p), SocketAddr::new("::1".parse().unwrap(), p), 0);
        }
        assert_eq!(t.len(), 2 + NODES_PER_LOCAL_IP);
    }

    /// An id sharing exactly `prefix` leading bits with the all-zero id.
    fn id_with_prefix(prefix: usize, salt: u8) -> NodeId {
        let mut b = [0u8; 20];
        b[prefix / 8] = 0x80 >> (prefix % 8);
        b[19] ^= salt;
        if prefix / 8 == 19 {
            b[19] = (0x80 >> (prefix % 8)) | (salt & ((0x80u8 >> (prefix % 8)).wrapping_sub(1)));
        }
        NodeId(b)
    }

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 6881))
    }

    #[test]
    fn fills_then_splits_near_our_id() {
        let mut t = RoutingTable::new(NodeId([0; 20]));
        // Eight far nodes (first bit differs) fill the single bucket.
        for i in 0..8 {
            assert_eq!(t.insert(id_with_prefix(0, i), addr(i as u16), 0), Insert::Added);
        }
        assert_eq!(t.bucket_count(), 1);
        // A ninth node near us splits it: far nodes stay in bucket 0.
        assert_eq!(t.insert(id_with_prefix(3, 1), addr(100), 0), Insert::Added);
        assert!(t.bucket_count() >= 2);
        assert_eq!(t.len(), 9);
        // Another far node finds bucket 0 full of good nodes and is refused.
        assert_eq!(t.insert(id_with_prefix(0, 99), addr(101), 0), Insert::Full { ping: vec![] });
        // Near nodes keep splitting the last bucket, never the far ones.
        for i in 0..20u8 {
            t.insert(id_with_prefix(5 + i as usize, i), addr(200 + i as u16), 0);
        }
        assert_eq!(t.len(), 9 + 20);
        assert!(t.bucket_count() > 5);
    }

    #[test]
    fn bad_nodes_are_replaced_and_questionable_ones_pinged() {
        let mut t = RoutingTable::new(NodeId([0; 20]));
        for i in 0..8 {
            t.insert(id_with_prefix(0, i), addr(i as u16), 0);
        }
        t.insert(id_with_prefix(2, 1), addr(50), 0); // split so bucket 0 is no longer last
                                                     // Later, every far node is questionable: the caller is told to ping them.
        let later = QUESTIONABLE_AFTER + 1;
        match t.insert(id_with_prefix(0, 77), addr(77), later) {
            Insert::Full { ping } => assert_eq!(ping.len(), 8),
            other => panic!("{other:?}"),
        }
        // One fails twice: it is bad, and the newcomer takes its place.
        t.failed(addr(3));
        t.failed(addr(3));
        assert_eq!(t.insert(id_with_prefix(0, 77), addr(77), later), Insert::Replaced(addr(3)));
        assert!(!t.addresses().contains(&addr(3)));
        assert!(t.addresses().contains(&addr(77)));
        // A bad node is not pinged again; one that keeps failing is dropped.
        t.failed(addr(4));
        t.failed(addr(4));
        assert!(!t.questionable(later, 20).contains(&addr(4)));
        let before = t.len();
        for _ in 0..3 {
            t.failed(addr(4));
        }
        assert_eq!(t.len(), before - 1);
    }

    #[test]
    fn updates_known_nodes_and_ignores_hijacks() {
        let mut t = RoutingTable::new(NodeId([0; 20]));
        let a = id_with_prefix(1, 1);
        assert_eq!(t.insert(a, addr(1), 0), Insert::Added);
        t.failed(addr(1));
        assert_eq!(t.insert(a, addr(1), 10), Insert::Updated);
        assert_eq!(t.insert(a, addr(2), 10), Insert::Ignored, "same id from another address");
        assert_eq!(t.insert(NodeId([0; 20]), addr(3), 10), Insert::Ignored, "our own id");
        assert_eq!(t.questionable(10, 10), Vec::<SocketAddr>::new(), "the update cleared the failure");
        assert!(t.heard_from(a, addr(1), QUESTIONABLE_AFTER + 20));
        assert!(t.questionable(QUESTIONABLE_AFTER + 20, 10).is_empty(), "a query refreshes a known node");
        assert!(!t.heard_from(id_with_prefix(2, 2), addr(9), 20), "unknown nodes are not added by their queries");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn closest_orders_by_xor_distance() {
        let mut t = RoutingTable::new(NodeId([0; 20]));
        for p in [0usize, 4, 9, 30] {
            t.insert(id_with_prefix(p, 0), addr(p as u16), 0);
        }
        let target = id_with_prefix(9, 0);
        let got: Vec<SocketAddr> = t.closest(&target, 2).into_iter().map(|(_, a)| a).collect();
        assert_eq!(got, vec![addr(9), addr(30)]);
    }
}
