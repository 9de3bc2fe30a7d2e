//! The crate's only contact with the kernel: thin wrappers over rustix.
//!
//! Every function here is one system call (or one call retried on `EINTR`)
//! and returns `std::io::Error`, so the typed logic above never sees rustix.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode as Perms, OFlags, StatxFlags};
use rustix::io::{Errno, FdFlags};

use crate::mode::FlockMode;

/// The kind of inode a descriptor or path refers to.
pub(crate) use rustix::fs::FileType as Kind;

/// How [`open`] opens the path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenHow {
    pub(crate) create_excl: bool,
    pub(crate) follow_symlinks: bool,
    pub(crate) read_only: bool,
    pub(crate) directory: bool,
    pub(crate) perms: u32,
}

/// `open(2)` with `O_CLOEXEC | O_NOCTTY | O_NONBLOCK` always set.
///
/// `O_NONBLOCK` keeps a FIFO planted at the path from blocking the open; it
/// has no effect on regular files or on `flock(2)`.
pub(crate) fn open(path: &Path, how: OpenHow) -> io::Result<OwnedFd> {
    let mut flags = OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    if how.directory {
        flags |= OFlags::RDONLY | OFlags::DIRECTORY;
    } else if how.read_only {
        flags |= OFlags::RDONLY;
    } else {
        flags |= OFlags::RDWR;
    }
    if how.create_excl {
        flags |= OFlags::CREATE | OFlags::EXCL;
    }
    if !how.follow_symlinks {
        flags |= OFlags::NOFOLLOW;
    }
    retry(|| rustix::fs::open(path, flags, Perms::from_bits_truncate(how.perms)))
        .map_err(Into::into)
}

/// Identity and type of an open file, from `fstat(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) kind: Kind,
    pub(crate) nlink: u64,
}

fn file_id(st: &rustix::fs::Stat) -> FileId {
    FileId {
        dev: st.st_dev,
        ino: st.st_ino,
        kind: FileType::from_raw_mode(st.st_mode),
        #[allow(clippy::useless_conversion)] // `st_nlink` is u32 on some targets
        nlink: u64::from(st.st_nlink),
    }
}

/// `fstat(2)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    Ok(file_id(&rustix::fs::fstat(fd)?))
}

/// `lstat(2)`: used only to explain a failed open or to check that a path
/// still names a given inode.
pub(crate) fn lstat(path: &Path) -> io::Result<FileId> {
    Ok(file_id(&rustix::fs::lstat(path)?))
}

/// `stat(2)`: follows symbolic links; used only to check that a path
/// still names a given inode.
pub(crate) fn stat(path: &Path) -> io::Result<FileId> {
    Ok(file_id(&rustix::fs::stat(path)?))
}

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a mount id that is never reused.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// One `statx(2)` on an open file: its type, and its mount's unique id when
/// the kernel reports one (Linux 6.8 and later).
pub(crate) fn kind_and_mount(fd: BorrowedFd<'_>) -> io::Result<(Kind, Option<u64>)> {
    let mask = StatxFlags::TYPE | StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    let st = retry(|| rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, mask))?;
    if st.stx_mask & StatxFlags::TYPE.bits() == 0 {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    let mount = (st.stx_mask & STATX_MNT_ID_UNIQUE != 0).then_some(st.stx_mnt_id);
    Ok((FileType::from_raw_mode(st.stx_mode.into()), mount))
}

/// `fstatfs(2)`: the filesystem magic (`f_type`) of the file behind `fd`.
pub(crate) fn fs_magic(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = retry(|| rustix::fs::fstatfs(fd))?;
    // f_type is a signed word; every magic fits in 32 bits
    #[allow(clippy::unnecessary_cast)] // the word is i32 on 32-bit targets
    Ok(st.f_type as u64 & 0xFFFF_FFFF)
}

/// `flock(fd, LOCK_EX|LOCK_SH [| LOCK_NB])`.
///
/// The blocking form retries `EINTR`, so a signal handler installed without
/// `SA_RESTART` does not end the wait.
pub(crate) fn flock(fd: BorrowedFd<'_>, mode: FlockMode, nonblocking: bool) -> io::Result<()> {
    let op = match (mode, nonblocking) {
        (FlockMode::Exclusive, false) => FlockOperation::LockExclusive,
        (FlockMode::Exclusive, true) => FlockOperation::NonBlockingLockExclusive,
        (FlockMode::Shared, false) => FlockOperation::LockShared,
        (FlockMode::Shared, true) => FlockOperation::NonBlockingLockShared,
    };
    retry(|| rustix::fs::flock(fd, op)).map_err(Into::into)
}

/// `flock(fd, LOCK_UN)`.
pub(crate) fn funlock(fd: BorrowedFd<'_>) -> io::Result<()> {
    retry(|| rustix::fs::flock(fd, FlockOperation::Unlock)).map_err(Into::into)
}

/// Whether `FD_CLOEXEC` is set on `fd`.
pub(crate) fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rustix::io::fcntl_getfd(fd)?.contains(FdFlags::CLOEXEC))
}

/// Sets `FD_CLOEXEC` on `fd`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::io::fcntl_getfd(fd)?;
    rustix::io::fcntl_setfd(fd, flags | FdFlags::CLOEXEC).map_err(Into::into)
}

/// `getpid(2)`.
pub(crate) fn getpid() -> u32 {
    rustix::process::getpid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs()
}

/// `unlink(2)`.
pub(crate) fn unlink(path: &Path) -> io::Result<()> {
    rustix::fs::unlink(path).map_err(Into::into)
}

/// The path the kernel reports for an open descriptor, if any.
pub(crate) fn fd_path(fd: impl AsFd) -> Option<std::path::PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())).ok()
}

/// Whether an error is the "lock is held elsewhere" answer of `LOCK_NB`.
pub(crate) fn is_contention(err: &io::Error) -> bool {
    err.raw_os_error() == Some(Errno::WOULDBLOCK.raw_os_error())
}

/// Whether an error is `ELOOP` (the final component is a symlink under
/// `O_NOFOLLOW`, or the path loops).
pub(crate) fn is_eloop(err: &io::Error) -> bool {
    err.raw_os_error() == Some(Errno::LOOP.raw_os_error())
}

/// Whether an error is `ENXIO`, the answer to opening a socket.
pub(crate) fn is_enxio(err: &io::Error) -> bool {
    err.raw_os_error() == Some(Errno::NXIO.raw_os_error())
}

/// Whether an error is `EISDIR`.
pub(crate) fn is_eisdir(err: &io::Error) -> bool {
    err.raw_os_error() == Some(Errno::ISDIR.raw_os_error())
}

/// Whether an error says the file cannot be opened for writing (`EACCES`,
/// `EPERM`, `EROFS`, `ETXTBSY`), so a read-only open may still lock it.
pub(crate) fn is_write_refused(err: &io::Error) -> bool {
    [Errno::ACCESS, Errno::PERM, Errno::ROFS, Errno::TXTBSY]
        .iter()
        .any(|e| err.raw_os_error() == Some(e.raw_os_error()))
}

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}
