//! Datagrams with as few system calls as possible: `sendmmsg(2)` hands the
//! kernel up to [`PER_CALL`] datagrams of a connection at once, and
//! `recvmmsg(2)` takes up to [`SLOTS`] from the socket. Over uTP a GiB is
//! some 770 000 datagrams; one system call each made the calls, not the
//! protocol, the biggest cost of seeding.
//!
//! The buffers are kept between rounds, so steady traffic allocates
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
        loop {
            sent = self.send_from(udp, &addr, sent);
            if sent >= self.len || udp.writable().await.is_err() {
                break;
            }
        }
        self.clear();
    }

    /// Sends what the socket takes now, without waiting; the rest is
    /// dropped (the connection resends it).
    pub fn try_send_all(&mut self, udp: &UdpSocket, to: SocketAddr) {
        self.send_from(udp, &socket2::SockAddr::from(to), 0);
        self.clear();
    }

    /// Sends from datagram `sent` on until all are out or the socket is
    /// full; returns how far it got.
    fn send_from(&self, udp: &UdpSocket, to: &socket2::SockAddr, mut sent: usize) -> usize {
        while sent < self.len {
            let batch = &self.bufs[sent..self.len.min(sent + PER_CALL)];
            match udp.try_io(Interest::WRITABLE, || send_many(udp, to, batch)) {
                Ok(n) => sent += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => sent += 1,
            }
        }
        sent
    }

    fn clear(&mut self) {
        self.len = 0;
        // A burst's buffers are not kept for the connection's whole life.
        self.bufs.truncate(PER_CALL);
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
    let n =
        unsafe { libc::sendmmsg(udp.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as libc::c_uint, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Datagrams read per `recvmmsg` call.
pub const SLOTS: usize = 16;
/// Room per datagram: the largest UDP payload, so nothing is cut short.
const SLOT_LEN: usize = 65536;

/// Buffers for one `recvmmsg` call, and what it brought.
pub struct Received {
    bufs: Vec<u8>,
    /// Per slot: the length and the sender (None: cut short or unreadable).
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl Default for Received {
    fn default() -> Self {
        Received { bufs: vec![0; SLOTS * SLOT_LEN], got: Vec::with_capacity(SLOTS) }
    }
}

impl Received {
    /// Reads what is waiting, without waiting: how many datagrams (0 is
    /// never returned; nothing waiting is `WouldBlock`).
    pub fn read(&mut self, udp: &UdpSocket) -> io::Result<usize> {
        let (bufs, got) = (&mut self.bufs, &mut self.got);
        udp.try_io(Interest::READABLE, || recv_many(udp, bufs, got))
    }

    /// The datagrams the last read brought, with their senders.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.got.iter().enumerate().filter_map(|(i, &(len, from))| Some((&self.bufs[i * SLOT_LEN..][..len], from?)))
    }
}

fn recv_many(udp: &UdpSocket, bufs: &mut [u8], got: &mut Vec<(usize, Option<SocketAddr>)>) -> io::Result<usize> {
    // SAFETY (zeroed): sockaddr_storage and mmsghdr are plain old data.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; SLOTS];
    let mut iovs: Vec<libc::iovec> = bufs
        .chunks_mut(SLOT_LEN)
        .map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: b.len() })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(names.iter_mut())
        .map(|(iov, name)| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: every header points at a live iovec over `bufs` and a live
    // sockaddr_storage, and the count matches the array.
    let n = unsafe {
        libc::recvmmsg(
            udp.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    got.clear();
    for (m, name) in msgs.iter().zip(&names).take(n as usize) {
        let cut = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        got.push((m.msg_len as usize, if cut { None } else { socket_addr(name) }));
    }
    Ok(n as usize)
}

/// The sender's address the kernel wrote, IPv4 or IPv6.
fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match name.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id).into())
        }
        _ => None,
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
        assert_eq!(out.bufs.len(), PER_CALL, "a burst's buffers are not all kept");
    }

    #[tokio::test]
    async fn a_read_brings_several_datagrams_with_their_senders() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..20u8 {
            a.send_to(&vec![i; 100 + i as usize], b.local_addr().unwrap()).await.unwrap();
        }
        let mut got = Vec::new();
        let mut r = Received::default();
        while got.len() < 20 {
            b.readable().await.unwrap();
            match r.read(&b) {
                Ok(_) => got.extend(r.datagrams().map(|(d, from)| (d.to_vec(), from))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
        }
        for (i, (d, from)) in got.iter().enumerate() {
            assert_eq!((d.len(), d[0], *from), (100 + i, i as u8, a.local_addr().unwrap()));
        }
    }
}
