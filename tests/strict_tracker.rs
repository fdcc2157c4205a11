//! A strict private tracker, ours, modelled on the announce rules private
//! trackers enforce (UNIT3D, Ocelot): it records every violation by a
//! dropseed client (an announce other than `stopped` within 30 s of the
//! previous one, a regular
//! announce before `min interval`, `completed` twice or without `started`,
//! counters that go down within a session, a missing or foreign User-Agent,
//! browser headers, a key or peer-id prefix that changes) while acting as a
//! plain tracker for everyone (so an aria2 seeder can be found through it).
//! dropseed then lives a whole life against it and must commit none.

mod common;

use common::{Aria2, Dropseed};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INTERVAL: u64 = 90;
const MIN_INTERVAL: u64 = 60;
const FLOOR: Duration = Duration::from_secs(30);

/// One announce as the tracker saw it.
#[derive(Debug, Clone)]
struct Announce {
    at: Instant,
    event: String,
    uploaded: u64,
    downloaded: u64,
    key: String,
    peer_id: Vec<u8>,
}

#[derive(Default)]
struct Ledger {
    /// dropseed's announces, in order.
    ours: Vec<Announce>,
    violations: Vec<String>,
    /// Everyone's listening addresses, for replies.
    peers: Vec<SocketAddr>,
}

struct StrictTracker {
    port: u16,
    ledger: Arc<Mutex<Ledger>>,
}

impl StrictTracker {
    fn start() -> StrictTracker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let l = ledger.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let _ = serve(s, &l);
            }
        });
        StrictTracker { port, ledger }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    fn ours(&self) -> Vec<Announce> {
        self.ledger.lock().unwrap().ours.clone()
    }

    /// The events of dropseed's announces, once none of them was a
    /// violation.
    fn events_without_violation(&self) -> Vec<String> {
        let ledger = self.ledger.lock().unwrap();
        let events: Vec<String> = ledger.ours.iter().map(|a| a.event.clone()).collect();
        assert!(ledger.violations.is_empty(), "violations: {:#?}\nannounces: {events:?}", ledger.violations);
        events
    }

    /// A daemon given a magnet of `hash`, named `name`, that only this
    /// tracker knows of (nobody has it: it keeps announcing for peers).
    fn magnet_daemon(&self, work: &std::path::Path, hash: &str, name: &str) -> Dropseed {
        let magnet = work.join(format!("{name}.magnet"));
        std::fs::write(&magnet, format!("magnet:?xt=urn:btih:{hash}&dn={name}&tr={}\n", self.url())).unwrap();
        let d = Dropseed::start_with("");
        d.drop_file(&magnet, &format!("{name}.magnet"));
        d
    }

    /// Waits for dropseed's next announce carrying `event`, after `count`
    /// announces were seen.
    fn wait_event(&self, count: usize, event: &str, limit: Duration) {
        common::wait_for(&format!("a '{event}' announce"), limit, || {
            self.ours().iter().skip(count).any(|a| a.event == event).then_some(())
        });
    }
}

fn query_pairs(q: &str) -> HashMap<String, Vec<u8>> {
    q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), percent_decode(v))).collect()
}

fn percent_decode(v: &str) -> Vec<u8> {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    out
}

fn serve(s: TcpStream, ledger: &Mutex<Ledger>) -> std::io::Result<()> {
    let mut reader = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let q = query_pairs(target.split_once('?').map(|x| x.1).unwrap_or(""));
    let num = |k: &str| q.get(k).and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok()).unwrap_or(0);
    let peer_id = q.get("peer_id").cloned().unwrap_or_default();
    let port = num("port") as u16;
    let body = {
        let mut l = ledger.lock().unwrap();
        if port != 0 && !l.peers.iter().any(|p| p.port() == port) {
            l.peers.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        if peer_id.starts_with(b"-DS") {
            let a = Announce {
                at: Instant::now(),
                event: String::from_utf8_lossy(q.get("event").map(|v| &v[..]).unwrap_or(b"")).into_owned(),
                uploaded: num("uploaded"),
                downloaded: num("downloaded"),
                key: String::from_utf8_lossy(q.get("key").map(|v| &v[..]).unwrap_or(b"")).into_owned(),
                peer_id: peer_id.clone(),
            };
            let found = judge(&l.ours, &a, &headers);
            l.violations.extend(found);
            l.ours.push(a);
        }
        let mut compact = Vec::new();
        for p in l.peers.iter().filter(|p| p.port() != port) {
            if let SocketAddr::V4(v4) = p {
                compact.extend_from_slice(&v4.ip().octets());
                compact.extend_from_slice(&v4.port().to_be_bytes());
            }
        }
        // A warning on every reply, with a line break and a terminal escape
        // in it: logged once per change, and printable.
        let warning = "slow down\nforged \x1b[31mred";
        let mut b =
            format!("d8:intervali{INTERVAL}e12:min intervali{MIN_INTERVAL}e5:peers{}:", compact.len()).into_bytes();
        b.extend_from_slice(&compact);
        b.extend_from_slice(format!("15:warning message{}:{warning}", warning.len()).as_bytes());
        b.push(b'e');
        b
    };
    let mut w = s;
    write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    w.write_all(&body)
}

/// The rules a private tracker holds dropseed's announce `a` to, given the
/// announces before it.
fn judge(before: &[Announce], a: &Announce, headers: &[(String, String)]) -> Vec<String> {
    let mut v = Vec::new();
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, x)| x.as_str());
    match header("user-agent") {
        Some(ua) if ua.starts_with("dropseed/") => {}
        other => v.push(format!("User-Agent {other:?}")),
    }
    for h in ["accept-language", "referer", "accept-charset", "want-digest"] {
        if header(h).is_some() {
            v.push(format!("browser header {h}"));
        }
    }
    let Some(prev) = before.last() else {
        if a.event != "started" {
            v.push(format!("first announce is '{}', not started", a.event));
        }
        return v;
    };
    let gap = a.at - prev.at;
    if gap < FLOOR && a.event != "stopped" {
        v.push(format!("'{}' {:.1}s after '{}'", a.event, gap.as_secs_f64(), prev.event));
    }
    if a.event.is_empty() && gap < Duration::from_secs(MIN_INTERVAL) {
        v.push(format!("re-announce {:.1}s after the last, under min interval", gap.as_secs_f64()));
    }
    if a.key != prev.key {
        v.push(format!("key changed from {} to {}", prev.key, a.key));
    }
    if a.peer_id[..8] != prev.peer_id[..8] {
        v.push("peer id prefix changed".into());
    }
    // The session this announce belongs to: since the last `started`.
    let session: Vec<&Announce> = match before.iter().rposition(|x| x.event == "started") {
        Some(i) if prev.event != "stopped" => before[i..].iter().collect(),
        _ => Vec::new(),
    };
    match a.event.as_str() {
        "started" => {}
        "completed" if session.is_empty() => v.push("completed without started".into()),
        "completed" if before.iter().any(|x| x.event == "completed") => v.push("completed twice".into()),
        _ if session.is_empty() && a.event != "stopped" => v.push(format!("'{}' outside a session", a.event)),
        _ => {}
    }
    if let Some(last) = session.last() {
        if a.event != "started" && (a.uploaded < last.uploaded || a.downloaded < last.downloaded) {
            v.push(format!(
                "counters went down: {}/{} after {}/{}",
                a.uploaded, a.downloaded, last.uploaded, last.downloaded
            ));
        }
    }
    v
}

#[test]
fn a_whole_life_against_a_strict_tracker_commits_no_violation() {
    if !common::require("aria2c", "aria2") || !common::require("mktorrent", "mktorrent") {
        return;
    }
    let tracker = StrictTracker::start();
    let work = common::tempdir();
    let data = work.path().join("data");
    common::payload(&data.join("strict.bin"), 3 << 20, 5);
    let torrent = work.path().join("strict.torrent");
    common::mktorrent(&data.join("strict.bin"), &tracker.url(), 16, &torrent, &["-p"]);
    let hash = common::info_hash(&torrent);
    let _seeder = Aria2::seed(&torrent, &data, &work.path().join("aria2.log"));

    let mut d = Dropseed::start_with("");
    let t0 = Instant::now();
    d.drop_file(&torrent, "strict.torrent");
    tracker.wait_event(0, "started", Duration::from_secs(30));
    d.wait_state(&hash, "seeding", Duration::from_secs(60));
    // Completed, but only once the floor after `started` has passed.
    tracker.wait_event(0, "completed", Duration::from_secs(45));
    let times: Vec<(String, f64)> =
        tracker.ours().iter().map(|a| (a.event.clone(), (a.at - t0).as_secs_f64())).collect();
    assert!(t0.elapsed() >= FLOOR, "{times:?}");

    // What the tracker last said and what was sent, for the admin.
    let out = d.cli(&["trackers", &hash, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &v["trackers"][0];
    assert_eq!(t["url"], tracker.url(), "{v}");
    assert_eq!(t["sent"]["event"], "completed", "{v}");
    assert!(t["result"].as_str().unwrap().contains("peers"), "{v}");
    assert!(t["next_announce"].as_u64().is_some(), "{v}");
    // A forced re-announce still honours min interval, and says so.
    let out = d.cli(&["reannounce", &hash]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("announcing in"), "{said}");

    // Pause and resume at once: the new `started` waits for the floor.
    let n = tracker.ours().len();
    assert!(d.cli(&["pause", &hash]).status.success());
    assert!(d.cli(&["resume", &hash]).status.success());
    d.signal(libc::SIGHUP);
    tracker.wait_event(n, "started", Duration::from_secs(45));

    // A restart, then a kill -9 and a restart: the floor holds across both.
    let n = tracker.ours().len();
    d.stop();
    d.start();
    tracker.wait_event(n, "started", Duration::from_secs(45));
    let n = tracker.ours().len();
    d.kill9();
    d.start();
    tracker.wait_event(n, "started", Duration::from_secs(45));
    d.wait_state(&hash, "seeding", Duration::from_secs(30));
    assert!(d.cli(&["remove", &hash]).status.success());
    tracker.wait_event(n + 1, "stopped", Duration::from_secs(10));

    let events = tracker.events_without_violation();
    assert_eq!(events.iter().filter(|e| *e == "completed").count(), 1, "{events:?}");
    // Four announce sessions (start, resume, restart, restart after kill -9)
    // each log the standing warning once, however many announces they make.
    let log = d.log_text();
    let warned = log.lines().filter(|l| l.contains("tracker warning")).count();
    assert_eq!(warned, 4, "{} announces", events.len());
    assert!(!log.contains('\x1b') && !log.lines().any(|l| l.starts_with("forged")), "the warning is shown printable");
}

#[test]
fn a_magnet_keeps_the_floor_across_a_kill9() {
    let tracker = StrictTracker::start();
    let work = common::tempdir();
    let hash = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
    let mut d = tracker.magnet_daemon(work.path(), hash, "lonely");
    tracker.wait_event(0, "started", Duration::from_secs(30));
    // Killed right after its `started`: the restart must remember it.
    d.kill9();
    d.start();
    tracker.wait_event(1, "started", Duration::from_secs(45));
    assert!(d.cli(&["remove", hash]).status.success());
    tracker.wait_event(2, "stopped", Duration::from_secs(10));
    assert_eq!(tracker.events_without_violation(), ["started", "started", "stopped"]);
    // Removing the magnet leaves nothing of it in state_dir.
    let left: Vec<_> = std::fs::read_dir(d.state_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().starts_with(hash)), "{left:?}");
}

/// A regular re-announce saves no resume record: its time is only in the
/// announce journal. Killed right after one, the restart must still wait
/// for the floor.
#[test]
fn a_reannounce_keeps_the_floor_across_a_kill9() {
    let tracker = StrictTracker::start();
    let work = common::tempdir();
    let hash = "5eed5eed5eed5eed5eed5eed5eed5eed5eed0002";
    let mut d = tracker.magnet_daemon(work.path(), hash, "again");
    tracker.wait_event(0, "started", Duration::from_secs(30));
    // At the tracker's interval, a regular announce (no event).
    tracker.wait_event(1, "", Duration::from_secs(INTERVAL + 30));
    d.kill9();
    d.start();
    tracker.wait_event(2, "started", Duration::from_secs(45));
    assert!(d.cli(&["remove", hash]).status.success());
    tracker.wait_event(3, "stopped", Duration::from_secs(10));
    assert_eq!(tracker.events_without_violation(), ["started", "", "started", "stopped"]);
}

/// Issue #23, 16: killed (-9) after its `started`, restarted, then paused
/// while its new `started` waits for the floor. The tracker still holds the
/// torrent active from the first life (the announce record says it heard a
/// `started` and no `stopped`), so it must hear `stopped` now, not keep a
/// ghost peer until it times out.
#[test]
fn a_torrent_paused_within_the_floor_after_a_kill9_sends_stopped() {
    if !common::require("mktorrent", "mktorrent") {
        return;
    }
    let tracker = StrictTracker::start();
    let work = common::tempdir();
    let mut d = Dropseed::new("");
    let data = d.download_dir().join("ghost.bin");
    common::payload(&data, 200_000, 3);
    let torrent = work.path().join("ghost.torrent");
    common::mktorrent(&data, &tracker.url(), 15, &torrent, &[]);
    let hash = common::info_hash(&torrent);
    d.start();
    d.drop_file(&torrent, "ghost.torrent");
    tracker.wait_event(0, "started", Duration::from_secs(30));
    d.kill9();
    d.start();
    d.wait_state(&hash, "seeding", Duration::from_secs(20));
    assert!(d.cli(&["pause", &hash]).status.success());
    tracker.wait_event(1, "stopped", Duration::from_secs(10));
    let ledger = tracker.ledger.lock().unwrap();
    let events: Vec<&str> = ledger.ours.iter().map(|a| a.event.as_str()).collect();
    assert_eq!(events, ["started", "stopped"]);
    assert!(ledger.violations.is_empty(), "violations: {:#?}", ledger.violations);
}

/// The same for a magnet removed while its new `started` waits.
#[test]
fn a_magnet_removed_within_the_floor_after_a_kill9_sends_stopped() {
    let tracker = StrictTracker::start();
    let work = common::tempdir();
    let hash = "6eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
    let magnet = work.path().join("ghost.magnet");
    std::fs::write(&magnet, format!("magnet:?xt=urn:btih:{hash}&dn=ghost&tr={}\n", tracker.url())).unwrap();
    let mut d = Dropseed::start_with("");
    d.drop_file(&magnet, "ghost.magnet");
    tracker.wait_event(0, "started", Duration::from_secs(30));
    d.kill9();
    d.start();
    d.wait_state(hash, "metadata", Duration::from_secs(10));
    assert!(d.cli(&["remove", hash]).status.success());
    tracker.wait_event(1, "stopped", Duration::from_secs(10));
    let ledger = tracker.ledger.lock().unwrap();
    let events: Vec<&str> = ledger.ours.iter().map(|a| a.event.as_str()).collect();
    assert_eq!(events, ["started", "stopped"]);
    assert!(ledger.violations.is_empty(), "violations: {:#?}", ledger.violations);
}
