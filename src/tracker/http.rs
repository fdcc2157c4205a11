//! One HTTP(S) announce (BEP 3, 23 compact peers, 7 `peers6`): the URL, the
//! bounded read of the reply, and the pure parse of the bencoded response.

use crate::compact;
use crate::types::{printable, InfoHash, PeerId};
use percent_encoding::{percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_bencode::value::Value;
use serde_bytes::ByteBuf;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Largest tracker reply read.
pub const MAX_RESPONSE: usize = 1024 * 1024;
/// A tracker's failure or warning text is shown at most this long.
pub const MAX_MESSAGE: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Started,
    Completed,
    Stopped,
    /// A regular re-announce.
    None,
}

impl Event {
    fn as_str(self) -> Option<&'static str> {
        match self {
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
            Event::None => None,
        }
    }

    /// How the event is shown (`dropseed trackers`).
    pub fn name(self) -> &'static str {
        self.as_str().unwrap_or("none")
    }
}

#[derive(Debug, Clone)]
pub struct AnnounceParams {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    pub key: u32,
    pub numwant: u32,
    pub tracker_id: Option<Vec<u8>>,
    /// Bytes of pieces that failed their hash this announce session (sent
    /// to HTTP trackers; BEP 15 has no field for it).
    pub corrupt: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnnounceReply {
    pub interval: Option<u64>,
    pub min_interval: Option<u64>,
    pub peers: Vec<SocketAddr>,
    pub warning: Option<String>,
    pub tracker_id: Option<Vec<u8>>,
    pub seeders: Option<u64>,
    pub leechers: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("tracker refused: {0}")]
    Failure(String),
    #[error("{0}")]
    Http(String),
    /// The request never reached the tracker (no address, connection
    /// refused, no UDP connection id): another URL of the same host may
    /// still be tried in the same round.
    #[error("{0}")]
    Unreached(String),
    #[error("reply over {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("unreadable reply: {0}")]
    Malformed(String),
}

impl TrackerError {
    /// Whether the tracker may have heard the announce.
    pub fn reached(&self) -> bool {
        !matches!(self, TrackerError::Unreached(_))
    }
}

pub fn announce_url(base: &str, p: &AnnounceParams) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut url = format!(
        "{base}{sep}info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&corrupt={}&compact=1&numwant={}&key={:08x}",
        percent_encode(&p.info_hash.0, NON_ALPHANUMERIC),
        percent_encode(&p.peer_id.0, NON_ALPHANUMERIC),
        p.port,
        p.uploaded,
        p.downloaded,
        p.left,
        p.corrupt,
        p.numwant,
        p.key,
    );
    if let Some(e) = p.event.as_str() {
        url.push_str("&event=");
        url.push_str(e);
    }
    if let Some(id) = &p.tracker_id {
        url.push_str("&trackerid=");
        url.push_str(&percent_encode(id, NON_ALPHANUMERIC).to_string());
    }
    url
}

pub async fn announce(client: &reqwest::Client, base: &str, p: &AnnounceParams) -> Result<AnnounceReply, TrackerError> {
    parse_reply(&get_bounded(client, &announce_url(base, p)).await?)
}

/// A tracker's reply to a GET of `url` (an announce or a scrape): at most
/// [`MAX_RESPONSE`] bytes, within 15 s to the headers, redirects as
/// [`client`] allows them.
pub async fn get_bounded(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, TrackerError> {
    let mut resp = client.get(url).timeout(Duration::from_secs(15)).send().await.map_err(http_error)?;
    if resp.status().is_redirection() {
        // A Location the client would not follow at all (not a URL it can
        // request, e.g. `file:`) ends up here rather than in the policy.
        let to = resp.headers().get(reqwest::header::LOCATION).and_then(|l| reqwest::Url::parse(l.to_str().ok()?).ok());
        let scheme = to.as_ref().map_or("unreadable", |u| u.scheme());
        return Err(TrackerError::Http(format!("HTTP {}: redirect to a {scheme} URL not followed", resp.status())));
    }
    if !resp.status().is_success() {
        return Err(TrackerError::Http(format!("HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_error)? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(TrackerError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Deserialize)]
struct RawReply {
    #[serde(rename = "failure reason")]
    failure: Option<ByteBuf>,
    #[serde(rename = "warning message")]
    warning: Option<ByteBuf>,
    interval: Option<i64>,
    #[serde(rename = "min interval")]
    min_interval: Option<i64>,
    #[serde(rename = "tracker id")]
    tracker_id: Option<ByteBuf>,
    complete: Option<i64>,
    incomplete: Option<i64>,
    peers: Option<Value>,
    peers6: Option<ByteBuf>,
}

/// A request error with its causes ("error sending request" alone does not
/// say the connection was refused), without the URL (it carries the passkey).
fn http_error(e: reqwest::Error) -> TrackerError {
    let unreached = e.is_connect();
    let text = error_text(e);
    if unreached {
        TrackerError::Unreached(text)
    } else {
        TrackerError::Http(text)
    }
}

/// A request's failure as one line: the error and each cause that adds
/// something, without the URL (it may carry a passkey).
pub fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// Parses a bencoded announce reply (pure).
pub fn parse_reply(body: &[u8]) -> Result<AnnounceReply, TrackerError> {
    crate::bencode::top_level_value(body, b"peers").map_err(|e| TrackerError::Malformed(e.to_string()))?;
    let raw: RawReply = serde_bencode::from_bytes(body).map_err(|e| TrackerError::Malformed(e.to_string()))?;
    if let Some(f) = raw.failure {
        return Err(TrackerError::Failure(printable(&String::from_utf8_lossy(&f), MAX_MESSAGE)));
    }
    let mut peers = Vec::new();
    match raw.peers {
        Some(Value::Bytes(b)) => peers.extend(compact::parse_v4(&b)),
        Some(Value::List(list)) => {
            for item in list {
                if let Value::Dict(d) = item {
                    let ip = match d.get(&b"ip"[..]) {
                        Some(Value::Bytes(ip)) => String::from_utf8_lossy(ip).parse::<IpAddr>().ok(),
                        _ => None,
                    };
                    let port = match d.get(&b"port"[..]) {
                        Some(Value::Int(p)) => u16::try_from(*p).ok(),
                        _ => None,
                    };
                    if let (Some(ip), Some(port)) = (ip, port) {
                        peers.push(SocketAddr::new(ip, port));
                    }
                }
            }
        }
        _ => {}
    }
    if let Some(b) = raw.peers6 {
        peers.extend(compact::parse_v6(&b));
    }
    peers.retain(|p| p.port() != 0);
    let positive = |v: Option<i64>| v.filter(|&n| n >= 0).map(|n| n as u64);
    Ok(AnnounceReply {
        interval: positive(raw.interval),
        min_interval: positive(raw.min_interval),
        peers,
        warning: raw.warning.map(|w| printable(&String::from_utf8_lossy(&w), MAX_MESSAGE)),
        tracker_id: raw.tracker_id.map(|t| t.into_vec()),
        seeders: positive(raw.complete),
        leechers: positive(raw.incomplete),
    })
}

/// Redirects followed from one announce at most.
pub const MAX_REDIRECTS: usize = 3;

/// The client trackers and `.torrent` URLs are fetched with: our user
/// agent, and redirects only where [`redirect_allowed`] says.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("dropseed/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            match redirect_allowed(&attempt.previous()[0], attempt.url(), attempt.previous().len() - 1) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(why),
            }
        }))
        .build()
}

/// Whether a tracker's redirect from `origin` to `to`, after `hops` already
/// followed, may be followed: at most [`MAX_REDIRECTS`], only to http or
/// https, and from a tracker on the internet never to `localhost` or a
/// loopback, private, link-local or unspecified address, so a tracker cannot
/// aim dropseed at services on the server itself or at a cloud metadata
/// address (host names are judged as written; DNS is not consulted).
pub fn redirect_allowed(origin: &reqwest::Url, to: &reqwest::Url, hops: usize) -> Result<(), String> {
    if hops >= MAX_REDIRECTS {
        return Err(format!("more than {MAX_REDIRECTS} redirects"));
    }
    if !matches!(to.scheme(), "http" | "https") {
        return Err(format!("redirect to a {} URL", to.scheme()));
    }
    if internal(to) && !internal(origin) {
        return Err(format!("redirect from a public tracker to {}", to.host_str().unwrap_or("?")));
    }
    Ok(())
}

/// A URL whose host is this machine or a private network.
fn internal(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else { return true };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified() || ip.octets()[0] == 0
        }
        Ok(IpAddr::V6(ip)) => {
            let mapped =
                ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback() || v4.is_private() || v4.is_link_local());
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || mapped
        }
        Err(_) => {
            let d = host.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_are_few_http_only_and_never_from_public_into_private() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        let public = u("http://tracker.example.org/announce");
        assert!(redirect_allowed(&public, &u("https://tracker2.example.org/a"), 0).is_ok());
        assert!(redirect_allowed(&public, &u("https://tracker2.example.org/a"), 3).is_err());
        assert!(redirect_allowed(&public, &u("ftp://tracker2.example.org/a"), 0).is_err());
        for inside in [
            "http://127.0.0.1:8080/",
            "http://localhost/",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.5/",
            "http://192.168.1.1/",
            "http://[::1]:9000/",
            "http://[fd00::1]/",
            "http://0.0.0.0/",
        ] {
            assert!(redirect_allowed(&public, &u(inside), 0).is_err(), "{inside}");
        }
        // A tracker on the user's own network may redirect within it.
        let lan = u("http://192.168.1.10:6969/announce");
        assert!(redirect_allowed(&lan, &u("http://192.168.1.11:6969/announce"), 0).is_ok());
    }

    #[test]
    fn compact_and_dictionary_peers() {
        let body = b"d8:intervali1800e12:min intervali60e5:peers12:\x7f\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\x00\x506:peers618:\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x1a\xe2e";
        let r = parse_reply(body).unwrap();
        assert_eq!(r.interval, Some(1800));
        assert_eq!(r.min_interval, Some(60));
        assert_eq!(
            r.peers,
            vec!["127.0.0.1:6881".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), "[::1]:6882".parse().unwrap()]
        );
        let dict = b"d8:intervali900e5:peersld2:ip9:127.0.0.17:peer id20:aaaaaaaaaaaaaaaaaaaa4:porti7000eed2:ip3:bad4:porti1eeee";
        let r = parse_reply(dict).unwrap();
        assert_eq!(r.peers, vec!["127.0.0.1:7000".parse().unwrap()]);
    }

    #[test]
    fn failure_and_warning() {
        let e = parse_reply(b"d14:failure reason36:Requested download is not authorizede").unwrap_err();
        assert_eq!(e.to_string(), "tracker refused: Requested download is not authorized");
        let r = parse_reply(b"d15:warning message4:slow8:intervali5e10:tracker id2:abe").unwrap();
        assert_eq!(r.warning.as_deref(), Some("slow"));
        assert_eq!(r.tracker_id.as_deref(), Some(&b"ab"[..]));
        assert!(parse_reply(b"<html>").is_err());
        assert!(parse_reply(b"").is_err());
    }

    #[test]
    fn url_encodes_binary_fields() {
        let p = AnnounceParams {
            info_hash: InfoHash([0xab; 20]),
            peer_id: PeerId(*b"-DS0100-abcdefghijkl"),
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Event::Started,
            key: 0x1234,
            numwant: 50,
            tracker_id: None,
            corrupt: 7,
        };
        let u = announce_url("http://t/announce?x=1", &p);
        assert!(u.starts_with("http://t/announce?x=1&info_hash=%AB%AB"));
        assert!(u.contains("&port=6881&uploaded=1&downloaded=2&left=3&corrupt=7&compact=1"));
        assert!(u.ends_with("&event=started"));
    }

    #[tokio::test]
    async fn a_refused_connection_names_its_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let p = AnnounceParams {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([2; 20]),
            port: 6881,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            event: Event::Started,
            key: 0,
            numwant: 50,
            tracker_id: None,
            corrupt: 0,
        };
        let e = announce(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}/announce"), &p).await.unwrap_err();
        assert!(e.to_string().contains("Connection refused"), "{e}");
        assert!(!e.reached(), "a refused connection carried no announce");
    }
}
