//! When an announce may go out, across pauses, phases and restarts.
//!
//! Private trackers ban clients that announce the same torrent twice within
//! seconds or before the tracker's `min interval`. The announce loop of a
//! torrent lives only while the torrent is active, so what it must remember
//! (when it last announced, the tracker's `min interval`, the torrent's
//! `key`) lives here, in a book the whole session shares (a magnet's
//! announces count for the torrent it becomes) and that each torrent's
//! resume record persists (a restart, even after kill -9, counts too).
//!
//! The rules, one per event:
//! * nothing is sent within [`FLOOR_SECS`] of the previous announce;
//! * a regular re-announce also waits for `min interval`;
//! * `started` and `completed` wait only for the floor (a torrent resumed or
//!   finished must not wait half an hour to be known);
//! * `stopped` never waits and is never skipped: it carries the session's
//!   final counters (upload credit on a private tracker) and tells the
//!   tracker to stop sending peers our way. What follows it waits instead.
//!   It is owed from the moment an announce other than `stopped` goes out
//!   until a `stopped` is answered (the record's `active`), across restarts:
//!   a torrent paused after a kill -9, before its new `started` may go, still
//!   sends it.

use super::http::Event;
use super::journal::Journal;
use crate::types::InfoHash;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Least seconds between two announces of one torrent, whatever happens.
pub const FLOOR_SECS: u64 = 30;

/// What one torrent's announces must remember.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceRecord {
    /// Sent with every announce, stable for the torrent's life, so the
    /// tracker knows us across IP changes. 0 until the first announce.
    #[serde(default)]
    pub key: u32,
    /// Unix seconds of the last announce a tracker answered; 0 for never.
    #[serde(default)]
    pub last_at: u64,
    /// The answering tracker's `min interval`, in seconds.
    #[serde(default)]
    pub min_interval: u64,
    /// A tracker may hold us as an active peer: an announce other than
    /// `stopped` went out (saved before it did) and no `stopped` has been
    /// answered since. A later life whose own `started` has not gone out
    /// yet still owes the tracker a `stopped` when it stops.
    #[serde(default, with = "as_integer")]
    pub active: bool,
}

/// Bencode has no booleans: 1 or 0.
mod as_integer {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(u8::from(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(u8::deserialize(d)? != 0)
    }
}

impl AnnounceRecord {
    /// A new torrent's record: a fresh key, nothing announced.
    fn fresh() -> AnnounceRecord {
        AnnounceRecord { key: rand::random::<u32>().max(1), ..AnnounceRecord::default() }
    }

    /// The unix second at which an announce carrying `event` may go out,
    /// it being `now` (`now` itself when it may go at once).
    pub fn pace(&self, event: Event, now: u64) -> u64 {
        if self.last_at == 0 {
            return now;
        }
        // A clock set back (or a record from the future) must not hold
        // announces for hours: nothing is later than now.
        let last = self.last_at.min(now);
        // Times are whole seconds, cut down: one second more keeps every
        // real gap at or above the limit.
        let floor = last + FLOOR_SECS + 1;
        match event {
            Event::Stopped => now,
            Event::Started | Event::Completed => floor.max(now),
            Event::None => floor.max(last + self.min_interval + 1).max(now),
        }
    }
}

/// One tracker as `dropseed trackers` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackerView {
    pub url: String,
    pub tier: usize,
    /// Unix seconds of the last announce sent to it, if any.
    pub last_announce: Option<u64>,
    /// Unix seconds of the next announce, for the tracker in use.
    pub next_announce: Option<u64>,
    /// Its last answer: peers, seeders and leechers, or the error text.
    pub result: Option<String>,
    /// What the last announce to it carried.
    pub sent: Option<Sent>,
    /// Order of the attempts across all trackers: the highest is the latest
    /// (attempts in one round share a second).
    #[serde(default)]
    pub attempt: u64,
}

/// What a tracker last said of a torrent's whole swarm (announce replies
/// and scrapes), beyond the peers we are connected to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swarm {
    pub seeders: u64,
    pub leechers: u64,
    /// Unix seconds of the answer.
    pub at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub event: String,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
}

/// Every torrent's and magnet's record, by info hash.
#[derive(Default)]
pub struct AnnounceBook {
    /// What the book keeps of each torrent, in one entry (four maps kept
    /// 190 bytes per torrent): made by its first use, swept with all it
    /// holds once the torrent is retired and its floor has passed.
    torrents: Mutex<HashMap<InfoHash, Kept>>,
    /// Removed torrents, kept until their floor has passed (removed and
    /// added again at once, a torrent still waits), then dropped.
    retired: Mutex<Vec<InfoHash>>,
    /// Attempts recorded so far, to number them.
    attempts: std::sync::atomic::AtomicU64,
    /// Announces and failures by tracker host (`/metrics`), at most
    /// [`MAX_TALLIED_HOSTS`] hosts by name.
    hosts: Mutex<HashMap<String, HostTally>>,
    /// Paces announces per tracker host across the session.
    pacer: super::hostpace::HostPacer,
    /// Where announce times go between resume saves (none in tests that
    /// need no restart).
    journal: Option<Arc<Journal>>,
    /// What the journal held at start, taken into the records restored
    /// (then dropped: see [`AnnounceBook::restoring_done`]).
    recalled: Mutex<HashMap<InfoHash, u64>>,
}

/// What the book keeps of one torrent.
#[derive(Default)]
struct Kept {
    /// Its announces' record, once anything announced, saved or restored one.
    record: Option<AnnounceRecord>,
    /// What each of its trackers last said, for display.
    views: Vec<TrackerView>,
    /// Wakes its announce loop (`dropseed reannounce`).
    waker: Option<Arc<Notify>>,
    /// Its swarm as its tracker last counted it.
    swarm: Option<Swarm>,
}

impl Kept {
    /// The record, made with a fresh key if there is none.
    fn record(&mut self) -> &mut AnnounceRecord {
        self.record.get_or_insert_with(AnnounceRecord::fresh)
    }
}

impl AnnounceBook {
    /// `torrents`, locked.
    fn torrents(&self) -> std::sync::MutexGuard<'_, HashMap<InfoHash, Kept>> {
        crate::locks::locked(&self.torrents)
    }

    /// `retired`, locked.
    fn retired(&self) -> std::sync::MutexGuard<'_, Vec<InfoHash>> {
        crate::locks::locked(&self.retired)
    }

    /// `hosts`, locked.
    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostTally>> {
        crate::locks::locked(&self.hosts)
    }

    /// A tracker counted `hash`'s swarm; the newest answer wins. Only for
    /// a torrent the book has a record of (its announce loop ran): a scrape
    /// reply cannot make the map grow past the session's torrents.
    pub fn swarm_seen(&self, hash: InfoHash, swarm: Swarm) {
        let mut torrents = self.torrents();
        let Some(kept) = torrents.get_mut(&hash).filter(|k| k.record.is_some()) else {
            return;
        };
        if kept.swarm.is_none_or(|known| known.at <= swarm.at) {
            kept.swarm = Some(swarm);
        }
    }

    /// What a tracker last counted of `hash`'s swarm.
    pub fn swarm(&self, hash: InfoHash) -> Option<Swarm> {
        self.torrents().get(&hash).and_then(|k| k.swarm)
    }

    /// What a scrape round asks for: each torrent a tracker holds active
    /// with no count newer than `fresh` seconds, and the URL of the
    /// tracker it announces to (the last that answered, else its first).
    pub fn scrape_targets(&self, now: u64, fresh: u64) -> Vec<(InfoHash, String)> {
        let due = |k: &Kept| k.record.is_some_and(|r| r.active) && k.swarm.is_none_or(|s| s.at + fresh <= now);
        let in_use = |vs: &[TrackerView]| {
            let answered = vs.iter().filter(|v| v.result.as_ref().is_some_and(|r| !r.starts_with("error")));
            answered.max_by_key(|v| v.attempt).or(vs.first()).map(|v| v.url.clone())
        };
        let torrents = self.torrents();
        torrents.iter().filter(|(_, k)| due(k)).filter_map(|(h, k)| Some((*h, in_use(&k.views)?))).collect()
    }
}

/// Tracker hosts counted by name; announces to more (a flood of torrents
/// naming made-up trackers) count under [`OTHER_HOSTS`].
pub const MAX_TALLIED_HOSTS: usize = 256;
pub const OTHER_HOSTS: &str = "(other)";

/// One tracker host's announces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostTally {
    pub attempts: u64,
    pub failures: u64,
}

impl AnnounceBook {
    /// A book whose announces go out at most `per_host` a second to one
    /// tracker host (`[network] announces_per_host`; 0: unpaced).
    pub fn with_host_rate(per_host: u32) -> AnnounceBook {
        AnnounceBook { pacer: super::hostpace::HostPacer::new(per_host), ..AnnounceBook::default() }
    }

    /// Keeps announce times in the announce journal of `state_dir`.
    pub fn journaled(mut self, state_dir: &std::path::Path) -> AnnounceBook {
        self.journal = Some(Arc::new(Journal::new(state_dir)));
        self
    }

    /// Takes what the journal held from an earlier life ([`Journal::read`])
    /// into the records restored next.
    pub fn recall(&self, times: HashMap<InfoHash, u64>) {
        *crate::locks::locked(&self.recalled) = times;
    }

    /// Every record of the state folder is restored: what the journal held
    /// is no longer needed.
    pub fn restoring_done(&self) {
        self.recall(HashMap::new());
    }

    /// Notes in the journal that `hash` announces at `at`; false without
    /// a journal or when it could not be written (the caller then saves
    /// the record instead).
    pub async fn journal(&self, hash: InfoHash, at: u64) -> bool {
        let Some(journal) = self.journal.clone() else { return false };
        match tokio::task::spawn_blocking(move || journal.note(hash, at)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "announce journal not written: the resume record keeps the time");
                false
            }
            Err(_) => false,
        }
    }

    /// The session's per-host announce pacer.
    pub fn pacer(&self) -> &super::hostpace::HostPacer {
        &self.pacer
    }

    /// The record for `hash`, made (with a fresh key) if there is none.
    pub fn get(&self, hash: InfoHash) -> AnnounceRecord {
        *self.torrents().entry(hash).or_default().record()
    }

    /// Takes a persisted record, unless the session already knows newer;
    /// an announce the journal holds that is newer than the record counts
    /// (even for a record that never saved one: unreadable, or written
    /// blank when a magnet became a torrent).
    pub fn restore(&self, hash: InfoHash, mut record: AnnounceRecord) {
        if let Some(&at) = crate::locks::locked(&self.recalled).get(&hash) {
            if record.key == 0 {
                record = AnnounceRecord::fresh();
            }
            record.last_at = record.last_at.max(at);
        }
        if record.key == 0 {
            return;
        }
        let mut torrents = self.torrents();
        let kept = torrents.entry(hash).or_default();
        if kept.record.is_none_or(|known| known.last_at < record.last_at) {
            kept.record = Some(record);
        }
    }

    /// An announce carrying `event` goes out at `at`: it counts for the
    /// pace, and anything but `stopped` may make us active at the tracker.
    /// True when it makes us active now (we were not).
    pub fn sending(&self, hash: InfoHash, at: u64, event: Event) -> bool {
        self.announced(hash, at, None);
        if event == Event::Stopped {
            return false;
        }
        let mut torrents = self.torrents();
        let record = torrents.entry(hash).or_default().record();
        !std::mem::replace(&mut record.active, true)
    }

    /// A tracker answered our `stopped`: it no longer holds us.
    pub fn stopped(&self, hash: InfoHash) {
        if let Some(r) = self.torrents().get_mut(&hash).and_then(|k| k.record.as_mut()) {
            r.active = false;
        }
    }

    /// A tracker answered an announce at `at`.
    pub fn announced(&self, hash: InfoHash, at: u64, min_interval: Option<u64>) {
        let mut torrents = self.torrents();
        let r = torrents.entry(hash).or_default().record();
        r.last_at = at;
        if let Some(m) = min_interval {
            r.min_interval = m;
        }
    }

    /// The torrent left the session (the registry says so: see
    /// `session::registry`): its record goes once it no longer holds
    /// anything back. Records retired earlier are swept here too.
    pub fn retire(&self, hash: InfoHash, now: u64) {
        self.sweep(now);
        let mut retired = self.retired();
        if !retired.contains(&hash) {
            retired.push(hash);
        }
    }

    /// Drops what the book keeps of every retired torrent whose floor has
    /// passed: its record, its trackers' views, its waker and its swarm.
    pub fn sweep(&self, now: u64) {
        let mut retired = self.retired();
        let mut torrents = self.torrents();
        retired.retain(|h| {
            let record = torrents.get(h).and_then(|k| k.record);
            if record.is_some_and(|r| r.last_at.min(now) + FLOOR_SECS >= now) {
                return true;
            }
            torrents.remove(h);
            false
        });
    }

    /// The trackers of a torrent whose announce loop starts.
    pub fn show_trackers(&self, hash: InfoHash, tiers: &[Vec<String>]) {
        let mut torrents = self.torrents();
        let kept = torrents.entry(hash).or_default();
        let known = std::mem::take(&mut kept.views);
        let mut fresh: Vec<_> = tiers
            .iter()
            .enumerate()
            .flat_map(|(tier, urls)| urls.iter().map(move |u| (tier, u)))
            .map(|(tier, url)| {
                let old = known.iter().find(|v| &v.url == url).cloned();
                TrackerView { url: url.clone(), tier, next_announce: None, ..old.unwrap_or_default() }
            })
            .collect();
        // Collected from a flat map, it has room for 4 at least (576 bytes
        // kept by every torrent with one tracker).
        fresh.shrink_to_fit();
        kept.views = fresh;
    }

    /// Changes what is shown of one tracker of a torrent.
    /// Records an attempt on one tracker, numbered after every earlier one.
    pub fn update_tracker(&self, hash: InfoHash, url: &str, change: impl FnOnce(&mut TrackerView)) {
        let attempt = self.attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut torrents = self.torrents();
        if let Some(v) = torrents.get_mut(&hash).and_then(|k| k.views.iter_mut().find(|v| v.url == url)) {
            change(v);
            v.attempt = attempt;
        }
    }

    /// Counts an announce to `host` (a label already redacted: see
    /// [`super::host_label`]).
    pub fn tally(&self, host: String, answered: bool) {
        let mut hosts = self.hosts();
        let key = if hosts.len() < MAX_TALLIED_HOSTS || hosts.contains_key(&host) { host } else { OTHER_HOSTS.into() };
        let t = hosts.entry(key).or_default();
        t.attempts += 1;
        t.failures += u64::from(!answered);
    }

    pub fn host_tallies(&self) -> Vec<(String, HostTally)> {
        self.hosts().iter().map(|(h, t)| (h.clone(), *t)).collect()
    }

    pub fn trackers(&self, hash: InfoHash) -> Vec<TrackerView> {
        self.torrents().get(&hash).map(|k| k.views.clone()).unwrap_or_default()
    }

    /// The notification a torrent's announce loop waits on besides its timer.
    pub fn waker(&self, hash: InfoHash) -> Arc<Notify> {
        self.torrents().entry(hash).or_default().waker.get_or_insert_default().clone()
    }

    /// How many torrents the book keeps, and how many of them are retired.
    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize) {
        (self.torrents().len(), self.retired().len())
    }

    /// A torrent (back) in the session: what the book has of it stays.
    pub fn unretire(&self, hash: &InfoHash) {
        self.retired().retain(|h| h != hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_announce_that_makes_us_active_asks_for_a_save() {
        let (book, h) = (AnnounceBook::default(), InfoHash([7; 20]));
        assert!(book.sending(h, 100, Event::Started), "the first: the record must say a tracker holds us");
        assert!(!book.sending(h, 2000, Event::None), "a re-announce changes nothing but the time");
        assert!(!book.sending(h, 3000, Event::Stopped));
        book.stopped(h);
        assert!(book.sending(h, 4000, Event::Started), "active again after a stopped was answered");
    }

    #[test]
    fn a_restart_keeps_the_floor_of_an_announce_only_the_journal_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (h, other) = (InfoHash([7; 20]), InfoHash([8; 20]));
        Journal::new(dir.path()).note(h, 5000).unwrap();
        let book = AnnounceBook::default().journaled(dir.path());
        book.recall(Journal::read(dir.path()));
        // The record was saved at the announce that made us active; the
        // re-announce at 5000 went only to the journal before a kill -9.
        book.restore(h, AnnounceRecord { key: 9, last_at: 1000, min_interval: 0, active: true });
        assert_eq!(book.get(h).last_at, 5000);
        assert_eq!(book.get(h).pace(Event::Started, 5005), 5000 + FLOOR_SECS + 1, "the floor holds");
        // A record written blank (a magnet become a torrent) still gets
        // the journal's time.
        let blank = InfoHash([9; 20]);
        Journal::new(dir.path()).note(blank, 6000).unwrap();
        book.recall(Journal::read(dir.path()));
        book.restore(blank, AnnounceRecord::default());
        assert_eq!(book.get(blank).last_at, 6000);
        assert_ne!(book.get(blank).key, 0);
        book.restoring_done();
        book.restore(other, AnnounceRecord { key: 3, last_at: 1000, min_interval: 0, active: true });
        assert_eq!(book.get(other).last_at, 1000, "a record without a journal line is as saved");
    }

    #[test]
    fn host_tallies_count_failures_and_stop_naming_hosts_at_the_cap() {
        let book = AnnounceBook::default();
        book.tally("a.example".into(), true);
        book.tally("a.example".into(), false);
        for i in 0..MAX_TALLIED_HOSTS + 10 {
            book.tally(format!("h{i}.example"), true);
        }
        book.tally("a.example".into(), true);
        let tallies: HashMap<String, HostTally> = book.host_tallies().into_iter().collect();
        assert_eq!(tallies["a.example"], HostTally { attempts: 3, failures: 1 }, "a known host is still counted");
        assert_eq!(tallies.len(), MAX_TALLIED_HOSTS + 1);
        assert_eq!(tallies[OTHER_HOSTS].attempts, 11);
    }

    #[test]
    fn each_event_keeps_its_distance() {
        let never = AnnounceRecord { key: 7, last_at: 0, min_interval: 0, active: false };
        for e in [Event::Started, Event::None, Event::Completed, Event::Stopped] {
            assert_eq!(never.pace(e, 1000), 1000, "nothing sent yet: {e:?} at once");
        }
        let r = AnnounceRecord { key: 7, last_at: 1000, min_interval: 300, active: true };
        // One second over each limit: times are whole seconds.
        assert_eq!(r.pace(Event::Started, 1005), 1031, "a quick resume waits for the floor");
        assert_eq!(r.pace(Event::Completed, 1010), 1031);
        assert_eq!(r.pace(Event::None, 1010), 1301, "a re-announce waits for min interval");
        assert_eq!(r.pace(Event::Stopped, 1001), 1001, "a stop goes out at once");
        assert_eq!(r.pace(Event::Started, 5000), 5000, "long after: at once");
        let future = AnnounceRecord { last_at: 90_000, ..r };
        assert_eq!(future.pace(Event::None, 2000), 2301, "a clock set back waits no longer than from now");
        let short = AnnounceRecord { min_interval: 5, ..r };
        assert_eq!(short.pace(Event::None, 1001), 1031, "never under the floor");
    }

    #[test]
    fn the_book_keeps_one_key_per_torrent_and_the_newest_time() {
        let book = AnnounceBook::default();
        let h = InfoHash([1; 20]);
        let first = book.get(h);
        assert_ne!(first.key, 0);
        assert_eq!(book.get(h).key, first.key, "stable");
        book.announced(h, 500, Some(60));
        book.restore(h, AnnounceRecord { key: 9, last_at: 100, min_interval: 0, active: true });
        assert_eq!(
            book.get(h),
            AnnounceRecord { key: first.key, last_at: 500, min_interval: 60, active: false },
            "older record ignored"
        );
        let other = InfoHash([2; 20]);
        book.restore(other, AnnounceRecord { key: 9, last_at: 100, min_interval: 30, active: true });
        assert_eq!(book.get(other).key, 9, "a persisted key is kept");
        assert!(book.get(other).active, "so is what the tracker may still hold");
        // Removed: kept while it holds announces back, then dropped.
        book.retire(other, 110);
        assert_eq!(book.torrents().get(&other).and_then(|k| k.record).map(|r| r.key), Some(9), "kept within the floor");
        book.retire(InfoHash([3; 20]), 131);
        assert!(book.torrents().get(&other).is_none(), "dropped once the floor passed");
        assert_ne!(book.get(other).key, 9, "a new life, a new key");
    }

    #[test]
    fn a_torrent_back_before_the_sweep_keeps_its_record() {
        let book = AnnounceBook::default();
        let h = InfoHash([5; 20]);
        book.announced(h, 100, Some(60));
        let key = book.get(h).key;
        book.retire(h, 110);
        book.unretire(&h);
        book.sweep(1000);
        assert_eq!(book.get(h).key, key, "back in the session: not swept");
        book.retire(h, 1000);
        book.swarm_seen(h, Swarm { seeders: 3, leechers: 4, at: 1000 });
        assert_eq!(book.swarm(h).map(|s| s.seeders), Some(3));
        book.swarm_seen(h, Swarm { seeders: 9, leechers: 9, at: 999 });
        assert_eq!(book.swarm(h).map(|s| s.seeders), Some(3), "an older count is ignored");
        book.swarm_seen(InfoHash([6; 20]), Swarm::default());
        assert_eq!(book.swarm(InfoHash([6; 20])), None, "a hash the book does not know is not kept");
        book.sweep(1000);
        assert_eq!(book.sizes(), (0, 0), "gone with everything it had");
        assert_eq!(book.swarm(h), None);
    }

    #[test]
    fn active_from_the_first_announce_out_until_a_stopped_is_answered() {
        let book = AnnounceBook::default();
        let h = InfoHash([4; 20]);
        assert!(!book.get(h).active, "never announced");
        book.sending(h, 100, Event::Started);
        assert!(book.get(h).active, "saved as active before the tracker even answers");
        book.sending(h, 200, Event::Stopped);
        assert!(book.get(h).active, "a stopped not yet answered changes nothing");
        book.stopped(h);
        assert!(!book.get(h).active);
        assert_eq!(book.get(h).last_at, 200);
    }

    #[test]
    fn a_record_survives_bencode() {
        for active in [true, false] {
            let r = AnnounceRecord { key: 9, last_at: 1234, min_interval: 60, active };
            let bytes = serde_bencode::to_bytes(&r).unwrap();
            assert_eq!(serde_bencode::from_bytes::<AnnounceRecord>(&bytes).unwrap(), r);
        }
        let old = b"d3:keyi9e7:last_ati1234e12:min_intervali60ee";
        assert!(!serde_bencode::from_bytes::<AnnounceRecord>(old).unwrap().active, "a record from before");
    }
}
