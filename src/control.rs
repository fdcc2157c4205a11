//! The control channel: a Unix socket (`state_dir/control.sock`, mode 0660
//! with `[paths] socket_group`, nothing reachable from the network) speaking one JSON request and one JSON
//! reply per line; and the client side the CLI commands use. The socket is
//! made in a private folder and linked into place with its final mode and
//! group, so it is never reachable with more, whatever the umask.
//!
//! `add_file` is the one request with a body: its line gives the file's name
//! (for its kind and the messages) and its size, and exactly that many raw
//! bytes follow the newline. The daemon checks the size against the limit
//! for the kind (the watch folder's) before it reads a byte, so the CLI can
//! hand over a file the daemon could not open itself (another user,
//! `PrivateTmp`, `ProtectHome`). The older `add` with a path for the daemon
//! to read is still served.

use crate::config::Config;
use crate::session::{AddOutcome, CommandOutcome, ErrorKind, Session, SessionError};
use crate::torrent::task::Cmd;
use crate::torrent::TorrentStatus;
use crate::types::printable;
use crate::watch::{kind_of, Kind, Parsed};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// A magnet URI, an info hash, or a path the daemon reads itself.
    Add {
        source: String,
    },
    /// A `.torrent` or `.magnet` file's contents: `size` bytes follow the line.
    #[serde(rename = "add_file")]
    AddFile {
        name: String,
        size: u64,
        /// `add --save-path DIR`: the folder already holding the torrent's
        /// data, seeded in place (cross-seeding).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        save_path: Option<PathBuf>,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Recheck {
        id: String,
    },
    Remove {
        id: String,
        delete_data: bool,
    },
    Trackers {
        id: String,
    },
    Reannounce {
        id: String,
    },
    /// The daemon's recent log lines numbered after `after` (`dropseed top`).
    Log {
        #[serde(default)]
        after: u64,
    },
    /// One torrent's status with its files and peers (`dropseed top`).
    Detail {
        id: String,
    },
}

/// The control protocol's version, carried in every reply: 2 added
/// `version` and `error` (replies without them come from an older daemon).
pub const PROTOCOL_VERSION: u32 = 2;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// [`PROTOCOL_VERSION`] of the daemon that answered; absent from
    /// daemons before it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<u32>,
    pub ok: bool,
    /// What kind of failure, when `ok` is false: callers branch on this,
    /// never on the message's words.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<ErrorKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torrents: Option<Vec<TorrentStatus>>,
    /// Nodes in the DHT routing tables (both families), with `status` when
    /// the DHT runs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dht_nodes: Option<usize>,
    /// Of those, the IPv6 node's, when it runs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dht_nodes6: Option<usize>,
    /// The DHT's UDP port, with `status` when the DHT runs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dht_port: Option<u16>,
    /// Free bytes where downloads go, with `status`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub disk_free: Option<u64>,
    /// The daemon's resident memory in bytes, with `status`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory: Option<u64>,
    /// Recent log lines, with `log`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub log: Option<Vec<String>>,
    /// The newest log line's number, with `log`: the next request's `after`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub log_last: Option<u64>,
    /// Files and peers of the one torrent asked, with `detail`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<crate::torrent::detail::TorrentDetail>,
}

impl Reply {
    fn ok(message: String) -> Reply {
        Reply { ok: true, message: Some(message), ..Default::default() }
    }
    /// A request refused before it reached the session.
    fn err(message: String) -> Reply {
        Reply::failed(ErrorKind::BadRequest, message)
    }
    fn failed(kind: ErrorKind, message: String) -> Reply {
        Reply { ok: false, error: Some(kind), message: Some(message), ..Default::default() }
    }
    fn of<T: std::fmt::Display>(result: Result<T, SessionError>) -> Reply {
        match result {
            Ok(done) => Reply::ok(done.to_string()),
            Err(e) => Reply::failed(e.kind(), e.to_string()),
        }
    }
}

/// The daemon's control socket as the config asks: `state_dir/control.sock`,
/// mode 0660, in `socket_group` if one is named (with a warning when that
/// group cannot enter `state_dir`). Blocking: call off the async workers.
pub fn open(config: &Config) -> Result<UnixListener, String> {
    let path = config.control_socket();
    let state_dir = &config.paths.state_dir;
    let group = match config.paths.socket_group.as_str() {
        "" => None,
        name => Some((name, crate::perms::group_id(name).map_err(|e| format!("{e}: set [paths] socket_group"))?)),
    };
    let listener = bind(&path, group)?;
    if let Some((name, _)) = group.filter(|&(_, gid)| !crate::perms::group_can_enter(state_dir, gid)) {
        tracing::warn!(
            "members of group {name} cannot reach the control socket: {} does not let them in; \
             chgrp {name} it and chmod g+x it",
            state_dir.display()
        );
    }
    Ok(listener)
}

/// Binds the socket (replacing a stale one) with mode 0660 and, if given,
/// the group (name, id). The error says what failed and what to set.
///
/// The socket is made in a private folder beside `path` and given its mode
/// and group there, then linked into place: bound straight at `path` it
/// would have the umask's mode (0777 under `umask = "0000"`) until the
/// chmod, and anyone could connect in between. The umask is not narrowed
/// instead because it is process-wide and other threads create files.
pub fn bind(path: &Path, group: Option<(&str, u32)>) -> Result<UnixListener, String> {
    let fail = |e: std::io::Error| crate::startup::cannot_bind_control(path, &e);
    clear_stale(path).map_err(fail)?;
    let private = PrivateDir::create(path).map_err(fail)?;
    let listener = UnixListener::bind(private.socket()).map_err(fail)?;
    crate::perms::own_socket(&private.socket(), path, group)?;
    // A link never replaces a file: a daemon that got there first keeps it.
    std::fs::hard_link(private.socket(), path).map_err(fail)?;
    Ok(listener)
}

/// Removes a socket left by a daemon that died, refusing one that answers.
fn clear_stale(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "a running program already answers on it"));
        }
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// A folder only the daemon's user can enter (mkdir with 0700, which no
/// umask widens), beside the socket's path, to make the socket in; removed
/// with the socket's name in it when dropped (the listener keeps working).
/// Its name and the socket's are as long as `control.sock`, so a path that
/// fits a socket address fits both.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create(beside: &Path) -> std::io::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let parent = beside.parent().unwrap_or(Path::new("."));
        let mut tries = 0;
        loop {
            let dir = parent.join(format!(".ctl{:06x}", rand::random::<u32>() & 0xff_ffff));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(PrivateDir(dir)),
                // Taken (left by a crash, or made by someone else): never reused.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn socket(&self) -> PathBuf {
        self.0.join("s")
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_dir(&self.0);
    }
}

pub async fn serve(listener: UnixListener, path: PathBuf, session: Arc<Session>, cancel: CancellationToken) {
    let mut conns = tokio::task::JoinSet::new();
    let mut backoff = crate::session::AcceptBackoff::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    let (s, c) = (session.clone(), cancel.clone());
                    conns.spawn(async move { handle(stream, s, c).await });
                }
                // Out of descriptors: wait instead of spinning.
                Err(e) => {
                    let pause = backoff.failed("control socket", &e);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            },
        }
    }
    conns.shutdown().await;
    let _ = std::fs::remove_file(path);
}

/// The longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

async fn handle(stream: UnixStream, session: Arc<Session>, cancel: CancellationToken) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let line = tokio::select! {
            _ = cancel.cancelled() => return,
            l = read_line(&mut rd, MAX_REQUEST) => l,
        };
        let (reply, go_on) = match line {
            Ok(None) | Err(LineError::Io) => return,
            Err(LineError::TooLong) => (Reply::err(format!("request longer than {MAX_REQUEST} bytes")), false),
            Ok(Some(bytes)) => match std::str::from_utf8(&bytes).map(serde_json::from_str::<Request>) {
                Err(_) => (Reply::err("bad request: not UTF-8 text".into()), true),
                Ok(Err(e)) => (Reply::err(format!("bad request: {e}")), true),
                Ok(Ok(Request::AddFile { name, size, save_path })) => match read_body(&mut rd, &name, size).await {
                    Ok((kind, bytes)) => (reply_of(add_file(&session, &name, kind, bytes, save_path).await), true),
                    // What follows the line is unread: the connection ends.
                    Err(why) => (Reply::err(why), false),
                },
                Ok(Ok(req)) => (execute(req, &session).await, true),
            },
        };
        let reply = Reply { version: Some(PROTOCOL_VERSION), ..reply };
        let mut out = serde_json::to_vec(&reply).unwrap_or_default();
        out.push(b'\n');
        if wr.write_all(&out).await.is_err() || !go_on {
            return;
        }
    }
}

/// How long the bytes of an `add_file` may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the body of an `add_file` request, once its size is within the
/// limit for its kind.
async fn read_body<R: AsyncBufRead + Unpin>(rd: &mut R, name: &str, size: u64) -> Result<(Kind, Vec<u8>), String> {
    let shown = printable(name, 200);
    let kind = kind_of(Path::new(name)).ok_or_else(|| format!("{shown}: not a .torrent or .magnet file"))?;
    let limit = kind.size_limit();
    if size > limit {
        return Err(format!("{shown}: file is {size} bytes, over the {limit}-byte limit"));
    }
    let mut bytes = Vec::new();
    match tokio::time::timeout(BODY_TIMEOUT, rd.take(size).read_to_end(&mut bytes)).await {
        Ok(Ok(_)) if bytes.len() as u64 == size => Ok((kind, bytes)),
        Ok(Ok(_)) | Ok(Err(_)) => Err(format!("{shown}: the connection ended {} bytes into the file", bytes.len())),
        Err(_) => Err(format!("{shown}: the file's bytes did not arrive within {}s", BODY_TIMEOUT.as_secs())),
    }
}

enum LineError {
    TooLong,
    Io,
}

/// One line without its newline; `None` at the end of the stream. Never
/// buffers more than `max` bytes.
async fn read_line<R: AsyncBufRead + Unpin>(rd: &mut R, max: usize) -> Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    loop {
        let buf = rd.fill_buf().await.map_err(|_| LineError::Io)?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        rd.consume(take);
        if line.len() > max + 1 {
            return Err(LineError::TooLong);
        }
        if done {
            line.pop();
            return Ok(Some(line));
        }
    }
}

/// Log lines one `log` request returns at most.
pub const MAX_LOG_LINES: usize = 200;

async fn execute(req: Request, session: &Arc<Session>) -> Reply {
    match req {
        Request::Status => {
            let dir = session.env.download_dir().to_path_buf();
            let (disk_free, memory) =
                tokio::task::spawn_blocking(move || (disk_free(&dir), resident_memory())).await.unwrap_or_default();
            Reply {
                ok: true,
                torrents: Some(session.statuses()),
                dht_nodes: session.env.dht().map(|d| d.node_count()),
                dht_nodes6: session.env.dht().and_then(|d| d.node_count_of(crate::dht::family::Family::V6)),
                dht_port: session.env.dht().map(|d| d.port()),
                disk_free,
                memory,
                ..Default::default()
            }
        }
        Request::Log { after } => {
            let (lines, last) = crate::logring::since(after, MAX_LOG_LINES);
            let lines = lines.iter().map(|l| printable(l, crate::logring::MAX_LINE)).collect();
            Reply { ok: true, log: Some(lines), log_last: Some(last), ..Default::default() }
        }
        Request::Detail { id } => match session.find(&id).map(|h| session.detail_of(&h)) {
            Ok(Some((status, detail))) => {
                Reply { ok: true, torrents: Some(vec![status]), detail: Some(detail), ..Default::default() }
            }
            Ok(None) => Reply::failed(ErrorKind::NotFound, format!("no torrent {}", printable(&id, 100))),
            Err(e) => Reply::of(Err::<String, _>(e)),
        },
        Request::Add { source } => reply_of(add(session, source).await),
        Request::AddFile { name, .. } => Reply::err(format!("{}: add_file without its bytes", printable(&name, 200))),
        Request::Pause { id } => Reply::of(command(session, &id, Cmd::Pause).await),
        Request::Resume { id } => Reply::of(command(session, &id, Cmd::Resume).await),
        Request::Recheck { id } => Reply::of(command(session, &id, Cmd::Recheck).await),
        Request::Remove { id, delete_data } => {
            let removed = match session.find(&id) {
                Ok(hash) => session.remove(hash, delete_data).await,
                Err(e) => Err(e),
            };
            Reply::of(removed)
        }
        Request::Trackers { id } => match session.find(&id).map(|h| session.status_of(&h)) {
            Ok(status) => Reply { ok: true, torrents: Some(status.into_iter().collect()), ..Default::default() },
            Err(e) => Reply::of(Err::<String, _>(e)),
        },
        Request::Reannounce { id } => Reply::of(session.find(&id).and_then(|h| session.reannounce(h))),
    }
}

/// Free bytes on the filesystem holding `dir`, if it can be asked. Blocking.
pub(crate) fn disk_free(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// This process's resident memory in bytes (Linux `/proc`). Blocking.
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// A pause, resume or recheck of the torrent `id` names.
async fn command(session: &Arc<Session>, id: &str, cmd: Cmd) -> Result<CommandOutcome, SessionError> {
    let hash = session.find(id)?;
    session.command(hash, cmd).await
}

fn reply_of(result: Result<String, String>) -> Reply {
    match result {
        Ok(m) => Reply::ok(m),
        Err(e) => Reply::err(e),
    }
}

fn outcome_text(o: AddOutcome, name: &str) -> String {
    match o {
        AddOutcome::Added => format!("added {name}"),
        AddOutcome::AlreadyManaged => format!("{name} is already managed"),
        AddOutcome::Refused(why) => format!("{name} not added: {why}"),
    }
}

async fn add(session: &Arc<Session>, source: String) -> Result<String, String> {
    let trimmed = source.trim().to_string();
    if trimmed.starts_with("magnet:") || crate::types::InfoHash::parse(&trimmed).is_some() {
        let m = crate::magnet::Magnet::parse(&trimmed)?;
        let (name, hash) = (m.display_name(), m.info_hash);
        let o = session.add_magnet(m).await.map_err(|e| e.to_string())?;
        tracing::info!(torrent = %name, hash = %hash.short(), "added from the control socket");
        return Ok(outcome_text(o, &name));
    }
    // Reading the file may block (a slow or network filesystem).
    let path = trimmed.clone();
    let parsed = tokio::task::spawn_blocking(move || crate::watch::parse_file(Path::new(&path)))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", printable(&trimmed, 500)))?;
    add_parsed(session, parsed, &printable(&trimmed, 500), None).await
}

/// Adds what a file sent over the socket holds.
async fn add_file(
    session: &Arc<Session>,
    name: &str,
    kind: Kind,
    bytes: Vec<u8>,
    save_path: Option<PathBuf>,
) -> Result<String, String> {
    let shown = printable(name, 200);
    // Parsing a large torrent is CPU work: off the async workers.
    let parsed = tokio::task::spawn_blocking(move || crate::watch::parse_bytes(kind, bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{shown}: {e}"))?;
    add_parsed(session, parsed, &shown, save_path).await
}

async fn add_parsed(
    session: &Arc<Session>,
    parsed: Parsed,
    file: &str,
    save: Option<PathBuf>,
) -> Result<String, String> {
    match parsed {
        Parsed::Torrent(meta) => {
            let (name, hash) = (meta.name.clone(), meta.info_hash);
            let o = match save {
                Some(dir) => session.add_metainfo_at(*meta, Default::default(), dir).await,
                None => session.add_metainfo(*meta).await,
            }
            .map_err(|e| e.to_string())?;
            let matched = session.sharing(&hash).iter().map(|h| h.short().to_string()).collect::<Vec<_>>().join(",");
            match matched.is_empty() {
                true => {
                    tracing::info!(file = %file, torrent = %name, hash = %hash.short(), "added from the control socket")
                }
                false => tracing::info!(file = %file, torrent = %name, hash = %hash.short(), matched = %matched,
                    "added from the control socket"),
            }
            if o == AddOutcome::Added && !matched.is_empty() {
                return Ok(format!("added {name}: seeds the data of {matched} once every piece is verified"));
            }
            Ok(outcome_text(o, &name))
        }
        Parsed::Magnets(_) if save.is_some() => {
            Err("--save-path needs a .torrent file (a magnet has no files yet)".into())
        }
        Parsed::Magnets(list) => {
            let mut said = Vec::new();
            for m in list {
                let name = m.display_name();
                let o = session.add_magnet(m).await.map_err(|e| e.to_string())?;
                said.push(outcome_text(o, &name));
            }
            Ok(said.join("\n"))
        }
    }
}

/// What `add SOURCE` sends: a magnet URI or info hash as it is; a file's
/// contents (the daemon may not be able to open the file itself).
pub fn add_request(source: &str) -> Result<(Request, Vec<u8>), String> {
    let trimmed = source.trim();
    if trimmed.starts_with("magnet:") || crate::types::InfoHash::parse(trimmed).is_some() {
        return Ok((Request::Add { source: trimmed.to_string() }, Vec::new()));
    }
    let path = Path::new(source);
    let shown = crate::types::printable(source, 500);
    let kind = crate::watch::kind_of(path)
        .ok_or_else(|| format!("{shown}: not a .torrent or .magnet file, a magnet URI or an info hash"))?;
    let bytes = crate::watch::read_regular_file(path, kind.size_limit()).map_err(|e| format!("{shown}: {e}"))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok((Request::AddFile { name, size: bytes.len() as u64, save_path: None }, bytes))
}

/// Why the CLI cannot talk to the daemon, and what to do.
fn cannot_connect(socket: &Path, e: &std::io::Error) -> String {
    let reason = crate::fsutil::reason(e);
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "cannot use the control socket {} ({reason}): run this as dropseed's user or as a member of the \
             socket's group (the daemon's group, or [paths] socket_group), with access to state_dir",
            socket.display()
        ),
        _ => format!("dropseed is not running (cannot reach the control socket {}: {reason})", socket.display()),
    }
}

/// Client side: sends one request, returns the reply.
pub async fn request(socket: &Path, req: &Request) -> Result<Reply, String> {
    request_with_body(socket, req, &[]).await
}

/// Client side: sends one request followed by `body` (the bytes of an
/// `add_file`), returns the reply.
pub async fn request_with_body(socket: &Path, req: &Request, body: &[u8]) -> Result<Reply, String> {
    let stream = UnixStream::connect(socket).await.map_err(|e| cannot_connect(socket, &e))?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    wr.write_all(&line).await.map_err(|e| e.to_string())?;
    // A daemon that refuses the request early closes without reading the
    // body; its reply is still there to read.
    let _ = wr.write_all(body).await;
    let mut lines = BufReader::new(rd).lines();
    let reply = lines.next_line().await.map_err(|e| e.to_string())?.ok_or("the daemon closed the connection")?;
    serde_json::from_str(&reply).map_err(|e| format!("unreadable reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sends_a_files_bytes_and_a_magnet_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("Some.Torrent");
        std::fs::write(&f, b"d4:infodee").unwrap();
        let (req, body) = add_request(f.to_str().unwrap()).unwrap();
        match req {
            Request::AddFile { name, size, .. } => assert_eq!((name.as_str(), size), ("Some.Torrent", 10)),
            other => panic!("{other:?}"),
        }
        assert_eq!(body, b"d4:infodee");
        let line = serde_json::to_string(&add_request(f.to_str().unwrap()).unwrap().0).unwrap();
        assert_eq!(line, r#"{"cmd":"add_file","name":"Some.Torrent","size":10}"#);
        let hash = "0123456789abcdef0123456789abcdef01234567";
        let (req, body) = add_request(&format!(" magnet:?xt=urn:btih:{hash}\n")).unwrap();
        assert!(matches!(req, Request::Add { ref source } if source.ends_with(hash)), "{req:?}");
        assert!(body.is_empty());
        assert!(add_request(hash).is_ok());
        let e = add_request(dir.path().join("notes.txt").to_str().unwrap()).unwrap_err();
        assert!(e.contains("not a .torrent or .magnet file"), "{e}");
    }
}
