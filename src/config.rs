//! The configuration file: TOML sections deserialised with serde, unknown keys
//! refused by name, every value checked by [`Config::validate`].
//!
//! `config.example.toml` is the documentation *and* the embedded default:
//! `dropseed config --default` prints it, and a test checks that it parses to
//! exactly `Config::default()`, so the two cannot drift apart.

use crate::hookcmd::HookEvent;
use crate::types::parse_size;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config.example.toml");

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct Config {
    pub paths: Paths,
    pub network: Network,
    pub dht: Dht,
    pub lsd: Lsd,
    pub log: Log,
    pub watch: Watch,
    pub limits: Limits,
    pub seeding: Seeding,
    pub storage: Storage,
    /// `[cross_seed]`: how a new torrent finds its files among the data seeded already.
    pub cross_seed: CrossSeed,
    pub hooks: HooksSection,
    /// `[api]`: the qBittorrent-compatible Web API (off unless `listen` is set).
    pub api: Api,
    /// `[categories.NAME]`: what a watch subfolder's torrents do differently.
    pub categories: std::collections::BTreeMap<String, Category>,
}

/// A category: a subfolder of the watch folder (`watch/tv/x.torrent` is in
/// category `tv`). Its torrents finish in their own complete folder and may
/// have their own seeding limits and hooks; what it does not set is the
/// global setting. A subfolder without a section is a category too.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Category {
    /// Where its finished torrents go (default: `download_dir/NAME`).
    pub download_dir: Option<PathBuf>,
    pub ratio_limit: Option<f64>,
    pub seed_time_limit: Option<Span>,
    pub idle_seed_limit: Option<Span>,
    pub on_added: Option<Vec<String>>,
    pub on_complete: Option<Vec<String>>,
    pub on_seeding_done: Option<Vec<String>>,
}

/// When seeding stops (0: no limit of that kind).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeedLimits {
    pub ratio: f64,
    pub time_secs: u64,
    /// Seconds in a row without an uploaded byte.
    pub idle_secs: u64,
}

/// Whether `name` may be a category: one plain folder name.
pub fn valid_category(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.chars().any(char::is_control)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Paths {
    pub watch_dir: PathBuf,
    pub download_dir: PathBuf,
    /// Where torrents download until every piece is verified and durable;
    /// empty to download in `download_dir` directly.
    pub incomplete_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    /// The daemon's umask, applied at start (folders 0777 and files 0666
    /// without these bits).
    pub umask: Umask,
    /// The control socket's group (empty: the daemon's own group).
    pub socket_group: String,
}

/// A umask, written as octal digits in a string ("0027"). A TOML number is
/// refused: `umask = 27` would be decimal 27, not 0o027, without a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Umask(pub u32);

impl<'de> Deserialize<'de> for Umask {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Umask, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(#[allow(dead_code)] i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(_) => Err(serde::de::Error::custom(
                "write the umask as a string of octal digits, e.g. umask = \"0007\" (a number is ambiguous)",
            )),
            Raw::Str(s) => parse_umask(&s).map(|m| Umask(m as u32)).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Umask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl std::fmt::Display for Umask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

fn parse_umask(s: &str) -> Result<u64, String> {
    let digits = s.trim().trim_start_matches("0o");
    u64::from_str_radix(digits, 8)
        .ok()
        .filter(|_| !digits.is_empty())
        .filter(|&m| m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not a umask (octal digits, at most 0777, e.g. \"0007\" or \"0027\")"))
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            watch_dir: "dropseed-data/watch".into(),
            download_dir: "dropseed-data/downloads".into(),
            incomplete_dir: "dropseed-data/incomplete".into(),
            state_dir: "dropseed-data/state".into(),
            log_dir: "dropseed-data/logs".into(),
            umask: Umask(0o007),
            socket_group: String::new(),
        }
    }
}

/// The most `[network] announces_per_host` may be: past it, pacing would
/// not pace anything a tracker can serve.
pub const MAX_ANNOUNCES_PER_HOST: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    pub listen_port: u16,
    pub listen_address: String,
    /// Peers asked of a tracker in each announce.
    pub numwant: u32,
    /// Announces a second to one tracker host, across all torrents; 0
    /// for no pacing.
    pub announces_per_host: u32,
    /// Protocol encryption (MSE/PE) of peer connections.
    pub encryption: Encryption,
    /// Peer connections over uTP (BEP 29) as well as TCP.
    pub utp: Utp,
    /// Blocks to plain TCP peers without an upload limit go from the page
    /// cache with `sendfile(2)`, never copied through our memory.
    pub sendfile: bool,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            listen_port: 6881,
            listen_address: "::".into(),
            numwant: 50,
            announces_per_host: 10,
            encryption: Encryption::default(),
            utp: Utp::default(),
            sendfile: true,
        }
    }
}

/// Protocol encryption (MSE/PE), as `[network] encryption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Dial encrypted first, plaintext once if that handshake fails; accept both.
    #[default]
    Prefer,
    /// Encrypted only, both ways (RC4; the plaintext method is never selected).
    Require,
    /// Dial plaintext first, encrypted once if the peer hangs up; accept both.
    Allow,
    /// Plaintext only; incoming encrypted handshakes are refused.
    Disable,
}

/// uTP (BEP 29), as `[network] utp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Utp {
    /// Accepted; dialled when TCP cannot reach the peer.
    #[default]
    Enable,
    /// Accepted; dialled first, TCP when uTP cannot reach the peer (as libtorrent does).
    Prefer,
    /// Neither accepted nor dialled.
    Disable,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dht {
    pub enabled: bool,
    pub bootstrap: Vec<String>,
    /// A second node over IPv6 (BEP 32), when the listen address covers
    /// IPv6; off for hosts whose IPv6 goes nowhere.
    pub ipv6: bool,
}

impl Default for Dht {
    fn default() -> Dht {
        Dht {
            enabled: true,
            bootstrap: ["router.bittorrent.com:6881", "dht.transmissionbt.com:6881", "router.utorrent.com:6881"]
                .map(String::from)
                .to_vec(),
            ipv6: true,
        }
    }
}

/// Local Service Discovery (BEP 14): peers on the LAN through multicast.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lsd {
    pub enabled: bool,
    /// The IPv4 address of the interface to announce and listen on; empty:
    /// the listen address if it is one IPv4 address, else the system's
    /// choice (the interface of the route to the multicast group).
    pub interface: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    Minutely,
    Hourly,
    Daily,
    Never,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub level: String,
    pub rotation: Rotation,
    pub max_files: usize,
    pub status_interval_secs: u64,
    /// Every this often the status lines list every torrent, idle ones too.
    pub full_status_interval_secs: u64,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            level: "info".into(),
            rotation: Rotation::Daily,
            max_files: 14,
            status_interval_secs: 60,
            full_status_interval_secs: 6 * 3600,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAdded {
    Rename,
    Delete,
    Keep,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Watch {
    pub on_added: OnAdded,
    pub poll_secs: u64,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch { on_added: OnAdded::Rename, poll_secs: 10 }
    }
}

/// A byte count written as an integer or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        number_or_text(d, parse_size).map(ByteSize)
    }
}

/// An integer as it is, or a string read by `parse` (a number with a unit).
fn number_or_text<'de, D: Deserializer<'de>>(d: D, parse: fn(&str) -> Result<u64, String>) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Str(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Str(s) => parse(&s).map_err(serde::de::Error::custom),
    }
}

/// A duration written as seconds or a string such as "36h", "7d", "90m".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span(pub u64);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        number_or_text(d, parse_span).map(Span)
    }
}

/// A duration: "90m", "36h", "1.5d", "2 weeks", or parts in a row
/// ("1d12h", "1h 30m"); a bare number is seconds.
pub fn parse_span(s: &str) -> Result<u64, String> {
    const UNITS: &str = "s, m (minutes), h, d, w; e.g. 90m, 36h, 1.5d, 1d12h";
    let text = s.trim();
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(format!("an empty duration; units are {UNITS}"));
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..split].parse().map_err(|_| format!("'{text}' is not a duration; units are {UNITS}"))?;
        rest = rest[split..].trim_start();
        let unit_end = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        // "1h30" (30 what?) and "1M" (a month? minutes?) are refused.
        if unit.is_empty() && total > 0.0 || unit == "M" {
            return Err(format!("'{text}' is unclear; units are {UNITS}"));
        }
        let mult = match unit.to_ascii_lowercase().as_str() {
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "w" | "week" | "weeks" => 7.0 * 86400.0,
            other => return Err(format!("unknown time unit '{other}' in '{text}'; units are {UNITS}")),
        };
        total += n * mult;
        rest = rest[unit_end..].trim_start();
    }
    if total > 100.0 * 365.0 * 86400.0 {
        return Err(format!("'{text}' is too long a duration"));
    }
    Ok(total.round() as u64)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub download_rate: ByteSize,
    pub upload_rate: ByteSize,
    pub max_active_downloads: usize,
    pub max_connections: usize,
    pub max_peers_per_torrent: usize,
    /// Connections one IP address may hold in one torrent.
    pub max_peers_per_ip: usize,
    pub upload_slots: usize,
    /// A download that received nothing for this long yields its slot.
    pub stall_secs: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            download_rate: ByteSize(0),
            upload_rate: ByteSize(0),
            max_active_downloads: 5,
            max_connections: 500,
            max_peers_per_torrent: 50,
            max_peers_per_ip: 3,
            upload_slots: 4,
            stall_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitAction {
    Stop,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Seeding {
    pub ratio_limit: f64,
    pub seed_time_limit: Span,
    /// Stop once nothing was uploaded for this long while seeding.
    pub idle_seed_limit: Span,
    pub action: LimitAction,
}

impl Default for Seeding {
    fn default() -> Seeding {
        Seeding { ratio_limit: 0.0, seed_time_limit: Span(0), idle_seed_limit: Span(0), action: LimitAction::Stop }
    }
}

/// How torrent data is read and written (`[storage] backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Mmap,
    File,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    pub backend: BackendKind,
    pub disk_threads: usize,
    pub piece_buffer: ByteSize,
    pub resume_interval_secs: u64,
    /// Torrent files (and their memory maps) held open at once, all
    /// torrents together; the least recently used are closed beyond it.
    pub max_open_files: usize,
}

/// `[storage] max_open_files` by default: torrent files open at once.
pub const DEFAULT_MAX_OPEN_FILES: usize = 512;

impl Default for Storage {
    fn default() -> Storage {
        Storage {
            backend: BackendKind::Mmap,
            disk_threads: 0,
            piece_buffer: ByteSize(16 * 1024 * 1024),
            resume_interval_secs: 10,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
        }
    }
}

/// `[cross_seed]`: when a torrent is added, its files are looked for among
/// the data of the complete torrents dropseed seeds; those that verify
/// against its piece hashes are linked into its own folder instead of
/// being downloaded.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrossSeed {
    #[serde(rename = "match")]
    pub matching: MatchMode,
    pub link: LinkMode,
}

/// Which files of another torrent are candidates for a new torrent's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    /// The same path below the top-level folder, and the same size.
    #[default]
    Exact,
    /// The same size (another top-level name, another layout).
    Size,
    Off,
}

/// How a matched file comes into the new torrent's folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// A hard link (one copy of the data), a copy across filesystems.
    #[default]
    Hardlink,
    /// Always a copy.
    Copy,
    /// Matched files are not used: only a whole item of its name is seeded in place.
    Off,
}

/// `[api]`: the qBittorrent-compatible Web API v2 (see `crate::api`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Api {
    /// "" = off; else the address and port to listen on.
    pub listen: String,
    pub username: String,
    /// A PBKDF2-SHA256 PHC string from `dropseed api hash-password`.
    pub password_hash: String,
    /// `/metrics` asks for the same credentials (false: open to anyone who reaches it).
    pub metrics_auth: bool,
    /// Folders a `savepath` may name besides dropseed's own.
    pub allowed_paths: Vec<PathBuf>,
    /// Host header names accepted besides the listen address and localhost.
    pub hosts: Vec<String>,
    /// One series per torrent on `/metrics`; off so that thousands of
    /// torrents stay cheap to scrape.
    pub metrics_per_torrent: bool,
}

impl Default for Api {
    fn default() -> Api {
        Api {
            listen: String::new(),
            username: "admin".into(),
            password_hash: String::new(),
            metrics_auth: true,
            allowed_paths: Vec::new(),
            hosts: Vec::new(),
            metrics_per_torrent: false,
        }
    }
}

impl Api {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.listen.is_empty() {
            return Ok(());
        }
        self.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            ("api.listen", format!("'{}' is not an address and port like \"127.0.0.1:8080\"", self.listen))
        })?;
        if self.password_hash.is_empty() {
            return Err((
                "api.password_hash",
                "must be set when api.listen is: make one with `dropseed api hash-password`".into(),
            ));
        }
        if !is_phc(&self.password_hash) {
            return Err(("api.password_hash", "is not a value from `dropseed api hash-password`".into()));
        }
        if self.username.is_empty() {
            return Err(("api.username", "must not be empty".into()));
        }
        Ok(())
    }
}

/// The programs run at a torrent's events, each an argv array executed
/// directly (never through a shell). `None` is "not set"; `Some([])` is "none".
/// The global `[hooks]` section carries these keys, and a category section
/// can carry the same three, so one type serves both.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hooks {
    pub on_added: Option<Vec<String>>,
    pub on_complete: Option<Vec<String>>,
    pub on_seeding_done: Option<Vec<String>>,
}

impl Hooks {
    /// The command set for `event`, if any.
    pub fn get(&self, event: HookEvent) -> Option<&Vec<String>> {
        match event {
            HookEvent::Added => self.on_added.as_ref(),
            HookEvent::Complete => self.on_complete.as_ref(),
            HookEvent::SeedingDone => self.on_seeding_done.as_ref(),
        }
    }
}

/// The `[hooks]` section: the global commands and how they are run.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(from = "HooksToml", into = "HooksToml")]
pub struct HooksSection {
    pub commands: Hooks,
    /// Hooks running at once; more wait in a bounded queue.
    pub max_running: usize,
    /// After this long a hook's process group is killed.
    pub timeout: Span,
}

impl Default for HooksSection {
    fn default() -> HooksSection {
        HooksSection { commands: Hooks::default(), max_running: 4, timeout: Span(300) }
    }
}

/// `[hooks]` as written: the commands beside the runner's settings in one
/// table (serde's `flatten` cannot refuse unknown keys, so this is spelled out).
#[derive(Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct HooksToml {
    on_added: Option<Vec<String>>,
    on_complete: Option<Vec<String>>,
    on_seeding_done: Option<Vec<String>>,
    max_running: usize,
    timeout: Span,
}

impl Default for HooksToml {
    fn default() -> HooksToml {
        HooksSection::default().into()
    }
}

impl From<HooksToml> for HooksSection {
    fn from(t: HooksToml) -> HooksSection {
        let commands = Hooks { on_added: t.on_added, on_complete: t.on_complete, on_seeding_done: t.on_seeding_done };
        HooksSection { commands, max_running: t.max_running, timeout: t.timeout }
    }
}

impl From<HooksSection> for HooksToml {
    fn from(s: HooksSection) -> HooksToml {
        let Hooks { on_added, on_complete, on_seeding_done } = s.commands;
        HooksToml { on_added, on_complete, on_seeding_done, max_running: s.max_running, timeout: s.timeout }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{path}: {key}: {msg}")]
    Invalid { path: PathBuf, key: &'static str, msg: String },
}

impl Config {
    /// Reads `path` with its paths as written.
    pub fn load_unresolved(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read { path: path.into(), err })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.into(), msg: one_line(&crate::confmsg::explain(text, &e)) })?;
        config.validate().map_err(|(key, msg)| ConfigError::Invalid { path: path.into(), key, msg })?;
        Ok(config)
    }

    /// Checks values serde cannot: returns the offending key and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let level = self.log.level.trim();
        let plain = ["error", "warn", "info", "debug", "trace", "off"].contains(&level.to_ascii_lowercase().as_str());
        let directive = level.contains('=') && tracing_subscriber::EnvFilter::try_new(level).is_ok();
        if !plain && !directive {
            return Err((
                "log.level",
                format!("'{level}' is not a level (error, warn, info, debug, trace, off) or a filter like \"dropseed=debug\""),
            ));
        }
        if self.log.max_files == 0 {
            return Err(("log.max_files", "must be at least 1".into()));
        }
        if self.watch.poll_secs == 0 {
            return Err(("watch.poll_secs", "must be at least 1".into()));
        }
        if !(self.seeding.ratio_limit >= 0.0 && self.seeding.ratio_limit.is_finite()) {
            return Err(("seeding.ratio_limit", format!("{} is not a ratio (0 or more)", self.seeding.ratio_limit)));
        }
        if self.limits.max_connections == 0 {
            return Err(("limits.max_connections", "must be at least 1".into()));
        }
        if self.limits.stall_secs == 0 {
            return Err(("limits.stall_secs", "must be at least 1".into()));
        }
        if self.limits.max_peers_per_ip == 0 {
            return Err(("limits.max_peers_per_ip", "must be at least 1".into()));
        }
        if self.limits.max_peers_per_torrent == 0 {
            return Err(("limits.max_peers_per_torrent", "must be at least 1".into()));
        }
        if self.storage.piece_buffer.0 < 1024 * 1024 {
            return Err(("storage.piece_buffer", "must be at least 1MiB".into()));
        }
        if self.storage.max_open_files < 16 {
            return Err(("storage.max_open_files", "must be at least 16".into()));
        }
        if self.storage.resume_interval_secs == 0 {
            return Err(("storage.resume_interval_secs", "must be at least 1".into()));
        }
        self.validate_hooks()?;
        self.validate_categories()?;
        self.api.validate()?;
        self.network.listen_address.parse::<std::net::IpAddr>().map_err(|_| {
            ("network.listen_address", format!("'{}' is not an IP address", self.network.listen_address))
        })?;
        if self.network.announces_per_host > MAX_ANNOUNCES_PER_HOST {
            let msg = format!("must be at most {MAX_ANNOUNCES_PER_HOST} a second (0 for no pacing)");
            return Err(("network.announces_per_host", msg));
        }
        let lsd_if = self.lsd.interface.trim();
        if !lsd_if.is_empty() && lsd_if.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(("lsd.interface", format!("'{lsd_if}' is not an IPv4 address (LSD speaks IPv4 only)")));
        }
        for (key, p) in [
            ("paths.watch_dir", &self.paths.watch_dir),
            ("paths.download_dir", &self.paths.download_dir),
            ("paths.state_dir", &self.paths.state_dir),
            ("paths.log_dir", &self.paths.log_dir),
        ] {
            if p.as_os_str().is_empty() {
                return Err((key, "must not be empty".into()));
            }
        }
        Ok(())
    }

    /// `[hooks]`: the limits, and each command (see [`crate::hookcmd`]).
    fn validate_hooks(&self) -> Result<(), (&'static str, String)> {
        if self.hooks.max_running == 0 {
            return Err(("hooks.max_running", "must be at least 1".into()));
        }
        if self.hooks.timeout.0 == 0 {
            return Err(("hooks.timeout", "must be at least 1s".into()));
        }
        for event in HookEvent::ALL {
            if let Some(argv) = self.hooks.commands.get(event) {
                crate::hookcmd::check_command(argv).map_err(|why| (event.global_key(), why))?;
            }
        }
        Ok(())
    }

    /// `[categories.NAME]`: a usable folder name, its own hooks and ratio.
    fn validate_categories(&self) -> Result<(), (&'static str, String)> {
        for (name, c) in &self.categories {
            if !valid_category(name) {
                return Err(("categories", format!("'{name}' cannot be a folder name: no '/', no leading '.'")));
            }
            for event in HookEvent::ALL {
                let own = self.hook_for(name, event).filter(|_| c != &Category::default());
                if let Some(argv) = own {
                    crate::hookcmd::check_command(argv)
                        .map_err(|why| ("categories", format!("[categories.{name}] {}: {why}", event.key())))?;
                }
            }
            if c.ratio_limit.is_some_and(|r| r < 0.0 || !r.is_finite()) {
                return Err(("categories", format!("[categories.{name}] ratio_limit must be 0 or more")));
            }
        }
        Ok(())
    }

    pub fn seed_time_limit(&self) -> Option<Duration> {
        (self.seeding.seed_time_limit.0 > 0).then(|| Duration::from_secs(self.seeding.seed_time_limit.0))
    }

    /// The complete folder of `category` ("" for none).
    pub fn complete_dir(&self, category: &str) -> PathBuf {
        let (root, sub) = self.complete_folder(category);
        if sub.is_empty() {
            root
        } else {
            root.join(sub)
        }
    }

    /// The complete folder of `category` as the configured folder and the
    /// folder dropseed makes in it ("" for none). That one is a group
    /// member's to replace (they write in `download_dir`), so it is never
    /// opened by path.
    pub fn complete_folder(&self, category: &str) -> (PathBuf, String) {
        if category.is_empty() {
            return (self.paths.download_dir.clone(), String::new());
        }
        match self.categories.get(category).and_then(|c| c.download_dir.clone()) {
            Some(dir) => (dir, String::new()),
            None => (self.paths.download_dir.clone(), category.to_string()),
        }
    }

    /// The command `category` sets for `event`, else the global one.
    pub fn hook_for(&self, category: &str, event: HookEvent) -> Option<&Vec<String>> {
        let own = self.categories.get(category).and_then(|c| match event {
            HookEvent::Added => c.on_added.as_ref(),
            HookEvent::Complete => c.on_complete.as_ref(),
            HookEvent::SeedingDone => c.on_seeding_done.as_ref(),
        });
        own.or_else(|| self.hooks.commands.get(event))
    }

    /// The seeding limits of `category`: its own, else the global ones.
    pub fn seeding_limits(&self, category: &str) -> SeedLimits {
        let c = self.categories.get(category);
        let span = |own: Option<Span>, global: Span| own.unwrap_or(global).0;
        SeedLimits {
            ratio: c.and_then(|c| c.ratio_limit).unwrap_or(self.seeding.ratio_limit),
            time_secs: span(c.and_then(|c| c.seed_time_limit), self.seeding.seed_time_limit),
            idle_secs: span(c.and_then(|c| c.idle_seed_limit), self.seeding.idle_seed_limit),
        }
    }

    pub fn control_socket(&self) -> PathBuf {
        self.paths.state_dir.join("control.sock")
    }

    /// The interface LSD uses (unspecified: the system's choice).
    pub fn lsd_interface(&self) -> std::net::Ipv4Addr {
        let listen = self.network.listen_address.parse::<std::net::Ipv4Addr>().ok();
        match self.lsd.interface.trim() {
            "" => listen.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            ip => ip.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `phc` is a PBKDF2 PHC string we can verify against.
pub fn is_phc(phc: &str) -> bool {
    pbkdf2::password_hash::PasswordHash::new(phc)
        .is_ok_and(|h| h.algorithm.as_str().starts_with("pbkdf2") && h.salt.is_some())
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_category_overrides_what_it_sets_and_nothing_else() {
        let text = "[paths]\ndownload_dir = \"/dl\"\n[seeding]\nratio_limit = 1.0\n\
                    [hooks]\non_complete = [\"/bin/global\"]\non_added = [\"/bin/added\"]\n\
                    [categories.tv]\ndownload_dir = \"/srv/tv\"\nseed_time_limit = \"2d\"\non_complete = [\"/bin/tv\", \"{category}\"]\n\
                    [categories.quiet]\non_added = []\n";
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(c.complete_dir(""), Path::new("/dl"));
        assert_eq!(c.complete_dir("tv"), Path::new("/srv/tv"));
        assert_eq!(c.complete_dir("anime"), Path::new("/dl/anime"), "a folder without a section");
        assert_eq!(c.complete_folder("anime"), ("/dl".into(), "anime".into()), "made in download_dir");
        assert_eq!(c.complete_folder("tv"), ("/srv/tv".into(), String::new()), "configured: opened by path");
        assert_eq!(c.hook_for("tv", HookEvent::Complete).unwrap()[0], "/bin/tv");
        assert_eq!(c.hook_for("tv", HookEvent::Added).unwrap()[0], "/bin/added");
        assert_eq!(c.hook_for("quiet", HookEvent::Added), Some(&Vec::new()), "[] turns it off");
        assert_eq!(c.hook_for("", HookEvent::Complete).unwrap()[0], "/bin/global");
        assert_eq!(c.seeding_limits("tv"), SeedLimits { ratio: 1.0, time_secs: 2 * 86400, idle_secs: 0 });
        assert_eq!(c.seeding_limits("anime"), SeedLimits { ratio: 1.0, time_secs: 0, idle_secs: 0 });
        for bad in ["[categories.\".hidden\"]\n", "[categories.\"a/b\"]\n", "[categories.x]\nratio_limit = -1.0\n"] {
            assert!(Config::parse(bad, Path::new("x.toml")).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn a_duration_too_long_to_count_is_an_error_not_a_crash() {
        // Found by fuzzing: 99999999999999999 weeks overflowed.
        let e = parse_span("99999999999999999w").unwrap_err();
        assert!(e.contains("too long"), "{e}");
    }

    #[test]
    fn durations_as_people_write_them() {
        assert_eq!(parse_span("3600"), Ok(3600));
        assert_eq!(parse_span("90m"), Ok(5400));
        assert_eq!(parse_span("1.5d"), Ok(129600));
        assert_eq!(parse_span("1d12h"), Ok(129600));
        assert_eq!(parse_span("1h 30min"), Ok(5400));
        assert_eq!(parse_span("2 weeks"), Ok(14 * 86400));
        for bad in ["", "soon", "5 fortnights", "1.2.3h", "1h30", "1M"] {
            let e = parse_span(bad).unwrap_err();
            assert!(e.contains("units are") || e.contains("not a duration"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn example_file_is_the_default() {
        let parsed = Config::parse(DEFAULT_CONFIG_TOML, Path::new("config.example.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::parse("", Path::new("x")).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("[network]\nlisten_prot = 5\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("listen_prot"), "{e}");
        let e = Config::parse("[nope]\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[log]\nlevel = \"loud!!\"\n", "log.level"),
            ("[seeding]\nratio_limit = -1.0\n", "seeding.ratio_limit"),
            ("[network]\nlisten_address = \"nowhere\"\n", "network.listen_address"),
            ("[storage]\npiece_buffer = \"1K\"\n", "storage.piece_buffer"),
            ("[lsd]\ninterface = \"eth0\"\n", "lsd.interface"),
            ("[lsd]\ninterface = \"::1\"\n", "lsd.interface"),
            ("[network]\nannounces_per_host = 5000\n", "network.announces_per_host"),
        ] {
            let e = Config::parse(text, Path::new("c.toml")).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = Config::parse("[limits]\nupload_rate = \"5 parsecs\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("parsecs"), "{e}");
        let e = Config::parse("[log]\nrotation = \"weekly\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("weekly"), "{e}");
        for bad in ["\"0089\"", "\"rw\"", "\"\"", "\"1777\"", "0o027", "27"] {
            let e = Config::parse(&format!("[paths]\numask = {bad}\n"), Path::new("c.toml")).unwrap_err().to_string();
            assert!(e.contains("umask"), "{bad}: {e}");
        }
    }

    #[test]
    fn lsd_is_off_by_default_and_finds_its_interface() {
        let lsd_if = |text: &str| Config::parse(text, Path::new("c")).unwrap().lsd_interface().to_string();
        assert!(!Config::default().lsd.enabled);
        assert_eq!(lsd_if(""), "0.0.0.0", "listening on :: leaves the choice to the system");
        assert_eq!(lsd_if("[network]\nlisten_address = \"10.0.0.5\"\n"), "10.0.0.5");
        let both = "[network]\nlisten_address = \"10.0.0.5\"\n[lsd]\nenabled = true\ninterface = \"192.168.1.2\"\n";
        assert_eq!(lsd_if(both), "192.168.1.2");
    }

    #[test]
    fn a_umask_is_octal_digits_in_a_string() {
        for (text, want) in [("\"0027\"", 0o027), ("\"002\"", 0o002), ("\"0o7\"", 0o007)] {
            let c = Config::parse(&format!("[paths]\numask = {text}\n"), Path::new("c")).unwrap();
            assert_eq!(c.paths.umask, Umask(want), "{text}");
        }
    }

    #[test]
    fn hooks_section_parses_and_names_its_bad_keys() {
        let c = Config::parse(
            "[hooks]\non_complete = [\"/bin/notify\", \"--name={name}\", \"{path}\"]\n\
             on_added = []\ntimeout = \"2s\"\n",
            Path::new("c"),
        )
        .unwrap();
        let h = &c.hooks;
        assert_eq!(h.commands.on_complete.as_deref().unwrap(), ["/bin/notify", "--name={name}", "{path}"]);
        assert_eq!(h.commands.on_added.as_deref(), Some(&[][..]), "[] is set, to no hook");
        assert_eq!(h.commands.on_seeding_done, None);
        assert_eq!((h.max_running, h.timeout), (4, Span(2)));
        for (text, key) in [
            ("[hooks]\non_complet = [\"/bin/x\"]\n", "on_complet"),
            ("[hooks]\nmax_running = 0\n", "hooks.max_running"),
            ("[hooks]\ntimeout = \"0\"\n", "hooks.timeout"),
            ("[hooks]\non_added = [\"/bin/x\", \"{nmae}\"]\n", "hooks.on_added"),
            ("[hooks]\non_seeding_done = [\"{path}\"]\n", "hooks.on_seeding_done"),
            ("[hooks]\non_complete = \"/bin/x {name}\"\n", "on_complete"),
        ] {
            let e = Config::parse(text, Path::new("c.toml")).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn units_parse() {
        let c = Config::parse(
            "[limits]\nupload_rate = \"1MiB\"\ndownload_rate = 1000\n[seeding]\nseed_time_limit = \"36h\"\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(c.limits.upload_rate, ByteSize(1 << 20));
        assert_eq!(c.limits.download_rate, ByteSize(1000));
        assert_eq!(c.seed_time_limit(), Some(Duration::from_secs(36 * 3600)));
    }
}
