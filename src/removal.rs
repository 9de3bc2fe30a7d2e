//! Removable lock files: unlinking under the lock, and acquisition that
//! re-checks that the path still names the locked file.
//!
//! Removing a lock file while others may be opening it is safe only if
//! every party follows one protocol: remove the file only while holding its
//! exclusive lock ([`LockGuard::unlink_and_unlock`]), and acquire with
//! [`LockOptions::lock_verified`] / [`LockOptions::try_lock_verified`]
//! (or [`block_flock_verified`] / [`try_flock_verified`]), which retry when
//! the locked file was removed between `open(2)` and `flock(2)`. A holder
//! that verified the path cannot lose it: the only way to remove the file is
//! to hold the lock it holds.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::error::Error;
use crate::guard::LockGuard;
use crate::lockfile::LockFile;
use crate::mode::{Exclusive, Mode};
use crate::options::{display_path, LockOptions};
use crate::sys::{self, FileId};

/// How many times [`LockOptions::try_lock_verified`] reopens a file that
/// was removed or replaced under it before giving up with
/// [`Error::PathChanged`].
const TRY_VERIFY_RETRIES: u32 = 16;

/// Whether `path` names the file behind `fd`: the one place the path is
/// re-checked. A missing path is `Ok(false)`.
fn names_locked_file(path: &Path, fd: BorrowedFd<'_>) -> Result<bool, Error> {
    let stat_err = |source| Error::Stat {
        path: path.into(),
        source,
    };
    let ours = sys::fstat(fd).map_err(stat_err)?;
    match sys::lstat(path) {
        Ok(id) => Ok(same_file(id, ours)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(stat_err(err)),
    }
}

fn same_file(a: FileId, b: FileId) -> bool {
    a.dev == b.dev && a.ino == b.ino
}

/// The guard's path, or [`Error::InvalidPath`] for an adopted file.
fn known_path<M: Mode>(guard: &LockGuard<M>) -> Result<&Path, Error> {
    guard.path().ok_or_else(|| Error::InvalidPath {
        path: display_path(guard),
        reason: "the lock file was adopted from a descriptor, so it has no path to check",
    })
}

impl<M: Mode> LockGuard<M> {
    /// Checks that the guard's path still names the locked file itself (not
    /// a symbolic link to it).
    ///
    /// A lock file removed or replaced while held leaves the guard locking
    /// a file nobody else will open; new lockers create and lock a new file
    /// at the path. This call detects that.
    ///
    /// # Errors
    /// [`Error::PathChanged`] when the path is missing or names another
    /// file; [`Error::InvalidPath`] for an adopted file, which has no path;
    /// [`Error::Stat`] when the path or descriptor cannot be examined.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{try_flock, Exclusive};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = try_flock::<Exclusive>(&path)?;
    /// guard.verify_path()?;
    /// std::fs::remove_file(&path).unwrap(); // someone removes it under us
    /// assert!(matches!(guard.verify_path(), Err(flockguard::Error::PathChanged { .. })));
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn verify_path(&self) -> Result<(), Error> {
        let path = known_path(self)?;
        if names_locked_file(path, self.as_fd())? {
            Ok(())
        } else {
            Err(Error::PathChanged { path: path.into() })
        }
    }
}

impl LockGuard<Exclusive> {
    /// Removes the lock file while still holding its exclusive lock, then
    /// releases the lock by closing the descriptor.
    ///
    /// The path is removed only if it still names the locked file itself;
    /// a symbolic link or a different file at the path is left alone.
    /// Processes blocked on the removed file wake up holding a lock on a
    /// file that is gone: they must acquire with
    /// [`LockOptions::lock_verified`] (or [`block_flock_verified`]), which
    /// notices and retries on the new file. Someone who replaces the path
    /// without holding the lock (`rename(2)` over it) breaks the protocol.
    ///
    /// # Errors
    /// The lock is released in every case. [`Error::NotOwner`] in a forked
    /// child (nothing removed; the parent's lock is untouched);
    /// [`Error::PathChanged`] when the path no longer names the locked file
    /// (nothing removed); [`Error::InvalidPath`] for an adopted file;
    /// [`Error::Remove`] when `unlink(2)` fails; [`Error::Stat`].
    ///
    /// # Examples
    /// ```
    /// use flockguard::{block_flock_verified, Exclusive};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = block_flock_verified::<Exclusive>(&path)?;
    /// guard.unlink_and_unlock()?;
    /// assert!(!path.exists());
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [unlink(2)](https://man7.org/linux/man-pages/man2/unlink.2.html)
    pub fn unlink_and_unlock(self) -> Result<(), Error> {
        self.lock_file().check_owner()?;
        let path = known_path(&self)?;
        if !names_locked_file(path, self.as_fd())? {
            return Err(Error::PathChanged { path: path.into() });
        }
        // Unlink before the close that releases the lock: nobody can verify
        // the old file in between.
        sys::unlink(path).map_err(|source| Error::Remove {
            path: path.into(),
            source,
        })
    }
}

impl LockOptions {
    /// Opens `path`, takes the lock in mode `M` waiting as long as it
    /// takes, and checks that the path still names the locked file; if the
    /// file was removed or replaced meanwhile, starts over.
    ///
    /// When it returns, the path named the locked file after the lock was
    /// taken, so under the removal protocol (see
    /// [`LockGuard::unlink_and_unlock`]) no other process holds a lock on a
    /// different file at the same path. The check is on the path itself, so
    /// [`follow_symlinks(true)`](Self::follow_symlinks) is refused.
    ///
    /// # Errors
    /// Any error of [`open`](Self::open) and [`LockFile::lock`];
    /// [`Error::Stat`] when the path cannot be examined;
    /// [`Error::InvalidPath`] with `follow_symlinks(true)`.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{Exclusive, LockOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = LockOptions::new().mode(0o600).lock_verified::<Exclusive>(&path)?;
    /// guard.unlink_and_unlock()?;
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn lock_verified<M: Mode>(&self, path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
        self.acquire_verified(path.as_ref(), None, LockFile::lock)
    }

    /// As [`lock_verified`](Self::lock_verified), without waiting.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] on contention; [`Error::PathChanged`] when the
    /// file was removed or replaced between open and lock 16 times in a row;
    /// any error of [`open`](Self::open).
    pub fn try_lock_verified<M: Mode>(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<LockGuard<M>, Error> {
        self.acquire_verified(path.as_ref(), Some(TRY_VERIFY_RETRIES), |file| {
            file.try_lock().map_err(Error::from)
        })
    }

    /// The verify-and-retry loop shared by every verified acquisition.
    fn acquire_verified<M: Mode>(
        &self,
        path: &Path,
        retries: Option<u32>,
        lock: impl Fn(LockFile) -> Result<LockGuard<M>, Error>,
    ) -> Result<LockGuard<M>, Error> {
        if self.follows_symlinks() {
            return Err(Error::InvalidPath {
                path: path.into(),
                reason: "verified locking checks the path itself and cannot follow a symbolic link; turn off LockOptions::follow_symlinks",
            });
        }
        let mut attempts = 0u32;
        loop {
            let guard = lock(self.open(path)?)?;
            if names_locked_file(path, guard.as_fd())? {
                return Ok(guard);
            }
            drop(guard);
            attempts = attempts.saturating_add(1);
            if retries.is_some_and(|max| attempts >= max) {
                return Err(Error::PathChanged { path: path.into() });
            }
        }
    }
}

/// [`block_flock`](crate::block_flock) for lock files that may be removed:
/// [`LockOptions::lock_verified`] with the default options.
///
/// # Errors
/// As [`LockOptions::lock_verified`].
pub fn block_flock_verified<M: Mode>(path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
    LockOptions::new().lock_verified(path)
}

/// [`try_flock`](crate::try_flock) for lock files that may be removed:
/// [`LockOptions::try_lock_verified`] with the default options.
///
/// # Errors
/// As [`LockOptions::try_lock_verified`].
pub fn try_flock_verified<M: Mode>(path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
    LockOptions::new().try_lock_verified(path)
}
