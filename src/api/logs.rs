//! `log/main`: the daemon's recent log lines in qBittorrent's shape, for the
//! web UIs' log view and for tools that read it after a failure. The lines
//! come from the bounded in-memory copy `dropseed top` reads
//! ([`crate::logring`]); the log file stays the full record.

use super::{Api, Params};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Api>> {
    Router::new().route("/log/main", get(main_log).post(main_log))
}

/// qBittorrent's message types (bit flags).
const NORMAL: u8 = 1;
const INFO: u8 = 2;
const WARNING: u8 = 4;
const CRITICAL: u8 = 8;

#[derive(Debug, Serialize, PartialEq)]
pub struct LogEntry {
    id: u64,
    message: String,
    /// Seconds since the epoch, as qBittorrent sends them.
    timestamp: i64,
    #[serde(rename = "type")]
    kind: u8,
}

async fn main_log(State(_api): State<Arc<Api>>, p: Params) -> Json<Vec<LogEntry>> {
    let wanted = |key: &str| !matches!(p.get(key), "false" | "0");
    let mask = [(NORMAL, "normal"), (INFO, "info"), (WARNING, "warning"), (CRITICAL, "critical")]
        .iter()
        .filter(|(_, key)| wanted(key))
        .fold(0, |m, (bit, _)| m | bit);
    // qBittorrent's ids start at 0 and "-1" asks for everything; ours are
    // the ring's line numbers, from 1.
    let after = p.get("last_known_id").parse::<i64>().map_or(0, |id| id.max(0) as u64);
    let (lines, newest) = crate::logring::since(after, crate::logring::CAPACITY);
    Json(entries(&lines, newest, mask))
}

/// The lines (the newest numbered `newest`) as entries of the types in `mask`.
pub fn entries(lines: &[String], newest: u64, mask: u8) -> Vec<LogEntry> {
    let first = newest + 1 - lines.len() as u64;
    lines.iter().enumerate().map(|(i, line)| entry(first + i as u64, line)).filter(|e| e.kind & mask != 0).collect()
}

/// One logfmt line (`time=... level=... msg=...`): its level as a type,
/// its time, and the rest as the message.
fn entry(id: u64, line: &str) -> LogEntry {
    let (time, rest) = leading(line, "time=");
    let (level, message) = leading(rest, "level=");
    let kind = match level {
        Some("error") => CRITICAL,
        Some("warn") => WARNING,
        Some("info") => INFO,
        _ => NORMAL,
    };
    LogEntry { id, message: message.to_string(), timestamp: time.and_then(unix_seconds).unwrap_or(0), kind }
}

/// `key=value rest` split into the value and the rest, if `line` starts so.
fn leading<'a>(line: &'a str, key: &str) -> (Option<&'a str>, &'a str) {
    match line.strip_prefix(key) {
        Some(after) => match after.split_once(' ') {
            Some((value, rest)) => (Some(value), rest),
            None => (Some(after), ""),
        },
        None => (None, line),
    }
}

/// `2026-12-07T01:54:06.553Z` as seconds since the epoch.
fn unix_seconds(time: &str) -> Option<i64> {
    let (date, clock) = time.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|v| v.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = clock.splitn(3, ':');
    let (h, min) = (hms.next()?.parse::<i64>().ok()?, hms.next()?.parse::<i64>().ok()?);
    let s = hms.next()?.split('.').next()?.parse::<i64>().ok()?;
    Some(days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of
/// `wallclock::civil_from_days`): years counted from March, so the leap
/// day ends a year.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_qbittorrent_entries() {
        let lines = vec![
            "time=2026-12-07T01:54:06.553Z level=info msg=\"logging to /x\" log_dir=/x".to_string(),
            "time=2026-12-07T01:54:07.000Z level=warn msg=\"tracker  failed\"".to_string(),
            "time=2026-12-07T01:54:08.000Z level=error msg=boom".to_string(),
            "time=2026-12-07T01:54:09.000Z level=debug msg=quiet".to_string(),
        ];
        let all = entries(&lines, 41, NORMAL | INFO | WARNING | CRITICAL);
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [38, 39, 40, 41]);
        assert_eq!(all.iter().map(|e| e.kind).collect::<Vec<_>>(), [INFO, WARNING, CRITICAL, NORMAL]);
        assert_eq!(all[0].message, "msg=\"logging to /x\" log_dir=/x");
        assert_eq!(all[1].message, "msg=\"tracker  failed\"", "the message as logged");
        assert_eq!(all[0].timestamp, 1_796_608_446, "2026-12-07T01:54:06Z");
        let warnings = entries(&lines, 41, WARNING | CRITICAL);
        assert_eq!(warnings.iter().map(|e| e.id).collect::<Vec<_>>(), [39, 40]);
    }

    #[test]
    fn dates_count_from_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for days in [-1, 0, 59, 60, 11_016, 20_000, 20_794] {
            let (y, m, d) = crate::wallclock::civil_from_days(days);
            assert_eq!(days_from_civil(y, m as i64, d as i64), days);
        }
        assert_eq!(unix_seconds("1970-01-02T00:00:01.5Z"), Some(86_401));
        assert_eq!(unix_seconds("garbage"), None);
    }
}
