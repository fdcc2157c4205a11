//! http(s) `.torrent` URLs in `torrents/add`'s `urls`: fetched with the
//! daemon's HTTP client, the one trackers use, so its rules hold here too
//! (at most three redirects, http(s) only, never from a public host into
//! this machine or a private network). Each fetch is bounded in time
//! ([`FETCH_TIMEOUT`]) and in bytes (a `.torrent` file's limit, checked on
//! the announced length and again as the body arrives); a few run at once.
//! A failure is logged with the URL redacted as tracker URLs are (a
//! private tracker's download link carries the passkey).

use crate::metainfo::{Metainfo, MAX_TORRENT_FILE};
use crate::tracker::http::error_text;
use std::time::Duration;

pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Fetches running at once for one request.
const FETCHES_AT_ONCE: usize = 4;

/// Whether `url` is one to fetch (rather than a magnet or a bare hash).
pub fn is_http(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The bytes at `url`, or why not (without the URL).
pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut resp = client.get(url).timeout(FETCH_TIMEOUT).send().await.map_err(error_text)?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let too_large = || format!("more than {MAX_TORRENT_FILE} bytes, the limit for a .torrent file");
    if resp.content_length().is_some_and(|n| n > MAX_TORRENT_FILE as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(error_text)? {
        if body.len() + chunk.len() > MAX_TORRENT_FILE {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Fetches and reads every URL's torrent, a few at a time; a failure is
/// logged and is None.
pub async fn fetch_all(client: &reqwest::Client, urls: Vec<String>) -> Vec<Option<Metainfo>> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(FETCHES_AT_ONCE));
    let mut running = tokio::task::JoinSet::new();
    for (i, url) in urls.into_iter().enumerate() {
        let (client, slots) = (client.clone(), slots.clone());
        running.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let got = match fetch(&client, &url).await {
                Ok(bytes) => tokio::task::spawn_blocking(move || Metainfo::from_torrent_bytes(&bytes))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|m| m.map_err(|e| format!("not a .torrent file: {e}"))),
                Err(e) => Err(e),
            };
            if let Err(why) = &got {
                tracing::warn!(url = %crate::tracker::redacted(&url), error = %why, "API add: cannot fetch the .torrent");
            }
            (i, got.ok())
        });
    }
    let mut out = Vec::new();
    while let Some(done) = running.join_next().await {
        if let Ok(r) = done {
            out.push(r);
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_fetched() {
        assert!(is_http("http://x/a.torrent") && is_http("HTTPS://x/a.torrent"));
        assert!(!is_http("magnet:?xt=urn:btih:00") && !is_http("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_http("ftp://x/a") && !is_http("http"));
    }
}
