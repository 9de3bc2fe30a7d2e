//! The path entry points: each opens with [`LockOptions`] and then takes
//! the lock; thin compositions of [`LockFile`](crate::LockFile)'s steps.

use std::path::Path;

use crate::error::Error;
use crate::guard::{AnyGuard, LockGuard};
use crate::mode::{Exclusive, FlockMode, Mode, Shared};
use crate::options::LockOptions;

/// Creates the lock file at `path` if it is missing, and takes no lock.
///
/// Useful to set up a lock file (and check its filesystem) ahead of time.
///
/// # Errors
/// See [`LockOptions::open`].
///
/// # Examples
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("app.lock");
/// flockguard::materialize(&path)?;
/// assert!(path.is_file());
/// # Ok::<(), flockguard::Error>(())
/// ```
pub fn materialize(path: impl AsRef<Path>) -> Result<(), Error> {
    LockOptions::new().open(path).map(drop)
}

/// Opens (creating if missing) the lock file at `path` and takes the lock in
/// mode `M` without waiting.
///
/// # Errors
/// [`Error::WouldBlock`] when the lock is held in a conflicting mode (the
/// descriptor is closed); any error of [`LockOptions::open`];
/// [`Error::Flock`] for other `flock(2)` failures.
///
/// # Examples
/// ```
/// use flockguard::{try_flock, Exclusive};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let guard = try_flock::<Exclusive>(&path)?;
/// assert!(try_flock::<Exclusive>(&path).unwrap_err().is_would_block());
/// drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// ```
///
/// # References
/// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
pub fn try_flock<M: Mode>(path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
    LockOptions::new().try_lock(path)
}

/// Opens (creating if missing) the lock file at `path` and takes the lock in
/// mode `M`, waiting in the kernel as long as it takes.
///
/// # Errors
/// Any error of [`LockOptions::open`]; [`Error::Flock`] if `flock(2)` fails.
///
/// # Examples
/// ```
/// use flockguard::{block_flock, Shared};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let guard = block_flock::<Shared>(&path)?;
/// # drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// ```
///
/// # References
/// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
pub fn block_flock<M: Mode>(path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
    LockOptions::new().lock(path)
}

/// [`try_flock`] with the mode chosen at run time.
///
/// # Errors
/// As [`try_flock`].
///
/// # Examples
/// ```
/// use flockguard::{try_flock_mode, FlockMode};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let shared = std::env::args().any(|a| a == "--shared");
/// let mode = if shared { FlockMode::Shared } else { FlockMode::Exclusive };
/// let guard = try_flock_mode(&path, mode)?;
/// assert_eq!(guard.mode(), mode);
/// # drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// ```
pub fn try_flock_mode(path: impl AsRef<Path>, mode: FlockMode) -> Result<AnyGuard, Error> {
    match mode {
        FlockMode::Exclusive => try_flock::<Exclusive>(path).map(AnyGuard::from),
        FlockMode::Shared => try_flock::<Shared>(path).map(AnyGuard::from),
    }
}

/// [`block_flock`] with the mode chosen at run time.
///
/// # Errors
/// As [`block_flock`].
pub fn block_flock_mode(path: impl AsRef<Path>, mode: FlockMode) -> Result<AnyGuard, Error> {
    match mode {
        FlockMode::Exclusive => block_flock::<Exclusive>(path).map(AnyGuard::from),
        FlockMode::Shared => block_flock::<Shared>(path).map(AnyGuard::from),
    }
}

impl LockOptions {
    /// Opens the lock file at `path` with these options and takes the lock
    /// in mode `M` without waiting.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] when the lock is held in a conflicting mode (the
    /// descriptor is closed); any error of [`open`](Self::open);
    /// [`Error::Flock`] for other `flock(2)` failures.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockOptions, RemoteFs};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = LockOptions::new().remote_fs(RemoteFs::Allow).try_lock::<Exclusive>(&path)?;
    /// # drop(guard);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn try_lock<M: Mode>(&self, path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
        // Opened by this very call, so no fork can have come in between.
        Ok(self.open(path)?.try_lock_owned()?)
    }

    /// Opens the lock file at `path` with these options and takes the lock
    /// in mode `M`, waiting in the kernel as long as it takes.
    ///
    /// # Errors
    /// Any error of [`open`](Self::open); [`Error::Flock`] if `flock(2)`
    /// fails.
    pub fn lock<M: Mode>(&self, path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
        self.open(path)?.lock_owned()
    }
}
