//! The state of `dropseed top`'s screen, changed only by key events and by
//! snapshots from the daemon, so every behaviour is a pure function tested
//! without a terminal or a socket. What a key asks of the daemon comes back
//! as an [`Action`] for the caller to send.

use crate::control::Request;
use crate::torrent::detail::TorrentDetail;
use crate::torrent::{TorrentState, TorrentStatus};
use crate::types::printable;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::VecDeque;

/// Log lines kept on screen.
pub const LOG_LINES: usize = 200;
/// Longest text typed at a prompt (a magnet with many trackers fits).
pub const MAX_INPUT: usize = 8192;

/// What the caller does after a key.
#[derive(Debug, PartialEq)]
pub enum Action {
    None,
    Quit,
    /// A control request; its reply's message is shown.
    Send(Request),
    /// `+`: a magnet, a hash or a file path, as `dropseed add` takes it.
    Add(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Name,
    Progress,
    Rate,
    Ratio,
    Added,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Name => Sort::Progress,
            Sort::Progress => Sort::Rate,
            Sort::Rate => Sort::Ratio,
            Sort::Ratio => Sort::Added,
            Sort::Added => Sort::Name,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Progress => "progress",
            Sort::Rate => "rate",
            Sort::Ratio => "ratio",
            Sort::Added => "added",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    Add,
    Filter,
}

/// What the screen shows on top of the list.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    List,
    Input { prompt: Prompt, text: String },
    Confirm { hash: String, name: String, delete_data: bool },
    Detail { hash: String },
    Help,
}

/// Whether the daemon answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    Connecting,
    Up,
    Down(String),
}

/// Everything one `status` reply carries that the screen shows.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub torrents: Vec<TorrentStatus>,
    pub dht_nodes: Option<usize>,
    pub disk_free: Option<u64>,
    pub memory: Option<u64>,
}

pub struct App {
    pub snapshot: Snapshot,
    /// Indexes into `snapshot.torrents`, filtered and sorted.
    pub rows: Vec<usize>,
    /// The selected torrent's hash: the selection follows it across refreshes.
    pub selected: Option<String>,
    pub mode: Mode,
    pub sort: Sort,
    pub filter: String,
    pub category: Option<String>,
    pub link: Link,
    pub log: VecDeque<String>,
    pub log_last: u64,
    pub detail: Option<(TorrentStatus, TorrentDetail)>,
    /// The last reply or error, shown in the footer.
    pub message: String,
    pub color: bool,
}

impl App {
    pub fn new(color: bool) -> App {
        App {
            snapshot: Snapshot::default(),
            rows: Vec::new(),
            selected: None,
            mode: Mode::List,
            sort: Sort::Name,
            filter: String::new(),
            category: None,
            link: Link::Connecting,
            log: VecDeque::new(),
            log_last: 0,
            detail: None,
            message: String::new(),
            color,
        }
    }

    pub fn on_snapshot(&mut self, snapshot: Snapshot) {
        self.snapshot = snapshot;
        self.link = Link::Up;
        self.refilter();
    }

    /// The daemon did not answer: say so, keep the last picture.
    pub fn on_disconnect(&mut self, why: &str) {
        self.link = Link::Down(printable(why, 300));
    }

    pub fn on_log(&mut self, lines: Vec<String>, last: u64) {
        // A restarted daemon numbers its lines from 1 again: ask for all of them.
        if last < self.log_last {
            self.log.clear();
            self.log_last = 0;
            return;
        }
        for l in lines {
            if self.log.len() == LOG_LINES {
                self.log.pop_front();
            }
            self.log.push_back(printable(&short_time(&l), 1000));
        }
        self.log_last = last;
    }

    pub fn on_detail(&mut self, status: TorrentStatus, detail: TorrentDetail) {
        self.detail = Some((status, detail));
    }

    pub fn on_reply(&mut self, message: &str) {
        self.message = printable(message.lines().next().unwrap_or(""), 300);
    }

    /// The selected torrent's status, if any.
    pub fn current(&self) -> Option<&TorrentStatus> {
        let hash = self.selected.as_ref()?;
        self.snapshot.torrents.iter().find(|t| &t.info_hash == hash)
    }

    /// The row the selection is on.
    pub fn cursor(&self) -> Option<usize> {
        let hash = self.selected.as_ref()?;
        self.rows.iter().position(|&i| &self.snapshot.torrents[i].info_hash == hash)
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match self.mode.clone() {
            Mode::List => self.list_key(key),
            Mode::Input { prompt, text } => self.input_key(prompt, text, key),
            Mode::Confirm { hash, delete_data, .. } => self.confirm_key(hash, delete_data, key),
            Mode::Detail { .. } | Mode::Help => {
                if matches!(key.code, KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::Char('?')) {
                    self.mode = Mode::List;
                    self.detail = None;
                }
                Action::None
            }
        }
    }

    /// A bracketed paste: text for an open prompt, never keys. In the list
    /// it opens the add prompt holding the text (a magnet or a path, most
    /// likely); a confirmation, the detail view and the help ignore it, so a
    /// pasted `y` or `q` answers nothing. Control characters are dropped and
    /// the prompt keeps its bound.
    pub fn on_paste(&mut self, pasted: &str) -> Action {
        let (prompt, mut text) = match &self.mode {
            Mode::Input { prompt, text } => (*prompt, text.clone()),
            Mode::List if pasted.chars().any(|c| !c.is_control()) => (Prompt::Add, String::new()),
            Mode::List | Mode::Confirm { .. } | Mode::Detail { .. } | Mode::Help => return Action::None,
        };
        for c in pasted.chars().filter(|c| !c.is_control()) {
            if text.len() >= MAX_INPUT {
                break;
            }
            text.push(c);
        }
        if prompt == Prompt::Filter {
            self.filter = text.clone();
            self.refilter();
        }
        self.mode = Mode::Input { prompt, text };
        Action::None
    }

    fn list_key(&mut self, key: KeyEvent) -> Action {
        let id = self.current().map(|t| t.info_hash.clone());
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('j') | KeyCode::Down => self.move_by(1),
            KeyCode::Char('k') | KeyCode::Up => self.move_by(-1),
            KeyCode::PageDown => self.move_by(10),
            KeyCode::PageUp => self.move_by(-10),
            KeyCode::Char(' ') => return id.map_or(Action::None, |id| self.pause_or_resume(id)),
            KeyCode::Char('r') => return id.map_or(Action::None, |id| Action::Send(Request::Recheck { id })),
            KeyCode::Char(c @ ('d' | 'D')) => {
                if let Some(t) = self.current() {
                    let (hash, name) = (t.info_hash.clone(), printable(&t.name, 200));
                    self.mode = Mode::Confirm { hash, name, delete_data: c == 'D' };
                }
            }
            KeyCode::Char('+') => self.mode = Mode::Input { prompt: Prompt::Add, text: String::new() },
            KeyCode::Char('/') => self.mode = Mode::Input { prompt: Prompt::Filter, text: self.filter.clone() },
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.refilter();
            }
            KeyCode::Char('c') => {
                self.category = self.next_category();
                self.refilter();
            }
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Enter => {
                if let Some(hash) = id {
                    self.mode = Mode::Detail { hash };
                }
            }
            _ => {}
        }
        Action::None
    }

    fn pause_or_resume(&self, id: String) -> Action {
        match self.current().map(|t| t.state) {
            Some(TorrentState::Paused | TorrentState::Stopped) => Action::Send(Request::Resume { id }),
            _ => Action::Send(Request::Pause { id }),
        }
    }

    fn input_key(&mut self, prompt: Prompt, mut text: String, key: KeyEvent) -> Action {
        match key.code {
            KeyCode::Esc => {
                self.mode = Mode::List;
                return Action::None;
            }
            KeyCode::Enter => {
                self.mode = Mode::List;
                return match prompt {
                    Prompt::Add if text.trim().is_empty() => Action::None,
                    Prompt::Add => Action::Add(text.trim().to_string()),
                    Prompt::Filter => {
                        self.filter = text;
                        self.refilter();
                        Action::None
                    }
                };
            }
            KeyCode::Backspace => {
                text.pop();
            }
            // Control characters never enter.
            KeyCode::Char(c) if !c.is_control() && text.len() < MAX_INPUT => text.push(c),
            _ => {}
        }
        if prompt == Prompt::Filter {
            // The list narrows as the filter is typed.
            self.filter = text.clone();
            self.refilter();
        }
        self.mode = Mode::Input { prompt, text };
        Action::None
    }

    fn confirm_key(&mut self, hash: String, delete_data: bool, key: KeyEvent) -> Action {
        self.mode = Mode::List;
        match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => Action::Send(Request::Remove { id: hash, delete_data }),
            _ => Action::None,
        }
    }

    fn move_by(&mut self, delta: isize) {
        if self.rows.is_empty() {
            return;
        }
        let at = self.cursor().unwrap_or(0) as isize;
        let to = (at + delta).clamp(0, self.rows.len() as isize - 1) as usize;
        self.selected = Some(self.snapshot.torrents[self.rows[to]].info_hash.clone());
    }

    /// The category after the current one among those seen, then none.
    fn next_category(&self) -> Option<String> {
        let mut all: Vec<&str> = self.snapshot.torrents.iter().map(|t| t.category.as_str()).collect();
        all.sort_unstable();
        all.dedup();
        let next = match &self.category {
            None => all.first(),
            Some(c) => all.iter().find(|&&x| x > c.as_str()),
        };
        next.map(|s| s.to_string())
    }

    /// Rebuilds the rows from the snapshot, the filter, category and order;
    /// keeps the selection on its torrent, or the first row.
    fn refilter(&mut self) {
        let needle = self.filter.to_lowercase();
        let torrents = &self.snapshot.torrents;
        let mut rows: Vec<usize> = (0..torrents.len())
            .filter(|&i| {
                let t = &torrents[i];
                t.name.to_lowercase().contains(&needle) && self.category.as_ref().is_none_or(|c| *c == t.category)
            })
            .collect();
        let sort = self.sort;
        rows.sort_by(|&a, &b| {
            order(sort, &torrents[a], &torrents[b]).then_with(|| torrents[a].name.cmp(&torrents[b].name))
        });
        self.rows = rows;
        if self.cursor().is_none() {
            self.selected = self.rows.first().map(|&i| torrents[i].info_hash.clone());
        }
    }
}

/// A log line with its `time=2026-12-06T22:27:01.417Z` cut to `22:27:01`
/// (the pane is narrow; the file keeps the whole stamp).
fn short_time(line: &str) -> std::borrow::Cow<'_, str> {
    let stamp = line.strip_prefix("time=").and_then(|rest| rest.split_once(' '));
    match stamp {
        Some((t, rest)) if t.len() >= 19 && t.is_char_boundary(11) && t.is_char_boundary(19) => {
            format!("{} {rest}", &t[11..19]).into()
        }
        _ => line.into(),
    }
}

/// Names A to Z; the rest with the largest (most done, fastest, best
/// ratio, newest) first.
fn order(sort: Sort, a: &TorrentStatus, b: &TorrentStatus) -> std::cmp::Ordering {
    let ratio = |t: &TorrentStatus| if t.ratio < 0.0 { f64::INFINITY } else { t.ratio };
    match sort {
        Sort::Name => a.name.cmp(&b.name),
        Sort::Progress => b.progress.total_cmp(&a.progress),
        Sort::Rate => (b.download_rate + b.upload_rate).cmp(&(a.download_rate + a.upload_rate)),
        Sort::Ratio => ratio(b).total_cmp(&ratio(a)),
        Sort::Added => b.times.added_at.cmp(&a.times.added_at),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A status as the daemon would send it.
    pub fn torrent(name: &str, hash_digit: char, state: &str, progress: f64, category: &str) -> TorrentStatus {
        serde_json::from_value(serde_json::json!({
            "info_hash": hash_digit.to_string().repeat(40), "name": name, "state": state,
            "progress": progress, "size": 1 << 20, "downloaded": 0, "uploaded": 0,
            "download_rate": (progress * 1000.0) as u64, "upload_rate": 0, "peers": 2, "seeds": 1,
            "ratio": progress, "category": category,
            "times": { "added_at": (progress * 100.0) as u64, "completed_at": 0, "seeding_secs": 0 },
        }))
        .unwrap()
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::from(KeyCode::Char(c))
    }

    fn code(c: KeyCode) -> KeyEvent {
        KeyEvent::from(c)
    }

    pub fn app_with(torrents: Vec<TorrentStatus>) -> App {
        let mut app = App::new(false);
        app.on_snapshot(Snapshot { torrents, ..Default::default() });
        app
    }

    fn three() -> App {
        app_with(vec![
            torrent("bravo", 'b', "seeding", 1.0, "tv"),
            torrent("alpha", 'a', "downloading", 0.5, "movies"),
            torrent("charlie", 'c', "paused", 0.2, ""),
        ])
    }

    fn names(app: &App) -> Vec<&str> {
        app.rows.iter().map(|&i| app.snapshot.torrents[i].name.as_str()).collect()
    }

    #[test]
    fn space_pauses_a_running_torrent_and_resumes_a_paused_one() {
        let mut app = three();
        assert_eq!(app.current().unwrap().name, "alpha");
        assert_eq!(app.on_key(key(' ')), Action::Send(Request::Pause { id: "a".repeat(40) }));
        app.on_key(key('j'));
        app.on_key(key('j'));
        assert_eq!(app.current().unwrap().name, "charlie");
        assert_eq!(app.on_key(key(' ')), Action::Send(Request::Resume { id: "c".repeat(40) }));
        assert_eq!(app.on_key(key('r')), Action::Send(Request::Recheck { id: "c".repeat(40) }));
    }

    #[test]
    fn moving_stops_at_the_ends_and_the_selection_follows_its_torrent() {
        let mut app = three();
        app.on_key(code(KeyCode::Up));
        assert_eq!(app.cursor(), Some(0));
        for _ in 0..5 {
            app.on_key(code(KeyCode::Down));
        }
        assert_eq!(app.current().unwrap().name, "charlie");
        // A new snapshot in another order: still on charlie.
        let mut again = three().snapshot.torrents;
        again.reverse();
        app.on_snapshot(Snapshot { torrents: again, ..Default::default() });
        assert_eq!(app.current().unwrap().name, "charlie");
        // Charlie removed: the first row is selected.
        app.on_snapshot(Snapshot { torrents: three().snapshot.torrents[..2].to_vec(), ..Default::default() });
        assert_eq!(app.current().unwrap().name, "alpha");
    }

    #[test]
    fn the_filter_narrows_as_it_is_typed_and_ignores_case() {
        let mut app = three();
        app.on_key(key('/'));
        app.on_key(key('R'));
        assert_eq!(names(&app), ["bravo", "charlie"]);
        app.on_key(key('L'));
        assert_eq!(names(&app), ["charlie"]);
        assert_eq!(app.current().unwrap().name, "charlie");
        app.on_key(code(KeyCode::Enter));
        assert_eq!(app.mode, Mode::List);
        assert_eq!(app.filter, "RL");
        // Keys in the list act again; an emptied filter shows all.
        app.on_key(key('/'));
        app.on_key(code(KeyCode::Backspace));
        app.on_key(code(KeyCode::Backspace));
        app.on_key(code(KeyCode::Enter));
        assert_eq!(names(&app).len(), 3);
    }

    #[test]
    fn s_cycles_the_orders() {
        let mut app = three();
        assert_eq!(names(&app), ["alpha", "bravo", "charlie"]);
        app.on_key(key('s'));
        assert_eq!((app.sort, names(&app)), (Sort::Progress, vec!["bravo", "alpha", "charlie"]));
        app.on_key(key('s'));
        assert_eq!((app.sort, names(&app)), (Sort::Rate, vec!["bravo", "alpha", "charlie"]));
        app.on_key(key('s'));
        assert_eq!(app.sort, Sort::Ratio);
        app.on_key(key('s'));
        assert_eq!((app.sort, names(&app)), (Sort::Added, vec!["bravo", "alpha", "charlie"]));
        app.on_key(key('s'));
        assert_eq!(app.sort, Sort::Name);
    }

    #[test]
    fn c_cycles_through_the_categories_seen_then_all() {
        let mut app = three();
        let mut seen = Vec::new();
        for _ in 0..4 {
            app.on_key(key('c'));
            seen.push((app.category.clone(), names(&app).join(",")));
        }
        let want =
            [(Some(""), "charlie"), (Some("movies"), "alpha"), (Some("tv"), "bravo"), (None, "alpha,bravo,charlie")];
        let want: Vec<_> = want.iter().map(|(c, n)| (c.map(str::to_string), n.to_string())).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn removing_asks_first_and_only_d_upper_deletes_data() {
        let mut app = three();
        assert_eq!(app.on_key(key('d')), Action::None);
        assert!(matches!(app.mode, Mode::Confirm { delete_data: false, .. }));
        assert_eq!(app.on_key(key('y')), Action::Send(Request::Remove { id: "a".repeat(40), delete_data: false }));
        app.on_key(key('D'));
        assert_eq!(app.on_key(key('n')), Action::None);
        assert_eq!(app.mode, Mode::List);
        app.on_key(key('D'));
        assert_eq!(app.on_key(key('y')), Action::Send(Request::Remove { id: "a".repeat(40), delete_data: true }));
    }

    #[test]
    fn plus_takes_a_magnet_and_never_a_control_character_or_endless_text() {
        let mut app = three();
        app.on_key(key('+'));
        for c in " magnet:?xt=urn:btih:x\u{1b}y ".chars() {
            app.on_key(key(c));
        }
        assert_eq!(app.on_key(code(KeyCode::Enter)), Action::Add("magnet:?xt=urn:btih:xy".into()));
        app.on_key(key('+'));
        assert_eq!(app.on_key(code(KeyCode::Esc)), Action::None, "Esc cancels");
        app.on_key(key('+'));
        for _ in 0..MAX_INPUT + 10 {
            app.on_key(key('a'));
        }
        let Mode::Input { text, .. } = &app.mode else { panic!("{:?}", app.mode) };
        assert_eq!(text.len(), MAX_INPUT);
        // Keys typed at the prompt are text, not commands.
        app.on_key(code(KeyCode::Esc));
        app.on_key(key('+'));
        assert_eq!(app.on_key(key('q')), Action::None);
        assert_eq!(app.on_key(code(KeyCode::Enter)), Action::Add("q".into()));
    }

    #[test]
    fn q_esc_and_ctrl_c_quit_but_leave_the_detail_view_first() {
        let mut app = three();
        app.on_key(code(KeyCode::Enter));
        assert_eq!(app.mode, Mode::Detail { hash: "a".repeat(40) });
        assert_eq!(app.on_key(code(KeyCode::Esc)), Action::None);
        assert_eq!(app.mode, Mode::List);
        assert_eq!(app.on_key(key('q')), Action::Quit);
        assert_eq!(app.on_key(code(KeyCode::Esc)), Action::Quit);
        app.on_key(key('+'));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(app.on_key(ctrl_c), Action::Quit);
    }

    #[test]
    fn the_log_pane_keeps_the_last_lines_printable_and_starts_over_with_a_new_daemon() {
        let mut app = three();
        let lines: Vec<String> = (0..LOG_LINES + 5).map(|i| format!("line {i}\u{1b}[2J")).collect();
        app.on_log(lines, 1000);
        assert_eq!(app.log.len(), LOG_LINES);
        assert_eq!(app.log[0], "line 5?[2J");
        assert_eq!(app.log_last, 1000);
        app.on_log(vec!["time=2026-12-06T22:27:01.417Z level=info msg=added".into(), "time=x y".into()], 1002);
        assert_eq!(app.log[LOG_LINES - 2], "22:27:01 level=info msg=added");
        assert_eq!(app.log[LOG_LINES - 1], "time=x y");
        app.on_log(Vec::new(), 3);
        assert!(app.log.is_empty());
        assert_eq!(app.log_last, 0, "the next request asks from the first line");
        app.on_log(vec!["fresh".into()], 3);
        assert_eq!(app.log.iter().collect::<Vec<_>>(), ["fresh"]);
    }

    #[test]
    fn a_paste_in_the_list_opens_the_add_prompt_and_never_acts_as_keys() {
        let mut app = three();
        let before = app.current().unwrap().info_hash.clone();
        // `r` of urn, `D` and `y`, `q`, spaces and `?`: none may act.
        let pasted = "magnet:?xt=urn:btih:0123&dn=The.Dying.Light quit yes\u{1b}[2J\n";
        assert_eq!(app.on_paste(pasted), Action::None);
        let want = "magnet:?xt=urn:btih:0123&dn=The.Dying.Light quit yes[2J";
        assert_eq!(app.mode, Mode::Input { prompt: Prompt::Add, text: want.into() });
        assert_eq!(app.current().unwrap().info_hash, before, "the selection did not move");
        assert_eq!((app.sort, app.category.clone(), app.filter.as_str()), (Sort::Name, None, ""));
        // Enter sends the pasted text as an add, and nothing else.
        assert_eq!(app.on_key(code(KeyCode::Enter)), Action::Add(want.into()));
        assert_eq!(app.mode, Mode::List);
    }

    #[test]
    fn a_paste_goes_to_an_open_prompt_within_its_bound() {
        let mut app = three();
        app.on_key(key('+'));
        app.on_key(key('m'));
        assert_eq!(app.on_paste("agnet:?xt=urn:btih:ab\tcd"), Action::None);
        assert_eq!(app.mode, Mode::Input { prompt: Prompt::Add, text: "magnet:?xt=urn:btih:abcd".into() });
        assert_eq!(app.on_paste(&"y".repeat(3 * MAX_INPUT)), Action::None);
        let Mode::Input { text, .. } = &app.mode else { panic!("{:?}", app.mode) };
        assert_eq!(text.len(), MAX_INPUT);
        // The filter narrows as a paste arrives.
        app.on_key(code(KeyCode::Esc));
        app.on_key(key('/'));
        assert_eq!(app.on_paste("RL\r\n"), Action::None);
        assert_eq!(names(&app), ["charlie"]);
        assert_eq!(app.mode, Mode::Input { prompt: Prompt::Filter, text: "RL".into() });
        // A paste of nothing printable in the list opens nothing.
        app.on_key(code(KeyCode::Esc));
        assert_eq!(app.on_paste("\u{3}\n"), Action::None);
        assert_eq!(app.mode, Mode::List);
    }

    #[test]
    fn a_paste_never_answers_a_confirmation_nor_leaves_a_view() {
        let mut app = three();
        for delete_data in [false, true] {
            app.on_key(key(if delete_data { 'D' } else { 'd' }));
            let confirm = app.mode.clone();
            assert!(matches!(confirm, Mode::Confirm { .. }), "{confirm:?}");
            for pasted in ["y", "Y", "yes", "y\n", "\u{3}"] {
                assert_eq!(app.on_paste(pasted), Action::None, "{pasted:?}");
                assert_eq!(app.mode, confirm, "the dialog stays open after {pasted:?}");
            }
            // Only a typed key answers it.
            assert_eq!(app.on_key(key('n')), Action::None);
            assert_eq!(app.mode, Mode::List);
        }
        // The detail view and the help ignore a paste too.
        for open in [code(KeyCode::Enter), key('?')] {
            app.on_key(open);
            let view = app.mode.clone();
            assert_eq!(app.on_paste("q\n?"), Action::None);
            assert_eq!(app.mode, view);
            app.on_key(code(KeyCode::Esc));
        }
    }
}
