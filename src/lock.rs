//! The core types and every method on them: [`LockOptions`] opens a
//! [`LockFile`], which a way of waiting turns into a [`LockGuard<M>`], which
//! converts between modes and unlocks back into the [`LockFile`].
//!
//! Opening, waiting and holder diagnostics are services below this module
//! (`open`, `wait`, `holders`); the guard↔file pair is the only cycle.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, LockError, PathProblem};
use crate::fs_policy::classify;
use crate::holder::{Holder, HolderKind};
use crate::holders;
use crate::kind::{ByteRange, LockKind};
use crate::mode::{Exclusive, FlockMode, Mode, Shared};
use crate::open::{self, Access, OpenSpec, Opened, RemoteFs};
use crate::sys::{self, OnConflict};
use crate::wait::{self, Deadline, Ended, Stop, Wait};

/// Attempts of a non-blocking verified acquisition whose file keeps being
/// removed before it gives up with [`Error::PathChanged`].
const TRY_VERIFY_RETRIES: u32 = 16;

/// Options for opening lock files: the one configurable entry point from a
/// path.
///
/// The defaults: create the file (mode `0o666` before the umask) but not
/// its directories, refuse symbolic links, directories and unreliable
/// filesystems, open read-write when allowed ([`Access::PreferWrite`]), and
/// do not re-check the path after locking.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use flockguard::{Access, Exclusive, LockOptions, RemoteFs};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("sub/app.lock");
/// let guard = LockOptions::new()
///     .create_dirs(true)
///     .permissions(0o600)
///     .access(Access::ReadOnly)
///     .remote_fs(RemoteFs::Reject)
///     .open(&path)?
///     .lock_timeout::<Exclusive>(Duration::from_secs(5))?;
/// # drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockOptions {
    spec: OpenSpec,
    verify: bool,
    kind: LockKind,
    range: ByteRange,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl LockOptions {
    /// The default options.
    pub const fn new() -> Self {
        LockOptions {
            spec: OpenSpec::DEFAULT,
            verify: false,
            kind: LockKind::Flock,
            range: ByteRange::WHOLE,
        }
    }

    /// Which bytes every acquisition locks (default
    /// [`ByteRange::WHOLE`]); ranges other than the whole file need
    /// `LockKind::Ofd`.
    ///
    /// Each [`LockFile`] is its own open file description and locks one
    /// range, so its guard never releases bytes another guard relies on:
    /// two ranges of one file are two `LockFile`s, which contend exactly
    /// where the ranges overlap, in one process as across processes.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "ofd")] {
    /// use flockguard::{ByteRange, Exclusive, LockKind, LockOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.db");
    /// let mut header = LockOptions::new();
    /// header.kind(LockKind::Ofd).range(ByteRange::new(0, 512));
    /// let mut body = header.clone();
    /// body.range(ByteRange::from_start(512));
    /// let a = header.open(&path)?.try_lock::<Exclusive>()?;
    /// let b = body.open(&path)?.try_lock::<Exclusive>()?; // disjoint: both held
    /// assert!(header.open(&path)?.try_lock::<Exclusive>().unwrap_err().is_would_block());
    /// # drop((a, b));
    /// # }
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn range(&mut self, range: ByteRange) -> &mut Self {
        self.range = range;
        self
    }

    /// Which kernel lock every acquisition takes (default
    /// [`LockKind::Flock`]).
    ///
    /// `LockKind::Ofd` (feature `ofd`) takes whole-file open file
    /// description locks, which conflict with the `fcntl(2)` and `lockf(3)`
    /// locks of other programs; every way to acquire, wait, convert and
    /// release works the same for both kinds. On NFS, OFD locks are
    /// arbitrated by the server: under [`RemoteFs::Reject`] an NFS mount is
    /// accepted when its `local_lock` option leaves them to the server
    /// (`none`, the default, or `flock`) and refused with
    /// [`Error::RemoteFs`] naming the option otherwise.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "ofd")] {
    /// use flockguard::{Exclusive, LockKind, LockOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = LockOptions::new()
    ///     .kind(LockKind::Ofd)
    ///     .open(&path)?
    ///     .try_lock::<Exclusive>()?;
    /// # drop(guard);
    /// # }
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    #[doc(alias = "F_OFD_SETLK")]
    #[doc(alias = "F_OFD_SETLKW")]
    pub fn kind(&mut self, kind: LockKind) -> &mut Self {
        self.kind = kind;
        self.spec.record_locks = kind != LockKind::Flock;
        self
    }

    /// Whether to refuse filesystems where `flock(2)` is unreliable
    /// (default [`RemoteFs::Reject`]).
    pub fn remote_fs(&mut self, policy: RemoteFs) -> &mut Self {
        self.spec.remote_fs = policy;
        self
    }

    /// Permission bits for a file this call creates, before the umask
    /// (default `0o666`).
    pub fn permissions(&mut self, mode: u32) -> &mut Self {
        self.spec.permissions = mode & 0o7777;
        self
    }

    /// Whether a symbolic link at the path is followed (default `false`:
    /// refused with [`Error::Symlink`]).
    pub fn follow_symlinks(&mut self, follow: bool) -> &mut Self {
        self.spec.follow_symlinks = follow;
        self
    }

    /// Whether a missing file is created (default `true`; `false` gives
    /// [`Error::Missing`]).
    pub fn create(&mut self, create: bool) -> &mut Self {
        self.spec.create = create;
        self
    }

    /// Whether missing parent directories are created (default `false`).
    pub fn create_dirs(&mut self, create_dirs: bool) -> &mut Self {
        self.spec.create_dirs = create_dirs;
        self
    }

    /// Whether a directory may be locked, as `flock(1)` allows (default
    /// `false`).
    pub fn allow_directory(&mut self, allow: bool) -> &mut Self {
        self.spec.allow_directory = allow;
        self
    }

    /// How the file is opened: for writing or read-only (default
    /// [`Access::PreferWrite`]).
    pub fn access(&mut self, access: Access) -> &mut Self {
        self.spec.access = access;
        self
    }

    /// Whether every acquisition re-checks, after locking, that the path
    /// still names the locked file, and reopens and retries when it does
    /// not (default `false`).
    ///
    /// Lock files that are removed while others may be opening them are
    /// safe only if every party removes them with
    /// [`LockGuard::unlink_and_unlock`] and acquires with verification on:
    /// a holder that verified the path cannot lose it, since the only way
    /// to remove the file is to hold its lock. Verification refuses
    /// [`follow_symlinks`](Self::follow_symlinks) with
    /// [`Error::InvalidPath`].
    ///
    /// A path whose file keeps being replaced is retried within the wait's
    /// limits: a non-blocking attempt gives up with [`Error::PathChanged`],
    /// a timed wait ends at its deadline with [`Error::Timeout`], an
    /// unbounded one keeps retrying. After a few reopenings in a row, each
    /// waits a millisecond first, so a path replaced in a loop is not
    /// retried in a busy loop.
    pub fn verify_path(&mut self, verify: bool) -> &mut Self {
        self.verify = verify;
        self
    }

    /// Opens (or creates) the lock file, checks what it is and where it
    /// lives, and returns it holding no lock.
    ///
    /// # Errors
    /// [`Error::InvalidRange`] for a byte range the kind cannot lock
    /// (before anything is opened), [`Error::InvalidPath`], [`Error::Open`]
    /// (with a hint for the common `errno`s), [`Error::WriteRefused`],
    /// [`Error::Missing`], [`Error::Symlink`], [`Error::DanglingSymlink`],
    /// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`]. A
    /// file this call created is removed again when it is refused.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let file = LockOptions::new().verify_path(true).open(&path)?;
    /// let guard = file.try_lock::<Exclusive>()?;
    /// guard.unlink_and_unlock()?;
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [open(2)](https://man7.org/linux/man-pages/man2/open.2.html)
    /// - [statx(2)](https://man7.org/linux/man-pages/man2/statx.2.html)
    /// - [statfs(2)](https://man7.org/linux/man-pages/man2/statfs.2.html)
    #[inline(always)]
    pub fn open(&self, path: impl AsRef<Path>) -> Result<LockFile, Error> {
        let path = path.as_ref();
        if self.verify && self.spec.follow_symlinks {
            return Err(Error::InvalidPath {
                path: path.into(),
                reason: PathProblem::VerifyFollowsSymlinks,
            });
        }
        self.check_range(path)?;
        let opened = open::open(path, &self.spec)?;
        let origin = Origin {
            path: path.into(),
            reopen: self.verify.then(|| Box::new(self.spec)),
        };
        Ok(LockFile::new(opened, Some(origin), self.kind, self.range))
    }

    /// Refuses a byte range the kind cannot lock, before anything is
    /// opened.
    fn check_range(&self, path: &Path) -> Result<(), Error> {
        let whole = self.range == ByteRange::WHOLE;
        // fcntl(2) takes the start and the length as off_t, and its last
        // byte must be at most 2^63 - 1: the first byte after the range at
        // most 2^63.
        const LAST: u64 = i64::MAX as u64;
        let start = self.range.start();
        let fits = start <= LAST
            && match self.range.len() {
                None => true,
                Some(len) => len <= LAST && start + len - 1 <= LAST,
            };
        if (whole || self.kind != LockKind::Flock) && fits {
            return Ok(());
        }
        Err(Error::InvalidRange {
            path: path.into(),
            range: self.range,
            kind: self.kind,
        })
    }

    /// Takes an open [`File`] as a lock file, applying the same type and
    /// filesystem checks as [`open`](Self::open) and setting `FD_CLOEXEC`.
    ///
    /// A lock taken through it belongs to the file's open file description,
    /// which the caller's duplicates share; the guard releases it on drop
    /// for all of them. A lock the descriptor arrived with (a shell's
    /// `9>` descriptor under `flock 9`) stays held when an acquisition
    /// fails; see [`LockFile`].
    ///
    /// The descriptor keeps its access mode; under
    /// [`Access::ReadWrite`] a read-only one is refused with
    /// [`Error::ReadOnly`].
    ///
    /// # Errors
    /// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::ReadOnly`],
    /// [`Error::Stat`], [`Error::InvalidRange`]; each gives the `File`
    /// back.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockOptions, RemoteFs};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let file = std::fs::File::create(&path)?;
    /// let lock = LockOptions::new().remote_fs(RemoteFs::Allow).adopt(file)?;
    /// let guard = lock.try_lock::<Exclusive>()?;
    /// # drop(guard);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt(&self, file: File) -> Result<LockFile, LockError<File>> {
        match open::adopt(&file, &self.spec) {
            Ok(writable) => match self.check_range(&open::display_path(&file)) {
                Ok(()) => Ok(LockFile::new(
                    Opened { file, writable },
                    None,
                    self.kind,
                    self.range,
                )),
                Err(error) => Err(LockError::new(error, file)),
            },
            Err(error) => Err(LockError::new(error, file)),
        }
    }
}

/// A held upgrade ticket (see [`LockFile::upgrade_ticket`]). Dropping it
/// releases the ticket with `LOCK_UN` before the close: a child forked
/// while the ticket was held keeps a copy of its open file description,
/// and a close alone would leave the ticket held, refusing every later
/// upgrade of the file with [`Error::UpgradeDeadlock`] until the child
/// exits. Dropped in such a child, it only closes.
pub(crate) struct Ticket {
    fd: OwnedFd,
    /// The process that took the ticket.
    owner: u32,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if sys::current_pid() == self.owner {
            // Errors cannot be reported here; the close follows anyway.
            let _ = sys::funlock(self.fd.as_fd());
        }
    }
}

/// An open lock file that holds no lock.
///
/// Made from a path by [`LockFile::open`] or [`LockOptions::open`], or
/// from an open [`File`] by [`LockOptions::adopt`].
///
/// Each `LockFile` is its own open file description, so two of them contend
/// even within one process. Every acquisition consumes it and returns a
/// [`LockGuard`]; a failure hands it back in a [`LockError`], open and
/// holding no lock it took. A failed acquisition (blocking or async)
/// leaves a lock an adopted descriptor arrived with as it was, except
/// that `flock(2)` itself drops a lock of the other mode when the
/// conversion to the requested one is refused;
/// [`unlock_inherited`](Self::unlock_inherited) releases it.
///
/// | method | waits | mode |
/// |---|---|---|
/// | [`try_lock`](Self::try_lock) | never | compile time |
/// | [`lock`](Self::lock) | in `flock(2)`, without limit | compile time |
/// | [`lock_timeout`](Self::lock_timeout) | at most a [`Duration`] | compile time |
/// | [`lock_until`](Self::lock_until) | until an [`Instant`] | compile time |
/// | [`lock_with`](Self::lock_with) | as a [`Wait`] says (notice, cancel token, context) | compile time |
/// | [`lock_any`](Self::lock_any) | as a [`Wait`] says | run time ([`FlockMode`]) |
#[must_use = "a LockFile holds no lock until try_lock or lock is called"]
pub struct LockFile {
    file: File,
    /// The process that opened the descriptor, and so owns its locks.
    owner: u32,
    writable: bool,
    /// The kernel lock every acquisition takes.
    kind: LockKind,
    /// The bytes every acquisition locks when not the whole file; boxed
    /// to keep [`LockError`] small.
    part: Option<Box<ByteRange>>,
    /// `None` for an adopted file.
    origin: Option<Origin>,
}

/// Where a [`LockFile`] was opened from.
#[derive(Debug)]
struct Origin {
    path: Box<Path>,
    /// How to open the path again after a verification failure; `None`
    /// unless [`LockOptions::verify_path`] is on. Boxed to keep
    /// [`LockError`] small.
    reopen: Option<Box<OpenSpec>>,
}

impl LockFile {
    #[inline(always)]
    fn new(opened: Opened, origin: Option<Origin>, kind: LockKind, range: ByteRange) -> Self {
        LockFile {
            file: opened.file,
            owner: sys::current_pid(),
            writable: opened.writable,
            kind,
            part: (range != ByteRange::WHOLE).then(|| Box::new(range)),
            origin,
        }
    }

    /// Opens (or creates) `path` with the default [`LockOptions`].
    ///
    /// # Errors
    /// [`Error::InvalidPath`], [`Error::Open`], [`Error::Symlink`],
    /// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`]: those
    /// of [`LockOptions::open`] that its defaults allow.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockFile};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = LockFile::open(&path)?.lock::<Exclusive>()?;
    /// # drop(guard);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    #[inline(always)]
    pub fn open(path: impl AsRef<Path>) -> Result<LockFile, Error> {
        LockOptions::new().open(path)
    }

    /// The same call as `LockOptions::new().adopt(file)`, which is the one
    /// way to adopt a `File`.
    #[deprecated(
        since = "0.3.0",
        note = "use LockOptions::new().adopt(file), the one way to adopt a File"
    )]
    #[doc(hidden)]
    pub fn from_file(file: File) -> Result<LockFile, LockError<File>> {
        LockOptions::new().adopt(file)
    }

    /// Takes the lock if no one holds it in a conflicting mode; never waits.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] on contention ([`LockError::is_would_block`]),
    /// [`Error::NotOwner`] in a forked child, [`Error::Flock`],
    /// [`Error::OfdNeedsWrite`] for an exclusive `LockKind::Ofd` lock on a
    /// read-only descriptor.
    /// Under [`LockOptions::verify_path`], also [`Error::PathChanged`] when the
    /// file keeps being replaced, [`Error::Stat`] when the
    /// path cannot be examined and, when the file was replaced and the path
    /// is opened again, [`Error::Open`], [`Error::Missing`],
    /// [`Error::WriteRefused`], [`Error::Symlink`],
    /// [`Error::NotRegularFile`] or [`Error::RemoteFs`].
    /// Each gives the file back.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockFile, Shared};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let writer = LockFile::open(&path)?.try_lock::<Exclusive>()?;
    /// let err = LockFile::open(&path)?.try_lock::<Shared>().unwrap_err();
    /// assert!(err.is_would_block());
    /// # drop(writer);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    #[doc(alias = "LOCK_NB")]
    #[doc(alias = "try_lock_exclusive")]
    #[doc(alias = "try_lock_shared")]
    #[inline(always)]
    pub fn try_lock<M: Mode>(self) -> Result<LockGuard<M>, LockError<LockFile>> {
        if self.is_owner() && !self.verifies() && !self.needs_write(M::MODE) {
            // The common case, kept in the caller's frame.
            return match self.lock_kernel(M::MODE, OnConflict::Fail) {
                Ok(()) => Ok(LockGuard::new(self)),
                Err(err) => Err(self.flock_refused(M::MODE, err)),
            };
        }
        self.try_lock_checked(M::MODE).map(LockGuard::new)
    }

    /// [`try_lock`](Self::try_lock) in a forked child or under path
    /// verification.
    #[cold]
    #[inline(never)]
    fn try_lock_checked(self, mode: FlockMode) -> Result<LockFile, LockError<LockFile>> {
        self.acquire(mode, Wait::none())
    }

    /// Takes the lock, waiting in `flock(2)` as long as it takes.
    ///
    /// # Errors
    /// [`Error::NotOwner`] in a forked child, [`Error::Flock`] (for
    /// example `EBADF` for a descriptor opened with `O_PATH`, or `ENOLCK`),
    /// [`Error::OfdNeedsWrite`] for an exclusive `LockKind::Ofd` lock on a
    /// read-only descriptor.
    /// Under [`LockOptions::verify_path`], also [`Error::Stat`] when the
    /// path cannot be examined and, when the file was replaced and the path
    /// is opened again, [`Error::Open`], [`Error::Missing`],
    /// [`Error::WriteRefused`], [`Error::Symlink`],
    /// [`Error::NotRegularFile`] or [`Error::RemoteFs`]. Each gives the file back.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{LockFile, Shared};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let reader = LockFile::open(&path)?.lock::<Shared>()?;
    /// # drop(reader);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    #[doc(alias = "LOCK_EX")]
    #[doc(alias = "LOCK_SH")]
    #[doc(alias = "lock_exclusive")]
    #[doc(alias = "lock_shared")]
    pub fn lock<M: Mode>(self) -> Result<LockGuard<M>, LockError<LockFile>> {
        self.acquire(M::MODE, Wait::forever()).map(LockGuard::new)
    }

    /// Takes the lock, waiting at most `timeout`; wakes when a holder closes
    /// the file.
    ///
    /// # Errors
    /// [`Error::Timeout`] naming the holders ([`LockError::is_timeout`]),
    /// [`Error::NotOwner`], [`Error::Flock`], [`Error::OfdNeedsWrite`].
    /// Under [`LockOptions::verify_path`], also [`Error::Stat`] when the
    /// path cannot be examined and, when the file was replaced and the path
    /// is opened again, [`Error::Open`], [`Error::Missing`],
    /// [`Error::WriteRefused`], [`Error::Symlink`],
    /// [`Error::NotRegularFile`] or [`Error::RemoteFs`]. Each gives the file back.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use flockguard::{Exclusive, LockFile};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let held = LockFile::open(&path)?.lock::<Exclusive>()?;
    /// let err = LockFile::open(&path)?
    ///     .lock_timeout::<Exclusive>(Duration::from_millis(10))
    ///     .unwrap_err();
    /// assert!(err.is_timeout());
    /// drop(held);
    /// let _guard = err.into_inner().lock_timeout::<Exclusive>(Duration::from_secs(1))?;
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    #[doc(alias = "try_lock_for")]
    pub fn lock_timeout<M: Mode>(
        self,
        timeout: Duration,
    ) -> Result<LockGuard<M>, LockError<LockFile>> {
        self.acquire(M::MODE, Wait::timeout(timeout))
            .map(LockGuard::new)
    }

    /// Takes the lock, waiting until `deadline` at the latest.
    ///
    /// # Errors
    /// As [`lock_timeout`](Self::lock_timeout).
    ///
    /// # Examples
    /// ```
    /// use std::time::{Duration, Instant};
    /// use flockguard::{Exclusive, LockFile};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let deadline = Instant::now() + Duration::from_secs(2);
    /// let first = LockFile::open(&path)?.lock_until::<Exclusive>(deadline)?;
    /// # drop(first);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    #[doc(alias = "try_lock_until")]
    pub fn lock_until<M: Mode>(
        self,
        deadline: Instant,
    ) -> Result<LockGuard<M>, LockError<LockFile>> {
        self.acquire(M::MODE, Wait::until(deadline))
            .map(LockGuard::new)
    }

    /// Takes the lock, waiting as `wait` says: not at all, in the kernel,
    /// until a deadline, with a notice before waiting, a [`CancelToken`](crate::CancelToken) and
    /// a description for the timeout message.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] ([`Wait::none`]), [`Error::Timeout`],
    /// [`Error::Cancelled`], [`Error::NotOwner`], [`Error::Flock`],
    /// [`Error::OfdNeedsWrite`].
    /// Under [`LockOptions::verify_path`], also [`Error::PathChanged`] when the
    /// file keeps being replaced ([`Wait::none`]), [`Error::Stat`] when the
    /// path cannot be examined and, when the file was replaced and the path
    /// is opened again, [`Error::Open`], [`Error::Missing`],
    /// [`Error::WriteRefused`], [`Error::Symlink`],
    /// [`Error::NotRegularFile`] or [`Error::RemoteFs`].
    /// Each gives the file back.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use flockguard::{CancelToken, Exclusive, LockFile, Wait};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let held = LockFile::open(&path)?.lock::<Exclusive>()?;
    /// let token = CancelToken::new();
    /// token.cancel(); // from any thread, at any time
    /// let err = LockFile::open(&path)?
    ///     .lock_with::<Exclusive>(Wait::forever().cancel(token))
    ///     .unwrap_err();
    /// assert!(err.error.is_cancelled());
    /// # drop(held);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn lock_with<M: Mode>(self, wait: Wait<'_>) -> Result<LockGuard<M>, LockError<LockFile>> {
        self.acquire(M::MODE, wait).map(LockGuard::new)
    }

    /// Takes the lock in a mode chosen at run time, waiting as `wait` says.
    ///
    /// # Errors
    /// As [`lock_with`](Self::lock_with).
    ///
    /// # Examples
    /// ```
    /// use flockguard::{AnyGuard, FlockMode, LockFile, Wait};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let mode = if std::env::args().count() > 99 { FlockMode::Exclusive } else { FlockMode::Shared };
    /// let guard = LockFile::open(&path)?.lock_any(mode, Wait::none())?;
    /// assert!(matches!(guard, AnyGuard::Shared(_)));
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn lock_any(
        self,
        mode: FlockMode,
        wait: Wait<'_>,
    ) -> Result<AnyGuard, LockError<LockFile>> {
        let file = self.acquire(mode, wait)?;
        Ok(match mode {
            FlockMode::Exclusive => AnyGuard::Exclusive(LockGuard::new(file)),
            FlockMode::Shared => AnyGuard::Shared(LockGuard::new(file)),
        })
    }

    /// Releases a lock this descriptor arrived with: a file adopted with
    /// [`LockOptions::adopt`] may hold a lock taken before it was passed
    /// in, as with `flock -u 9` in a shell script. Releases it for every
    /// descriptor that shares the open file description.
    ///
    /// # Errors
    /// [`Error::NotOwner`] in a forked child; [`Error::Unlock`] if
    /// `flock(2)` fails.
    ///
    /// # Examples
    /// ```
    /// use std::os::fd::AsFd;
    /// use flockguard::{try_flock, Exclusive, LockFile, LockOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = LockFile::open(&path)?.lock::<Exclusive>()?;
    /// // A duplicate shares the open file description, and so the lock.
    /// let dup = guard.as_fd().try_clone_to_owned()?;
    /// let file = LockOptions::new().adopt(std::fs::File::from(dup))?;
    /// file.unlock_inherited()?;
    /// assert!(try_flock::<Exclusive>(&path).is_ok()); // released for both
    /// # drop(guard);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "LOCK_UN")]
    pub fn unlock_inherited(&self) -> Result<(), Error> {
        self.check_owner()?;
        self.unlock_kernel().map_err(|source| Error::Unlock {
            path: self.error_path(),
            mode: None,
            source,
        })
    }

    /// Lists the processes that hold or wait for a `flock(2)` lock on this
    /// open file's inode; see [`holders`](crate::holders()).
    ///
    /// # Errors
    /// [`Error::Holders`] if `statx(2)` fails or `/proc` cannot be read.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockFile};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let held = LockFile::open(&path)?.lock::<Exclusive>()?;
    /// let other = LockFile::open(&path)?;
    /// assert_eq!(other.holders()?[0].pid, std::process::id());
    /// # drop(held);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn holders(&self) -> Result<Vec<Holder>, Error> {
        let path = self.error_path();
        let id = sys::statx_fd(self.as_fd()).map_err(|source| Error::Holders {
            path: path.clone(),
            file: path.clone(),
            source,
        })?;
        holders::holders_of(id, &path)
    }

    /// [`holders`](Self::holders) within `budget`, for messages: an empty
    /// list when the file cannot be examined.
    /// On a local filesystem, only the holders whose locks can conflict
    /// with this file's: `flock(2)` locks and record locks (OFD, POSIX)
    /// ignore each other there, and a record lock only conflicts where the
    /// ranges overlap. Elsewhere (NFS emulates `flock` with record locks)
    /// every holder is kept.
    pub(crate) fn holders_within(&self, budget: Duration) -> Vec<Holder> {
        let path = self.error_path();
        let mut holders = sys::statx_fd(self.as_fd())
            .ok()
            .and_then(|id| holders::holders_within(id, &path, budget).ok())
            .unwrap_or_default();
        let local = sys::fs_magic(self.as_fd()).is_ok_and(|magic| classify(magic).is_none());
        if local {
            holders.retain(|holder| self.may_conflict_with(holder));
        }
        holders
    }

    /// Whether `holder`'s lock can keep this file's from being granted on
    /// a local filesystem.
    fn may_conflict_with(&self, holder: &Holder) -> bool {
        let flock = self.kind == LockKind::Flock;
        if flock || holder.kind == HolderKind::Flock {
            return flock && holder.kind == HolderKind::Flock;
        }
        holder
            .range
            .unwrap_or(ByteRange::WHOLE)
            .overlaps(&self.range())
    }

    /// The path the file was opened from; `None` for an adopted file.
    pub fn path(&self) -> Option<&Path> {
        self.origin.as_ref().map(|origin| &*origin.path)
    }

    /// The open file, for `metadata()` and other reads that take no lock.
    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// Whether the descriptor is open for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The path for messages: the one given, or what the kernel reports.
    pub(crate) fn error_path(&self) -> PathBuf {
        match self.path() {
            Some(path) => path.to_path_buf(),
            None => open::display_path(&self.file),
        }
    }

    /// The error for a failed `flock(2)` in `mode`.
    pub(crate) fn flock_error(&self, mode: FlockMode, source: io::Error) -> Error {
        if sys::is_contention(&source) {
            Error::WouldBlock {
                path: self.error_path(),
                mode,
                shared_lost: false,
            }
        } else {
            Error::Flock {
                path: self.error_path(),
                mode,
                source,
            }
        }
    }

    /// Refuses to change the lock from a process other than the one that
    /// opened the descriptor.
    #[inline]
    pub(crate) fn check_owner(&self) -> Result<(), Error> {
        if self.is_owner() {
            return Ok(());
        }
        Err(self.not_owner_error())
    }

    /// Whether a lock in `mode` needs a descriptor open for writing that
    /// this file lacks: an exclusive OFD lock on a read-only descriptor.
    #[inline(always)]
    fn needs_write(&self, mode: FlockMode) -> bool {
        self.kind != LockKind::Flock && mode == FlockMode::Exclusive && !self.writable
    }

    /// Refuses, before any system call, a lock in `mode` that would fail
    /// with `EBADF` (see [`needs_write`](Self::needs_write)).
    #[inline]
    pub(crate) fn check_write(&self, mode: FlockMode) -> Result<(), Error> {
        if self.needs_write(mode) {
            return Err(Error::OfdNeedsWrite {
                path: self.error_path(),
            });
        }
        Ok(())
    }

    /// Releases whatever lock this file holds, ignoring errors: for a
    /// failure path that hands the file back holding nothing.
    pub(crate) fn let_go(&self) {
        let _ = self.unlock_kernel();
    }

    /// The upgrade ticket of an OFD file (see [`LockGuard::upgrade`]): an
    /// exclusive `flock(2)` lock on a new open file description of the same
    /// file, held until the returned [`Ticket`] drops.
    /// [`Error::UpgradeDeadlock`] when another upgrade holds it.
    pub(crate) fn upgrade_ticket(&self) -> Result<Ticket, Error> {
        let error = |source| Error::Flock {
            path: self.error_path(),
            mode: FlockMode::Exclusive,
            source,
        };
        let ticket = sys::reopen(self.file.as_fd()).map_err(error)?;
        match sys::flock(ticket.as_fd(), FlockMode::Exclusive, OnConflict::Fail) {
            Ok(()) => Ok(Ticket {
                fd: ticket,
                owner: sys::current_pid(),
            }),
            Err(err) if sys::is_contention(&err) => Err(Error::UpgradeDeadlock {
                path: self.error_path(),
            }),
            Err(err) => Err(error(err)),
        }
    }

    /// The bytes every acquisition locks.
    #[inline(always)]
    pub fn range(&self) -> ByteRange {
        match &self.part {
            None => ByteRange::WHOLE,
            Some(range) => **range,
        }
    }

    /// The kernel lock every acquisition takes.
    pub fn kind(&self) -> LockKind {
        self.kind
    }

    #[cold]
    #[inline(never)]
    fn not_owner_error(&self) -> Error {
        Error::NotOwner {
            path: self.error_path(),
            owner: self.owner,
            current: sys::current_pid(),
        }
    }

    /// Whether this process opened the descriptor.
    #[inline(always)]
    fn is_owner(&self) -> bool {
        sys::current_pid() == self.owner
    }

    /// Whether acquisitions check that the path still names the file.
    #[inline(always)]
    pub(crate) fn verifies(&self) -> bool {
        matches!(
            &self.origin,
            Some(Origin {
                reopen: Some(_),
                ..
            })
        )
    }

    /// The error of a refused `flock(2)`, with the file.
    #[cold]
    #[inline(never)]
    fn flock_refused(self, mode: FlockMode, err: io::Error) -> LockError<LockFile> {
        let error = self.flock_error(mode, err);
        LockError::new(error, self)
    }

    /// Takes or converts this file's kernel lock (its kind, its bytes).
    #[inline(always)]
    fn lock_kernel(&self, mode: FlockMode, on_conflict: OnConflict) -> io::Result<()> {
        sys::lock(
            self.file.as_fd(),
            self.kind,
            self.range(),
            mode,
            on_conflict,
        )
    }

    /// Releases this file's kernel lock (`LOCK_UN`, or `F_UNLCK` on its
    /// bytes).
    #[inline(always)]
    fn unlock_kernel(&self) -> io::Result<()> {
        sys::unlock(self.file.as_fd(), self.kind, self.range())
    }

    /// One non-blocking attempt in this file's kind of lock (`flock(2)` or
    /// an OFD lock).
    #[inline]
    pub(crate) fn attempt(&self, mode: FlockMode) -> io::Result<()> {
        self.lock_kernel(mode, OnConflict::Fail)
    }

    /// [`attempt`](Self::attempt) after the check that the descriptor
    /// allows `mode` (a reopened file may be read-only): `Err(Ok(_))` is
    /// the kernel's answer, `Err(Err(_))` the refusal.
    #[inline]
    pub(crate) fn attempt_checked(&self, mode: FlockMode) -> Result<(), Result<io::Error, Error>> {
        self.check_write(mode).map_err(Err)?;
        self.attempt(mode).map_err(Ok)
    }

    /// Every acquisition: the owner check, waiting as `wait` says, and path
    /// verification with reopening.
    fn acquire(mut self, mode: FlockMode, wait: Wait<'_>) -> Result<LockFile, LockError<LockFile>> {
        if let Err(error) = self.check_owner().and_then(|()| self.check_write(mode)) {
            return Err(LockError::new(error, self));
        }
        if wait.deadline == Deadline::None && wait.cancel.is_none() && !self.verifies() {
            // One attempt, nothing to time, cancel or verify.
            return match self.lock_kernel(mode, OnConflict::Fail) {
                Ok(()) => Ok(self),
                Err(err) => Err(self.flock_refused(mode, err)),
            };
        }
        let start = Instant::now();
        let Wait {
            deadline,
            notice,
            cancel,
            context,
            diagnostics,
        } = wait;
        let plan = wait::Plan {
            deadline,
            cancellable: cancel.is_some(),
            may_block: true,
            verify: self.verifies(),
            notice: notice.is_some(),
        };
        let mut core = wait::Core::new(plan, start);
        let mut extras = wait::Extras {
            cancel,
            notice,
            diagnostics,
            holders: None,
        };
        let mut attempts = 0u32;
        let mut target = Waiting {
            file: &mut self,
            deadline,
            attempts: &mut attempts,
        };
        let error = match wait::block_on(&mut target, mode, &mut core, &mut extras) {
            Ok(()) => return Ok(self),
            Err(Ended::Failed(error)) => error,
            Err(Ended::Stopped(stop)) => {
                self.stop_error(mode, stop, start, context.as_deref(), extras.holders)
            }
        };
        Err(LockError::new(error, self))
    }

    /// The error of a wait that `stop`ped: the timeout names `holders`
    /// (read before the deadline; none for a wait too short to read them).
    pub(crate) fn stop_error(
        &self,
        mode: FlockMode,
        stop: Stop,
        start: Instant,
        context: Option<&str>,
        holders: Option<Vec<Holder>>,
    ) -> Error {
        match stop {
            Stop::TimedOut => Error::Timeout {
                path: self.error_path(),
                mode,
                waited: start.elapsed(),
                holders: holders.unwrap_or_default().into(),
                context: context.map(Box::from),
            },
            Stop::Cancelled => self.cancelled_error(mode, start),
            Stop::WouldBlock => self.flock_error(mode, sys::contention()),
        }
    }

    /// After the lock was taken: `Ok(true)` if it stands (the path, when
    /// verified, still names the locked file); `Ok(false)` if the file was
    /// replaced, the lock let go and the path opened again, to be locked
    /// anew; `Err` with the lock let go. `attempts` counts the reopenings.
    pub(crate) fn settle(&mut self, deadline: Deadline, attempts: &mut u32) -> Result<bool, Error> {
        let Some(Origin {
            path,
            reopen: Some(spec),
        }) = &self.origin
        else {
            return Ok(true);
        };
        match open::names_file(path, self.file.as_fd()) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(error) => {
                let _ = self.unlock_kernel();
                return Err(error);
            }
        }
        // Removed between open and lock: the lock is on a file nobody
        // else will open. Let go and lock what the path names now.
        let _ = self.unlock_kernel();
        *attempts = attempts.saturating_add(1);
        if deadline == Deadline::None && *attempts >= TRY_VERIFY_RETRIES {
            return Err(Error::PathChanged {
                path: path.to_path_buf(),
            });
        }
        let opened = open::open(path, spec)?;
        self.file = opened.file;
        self.writable = opened.writable;
        Ok(false)
    }

    /// [`Error::Cancelled`] for a wait that started at `start`.
    pub(crate) fn cancelled_error(&self, mode: FlockMode, start: Instant) -> Error {
        Error::Cancelled {
            path: self.error_path(),
            mode,
            waited: start.elapsed(),
        }
    }
}

/// A lock file being acquired, as the waiting core's driver sees it.
pub(crate) struct Waiting<'f> {
    pub(crate) file: &'f mut LockFile,
    pub(crate) deadline: Deadline,
    /// How often the path was opened again.
    pub(crate) attempts: &'f mut u32,
}

impl wait::Lockable for Waiting<'_> {
    type Error = Error;

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.file.as_fd()
    }

    fn path(&self) -> Option<&Path> {
        self.file.path()
    }

    fn attempt(&self, mode: FlockMode) -> Result<bool, Error> {
        match self.file.attempt_checked(mode) {
            Ok(()) => Ok(true),
            Err(Ok(err)) if sys::is_contention(&err) => Ok(false),
            Err(Ok(err)) => Err(self.file.flock_error(mode, err)),
            Err(Err(error)) => Err(error),
        }
    }

    fn block(&self, mode: FlockMode) -> Result<(), Error> {
        self.file
            .lock_kernel(mode, OnConflict::Block)
            .map_err(|err| self.file.flock_error(mode, err))
    }

    fn holders(&self, budget: Duration) -> Vec<Holder> {
        self.file.holders_within(budget)
    }

    fn verify(&mut self) -> Result<bool, Error> {
        self.file.settle(self.deadline, self.attempts)
    }
}

impl fmt::Debug for LockFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockFile")
            .field("path", &self.path())
            .field("fd", &self.file.as_raw_fd())
            .field("writable", &self.writable)
            .field("kind", &self.kind)
            .field("range", &self.range())
            .finish()
    }
}

impl AsFd for LockFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for LockFile {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl From<LockFile> for File {
    /// The open file, holding no lock this crate took.
    fn from(file: LockFile) -> File {
        file.file
    }
}

impl From<LockFile> for OwnedFd {
    /// The descriptor, holding no lock this crate took.
    fn from(file: LockFile) -> OwnedFd {
        file.file.into()
    }
}

/// A held `flock(2)` lock in mode `M`, owning its descriptor.
///
/// Dropping the guard releases the lock at once with `flock(LOCK_UN)` and
/// then closes the descriptor, so the lock is gone even while another
/// thread forks or the caller still holds a duplicate of an adopted file.
/// In a forked child, drop only closes: the parent's lock is untouched.
/// Drop never blocks, panics or reports errors; [`unlock`](Self::unlock)
/// does report them.
#[must_use = "if unused the lock is released immediately"]
#[clippy::has_significant_drop]
pub struct LockGuard<M: Mode> {
    /// `None` only while a consuming method moves the file out.
    file: Option<LockFile>,
    mode: PhantomData<M>,
}

impl<M: Mode> LockGuard<M> {
    #[inline(always)]
    fn new(file: LockFile) -> Self {
        LockGuard {
            file: Some(file),
            mode: PhantomData,
        }
    }

    /// The guard of a file whose lock in mode `M` was just taken.
    #[cfg(feature = "tokio")]
    pub(crate) fn new_locked(file: LockFile) -> Self {
        Self::new(file)
    }

    /// The file, still locked.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn file_ref(&self) -> &LockFile {
        self.file()
    }

    /// The file, still locked; dropping it closes the descriptor.
    #[cfg(feature = "tokio")]
    pub(crate) fn into_locked_file(self) -> LockFile {
        self.into_file()
    }

    #[inline(always)]
    fn file(&self) -> &LockFile {
        match &self.file {
            Some(file) => file,
            None => unreachable!("a guard's file is moved out only by methods that consume it"),
        }
    }

    /// Moves the file out; the guard's drop then does nothing.
    #[inline(always)]
    fn into_file(mut self) -> LockFile {
        match self.file.take() {
            Some(file) => file,
            None => unreachable!("a guard's file is moved out only once"),
        }
    }

    /// The path the lock file was opened from; `None` for an adopted file.
    pub fn path(&self) -> Option<&Path> {
        self.file().path()
    }

    /// The mode held: `M::MODE`.
    pub fn mode(&self) -> FlockMode {
        M::MODE
    }

    /// The kind of lock held: the [`LockKind`] its file was opened with.
    pub fn kind(&self) -> LockKind {
        self.file().kind
    }

    /// The bytes held: the [`ByteRange`] its file was opened with.
    pub fn range(&self) -> ByteRange {
        self.file().range()
    }

    /// The lock file's metadata, as [`File::metadata`].
    ///
    /// # Errors
    /// The error of `statx(2)`.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.file().file.metadata()
    }

    /// Releases the lock with `flock(LOCK_UN)` and returns the open file
    /// for reuse.
    ///
    /// # Errors
    /// [`Error::NotOwner`] in a forked child (the parent's lock is left as
    /// it was); [`Error::Unlock`] if `flock(2)` fails. Each gives the guard
    /// back.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{try_flock, Exclusive};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let file = try_flock::<Exclusive>(&path)?.unlock()?;
    /// let again = file.try_lock::<Exclusive>()?; // no reopen
    /// # drop(again);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    #[doc(alias = "LOCK_UN")]
    #[inline(always)]
    pub fn unlock(self) -> Result<LockFile, LockError<LockGuard<M>>> {
        let file = self.file();
        if !file.is_owner() {
            return Err(self.unlock_error(None));
        }
        match file.unlock_kernel() {
            Ok(()) => Ok(self.into_file()),
            Err(source) => Err(self.unlock_error(Some(source))),
        }
    }

    /// The error of [`unlock`](Self::unlock): in a forked child (`None`)
    /// or from `flock(2)`, with the guard.
    #[cold]
    #[inline(never)]
    fn unlock_error(self, source: Option<io::Error>) -> LockError<LockGuard<M>> {
        let file = self.file();
        let error = match source {
            None => file.not_owner_error(),
            Some(source) => Error::Unlock {
                path: file.error_path(),
                mode: Some(M::MODE),
                source,
            },
        };
        LockError::new(error, self)
    }

    /// Gives up the guard and keeps the lock: the descriptor holds it until
    /// `flock(2)` releases it, when the last copy of the open file
    /// description closes (or a `LOCK_UN` through any copy).
    ///
    /// For handing a lock to an executed program or to a process that
    /// outlives this one, as `flock(1)` does; no drop of this crate releases
    /// it any more.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{try_flock, Exclusive};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let fd = try_flock::<Exclusive>(&path)?.into_locked_fd();
    /// assert!(try_flock::<Exclusive>(&path).unwrap_err().is_would_block());
    /// drop(fd); // the last copy closes: released
    /// assert!(try_flock::<Exclusive>(&path).is_ok());
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn into_locked_fd(self) -> OwnedFd {
        self.into_file().into()
    }

    /// Checks that the guard's path still names the locked file itself (not
    /// a symbolic link to it).
    ///
    /// A lock file removed or replaced while held leaves the guard locking
    /// a file nobody else will open; new lockers create and lock a new file
    /// at the path.
    ///
    /// # Errors
    /// [`Error::PathChanged`] when the path is missing or names another
    /// file; [`Error::InvalidPath`] for an adopted file, which has no path;
    /// [`Error::Stat`] when the path or descriptor cannot be examined.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{try_flock, Error, Exclusive};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = try_flock::<Exclusive>(&path)?;
    /// guard.verify_path()?;
    /// std::fs::remove_file(&path).unwrap(); // someone removes it under us
    /// assert!(matches!(guard.verify_path(), Err(Error::PathChanged { .. })));
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn verify_path(&self) -> Result<(), Error> {
        let path = self.known_path()?;
        if open::names_file(path, self.as_fd())? {
            Ok(())
        } else {
            Err(Error::PathChanged { path: path.into() })
        }
    }

    fn known_path(&self) -> Result<&Path, Error> {
        self.path().ok_or_else(|| Error::InvalidPath {
            path: self.file().error_path(),
            reason: PathProblem::NoPath,
        })
    }

    /// Changes the mode with `flock(2)`; a failure hands back the file,
    /// unlocked (`LOCK_UN` makes that true whatever the kernel did), except
    /// in a forked child, where nothing was changed: the file handed back
    /// there still shares the parent's locked open file description, and
    /// refuses every change with [`Error::NotOwner`].
    #[inline(always)]
    fn convert<N: Mode>(
        self,
        on_conflict: OnConflict,
    ) -> Result<LockGuard<N>, LockError<LockFile>> {
        let file = self.into_file();
        if !file.is_owner() {
            let error = file.not_owner_error();
            return Err(LockError::new(error, file));
        }
        if let Err(error) = file.check_write(N::MODE) {
            let _ = file.unlock_kernel();
            return Err(LockError::new(error, file));
        }
        match file.lock_kernel(N::MODE, on_conflict) {
            Ok(()) => Ok(LockGuard::new(file)),
            Err(source) => Err(Self::convert_error(file, N::MODE, source)),
        }
    }

    /// The error of a failed conversion to `to`, with the file let go.
    #[cold]
    #[inline(never)]
    fn convert_error(file: LockFile, to: FlockMode, source: io::Error) -> LockError<LockFile> {
        let mut error = file.flock_error(to, source);
        if let Error::WouldBlock { shared_lost, .. } = &mut error {
            // Local flock(2) removes the old lock before it looks for
            // conflicts; NFS keeps it. LOCK_UN below makes "lost" true on
            // both.
            *shared_lost = M::MODE == FlockMode::Shared;
        }
        let _ = file.unlock_kernel();
        LockError::new(error, file)
    }
}

impl LockGuard<Exclusive> {
    /// Converts to a shared lock without letting go: no writer can slip in
    /// between on Linux, where the conversion happens under the inode's lock
    /// (flock(2) does not promise it).
    ///
    /// # Errors
    /// [`Error::NotOwner`] in a forked child (lock untouched),
    /// [`Error::Flock`] (the lock is then released); each gives the file
    /// back.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{try_flock, Exclusive, Shared};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let reader = try_flock::<Exclusive>(&path)?.downgrade()?;
    /// let other = try_flock::<Shared>(&path)?; // readers share
    /// # drop((reader, other));
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    #[inline]
    pub fn downgrade(self) -> Result<LockGuard<Shared>, LockError<LockFile>> {
        // LOCK_NB: converting down never conflicts, so it must never wait.
        self.convert(OnConflict::Fail)
    }

    /// Truncates or extends the lock file, as [`File::set_len`].
    ///
    /// # Errors
    /// [`Error::ReadOnly`] (as an [`io::Error`]) when the descriptor is
    /// read-only; the error of `ftruncate(2)`.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?.set_len(len)
    }

    /// Flushes the lock file's data and metadata, as [`File::sync_all`].
    ///
    /// # Errors
    /// The error of `fsync(2)`.
    ///
    /// # References
    /// - [fsync(2)](https://man7.org/linux/man-pages/man2/fsync.2.html)
    #[doc(alias = "fsync")]
    pub fn sync_all(&self) -> io::Result<()> {
        self.file().as_file().sync_all()
    }

    /// Flushes the lock file's data, and only the metadata needed to read
    /// it back (such as its length), as [`File::sync_data`].
    ///
    /// # Errors
    /// The error of `fdatasync(2)`.
    ///
    /// # Examples
    /// ```
    /// use std::io::Write;
    /// use flockguard::{Exclusive, LockOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("state.json");
    /// let mut state = LockOptions::new().open(&path)?.lock::<Exclusive>()?;
    /// state.set_len(0)?;
    /// state.write_all(b"{}")?;
    /// state.sync_data()?; // on disk before the lock is released
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # References
    /// - [fdatasync(2)](https://man7.org/linux/man-pages/man2/fdatasync.2.html)
    #[doc(alias = "fdatasync")]
    pub fn sync_data(&self) -> io::Result<()> {
        self.file().as_file().sync_data()
    }

    fn writable(&self) -> io::Result<&File> {
        let file = self.file();
        if file.writable {
            Ok(file.as_file())
        } else {
            Err(Error::ReadOnly {
                path: file.error_path(),
            }
            .into())
        }
    }
}

impl LockGuard<Shared> {
    /// Converts to an exclusive lock, waiting as long as it takes.
    ///
    /// On a [`LockKind::Flock`] file `flock(2)` drops the shared lock first
    /// and waits holding nothing: others may take and release the lock in
    /// between, so re-read what the lock protects after upgrading. On an
    /// OFD file the wait keeps the shared lock, and nobody can write in
    /// between. Two OFD holders that both waited to upgrade would wait for
    /// each other forever (the kernel detects no deadlock between OFD
    /// locks), so an OFD upgrade that must wait first takes an upgrade
    /// ticket (an exclusive `flock(2)` lock on its own open of the same
    /// file, which OFD locks never see on a local filesystem): while one
    /// upgrade waits, another fails with [`Error::UpgradeDeadlock`] and
    /// lets go of its shared lock, so the first can finish. This call
    /// blocks the thread until the lock is granted.
    ///
    /// # Errors
    /// [`Error::NotOwner`] in a forked child, [`Error::Flock`],
    /// [`Error::OfdNeedsWrite`] for a `LockKind::Ofd` lock on a read-only
    /// descriptor, [`Error::UpgradeDeadlock`]; each gives the file back,
    /// unlocked.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{try_flock, Shared};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let writer = try_flock::<Shared>(&path)?.upgrade()?;
    /// # drop(writer);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    /// - [fcntl_locking(2)](https://man7.org/linux/man-pages/man2/fcntl_locking.2.html)
    #[inline]
    pub fn upgrade(self) -> Result<LockGuard<Exclusive>, LockError<LockFile>> {
        if self.kind() == LockKind::Flock {
            return self.convert(OnConflict::Block);
        }
        self.upgrade_holding()
    }

    /// [`upgrade`](Self::upgrade) of an OFD file: in place if it can be,
    /// else waiting in the kernel, holding the shared lock and the upgrade
    /// ticket.
    #[cold]
    #[inline(never)]
    fn upgrade_holding(self) -> Result<LockGuard<Exclusive>, LockError<LockFile>> {
        if let Err(error) = self.file().check_owner() {
            // A fork child: the parent's lock stays as it is.
            return Err(LockError::new(error, self.into_file()));
        }
        let guard = match self.try_upgrade_in_place() {
            Ok(writer) => return Ok(writer),
            Err(err) if err.is_would_block() => err.into_inner(),
            Err(err) => {
                let file = err.handle.into_file();
                file.let_go();
                return Err(LockError::new(err.error, file));
            }
        };
        let ticket = match guard.file().upgrade_ticket() {
            Ok(ticket) => ticket,
            Err(error) => {
                let file = guard.into_file();
                file.let_go();
                return Err(LockError::new(error, file));
            }
        };
        let writer = guard.convert(OnConflict::Block);
        drop(ticket);
        writer
    }

    /// Converts to an exclusive lock if no one else holds the lock.
    ///
    /// On a [`LockKind::Flock`] file the kernel has already dropped the
    /// shared lock on contention, so the error hands back an unlocked
    /// [`LockFile`] (its message says the shared lock was released), never
    /// a shared guard that would lie. An OFD file keeps its shared lock on
    /// contention, and this call lets go of it to keep the same contract;
    /// [`try_upgrade_in_place`](Self::try_upgrade_in_place) keeps it.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] with `shared_lost: true` on contention,
    /// [`Error::NotOwner`] in a forked child (lock untouched),
    /// [`Error::Flock`], [`Error::OfdNeedsWrite`] for a `LockKind::Ofd`
    /// lock on a read-only descriptor; each gives the file back.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{try_flock, Shared};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let mine = try_flock::<Shared>(&path)?;
    /// let other = try_flock::<Shared>(&path)?;
    /// let err = mine.try_upgrade().unwrap_err();
    /// assert!(err.is_would_block());
    /// let file = err.into_inner(); // holds nothing now
    /// drop(other);
    /// let _writer = file.try_lock::<flockguard::Exclusive>()?;
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    #[inline]
    pub fn try_upgrade(self) -> Result<LockGuard<Exclusive>, LockError<LockFile>> {
        self.convert(OnConflict::Fail)
    }

    /// Converts an OFD lock to an exclusive one if no one else holds it;
    /// on refusal the guard comes back still holding its shared lock.
    ///
    /// The kernel converts an OFD lock atomically: a refused conversion
    /// leaves the shared lock as it was, and nobody can take the lock in
    /// between. `flock(2)` cannot do this; on a [`LockKind::Flock`] file
    /// the call changes nothing and fails with [`Error::NoAtomicUpgrade`].
    ///
    /// # Errors
    /// Each gives the shared guard back, its lock untouched:
    /// [`Error::WouldBlock`] (`shared_lost: false`) on contention,
    /// [`Error::NoAtomicUpgrade`] on a flock file, [`Error::NotOwner`] in a
    /// forked child, [`Error::OfdNeedsWrite`] on a read-only descriptor,
    /// [`Error::Flock`].
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "ofd")] {
    /// use flockguard::{LockKind, LockOptions, Shared};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let mut opts = LockOptions::new();
    /// opts.kind(LockKind::Ofd);
    /// let mine = opts.open(&path)?.try_lock::<Shared>()?;
    /// let other = opts.open(&path)?.try_lock::<Shared>()?;
    /// let err = mine.try_upgrade_in_place().unwrap_err();
    /// assert!(err.is_would_block());
    /// let mine = err.into_inner(); // still a shared guard, still held
    /// drop(other);
    /// let _writer = mine.try_upgrade_in_place()?;
    /// # }
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [fcntl_locking(2)](https://man7.org/linux/man-pages/man2/fcntl_locking.2.html)
    #[doc(alias = "F_OFD_SETLK")]
    #[allow(clippy::result_large_err)] // the error and the guard it hands back, on a refusal
    pub fn try_upgrade_in_place(
        self,
    ) -> Result<LockGuard<Exclusive>, LockError<LockGuard<Shared>>> {
        let file = self.file();
        let refused = if file.kind == LockKind::Flock {
            Err(Error::NoAtomicUpgrade {
                path: file.error_path(),
            })
        } else {
            file.check_owner()
                .and_then(|()| file.check_write(FlockMode::Exclusive))
        };
        if let Err(error) = refused {
            return Err(LockError::new(error, self));
        }
        match file.lock_kernel(FlockMode::Exclusive, OnConflict::Fail) {
            Ok(()) => Ok(LockGuard::new(self.into_file())),
            Err(source) => {
                // The kernel left the shared lock in place.
                let error = file.flock_error(FlockMode::Exclusive, source);
                Err(LockError::new(error, self))
            }
        }
    }
}

impl LockGuard<Exclusive> {
    /// Removes the lock file while still holding its exclusive lock, then
    /// releases the lock.
    ///
    /// The path is removed only if it still names the locked file itself;
    /// a symbolic link or a different file at the path is left alone.
    /// Processes blocked on the removed file wake up holding a lock on a
    /// file that is gone: they must acquire with
    /// [`LockOptions::verify_path`], which notices and retries on the new
    /// file.
    ///
    /// # Errors
    /// Each gives the guard back, still holding the lock:
    /// [`Error::NotOwner`] in a forked child (nothing removed, the parent's
    /// lock untouched); [`Error::PathChanged`] when the path no longer names
    /// the locked file (nothing removed); [`Error::InvalidPath`] for an
    /// adopted file; [`Error::Remove`] when `unlink(2)` fails;
    /// [`Error::Stat`].
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = LockOptions::new().verify_path(true).open(&path)?.lock::<Exclusive>()?;
    /// guard.unlink_and_unlock()?;
    /// assert!(!path.exists());
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [unlink(2)](https://man7.org/linux/man-pages/man2/unlink.2.html)
    pub fn unlink_and_unlock(self) -> Result<(), LockError<LockGuard<Exclusive>>> {
        match self.unlink() {
            // Unlinked before the release: nobody can verify the old file
            // in between. Drop releases it now.
            Ok(()) => Ok(()),
            Err(error) => Err(LockError::new(error, self)),
        }
    }

    fn unlink(&self) -> Result<(), Error> {
        self.file().check_owner()?;
        let path = self.known_path()?;
        if !open::names_file(path, self.as_fd())? {
            return Err(Error::PathChanged { path: path.into() });
        }
        sys::unlink(path).map_err(|source| Error::Remove {
            path: path.into(),
            source,
        })
    }
}

impl<M: Mode> Drop for LockGuard<M> {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            if file.is_owner() {
                // Errors cannot be reported here; the close releases anyway
                // once no copy of the descriptor is left.
                let _ = file.unlock_kernel();
            }
        }
    }
}

impl<M: Mode> fmt::Debug for LockGuard<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("path", &self.path())
            .field("mode", &M::MODE)
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}

impl<M: Mode> AsFd for LockGuard<M> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file().as_fd()
    }
}

impl<M: Mode> AsRawFd for LockGuard<M> {
    fn as_raw_fd(&self) -> RawFd {
        self.file().as_raw_fd()
    }
}

impl<M: Mode> Read for LockGuard<M> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file().as_file().read(buf)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.file().as_file().read_to_end(buf)
    }
}

impl<M: Mode> Seek for LockGuard<M> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file().as_file().seek(pos)
    }
}

/// Only an exclusive guard writes; through a read-only descriptor every
/// write fails with [`Error::ReadOnly`] naming the path.
impl Write for LockGuard<Exclusive> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writable()?.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().as_file().flush()
    }
}

/// A guard whose mode was chosen at run time, from
/// [`LockFile::lock_any`].
#[must_use = "if unused the lock is released immediately"]
#[clippy::has_significant_drop]
#[derive(Debug)]
pub enum AnyGuard {
    /// An exclusive lock.
    Exclusive(LockGuard<Exclusive>),
    /// A shared lock.
    Shared(LockGuard<Shared>),
}

impl AnyGuard {
    /// The mode held.
    pub fn mode(&self) -> FlockMode {
        match self {
            AnyGuard::Exclusive(_) => FlockMode::Exclusive,
            AnyGuard::Shared(_) => FlockMode::Shared,
        }
    }

    /// The path the lock file was opened from; `None` for an adopted file.
    pub fn path(&self) -> Option<&Path> {
        match self {
            AnyGuard::Exclusive(g) => g.path(),
            AnyGuard::Shared(g) => g.path(),
        }
    }

    /// Releases the lock; see [`LockGuard::unlock`].
    ///
    /// # Errors
    /// As [`LockGuard::unlock`], with the guard back as an `AnyGuard`.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{FlockMode, LockFile, Wait};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = LockFile::open(&path)?.lock_any(FlockMode::Exclusive, Wait::forever())?;
    /// let _file = guard.unlock()?;
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    #[allow(clippy::result_large_err)] // 128 bytes, the error and the guard it hands back, on a path that fails only in a fork child
    pub fn unlock(self) -> Result<LockFile, LockError<AnyGuard>> {
        match self {
            AnyGuard::Exclusive(g) => g
                .unlock()
                .map_err(|e| LockError::new(e.error, e.handle.into())),
            AnyGuard::Shared(g) => g
                .unlock()
                .map_err(|e| LockError::new(e.error, e.handle.into())),
        }
    }
}

impl AnyGuard {
    /// Gives up the guard and keeps the lock; see
    /// [`LockGuard::into_locked_fd`].
    ///
    /// # Examples
    /// ```
    /// use flockguard::{FlockMode, LockFile, Wait};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = LockFile::open(&path)?.lock_any(FlockMode::Shared, Wait::none())?;
    /// let fd = guard.into_locked_fd(); // e.g. to hand to a child process
    /// # drop(fd);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn into_locked_fd(self) -> OwnedFd {
        match self {
            AnyGuard::Exclusive(g) => g.into_locked_fd(),
            AnyGuard::Shared(g) => g.into_locked_fd(),
        }
    }
}

impl From<LockGuard<Exclusive>> for AnyGuard {
    fn from(guard: LockGuard<Exclusive>) -> Self {
        AnyGuard::Exclusive(guard)
    }
}

impl From<LockGuard<Shared>> for AnyGuard {
    fn from(guard: LockGuard<Shared>) -> Self {
        AnyGuard::Shared(guard)
    }
}

impl AsFd for AnyGuard {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            AnyGuard::Exclusive(g) => g.as_fd(),
            AnyGuard::Shared(g) => g.as_fd(),
        }
    }
}

impl AsRawFd for AnyGuard {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Creates the lock file at `path` if it is missing, with the checks of
/// [`LockOptions::open`], and takes no lock.
///
/// # Errors
/// [`Error::InvalidPath`], [`Error::Open`], [`Error::Symlink`],
/// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`]: those
/// of [`LockOptions::open`] that its defaults allow.
///
/// # Examples
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// flockguard::materialize(&path)?;
/// assert!(path.exists());
/// # Ok::<(), flockguard::Error>(())
/// ```
pub fn materialize(path: impl AsRef<Path>) -> Result<(), Error> {
    LockOptions::new().open(path).map(drop)
}

/// Opens `path` with the default [`LockOptions`] and takes the lock if no
/// one holds it in a conflicting mode.
///
/// # Errors
/// [`Error::WouldBlock`] on contention, [`Error::Flock`]; and
/// [`Error::InvalidPath`], [`Error::Open`], [`Error::Symlink`],
/// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`]: those
/// of [`LockOptions::open`] that its defaults allow.
///
/// # Examples
/// ```
/// use flockguard::{try_flock, Exclusive};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let guard = try_flock::<Exclusive>(&path)?;
/// assert!(try_flock::<Exclusive>(&path).unwrap_err().is_would_block());
/// # drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// ```
#[doc(alias = "LOCK_NB")]
#[doc(alias = "try_lock_exclusive")]
#[doc(alias = "try_lock_shared")]
#[inline(always)]
pub fn try_flock<M: Mode>(path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
    Ok(LockFile::open(path)?.try_lock()?)
}

/// Opens `path` with the default [`LockOptions`] and takes the lock,
/// waiting in `flock(2)` as long as it takes.
///
/// # Errors
/// [`Error::Flock`]; and
/// [`Error::InvalidPath`], [`Error::Open`], [`Error::Symlink`],
/// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`]: those
/// of [`LockOptions::open`] that its defaults allow.
///
/// # Examples
/// ```
/// use flockguard::{block_flock, Shared};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let reader = block_flock::<Shared>(&path)?;
/// # drop(reader);
/// # Ok::<(), flockguard::Error>(())
/// ```
#[doc(alias = "LOCK_EX")]
#[doc(alias = "LOCK_SH")]
#[doc(alias = "lock_exclusive")]
#[doc(alias = "lock_shared")]
pub fn block_flock<M: Mode>(path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
    Ok(LockFile::open(path)?.lock()?)
}

/// Opens `path` with the default [`LockOptions`] and takes the lock,
/// waiting at most `timeout`.
///
/// # Errors
/// [`Error::Timeout`] naming the holders, [`Error::Flock`]; and
/// [`Error::InvalidPath`], [`Error::Open`], [`Error::Symlink`],
/// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`]: those
/// of [`LockOptions::open`] that its defaults allow.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use flockguard::{flock_timeout, Exclusive};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let first = flock_timeout::<Exclusive>(&path, Duration::from_secs(5))?;
/// let err = flock_timeout::<Exclusive>(&path, Duration::from_millis(50)).unwrap_err();
/// assert!(err.is_timeout());
/// assert_eq!(err.holders()[0].pid, std::process::id());
/// # drop(first);
/// # Ok::<(), flockguard::Error>(())
/// ```
#[doc(alias = "try_lock_for")]
pub fn flock_timeout<M: Mode>(
    path: impl AsRef<Path>,
    timeout: Duration,
) -> Result<LockGuard<M>, Error> {
    Ok(LockFile::open(path)?.lock_timeout(timeout)?)
}
