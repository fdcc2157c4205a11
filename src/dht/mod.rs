//! The mainline DHT (BEP 5) over IPv4 and IPv6 (BEP 32): up to two nodes,
//! one per address family, each on its own UDP socket with its own routing
//! table (`node.rs`). This module starts them, runs a torrent's lookups on
//! both and merges the peers, and saves and restores their node lists.
//!
//! Both nodes share one node id (BEP 32 allows it; it keeps one identity
//! in the state file). The IPv6 socket is bound with `IPV6_V6ONLY`, so
//! `[::]:port` does not also claim IPv4 and collide with the IPv4 node on
//! the same port. A node that cannot bind is left out with a warning; the
//! DHT is off only when neither can.

pub mod family;
pub mod krpc;
mod node;
pub use node::{Bound, Inbox};
pub mod routing;

use crate::types::InfoHash;
use family::Family;
use krpc::NodeId;
use node::Node;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const STATE_FILE: &str = "dht.json";
const SAVE_EVERY: Duration = Duration::from_secs(5 * 60);
/// Saved nodes read back per family; more are ignored.
const MAX_SAVED: usize = 1000;

/// `state_dir/dht.json`. `nodes6` came with BEP 32: files written before it
/// load with an empty IPv6 list.
#[derive(Serialize, Deserialize, Default)]
struct SavedState {
    id: String,
    nodes: Vec<String>,
    #[serde(default)]
    nodes6: Vec<String>,
}

pub struct Dht {
    v4: Option<Arc<Node>>,
    v6: Option<Arc<Node>>,
    own: NodeId,
    state_file: PathBuf,
    cancel: CancellationToken,
    saver: Mutex<Option<JoinHandle<()>>>,
}

impl Dht {
    /// `saver`, locked.
    fn saver(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        crate::locks::locked(&self.saver)
    }
}

impl Dht {
    /// Starts a node per family the listen address `ip` covers (see
    /// [`family::bind_addresses`]), on `port` if it is free for UDP. The
    /// IPv4 node takes `shared_v4` if given (the socket uTP reads).
    pub async fn start(
        ip: IpAddr,
        port: u16,
        state_dir: &Path,
        config: &crate::config::Dht,
        shared_v4: Option<Bound>,
    ) -> std::io::Result<Arc<Dht>> {
        let state_file = state_dir.join(STATE_FILE);
        let saved: SavedState =
            std::fs::read(&state_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let own = crate::types::from_hex(&saved.id)
            .and_then(|b| <[u8; 20]>::try_from(b).ok())
            .map(NodeId)
            .unwrap_or_else(NodeId::random);
        let parse = |list: &[String]| list.iter().take(MAX_SAVED).filter_map(|n| n.parse().ok()).collect();
        let (v4_ip, v6_ip) = family::bind_addresses(ip, config.ipv6);
        let mut v4 = None;
        if let Some(ip) = v4_ip {
            let bound = match shared_v4 {
                Some(b) => Ok(b),
                None => bind_v4(ip, port).await.map(|s| Bound { socket: Arc::new(s), inbox: None }),
            };
            match bound {
                Ok(b) => v4 = Some(Node::start(Family::V4, b, own, parse(&saved.nodes), config.bootstrap.clone())?),
                Err(e) => tracing::warn!(error = %e, port, "cannot start the IPv4 DHT node"),
            }
        }
        // The IPv6 node takes the IPv4 node's port when it can, so one
        // `port` message is right for both.
        let port6 = v4.as_ref().map_or(port, |n| n.port());
        let mut v6 = None;
        if let Some(ip) = v6_ip {
            match bind_v6(ip, port6) {
                Ok(s) => {
                    let b = Bound { socket: Arc::new(s), inbox: None };
                    v6 = Some(Node::start(Family::V6, b, own, parse(&saved.nodes6), config.bootstrap.clone())?)
                }
                Err(e) => tracing::warn!(error = %e, port = port6, "cannot start the IPv6 DHT node; IPv4 only"),
            }
        }
        if let (Some(a), Some(b)) = (&v4, &v6) {
            Node::pair(a, b);
        }
        if v4.is_none() && v6.is_none() {
            return Err(std::io::Error::other("no DHT node could start"));
        }
        let dht = Arc::new(Dht { v4, v6, own, state_file, cancel: CancellationToken::new(), saver: Mutex::new(None) });
        *dht.saver() = Some(tokio::spawn(dht.clone().save_loop()));
        Ok(dht)
    }

    fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// The UDP port of the DHT, for `port` messages (the IPv4 node's when
    /// it runs; the IPv6 node binds the same one when it can).
    pub fn port(&self) -> u16 {
        self.nodes().next().map_or(0, |n| n.port())
    }

    /// The port to tell a peer at `ip`: that of the node of its family.
    pub fn port_for(&self, ip: IpAddr) -> u16 {
        self.node_of(Family::of(&SocketAddr::new(ip, 0))).map_or(self.port(), |n| n.port())
    }

    /// Nodes in both routing tables.
    pub fn node_count(&self) -> usize {
        self.nodes().map(|n| n.node_count()).sum()
    }

    /// Nodes in one family's routing table (`None`: that node is not running).
    pub fn node_count_of(&self, family: Family) -> Option<usize> {
        self.node_of(family).map(|n| n.node_count())
    }

    fn node_of(&self, family: Family) -> Option<&Arc<Node>> {
        match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    /// A peer told us its DHT port: the node of its family pings it.
    pub fn add_node(&self, addr: SocketAddr) {
        let addr = crate::compact::normalize(addr);
        if let Some(n) = self.node_of(Family::of(&addr)) {
            n.add_node(addr);
        }
    }

    /// Looks `info_hash` up on both families at once and merges the peers
    /// found; with `announce_port`, each node announces us to the closest
    /// nodes of its family.
    pub async fn get_peers(&self, info_hash: InfoHash, announce_port: Option<u16>) -> Vec<SocketAddr> {
        let on = |node: Option<&Arc<Node>>| {
            let node = node.cloned();
            async move {
                match node {
                    Some(n) => n.get_peers(info_hash, announce_port).await,
                    None => Vec::new(),
                }
            }
        };
        let (mut peers, more) = tokio::join!(on(self.v4.as_ref()), on(self.v6.as_ref()));
        for p in more {
            if !peers.contains(&p) {
                peers.push(p);
            }
        }
        peers
    }

    /// Looks `info_hash` up and announces us (on `port`) again and again
    /// until `cancel`, sending what it finds; `every` says how long to wait
    /// before the next round. A torrent and a magnet each run one.
    pub async fn keep_looking_up(
        self: Arc<Self>,
        info_hash: InfoHash,
        port: u16,
        found_tx: flume::Sender<crate::tracker::PeerList>,
        cancel: CancellationToken,
        mut every: impl FnMut(usize) -> Duration,
    ) {
        loop {
            let found = tokio::select! {
                _ = cancel.cancelled() => return,
                found = self.get_peers(info_hash, Some(port)) => found,
            };
            let count = found.len();
            tracing::debug!(hash = %info_hash.short(), peers = count, "DHT lookup done");
            // The receiver may be stopping and no longer reading.
            if !found.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    sent = found_tx.send_async(Box::new(found)) => if sent.is_err() { return },
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every(count)) => {}
            }
        }
    }

    /// Stops both nodes and saves their node lists.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let saver = self.saver().take();
        if let Some(t) = saver {
            let _ = t.await;
        }
        for n in self.nodes() {
            n.shutdown().await;
        }
        self.save();
    }

    async fn save_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(SAVE_EVERY) => self.save(),
            }
        }
    }

    fn save(&self) {
        let list = |n: Option<&Arc<Node>>| n.map(|n| n.addresses().iter().map(|a| a.to_string()).collect());
        let saved = SavedState {
            id: crate::types::to_hex(&self.own.0),
            nodes: list(self.v4.as_ref()).unwrap_or_default(),
            nodes6: list(self.v6.as_ref()).unwrap_or_default(),
        };
        if let Ok(bytes) = serde_json::to_vec(&saved) {
            if let Err(e) = crate::fsutil::write_atomic(&self.state_file, &bytes) {
                tracing::warn!(error = %e, "cannot save the DHT node list");
            }
        }
    }
}

/// The IPv4 UDP socket, which the IPv4 node shares with uTP: the listen
/// port is the usual choice; if something else holds it for UDP, any port
/// will do for the DHT, as peers learn it from `port` messages (uTP then
/// only dials out).
pub async fn bind_v4(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let socket = match UdpSocket::bind(SocketAddr::new(ip, port)).await {
        Ok(s) => s,
        Err(_) if port != 0 => UdpSocket::bind(SocketAddr::new(ip, 0)).await?,
        Err(e) => return Err(e),
    };
    // uTP at speed brings bursts of datagrams that the default buffer
    // (about 200 KiB) drops; the kernel caps this at net.core.rmem_max.
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    Ok(socket)
}

/// Bytes asked for each of the UDP socket's kernel buffers.
const UDP_BUFFER: usize = 4 << 20;

/// The IPv6 node's socket, IPv6 only (Linux would otherwise let `[::]`
/// take IPv4 too, and the IPv4 node's port would be in use), on `port` or
/// else any port.
fn bind_v6(ip: Ipv6Addr, port: u16) -> std::io::Result<UdpSocket> {
    let open = |port: u16| -> std::io::Result<UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(true)?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)).into())?;
        UdpSocket::from_std(s.into())
    };
    match open(port) {
        Ok(s) => Ok(s),
        Err(e) if port != 0 && e.kind() == std::io::ErrorKind::AddrInUse => open(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ipv6: bool) -> crate::config::Dht {
        crate::config::Dht { enabled: true, bootstrap: vec![], ipv6 }
    }

    /// Both nodes on one port (the IPv6 one is IPv6-only, so they do not
    /// collide); the node lists are saved at shutdown, each family in its
    /// key, under one id that the next start reads back.
    #[tokio::test]
    async fn both_families_share_a_port_and_a_saved_id() {
        let dir = tempfile::tempdir().unwrap();
        let dht = Dht::start("::".parse().unwrap(), 0, dir.path(), &config(true), None).await.unwrap();
        let (v4, v6) = (dht.v4.as_ref().unwrap().port(), dht.v6.as_ref().unwrap().port());
        assert_eq!(v4, v6);
        assert_eq!(dht.port_for("::1".parse().unwrap()), v6);
        assert_eq!(dht.node_count_of(Family::V6), Some(0));
        let id = dht.own;
        dht.shutdown().await;
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains("\"nodes6\":[]"), "{text}");
        let again = Dht::start("127.0.0.1".parse().unwrap(), 0, dir.path(), &config(true), None).await.unwrap();
        assert_eq!(again.own, id);
        assert!(again.v6.is_none(), "an IPv4 listen address leaves IPv6 out");
        again.shutdown().await;
    }

    /// BEP 32's `want` at work, on loopback: B knows only A's IPv4 address;
    /// A's IPv6 node knows C. B's IPv4 lookups ask for `n6` too, A answers
    /// with C in `nodes6`, and B's IPv6 node pings C and keeps it.
    #[tokio::test]
    async fn an_ipv6_node_starts_from_nodes6_heard_over_ipv4() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let any: IpAddr = "::".parse().unwrap();
        let boot = |addr: String| crate::config::Dht { bootstrap: vec![addr], ..config(true) };
        let c = Dht::start(any, 0, dirs[2].path(), &config(true), None).await.unwrap();
        let a = Dht::start(any, 0, dirs[0].path(), &boot(format!("[::1]:{}", c.v6.as_ref().unwrap().port())), None)
            .await
            .unwrap();
        let known = |d: &Dht, f| d.node_count_of(f).unwrap_or(0) >= 1;
        for _ in 0..100 {
            if known(&a, Family::V6) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(known(&a, Family::V6), "A's IPv6 node knows C");
        let b = Dht::start(any, 0, dirs[1].path(), &boot(format!("127.0.0.1:{}", a.v4.as_ref().unwrap().port())), None)
            .await
            .unwrap();
        for _ in 0..200 {
            if known(&b, Family::V6) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(known(&b, Family::V6), "B's IPv6 node learnt C through A's IPv4 node");
        for d in [a, b, c] {
            d.shutdown().await;
        }
    }

    /// A state file from before BEP 32 (no `nodes6`) still loads.
    #[test]
    fn old_state_files_load() {
        let old = r#"{"id":"0102030405060708090a0b0c0d0e0f1011121314","nodes":["10.0.0.1:6881"]}"#;
        let s: SavedState = serde_json::from_str(old).unwrap();
        assert_eq!((s.nodes.len(), s.nodes6.len()), (1, 0));
    }

    /// A listen address no node can bind turns the DHT off; `ipv6 = false`
    /// leaves the IPv4 node alone.
    #[tokio::test]
    async fn unbindable_addresses_and_ipv6_off() {
        let dir = tempfile::tempdir().unwrap();
        // 2001:db8:: is documentation space, on no interface here.
        assert!(bind_v6("2001:db8::1".parse().unwrap(), 0).is_err());
        let only6 = Dht::start("2001:db8::1".parse().unwrap(), 0, dir.path(), &config(true), None).await;
        assert!(only6.is_err(), "neither family: the DHT is off");
        let dht = Dht::start("::".parse().unwrap(), 0, dir.path(), &config(false), None).await.unwrap();
        assert!(dht.v6.is_none() && dht.v4.is_some());
        assert_eq!(dht.node_count_of(Family::V6), None);
        dht.shutdown().await;
    }
}
