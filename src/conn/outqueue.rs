//! Outgoing bytes of one connection as a queue of buffers: small messages
//! share one buffer, piece messages read from disk are queued as they came,
//! and the socket gets them in one vectored write.

use crate::wire::{self, Message};
use std::collections::VecDeque;
use std::io::IoSlice;

#[derive(Default)]
pub struct OutQueue {
    bufs: VecDeque<Vec<u8>>,
    /// Bytes of the front buffer already written.
    front_pos: usize,
    total: usize,
}

impl OutQueue {
    pub fn push_small(&mut self, msg: &Message<'_>) {
        // Appending to the back buffer is safe even while it is the front one
        // being written: only bytes past `front_pos` are still to go.
        if self.bufs.back().is_none_or(|b| b.len() >= 4096) {
            self.bufs.push_back(Vec::with_capacity(256));
        }
        let back = self.bufs.back_mut().unwrap();
        let before = back.len();
        wire::encode(msg, back);
        self.total += back.len() - before;
    }

    pub fn push_owned(&mut self, buf: Vec<u8>) {
        self.total += buf.len();
        self.bufs.push_back(buf);
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn slices(&self) -> Vec<IoSlice<'_>> {
        self.bufs
            .iter()
            .take(64)
            .enumerate()
            .map(|(i, b)| IoSlice::new(if i == 0 { &b[self.front_pos..] } else { b }))
            .collect()
    }

    pub fn advance(&mut self, mut n: usize) {
        self.total -= n;
        while n > 0 {
            let front_left = self.bufs[0].len() - self.front_pos;
            if n >= front_left {
                n -= front_left;
                self.bufs.pop_front();
                self.front_pos = 0;
            } else {
                self.front_pos += n;
                n = 0;
            }
        }
    }
}
