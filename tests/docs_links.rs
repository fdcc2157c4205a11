//! Every relative link in the documentation resolves: `[..](path)`,
//! `[..](path#anchor)`, `[..](#anchor)` and images, in every `*.md` of the
//! repository root and `docs/`. The file must exist, and an anchor must be
//! the slug of a heading of that file under GitHub's rules (lowercase,
//! spaces to `-`, punctuation other than `-` and `_` removed, a repeated
//! heading's slug suffixed `-1`, `-2`...). No network: links with a scheme
//! (`https:`, `mailto:`) are not checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The Markdown files checked: the root's and everything under `docs/`.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = md_in(root);
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn md_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().map(|e| e.path()).filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "md")).collect()
}

/// The lines of a Markdown text outside fenced code blocks, numbered from
/// 1, with HTML comments blanked out (GitHub renders neither's links).
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut fence: Option<&str> = None;
    let mut in_comment = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = if in_comment {
            None
        } else if t.starts_with("```") {
            Some("```")
        } else if t.starts_with("~~~") {
            Some("~~~")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, without_comments(line, &mut in_comment))),
            _ => {}
        }
    }
    out
}

/// A line without the parts inside `<!-- -->`; `open` carries a comment
/// left open across lines.
fn without_comments(line: &str, open: &mut bool) -> String {
    let mut out = String::new();
    let mut rest = line;
    loop {
        if *open {
            match rest.find("-->") {
                Some(end) => {
                    *open = false;
                    rest = &rest[end + 3..];
                }
                None => return out,
            }
        } else {
            match rest.find("<!--") {
                Some(start) => {
                    out.push_str(&rest[..start]);
                    *open = true;
                    rest = &rest[start + 4..];
                }
                None => {
                    out.push_str(rest);
                    return out;
                }
            }
        }
    }
}

/// A line with its inline code spans blanked out (links inside them are text).
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else {
            out.push(if in_code { ' ' } else { c });
        }
    }
    out
}

/// The targets of the inline links (and images) on one line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        // The target ends at the matching ')' (nested parentheses allowed).
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = i;
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let inner = after[..end].trim();
        // An optional title follows the target after a space.
        let target = inner.split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        targets.push(target.to_string());
        rest = &after[end.min(after.len())..];
    }
    targets
}

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    // Links in a heading show their text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](").and_then(|m| rest[open + m..].find(')').map(|c| (m, open + m + c))) {
            Some((mid, close)) => {
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..open + mid]);
                rest = &rest[close + 1..];
            }
            None => break,
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text's headings, duplicates numbered.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let t = line.trim_start();
        let hashes = t.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !t[hashes..].starts_with(' ') {
            continue;
        }
        let title = t[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(title);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

fn has_scheme(target: &str) -> bool {
    let Some((scheme, _)) = target.split_once(':') else { return false };
    !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// Every broken relative link under `root`, as "file:line: target: why".
fn broken_links(root: &Path) -> Vec<String> {
    let mut broken = Vec::new();
    for file in markdown_files(root) {
        let text = std::fs::read_to_string(&file).unwrap();
        let shown = file.strip_prefix(root).unwrap_or(&file).display().to_string();
        for (n, line) in prose_lines(&text) {
            for target in link_targets(&line) {
                if let Some(why) = check_target(&file, &text, &target) {
                    broken.push(format!("{shown}:{n}: ({target}): {why}"));
                }
            }
        }
    }
    broken
}

/// Why a link target from `file` (whose text is `text`) does not resolve.
fn check_target(file: &Path, text: &str, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("empty link".into());
    }
    if has_scheme(target) {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let linked_text;
    let (dest, dest_text) = if path.is_empty() {
        (file.to_path_buf(), text)
    } else {
        let dest = file.parent().unwrap().join(path);
        if !dest.exists() {
            return Some(format!("{} does not exist", dest.display()));
        }
        if anchor.is_none() || dest.extension().is_none_or(|x| x != "md") {
            return None;
        }
        linked_text = std::fs::read_to_string(&dest).unwrap();
        (dest, linked_text.as_str())
    };
    let anchor = anchor?;
    if anchors(dest_text).iter().any(|a| a == anchor) {
        None
    } else {
        Some(format!("no heading in {} has the anchor #{anchor}", dest.display()))
    }
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = markdown_files(root);
    assert!(files.iter().any(|f| f.ends_with("README.md")), "README.md not found among {files:?}");
    let broken = broken_links(root);
    assert!(broken.is_empty(), "{} broken link(s):\n{}", broken.len(), broken.join("\n"));
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(slug("Security: what dropseed defends against"), "security-what-dropseed-defends-against");
    assert_eq!(slug("Protocol encryption (MSE/PE)"), "protocol-encryption-msepe");
    assert_eq!(slug("One-shot downloads: dropseed download"), "one-shot-downloads-dropseed-download");
    assert_eq!(slug("`dropseed top`"), "dropseed-top");
    assert_eq!(slug("snake_case and A-B"), "snake_case-and-a-b");
    assert_eq!(slug("See [the docs](docs/x.md) now"), "see-the-docs-now");
    assert_eq!(anchors("# A\n## A\n```\n# A\n```\n### A\n"), ["a", "a-1", "a-2"]);
}

#[test]
fn link_targets_skip_code_and_keep_images() {
    assert_eq!(link_targets("see [a](x.md#b) and ![pic](images/p.png \"t\")"), ["x.md#b", "images/p.png"]);
    assert!(link_targets("`[a](nowhere.md)` is code").is_empty());
    assert!(prose_lines("```\n[a](nowhere.md)\n```\n").is_empty());
    let lines: Vec<String> =
        prose_lines("a <!-- [x](x.md) --> b\n<!--\n![p](p.png)\n--> [c](c.md)\n").into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, ["a  b", "", "", " [c](c.md)"]);
}

/// The checker itself: a tree with one good and three broken links reports
/// exactly the three.
#[test]
fn broken_links_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("docs")).unwrap();
    std::fs::write(root.join("docs/a.md"), "# Alpha\n## Beta: two\n").unwrap();
    std::fs::write(
        root.join("README.md"),
        "# Top\n[ok](docs/a.md#beta-two) [ok](#top) [web](https://x.example/#y)\n\
         [gone](docs/nope.md) [bad](docs/a.md#gamma) ![img](docs/images/none.png)\n",
    )
    .unwrap();
    let broken = broken_links(root);
    assert_eq!(broken.len(), 3, "{broken:?}");
    assert!(broken[0].contains("docs/nope.md") && broken[1].contains("#gamma") && broken[2].contains("none.png"));
}
