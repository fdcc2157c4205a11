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
//! Bounds: [`MAX_CONNECTIONS`] on the socket, and an accept queue that
//! drops SYNs when the session is not taking them; a connection's buffers
//! are bounded in `conn.rs`.

use super::batch::{self, Outbox, Received, SLOTS};
use super::conn::{self, Conn, End, State};
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
    /// Adds a connection if there is room for it.
    fn insert(&mut self, shared: &Arc<Shared>) -> bool {
        let ip = shared.key.0.ip();
        let full = self.by_key.len() >= MAX_CONNECTIONS || self.by_key.contains_key(&shared.key);
        if full || self.per_host.get(&ip).is_some_and(|&n| n >= MAX_PER_HOST) {
            return false;
        }
        *self.per_host.entry(ip).or_default() += 1;
        self.by_key.insert(shared.key, shared.clone());
        true
    }

    fn remove(&mut self, key: &Key) {
        if self.by_key.remove(key).is_some() {
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
    /// Connections made so far, both directions.
    opened: std::sync::atomic::AtomicU64,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

struct Shared {
    key: Key,
    inner: Mutex<Inner>,
    kick: Notify,
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
        self.conns.lock().unwrap().by_key.len()
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
            let mut conns = self.conns.lock().unwrap();
            let recv_id = loop {
                let id: u16 = rand::random();
                if !conns.by_key.contains_key(&(addr, id)) {
                    break id;
                }
            };
            let shared = Shared::new((addr, recv_id), Conn::connect(recv_id, Self::mss(&addr)));
            if !conns.insert(&shared) {
                return Err(io::Error::other("too many uTP connections"));
            }
            shared
        };
        self.tasks.spawn(self.clone().drive(shared.clone()));
        // Dropped before it connects, the stream closes the attempt.
        let stream = UtpStream::new(shared);
        std::future::poll_fn(|cx| stream.poll_connected(cx)).await?;
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
            let mut inner = s.inner.lock().unwrap();
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
                let mut inner = s.inner.lock().unwrap();
                inner.conn.on_packet(&p, self.now());
                inner.wake();
                drop(inner);
                if !touched.iter().any(|t| Arc::ptr_eq(t, &s)) {
                    touched.push(s);
                }
            }
            None if h.kind == Kind::Syn => self.accept(&h, from),
            None if h.kind != Kind::Reset => {
                conn::reset_for(&h, self.now(), scratch);
                let _ = self.udp.try_send_to(scratch, from);
            }
            None => {}
        }
    }

    /// The connection a packet is for. A SYN sent again finds the one it
    /// made under id + 1; a RESET carries the id of the packet it answers,
    /// which was the sender's send id, one off our receive id either way.
    fn find(&self, from: SocketAddr, h: &packet::Header) -> Option<Arc<Shared>> {
        let conns = &self.conns.lock().unwrap().by_key;
        match h.kind {
            Kind::Syn => conns.get(&(from, h.conn_id.wrapping_add(1))).cloned(),
            Kind::Reset => [h.conn_id, h.conn_id.wrapping_add(1), h.conn_id.wrapping_sub(1)]
                .iter()
                .find_map(|id| conns.get(&(from, *id)).cloned()),
            _ => conns.get(&(from, h.conn_id)).cloned(),
        }
    }

    fn accept(self: &Arc<Self>, syn: &packet::Header, from: SocketAddr) {
        let Ok(permit) = self.accepted.try_reserve() else {
            return; // the session is not keeping up: the peer will try again
        };
        let shared = {
            let conn = Conn::accept(syn, rand::random(), Self::mss(&from));
            let shared = Shared::new((from, conn.recv_id()), conn);
            if !self.conns.lock().unwrap().insert(&shared) {
                return;
            }
            shared
        };
        shared.kick.notify_one();
        self.tasks.spawn(self.clone().drive(shared.clone()));
        self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        permit.send(UtpStream::new(shared));
    }

    /// A connection's driver: sends what it owes, sleeps until its timer or
    /// a kick, and leaves the map when the connection is closed.
    async fn drive(self: Arc<Self>, shared: Arc<Shared>) {
        let addr = shared.key.0;
        let mut scratch = Vec::with_capacity(1500);
        let mut outbox = Outbox::default();
        loop {
            let (deadline, closed) = {
                let mut inner = shared.inner.lock().unwrap();
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
        self.conns.lock().unwrap().remove(&shared.key);
        // Shut down under it: whoever still reads or writes is told so.
        let mut inner = shared.inner.lock().unwrap();
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
        shared.inner.lock().unwrap().handles += 1;
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

    /// Whether received bytes wait to be read.
    pub fn has_bytes(&self) -> bool {
        self.shared.inner.lock().unwrap().conn.has_readable()
    }

    /// Waits until bytes arrive or the connection ends, reading nothing.
    pub async fn readable(&self) {
        std::future::poll_fn(|cx| {
            let mut inner = self.shared.inner.lock().unwrap();
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
        let mut inner = self.shared.inner.lock().unwrap();
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
        let mut inner = self.shared.inner.lock().unwrap();
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
        let mut inner = self.shared.inner.lock().unwrap();
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
        let mut inner = self.shared.inner.lock().unwrap();
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
        self.shared.inner.lock().unwrap().conn.close();
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
            Shared::new((addr, 7), Conn::connect(7, MSS_V4))
        };
        let flood: Vec<_> = (0..MAX_PER_HOST as u16 + 10).map(|p| conn([10, 0, 0, 1], 1000 + p)).collect();
        let taken = flood.iter().filter(|s| table.insert(s)).count();
        assert_eq!(taken, MAX_PER_HOST);
        assert!(table.insert(&conn([10, 0, 0, 2], 1)), "another host still gets in");
        table.remove(&flood[0].key);
        assert!(table.insert(&flood[MAX_PER_HOST]), "a slot freed is a slot");
        for s in &flood {
            table.remove(&s.key);
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
