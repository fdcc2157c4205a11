//! The listener: takes incoming peers over TCP and over uTP, reads each
//! one's handshake and routes the connection by info hash to its torrent
//! or magnet. A connection that does
//! not start with the plaintext header is taken for MSE/PE encryption, whose
//! handshake names the torrent by a hash of its info hash
//! ([`Session::find_req2`]); `[network] encryption` decides what is refused.
//!
//! An accept error (EMFILE, ENFILE, ENOBUFS when the process or the system is
//! out of descriptors or memory) is not retried at once, which would spin:
//! the loop waits, longer while the errors go on, and says so once.
//!
//! Against sockets that connect and say nothing (slowloris): a peer must
//! send its first byte within [`FIRST_BYTE_TIMEOUT`] and its whole handshake
//! (encryption included) within [`HANDSHAKE_TIMEOUT`]; an address keeps at most
//! [`MAX_PENDING_PER_IP`] sockets handshaking, and [`MAX_PENDING_HANDSHAKES`]
//! are pending at most, for TCP and for uTP each (a flood of one kind
//! cannot lock out the other). A uTP connection reaches us only once its
//! peer proved it got our answer to its SYN (`utp/socket.rs`); it counts
//! as one that spoke if that proof was a data packet (bytes to read), and
//! as silent if it was a bare STATE. Where there is no room, a newcomer whose handshake is
//! already there when it is accepted takes the place of the oldest silent
//! socket (or else of the oldest of the address holding the most), and a
//! silent newcomer is turned away. So a flood of silent sockets, or of
//! sockets that send a byte and stall, only ever crowds out its own kind.

use super::entry::Entry;
use super::Session;
use crate::conn::{self, Proto, Stream, HANDSHAKE_TIMEOUT};
use crate::torrent::task::Cmd;
use crate::utp::UtpStream;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

/// Handshakes read at once.
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Sockets from one address handshaking at once (silent or not).
const MAX_PENDING_PER_IP: usize = 32;
/// A peer sends its handshake as soon as it connects.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the peer listener; a failure names the address and the setting.
pub(super) async fn bind(ip: IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        // A host without IPv6 still gets IPv4 (a port in use is in use for both).
        Err(e) if ip.is_unspecified() && ip.is_ipv6() && e.kind() != std::io::ErrorKind::AddrInUse => {
            let v4 = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port);
            TcpListener::bind(v4).await.map_err(|e| anyhow::anyhow!(crate::startup::cannot_listen(v4, &e)))
        }
        Err(e) => Err(anyhow::anyhow!(crate::startup::cannot_listen(addr, &e))),
    }
}

/// Pause after failed accepts: 50 ms doubling to 1 s while they go on.
#[derive(Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    /// The pause after one more failure; the first of a streak is logged.
    pub fn failed(&mut self, what: &str, e: &std::io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(listener = what, error = %e, "cannot accept connections; backing off");
        }
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(50u64 << (self.failures - 1).min(5)).min(Duration::from_secs(1))
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// Handshakes being read, TCP and uTP apart: a flood of one kind only
/// ever crowds out its own kind.
#[derive(Default)]
struct Pending {
    tasks: JoinSet<()>,
    tcp: Queue,
    utp: Queue,
}

/// One transport's handshakes: whose, and whether a byte came yet.
#[derive(Default)]
struct Queue {
    /// In arrival order.
    order: VecDeque<Handshaking>,
}

struct Handshaking {
    ip: IpAddr,
    spoke: Arc<AtomicBool>,
    task: AbortHandle,
}

impl Handshaking {
    fn silent(&self) -> bool {
        !self.spoke.load(Ordering::Relaxed)
    }
}

impl Pending {
    fn queue(&mut self, proto: Proto) -> &mut Queue {
        match proto {
            Proto::Tcp => &mut self.tcp,
            Proto::Utp => &mut self.utp,
        }
    }

    /// A TCP socket from `ip`, with its first bytes there (`spoke`) or not.
    fn admit_tcp(&mut self, ip: IpAddr, spoke: bool) -> bool {
        self.tcp.admit(ip, spoke)
    }

    /// A uTP connection: the socket hands it over once its peer showed
    /// that it got our answer to its SYN, after taking in the packet that
    /// showed it; if that was data, the peer spoke (a bare STATE proves
    /// the address, not that a handshake is coming). Returns whether it
    /// spoke, if it was admitted.
    fn admit_utp(&mut self, stream: &UtpStream) -> Option<bool> {
        let spoke = stream.has_bytes();
        self.utp.admit(stream.peer_addr().ip(), spoke).then_some(spoke)
    }

    fn spawn(&mut self, session: Arc<Session>, stream: Stream, addr: SocketAddr, spoke: bool) {
        let proto = stream.proto();
        let spoke = Arc::new(AtomicBool::new(spoke));
        let task = self.tasks.spawn(route(session, stream, addr, spoke.clone()));
        self.queue(proto).order.push_back(Handshaking { ip: addr.ip(), spoke, task });
    }
}

impl Queue {
    /// Makes room for a socket from `ip` that has (`spoke`) or has not sent
    /// bytes yet; false when it is turned away. Where there is no room, a
    /// silent newcomer is turned away, and one that spoke takes the place of
    /// the oldest silent socket (or of the busiest address's oldest).
    fn admit(&mut self, ip: IpAddr, spoke: bool) -> bool {
        self.order.retain(|h| !h.task.is_finished());
        if self.order.iter().filter(|h| h.ip == ip).count() >= MAX_PENDING_PER_IP
            && !(spoke && (self.evict(|h| h.ip == ip && h.silent()) || self.evict(|h| h.ip == ip)))
        {
            return false;
        }
        if self.order.len() < MAX_PENDING_HANDSHAKES {
            return true;
        }
        let busiest = self.busiest();
        spoke && (self.evict(Handshaking::silent) || self.evict(|h| Some(h.ip) == busiest))
    }

    /// The address with the most sockets handshaking.
    fn busiest(&self) -> Option<IpAddr> {
        let mut counts: std::collections::HashMap<IpAddr, usize> = std::collections::HashMap::new();
        for h in &self.order {
            *counts.entry(h.ip).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(ip, _)| ip)
    }

    /// Drops the oldest pending socket that `which` picks.
    fn evict(&mut self, which: impl Fn(&Handshaking) -> bool) -> bool {
        match self.order.iter().position(which) {
            Some(i) => {
                self.order.remove(i).unwrap().task.abort();
                true
            }
            None => false,
        }
    }
}

/// Whether bytes are waiting on the socket, without reading or waiting.
fn has_bytes(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a valid socket and a one-byte buffer; MSG_PEEK leaves the data.
    let n = unsafe {
        libc::recv(stream.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    n > 0
}

/// Accepts TCP connections from `listener` and uTP ones from `utp`; both
/// share the limits on handshakes pending.
pub(super) async fn accept_loop(
    session: Arc<Session>,
    listener: TcpListener,
    mut utp: Option<mpsc::Receiver<UtpStream>>,
) {
    let mut pending = Pending::default();
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            _ = session.cancel.cancelled() => break,
            Some(_) = pending.tasks.join_next(), if !pending.tasks.is_empty() => {}
            Some(stream) = async { utp.as_mut()?.recv().await }, if utp.is_some() => {
                if let Some(spoke) = pending.admit_utp(&stream) {
                    let addr = stream.peer_addr();
                    pending.spawn(session.clone(), Stream::Utp(stream), addr, spoke);
                }
            }
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    backoff.succeeded();
                    let spoke = has_bytes(&stream);
                    if pending.admit_tcp(addr.ip(), spoke) {
                        pending.spawn(session.clone(), Stream::Tcp(stream), addr, spoke);
                    }
                }
                Err(e) => {
                    let pause = backoff.failed("peers", &e);
                    tokio::select! {
                        _ = session.cancel.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            },
        }
    }
    pending.tasks.shutdown().await;
}

/// Reads the handshake and hands the connection to whoever wants it.
async fn route(session: Arc<Session>, stream: Stream, addr: SocketAddr, spoke: Arc<AtomicBool>) {
    // The first byte, soon, or the connection is dropped.
    let first_byte = async {
        match &stream {
            Stream::Tcp(s) => matches!(s.peek(&mut [0u8; 1]).await, Ok(1)),
            Stream::Utp(s) => {
                s.readable().await;
                s.has_bytes()
            }
        }
    };
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, first_byte).await {
        Ok(true) => spoke.store(true, Ordering::Relaxed),
        _ => return,
    }
    let policy = session.env.config().network.encryption;
    let lookup = |h: &[u8; 20]| session.find_req2(h);
    let (stream, hs) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn::accept(stream, policy, &lookup)).await {
        Ok(Ok(x)) => x,
        Ok(Err(end)) => {
            tracing::debug!(peer = %addr, reason = %end, "incoming connection refused");
            return;
        }
        Err(_) => return,
    };
    let registry = session.registry();
    match registry.get(&hs.info_hash) {
        Some(Entry::Torrent(t)) => {
            stream.open_window();
            let _ = t.cmd.try_send(Cmd::Incoming(Box::new((stream, addr, hs))));
        }
        Some(Entry::Magnet(m)) => {
            if let Some(fetching) = &m.fetch {
                stream.open_window();
                let _ = fetching.incoming.try_send((stream, addr, hs));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn floods_from_one_address_make_room_for_others() {
        let mut p = Pending::default();
        let (attacker, peer): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let add = |p: &mut Pending, ip, spoke: bool| add(p, Proto::Tcp, ip, spoke);
        let count = |p: &Pending, ip: IpAddr| p.tcp.order.iter().filter(|h| h.ip == ip).count();
        // One address, silent or sending a byte each: never more than its share.
        for i in 0..3 * MAX_PENDING_PER_IP {
            add(&mut p, attacker, i % 2 == 0);
        }
        assert_eq!(count(&p, attacker), MAX_PENDING_PER_IP);
        // At its cap, silent newcomers from that address were turned away and
        // the ones whose bytes were there took the silent ones' places.
        assert!(p.tcp.order.iter().all(|h| !h.silent()));
        assert!(!add(&mut p, attacker, false));
        assert!(add(&mut p, attacker, true));
        assert_eq!(count(&p, attacker), MAX_PENDING_PER_IP);
        // Many addresses fill the table with sockets that spoke; a newcomer
        // that spoke still gets in, at the cost of the address holding the most.
        for i in 0..MAX_PENDING_HANDSHAKES {
            add(&mut p, IpAddr::from([10, 1, (i / 200) as u8, (i % 200) as u8]), true);
        }
        assert_eq!(p.tcp.order.len(), MAX_PENDING_HANDSHAKES);
        assert!(p.tcp.order.iter().all(|h| !h.silent()), "silent sockets made room first");
        assert!(!add(&mut p, peer, false), "a silent newcomer waits for room");
        assert!(add(&mut p, peer, true));
        assert_eq!(count(&p, peer), 1);
        assert_eq!(p.tcp.order.len(), MAX_PENDING_HANDSHAKES);
        p.tasks.shutdown().await;
    }

    /// Admits a stand-in socket as the accept loop does; whether it got in.
    fn add(p: &mut Pending, proto: Proto, ip: IpAddr, spoke: bool) -> bool {
        let admitted = match proto {
            Proto::Tcp => p.admit_tcp(ip, spoke),
            Proto::Utp => p.utp.admit(ip, spoke),
        };
        if admitted {
            let task = p.tasks.spawn(std::future::pending());
            p.queue(proto).order.push_back(Handshaking { ip, spoke: Arc::new(AtomicBool::new(spoke)), task });
        }
        admitted
    }

    /// Issue #23 (9): silent TCP sockets filling the table kept uTP peers,
    /// whose streams have no bytes when handed over, out. Each transport
    /// now has its own budget, and uTP is admitted on the proof the socket
    /// already checked.
    #[tokio::test]
    async fn tcp_and_utp_floods_each_crowd_out_only_their_own_kind() {
        let mut p = Pending::default();
        let many = |i: usize| IpAddr::from([10, 2, (i / 200) as u8, (i % 200) as u8]);
        for i in 0..MAX_PENDING_HANDSHAKES {
            assert!(add(&mut p, Proto::Tcp, many(i), false));
        }
        let peer: IpAddr = [10, 0, 0, 9].into();
        assert!(add(&mut p, Proto::Utp, peer, true), "a uTP peer gets in past silent TCP sockets");
        assert_eq!(p.tcp.order.len(), MAX_PENDING_HANDSHAKES, "and takes no TCP socket's place");
        // A flood of uTP handshakes that stall leaves TCP's budget alone.
        for i in 0..2 * MAX_PENDING_HANDSHAKES {
            add(&mut p, Proto::Utp, IpAddr::from([10, 3, (i / 200) as u8, (i % 200) as u8]), false);
        }
        assert_eq!(p.tcp.order.len(), MAX_PENDING_HANDSHAKES);
        assert!(add(&mut p, Proto::Tcp, peer, true), "a TCP peer that spoke still gets in");
        assert!(p.tcp.order.iter().any(|h| h.ip == peer));
        p.tasks.shutdown().await;
    }

    /// A raw uTP peer on `from`: sends a SYN to `to`, reads our STATE, and
    /// answers it (proving it got it) with `payload`: empty, a bare STATE.
    async fn prove_syn(from: &tokio::net::UdpSocket, to: SocketAddr, id: u16, payload: &[u8]) {
        use crate::utp::packet::{parse, write_header, Header, Kind};
        let header = |kind, conn_id, seq_nr, ack_nr| Header {
            kind,
            conn_id,
            timestamp: 0,
            timestamp_diff: 0,
            wnd_size: 1 << 20,
            seq_nr,
            ack_nr,
        };
        let mut d = Vec::new();
        write_header(&mut d, &header(Kind::Syn, id, 100, 0), None);
        from.send_to(&d, to).await.unwrap();
        let mut buf = [0u8; 1500];
        let n = tokio::time::timeout(Duration::from_secs(5), from.recv(&mut buf)).await.unwrap().unwrap();
        let state = parse(&buf[..n]).unwrap().header;
        assert_eq!(state.kind, Kind::State);
        // A STATE carries the next sequence number, as the first data does.
        let kind = if payload.is_empty() { Kind::State } else { Kind::Data };
        write_header(&mut d, &header(kind, id.wrapping_add(1), 101, state.seq_nr.wrapping_sub(1)), None);
        d.extend_from_slice(payload);
        from.send_to(&d, to).await.unwrap();
    }

    /// Issue #23 review (4): a uTP peer that proves its SYN with a bare
    /// STATE and sends nothing is admitted as silent: with the table full
    /// it is turned away, while one whose first data came is let in.
    #[tokio::test]
    async fn a_utp_peer_that_proved_its_syn_but_sent_nothing_is_silent() {
        let udp = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (utp, mut incoming) = crate::utp::UtpSocket::start(udp, None);
        let to = utp.local_addr().unwrap();
        let mut p = Pending::default();
        for i in 0..MAX_PENDING_HANDSHAKES {
            assert!(add(&mut p, Proto::Utp, IpAddr::from([10, 4, (i / 200) as u8, (i % 200) as u8]), true));
        }
        let mute = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        prove_syn(&mute, to, 300, &[]).await;
        let stream = tokio::time::timeout(Duration::from_secs(5), incoming.recv()).await.unwrap().unwrap();
        assert_eq!(p.admit_utp(&stream), None, "a bare STATE is no handshake");
        assert_eq!(p.utp.order.len(), MAX_PENDING_HANDSHAKES, "and pushed no one out");
        let honest = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        prove_syn(&honest, to, 500, b"\x13BitTorrent protocol").await;
        let stream = tokio::time::timeout(Duration::from_secs(5), incoming.recv()).await.unwrap().unwrap();
        assert_eq!(stream.peer_addr(), honest.local_addr().unwrap());
        assert_eq!(p.admit_utp(&stream), Some(true), "its first data came with the proof");
        drop(stream);
        utp.shut_down().await;
        p.tasks.shutdown().await;
    }

    #[test]
    fn backoff_grows_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<u64> = (0..7).map(|_| b.failed("t", &e).as_millis() as u64).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed("t", &e), Duration::from_millis(50));
    }
}
