//! Pure mapping from the torrent's byte stream to file segments.
//!
//! A piece may span many files (and padding files, BEP 47, which occupy
//! space in the stream but are never written). Everything the backends do
//! goes through [`Layout::segments`], which is why it is tested hard here.

use crate::metainfo::Metainfo;
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index into the torrent's file list.
    pub file: usize,
    pub file_offset: u64,
    /// Offset within the caller's buffer.
    pub buf_offset: usize,
    pub len: usize,
    pub padding: bool,
}

#[derive(Debug, Clone)]
pub struct Layout {
    /// (stream offset, length, padding) per file, in torrent order.
    files: Vec<(u64, u64, bool)>,
    piece_length: u64,
    total_length: u64,
}

impl Layout {
    pub fn new(meta: &Metainfo) -> Layout {
        Layout {
            files: meta.files.iter().map(|f| (f.offset, f.length, f.padding)).collect(),
            piece_length: meta.piece_length,
            total_length: meta.total_length,
        }
    }

    /// How many files the torrent lists (padding included).
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    #[cfg(test)]
    pub(crate) fn from_parts(files: &[(u64, bool)], piece_length: u64) -> Layout {
        let mut offset = 0;
        let files = files
            .iter()
            .map(|&(len, pad)| {
                let f = (offset, len, pad);
                offset += len;
                f
            })
            .collect();
        Layout { files, piece_length, total_length: offset }
    }

    pub fn piece_range(&self, index: usize) -> Range<u64> {
        let start = index as u64 * self.piece_length;
        start..(start + self.piece_length).min(self.total_length)
    }

    /// The file segments covering `len` bytes from stream offset `offset`.
    /// Zero-length files never appear; the range must lie within the torrent.
    pub fn segments(&self, offset: u64, len: usize) -> Vec<Segment> {
        let mut out = Vec::new();
        let end = offset + len as u64;
        assert!(end <= self.total_length, "range beyond the torrent");
        // First file whose end is past `offset`.
        let mut i = self.files.partition_point(|&(start, flen, _)| start + flen <= offset);
        let mut pos = offset;
        while pos < end && i < self.files.len() {
            let (fstart, flen, padding) = self.files[i];
            let fend = fstart + flen;
            if flen > 0 && fend > pos {
                let seg_end = end.min(fend);
                out.push(Segment {
                    file: i,
                    file_offset: pos - fstart,
                    buf_offset: (pos - offset) as usize,
                    len: (seg_end - pos) as usize,
                    padding,
                });
                pos = seg_end;
            }
            i += 1;
        }
        out
    }

    pub fn piece_count(&self) -> usize {
        self.total_length.div_ceil(self.piece_length.max(1)) as usize
    }

    /// Pieces with at least one byte in `len` bytes from stream offset
    /// `offset`, and of those, the ones the range holds whole.
    pub fn pieces_in(&self, offset: u64, len: usize) -> (Range<usize>, Range<usize>) {
        if len == 0 {
            return (0..0, 0..0);
        }
        let (pl, end) = (self.piece_length.max(1), offset + len as u64);
        let touched = (offset / pl) as usize..end.div_ceil(pl) as usize;
        let first_whole = offset.div_ceil(pl) as usize;
        // The last piece is whole up to the end of the torrent.
        let end_whole = if end == self.total_length { touched.end } else { (end / pl) as usize };
        (touched, first_whole..end_whole.max(first_whole))
    }

    /// Pieces that hold at least one byte of file `file`.
    pub fn pieces_of_file(&self, file: usize) -> Range<usize> {
        let (start, len, _) = self.files[file];
        if len == 0 {
            return 0..0;
        }
        let first = start / self.piece_length;
        let last = (start + len - 1) / self.piece_length;
        first as usize..last as usize + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_spanning_three_files_with_padding_and_empty() {
        // files: 10 bytes, 0 bytes, 6 padding, 20 bytes; pieces of 16.
        let l = Layout::from_parts(&[(10, false), (0, false), (6, true), (20, false)], 16);
        assert_eq!(l.piece_range(2), 32..36);
        let s = l.segments(0, 16);
        assert_eq!(
            s,
            vec![
                Segment { file: 0, file_offset: 0, buf_offset: 0, len: 10, padding: false },
                Segment { file: 2, file_offset: 0, buf_offset: 10, len: 6, padding: true },
            ]
        );
        let s = l.segments(8, 12);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], Segment { file: 3, file_offset: 0, buf_offset: 8, len: 4, padding: false });
        assert_eq!(
            l.segments(32, 4),
            vec![Segment { file: 3, file_offset: 16, buf_offset: 0, len: 4, padding: false }]
        );
        assert_eq!(l.pieces_of_file(0), 0..1);
        assert_eq!(l.pieces_of_file(1), 0..0);
        assert_eq!(l.pieces_of_file(3), 1..3);
        assert_eq!(l.piece_count(), 3);
        assert_eq!(l.pieces_in(16, 16), (1..2, 1..2));
        assert_eq!(l.pieces_in(8, 16), (0..2, 1..1));
        assert_eq!(l.pieces_in(8, 28), (0..3, 1..3), "the short last piece is whole at the end");
        assert_eq!(l.pieces_in(32, 2), (2..3, 2..2));
    }

    #[test]
    fn segments_always_tile_the_range() {
        // Pseudo-random layouts: segments are contiguous, in order, cover the range.
        let mut seed = 1u64;
        let mut next = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 33) % m
        };
        for _ in 0..500 {
            let files: Vec<(u64, bool)> = (0..1 + next(8)).map(|_| (next(40), next(5) == 0)).collect();
            let total: u64 = files.iter().map(|f| f.0).sum();
            if total == 0 {
                continue;
            }
            let l = Layout::from_parts(&files, 1 + next(20));
            let off = next(total);
            let len = 1 + next(total - off) as usize;
            let segs = l.segments(off, len);
            let mut expect = 0usize;
            for s in &segs {
                assert_eq!(s.buf_offset, expect);
                assert!(s.len > 0);
                assert!(s.file_offset + s.len as u64 <= files[s.file].0);
                expect += s.len;
            }
            assert_eq!(expect, len);
        }
    }

    #[test]
    fn files_over_four_gib() {
        let big = 5u64 << 30;
        let l = Layout::from_parts(&[(big, false), (100, false)], 1 << 20);
        let s = l.segments(big - 10, 20);
        assert_eq!(s[0].file_offset, big - 10);
        assert_eq!(s[1], Segment { file: 1, file_offset: 0, buf_offset: 10, len: 10, padding: false });
    }
}
