//! The crate's error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::fs_policy::classify;
use crate::holders::Holder;
use crate::mode::FlockMode;

/// Everything that can go wrong while opening, locking or converting a lock.
///
/// Each variant names the lock file's path. The operating-system error, when
/// there is one, is the [`source`](std::error::Error::source), not part of
/// the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock file is on a filesystem where `flock(2)` does not reliably
    /// serialize processes, and [`RemoteFs::Reject`](crate::RemoteFs::Reject)
    /// is in force.
    #[error(
        "refusing to lock `{}` on {fs}: {}; move the lock file to a local filesystem (such as /run/lock or $XDG_RUNTIME_DIR) or opt in with RemoteFs::Allow",
        path.display(),
        classify(*magic).map_or("flock is unreliable there", |f| f.reason)
    )]
    RemoteFs {
        /// The lock file.
        path: PathBuf,
        /// The filesystem's short name, such as `"NFS"` or `"FUSE"`.
        fs: &'static str,
        /// The filesystem's `statfs(2)` magic.
        magic: u64,
    },

    /// A non-blocking attempt found the lock held in a conflicting mode.
    #[error("`{}` is locked by someone else; {mode} lock not taken", path.display())]
    WouldBlock {
        /// The lock file.
        path: PathBuf,
        /// The mode that was requested.
        mode: FlockMode,
    },

    /// The lock file could not be opened or created.
    #[error("cannot open lock file `{}`{}", path.display(), open_hint(source))]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The error from `open(2)`.
        #[source]
        source: io::Error,
    },

    /// The lock file could not be examined (`fstat(2)`, `fstatfs(2)`,
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
        /// What is there: `"directory"`, `"FIFO"`, `"socket"`, …
        kind: &'static str,
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
    #[error("cannot unlock `{}`", path.display())]
    Unlock {
        /// The lock file.
        path: PathBuf,
        /// The error from `flock(2)`.
        #[source]
        source: io::Error,
    },

    /// The lock was taken by another process that shares this descriptor
    /// through `fork(2)`; changing it here would change it for that process
    /// too, so the call was refused and the lock left as it was.
    #[error("`{}` was locked by process {owner}, not by this process ({current}); refusing to change a lock shared through fork (open the file again in this process instead)", path.display())]
    NotOwner {
        /// The lock file.
        path: PathBuf,
        /// The process that opened the descriptor.
        owner: u32,
        /// The calling process.
        current: u32,
    },

    /// A timed wait ended at its deadline without the lock.
    #[error(
        "timed out after {} waiting for {mode} lock on `{}`{}{}",
        DisplayDuration(*waited),
        path.display(),
        context_suffix(context.as_deref()),
        holders_suffix(holders)
    )]
    Timeout {
        /// The lock file.
        path: PathBuf,
        /// The mode that was requested.
        mode: FlockMode,
        /// How long the call waited.
        waited: Duration,
        /// Who held or waited for the lock when the wait ended (empty if
        /// none was visible or `/proc` could not be read).
        holders: Vec<Holder>,
        /// The caller's description of what the lock protects, from
        /// [`Wait::context`](crate::Wait::context).
        context: Option<String>,
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

/// Formats a wait as `250ms` or `1.50s`.
struct DisplayDuration(Duration);

impl std::fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

fn holders_suffix(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "; no holder visible in /proc/locks".to_owned();
    }
    let list: Vec<String> = holders.iter().map(ToString::to_string).collect();
    format!("; {}", list.join(", "))
}

fn open_hint(source: &io::Error) -> &'static str {
    use rustix::io::Errno;
    let Some(code) = source.raw_os_error() else {
        return "";
    };
    let errno = Errno::from_raw_os_error(code);
    if errno == Errno::NOENT {
        "; a parent directory is missing (create it, or use LockOptions::create_dirs(true))"
    } else if errno == Errno::ACCESS || errno == Errno::PERM {
        "; permission denied (lock in a directory you can write to, such as $XDG_RUNTIME_DIR)"
    } else if errno == Errno::ROFS {
        "; the filesystem is read-only and the file does not exist (create it before mounting read-only, or lock elsewhere)"
    } else if errno == Errno::MFILE || errno == Errno::NFILE {
        "; too many open files (close descriptors or raise RLIMIT_NOFILE)"
    } else if errno == Errno::NOSPC || errno == Errno::DQUOT {
        "; no space or inodes left on the filesystem (free some, or lock elsewhere)"
    } else if errno == Errno::NOTDIR {
        "; a component of the path is not a directory"
    } else if errno == Errno::NAMETOOLONG {
        "; the name or path is too long"
    } else {
        ""
    }
}

impl Error {
    /// Whether this is [`Error::WouldBlock`]: the lock is held elsewhere.
    pub fn is_would_block(&self) -> bool {
        matches!(self, Error::WouldBlock { .. })
    }

    /// Whether the filesystem was refused ([`Error::RemoteFs`]).
    pub fn is_remote_fs(&self) -> bool {
        matches!(self, Error::RemoteFs { .. })
    }

    /// The lock file path this error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Error::RemoteFs { path, .. }
            | Error::WouldBlock { path, .. }
            | Error::Open { path, .. }
            | Error::Stat { path, .. }
            | Error::NotRegularFile { path, .. }
            | Error::Symlink { path }
            | Error::DanglingSymlink { path }
            | Error::Flock { path, .. }
            | Error::Unlock { path, .. }
            | Error::NotOwner { path, .. }
            | Error::Timeout { path, .. }
            | Error::Cancelled { path, .. }
            | Error::Holders { path, .. } => path,
        }
    }

    /// The [`io::ErrorKind`] this error converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::RemoteFs { .. } => io::ErrorKind::Unsupported,
            Error::WouldBlock { .. } => io::ErrorKind::WouldBlock,
            Error::Open { source, .. }
            | Error::Stat { source, .. }
            | Error::Flock { source, .. }
            | Error::Unlock { source, .. } => source.kind(),
            Error::NotRegularFile { .. } | Error::Symlink { .. } => io::ErrorKind::InvalidInput,
            Error::DanglingSymlink { .. } => io::ErrorKind::NotFound,
            Error::NotOwner { .. } => io::ErrorKind::PermissionDenied,
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            Error::Cancelled { .. } => io::ErrorKind::Interrupted,
            Error::Holders { source, .. } => source.kind(),
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

/// Predicates for the waiting and diagnostics errors.
impl Error {
    /// Whether a timed wait ended at its deadline ([`Error::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// Whether a wait was cancelled ([`Error::Cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled { .. })
    }

    /// The holders recorded in an [`Error::Timeout`]; empty for other errors.
    pub fn holders(&self) -> &[Holder] {
        match self {
            Error::Timeout { holders, .. } => holders,
            _ => &[],
        }
    }
}
