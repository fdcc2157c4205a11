//! Log lines in logfmt: `time=… level=info msg="…" torrent="…" hash=…`, one
//! event per line, every value that is not a bare word quoted and escaped.
//! Users tail these files and feed them to log tools (Loki, Vector, grep);
//! names from .torrent files and peers are remote input, so nothing they
//! contain (spaces, quotes, `=`, newlines, escape codes) can break a line or
//! forge a field.
//!
//! The fields of the spans an event is inside come after its own, and a key
//! the event already has is not repeated: a torrent's task runs inside a
//! span carrying `torrent` and `hash`, so every line it writes names both.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The span a torrent's or magnet's tasks run in: every line they write
/// names the torrent and its short hash. At error level, so that no level
/// filter drops it.
pub fn torrent_span(name: &str, hash: &crate::types::InfoHash) -> tracing::Span {
    tracing::error_span!("torrent", torrent = %name, hash = %hash.short())
}

/// The longest value written; longer ones end in `…`.
const MAX_VALUE_CHARS: usize = 2048;

/// Writes `key=value`, quoting the value where a bare word would not parse.
pub fn write_pair(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.extend(key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '_' }));
    out.push('=');
    write_value(out, value);
}

fn write_value(out: &mut String, value: &str) {
    let bare = !value.is_empty()
        && value.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\')
        && value.chars().count() <= MAX_VALUE_CHARS;
    if bare {
        out.push_str(value);
        return;
    }
    out.push('"');
    for (i, c) in value.chars().enumerate() {
        if i == MAX_VALUE_CHARS {
            out.push('…');
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Other control characters (terminal escapes among them), and
            // the Unicode ones that reorder or hide text.
            // `\uXXXX`, as go-logfmt (Loki) and JSON read it; every
            // character escaped here is in the BMP.
            c if c.is_control() || is_format_char(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Bidirectional marks and overrides, invisible and line-breaking
/// characters: printable, but they make a line read differently from what
/// it holds (or split it, in some viewers).
fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// An event's or span's fields, in the order written.
#[derive(Default)]
struct Fields(Vec<(&'static str, String)>);

impl Fields {
    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| *k == key)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name(), value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push((field.name(), format!("{value:?}")));
    }
}

/// Keeps each span's fields, for the lines written inside it.
pub struct SpanFields;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }
}

/// The event formatter for the log file and the console.
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let mut line = String::with_capacity(160);
        write_pair(&mut line, "time", &now_rfc3339());
        write_pair(&mut line, "level", level_name(meta.level()));
        if !meta.target().starts_with("dropseed") {
            write_pair(&mut line, "target", meta.target());
        }
        let message = fields.0.iter().position(|(k, _)| *k == "message").map(|i| fields.0.remove(i).1);
        write_pair(&mut line, "msg", message.as_deref().unwrap_or(""));
        for (k, v) in &fields.0 {
            write_pair(&mut line, k, v);
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let ext = span.extensions();
                let Some(span_fields) = ext.get::<Fields>() else { continue };
                for (k, v) in &span_fields.0 {
                    if !fields.has(k) {
                        fields.0.push((k, String::new()));
                        write_pair(&mut line, k, v);
                    }
                }
            }
        }
        writeln!(writer, "{line}")
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// UTC, to the millisecond: `2026-11-26T01:30:00.123Z`.
fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = crate::wallclock::civil_from_days(secs.div_euclid(86400));
    let t = secs.rem_euclid(86400);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", t / 3600, t % 3600 / 60, t % 60, d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &str, v: &str) -> String {
        let mut s = String::new();
        write_pair(&mut s, k, v);
        s
    }

    #[test]
    fn bare_words_stay_bare_and_everything_else_is_quoted() {
        assert_eq!(pair("hash", "0123abcd"), "hash=0123abcd");
        assert_eq!(pair("path", "/srv/a.mkv"), "path=/srv/a.mkv");
        assert_eq!(pair("torrent", "My Film (2024)"), r#"torrent="My Film (2024)""#);
        assert_eq!(pair("torrent", ""), r#"torrent="""#);
        assert_eq!(pair("torrent", "a=b"), r#"torrent="a=b""#);
        assert_eq!(pair("torrent", "été"), r#"torrent="été""#);
    }

    #[test]
    fn hostile_names_cannot_break_a_line_or_forge_a_field() {
        let evil = "x\" level=error msg=\"owned\nfake line\r\x1b[31m\\\u{202e}";
        let s = pair("torrent", evil);
        assert!(!s.contains('\n') && !s.contains('\r') && !s.contains('\x1b') && !s.contains('\u{202e}'));
        assert_eq!(s, r#"torrent="x\" level=error msg=\"owned\nfake line\r\u001b[31m\\\u202e""#);
        assert_eq!(pair("t", "a\u{2028}b"), r#"t="a\u2028b""#);
    }

    #[test]
    fn keys_are_words_and_long_values_are_cut() {
        assert_eq!(pair("a key", "v"), "a_key=v");
        let long = "y".repeat(MAX_VALUE_CHARS + 10);
        let s = pair("k", &long);
        assert!(s.ends_with("…\"") && s.chars().count() < MAX_VALUE_CHARS + 10);
    }

    #[test]
    fn time_is_rfc3339_utc() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
