//! A validating bencode scanner that finds byte spans without building values.
//!
//! serde_bencode decodes values, but the info hash must be the SHA-1 of the
//! `info` dictionary's bytes exactly as they stand in the file, and a hostile
//! file must not drive a recursive decoder into a stack overflow. This module
//! walks the raw bytes once, enforces a nesting limit, and reports where a
//! top-level key's value starts and ends.

use std::ops::Range;

/// Deepest nesting accepted anywhere (lists and dictionaries).
pub const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("bencode ends early at byte {0}")]
    Truncated(usize),
    #[error("bencode is invalid at byte {0}: {1}")]
    Invalid(usize, &'static str),
    #[error("bencode nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Returns the end offset of the value starting at `pos`.
pub fn skip_value(buf: &[u8], pos: usize) -> Result<usize, ScanError> {
    // An explicit stack instead of recursion: depth is data-controlled.
    let mut depth = 0usize;
    let mut i = pos;
    loop {
        let c = *buf.get(i).ok_or(ScanError::Truncated(i))?;
        match c {
            b'i' => {
                let end = find(buf, i + 1, b'e')?;
                let digits = &buf[i + 1..end];
                let body = digits.strip_prefix(b"-").unwrap_or(digits);
                if body.is_empty()
                    || !body.iter().all(u8::is_ascii_digit)
                    || (body.len() > 1 && body[0] == b'0')
                    || (digits[0] == b'-' && body == b"0")
                {
                    return Err(ScanError::Invalid(i, "malformed integer"));
                }
                i = end + 1;
            }
            b'0'..=b'9' => i = skip_string(buf, i)?,
            b'l' | b'd' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ScanError::TooDeep);
                }
                i += 1;
                continue;
            }
            b'e' if depth > 0 => {
                depth -= 1;
                i += 1;
            }
            _ => return Err(ScanError::Invalid(i, "unexpected byte")),
        }
        if depth == 0 {
            return Ok(i);
        }
    }
}

fn find(buf: &[u8], from: usize, byte: u8) -> Result<usize, ScanError> {
    buf[from.min(buf.len())..].iter().position(|&b| b == byte).map(|p| from + p).ok_or(ScanError::Truncated(buf.len()))
}

/// Skips a `len:bytes` string starting at `pos` and returns its end.
fn skip_string(buf: &[u8], pos: usize) -> Result<usize, ScanError> {
    let colon = find(buf, pos, b':')?;
    let digits = &buf[pos..colon];
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ScanError::Invalid(pos, "malformed string length"));
    }
    // Parsed as u64 (12 digits always fit), then bounded by the input, so a
    // huge length cannot overflow `usize` on a 32-bit target.
    let len = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let left = (buf.len() - colon - 1) as u64;
    if len > left {
        return Err(ScanError::Truncated(buf.len()));
    }
    Ok(colon + 1 + len as usize)
}

/// Validates that `buf` is exactly one dictionary and returns the span of the
/// value stored under `key` at its top level, if present.
pub fn top_level_value(buf: &[u8], key: &[u8]) -> Result<Option<Range<usize>>, ScanError> {
    if buf.first() != Some(&b'd') {
        return Err(ScanError::Invalid(0, "top level is not a dictionary"));
    }
    let end = skip_value(buf, 0)?;
    if end != buf.len() {
        return Err(ScanError::Invalid(end, "trailing bytes after the dictionary"));
    }
    let mut i = 1;
    let mut found = None;
    while buf[i] != b'e' {
        let key_end = skip_string(buf, i)?;
        let key_start = buf[i..key_end].iter().position(|&b| b == b':').unwrap() + i + 1;
        let value_end = skip_value(buf, key_end)?;
        if &buf[key_start..key_end] == key {
            found = Some(key_end..value_end);
        }
        i = value_end;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_info_span_exactly() {
        let doc = b"d8:announce3:url4:infod4:name1:x6:lengthi5ee3:zzzi1ee";
        let span = top_level_value(doc, b"info").unwrap().unwrap();
        assert_eq!(&doc[span], b"d4:name1:x6:lengthi5ee");
        assert_eq!(top_level_value(doc, b"nope").unwrap(), None);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b"d4:infoi01ee"[..],
            b"d4:infoi-0ee",
            b"d4:info5:abce",
            b"d4:infoe",
            b"l4:infoe",
            b"d4:infoie",
            b"d4:infoi1ee trailing",
            b"d99999999999999:x",
            b"",
        ] {
            assert!(top_level_value(bad, b"info").is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut deep = b"d4:info".to_vec();
        deep.extend(std::iter::repeat_n(b'l', 10_000));
        deep.extend(std::iter::repeat_n(b'e', 10_000));
        deep.push(b'e');
        assert_eq!(top_level_value(&deep, b"info"), Err(ScanError::TooDeep));
        let mut ok = b"d4:info".to_vec();
        ok.extend(std::iter::repeat_n(b'l', 90));
        ok.extend(std::iter::repeat_n(b'e', 90));
        ok.push(b'e');
        assert!(top_level_value(&ok, b"info").unwrap().is_some());
    }

    #[test]
    fn junk_never_panics() {
        let mut seed = 7u32;
        for len in 0..300 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1103515245).wrapping_add(12345);
                    b"dlie0123456789:x-"[(seed >> 16) as usize % 17]
                })
                .collect();
            let _ = top_level_value(&junk, b"info");
        }
    }
}
