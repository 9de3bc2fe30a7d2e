//! Timed acquisition: [`LockFile::lock_timeout`], [`LockFile::lock_with`]
//! and [`flock_timeout`], on top of the waiting machinery in `wait.rs`.

use std::fmt;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::guard::LockGuard;
use crate::holders::Holder;
use crate::lockfile::LockFile;
use crate::mode::{FlockMode, Mode};
use crate::options::LockOptions;
use crate::sys;
use crate::wait::{self, CancelToken, Stop};

/// How [`LockFile::lock_with`] waits: a deadline, a notice just before
/// waiting, a cancel token, and a description for the timeout message.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use flockguard::{Exclusive, LockFile, Wait};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let wait = Wait::new(Some(Duration::from_secs(30)))
///     .context("cache entry abc123")
///     .on_wait(|holders| {
///         eprintln!("Blocking waiting for file lock on the cache");
///         for h in holders {
///             eprintln!("  {h}");
///         }
///     });
/// let guard = LockFile::open(&path)?.lock_with::<Exclusive>(wait)?;
/// # drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// ```
#[must_use = "a Wait does nothing until passed to LockFile::lock_with"]
pub struct Wait<'a> {
    timeout: Option<Duration>,
    on_wait: Option<OnWait<'a>>,
    cancel: Option<&'a CancelToken>,
    context: Option<String>,
}

/// The about-to-wait notice of a [`Wait`].
type OnWait<'a> = Box<dyn FnOnce(&[Holder]) + 'a>;

impl<'a> Wait<'a> {
    /// Waits at most `timeout`; `None` waits until the lock is taken (or
    /// the wait is cancelled). `Some(Duration::ZERO)` makes a single
    /// attempt.
    pub fn new(timeout: Option<Duration>) -> Self {
        Wait {
            timeout,
            on_wait: None,
            cancel: None,
            context: None,
        }
    }

    /// Calls `notice` once, just before the call starts waiting, with the
    /// processes holding or waiting for the lock at that moment (empty if
    /// none is visible). Not called when the lock is taken at once, nor for
    /// a zero timeout.
    pub fn on_wait(mut self, notice: impl FnOnce(&[Holder]) + 'a) -> Self {
        self.on_wait = Some(Box::new(notice));
        self
    }

    /// Gives up with [`Error::Cancelled`] when `token` is cancelled, from
    /// any thread; a token cancelled before the call makes it return at
    /// once without taking the lock.
    pub fn cancel(mut self, token: &'a CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// What the lock protects, such as `"cache entry abc123"`; carried into
    /// [`Error::Timeout`] and its message.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }
}

impl fmt::Debug for Wait<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait")
            .field("timeout", &self.timeout)
            .field("on_wait", &self.on_wait.is_some())
            .field("cancel", &self.cancel)
            .field("context", &self.context)
            .finish()
    }
}

impl LockFile {
    /// Takes the lock in mode `M`, waiting at most `timeout`.
    ///
    /// A release by a holder that closes its descriptor or exits is noticed
    /// at once (an inotify close event); a release by `flock(LOCK_UN)` alone
    /// is noticed by a back-off retry within 100 ms. `Duration::ZERO`
    /// makes a single attempt. No signal handler is installed and no thread
    /// is started, and the guard holds no descriptor besides the lock
    /// file's: every wait in the process shares one inotify instance. A
    /// waiter here is not queued in the kernel, so processes blocked in
    /// `flock(2)` may take the lock first.
    ///
    /// # Errors
    /// [`Error::Timeout`], naming the holders at the deadline;
    /// [`Error::Flock`] for other `flock(2)` failures. Either way the error
    /// gives the file back.
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
    /// println!("{err}"); // timed out after 10ms waiting for exclusive lock on `…`; pid … holds exclusive
    /// drop(held);
    /// let guard = err.into_inner().lock_timeout::<Exclusive>(Duration::from_secs(1))?;
    /// # drop(guard);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    /// - [inotify(7)](https://man7.org/linux/man-pages/man7/inotify.7.html)
    pub fn lock_timeout<M: Mode>(self, timeout: Duration) -> Result<LockGuard<M>, TimeoutError> {
        self.lock_with(Wait::new(Some(timeout)))
    }

    /// Takes the lock in mode `M`, waiting as `wait` says; see
    /// [`lock_timeout`](Self::lock_timeout) for how the wait works.
    ///
    /// Without a deadline and without a cancel token the wait happens in
    /// the kernel (a blocking `flock(2)`), after the [`Wait::on_wait`]
    /// notice.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Cancelled`], or [`Error::Flock`];
    /// [`Error::NotOwner`] in a forked child. The error gives the file back.
    ///
    /// # References
    /// - [flock(2)](https://man7.org/linux/man-pages/man2/flock.2.html)
    pub fn lock_with<M: Mode>(self, wait: Wait<'_>) -> Result<LockGuard<M>, TimeoutError> {
        let start = Instant::now();
        let Wait {
            timeout,
            on_wait,
            cancel,
            context,
        } = wait;
        let mode = M::MODE;
        if let Err(error) = self.check_owner() {
            return Err(TimeoutError { error, file: self });
        }
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(self.stopped(Stop::Cancelled, mode, start, context));
        }
        match sys::flock(self.as_fd(), mode, true) {
            Ok(()) => return Ok(LockGuard::new(self)),
            Err(err) if sys::is_contention(&err) => {}
            Err(err) => return Err(self.failed(mode, err)),
        }
        if timeout == Some(Duration::ZERO) {
            return Err(self.stopped(Stop::TimedOut, mode, start, context));
        }
        let notify = |file: &LockFile| {
            if let Some(notice) = on_wait {
                notice(&file.holders().unwrap_or_default());
            }
        };
        let deadline = timeout.and_then(|t| start.checked_add(t));
        if deadline.is_none() && cancel.is_none() {
            notify(&self);
            return match sys::flock(self.as_fd(), mode, false) {
                Ok(()) => Ok(LockGuard::new(self)),
                Err(err) => Err(self.failed(mode, err)),
            };
        }
        notify(&self);
        let outcome = wait::acquire(self.as_fd(), self.path(), mode, deadline, cancel);
        match outcome {
            Ok(Ok(())) => Ok(LockGuard::new(self)),
            Ok(Err(stop)) => Err(self.stopped(stop, mode, start, context)),
            Err(err) => Err(self.failed(mode, err)),
        }
    }

    fn failed(self, mode: FlockMode, source: std::io::Error) -> TimeoutError {
        TimeoutError {
            error: self.flock_error(mode, source),
            file: self,
        }
    }

    fn stopped(
        self,
        stop: Stop,
        mode: FlockMode,
        start: Instant,
        context: Option<String>,
    ) -> TimeoutError {
        let path = self.error_path();
        let waited = start.elapsed();
        let error = match stop {
            Stop::TimedOut => Error::Timeout {
                path,
                mode,
                waited,
                // Diagnostics must not hide the timeout: a failed read of
                // /proc leaves the list empty.
                holders: self.holders().unwrap_or_default(),
                context: context.map(String::into_boxed_str),
            },
            Stop::Cancelled => Error::Cancelled { path, mode, waited },
        };
        TimeoutError { error, file: self }
    }
}

/// Opens (creating if missing) the lock file at `path` and takes the lock
/// in mode `M`, waiting at most `timeout`; see [`LockFile::lock_timeout`].
///
/// # Errors
/// Any error of [`LockOptions::open`](crate::LockOptions::open);
/// [`Error::Timeout`] naming the holders; [`Error::Flock`]. The descriptor
/// is closed.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use flockguard::{flock_timeout, Shared};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let guard = flock_timeout::<Shared>(&path, Duration::from_secs(5))?;
/// # drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// ```
pub fn flock_timeout<M: Mode>(
    path: impl AsRef<Path>,
    timeout: Duration,
) -> Result<LockGuard<M>, Error> {
    LockOptions::new().lock_timeout(path, timeout)
}

impl LockOptions {
    /// Opens the lock file at `path` with these options and takes the lock
    /// in mode `M`, waiting at most `timeout`; see
    /// [`LockFile::lock_timeout`].
    ///
    /// # Errors
    /// Any error of [`open`](Self::open); [`Error::Timeout`] naming the
    /// holders; [`Error::Flock`] for other `flock(2)` failures.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use flockguard::{Exclusive, LockOptions, RemoteFs};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.lock");
    /// let guard = LockOptions::new()
    ///     .remote_fs(RemoteFs::Allow)
    ///     .lock_timeout::<Exclusive>(&path, Duration::from_secs(5))?;
    /// # drop(guard);
    /// # Ok::<(), flockguard::Error>(())
    /// ```
    pub fn lock_timeout<M: Mode>(
        &self,
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<LockGuard<M>, Error> {
        Ok(self.open(path)?.lock_timeout(timeout)?)
    }
}

/// The error of [`LockFile::lock_timeout`] and [`LockFile::lock_with`]: why
/// the lock was not taken, and the [`LockFile`] back, holding no lock.
#[derive(Debug)]
pub struct TimeoutError {
    /// Why the lock was not taken: [`Error::Timeout`], [`Error::Cancelled`]
    /// or [`Error::Flock`].
    pub error: Error,
    /// The file, open and holding no lock.
    pub file: LockFile,
}

crate::error::error_with_file!(TimeoutError);

impl TimeoutError {
    /// Whether the deadline passed ([`Error::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        self.error.is_timeout()
    }

    /// Whether the wait was cancelled ([`Error::Cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        self.error.is_cancelled()
    }
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}
