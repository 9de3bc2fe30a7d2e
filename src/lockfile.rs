//! [`LockFile`]: an open lock file that holds no lock.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::guard::LockGuard;
use crate::mode::{FlockMode, Mode};
use crate::options::{display_path, LockOptions};
use crate::sys;

/// An open lock file holding no lock; lock it with [`try_lock`](Self::try_lock)
/// or [`lock`](Self::lock), and get it back from [`LockGuard::unlock`].
///
/// Reusing a `LockFile` skips the `open(2)` and the checks that opening does.
/// The descriptor has `FD_CLOEXEC` set and is closed on drop.
///
/// A `LockFile` belongs to the process that opened it: after `fork(2)` the
/// child shares the open file description, and with it any lock. Neither the
/// file nor its guards lock, convert or unlock from a process other than the
/// one that opened the file ([`Error::NotOwner`]).
#[must_use = "a LockFile holds no lock until try_lock or lock is called"]
pub struct LockFile {
    file: File,
    path: Option<Box<Path>>,
    owner: u32,
}

impl LockFile {
    pub(crate) fn new(file: File, path: Option<Box<Path>>) -> Self {
        LockFile {
            file,
            path,
            owner: sys::current_pid(),
        }
    }

    /// Opens (creating if missing) the lock file at `path` with the default
    /// [`LockOptions`]; takes no lock.
    ///
    /// # Errors
    /// See [`LockOptions::open`].
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockFile};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let file = LockFile::open(dir.path().join("app.lock"))?;
    /// let guard = file.lock::<Exclusive>()?;
    /// let file = guard.unlock()?; // the descriptor stays open for reuse
    /// # drop(file);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<LockFile, Error> {
        LockOptions::new().open(path)
    }

    /// Adopts a file the caller already opened, with the default
    /// [`LockOptions`]; see [`LockOptions::adopt`].
    ///
    /// # Errors
    /// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`].
    pub fn from_file(file: File) -> Result<LockFile, Error> {
        LockOptions::new().adopt(file)
    }

    /// Takes the lock in mode `M` if nobody holds a conflicting lock, without
    /// waiting.
    ///
    /// # Errors
    /// On contention the error [`is_would_block`](TryLockError::is_would_block)
    /// and gives the file back; any other `flock(2)` failure is
    /// [`Error::Flock`], also with the file. [`Error::NotOwner`] in a process
    /// other than the one that opened the file (a `fork(2)` child), where the
    /// lock would land on the open file description shared with the parent.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockFile, Shared};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let held = LockFile::open(&path)?.try_lock::<Exclusive>()?;
    /// let err = LockFile::open(&path)?.try_lock::<Shared>().unwrap_err();
    /// assert!(err.is_would_block());
    /// let file = err.into_inner(); // retry later with the same descriptor
    /// # drop((held, file));
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    #[doc(alias = "LOCK_NB")]
    pub fn try_lock<M: Mode>(self) -> Result<LockGuard<M>, TryLockError> {
        if let Err(error) = self.check_owner() {
            return Err(TryLockError { error, file: self });
        }
        self.try_lock_owned()
    }

    /// [`try_lock`](Self::try_lock) for a file this process has just opened,
    /// which needs no ownership check.
    pub(crate) fn try_lock_owned<M: Mode>(self) -> Result<LockGuard<M>, TryLockError> {
        match sys::flock(self.file.as_fd(), M::MODE, true) {
            Ok(()) => Ok(LockGuard::new(self)),
            Err(source) => {
                let error = self.flock_error(M::MODE, source);
                Err(TryLockError { error, file: self })
            }
        }
    }

    /// Takes the lock in mode `M`, waiting in the kernel as long as it takes.
    ///
    /// Signals that interrupt the wait (`EINTR`) do not end it.
    ///
    /// # Errors
    /// [`Error::Flock`]; [`Error::NotOwner`] in a `fork(2)` child, as for
    /// [`try_lock`](Self::try_lock). The descriptor is closed.
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    pub fn lock<M: Mode>(self) -> Result<LockGuard<M>, Error> {
        self.check_owner()?;
        self.lock_owned()
    }

    /// [`lock`](Self::lock) for a file this process has just opened, which
    /// needs no ownership check.
    pub(crate) fn lock_owned<M: Mode>(self) -> Result<LockGuard<M>, Error> {
        match sys::flock(self.file.as_fd(), M::MODE, false) {
            Ok(()) => Ok(LockGuard::new(self)),
            Err(source) => Err(self.flock_error(M::MODE, source)),
        }
    }

    /// The path the file was opened by, or `None` for an adopted file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The process that opened the file; only it may change the lock.
    pub fn owner_pid(&self) -> u32 {
        self.owner
    }

    /// The path for messages: the opened path, or what `/proc/self/fd` says.
    pub(crate) fn error_path(&self) -> PathBuf {
        match &self.path {
            Some(path) => path.to_path_buf(),
            None => display_path(&self.file),
        }
    }

    pub(crate) fn flock_error(&self, mode: FlockMode, source: std::io::Error) -> Error {
        if sys::is_contention(&source) {
            Error::WouldBlock {
                path: self.error_path(),
                mode,
            }
        } else {
            Error::Flock {
                path: self.error_path(),
                mode,
                source,
            }
        }
    }

    /// Fails with [`Error::NotOwner`] when called from a process other
    /// than the one that opened the file.
    pub(crate) fn check_owner(&self) -> Result<(), Error> {
        let current = sys::current_pid();
        if current == self.owner {
            Ok(())
        } else {
            Err(Error::NotOwner {
                path: self.error_path(),
                owner: self.owner,
                current,
            })
        }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }
}

impl fmt::Debug for LockFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockFile")
            .field("path", &self.path)
            .field("fd", &self.file.as_raw_fd())
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

/// The error of [`LockFile::try_lock`]: why the lock was not taken, and the
/// [`LockFile`] back, holding no lock.
#[derive(Debug)]
pub struct TryLockError {
    /// Why the lock was not taken: [`Error::WouldBlock`] on contention.
    pub error: Error,
    /// The file, open and holding no lock.
    pub file: LockFile,
}

crate::error::error_with_file!(TryLockError);

impl TryLockError {
    /// Whether the lock was held elsewhere ([`Error::WouldBlock`]).
    pub fn is_would_block(&self) -> bool {
        self.error.is_would_block()
    }
}

impl fmt::Display for TryLockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}
