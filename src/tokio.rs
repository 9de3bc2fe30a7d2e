//! Async acquisition on tokio: the [`LockFile`] acquisitions as futures that
//! never block an executor thread.
//!
//! A waiting future sleeps until a holder closes the lock file, woken
//! through tokio's reactor, and retries on tokio's timer: no blocking
//! `flock(2)`, no `spawn_blocking`, no thread. Every waiter in the process,
//! async or not, shares one inotify instance; one of them at a time reads
//! it (for an async waiter, by registering it with its runtime's reactor)
//! and wakes the waiters of the file that was closed. A release by
//! `flock(LOCK_UN)` without a close raises no event and is noticed by a
//! jittered back-off retry, within about 125 ms. While a task holds the
//! reader role, the other waiters of the process depend on its runtime
//! being driven. If it is not (a current-thread runtime between
//! `block_on` calls), a waiting thread takes the role over at its next
//! back-off retry; tasks on other runtimes are left to the back-off until
//! it runs again or the task is dropped.
//!
//! A timeout error's holder list is read on the polling thread shortly
//! before the deadline: one read of `/proc/locks` (milliseconds when
//! cold) plus the [`Wait::diagnostics`](crate::Wait::diagnostics) budget.
//!
//! The futures are `Send` and **cancel-safe**: dropping one at any point
//! leaves no lock taken by it and closes what it opened. A lock taken in
//! the poll that completes the future is returned as the guard. Guards are
//! the ordinary [`LockGuard`]; their release and the conversions that never
//! wait ([`LockGuard::downgrade`], [`LockGuard::try_upgrade`]) stay
//! synchronous. [`LockGuard::upgrade`] waits in `flock(2)` and so blocks the
//! thread; use [`upgrade`] instead.
//!
//! Opening a lock file ([`flock_timeout`], [`block_flock`]) is a plain
//! `open(2)` on the calling thread, as for a local file it takes
//! microseconds.
//!
//! # Panics
//! The futures need a runtime with the IO and time drivers enabled
//! (`Builder::enable_all`); tokio panics otherwise.
//!
//! # Examples
//! ```
//! use std::time::Duration;
//! use flockguard::{Exclusive, LockFile};
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("app.lock");
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! let guard = flockguard::tokio::flock_timeout::<Exclusive>(&path, Duration::from_secs(5)).await?;
//! // Another task waits without blocking the thread.
//! let waiter = tokio::spawn({
//!     let path = path.clone();
//!     async move { flockguard::tokio::block_flock::<Exclusive>(&path).await }
//! });
//! drop(guard);
//! let second = waiter.await.unwrap()?;
//! # drop(second);
//! # Ok::<(), flockguard::Error>(())
//! # }).unwrap();
//! ```

use std::future::Future;
use std::os::fd::AsFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::Interest;
use ::tokio::time::Sleep;

use crate::error::{Error, LockError};
use crate::holder::Holder;
use crate::kind::LockKind;
use crate::lock::{diagnostics_due, AnyGuard, LockFile, LockGuard};
use crate::mode::{Exclusive, FlockMode, Mode, Shared};
use crate::sys;
use crate::wait::{
    self, CancelToken, Deadline, HubFd, Notice, Registration, Schedule, Wait, Waking,
};

/// Opens `path` with the default [`LockOptions`](crate::LockOptions) and
/// takes the lock in mode `M`, waiting at most `timeout`.
///
/// # Errors
/// As [`LockOptions::open`](crate::LockOptions::open);
/// [`Error::Timeout`] naming the holders; [`Error::Flock`]. The descriptor
/// is closed.
pub async fn flock_timeout<M: Mode>(
    path: impl AsRef<Path>,
    timeout: Duration,
) -> Result<LockGuard<M>, Error> {
    let file = LockFile::open(path)?;
    Ok(lock_timeout(file, timeout).await?)
}

/// Opens `path` with the default [`LockOptions`](crate::LockOptions) and
/// takes the lock in mode `M`, waiting as long as it takes, without
/// blocking the thread.
///
/// # Errors
/// As [`LockOptions::open`](crate::LockOptions::open); [`Error::Flock`].
/// The descriptor is closed.
pub async fn block_flock<M: Mode>(path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
    let file = LockFile::open(path)?;
    Ok(lock(file).await?)
}

/// [`LockFile::lock`]: takes the lock in mode `M`, waiting as long as it
/// takes, without blocking the thread.
///
/// # Errors
/// [`Error::NotOwner`] in a forked child, [`Error::Flock`]; the error
/// gives the file back.
pub async fn lock<M: Mode>(file: LockFile) -> Result<LockGuard<M>, LockError<LockFile>> {
    lock_with(file, Wait::forever()).await
}

/// [`LockFile::lock_timeout`]: takes the lock in mode `M`, waiting at most
/// `timeout`.
///
/// # Errors
/// [`Error::Timeout`] naming the holders, [`Error::NotOwner`],
/// [`Error::Flock`]; the error gives the file back.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use flockguard::{Exclusive, LockFile};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let held = LockFile::open(&path)?.lock::<Exclusive>()?;
/// let err = flockguard::tokio::lock_timeout::<Exclusive>(LockFile::open(&path)?, Duration::from_millis(20))
///     .await
///     .unwrap_err();
/// assert!(err.is_timeout());
/// drop(held);
/// let guard = flockguard::tokio::lock_timeout::<Exclusive>(err.into_inner(), Duration::from_secs(5)).await?;
/// # drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// # }).unwrap();
/// ```
pub async fn lock_timeout<M: Mode>(
    file: LockFile,
    timeout: Duration,
) -> Result<LockGuard<M>, LockError<LockFile>> {
    lock_with(file, Wait::timeout(timeout)).await
}

/// [`LockFile::lock_until`]: takes the lock in mode `M`, waiting until
/// `deadline`.
///
/// # Errors
/// As [`lock_timeout`].
pub async fn lock_until<M: Mode>(
    file: LockFile,
    deadline: Instant,
) -> Result<LockGuard<M>, LockError<LockFile>> {
    lock_with(file, Wait::until(deadline)).await
}

/// [`LockFile::lock_with`]: takes the lock in mode `M`, waiting as `wait`
/// says. [`Wait::forever`] waits on events too, never in `flock(2)`; the
/// [`Wait::on_wait`] notice runs on the polling thread.
///
/// # Errors
/// [`Error::WouldBlock`] for [`Wait::none`] on contention,
/// [`Error::Timeout`], [`Error::Cancelled`], [`Error::NotOwner`],
/// [`Error::Flock`], and for a file opened with
/// [`LockOptions::verify_path`](crate::LockOptions::verify_path) the errors
/// of reopening it; the error gives the file back.
pub async fn lock_with<M: Mode>(
    file: LockFile,
    wait: Wait<'_>,
) -> Result<LockGuard<M>, LockError<LockFile>> {
    let file = Acquire::new(file, M::MODE, wait).await?;
    Ok(LockGuard::new_locked(file))
}

/// [`LockFile::lock_any`]: takes the lock in a mode chosen at run time,
/// waiting as `wait` says.
///
/// # Errors
/// As [`lock_with`].
pub async fn lock_any(
    file: LockFile,
    mode: FlockMode,
    wait: Wait<'_>,
) -> Result<AnyGuard, LockError<LockFile>> {
    let file = Acquire::new(file, mode, wait).await?;
    Ok(match mode {
        FlockMode::Exclusive => AnyGuard::Exclusive(LockGuard::new_locked(file)),
        FlockMode::Shared => AnyGuard::Shared(LockGuard::new_locked(file)),
    })
}

/// [`LockGuard::upgrade`] without blocking the thread: converts a shared
/// lock to an exclusive one, waiting as long as it takes.
///
/// On a flock file, as with `flock(2)`, the shared lock is dropped first
/// when others hold the lock, and the wait holds nothing: re-read what the
/// lock protects afterwards. An OFD file keeps its shared lock while it
/// waits, with the upgrade ticket [`LockGuard::upgrade`] describes.
/// Dropping the future during the wait closes the file.
///
/// # Errors
/// [`Error::NotOwner`] in a forked child (the lock untouched),
/// [`Error::Flock`], [`Error::OfdNeedsWrite`],
/// [`Error::UpgradeDeadlock`]; the error gives the file back, unlocked.
pub async fn upgrade(
    guard: LockGuard<Shared>,
) -> Result<LockGuard<Exclusive>, LockError<LockFile>> {
    if let Err(error) = guard.file_ref().check_owner() {
        return Err(LockError::new(error, guard.into_locked_file()));
    }
    if guard.kind() == LockKind::Flock {
        return lock_with(guard.into_locked_file(), Wait::forever()).await;
    }
    // An OFD file waits holding its shared lock, and with the upgrade
    // ticket (see LockGuard::upgrade); a failure lets the lock go, so the
    // file comes back holding nothing on either kind.
    let guard = match guard.try_upgrade_in_place() {
        Ok(writer) => return Ok(writer),
        Err(err) if err.is_would_block() => err.into_inner(),
        Err(err) => {
            let file = err.handle.into_locked_file();
            file.let_go();
            return Err(LockError::new(err.error, file));
        }
    };
    let file = guard.into_locked_file();
    let ticket = match file.upgrade_ticket() {
        Ok(ticket) => ticket,
        Err(error) => {
            file.let_go();
            return Err(LockError::new(error, file));
        }
    };
    let writer = lock_with(file, Wait::forever()).await.map_err(|err| {
        err.handle.let_go();
        err
    });
    drop(ticket);
    writer
}

/// The future behind every acquisition: owns the file until it completes.
///
/// Fields drop in order: the reactor registration of the hub's descriptor
/// before the hub registration that holds the reader role, so that the
/// next reader can register the descriptor with the same runtime.
struct Acquire<'a> {
    reader: Option<AsyncFd<HubFd>>,
    /// The hub registration and the retry schedule, made together on the
    /// first contention.
    wait: Option<(Registration, Schedule)>,
    sleep: Option<Pin<Box<Sleep>>>,
    file: Option<LockFile>,
    mode: FlockMode,
    deadline: Deadline,
    /// When the wait started and when it ends; set by the first poll.
    start: Option<(Instant, Option<Instant>)>,
    notice: Option<Notice<'a>>,
    cancel: Option<CancelToken>,
    context: Option<String>,
    diagnostics: Duration,
    /// The holders for a timeout error, read shortly before the deadline.
    holders: Option<Vec<Holder>>,
    attempts: u32,
}

impl<'a> Acquire<'a> {
    fn new(file: LockFile, mode: FlockMode, wait: Wait<'a>) -> Self {
        let Wait {
            deadline,
            notice,
            cancel,
            context,
            diagnostics,
        } = wait;
        Acquire {
            reader: None,
            wait: None,
            sleep: None,
            file: Some(file),
            mode,
            deadline,
            start: None,
            notice,
            cancel,
            context,
            diagnostics,
            holders: None,
            attempts: 0,
        }
    }

    /// Leaves the hub: the reactor registration is parked for the next
    /// reader before the hub registration hands the reader role on.
    fn leave(&mut self, acquired: bool) {
        if let Some(reader) = self.reader.take() {
            park(reader);
        }
        if let Some((mut reg, _)) = self.wait.take() {
            if acquired {
                reg.acquired();
            }
        }
    }

    fn fail(&mut self, error: impl FnOnce(&LockFile) -> Error) -> Poll<<Self as Future>::Output> {
        self.leave(false);
        let file = self.file.take().expect("polled after completion");
        Poll::Ready(Err(LockError::new(error(&file), file)))
    }

    fn step(&mut self, cx: &mut Context<'_>) -> Poll<<Self as Future>::Output> {
        let (start, until) = *self.start.get_or_insert_with(|| {
            let now = Instant::now();
            (now, self.deadline.resolve(now))
        });
        let mut retried = false;
        loop {
            let mode = self.mode;
            let file = self.file.as_ref().expect("polled after completion");
            if self.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                return self.fail(|f| f.cancelled_error(mode, start));
            }
            if let Err(error) = file.check_write(mode) {
                return self.fail(|_| error);
            }
            match sys::lock(file.as_fd(), file.kind(), mode, sys::OnConflict::Fail) {
                Ok(()) => {
                    self.leave(true);
                    let deadline = self.deadline;
                    let file = self.file.as_mut().expect("polled after completion");
                    match file.settle(deadline, &mut self.attempts) {
                        Ok(true) => {
                            return Poll::Ready(Ok(self.file.take().expect("present")));
                        }
                        // Reopened: lock the file the path names now.
                        Ok(false) => continue,
                        Err(error) => return self.fail(|_| error),
                    }
                }
                Err(err) if sys::is_contention(&err) && self.deadline != Deadline::None => {}
                Err(err) => return self.fail(|f| f.flock_error(mode, err)),
            }
            let now = Instant::now();
            if until.is_some_and(|until| now >= until) {
                let context = self.context.take();
                let diagnostics = self.diagnostics;
                let holders = self.holders.take();
                return self.fail(|f| {
                    f.timeout_error(mode, start, context.as_deref(), holders, diagnostics)
                });
            }
            // As in the blocking wait, the holders for a timeout error are
            // read before the deadline, so that the deadline is not passed
            // while /proc/locks is read.
            let early = until.map(diagnostics_due);
            if self.holders.is_none() && early.is_some_and(|early| now >= early) {
                self.holders = Some(file.holders_within(self.diagnostics));
            }
            if let Some(notice) = self.notice.take() {
                notice(&file.holders_within(self.diagnostics));
            }
            let Some((reg, schedule)) = &mut self.wait else {
                let reg = Registration::new(
                    file.as_fd(),
                    file.path(),
                    mode,
                    Waking::Task(cx.waker()),
                    self.cancel.as_ref(),
                );
                let mut schedule = Schedule::new(until);
                if reg.is_watched() {
                    schedule.on_watch();
                }
                self.wait = Some((reg, schedule));
                // A release before the watch was placed raised no event
                // for this waiter: try again first.
                continue;
            };
            reg.set_waker(cx.waker());
            if reg.is_reader() && self.reader.is_none() {
                self.reader = reg.hub_fd().and_then(reactor_registration);
            }
            match &self.reader {
                Some(reader) => loop {
                    match reader.poll_read_ready(cx) {
                        Poll::Ready(Ok(mut ready)) => {
                            // Read to EAGAIN, so readiness may be cleared.
                            let _ = reg.dispatch();
                            ready.clear_ready();
                        }
                        Poll::Ready(Err(_)) => {
                            // The reactor refused: read on every poll.
                            let _ = reg.dispatch();
                            break;
                        }
                        Poll::Pending => break,
                    }
                },
                // No reactor registration: read on every poll instead.
                None if reg.is_reader() => {
                    let _ = reg.dispatch();
                }
                None => {}
            }
            if reg.take_notified() {
                schedule.on_close(now);
                // A close was just reported: try again before yielding,
                // once per poll, so that a stream of closes cannot keep
                // the task from yielding.
                if !retried {
                    retried = true;
                    continue;
                }
            }
            let mut pause = schedule.next(now);
            if let Some(early) = early.filter(|_| self.holders.is_none()) {
                pause = pause.min(early.saturating_duration_since(now));
            }
            if pause.is_zero() {
                // Retry after the executor has run what else is ready.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let at = ::tokio::time::Instant::from_std(now + pause);
            let sleep = match &mut self.sleep {
                Some(sleep) => {
                    sleep.as_mut().reset(at);
                    sleep
                }
                None => self.sleep.insert(Box::pin(::tokio::time::sleep_until(at))),
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// The reactor registration of the last async reader, kept so that leaving
/// with the lock costs no `epoll_ctl(2)`; the next reader reuses it when it
/// belongs to the same runtime.
static PARKED: Mutex<Option<AsyncFd<HubFd>>> = Mutex::new(None);

fn parked() -> MutexGuard<'static, Option<AsyncFd<HubFd>>> {
    wait::lock(&PARKED)
}

fn park(reader: AsyncFd<HubFd>) {
    let old = parked().replace(reader);
    // Only one reader at a time, and it took what was parked.
    drop(old);
}

/// The hub's descriptor registered with the current runtime's reactor: the
/// parked registration if it is this runtime's (a second registration of
/// the descriptor there fails with `EEXIST`), else a new one.
fn reactor_registration(fd: HubFd) -> Option<AsyncFd<HubFd>> {
    let old = parked().take().filter(|old| old.get_ref().same_hub(&fd));
    match register(fd) {
        // A fresh registration: `old`, if any, was another runtime's.
        Ok(new) => Some(new),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => old,
        Err(_) => None,
    }
}

/// Registers the hub's descriptor with the current runtime's reactor.
// The safe constructor, deprecated in favour of an unsafe one: `HubFd` owns
// (shares) the hub, so its descriptor stays open and the same while the
// `AsyncFd` lives, which is the I/O safety the deprecation is about.
#[allow(deprecated)]
fn register(fd: HubFd) -> std::io::Result<AsyncFd<HubFd>> {
    AsyncFd::with_interest(fd, Interest::READABLE)
}

impl Future for Acquire<'_> {
    type Output = Result<LockFile, LockError<LockFile>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().step(cx)
    }
}

impl std::fmt::Debug for Acquire<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquire")
            .field("file", &self.file)
            .field("mode", &self.mode)
            .field("deadline", &self.deadline)
            .field("reader", &self.reader.is_some())
            .finish_non_exhaustive()
    }
}
