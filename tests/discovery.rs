//! Magnets and peer discovery against real clients on loopback: metadata
//! fetched over ut_metadata from libtorrent and aria2 and served to
//! libtorrent, peers found through a tracker in `tr`, an `x.pe` address, a
//! UDP tracker (opentracker), the DHT, PEX and local service discovery
//! (multicast on loopback). Every download is compared byte for byte with
//! its source.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A payload and its torrent (announcing to `announce`), in a fresh dir.
fn make_torrent(work: &Path, name: &str, len: u64, announce: &str) -> (PathBuf, PathBuf, String) {
    let data = work.join("data");
    payload(&data.join(name), len, 11);
    let torrent = work.join(format!("{name}.torrent"));
    mktorrent(&data.join(name), announce, 16, &torrent, &[]);
    let hash = info_hash(&torrent);
    (data, torrent, hash)
}

fn write_magnet(dir: &Path, uri: &str) -> PathBuf {
    let p = dir.join("in.magnet");
    std::fs::write(&p, format!("# dropped by a test\n{uri}\n")).unwrap();
    p
}

fn tools() -> bool {
    require("mktorrent", "mktorrent") && require_libtorrent()
}

#[test]
fn magnet_through_the_tracker_in_tr() {
    if !(tools() && require("opentracker", "opentracker")) {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let (data, torrent, hash) =
        make_torrent(work.path(), "via-tr.bin", 3 * 1024 * 1024 + 1000, &tracker.announce_url());
    tracker.allow(&hash);
    let _seed = Libtorrent::start("seed", torrent.to_str().unwrap(), &data, &work.path().join("lt.log"), &[]);
    tracker.wait_seeders(&hash, 1);

    let ds = Dropseed::start_with("");
    let enc: String = tracker.announce_url().bytes().map(|b| format!("%{b:02X}")).collect();
    let magnet = write_magnet(work.path(), &format!("magnet:?xt=urn:btih:{hash}&dn=via-tr.bin&tr={enc}"));
    ds.drop_file(&magnet, "via-tr.magnet");
    ds.wait_state(&hash, "seeding", Duration::from_secs(90));
    assert_same_tree(&data, &ds.download_dir());
    assert!(ds.log_text().contains("metadata received"));
    // The metadata is kept: the state dir holds the torrent, not the magnet.
    assert!(ds.state_dir().join(format!("{hash}.torrent")).exists());
    assert!(!ds.state_dir().join(format!("{hash}.magnet")).exists());
}

#[test]
fn magnet_with_only_an_x_pe_peer_then_restart_without_refetch() {
    if !tools() {
        return;
    }
    let work = tempdir();
    let (data, torrent, hash) =
        make_torrent(work.path(), "via-xpe.bin", 2 * 1024 * 1024 + 77, "http://127.0.0.1:1/announce");
    let seed = Libtorrent::start("seed", torrent.to_str().unwrap(), &data, &work.path().join("lt.log"), &[]);

    let mut ds = Dropseed::start_with("");
    let magnet = write_magnet(work.path(), &format!("magnet:?xt=urn:btih:{hash}&x.pe=127.0.0.1:{}", seed.port));
    ds.drop_file(&magnet, "xpe.magnet");
    ds.wait_state(&hash, "seeding", Duration::from_secs(90));
    assert_same_tree(&data, &ds.download_dir());
    // A restart with the seed gone: the torrent is known and complete at once.
    drop(seed);
    assert!(ds.stop().success());
    ds.start();
    let t = ds.wait_state(&hash, "seeding", Duration::from_secs(30));
    assert_eq!(t["name"], "via-xpe.bin");
    assert_eq!(ds.log_text().matches("fetching metadata").count(), 1, "metadata fetched once only");
}

#[test]
fn libtorrent_fetches_metadata_from_a_dropseed_seeder() {
    if !tools() {
        return;
    }
    let work = tempdir();
    let (data, torrent, hash) =
        make_torrent(work.path(), "served.bin", 3 * 1024 * 1024 + 5, "http://127.0.0.1:1/announce");
    let ds = Dropseed::start_with("");
    payload(&ds.download_dir().join("served.bin"), 3 * 1024 * 1024 + 5, 11);
    ds.drop_file(&torrent, "served.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(30));

    let out = work.path().join("lt-out");
    std::fs::create_dir_all(&out).unwrap();
    let uri = format!("magnet:?xt=urn:btih:{hash}&x.pe=127.0.0.1:{}", ds.port);
    let mut leech = Libtorrent::start("leech", &uri, &out, &work.path().join("lt.log"), &["--timeout", "90"]);
    let status = wait_for("libtorrent to finish", Duration::from_secs(100), || leech.proc.0.try_wait().unwrap());
    let log = std::fs::read_to_string(work.path().join("lt.log")).unwrap();
    assert!(status.success(), "libtorrent did not complete:\n{log}");
    assert_same_tree(&data, &out);
}

#[test]
fn magnet_through_a_udp_tracker() {
    if !(Swarm::tools_present()) {
        return;
    }
    // aria2 seeds and announces over HTTP; dropseed knows only the UDP URL
    // of the same opentracker.
    let swarm = Swarm::single("udp.bin", 2 * 1024 * 1024 + 3, 16, 5);
    let ds = Dropseed::start_with("");
    let magnet =
        write_magnet(swarm.work.path(), &format!("magnet:?xt=urn:btih:{}&tr={}", swarm.hash, swarm.tracker.udp_url()));
    ds.drop_file(&magnet, "udp.magnet");
    ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(90));
    assert_same_tree(&swarm.data, &ds.download_dir());
    // The `completed` announce went over UDP too: a UDP scrape sees two seeders.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let hash: [u8; 20] = dropseed::types::from_hex(&swarm.hash).unwrap().try_into().unwrap();
    wait_for("two seeders in a UDP scrape", Duration::from_secs(30), || {
        let mut conns = dropseed::tracker::udp::Connections::default();
        let timeouts = [Duration::from_secs(2)];
        let r = rt.block_on(dropseed::tracker::udp::scrape(&mut conns, &swarm.tracker.udp_url(), &[hash], &timeouts));
        r.ok().filter(|v| v[0].0 >= 2)
    });
}

#[test]
fn peer_learned_only_through_pex() {
    if !(Swarm::tools_present() && require("mktorrent", "mktorrent")) {
        return;
    }
    // S: aria2 seeding. X: dropseed that knows S but downloads at 1 KiB/s.
    // D: dropseed that knows only X. D can finish only by learning S from
    // X's PEX message (X serves D the metadata, not the data).
    let swarm = Swarm::single("pex.bin", 4 * 1024 * 1024, 16, 9);
    let seeder_port = swarm.seeder.as_ref().unwrap().port;
    let x = Dropseed::start_with("[limits]\ndownload_rate = \"1KiB\"\n");
    let m =
        write_magnet(swarm.work.path(), &format!("magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{seeder_port}", swarm.hash));
    x.drop_file(&m, "s.magnet");
    x.wait_state(&swarm.hash, "downloading", Duration::from_secs(60));

    let d = Dropseed::start_with("");
    let m = write_magnet(swarm.work.path(), &format!("magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{}", swarm.hash, x.port));
    d.drop_file(&m, "x.magnet");
    d.wait_state(&swarm.hash, "seeding", Duration::from_secs(120));
    assert_same_tree(&swarm.data, &d.download_dir());
    let xs = x.torrent(&swarm.hash).unwrap();
    assert!(xs["progress"].as_f64().unwrap() < 0.5, "X was throttled, so the data came from S: {xs}");
}

#[test]
fn magnet_found_through_the_dht_only() {
    if !tools() {
        return;
    }
    let work = tempdir();
    let (data, torrent, hash) =
        make_torrent(work.path(), "dht.bin", 2 * 1024 * 1024 + 99, "http://127.0.0.1:1/announce");
    // Two dropseed nodes route; libtorrent seeds and announces into the DHT;
    // a third dropseed gets a magnet with nothing but the info hash.
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let node_conf = |me: usize| {
        let others: Vec<String> =
            ports.iter().enumerate().filter(|(i, _)| *i != me).map(|(_, p)| format!("\"127.0.0.1:{p}\"")).collect();
        format!("[dht]\nenabled = true\nbootstrap = [{}]\n", others.join(", "))
    };
    let mut routers = Vec::new();
    for (i, &port) in ports[..2].iter().enumerate() {
        let mut d = Dropseed::new(&node_conf(i));
        set_port(&mut d, port);
        d.start();
        routers.push(d);
    }
    let lt_args: Vec<String> =
        ports[..3].iter().flat_map(|p| ["--dht-bootstrap".to_string(), format!("127.0.0.1:{p}")]).collect();
    let lt_args: Vec<&str> = lt_args.iter().map(String::as_str).collect();
    let seed =
        Libtorrent::start_on(ports[3], "seed", torrent.to_str().unwrap(), &data, &work.path().join("lt.log"), &lt_args);

    let mut ds = Dropseed::new(&node_conf(2));
    set_port(&mut ds, ports[2]);
    ds.start();
    let magnet = write_magnet(work.path(), &format!("magnet:?xt=urn:btih:{hash}"));
    ds.drop_file(&magnet, "dht.magnet");
    let lt_log = work.path().join("lt.log");
    let t = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ds.wait_state(&hash, "seeding", Duration::from_secs(120))
    }));
    if t.is_err() {
        panic!("not found through the DHT; libtorrent log:\n{}", std::fs::read_to_string(&lt_log).unwrap_or_default());
    }
    assert_same_tree(&data, &ds.download_dir());
    drop(seed);
    // The node list survives a restart: with no bootstrap nodes configured,
    // the saved ones bring the node back into the DHT.
    assert!(ds.stop().success());
    let saved = std::fs::read_to_string(ds.state_dir().join("dht.json")).unwrap();
    assert!(saved.contains(&format!("127.0.0.1:{}", ports[0])), "{saved}");
    let config = std::fs::read_to_string(&ds.config).unwrap();
    let bootstrap_line = config.lines().find(|l| l.starts_with("bootstrap")).unwrap().to_string();
    std::fs::write(&ds.config, config.replace(&bootstrap_line, "bootstrap = []")).unwrap();
    ds.start();
    wait_for("DHT nodes from the saved list", Duration::from_secs(20), || {
        (ds.status()["dht_nodes"].as_u64()? >= 2).then_some(())
    });
}

/// Rewrites a not-yet-started daemon's config to listen on `port`.
fn set_port(d: &mut Dropseed, port: u16) {
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replace(&format!("listen_port = {}", d.port), &format!("listen_port = {port}"));
    std::fs::write(&d.config, text).unwrap();
    d.port = port;
}

fn transmission_tools() -> bool {
    require("opentracker", "opentracker")
        && require("transmission-daemon", "transmission-daemon")
        && require("transmission-remote", "transmission-cli")
        && require("mktorrent", "mktorrent")
}

fn tracker_magnet(hash: &str, tracker: &Tracker) -> String {
    let enc: String = tracker.announce_url().bytes().map(|b| format!("%{b:02X}")).collect();
    format!("magnet:?xt=urn:btih:{hash}&tr={enc}")
}

#[test]
fn magnet_from_a_transmission_seeder() {
    if !transmission_tools() {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let (data, torrent, hash) = make_torrent(work.path(), "from-tr.bin", 3 * 1024 * 1024 + 17, &tracker.announce_url());
    tracker.allow(&hash);
    let tr = Transmission::start(&data);
    tr.add(&torrent);
    tracker.wait_seeders(&hash, 1);
    // Transmission never dials loopback peers; dropseed dials it, fetches the
    // metadata from it, then the data.
    let ds = Dropseed::start_with("");
    let magnet = write_magnet(work.path(), &tracker_magnet(&hash, &tracker));
    ds.drop_file(&magnet, "tr.magnet");
    ds.wait_state(&hash, "seeding", Duration::from_secs(90));
    assert_same_tree(&data, &ds.download_dir());
}

#[test]
fn transmission_and_aria2_fetch_metadata_from_a_dropseed_seeder() {
    if !(transmission_tools() && require("aria2c", "aria2")) {
        return;
    }
    let work = tempdir();
    let tracker = Tracker::start();
    let len = 2 * 1024 * 1024 + 321;
    let (data, torrent, hash) = make_torrent(work.path(), "to-both.bin", len, &tracker.announce_url());
    tracker.allow(&hash);
    // Transmission announces first, holding only the magnet, so the seeder
    // hears of it from the tracker and dials it.
    let tr_dir = work.path().join("tr");
    std::fs::create_dir_all(&tr_dir).unwrap();
    let tr = Transmission::start(&tr_dir);
    let uri = tracker_magnet(&hash, &tracker);
    tr.add(Path::new(&uri));
    tracker.wait_peers(&hash, 1);

    let ds = Dropseed::start_with("");
    payload(&ds.download_dir().join("to-both.bin"), len, 11);
    ds.drop_file(&torrent, "to-both.torrent");
    ds.wait_state(&hash, "seeding", Duration::from_secs(30));
    // aria2 dials the seeder it gets from the tracker.
    let aria_dir = work.path().join("aria2");
    let mut aria = Aria2::leech(Path::new(&uri), &aria_dir, &work.path().join("aria2.log"));
    assert!(
        aria.wait_exit(Duration::from_secs(90)),
        "aria2 failed: {}",
        std::fs::read_to_string(work.path().join("aria2.log")).unwrap()
    );
    assert_same_tree(&data, &aria_dir);
    wait_for("transmission to finish", Duration::from_secs(90), || (tr.percent_done() == Some(100)).then_some(()));
    assert_same_data(&data, &tr_dir);
}

#[test]
fn a_magnet_stays_paused_across_a_restart() {
    let mut ds = Dropseed::start_with("");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    assert!(ds.cli(&["add", &format!("magnet:?xt=urn:btih:{hash}&dn=later")]).status.success());
    ds.wait_state(hash, "metadata", Duration::from_secs(5));
    assert!(ds.cli(&["pause", "later"]).status.success());
    ds.wait_state(hash, "paused", Duration::from_secs(5));
    let out = ds.cli(&["recheck", "later"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("until its metadata arrives"));
    assert!(ds.stop().success());
    ds.start();
    let t = ds.wait_state(hash, "paused", Duration::from_secs(5));
    assert_eq!(t["name"], "later");
    assert!(ds.cli(&["resume", &hash[..8]]).status.success());
    ds.wait_state(hash, "metadata", Duration::from_secs(5));
    assert!(!ds.log_text().contains("cannot restore"));
}

/// A peer that has the right metadata size but answers every ut_metadata
/// request with junk (after `reply_delay`); it also asks us for the metadata. Returns its port, how
/// many blocks it sent, and how many rejects it got from us.
fn spawn_metadata_liar(
    info_hash: [u8; 20],
    metadata_size: usize,
    reply_delay: Duration,
) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use dropseed::extension::{ExtHandshake, MetadataMsg, METADATA_BLOCK};
    use dropseed::wire::{encode, Message};
    let (sent, rejected) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (sent_count, reject_count) = (sent.clone(), rejected.clone());
    let mut greeting = Vec::new();
    let ext = format!("d1:md11:ut_metadatai3ee13:metadata_sizei{metadata_size}ee");
    encode(&Message::Extended { id: 0, payload: ext.as_bytes() }, &mut greeting);
    let (port, _) = spawn_scripted_peer(info_hash, *b"-XX0001-metadataliar", greeting, move || {
        let (sent_count, reject_count) = (sent_count.clone(), reject_count.clone());
        let mut their_id = None;
        move |msg: &Message<'_>, reply: &mut Vec<u8>| {
            let Message::Extended { id, payload } = msg else { return };
            if *id == 0 {
                their_id = ExtHandshake::decode(payload).and_then(|h| h.id_of("ut_metadata"));
                if let Some(tid) = their_id {
                    let ask = MetadataMsg::Request { piece: 0 }.encode();
                    encode(&Message::Extended { id: tid, payload: &ask }, reply);
                }
                return;
            }
            match (MetadataMsg::decode(payload), their_id) {
                (Ok(MetadataMsg::Request { piece }), Some(tid)) => {
                    std::thread::sleep(reply_delay);
                    let start = piece as usize * METADATA_BLOCK;
                    let junk = vec![b'x'; metadata_size.saturating_sub(start).min(METADATA_BLOCK)];
                    let data = MetadataMsg::Data { piece, total_size: metadata_size, data: &junk };
                    encode(&Message::Extended { id: tid, payload: &data.encode() }, reply);
                    sent_count.fetch_add(1, Ordering::SeqCst);
                }
                (Ok(MetadataMsg::Reject { .. }), _) => {
                    reject_count.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });
    (port, sent, rejected)
}

/// A magnet whose metadata comes from a liar (answering after `liar_delay`)
/// and an honest libtorrent seeder; it must complete with the true data.
fn metadata_with_a_liar(liar_delay: Duration) {
    if !tools() {
        return;
    }
    let work = tempdir();
    // 1200 small files: about 80 KiB of metadata, five blocks, so both
    // peers are asked for some.
    let data = work.path().join("data");
    for i in 0..1200 {
        payload(&data.join("liar").join(format!("a-file-with-a-rather-long-name-{i:04}.bin")), 1000 + i, i);
    }
    let torrent = work.path().join("liar.torrent");
    mktorrent(&data.join("liar"), "http://127.0.0.1:1/announce", 16, &torrent, &[]);
    let hash = info_hash(&torrent);
    let meta = dropseed::metainfo::Metainfo::from_torrent_bytes(&std::fs::read(&torrent).unwrap()).unwrap();
    let (liar_port, liar_sent, liar_rejected) =
        spawn_metadata_liar(meta.info_hash.0, meta.info_bytes.len(), liar_delay);
    let lt_log = work.path().join("lt.log");
    let seed = Libtorrent::start("seed", torrent.to_str().unwrap(), &data, &lt_log, &[]);
    // Both sources ready before the magnet arrives, so both are asked.
    wait_for("libtorrent to seed", Duration::from_secs(60), || {
        std::fs::read_to_string(&lt_log).ok().filter(|t| t.contains("state=seeding")).map(|_| ())
    });

    let ds = Dropseed::start_with("");
    let uri = format!("magnet:?xt=urn:btih:{hash}&x.pe=127.0.0.1:{liar_port}&x.pe=127.0.0.1:{}", seed.port);
    ds.drop_file(&write_magnet(work.path(), &uri), "liar.magnet");
    ds.wait_state(&hash, "seeding", Duration::from_secs(120));
    assert_same_tree(&data, &ds.download_dir());
    let saved = std::fs::read(ds.state_dir().join(format!("{hash}.torrent"))).unwrap();
    assert_eq!(dropseed::metainfo::Metainfo::from_torrent_bytes(&saved).unwrap().info_bytes, meta.info_bytes);
    if liar_sent.load(Ordering::SeqCst) > 0 {
        // It asked us for metadata we did not have yet: we said no.
        assert!(liar_rejected.load(Ordering::SeqCst) > 0, "no reject while fetching");
        assert!(ds.log_text().contains("metadata failed the info-hash check"), "the junk was noticed");
    }
}

#[test]
fn metadata_from_a_liar_is_discarded_and_an_honest_peer_completes_it() {
    // The liar answers at once and is usually the only contributor: banned.
    metadata_with_a_liar(Duration::ZERO);
}

#[test]
fn metadata_mixed_from_a_liar_and_an_honest_peer_is_fetched_again_from_one() {
    // The liar answers slowly, so both peers contribute blocks; the failed
    // attempt is retried from one peer at a time.
    metadata_with_a_liar(Duration::from_millis(400));
}

#[test]
fn the_dht_node_survives_a_flood_of_junk_and_queries() {
    use dropseed::dht::krpc::{Body, Message, NodeId, Query};
    let mut ds = Dropseed::new("[dht]\nenabled = true\nbootstrap = []\n");
    let port = ds.port;
    ds.start();
    ds.wait_log("DHT node listening", Duration::from_secs(10));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = ("127.0.0.1", port);
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..20_000u32 {
        let packet = match i % 4 {
            0 => (0..(next() % 1400) as usize).map(|_| next() as u8).collect::<Vec<u8>>(),
            1 => Message {
                t: i.to_be_bytes().to_vec(),
                id: Some(NodeId([i as u8; 20])),
                body: Body::Query(Query::GetPeers { info_hash: [(next() % 256) as u8; 20], want: None }),
            }
            .encode(),
            2 => Message {
                t: i.to_be_bytes().to_vec(),
                id: Some(NodeId([7; 20])),
                body: Body::Query(Query::AnnouncePeer {
                    info_hash: next().to_be_bytes().repeat(3)[..20].try_into().unwrap(),
                    port: 1000,
                    token: b"forged".to_vec(),
                    implied_port: false,
                }),
            }
            .encode(),
            _ => b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe".repeat(2),
        };
        let _ = sock.send_to(&packet, target);
    }
    // After the flood (replies are rate-capped per second) a ping is answered.
    std::thread::sleep(Duration::from_millis(1100));
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let ping = Message { t: b"zz".to_vec(), id: Some(NodeId([9; 20])), body: Body::Query(Query::Ping) }.encode();
    let answered = wait_for("a ping answered after the flood", Duration::from_secs(10), || {
        sock.send_to(&ping, target).unwrap();
        let mut buf = [0u8; 1500];
        loop {
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            if let Ok(m) = Message::decode(&buf[..n]) {
                if m.t == b"zz" {
                    return Some(m);
                }
            }
        }
    });
    assert!(matches!(answered.body, Body::Response(_)));
    // Still serving the control socket, and it knows no node from the flood
    // (nodes get in by answering our pings, which nobody here does).
    let status = ds.status();
    assert_eq!(status["dht_nodes"], 0);
    assert_eq!(status["dht_port"], port);
}

#[test]
fn private_torrents_never_touch_the_dht() {
    use dropseed::dht::krpc::{Body, Message, NodeId, Query, Response};
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    payload(&work.path().join("pub/public.bin"), 100_000, 1);
    payload(&work.path().join("priv/private.bin"), 100_000, 2);
    let (public, private) = (work.path().join("public.torrent"), work.path().join("private.torrent"));
    mktorrent(&work.path().join("pub/public.bin"), "http://127.0.0.1:1/announce", 15, &public, &[]);
    mktorrent(&work.path().join("priv/private.bin"), "http://127.0.0.1:1/announce", 15, &private, &["-p"]);
    let (public_hash, private_hash) = (info_hash(&public), info_hash(&private));

    // A stand-in DHT node that answers everything and notes what is asked.
    let node = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    node.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let node_addr = node.local_addr().unwrap();
    let ds = Dropseed::start_with(&format!("[dht]\nenabled = true\nbootstrap = [\"{node_addr}\"]\n"));
    ds.drop_file(&private, "private.torrent");
    ds.drop_file(&public, "public.torrent");
    let mut asked: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut public_seen_at = None;
    while std::time::Instant::now() < deadline {
        if public_seen_at.is_some_and(|t: std::time::Instant| t.elapsed() > Duration::from_secs(3)) {
            break;
        }
        let mut buf = [0u8; 1500];
        let Ok((n, from)) = node.recv_from(&mut buf) else { continue };
        let Ok(m) = Message::decode(&buf[..n]) else { continue };
        let Body::Query(q) = m.body else { continue };
        if let Query::GetPeers { info_hash, .. } | Query::AnnouncePeer { info_hash, .. } = &q {
            let hex: String = info_hash.iter().map(|b| format!("{b:02x}")).collect();
            if hex == public_hash && public_seen_at.is_none() {
                public_seen_at = Some(std::time::Instant::now());
            }
            asked.push(hex);
        }
        let token = matches!(q, Query::GetPeers { .. }).then(|| b"tok".to_vec());
        let reply = Message {
            t: m.t,
            id: Some(NodeId([3; 20])),
            body: Body::Response(Response { token, ..Default::default() }),
        };
        node.send_to(&reply.encode(), from).unwrap();
    }
    assert!(asked.contains(&public_hash), "the public torrent was looked up: {asked:?}");
    assert!(!asked.contains(&private_hash), "the private torrent stayed off the DHT: {asked:?}");
}

#[test]
fn libtorrent_finds_a_dropseed_seeder_through_the_dht() {
    if !tools() {
        return;
    }
    let work = tempdir();
    let len = 1024 * 1024 + 4321;
    let (data, torrent, hash) = make_torrent(work.path(), "dht-seeded.bin", len, "http://127.0.0.1:1/announce");
    // A dropseed router and a dropseed seeder bootstrap from each other; the
    // seeder announces itself. libtorrent, given only the info hash, asks
    // them, then fetches metadata and data from the seeder.
    let (router_port, seeder_port, lt_port) = (free_port(), free_port(), free_port());
    let dht =
        |other: u16| format!("[dht]\nenabled = true\nbootstrap = [\"127.0.0.1:{other}\", \"127.0.0.1:{lt_port}\"]\n");
    let mut router = Dropseed::new(&dht(seeder_port));
    set_port(&mut router, router_port);
    router.start();
    let mut seeder = Dropseed::new(&dht(router_port));
    set_port(&mut seeder, seeder_port);
    payload(&seeder.download_dir().join("dht-seeded.bin"), len, 11);
    seeder.start();
    seeder.drop_file(&torrent, "seeded.torrent");
    seeder.wait_state(&hash, "seeding", Duration::from_secs(30));

    let out = work.path().join("lt-out");
    std::fs::create_dir_all(&out).unwrap();
    let args: Vec<String> = [router_port, seeder_port]
        .iter()
        .flat_map(|p| ["--dht-bootstrap".to_string(), format!("127.0.0.1:{p}")])
        .chain(["--timeout".to_string(), "100".to_string()])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let uri = format!("magnet:?xt=urn:btih:{hash}");
    let log = work.path().join("lt.log");
    let mut leech = Libtorrent::start_on(lt_port, "leech", &uri, &out, &log, &args);
    let status = wait_for("libtorrent to finish", Duration::from_secs(110), || leech.proc.0.try_wait().unwrap());
    assert!(status.success(), "libtorrent did not complete:\n{}", std::fs::read_to_string(&log).unwrap());
    assert_same_tree(&data, &out);
}

/// A port free on ::1 for TCP and UDP (libtorrent and dropseed use both).
fn free_port6() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

/// Rewrites a not-yet-started daemon's config to listen on `ip` only.
fn set_listen_address(d: &Dropseed, ip: &str) {
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replace("listen_address = \"127.0.0.1\"", &format!("listen_address = \"{ip}\""));
    std::fs::write(&d.config, text).unwrap();
}

/// The IPv6 DHT (BEP 32) against libtorrent, over ::1 alone: libtorrent
/// seeds with its DHT on [::1] only, dropseed listens on ::1 only (so its
/// IPv4 node does not run) and bootstraps from libtorrent alone. libtorrent
/// learns of dropseed from its queries, gets a token from its `get_peers`
/// reply and announces to it; dropseed's lookup of a bare info hash finds
/// libtorrent, fetches the metadata and the data.
#[test]
fn magnet_found_through_the_ipv6_dht_from_a_libtorrent_seeder() {
    if !tools() {
        return;
    }
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        missing("no IPv6 loopback (::1) on this host");
        return;
    }
    let work = tempdir();
    let len = 1024 * 1024 + 777;
    let (data, torrent, hash) = make_torrent(work.path(), "dht6.bin", len, "http://127.0.0.1:1/announce");
    let (lt_port, me_port) = (free_port6(), free_port6());
    let lt_log = work.path().join("lt.log");
    let boot = format!("[::1]:{me_port}");
    let lt_args = ["--listen-ip", "[::1]", "--dht-bootstrap", &boot];
    let _seed = Libtorrent::start_on(lt_port, "seed", torrent.to_str().unwrap(), &data, &lt_log, &lt_args);

    let mut ds = Dropseed::new(&format!("[dht]\nenabled = true\nbootstrap = [\"[::1]:{lt_port}\"]\n"));
    set_port(&mut ds, me_port);
    set_listen_address(&ds, "::1");
    ds.start();
    ds.wait_log("DHT node listening", Duration::from_secs(10));
    ds.drop_file(&write_magnet(work.path(), &format!("magnet:?xt=urn:btih:{hash}")), "dht6.magnet");
    let t = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ds.wait_state(&hash, "seeding", Duration::from_secs(120))
    }));
    if t.is_err() {
        panic!(
            "not found through the IPv6 DHT; libtorrent log:\n{}\ndropseed log:\n{}",
            std::fs::read_to_string(&lt_log).unwrap_or_default(),
            ds.log_text()
        );
    }
    assert_same_tree(&data, &ds.download_dir());
    let status = ds.status();
    assert_eq!((status["dht_nodes"].as_u64(), status["dht_nodes6"].as_u64()), (Some(1), Some(1)), "{status}");
    // Only the IPv6 node ran, and its node list is saved under nodes6.
    assert!(ds.stop().success());
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ds.state_dir().join("dht.json")).unwrap()).unwrap();
    assert_eq!(saved["nodes6"], serde_json::json!([format!("[::1]:{lt_port}")]), "{saved}");
    assert_eq!(saved["nodes"], serde_json::json!([]), "{saved}");
}

/// The other way over ::1 alone: a dropseed router and a dropseed seeder
/// (both listening on ::1 only) bootstrap from each other; libtorrent, with
/// its DHT on [::1] and only the router to start from, reads the seeder's
/// 18-byte address from the router's `values`, dials it over IPv6 and
/// fetches metadata and data.
#[test]
fn libtorrent_finds_a_dropseed_seeder_through_the_ipv6_dht() {
    if !tools() {
        return;
    }
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        missing("no IPv6 loopback (::1) on this host");
        return;
    }
    let work = tempdir();
    let len = 1024 * 1024 + 4321;
    let (data, torrent, hash) = make_torrent(work.path(), "dht6-seeded.bin", len, "http://127.0.0.1:1/announce");
    let (router_port, seeder_port, lt_port) = (free_port6(), free_port6(), free_port6());
    let dht = |other: u16| format!("[dht]\nenabled = true\nbootstrap = [\"[::1]:{other}\", \"[::1]:{lt_port}\"]\n");
    let mut router = Dropseed::new(&dht(seeder_port));
    set_port(&mut router, router_port);
    set_listen_address(&router, "::1");
    router.start();
    let mut seeder = Dropseed::new(&dht(router_port));
    set_port(&mut seeder, seeder_port);
    set_listen_address(&seeder, "::1");
    payload(&seeder.download_dir().join("dht6-seeded.bin"), len, 11);
    seeder.start();
    seeder.drop_file(&torrent, "seeded.torrent");
    seeder.wait_state(&hash, "seeding", Duration::from_secs(30));

    let out = work.path().join("lt-out");
    std::fs::create_dir_all(&out).unwrap();
    let boot = format!("[::1]:{router_port}");
    let args = ["--listen-ip", "[::1]", "--dht-bootstrap", &boot, "--timeout", "100"];
    let uri = format!("magnet:?xt=urn:btih:{hash}");
    let log = work.path().join("lt.log");
    let mut leech = Libtorrent::start_on(lt_port, "leech", &uri, &out, &log, &args);
    let status = wait_for("libtorrent to finish", Duration::from_secs(110), || leech.proc.0.try_wait().unwrap());
    assert!(status.success(), "libtorrent did not complete:\n{}", std::fs::read_to_string(&log).unwrap());
    assert_same_tree(&data, &out);
}

#[test]
fn magnet_found_through_the_dht_from_an_aria2_seeder() {
    if !(tools() && require("aria2c", "aria2")) {
        return;
    }
    let work = tempdir();
    let len = 1024 * 1024 + 999;
    let (data, torrent, hash) = make_torrent(work.path(), "aria-dht.bin", len, "http://127.0.0.1:1/announce");
    let (router_port, aria_dht_port, me_port) = (free_port(), free_port(), free_port());
    let mut router = Dropseed::new(&format!(
        "[dht]\nenabled = true\nbootstrap = [\"127.0.0.1:{aria_dht_port}\", \"127.0.0.1:{me_port}\"]\n"
    ));
    set_port(&mut router, router_port);
    router.start();
    let dht_file = work.path().join("aria2-dht.dat");
    let _seed = Aria2::seed_with(
        &torrent,
        &data,
        &work.path().join("aria2.log"),
        &[
            "--enable-dht=true",
            &format!("--dht-listen-port={aria_dht_port}"),
            &format!("--dht-entry-point=127.0.0.1:{router_port}"),
            &format!("--dht-file-path={}", dht_file.display()),
        ],
    );
    let mut ds = Dropseed::new(&format!(
        "[dht]\nenabled = true\nbootstrap = [\"127.0.0.1:{router_port}\", \"127.0.0.1:{aria_dht_port}\"]\n"
    ));
    set_port(&mut ds, me_port);
    ds.start();
    ds.drop_file(&write_magnet(work.path(), &format!("magnet:?xt=urn:btih:{hash}")), "aria.magnet");
    ds.wait_state(&hash, "seeding", Duration::from_secs(120));
    assert_same_tree(&data, &ds.download_dir());
}

#[test]
fn peer_learned_through_pex_from_libtorrent() {
    if !(Swarm::tools_present() && tools()) {
        return;
    }
    // S: aria2 seeding. L: libtorrent knowing S, downloading at 2 KiB/s.
    // dropseed knows only L, and can finish only with S's address from L's PEX.
    let swarm = Swarm::single("lt-pex.bin", 3 * 1024 * 1024, 16, 19);
    let seeder_port = swarm.seeder.as_ref().unwrap().port;
    let l_dir = swarm.work.path().join("l");
    std::fs::create_dir_all(&l_dir).unwrap();
    let peer = format!("127.0.0.1:{seeder_port}");
    let l = Libtorrent::start(
        "leech",
        swarm.torrent.to_str().unwrap(),
        &l_dir,
        &swarm.work.path().join("lt.log"),
        &["--peer", &peer, "--download-limit", "2048"],
    );
    let ds = Dropseed::start_with("");
    let m = write_magnet(swarm.work.path(), &format!("magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{}", swarm.hash, l.port));
    ds.drop_file(&m, "l.magnet");
    ds.wait_state(&swarm.hash, "seeding", Duration::from_secs(90));
    assert_same_tree(&swarm.data, &ds.download_dir());
}

/// A crowd of fake DHT nodes on one host, each on its own port: every query
/// gets an answer naming eight others of the crowd, so a lookup that trusted
/// them would fill its routing table from this one address.
struct NodeCrowd {
    socks: Vec<(dropseed::dht::krpc::NodeId, std::net::UdpSocket)>,
}

impl NodeCrowd {
    fn on(ip: [u8; 4], n: usize) -> NodeCrowd {
        let socks = (0..n)
            .map(|i| {
                let s = std::net::UdpSocket::bind(std::net::SocketAddr::from((ip, 0))).unwrap();
                s.set_nonblocking(true).unwrap();
                let mut id = [0u8; 20];
                id[..8].copy_from_slice(&(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)).to_be_bytes());
                id[19] = ip[3];
                (dropseed::dht::krpc::NodeId(id), s)
            })
            .collect();
        NodeCrowd { socks }
    }

    fn addr(&self, i: usize) -> std::net::SocketAddr {
        self.socks[i].1.local_addr().unwrap()
    }

    /// Answers every query that arrives during `secs`.
    fn serve(&self, secs: u64) {
        use dropseed::dht::krpc::{Body, Message, Response};
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 1500];
        let mut k = 0usize;
        while std::time::Instant::now() < deadline {
            let mut idle = true;
            for (id, s) in &self.socks {
                let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
                idle = false;
                let Ok(Message { t, body: Body::Query(_), .. }) = Message::decode(&buf[..n]) else { continue };
                let nodes = (0..8)
                    .map(|j| {
                        k = (k + 7 + j) % self.socks.len();
                        (self.socks[k].0, self.addr(k))
                    })
                    .collect();
                let reply = Response { nodes, values: vec![], token: Some(b"tok".to_vec()) };
                let _ = s.send_to(&Message { t, id: Some(*id), body: Body::Response(reply) }.encode(), from);
            }
            if idle {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

#[test]
fn one_host_with_300_ports_cannot_fill_the_dht_routing_table() {
    let crowd = NodeCrowd::on([127, 0, 0, 3], 300);
    let honest = NodeCrowd::on([127, 0, 0, 4], 1);
    // The daemon bootstraps from two crowd nodes and the honest one.
    let boot = format!("\"{}\", \"{}\", \"{}\"", crowd.addr(0), crowd.addr(1), honest.addr(0));
    let mut ds = Dropseed::new(&format!("[dht]\nenabled = true\nbootstrap = [{boot}]\n"));
    ds.start();
    ds.wait_log("DHT node listening", Duration::from_secs(10));
    let h = std::thread::spawn(move || {
        honest.serve(12);
        honest
    });
    crowd.serve(12);
    let _honest = h.join().unwrap();
    let nodes = ds.status()["dht_nodes"].as_u64().unwrap();
    // At most four per loopback address (where test swarms share one), and
    // the honest node is among them.
    assert!((2..=5).contains(&nodes), "routing table holds {nodes} nodes");
    assert!(ds.log_text().len() < 10 << 20);
}

/// LSD on loopback: announces go to the group through 127.0.0.1, where
/// every test's daemons and libtorrent meet (their torrents differ).
const LSD: &str = "[lsd]\nenabled = true\ninterface = \"127.0.0.1\"\n";

#[test]
fn libtorrent_seeder_found_only_through_lsd() {
    if !tools() {
        return;
    }
    let work = tempdir();
    // No tracker that answers, no DHT, no peer address: only LSD is left.
    let (data, torrent, hash) =
        make_torrent(work.path(), "lsd.bin", 2 * 1024 * 1024 + 77, "http://127.0.0.1:1/announce");
    let ds = Dropseed::start_with(LSD);
    ds.wait_log("local service discovery on", Duration::from_secs(10));
    ds.drop_file(&torrent, "lsd.torrent");
    let log = work.path().join("lt.log");
    let _seed = Libtorrent::start("seed", torrent.to_str().unwrap(), &data, &log, &["--lsd"]);
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ds.wait_state(&hash, "seeding", Duration::from_secs(60))
    }));
    if done.is_err() {
        panic!("not found through LSD; libtorrent log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    assert_same_tree(&data, &ds.download_dir());
}

#[test]
fn two_dropseeds_find_each_other_through_lsd() {
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    let len = 1024 * 1024 + 5;
    let (data, torrent, hash) = make_torrent(work.path(), "lsd-pair.bin", len, "http://127.0.0.1:1/announce");
    let mut seeder = Dropseed::new(LSD);
    payload(&seeder.download_dir().join("lsd-pair.bin"), len, 11);
    seeder.start();
    seeder.drop_file(&torrent, "pair.torrent");
    seeder.wait_state(&hash, "seeding", Duration::from_secs(30));
    let leech = Dropseed::start_with(LSD);
    leech.drop_file(&torrent, "pair.torrent");
    leech.wait_state(&hash, "seeding", Duration::from_secs(60));
    assert_same_tree(&data, &leech.download_dir());
}

#[test]
fn private_torrents_are_never_announced_nor_given_lsd_peers() {
    use dropseed::lsd::message;
    if !require("mktorrent", "mktorrent") {
        return;
    }
    let work = tempdir();
    payload(&work.path().join("pub/lsd-public.bin"), 100_000, 3);
    payload(&work.path().join("priv/lsd-private.bin"), 100_000, 4);
    let (public, private) = (work.path().join("public.torrent"), work.path().join("private.torrent"));
    mktorrent(&work.path().join("pub/lsd-public.bin"), "http://127.0.0.1:1/announce", 15, &public, &[]);
    mktorrent(&work.path().join("priv/lsd-private.bin"), "http://127.0.0.1:1/announce", 15, &private, &["-p"]);
    let (public_hash, private_hash) = (info_hash(&public), info_hash(&private));

    // The test listens in the group on loopback, as any LAN host could.
    let group = dropseed::lsd::open_socket(std::net::Ipv4Addr::LOCALHOST).unwrap();
    group.set_nonblocking(false).unwrap();
    group.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let ds = Dropseed::start_with(LSD);
    ds.drop_file(&private, "private.torrent");
    ds.drop_file(&public, "public.torrent");
    let mut announced: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut public_seen_at = None;
    while std::time::Instant::now() < deadline {
        if public_seen_at.is_some_and(|t: std::time::Instant| t.elapsed() > Duration::from_secs(4)) {
            break;
        }
        let mut buf = [0u8; 2048];
        let Ok((n, _)) = group.recv_from(&mut buf) else { continue };
        let Ok(a) = message::parse(&buf[..n], "the test's cookie") else { continue };
        for h in a.hashes {
            if h.hex() == public_hash && public_seen_at.is_none() {
                public_seen_at = Some(std::time::Instant::now());
            }
            announced.push(h.hex());
        }
    }
    assert!(announced.contains(&public_hash), "the public torrent was announced: {announced:?}");
    assert!(!announced.contains(&private_hash), "the private torrent never was: {announced:?}");

    // Junk in the group, of many lengths and one too large, changes nothing.
    let to = std::net::SocketAddr::from((message::GROUP, message::PORT));
    for len in (0..1200).step_by(37).chain([3000]) {
        let junk: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        group.send_to(&junk, to).unwrap();
    }
    group.send_to(b"BT-SEARCH * HTTP/1.1\r\nPort: 99999\r\nInfohash: 12\r\n\r\n", to).unwrap();
    // Someone announces both torrents on a port the test listens on: the
    // public torrent dials it, the private one never does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let forged = |hex: &str| {
        let hash = dropseed::types::InfoHash::parse(hex).unwrap();
        message::build(port, "forger", &[hash])
    };
    group.send_to(&forged(&private_hash), to).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(listener.accept().is_err(), "the private torrent dialled a peer it heard of through LSD");
    group.send_to(&forged(&public_hash), to).unwrap();
    wait_for("the public torrent to dial its LSD peer", Duration::from_secs(10), || listener.accept().ok());
    assert!(ds.status()["torrents"].as_array().is_some_and(|t| t.len() == 2), "the daemon is fine");
}
