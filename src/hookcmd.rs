//! What a hook command may be: the events a hook is attached to, the
//! placeholders its template may use, and the check of a configured command
//! line. Pure, and at the bottom of the crate, so the config can validate
//! `[hooks]` without the runner (`hooks/`), which builds on the config.

/// The moments a hook can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    /// A torrent or magnet was added (not restored at startup).
    Added,
    /// A download finished here.
    Complete,
    /// A seeding limit was reached.
    SeedingDone,
}

impl HookEvent {
    pub const ALL: [HookEvent; 3] = [HookEvent::Added, HookEvent::Complete, HookEvent::SeedingDone];

    /// The config key, also the hook's name in logs.
    pub fn key(self) -> &'static str {
        match self {
            HookEvent::Added => "on_added",
            HookEvent::Complete => "on_complete",
            HookEvent::SeedingDone => "on_seeding_done",
        }
    }

    /// The key in the global section, as errors name it.
    pub fn global_key(self) -> &'static str {
        match self {
            HookEvent::Added => "hooks.on_added",
            HookEvent::Complete => "hooks.on_complete",
            HookEvent::SeedingDone => "hooks.on_seeding_done",
        }
    }

    /// `DROPSEED_EVENT`.
    pub fn env_value(self) -> &'static str {
        match self {
            HookEvent::Added => "added",
            HookEvent::Complete => "complete",
            HookEvent::SeedingDone => "seeding_done",
        }
    }
}

/// The placeholders a template may use, without their braces.
pub const PLACEHOLDERS: [&str; 5] = ["hash", "name", "path", "category", "size"];

/// Checks a configured command: `[]` is no hook; otherwise the program is
/// a fixed, non-empty path (a placeholder there would let a torrent's name
/// choose what runs), no element holds a NUL byte, and every `{word}` is a
/// known placeholder (an unknown one is most likely a typo).
pub fn check_command(argv: &[String]) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Ok(());
    };
    if program.trim().is_empty() {
        return Err("the program (the first element) is empty".into());
    }
    if program.contains('{') && PLACEHOLDERS.iter().any(|p| program.contains(&format!("{{{p}}}"))) {
        return Err(format!(
            "the program {program:?} contains a placeholder; \
             placeholders go in the arguments, the program must be a fixed path"
        ));
    }
    for (i, element) in argv.iter().enumerate() {
        if element.contains('\0') {
            return Err(format!("element {} contains a NUL byte", i + 1));
        }
        if let Some(word) = unknown_placeholder(element) {
            let known: Vec<String> = PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect();
            return Err(format!("unknown placeholder {{{word}}} in {element:?} (known: {})", known.join(", ")));
        }
    }
    Ok(())
}

/// The first `{word}` (letters, digits, `_`) that is not a placeholder.
fn unknown_placeholder(element: &str) -> Option<&str> {
    let mut rest = element;
    while let Some(at) = rest.find('{') {
        rest = &rest[at + 1..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        let word = &rest[..end];
        if !word.is_empty() && rest[end..].starts_with('}') && !PLACEHOLDERS.contains(&word) {
            return Some(word);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_checked() {
        let c = |v: &[&str]| check_command(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(c(&[]).is_ok());
        assert!(c(&["/bin/notify", "{name}", "--size={size}", "{}", "a{b c}"]).is_ok());
        assert!(c(&[" "]).unwrap_err().contains("empty"));
        assert!(c(&["{path}"]).unwrap_err().contains("fixed path"));
        assert!(c(&["/bin/x", "a\0b"]).unwrap_err().contains("NUL"));
        let e = c(&["/bin/x", "{nmae}"]).unwrap_err();
        assert!(e.contains("{nmae}") && e.contains("{name}"), "{e}");
    }
}
