//! Which torrent a CLI argument names. Users type what `dropseed status`
//! shows them: the short hash, the start of a name, or copy a whole one.
//!
//! A whole name or a whole 40-digit hash names its torrent. Otherwise the
//! argument may be the start of a hash (4 hex digits at least) or of a
//! name, and must fit exactly one torrent either way. Never a guess: an
//! argument that fits several torrents ("dead" starting one hash and the
//! name "Deadwood") is refused with the candidates listed, so `pause` or
//! `remove` cannot hit the wrong one.

/// The shortest hex prefix taken as a hash: shorter ones are too likely to
/// be the start of a name ("dead", "cafe" are already words).
const MIN_HASH_PREFIX: usize = 4;
use super::outcome::SessionError::{self, Ambiguous, NotFound};

/// Candidates named in an "ambiguous" error.
const MAX_SHOWN: usize = 5;

/// One torrent as the lookup sees it.
pub struct Candidate<'a> {
    pub name: &'a str,
    /// 40 lowercase hex digits.
    pub hash: &'a str,
}

/// The index in `all` of the torrent `id` names.
pub fn find(id: &str, all: &[Candidate<'_>]) -> Result<usize, SessionError> {
    let shown_id = crate::types::printable(id, 100);
    if id.is_empty() {
        return Err(NotFound("no torrent named: give a name, its start, or the hash `dropseed status` shows".into()));
    }
    let exact: Vec<usize> = matching(all, |c| c.name == id);
    if exact.len() == 1 {
        return Ok(exact[0]);
    }
    let lower = id.to_ascii_lowercase();
    let is_hash = lower.len() >= MIN_HASH_PREFIX && lower.len() <= 40 && lower.bytes().all(|b| b.is_ascii_hexdigit());
    if let [one] = matching(all, |c| lower.len() == 40 && c.hash == lower)[..] {
        return Ok(one);
    }
    if exact.len() > 1 {
        return Err(ambiguous(&shown_id, all, &exact, "give the hash"));
    }
    // Names by their start, in any case ("deadwood" finds "Deadwood S01").
    let folded = id.to_lowercase();
    let hits = matching(all, |c| (is_hash && c.hash.starts_with(&lower)) || c.name.to_lowercase().starts_with(&folded));
    match hits[..] {
        [one] => Ok(one),
        [] => Err(NotFound(format!(
            "no torrent is named '{shown_id}' or has a name or hash starting so (see `dropseed status`)"
        ))),
        _ => Err(ambiguous(&shown_id, all, &hits, "give more of the name, or more of the hash")),
    }
}

fn matching(all: &[Candidate<'_>], pred: impl Fn(&Candidate<'_>) -> bool) -> Vec<usize> {
    all.iter().enumerate().filter(|(_, c)| pred(c)).map(|(i, _)| i).collect()
}

fn ambiguous(id: &str, all: &[Candidate<'_>], hits: &[usize], hint: &str) -> SessionError {
    let mut shown: Vec<String> = hits
        .iter()
        .take(MAX_SHOWN)
        .map(|&i| format!("{} ({})", crate::types::printable(all[i].name, 80), &all[i].hash[..8]))
        .collect();
    if hits.len() > MAX_SHOWN {
        shown.push(format!("and {} more", hits.len() - MAX_SHOWN));
    }
    Ambiguous(format!("'{id}' matches {} torrents: {}; {hint}", hits.len(), shown.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123abcd00000000000000000000000000000000";
    const B: &str = "0123ffff00000000000000000000000000000000";
    const C: &str = "beef000000000000000000000000000000000000";

    fn all() -> Vec<Candidate<'static>> {
        vec![
            Candidate { name: "Film.2024.1080p", hash: A },
            Candidate { name: "Film.2024.2160p", hash: B },
            Candidate { name: "Film", hash: C },
        ]
    }

    #[test]
    fn exact_name_then_hash_then_unique_prefix() {
        let all = all();
        assert_eq!(find("Film", &all), Ok(2), "an exact name wins over being a prefix of others");
        assert_eq!(find("0123abcd", &all), Ok(0), "the short hash status shows");
        assert_eq!(find(&A.to_uppercase(), &all), Ok(0), "a full hash, any case");
        assert_eq!(find("beef", &all), Ok(2));
        assert_eq!(find("Film.2024.2", &all), Ok(1), "a unique name prefix");
    }

    #[test]
    fn what_fits_several_is_refused_with_the_candidates() {
        let all = all();
        let e = find("Film.2024", &all).unwrap_err();
        assert!(matches!(e, Ambiguous(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("matches 2 torrents") && e.contains("(0123abcd)") && e.contains("(0123ffff)"), "{e}");
        let e = find("0123", &all).unwrap_err().to_string();
        assert!(e.contains("more of the hash"), "{e}");
    }

    #[test]
    fn a_truncated_display_name_or_a_stranger_names_nothing() {
        let all = all();
        assert!(matches!(find("Film.2024.1080~", &all), Err(NotFound(_))));
        assert!(find("abc", &all).unwrap_err().to_string().contains("no torrent"), "3 hex digits are not a hash");
        assert!(find("", &all).is_err());
        assert!(!find("x\u{1b}[2J", &all).unwrap_err().to_string().contains('\u{1b}'), "no escape code in the message");
    }

    #[test]
    fn a_hash_start_that_also_starts_a_name_is_refused() {
        let dead = "dead".repeat(10);
        let all = vec![Candidate { name: "Deadwood S01", hash: A }, Candidate { name: "Other", hash: &dead }];
        let e = find("dead", &all).unwrap_err().to_string();
        assert!(e.contains("matches 2 torrents"), "{e}");
        assert_eq!(find("deadw", &all), Ok(0), "a name's start in any case");
        assert_eq!(find("deadde", &all), Ok(1));
    }

    #[test]
    fn two_torrents_of_one_name_need_the_hash() {
        let all = vec![Candidate { name: "same", hash: A }, Candidate { name: "same", hash: C }];
        assert!(find("same", &all).unwrap_err().to_string().contains("give the hash"));
        assert_eq!(find("beef", &all), Ok(1));
    }
}
