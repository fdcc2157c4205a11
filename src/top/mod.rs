//! `dropseed top`: a full-screen live view of the running daemon, the way
//! `htop` shows a machine. It talks to the daemon only over the control
//! socket, with the same requests as the CLI (plus `log` to follow the
//! recent log lines and `detail` for one torrent's files and peers), once a
//! second and after each command. When the daemon goes away it says so and
//! waits for it. The terminal is restored on `q`, on a panic and on
//! SIGINT/SIGTERM/SIGHUP.
//!
//! The screen's state ([`app`]) and its drawing ([`ui`]) are pure; this
//! module only moves events and replies between them and the terminal.

pub mod app;
pub mod ui;

use crate::control::{self, Reply, Request};
use app::{Action, App, Link, Mode, Snapshot};
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, DisableBracketedPaste, EnableBracketedPaste, Event, KeyEventKind};
use ratatui::crossterm::{cursor, execute, terminal};
use ratatui::Terminal;
use std::io::{self, Stdout};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the screen asks the daemon for news.
const REFRESH: Duration = Duration::from_secs(1);
/// Longest wait for one reply: a stuck daemon must not freeze the screen.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// Colours unless `NO_COLOR` is set (to anything) or the terminal is dumb.
pub fn colors_wanted(no_color: Option<&str>, term: Option<&str>) -> bool {
    no_color.is_none_or(str::is_empty) && term.is_some_and(|t| !t.is_empty() && t != "dumb")
}

/// Runs the view until `q` or a signal; the terminal is restored whatever happens.
pub fn run(socket: PathBuf) -> io::Result<()> {
    let quit = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, quit.clone())?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    watch_terminal(quit.clone())?;
    let color = colors_wanted(std::env::var("NO_COLOR").ok().as_deref(), std::env::var("TERM").ok().as_deref());
    let mut term = Screen::enter()?;
    let result = event_loop(&mut term.0, &rt, &socket, &quit, App::new(color));
    drop(term);
    result
}

/// How often the terminal watch looks, and how long a quit may take.
const WATCH_EVERY: Duration = Duration::from_millis(250);
const QUIT_GRACE: Duration = Duration::from_secs(2);

/// crossterm's reader spins forever on a terminal that hung up (its read
/// loop retries end-of-file and EIO without returning), so `top` would
/// burn a core after its SSH session or tmux went away, deaf to signals.
/// A thread of its own watches the terminal and the quit flag, and ends
/// the process when the event loop cannot.
fn watch_terminal(quit: Arc<AtomicBool>) -> io::Result<()> {
    use std::io::IsTerminal;
    if !io::stdin().is_terminal() {
        return Ok(()); // crossterm reads /dev/tty then; nothing here to watch
    }
    let watch = move || {
        let mut quit_since: Option<Instant> = None;
        loop {
            std::thread::sleep(WATCH_EVERY);
            if terminal_hung_up() {
                // Nothing to restore: the terminal is gone.
                std::process::exit(1);
            }
            if quit.load(Ordering::Relaxed) {
                let since = *quit_since.get_or_insert_with(Instant::now);
                if since.elapsed() > QUIT_GRACE {
                    restore();
                    std::process::exit(0);
                }
            }
        }
    };
    std::thread::Builder::new().name("top-terminal".into()).spawn(watch).map(drop)
}

/// Whether standard input, the terminal, has hung up (POLLHUP or an error).
fn terminal_hung_up() -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let stdin = io::stdin();
    let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
    let now = Timespec { tv_sec: 0, tv_nsec: 0 };
    poll(&mut fds, Some(&now)).is_ok() && fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
}

/// The terminal in raw mode on the alternate screen; dropping it (or a
/// panic, through the hook) puts the user's terminal back.
struct Screen(Terminal<CrosstermBackend<Stdout>>);

impl Screen {
    fn enter() -> io::Result<Screen> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        terminal::enable_raw_mode()?;
        let mut out = io::stdout();
        if let Err(e) = execute!(out, terminal::EnterAlternateScreen, EnableBracketedPaste, cursor::Hide) {
            restore();
            return Err(e);
        }
        match Terminal::new(CrosstermBackend::new(out)) {
            Ok(t) => Ok(Screen(t)),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen, shows the cursor, ends raw mode. Safe to
/// call twice.
fn restore() {
    let _ = execute!(io::stdout(), DisableBracketedPaste, terminal::LeaveAlternateScreen, cursor::Show);
    let _ = terminal::disable_raw_mode();
}

fn event_loop(
    term: &mut Terminal<CrosstermBackend<Stdout>>,
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    quit: &AtomicBool,
    mut app: App,
) -> io::Result<()> {
    let mut next_refresh = Instant::now();
    while !quit.load(Ordering::Relaxed) {
        if Instant::now() >= next_refresh {
            refresh(rt, socket, &mut app);
            next_refresh = Instant::now() + REFRESH;
        }
        term.draw(|f| ui::draw(f, &app))?;
        // Short polls so a signal is seen soon.
        let wait = next_refresh.saturating_duration_since(Instant::now()).min(Duration::from_millis(200));
        if !event::poll(wait)? {
            continue;
        }
        let action = match event::read()? {
            Event::Key(k) if k.kind != KeyEventKind::Release => Some(app.on_key(k)),
            // Text for a prompt (in the list it opens the add prompt), never keys.
            Event::Paste(text) => Some(app.on_paste(&text)),
            _ => None,
        };
        let was_detail = matches!(app.mode, Mode::Detail { .. });
        if let Some(action) = action {
            match action {
                Action::None => {}
                Action::Quit => return Ok(()),
                Action::Send(req) => send(rt, socket, &req, &[], &mut app),
                Action::Add(source) => add(rt, socket, &source, &mut app),
            }
            next_refresh = Instant::now();
        }
        if !was_detail && matches!(app.mode, Mode::Detail { .. }) {
            next_refresh = Instant::now();
        }
    }
    Ok(())
}

fn ask(rt: &tokio::runtime::Runtime, socket: &Path, req: &Request, body: &[u8]) -> Result<Reply, String> {
    rt.block_on(async {
        match tokio::time::timeout(REPLY_TIMEOUT, control::request_with_body(socket, req, body)).await {
            Ok(r) => r,
            Err(_) => Err(format!("the daemon did not answer within {}s", REPLY_TIMEOUT.as_secs())),
        }
    })
}

/// Status, new log lines and, in the detail view, the torrent's detail.
fn refresh(rt: &tokio::runtime::Runtime, socket: &Path, app: &mut App) {
    let reply = match ask(rt, socket, &Request::Status, &[]) {
        Ok(r) if r.ok => r,
        Ok(r) => return app.on_disconnect(r.message.as_deref().unwrap_or("status refused")),
        Err(e) => return app.on_disconnect(&e),
    };
    app.on_snapshot(Snapshot {
        torrents: reply.torrents.unwrap_or_default(),
        dht_nodes: reply.dht_nodes,
        disk_free: reply.disk_free,
        memory: reply.memory,
    });
    if let Ok(Reply { ok: true, log: Some(lines), log_last: Some(last), .. }) =
        ask(rt, socket, &Request::Log { after: app.log_last }, &[])
    {
        app.on_log(lines, last);
    }
    if let Mode::Detail { hash } = &app.mode {
        match ask(rt, socket, &Request::Detail { id: hash.clone() }, &[]) {
            Ok(Reply { ok: true, torrents: Some(mut t), detail: Some(d), .. }) if !t.is_empty() => {
                app.on_detail(t.swap_remove(0), d)
            }
            Ok(r) => app.on_reply(r.message.as_deref().unwrap_or("no detail")),
            Err(e) => app.on_reply(&e),
        }
    }
    if app.link != Link::Up {
        app.link = Link::Up;
    }
}

/// Sends a command; its reply (or why it failed) goes to the footer.
fn send(rt: &tokio::runtime::Runtime, socket: &Path, req: &Request, body: &[u8], app: &mut App) {
    match ask(rt, socket, req, body) {
        Ok(r) if r.ok => app.on_reply(r.message.as_deref().unwrap_or("done")),
        Ok(r) => app.on_reply(&format!("error: {}", r.message.unwrap_or_default())),
        Err(e) => app.on_reply(&format!("error: {e}")),
    }
}

/// `+`: what `dropseed add` sends (a file's bytes, or the magnet or hash).
fn add(rt: &tokio::runtime::Runtime, socket: &Path, source: &str, app: &mut App) {
    match control::add_request(source) {
        Ok((req, body)) => send(rt, socket, &req, &body, app),
        Err(e) => app.on_reply(&format!("error: {e}")),
    }
}
