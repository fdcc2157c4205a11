//! Local Service Discovery (BEP 14): peers on the same LAN find each other
//! through IPv4 multicast, with no tracker and no DHT. Off unless
//! `[lsd] enabled`; IPv6 (`[ff15::efc0:988f]:6771`) is not spoken.
//!
//! One UDP socket, bound to port 6771 beside other clients on the host
//! (`SO_REUSEADDR`) and joined to 239.192.152.143 on one interface
//! (`[lsd] interface`), which it also sends through, with multicast loop on
//! so that clients on the same host hear each other. Two tasks, owned by
//! [`Lsd`] and stopped by [`Lsd::shutdown`]:
//! - the announce loop sends the due torrents of the [`roster`] (one message
//!   a minute at most, each torrent every 5 minutes);
//! - the receive loop reads announces ([`message`]), through the [`gate`]'s
//!   rate limits, and hands `sender IP : announced port` to each torrent
//!   named that is in the roster.
//!
//! A torrent is in the roster while its active phase holds a
//! [`Registration`]; private torrents never take one, so they are neither
//! announced nor given LSD peers.
//!
//! The roster's lock is a leaf: nothing is locked or awaited under it (a
//! peer is handed over with `try_send`).

pub mod gate;
pub mod message;
pub mod roster;

use crate::types::InfoHash;
use gate::Gate;
use roster::Roster;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Routers between us and a peer: 1 keeps announces on the local link (a
/// seedbox should not spread multicast further than its own segment).
const TTL: u32 = 1;

/// Where an announced torrent's peers go: the channel its active phase reads
/// tracker and DHT peers from.
type PeerSink = flume::Sender<crate::tracker::PeerList>;

pub struct Lsd {
    socket: UdpSocket,
    /// Our BitTorrent listen port, as announced.
    port: u16,
    /// Marks our own announces, which multicast loop sends back to us.
    cookie: String,
    roster: Mutex<Roster<PeerSink>>,
    /// Rings when a torrent joins, so the announce loop looks at the roster.
    joined: Notify,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Lsd {
    /// `tasks`, locked.
    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        crate::locks::locked(&self.tasks)
    }
}

impl Lsd {
    /// `roster`, locked.
    fn roster(&self) -> std::sync::MutexGuard<'_, Roster<PeerSink>> {
        crate::locks::locked(&self.roster)
    }
}

/// A torrent's place in the roster; dropping it takes the torrent out.
pub struct Registration {
    lsd: Arc<Lsd>,
    hash: InfoHash,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.lsd.roster().leave(self.hash, self.id);
    }
}

/// A socket on port 6771 in the LSD group on `interface` (unspecified: the
/// interface the system routes the group through), sending there too.
pub fn open_socket(interface: Ipv4Addr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Other BitTorrent clients on the host listen on the same port.
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, message::PORT).into())?;
    socket.join_multicast_v4(&message::GROUP, &interface)?;
    if !interface.is_unspecified() {
        socket.set_multicast_if_v4(&interface)?;
    }
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_ttl_v4(TTL)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl Lsd {
    /// Joins the group on `interface` and starts both tasks; `port` is our
    /// BitTorrent listen port.
    pub fn start(interface: Ipv4Addr, port: u16) -> std::io::Result<Arc<Lsd>> {
        let socket = UdpSocket::from_std(open_socket(interface)?)?;
        let lsd = Arc::new(Lsd {
            socket,
            port,
            cookie: format!("{:016x}", rand::random::<u64>()),
            roster: Mutex::new(Roster::default()),
            joined: Notify::new(),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let receive = tokio::spawn(lsd.clone().receive_loop());
        let announce = tokio::spawn(lsd.clone().announce_loop());
        lsd.tasks().extend([receive, announce]);
        tracing::info!(group = %message::GROUP, interface = %interface, "local service discovery on");
        Ok(lsd)
    }

    /// Puts a public torrent in the roster until the registration is dropped:
    /// it is announced, and peers announcing it are sent to `peers`.
    pub fn register(self: &Arc<Self>, hash: InfoHash, peers: PeerSink) -> Registration {
        let id = self.roster().join(hash, peers, Instant::now());
        self.joined.notify_one();
        Registration { lsd: self.clone(), hash, id }
    }

    /// Stops both tasks.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks());
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn announce_loop(self: Arc<Self>) {
        let to = SocketAddr::from((message::GROUP, message::PORT));
        loop {
            let (due, wake) = {
                let mut roster = self.roster();
                let due = roster.take_due(Instant::now(), message::HASHES_PER_MESSAGE);
                (due, roster.next_wake())
            };
            if !due.is_empty() {
                let msg = message::build(self.port, &self.cookie, &due);
                match self.socket.send_to(&msg, to).await {
                    Ok(_) => tracing::debug!(torrents = due.len(), bytes = msg.len(), "LSD announce sent"),
                    Err(e) => tracing::debug!(error = %e, "LSD announce not sent"),
                }
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.joined.notified() => {}
                _ = sleep => {}
            }
        }
    }

    async fn receive_loop(self: Arc<Self>) {
        // One byte more than we accept, so an oversize datagram shows as one.
        let mut buf = vec![0u8; message::MAX_ACCEPTED + 1];
        let mut gate = Gate::new(Instant::now());
        loop {
            let (n, from) = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Rare (ICMP, memory); a pause keeps a lasting one from spinning.
                        tracing::debug!(error = %e, "LSD receive failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            self.on_datagram(&buf[..n], from, &mut gate);
        }
    }

    /// One datagram: bounded work, no await, one short lock.
    fn on_datagram(&self, bytes: &[u8], from: SocketAddr, gate: &mut Gate) {
        let ip = crate::compact::normalize(from).ip();
        if matches!(ip, IpAddr::V4(v4) if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()) {
            return;
        }
        if gate.admit(ip, Instant::now()).is_err() {
            return; // over its host's rate or everyone's: dropped unread, and unlogged
        }
        let announce = match message::parse(bytes, &self.cookie) {
            Ok(a) => a,
            Err(message::Reject::OwnCookie) => return,
            Err(why) => {
                tracing::debug!(%from, %why, "LSD datagram ignored");
                return;
            }
        };
        let peer = SocketAddr::new(ip, announce.port);
        let roster = self.roster();
        for hash in &announce.hashes {
            if let Some(sink) = roster.get(hash) {
                // A full channel means the torrent has peers to dial already.
                let _ = sink.try_send(Box::new(vec![peer]));
                tracing::debug!(hash = %hash.short(), %peer, "LSD peer");
            }
        }
    }
}
