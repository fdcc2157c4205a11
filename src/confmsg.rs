//! Config errors in the user's words. The TOML reader says "invalid value:
//! integer `70000`, expected u16" and points at a column; the user wants to
//! know which setting is wrong and what it takes: "line 2: [network]
//! listen_port: must be a whole number from 0 to 65535, not 70000".

/// One sentence for a TOML or serde error in `text`.
pub fn explain(text: &str, err: &toml::de::Error) -> String {
    let place = err.span().map(|span| locate(text, span.start)).unwrap_or_default();
    format!("{place}{}", translate(err.message()))
}

/// "line N: [section] key: " for the byte offset `at`.
fn locate(text: &str, at: usize) -> String {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let section = before
        .lines()
        .rev()
        // A header may carry a comment: `[network]  # peers`.
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| format!("{l} "))
        .unwrap_or_default();
    let key = line.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.is_empty() && !k.starts_with('['));
    match key {
        Some(key) => format!("line {line_no}: {section}{key}: "),
        None => format!("line {line_no}: "),
    }
}

/// serde's wording of a mismatch to what the setting takes.
fn translate(message: &str) -> String {
    let found = found_value(message);
    let not = |what: &str| match &found {
        Some(v) => format!("{what}, not {v}"),
        None => what.to_string(),
    };
    let expected = message.rsplit_once("expected ").map(|(_, e)| e.trim());
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, known) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let known = known.trim_start_matches("one of ").replace('`', "");
        return format!("unknown setting {}; the settings here are: {known}", field.replace('`', "'"));
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (value, known) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let known = known.trim_start_matches("one of ").replace('`', "");
        return format!("{} is not one of: {known}", value.replace('`', "'"));
    }
    if message.contains("did not match any variant of untagged enum") {
        return "must be a whole number or a string with a unit, e.g. 500000 or \"10MB/s\" for a size, \
                3600 or \"1.5d\" for a time"
            .into();
    }
    match expected {
        Some("u16") => not("must be a whole number from 0 to 65535"),
        Some("u32" | "u64" | "usize") => not("must be a whole number, 0 or more"),
        Some("f64" | "f32") => not("must be a number (e.g. 2 or 1.5), without quotes"),
        Some("a boolean") => not("must be true or false, without quotes"),
        Some("a string") => not("must be text in quotes"),
        Some("a sequence") => not("must be a list in brackets, e.g. [\"/usr/local/bin/notify\", \"{name}\"]"),
        _ => message.trim().to_string(),
    }
}

/// The value serde quotes in "invalid value: integer `70000`" or
/// "invalid type: string \"x\"".
fn found_value(message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid value: ").or_else(|| message.strip_prefix("invalid type: "))?;
    let (kind, after) = rest.split_once(", expected").map(|(found, _)| found).unwrap_or(rest).split_once(' ')?;
    let value = after.trim().trim_matches('`');
    Some(match kind {
        "string" => format!("the text {value}"),
        _ => value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    /// What `Config::parse` says about `text`.
    fn said(text: &str) -> String {
        crate::config::Config::parse(text, std::path::Path::new("c.toml")).unwrap_err().to_string()
    }

    #[test]
    fn wrong_types_name_the_setting_and_what_it_takes() {
        assert_eq!(
            said("[network]\nlisten_port = 70000\n"),
            "c.toml: line 2: [network] listen_port: must be a whole number from 0 to 65535, not 70000"
        );
        assert_eq!(
            said("[network]\nlisten_port = \"x\"\n"),
            "c.toml: line 2: [network] listen_port: must be a whole number from 0 to 65535, not the text \"x\""
        );
        assert!(said("[dht]\nenabled = \"yes\"\n")
            .ends_with("[dht] enabled: must be true or false, without quotes, not the text \"yes\""));
        assert!(said("[seeding]\nratio_limit = \"2\"\n").contains("[seeding] ratio_limit: must be a number"));
        assert!(said("[limits]\ndownload_rate = 1.5\n")
            .contains("[limits] download_rate: must be a whole number or a string with a unit"));
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let s = said("[network]\nlisten_prot = 5\n");
        assert!(
            s.contains("line 2: [network] listen_prot: unknown setting 'listen_prot'") && s.contains("listen_port"),
            "{s}"
        );
        let s = said("[watch]\non_added = \"move\"\n");
        assert!(s.ends_with("[watch] on_added: 'move' is not one of: rename, delete, keep"), "{s}");
        let s = said("listen_port = 5\n");
        assert!(s.contains("line 1: listen_port: unknown setting") && s.contains("network"), "{s}");
    }

    #[test]
    fn no_rust_type_names_reach_the_user() {
        for text in [
            "[network]\nlisten_port = -1\n",
            "[limits]\nmax_connections = \"many\"\n",
            "[log]\nmax_files = 1.5\n",
            "[hooks]\non_complete = \"notify.sh\"\n",
            "[storage]\npiece_buffer = true\n",
        ] {
            let s = said(text);
            for word in ["u16", "u32", "u64", "usize", "f64", "untagged", "Raw"] {
                assert!(!s.contains(word), "{text:?} gives {s:?}");
            }
        }
    }

    #[test]
    fn broken_syntax_still_says_the_line() {
        assert!(said("[network\nx=1\n").contains("line 1:"));
    }
}
