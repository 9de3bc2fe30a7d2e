//! The crate's error type, and [`LockError`], the error that hands a lock
//! handle back.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fs_policy::UnreliableFs;
use crate::holder::Holder;
use crate::mode::FlockMode;

/// Everything that can go wrong while opening, locking or converting a lock.
///
/// Each variant names the lock file's path. The operating-system error, when
/// there is one, is the [`source`](std::error::Error::source), not part of
/// the message; [`Error::os_error`] gives its `errno`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock file is on a filesystem where `flock(2)` does not reliably
    /// serialize processes, and [`RemoteFs::Reject`](crate::RemoteFs::Reject)
    /// is in force.
    #[error(
        "refusing to lock `{}` on {}: {}; move the lock file to a local filesystem (such as /run/lock or $XDG_RUNTIME_DIR) or opt in with RemoteFs::Allow",
        path.display(),
        fs.name,
        fs.reason
    )]
    RemoteFs {
        /// The lock file.
        path: PathBuf,
        /// The filesystem, from the deny-list of [`classify`](crate::classify).
        fs: &'static UnreliableFs,
    },

    /// A non-blocking attempt found the lock held in a conflicting mode.
    #[error(
        "`{}` is locked by someone else; {mode} lock not taken{}",
        path.display(),
        if *shared_lost { "; the shared lock this guard held was released" } else { "" }
    )]
    WouldBlock {
        /// The lock file.
        path: PathBuf,
        /// The mode that was requested.
        mode: FlockMode,
        /// A failed [`try_upgrade`](crate::LockGuard::try_upgrade): the
        /// kernel dropped the shared lock before it found the conflict.
        shared_lost: bool,
    },

    /// The lock file could not be opened or created.
    #[error("cannot open lock file `{}`{}", path.display(), open_hint(path, source))]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The error from `open(2)`.
        #[source]
        source: io::Error,
    },

    /// [`Access::ReadWrite`](crate::Access::ReadWrite) was required and the
    /// file may not be opened for writing.
    #[error("cannot open lock file `{}` for writing; lock it read-only (Access::ReadOnly or Access::PreferWrite), or make it writable by you", path.display())]
    WriteRefused {
        /// The lock file.
        path: PathBuf,
        /// The error from `open(2)`: `EACCES`, `EPERM`, `EROFS` or `ETXTBSY`.
        #[source]
        source: io::Error,
    },

    /// A write through a guard whose descriptor is open read-only, or an
    /// adopted read-only file where [`Access::ReadWrite`](crate::Access::ReadWrite)
    /// is required.
    #[error("cannot write to `{}`: the lock file is open read-only (write access was refused or not requested); open it for writing (LockOptions::access(Access::ReadWrite), or adopt a File opened for writing) to write through the guard", path.display())]
    ReadOnly {
        /// The lock file.
        path: PathBuf,
    },

    /// An exclusive [`LockKind::Ofd`](crate::LockKind) lock was asked for on
    /// a lock file open read-only: `fcntl(2)` write locks need a descriptor
    /// open for writing. Refused before any system call.
    #[error("cannot take an exclusive OFD lock on `{}`: the lock file is open read-only and fcntl write locks need it open for writing; make the file writable by you and open it with Access::PreferWrite or Access::ReadWrite (or adopt a File opened for writing), or take a shared lock", path.display())]
    OfdNeedsWrite {
        /// The lock file.
        path: PathBuf,
    },

    /// Another holder of an OFD lock file waits to upgrade its shared lock,
    /// so waiting for the exclusive lock while holding the shared one would
    /// wait forever (the kernel does not detect deadlocks between OFD
    /// locks). Refused before waiting; the shared lock was released.
    #[error("upgrading the OFD lock on `{}` would deadlock: another holder of the shared lock is waiting to upgrade it too; the shared lock this guard held was released, so that upgrade can finish: lock again", path.display())]
    UpgradeDeadlock {
        /// The lock file.
        path: PathBuf,
    },

    /// [`LockGuard::try_upgrade_in_place`](crate::LockGuard) on a
    /// `flock(2)` lock file: `flock(2)` lets go of the shared lock before
    /// it looks for conflicts, so a refused upgrade cannot keep it. Nothing
    /// was changed: the guard comes back holding its shared lock.
    #[error("cannot upgrade the flock lock on `{}` in place: flock(2) releases the shared lock when an upgrade is refused; use try_upgrade, or open the file with LockKind::Ofd", path.display())]
    NoAtomicUpgrade {
        /// The lock file.
        path: PathBuf,
    },

    /// [`LockOptions::range`](crate::LockOptions::range) asked for bytes
    /// the kind of lock cannot lock: a part of the file under
    /// [`LockKind::Flock`](crate::LockKind::Flock) (`flock(2)` locks whole
    /// files), or a range that ends beyond byte 2^63 - 1.
    #[error("cannot lock {range} of `{}` with {kind} locks: flock(2) locks whole files only and fcntl(2) ranges end by byte 2^63 - 1; use LockKind::Ofd for a part of the file, within that limit", path.display())]
    InvalidRange {
        /// The lock file.
        path: PathBuf,
        /// The range asked for.
        range: crate::ByteRange,
        /// The kind of lock asked for.
        kind: crate::LockKind,
    },

    /// The lock file could not be examined (`statx(2)`, `fstatfs(2)`,
    /// `fcntl(2)`) after it was opened.
    #[error("cannot examine lock file `{}`", path.display())]
    Stat {
        /// The lock file.
        path: PathBuf,
        /// The error from the system call.
        #[source]
        source: io::Error,
    },

    /// Something other than a regular file is at the path.
    #[error("`{}` is a {kind}, not a regular file; choose a path for a dedicated lock file", path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What is there.
        kind: FileKind,
    },

    /// The path is a symbolic link and
    /// [`follow_symlinks`](crate::LockOptions::follow_symlinks) is off.
    #[error("`{}` is a symbolic link; refusing to follow it (use the link's target, or LockOptions::follow_symlinks(true) if the link is trusted)", path.display())]
    Symlink {
        /// The path.
        path: PathBuf,
    },

    /// The path is a symbolic link whose target does not exist; following
    /// it to create the target is refused.
    #[error("`{}` is a symbolic link to a missing file; create the target or remove the link", path.display())]
    DanglingSymlink {
        /// The path.
        path: PathBuf,
    },

    /// `flock(2)` failed for a reason other than contention.
    #[error("cannot take {mode} lock on `{}`", path.display())]
    Flock {
        /// The lock file.
        path: PathBuf,
        /// The mode that was requested.
        mode: FlockMode,
        /// The error from `flock(2)`.
        #[source]
        source: io::Error,
    },

    /// Releasing the lock with `flock(LOCK_UN)` failed.
    #[error("cannot release {}lock on `{}`", mode.map_or(String::new(), |m| format!("{m} ")), path.display())]
    Unlock {
        /// The lock file.
        path: PathBuf,
        /// The mode that was held; `None` for a lock the descriptor arrived
        /// with ([`unlock_inherited`](crate::LockFile::unlock_inherited)).
        mode: Option<FlockMode>,
        /// The error from `flock(2)`.
        #[source]
        source: io::Error,
    },

    /// The lock file was opened by another process that shares this
    /// descriptor through `fork(2)`; changing the lock here would change it
    /// for that process too, so the call was refused and the lock left as
    /// it was.
    #[error("`{}` was opened by process {owner}, not by this process ({current}); refusing to change a lock shared through fork (open the file again in this process instead)", path.display())]
    NotOwner {
        /// The lock file.
        path: PathBuf,
        /// The process that opened the descriptor.
        owner: u32,
        /// The calling process.
        current: u32,
    },

    /// The path cannot name a lock file, or the operation needs a path the
    /// lock file does not have.
    #[error("`{}` is not usable as a lock file path: {reason}", path.display())]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: PathProblem,
    },

    /// The lock file does not exist and
    /// [`create(false)`](crate::LockOptions::create) forbids creating it.
    #[error("lock file `{}` does not exist and LockOptions::create(false) forbids creating it", path.display())]
    Missing {
        /// The lock file.
        path: PathBuf,
    },

    /// The path no longer names the locked file: another process removed it,
    /// or replaced it with a different file, so new lockers would lock
    /// something else.
    #[error("`{}` no longer names the locked file (it was removed or replaced); lock the path again", path.display())]
    PathChanged {
        /// The lock file.
        path: PathBuf,
    },

    /// Removing the lock file with `unlink(2)` failed; the lock is still
    /// held, by the guard that the [`LockError`](crate::LockError) hands back.
    #[error("cannot remove lock file `{}`", path.display())]
    Remove {
        /// The lock file.
        path: PathBuf,
        /// The error from `unlink(2)`.
        #[source]
        source: io::Error,
    },

    /// A timed wait ended at its deadline without the lock.
    #[error(
        "timed out after {} waiting for {mode} lock on `{}`{}{}",
        DisplayDuration(*waited),
        path.display(),
        context_suffix(context.as_deref()),
        timeout_holders_suffix(holders, *waited)
    )]
    Timeout {
        /// The lock file.
        path: PathBuf,
        /// The mode that was requested.
        mode: FlockMode,
        /// How long the call waited.
        waited: Duration,
        /// Who held or waited for the lock 20 ms before the deadline, read
        /// then so that the wait ends at its deadline. On a local
        /// filesystem only locks that can conflict are listed: `flock(2)`
        /// and record locks (OFD, POSIX) ignore each other there, and record
        /// locks conflict only where their bytes overlap. Entries not verified
        /// within the [`Wait::diagnostics`](crate::Wait::diagnostics) budget
        /// are [`PidStatus::Unverified`](crate::PidStatus::Unverified).
        /// The budget does not cut short the reads of `/proc/locks` that
        /// find the entries, so where reading it takes longer than 20 ms
        /// (about 19 000 locks on the machine), the wait ends that much
        /// after its deadline.
        /// Empty if none was visible, `/proc` could not be read, or the wait
        /// was shorter than 20 ms (too short to read `/proc/locks`, which
        /// can take milliseconds, by its deadline; the message then says
        /// that the holders were not read). A wait that the
        /// scheduler runs only after its deadline reads them before it
        /// returns.
        holders: Box<[Holder]>,
        /// The caller's description of what the lock protects, from
        /// [`Wait::context`](crate::Wait::context).
        context: Option<Box<str>>,
    },

    /// A wait was given up through its [`CancelToken`](crate::CancelToken).
    #[error(
        "gave up waiting for {mode} lock on `{}` after {}: cancelled",
        path.display(),
        DisplayDuration(*waited)
    )]
    Cancelled {
        /// The lock file.
        path: PathBuf,
        /// The mode that was requested.
        mode: FlockMode,
        /// How long the call waited.
        waited: Duration,
    },

    /// The holders of a lock could not be listed: the lock file could not be
    /// examined, or a file under `/proc` could not be read.
    #[error("cannot list the holders of `{}`: cannot read `{}`", path.display(), file.display())]
    Holders {
        /// The lock file.
        path: PathBuf,
        /// What could not be read: the lock file itself, `/proc/locks` or
        /// `/proc/self/mountinfo`.
        file: PathBuf,
        /// The error from the system call.
        #[source]
        source: io::Error,
    },
}

/// What [`Error::NotRegularFile`] found at the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileKind {
    /// A directory (lockable only with
    /// [`allow_directory`](crate::LockOptions::allow_directory)).
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix-domain socket.
    Socket,
    /// A character device.
    CharacterDevice,
    /// A block device.
    BlockDevice,
    /// Any other kind of inode.
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "directory",
            FileKind::Symlink => "symbolic link",
            FileKind::Fifo => "FIFO",
            FileKind::Socket => "socket",
            FileKind::CharacterDevice => "character device",
            FileKind::BlockDevice => "block device",
            FileKind::Other => "special file",
        })
    }
}

/// Why [`Error::InvalidPath`] refused a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PathProblem {
    /// The path is empty.
    Empty,
    /// The path contains a NUL byte.
    Nul,
    /// The path ends with `/`, so it can only name a directory.
    TrailingSlash,
    /// The lock file was adopted from a descriptor, so it has no path to
    /// check or remove.
    NoPath,
    /// Path verification was asked for together with following symbolic
    /// links; verification checks the path itself.
    VerifyFollowsSymlinks,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathProblem::Empty => "the path is empty",
            PathProblem::Nul => "the path contains a NUL byte",
            PathProblem::TrailingSlash => "the path ends with `/`, so it can only name a directory",
            PathProblem::NoPath => {
                "the lock file was adopted from a descriptor, so it has no path to check"
            }
            PathProblem::VerifyFollowsSymlinks => {
                "verified locking checks the path itself and cannot follow a symbolic link; turn off LockOptions::follow_symlinks"
            }
        })
    }
}

/// Formats a wait as `250ms` or `1.50s`.
struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d < Duration::from_secs(1) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{:.2}s", d.as_secs_f64())
        }
    }
}

fn context_suffix(context: Option<&str>) -> String {
    context.map_or_else(String::new, |c| format!(" ({c})"))
}

/// The holders a timeout names, for a wait that lasted `waited`: a wait
/// shorter than [`DIAGNOSTICS_LEAD`](crate::wait::DIAGNOSTICS_LEAD) read
/// none, and says so.
fn timeout_holders_suffix(holders: &[Holder], waited: Duration) -> String {
    if !holders.is_empty() {
        let list: Vec<String> = holders.iter().map(ToString::to_string).collect();
        return format!("; {}", list.join(", "));
    }
    if waited < crate::wait::DIAGNOSTICS_LEAD {
        "; holders not read: a wait shorter than 20ms does not read /proc/locks \
         (flockguard::holders lists them)"
            .to_owned()
    } else {
        "; no holder visible in /proc/locks".to_owned()
    }
}

fn open_hint(path: &Path, source: &io::Error) -> &'static str {
    use crate::sys::errno;
    match source.raw_os_error() {
        Some(errno::NOENT) => {
            "; a parent directory is missing (create it, or use LockOptions::create_dirs(true))"
        }
        Some(errno::ACCES | errno::PERM) => {
            "; the lock file must be readable by you, and to create it its directory writable by you (as $XDG_RUNTIME_DIR is)"
        }
        Some(errno::ROFS) => {
            "; the filesystem is read-only and the file does not exist (create it before mounting read-only, or lock elsewhere)"
        }
        Some(errno::MFILE | errno::NFILE) => "; close descriptors or raise RLIMIT_NOFILE",
        Some(errno::NOSPC | errno::DQUOT) => {
            "; free space or inodes on the filesystem, or lock elsewhere"
        }
        Some(errno::NOTDIR) => "; a parent component of the path is a file",
        Some(errno::NAMETOOLONG) => name_too_long_hint(path),
        Some(errno::LOOP) => "; look for a symbolic link loop along the path",
        _ => "",
    }
}

/// Which limit a path that failed with `ENAMETOOLONG` exceeds.
fn name_too_long_hint(path: &Path) -> &'static str {
    use std::os::unix::ffi::OsStrExt;
    // NAME_MAX and PATH_MAX of Linux (PATH_MAX counts the terminating NUL).
    const NAME_MAX: usize = 255;
    const PATH_MAX: usize = 4096;
    if path.iter().any(|c| c.as_bytes().len() > NAME_MAX) {
        "; a path component is longer than 255 bytes (NAME_MAX); choose a shorter file name"
    } else if path.as_os_str().as_bytes().len() >= PATH_MAX {
        "; the path is 4096 bytes or longer (PATH_MAX); use a shorter or relative path"
    } else {
        "; shorten the path"
    }
}

impl Error {
    /// Whether this is [`Error::WouldBlock`]: the lock is held elsewhere.
    pub fn is_would_block(&self) -> bool {
        matches!(self, Error::WouldBlock { .. })
    }

    /// Whether a timed wait ended at its deadline ([`Error::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// Whether a wait was cancelled ([`Error::Cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled { .. })
    }

    /// Whether the filesystem was refused ([`Error::RemoteFs`]).
    pub fn is_remote_fs(&self) -> bool {
        matches!(self, Error::RemoteFs { .. })
    }

    /// The `errno` of the system call that failed, if one did.
    ///
    /// # Examples
    /// ```
    /// let err = flockguard::try_flock::<flockguard::Exclusive>("/nonexistent/dir/x.lock").unwrap_err();
    /// assert_eq!(err.os_error(), Some(2)); // ENOENT
    /// ```
    pub fn os_error(&self) -> Option<i32> {
        self.facts().errno
    }

    /// The lock file path this error is about.
    pub fn path(&self) -> &Path {
        self.facts().path
    }

    /// The holders recorded in an [`Error::Timeout`]; empty for other errors.
    pub fn holders(&self) -> &[Holder] {
        match self {
            Error::Timeout { holders, .. } => holders,
            _ => &[],
        }
    }

    /// The [`io::ErrorKind`] this error converts to.
    pub fn kind(&self) -> io::ErrorKind {
        self.facts().kind
    }

    /// Every variant's facts, stated once per variant.
    fn facts(&self) -> Facts<'_> {
        use io::ErrorKind as K;
        match self {
            Error::RemoteFs { path, .. } => Facts::plain(path, K::Unsupported),
            Error::WouldBlock { path, .. } => Facts {
                path,
                kind: K::WouldBlock,
                errno: Some(crate::sys::errno::WOULDBLOCK),
            },
            Error::Open { path, source }
            | Error::WriteRefused { path, source }
            | Error::Stat { path, source }
            | Error::Flock { path, source, .. }
            | Error::Unlock { path, source, .. }
            | Error::Remove { path, source }
            | Error::Holders { path, source, .. } => Facts::os(path, source),
            Error::ReadOnly { path }
            | Error::OfdNeedsWrite { path }
            | Error::NotOwner { path, .. } => Facts::plain(path, K::PermissionDenied),
            Error::NotRegularFile { path, .. }
            | Error::Symlink { path }
            | Error::InvalidPath { path, .. }
            | Error::InvalidRange { path, .. } => Facts::plain(path, K::InvalidInput),
            Error::DanglingSymlink { path }
            | Error::Missing { path }
            | Error::PathChanged { path } => Facts::plain(path, K::NotFound),
            Error::Timeout { path, .. } => Facts::plain(path, K::TimedOut),
            Error::UpgradeDeadlock { path } => Facts::plain(path, K::Other),
            Error::NoAtomicUpgrade { path } => Facts::plain(path, K::Unsupported),
            // Not Interrupted: std's retry loops would treat it as "try again".
            Error::Cancelled { path, .. } => Facts::plain(path, K::Other),
        }
    }
}

/// What an [`Error`] variant says about itself: the answers of
/// [`Error::path`], [`Error::kind`] and [`Error::os_error`].
struct Facts<'a> {
    path: &'a Path,
    kind: io::ErrorKind,
    errno: Option<i32>,
}

impl<'a> Facts<'a> {
    /// A refusal without a failed system call.
    fn plain(path: &'a Path, kind: io::ErrorKind) -> Self {
        Facts {
            path,
            kind,
            errno: None,
        }
    }

    /// A failed system call: its error decides the kind and the errno.
    fn os(path: &'a Path, source: &io::Error) -> Self {
        Facts {
            path,
            kind: source.kind(),
            errno: source.raw_os_error(),
        }
    }
}

impl From<Error> for io::Error {
    /// Wraps the error, keeping its message and source; the kind is
    /// [`Error::kind`].
    fn from(err: Error) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}

/// A failed operation that hands its lock handle back.
///
/// Every failure that leaves the descriptor usable returns one: the
/// [`LockFile`](crate::LockFile) after a failed acquisition or conversion
/// (open and holding no lock, so the caller can retry without reopening),
/// the guard after a refused [`unlock`](crate::LockGuard::unlock) or
/// [`unlink_and_unlock`](crate::LockGuard::unlink_and_unlock), the caller's
/// `File` after a refused [`adopt`](crate::LockOptions::adopt). Failures that
/// leave nothing usable (the open itself failed) are a plain [`Error`]. The
/// `?` operator converts it to [`Error`] or [`io::Error`], dropping the
/// handle. The predicates a retry loop branches on (`is_would_block`,
/// `is_timeout`, `is_cancelled`) are on both types; for the rest, match
/// `error`.
///
/// # Examples
/// ```
/// use flockguard::{Exclusive, LockFile};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let held = LockFile::open(&path)?.try_lock::<Exclusive>()?;
/// let err = LockFile::open(&path)?.try_lock::<Exclusive>().unwrap_err();
/// assert!(err.is_would_block());
/// drop(held);
/// let _guard = err.into_inner().try_lock::<Exclusive>()?; // same descriptor
/// # Ok::<(), flockguard::Error>(())
/// ```
///
/// The PostgreSQL backend hands its session back in the same shape, with
/// its own error type: `LockError<PgLock, flockguard::pg::Error>`.
#[derive(Debug)]
pub struct LockError<T, E = Error> {
    /// What went wrong.
    pub error: E,
    /// The handle, usable again.
    pub handle: T,
}

impl<T, E> LockError<T, E> {
    pub(crate) fn new(error: E, handle: T) -> Self {
        LockError { error, handle }
    }

    /// The handle, to retry without reopening.
    pub fn into_inner(self) -> T {
        self.handle
    }

    /// Splits into the error and the handle.
    pub fn into_parts(self) -> (E, T) {
        (self.error, self.handle)
    }
}

impl<T> LockError<T> {
    /// Whether the lock is held elsewhere ([`Error::is_would_block`]).
    pub fn is_would_block(&self) -> bool {
        self.error.is_would_block()
    }

    /// Whether a timed wait ended at its deadline ([`Error::is_timeout`]).
    pub fn is_timeout(&self) -> bool {
        self.error.is_timeout()
    }

    /// Whether a wait was cancelled ([`Error::is_cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        self.error.is_cancelled()
    }
}

impl<T, E: fmt::Display> fmt::Display for LockError<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<T: fmt::Debug, E: std::error::Error> std::error::Error for LockError<T, E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl<T> From<LockError<T>> for Error {
    /// Keeps the error; the handle is dropped.
    fn from(err: LockError<T>) -> Error {
        err.error
    }
}

impl<T> From<LockError<T>> for io::Error {
    /// As `From<Error>`; the handle is dropped.
    fn from(err: LockError<T>) -> io::Error {
        err.error.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs_policy::classify;

    fn os(errno: rustix::io::Errno) -> io::Error {
        io::Error::from_raw_os_error(errno.raw_os_error())
    }

    /// One value of every variant, each naming `/run/app.lock`.
    fn every_variant() -> Vec<Error> {
        use rustix::io::Errno;
        let path = || PathBuf::from("/run/app.lock");
        vec![
            Error::RemoteFs {
                path: path(),
                fs: classify(0x6969).unwrap(),
            },
            Error::RemoteFs {
                path: path(),
                fs: classify(0x6573_5546).unwrap(),
            },
            Error::WouldBlock {
                path: path(),
                mode: FlockMode::Exclusive,
                shared_lost: false,
            },
            Error::Open {
                path: path(),
                source: os(Errno::NOENT),
            },
            Error::Open {
                path: path(),
                source: os(Errno::ACCESS),
            },
            Error::Open {
                path: path(),
                source: os(Errno::ROFS),
            },
            Error::Open {
                path: path(),
                source: os(Errno::MFILE),
            },
            Error::Open {
                path: path(),
                source: os(Errno::NOSPC),
            },
            Error::Open {
                path: path(),
                source: os(Errno::NOTDIR),
            },
            Error::Open {
                path: path(),
                source: os(Errno::NAMETOOLONG),
            },
            Error::Open {
                path: path(),
                source: os(Errno::IO),
            },
            Error::Stat {
                path: path(),
                source: os(Errno::IO),
            },
            Error::NotRegularFile {
                path: path(),
                kind: FileKind::Fifo,
            },
            Error::Symlink { path: path() },
            Error::DanglingSymlink { path: path() },
            Error::Flock {
                path: path(),
                mode: FlockMode::Shared,
                source: os(Errno::NOLCK),
            },
            Error::Unlock {
                path: path(),
                mode: Some(FlockMode::Shared),
                source: os(Errno::BADF),
            },
            Error::NotOwner {
                path: path(),
                owner: 100,
                current: 200,
            },
            Error::InvalidPath {
                path: path(),
                reason: PathProblem::TrailingSlash,
            },
            Error::Missing { path: path() },
            Error::PathChanged { path: path() },
            Error::Remove {
                path: path(),
                source: os(Errno::ACCESS),
            },
            Error::Timeout {
                path: path(),
                mode: FlockMode::Exclusive,
                waited: Duration::from_millis(250),
                holders: Box::new([]),
                context: Some("cache entry abc123".into()),
            },
            Error::Cancelled {
                path: path(),
                mode: FlockMode::Shared,
                waited: Duration::from_millis(1500),
            },
            Error::Holders {
                path: path(),
                file: PathBuf::from("/proc/locks"),
                source: os(Errno::ACCESS),
            },
            Error::WriteRefused {
                path: path(),
                source: os(Errno::TXTBSY),
            },
            Error::ReadOnly { path: path() },
            Error::OfdNeedsWrite { path: path() },
            Error::UpgradeDeadlock { path: path() },
            Error::NoAtomicUpgrade { path: path() },
            Error::InvalidRange {
                path: path(),
                range: crate::ByteRange::new(10, 20),
                kind: crate::LockKind::Flock,
            },
            Error::WouldBlock {
                path: path(),
                mode: FlockMode::Exclusive,
                shared_lost: true,
            },
        ]
    }

    #[test]
    fn every_message_is_lower_case_names_the_path_and_has_no_period() {
        for err in every_variant() {
            let msg = err.to_string();
            assert!(msg.contains("`/run/app.lock`"), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
            let first = msg.trim_start_matches('`').chars().next().unwrap();
            assert!(!first.is_uppercase(), "{msg}");
            assert_eq!(err.path(), std::path::Path::new("/run/app.lock"));
        }
    }

    #[test]
    fn a_timeout_without_holders_says_whether_they_were_read() {
        let timeout = |waited| Error::Timeout {
            path: PathBuf::from("/run/app.lock"),
            mode: FlockMode::Exclusive,
            waited,
            holders: Box::new([]),
            context: None,
        };
        let short = timeout(Duration::from_millis(5)).to_string();
        assert!(short.ends_with("; holders not read: a wait shorter than 20ms does not read /proc/locks (flockguard::holders lists them)"), "{short}");
        let long = timeout(Duration::from_millis(250)).to_string();
        assert!(
            long.ends_with("; no holder visible in /proc/locks"),
            "{long}"
        );
    }

    #[test]
    fn the_os_error_is_the_source_not_part_of_the_message() {
        for err in every_variant() {
            let msg = err.to_string();
            assert!(!msg.contains("os error"), "{msg}");
            if let Some(source) = std::error::Error::source(&err) {
                let text = source.to_string();
                let plain = text.split(" (os error").next().unwrap().to_lowercase();
                assert!(
                    !msg.to_lowercase().contains(&plain),
                    "{msg} repeats {plain}"
                );
            }
            let has_source = matches!(
                err,
                Error::Open { .. }
                    | Error::Stat { .. }
                    | Error::Flock { .. }
                    | Error::Unlock { .. }
                    | Error::Remove { .. }
                    | Error::Holders { .. }
                    | Error::WriteRefused { .. }
            );
            assert_eq!(
                std::error::Error::source(&err).is_some(),
                has_source,
                "{err:?}"
            );
        }
    }

    #[test]
    fn messages_name_the_mode_and_the_filesystem() {
        let msgs: Vec<String> = every_variant().iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs[0],
            "refusing to lock `/run/app.lock` on NFS: the Linux NFS client emulates flock with \
             whole-file POSIX locks held by the server's lock manager, which can hang and \
             conflicts with fcntl locks; move the lock file to a local filesystem (such as \
             /run/lock or $XDG_RUNTIME_DIR) or opt in with RemoteFs::Allow"
        );
        assert!(
            msgs[1].contains(" on FUSE: the userspace server decides"),
            "{}",
            msgs[1]
        );
        assert_eq!(
            msgs[2],
            "`/run/app.lock` is locked by someone else; exclusive lock not taken"
        );
        assert!(msgs[3].ends_with(
            "a parent directory is missing (create it, or use LockOptions::create_dirs(true))"
        ));
        assert!(
            msgs[4].ends_with("; the lock file must be readable by you, and to create it its directory writable by you (as $XDG_RUNTIME_DIR is)")
        );
        assert!(msgs[5].contains("create it before mounting read-only"));
        assert!(msgs[6].ends_with("; close descriptors or raise RLIMIT_NOFILE"));
        assert!(msgs[7].ends_with("; free space or inodes on the filesystem, or lock elsewhere"));
        assert!(msgs[8].ends_with("; a parent component of the path is a file"));
        assert!(msgs[9].ends_with("; shorten the path"));
        assert_eq!(msgs[10], "cannot open lock file `/run/app.lock`");
        assert_eq!(msgs[11], "cannot examine lock file `/run/app.lock`");
        assert!(msgs[12].starts_with("`/run/app.lock` is a FIFO, not a regular file"));
        assert!(msgs[13].starts_with("`/run/app.lock` is a symbolic link; refusing to follow it"));
        assert!(msgs[14].starts_with("`/run/app.lock` is a symbolic link to a missing file"));
        assert_eq!(msgs[15], "cannot take shared lock on `/run/app.lock`");
        assert_eq!(msgs[16], "cannot release shared lock on `/run/app.lock`");
        assert!(msgs[17]
            .starts_with("`/run/app.lock` was opened by process 100, not by this process (200)"));
    }

    #[test]
    fn predicates() {
        for err in every_variant() {
            assert_eq!(
                err.is_would_block(),
                matches!(err, Error::WouldBlock { .. })
            );
            assert_eq!(err.is_remote_fs(), matches!(err, Error::RemoteFs { .. }));
            assert_eq!(err.is_timeout(), matches!(err, Error::Timeout { .. }));
            assert_eq!(err.is_cancelled(), matches!(err, Error::Cancelled { .. }));
            let has_errno = std::error::Error::source(&err).is_some() || err.is_would_block();
            assert_eq!(err.os_error().is_some(), has_errno, "{err:?}");
        }
    }

    #[test]
    fn every_variant_states_its_kind_and_errno() {
        use io::ErrorKind as K;
        let access = os(rustix::io::Errno::ACCESS);
        for err in every_variant() {
            let name = format!("{err:?}");
            let name = name.split([' ', '{']).next().unwrap().to_owned();
            let (kind, errno) = match name.as_str() {
                "RemoteFs" => (K::Unsupported, None),
                "WouldBlock" => (K::WouldBlock, Some(crate::sys::errno::WOULDBLOCK)),
                "Open" | "WriteRefused" | "Stat" | "Flock" | "Unlock" | "Remove" | "Holders" => {
                    let source = std::error::Error::source(&err)
                        .and_then(|s| s.downcast_ref::<io::Error>())
                        .expect("an OS error as the source");
                    (source.kind(), source.raw_os_error())
                }
                "ReadOnly" | "OfdNeedsWrite" | "NotOwner" => (K::PermissionDenied, None),
                "NotRegularFile" | "Symlink" | "InvalidPath" | "InvalidRange" => {
                    (K::InvalidInput, None)
                }
                "DanglingSymlink" | "Missing" | "PathChanged" => (K::NotFound, None),
                "Timeout" => (K::TimedOut, None),
                "UpgradeDeadlock" => (K::Other, None),
                "NoAtomicUpgrade" => (K::Unsupported, None),
                "Cancelled" => (K::Other, None),
                other => panic!("no expectation for {other}"),
            };
            assert_eq!(err.kind(), kind, "{err:?}");
            assert_eq!(err.os_error(), errno, "{err:?}");
            assert_eq!(io::Error::from(err).kind(), kind);
        }
        let err = Error::Remove {
            path: PathBuf::from("/run/app.lock"),
            source: access,
        };
        assert_eq!(err.kind(), K::PermissionDenied);
        assert_eq!(
            err.os_error(),
            Some(rustix::io::Errno::ACCESS.raw_os_error())
        );
    }

    #[test]
    fn a_lost_shared_lock_is_said_and_the_handle_comes_back() {
        let msgs: Vec<String> = every_variant().iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs.last().unwrap(),
            "`/run/app.lock` is locked by someone else; exclusive lock not taken; the shared lock this guard held was released"
        );
        let err = LockError::new(every_variant().remove(2), 7u8);
        assert!(err.is_would_block());
        assert_eq!(err.to_string(), msgs[2]);
        let io: io::Error = LockError::new(every_variant().remove(2), 7u8).into();
        assert_eq!(io.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(err.into_inner(), 7);
    }
}
