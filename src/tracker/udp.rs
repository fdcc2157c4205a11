//! UDP trackers (BEP 15): connect, announce and scrape over one datagram
//! exchange each. Connection ids are reused for a minute; each request is
//! retransmitted with a doubling timeout; replies whose transaction id is not
//! ours are dropped. The packet codec is pure and unit-tested.

use super::http::{AnnounceParams, AnnounceReply, Event, TrackerError};
use crate::compact;
use crate::types::printable;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const PROTOCOL_ID: u64 = 0x417_2710_1980;
const ACTION_CONNECT: u32 = 0;
const ACTION_ANNOUNCE: u32 = 1;
const ACTION_SCRAPE: u32 = 2;
const ACTION_ERROR: u32 = 3;
/// A connection id may be used this long (BEP 15).
const CONNECTION_TTL: Duration = Duration::from_secs(60);
/// Timeouts of the successive tries of one request. BEP 15 suggests
/// 15 s doubling up to eight times (over an hour); a seedbox with other
/// trackers and the DHT is better served by giving up after about 20 s and
/// retrying with the announce loop's own back-off.
pub const RETRY_TIMEOUTS: [Duration; 3] = [Duration::from_secs(3), Duration::from_secs(6), Duration::from_secs(12)];
const MAX_REPLY: usize = 8192;

/// Connection ids by tracker address, with when they were issued.
#[derive(Default)]
pub struct Connections(HashMap<SocketAddr, (u64, Instant)>);

pub fn connect_request(tid: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
    b.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
    b.extend_from_slice(&tid.to_be_bytes());
    b
}

pub fn announce_request(conn: u64, tid: u32, p: &AnnounceParams) -> Vec<u8> {
    let event: u32 = match p.event {
        Event::None => 0,
        Event::Completed => 1,
        Event::Started => 2,
        Event::Stopped => 3,
    };
    let mut b = Vec::with_capacity(98);
    b.extend_from_slice(&conn.to_be_bytes());
    b.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    b.extend_from_slice(&tid.to_be_bytes());
    b.extend_from_slice(&p.info_hash.0);
    b.extend_from_slice(&p.peer_id.0);
    b.extend_from_slice(&p.downloaded.to_be_bytes());
    b.extend_from_slice(&p.left.to_be_bytes());
    b.extend_from_slice(&p.uploaded.to_be_bytes());
    b.extend_from_slice(&event.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes()); // IP: the sender's
    b.extend_from_slice(&p.key.to_be_bytes());
    b.extend_from_slice(&(p.numwant as i32).to_be_bytes());
    b.extend_from_slice(&p.port.to_be_bytes());
    b
}

pub fn scrape_request(conn: u64, tid: u32, hashes: &[[u8; 20]]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + 20 * hashes.len());
    b.extend_from_slice(&conn.to_be_bytes());
    b.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    b.extend_from_slice(&tid.to_be_bytes());
    for h in hashes {
        b.extend_from_slice(h);
    }
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// What a datagram says, once its header is checked against our request.
#[derive(Debug, PartialEq)]
pub enum Reply<'a> {
    /// Not a reply to this request (another transaction, or too short).
    Foreign,
    Error(String),
    Body(&'a [u8]),
}

pub fn check_reply(buf: &[u8], tid: u32, action: u32) -> Reply<'_> {
    if buf.len() < 8 || u32_at(buf, 4) != tid {
        return Reply::Foreign;
    }
    match u32_at(buf, 0) {
        ACTION_ERROR => Reply::Error(printable(&String::from_utf8_lossy(&buf[8..]), super::http::MAX_MESSAGE)),
        a if a == action => Reply::Body(&buf[8..]),
        _ => Reply::Foreign,
    }
}

pub fn parse_connect(body: &[u8]) -> Result<u64, TrackerError> {
    let b: [u8; 8] = body.get(..8).and_then(|b| b.try_into().ok()).ok_or(malformed("connect reply too short"))?;
    Ok(u64::from_be_bytes(b))
}

/// An announce reply's body; peers are 6 bytes each from an IPv4 tracker
/// and 18 from an IPv6 one.
pub fn parse_announce(body: &[u8], ipv6: bool) -> Result<AnnounceReply, TrackerError> {
    if body.len() < 12 {
        return Err(malformed("announce reply too short"));
    }
    let peers = &body[12..];
    let mut list: Vec<SocketAddr> =
        if ipv6 { compact::parse_v6(peers).collect() } else { compact::parse_v4(peers).collect() };
    list.retain(|p| p.port() != 0);
    Ok(AnnounceReply {
        interval: Some(u32_at(body, 0) as u64),
        leechers: Some(u32_at(body, 4) as u64),
        seeders: Some(u32_at(body, 8) as u64),
        peers: list,
        ..Default::default()
    })
}

/// (seeders, completed, leechers) per requested hash.
pub fn parse_scrape(body: &[u8], count: usize) -> Result<Vec<(u32, u32, u32)>, TrackerError> {
    if body.len() < 12 * count {
        return Err(malformed("scrape reply too short"));
    }
    Ok(body.chunks_exact(12).take(count).map(|c| (u32_at(c, 0), u32_at(c, 4), u32_at(c, 8))).collect())
}

/// A failure before the announce was sent: the tracker heard nothing of it
/// (a refusal in words, or a garbled reply, still counts as heard).
fn unreached(e: TrackerError) -> TrackerError {
    match e {
        TrackerError::Http(text) => TrackerError::Unreached(text),
        other => other,
    }
}

fn malformed(what: &str) -> TrackerError {
    TrackerError::Malformed(what.to_string())
}

/// Host and port of a `udp://host:port[/path]` URL.
fn host_port(url: &str) -> Result<&str, TrackerError> {
    let rest = url.strip_prefix("udp://").ok_or_else(|| TrackerError::Http(format!("not a UDP tracker: {url}")))?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// One tracker, resolved and with a connected socket.
struct Exchange {
    socket: UdpSocket,
    addr: SocketAddr,
    timeouts: Vec<Duration>,
}

impl Exchange {
    async fn open(url: &str, timeouts: &[Duration]) -> Result<Exchange, TrackerError> {
        let hp = host_port(url)?;
        let addr = tokio::net::lookup_host(hp)
            .await
            .map_err(|e| TrackerError::Http(format!("cannot resolve {hp}: {e}")))?
            .next()
            .ok_or_else(|| TrackerError::Http(format!("{hp} has no address")))?;
        let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        let socket = UdpSocket::bind(bind).await.map_err(|e| TrackerError::Http(e.to_string()))?;
        socket.connect(addr).await.map_err(|e| TrackerError::Http(e.to_string()))?;
        Ok(Exchange { socket, addr, timeouts: timeouts.to_vec() })
    }

    /// Sends `request` (built for a fresh transaction id) until a matching
    /// reply arrives or every try timed out.
    async fn transact(&self, action: u32, request: impl Fn(u32) -> Vec<u8>) -> Result<Vec<u8>, TrackerError> {
        let mut buf = vec![0u8; MAX_REPLY];
        for timeout in &self.timeouts {
            let tid: u32 = rand::random();
            self.socket.send(&request(tid)).await.map_err(|e| TrackerError::Http(e.to_string()))?;
            let deadline = tokio::time::Instant::now() + *timeout;
            loop {
                let n = match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                    Err(_) => break, // this try timed out
                    Ok(Err(e)) => return Err(TrackerError::Http(e.to_string())),
                    Ok(Ok(n)) => n,
                };
                match check_reply(&buf[..n], tid, action) {
                    Reply::Foreign => continue,
                    Reply::Error(msg) => return Err(TrackerError::Failure(msg)),
                    Reply::Body(b) => return Ok(b.to_vec()),
                }
            }
        }
        Err(TrackerError::Http(format!("no reply from {} after {} tries", self.addr, self.timeouts.len())))
    }

    async fn connection_id(&self, cache: &mut Connections) -> Result<u64, TrackerError> {
        if let Some((id, at)) = cache.0.get(&self.addr) {
            if at.elapsed() < CONNECTION_TTL {
                return Ok(*id);
            }
        }
        let id = parse_connect(&self.transact(ACTION_CONNECT, connect_request).await?)?;
        cache.0.insert(self.addr, (id, Instant::now()));
        Ok(id)
    }
}

pub async fn announce(
    cache: &mut Connections,
    url: &str,
    p: &AnnounceParams,
    timeouts: &[Duration],
) -> Result<AnnounceReply, TrackerError> {
    // Until a connection id is granted, no announce has gone out.
    let ex = Exchange::open(url, timeouts).await.map_err(unreached)?;
    let conn = ex.connection_id(cache).await.map_err(unreached)?;
    let result = ex.transact(ACTION_ANNOUNCE, |tid| announce_request(conn, tid, p)).await;
    if result.is_err() {
        cache.0.remove(&ex.addr); // it may have expired on the tracker's side
    }
    parse_announce(&result?, ex.addr.is_ipv6())
}

/// Scrapes `hashes`: (seeders, completed, leechers) for each.
pub async fn scrape(
    cache: &mut Connections,
    url: &str,
    hashes: &[[u8; 20]],
    timeouts: &[Duration],
) -> Result<Vec<(u32, u32, u32)>, TrackerError> {
    let ex = Exchange::open(url, timeouts).await?;
    let conn = ex.connection_id(cache).await?;
    let body = ex.transact(ACTION_SCRAPE, |tid| scrape_request(conn, tid, hashes)).await?;
    parse_scrape(&body, hashes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{InfoHash, PeerId};

    fn params() -> AnnounceParams {
        AnnounceParams {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([2; 20]),
            port: 6881,
            uploaded: 3,
            downloaded: 4,
            left: 5,
            event: Event::Started,
            key: 0xdead_beef,
            numwant: 80,
            tracker_id: None,
            corrupt: 0,
        }
    }

    #[test]
    fn request_layouts() {
        let c = connect_request(7);
        assert_eq!(c.len(), 16);
        assert_eq!(&c[..8], &0x41727101980u64.to_be_bytes());
        let a = announce_request(0x1122, 9, &params());
        assert_eq!(a.len(), 98);
        assert_eq!(u32_at(&a, 8), ACTION_ANNOUNCE);
        assert_eq!(u32_at(&a, 12), 9);
        assert_eq!(&a[16..36], &[1; 20]);
        assert_eq!(u32_at(&a, 80), 2, "event started");
        assert_eq!(&a[96..98], &6881u16.to_be_bytes());
        assert_eq!(scrape_request(1, 2, &[[0; 20], [1; 20]]).len(), 56);
    }

    #[test]
    fn replies_are_matched_by_transaction_and_action() {
        let mut r = Vec::new();
        r.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
        r.extend_from_slice(&5u32.to_be_bytes());
        r.extend_from_slice(&42u64.to_be_bytes());
        assert_eq!(check_reply(&r, 6, ACTION_CONNECT), Reply::Foreign, "wrong transaction id");
        assert_eq!(check_reply(&r, 5, ACTION_ANNOUNCE), Reply::Foreign, "wrong action");
        assert_eq!(check_reply(&r[..7], 5, ACTION_CONNECT), Reply::Foreign, "too short");
        let Reply::Body(b) = check_reply(&r, 5, ACTION_CONNECT) else { panic!() };
        assert_eq!(parse_connect(b).unwrap(), 42);
        assert!(parse_connect(&b[..4]).is_err());
        let mut e = Vec::new();
        e.extend_from_slice(&ACTION_ERROR.to_be_bytes());
        e.extend_from_slice(&5u32.to_be_bytes());
        e.extend_from_slice(b"not authorized");
        assert_eq!(check_reply(&e, 5, ACTION_ANNOUNCE), Reply::Error("not authorized".into()));
    }

    #[test]
    fn announce_replies_in_both_families() {
        let mut body = Vec::new();
        for n in [1800u32, 3, 9] {
            body.extend_from_slice(&n.to_be_bytes());
        }
        let mut v4 = body.clone();
        compact::push(&"10.0.0.1:6881".parse().unwrap(), &mut v4);
        compact::push(&"10.0.0.2:0".parse().unwrap(), &mut v4);
        let r = parse_announce(&v4, false).unwrap();
        assert_eq!((r.interval, r.leechers, r.seeders), (Some(1800), Some(3), Some(9)));
        assert_eq!(r.peers, vec!["10.0.0.1:6881".parse::<SocketAddr>().unwrap()]);
        let mut v6 = body.clone();
        compact::push(&"[2001:db8::1]:7000".parse().unwrap(), &mut v6);
        assert_eq!(parse_announce(&v6, true).unwrap().peers, vec!["[2001:db8::1]:7000".parse::<SocketAddr>().unwrap()]);
        assert!(parse_announce(&body[..8], false).is_err());
        assert_eq!(parse_scrape(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3], 1).unwrap(), vec![(1, 2, 3)]);
        assert!(parse_scrape(&[0; 11], 1).is_err());
    }

    /// A tracker that ignores the first try and answers the second, first
    /// with a reply for another transaction: the client retransmits and
    /// drops the foreign reply. Loopback only.
    #[tokio::test]
    async fn retransmits_and_drops_foreign_replies() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let url = format!("udp://{}/announce", server.local_addr().unwrap());
        let fake = tokio::spawn(async move {
            let mut buf = [0u8; 200];
            let (_, _) = server.recv_from(&mut buf).await.unwrap(); // first connect: ignored
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(n, 16);
            let tid = u32_at(&buf, 12);
            let reply = |tid: u32, conn: u64| {
                let mut r = ACTION_CONNECT.to_be_bytes().to_vec();
                r.extend_from_slice(&tid.to_be_bytes());
                r.extend_from_slice(&conn.to_be_bytes());
                r
            };
            server.send_to(&reply(tid.wrapping_add(1), 666), from).await.unwrap();
            server.send_to(&reply(tid, 77), from).await.unwrap();
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(n, 98);
            assert_eq!(&buf[..8], &77u64.to_be_bytes(), "the announce uses the real connection id");
            let tid = u32_at(&buf, 12);
            let mut r = ACTION_ANNOUNCE.to_be_bytes().to_vec();
            r.extend_from_slice(&tid.to_be_bytes());
            for n in [900u32, 0, 1] {
                r.extend_from_slice(&n.to_be_bytes());
            }
            compact::push(&"127.0.0.1:5000".parse().unwrap(), &mut r);
            server.send_to(&r, from).await.unwrap();
        });
        let mut cache = Connections::default();
        let timeouts = [Duration::from_millis(200), Duration::from_secs(5)];
        let reply = announce(&mut cache, &url, &params(), &timeouts).await.unwrap();
        assert_eq!(reply.peers, vec!["127.0.0.1:5000".parse::<SocketAddr>().unwrap()]);
        assert_eq!(reply.interval, Some(900));
        assert_eq!(cache.0.values().next().unwrap().0, 77);
        fake.await.unwrap();
    }
}
