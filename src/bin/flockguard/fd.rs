//! The descriptor calls the command needs beyond the library: owning an
//! inherited descriptor number, and letting an executed command inherit the
//! lock.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::io::FdFlags;

/// Takes ownership of descriptor `raw`, inherited from the parent process,
/// after checking with `fcntl(F_GETFD)` that it is open.
///
/// The descriptor keeps its open file description, so a lock taken through
/// it is the caller's lock and outlives this process.
#[allow(unsafe_code)] // no safe API owns an inherited descriptor number; it is checked open first and owned once
pub(crate) fn adopt_inherited(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::BADF.raw_os_error(),
        ));
    }
    // SAFETY: not -1; used only for F_GETFD, which answers EBADF for a number
    // that is not open, and nothing else in this process owns the number.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(borrowed)?;
    // SAFETY: the descriptor is open (checked above), came from the parent,
    // and this process holds no other owner of it; main calls this once.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Clears `FD_CLOEXEC`, so an executed command inherits the descriptor and
/// with it the lock, as commands run by flock(1) do.
pub(crate) fn set_inheritable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::io::fcntl_getfd(fd)?;
    rustix::io::fcntl_setfd(fd, flags - FdFlags::CLOEXEC)?;
    Ok(())
}
