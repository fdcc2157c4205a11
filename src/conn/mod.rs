//! The connection core: everything a BitTorrent peer connection does
//! whatever it is for. Handshakes, message framing, the outgoing queue,
//! keep-alives, idle and write timeouts, read pauses for the download limit,
//! and a typed account of how the connection ended.
//!
//! What a connection is *for* is a [`Handler`]: the torrent's peer
//! (`torrent/peer/`: download, upload, PEX) and the magnet's metadata
//! fetcher (`torrent/fetch.rs`) are the two. Under it, a [`Transport`]
//! carries the bytes.

mod crypt;
mod dial;
mod outqueue;
pub mod transport;

use crate::wire::{self, Handshake, Message, HANDSHAKE_LEN};
use bytes::{Buf, BytesMut};
pub use dial::{accept, dial, Attempt, Reach, Way};
use outqueue::Next;
pub use outqueue::{FileRange, OutQueue};
use std::future::Future;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use transport::WriteHalf;
pub use transport::{Proto, Stream, Transport};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// With nothing sent for this long, a keep-alive goes out.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(90);
/// Bytes waiting for a peer that reads nothing for this long: it is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
const TICK: Duration = Duration::from_secs(1);
/// A connection's read buffer: a fast peer's reads fill a good part of it.
const READ_BUFFER: usize = 256 * 1024;
/// Under this much room left, the unread bytes move to the buffer's start.
const READ_ROOM_LOW: usize = 64 * 1024;

/// Makes room for the next read once little is left: the unread part (a
/// message begun) moves to the start of the same buffer. Asking for the
/// whole buffer's size instead made `BytesMut` double it whenever any byte
/// was unread: every connection came to hold 512 KiB, 20 MiB of a 40-peer
/// download. Only a message longer than the rest of the buffer grows it.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM_LOW {
        buf.reserve(READ_BUFFER - READ_ROOM_LOW);
    }
}

/// How a connection ended, and so whether the address is worth another try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEnd {
    /// We stopped it (pause, shutdown, the metadata is whole).
    Cancelled,
    /// The peer closed it.
    Closed,
    /// Both sides have everything: nothing to say, ever.
    BothSeeds,
    /// The peer id was our own.
    Ourselves,
    Banned,
    AlreadyConnected,
    /// The address already has `limits.max_peers_per_ip` connections here.
    IpFull,
    /// The peer answered for another info hash.
    WrongTorrent,
    /// The peer lacks what we need it for (extensions, metadata).
    Unsuitable(String),
    Timeout,
    Io(String),
    /// The peer broke the protocol.
    Protocol(String),
    /// The encryption handshake failed, or our `[network] encryption`
    /// policy and the peer's do not meet.
    Encryption(String),
}

impl ConnEnd {
    /// Whether dialling the address again later makes sense.
    pub fn worth_redialling(&self) -> bool {
        !matches!(
            self,
            ConnEnd::BothSeeds
                | ConnEnd::Ourselves
                | ConnEnd::Banned
                | ConnEnd::WrongTorrent
                | ConnEnd::AlreadyConnected
        )
    }
}

impl std::fmt::Display for ConnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnEnd::Cancelled => f.write_str("stopped by us"),
            ConnEnd::Closed => f.write_str("closed by the peer"),
            ConnEnd::BothSeeds => f.write_str("both sides are seeds"),
            ConnEnd::Ourselves => f.write_str("connected to ourselves"),
            ConnEnd::Banned => f.write_str("banned"),
            ConnEnd::AlreadyConnected => f.write_str("already connected"),
            ConnEnd::IpFull => f.write_str("too many connections from this address"),
            ConnEnd::WrongTorrent => f.write_str("peer answered for another torrent"),
            ConnEnd::Unsuitable(why) => write!(f, "unsuitable peer: {why}"),
            ConnEnd::Timeout => f.write_str("timed out"),
            ConnEnd::Io(e) => write!(f, "io: {e}"),
            ConnEnd::Protocol(e) => write!(f, "protocol: {e}"),
            ConnEnd::Encryption(e) => write!(f, "encryption: {e}"),
        }
    }
}

impl From<std::io::Error> for ConnEnd {
    fn from(e: std::io::Error) -> ConnEnd {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ConnEnd::Closed,
            std::io::ErrorKind::TimedOut => ConnEnd::Timeout,
            _ => ConnEnd::Io(e.to_string()),
        }
    }
}

impl From<crate::mse::MseError> for ConnEnd {
    fn from(e: crate::mse::MseError) -> ConnEnd {
        ConnEnd::Encryption(e.to_string())
    }
}

impl From<wire::WireError> for ConnEnd {
    fn from(e: wire::WireError) -> ConnEnd {
        ConnEnd::Protocol(e.to_string())
    }
}

pub async fn read_handshake<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Handshake, ConnEnd> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    stream.read_exact(&mut buf).await?;
    Ok(Handshake::decode(&buf)?)
}

/// Answers an incoming connection whose handshake was read already.
pub async fn answer(t: &mut Transport, ours: &Handshake) -> Result<(), ConnEnd> {
    let send = async {
        t.write_all(&ours.encode()).await?;
        // An encrypted transport buffers what it accepted.
        t.flush().await
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, send).await.map_err(|_| ConnEnd::Timeout)??;
    Ok(())
}

/// What a connection is for. The core calls it from one task, one event at
/// a time, so it needs no locks of its own.
pub trait Handler: Send {
    /// What [`Handler::wake`] resolves to.
    type Wake: Send;

    /// Messages to send first, right after the handshakes.
    fn start(&mut self, out: &mut OutQueue);

    /// The handler's own events (a command, new pieces, a disk read done).
    /// Dropped and called again after every event: it must be cancel-safe.
    fn wake(&mut self) -> impl Future<Output = Self::Wake> + Send;

    fn on_wake(&mut self, wake: Self::Wake, out: &mut OutQueue) -> Result<(), ConnEnd>;

    fn on_message(&mut self, msg: Message<'_>, out: &mut OutQueue) -> Result<(), ConnEnd>;

    /// After each read's messages: hand work on (complete pieces to the
    /// disk) and say until when reading should pause (the download limit).
    fn after_read(&mut self) -> impl Future<Output = Option<Instant>> + Send;

    /// Once a second.
    fn on_tick(&mut self, now: Instant, out: &mut OutQueue) -> Result<(), ConnEnd>;

    /// After every event: top up requests, start disk reads.
    fn pump(&mut self, out: &mut OutQueue);

    /// How long the peer may stay silent.
    fn idle_timeout(&self) -> Duration;

    /// The longest bitfield the peer may send (the torrent's, in bytes).
    fn bitfield_len(&self) -> usize;
}

enum Event<W> {
    Read(std::io::Result<usize>),
    /// Bytes taken from the queue (`None`: a flush only).
    Wrote(std::io::Result<Option<usize>>),
    ReadResume,
    Wake(W),
    Tick,
    Cancelled,
}

/// Runs an established connection until it ends.
pub async fn run<H: Handler>(transport: Transport, handler: &mut H, cancel: &CancellationToken) -> ConnEnd {
    let (mut rd, mut wr) = transport.into_split();
    let mut conn = Conn {
        rbuf: BytesMut::with_capacity(READ_BUFFER),
        out: OutQueue::new(wr.takes_files()),
        read_resume_at: None,
        last_received: Instant::now(),
        last_sent: Instant::now(),
    };
    handler.start(&mut conn.out);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = {
            let next = conn.out.next();
            let writing = next.is_some() || wr.has_pending();
            let paused = conn.read_resume_at;
            tokio::select! {
                r = rd.read_buf(&mut conn.rbuf), if paused.is_none() => Event::Read(r),
                _ = sleep_until(paused), if paused.is_some() => Event::ReadResume,
                w = write_out(&mut wr, next), if writing => Event::Wrote(w),
                w = handler.wake() => Event::Wake(w),
                _ = tick.tick() => Event::Tick,
                _ = cancel.cancelled() => Event::Cancelled,
            }
        };
        let step = match event {
            Event::Read(r) => match r {
                Ok(0) => Err(ConnEnd::Closed),
                Ok(_) => {
                    conn.last_received = Instant::now();
                    conn.dispatch(handler).await
                }
                Err(e) => Err(e.into()),
            },
            Event::Wrote(w) => match w {
                Ok(Some(0)) => Err(ConnEnd::Closed),
                Ok(n) => {
                    conn.out.advance(n.unwrap_or(0));
                    conn.last_sent = Instant::now();
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            Event::ReadResume => {
                conn.read_resume_at = None;
                Ok(())
            }
            Event::Wake(w) => handler.on_wake(w, &mut conn.out),
            Event::Tick => conn.on_tick(handler, wr.has_pending()),
            Event::Cancelled => Err(ConnEnd::Cancelled),
        };
        if let Err(end) = step {
            return end;
        }
        handler.pump(&mut conn.out);
    }
}

/// Writes what is next in the queue, or with nothing, flushes what the
/// transport accepted earlier (an encrypting transport buffers): `None`
/// then. A file range found cut short is its owner's disk error, and ends
/// the connection (its piece message went out in part).
async fn write_out(wr: &mut WriteHalf, next: Option<Next<'_>>) -> std::io::Result<Option<usize>> {
    match next {
        None => wr.flush().await.map(|()| None),
        Some(Next::Bytes { slices, more: false }) => wr.write_vectored(&slices).await.map(Some),
        Some(Next::Bytes { slices, more: true }) => wr.write_more(&slices).await.map(Some),
        Some(Next::File { range, offset, len }) => match wr.send_file(range.file.as_fd(), offset, len).await {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let why = format!("file cut short under a send ({} bytes from offset {offset} expected)", len);
                (range.on_short)(why.clone());
                // Not `UnexpectedEof`: that would read as the peer closing.
                Err(std::io::Error::other(why))
            }
            r => r.map(Some),
        },
    }
}

/// Sleeps until `at`, or forever without one.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

struct Conn {
    rbuf: BytesMut,
    out: OutQueue,
    /// Reading paused until then by the download limit; TCP then slows the
    /// sender.
    read_resume_at: Option<Instant>,
    last_received: Instant,
    last_sent: Instant,
}

impl Conn {
    /// Hands every whole message in the read buffer to the handler. Its
    /// `after_read` runs even when a message ends the connection, so what
    /// came before (a complete piece, bytes to charge) is not lost.
    async fn dispatch<H: Handler>(&mut self, handler: &mut H) -> Result<(), ConnEnd> {
        let mut consumed = 0;
        let bitfield = handler.bitfield_len();
        let result = loop {
            match wire::decode_bounded(&self.rbuf[consumed..], bitfield) {
                Ok(Some((msg, used))) => {
                    consumed += used;
                    if let Err(end) = handler.on_message(msg, &mut self.out) {
                        break Err(end);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        self.rbuf.advance(consumed);
        make_room(&mut self.rbuf);
        self.read_resume_at = handler.after_read().await.filter(|at| *at > Instant::now());
        result
    }

    /// Timeouts and keep-alives, then the handler's own tick.
    /// `pending`: the transport holds bytes it accepted (encrypted, unsent).
    fn on_tick<H: Handler>(&mut self, handler: &mut H, pending: bool) -> Result<(), ConnEnd> {
        let now = Instant::now();
        // A paused reader has not looked; it cannot blame the peer.
        if self.read_resume_at.is_none() && now - self.last_received > handler.idle_timeout() {
            return Err(ConnEnd::Timeout);
        }
        if (pending || !self.out.is_empty()) && now - self.last_sent > WRITE_TIMEOUT {
            return Err(ConnEnd::Timeout);
        }
        if self.out.is_empty() && now - self.last_sent > KEEPALIVE_EVERY {
            self.out.push_small(&Message::KeepAlive);
        }
        handler.on_tick(now, &mut self.out)
    }
}

#[cfg(test)]
mod sendfile_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn the_read_buffer_keeps_its_size_while_messages_straddle_reads() {
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        let message = 16 * 1024 + 13;
        for _ in 0..1000 {
            // A burst of 40 KiB, as a rate-limited peer sends; whole
            // messages handled, the begun one left.
            let burst = (40 * 1024).min(buf.capacity() - buf.len());
            buf.put_bytes(0, burst);
            let whole = buf.len() / message * message;
            buf.advance(whole);
            make_room(&mut buf);
            assert!(buf.capacity() <= READ_BUFFER, "grown to {} bytes", buf.capacity());
            assert!(buf.capacity() - buf.len() >= READ_ROOM_LOW);
        }
    }

    #[test]
    fn a_message_longer_than_the_read_buffer_still_fits() {
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        let message = 3 * READ_BUFFER;
        while buf.len() < message {
            let room = buf.capacity() - buf.len();
            assert!(room > 0);
            buf.put_bytes(0, room.min(message - buf.len()));
            make_room(&mut buf);
        }
        assert_eq!(buf.len(), message);
    }
}
