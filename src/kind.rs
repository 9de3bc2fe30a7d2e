//! Lock kinds: which kernel lock a [`LockFile`](crate::LockFile) takes.

use std::fmt;

/// Which kernel lock every acquisition of a [`LockFile`](crate::LockFile)
/// takes; chosen with [`LockOptions::kind`](crate::LockOptions::kind).
///
/// Both kinds belong to the open file description (one `open(2)`): two
/// opens of a path contend even in one process, `dup(2)` and `fork(2)`
/// share the lock, and the last close releases it.
///
/// | | `Flock` | `Ofd` |
/// |---|---|---|
/// | system call | `flock(2)` | `fcntl(F_OFD_SETLK)` |
/// | conflicts with `fcntl`/`lockf` locks of other programs | no (local filesystems) | yes |
/// | refused upgrade | loses the shared lock | keeps the shared lock |
/// | exclusive lock on a read-only descriptor | allowed | refused ([`Error::OfdNeedsWrite`](crate::Error::OfdNeedsWrite)) |
/// | NFS | emulated by the client | arbitrated by the server |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockKind {
    /// `flock(2)` whole-file locks, the default.
    #[default]
    #[doc(alias = "flock")]
    Flock,
    /// Open file description locks (`F_OFD_SETLK`, Linux 3.15+): POSIX
    /// record locks owned by the open file description rather than the
    /// process. They conflict with `fcntl(F_SETLK)` and `lockf(3)` locks
    /// that other programs take.
    #[cfg(feature = "ofd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ofd")))]
    #[doc(alias = "F_OFD_SETLK")]
    #[doc(alias = "F_OFD_SETLKW")]
    #[doc(alias = "fcntl")]
    Ofd,
}

impl LockKind {
    /// The lower-case name used in messages: `"flock"` or `"OFD"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LockKind::Flock => "flock",
            #[cfg(feature = "ofd")]
            LockKind::Ofd => "OFD",
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
