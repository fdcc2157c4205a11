//! The `dropseed` command: the daemon (`run`, the default) and the small
//! control CLI that talks to it over its Unix socket.

use clap::{Parser, Subcommand};
use dropseed::config::DEFAULT_CONFIG_TOML;
use dropseed::confpath::{self, Loaded};
use dropseed::control::{self, Request};
use dropseed::session::lookup::{self, Candidate};
use dropseed::startup::LockError;
use dropseed::torrent::TorrentStatus;
use dropseed::types::{human_bytes, human_duration, printable};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dropseed",
    version,
    about = "Headless BitTorrent seedbox: drop .torrent/.magnet files in a folder",
    after_help = "Without a command, runs the daemon. The CLI commands talk to the running daemon over its \
                  control socket (paths.state_dir/control.sock).\n\nExamples:\n  \
                  dropseed -c /etc/dropseed/dropseed.toml      run the daemon\n  \
                  dropseed status                              what the daemon is doing\n  \
                  dropseed add ~/film.torrent                  add a torrent\n  \
                  dropseed pause 0123abcd                      pause by short hash (or name)"
)]
struct Cli {
    /// Config file (TOML). Without it: $DROPSEED_CONFIG, else
    /// /etc/dropseed/dropseed.toml if it exists, else built-in defaults.
    /// Relative paths inside it are taken from its own directory.
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What an ID may be, for every command that takes one.
const ID_HELP: &str = "The torrent: its name, the start of its name, or its hash (the 8-digit short hash \
                       `status` shows, or more of it)";

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (the default).
    Run,
    /// Show the torrents of the running daemon: a table, or one torrent's details.
    #[command(after_help = "Examples:\n  dropseed status --state downloading,error\n  \
                            dropseed status --category tv --sort ratio --reverse\n  dropseed status 0123abcd")]
    Status {
        /// Show these torrents' details (path, category, trackers, errors) instead of the table.
        #[arg(value_name = "ID", help = ID_HELP)]
        ids: Vec<String>,
        /// Print JSON (every field, for scripts) instead of text.
        #[arg(long)]
        json: bool,
        /// Only torrents in these states (comma-separated): metadata, queued, checking,
        /// downloading, moving, seeding, paused, stopped, missing, error.
        #[arg(long, value_delimiter = ',', value_name = "STATE")]
        state: Vec<String>,
        /// Only torrents of this category (watch subfolder); "" for those without one.
        #[arg(long, value_name = "NAME")]
        category: Option<String>,
        /// Order of the table.
        #[arg(long, value_enum, default_value_t = SortKey::Name)]
        sort: SortKey,
        /// Reverse the order.
        #[arg(long)]
        reverse: bool,
    },
    /// Add a .torrent or .magnet file (its contents are sent to the daemon),
    /// a magnet URI or an info hash.
    #[command(after_help = "Examples:\n  dropseed add ~/Downloads/film.torrent\n  \
                            dropseed add 'magnet:?xt=urn:btih:0123...&dn=film'\n  \
                            dropseed add 0123456789abcdef0123456789abcdef01234567")]
    Add {
        /// A .torrent or .magnet file, a magnet URI, or a 40-digit info hash.
        #[arg(value_name = "FILE|MAGNET|HASH")]
        source: String,
        /// The folder already holding the torrent's data (cross-seeding): it
        /// is seeded there in place, read-only, once every piece is verified.
        /// It must be inside download_dir, a category's folder or [api] allowed_paths.
        #[arg(long, value_name = "DIR")]
        save_path: Option<PathBuf>,
    },
    /// Pause a torrent; prints the state it reached.
    Pause {
        #[arg(value_name = "ID", help = ID_HELP)]
        id: String,
    },
    /// Resume a paused or stopped torrent; prints the state it reached.
    Resume {
        #[arg(value_name = "ID", help = ID_HELP)]
        id: String,
    },
    /// Verify every piece of a torrent again.
    Recheck {
        #[arg(value_name = "ID", help = ID_HELP)]
        id: String,
    },
    /// Show a torrent's trackers: last and next announce, last answer, counters sent.
    Trackers {
        #[arg(value_name = "ID", help = ID_HELP)]
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Announce to a torrent's trackers now (or as soon as min interval allows).
    Reannounce {
        #[arg(value_name = "ID", help = ID_HELP)]
        id: String,
    },
    /// Remove a torrent; its data stays unless --delete-data.
    Remove {
        /// Delete the torrent's files too (files that are no longer its own stay).
        #[arg(long)]
        delete_data: bool,
        #[arg(value_name = "ID", help = ID_HELP)]
        id: String,
    },
    /// The qBittorrent-compatible Web API's credentials.
    Api {
        #[command(subcommand)]
        action: ApiAction,
    },
    /// A full-screen live view of the running daemon: torrents, totals and its log
    /// (keys: j/k move, space pause/resume, + add, d remove, / filter, Enter details, ? help, q quit).
    Top,
    /// Download one torrent in the foreground, no daemon needed; exits 0 once the files
    /// are verified in DIR (after seeding to the limit, if one is given).
    #[command(after_help = "State is kept in DIR/.dropseed-download so a run cut short (Ctrl-C) resumes; \
                            it is removed when done. Exit codes: 0 done, 1 bad input or the torrent failed, \
                            3 --timeout reached, 130 interrupted.\n\nExamples:\n  \
                            dropseed download 'magnet:?xt=urn:btih:0123...' -o ~/dl\n  \
                            dropseed download film.torrent --seed-ratio 1.0 --timeout 2h")]
    Download {
        /// A magnet URI, a 40-digit info hash, or a .torrent or .magnet file.
        #[arg(value_name = "MAGNET|FILE|HASH")]
        source: String,
        /// Where the files go.
        #[arg(short = 'o', long = "output", value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Seed until this upload ratio before exiting.
        #[arg(long, value_name = "R")]
        seed_ratio: Option<f64>,
        /// Seed this long before exiting (e.g. 90s, 30m, 2h).
        #[arg(long, value_name = "T", value_parser = dropseed::config::parse_span)]
        seed_time: Option<u64>,
        /// Give up (exit 3) if not done within this time (e.g. 10m).
        #[arg(long, value_name = "T", value_parser = dropseed::config::parse_span)]
        timeout: Option<u64>,
    },
    /// Print the default config, or check a config file.
    Config {
        /// Print the default config with every setting explained (the default action).
        #[arg(long, conflicts_with = "check")]
        default: bool,
        /// Check the config file (-c, $DROPSEED_CONFIG or /etc/dropseed/dropseed.toml) and
        /// print the paths it resolves to.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Subcommand)]
enum ApiAction {
    /// Read a password on stdin; print the `[api] password_hash` value for it.
    HashPassword,
    /// Make an API key for `Authorization: Bearer KEY`: printed once, only its hash is kept.
    NewKey,
}

/// Orders of `status`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SortKey {
    Name,
    State,
    Progress,
    Size,
    Down,
    Up,
    Peers,
    Ratio,
    Eta,
}

/// The config from `-c`, `DROPSEED_CONFIG`, the system file or the defaults.
fn load_config(flag: Option<&Path>) -> Result<Loaded, String> {
    confpath::load(confpath::locate_here(flag)?).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    match command {
        Command::Config { default, check } => {
            if default || !check {
                print!("{DEFAULT_CONFIG_TOML}");
                return ExitCode::SUCCESS;
            }
            match load_config(cli.config.as_deref()) {
                Ok(loaded) => {
                    let p = &loaded.config.paths;
                    println!("config ok: {}", loaded.source.describe());
                    for (key, path) in [
                        ("watch_dir", &p.watch_dir),
                        ("download_dir", &p.download_dir),
                        ("state_dir", &p.state_dir),
                        ("log_dir", &p.log_dir),
                    ] {
                        println!("  {key:<13}{}", path.display());
                    }
                    println!("  {:<13}{}", "control", loaded.config.control_socket().display());
                    for note in &loaded.notes {
                        println!("  {note}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("config error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run => run_daemon(cli.config.as_deref()),
        Command::Api { action } => api_command(cli.config.as_deref(), action),
        Command::Top => run_top(cli.config.as_deref()),
        Command::Download { source, dir, seed_ratio, seed_time, timeout } => {
            let secs = |t: Option<u64>| t.map(std::time::Duration::from_secs);
            let opts = dropseed::download::Options {
                source,
                dir,
                seed_ratio,
                seed_time: secs(seed_time),
                timeout: secs(timeout),
                tty: std::io::IsTerminal::is_terminal(&std::io::stdout()),
            };
            run_download(cli.config.as_deref(), opts)
        }
        other => client(cli.config.as_deref(), other),
    }
}

fn api_command(flag: Option<&Path>, action: ApiAction) -> ExitCode {
    use dropseed::api::auth;
    match action {
        ApiAction::HashPassword => {
            let mut line = String::new();
            // One line; a longer input is not a password anyone types.
            if std::io::stdin().read_line(&mut line).is_err() || line.len() > 4096 {
                eprintln!("dropseed api hash-password: cannot read a password on stdin");
                return ExitCode::from(2);
            }
            let password = line.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                eprintln!("dropseed api hash-password: the password is empty");
                return ExitCode::from(2);
            }
            println!("{}", auth::hash_password(password));
            ExitCode::SUCCESS
        }
        ApiAction::NewKey => {
            let config = match load_config(flag) {
                Ok(l) => l.config,
                Err(e) => {
                    eprintln!("config error: {e}");
                    return ExitCode::from(2);
                }
            };
            let key = auth::random_token();
            let file = auth::key_file(&config.paths.state_dir);
            if let Err(e) = write_private(&file, &auth::key_digest(&key)) {
                eprintln!("dropseed api new-key: cannot write {}: {e}", file.display());
                return ExitCode::from(1);
            }
            println!("{key}");
            eprintln!("(shown once; its hash is in {}; restart dropseed to use it)", file.display());
            ExitCode::SUCCESS
        }
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

fn run_top(config_path: Option<&Path>) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(c) => c.config,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::from(2);
        }
    };
    match dropseed::top::run(config.control_socket()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dropseed top: {e}");
            ExitCode::from(1)
        }
    }
}

/// `download`: the defaults, or the `-c` file when one is named (its
/// network, DHT and limits; its paths are not used).
fn run_download(config_path: Option<&Path>, opts: dropseed::download::Options) -> ExitCode {
    use dropseed::download::Outcome;
    tune_allocator();
    let base = match config_path {
        None => dropseed::config::Config::default(),
        Some(_) => match load_config(config_path) {
            Ok(c) => c.config,
            Err(e) => {
                eprintln!("config error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    // Warnings (a tracker refusing, a disk error) on stderr; progress on stdout.
    let _ = tracing_subscriber_stderr();
    let dir = opts.dir.display().to_string();
    // Ctrl-C (or a TERM) ends the run cleanly: the session saves what it has.
    let quit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, quit.clone()) {
            eprintln!("error: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    }
    let stop = async move {
        while !quit.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let outcome = runtime().block_on(dropseed::download::run(&base, opts, stop));
    match &outcome {
        Outcome::Done { name } => eprintln!("done: {name} is in {dir}"),
        Outcome::Interrupted => eprintln!("interrupted: run the same command again to resume"),
        Outcome::TimedOut(t) => eprintln!(
            "error: not complete within {}; what is on disk is kept, run again to resume",
            human_duration(t.as_secs())
        ),
        Outcome::Failed(why) => eprintln!("error: {why}"),
    }
    ExitCode::from(outcome.exit_code())
}

fn tracing_subscriber_stderr() -> Result<(), String> {
    dropseed::logging::init_stderr("warn")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

/// Piece buffers (hundreds of KiB and up) are allocated and freed on
/// different threads; glibc's adaptive threshold would move them into malloc
/// arenas, where freed memory lingers. A fixed threshold keeps them as
/// their own mappings, returned to the system when freed. Smaller ones
/// (block buffers, packets) stay in the arenas, and up to 16 MiB free at
/// the top of an arena is kept rather than handed back at a few hundred
/// KiB: under an upload's steady stream of block buffers glibc gave the
/// memory back and faulted it in again many times a second (a fifth of
/// TCP seeding's CPU).
///
/// One arena per core, not glibc's eight: tokio's workers each keep one,
/// and the blocking threads that parse and set up added torrents would
/// otherwise each leave records in an arena of their own, half-used pages
/// no trim can hand back (500 seeding torrents: 9.0 -> 8.4 MiB anonymous).
fn tune_allocator() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    // SAFETY: mallopt only tunes the allocator; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_ARENA_MAX, i32::try_from(cores).unwrap_or(i32::MAX));
    }
}

/// How often freed heap memory is handed back (see [`trim_heap_forever`]).
const HEAP_TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Hands the free pages of the malloc arenas back to the system, now and
/// then: the 16 MiB trim threshold above keeps them otherwise, and what
/// adding thousands of torrents frees (parsed files, saves, replies) sat
/// resident between the torrents' records (about 1.5 KiB per torrent at
/// 500). Once a minute costs an upload at most one fault-in of its buffers.
fn trim_heap_forever() {
    let spawned = std::thread::Builder::new().name("heap-trim".into()).spawn(|| loop {
        std::thread::sleep(HEAP_TRIM_EVERY);
        // SAFETY: malloc_trim only releases free memory; it takes the
        // arenas' own locks.
        unsafe { libc::malloc_trim(0) };
    });
    if let Err(e) = spawned {
        // Before logging starts: stderr is what there is.
        eprintln!("dropseed: no heap trimming thread ({e}); freed memory stays with the process");
    }
}

fn run_daemon(flag: Option<&Path>) -> ExitCode {
    tune_allocator();
    trim_heap_forever();
    let Loaded { config, source, notes } = match load_config(flag) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::from(2);
        }
    };
    // Before anything is created: folders, log files, state files, socket.
    dropseed::perms::set_umask(config.paths.umask.0);
    // The lock first: a daemon refused because another one runs must not
    // write into that one's log.
    let lock = dropseed::startup::lock_state_dir(&config.paths.state_dir);
    if let Err(LockError::Held(why)) = &lock {
        eprintln!("dropseed: {why}");
        return ExitCode::from(1);
    }
    let log = match dropseed::logging::init(&config.log, &config.paths.log_dir, true) {
        Ok(l) => l,
        Err(e) => {
            if let Err(LockError::Unusable(why)) = &lock {
                eprintln!("dropseed: {why}");
            }
            eprintln!(
                "dropseed: cannot write the log in {} ({}): set [paths] log_dir",
                config.paths.log_dir.display(),
                dropseed::fsutil::reason(&e)
            );
            return ExitCode::from(1);
        }
    };
    // From here on a failure is one ERROR line, in the log and on the console.
    let lock = match lock {
        Ok(l) => l,
        Err(LockError::Unusable(why) | LockError::Held(why)) => {
            tracing::error!("cannot start: {why}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(log_dir = %config.paths.log_dir.display(), "logging to {}", config.paths.log_dir.join("dropseed.log").display());
    tracing::info!(config = %source.describe(), "config");
    if let Some(why) = &lock.not_locked {
        tracing::warn!("{why}");
    }
    let group = match config.paths.socket_group.as_str() {
        "" => "the daemon's own group",
        g => g,
    };
    tracing::info!("umask {}; control socket mode 0660, group: {group}", config.paths.umask);
    for note in notes {
        tracing::info!("{note}");
    }
    let config_path = source.file().map(Path::to_path_buf);
    match runtime().block_on(dropseed::daemon::run(config, config_path, &log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            ExitCode::from(1)
        }
    }
}

fn client(config_path: Option<&Path>, command: Command) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(c) => c.config,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::from(2);
        }
    };
    let json = matches!(command, Command::Status { json: true, .. } | Command::Trackers { json: true, .. });
    let trackers_view = matches!(command, Command::Trackers { .. });
    let (req, body, view) = match client_request(command) {
        Ok(built) => built,
        Err(code) => return code,
    };
    let reply = match runtime().block_on(control::request_with_body(&config.control_socket(), &req, &body)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if !reply.ok {
        print_refusal(&req, reply);
        return ExitCode::from(1);
    }
    match reply.torrents.as_ref() {
        Some(torrents) if trackers_view => {
            if json {
                let trackers: Vec<_> = torrents.iter().flat_map(|t| t.trackers.clone()).collect();
                println!("{}", serde_json::json!({ "trackers": trackers }));
            } else {
                print_trackers(torrents);
            }
        }
        Some(_) => return print_torrents(reply, view.as_ref(), json),
        None => {
            if let Some(m) = reply.message {
                // Replies name torrents: printable, whatever a .torrent calls itself.
                for line in m.lines() {
                    println!("{}", printable(line, 2000));
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// The control request a client command makes, its body (a file's bytes
/// for `add`) and, for `status`, the view asked for; the exit code when the
/// command's arguments are refused.
fn client_request(command: Command) -> Result<(Request, Vec<u8>, Option<View>), ExitCode> {
    let req = match command {
        Command::Status { ids, json: _, state, category, sort, reverse } => {
            if let Some(bad) = state.iter().find(|s| !STATES.contains(&s.as_str())) {
                eprintln!("error: --state {bad}: not a state; states are {}", STATES.join(", "));
                return Err(ExitCode::from(2));
            }
            let view = View { ids, states: state, category, sort, reverse };
            return Ok((Request::Status, Vec::new(), Some(view)));
        }
        Command::Add { source, save_path } => match control::add_request(&source) {
            Ok((Request::AddFile { name, size, .. }, bytes)) if save_path.is_some() => {
                // The daemon's working folder is not ours: an absolute path.
                let dir = save_path.map(|d| std::path::absolute(&d).unwrap_or(d));
                return Ok((Request::AddFile { name, size, save_path: dir }, bytes, None));
            }
            Ok(_) if save_path.is_some() => {
                eprintln!("error: --save-path needs a .torrent file (a magnet has no files yet)");
                return Err(ExitCode::from(1));
            }
            Ok((req, bytes)) => return Ok((req, bytes, None)),
            Err(e) => {
                eprintln!("error: {e}");
                return Err(ExitCode::from(1));
            }
        },
        Command::Pause { id } => Request::Pause { id },
        Command::Resume { id } => Request::Resume { id },
        Command::Recheck { id } => Request::Recheck { id },
        Command::Trackers { id, .. } => Request::Trackers { id },
        Command::Reannounce { id } => Request::Reannounce { id },
        Command::Remove { delete_data, id } => Request::Remove { id, delete_data },
        Command::Run | Command::Top | Command::Download { .. } | Command::Config { .. } | Command::Api { .. } => {
            unreachable!()
        }
    };
    Ok((req, Vec::new(), None))
}

/// The daemon's refusal of `req`, on stderr.
fn print_refusal(req: &Request, reply: control::Reply) {
    let message = reply.message.unwrap_or_default();
    // A daemon older than protocol 2 names no error kind: its words are all there is.
    let old_daemon = reply.version.is_none();
    if old_daemon && matches!(req, Request::AddFile { .. }) && message.contains("unknown variant `add_file`") {
        eprintln!(
            "error: the running daemon is older than this dropseed and cannot take a file's contents; restart it"
        );
    } else {
        eprintln!("error: {}", printable(&message, 2000));
    }
}

/// `status`: the torrents of the reply the view selects, as JSON, details
/// (torrents named) or a table with the DHT's line.
fn print_torrents(reply: control::Reply, view: Option<&View>, json: bool) -> ExitCode {
    let torrents = match view.map(|v| v.select(reply.torrents.unwrap_or_default())) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        None => Vec::new(),
    };
    if json {
        let mut out = serde_json::json!({ "torrents": torrents });
        if let Some(n) = reply.dht_nodes {
            out["dht_nodes"] = n.into();
        }
        if let Some(n) = reply.dht_nodes6 {
            out["dht_nodes6"] = n.into();
        }
        if let Some(p) = reply.dht_port {
            out["dht_port"] = p.into();
        }
        println!("{out}");
    } else if view.is_some_and(|v| !v.ids.is_empty()) {
        torrents.iter().for_each(print_details);
    } else {
        print_table(&torrents);
        if let (Some(n), Some(p)) = (reply.dht_nodes, reply.dht_port) {
            let v6 = reply.dht_nodes6.map(|m| format!(" ({m} over IPv6)")).unwrap_or_default();
            println!("DHT: {n} nodes{v6}, UDP port {p}");
        }
    }
    ExitCode::SUCCESS
}

fn print_trackers(torrents: &[TorrentStatus]) {
    let when = |t: Option<u64>| {
        let now = dropseed::wallclock::now_unix();
        match t {
            None => "-".to_string(),
            Some(t) if t >= now => format!("in {}", dropseed::types::human_duration(t - now)),
            Some(t) => format!("{} ago", dropseed::types::human_duration(now - t)),
        }
    };
    for t in torrents {
        println!("{} ({})", t.name, &t.info_hash[..8]);
        if t.trackers.is_empty() {
            println!("  no announces yet (paused, queued, checking, or no tracker)");
        }
        for v in &t.trackers {
            println!("  tier {} {}", v.tier, dropseed::types::printable(&v.url, 200));
            println!("    last announce {}, next {}", when(v.last_announce), when(v.next_announce));
            if let Some(r) = &v.result {
                println!("    answer: {}", dropseed::types::printable(r, 300));
            }
            if let Some(s) = &v.sent {
                println!(
                    "    sent: event={} uploaded={} downloaded={} left={}",
                    s.event, s.uploaded, s.downloaded, s.left
                );
            }
        }
    }
}

/// Every state a torrent can be in, as `status` shows it.
const STATES: [&str; 10] =
    ["metadata", "queued", "checking", "downloading", "moving", "seeding", "paused", "stopped", "missing", "error"];

/// What `status` shows: filters, order, or named torrents.
struct View {
    ids: Vec<String>,
    states: Vec<String>,
    category: Option<String>,
    sort: SortKey,
    reverse: bool,
}

impl View {
    fn select(&self, mut all: Vec<TorrentStatus>) -> Result<Vec<TorrentStatus>, String> {
        if !self.ids.is_empty() {
            let candidates: Vec<Candidate> =
                all.iter().map(|t| Candidate { name: &t.name, hash: &t.info_hash }).collect();
            let picked: Vec<usize> = self
                .ids
                .iter()
                .map(|id| lookup::find(id, &candidates))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            return Ok(picked.into_iter().map(|i| all[i].clone()).collect());
        }
        all.retain(|t| {
            (self.states.is_empty() || self.states.iter().any(|s| s == t.state.as_str()))
                && self.category.as_ref().is_none_or(|c| *c == t.category)
        });
        all.sort_by(|a, b| self.order(a, b).then_with(|| a.name.cmp(&b.name)));
        if self.reverse {
            all.reverse();
        }
        Ok(all)
    }

    fn order(&self, a: &TorrentStatus, b: &TorrentStatus) -> std::cmp::Ordering {
        let ratio = |t: &TorrentStatus| if t.ratio < 0.0 { f64::INFINITY } else { t.ratio };
        match self.sort {
            SortKey::Name => a.name.cmp(&b.name),
            SortKey::State => a.state.as_str().cmp(b.state.as_str()),
            SortKey::Progress => a.progress.total_cmp(&b.progress),
            SortKey::Size => a.size.cmp(&b.size),
            SortKey::Down => a.download_rate.cmp(&b.download_rate),
            SortKey::Up => a.upload_rate.cmp(&b.upload_rate),
            SortKey::Peers => a.peers.cmp(&b.peers),
            SortKey::Ratio => ratio(a).total_cmp(&ratio(b)),
            // Unknown ETAs last.
            SortKey::Eta => a.eta_secs.unwrap_or(u64::MAX).cmp(&b.eta_secs.unwrap_or(u64::MAX)),
        }
    }
}

fn print_table(torrents: &[TorrentStatus]) {
    if torrents.is_empty() {
        println!("no torrents");
        return;
    }
    println!(
        "{:<8} {:<40} {:<11} {:>7} {:>9} {:>11} {:>11} {:>5} {:>6} {:>8}",
        "HASH", "NAME", "STATE", "DONE", "SIZE", "DOWN", "UP", "PEERS", "RATIO", "ETA"
    );
    for t in torrents {
        let shown = printable(&t.name, 1000);
        let mut name: String = shown.chars().take(40).collect();
        if shown.chars().count() > 40 {
            name.pop();
            name.push('~');
        }
        let ratio = if t.ratio < 0.0 { "inf".into() } else { format!("{:.2}", t.ratio) };
        println!(
            "{:<8} {:<40} {:<11} {:>6.1}% {:>9} {:>9}/s {:>9}/s {:>5} {:>6} {:>8}",
            &t.info_hash[..8],
            name,
            t.state.as_str(),
            t.progress * 100.0,
            human_bytes(t.size),
            human_bytes(t.download_rate),
            human_bytes(t.upload_rate),
            t.peers,
            ratio,
            t.eta_secs.map(human_duration).unwrap_or_else(|| "-".into())
        );
        if let Some(e) = &t.error {
            println!("         error: {}", printable(e, 300));
        }
        if let Some(e) = &t.tracker_error {
            println!("         tracker: {}", printable(e, 300));
        }
    }
}

/// The seeding limits that hold, as `status` shows them; None for none.
fn seeding_limits_line(e: &dropseed::share::Effective) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(r) = e.ratio {
        parts.push(format!("ratio {r}"));
    }
    if let Some(s) = e.seeding_secs {
        parts.push(format!("seeding time {}", dropseed::types::human_duration(s)));
    }
    if let Some(s) = e.idle_secs {
        parts.push(format!("inactive {}", dropseed::types::human_duration(s)));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// One torrent, everything the daemon says of it.
fn print_details(t: &TorrentStatus) {
    let ratio = if t.ratio < 0.0 { "inf".into() } else { format!("{:.2}", t.ratio) };
    let category = if t.category.is_empty() { "-" } else { &t.category };
    println!("{}", printable(&t.name, 500));
    println!("  hash      {}", t.info_hash);
    println!("  state     {} ({:.1}% of {})", t.state.as_str(), t.progress * 100.0, human_bytes(t.size));
    println!("  path      {}", if t.path.is_empty() { "-".to_string() } else { printable(&t.path, 1000) });
    println!("  category  {category}");
    if !t.tags.is_empty() {
        println!("  tags      {}", printable(&t.tags.join(", "), 1000));
    }
    if let Some(limits) = seeding_limits_line(&t.limits.effective) {
        println!("  limits    {limits}");
    }
    if !t.shared_with.is_empty() {
        let others: Vec<&str> = t.shared_with.iter().map(|h| h.get(..8).unwrap_or(h)).collect();
        println!("  shares    its data with {}", printable(&others.join(", "), 500));
    } else if t.borrowed {
        println!("  shares    seeds data it found there (read-only)");
    }
    println!(
        "  transfer  down {}/s, up {}/s, {} peers ({} seeds), ratio {ratio}",
        human_bytes(t.download_rate),
        human_bytes(t.upload_rate),
        t.peers,
        t.seeds
    );
    if let Some(swarm) = t.swarm {
        println!("  swarm     {} seeders, {} leechers (the tracker's count)", swarm.seeders, swarm.leechers);
    }
    println!(
        "  counters  downloaded {}, uploaded {}, corrupt {}, wasted {}",
        human_bytes(t.downloaded),
        human_bytes(t.uploaded),
        human_bytes(t.corrupt),
        human_bytes(t.wasted)
    );
    if let Some(e) = &t.error {
        println!("  error     {}", printable(e, 500));
    }
    match &t.tracker_error {
        Some(e) => println!("  tracker   {}", printable(e, 500)),
        None if t.trackers.is_empty() => println!("  tracker   -"),
        None => println!("  tracker   ok ({} trackers; `dropseed trackers` for each)", t.trackers.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `--help` explains every command, option and argument.
    #[test]
    fn every_command_and_argument_has_help() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut missing = Vec::new();
        for cmd in std::iter::once(&cli).chain(cli.get_subcommands()) {
            if cmd.get_name() != "dropseed" && cmd.get_about().is_none() {
                missing.push(cmd.get_name().to_string());
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} {}", cmd.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "without help: {missing:?}");
        let add = cli.find_subcommand("add").unwrap().clone().render_long_help().to_string();
        assert!(add.contains("Examples:") && add.contains("dropseed add "), "{add}");
    }
}
