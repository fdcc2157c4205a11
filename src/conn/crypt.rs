//! The two directions of an MSE connection after its handshake: payload
//! the handshake already read, then RC4 (or plaintext, if selected) over
//! the socket.
//!
//! Writing encrypts into a bounded buffer of our own and reports the
//! plaintext bytes taken; the ciphertext goes out before more is taken, so
//! the key stream only ever advances for bytes we accepted and will send.
//! Bytes left in the buffer leave through `poll_flush`, which the
//! connection core calls while [`SendSide::has_pending`] says so.

use crate::mse::{Established, Rc4Stream};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Ciphertext buffered at most: four 16 KiB blocks and their headers.
const SEND_BUF: usize = 64 * 1024;

pub struct RecvSide {
    /// Plaintext received during the handshake, not yet read.
    early: Vec<u8>,
    at: usize,
    cipher: Option<Rc4Stream>,
}

pub struct SendSide {
    cipher: Option<Rc4Stream>,
    /// Ciphertext accepted but not yet written: `buf[at..]`.
    buf: Vec<u8>,
    at: usize,
}

/// The two sides of an established handshake.
pub fn sides(est: Established) -> (RecvSide, SendSide) {
    let (send, recv) = match est.ciphers {
        Some((send, recv)) => (Some(send), Some(recv)),
        None => (None, None),
    };
    (RecvSide { early: est.received, at: 0, cipher: recv }, SendSide { cipher: send, buf: Vec::new(), at: 0 })
}

impl RecvSide {
    /// Whether RC4 was selected (not plaintext).
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    pub fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        inner: &mut R,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.early.len() {
            let n = buf.remaining().min(self.early.len() - self.at);
            buf.put_slice(&self.early[self.at..self.at + n]);
            self.at += n;
            if self.at == self.early.len() {
                self.early = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(inner).poll_read(cx, buf))?;
        if let Some(c) = &mut self.cipher {
            c.apply(&mut buf.filled_mut()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl SendSide {
    /// Whether accepted bytes still wait to be written.
    pub fn has_pending(&self) -> bool {
        self.at < self.buf.len()
    }

    /// Writes buffered ciphertext until none is left.
    fn poll_drain<W: AsyncWrite + Unpin>(&mut self, inner: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.has_pending() {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.buf[self.at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.at += n;
        }
        self.buf.clear();
        self.at = 0;
        Poll::Ready(Ok(()))
    }

    pub fn poll_write_vectored<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(inner, cx))?;
        let Some(cipher) = &mut self.cipher else {
            return Pin::new(inner).poll_write_vectored(cx, bufs);
        };
        for b in bufs {
            let take = b.len().min(SEND_BUF - self.buf.len());
            self.buf.extend_from_slice(&b[..take]);
            if self.buf.len() == SEND_BUF {
                break;
            }
        }
        let accepted = self.buf.len();
        cipher.apply(&mut self.buf);
        // Start sending now; what does not fit waits for the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_drain(inner, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(accepted))
    }

    pub fn poll_flush<W: AsyncWrite + Unpin>(&mut self, inner: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(inner, cx))?;
        Pin::new(inner).poll_flush(cx)
    }

    pub fn poll_shutdown<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(inner, cx))?;
        Pin::new(inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mse::{Method, Rc4Stream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const KEY_OUT: [u8; 20] = [1; 20];
    const KEY_IN: [u8; 20] = [2; 20];

    /// One side of an encrypted pipe, as the transport wires it.
    struct Pipe(DuplexStream, RecvSide, SendSide);

    impl AsyncWrite for Pipe {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let p = self.get_mut();
            p.2.poll_write_vectored(&mut p.0, cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            b: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let p = self.get_mut();
            p.2.poll_write_vectored(&mut p.0, cx, b)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let p = self.get_mut();
            p.2.poll_flush(&mut p.0, cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let p = self.get_mut();
            p.2.poll_shutdown(&mut p.0, cx)
        }
    }

    impl AsyncRead for Pipe {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let p = self.get_mut();
            p.1.poll_read(&mut p.0, cx, buf)
        }
    }

    fn pipe(inner: DuplexStream, early: &[u8]) -> Pipe {
        let est = Established {
            method: Method::Rc4,
            ciphers: Some((Rc4Stream::new(&KEY_OUT), Rc4Stream::new(&KEY_IN))),
            received: early.to_vec(),
            skey: [0; 20],
        };
        let (r, s) = sides(est);
        Pipe(inner, r, s)
    }

    #[tokio::test]
    async fn vectored_writes_through_a_narrow_pipe_arrive_whole_and_in_order() {
        // 1 KiB of pipe: most writes find it full and must not lose or
        // double-encrypt a byte.
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut p = pipe(ours, b"");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expect.len()];
            theirs.read_exact(&mut got).await.unwrap();
            Rc4Stream::new(&KEY_OUT).apply(&mut got);
            assert!(got == expect, "decrypted stream differs");
        });
        let mut at = 0;
        while at < data.len() {
            // Three slices a time, like the outgoing queue's header + block.
            let end = (at + 20_000).min(data.len());
            let mid = (at + 13).min(end);
            let slices = [IoSlice::new(&data[at..mid]), IoSlice::new(&data[mid..end]), IoSlice::new(&[])];
            let n = p.write_vectored(&slices).await.unwrap();
            assert!(n > 0 && n <= SEND_BUF);
            at += n;
        }
        assert!(p.2.has_pending() || at == data.len());
        p.flush().await.unwrap();
        assert!(!p.2.has_pending());
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn bytes_from_the_handshake_are_read_first_then_the_socket_decrypted() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut p = pipe(ours, b"early ");
        let mut later = b"later".to_vec();
        Rc4Stream::new(&KEY_IN).apply(&mut later);
        theirs.write_all(&later).await.unwrap();
        let mut got = vec![0u8; 11];
        p.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early later");
    }
}
