//! Datagrams with as few system calls, and as little kernel work, as
//! possible. Over uTP a GiB is some 770 000 datagrams; one system call
//! each made the calls, not the protocol, the biggest cost of seeding.
//!
//! - Sending: `sendmmsg(2)` hands the kernel up to [`PER_CALL`] messages at
//!   once, and each message is a run of equal-sized datagrams to one
//!   address sent with UDP segmentation offload (`UDP_SEGMENT`, Linux
//!   4.18): the kernel routes and builds one large packet and cuts it
//!   into datagrams at the end (in the network card where it can). A
//!   kernel without it (before 4.18 it would ignore the option and send
//!   one huge datagram) is found when the socket is set up, and then no
//!   message is segmented. A run the kernel refuses (a path MTU below the
//!   datagram, a route that cannot segment) goes again datagram by
//!   datagram; other destinations keep segmentation.
//! - Receiving: `recvmmsg(2)` takes up to [`SLOTS`] datagrams at once.
//!
//! The buffers are kept between rounds; a call allocates only its list of
//! pieces for the kernel to gather.

use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::Interest;
use tokio::net::UdpSocket;

pub use super::conn::Datagram;

/// Messages per `sendmmsg` call.
const PER_CALL: usize = 64;
/// Datagrams per segmented message at most (the kernel's own limit).
const MAX_SEGMENTS: usize = 64;
/// Bytes per segmented message at most: within one IPv4 or IPv6 packet.
const MAX_SEGMENTED_BYTES: usize = 60_000;
/// Room kept between bursts: headers, and datagrams.
const KEPT_HEADS: usize = 16 * 1024;
const KEPT_DATAGRAMS: usize = 512;

/// Whether the kernel segments datagrams ([`probe_segmentation`]).
static SEGMENTATION: AtomicBool = AtomicBool::new(false);

/// Asks the kernel whether it knows `UDP_SEGMENT` on this socket (a
/// kernel that does not would silently send a run as one datagram), and
/// segments from then on only if it does.
pub fn probe_segmentation(udp: &UdpSocket) -> bool {
    let off: libc::c_int = 0;
    // SAFETY: a plain setsockopt with a live int of the right size.
    let r = unsafe {
        libc::setsockopt(
            udp.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let works = r == 0;
    SEGMENTATION.store(works, Ordering::Relaxed);
    works
}

/// Datagrams waiting to go to one address, end to end in one buffer.
pub struct Outbox {
    /// The datagrams' headers, back to back.
    heads: Vec<u8>,
    /// Per datagram: where its header ends in `heads`, and its payload,
    /// shared with the packet kept for resending rather than copied.
    queued: Vec<(usize, Bytes)>,
    /// Where each datagram would end were they all back to back.
    ends: Vec<usize>,
    /// Whether to send runs of equal-sized datagrams as one message.
    segment: bool,
    /// The messages of the next call (kept to save an allocation a call).
    runs: Vec<Run>,
    /// Datagrams before this one go unsegmented: a segmented run of them
    /// was refused.
    unsegmented_until: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            heads: Vec::new(),
            queued: Vec::new(),
            ends: Vec::new(),
            segment: SEGMENTATION.load(Ordering::Relaxed),
            runs: Vec::new(),
            unsegmented_until: 0,
        }
    }
}

impl Outbox {
    pub fn push(&mut self, datagram: Datagram<'_>) {
        self.heads.extend_from_slice(datagram.head);
        self.queued.push((self.heads.len(), datagram.payload.clone()));
        self.ends.push(self.ends.last().copied().unwrap_or(0) + datagram.head.len() + datagram.payload.len());
    }

    /// Sends everything, waiting for room in the socket's buffer if need
    /// be. A datagram the kernel refuses for another reason is dropped, as
    /// the network might have: the connection sends it again.
    pub async fn send_all(&mut self, udp: &UdpSocket, to: SocketAddr) {
        let addr = socket2::SockAddr::from(to);
        let mut sent = 0;
        loop {
            sent = self.send_from(udp, &addr, sent);
            if sent >= self.ends.len() || udp.writable().await.is_err() {
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
    fn send_from(&mut self, udp: &UdpSocket, to: &socket2::SockAddr, mut sent: usize) -> usize {
        while sent < self.ends.len() {
            self.plan_runs(sent);
            let runs = &self.runs;
            match udp.try_io(Interest::WRITABLE, || send_many(udp, to, self, runs)) {
                Ok(n) => sent = runs.get(n.max(1) - 1).map_or(sent + 1, |r| r.datagrams.end),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if runs[0].datagrams.len() > 1 && refuses_segmentation(&e) => {
                    self.unsegmented_until = runs[0].datagrams.end;
                }
                Err(_) => sent = runs[0].datagrams.end,
            }
        }
        sent
    }

    /// The next messages from datagram `from` on, at most [`PER_CALL`].
    fn plan_runs(&mut self, from: usize) {
        self.runs.clear();
        let mut at = from;
        while at < self.ends.len() && self.runs.len() < PER_CALL {
            let limit = if self.segment && at >= self.unsegmented_until { MAX_SEGMENTS } else { 1 };
            let run = segment_run(&self.ends, at, limit);
            let size = self.ends[run.start] - self.start(run.start);
            at = run.end;
            self.runs.push(Run { datagrams: run, size });
        }
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1]
        }
    }

    /// Datagram `i` as its header and payload.
    fn parts(&self, i: usize) -> [&[u8]; 2] {
        let head_start = if i == 0 { 0 } else { self.queued[i - 1].0 };
        let (head_end, payload) = &self.queued[i];
        [&self.heads[head_start..*head_end], payload]
    }

    fn clear(&mut self) {
        self.unsegmented_until = 0;
        self.heads.clear();
        self.queued.clear();
        self.ends.clear();
        // A burst's buffers are not kept for the connection's whole life.
        self.heads.shrink_to(KEPT_HEADS);
        self.queued.shrink_to(KEPT_DATAGRAMS);
        self.ends.shrink_to(KEPT_DATAGRAMS);
    }
}

/// One message: datagrams `datagrams`, each `size` long but the last,
/// which may be shorter.
struct Run {
    datagrams: Range<usize>,
    size: usize,
}

/// The datagrams from `at` on that can go as one segmented message: of
/// the first one's size, the last perhaps shorter, at most `limit` of
/// them and [`MAX_SEGMENTED_BYTES`].
fn segment_run(ends: &[usize], at: usize, limit: usize) -> Range<usize> {
    let start = if at == 0 { 0 } else { ends[at - 1] };
    let size = ends[at] - start;
    let mut end = at + 1;
    while end < ends.len() && end - at < limit {
        let len = ends[end] - ends[end - 1];
        if len > size || ends[end] - start > MAX_SEGMENTED_BYTES {
            break;
        }
        end += 1;
        if len < size {
            break;
        }
    }
    at..end
}

/// Errors that mean this run could not be segmented (the datagram is
/// over the path's MTU, the route or card cannot segment).
fn refuses_segmentation(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE | libc::EOPNOTSUPP))
}

/// Room for one `UDP_SEGMENT` control message.
#[repr(C, align(8))]
struct SegmentControl([u8; 32]);

/// One `sendmmsg` call: how many messages the kernel took. The kernel
/// gathers each message from its datagrams' headers and payloads (two
/// pieces each), so payloads are copied once, by the kernel.
fn send_many(udp: &UdpSocket, to: &socket2::SockAddr, out: &Outbox, runs: &[Run]) -> io::Result<usize> {
    let runs = &runs[..runs.len().min(PER_CALL)];
    // SAFETY (CMSG_SPACE): a pure size computation.
    let control_len = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    let mut controls = [const { SegmentControl([0; 32]) }; PER_CALL];
    let most: usize = runs.iter().map(|r| 2 * r.datagrams.len()).sum();
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(most);
    let mut firsts = [0usize; PER_CALL];
    for (i, run) in runs.iter().enumerate() {
        firsts[i] = iovs.len();
        for part in run.datagrams.clone().flat_map(|d| out.parts(d)).filter(|p| !p.is_empty()) {
            iovs.push(libc::iovec { iov_base: part.as_ptr() as *mut libc::c_void, iov_len: part.len() });
        }
    }
    // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
    let mut msgs: [libc::mmsghdr; PER_CALL] = unsafe { std::mem::zeroed() };
    let pieces = iovs.len();
    let base = iovs.as_mut_ptr();
    for (i, run) in runs.iter().enumerate() {
        let end = firsts.get(i + 1).filter(|_| i + 1 < runs.len()).copied().unwrap_or(pieces);
        let m = &mut msgs[i].msg_hdr;
        m.msg_name = to.as_ptr() as *mut libc::c_void;
        m.msg_namelen = to.len();
        // SAFETY: firsts[i] <= pieces: within (or one past) the vector.
        m.msg_iov = unsafe { base.add(firsts[i]) };
        m.msg_iovlen = (end - firsts[i]) as _;
        if run.datagrams.len() > 1 {
            m.msg_control = controls[i].0.as_mut_ptr().cast();
            m.msg_controllen = control_len as _;
            // SAFETY: the control buffer is aligned and holds CMSG_SPACE(2)
            // bytes, so the first header and its u16 fit in it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(m);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), run.size as u16);
            }
        }
    }
    // SAFETY: the first `runs.len()` headers point at live iovecs (over the
    // outbox's buffers), control buffers and the address, all of which
    // outlive the call.
    let n =
        unsafe { libc::sendmmsg(udp.as_raw_fd(), msgs.as_mut_ptr(), runs.len() as libc::c_uint, libc::MSG_DONTWAIT) };
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
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; SLOTS];
    let mut iovs: Vec<libc::iovec> = bufs
        .chunks_mut(SLOT_LEN)
        .map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: b.len() })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(names.iter_mut())
        .map(|(iov, name)| {
            // SAFETY: mmsghdr is plain old data; all-zero (null pointers, zero
            // lengths) is a valid value, and the fields that matter are set here.
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
    use std::time::Duration;

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut out = Outbox::default();
        for round in 0..2u8 {
            for i in 0..150u8 {
                out.push(Datagram { head: &[round, i], payload: &Bytes::from_static(&[7, 7]) });
            }
            out.send_all(&a, b.local_addr().unwrap()).await;
            let mut buf = [0u8; 16];
            for i in 0..150u8 {
                let n = b.recv(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], &[round, i, 7, 7]);
            }
        }
        assert!(out.queued.capacity() <= KEPT_DATAGRAMS, "a burst's buffers are not all kept");
    }

    #[test]
    fn equal_sized_datagrams_make_one_run_ending_at_a_shorter_one() {
        fn runs(lens: &[usize], limit: usize) -> Vec<Range<usize>> {
            let ends: Vec<usize> =
                lens.iter().scan(0, |end, len| Some(std::mem::replace(end, *end + len) + len)).collect();
            let mut at = 0;
            std::iter::from_fn(|| {
                (at < ends.len()).then(|| {
                    let r = segment_run(&ends, at, limit);
                    at = r.end;
                    r
                })
            })
            .collect()
        }
        assert_eq!(runs(&[1420, 1420, 1420, 20, 1420, 26], 64), [0..4, 4..6]);
        assert_eq!(runs(&[20, 1420, 1420], 64), [0..1, 1..3], "a longer one starts a new run");
        assert_eq!(runs(&[1420; 5], 2), [0..2, 2..4, 4..5], "at most the limit");
        assert_eq!(runs(&[1420; 5], 1), [0..1, 1..2, 2..3, 3..4, 4..5]);
        let many = runs(&[1420; 100], 64);
        assert_eq!(many[0], 0..MAX_SEGMENTED_BYTES / 1420, "within the bytes of one packet");
    }

    /// Mixed sizes, segmented or not: every datagram arrives as its own,
    /// whole and in order.
    #[tokio::test]
    async fn segmented_or_not_each_datagram_arrives_on_its_own() {
        for segment in [true, false] {
            let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut out = Outbox { segment: segment && probe_segmentation(&a), ..Outbox::default() };
            // Within the receiver's default buffer, which nothing here drains meanwhile.
            let lens: Vec<usize> = (0..90).map(|i| if i % 40 == 39 { 20 + i } else { 1420 }).collect();
            for (i, len) in lens.iter().enumerate() {
                out.push(Datagram { head: &vec![i as u8; *len], payload: &Bytes::new() });
            }
            out.send_all(&a, b.local_addr().unwrap()).await;
            let mut buf = vec![0u8; 65536];
            for (i, len) in lens.iter().enumerate() {
                let n = tokio::time::timeout(Duration::from_secs(5), b.recv(&mut buf)).await.expect("lost").unwrap();
                assert_eq!((n, buf[0], buf[n - 1]), (*len, i as u8, i as u8), "datagram {i}, segment {segment}");
            }
        }
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
