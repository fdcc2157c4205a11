//! Batched scrapes: the seeders and leechers of many torrents of one
//! tracker in one request (HTTP by the `scrape` convention with several
//! `info_hash` parameters, as BEP 48 describes; UDP by BEP 15), so that
//! `status` and the API's `num_complete` / `num_incomplete` show each whole
//! swarm between announces, at one request per [`HTTP_BATCH`] torrents
//! instead of one announce each.
//!
//! Every [`EVERY`], the torrents that announce (a tracker holds them active)
//! and whose count is older than [`FRESH_SECS`] are grouped by the scrape
//! URL of the tracker they announce to; each request takes a slot of that
//! host's announce pace ([`super::hostpace`]) first. A tracker whose announce
//! URL does not end in `announce…` has no scrape URL and is not asked.

use super::http::{self, TrackerError};
use super::pace::{AnnounceBook, Swarm};
use super::udp;
use crate::types::InfoHash;
use crate::wallclock::now_unix;
use percent_encoding::{percent_encode, NON_ALPHANUMERIC};
use serde_bencode::value::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Torrents in one HTTP scrape: about 3 KiB of query string, within what
/// trackers and their proxies accept in a request line.
pub const HTTP_BATCH: usize = 50;
/// Torrents in one UDP scrape (BEP 15: what fits in one packet).
pub const UDP_BATCH: usize = 74;
/// Time between scrape rounds.
pub const EVERY: Duration = Duration::from_secs(15 * 60);
/// A count younger than this (an announce's) is not asked for again.
pub const FRESH_SECS: u64 = 10 * 60;

/// The scrape URL of a tracker's announce URL: by the convention, the last
/// path part begins with `announce`, which `scrape` replaces (the query,
/// where a passkey may be, is kept). None when it does not: that tracker
/// has no scrape. A UDP tracker scrapes at its own address.
pub fn scrape_url(announce: &str) -> Option<String> {
    if announce.starts_with("udp://") {
        return Some(announce.to_string());
    }
    let end = announce.find(['?', '#']).unwrap_or(announce.len());
    let (path, rest) = announce.split_at(end);
    let slash = path.rfind('/')?;
    if slash < "https://".len() || !path[slash + 1..].starts_with("announce") {
        return None;
    }
    Some(format!("{}scrape{}{rest}", &path[..=slash], &path[slash + 1 + "announce".len()..]))
}

/// `base` with each hash as an `info_hash` parameter.
pub fn request_url(base: &str, hashes: &[InfoHash]) -> String {
    let mut url = base.split('#').next().unwrap_or(base).to_string();
    for (i, h) in hashes.iter().enumerate() {
        let sep = if i == 0 && !url.contains('?') { '?' } else { '&' };
        url.push_str(&format!("{sep}info_hash={}", percent_encode(&h.0, NON_ALPHANUMERIC)));
    }
    url
}

/// A scrape reply's counts (seeders, leechers) of the hashes asked for:
/// `files` maps each 20-byte info hash to its `complete` and `incomplete`.
/// Hashes not asked for are left out; a `failure reason` is an error.
pub fn parse_reply(body: &[u8], asked: &[InfoHash]) -> Result<Vec<(InfoHash, u64, u64)>, TrackerError> {
    let malformed = |what: &str| TrackerError::Malformed(what.to_string());
    // Checked first, within a nesting bound: a hostile reply must not
    // overflow the stack of the parse below.
    crate::bencode::top_level_value(body, b"files").map_err(|e| malformed(&e.to_string()))?;
    let Value::Dict(top) = serde_bencode::from_bytes::<Value>(body).map_err(|e| malformed(&e.to_string()))? else {
        return Err(malformed("not a dictionary"));
    };
    if let Some(Value::Bytes(why)) = top.get(&b"failure reason"[..]) {
        let text = String::from_utf8_lossy(why);
        return Err(TrackerError::Failure(crate::types::printable(&text, http::MAX_MESSAGE)));
    }
    let Some(Value::Dict(files)) = top.get(&b"files"[..]) else { return Err(malformed("no files")) };
    let count = |d: &std::collections::HashMap<Vec<u8>, Value>, key: &[u8]| match d.get(key) {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    let found = asked.iter().filter_map(|h| {
        let Some(Value::Dict(d)) = files.get(&h.0[..]) else { return None };
        Some((*h, count(d, b"complete")?, count(d, b"incomplete")?))
    });
    Ok(found.collect())
}

/// The hashes to scrape grouped by scrape URL, at most a batch each.
pub fn batches(targets: Vec<(InfoHash, String)>) -> Vec<(String, Vec<InfoHash>)> {
    let mut by_url: BTreeMap<String, Vec<InfoHash>> = BTreeMap::new();
    for (hash, announce) in targets {
        if let Some(url) = scrape_url(&announce) {
            by_url.entry(url).or_default().push(hash);
        }
    }
    let mut out = Vec::new();
    for (url, hashes) in by_url {
        let size = if url.starts_with("udp://") { UDP_BATCH } else { HTTP_BATCH };
        out.extend(hashes.chunks(size).map(|c| (url.clone(), c.to_vec())));
    }
    out
}

/// One scrape request: (hash, seeders, leechers) of those the tracker knows.
async fn scrape(
    client: &reqwest::Client,
    udp_connections: &mut udp::Connections,
    url: &str,
    hashes: &[InfoHash],
) -> Result<Vec<(InfoHash, u64, u64)>, TrackerError> {
    if url.starts_with("udp://") {
        let raw: Vec<[u8; 20]> = hashes.iter().map(|h| h.0).collect();
        let counts = udp::scrape(udp_connections, url, &raw, &udp::RETRY_TIMEOUTS).await?;
        return Ok(hashes.iter().zip(counts).map(|(h, (s, _, l))| (*h, u64::from(s), u64::from(l))).collect());
    }
    let body = http::get_bounded(client, &request_url(url, hashes)).await?;
    parse_reply(&body, hashes)
}

/// One round: every torrent due, batched per tracker, each request paced
/// with its host's announces. Failures are logged at debug: the announce
/// loop already tells of a tracker that does not answer.
pub async fn round(book: &AnnounceBook, client: &reqwest::Client) {
    let mut udp_connections = udp::Connections::default();
    for (url, hashes) in batches(book.scrape_targets(now_unix(), FRESH_SECS)) {
        let host = super::tracker_host(&url).unwrap_or_default();
        book.pacer().wait(&host, false).await;
        match scrape(client, &mut udp_connections, &url, &hashes).await {
            Ok(counts) => {
                let at = now_unix();
                for (hash, seeders, leechers) in counts {
                    book.swarm_seen(hash, Swarm { seeders, leechers, at });
                }
            }
            Err(e) => tracing::debug!(tracker = %super::redacted(&url), error = %e, "scrape failed"),
        }
    }
}

/// Scrapes every [`EVERY`] until `cancel`.
pub async fn run(book: std::sync::Arc<AnnounceBook>, client: reqwest::Client, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = round(&book, &client) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn scrape_urls_by_the_convention() {
        for (announce, scrape) in [
            ("http://t.example/announce", Some("http://t.example/scrape")),
            ("https://t.example/a1b2c3/announce.php?passkey=x", Some("https://t.example/a1b2c3/scrape.php?passkey=x")),
            ("http://t.example:6969/announce?x=1", Some("http://t.example:6969/scrape?x=1")),
            ("udp://t.example:1337/announce", Some("udp://t.example:1337/announce")),
            ("http://t.example/a", None),
            ("http://t.example/announce/x", None),
            ("http://announce.example", None),
        ] {
            assert_eq!(scrape_url(announce).as_deref(), scrape, "{announce}");
        }
    }

    #[test]
    fn one_request_carries_every_hash_and_the_reply_only_those_asked() {
        let hashes = [InfoHash([0x41; 20]), InfoHash([0xff; 20])];
        let url = request_url("http://t.example/scrape?passkey=k", &hashes);
        assert_eq!(
            url,
            format!("http://t.example/scrape?passkey=k&info_hash={}&info_hash={}", "A".repeat(20), "%FF".repeat(20))
        );
        assert!(request_url("http://t.example/scrape", &hashes).starts_with("http://t.example/scrape?info_hash="));
        let mut body = b"d5:filesd20:".to_vec();
        body.extend([0x41; 20]);
        body.extend(b"d8:completei5e10:downloadedi50e10:incompletei7ee20:");
        body.extend([0x99; 20]);
        body.extend(b"d8:completei1e10:incompletei1eeee");
        assert_eq!(parse_reply(&body, &hashes).unwrap(), vec![(hashes[0], 5, 7)], "not asked, not taken");
        let failure = parse_reply(b"d14:failure reason9:no scrapee", &hashes);
        assert!(matches!(failure, Err(TrackerError::Failure(t)) if t == "no scrape"));
        assert!(parse_reply(b"garbage", &hashes).is_err());
        assert!(parse_reply(b"d5:filesi3ee", &hashes).is_err());
        let deep = [&b"d5:files"[..], &b"l".repeat(100_000), &b"e".repeat(100_001)].concat();
        assert!(parse_reply(&deep, &hashes).is_err(), "nested too deep: refused, not a stack overflow");
    }

    #[test]
    fn batches_group_by_tracker_and_stay_within_the_size() {
        let h = |i: u8| InfoHash([i; 20]);
        let mut targets: Vec<(InfoHash, String)> =
            (0..120).map(|i| (h(i), "http://a.example/announce".into())).collect();
        targets.extend((120..200).map(|i| (h(i), "udp://b.example:1337".to_string())));
        targets.push((h(200), "http://c.example/no-scrape".into()));
        let b = batches(targets);
        let sizes: Vec<(String, usize)> = b.iter().map(|(u, v)| (u.clone(), v.len())).collect();
        let a = "http://a.example/scrape".to_string();
        let u = "udp://b.example:1337".to_string();
        assert_eq!(sizes, vec![(a.clone(), 50), (a.clone(), 50), (a, 20), (u.clone(), 74), (u, 6)]);
    }

    /// A scrape endpoint on loopback answering every hash asked for with
    /// 3 seeders and 4 leechers, keeping each request's target.
    fn scrape_tracker() -> (String, Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}/announce", listener.local_addr().unwrap().port());
        let targets = Arc::new(Mutex::new(Vec::new()));
        let t = targets.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut line = String::new();
                let _ = BufReader::new(&s).read_line(&mut line);
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let mut body = b"d5:filesd".to_vec();
                for p in query.split('&').filter_map(|p| p.strip_prefix("info_hash=")) {
                    let hash: Vec<u8> = percent_encoding::percent_decode_str(p).collect();
                    body.extend(b"20:");
                    body.extend(&hash);
                    body.extend(b"d8:completei3e10:incompletei4ee");
                }
                body.extend(b"ee");
                t.lock().unwrap().push(target);
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(&body);
            }
        });
        (url, targets)
    }

    #[tokio::test]
    async fn a_round_scrapes_sixty_torrents_in_two_requests() {
        let (announce, targets) = scrape_tracker();
        let book = AnnounceBook::default();
        let now = now_unix();
        let hashes: Vec<InfoHash> = (0..60u8).map(|i| InfoHash([i; 20])).collect();
        for h in &hashes {
            book.show_trackers(*h, &[vec![announce.clone()]]);
            book.sending(*h, now, super::super::http::Event::Started);
        }
        round(&book, &reqwest::Client::new()).await;
        let targets = targets.lock().unwrap().clone();
        assert_eq!(targets.len(), 2, "{targets:?}");
        let counts: Vec<usize> = targets.iter().map(|t| t.matches("info_hash=").count()).collect();
        assert_eq!(counts, vec![50, 10]);
        assert!(targets.iter().all(|t| t.starts_with("/scrape?")));
        for h in &hashes {
            assert_eq!(book.swarm(*h).map(|s| (s.seeders, s.leechers)), Some((3, 4)), "{h:?}");
        }
        // Fresh now: the next round asks nothing.
        assert!(book.scrape_targets(now_unix(), FRESH_SECS).is_empty());
    }
}
