//! A strict logfmt reader for dropseed's log lines, written for the tests
//! and apart from the daemon's writer, so one cannot excuse the other.
//!
//! Grammar: `key=value` pairs separated by one space; a key is letters,
//! digits, `_` and `.`; a value is either a bare word (printable ASCII
//! without space, `"`, `=` or `\`, and not empty) or a quoted string whose
//! escapes are `\"`, `\\`, `\n`, `\r`, `\t` and `\uXXXX` (four hex digits,
//! as go-logfmt reads them), holding no raw control character.

/// One line's pairs, in order, values unescaped.
pub fn parse(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        if !pairs.is_empty() {
            rest = rest.strip_prefix(' ').ok_or("pairs must be separated by one space")?;
        }
        let eq = rest.find('=').ok_or_else(|| format!("no '=' in {rest:?}"))?;
        let key = &rest[..eq];
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(format!("bad key {key:?}"));
        }
        rest = &rest[eq + 1..];
        let (value, used) = if rest.starts_with('"') { quoted(rest)? } else { bare(rest)? };
        pairs.push((key.to_string(), value));
        rest = &rest[used..];
    }
    Ok(pairs)
}

fn bare(s: &str) -> Result<(String, usize), String> {
    let end = s.find(' ').unwrap_or(s.len());
    let word = &s[..end];
    if word.is_empty() {
        return Err("empty bare value".into());
    }
    if let Some(c) = word.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '=' | '\\')) {
        return Err(format!("{c:?} in the bare value {word:?}"));
    }
    Ok((word.to_string(), end))
}

fn quoted(s: &str) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                    let code = (hex.len() == 4).then(|| u32::from_str_radix(&hex, 16).ok()).flatten();
                    out.push(code.and_then(char::from_u32).ok_or_else(|| format!("bad \\u escape {hex:?}"))?);
                }
                other => return Err(format!("bad escape \\{other:?}")),
            },
            c if c.is_control() => return Err(format!("raw control character {c:?} in a quoted value")),
            c => out.push(c),
        }
    }
    Err("unterminated quoted value".into())
}

/// dropseed's own rules on top of the grammar: `time`, `level`, `msg`
/// first; no key twice; the torrent's name only ever under `torrent`, and
/// every line that names a torrent also gives its 8-digit short hash.
pub fn check_line(line: &str) -> Result<(), String> {
    let pairs = parse(line)?;
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let expected_start =
        if keys.get(2) == Some(&"target") { ["time", "level", "target"] } else { ["time", "level", "msg"] };
    if keys.len() < 3 || keys[..3] != expected_start {
        return Err(format!("must start with time, level, msg: {keys:?}"));
    }
    if !["error", "warn", "info", "debug", "trace"].contains(&pairs[1].1.as_str()) {
        return Err(format!("bad level {:?}", pairs[1].1));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(k) = keys.iter().find(|k| !seen.insert(**k)) {
        return Err(format!("key {k} twice"));
    }
    if keys.contains(&"name") {
        return Err("the torrent's name goes under `torrent`, not `name`".into());
    }
    if keys.contains(&"torrent") {
        let hash = pairs.iter().find(|(k, _)| k == "hash").map(|(_, v)| v.as_str());
        match hash {
            Some(h) if h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {}
            other => return Err(format!("a torrent line needs its 8-digit hash, has {other:?}")),
        }
    }
    Ok(())
}

/// Every line of `text` that breaks the rules, with why.
pub fn bad_lines(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| check_line(l).err().map(|why| format!("{why}\n    {l}"))).collect()
}
