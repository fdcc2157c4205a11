//! A hook's command line, built from its template: placeholders replaced in
//! place, and the same values as environment variables. Pure (no I/O), so
//! the rules that keep a hostile torrent name from becoming code are tested
//! here, without processes.
//!
//! Nothing here goes near a shell. Each element of the template becomes
//! exactly one argument whatever the values hold (spaces, quotes, `$(...)`,
//! newlines, a leading `-`), and a substituted value is never scanned again,
//! so a torrent named `{path}` stays `{path}`.

use crate::hookcmd::{HookEvent, PLACEHOLDERS};
use std::ffi::OsString;

/// What a hook is told about its torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The info hash, 40 lowercase hex digits.
    pub hash: String,
    pub name: String,
    /// The torrent's top-level item on disk (its single file or its root
    /// folder); empty for a magnet whose metadata has not arrived.
    pub path: OsString,
    /// The torrent's category (its watch subfolder); empty for none.
    pub category: String,
    /// Total bytes; `None` (empty) for a magnet without metadata.
    pub size: Option<u64>,
}

impl Facts {
    fn value(&self, placeholder: &str) -> OsString {
        match placeholder {
            "hash" => self.hash.clone().into(),
            "name" => self.name.clone().into(),
            "path" => self.path.clone(),
            "category" => self.category.clone().into(),
            "size" => self.size.map(|s| s.to_string()).unwrap_or_default().into(),
            other => unreachable!("not a placeholder: {other}"),
        }
    }
}

/// The placeholder `text` starts with (`{name}` gives `name`), if any.
fn placeholder_at(text: &str) -> Option<&'static str> {
    let inner = text.strip_prefix('{')?;
    PLACEHOLDERS.into_iter().find(|p| inner.strip_prefix(p).is_some_and(|rest| rest.starts_with('}')))
}

/// `template` with every placeholder replaced by its value. Other braces
/// are kept as they are.
pub fn substitute(template: &str, facts: &Facts) -> OsString {
    let mut out = OsString::new();
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push(&rest[..at]);
        rest = &rest[at..];
        match placeholder_at(rest) {
            Some(p) => {
                out.push(facts.value(p));
                rest = &rest[p.len() + 2..];
            }
            None => {
                out.push("{");
                rest = &rest[1..];
            }
        }
    }
    out.push(rest);
    out
}

/// The argument vector: one argument per template element.
pub fn argv(template: &[String], facts: &Facts) -> Vec<OsString> {
    template.iter().map(|t| substitute(t, facts)).collect()
}

/// The environment a hook gets on top of dropseed's own.
pub fn env(event: HookEvent, facts: &Facts) -> Vec<(&'static str, OsString)> {
    vec![
        ("DROPSEED_EVENT", event.env_value().into()),
        ("DROPSEED_HASH", facts.value("hash")),
        ("DROPSEED_NAME", facts.value("name")),
        ("DROPSEED_PATH", facts.value("path")),
        ("DROPSEED_CATEGORY", facts.value("category")),
        ("DROPSEED_SIZE", facts.value("size")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str) -> Facts {
        Facts {
            hash: "0123456789abcdef0123456789abcdef01234567".into(),
            name: name.into(),
            path: format!("/data/downloads/{name}").into(),
            category: String::new(),
            size: Some(12345),
        }
    }

    fn strings(template: &[&str], f: &Facts) -> Vec<String> {
        let t: Vec<String> = template.iter().map(|s| s.to_string()).collect();
        argv(&t, f).into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn each_element_is_one_argument_whatever_the_name_holds() {
        for name in [
            "two words",
            "it's \"quoted\"",
            "$(touch x)",
            "`touch y`; rm -rf ~",
            "line one\nline two",
            "-rf",
            "--name=evil",
            "* ? [a]",
            "",
        ] {
            let args = strings(&["/bin/notify", "{name}", "--name={name}", "{path}"], &facts(name));
            assert_eq!(args.len(), 4, "{name:?}: {args:?}");
            assert_eq!(args[1], name);
            assert_eq!(args[2], format!("--name={name}"));
            assert_eq!(args[3], format!("/data/downloads/{name}"));
        }
    }

    #[test]
    fn a_value_is_never_scanned_again() {
        let f = facts("{path} and {hash}");
        assert_eq!(strings(&["{name}"], &f), ["{path} and {hash}"]);
        assert_eq!(strings(&["{name}{size}"], &f), ["{path} and {hash}12345"]);
        // A value that forms a placeholder with the text after it neither.
        let f = facts("{pa");
        assert_eq!(strings(&["{name}th}"], &f), ["{path}"]);
    }

    #[test]
    fn every_placeholder_in_place_and_other_braces_kept() {
        let mut f = facts("x");
        f.category = "tv".into();
        assert_eq!(
            strings(&["h={hash} n={name} p={path} c={category} s={size}", "{}", "{nope", "{{name}}", "}{"], &f),
            [
                "h=0123456789abcdef0123456789abcdef01234567 n=x p=/data/downloads/x c=tv s=12345",
                "{}",
                "{nope",
                "{x}",
                "}{"
            ]
        );
    }

    #[test]
    fn a_magnet_without_metadata_has_empty_size_and_path() {
        let f = Facts { path: OsString::new(), size: None, ..facts("m") };
        assert_eq!(strings(&["[{size}]", "[{path}]"], &f), ["[]", "[]"]);
        let env = env(HookEvent::Added, &f);
        assert!(env.contains(&("DROPSEED_SIZE", OsString::new())));
    }

    #[test]
    fn the_environment_carries_the_same_values() {
        let f = facts("a $(b)\nc");
        let env = env(HookEvent::SeedingDone, &f);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone().into_string().unwrap());
        assert_eq!(get("DROPSEED_EVENT").unwrap(), "seeding_done");
        assert_eq!(get("DROPSEED_NAME").unwrap(), "a $(b)\nc");
        assert_eq!(get("DROPSEED_PATH").unwrap(), "/data/downloads/a $(b)\nc");
        assert_eq!(get("DROPSEED_HASH").unwrap(), f.hash);
        assert_eq!(get("DROPSEED_SIZE").unwrap(), "12345");
        assert_eq!(get("DROPSEED_CATEGORY").unwrap(), "");
    }
}
