//! Runs one hook process and reports on it: spawned directly (no shell) in a
//! process group of its own, its stdout and stderr logged line by line with
//! the torrent's and the hook's name (printable, cut, at most
//! [`MAX_LOGGED_LINES`] lines a run), its exit status logged. At its timeout,
//! or when dropseed stops and [`SHUTDOWN_GRACE`] has passed, the whole group
//! is killed with SIGKILL, so a hung hook or anything it started cannot
//! outlive its welcome. The run ends when the hook's own process exits
//! (watched through a pidfd, which leaves it unreaped until its group is
//! dealt with): its output is read for [`OUTPUT_GRACE`] more at most, and
//! if something it started still holds the pipes then, the group is killed
//! too, so a background child never keeps the slot until the timeout.
//! Where the kernel has no pidfds (before Linux 5.3), the hook is reaped to
//! learn that it exited; its group id may then be reused, so the group is
//! not killed for a lingering child (its pipes are closed, the log says so).
//! Nothing a hook does reaches the torrent or the daemon:
//! every failure ends here as a log line.

use crate::hookcmd::HookEvent;
use crate::types::{human_duration, printable};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, Interest};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

/// Output lines logged per run (stdout and stderr together); the rest is
/// read and dropped, so a chatty hook never blocks on a full pipe.
pub const MAX_LOGGED_LINES: usize = 50;
/// Characters kept of one output line.
pub const MAX_LINE_CHARS: usize = 300;
/// Bytes of one line held while reading it; the rest of a longer line is
/// skipped up to its newline.
const MAX_LINE_BYTES: usize = 4 * MAX_LINE_CHARS;
/// How long running hooks may go on once dropseed is stopping, before their
/// process groups are killed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long the output is read after the hook exits. Longer means something
/// it started holds the pipes: that is killed with the hook's process group.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// One hook to run, its command line already built.
pub struct Job {
    pub event: HookEvent,
    pub argv: Vec<OsString>,
    pub env: Vec<(&'static str, OsString)>,
    pub timeout: Duration,
    /// The torrent's log span: its lines carry its name and short hash.
    pub span: tracing::Span,
}

/// How the hook's own process was seen to exit.
#[derive(Debug, Clone, Copy)]
enum Leader {
    /// Through its pidfd: unreaped, so its pid (the group's id) is still its own.
    Unreaped,
    /// Reaped to learn that it exited (no pidfd): its pid, the group's id,
    /// may be anyone's by now.
    Reaped,
}

/// How a hook's run ended.
enum End {
    /// Its own process exited; `lingered` when something it started still
    /// held its output [`OUTPUT_GRACE`] later.
    Exited {
        leader: Leader,
        lingered: bool,
    },
    TimedOut,
    Shutdown,
}

/// Runs `job` to its end; never fails, only logs. Says whether the hook
/// exited with status 0.
pub async fn run(job: Job, cancel: CancellationToken) -> bool {
    supervise(job, cancel, watch_exit).await.succeeded
}

/// What [`supervise`] did, for its caller and its tests.
#[derive(Debug, Default)]
struct Ran {
    /// The hook exited with status 0.
    succeeded: bool,
    /// Its process group was sent SIGKILL (the log line says so; tests
    /// read it here).
    #[cfg_attr(not(test), allow(dead_code))]
    group_killed: bool,
}

/// [`run`], learning of the hook's exit through `pidfd_of` when that gives
/// a pidfd (tests stand in a kernel without them).
async fn supervise(job: Job, cancel: CancellationToken, pidfd_of: fn(u32) -> Option<AsyncFd<OwnedFd>>) -> Ran {
    let hook = job.event.key();
    let program = printable(&job.argv[0].to_string_lossy(), 200);
    let started = Instant::now();
    let mut child = match spawn(&job).await {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let hint = if job.argv[0].to_string_lossy().contains('/') {
                "(or the interpreter its #! line names)"
            } else {
                "in PATH (give its absolute path)"
            };
            tracing::warn!(hook = %hook, program = %program,
                "hook not run: program not found {hint}");
            return Ran::default();
        }
        Err(e) => {
            let error = e.to_string();
            tracing::warn!(hook = %hook, program = %program, error,
                "hook not run: cannot start it");
            return Ran::default();
        }
    };
    let pgid = child.id();
    tracing::debug!(hook = %hook, program = %program, pid = ?pgid, "hook started");
    let output = read_output(&mut child, hook);
    let pidfd = pgid.and_then(pidfd_of);
    let end = wait_end(&mut child, pidfd.as_ref(), job.timeout, &cancel).await;
    let took = format!("{:.1}s", started.elapsed().as_secs_f64());
    let end = match end {
        // Whatever it left holding its pipes is not waited for beyond a
        // short grace, so the slot frees when the hook itself is done.
        End::Exited { leader, .. } => {
            End::Exited { leader, lingered: !finish_output(output, Some(OUTPUT_GRACE)).await }
        }
        end => {
            finish_output(output, None).await;
            end
        }
    };
    let group_killed = group_to_kill(&end);
    if group_killed {
        kill_group(pgid);
    }
    // Reaps the leader: at once, it exited or was just killed.
    let status = child.wait().await;
    let succeeded = matches!(end, End::Exited { .. }) && status.as_ref().is_ok_and(|s| s.success());
    log_end(hook, &program, &job, end, status, &took);
    Ran { succeeded, group_killed }
}

/// Whether the run's end calls for killing the hook's process group and
/// the group id is surely still the hook's: only while its leader is
/// unreaped (a zombie at worst) can the id not have gone to anyone else.
fn group_to_kill(end: &End) -> bool {
    match end {
        End::Exited { lingered: false, .. } => false,
        // No pidfd: the leader was reaped, and a lingering child may have
        // left the group, so the id may be reused; it is left alone.
        End::Exited { leader: Leader::Reaped, .. } => false,
        // Timed out or stopped without a pidfd: the wait never completed,
        // so the leader is unreaped too.
        End::Exited { leader: Leader::Unreaped, .. } | End::TimedOut | End::Shutdown => true,
    }
}

/// Lets the output reading end by itself within `grace`, or stops it (its
/// pipes closed); whether it ended by itself.
async fn finish_output(mut output: AbortOnDropHandle<()>, grace: Option<Duration>) -> bool {
    if let Some(grace) = grace {
        if tokio::time::timeout(grace, &mut output).await.is_ok() {
            return true;
        }
    }
    output.abort();
    let _ = output.await;
    false
}

/// Waits for the hook's process to exit, its timeout, or dropseed's stop
/// (then the hook may still finish within the grace and its own timeout).
async fn wait_end(
    child: &mut Child,
    pidfd: Option<&AsyncFd<OwnedFd>>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> End {
    let exit = exited(child, pidfd);
    tokio::pin!(exit);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let end = tokio::select! {
        leader = &mut exit => End::Exited { leader, lingered: false },
        _ = &mut deadline => End::TimedOut,
        _ = cancel.cancelled() => End::Shutdown,
    };
    match end {
        End::Shutdown => tokio::select! {
            leader = &mut exit => End::Exited { leader, lingered: false },
            _ = &mut deadline => End::TimedOut,
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => End::Shutdown,
        },
        end => end,
    }
}

/// A pidfd for the hook's process, readable once it exits; `None` where the
/// kernel has none (before Linux 5.3).
fn watch_exit(pid: u32) -> Option<AsyncFd<OwnedFd>> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    // SAFETY: an OwnedFd is open, stays open while the AsyncFd owns it, and
    // always names the same descriptor.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
}

/// The hook's own process has exited. Through its pidfd this leaves it
/// unreaped; without one, reaping it is the only way to know.
async fn exited(child: &mut Child, pidfd: Option<&AsyncFd<OwnedFd>>) -> Leader {
    if let Some(fd) = pidfd {
        if fd.readable().await.is_ok() {
            return Leader::Unreaped;
        }
    }
    // Its status stays with `child` for the later `wait`.
    let _ = child.wait().await;
    Leader::Reaped
}

fn log_end(hook: &str, program: &str, job: &Job, end: End, status: std::io::Result<ExitStatus>, took: &str) {
    let (timeout, grace) = (human_duration(job.timeout.as_secs()), human_duration(SHUTDOWN_GRACE.as_secs()));
    let held = human_duration(OUTPUT_GRACE.as_secs());
    let lingered = match end {
        End::Exited { lingered: true, leader: Leader::Unreaped } => {
            format!("; something it started still held its output {held} after it exited and was killed with its process group")
        }
        End::Exited { lingered: true, leader: Leader::Reaped } => format!(
            "; something it started still held its output {held} after it exited: its output is no longer read, \
             but it was not killed (no pidfd on this kernel, so the hook was reaped and its process group id may \
             have been reused)"
        ),
        _ => String::new(),
    };
    match (end, status) {
        (End::Exited { .. }, Ok(status)) if status.success() => {
            tracing::info!(hook = %hook, program = %program, took, "hook finished: exit status 0{lingered}")
        }
        (End::Exited { .. }, Ok(status)) => {
            let why = describe(status);
            tracing::warn!(hook = %hook, program = %program, took, "hook failed: {why}{lingered}")
        }
        (End::Exited { .. }, Err(e)) => {
            let error = e.to_string();
            tracing::warn!(hook = %hook, program = %program, error, "hook lost: cannot wait for it")
        }
        (End::TimedOut, _) => tracing::warn!(hook = %hook, program = %program,
            "hook timed out after {timeout}; its process group was killed"),
        (End::Shutdown, _) => tracing::warn!(hook = %hook, program = %program,
            "hook killed with its process group: dropseed is stopping and it ran {grace} past the stop"),
    }
}

/// Reads the hook's stdout and stderr to their end, logging their lines, in
/// a task of its own: the hook's end is its own exit, whoever else holds
/// the pipes. Aborting it closes them.
fn read_output(child: &mut Child, hook: &'static str) -> AbortOnDropHandle<()> {
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let task = async move {
        let logged = AtomicUsize::new(0);
        tokio::join!(pump(stdout, "stdout", hook, &logged), pump(stderr, "stderr", hook, &logged));
    };
    AbortOnDropHandle::new(tokio::spawn(task.in_current_span()))
}

/// Starts the program. `spawn` waits for the exec to succeed or fail (a
/// slow filesystem, a large program), so it runs on the blocking pool.
async fn spawn(job: &Job) -> std::io::Result<Child> {
    let mut cmd = Command::new(&job.argv[0]);
    cmd.args(&job.argv[1..])
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a timeout reaches whatever it started.
        .process_group(0)
        .kill_on_drop(true);
    tokio::task::spawn_blocking(move || cmd.spawn()).await.map_err(std::io::Error::other)?
}

/// SIGKILL to the whole process group the hook leads.
fn kill_group(pgid: Option<u32>) {
    let pgid = pgid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1);
    if let Some(pgid) = pgid.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status}"),
    }
}

/// Reads one output stream to its end, logging its lines within budget.
async fn pump(stream: Option<impl AsyncRead + Unpin>, name: &'static str, hook: &'static str, logged: &AtomicUsize) {
    let Some(mut stream) = stream else {
        return;
    };
    let mut lines = Lines::default();
    let mut buf = [0u8; 4096];
    let mut log = |line: String| log_line(hook, name, logged, &line);
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lines.feed(&buf[..n], &mut log),
        }
    }
    lines.finish(&mut log);
}

fn log_line(hook: &str, stream: &'static str, logged: &AtomicUsize, line: &str) {
    match logged.fetch_add(1, Ordering::Relaxed) {
        n if n < MAX_LOGGED_LINES => {
            tracing::info!(hook = %hook, stream = %stream, line = %line, "hook output")
        }
        n if n == MAX_LOGGED_LINES => {
            tracing::info!(hook = %hook,
                "hook output: more than {MAX_LOGGED_LINES} lines; the rest is not logged")
        }
        _ => {}
    }
}

/// Splits a byte stream into lines, holding at most [`MAX_LINE_BYTES`] of
/// one line; each line comes out printable and cut to [`MAX_LINE_CHARS`].
#[derive(Default)]
struct Lines {
    line: Vec<u8>,
    /// The current line outgrew the buffer; skipping to its newline.
    cut: bool,
}

impl Lines {
    fn feed(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(String)) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n');
            let part = &bytes[..end.unwrap_or(bytes.len())];
            let room = MAX_LINE_BYTES - self.line.len();
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.cut |= part.len() > room;
            match end {
                Some(e) => {
                    self.emit(emit);
                    bytes = &bytes[e + 1..];
                }
                None => break,
            }
        }
    }

    fn finish(&mut self, emit: &mut impl FnMut(String)) {
        if !self.line.is_empty() || self.cut {
            self.emit(emit);
        }
    }

    fn emit(&mut self, emit: &mut impl FnMut(String)) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let mut shown = printable(text, MAX_LINE_CHARS);
        if self.cut && !shown.ends_with('…') {
            shown.push('…');
        }
        emit(shown);
        self.line.clear();
        self.cut = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` runs (exists and is not a zombie).
    fn running(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    }

    /// Without a pidfd the hook's process is reaped to learn that it exited,
    /// so its pid, the group's id, may be someone else's by the time a
    /// lingering child is noticed: no group kill then (a background child
    /// of the hook stands in for whoever could have the id).
    #[tokio::test]
    async fn without_a_pidfd_a_reaped_hooks_group_is_never_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > '{}'; exit 0", pidfile.display());
        let job = Job {
            event: HookEvent::Complete,
            argv: ["/bin/sh", "-c", &script].map(OsString::from).to_vec(),
            env: Vec::new(),
            timeout: Duration::from_secs(60),
            span: tracing::Span::none(),
        };
        let ran = supervise(job, CancellationToken::new(), |_| None).await;
        let child: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let alive = running(child);
        if let Some(pid) = rustix::process::Pid::from_raw(child) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        // What was decided, not the child's state alone: a SIGKILL lands
        // asynchronously, so "still running" could not tell.
        assert!(!ran.group_killed, "the group of a reaped hook was killed");
        assert!(ran.succeeded && alive, "{ran:?}, child alive: {alive}");
    }

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut lines = Lines::default();
        for c in chunks {
            lines.feed(c, &mut |l| out.push(l));
        }
        lines.finish(&mut |l| out.push(l));
        out
    }

    #[test]
    fn lines_across_chunks_and_a_last_line_without_newline() {
        assert_eq!(split(&[b"one\ntw", b"o\r\n\nthr", b"ee"]), ["one", "two", "", "three"]);
        assert_eq!(split(&[b"a\n"]), ["a"]);
        assert!(split(&[]).is_empty());
    }

    #[test]
    fn control_characters_become_printable() {
        assert_eq!(split(&[b"\x1b[31mred\x07 \xff\n"]), ["?[31mred? \u{fffd}"]);
    }

    #[test]
    fn a_huge_line_is_cut_and_the_next_one_read() {
        let big = vec![b'x'; 100_000];
        let out = split(&[&big, &big, b"\nnext\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].chars().count(), MAX_LINE_CHARS + 1);
        assert!(out[0].ends_with('…'));
        assert_eq!(out[1], "next");
    }

    #[test]
    fn a_line_filling_the_buffer_exactly_keeps_the_next_line() {
        let exact = vec![b'y'; MAX_LINE_BYTES];
        let out = split(&[&exact, b"\nnext\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], "next");
    }
}
