//! The tracker client against real and misbehaving trackers: a whole life
//! against opentracker's HTTP and UDP sides (its scrape counts say what it
//! heard), redirects (how many, to which schemes), and trackers that never
//! answer (the announce times out, and shutdown stays bounded).

mod common;

use common::{Aria2, Dropseed, Tracker};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn tools() -> bool {
    common::require("opentracker", "opentracker")
        && common::require("aria2c", "aria2")
        && common::require("mktorrent", "mktorrent")
}

/// What `dropseed trackers ID --json` says of the torrent's first tracker.
fn first_tracker(d: &Dropseed, hash: &str) -> serde_json::Value {
    let out = d.cli(&["trackers", hash, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["trackers"][0].clone()
}

/// Waits until the torrent's tracker answered an announce carrying `event`.
fn wait_answered(d: &Dropseed, hash: &str, event: &str, limit: Duration) {
    common::wait_for(&format!("an answered '{event}' announce"), limit, || {
        let t = first_tracker(d, hash);
        let answered = t["result"].as_str().is_some_and(|r| r.contains("peers"));
        (t["sent"]["event"] == event && answered).then_some(())
    });
}

/// Waits until opentracker counts `seeders` seeders and `leechers` leechers.
fn wait_counts(tracker: &Tracker, hash: &str, seeders: u64, leechers: u64, limit: Duration) -> (u64, u64, u64) {
    common::wait_for(&format!("{seeders} seeders and {leechers} leechers at opentracker"), limit, || {
        tracker.scrape(hash).filter(|s| (s.0, s.1) == (seeders, leechers))
    })
}

/// Add, download from aria2, complete, seed, pause, resume, SIGHUP,
/// restart, kill -9 and restart, remove: at every step opentracker's counts
/// show it heard what it should, and in the end it counted one completion.
fn whole_life_against_opentracker(url: impl Fn(&Tracker) -> String) {
    let tracker = Tracker::start();
    let work = common::tempdir();
    let data = work.path().join("data");
    common::payload(&data.join("life.bin"), 3 << 20, 21);
    let torrent = work.path().join("life.torrent");
    common::mktorrent(&data.join("life.bin"), &url(&tracker), 16, &torrent, &[]);
    let hash = common::info_hash(&torrent);
    tracker.allow(&hash);
    let seeder = Aria2::seed(&torrent, &data, &work.path().join("aria2.log"));
    // aria2 speaks UDP to trackers only with its DHT on: it is announced by hand.
    tracker.announce(&hash, seeder.port, 0);
    tracker.wait_seeders(&hash, 1);

    let mut d = Dropseed::start_with("");
    d.drop_file(&torrent, "life.torrent");
    d.wait_state(&hash, "seeding", Duration::from_secs(60));
    common::assert_same_tree(&data, &d.download_dir());
    // `completed` waits for the floor after `started`, then makes us a seeder.
    wait_answered(&d, &hash, "completed", Duration::from_secs(45));
    wait_counts(&tracker, &hash, 2, 0, Duration::from_secs(10));
    // The tracker's count of the whole swarm is in the status.
    let swarm = d.torrent(&hash).map(|t| t["swarm"].clone()).unwrap_or_default();
    assert!(swarm["seeders"].as_u64().is_some_and(|n| n >= 1) && swarm["leechers"].is_u64(), "{swarm}");

    assert!(d.cli(&["pause", &hash]).status.success());
    wait_counts(&tracker, &hash, 1, 0, Duration::from_secs(10));
    assert!(d.cli(&["resume", &hash]).status.success());
    d.signal(libc::SIGHUP);
    wait_answered(&d, &hash, "started", Duration::from_secs(45));
    wait_counts(&tracker, &hash, 2, 0, Duration::from_secs(10));

    d.stop();
    wait_counts(&tracker, &hash, 1, 0, Duration::from_secs(5));
    d.start();
    wait_answered(&d, &hash, "started", Duration::from_secs(45));
    wait_counts(&tracker, &hash, 2, 0, Duration::from_secs(10));

    // No `stopped` after a kill -9: the tracker keeps us, and the restart's
    // `started` (from the same address) is the same peer to it.
    d.kill9();
    d.start();
    wait_answered(&d, &hash, "started", Duration::from_secs(45));
    assert!(d.cli(&["remove", &hash]).status.success());
    let (_, _, completed) = wait_counts(&tracker, &hash, 1, 0, Duration::from_secs(10));
    assert_eq!(completed, 1, "one completion, announced once");
}

#[test]
fn a_whole_life_against_opentracker_over_http() {
    if tools() {
        whole_life_against_opentracker(Tracker::announce_url);
    }
}

#[test]
fn a_whole_life_against_opentracker_over_udp() {
    if tools() {
        whole_life_against_opentracker(Tracker::udp_url);
    }
}

/// An HTTP server on loopback that answers each request by `route`
/// (given the request target), counting requests per path.
struct Scripted {
    port: u16,
    /// Each request's target, with when it came.
    hits: Arc<Mutex<Vec<(Instant, String)>>>,
}

/// What a scripted tracker does with one request.
enum Answer {
    Redirect(String),
    /// Reads the request and never answers (the socket stays open).
    Hang,
    /// Answers `started` with an empty peer list, then hangs.
    StartedThenHang,
    /// Answers with this failure reason.
    Fail(&'static str),
    /// Answers with no peers and a 30 min interval.
    Ok,
}

impl Scripted {
    fn start(route: fn(&str, u16) -> Answer) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let h = hits.clone();
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for s in listener.incoming().flatten() {
                let Some(target) = request_target(&s) else { continue };
                h.lock().unwrap().push((Instant::now(), target.clone()));
                let path = target.split('?').next().unwrap_or("").to_string();
                let query = target.split_once('?').map_or(String::new(), |(_, q)| format!("?{q}"));
                let answer = match route(&path, port) {
                    Answer::StartedThenHang if target.contains("event=started") => None,
                    Answer::Ok => None,
                    // The announce's query goes along, as a tracker's would.
                    Answer::Redirect(to) => Some(format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}{query}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )),
                    Answer::Fail(why) => {
                        let body = format!("d14:failure reason{}:{why}e", why.len());
                        Some(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()))
                    }
                    Answer::Hang | Answer::StartedThenHang => {
                        held.push(s);
                        continue;
                    }
                };
                let reply = answer.unwrap_or_else(|| {
                    let body = "d8:intervali1800e5:peers0:e";
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                });
                let _ = (&s).write_all(reply.as_bytes());
            }
        });
        Scripted { port, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// When each request for `path` came.
    fn times(&self, path: &str) -> Vec<Instant> {
        self.hits.lock().unwrap().iter().filter(|(_, t)| t.split('?').next() == Some(path)).map(|(at, _)| *at).collect()
    }

    fn hits(&self, path: &str) -> usize {
        self.times(path).len()
    }
}

/// The target of an HTTP request, its headers read.
fn request_target(s: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            return Some(target);
        }
    }
}

/// A torrent of fresh data (never downloaded here) announcing to `url`.
fn torrent_for(work: &std::path::Path, name: &str, url: &str, seed: u64) -> (std::path::PathBuf, String) {
    let src = work.join("src").join(name);
    common::payload(&src, 64 << 10, seed);
    let torrent = work.join(format!("{name}.torrent"));
    common::mktorrent(&src, url, 15, &torrent, &[]);
    let hash = common::info_hash(&torrent);
    (torrent, hash)
}

#[test]
fn redirects_are_followed_a_few_times_and_only_to_http() {
    if !tools() {
        return;
    }
    let tracker = Tracker::start();
    let final_url = tracker.announce_url();
    // Leaked: the route is a plain fn, and each test starts its own server.
    let final_url: &'static str = Box::leak(final_url.into_boxed_str());
    static FINAL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    FINAL.set(final_url).unwrap();
    let udp_final: &'static str = Box::leak(tracker.udp_url().into_boxed_str());
    static UDP_FINAL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    UDP_FINAL.set(udp_final).unwrap();
    let redirector = Scripted::start(|path, port| {
        let hop = |n: u32| format!("http://127.0.0.1:{port}/hop{n}");
        match path {
            // Three redirects, the most followed, the last to the real tracker.
            "/three" => Answer::Redirect(hop(2)),
            "/hop2" => Answer::Redirect(hop(1)),
            "/hop1" => Answer::Redirect(FINAL.get().unwrap().to_string()),
            // Four redirects: one too many; the tracker is never reached.
            "/four" => Answer::Redirect(format!("http://127.0.0.1:{port}/f3")),
            "/f3" => Answer::Redirect(format!("http://127.0.0.1:{port}/f2")),
            "/f2" => Answer::Redirect(format!("http://127.0.0.1:{port}/f1")),
            "/f1" => Answer::Redirect(FINAL.get().unwrap().to_string()),
            // A change of scheme is refused.
            "/udp" => Answer::Redirect(UDP_FINAL.get().unwrap().to_string()),
            "/file" => Answer::Redirect("file:///etc/passwd".into()),
            _ => Answer::Hang,
        }
    });
    let work = common::tempdir();
    let cases = [("three", 1), ("four", 2), ("udp", 3), ("file", 4)];
    let d = Dropseed::start_with("");
    let mut hashes = Vec::new();
    for (name, seed) in cases {
        let (torrent, hash) = torrent_for(work.path(), name, &redirector.url(&format!("/{name}")), seed);
        tracker.allow(&hash);
        d.drop_file(&torrent, &format!("{name}.torrent"));
        hashes.push(hash);
    }
    // Three hops reach opentracker, which then counts us as a leecher.
    wait_answered(&d, &hashes[0], "started", Duration::from_secs(30));
    wait_counts(&tracker, &hashes[0], 0, 1, Duration::from_secs(5));
    let refused = |i: usize, why: &str| {
        let t = common::wait_for(&format!("{} refused", cases[i].0), Duration::from_secs(30), || {
            let t = first_tracker(&d, &hashes[i]);
            t["result"].as_str().is_some_and(|r| r.starts_with("error")).then_some(t)
        });
        assert!(t["result"].as_str().unwrap().contains(why), "{}: {t}", cases[i].0);
    };
    refused(1, "more than 3 redirects");
    refused(2, "redirect to a udp URL");
    refused(3, "redirect to a file URL");
    assert_eq!(redirector.hits("/f1"), 1, "three redirects followed, the fourth refused");
    for hash in &hashes[1..] {
        // opentracker lists no torrent it never heard of.
        assert_eq!(tracker.scrape(hash).map_or(0, |s| s.0 + s.1), 0, "opentracker never heard of {hash}");
    }
}

#[test]
fn a_tracker_that_never_answers_times_out_and_shutdown_stays_bounded() {
    if !common::require("mktorrent", "mktorrent") {
        return;
    }
    let silent = Scripted::start(|path, _| match path {
        "/then-hang" => Answer::StartedThenHang,
        _ => Answer::Hang,
    });
    // A UDP tracker that reads nothing and answers nothing.
    let mute_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_url = format!("udp://127.0.0.1:{}/announce", mute_udp.local_addr().unwrap().port());
    let work = common::tempdir();
    let (hang, hang_hash) = torrent_for(work.path(), "hang", &silent.url("/hang"), 31);
    let (then_hang, then_hash) = torrent_for(work.path(), "then-hang", &silent.url("/then-hang"), 32);
    let (mute, mute_hash) = torrent_for(work.path(), "mute", &udp_url, 33);
    let mut d = Dropseed::start_with("");
    for (t, name) in [(&hang, "hang.torrent"), (&then_hang, "then.torrent"), (&mute, "mute.torrent")] {
        d.drop_file(t, name);
    }
    let started = Instant::now();
    // The announce gives up (about 15 s), says why, and is tried again later.
    let t = common::wait_for("the hanging announce to time out", Duration::from_secs(40), || {
        let t = first_tracker(&d, &hang_hash);
        t["result"].as_str().is_some_and(|r| r.starts_with("error")).then_some(t)
    });
    assert!(t["result"].as_str().unwrap().contains("timed out"), "{t}");
    assert!(started.elapsed() >= Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(t["next_announce"].is_null(), "no interval came with a failure: {t}");
    wait_answered(&d, &then_hash, "started", Duration::from_secs(10));
    // The mute UDP tracker's exchange (about 21 s of retries) is still
    // under way.
    assert!(first_tracker(&d, &mute_hash)["result"].is_null());

    // Every announce loop is now waiting on a tracker, or on its back-off:
    // shutdown abandons what is under way and bounds the `stopped` that the
    // answering tracker is owed (it never answers it).
    let at = Instant::now();
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    assert!(at.elapsed() < Duration::from_secs(8), "shutdown took {:?}", at.elapsed());
    common::wait_for("the stopped announce to reach the tracker", Duration::from_secs(2), || {
        silent.hits.lock().unwrap().iter().any(|(_, t)| t.contains("event=stopped")).then_some(())
    });
}

#[test]
fn a_torrent_not_yet_registered_is_retried_at_the_floor_other_failures_back_off() {
    if !common::require("mktorrent", "mktorrent") {
        return;
    }
    let tracker = Scripted::start(|path, _| match path {
        "/new" => Answer::Fail("Torrent not registered with this tracker"),
        _ => Answer::Fail("Passkey is invalid"),
    });
    let work = common::tempdir();
    let (new, _) = torrent_for(work.path(), "new", &tracker.url("/new"), 41);
    let (bad, _) = torrent_for(work.path(), "bad", &tracker.url("/bad"), 42);
    let d = Dropseed::start_with("");
    d.drop_file(&new, "new.torrent");
    d.drop_file(&bad, "bad.torrent");
    // Back-off is 15 s doubling, held to the 30 s floor: the two differ from
    // the third retry on (31, 31, 60 s against 31, 31, 31 s).
    common::wait_for("four announces of the unregistered torrent", Duration::from_secs(150), || {
        (tracker.hits("/new") >= 4).then_some(())
    });
    let gaps = |path: &str| -> Vec<u64> { tracker.times(path).windows(2).map(|w| (w[1] - w[0]).as_secs()).collect() };
    let quick = gaps("/new");
    assert!(quick.iter().all(|g| (30..=40).contains(g)), "not registered: {quick:?}");
    // Its fourth comes about 30 s after the other's fourth; the wait leaves
    // room for a loaded machine (a CI run once needed more than 60 s).
    common::wait_for("the back-off of the other failure", Duration::from_secs(120), || {
        (tracker.hits("/bad") >= 4).then_some(())
    });
    let slow = gaps("/bad");
    assert!(slow[2] >= 55, "passkey invalid: {slow:?}");
    // The failure is shown, and logged once, not at every retry.
    assert_eq!(d.log_text().matches("Torrent not registered").count(), 1, "{}", d.log_text());
}

/// Bencoded byte string.
fn bstr(s: &[u8]) -> Vec<u8> {
    let mut v = format!("{}:", s.len()).into_bytes();
    v.extend_from_slice(s);
    v
}

/// A one-file torrent of 1,000 bytes (never on disk) announcing to `url`.
fn tiny_torrent(n: usize, url: &str) -> Vec<u8> {
    use sha1::{Digest, Sha1};
    let name = format!("tiny{n:04}");
    let mut info = b"d6:lengthi1000e4:name".to_vec();
    info.extend(bstr(name.as_bytes()));
    info.extend(b"12:piece lengthi16384e6:pieces");
    info.extend(bstr(&Sha1::digest(name.as_bytes())));
    info.extend(b"e");
    let mut t = b"d8:announce".to_vec();
    t.extend(bstr(url.as_bytes()));
    t.extend(b"4:info");
    t.extend(info);
    t.extend(b"e");
    t
}

/// The most of `times` (sorted) within any `window`.
fn most_within(times: &[Instant], window: Duration) -> usize {
    (0..times.len()).map(|i| times[i..].iter().take_while(|t| **t - times[i] < window).count()).max().unwrap_or(0)
}

/// Issue 26: 300 torrents in the watch folder when the daemon starts, all
/// announcing to one tracker host: their announces pass at the host's pace
/// (`announces_per_host`, bursts of twice as many), not all in the first
/// second.
#[test]
fn announces_of_many_torrents_to_one_host_are_paced() {
    const TORRENTS: usize = 300;
    const RATE: usize = 40;
    let tracker = Scripted::start(|_, _| Answer::Ok);
    // Downloads (the data is nowhere): none waits in the queue.
    let mut d = Dropseed::new(&format!("announces_per_host = {RATE}\n[limits]\nmax_active_downloads = 0\n"));
    std::fs::create_dir_all(d.watch_dir()).unwrap();
    for n in 0..TORRENTS {
        std::fs::write(d.watch_dir().join(format!("tiny{n:04}.torrent")), tiny_torrent(n, &tracker.url("/announce")))
            .unwrap();
    }
    d.start();
    common::wait_for("every torrent's first announce", Duration::from_secs(120), || {
        (tracker.hits("/announce") >= TORRENTS).then_some(())
    });
    let times = tracker.times("/announce");
    let (first, last) = (times[0], times[TORRENTS - 1]);
    // The bucket lets a burst of 2 * RATE through, then RATE a second: a
    // second holds at most 3 * RATE, and RATE / 2 more that a loaded
    // machine woke up to half a second late (198 unpaced).
    let most = most_within(&times, Duration::from_secs(1));
    assert!(most <= 3 * RATE + RATE / 2, "{most} announces within one second to one host");
    eprintln!("{TORRENTS} first announces over {:?}, at most {most} within a second", last - first);
    let least = Duration::from_secs_f64((TORRENTS - 2 * RATE) as f64 / RATE as f64) - Duration::from_millis(500);
    assert!(last - first >= least, "{TORRENTS} first announces within {:?}", last - first);
}
