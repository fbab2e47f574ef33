//! The agent's own heap (glibc malloc) during a migration.
//!
//! A migration moves its pages through buffers of a chunk each (up to a few MiB: the raw chunk,
//! its encoding, the received message), allocated and freed by the thousand. With glibc's
//! defaults each of them is a fresh mmap or a freshly grown heap that is trimmed back as soon as
//! it is freed, so every chunk's memory is faulted in and zeroed by the kernel again: 140 000
//! page faults on the target of a 1 GiB stop-and-copy, inside the freeze, and about a tenth of
//! its downtime. The agent keeps what it frees instead and hands
//! it back once a migration is over.

/// Large allocations come from the heap, and freed memory stays with the process until
/// [`release`]: no chunk buffer costs page faults once one like it was used.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; it takes no pointers.
    unsafe {
        // Up to 64 MiB from the heap (a chunk and its decode buffers are far smaller).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        // Never trim on free; release() trims when a migration is over.
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Returns the heap's free memory to the system (every arena's). Blocking: a few ms per
/// hundred MiB; call it off the async threads, after a migration's freeze.
pub fn release() {
    // SAFETY: malloc_trim walks the allocator's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Allocates the first `len` bytes of `file` now (fallocate(2); the file grows to `len`): on
/// tmpfs the pages are taken from the system here, and a later write into them is only a copy.
pub fn preallocate(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len =
        i64::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: fallocate on a file descriptor this function borrows for the call.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
