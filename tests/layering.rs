//! The module layering (docs/architecture.md, "Layering"), checked from the
//! source text: no two top-level modules of `src/` import each other, no
//! longer circle either, and the bottom modules import nothing above them.
//!
//! A top-level module is `src/NAME.rs` or the folder `src/NAME/`. A file
//! imports module `NAME` when its code names a `crate::NAME` path (in a
//! `use` line, grouped as `use crate::{NAME::...}`, or inline). Comments and
//! `#[cfg(test)]` modules are not counted: a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules at the bottom: they import only each other (and no other
/// module of the crate), so anything may use them.
const BOTTOM: &[&str] = &["bencode", "compact", "fsutil", "hookcmd", "locks", "types", "wallclock"];

/// Where one module names another: (importing module, imported module) to
/// the places ("src/file.rs:line") that do.
type Imports = BTreeMap<(String, String), Vec<String>>;

#[test]
fn no_two_modules_import_each_other() {
    let imports = crate_imports();
    let circles: Vec<String> = imports
        .keys()
        .filter(|(a, b)| a < b && imports.contains_key(&(b.clone(), a.clone())))
        .map(|(a, b)| {
            let ab = &imports[&(a.clone(), b.clone())];
            let ba = &imports[&(b.clone(), a.clone())];
            format!("{a} <-> {b}: {a} imports {b} at {}; {b} imports {a} at {}", ab.join(", "), ba.join(", "))
        })
        .collect();
    assert!(circles.is_empty(), "import circles between modules:\n{}", circles.join("\n"));
}

/// Longer circles too (a imports b, b imports c, c imports a): the modules
/// stand in layers, each importing only modules below it.
#[test]
fn no_circle_of_any_length() {
    let imports = crate_imports();
    let mut below: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in imports.keys() {
        below.entry(a.as_str()).or_default().push(b.as_str());
    }
    let mut done = BTreeSet::new();
    for start in below.keys() {
        let mut path = Vec::new();
        if let Some(circle) = find_circle(start, &below, &mut path, &mut done) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
}

/// Depth first from `at`: the first circle met, as the modules along it.
fn find_circle<'a>(
    at: &'a str,
    below: &BTreeMap<&'a str, Vec<&'a str>>,
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<Vec<&'a str>> {
    if let Some(i) = path.iter().position(|m| *m == at) {
        let mut circle = path[i..].to_vec();
        circle.push(at);
        return Some(circle);
    }
    if done.contains(at) {
        return None;
    }
    path.push(at);
    for next in below.get(at).into_iter().flatten() {
        if let Some(circle) = find_circle(next, below, path, done) {
            return Some(circle);
        }
    }
    path.pop();
    done.insert(at);
    None
}

#[test]
fn bottom_modules_import_only_the_bottom() {
    let imports = crate_imports();
    for name in BOTTOM {
        let exists = Path::new("src").join(format!("{name}.rs")).is_file() || Path::new("src").join(name).is_dir();
        assert!(exists, "the bottom module {name} listed here is not in src/");
    }
    let upward: Vec<String> = imports
        .iter()
        .filter(|((a, b), _)| BOTTOM.contains(&a.as_str()) && !BOTTOM.contains(&b.as_str()))
        .map(|((a, b), at)| format!("{a} imports {b} at {}", at.join(", ")))
        .collect();
    assert!(upward.is_empty(), "bottom modules importing upward:\n{}", upward.join("\n"));
}

/// The scanner itself: a scanner that found nothing would pass everything.
#[test]
fn the_scanner_sees_every_form_of_import() {
    let text = "\
use crate::alpha::Thing;
use crate::{beta::x, gamma, delta::{self, y}};
use crate::{
    kappa::{self, z},
    lambda,
};
fn f() { crate::epsilon::call(); } // crate::zeta in a comment
/// crate::eta in a doc comment
#[cfg(test)]
mod tests {
    use crate::theta::Helper;
}
fn g() -> crate::iota::T { todo!() }
";
    let named: BTreeSet<String> = named_modules(text).into_iter().map(|(m, _)| m).collect();
    let want: BTreeSet<String> = ["alpha", "beta", "gamma", "delta", "kappa", "lambda", "epsilon", "iota"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(named, want);

    let imports = crate_imports();
    assert!(
        imports.contains_key(&("session".to_string(), "torrent".to_string())),
        "the scan of src/ found no session -> torrent import: {:?}",
        imports.keys().collect::<Vec<_>>()
    );
}

/// Every import between two different top-level modules of `src/`.
fn crate_imports() -> Imports {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = top_level_modules(&src);
    let mut imports = Imports::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        let Some(from) = module_of(rel) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        for (to, line) in named_modules(&text) {
            if to != from && modules.contains(&to) {
                let at = format!("src/{}:{line}", rel.display());
                let places = imports.entry((from.clone(), to)).or_default();
                if !places.contains(&at) {
                    places.push(at);
                }
            }
        }
    }
    imports
}

/// The top-level module a file belongs to; none for the crate roots.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src).unwrap().filter_map(|e| module_of(Path::new(&e.unwrap().file_name()))).collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The first segment of every `crate::` path in `text`, with its line
/// number, outside comments and `#[cfg(test)]` modules.
fn named_modules(text: &str) -> Vec<(String, usize)> {
    let code = code_only(text);
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            found.extend(group_heads(group).into_iter().map(|m| (m, line_of(at))));
        } else if !ident(rest).is_empty() {
            found.push((ident(rest).to_string(), line_of(at)));
        }
    }
    found
}

/// `text` with comments and `#[cfg(test)]` modules blanked, lines kept in
/// place.
fn code_only(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            code.push('\n');
            if let Some(next) = lines.next() {
                code.push('\n');
                code.extend(std::iter::repeat_n('\n', skip_test_module(next, &mut lines)));
            }
            continue;
        }
        code.push_str(line.split("//").next().unwrap());
        code.push('\n');
    }
    code
}

/// After `#[cfg(test)]`: when `next` opens an inline module, skips to the
/// line closing it (rustfmt puts it at the same indent); answers how many
/// lines it skipped.
fn skip_test_module<'a>(next: &str, lines: &mut impl Iterator<Item = &'a str>) -> usize {
    let trimmed = next.trim_start();
    let opens_module =
        (trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ")) && trimmed.trim_end().ends_with('{');
    if !opens_module {
        return 0;
    }
    let close = format!("{}}}", &next[..next.len() - trimmed.len()]);
    let mut skipped = 0;
    for line in lines.by_ref() {
        skipped += 1;
        if line.trim_end() == close {
            break;
        }
    }
    skipped
}

/// The first identifier of each item of a `{a::x, b, c::{y, z}}` group,
/// on one line or several (`group` starts after the opening brace).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expect_head = true,
            c if expect_head && depth == 0 && (c.is_alphabetic() || c == '_') => {
                heads.push(ident(&group[at..]).to_string());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads.retain(|h| h != "self");
    heads
}

fn ident(text: &str) -> &str {
    let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(text.len());
    &text[..end]
}
