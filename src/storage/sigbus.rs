//! Survives SIGBUS from a memory map whose file shrank under us.
//!
//! Touching a mapped page that lies past the end of its file raises SIGBUS,
//! and a file can be truncated between any length check and the copy that
//! follows it. So every copy into or out of a mapping runs inside
//! [`guarded`]: the thread notes the range it is about to touch; if SIGBUS
//! strikes inside that range, the handler maps an anonymous zero page over
//! the faulting page, marks the thread as faulted and returns. The
//! instruction then runs again against the zero page, the copy finishes with
//! garbage, and `guarded` reports the fault, so the caller turns it into an
//! I/O error and never uses the bytes. The mapping is then stale where zero
//! pages were put: its owner must map the file again before trusting it.
//!
//! The zero page is there for every thread, and another thread copying the
//! same page afterwards takes no fault of its own: so the handler also counts
//! faults process-wide, and a guarded copy during which any fault struck is
//! reported too (a rare false alarm costs a recheck; a missed one would send
//! zeros to a peer as verified data).
//!
//! A SIGBUS anywhere else is not ours: the handler puts back the action that
//! was there before (std's, or the default) and returns, and the fault, taken
//! again, ends the process as it would have without us.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

thread_local! {
    /// The address range this thread is copying, `(start, end)`; empty when
    /// none. Const-initialised without a destructor, so the handler can read
    /// it without allocating or registering anything.
    static GUARD: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    static FAULTED: Cell<bool> = const { Cell::new(false) };
}

static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// Faults the handler absorbed, in any thread.
static FAULTS: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();
/// The action we replaced, put back for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// The file under a mapping was cut short while we touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faulted;

/// Installs the handler once per process.
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf, sigemptyset and sigaction with valid pointers.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            // Read the old action first, so it is known before a fault can
            // reach our handler.
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) == 0 {
                let _ = PREVIOUS.set(old);
                libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
            }
        }
    });
}

/// Runs `copy`, which touches only `[start, start + len)` of a mapping, and
/// reports whether that range faulted.
pub fn guarded<T>(start: *const u8, len: usize, copy: impl FnOnce() -> T) -> Result<T, Faulted> {
    install();
    let start = start as usize;
    FAULTED.with(|f| f.set(false));
    let faults_before = FAULTS.load(Ordering::SeqCst);
    GUARD.with(|g| g.set((start, start.saturating_add(len))));
    // Keep the copy between setting and clearing the guard.
    compiler_fence(Ordering::SeqCst);
    let out = copy();
    compiler_fence(Ordering::SeqCst);
    GUARD.with(|g| g.set((0, 0)));
    let elsewhere = FAULTS.load(Ordering::SeqCst) != faults_before;
    if FAULTED.with(|f| f.replace(false)) || elsewhere {
        Err(Faulted)
    } else {
        Ok(out)
    }
}

extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // The interrupted code may be about to read errno.
    // SAFETY: __errno_location is this thread's errno, always valid.
    let errno = unsafe { *libc::__errno_location() };
    on_sigbus_inner(info);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn on_sigbus_inner(info: *mut libc::siginfo_t) {
    // SAFETY: the kernel hands a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, end) = GUARD.try_with(|g| g.get()).unwrap_or((0, 0));
    if addr >= start && addr < end {
        let page = PAGE.load(Ordering::Relaxed);
        let at = addr & !(page - 1);
        // SAFETY: replaces one page of our own mapping, inside the range the
        // guarded copy was given. mmap is not on POSIX's async-signal-safe
        // list, but on Linux it is a plain system call with no user-space
        // state (no allocation, no lock), which is what that list guards.
        let mapped = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            FAULTS.fetch_add(1, Ordering::SeqCst);
            let _ = FAULTED.try_with(|f| f.set(true));
            return;
        }
    }
    // SAFETY: putting back an action is async-signal-safe; PREVIOUS was set
    // before this handler was installed, so reading it is one atomic load.
    unsafe {
        match PREVIOUS.get() {
            Some(old) => libc::sigaction(libc::SIGBUS, old, std::ptr::null_mut()),
            None => {
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
                0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memmap2::MmapOptions;

    #[test]
    fn a_copy_from_a_truncated_mapping_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(64 * 1024).unwrap();
        let map = MmapOptions::new().len(64 * 1024).map_raw(&file).unwrap();
        let mut buf = vec![1u8; 16 * 1024];
        // Whole file there: no fault.
        let read = |buf: &mut Vec<u8>, off: usize| {
            guarded(unsafe { map.as_ptr().add(off) }, buf.len(), || unsafe {
                std::ptr::copy_nonoverlapping(map.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
            })
        };
        assert_eq!(read(&mut buf, 32 * 1024), Ok(()));
        assert!(buf.iter().all(|&b| b == 0));
        file.set_len(4096).unwrap();
        // Past the new end: reported, and the thread carries on.
        assert_eq!(read(&mut buf, 32 * 1024), Err(Faulted));
        // Writes too.
        let data = vec![7u8; 8192];
        let wrote = guarded(unsafe { map.as_ptr().add(16 * 1024) }, data.len(), || unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), map.as_mut_ptr().add(16 * 1024), data.len())
        });
        assert_eq!(wrote, Err(Faulted));
        // What is still inside the file reads without a fault.
        let mut head = vec![1u8; 4096];
        assert_eq!(read(&mut head, 0), Ok(()));
    }
}
