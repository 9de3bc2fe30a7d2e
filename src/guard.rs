//! [`LockGuard`]: a held lock whose mode is part of its type, and its
//! transitions.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use crate::error::Error;
use crate::lockfile::LockFile;
use crate::mode::{Exclusive, FlockMode, Mode, Shared};
use crate::sys;

/// A held `flock(2)` lock in mode `M` ([`Exclusive`] or [`Shared`]).
///
/// The guard owns the lock file's descriptor. Dropping it closes the
/// descriptor, which releases the lock once no other descriptor (from
/// `dup(2)` or `fork(2)`) refers to the same open file description; drop
/// never blocks and never panics. [`unlock`](Self::unlock) releases
/// explicitly, reports errors and keeps the descriptor for reuse.
///
/// Every guard is [`Read`] and [`Seek`]; only `LockGuard<Exclusive>` is
/// [`Write`] and has [`set_len`](LockGuard::set_len), so a shared holder
/// cannot modify the file through the guard:
///
/// ```compile_fail
/// use std::io::Write;
/// # fn f(mut guard: flockguard::LockGuard<flockguard::Shared>) {
/// guard.write_all(b"no").unwrap();
/// # }
/// ```
///
/// ```compile_fail
/// # fn f(guard: flockguard::LockGuard<flockguard::Shared>) {
/// guard.set_len(0).unwrap();
/// # }
/// ```
#[must_use = "if unused the lock is released immediately"]
#[clippy::has_significant_drop]
pub struct LockGuard<M: Mode> {
    file: LockFile,
    mode: PhantomData<M>,
}

impl<M: Mode> LockGuard<M> {
    pub(crate) fn new(file: LockFile) -> Self {
        LockGuard {
            file,
            mode: PhantomData,
        }
    }

    /// The path the lock file was opened by, or `None` for an adopted file.
    pub fn path(&self) -> Option<&Path> {
        self.file.path()
    }

    /// The open lock file behind the guard.
    pub(crate) fn lock_file(&self) -> &LockFile {
        &self.file
    }

    /// The mode held: `M::MODE`.
    pub fn mode(&self) -> FlockMode {
        M::MODE
    }

    /// Releases the lock with `flock(LOCK_UN)` and returns the still-open
    /// file for reuse.
    ///
    /// # Errors
    /// [`Error::NotOwner`] when called in a process other than the one that
    /// opened the file (a `fork(2)` child): `LOCK_UN` there would release the
    /// lock for the parent too, so the lock is left untouched and this
    /// process's descriptor is closed. [`Error::Unlock`] if `flock(2)` fails;
    /// the descriptor is closed, which releases the lock.
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    #[doc(alias = "LOCK_UN")]
    pub fn unlock(self) -> Result<LockFile, Error> {
        self.file.check_owner()?;
        match sys::funlock(self.file.as_fd()) {
            Ok(()) => Ok(self.file),
            Err(source) => Err(Error::Unlock {
                path: self.file.error_path(),
                source,
            }),
        }
    }

    /// Converts to a different mode with one `flock(2)` call; consumes the
    /// guard. Internal: the public transitions state what the kernel does.
    fn convert<N: Mode>(self, nonblocking: bool) -> Result<LockGuard<N>, (Error, LockFile)> {
        if let Err(err) = self.file.check_owner() {
            return Err((err, self.file));
        }
        match sys::flock(self.file.as_fd(), N::MODE, nonblocking) {
            Ok(()) => Ok(LockGuard::new(self.file)),
            Err(source) => {
                let err = self.file.flock_error(N::MODE, source);
                Err((err, self.file))
            }
        }
    }
}

impl LockGuard<Exclusive> {
    /// Converts the exclusive lock to a shared one, without letting go.
    ///
    /// On Linux the conversion happens under the inode's lock, so no waiting
    /// exclusive locker slips in between; `flock(2)` does not promise an
    /// atomic conversion, so code that needs one on other kernels must not
    /// rely on it.
    ///
    /// A shared guard has no `downgrade`:
    ///
    /// ```compile_fail
    /// # fn f(guard: flockguard::LockGuard<flockguard::Shared>) {
    /// let _ = guard.downgrade();
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotOwner`] in a forked child; [`Error::Flock`] if `flock(2)`
    /// fails, with the descriptor closed.
    ///
    /// # Examples
    /// ```
    /// use flockguard::{try_flock, Exclusive, Shared};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let writer = try_flock::<Exclusive>(&path)?;
    /// let reader = writer.downgrade()?;
    /// let other = try_flock::<Shared>(&path)?; // readers may now join
    /// # drop((reader, other));
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn downgrade(self) -> Result<LockGuard<Shared>, Error> {
        // LOCK_NB: converting down never conflicts, so it must never wait.
        self.convert(true).map_err(|(err, _)| err)
    }

    /// Truncates or extends the lock file to `len` bytes.
    ///
    /// # Errors
    /// The error of `ftruncate(2)`, such as `EBADF` when the file was opened
    /// read-only.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.file().set_len(len)
    }

    /// Flushes the file's data and metadata to storage (`fsync(2)`).
    ///
    /// # Errors
    /// The error of `fsync(2)`.
    pub fn sync_all(&self) -> io::Result<()> {
        self.file.file().sync_all()
    }
}

impl LockGuard<Shared> {
    /// Converts the shared lock to an exclusive one, waiting as long as it
    /// takes. **Not atomic:** the kernel drops the shared lock first and
    /// holds nothing while it waits, so another process may take and release
    /// an exclusive lock in between. Re-validate anything read under the
    /// shared lock once this returns.
    ///
    /// # Errors
    /// [`Error::NotOwner`] in a forked child; [`Error::Flock`] if `flock(2)`
    /// fails, with the descriptor closed.
    ///
    /// # Examples
    /// ```
    /// use std::io::{Read, Seek, SeekFrom, Write};
    /// use flockguard::{block_flock, Shared};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("counter.lock");
    /// let mut reader = block_flock::<Shared>(&path)?;
    /// let mut seen = String::new();
    /// reader.read_to_string(&mut seen).unwrap();
    /// let mut writer = reader.upgrade()?;
    /// // Read again: someone may have written between the two locks.
    /// let mut now = String::new();
    /// writer.seek(SeekFrom::Start(0)).unwrap();
    /// writer.read_to_string(&mut now).unwrap();
    /// writer.write_all(b"+").unwrap();
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    pub fn upgrade(self) -> Result<LockGuard<Exclusive>, Error> {
        self.convert(false).map_err(|(err, _)| err)
    }

    /// Tries to convert the shared lock to an exclusive one without waiting.
    ///
    /// **On contention the shared lock is lost:** the kernel removes it
    /// before it looks for conflicts. The error therefore gives back an
    /// unlocked [`LockFile`], never a shared guard. Any other failure also
    /// leaves the file unlocked.
    ///
    /// An exclusive guard has no `try_upgrade`:
    ///
    /// ```compile_fail
    /// # fn f(guard: flockguard::LockGuard<flockguard::Exclusive>) {
    /// let _ = guard.try_upgrade();
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`TryUpgradeError`], whose [`error`](TryUpgradeError::error) is
    /// [`Error::WouldBlock`] on contention, [`Error::Flock`] for other
    /// `flock(2)` failures, [`Error::NotOwner`] in a forked child (whose
    /// parent keeps its shared lock).
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
    /// let unlocked = err.into_inner(); // the shared lock is gone
    /// # drop((other, unlocked));
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn try_upgrade(self) -> Result<LockGuard<Exclusive>, TryUpgradeError> {
        self.convert(true).map_err(|(error, file)| {
            if !error.is_would_block() && !matches!(error, Error::NotOwner { .. }) {
                // The kernel may or may not have dropped the shared lock
                // before failing; make "unlocked" true either way.
                let _ = sys::funlock(file.as_fd());
            }
            TryUpgradeError { error, file }
        })
    }
}

impl<M: Mode> fmt::Debug for LockGuard<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("path", &self.file.path())
            .field("mode", &M::MODE)
            .field("fd", &self.file.as_raw_fd())
            .finish()
    }
}

impl<M: Mode> AsFd for LockGuard<M> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl<M: Mode> AsRawFd for LockGuard<M> {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl<M: Mode> Read for LockGuard<M> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.file().read(buf)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.file.file().read_to_end(buf)
    }
}

impl<M: Mode> Seek for LockGuard<M> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.file().seek(pos)
    }
}

impl Write for LockGuard<Exclusive> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.file().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.file().flush()
    }
}

/// The error of [`LockGuard::<Shared>::try_upgrade`]: why the exclusive lock
/// was not taken, and the [`LockFile`] back, holding **no** lock.
#[derive(Debug)]
pub struct TryUpgradeError {
    /// Why the upgrade failed: [`Error::WouldBlock`] on contention.
    pub error: Error,
    /// The file, open and holding no lock: the shared lock was lost. With
    /// [`Error::NotOwner`] (a `fork(2)` child) the lock of the process that
    /// opened the file was left as it was.
    pub file: LockFile,
}

crate::error::error_with_file!(TryUpgradeError);

impl TryUpgradeError {
    /// Whether another holder prevented the upgrade.
    pub fn is_would_block(&self) -> bool {
        self.error.is_would_block()
    }
}

impl fmt::Display for TryUpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.error {
            Error::NotOwner { .. } => fmt::Display::fmt(&self.error, f),
            _ => write!(f, "{}; the shared lock was released", self.error),
        }
    }
}

/// A guard whose mode was chosen at run time.
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

    /// The path the lock file was opened by.
    pub fn path(&self) -> Option<&Path> {
        match self {
            AnyGuard::Exclusive(g) => g.path(),
            AnyGuard::Shared(g) => g.path(),
        }
    }

    /// See [`LockGuard::unlock`].
    ///
    /// # Errors
    /// As [`LockGuard::unlock`].
    pub fn unlock(self) -> Result<LockFile, Error> {
        match self {
            AnyGuard::Exclusive(g) => g.unlock(),
            AnyGuard::Shared(g) => g.unlock(),
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

impl LockFile {
    /// Takes the lock in a mode chosen at run time, without waiting.
    ///
    /// # Errors
    /// As [`LockFile::try_lock`].
    pub fn try_lock_mode(self, mode: FlockMode) -> Result<AnyGuard, crate::TryLockError> {
        match mode {
            FlockMode::Exclusive => self.try_lock::<Exclusive>().map(AnyGuard::from),
            FlockMode::Shared => self.try_lock::<Shared>().map(AnyGuard::from),
        }
    }

    /// Takes the lock in a mode chosen at run time, waiting as needed.
    ///
    /// # Errors
    /// As [`LockFile::lock`].
    pub fn lock_mode(self, mode: FlockMode) -> Result<AnyGuard, Error> {
        match mode {
            FlockMode::Exclusive => self.lock::<Exclusive>().map(AnyGuard::from),
            FlockMode::Shared => self.lock::<Shared>().map(AnyGuard::from),
        }
    }

    /// Releases whatever lock this open file description holds, with
    /// `flock(LOCK_UN)`; a no-op when it holds none.
    ///
    /// A file adopted with [`LockOptions::adopt`](crate::LockOptions::adopt)
    /// may arrive holding a lock taken before the descriptor was passed in,
    /// as with `flock -u 9` in a shell script; this releases it for every
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
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    #[doc(alias = "LOCK_UN")]
    pub fn unlock_inherited(&self) -> Result<(), Error> {
        self.check_owner()?;
        sys::funlock(self.as_fd()).map_err(|source| Error::Unlock {
            path: self.error_path(),
            source,
        })
    }
}
