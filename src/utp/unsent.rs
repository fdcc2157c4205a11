//! The application's bytes waiting to go out, already cut into packets.
//!
//! A write is copied into packet-sized chunks as it arrives, so taking a
//! packet's payload is handing over a chunk. One growing buffer split at
//! each packet (what this replaced) had to be reallocated and copied
//! whenever it grew while packets cut from it were still in flight: at
//! seeding speed that was a large allocation, fresh pages faulted in and
//! unmapped again, many times a second, a quarter of the CPU.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

pub struct Unsent {
    /// Full chunks first; only the last may be short and still filling.
    chunks: VecDeque<BytesMut>,
    len: usize,
    /// Payload bytes per packet.
    chunk: usize,
}

impl Unsent {
    pub fn new(chunk: usize) -> Unsent {
        Unsent { chunks: VecDeque::new(), len: 0, chunk: chunk.max(1) }
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
            let last = match self.chunks.back_mut() {
                Some(c) if c.len() < self.chunk => c,
                _ => {
                    self.chunks.push_back(BytesMut::with_capacity(self.chunk));
                    self.chunks.back_mut().expect("just pushed")
                }
            };
            let n = rest.len().min(self.chunk - last.len());
            last.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        self.len += taken;
        taken
    }

    /// The length of the next packet's payload (0 when nothing waits).
    pub fn next_len(&self) -> usize {
        self.chunks.front().map_or(0, |c| c.len())
    }

    /// The next packet's payload: a full chunk, or what there is.
    pub fn pop(&mut self) -> Option<Bytes> {
        let c = self.chunks.pop_front()?;
        self.len -= c.len();
        Some(c.freeze())
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
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
