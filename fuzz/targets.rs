//! The bodies of the fuzz targets, one function per decoder group.
//!
//! This file is the library of the `fuzz/` package (each
//! `fuzz_targets/<name>.rs` only calls `<name>` here) and is also included
//! by `tests/fuzz_corpus.rs`, which replays the committed corpus on the
//! stable toolchain, so a fuzz target and its replay cannot drift apart.
//! Each body calls the decoder as dropseed does and, where it is cheap,
//! asserts an invariant: a panic here is a finding.

use dropseed::bencode;
use dropseed::compact;
use dropseed::config::Config;
use dropseed::control::Request;
use dropseed::dht::krpc;
use dropseed::extension::{ExtHandshake, MetadataMsg, PexMsg, MAX_PEX_PEERS, METADATA_BLOCK, UT_METADATA, UT_PEX};
use dropseed::magnet::{self, Magnet};
use dropseed::metadata::{DataOutcome, MetadataAssembler};
use dropseed::metainfo::Metainfo;
use dropseed::mse::{self, Initiator, Methods, Responder};
use dropseed::resume::{resume_path, ResumeRecord};
use dropseed::tracker::{http, udp};
use dropseed::types::InfoHash;
use dropseed::utp::packet as utp_packet;
use dropseed::wire::{self, Handshake, Message, HANDSHAKE_LEN, MAX_MESSAGE_LEN};
use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A fuzz target's body: any bytes in, a panic only for a finding.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz_targets/<name>.rs` and `corpus/<name>/`
/// are named.
pub const ALL: &[(&str, Target)] = &[
    ("bencode", bencode),
    ("metainfo", metainfo),
    ("magnet", magnet),
    ("wire", wire),
    ("extension", extension),
    ("metadata", metadata),
    ("krpc", krpc),
    ("udp_tracker", udp_tracker),
    ("http_tracker", http_tracker),
    ("control", control),
    ("resume", resume),
    ("config", config),
    ("mse", mse_handshake),
    ("utp", utp),
];

/// The bencode scanner: spans it reports lie inside the buffer and are
/// values in their own right.
pub fn bencode(data: &[u8]) {
    if let Ok(end) = bencode::skip_value(data, 0) {
        assert!(end <= data.len());
    }
    // From an offset inside the buffer, as the key loop of the scanner does.
    if let Some(&start) = data.first() {
        let start = start as usize % data.len();
        if let Ok(end) = bencode::skip_value(data, start) {
            assert!(start < end && end <= data.len());
        }
    }
    for key in [&b"info"[..], b"t", b"m", b"peers", b""] {
        if let Ok(Some(span)) = bencode::top_level_value(data, key) {
            assert!(span.start < span.end && span.end < data.len());
            assert_eq!(bencode::skip_value(data, span.start), Ok(span.end));
        }
    }
}

/// `.torrent` files and magnet metadata: a torrent that parses is
/// consistent, and its `state_dir` form parses to the same torrent.
pub fn metainfo(data: &[u8]) {
    if let Ok(m) = Metainfo::from_torrent_bytes(data) {
        check_metainfo(&m);
        let again =
            Metainfo::from_torrent_bytes(&m.to_torrent_bytes()).expect("the state_dir form of a torrent parses");
        assert_eq!((again.info_hash, &again.trackers), (m.info_hash, &m.trackers));
    }
    if let Ok(m) = Metainfo::from_info_bytes(data, Vec::new()) {
        check_metainfo(&m);
    }
}

fn check_metainfo(m: &Metainfo) {
    assert_eq!(m.info_hash.0, <[u8; 20]>::from(Sha1::digest(&m.info_bytes)));
    assert!(m.total_length > 0 && m.piece_length > 0);
    assert_eq!(m.piece_count() as u64, m.total_length.div_ceil(m.piece_length));
    let last = m.piece_len(m.piece_count() - 1) as u64;
    assert!(last > 0 && last <= m.piece_length);
    let mut offset = 0;
    for f in &m.files {
        assert_eq!(f.offset, offset);
        offset += f.length;
        for element in &f.path {
            assert!(!element.is_empty() && element != "." && element != "..");
            assert!(!element.contains(['/', '\\', '\0']) && !element.chars().any(char::is_control));
        }
    }
    assert_eq!(offset, m.total_length);
}

/// Magnet URIs and `.magnet` files (read as UTF-8, as the watch folder
/// does): a magnet that parses survives its `state_dir` form.
pub fn magnet(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = Magnet::parse(text) {
        check_magnet(&m);
    }
    if let Ok(list) = magnet::parse_file(text) {
        assert!(!list.is_empty() && list.len() <= magnet::MAX_PER_FILE);
        list.iter().for_each(check_magnet);
    }
}

fn check_magnet(m: &Magnet) {
    assert!(m.trackers.len() <= magnet::MAX_TRACKERS && m.peers.len() <= magnet::MAX_PEERS);
    let _ = m.display_name();
    // state_dir keeps a magnet as this URI, read back at every start.
    let uri = m.to_uri();
    assert_eq!(Magnet::parse_stored(&uri).as_ref(), Ok(m), "{uri}");
}

/// The peer wire codec, on what a connection reads: a handshake (when the
/// input starts with one), then a stream of messages. Each message
/// re-encodes to its bytes, a strict prefix of it is "incomplete", and the
/// per-type bounds only ever refuse more.
pub fn wire(data: &[u8]) {
    let mut rest = data;
    if let Some(bytes) = data.first_chunk::<HANDSHAKE_LEN>() {
        if let Ok(h) = Handshake::decode(bytes) {
            assert_eq!(&h.encode(), bytes);
            rest = &data[HANDSHAKE_LEN..];
        }
    }
    while let Ok(Some((msg, used))) = wire::decode(rest) {
        assert!(used >= 4 && used <= rest.len());
        if !matches!(msg, Message::Unknown(_)) {
            let mut out = Vec::new();
            wire::encode(&msg, &mut out);
            assert_eq!(out, &rest[..used]);
        }
        assert_eq!(wire::decode(&rest[..used - 1]), Ok(None));
        for bitfield in [0, 1, 64, MAX_MESSAGE_LEN] {
            if let Ok(Some(bounded)) = wire::decode_bounded(rest, bitfield) {
                assert_eq!(bounded, (msg.clone(), used));
            }
        }
        rest = &rest[used..];
    }
    let _ = wire::decode_bounded(rest, 16);
}

/// BEP 10 extension payloads: the handshake, ut_metadata and ut_pex, each
/// of which must survive its own encoding.
pub fn extension(data: &[u8]) {
    if let Some(h) = ExtHandshake::decode(data) {
        let _ = (h.request_limit(), h.client(), h.id_of(UT_METADATA), h.id_of(UT_PEX), h.metadata_size());
        let _ = h.listen_addr(SocketAddr::from(([127, 0, 0, 1], 6881)));
        assert_eq!(ExtHandshake::decode(&h.encode()).as_ref(), Some(&h));
    }
    if let Ok(m) = MetadataMsg::decode(data) {
        assert_eq!(MetadataMsg::decode(&m.encode()), Ok(m));
    }
    if let Ok(p) = PexMsg::decode(data) {
        assert!(p.added.len() <= MAX_PEX_PEERS && p.dropped.len() <= MAX_PEX_PEERS);
        assert!(p.added.iter().all(|(a, _)| a.port() != 0) && p.dropped.iter().all(|a| a.port() != 0));
        let again = PexMsg::decode(&p.encode()).expect("an encoded PEX message decodes");
        let sorted = |mut v: Vec<(SocketAddr, u8)>| {
            v.iter_mut().for_each(|(a, _)| *a = compact::normalize(*a));
            v.sort();
            v
        };
        let pairs = |v: &[SocketAddr]| v.iter().map(|&a| (a, 0)).collect::<Vec<_>>();
        assert_eq!(sorted(again.added), sorted(p.added));
        assert_eq!(sorted(pairs(&again.dropped)), sorted(pairs(&p.dropped)));
    }
}

/// Reads the fuzz input a few bytes at a time; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
}

/// Metadata assembly (BEP 9) driven by a script of peer events: sizes
/// offered, requests, releases and blocks of any index and length, true or
/// false. Only the true metadata completes, a banned peer gets nothing
/// more, and requests stay within the blocks.
pub fn metadata(data: &[u8]) {
    let mut input = Bytes(data);
    // Up to three blocks, so the true copy is cheap to build and hash.
    let size = 1 + input.u16() as usize % (3 * METADATA_BLOCK);
    let truth: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let hash = InfoHash(Sha1::digest(&truth).into());
    let mut a = MetadataAssembler::new(hash);
    let peer = |n: u8| SocketAddr::from(([127, 0, 0, 1 + n % 4], 6881));
    while !input.0.is_empty() {
        let op = input.u8();
        let who = peer(op >> 4);
        match op % 6 {
            0 => {
                let offered = if op & 8 == 0 { size } else { input.u16() as usize * 300 };
                let ok = a.offer_size(who, offered).is_ok();
                assert!(!ok || !a.is_banned(&who));
            }
            1 => {
                if let Some(i) = a.next_request(who) {
                    assert!(!a.is_banned(&who));
                    assert!((i as usize) < a.size().expect("a request means a size").div_ceil(METADATA_BLOCK));
                }
            }
            2 => a.release(who),
            3..=4 => {
                let piece = input.u8() as u32 % 8;
                let total = if op & 8 == 0 { size } else { input.u16() as usize };
                let mut block = MetadataAssembler::serve(&truth, piece).unwrap_or_default().to_vec();
                match input.u8() % 4 {
                    0 => {}
                    1 if !block.is_empty() => block[0] ^= 1,
                    2 => block.truncate(input.u16() as usize),
                    _ => block.resize(input.u16() as usize, 7),
                }
                match a.on_data(who, piece, total, &block) {
                    Ok(DataOutcome::Complete(whole)) => assert_eq!(whole, truth),
                    Ok(DataOutcome::Mismatch { banned }) => assert!(banned.iter().all(|p| a.is_banned(p))),
                    Ok(DataOutcome::Stored) | Err(_) => {}
                }
            }
            _ => {
                let piece = input.u8() as u32;
                let served = MetadataAssembler::serve(&truth, piece);
                let start = piece as usize * METADATA_BLOCK;
                assert_eq!(served, (start < size).then(|| &truth[start..(start + METADATA_BLOCK).min(size)]));
            }
        }
    }
}

/// KRPC datagrams (BEP 5): a message that decodes survives its encoding.
pub fn krpc(data: &[u8]) {
    if let Ok(m) = krpc::Message::decode(data) {
        let bytes = m.encode();
        if bytes.len() <= krpc::MAX_PACKET {
            assert_eq!(krpc::Message::decode(&bytes).map(normalized), Ok(normalized(m)));
        }
    }
}

/// The encoder writes IPv4-mapped peer addresses as IPv4 ones.
fn normalized(mut m: krpc::Message) -> krpc::Message {
    if let krpc::Body::Response(r) = &mut m.body {
        r.values.iter_mut().for_each(|a| *a = compact::normalize(*a));
    }
    m
}

/// UDP tracker replies (BEP 15), checked against the transaction id they
/// carry so that the fuzzer reaches each body parser.
pub fn udp_tracker(data: &[u8]) {
    let tid = data.get(4..8).map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()));
    // BEP 15 actions: connect, announce, scrape (3, an error, is always read).
    for action in 0..3 {
        let body = match udp::check_reply(data, tid, action) {
            udp::Reply::Body(body) => body,
            udp::Reply::Error(text) => {
                assert!(text.chars().count() <= http::MAX_MESSAGE + 1 && !text.chars().any(char::is_control));
                continue;
            }
            udp::Reply::Foreign => continue,
        };
        match action {
            0 => assert_eq!(udp::parse_connect(body).is_ok(), body.len() >= 8),
            1 => {
                for (ipv6, width) in [(false, 6), (true, 18)] {
                    if let Ok(r) = udp::parse_announce(body, ipv6) {
                        assert!(r.peers.len() <= (body.len() - 12) / width);
                        assert!(r.peers.iter().all(|p| p.port() != 0));
                    }
                }
            }
            _ => {
                for count in [0, 1, body.len() / 12, body.len() / 12 + 1] {
                    if let Ok(stats) = udp::parse_scrape(body, count) {
                        assert_eq!(stats.len(), count);
                    }
                }
            }
        }
    }
}

/// HTTP tracker replies: peers with a port, texts made printable.
pub fn http_tracker(data: &[u8]) {
    match http::parse_reply(data) {
        Ok(r) => {
            assert!(r.peers.iter().all(|p| p.port() != 0));
            if let Some(w) = &r.warning {
                assert!(w.chars().count() <= http::MAX_MESSAGE + 1 && !w.chars().any(char::is_control));
            }
        }
        Err(http::TrackerError::Failure(text)) => {
            assert!(text.chars().count() <= http::MAX_MESSAGE + 1 && !text.chars().any(char::is_control));
        }
        Err(_) => {}
    }
}

/// Control socket requests, one JSON object per line. The line reader and
/// the parse are private to `control::handle`; this reads lines the same
/// way and parses them into the public `Request`.
pub fn control(data: &[u8]) {
    for line in data.split(|&b| b == b'\n').filter(|l| l.len() <= dropseed::control::MAX_REQUEST) {
        let Ok(text) = std::str::from_utf8(line) else { continue };
        if let Ok(req) = serde_json::from_str::<Request>(text) {
            let again: Request = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
            assert_eq!(format!("{again:?}"), format!("{req:?}"));
        }
    }
}

/// Resume records as `state_dir` holds them. Their decoder is private to
/// `ResumeRecord::load`, so the input goes through a file, in a directory
/// of this thread's own that is removed after each run.
pub fn resume(data: &[u8]) {
    let hash = InfoHash([0; 20]);
    let loaded = with_state_dir(|dir| {
        std::fs::write(resume_path(dir, &hash), data).unwrap();
        ResumeRecord::load(dir, &hash)
    });
    if let Ok(record) = loaded {
        let record = record.expect("the record was written");
        let bytes = serde_bencode::to_bytes(&record).unwrap();
        let again = with_state_dir(|dir| {
            std::fs::write(resume_path(dir, &hash), &bytes).unwrap();
            ResumeRecord::load(dir, &hash)
        });
        assert_eq!(again.unwrap(), Some(record));
    }
}

fn with_state_dir<T>(f: impl FnOnce(&Path) -> T) -> T {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static DIR: PathBuf = std::env::temp_dir()
            .join(format!("dropseed-fuzz-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    }
    DIR.with(|dir| {
        std::fs::create_dir_all(dir).unwrap();
        let out = f(dir);
        std::fs::remove_dir_all(dir).unwrap();
        out
    })
}

/// The configuration file (read as UTF-8 text, as `Config::load` does): a
/// config that parses survives being written out again.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.toml");
    if let Ok(c) = Config::parse(text, path) {
        if let Ok(back) = toml::to_string(&c) {
            assert_eq!(Config::parse(&back, path).unwrap(), c, "{back}");
        }
    }
}

/// The MSE handshake machines: raw bytes to a responder and an initiator
/// (in chunks the first byte sizes), and a real handshake whose encrypted
/// step 3 has the input XORed into it, so the fuzzer reaches the plaintext
/// fields (VC, crypto_provide, the pad and IA lengths) behind the sync.
/// Nothing may panic, and what a machine buffers stays bounded.
pub fn mse_handshake(data: &[u8]) {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let skey = [3u8; 20];
    let lookup = |h: &[u8; 20]| (*h == mse::req2(&skey)).then_some(skey);
    let chunk = data.first().map_or(1, |&b| b as usize + 1);

    let mut b = Responder::new(Methods::BOTH, &mut rng);
    for c in data.chunks(chunk) {
        if b.feed(c, &lookup).is_err() {
            break;
        }
    }
    let (mut a, _) = Initiator::new(skey, Methods::BOTH, vec![0; 68], &mut rng);
    for c in data.chunks(chunk) {
        if a.feed(c).is_err() {
            break;
        }
    }

    let (mut a, first) = Initiator::new(skey, Methods::BOTH, vec![1; 68], &mut rng);
    let mut b = Responder::new(Methods::BOTH, &mut rng);
    let step2 = b.feed(&first, &lookup).expect("a real step 1").send;
    let mut step3 = a.feed(&step2).expect("a real step 2").send;
    for (byte, x) in step3.iter_mut().skip(40).zip(data) {
        *byte ^= x;
    }
    if let Ok(p) = b.feed(&step3, &lookup) {
        if let Some(done) = p.done {
            assert!(done.received.len() <= u16::MAX as usize, "only the IA came");
        }
    }
}

/// uTP datagrams (BEP 29): the input as one datagram through the header
/// and extension decoder (a packet that parses re-encodes to the same
/// header, selective ack and payload), then cut into datagrams (a 2-byte
/// length before each) and fed to a connection with data in flight, whose
/// books and bounds are checked after every packet.
pub fn utp(data: &[u8]) {
    if let Ok(p) = utp_packet::parse(data) {
        assert!(utp_packet::looks_like_utp(data));
        assert!(p.payload.len() <= data.len() - utp_packet::HEADER_LEN);
        if let Some(mask) = p.sack {
            assert!(!mask.is_empty() && mask.len() % 4 == 0);
        }
        // We write selective acks of up to MAX_SACK_BYTES; a peer's may be longer.
        if p.sack.is_none_or(|m| m.len() <= utp_packet::MAX_SACK_BYTES) {
            let mut out = Vec::new();
            utp_packet::write_header(&mut out, &p.header, p.sack);
            out.extend_from_slice(p.payload);
            assert_eq!(utp_packet::parse(&out), Ok(p));
        }
    }
    dropseed::utp::fuzz_conn(data);
}
