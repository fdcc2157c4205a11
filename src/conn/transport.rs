//! The byte stream under a peer connection: TCP or uTP, plain or with
//! MSE/PE encryption (`conn/crypt.rs`) on top of either. Nothing above the
//! connection core needs to know which one it talks over.
//!
//! Enums rather than boxed trait objects: the read and write halves stay
//! separate owned values (no lock between directions, as with
//! `tokio::io::split`), and dispatch is a match the compiler can see through.

use super::crypt::{self, RecvSide, SendSide};
use crate::mse::Established;
use crate::utp::UtpStream;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The carrier: a TCP socket or a uTP connection.
pub enum Stream {
    Tcp(TcpStream),
    Utp(UtpStream),
}

/// Over which protocol a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Utp,
}

pub struct Transport {
    stream: Stream,
    /// After an MSE handshake (whatever method it selected).
    cipher: Option<Box<(RecvSide, SendSide)>>,
}

enum StreamRead {
    Tcp(OwnedReadHalf),
    Utp(UtpStream),
}

enum StreamWrite {
    Tcp(OwnedWriteHalf),
    Utp(UtpStream),
}

pub struct ReadHalf {
    inner: StreamRead,
    cipher: Option<Box<RecvSide>>,
}

pub struct WriteHalf {
    inner: StreamWrite,
    cipher: Option<Box<SendSide>>,
}

impl Stream {
    pub fn proto(&self) -> Proto {
        match self {
            Stream::Tcp(_) => Proto::Tcp,
            Stream::Utp(_) => Proto::Utp,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr(),
            Stream::Utp(s) => Ok(s.peer_addr()),
        }
    }
}

impl Transport {
    pub fn plain(stream: Stream) -> Transport {
        Transport { stream, cipher: None }
    }

    /// The stream of a finished MSE handshake.
    pub fn encrypted(stream: Stream, est: Established) -> Transport {
        Transport { stream, cipher: Some(Box::new(crypt::sides(est))) }
    }

    /// How it was made, for the peer book.
    pub fn way(&self) -> super::Way {
        let crypto = match self.cipher {
            None => super::Attempt::Plaintext,
            Some(_) => super::Attempt::Encrypted,
        };
        super::Way { proto: self.stream.proto(), crypto }
    }

    /// For the logs: "tcp", "mse/rc4" or "mse/plaintext", with "utp/" in
    /// front over uTP.
    pub fn kind(&self) -> &'static str {
        let rc4 = self.cipher.as_ref().map(|sides| sides.0.is_encrypted());
        match (self.stream.proto(), rc4) {
            (Proto::Tcp, None) => "tcp",
            (Proto::Tcp, Some(true)) => "mse/rc4",
            (Proto::Tcp, Some(false)) => "mse/plaintext",
            (Proto::Utp, None) => "utp",
            (Proto::Utp, Some(true)) => "utp/mse/rc4",
            (Proto::Utp, Some(false)) => "utp/mse/plaintext",
        }
    }

    /// The handshake matched a torrent: a uTP connection may now fill its
    /// whole receive buffer (TCP's is the kernel's business).
    pub fn open_window(&self) {
        if let Stream::Utp(s) = &self.stream {
            s.open_window();
        }
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        let (r, w) = match self.stream {
            Stream::Tcp(s) => {
                // Requests and small messages should not wait for Nagle.
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (StreamRead::Tcp(r), StreamWrite::Tcp(w))
            }
            Stream::Utp(s) => {
                let (r, w) = s.split();
                (StreamRead::Utp(r), StreamWrite::Utp(w))
            }
        };
        let (recv, send) = match self.cipher {
            Some(sides) => {
                let (recv, send) = *sides;
                (Some(Box::new(recv)), Some(Box::new(send)))
            }
            None => (None, None),
        };
        (ReadHalf { inner: r, cipher: recv }, WriteHalf { inner: w, cipher: send })
    }
}

/// Delegates `AsyncRead` and `AsyncWrite` to whichever variant it holds.
macro_rules! delegate_io {
    ($ty:ident { $($variant:ident),+ }) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
    (write $ty:ident { $($variant:ident),+ }) => {
        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }
            fn is_write_vectored(&self) -> bool {
                match self {
                    $($ty::$variant(s) => s.is_write_vectored(),)+
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_io!(Stream { Tcp, Utp });
delegate_io!(write Stream { Tcp, Utp });
delegate_io!(StreamRead { Tcp, Utp });
delegate_io!(write StreamWrite { Tcp, Utp });

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let t = self.get_mut();
        match &mut t.cipher {
            Some(sides) => sides.0.poll_read(&mut t.stream, cx, buf),
            None => Pin::new(&mut t.stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let t = self.get_mut();
        match &mut t.cipher {
            Some(sides) => sides.1.poll_write_vectored(&mut t.stream, cx, &[IoSlice::new(buf)]),
            None => Pin::new(&mut t.stream).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let t = self.get_mut();
        match &mut t.cipher {
            Some(sides) => sides.1.poll_flush(&mut t.stream, cx),
            None => Pin::new(&mut t.stream).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let t = self.get_mut();
        match &mut t.cipher {
            Some(sides) => sides.1.poll_shutdown(&mut t.stream, cx),
            None => Pin::new(&mut t.stream).poll_shutdown(cx),
        }
    }
}

impl WriteHalf {
    /// Whether bytes it accepted wait for a flush to go out.
    pub fn has_pending(&self) -> bool {
        self.cipher.as_ref().is_some_and(|side| side.has_pending())
    }

    /// The plain TCP socket under it: nothing (encryption, uTP) needs the
    /// bytes, so file ranges may go with `sendfile(2)`.
    fn plain_tcp(&self) -> Option<&TcpStream> {
        match (&self.inner, &self.cipher) {
            (StreamWrite::Tcp(w), None) => Some(w.as_ref()),
            _ => None,
        }
    }

    pub fn takes_files(&self) -> bool {
        self.plain_tcp().is_some()
    }

    /// Writes `bufs` telling the kernel more follows at once (`MSG_MORE`:
    /// a piece's header leaves in one segment with its payload), where the
    /// socket is plain TCP; a plain vectored write elsewhere.
    pub async fn write_more(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
        let Some(sock) = self.plain_tcp() else {
            return tokio::io::AsyncWriteExt::write_vectored(self, bufs).await;
        };
        sock.async_io(Interest::WRITABLE, || {
            Ok(sendmsg(sock, bufs, &mut SendAncillaryBuffer::default(), SendFlags::MORE | SendFlags::NOSIGNAL)?)
        })
        .await
    }

    /// Sends up to `len` bytes of `file` from `offset` with `sendfile(2)`,
    /// from the page cache to the socket without a copy through user
    /// space; waits for the socket to take some (a partial send is
    /// returned as such). The pages are read in already (the disk pool
    /// populated them), so this does not block the worker on the disk. A
    /// file that ends before the range is an error of kind `UnexpectedEof`.
    pub async fn send_file(&mut self, file: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<usize> {
        let sock = self.plain_tcp().ok_or_else(|| io::Error::other("sendfile over an encrypted or uTP transport"))?;
        let sent = sock
            .async_io(Interest::WRITABLE, || {
                let mut at = offset;
                Ok(rustix::fs::sendfile(sock, file, Some(&mut at), len)?)
            })
            .await?;
        if sent == 0 && len > 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended before the range to send"));
        }
        Ok(sent)
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let h = self.get_mut();
        match &mut h.cipher {
            Some(side) => side.poll_read(&mut h.inner, cx, buf),
            None => Pin::new(&mut h.inner).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let h = self.get_mut();
        match &mut h.cipher {
            Some(side) => side.poll_write_vectored(&mut h.inner, cx, bufs),
            None => Pin::new(&mut h.inner).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.cipher.is_some() || self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let h = self.get_mut();
        match &mut h.cipher {
            Some(side) => side.poll_flush(&mut h.inner, cx),
            None => Pin::new(&mut h.inner).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let h = self.get_mut();
        match &mut h.cipher {
            Some(side) => side.poll_shutdown(&mut h.inner, cx),
            None => Pin::new(&mut h.inner).poll_shutdown(cx),
        }
    }
}
