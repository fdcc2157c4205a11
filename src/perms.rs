//! File modes for a seedbox shared with a group: the umask the daemon sets
//! at start (`[paths] umask`, default 0007: folders 0770, files 0660, so a
//! service in the daemon's group, say Sonarr, can drop files into the watch
//! folder and hardlink finished downloads, and other users see nothing), and
//! the control socket's mode 0660 and group (`[paths] socket_group`, by
//! default the daemon's own group). Both are given while the socket still
//! sits in a private folder (`control::bind`), before anyone can reach it.
//!
//! Changing the socket's group is a `chown`, which the daemon's user may do
//! only for a group it belongs to; it is skipped when the socket already has
//! the group (under the shipped systemd unit, whose `@privileged` syscall
//! filter forbids `chown`, name the unit's own `Group=` or leave it empty).

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The control socket's mode: owner and group.
pub const SOCKET_MODE: u32 = 0o660;

/// Sets the process's umask.
pub fn set_umask(mask: u32) {
    // SAFETY: umask only swaps the process's mask.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// The id of a group given by name (or as a number).
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = CString::new(name).map_err(|_| format!("'{}' is not a group name", name.escape_debug()))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid out-parameter for getgrnam_r.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives it.
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc == 0 && !found.is_null() {
        Ok(grp.gr_gid)
    } else {
        Err(format!("no group named '{}' on this system", name.escape_debug()))
    }
}

/// Gives the control socket at `path` mode 0660 and, if asked, the group
/// `gid`; errors name it as `shown` (where it is going to be).
pub fn own_socket(path: &Path, shown: &Path, group: Option<(&str, u32)>) -> Result<(), String> {
    let fail = |what: &str, e: io::Error| {
        format!("cannot {what} of the control socket {} ({})", shown.display(), crate::fsutil::reason(&e))
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| fail("set the mode", e))?;
    let Some((name, gid)) = group else { return Ok(()) };
    let current = std::fs::metadata(path).map_err(|e| fail("read the group", e))?.gid();
    if current != gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
            format!(
                "cannot give the control socket {} to group {name} ({}): dropseed's user must be a member of it; \
                 set [paths] socket_group",
                shown.display(),
                crate::fsutil::reason(&e)
            )
        })?;
    }
    Ok(())
}

/// Whether members of `gid` can reach a socket in `dir` (search permission).
pub fn group_can_enter(dir: &Path, gid: u32) -> bool {
    std::fs::metadata(dir).map(|m| m.mode() & 0o001 != 0 || (m.gid() == gid && m.mode() & 0o010 != 0)).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(group_id("root"), Ok(0));
        assert_eq!(group_id("100"), Ok(100));
        assert!(group_id("no-such-group-anywhere").unwrap_err().contains("no group named"));
        assert!(group_id("a\0b").is_err());
    }
}
