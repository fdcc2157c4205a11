//! The byte stream under a peer connection: a TCP socket, plain or with
//! MSE/PE encryption (`conn/crypt.rs`); uTP would be a further variant, and
//! nothing above the connection core needs to know which one it talks over.
//!
//! An enum rather than a boxed trait object: the read and write halves stay
//! separate owned values (no lock between directions, as with
//! `tokio::io::split`), and dispatch is a match the compiler can see through.

use super::crypt::{self, RecvSide, SendSide};
use crate::mse::Established;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub enum Transport {
    Tcp(TcpStream),
    /// After an MSE handshake (whatever method it selected).
    Mse(TcpStream, Box<(RecvSide, SendSide)>),
}

pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Mse(OwnedReadHalf, Box<RecvSide>),
}

pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Mse(OwnedWriteHalf, Box<SendSide>),
}

impl Transport {
    /// The socket of a finished MSE handshake.
    pub fn encrypted(s: TcpStream, est: Established) -> Transport {
        Transport::Mse(s, Box::new(crypt::sides(est)))
    }

    /// How it was made, for the peer book.
    pub fn attempt(&self) -> super::Attempt {
        match self {
            Transport::Tcp(_) => super::Attempt::Plaintext,
            Transport::Mse(..) => super::Attempt::Encrypted,
        }
    }

    /// For the logs: "tcp", "mse/rc4" or "mse/plaintext".
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Tcp(_) => "tcp",
            Transport::Mse(_, sides) if sides.0.is_encrypted() => "mse/rc4",
            Transport::Mse(..) => "mse/plaintext",
        }
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        // Requests and small messages should not wait for Nagle.
        match self {
            Transport::Tcp(s) => {
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Transport::Mse(s, sides) => {
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                let (recv, send) = *sides;
                (ReadHalf::Mse(r, Box::new(recv)), WriteHalf::Mse(w, Box::new(send)))
            }
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Mse(s, sides) => sides.0.poll_read(s, cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Mse(s, sides) => sides.1.poll_write_vectored(s, cx, &[IoSlice::new(buf)]),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Mse(s, sides) => sides.1.poll_flush(s, cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Mse(s, sides) => sides.1.poll_shutdown(s, cx),
        }
    }
}

impl WriteHalf {
    /// Whether bytes it accepted wait for a flush to go out.
    pub fn has_pending(&self) -> bool {
        match self {
            WriteHalf::Tcp(_) => false,
            WriteHalf::Mse(_, side) => side.has_pending(),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Mse(r, side) => side.poll_read(r, cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Mse(w, side) => side.poll_write_vectored(w, cx, &[IoSlice::new(buf)]),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Mse(w, side) => side.poll_write_vectored(w, cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(w) => w.is_write_vectored(),
            WriteHalf::Mse(..) => true,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Mse(w, side) => side.poll_flush(w, cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Mse(w, side) => side.poll_shutdown(w, cx),
        }
    }
}
