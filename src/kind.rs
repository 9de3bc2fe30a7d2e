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

/// A byte range of a file: `len` bytes from `start`, or from `start` to
/// the end of the file however it grows.
///
/// The unit of record locks (`fcntl(2)`); [`Holder::range`](crate::Holder)
/// reports the bytes another process holds.
///
/// # Examples
/// ```
/// use flockguard::ByteRange;
/// let header = ByteRange::new(0, 512);
/// assert_eq!(header.end(), Some(512));
/// let tail = ByteRange::from_start(4096);
/// assert_eq!(tail.len(), None);
/// assert!(header.overlaps(&ByteRange::new(511, 1)));
/// assert!(!header.overlaps(&tail));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteRange {
    start: u64,
    /// `0`: to the end of the file, as `fcntl(2)`'s `l_len`.
    len: u64,
}

impl ByteRange {
    /// `len` bytes from `start`; a `len` of 0 means to the end of the file
    /// however it grows, as `l_len` does for `fcntl(2)`.
    pub const fn new(start: u64, len: u64) -> ByteRange {
        ByteRange { start, len }
    }

    /// From `start` to the end of the file, however it grows.
    pub const fn from_start(start: u64) -> ByteRange {
        ByteRange { start, len: 0 }
    }

    /// The whole file.
    pub const WHOLE: ByteRange = ByteRange { start: 0, len: 0 };

    /// The first byte.
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// The number of bytes; `None` for a range to the end of the file.
    #[allow(clippy::len_without_is_empty)] // never empty: a length of 0 means to the end
    pub const fn len(&self) -> Option<u64> {
        if self.len == 0 {
            None
        } else {
            Some(self.len)
        }
    }

    /// The first byte after the range; `None` for a range to the end of
    /// the file (or one whose end does not fit in a `u64`).
    pub const fn end(&self) -> Option<u64> {
        if self.len == 0 {
            None
        } else {
            self.start.checked_add(self.len)
        }
    }

    /// Whether the range runs to the end of the file.
    pub const fn is_to_end(&self) -> bool {
        self.len == 0
    }

    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &ByteRange) -> bool {
        let before = |a: &ByteRange, b: &ByteRange| a.end().is_some_and(|end| end <= b.start);
        !before(self, other) && !before(other, self)
    }
}

impl fmt::Display for ByteRange {
    /// `bytes 10..20`, or `bytes 4096..` for a range to the end.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.end() {
            Some(end) => write!(f, "bytes {}..{}", self.start, end),
            None => write!(f, "bytes {}..", self.start),
        }
    }
}
