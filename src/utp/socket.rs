//! The uTP runtime: one UDP socket, the connections on it, and the byte
//! streams the peer code reads and writes.
//!
//! Tasks: one receive loop per socket, and one driver per connection. The
//! receive loop drains every datagram waiting (up to a batch), hands each to
//! its connection under that connection's lock, and then kicks the drivers
//! it touched, so a batch of data packets costs one ack, not one each.
//! Datagrams that are not uTP (the DHT's bencoded messages, which start with
//! `d`) go to `other`. A driver sends what its connection owes (acks, data
//! a write or an ack let out, resends) and sleeps until its timer, a kick,
//! or the socket's cancellation.
//!
//! Locks: each connection's `Mutex<Inner>` is held only for pure work and a
//! non-blocking send, never across `.await`; the connection map's lock is
//! never held while a connection's is taken.
//!
//! Admission: a SYN keeps nothing (no table entry, no task); it is
//! answered with a STATE whose sequence number is a SYN cookie
//! (`cookie.rs`). The connection is built, and goes to the session, when
//! a packet under the SYN's id + 1 acknowledges that cookie, which a
//! spoofed source never sees. So a SYN flood, however fast, cannot push
//! an honest peer out, whatever its round trip.
//!
//! Bounds: [`MAX_CONNECTIONS`] on the socket and `MAX_PER_HOST` per host,
//! and an accept queue that closes proven connections when the session is
//! not taking them; a connection's buffers are bounded in `conn.rs`, and
//! what all of them (and each host) hold out of order by `budget.rs`.

use super::batch::{self, Outbox, Received, SLOTS};
use super::budget::{Budget, REORDER_BUDGET};
use super::conn::{self, Conn, End, State};
use super::cookie::Cookies;
use super::packet::{self, Kind};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
// The runtime's clock, so that tests with paused time see timers fire.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections on one socket at most, both directions.
pub const MAX_CONNECTIONS: usize = 2048;
/// Incoming connections waiting for the session to take them.
const ACCEPT_QUEUE: usize = 64;
/// Datagrams read before the touched connections are kicked.
const BATCH: usize = 64;
/// Payload per packet: under a 1500-byte path with IPv4, 1280 with IPv6.
const MSS_V4: usize = 1400;
const MSS_V6: usize = 1200;
/// Datagrams for the DHT waiting at most, and the bytes kept of each.
pub const OTHER_QUEUE: usize = 256;
const OTHER_MAX_LEN: usize = 2048;

/// Connections from one host (any port) at most, so a SYN flood from one
/// address cannot take every slot.
const MAX_PER_HOST: usize = 64;

type Key = (SocketAddr, u16);

/// The connections on a socket, and how many each host holds.
#[derive(Default)]
struct Table {
    by_key: HashMap<Key, Arc<Shared>>,
    per_host: HashMap<std::net::IpAddr, usize>,
}

impl Table {
    /// Whether `key`'s host may have one more connection here.
    fn host_has_room(&self, key: &Key) -> bool {
        !self.by_key.contains_key(key) && self.per_host.get(&key.0.ip()).is_none_or(|&n| n < MAX_PER_HOST)
    }

    /// Adds a connection if there is room for it.
    fn insert(&mut self, shared: &Arc<Shared>) -> bool {
        if self.by_key.len() >= MAX_CONNECTIONS || !self.host_has_room(&shared.key) {
            return false;
        }
        *self.per_host.entry(shared.key.0.ip()).or_default() += 1;
        self.by_key.insert(shared.key, shared.clone());
        true
    }

    /// The connection a packet is for. A SYN sent again finds the one it
    /// made under id + 1. A RESET carries our receive id when it answers
    /// our SYN, and our send id (one off it) when libutp answers a packet
    /// of ours for a connection it forgot; either is looked for here, and
    /// the connection heeds it only if it acknowledges one of our latest
    /// packets (`Conn::on_packet`), which is what stops blind forgers.
    fn find(&self, from: SocketAddr, h: &packet::Header) -> Option<Arc<Shared>> {
        let id = if h.kind == Kind::Syn { h.conn_id.wrapping_add(1) } else { h.conn_id };
        let exact = self.by_key.get(&(from, id));
        if exact.is_some() || h.kind != Kind::Reset {
            return exact.cloned();
        }
        [id.wrapping_add(1), id.wrapping_sub(1)]
            .into_iter()
            .filter_map(|recv_id| self.by_key.get(&(from, recv_id)))
            .find(|s| s.send_id == h.conn_id)
            .cloned()
    }

    /// Removes `shared` (not another connection that took its key since).
    fn remove(&mut self, shared: &Arc<Shared>) {
        let key = &shared.key;
        if self.by_key.get(key).is_some_and(|s| Arc::ptr_eq(s, shared)) {
            self.by_key.remove(key);
            let ip = key.0.ip();
            if let Some(n) = self.per_host.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_host.remove(&ip);
                }
            }
        }
    }
}

pub struct UtpSocket {
    udp: Arc<UdpSocket>,
    epoch: Instant,
    conns: Mutex<Table>,
    accepted: mpsc::Sender<UtpStream>,
    /// What all connections hold out of order, together.
    budget: Arc<Budget>,
    /// The keys our answers to SYNs are made with.
    cookies: Cookies,
    /// Connections made so far, both directions.
    opened: std::sync::atomic::AtomicU64,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl UtpSocket {
    /// `conns`, locked.
    fn conns(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::locks::locked(&self.conns)
    }
}

struct Shared {
    key: Key,
    /// The id our packets carry (fixed at creation): libutp's RESETs echo it.
    send_id: u16,
    inner: Mutex<Inner>,
    kick: Notify,
}

impl Shared {
    /// `inner`, locked.
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::locks::locked(&self.inner)
    }
}

struct Inner {
    conn: Conn,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// Stream handles alive; the last one dropped closes the connection.
    handles: u8,
    /// The time the driver sleeps until (`u64::MAX`: until kicked).
    armed: u64,
}

impl Inner {
    /// Wakes the application's reader and writer where they can go on.
    fn wake(&mut self) {
        let closed = matches!(self.conn.state(), State::Closed(_));
        if closed || self.conn.has_readable() || self.conn.at_eof() {
            if let Some(w) = self.reader.take() {
                w.wake();
            }
        }
        if closed || self.conn.state() != &State::SynSent && self.conn.writable() {
            if let Some(w) = self.writer.take() {
                w.wake();
            }
        }
    }
}

impl UtpSocket {
    /// Runs uTP on `udp` until [`UtpSocket::shut_down`]. Datagrams that
    /// are not uTP go to `other`; incoming connections come out of the
    /// returned receiver.
    pub fn start(
        udp: Arc<UdpSocket>,
        other: Option<mpsc::Sender<(Vec<u8>, SocketAddr)>>,
    ) -> (Arc<UtpSocket>, mpsc::Receiver<UtpStream>) {
        let (accepted, incoming) = mpsc::channel(ACCEPT_QUEUE);
        batch::probe_segmentation(&udp);
        let socket = Arc::new(UtpSocket {
            udp,
            epoch: Instant::now(),
            conns: Mutex::new(Table::default()),
            accepted,
            budget: Budget::new(REORDER_BUDGET),
            cookies: Cookies::default(),
            opened: Default::default(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        socket.tasks.spawn(socket.clone().receive_loop(other));
        (socket, incoming)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Connections made since the start, dialled or accepted.
    pub fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn connections(&self) -> usize {
        self.conns().by_key.len()
    }

    /// Stops the receive loop and every connection, and waits for them.
    pub async fn shut_down(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn mss(addr: &SocketAddr) -> usize {
        if addr.ip().to_canonical().is_ipv4() {
            MSS_V4
        } else {
            MSS_V6
        }
    }

    /// Whether this socket can reach `addr` (uTP runs on an IPv4 socket).
    pub fn reaches(&self, addr: &SocketAddr) -> bool {
        let ours = self.udp.local_addr().map(|a| a.is_ipv4()).unwrap_or(false);
        ours == addr.ip().to_canonical().is_ipv4()
    }

    /// Opens a connection to `addr`; the caller bounds the time.
    pub async fn connect(self: &Arc<Self>, addr: SocketAddr) -> io::Result<UtpStream> {
        // An IPv4 peer written as ::ffff:a.b.c.d is dialled as IPv4.
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if !self.reaches(&addr) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "uTP runs over IPv4 only"));
        }
        let shared = {
            let mut conns = self.conns();
            let recv_id = loop {
                let id: u16 = rand::random();
                if !conns.by_key.contains_key(&(addr, id)) {
                    break id;
                }
            };
            let conn =
                Conn::connect(recv_id, rand::random(), Self::mss(&addr)).with_budget(self.budget.clone(), addr.ip());
            let shared = Shared::new((addr, recv_id), conn);
            if !conns.insert(&shared) {
                return Err(io::Error::other("too many uTP connections"));
            }
            shared
        };
        self.tasks.spawn(self.clone().drive(shared.clone()));
        // Dropped before it connects, the stream closes the attempt.
        let stream = UtpStream::new(shared);
        std::future::poll_fn(|cx| stream.poll_connected(cx)).await?;
        // We chose this peer for a torrent of ours.
        stream.open_window();
        self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(stream)
    }

    async fn receive_loop(self: Arc<Self>, other: Option<mpsc::Sender<(Vec<u8>, SocketAddr)>>) {
        let mut received = Received::default();
        let mut touched: Vec<Arc<Shared>> = Vec::new();
        let mut scratch = Vec::with_capacity(1500);
        let mut outbox = Outbox::default();
        loop {
            tokio::select! {
                r = self.udp.readable() => if r.is_err() { break },
                _ = self.cancel.cancelled() => break,
            }
            for _ in 0..BATCH / SLOTS {
                match received.read(&self.udp) {
                    Ok(_) => {
                        for (d, from) in received.datagrams() {
                            self.on_datagram(d, from, other.as_ref(), &mut touched, &mut scratch);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ICMP errors for earlier sends surface here: nothing to do.
                    Err(_) => continue,
                }
            }
            for s in touched.drain(..) {
                self.answer(&s, &mut outbox, &mut scratch);
            }
        }
    }

    /// Sends what a connection owes after the packets just read (acks, and
    /// the data they let out) here rather than in its driver, which saves
    /// a task wake-up per batch: the cost that bounds uTP seeding. The
    /// driver is kicked only if its timer must move earlier or the
    /// connection ended; what the socket cannot take now is dropped, as
    /// the network might, and sent again.
    fn answer(&self, s: &Arc<Shared>, outbox: &mut Outbox, scratch: &mut Vec<u8>) {
        let kick = {
            let mut inner = s.inner();
            inner.conn.transmit(self.now(), scratch, |d| outbox.push(d));
            inner.wake();
            let closed = matches!(inner.conn.state(), State::Closed(_));
            closed || inner.conn.deadline().unwrap_or(u64::MAX) < inner.armed
        };
        outbox.try_send_all(&self.udp, s.key.0);
        if kick {
            s.kick.notify_one();
        }
    }

    fn on_datagram(
        self: &Arc<Self>,
        d: &[u8],
        from: SocketAddr,
        other: Option<&mpsc::Sender<(Vec<u8>, SocketAddr)>>,
        touched: &mut Vec<Arc<Shared>>,
        scratch: &mut Vec<u8>,
    ) {
        if !packet::looks_like_utp(d) {
            if let Some(o) = other {
                // No DHT message is longer; the DHT refuses what is cut.
                let _ = o.try_send((d[..d.len().min(OTHER_MAX_LEN)].to_vec(), from));
            }
            return;
        }
        let Ok(p) = packet::parse(d) else { return };
        let h = p.header;
        let found = self.find(from, &h);
        match found {
            Some(s) => {
                let mut inner = s.inner();
                inner.conn.on_packet(&p, self.now());
                inner.wake();
                drop(inner);
                if !touched.iter().any(|t| Arc::ptr_eq(t, &s)) {
                    touched.push(s);
                }
            }
            None if h.kind == Kind::Syn => {
                let cookie = self.cookies.issue(self.now(), from, h.conn_id, h.seq_nr);
                conn::syn_answer(&h, cookie, self.now(), scratch);
                let _ = self.udp.try_send_to(scratch, from);
            }
            None if h.kind == Kind::Reset => {}
            None => match self.accept(&p, from) {
                Some(s) => touched.push(s),
                None => {
                    conn::reset_for(&h, self.now(), scratch);
                    let _ = self.udp.try_send_to(scratch, from);
                }
            },
        }
    }

    fn find(&self, from: SocketAddr, h: &packet::Header) -> Option<Arc<Shared>> {
        self.conns().find(from, h)
    }

    /// A packet for no connection: if it acknowledges the cookie we
    /// answered a SYN with (its id one above the SYN's, its sequence number
    /// the one after the SYN's), the connection is built, takes it in, and
    /// goes to the session. None if it proves nothing, or there is no room.
    fn accept(self: &Arc<Self>, p: &packet::Packet<'_>, from: SocketAddr) -> Option<Arc<Shared>> {
        let h = &p.header;
        if !matches!(h.kind, Kind::Data | Kind::State) {
            return None;
        }
        let (syn_id, syn_seq, cookie) = (h.conn_id.wrapping_sub(1), h.seq_nr.wrapping_sub(1), h.ack_nr.wrapping_add(1));
        let now = self.now();
        if !self.cookies.check(now, from, syn_id, syn_seq, cookie) {
            return None;
        }
        let syn = packet::Header { kind: Kind::Syn, conn_id: syn_id, seq_nr: syn_seq, ..*h };
        let conn = Conn::accept(&syn, cookie, Self::mss(&from), now).with_budget(self.budget.clone(), from.ip());
        let shared = Shared::new((from, conn.recv_id()), conn);
        if !self.conns().insert(&shared) {
            return None;
        }
        {
            let mut inner = shared.inner();
            inner.conn.on_packet(p, now);
            debug_assert!(!inner.conn.is_half_open(), "the cookie was checked");
        }
        self.tasks.spawn(self.clone().drive(shared.clone()));
        self.hand_over(&shared);
        Some(shared)
    }

    /// The peer proved it got our answer to its SYN: the session gets the
    /// connection now. If the session is not keeping up, the stream is
    /// dropped, which closes the connection.
    fn hand_over(&self, s: &Arc<Shared>) {
        if self.accepted.try_send(UtpStream::new(s.clone())).is_ok() {
            self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A connection's driver: sends what it owes, sleeps until its timer or
    /// a kick, and leaves the map when the connection is closed.
    async fn drive(self: Arc<Self>, shared: Arc<Shared>) {
        let addr = shared.key.0;
        let mut scratch = Vec::with_capacity(1500);
        let mut outbox = Outbox::default();
        loop {
            let (deadline, closed) = {
                let mut inner = shared.inner();
                let now = self.now();
                inner.conn.on_timer(now);
                inner.conn.transmit(now, &mut scratch, |d| outbox.push(d));
                inner.wake();
                inner.armed = inner.conn.deadline().unwrap_or(u64::MAX);
                (inner.conn.deadline(), matches!(inner.conn.state(), State::Closed(_)))
            };
            outbox.send_all(&self.udp, addr).await;
            if closed {
                break;
            }
            let sleep = async {
                match deadline {
                    Some(us) => tokio::time::sleep_until(self.epoch + Duration::from_micros(us)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shared.kick.notified() => {}
                _ = sleep => {}
                _ = self.cancel.cancelled() => break,
            }
        }
        self.conns().remove(&shared);
        // Shut down under it: whoever still reads or writes is told so.
        let mut inner = shared.inner();
        if !matches!(inner.conn.state(), State::Closed(_)) {
            inner.conn.abort();
        }
        inner.wake();
        let t = inner.conn.tally();
        tracing::debug!(peer = %addr, end = ?inner.conn.state(), sent = t.sent, resent = t.resent, losses = t.losses,
            probes = t.probes, timeouts = t.timeouts, "utp connection closed");
    }
}

impl Shared {
    fn new(key: Key, conn: Conn) -> Arc<Shared> {
        Arc::new(Shared {
            key,
            send_id: conn.send_id(),
            inner: Mutex::new(Inner { conn, reader: None, writer: None, handles: 0, armed: 0 }),
            kick: Notify::new(),
        })
    }
}

/// One end of a uTP connection as a byte stream. Split it with
/// [`UtpStream::split`]; the last half dropped closes the connection.
pub struct UtpStream {
    shared: Arc<Shared>,
}

fn ended(end: End) -> io::Error {
    match end {
        End::Reset => io::ErrorKind::ConnectionReset.into(),
        End::TimedOut => io::ErrorKind::TimedOut.into(),
        End::Done => io::ErrorKind::BrokenPipe.into(),
    }
}

impl UtpStream {
    fn new(shared: Arc<Shared>) -> UtpStream {
        shared.inner().handles += 1;
        UtpStream { shared }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.key.0
    }

    /// Two handles on the same connection, one to read and one to write.
    pub fn split(self) -> (UtpStream, UtpStream) {
        let other = UtpStream::new(self.shared.clone());
        (self, other)
    }

    /// Grants the whole receive buffer: the peer's handshake named one of
    /// our torrents. Until then it may send 64 KiB, a stranger's share.
    pub fn open_window(&self) {
        let mut inner = self.shared.inner();
        inner.conn.open_window();
        if inner.conn.ack_due() {
            drop(inner);
            self.shared.kick.notify_one();
        }
    }

    /// Whether received bytes wait to be read.
    pub fn has_bytes(&self) -> bool {
        self.shared.inner().conn.has_readable()
    }

    /// Waits until bytes arrive or the connection ends, reading nothing.
    pub async fn readable(&self) {
        std::future::poll_fn(|cx| {
            let mut inner = self.shared.inner();
            let c = &inner.conn;
            if c.has_readable() || c.at_eof() || matches!(c.state(), State::Closed(_)) {
                return Poll::Ready(());
            }
            inner.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.inner();
        match inner.conn.state() {
            State::SynSent => {
                inner.writer = Some(cx.waker().clone());
                Poll::Pending
            }
            State::Closed(End::TimedOut) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            State::Closed(_) => Poll::Ready(Err(io::ErrorKind::ConnectionRefused.into())),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for UtpStream {
    fn drop(&mut self) {
        let mut inner = self.shared.inner();
        inner.handles -= 1;
        if inner.handles == 0 {
            inner.conn.close();
            drop(inner);
            self.shared.kick.notify_one();
        }
    }
}

impl AsyncRead for UtpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.inner();
        if inner.conn.has_readable() {
            // Only as much of the buffer as will be filled is initialized.
            let want = buf.remaining().min(inner.conn.readable_len());
            let n = inner.conn.read(buf.initialize_unfilled_to(want));
            buf.advance(n);
            if inner.conn.ack_due() {
                self.shared.kick.notify_one();
            }
            return Poll::Ready(Ok(()));
        }
        if inner.conn.at_eof() {
            return Poll::Ready(Ok(()));
        }
        match *inner.conn.state() {
            State::Closed(End::Done) => Poll::Ready(Ok(())),
            State::Closed(end) => Poll::Ready(Err(ended(end))),
            _ => {
                inner.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for UtpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.shared.inner();
        match *inner.conn.state() {
            State::Closed(end) => return Poll::Ready(Err(ended(end))),
            State::Closing { .. } => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            _ => {}
        }
        let mut taken = 0;
        for b in bufs {
            let n = inner.conn.write(b);
            taken += n;
            if n < b.len() {
                break;
            }
        }
        if taken == 0 && bufs.iter().any(|b| !b.is_empty()) {
            inner.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        drop(inner);
        self.shared.kick.notify_one();
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.inner().conn.close();
        self.shared.kick.notify_one();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Arc<UtpSocket>, Arc<UtpSocket>, mpsc::Receiver<UtpStream>) {
        let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (a, _) = UtpSocket::start(a, None);
        let (b, incoming) = UtpSocket::start(b, None);
        (a, b, incoming)
    }

    #[test]
    fn one_host_cannot_take_every_slot() {
        let mut table = Table::default();
        let conn = |ip: [u8; 4], port: u16| {
            let addr = SocketAddr::from((ip, port));
            Shared::new((addr, 7), Conn::connect(7, 1, MSS_V4))
        };
        let flood: Vec<_> = (0..MAX_PER_HOST as u16 + 10).map(|p| conn([10, 0, 0, 1], 1000 + p)).collect();
        let taken = flood.iter().filter(|s| table.insert(s)).count();
        assert_eq!(taken, MAX_PER_HOST);
        assert!(table.insert(&conn([10, 0, 0, 2], 1)), "another host still gets in");
        table.remove(&flood[0]);
        assert!(table.insert(&flood[MAX_PER_HOST]), "a slot freed is a slot");
        for s in &flood {
            table.remove(s);
        }
        assert_eq!(table.per_host.len(), 1, "empty hosts are forgotten");
        // Refused for a full table, a host leaves no trace.
        let mut full = Table::default();
        let mut port = 0;
        while full.by_key.len() < MAX_CONNECTIONS {
            port += 1;
            full.insert(&conn([10, 1, (port / 250) as u8, (port % 250) as u8], port));
        }
        let hosts = full.per_host.len();
        for i in 0..100u8 {
            assert!(!full.insert(&conn([10, 9, 9, i], 1)));
        }
        assert_eq!(full.per_host.len(), hosts);
    }

    fn header(kind: Kind, conn_id: u16) -> packet::Header {
        packet::Header { kind, conn_id, timestamp: 0, timestamp_diff: 0, wnd_size: 0, seq_nr: 5, ack_nr: 0 }
    }

    /// Issue #23 review (1): libutp (Transmission, µTorrent) answers a
    /// packet for a connection it forgot with a RESET carrying the id that
    /// packet carried: our send id. Heeded when its ack is one of our
    /// latest; ignored otherwise, and under any other id.
    #[test]
    fn a_libutp_reset_under_our_send_id_ends_the_connection_if_its_ack_is_recent() {
        let peer = SocketAddr::from(([10, 0, 0, 1], 6881));
        // Dialled: we receive under 700 and send under 701. Accepted (their
        // SYN carried 900): we receive under 901 and send under 900.
        let dialled = Shared::new((peer, 700), Conn::connect(700, 1, MSS_V4));
        let syn = packet::Header { seq_nr: 40, ..header(Kind::Syn, 900) };
        let accepted = Shared::new((peer, 901), Conn::accept(&syn, 5000, MSS_V4, 0));
        for (s, send_id, good_ack) in [(&dialled, 701, 1), (&accepted, 900, 4999)] {
            let mut table = Table::default();
            assert!(table.insert(s));
            let reset = |id: u16, ack_nr: u16| packet::Header { ack_nr, ..header(Kind::Reset, id) };
            let recv_id = s.key.1;
            for off in [2u16, 3, 0xffff - 1] {
                let id = recv_id.wrapping_add(off);
                assert!(table.find(peer, &reset(id, good_ack)).is_none(), "a reset under {id}");
            }
            assert!(table.find(SocketAddr::from(([10, 0, 0, 1], 6882)), &reset(send_id, good_ack)).is_none());
            let heed = |h: packet::Header| {
                let found = table.find(peer, &h).expect("found under our send id");
                assert!(Arc::ptr_eq(&found, s));
                let p = packet::Packet { header: h, sack: None, payload: &[] };
                let mut inner = found.inner();
                inner.conn.on_packet(&p, 10);
                let state = inner.conn.state().clone();
                state
            };
            assert!(!matches!(heed(reset(send_id, good_ack.wrapping_add(1000))), State::Closed(_)), "bad ack");
            assert_eq!(heed(reset(send_id, good_ack)), State::Closed(End::Reset), "good ack");
        }
        // The exact receive id still works (an answer to our SYN), and a
        // SYN sent again finds its connection under the id above.
        let mut table = Table::default();
        assert!(table.insert(&dialled) && table.insert(&accepted));
        assert!(table.find(peer, &header(Kind::Reset, 700)).is_some_and(|f| Arc::ptr_eq(&f, &dialled)));
        assert!(table.find(peer, &header(Kind::Syn, 900)).is_some_and(|f| Arc::ptr_eq(&f, &accepted)));
    }

    /// A SYN read off a socket that never answers: (conn id, seq nr).
    async fn syn_from(silent: &UdpSocket) -> (u16, u16) {
        let mut buf = [0u8; 1500];
        let n = tokio::time::timeout(Duration::from_secs(5), silent.recv(&mut buf)).await.unwrap().unwrap();
        let h = packet::parse(&buf[..n]).unwrap().header;
        assert_eq!(h.kind, Kind::Syn);
        (h.conn_id, h.seq_nr)
    }

    #[tokio::test]
    async fn dialled_connections_start_at_random_sequence_numbers() {
        let (a, _) = UtpSocket::start(Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()), None);
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = silent.local_addr().unwrap();
        let dials: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn({
                    let a = a.clone();
                    async move { a.connect(to).await }
                })
            })
            .collect();
        let mut first = HashMap::new();
        while first.len() < dials.len() {
            let (id, seq) = syn_from(&silent).await;
            first.entry(id).or_insert(seq);
        }
        let seqs: std::collections::HashSet<u16> = first.values().copied().collect();
        // Four draws out of 65536 all equal: one chance in 2^48.
        assert!(seqs.len() > 1, "every SYN numbered {seqs:?}");
        dials.iter().for_each(|d| d.abort());
        a.shut_down().await;
    }

    /// Sends `count` SYNs from `from`, then a stray packet, and waits for
    /// the RESET that answers it: the socket has read them all by then.
    async fn syn_burst(from: &UdpSocket, to: SocketAddr, first_id: u16, count: u16) {
        let mut d = Vec::new();
        for i in 0..count {
            packet::write_header(&mut d, &header(Kind::Syn, first_id.wrapping_add(2 * i)), None);
            from.send_to(&d, to).await.unwrap();
        }
        packet::write_header(&mut d, &header(Kind::Data, first_id.wrapping_sub(7)), None);
        from.send_to(&d, to).await.unwrap();
        let mut buf = [0u8; 1500];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), from.recv(&mut buf)).await.unwrap().unwrap();
            if packet::parse(&buf[..n]).is_ok_and(|p| p.header.kind == Kind::Reset) {
                break;
            }
        }
    }

    /// Issue #23 (9): SYNs from many addresses that never answer (as with
    /// spoofed sources) neither reach the listener nor keep an honest peer
    /// out; it is handed over once its first data shows it got our STATE.
    #[tokio::test]
    async fn silent_syns_from_many_addresses_do_not_lock_out_an_honest_peer() {
        let (a, _) = UtpSocket::start(Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()), None);
        let (b, mut incoming) = UtpSocket::start(Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()), None);
        let to = b.local_addr().unwrap();
        // More SYNs than the socket has connections, none over a host's share.
        for host in 0..40u8 {
            let flood = UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 1, host + 1), 0)).await.unwrap();
            syn_burst(&flood, to, u16::from(host) * 1000, MAX_PER_HOST as u16 - 4).await;
        }
        assert_eq!(b.connections(), 0, "SYNs keep nothing");
        let connect = tokio::time::timeout(Duration::from_secs(10), a.connect(to)).await;
        let mut out = connect.expect("the SYN was answered").expect("connected");
        out.write_all(b"hello").await.unwrap();
        let mut inc = tokio::time::timeout(Duration::from_secs(5), incoming.recv()).await.unwrap().unwrap();
        assert_eq!(inc.peer_addr(), a.local_addr().unwrap(), "the first stream handed over is the honest one");
        let mut got = [0u8; 5];
        inc.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert!(incoming.try_recv().is_err(), "no silent SYN was handed over");
        a.shut_down().await;
        b.shut_down().await;
    }

    /// Issue #23 review (2): a fast flood of spoofed SYNs (100k, from
    /// sources that never answer) arriving while an honest peer 200 ms
    /// away completes its handshake: the peer is still handed over, and
    /// the flood leaves nothing behind (no connection, no task).
    #[tokio::test]
    async fn a_spoofed_syn_flood_keeps_no_state_and_an_honest_peer_gets_in() {
        tokio::time::pause();
        let (b, mut incoming) = UtpSocket::start(Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()), None);
        let to = b.local_addr().unwrap();
        let honest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let syn = packet::Header { seq_nr: 300, ..header(Kind::Syn, 4000) };
        let mut d = Vec::new();
        packet::write_header(&mut d, &syn, None);
        honest.send_to(&d, to).await.unwrap();
        let mut buf = [0u8; 1500];
        let n = tokio::time::timeout(Duration::from_secs(5), honest.recv(&mut buf)).await.unwrap().unwrap();
        let state = packet::parse(&buf[..n]).unwrap().header;
        assert_eq!((state.kind, state.conn_id, state.ack_nr), (Kind::State, 4000, 300));
        // The flood, from 16 addresses standing in for many spoofed ones
        // (more than the half-open connections a socket kept before):
        // each burst read before the next is sent.
        let mut floods = Vec::new();
        for host in 0..16u8 {
            floods.push(UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 2, host + 1), 0)).await.unwrap());
        }
        let probe = UdpSocket::bind("127.0.0.3:0").await.unwrap();
        for burst in 0..1000u32 {
            for i in 0..100u32 {
                let id = (burst * 100 + i) as u16;
                packet::write_header(&mut d, &header(Kind::Syn, id), None);
                floods[i as usize % floods.len()].send_to(&d, to).await.unwrap();
            }
            packet::write_header(&mut d, &header(Kind::Data, 9), None);
            probe.send_to(&d, to).await.unwrap();
            loop {
                let n = tokio::time::timeout(Duration::from_secs(5), probe.recv(&mut buf)).await.unwrap().unwrap();
                if packet::parse(&buf[..n]).is_ok_and(|p| p.header.kind == Kind::Reset) {
                    break;
                }
            }
        }
        assert_eq!(b.connections(), 0, "the flood keeps no state");
        assert_eq!(b.tasks.len(), 1, "nor any task: the receive loop alone");
        tokio::time::advance(Duration::from_millis(200)).await;
        let first = packet::Header {
            seq_nr: 301,
            ack_nr: state.seq_nr.wrapping_sub(1),
            wnd_size: 1 << 20,
            ..header(Kind::Data, 4001)
        };
        packet::write_header(&mut d, &first, None);
        d.extend_from_slice(b"hello");
        honest.send_to(&d, to).await.unwrap();
        let mut inc = tokio::time::timeout(Duration::from_secs(5), incoming.recv()).await.unwrap().unwrap();
        assert_eq!(inc.peer_addr(), honest.local_addr().unwrap());
        let mut got = [0u8; 5];
        inc.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(b.connections(), 1);
        assert!(incoming.try_recv().is_err(), "no spoofed SYN was handed over");
        drop(inc);
        b.shut_down().await;
    }

    #[tokio::test]
    async fn a_stream_carries_bytes_both_ways_and_closes() {
        let (a, b, mut incoming) = pair().await;
        let baddr = b.local_addr().unwrap();
        let mut out = a.connect(baddr).await.unwrap();
        let mut inc = incoming.recv().await.unwrap();
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            out.write_all(&sent).await.unwrap();
            let mut reply = [0u8; 2];
            out.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"ok");
            out
        });
        let mut got = vec![0u8; data.len()];
        inc.read_exact(&mut got).await.unwrap();
        assert!(got == data);
        inc.write_all(b"ok").await.unwrap();
        drop(writer.await.unwrap());
        // The FIN reaches the other side as the end of the stream.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), inc.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());
        drop(inc);
        tokio::time::timeout(Duration::from_secs(5), async {
            while a.connections() + b.connections() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("both sides forget the connection");
        a.shut_down().await;
        b.shut_down().await;
    }

    #[tokio::test]
    async fn other_datagrams_go_to_the_dht_and_strays_get_a_reset() {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (tx, mut rx) = mpsc::channel(4);
        let (s, _incoming) = UtpSocket::start(udp, Some(tx));
        let addr = s.local_addr().unwrap();
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        probe.send_to(b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:xx1:y1:qe", addr).await.unwrap();
        let (d, from) = rx.recv().await.unwrap();
        assert!(d.starts_with(b"d1:a") && from == probe.local_addr().unwrap());
        let mut stray = Vec::new();
        let h = packet::Header {
            kind: Kind::Data,
            conn_id: 9,
            timestamp: 0,
            timestamp_diff: 0,
            wnd_size: 0,
            seq_nr: 5,
            ack_nr: 0,
        };
        packet::write_header(&mut stray, &h, None);
        probe.send_to(&stray, addr).await.unwrap();
        let mut buf = [0u8; 100];
        let n = tokio::time::timeout(Duration::from_secs(2), probe.recv(&mut buf)).await.unwrap().unwrap();
        let reset = packet::parse(&buf[..n]).unwrap().header;
        assert_eq!((reset.kind, reset.conn_id, reset.ack_nr), (Kind::Reset, 9, 5));
        s.shut_down().await;
    }

    #[tokio::test]
    async fn connecting_to_a_silent_port_times_out() {
        let (a, _) = UtpSocket::start(Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()), None);
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tokio::time::pause();
        let r = a.connect(silent.local_addr().unwrap()).await;
        assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
        a.shut_down().await;
    }
}
