//! Async acquisition on tokio: the [`LockFile`] acquisitions as futures that
//! never block an executor thread.
//!
//! A waiting future sleeps until a holder closes the lock file, woken
//! through tokio's reactor, and retries on a `timerfd(2)` registered with
//! the reactor: no blocking `flock(2)` and no thread of its own. The
//! kernel's timer wakes the runtime once per retry, where tokio's timer
//! wheel would wake it twice for a sleep that crosses a 64 ms slot. The
//! first 64 waiting tasks of a process have a timer each; a wait that ends
//! keeps its timer open, disarmed, for the next wait on the same runtime,
//! so ending a wait costs no system call for it. The tasks beyond them
//! share one timer per runtime, set for the earliest of their instants;
//! the reactor's wake-up reads it and wakes the tasks whose instants have
//! passed, so every waiting task, however many, costs one wake-up per
//! retry, and the descriptors stay bounded (one shared timer per runtime
//! whose tasks use one, closed when another runtime needs one). A retry
//! 10 ms or more away ends at the end of its millisecond, so that the
//! timers of many tasks expire together; a deadline is kept exactly.
//! Tasks whose timer the kernel or the reactor refuses retry on tokio's
//! timer. It follows the same waiting rules
//! as a blocked thread (the crate's waiting core decides each step; the
//! future performs it). Every waiter in the process,
//! async or not, shares one inotify instance; one of them at a time reads
//! it (for an async waiter, by registering it with its runtime's reactor)
//! and wakes the waiters of the file that was closed. A release by
//! `flock(LOCK_UN)` without a close raises no event and is noticed by a
//! jittered back-off retry, within about 120 ms. While a task holds the
//! reader role, the other waiters of the process depend on its runtime
//! being driven. If it is not (a current-thread runtime between
//! `block_on` calls), a waiting thread takes the role over at its next
//! back-off retry; tasks on other runtimes are left to the back-off until
//! it runs again or the task is dropped.
//!
//! A timeout error's holder list is read 20 ms before the deadline on
//! tokio's blocking pool (`spawn_blocking`), never on the runtime thread: a
//! cold read of `/proc/locks` takes milliseconds. A wait shorter than 20 ms
//! names no holders. The [`Wait::on_wait`](crate::Wait::on_wait) notice, if
//! any, runs on the polling thread with holders read there.
//!
//! A future may be polled on one runtime and then on another (they are
//! `Send`): it registers its timer and the hub's descriptor with the
//! runtime polling it, so it keeps its deadline and wakes there, even if
//! the first runtime is gone.
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
//! The futures must be polled inside a tokio runtime with the IO and time
//! drivers enabled (`Builder::enable_all`); tokio panics otherwise.
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
use std::os::fd::OwnedFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::Interest;
use ::tokio::runtime::Id as RuntimeId;
use ::tokio::task::JoinHandle;
use ::tokio::time::Sleep;

use crate::error::{Error, LockError};
use crate::holder::Holder;
use crate::kind::LockKind;
use crate::lock::{AnyGuard, LockFile, LockGuard};
use crate::mode::{Exclusive, FlockMode, Mode, Shared};
use crate::sys::{self, MountedId};
use crate::wait::{
    self, CancelToken, Core, Deadline, HubFd, Notice, Plan, Registration, Step, Stop, Wait,
};

/// Opens `path` with the default [`LockOptions`](crate::LockOptions) and
/// takes the lock in mode `M`, waiting at most `timeout`.
///
/// # Errors
/// [`Error::Timeout`] naming the holders, [`Error::Flock`]; and
/// [`Error::InvalidPath`], [`Error::Open`], [`Error::Symlink`],
/// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`]: those
/// of [`LockOptions::open`](crate::LockOptions::open) that its defaults
/// allow. The descriptor is closed.
#[doc(alias = "try_lock_for")]
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
/// [`Error::Flock`]; and
/// [`Error::InvalidPath`], [`Error::Open`], [`Error::Symlink`],
/// [`Error::NotRegularFile`], [`Error::RemoteFs`], [`Error::Stat`]: those
/// of [`LockOptions::open`](crate::LockOptions::open) that its defaults
/// allow. The descriptor is closed.
#[doc(alias = "lock_exclusive")]
#[doc(alias = "lock_shared")]
pub async fn block_flock<M: Mode>(path: impl AsRef<Path>) -> Result<LockGuard<M>, Error> {
    let file = LockFile::open(path)?;
    Ok(lock(file).await?)
}

/// [`LockFile::lock`]: takes the lock in mode `M`, waiting as long as it
/// takes, without blocking the thread.
///
/// # Errors
/// [`Error::NotOwner`] in a forked child, [`Error::Flock`],
/// [`Error::OfdNeedsWrite`] for an exclusive `LockKind::Ofd` lock on a
/// read-only descriptor.
/// Under [`LockOptions::verify_path`](crate::LockOptions::verify_path),
/// also [`Error::Stat`] when the path cannot be examined and, when the file
/// was replaced and the path is opened again, [`Error::Open`],
/// [`Error::Missing`], [`Error::WriteRefused`], [`Error::Symlink`],
/// [`Error::NotRegularFile`] or [`Error::RemoteFs`]. The error gives the file back.
#[doc(alias = "lock_exclusive")]
#[doc(alias = "lock_shared")]
pub async fn lock<M: Mode>(file: LockFile) -> Result<LockGuard<M>, LockError<LockFile>> {
    lock_with(file, Wait::forever()).await
}

/// [`LockFile::lock_timeout`]: takes the lock in mode `M`, waiting at most
/// `timeout`.
///
/// # Errors
/// [`Error::Timeout`] naming the holders, [`Error::NotOwner`],
/// [`Error::Flock`], [`Error::OfdNeedsWrite`].
/// Under [`LockOptions::verify_path`](crate::LockOptions::verify_path),
/// also [`Error::Stat`] when the path cannot be examined and, when the file
/// was replaced and the path is opened again, [`Error::Open`],
/// [`Error::Missing`], [`Error::WriteRefused`], [`Error::Symlink`],
/// [`Error::NotRegularFile`] or [`Error::RemoteFs`]. The error gives the file back.
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
#[doc(alias = "try_lock_for")]
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
#[doc(alias = "try_lock_until")]
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
/// [`Error::Flock`], [`Error::OfdNeedsWrite`].
/// Under [`LockOptions::verify_path`](crate::LockOptions::verify_path),
/// also [`Error::PathChanged`] when the
/// file keeps being replaced ([`Wait::none`]), [`Error::Stat`] when the path cannot be examined and, when the file
/// was replaced and the path is opened again, [`Error::Open`],
/// [`Error::Missing`], [`Error::WriteRefused`], [`Error::Symlink`],
/// [`Error::NotRegularFile`] or [`Error::RemoteFs`]. The error gives the file back.
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
/// Dropping the future during the wait lets go of the lock (and the
/// ticket) and closes the file; in a forked child it only closes.
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
        let file = guard.into_locked_file();
        match file.attempt(FlockMode::Exclusive) {
            Ok(()) => return Ok(LockGuard::new_locked(file)),
            Err(err) => {
                // Local flock(2) has let go of the shared lock; NFS keeps
                // it. Either way the wait (or the error) holds nothing.
                file.let_go();
                if !sys::is_contention(&err) {
                    let error = file.flock_error(FlockMode::Exclusive, err);
                    return Err(LockError::new(error, file));
                }
            }
        }
        return lock_with(file, Wait::forever()).await;
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
    let mut wait = Acquire::new(file, FlockMode::Exclusive, Wait::forever());
    // Dropped before it completes, the wait lets go of the shared lock.
    wait.holding = true;
    // A failure has let go of the lock (see Acquire::fail).
    let writer = wait.await.map(LockGuard::new_locked);
    drop(ticket);
    writer
}

/// The future behind every acquisition: owns the file until it completes,
/// and performs the steps the waiting [`Core`] decides.
///
/// Fields drop in order: the reactor registration of the hub's descriptor
/// before the hub registration that holds the reader role, so that the
/// next reader can register the descriptor with the same runtime.
struct Acquire<'a> {
    reader: Option<Reader>,
    reg: Option<Registration>,
    /// The retry timer outside tokio's timer wheel, if one was free.
    timer: Option<Timer>,
    /// Else the place on the runtime's shared timer.
    shared: Option<SharedSleep>,
    /// No timer could be made: tokio's timers only.
    no_timer: bool,
    /// The instant the core last asked to sleep until, and the one the
    /// timer is set for (see [`aligned`]).
    sleep_until: Option<(Instant, Instant)>,
    /// tokio's timer, and the runtime it belongs to.
    sleep: Option<(Pin<Box<Sleep>>, RuntimeId)>,
    /// The holder list for a timeout error, read on the blocking pool.
    holders: Option<JoinHandle<Vec<Holder>>>,
    file: Option<LockFile>,
    mode: FlockMode,
    deadline: Deadline,
    /// The core and when the wait started; made by the first poll.
    core: Option<(Core, Instant)>,
    notice: Option<Notice<'a>>,
    cancel: Option<CancelToken>,
    context: Option<String>,
    diagnostics: Duration,
    attempts: u32,
    /// The file holds a lock that the caller gives up with the future: an
    /// OFD upgrade waiting with its shared lock. Dropping the future before
    /// it completes lets go of that lock.
    holding: bool,
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            if self.holding && file.check_owner().is_ok() {
                // Closing alone would leave the lock to any other copy of
                // the open file description (a dup, a forked child).
                file.let_go();
            }
        }
        // A wait dropped before it ended leaves its timer for the next.
        if let Some(timer) = self.timer.take() {
            timer.park();
        }
    }
}

/// The hub's descriptor registered with a runtime's reactor, and the
/// process and runtime that registered it.
struct Reader {
    fd: AsyncFd<HubFd>,
    pid: u32,
    runtime: RuntimeId,
}

impl Reader {
    /// Lets go of the registration: dropped in the process that made it;
    /// leaked in a forked child, where dropping it would remove the
    /// parent's registration from the epoll instance both share.
    fn release(self) {
        if self.pid == sys::current_pid() {
            park(self);
        } else {
            std::mem::forget(self);
        }
    }

    /// Lets go of the registration for good: dropped in the process that
    /// made it, leaked in a forked child (see [`release`](Self::release)).
    fn discard(self) {
        if self.pid == sys::current_pid() {
            drop(self);
        } else {
            std::mem::forget(self);
        }
    }
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
            reg: None,
            timer: None,
            shared: None,
            no_timer: false,
            sleep_until: None,
            sleep: None,
            holders: None,
            file: Some(file),
            mode,
            deadline,
            core: None,
            notice,
            cancel,
            context,
            diagnostics,
            attempts: 0,
            holding: false,
        }
    }

    /// Leaves the hub: the reactor registration is parked for the next
    /// reader before the hub registration hands the reader role on.
    fn leave(&mut self, acquired: bool) {
        if let Some(reader) = self.reader.take() {
            reader.release();
        }
        if let Some(mut reg) = self.reg.take() {
            if acquired {
                reg.acquired();
            }
        }
        if let Some(task) = self.holders.take() {
            task.abort();
        }
        if let Some(timer) = self.timer.take() {
            timer.park();
        }
        self.shared = None;
    }

    /// Ends the wait with `error`. A failed acquisition took nothing and
    /// hands the file back with whatever lock it arrived with, as the
    /// blocking driver does; a failed upgrade ([`holding`](Self::holding))
    /// lets go of the shared lock it waited with.
    fn fail(&mut self, error: impl FnOnce(&LockFile) -> Error) -> Poll<<Self as Future>::Output> {
        self.leave(false);
        let file = self.file.take().expect("polled after completion");
        let error = error(&file);
        if self.holding && !matches!(error, Error::NotOwner { .. }) {
            file.let_go();
        }
        Poll::Ready(Err(LockError::new(error, file)))
    }

    fn core(&mut self) -> &mut Core {
        &mut self.core.as_mut().expect("made by the first poll").0
    }

    fn file(&self) -> &LockFile {
        self.file.as_ref().expect("polled after completion")
    }

    fn step(&mut self, cx: &mut Context<'_>) -> Poll<<Self as Future>::Output> {
        let runtime = ::tokio::runtime::Handle::current().id();
        if self.core.is_none() {
            if let Err(error) = self.file().check_owner() {
                return self.fail(|_| error);
            }
            let now = Instant::now();
            let plan = Plan {
                deadline: self.deadline,
                cancellable: self.cancel.is_some(),
                may_block: false,
                verify: self.file().verifies(),
                notice: self.notice.is_some(),
            };
            self.core = Some((Core::new(plan, now), now));
        }
        if self.reader.as_ref().is_some_and(|r| r.runtime != runtime) {
            // Moved to another runtime: register there instead.
            if let Some(reader) = self.reader.take() {
                reader.release();
            }
        }
        self.read_events(cx, runtime);
        loop {
            let now = Instant::now();
            let cancelled = self.cancel.as_ref().is_some_and(CancelToken::is_cancelled);
            let notified = self.reg.as_ref().is_some_and(Registration::take_notified);
            let behind = self.reg.as_ref().is_some_and(Registration::is_behind);
            let (core, start) = self.core.as_mut().expect("made above");
            let start = *start;
            if notified {
                core.closed(now);
            }
            core.set_behind(behind);
            let mode = self.mode;
            match core.next(now, cancelled) {
                Step::Attempt | Step::Block => match self.file().attempt_checked(mode) {
                    Ok(()) => self.core().attempted(true),
                    Err(Ok(err)) if sys::is_contention(&err) => self.core().attempted(false),
                    Err(Ok(err)) => return self.fail(|f| f.flock_error(mode, err)),
                    Err(Err(error)) => return self.fail(|_| error),
                },
                Step::Notice => {
                    if let Some(notice) = self.notice.take() {
                        notice(&self.file().holders_within(self.diagnostics));
                    }
                }
                Step::ReadHolders => {
                    // Off the runtime thread: a cold /proc/locks read takes
                    // milliseconds.
                    let file = self.file();
                    let (id, path) = (sys::statx_fd(file.as_fd()).ok(), file.error_path());
                    let budget = self.diagnostics;
                    self.holders = Some(::tokio::task::spawn_blocking(move || {
                        id.map(|id| shared_holders(id, &path, budget))
                            .unwrap_or_default()
                    }));
                }
                Step::Register => {
                    if let Some(reader) = self.reader.take() {
                        reader.release();
                    }
                    let file = self.file.as_ref().expect("polled after completion");
                    let reg = Registration::new(
                        file.as_fd(),
                        file.path(),
                        mode,
                        Some(cx.waker()),
                        self.cancel.as_ref(),
                    );
                    self.core().registered(reg.is_watched());
                    self.reg = Some(reg);
                    self.read_events(cx, runtime);
                }
                Step::Verify => {
                    if let Some(reg) = &mut self.reg {
                        reg.acquired();
                    }
                    let deadline = self.deadline;
                    let file = self.file.as_mut().expect("polled after completion");
                    match file.settle(deadline, &mut self.attempts) {
                        Ok(stands) => self.core().verified(stands),
                        Err(error) => return self.fail(|_| error),
                    }
                }
                Step::Yield { .. } => {
                    // Retry after the executor has run what else is ready.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Step::Sleep(until) => {
                    match self.kernel_sleep(until, cx, runtime) {
                        Some(Poll::Pending) => return Poll::Pending,
                        Some(Poll::Ready(())) => continue,
                        None => {}
                    }
                    let at = ::tokio::time::Instant::from_std(until);
                    let sleep = match &mut self.sleep {
                        Some((sleep, id)) if *id == runtime => {
                            sleep.as_mut().reset(at);
                            sleep
                        }
                        // A timer of another runtime (the future moved)
                        // may never fire, or panic if that runtime is gone.
                        _ => {
                            let sleep = Box::pin(::tokio::time::sleep_until(at));
                            &mut self.sleep.insert((sleep, runtime)).0
                        }
                    };
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Step::Done => {
                    self.leave(true);
                    return Poll::Ready(Ok(self.file.take().expect("present")));
                }
                Step::Stop(stop) => {
                    let holders = match self.finished_holders(cx) {
                        // A read that overran the lead: its end wakes us.
                        Poll::Pending if stop == Stop::TimedOut => return Poll::Pending,
                        Poll::Pending => None,
                        Poll::Ready(holders) => holders,
                    };
                    let context = self.context.take();
                    return self
                        .fail(|f| f.stop_error(mode, stop, start, context.as_deref(), holders));
                }
            }
        }
    }

    /// Sleeps until `until` on the task's own timer, else on the runtime's
    /// shared one; `None` if neither can be had (tokio's timer, then).
    fn kernel_sleep(
        &mut self,
        until: Instant,
        cx: &mut Context<'_>,
        runtime: RuntimeId,
    ) -> Option<Poll<()>> {
        // A retry, not the deadline, far enough away that a millisecond
        // more does not matter: aligned, so that it shares its wake-up.
        // Decided once per instant: a later poll finds it nearer.
        let until = match self.sleep_until {
            Some((asked, at)) if asked == until => at,
            _ => {
                let deadline = self
                    .core
                    .as_ref()
                    .and_then(|(_, start)| self.deadline.resolve(*start));
                let far = until.saturating_duration_since(Instant::now()) >= ALIGN_FROM;
                let at = if far && deadline != Some(until) {
                    aligned(until)
                } else {
                    until
                };
                self.sleep_until = Some((until, at));
                at
            }
        };
        // Moved to another runtime: a timer of the first may never fire.
        if self.timer.as_ref().is_some_and(|t| t.runtime != runtime) {
            self.timer = None;
        }
        if self
            .shared
            .as_ref()
            .is_some_and(|s| s.timer.runtime != runtime)
        {
            self.shared = None;
        }
        if self.timer.is_none() && self.shared.is_none() && !self.no_timer {
            self.timer = Timer::take(runtime);
            if self.timer.is_none() {
                self.shared = SharedSleep::new(runtime);
            }
            self.no_timer = self.timer.is_none() && self.shared.is_none();
        }
        let slept = match (&mut self.timer, &mut self.shared) {
            (Some(timer), _) => timer.poll_until(until, cx),
            (None, Some(shared)) => shared.poll_until(until, cx),
            (None, None) => return None,
        };
        match slept {
            Poll::Pending => Some(Poll::Pending),
            Poll::Ready(Ok(())) => Some(Poll::Ready(())),
            Poll::Ready(Err(())) => {
                self.timer = None;
                self.shared = None;
                self.no_timer = true;
                None
            }
        }
    }

    /// The holder list read on the blocking pool: `Ready(None)` if none
    /// was read (or the read failed), `Pending` while it runs.
    fn finished_holders(&mut self, cx: &mut Context<'_>) -> Poll<Option<Vec<Holder>>> {
        let Some(task) = self.holders.as_mut() else {
            return Poll::Ready(None);
        };
        let read = std::task::ready!(Pin::new(task).poll(cx));
        self.holders = None;
        Poll::Ready(read.ok())
    }

    /// Keeps the waker current and, as the reader, reads the hub's events.
    fn read_events(&mut self, cx: &mut Context<'_>, runtime: RuntimeId) {
        let Some(reg) = &self.reg else {
            return;
        };
        reg.set_waker(cx.waker());
        if reg.is_reader() && self.reader.is_none() {
            self.reader = reg
                .hub_fd()
                .and_then(|fd| reactor_registration(fd, runtime));
        }
        match &self.reader {
            Some(reader) => loop {
                match reader.fd.poll_read_ready(cx) {
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
    }
}

/// A retry at least this far away ends at the end of its millisecond
/// (see [`aligned`]).
const ALIGN_FROM: Duration = Duration::from_millis(10);

/// The end of the millisecond (counted from a process-wide origin) that
/// holds `at`: the retry timers of many tasks, per-task and shared, then
/// expire at the same instants and wake their runtime together. A retry
/// 10 ms or more away ends at most 1 ms later. `at` itself in a forked
/// child that finds the origin's lock held (a parent thread held it at
/// the fork).
fn aligned(at: Instant) -> Instant {
    let pid = sys::current_pid();
    let Some(mut origin) = wait::lock_unless_forked(&ORIGIN, &ORIGIN_OWNER, pid) else {
        return at;
    };
    let origin = *origin.get_or_insert_with(Instant::now);
    let since = at.saturating_duration_since(origin).as_nanos();
    let step = Duration::from_millis(1).as_nanos();
    let end = u64::try_from(since.div_ceil(step) * step).unwrap_or(u64::MAX);
    origin
        .checked_add(Duration::from_nanos(end))
        .map_or(at, |end| end.max(at))
}

/// The origin of [`aligned`]'s milliseconds, set on first use.
static ORIGIN: Mutex<Option<Instant>> = Mutex::new(None);

/// The process that waits for [`ORIGIN`]'s lock (see
/// [`wait::lock_unless_forked`]).
static ORIGIN_OWNER: AtomicU32 = AtomicU32::new(0);

/// How many [`Timer`]s this process may have at once: the descriptors of
/// a thousand waiting tasks stay bounded, and the tasks beyond these share
/// their runtime's [`SharedTimer`].
const MAX_TIMERS: usize = 64;

/// The [`Timer`]s of this process.
static TIMERS: AtomicUsize = AtomicUsize::new(0);

/// Timers of finished waits, disarmed, kept so that a wait that ends costs
/// no `epoll_ctl(2)` and `close(2)` before it returns; the next wait on
/// the same runtime reuses one.
static IDLE_TIMERS: Mutex<Vec<Timer>> = Mutex::new(Vec::new());

/// The process that waits for [`IDLE_TIMERS`]'s lock (see
/// [`wait::lock_unless_forked`]).
static IDLE_TIMERS_OWNER: AtomicU32 = AtomicU32::new(0);

/// A waiting task's timer: a `timerfd(2)` registered with its runtime's
/// reactor.
///
/// tokio's timer wheel wakes its driver twice for a deadline in a later
/// 64 ms slot (once to move the entry to the finer level, once at the
/// deadline), so every retry of a waiter would cost two wake-ups; the
/// kernel's timer costs one.
struct Timer {
    fd: Option<AsyncFd<OwnedFd>>,
    pid: u32,
    runtime: RuntimeId,
    /// The instant the timer is set for, until its expiry is read.
    armed: Option<Instant>,
}

impl Timer {
    /// A timer registered with the current runtime; `None` if the
    /// process has [`MAX_TIMERS`], or the kernel or reactor refused.
    fn new(runtime: RuntimeId) -> Option<Timer> {
        let taken = TIMERS.fetch_add(1, Ordering::Relaxed);
        let pid = sys::current_pid();
        let fd = (taken < MAX_TIMERS).then(new_timer).flatten();
        let Some(fd) = fd else {
            TIMERS.fetch_sub(1, Ordering::Relaxed);
            return None;
        };
        Some(Timer {
            fd: Some(fd),
            pid,
            runtime,
            armed: None,
        })
    }

    /// An idle timer of this process and runtime, else a new one. An idle
    /// timer of another runtime is closed first, so that timers left by
    /// runtimes that are gone do not hold the slots.
    fn take(runtime: RuntimeId) -> Option<Timer> {
        let pid = sys::current_pid();
        let mut evicted = None;
        if let Some(mut idle) = wait::lock_unless_forked(&IDLE_TIMERS, &IDLE_TIMERS_OWNER, pid) {
            if let Some(i) = idle
                .iter()
                .position(|t| t.pid == pid && t.runtime == runtime)
            {
                return Some(idle.swap_remove(i));
            }
            evicted = idle.pop();
        }
        // Its registration is removed outside the lock.
        drop(evicted);
        Timer::new(runtime)
    }

    /// Keeps the timer, disarmed, for the next wait; closes it if that
    /// fails (or drops it as [`Drop`] does in a forked child).
    fn park(mut self) {
        let pid = sys::current_pid();
        if self.pid != pid {
            return;
        }
        if self.armed.take().is_some() {
            match &self.fd {
                Some(fd) if set_timer(fd.get_ref(), None).is_ok() => {}
                _ => return,
            }
        }
        if let Some(mut idle) = wait::lock_unless_forked(&IDLE_TIMERS, &IDLE_TIMERS_OWNER, pid) {
            // Idle and busy timers together stay within MAX_TIMERS.
            idle.push(self);
        }
    }

    /// Ready once `until` has passed (`Instant` reads `CLOCK_MONOTONIC`,
    /// the timer's clock); `Err` if the timer failed.
    fn poll_until(&mut self, until: Instant, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let Some(fd) = &self.fd else {
            return Poll::Ready(Err(()));
        };
        if self.armed != Some(until) {
            if set_timer(fd.get_ref(), Some(until)).is_err() {
                return Poll::Ready(Err(()));
            }
            self.armed = Some(until);
        }
        loop {
            let mut ready = match fd.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(ready)) => ready,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
            };
            match read_expiry(fd.get_ref()) {
                Ok(()) => {
                    ready.clear_ready();
                    self.armed = None;
                    return Poll::Ready(Ok(()));
                }
                // Readiness left from before the timer was set again.
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return Poll::Ready(Err(())),
            }
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if self.pid == sys::current_pid() {
            drop(self.fd.take());
            TIMERS.fetch_sub(1, Ordering::Relaxed);
        } else {
            // A forked child: removing the registration from the epoll
            // instance it shares with its parent would remove the
            // parent's.
            std::mem::forget(self.fd.take());
        }
    }
}

/// Registers a timer's descriptor with the current runtime's reactor.
///
/// The safe constructor is deprecated because it cannot check that the
/// descriptor outlives the registration (I/O safety). Here the `AsyncFd`
/// owns the `OwnedFd`, which is closed only when the `AsyncFd` is dropped
/// (after deregistering it) and is never replaced.
#[allow(deprecated)]
fn register_timer(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, Interest::READABLE)
}

/// Sets a timerfd to expire at `until` (`Instant` reads `CLOCK_MONOTONIC`,
/// the timer's clock), or disarms it. Setting it also forgets an expiry
/// not yet read.
fn set_timer(fd: &OwnedFd, until: Option<Instant>) -> rustix::io::Result<()> {
    // A zero value would disarm the timer.
    let left = until.map_or(Duration::ZERO, |until| {
        until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1))
    });
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let value = rustix::time::Itimerspec {
        it_interval: zero,
        it_value: rustix::time::Timespec {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        },
    };
    let flags = rustix::time::TimerfdTimerFlags::empty();
    rustix::time::timerfd_settime(fd, flags, &value).map(drop)
}

/// Reads a timerfd's expiry count; `EAGAIN` if it has not expired.
fn read_expiry(fd: &OwnedFd) -> rustix::io::Result<()> {
    let mut expiries = [0u8; 8];
    rustix::io::read(fd, &mut expiries).map(drop)
}

/// A new non-blocking timerfd on `CLOCK_MONOTONIC`, registered with the
/// current runtime's reactor.
fn new_timer() -> Option<AsyncFd<OwnedFd>> {
    let fd = rustix::time::timerfd_create(
        rustix::time::TimerfdClockId::Monotonic,
        rustix::time::TimerfdFlags::CLOEXEC | rustix::time::TimerfdFlags::NONBLOCK,
    )
    .ok()?;
    register_timer(fd).ok()
}

/// The timer that the waiting tasks of a runtime beyond the [`MAX_TIMERS`]
/// per-task timers share: one `timerfd(2)` set for the earliest of their
/// instants.
///
/// No task polls its descriptor (the reactor keeps one waker per
/// descriptor, the last poller's, so a polling task would have to hand the
/// role on when it leaves, and its runtime would sleep through the others'
/// instants whenever that task is not polled). The waker registered is the
/// timer's own ([`Pump`]): the reactor's wake-up reads the expiry, wakes the
/// tasks whose instants have passed and sets the timer for the next, on the
/// thread that drives the reactor. An expiry costs the runtime one wake-up,
/// as a per-task timer does.
struct SharedTimer {
    fd: Option<AsyncFd<OwnedFd>>,
    pid: u32,
    runtime: RuntimeId,
    /// Wakes [`SharedTimer::pump`]; holds the timer weakly, as the reactor
    /// holds it.
    pump: std::task::Waker,
    state: Mutex<SharedState>,
}

#[derive(Default)]
struct SharedState {
    /// The sleeping tasks' instants (with the entry's number, which tells
    /// equal instants apart) and wakers, earliest first.
    queue: std::collections::BTreeMap<(Instant, u64), std::task::Waker>,
    /// The instant the timerfd is set for, if any; never later than the
    /// queue's first.
    armed: Option<Instant>,
    next_id: u64,
    /// The reactor refused or shut down, or the timer failed: no task
    /// sleeps on it any more.
    failed: bool,
}

/// The waker the reactor wakes when a [`SharedTimer`] expires.
struct Pump(std::sync::Weak<SharedTimer>);

impl std::task::Wake for Pump {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(timer) = self.0.upgrade() {
            timer.pump();
        }
    }
}

/// The [`SharedTimer`]s of this process: one per runtime whose tasks use
/// one, and those left by runtimes until another runtime makes one.
static SHARED_TIMERS: Mutex<Vec<Arc<SharedTimer>>> = Mutex::new(Vec::new());

/// The process that waits for [`SHARED_TIMERS`]'s lock (see
/// [`wait::lock_unless_forked`]).
static SHARED_TIMERS_OWNER: AtomicU32 = AtomicU32::new(0);

impl SharedTimer {
    /// The current runtime's shared timer, made on first use; `None` if the
    /// kernel or the reactor refuses one.
    fn of(runtime: RuntimeId) -> Option<Arc<SharedTimer>> {
        let pid = sys::current_pid();
        let mut timers = wait::lock_unless_forked(&SHARED_TIMERS, &SHARED_TIMERS_OWNER, pid)?;
        if timers.iter().any(|t| t.pid != pid) {
            // A forked child: its parent's timers, their wakers and
            // registrations are not its own to drop.
            for parents in std::mem::take(&mut *timers) {
                std::mem::forget(parents);
            }
        }
        let usable = |t: &SharedTimer| t.runtime == runtime && !wait::lock(&t.state).failed;
        if let Some(timer) = timers.iter().find(|t| usable(t)) {
            return Some(Arc::clone(timer));
        }
        // Timers no task sleeps on of other runtimes (which may be gone),
        // and failed ones, are closed, outside the lock.
        let (closed, kept) = std::mem::take(&mut *timers)
            .into_iter()
            .partition(|t| Arc::strong_count(t) == 1 || wait::lock(&t.state).failed);
        *timers = kept;
        let timer = SharedTimer::new(pid, runtime);
        if let Some(timer) = &timer {
            timers.push(Arc::clone(timer));
        }
        drop(timers);
        drop::<Vec<_>>(closed);
        timer
    }

    fn new(pid: u32, runtime: RuntimeId) -> Option<Arc<SharedTimer>> {
        let fd = new_timer()?;
        let timer = Arc::new_cyclic(|weak| SharedTimer {
            fd: Some(fd),
            pid,
            runtime,
            pump: std::task::Waker::from(Arc::new(Pump(weak.clone()))),
            state: Mutex::new(SharedState::default()),
        });
        // Registers the pump's waker with the reactor.
        timer.pump();
        Some(timer)
    }

    /// Reads the expiry, wakes the tasks whose instants have passed (after
    /// letting go of the lock) and sets the timer for the next instant;
    /// registers the pump's waker for the next expiry. If the reactor or
    /// the timer fails, wakes every task: they sleep on tokio's timer
    /// instead.
    fn pump(&self) {
        let Some(fd) = self.fd.as_ref().filter(|_| self.pid == sys::current_pid()) else {
            return;
        };
        let mut woken = Vec::new();
        let mut st = wait::lock(&self.state);
        if st.failed {
            return;
        }
        let mut cx = Context::from_waker(&self.pump);
        let mut ok = true;
        loop {
            // Outside any task's budget: an exhausted budget would wake the
            // pump at once instead of registering it.
            let ready = std::pin::pin!(::tokio::task::unconstrained(std::future::poll_fn(
                |cx| fd.poll_read_ready(cx)
            )))
            .poll(&mut cx);
            match ready {
                Poll::Pending => break,
                Poll::Ready(Ok(mut ready)) => match read_expiry(fd.get_ref()) {
                    Ok(()) => {
                        ready.clear_ready();
                        st.armed = None;
                    }
                    // Readiness left from before the timer was set again.
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Err(rustix::io::Errno::INTR) => {}
                    Err(_) => {
                        ok = false;
                        break;
                    }
                },
                // The runtime shuts down.
                Poll::Ready(Err(_)) => {
                    ok = false;
                    break;
                }
            }
        }
        let now = Instant::now();
        while let Some(entry) = st.queue.first_entry() {
            if ok && entry.key().0 > now {
                break;
            }
            woken.push(entry.remove());
        }
        if let Some(&(next, _)) = st.queue.keys().next() {
            if st.armed != Some(next) {
                ok = set_timer(fd.get_ref(), Some(next)).is_ok();
                st.armed = Some(next);
            }
        }
        if !ok {
            st.failed = true;
            woken.extend(std::mem::take(&mut st.queue).into_values());
        }
        drop(st);
        for waker in woken {
            waker.wake();
        }
    }
}

impl Drop for SharedTimer {
    fn drop(&mut self) {
        if self.pid != sys::current_pid() {
            // A forked child: see Timer's Drop.
            std::mem::forget(self.fd.take());
        }
    }
}

/// A task's place on its runtime's [`SharedTimer`]; dropping it takes the
/// task's instant off the queue.
struct SharedSleep {
    timer: Arc<SharedTimer>,
    id: u64,
    /// The instant queued, until the task finds it passed.
    at: Option<Instant>,
}

impl SharedSleep {
    fn new(runtime: RuntimeId) -> Option<SharedSleep> {
        let timer = SharedTimer::of(runtime)?;
        let id = {
            let mut st = wait::lock(&timer.state);
            st.next_id += 1;
            st.next_id
        };
        Some(SharedSleep {
            timer,
            id,
            at: None,
        })
    }

    /// Ready once `until` has passed; `Err` if the timer failed.
    fn poll_until(&mut self, until: Instant, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let Some(fd) = &self.timer.fd else {
            return Poll::Ready(Err(()));
        };
        let mut st = wait::lock(&self.timer.state);
        if st.failed {
            self.at = None;
            return Poll::Ready(Err(()));
        }
        let now = Instant::now();
        if let Some(at) = self.at.take() {
            if at == until {
                match st.queue.get_mut(&(at, self.id)) {
                    // The pump took it off: passed.
                    None => return Poll::Ready(Ok(())),
                    Some(_) if at <= now => {
                        st.queue.remove(&(at, self.id));
                        return Poll::Ready(Ok(()));
                    }
                    Some(waker) => {
                        if !waker.will_wake(cx.waker()) {
                            waker.clone_from(cx.waker());
                        }
                        self.at = Some(at);
                        return Poll::Pending;
                    }
                }
            }
            st.queue.remove(&(at, self.id));
        }
        if until <= now {
            return Poll::Ready(Ok(()));
        }
        if st.armed.map_or(true, |armed| until < armed) {
            if set_timer(fd.get_ref(), Some(until)).is_err() {
                return Poll::Ready(Err(()));
            }
            st.armed = Some(until);
        }
        st.queue.insert((until, self.id), cx.waker().clone());
        self.at = Some(until);
        Poll::Pending
    }
}

impl Drop for SharedSleep {
    fn drop(&mut self) {
        if self.timer.pid != sys::current_pid() {
            // A forked child: the parent's lock may have been held at the
            // fork, and its queue is the parent's.
            std::mem::forget(Arc::clone(&self.timer));
            return;
        }
        if let Some(at) = self.at.take() {
            // An instant left queued would only cost a wake-up, not a
            // missed one; set for it, the timer stays set.
            let waker = wait::lock(&self.timer.state).queue.remove(&(at, self.id));
            drop(waker);
        }
    }
}

/// One read of a file's holders for timeout errors, shared by the waits
/// that need it while it runs or shortly after.
struct Flight {
    pid: u32,
    id: MountedId,
    /// The list and when it was read; `None` while the read runs.
    done: Mutex<Option<(Instant, Vec<Holder>)>>,
    ready: Condvar,
}

/// The holder reads of this process (see [`shared_holders`]).
static FLIGHTS: Mutex<Vec<Arc<Flight>>> = Mutex::new(Vec::new());

/// The process that waits for [`FLIGHTS`]'s lock.
static FLIGHTS_OWNER: AtomicU32 = AtomicU32::new(0);

/// How long a finished read serves other timeouts on the same file.
const HOLDERS_FRESH: Duration = Duration::from_millis(10);

/// The holders of the file `id` for a timeout error, on the blocking pool:
/// tasks that time out together on one file (their reads start 20 ms
/// before their deadlines) read `/proc/locks` once; reads of other files
/// run beside it.
fn shared_holders(id: MountedId, path: &Path, budget: Duration) -> Vec<Holder> {
    let read = || crate::holders::holders_within(id, path, budget).unwrap_or_default();
    let pid = sys::current_pid();
    let Some(mut flights) = wait::lock_unless_forked(&FLIGHTS, &FLIGHTS_OWNER, pid) else {
        return read();
    };
    let fresh = |f: &Flight| {
        wait::lock(&f.done)
            .as_ref()
            .map_or(true, |(at, _)| at.elapsed() < HOLDERS_FRESH)
    };
    // A forked child's copies of its parent's reads are never waited for.
    flights.retain(|f| f.pid == pid && fresh(f));
    if let Some(flight) = flights.iter().find(|f| f.id == id).cloned() {
        drop(flights);
        let mut done = wait::lock(&flight.done);
        loop {
            if let Some((_, holders)) = &*done {
                return holders.clone();
            }
            done = flight
                .ready
                .wait(done)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
    let flight = Arc::new(Flight {
        pid,
        id,
        done: Mutex::new(None),
        ready: Condvar::new(),
    });
    flights.push(Arc::clone(&flight));
    drop(flights);
    // Published even if the read panics, so that no waiter hangs.
    struct Publish<'f>(&'f Flight, Vec<Holder>);
    impl Drop for Publish<'_> {
        fn drop(&mut self) {
            let holders = std::mem::take(&mut self.1);
            *wait::lock(&self.0.done) = Some((Instant::now(), holders));
            self.0.ready.notify_all();
        }
    }
    let mut publish = Publish(&flight, Vec::new());
    let holders = read();
    publish.1 = holders.clone();
    drop(publish);
    holders
}

/// The reactor registration of the last async reader, kept so that leaving
/// with the lock costs no `epoll_ctl(2)`; the next reader reuses it when it
/// belongs to the same process and runtime.
static PARKED: Mutex<Option<Reader>> = Mutex::new(None);

/// The process that waits for [`PARKED`]'s lock (see
/// [`wait::lock_unless_forked`]).
static PARKED_OWNER: AtomicU32 = AtomicU32::new(0);

/// The parked registration's slot; `None` in a forked child that found it
/// locked (a parent thread held it at the fork).
fn parked() -> Option<MutexGuard<'static, Option<Reader>>> {
    wait::lock_unless_forked(&PARKED, &PARKED_OWNER, sys::current_pid())
}

fn park(reader: Reader) {
    let Some(mut slot) = parked() else {
        // Nowhere to park it: this process's own registration, dropped.
        drop(reader);
        return;
    };
    let old = slot.replace(reader);
    drop(slot);
    // Only one reader at a time, and it took what was parked.
    if let Some(old) = old {
        old.discard();
    }
}

/// The hub's descriptor registered with the current runtime's reactor: the
/// parked registration if it is this runtime's (a second registration of
/// the descriptor there fails with `EEXIST`), else a new one.
fn reactor_registration(fd: HubFd, runtime: RuntimeId) -> Option<Reader> {
    let pid = sys::current_pid();
    let old = parked().and_then(|mut slot| slot.take());
    let old = match old {
        Some(old) if old.pid != pid => {
            // A forked child: the parent's registration is not ours to drop.
            std::mem::forget(old);
            None
        }
        Some(old) if old.runtime == runtime && old.fd.get_ref().same_hub(&fd) => {
            return Some(old);
        }
        other => other,
    };
    // Another runtime's registration goes before this one is made.
    drop(old);
    register(fd).ok().map(|fd| Reader { fd, pid, runtime })
}

/// Registers the hub's descriptor with the current runtime's reactor.
///
/// The safe constructor is deprecated because it cannot check that the
/// descriptor outlives the registration (I/O safety). Here it does: the
/// `HubFd` inside the `AsyncFd` holds the hub (an `Arc`) whose `OwnedFd` it
/// names, so the descriptor stays open, and names the same inotify
/// instance, until the `AsyncFd` is dropped; `as_raw_fd` always returns
/// that one descriptor. The `unsafe` replacement would need an
/// `allow(unsafe_code)` for the same reasoning.
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
            .field("registered", &self.reg.is_some())
            .field("timer", &self.timer.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::tests::{reap, SERIAL};
    use std::os::fd::{AsRawFd, RawFd};

    /// Whether an epoll instance of this process watches descriptor `fd`.
    fn epoll_watches(fd: RawFd) -> bool {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .any(|e| {
                let is_epoll = std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[eventpoll]");
                let name = e.file_name();
                let info = std::fs::read_to_string(format!(
                    "/proc/self/fdinfo/{}",
                    name.to_string_lossy()
                ))
                .unwrap_or_default();
                is_epoll
                    && info.lines().any(|l| {
                        l.strip_prefix("tfd:")
                            .and_then(|rest| rest.split_whitespace().next())
                            .is_some_and(|n| n == fd.to_string())
                    })
            })
    }

    fn runtime() -> ::tokio::runtime::Runtime {
        ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A runtime without tokio's timers: only the waiter's own timer can
    /// end a retry's sleep (a `sleep` of tokio would panic there).
    /// Releases `holder` by `flock(LOCK_UN)` after `after`, which raises no
    /// inotify event (a waiter's retry finds it), and keeps the file open
    /// until told through the returned sender.
    fn unlock_without_close_after(
        holder: crate::LockGuard<Exclusive>,
        after: Duration,
    ) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(after);
            let file = holder.unlock().unwrap();
            rx.recv().unwrap();
            drop(file);
        });
        (tx, releaser)
    }

    fn runtime_without_timers() -> ::tokio::runtime::Runtime {
        ::tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    #[test]
    fn a_release_without_a_close_is_found_by_the_kernel_timed_retry() {
        // Other tests here look at the parked reactor registration.
        let _serial = wait::lock(&SERIAL);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.lock");
        let holder = LockFile::open(&path).unwrap();
        let holder = holder.try_lock::<Exclusive>().unwrap();
        let waiter = LockFile::open(&path).unwrap();
        let (tx, releaser) = unlock_without_close_after(holder, Duration::from_millis(300));
        let rt = runtime_without_timers();
        let got = rt.block_on(lock_timeout::<Exclusive>(waiter, Duration::from_secs(20)));
        tx.send(()).unwrap();
        releaser.join().unwrap();
        assert!(got.is_ok(), "{got:?}");
        drop(got);
        // The retries ran on a timer, kept for the next wait on this
        // runtime.
        let id = rt.handle().id();
        let idle = wait::lock(&IDLE_TIMERS);
        assert!(idle.iter().any(|t| t.runtime == id), "no timer was used");
    }

    #[test]
    fn a_wait_times_out_by_the_kernel_timer() {
        // Other tests here look at the parked reactor registration.
        let _serial = wait::lock(&SERIAL);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.lock");
        let holder = LockFile::open(&path).unwrap();
        let _holder = holder.try_lock::<Exclusive>().unwrap();
        let waiter = LockFile::open(&path).unwrap();
        let rt = runtime_without_timers();
        let started = Instant::now();
        let got = rt.block_on(lock_timeout::<Exclusive>(
            waiter,
            Duration::from_millis(250),
        ));
        let err = got.expect_err("the lock stays held");
        assert!(matches!(err.error, Error::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    /// How many of this process's descriptors are timerfds.
    fn timerfds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[timerfd]")
            })
            .count()
    }

    #[test]
    fn tasks_beyond_the_per_task_timers_sleep_on_a_shared_kernel_timer() {
        // The per-task timers are counted process-wide.
        let _serial = wait::lock(&SERIAL);
        let dir = tempfile::tempdir().unwrap();
        let lock = |name: &str| {
            let path = dir.path().join(name);
            let guard = LockFile::open(&path)
                .unwrap()
                .try_lock::<Exclusive>()
                .unwrap();
            (path, guard)
        };
        let (busy, _busy) = lock("busy.lock");
        let (late, _late) = lock("late.lock");
        let (freed, holder) = lock("freed.lock");
        // tokio's timer would panic here: every sleep is on a timerfd.
        let rt = runtime_without_timers();
        // Tasks that take every per-task timer and then some.
        let crowd: Vec<_> = (0..MAX_TIMERS + 36)
            .map(|_| {
                let file = LockFile::open(&busy).unwrap();
                rt.spawn(lock_timeout::<Exclusive>(file, Duration::from_secs(60)))
            })
            .collect();
        rt.block_on(async {
            for _ in 0..100 {
                ::tokio::task::yield_now().await;
            }
        });
        assert_eq!(TIMERS.load(Ordering::Relaxed), MAX_TIMERS);
        let (tx, releaser) = unlock_without_close_after(holder, Duration::from_millis(300));
        let started = Instant::now();
        let (timed_out, got, fds) = rt.block_on(async {
            let timed_out = ::tokio::spawn(lock_timeout::<Exclusive>(
                LockFile::open(&late).unwrap(),
                Duration::from_millis(250),
            ));
            let got = ::tokio::spawn(lock_timeout::<Exclusive>(
                LockFile::open(&freed).unwrap(),
                Duration::from_secs(20),
            ));
            for _ in 0..10 {
                ::tokio::task::yield_now().await;
            }
            let fds = timerfds();
            (timed_out.await, got.await, fds)
        });
        let id = rt.handle().id();
        // The tasks on the shared timer, and the instants queued on it.
        let shared = || {
            let timers = wait::lock(&SHARED_TIMERS);
            let mine: Vec<_> = timers.iter().filter(|t| t.runtime == id).collect();
            assert_eq!(mine.len(), 1, "one shared timer per runtime");
            let st = wait::lock(&mine[0].state);
            assert!(!st.failed);
            (Arc::strong_count(mine[0]) - 1, st.queue.len())
        };
        // The crowd beyond the per-task timers sleeps on the shared one.
        assert_eq!(shared().0, 36);
        // A future moved to another runtime sleeps on that one's timer.
        let mut moved = Box::pin(lock_timeout::<Exclusive>(
            LockFile::open(&late).unwrap(),
            Duration::from_millis(300),
        ));
        rt.block_on(std::future::poll_fn(|cx| {
            assert!(moved.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        }));
        assert_eq!(shared().0, 37);
        let err = runtime_without_timers()
            .block_on(moved)
            .expect_err("the lock stays held");
        assert!(matches!(err.error, Error::Timeout { .. }), "{err:?}");
        assert_eq!(shared().0, 36);
        // A forked child's wait (beyond the 64 timers there too) makes its
        // own shared timer and leaves the parent's registered.
        let fd = {
            let timers = wait::lock(&SHARED_TIMERS);
            let mine = timers.iter().find(|t| t.runtime == id).unwrap();
            mine.fd.as_ref().unwrap().as_raw_fd()
        };
        assert!(epoll_watches(fd));
        // SAFETY: the child waits once on a runtime of its own and leaves
        // with _exit; it takes no lock that this test's other threads hold.
        #[allow(unsafe_code)]
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let wait = lock_timeout::<Exclusive>(
                LockFile::open(&late).unwrap(),
                Duration::from_millis(50),
            );
            let ok = runtime_without_timers()
                .block_on(wait)
                .is_err_and(|e| e.is_timeout());
            // SAFETY: ends the child without running the parent's exit code.
            #[allow(unsafe_code)]
            unsafe {
                libc::_exit(if ok { 0 } else { 1 })
            };
        }
        assert_eq!(reap(pid), Some(0), "the child hung or failed");
        assert!(epoll_watches(fd), "the child removed the parent's timer");
        assert_eq!(shared().0, 36);
        tx.send(()).unwrap();
        releaser.join().unwrap();
        let err = timed_out.unwrap().expect_err("the lock stays held");
        assert!(matches!(err.error, Error::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(got.unwrap().is_ok());
        // 102 waiting tasks: the per-task timers and one shared.
        assert!(fds <= MAX_TIMERS + 1, "{fds} timerfds");
        for task in &crowd {
            task.abort();
        }
        rt.block_on(async {
            for task in crowd {
                assert!(task.await.unwrap_err().is_cancelled());
            }
        });
        // Dropped futures leave nothing queued.
        assert_eq!(shared(), (0, 0));
    }

    #[test]
    fn retries_end_at_the_end_of_their_millisecond() {
        let now = Instant::now();
        let ms = Duration::from_millis(1);
        for offset in [0, 1, 999_999, 1_000_000, 1_000_001, 123_456_789] {
            let at = now + Duration::from_nanos(offset);
            let end = aligned(at);
            assert!(end >= at && end - at < ms, "{offset}: {:?}", end - at);
            // Instants in one millisecond share its end; it is its own end.
            assert_eq!(aligned(end), end);
            assert_eq!(aligned(end - Duration::from_nanos(1)), end);
            assert_eq!(aligned(end + Duration::from_nanos(1)), end + ms);
        }
    }

    #[test]
    fn a_child_forked_while_the_alignment_origin_is_locked_does_not_wait_for_it() {
        let _serial = wait::lock(&SERIAL);
        let at = Instant::now() + Duration::from_millis(50);
        let here = aligned(at);
        assert!(
            here >= at && here - at <= Duration::from_millis(1),
            "{here:?} {at:?}"
        );
        // As if another thread were aligning a retry at the fork.
        let held = wait::lock(&ORIGIN);
        // SAFETY: the child only calls `aligned`, which only tries the lock
        // this thread holds, and leaves with _exit.
        #[allow(unsafe_code)]
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let unaligned = aligned(at) == at;
            // SAFETY: ends the child without running the parent's exit code.
            #[allow(unsafe_code)]
            unsafe {
                libc::_exit(if unaligned { 0 } else { 1 })
            };
        }
        drop(held);
        assert_eq!(reap(pid), Some(0), "None: the child waited for the lock");
        assert_eq!(aligned(at), here);
    }

    #[test]
    fn a_forked_childs_async_wait_leaves_the_parents_reactor_registration() {
        let _serial = wait::lock(&SERIAL);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fork.lock");
        let held = LockFile::open(&path)
            .unwrap()
            .try_lock::<Exclusive>()
            .unwrap();
        let rt = runtime();
        let wait =
            lock_timeout::<Exclusive>(LockFile::open(&path).unwrap(), Duration::from_millis(30));
        assert!(rt.block_on(wait).unwrap_err().is_timeout());
        let fd = parked()
            .unwrap()
            .as_ref()
            .map(|r| r.fd.as_raw_fd())
            .expect("the reader's registration is parked");
        assert!(epoll_watches(fd));
        // As if another thread were parking a registration at the fork.
        let slot = parked().unwrap();
        // SAFETY: the child waits once on a runtime of its own and leaves
        // with _exit; it takes no lock that this test's other threads hold.
        #[allow(unsafe_code)]
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let wait = lock_timeout::<Exclusive>(
                LockFile::open(&path).unwrap(),
                Duration::from_millis(30),
            );
            let ok = runtime().block_on(wait).is_err_and(|e| e.is_timeout());
            // SAFETY: ends the child without running the parent's exit code.
            #[allow(unsafe_code)]
            unsafe {
                libc::_exit(if ok { 0 } else { 1 })
            };
        }
        drop(slot);
        assert_eq!(reap(pid), Some(0), "the child hung or failed");
        assert!(
            epoll_watches(fd),
            "the child removed the parent's registration"
        );
        drop(rt);
        drop(held);
    }

    #[test]
    fn timeouts_on_one_file_share_a_holder_read_and_each_gets_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.lock");
        let held = LockFile::open(&path)
            .unwrap()
            .try_lock::<Exclusive>()
            .unwrap();
        let id = sys::statx_fd(LockFile::open(&path).unwrap().as_fd()).unwrap();
        let lists: Vec<Vec<Holder>> = std::thread::scope(|s| {
            let readers: Vec<_> = (0..8)
                .map(|_| s.spawn(|| shared_holders(id, &path, Duration::from_secs(5))))
                .collect();
            readers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for list in &lists {
            assert_eq!(list.len(), 1, "{list:?}");
            assert_eq!(list[0].pid, std::process::id());
        }
        // Finished reads are kept only briefly.
        std::thread::sleep(HOLDERS_FRESH * 2);
        drop(held);
        assert!(shared_holders(id, &path, Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn the_registered_descriptor_stays_the_hubs_while_registered() {
        let _serial = wait::lock(&SERIAL);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("io-safety.lock");
        let file = LockFile::open(&path).unwrap();
        let rt = runtime();
        let _entered = rt.enter();
        let reg = Registration::new(file.as_fd(), None, FlockMode::Exclusive, None, None);
        let hub_fd = reg.hub_fd().expect("a hub");
        let raw = hub_fd.as_raw_fd();
        let registered = register(hub_fd).unwrap();
        // The waiter leaves; the registration alone keeps the hub, so its
        // descriptor stays open and names the same inotify instance.
        drop(reg);
        assert_eq!(registered.as_raw_fd(), raw);
        let link = std::fs::read_link(format!("/proc/self/fd/{raw}")).unwrap();
        assert_eq!(link.to_string_lossy(), "anon_inode:inotify");
        assert!(epoll_watches(raw));
        drop(registered);
    }
}
