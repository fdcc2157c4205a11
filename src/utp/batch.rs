//! Sending a connection's datagrams with as few system calls as possible:
//! `sendmmsg(2)` hands the kernel up to [`PER_CALL`] datagrams at once.
//! Over uTP a GiB is some 770 000 datagrams; one `sendto` each made the
//! system call, not the protocol, the biggest cost of seeding.
//!
//! The buffers are kept between rounds, so a steady upload allocates
//! nothing here.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per `sendmmsg` call.
const PER_CALL: usize = 64;

/// Datagrams waiting to go to one address.
#[derive(Default)]
pub struct Outbox {
    bufs: Vec<Vec<u8>>,
    len: usize,
}

impl Outbox {
    pub fn push(&mut self, datagram: &[u8]) {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(1500));
        }
        let buf = &mut self.bufs[self.len];
        buf.clear();
        buf.extend_from_slice(datagram);
        self.len += 1;
    }

    /// Sends everything, waiting for room in the socket's buffer if need
    /// be. A datagram the kernel refuses for another reason is dropped, as
    /// the network might have: the connection sends it again.
    pub async fn send_all(&mut self, udp: &UdpSocket, to: SocketAddr) {
        let addr = socket2::SockAddr::from(to);
        let mut sent = 0;
        while sent < self.len {
            let batch = &self.bufs[sent..self.len.min(sent + PER_CALL)];
            match udp.try_io(Interest::WRITABLE, || send_many(udp, &addr, batch)) {
                Ok(n) => sent += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if udp.writable().await.is_err() {
                        break;
                    }
                }
                Err(_) => sent += 1,
            }
        }
        self.len = 0;
    }
}

/// One `sendmmsg` call: how many datagrams the kernel took.
fn send_many(udp: &UdpSocket, to: &socket2::SockAddr, batch: &[Vec<u8>]) -> io::Result<usize> {
    let mut iovs: Vec<libc::iovec> =
        batch.iter().map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = to.len();
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: every header points at a live iovec, the buffers and the
    // address outlive the call, and the count matches the array.
    let n = unsafe { libc::sendmmsg(udp.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as libc::c_uint, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut out = Outbox::default();
        for round in 0..2u8 {
            for i in 0..150u8 {
                out.push(&[round, i, 7, 7]);
            }
            out.send_all(&a, b.local_addr().unwrap()).await;
            let mut buf = [0u8; 16];
            for i in 0..150u8 {
                let n = b.recv(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], &[round, i, 7, 7]);
            }
        }
        assert_eq!(out.bufs.len(), 150, "buffers are reused");
    }
}
