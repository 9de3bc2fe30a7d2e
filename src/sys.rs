//! The crate's only contact with the kernel: thin wrappers over rustix.
//!
//! Every function here is one system call (the blocking and waiting ones
//! retried on `EINTR`) and returns `std::io::Error`, so the typed logic
//! above never sees rustix.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode as Perms, OFlags, StatxFlags};
use rustix::io::{Errno, FdFlags};

use crate::kind::{ByteRange, LockKind};
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
#[inline]
pub(crate) fn open(path: &Path, how: OpenHow) -> io::Result<OwnedFd> {
    open_with(path, how, OFlags::NONBLOCK)
}

/// [`open`] without `O_NONBLOCK`: waits for a lease holder to let go.
pub(crate) fn open_blocking(path: &Path, how: OpenHow) -> io::Result<OwnedFd> {
    open_with(path, how, OFlags::empty())
}

#[inline]
fn open_with(path: &Path, how: OpenHow, extra: OFlags) -> io::Result<OwnedFd> {
    let mut flags = OFlags::CLOEXEC | OFlags::NOCTTY | extra;
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

/// `lstat(2)`: the identity and type of what a path names, without
/// following a final symbolic link.
pub(crate) fn lstat(path: &Path) -> io::Result<FileId> {
    Ok(file_id(&rustix::fs::lstat(path)?))
}

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a mount id that is never reused.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// One `statx(2)` on an open file: its type, and its mount's unique id when
/// the kernel reports one (Linux 6.8 and later).
#[inline]
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

/// What [`flock`] does when another open file description holds a
/// conflicting lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnConflict {
    /// Wait in the kernel until the lock can be taken.
    Block,
    /// Fail at once with `EWOULDBLOCK` (`LOCK_NB`).
    Fail,
}

/// `flock(fd, LOCK_EX|LOCK_SH [| LOCK_NB])`.
///
/// The blocking form retries `EINTR`, so a signal handler installed without
/// `SA_RESTART` does not end the wait.
// Inlined, as are the other calls of the acquire and release paths, so
// that both system calls of a cycle sit in the caller's frame
// (docs/benchmarks.md).
#[inline(always)]
pub(crate) fn flock(
    fd: BorrowedFd<'_>,
    mode: FlockMode,
    on_conflict: OnConflict,
) -> io::Result<()> {
    let op = match (mode, on_conflict) {
        (FlockMode::Exclusive, OnConflict::Block) => FlockOperation::LockExclusive,
        (FlockMode::Exclusive, OnConflict::Fail) => FlockOperation::NonBlockingLockExclusive,
        (FlockMode::Shared, OnConflict::Block) => FlockOperation::LockShared,
        (FlockMode::Shared, OnConflict::Fail) => FlockOperation::NonBlockingLockShared,
    };
    retry(|| rustix::fs::flock(fd, op)).map_err(Into::into)
}

/// `flock(fd, LOCK_UN)`.
#[inline(always)]
pub(crate) fn funlock(fd: BorrowedFd<'_>) -> io::Result<()> {
    retry(|| rustix::fs::flock(fd, FlockOperation::Unlock)).map_err(Into::into)
}

/// A lock of `kind` in `mode`: `flock(2)` on the whole file, or
/// `fcntl(F_OFD_SETLK[W])` on `range`. The attempt every acquisition and
/// every wait makes.
#[inline(always)]
pub(crate) fn lock(
    fd: BorrowedFd<'_>,
    kind: LockKind,
    range: ByteRange,
    mode: FlockMode,
    on_conflict: OnConflict,
) -> io::Result<()> {
    match kind {
        LockKind::Flock => {
            let _ = range; // flock(2) locks whole files only
            flock(fd, mode, on_conflict)
        }
        #[cfg(feature = "ofd")]
        LockKind::Ofd => ofd_lock(fd, Some(mode), range, on_conflict),
    }
}

/// Releases the lock of `kind`: `LOCK_UN`, or `F_UNLCK` on `range`.
#[inline(always)]
pub(crate) fn unlock(fd: BorrowedFd<'_>, kind: LockKind, range: ByteRange) -> io::Result<()> {
    match kind {
        LockKind::Flock => {
            let _ = range;
            funlock(fd)
        }
        #[cfg(feature = "ofd")]
        LockKind::Ofd => ofd_lock(fd, None, range, OnConflict::Fail),
    }
}

/// `fcntl(fd, F_OFD_SETLK or F_OFD_SETLKW, {F_RDLCK|F_WRLCK|F_UNLCK, span})`;
/// `mode` `None` unlocks. `l_pid` is 0, as the kernel requires for OFD
/// locks.
///
/// The blocking form retries `EINTR`.
///
/// # References
/// - [fcntl_locking(2)](https://man7.org/linux/man-pages/man2/fcntl_locking.2.html)
#[cfg(feature = "ofd")]
#[inline(always)]
pub(crate) fn ofd_lock(
    fd: BorrowedFd<'_>,
    mode: Option<FlockMode>,
    range: ByteRange,
    on_conflict: OnConflict,
) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    use nix::libc;
    let l_type = match mode {
        Some(FlockMode::Exclusive) => libc::F_WRLCK,
        Some(FlockMode::Shared) => libc::F_RDLCK,
        None => libc::F_UNLCK,
    };
    let invalid = || io::Error::from_raw_os_error(Errno::INVAL.raw_os_error());
    let lock = libc::flock {
        // F_RDLCK, F_WRLCK and F_UNLCK are 0, 1 and 2: they fit.
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: libc::off_t::try_from(range.start()).map_err(|_| invalid())?,
        l_len: libc::off_t::try_from(range.len().unwrap_or(0)).map_err(|_| invalid())?,
        l_pid: 0,
    };
    loop {
        let arg = match on_conflict {
            OnConflict::Fail => FcntlArg::F_OFD_SETLK(&lock),
            OnConflict::Block => FcntlArg::F_OFD_SETLKW(&lock),
        };
        match fcntl(fd, arg) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(io::Error::from_raw_os_error(err as i32)),
        }
    }
}

/// A new open file description of the file `fd` refers to, read-only:
/// `open("/proc/self/fd/N")`.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    retry(|| rustix::fs::open(link.as_str(), flags, Perms::empty())).map_err(Into::into)
}

/// Whether `FD_CLOEXEC` is set on `fd`.
pub(crate) fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rustix::io::fcntl_getfd(fd)?.contains(FdFlags::CLOEXEC))
}

/// Whether `fd` is open for writing (`O_WRONLY` or `O_RDWR`).
pub(crate) fn is_writable(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    Ok(flags.intersects(OFlags::WRONLY | OFlags::RDWR))
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

/// This process's ID without a system call on the hot path: cached in a
/// word that the kernel zeroes in every child created by `fork(2)` or
/// `clone(2)` without `CLONE_VM`, however it was made (see
/// [`wipe_on_fork`]). Where the kernel refuses that, `getpid(2)`. A child
/// that shares this memory (`vfork(2)`, `clone(2)` with `CLONE_VM`) reads
/// the parent's ID.
///
/// Nothing here waits for another thread: a child forked while a parent
/// thread was in the middle of the first call finds the word zero and
/// caches its own ID.
#[inline(always)]
pub(crate) fn current_pid() -> u32 {
    pid_from(&PID_PAGE, &PID_STATE, wipe_on_fork)
}

/// [`current_pid`] over a given page and state, and a given way to mark the
/// page (the tests pause in it).
#[inline(always)]
fn pid_from(
    page: &'static WipedPage,
    state: &AtomicU8,
    wipe: fn(&'static WipedPage) -> bool,
) -> u32 {
    // Nonzero only once the page is marked: see `pid_slow`.
    let pid = page.word.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    pid_slow(page, state, wipe)
}

/// [`pid_from`] on first use, in a new child, or where the kernel refused
/// to mark the page.
#[cold]
#[inline(never)]
fn pid_slow(
    page: &'static WipedPage,
    state: &AtomicU8,
    wipe: fn(&'static WipedPage) -> bool,
) -> u32 {
    let pid = getpid();
    let marked = match state.load(Ordering::Acquire) {
        PAGE_MARKED => true,
        PAGE_REFUSED => false,
        _ => {
            // Threads that race here all mark the page, which changes
            // nothing after the first; none waits for another.
            let marked = wipe(page);
            let now = if marked { PAGE_MARKED } else { PAGE_REFUSED };
            state.store(now, Ordering::Release);
            marked
        }
    };
    // The ID is stored only after the page is marked, so a child made
    // after the store was copied with the mark and finds zero.
    if marked {
        page.word.store(pid, Ordering::Relaxed);
    }
    pid
}

/// A page of its own, marked `MADV_WIPEONFORK` on first use; its first word
/// is [`current_pid`]'s cache.
#[repr(C, align(4096))]
struct WipedPage {
    word: AtomicU32,
    /// Fills the page, so that the advice covers no other object.
    _rest: [u8; 4092],
}

impl WipedPage {
    const fn new() -> WipedPage {
        WipedPage {
            word: AtomicU32::new(0),
            _rest: [0; 4092],
        }
    }
}

/// The page behind [`current_pid`].
static PID_PAGE: WipedPage = WipedPage::new();
/// Whether [`PID_PAGE`] is marked: [`PAGE_UNTRIED`], [`PAGE_MARKED`] or
/// [`PAGE_REFUSED`].
static PID_STATE: AtomicU8 = AtomicU8::new(PAGE_UNTRIED);
const PAGE_UNTRIED: u8 = 0;
const PAGE_MARKED: u8 = 1;
const PAGE_REFUSED: u8 = 2;

/// Whether [`current_pid`] answers from the wiped-on-fork page rather than
/// calling `getpid(2)` each time.
#[cfg(test)]
pub(crate) fn pid_is_cached() -> bool {
    current_pid();
    PID_STATE.load(Ordering::Acquire) == PAGE_MARKED
}

/// Marks `page` `MADV_WIPEONFORK` (Linux 4.14+): a child made by `fork(2)`
/// or `clone(2)` without `CLONE_VM` sees it zero-filled. `false` if the
/// kernel refuses (an older kernel, or a mapping that is not private and
/// anonymous).
///
/// # References
/// - [madvise(2)](https://man7.org/linux/man-pages/man2/madvise.2.html)
#[allow(unsafe_code)] // the crate's one unsafe function: fork detection needs a raw madvise
fn wipe_on_fork(page: &'static WipedPage) -> bool {
    use rustix::mm::{madvise, Advice};
    // SAFETY: the range is exactly one static, page-aligned and a page long
    // (`WipedPage`'s layout), so it covers no other Rust object. The
    // advice changes only what a child made by fork(2) sees there: zeros,
    // in place before the child runs. Zero is a valid value of every
    // field, the word is read only through its atomic, and the filler is
    // never read.
    unsafe {
        madvise(
            (page as *const WipedPage).cast_mut().cast(),
            std::mem::size_of::<WipedPage>(),
            Advice::LinuxWipeOnFork,
        )
        .is_ok()
    }
}

/// `mkdir(2)` of every missing directory along `path`.
pub(crate) fn create_dir_all(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path)
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

/// The error of a `LOCK_NB` attempt that found the lock held.
pub(crate) fn contention() -> io::Error {
    io::Error::from_raw_os_error(Errno::WOULDBLOCK.raw_os_error())
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

#[inline]
fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// The identity of a file as `/proc/locks` prints it needs the mount's
/// superblock device, which `fstat(2)` does not give on btrfs subvolumes;
/// this is what `statx(2)` gives instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MountedId {
    /// The mount id (`STATX_MNT_ID`), matching the first field of
    /// `/proc/self/mountinfo`; `None` on kernels before 5.8.
    pub(crate) mnt_id: Option<u64>,
    /// `st_dev` as (major, minor): the fallback when the mount id is missing.
    pub(crate) dev: (u32, u32),
    /// The inode number.
    pub(crate) ino: u64,
}

fn mounted_id(st: &rustix::fs::Statx) -> MountedId {
    use rustix::fs::StatxFlags;
    let has_mnt_id = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID);
    MountedId {
        mnt_id: has_mnt_id.then_some(st.stx_mnt_id),
        dev: (st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
    }
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_INO | STATX_MNT_ID)`.
pub(crate) fn statx_fd(fd: BorrowedFd<'_>) -> io::Result<MountedId> {
    use rustix::fs::{AtFlags, StatxFlags};
    let st = retry(|| {
        rustix::fs::statx(
            fd,
            "",
            AtFlags::EMPTY_PATH,
            StatxFlags::INO | StatxFlags::MNT_ID,
        )
    })?;
    Ok(mounted_id(&st))
}

/// `statx(AT_FDCWD, path, 0, STATX_INO | STATX_MNT_ID)`, following symlinks.
pub(crate) fn statx_path(path: &Path) -> io::Result<MountedId> {
    use rustix::fs::{AtFlags, StatxFlags, CWD};
    let st = retry(|| {
        rustix::fs::statx(
            CWD,
            path,
            AtFlags::empty(),
            StatxFlags::INO | StatxFlags::MNT_ID,
        )
    })?;
    Ok(mounted_id(&st))
}

/// `inotify_init1(IN_CLOEXEC | IN_NONBLOCK)`.
pub(crate) fn inotify_new() -> io::Result<OwnedFd> {
    use rustix::fs::inotify::{self, CreateFlags};
    inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).map_err(Into::into)
}

/// `inotify_add_watch(inotify, path, IN_CLOSE_WRITE | IN_CLOSE_NOWRITE)`;
/// returns the watch descriptor, the same one for every watch of an inode.
pub(crate) fn inotify_watch_close(inotify: BorrowedFd<'_>, path: &Path) -> io::Result<i32> {
    use rustix::fs::inotify::{self, WatchFlags};
    inotify::add_watch(
        inotify,
        path,
        WatchFlags::CLOSE_WRITE | WatchFlags::CLOSE_NOWRITE,
    )
    .map_err(Into::into)
}

/// [`inotify_watch_close`] on the inode that `file` has open, named through
/// `/proc/self/fd/N` (so a path replaced since the open does not matter).
pub(crate) fn inotify_watch_fd_close(
    inotify: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
    inotify_watch_close(inotify, Path::new(&link))
}

/// `inotify_rm_watch(inotify, wd)`.
pub(crate) fn inotify_unwatch(inotify: BorrowedFd<'_>, wd: i32) -> io::Result<()> {
    rustix::fs::inotify::remove_watch(inotify, wd).map_err(Into::into)
}

/// One event read from an inotify descriptor, as the waiting service sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InotifyEvent {
    /// The watched inode itself was closed (not a child of a watched
    /// directory).
    Closed(i32),
    /// The watch is gone (`IN_IGNORED`).
    Gone(i32),
    /// Events were lost (`IN_Q_OVERFLOW`).
    Overflow,
}

/// Reads every queued event from a non-blocking inotify descriptor, calling
/// `each` for the ones that matter; returns at `EAGAIN`.
pub(crate) fn inotify_read(
    inotify: BorrowedFd<'_>,
    mut each: impl FnMut(InotifyEvent),
) -> io::Result<()> {
    use rustix::fs::inotify::{ReadFlags, Reader};
    use std::mem::MaybeUninit;
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = Reader::new(inotify, &mut buf);
    loop {
        match reader.next() {
            Ok(event) => {
                let flags = event.events();
                let own = event.file_name().map_or(true, |n| n.is_empty());
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    each(InotifyEvent::Overflow);
                } else if flags.contains(ReadFlags::IGNORED) {
                    each(InotifyEvent::Gone(event.wd()));
                } else if own && flags.intersects(ReadFlags::CLOSE_WRITE | ReadFlags::CLOSE_NOWRITE)
                {
                    each(InotifyEvent::Closed(event.wd()));
                }
            }
            Err(Errno::AGAIN) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`.
pub(crate) fn eventfd_new() -> io::Result<OwnedFd> {
    use rustix::event::{eventfd, EventfdFlags};
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(Into::into)
}

/// Adds 1 to an eventfd's counter, making it readable; never blocks.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // EAGAIN means the counter is saturated: the fd is readable already.
    match retry(|| rustix::io::write(fd, &1u64.to_ne_bytes())) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Resets a non-blocking eventfd's counter to zero; never blocks.
pub(crate) fn eventfd_clear(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 8];
    // EAGAIN: already zero; nothing else can fail on an eventfd.
    let _ = retry(|| rustix::io::read(fd, &mut buf));
}

/// `ppoll(2)` for readability of `first` and, if given, `second`, with a
/// timeout (`None`: no limit). Returns which of them are readable (or in
/// error); `EINTR` is reported as neither being ready.
pub(crate) fn poll_readable(
    first: BorrowedFd<'_>,
    second: Option<BorrowedFd<'_>>,
    timeout: Option<std::time::Duration>,
) -> io::Result<[bool; 2]> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut set = [
        PollFd::from_borrowed_fd(first, PollFlags::IN),
        PollFd::from_borrowed_fd(second.unwrap_or(first), PollFlags::IN),
    ];
    let n = 1 + usize::from(second.is_some());
    let timeout = timeout.map(|t| Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    match rustix::event::poll(&mut set[..n], timeout.as_ref()) {
        Ok(_) => {}
        Err(Errno::INTR) => return Ok([false; 2]),
        Err(err) => return Err(err.into()),
    }
    let ready = |fd: &PollFd<'_>| !fd.revents().is_empty();
    Ok([ready(&set[0]), n == 2 && ready(&set[1])])
}

/// Raw `errno` values the typed layer distinguishes in messages.
pub(crate) mod errno {
    use rustix::io::Errno;

    pub(crate) const NOENT: i32 = Errno::NOENT.raw_os_error();
    pub(crate) const ACCES: i32 = Errno::ACCESS.raw_os_error();
    pub(crate) const PERM: i32 = Errno::PERM.raw_os_error();
    pub(crate) const ROFS: i32 = Errno::ROFS.raw_os_error();
    pub(crate) const MFILE: i32 = Errno::MFILE.raw_os_error();
    pub(crate) const NFILE: i32 = Errno::NFILE.raw_os_error();
    pub(crate) const NOSPC: i32 = Errno::NOSPC.raw_os_error();
    pub(crate) const DQUOT: i32 = Errno::DQUOT.raw_os_error();
    pub(crate) const NOTDIR: i32 = Errno::NOTDIR.raw_os_error();
    pub(crate) const NAMETOOLONG: i32 = Errno::NAMETOOLONG.raw_os_error();
    pub(crate) const LOOP: i32 = Errno::LOOP.raw_os_error();
    pub(crate) const WOULDBLOCK: i32 = Errno::WOULDBLOCK.raw_os_error();
}

// ---- /proc reads for holder diagnostics ---------------------------------
//
// Each returns the bytes the kernel gave (never text: mount points and
// command lines need not be UTF-8). A PID here is one of the namespace
// `/proc` is mounted for, as `/proc/locks` prints it.

/// Opens `/proc/locks`.
pub(crate) fn proc_locks_open() -> io::Result<std::fs::File> {
    std::fs::File::open("/proc/locks")
}

/// Moves the read position of an open `/proc/locks` to byte `offset`. The
/// kernel walks its lock list from the start to get there, and the next
/// read begins with the rest of the line it stopped in.
pub(crate) fn proc_locks_seek(file: &mut std::fs::File, offset: u64) -> io::Result<()> {
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(offset)).map(drop)
}

/// One `read(2)` of an open `/proc/locks`: its bytes, empty at the end.
/// The kernel serves at most one page of whole lines per call, taken under
/// its lock-list lock, and walks the list from its start again for the
/// next call.
pub(crate) fn proc_locks_read(file: &mut std::fs::File) -> io::Result<Vec<u8>> {
    use std::io::Read;
    // `vec![0; n]` is one zeroed allocation; growing a Vec to it would
    // write every byte.
    let mut buf = vec![0; 64 * 1024];
    let n = loop {
        match file.read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    buf.truncate(n);
    buf.shrink_to_fit();
    Ok(buf)
}

/// The contents of `/proc/self/mountinfo`.
pub(crate) fn proc_self_mountinfo() -> io::Result<Vec<u8>> {
    std::fs::read("/proc/self/mountinfo")
}

/// The numeric entries of a `/proc` directory, in the kernel's order.
fn proc_numbers(dir: &str) -> io::Result<Vec<u32>> {
    let fd = retry(|| {
        rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Perms::empty(),
        )
    })?;
    numbers_in(&mut rustix::fs::Dir::new(fd)?)
}

fn numbers_in(dir: &mut rustix::fs::Dir) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        if let Some(n) = std::str::from_utf8(entry.file_name().to_bytes())
            .ok()
            .and_then(|s| s.parse().ok())
        {
            out.push(n);
        }
    }
    Ok(out)
}

/// The PIDs listed in `/proc` (thread-group leaders).
pub(crate) fn proc_pids() -> io::Result<Vec<u32>> {
    proc_numbers("/proc")
}

/// The thread ids of process `pid`, from `/proc/PID/task`.
pub(crate) fn proc_tasks(pid: u32) -> io::Result<Vec<u32>> {
    proc_numbers(&format!("/proc/{pid}/task"))
}

/// `/proc/PID/stat`, or `/proc/PID/task/TID/stat` for one thread.
pub(crate) fn proc_stat(pid: u32, tid: Option<u32>) -> io::Result<Vec<u8>> {
    match tid {
        None => std::fs::read(format!("/proc/{pid}/stat")),
        Some(tid) => std::fs::read(format!("/proc/{pid}/task/{tid}/stat")),
    }
}

/// At most `max` bytes of `/proc/PID/cmdline`.
pub(crate) fn proc_cmdline(pid: u32, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut raw = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/cmdline"))?
        .take(max)
        .read_to_end(&mut raw)?;
    Ok(raw)
}

/// An open `/proc/PID/fdinfo` directory and the descriptors it listed.
pub(crate) struct FdinfoDir {
    dir: rustix::fs::Dir,
    /// The descriptor numbers, in the kernel's order.
    pub(crate) fds: Vec<u32>,
}

/// Opens and lists `/proc/PID/fdinfo`, or `/proc/PID/task/TID/fdinfo` (the
/// descriptors of a process whose main thread has exited are visible only
/// through its other threads).
pub(crate) fn proc_fdinfo_dir(pid: u32, tid: Option<u32>) -> io::Result<FdinfoDir> {
    let path = match tid {
        None => format!("/proc/{pid}/fdinfo"),
        Some(tid) => format!("/proc/{pid}/task/{tid}/fdinfo"),
    };
    let fd = retry(|| {
        rustix::fs::open(
            path.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Perms::empty(),
        )
    })?;
    let mut dir = rustix::fs::Dir::new(fd)?;
    let fds = numbers_in(&mut dir)?;
    Ok(FdinfoDir { dir, fds })
}

/// Reads `fdinfo/FD` of an open [`FdinfoDir`] into `buf` (replacing its
/// contents).
pub(crate) fn proc_fdinfo(dir: &FdinfoDir, fd: u32, buf: &mut Vec<u8>) -> io::Result<()> {
    let name = fd.to_string();
    let file = retry(|| {
        rustix::fs::openat(
            dir.dir.fd()?,
            name.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Perms::empty(),
        )
    })?;
    buf.clear();
    let mut step = [0u8; 4096];
    loop {
        let n = retry(|| rustix::io::read(&file, &mut step))?;
        buf.extend_from_slice(&step[..n]);
        // The kernel renders the whole file at the first read: a short
        // read is the end, which saves the read(2) that would return 0.
        if n < step.len() {
            return Ok(());
        }
    }
}

/// Whether an error from a `/proc/PID` read means the process (or the
/// descriptor) is gone: `ENOENT` or `ESRCH`.
pub(crate) fn is_gone(err: &io::Error) -> bool {
    [Errno::NOENT, Errno::SRCH]
        .iter()
        .any(|e| err.raw_os_error() == Some(e.raw_os_error()))
}

/// This host's name (`/proc/sys/kernel/hostname`), if it can be read.
#[cfg(feature = "postgres")]
pub(crate) fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Forks; the child runs `child` and exits with its result. The result,
    /// or `None` if the child was still running after 10 s (then killed).
    #[allow(unsafe_code)] // fork(2), waitpid(2), kill(2) and _exit(2)
    fn in_child(child: impl FnOnce() -> bool) -> Option<bool> {
        // SAFETY: the children of these tests only use atomics, make system
        // calls and call _exit(2), so locks held by other threads at the
        // fork are never touched in them.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = child();
            // SAFETY: ends the child without unwinding into the harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let start = std::time::Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: `pid` is this process's child; `status` is a live i32.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                assert!(libc::WIFEXITED(status), "child died: {status:#x}");
                return Some(libc::WEXITSTATUS(status) == 0);
            }
            if start.elapsed() > std::time::Duration::from_secs(10) {
                // SAFETY: kills and reaps the child forked above.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The audited function's own test: a page it marks keeps what is
    /// stored in this process and reads zero in a child made by `fork(2)`,
    /// which is what makes a cached pid safe to trust.
    #[test]
    fn a_marked_page_reads_zero_in_a_forked_child() {
        static PAGE: WipedPage = WipedPage::new();
        assert!(
            wipe_on_fork(&PAGE),
            "MADV_WIPEONFORK needs Linux 4.14 or later"
        );
        PAGE.word.store(0xdead_beef, Ordering::Relaxed);
        let wiped = in_child(|| PAGE.word.load(Ordering::Relaxed) == 0);
        assert_eq!(wiped, Some(true), "the child saw the parent's values");
        assert_eq!(PAGE.word.load(Ordering::Relaxed), 0xdead_beef);
    }

    /// A child forked while a parent thread is inside the very first
    /// [`pid_from`] (between marking the page and storing its ID) caches
    /// and answers its own ID instead of waiting for that thread, which
    /// does not exist in the child.
    #[test]
    fn a_fork_during_the_first_call_on_another_thread_does_not_hang_the_child() {
        static PAGE: WipedPage = WipedPage::new();
        static STATE: AtomicU8 = AtomicU8::new(PAGE_UNTRIED);
        static INSIDE: AtomicBool = AtomicBool::new(false);
        static FORKED: AtomicBool = AtomicBool::new(false);
        fn pausing(page: &'static WipedPage) -> bool {
            let marked = wipe_on_fork(page);
            if !INSIDE.swap(true, Ordering::SeqCst) {
                while !FORKED.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
            }
            marked
        }
        let first = std::thread::spawn(|| pid_from(&PAGE, &STATE, pausing));
        while !INSIDE.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let answered = in_child(|| {
            let own = getpid();
            // Twice: the second answer comes from the child's cache.
            pid_from(&PAGE, &STATE, pausing) == own
                && pid_from(&PAGE, &STATE, pausing) == own
                && PAGE.word.load(Ordering::Relaxed) == own
        });
        FORKED.store(true, Ordering::SeqCst);
        assert_eq!(first.join().unwrap(), std::process::id());
        assert_eq!(
            answered,
            Some(true),
            "None: the child hung; Some(false): it answered another ID"
        );
        assert_eq!(pid_from(&PAGE, &STATE, pausing), std::process::id());
    }
}
