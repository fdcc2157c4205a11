//! Outgoing bytes of one connection as a queue of chunks: small messages
//! share one buffer, piece messages read from disk are queued as they came,
//! and the socket gets them in one vectored write. Over plain TCP a block's
//! payload may instead be queued as a range of an open file
//! ([`FileRange`]), which the writer hands to `sendfile(2)`: the bytes go
//! from the page cache to the socket without a copy through user space.

use crate::wire::{self, Message};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::sync::Arc;

/// A range of an open file to send as it is on disk. Holding `file` keeps
/// the open-file pool's handle in use (never closed under the send).
pub struct FileRange {
    pub file: Arc<dyn AsFd + Send + Sync>,
    pub offset: u64,
    pub len: usize,
    /// Told when the file ends before the range does (cut short under us):
    /// a disk error of the data's owner.
    pub on_short: Arc<dyn Fn(String) + Send + Sync>,
}

enum Chunk {
    Bytes(Vec<u8>),
    File(FileRange),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Bytes(b) => b.len(),
            Chunk::File(f) => f.len,
        }
    }
}

/// What the writer sends next.
pub enum Next<'a> {
    /// Buffers for one vectored write; `more`: a file range follows them
    /// (the kernel may hold them back to go out with it).
    Bytes { slices: Vec<IoSlice<'a>>, more: bool },
    /// `len` bytes of `range` from file offset `offset`.
    File { range: &'a FileRange, offset: u64, len: usize },
}

#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    front_pos: usize,
    total: usize,
    /// The transport sends file ranges itself (plain TCP).
    takes_files: bool,
}

impl OutQueue {
    /// A queue for a transport that can (`takes_files`) send file ranges.
    pub fn new(takes_files: bool) -> OutQueue {
        OutQueue { takes_files, ..OutQueue::default() }
    }

    /// Whether [`OutQueue::push_file`] may be used: the connection is
    /// plain TCP (no encryption needs the bytes, no uTP).
    pub fn takes_files(&self) -> bool {
        self.takes_files
    }

    pub fn push_small(&mut self, msg: &Message<'_>) {
        // One buffer throughout: asking again after the message could give
        // a new one (this one just passed its 4 KiB).
        let buf = self.small_buffer();
        let before = buf.len();
        wire::encode(msg, buf);
        let added = buf.len() - before;
        self.total += added;
    }

    /// Appends a few bytes (a piece message's header) to the small buffer.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.small_buffer().extend_from_slice(bytes);
        self.total += bytes.len();
    }

    /// The buffer small messages are appended to. Appending to it is safe
    /// even while it is the front one being written: only bytes past
    /// `front_pos` are still to go.
    fn small_buffer(&mut self) -> &mut Vec<u8> {
        if !matches!(self.chunks.back(), Some(Chunk::Bytes(b)) if b.len() < 4096) {
            self.chunks.push_back(Chunk::Bytes(Vec::with_capacity(256)));
        }
        match self.chunks.back_mut() {
            Some(Chunk::Bytes(b)) => b,
            _ => unreachable!("a byte buffer was just pushed"),
        }
    }

    pub fn push_owned(&mut self, buf: Vec<u8>) {
        if !buf.is_empty() {
            self.total += buf.len();
            self.chunks.push_back(Chunk::Bytes(buf));
        }
    }

    /// Queues a file range; only where [`OutQueue::takes_files`].
    pub fn push_file(&mut self, range: FileRange) {
        debug_assert!(self.takes_files, "a file range queued for a transport that cannot send it");
        if range.len > 0 {
            self.total += range.len;
            self.chunks.push_back(Chunk::File(range));
        }
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// What to write next, if anything: the byte buffers up to the first
    /// file range (at most 64), or that range.
    pub fn next(&self) -> Option<Next<'_>> {
        let pos = self.front_pos;
        if let Chunk::File(range) = self.chunks.front()? {
            return Some(Next::File { range, offset: range.offset + pos as u64, len: range.len - pos });
        }
        let mut slices = Vec::new();
        let mut more = false;
        for (i, c) in self.chunks.iter().take(64).enumerate() {
            match c {
                Chunk::Bytes(b) => slices.push(IoSlice::new(if i == 0 { &b[pos..] } else { b })),
                Chunk::File(_) => {
                    more = true;
                    break;
                }
            }
        }
        Some(Next::Bytes { slices, more })
    }

    pub fn advance(&mut self, mut n: usize) {
        self.total -= n;
        while n > 0 {
            let front_left = self.chunks[0].len() - self.front_pos;
            if n >= front_left {
                n -= front_left;
                self.chunks.pop_front();
                self.front_pos = 0;
            } else {
                self.front_pos += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(len: usize) -> FileRange {
        let file = tempfile::tempfile().unwrap();
        FileRange { file: Arc::new(file), offset: 100, len, on_short: Arc::new(|_| {}) }
    }

    #[test]
    fn bytes_go_up_to_a_file_range_then_the_range_from_where_it_was_left() {
        let mut q = OutQueue::new(true);
        q.push_bytes(b"head");
        q.push_file(range(10));
        q.push_owned(b"tail".to_vec());
        assert_eq!(q.len(), 18);
        match q.next() {
            Some(Next::Bytes { slices, more }) => assert!(slices.len() == 1 && &*slices[0] == b"head" && more),
            _ => panic!("bytes first"),
        }
        q.advance(4);
        q.advance(3);
        match q.next() {
            Some(Next::File { offset, len, .. }) => assert_eq!((offset, len), (103, 7)),
            _ => panic!("the range next"),
        }
        q.advance(7);
        match q.next() {
            Some(Next::Bytes { slices, more }) => assert!(&*slices[0] == b"tail" && !more),
            _ => panic!("the tail last"),
        }
        q.advance(4);
        assert!(q.is_empty() && q.next().is_none());
    }

    /// Small messages past a buffer's 4 KiB go on in a new buffer: every
    /// byte is counted once, whichever buffer it went to.
    #[test]
    fn small_messages_across_buffers_are_counted_exactly() {
        let mut q = OutQueue::new(false);
        let reject = Message::RejectRequest(crate::wire::BlockRef { piece: 1, offset: 0, len: 16384 });
        let mut one = Vec::new();
        wire::encode(&reject, &mut one);
        for n in 1..=1000 {
            q.push_small(&reject);
            assert_eq!(q.len(), n * one.len());
        }
        let mut queued = 0;
        while let Some(Next::Bytes { slices, .. }) = q.next() {
            let n: usize = slices.iter().map(|s| s.len()).sum();
            queued += n;
            q.advance(n);
        }
        assert_eq!(queued, 1000 * one.len());
        assert!(q.is_empty());
    }
}
