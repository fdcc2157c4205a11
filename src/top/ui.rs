//! Drawing `dropseed top`'s screen from an [`App`]: header with totals, the
//! torrent table, the log pane and a footer; the detail view and the help
//! over them. Pure: it reads the app and writes a ratatui frame, so tests
//! draw into a `TestBackend` and read the text back.

use super::app::{App, Link, Mode, Prompt};
use crate::torrent::detail::TorrentDetail;
use crate::torrent::{TorrentState, TorrentStatus};
use crate::types::{human_bytes, human_duration, printable};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

/// Widths at and above which the wide table (category, size, peers, ETA) is drawn.
const WIDE: u16 = 120;

pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let log_height = (area.height / 4).clamp(3, 12);
    let [header, body, log, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(log_height),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_lines(app)), header);
    match &app.mode {
        Mode::Detail { .. } => draw_detail(frame, app, body),
        _ => draw_table(frame, app, body),
    }
    draw_log(frame, app, log);
    frame.render_widget(Paragraph::new(footer_line(app)).style(accent(app, Color::Cyan)), footer);
    if app.mode == Mode::Help {
        draw_help(frame, area);
    }
}

/// A colour when colours are on, plain text otherwise (`NO_COLOR`, dumb terminals).
fn accent(app: &App, color: Color) -> Style {
    if app.color {
        Style::default().fg(color)
    } else {
        Style::default()
    }
}

fn header_lines(app: &App) -> Vec<Line<'static>> {
    let s = &app.snapshot;
    let (down, up) = s.torrents.iter().fold((0, 0), |(d, u), t| (d + t.download_rate, u + t.upload_rate));
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for t in &s.torrents {
        match counts.iter_mut().find(|(name, _)| *name == t.state.as_str()) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.state.as_str(), 1)),
        }
    }
    counts.sort_unstable();
    let states: Vec<String> = counts.iter().map(|(name, n)| format!("{n} {name}")).collect();
    let opt = |v: Option<u64>| v.map_or("-".to_string(), human_bytes);
    let first = format!(
        "dropseed  down {}/s  up {}/s  DHT {}  disk free {}  mem {}",
        human_bytes(down),
        human_bytes(up),
        s.dht_nodes.map_or("off".to_string(), |n| n.to_string()),
        opt(s.disk_free),
        opt(s.memory),
    );
    let second = match &app.link {
        Link::Down(why) => Line::styled(
            format!("daemon not running, waiting for it ({why})"),
            accent(app, Color::Red).add_modifier(Modifier::BOLD),
        ),
        Link::Connecting => Line::raw("connecting to the daemon…"),
        Link::Up => Line::raw(format!(
            "{} torrents: {}",
            s.torrents.len(),
            if states.is_empty() { "none".to_string() } else { states.join(", ") }
        )),
    };
    vec![Line::raw(first), second]
}

/// The table's title: how it is sorted and filtered.
fn table_title(app: &App) -> String {
    let category = match app.category.as_deref() {
        None => "all".to_string(),
        Some("") => "none".to_string(),
        Some(c) => printable(c, 30),
    };
    let filter = if app.filter.is_empty() { "-".to_string() } else { printable(&app.filter, 30) };
    format!(" sort: {}  filter: {filter}  category: {category}  ({} shown) ", app.sort.label(), app.rows.len())
}

/// `#####.....  50%`: a bar of `width` cells and the percentage.
pub fn bar(progress: f64, width: usize) -> String {
    let p = if progress.is_finite() { progress.clamp(0.0, 1.0) } else { 0.0 };
    // Floor: a bar is full only when the torrent is.
    let filled = (p * width as f64).floor() as usize;
    format!("{}{} {:>3.0}%", "#".repeat(filled), ".".repeat(width - filled), (p * 100.0).floor())
}

fn ratio_text(r: f64) -> String {
    if r < 0.0 {
        "inf".into()
    } else {
        format!("{r:.2}")
    }
}

fn state_color(state: TorrentState) -> Color {
    match state {
        TorrentState::Downloading | TorrentState::Metadata => Color::Green,
        TorrentState::Seeding => Color::Blue,
        TorrentState::Paused | TorrentState::Stopped | TorrentState::Queued => Color::Yellow,
        TorrentState::Error | TorrentState::Missing => Color::Red,
        TorrentState::Checking | TorrentState::Moving => Color::Magenta,
    }
}

fn draw_table(frame: &mut Frame, app: &App, area: Rect) {
    let wide = area.width >= WIDE;
    let mut head = vec!["NAME"];
    let mut widths = vec![Constraint::Min(12)];
    if wide {
        head.push("CATEGORY");
        widths.push(Constraint::Length(10));
    }
    head.extend(["STATE", "PROGRESS"]);
    widths.extend([Constraint::Length(11), Constraint::Length(15)]);
    if wide {
        head.push("SIZE");
        widths.push(Constraint::Length(9));
    }
    head.extend(["DOWN", "UP"]);
    widths.extend([Constraint::Length(11), Constraint::Length(11)]);
    if wide {
        head.push("PEERS");
        widths.push(Constraint::Length(7));
    }
    head.push("RATIO");
    widths.push(Constraint::Length(5));
    if wide {
        head.push("ETA");
        widths.push(Constraint::Length(7));
    }
    let rows = app.rows.iter().map(|&i| table_row(app, &app.snapshot.torrents[i], wide));
    let table = Table::new(rows, widths)
        .header(Row::new(head).style(Style::default().add_modifier(Modifier::BOLD)))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(Block::default().borders(Borders::TOP).title(table_title(app)));
    let mut state = TableState::default().with_selected(app.cursor());
    frame.render_stateful_widget(table, area, &mut state);
    if app.rows.is_empty() && area.height > 3 {
        let what = if app.snapshot.torrents.is_empty() { "no torrents: + to add one" } else { "no torrent matches" };
        frame.render_widget(Paragraph::new(what), Rect { y: area.y + 2, height: 1, ..area });
    }
}

fn table_row(app: &App, t: &TorrentStatus, wide: bool) -> Row<'static> {
    let mut cells = vec![Cell::from(printable(&t.name, 200))];
    if wide {
        cells.push(Cell::from(if t.category.is_empty() { "-".to_string() } else { printable(&t.category, 40) }));
    }
    cells.push(Cell::from(t.state.as_str()).style(accent(app, state_color(t.state))));
    cells.push(Cell::from(bar(t.progress, 10)));
    if wide {
        cells.push(Cell::from(human_bytes(t.size)));
    }
    cells.push(Cell::from(format!("{}/s", human_bytes(t.download_rate))));
    cells.push(Cell::from(format!("{}/s", human_bytes(t.upload_rate))));
    if wide {
        cells.push(Cell::from(format!("{}/{}", t.peers, t.seeds)));
    }
    cells.push(Cell::from(ratio_text(t.ratio)));
    if wide {
        cells.push(Cell::from(t.eta_secs.map_or("-".to_string(), human_duration)));
    }
    Row::new(cells)
}

fn draw_log(frame: &mut Frame, app: &App, area: Rect) {
    let shown = area.height.saturating_sub(1) as usize;
    let lines: Vec<Line> =
        app.log.iter().skip(app.log.len().saturating_sub(shown)).map(|l| Line::raw(l.clone())).collect();
    let block = Block::default().borders(Borders::TOP).title(" log ");
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn footer_line(app: &App) -> String {
    match &app.mode {
        Mode::Input { prompt: Prompt::Add, text } => format!("add (magnet, hash or path): {}_", printable(text, 2000)),
        Mode::Input { prompt: Prompt::Filter, text } => format!("filter: {}_", printable(text, 200)),
        Mode::Confirm { name, delete_data: true, .. } => format!("remove {name} AND DELETE ITS DATA? y/n"),
        Mode::Confirm { name, .. } => format!("remove {name} (data kept)? y/n"),
        Mode::Detail { .. } => "Esc/Enter back  q back".to_string(),
        _ if !app.message.is_empty() => app.message.clone(),
        _ => "q quit  space pause/resume  + add  / filter  c category  s sort  Enter details  ? help".to_string(),
    }
}

/// The keys, as `?` shows them.
pub const HELP: &[(&str, &str)] = &[
    ("j k / arrows", "move"),
    ("space", "pause or resume"),
    ("+", "add a magnet, hash or .torrent path"),
    ("r", "recheck"),
    ("d / D", "remove / remove with its data (asks)"),
    ("s", "sort: name, progress, rate, ratio, added"),
    ("/", "filter by name"),
    ("c", "next category"),
    ("Enter", "details: files, trackers, peers"),
    ("?", "this help"),
    ("q / Esc", "quit"),
];

fn draw_help(frame: &mut Frame, area: Rect) {
    let w = area.width.min(60);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    let lines: Vec<Line> = HELP.iter().map(|(k, what)| Line::raw(format!(" {k:<13} {what}"))).collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(" keys ")), popup);
}

fn draw_detail(frame: &mut Frame, app: &App, area: Rect) {
    let Some((t, d)) = &app.detail else {
        frame.render_widget(Paragraph::new("loading…").block(Block::default().borders(Borders::TOP)), area);
        return;
    };
    let block = Block::default().borders(Borders::TOP).title(format!(" {} ", printable(&t.name, 200)));
    frame.render_widget(Paragraph::new(detail_lines(t, d)).block(block).wrap(Wrap { trim: false }), area);
}

fn detail_lines(t: &TorrentStatus, d: &TorrentDetail) -> Vec<Line<'static>> {
    let mut out = vec![Line::raw(format!(
        "{}  {}  {} of {}  down {}/s up {}/s  ratio {}",
        &t.info_hash[..t.info_hash.len().min(8)],
        t.state.as_str(),
        bar(t.progress, 10),
        human_bytes(t.size),
        human_bytes(t.download_rate),
        human_bytes(t.upload_rate),
        ratio_text(t.ratio)
    ))];
    if let Some(e) = &t.error {
        out.push(Line::raw(format!("error: {}", printable(e, 300))));
    }
    out.push(Line::raw(format!("Files ({})", d.files_total)));
    for f in &d.files {
        let p = if f.size == 0 { 1.0 } else { f.done as f64 / f.size as f64 };
        out.push(Line::raw(format!("  {} {:>9}  {}", bar(p, 10), human_bytes(f.size), printable(&f.path, 300))));
    }
    out.push(Line::raw(format!("Trackers ({})", t.trackers.len())));
    for v in &t.trackers {
        let answer = v.result.as_deref().map_or("not announced yet".to_string(), |r| printable(r, 200));
        out.push(Line::raw(format!(
            "  tier {} {}  {answer}",
            v.tier,
            printable(&crate::tracker::redacted(&v.url), 200)
        )));
    }
    out.push(Line::raw(format!("Peers ({})", d.peers_total)));
    for p in &d.peers {
        out.push(Line::raw(format!(
            "  {:<22} {:<18} down {:>9}/s up {:>9}/s {}",
            printable(&p.addr, 60),
            printable(&p.client, 30),
            human_bytes(p.down_rate),
            human_bytes(p.up_rate),
            p.flags
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::app::tests::{app_with, torrent};
    use crate::top::app::Snapshot;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    /// The screen's text, one string per row.
    fn screen(app: &App, w: u16, h: u16) -> Vec<String> {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| draw(f, app)).unwrap();
        let buf = term.backend().buffer().clone();
        (0..h).map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect()).collect()
    }

    fn two() -> App {
        let mut app = app_with(vec![
            torrent("Big.Movie.2160p", 'a', "downloading", 0.5, "movies"),
            torrent("debian-12.iso", 'b', "seeding", 1.0, ""),
        ]);
        app.snapshot.dht_nodes = Some(42);
        app.snapshot.disk_free = Some(10 << 30);
        app.on_log(vec!["INFO torrent=debian-12.iso verified".into()], 1);
        app
    }

    fn find<'a>(rows: &'a [String], needle: &str) -> &'a str {
        rows.iter().find(|r| r.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in\n{}", rows.join("\n")))
    }

    #[test]
    fn eighty_by_twenty_four_shows_totals_torrents_and_the_log() {
        let rows = screen(&two(), 80, 24);
        let head = &rows[0];
        assert!(head.contains("DHT 42") && head.contains("disk free 10.0GiB"), "{head}");
        assert!(rows[1].contains("2 torrents: 1 downloading, 1 seeding"), "{}", rows[1]);
        assert!(rows[2].contains("sort: name  filter: -  category: all  (2 shown)"), "{}", rows[2]);
        let movie = find(&rows, "Big.Movie");
        assert!(movie.contains("downloading") && movie.contains("#####.....  50%"), "{movie}");
        let iso = find(&rows, "debian-12.iso");
        assert!(iso.contains("seeding") && iso.contains("########## 100%"), "{iso}");
        find(&rows, "verified");
        assert!(rows[23].contains("q quit"), "{}", rows[23]);
        assert!(rows.iter().all(|r| !r.contains("CATEGORY")), "narrow: no category column");
    }

    #[test]
    fn a_wide_terminal_adds_category_size_peers_and_eta() {
        let rows = screen(&two(), 140, 30);
        let head = find(&rows, "NAME");
        assert!(["CATEGORY", "SIZE", "PEERS", "ETA"].iter().all(|c| head.contains(c)), "{head}");
        assert!(find(&rows, "Big.Movie").contains("movies"));
    }

    #[test]
    fn a_lost_daemon_is_said_and_the_last_picture_kept() {
        let mut app = two();
        app.on_disconnect("dropseed is not running");
        let rows = screen(&app, 80, 24);
        find(&rows, "daemon not running, waiting");
        find(&rows, "debian-12.iso");
    }

    #[test]
    fn names_cannot_reach_the_terminal_as_control_sequences() {
        let app = app_with(vec![torrent("evil\u{1b}]0;pwned\u{7}\u{1b}[2J", 'e', "seeding", 1.0, "")]);
        let rows = screen(&app, 80, 24);
        assert!(rows.iter().all(|r| !r.chars().any(char::is_control)));
        find(&rows, "evil?]0;pwned??[2J");
    }

    #[test]
    fn the_detail_view_lists_files_trackers_and_peers() {
        use crate::torrent::detail::{FileView, PeerView};
        let mut app = two();
        app.on_key(ratatui::crossterm::event::KeyEvent::from(ratatui::crossterm::event::KeyCode::Enter));
        let mut status = torrent("Big.Movie.2160p", 'a', "downloading", 0.5, "movies");
        status.trackers = serde_json::from_value(serde_json::json!([
            {"url": "http://tracker.example/announce", "tier": 0, "last_announce": null, "next_announce": null,
             "result": "12 peers", "sent": null}
        ]))
        .unwrap();
        let detail = TorrentDetail {
            files: vec![FileView { path: "Big.Movie/movie.mkv".into(), size: 100, done: 25 }],
            files_total: 1,
            peers: vec![PeerView {
                addr: "10.0.0.2:6881".into(),
                client: "Transmission 3000".into(),
                down_rate: 2048,
                up_rate: 0,
                downloaded: 4096,
                uploaded: 0,
                flags: "SI".into(),
            }],
            peers_total: 1,
        };
        assert!(screen(&app, 80, 24).iter().any(|r| r.contains("loading")));
        app.on_detail(status, detail);
        let rows = screen(&app, 80, 24);
        assert!(find(&rows, "movie.mkv").contains("##........  25%"));
        find(&rows, "Trackers (1)");
        assert!(find(&rows, "tracker.example").contains("12 peers"));
        assert!(find(&rows, "10.0.0.2:6881").contains("Transmission 3000"));
    }

    #[test]
    fn help_and_prompts_are_drawn() {
        let mut app = two();
        app.on_key(ratatui::crossterm::event::KeyEvent::from(ratatui::crossterm::event::KeyCode::Char('?')));
        let rows = screen(&app, 80, 24);
        find(&rows, "pause or resume");
        app.mode = Mode::List;
        app.on_key(ratatui::crossterm::event::KeyEvent::from(ratatui::crossterm::event::KeyCode::Char('D')));
        assert!(screen(&app, 80, 24)[23].contains("AND DELETE ITS DATA? y/n"));
        app.mode = Mode::Input { prompt: Prompt::Add, text: "magnet:?xt".into() };
        assert!(screen(&app, 80, 24)[23].contains("add (magnet, hash or path): magnet:?xt_"));
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let mut app = two();
        for (w, h) in [(1, 1), (10, 3), (20, 5), (80, 24)] {
            screen(&app, w, h);
            app.mode = Mode::Help;
        }
        app.on_snapshot(Snapshot::default());
        find(&screen(&app, 80, 24), "no torrents");
    }

    #[test]
    fn colours_only_when_wanted() {
        assert!(crate::top::colors_wanted(None, Some("xterm-256color")));
        assert!(crate::top::colors_wanted(Some(""), Some("screen")));
        assert!(!crate::top::colors_wanted(Some("1"), Some("xterm")));
        assert!(!crate::top::colors_wanted(None, Some("dumb")));
        assert!(!crate::top::colors_wanted(None, None));
    }

    #[test]
    fn bars_are_bounded() {
        assert_eq!(bar(0.0, 4), "....   0%");
        assert_eq!(bar(2.0, 4), "#### 100%");
        assert_eq!(bar(f64::NAN, 4), "....   0%");
    }
}
