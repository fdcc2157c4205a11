//! Starting the daemon the way an admin can follow: the lock that keeps a
//! second daemon off a `state_dir`, and startup failures phrased as what
//! failed, the system's reason and the setting to change.
//!
//! Order matters. The lock (`state_dir/dropseed.lock`, an `flock` the kernel
//! drops when the process dies, even by kill -9) is taken before the log is
//! opened: a daemon refused because another one runs says so on stderr only
//! and never writes into the running daemon's log. Every later failure goes
//! to the log as one ERROR line, and to stderr.

use crate::fsutil;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "dropseed.lock";

/// The held lock; dropping it (or exiting) releases it.
pub struct StateLock {
    _file: File,
    /// Why there is no lock after all (a filesystem without `flock`), for
    /// the log; the control socket's check still refuses a second daemon.
    pub not_locked: Option<String>,
}

pub enum LockError {
    /// Another daemon holds this state_dir.
    Held(String),
    /// The state_dir or its lock file cannot be made or opened.
    Unusable(String),
}

/// Creates `state_dir` and takes its lock, writing our pid into it.
pub fn lock_state_dir(state_dir: &Path) -> Result<StateLock, LockError> {
    std::fs::create_dir_all(state_dir).map_err(|e| {
        LockError::Unusable(format!(
            "cannot create the state folder {} ({}): set [paths] state_dir",
            state_dir.display(),
            fsutil::reason(&e)
        ))
    })?;
    let path = state_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| {
            LockError::Unusable(format!(
                "cannot open the lock file {} ({}): set [paths] state_dir",
                path.display(),
                fsutil::reason(&e)
            ))
        })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let who = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
            return Err(LockError::Held(format!(
                "another dropseed{who} is running with state_dir {}; stop it first, or give this one \
                 another [paths] state_dir",
                state_dir.display()
            )));
        }
        let why = format!("cannot lock {} ({}); running without the lock", path.display(), fsutil::reason(&e));
        return Ok(StateLock { _file: file, not_locked: Some(why) });
    }
    // The pid is only for the message above; failing to write it is harmless.
    let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(StateLock { _file: file, not_locked: None })
}

/// The peer listener cannot be bound.
pub fn cannot_listen(addr: SocketAddr, e: &io::Error) -> String {
    let setting = match e.kind() {
        io::ErrorKind::AddrNotAvailable => "[network] listen_address",
        _ => "[network] listen_port",
    };
    format!("cannot listen on {addr} ({}): set {setting}", fsutil::reason(e))
}

/// The control socket cannot be made.
pub fn cannot_bind_control(path: &Path, e: &io::Error) -> String {
    format!("cannot create the control socket {} ({}): set [paths] state_dir", path.display(), fsutil::reason(e))
}

/// A folder the daemon needs cannot be created.
pub fn cannot_create(what: &str, dir: &Path, key: &str, e: &io::Error) -> String {
    format!("cannot create the {what} {} ({}): set [paths] {key}", dir.display(), fsutil::reason(e))
}

/// Creates a folder the daemon needs, or says which setting names it.
pub fn create_folder(what: &str, dir: &Path, key: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map(|()| dir.to_path_buf()).map_err(|e| cannot_create(what, dir, key, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_state_dir_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let _first = lock_state_dir(dir.path()).ok().unwrap();
        match lock_state_dir(dir.path()) {
            Err(LockError::Held(msg)) => {
                assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
                assert!(msg.contains("[paths] state_dir"), "{msg}");
            }
            _ => panic!("a second lock was granted"),
        }
    }

    #[test]
    fn errors_name_the_address_the_reason_and_the_setting() {
        let e = io::Error::from_raw_os_error(libc::EADDRINUSE);
        let msg = cannot_listen("0.0.0.0:6881".parse().unwrap(), &e);
        assert_eq!(msg, "cannot listen on 0.0.0.0:6881 (Address already in use): set [network] listen_port");
        let e = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert!(cannot_listen("[::1]:1".parse().unwrap(), &e).ends_with("set [network] listen_address"));
    }
}
