//! The daemon's most recent log lines, kept in memory so `dropseed top` can
//! follow the log over the control socket without reading files. The log
//! file stays the source of truth: this is a bounded copy (the last
//! [`CAPACITY`] lines, each cut to [`MAX_LINE`] bytes), numbered so a
//! client asks only for what it has not seen.

use std::collections::VecDeque;
use std::io;
use std::sync::{Mutex, OnceLock};
use tracing_subscriber::fmt::MakeWriter;

/// Lines kept.
pub const CAPACITY: usize = 500;
/// Longest line kept, in bytes (cut on a character boundary).
pub const MAX_LINE: usize = 2000;

/// The lines kept and the number of the newest (lines are numbered from 1).
#[derive(Default)]
pub struct Ring {
    lines: VecDeque<String>,
    last: u64,
}

impl Ring {
    pub fn push(&mut self, line: &str) {
        let mut end = line.len().min(MAX_LINE);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        if self.lines.len() == CAPACITY {
            self.lines.pop_front();
        }
        self.lines.push_back(line[..end].to_string());
        self.last += 1;
    }

    /// Up to `max` of the lines numbered after `after`, oldest first, and
    /// the number of the newest line.
    pub fn since(&self, after: u64, max: usize) -> (Vec<String>, u64) {
        let new = self.last.saturating_sub(after).min(self.lines.len() as u64) as usize;
        let take = new.min(max);
        let lines = self.lines.iter().skip(self.lines.len() - take).cloned().collect();
        (lines, self.last)
    }
}

fn ring() -> &'static Mutex<Ring> {
    static RING: OnceLock<Mutex<Ring>> = OnceLock::new();
    RING.get_or_init(Mutex::default)
}

/// Lines logged after line number `after` (at most `max`), and the newest
/// line's number.
pub fn since(after: u64, max: usize) -> (Vec<String>, u64) {
    ring().lock().unwrap().since(after, max)
}

/// The `MakeWriter` of the logging layer that fills the ring.
#[derive(Clone, Copy, Default)]
pub struct RingWriter;

/// One event's formatted text, pushed into the ring when dropped.
pub struct EventBuf(Vec<u8>);

impl io::Write for EventBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Bounded: past the longest line kept the rest is not needed.
        let room = (MAX_LINE + 4).saturating_sub(self.0.len());
        self.0.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuf {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let mut ring = ring().lock().unwrap_or_else(|e| e.into_inner());
        for line in text.lines().filter(|l| !l.is_empty()) {
            ring.push(line);
        }
    }
}

impl<'a> MakeWriter<'a> for RingWriter {
    type Writer = EventBuf;
    fn make_writer(&'a self) -> EventBuf {
        EventBuf(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_numbered_and_bounded() {
        let mut r = Ring::default();
        for i in 0..CAPACITY + 10 {
            r.push(&format!("line {i}"));
        }
        let (all, last) = r.since(0, usize::MAX);
        assert_eq!(last, CAPACITY as u64 + 10);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0], "line 10");
        let (new, _) = r.since(last - 2, 100);
        assert_eq!(new, vec![format!("line {}", CAPACITY + 8), format!("line {}", CAPACITY + 9)]);
        assert!(r.since(last, 100).0.is_empty());
        assert_eq!(r.since(0, 3).0.len(), 3, "at most max lines");
        r.push(&"é".repeat(MAX_LINE));
        assert!(r.since(last, 1).0[0].len() <= MAX_LINE);
    }
}
