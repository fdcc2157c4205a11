//! The application's bytes waiting to go out, in slabs a packet's payload
//! is cut from without copying.
//!
//! A write is copied into the last slab while it has room, and a full slab
//! is never grown: the next one is a new allocation. One growing buffer
//! (what this replaced) had to be reallocated and copied whenever it grew
//! while packets cut from it were still in flight: at seeding speed that
//! was a large allocation, fresh pages faulted in and unmapped again, many
//! times a second, a quarter of the CPU. A slab holds [`SLAB_PACKETS`]
//! packets, so the allocator is called once for that many.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// Packets' worth of payload per slab.
const SLAB_PACKETS: usize = 16;

pub struct Unsent {
    /// Slabs of bytes not yet sent; only the last one still fills.
    slabs: VecDeque<BytesMut>,
    len: usize,
    /// Payload bytes per packet.
    chunk: usize,
}

impl Unsent {
    pub fn new(chunk: usize) -> Unsent {
        Unsent { slabs: VecDeque::new(), len: 0, chunk: chunk.max(1) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies in up to `limit` bytes of `data` (the rest is not taken);
    /// returns how many.
    pub fn push(&mut self, data: &[u8], limit: usize) -> usize {
        let mut rest = &data[..data.len().min(limit)];
        let taken = rest.len();
        while !rest.is_empty() {
            let last = match self.slabs.back_mut() {
                Some(s) if s.capacity() > s.len() => s,
                _ => {
                    self.slabs.push_back(BytesMut::with_capacity(SLAB_PACKETS * self.chunk));
                    self.slabs.back_mut().expect("just pushed")
                }
            };
            // Within the room left, so the slab is never reallocated.
            let n = rest.len().min(last.capacity() - last.len());
            last.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        self.len += taken;
        taken
    }

    /// The length of the next packet's payload (0 when nothing waits).
    pub fn next_len(&self) -> usize {
        self.slabs.iter().find(|s| !s.is_empty()).map_or(0, |s| s.len().min(self.chunk))
    }

    /// The next packet's payload: a packet's worth, or what there is.
    pub fn pop(&mut self) -> Option<Bytes> {
        // A slab emptied goes, unless it is the last and has room to fill.
        while self.slabs.front().is_some_and(|s| s.is_empty() && (self.slabs.len() > 1 || s.capacity() == 0)) {
            self.slabs.pop_front();
        }
        let front = self.slabs.front_mut().filter(|s| !s.is_empty())?;
        let payload = if front.len() >= self.chunk {
            front.split_to(self.chunk).freeze()
        } else {
            // A short packet is copied out rather than cut, so it does not
            // hold the slab's whole allocation while in flight, and the
            // slab's room is filled again.
            let short = Bytes::copy_from_slice(front);
            front.clear();
            short
        };
        self.len -= payload.len();
        Some(payload)
    }

    pub fn clear(&mut self) {
        self.slabs.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_cut_into_packets_in_order() {
        let mut u = Unsent::new(4);
        assert_eq!(u.push(b"abcdef", usize::MAX), 6);
        assert_eq!(u.push(b"gh", usize::MAX), 2);
        assert_eq!(u.push(b"ij", usize::MAX), 2);
        assert_eq!((u.len(), u.next_len()), (10, 4));
        let got: Vec<Bytes> = std::iter::from_fn(|| u.pop()).collect();
        assert_eq!(got, [&b"abcd"[..], b"efgh", b"ij"]);
        assert!(u.is_empty() && u.next_len() == 0);
    }

    #[test]
    fn a_short_last_packet_goes_as_it_is_and_the_next_write_starts_afresh() {
        let mut u = Unsent::new(4);
        u.push(b"ab", usize::MAX);
        assert_eq!(u.pop().as_deref(), Some(&b"ab"[..]));
        u.push(b"cdefg", usize::MAX);
        assert_eq!(u.pop().as_deref(), Some(&b"cdef"[..]));
        assert_eq!(u.pop().as_deref(), Some(&b"g"[..]));
        assert!(u.pop().is_none());
    }

    #[test]
    fn a_short_packet_is_copied_and_its_slab_filled_again() {
        let mut u = Unsent::new(4);
        u.push(b"ab", usize::MAX);
        let short = u.pop().unwrap();
        u.push(b"cdefgh", usize::MAX);
        assert_eq!(u.slabs.len(), 1, "the same slab took the next write");
        let next = u.pop().unwrap();
        assert_ne!(next.as_ptr(), short.as_ptr(), "the short packet was a copy");
        assert_eq!((&short[..], &next[..], u.pop().as_deref()), (&b"ab"[..], &b"cdef"[..], Some(&b"gh"[..])));
    }

    #[test]
    fn a_full_slab_is_never_grown_and_packets_share_it() {
        let mut u = Unsent::new(4);
        let slab = SLAB_PACKETS * 4;
        let bytes: Vec<u8> = (0..slab as u8 + 6).collect();
        u.push(&bytes, usize::MAX);
        assert_eq!(u.slabs.len(), 2, "the rest went to a new slab");
        assert_eq!(u.slabs[0].capacity(), slab);
        let first = u.pop().unwrap();
        let second = u.pop().unwrap();
        assert_eq!(second.as_ptr(), first.as_ptr().wrapping_add(4), "cut from one allocation");
        let got: Vec<u8> = [first, second].into_iter().chain(std::iter::from_fn(|| u.pop())).flatten().collect();
        assert_eq!(got, bytes);
    }

    #[test]
    fn the_limit_caps_what_is_taken() {
        let mut u = Unsent::new(4);
        assert_eq!(u.push(b"abcdef", 3), 3);
        assert_eq!(u.push(b"", 3), 0);
        assert_eq!(u.len(), 3);
        u.clear();
        assert!(u.is_empty() && u.pop().is_none());
    }
}
