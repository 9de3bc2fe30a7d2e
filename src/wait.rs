//! Waiting for a lock: the public [`Wait`] description and [`CancelToken`],
//! and the machinery behind waits that need events, kept apart from the
//! blocking call so that another front-end (an async runtime polling the
//! same descriptors) can drive it step by step.
//!
//! `flock(2)` has no timed form, so a [`Waiter`] retries `LOCK_NB` and
//! sleeps in between on two event sources:
//! - an inotify watch for `IN_CLOSE_WRITE | IN_CLOSE_NOWRITE` on the lock
//!   file's inode. A holder that closes its descriptor or exits raises it.
//!   The kernel raises the event just *before* it drops the lock, so a close
//!   is followed by a few quick retries;
//! - the eventfd of a [`CancelToken`], written by [`CancelToken::cancel`].
//!
//! A release by `flock(LOCK_UN)` without a close raises nothing, and the
//! watch may be unavailable (`fs.inotify.max_user_instances` reached, no
//! descriptors left); a bounded back-off retry covers both.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::holder::Holder;
use crate::mode::FlockMode;
use crate::sys;

/// How an acquisition waits: not at all, in the kernel, or until a
/// deadline; with an optional notice, [`CancelToken`] and description.
///
/// `Wait` is `Send`; `'a` is the lifetime of what the notice borrows, and a
/// `Wait<'static>` can move to another thread or task.
///
/// Passed to [`LockFile::lock_with`](crate::LockFile::lock_with) and
/// [`LockFile::lock_any`](crate::LockFile::lock_any). A wait with a deadline
/// or a token sleeps on the holder's close (inotify) and retries with a
/// bounded back-off otherwise; a wait without either blocks in `flock(2)`.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use flockguard::{CancelToken, Exclusive, LockFile, Wait};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("cache.lock");
/// let token = CancelToken::new();
/// let wait = Wait::timeout(Duration::from_secs(5))
///     .on_wait(|holders| eprintln!("waiting for {} holder(s)", holders.len()))
///     .cancel(token.clone())
///     .context("cache entry abc123");
/// let guard = LockFile::open(&path)?.lock_with::<Exclusive>(wait)?;
/// # drop(guard);
/// # Ok::<(), flockguard::Error>(())
/// ```
#[must_use = "a Wait does nothing until passed to LockFile::lock_with"]
pub struct Wait<'a> {
    pub(crate) deadline: Deadline,
    pub(crate) notice: Option<Notice<'a>>,
    pub(crate) cancel: Option<CancelToken>,
    pub(crate) context: Option<String>,
}

/// The callback of [`Wait::on_wait`].
pub(crate) type Notice<'a> = Box<dyn FnOnce(&[Holder]) + Send + 'a>;

/// When a [`Wait`] gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// Try once.
    None,
    /// Never: block until the lock is taken (or the token cancels).
    Forever,
    /// At this instant.
    At(Instant),
    /// This long after the acquisition starts.
    After(Duration),
}

impl Deadline {
    /// The instant, for a wait that started at `start`; `None` for no limit.
    pub(crate) fn resolve(self, start: Instant) -> Option<Instant> {
        match self {
            Deadline::None => Some(start),
            Deadline::Forever => None,
            Deadline::At(at) => Some(at),
            // Far beyond any real deadline: the same as no limit.
            Deadline::After(d) => start.checked_add(d),
        }
    }
}

impl<'a> Wait<'a> {
    /// Do not wait: one `LOCK_NB` attempt, [`Error::WouldBlock`](crate::Error::WouldBlock) on contention.
    pub fn none() -> Self {
        Wait::with(Deadline::None)
    }

    /// Wait as long as it takes: in `flock(2)`, or on events when a
    /// [`CancelToken`] is attached.
    pub fn forever() -> Self {
        Wait::with(Deadline::Forever)
    }

    /// Wait at most `timeout`, then fail with [`Error::Timeout`](crate::Error::Timeout).
    pub fn timeout(timeout: Duration) -> Self {
        Wait::with(Deadline::After(timeout))
    }

    /// Wait until `deadline`, then fail with [`Error::Timeout`](crate::Error::Timeout).
    pub fn until(deadline: Instant) -> Self {
        Wait::with(Deadline::At(deadline))
    }

    fn with(deadline: Deadline) -> Self {
        Wait {
            deadline,
            notice: None,
            cancel: None,
            context: None,
        }
    }

    /// Calls `notice` once, with the current holders, just before the call
    /// starts waiting; never when the lock is free at once.
    pub fn on_wait(mut self, notice: impl FnOnce(&[Holder]) + Send + 'a) -> Self {
        self.notice = Some(Box::new(notice));
        self
    }

    /// Gives up with [`Error::Cancelled`](crate::Error::Cancelled) when
    /// `token` is cancelled, from any thread.
    pub fn cancel(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Describes what the lock protects, for the timeout message.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }
}

impl fmt::Debug for Wait<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait")
            .field("deadline", &self.deadline)
            .field("on_wait", &self.notice.is_some())
            .field("cancel", &self.cancel)
            .field("context", &self.context)
            .finish()
    }
}

/// Waits for `mode` on `fd` until it is taken, the deadline passes or the
/// token cancels. `Err` is a `flock(2)` failure other than contention.
pub(crate) fn acquire(
    fd: BorrowedFd<'_>,
    path: Option<&Path>,
    mode: FlockMode,
    deadline: Option<Instant>,
    cancel: Option<&CancelToken>,
) -> io::Result<Result<(), Stop>> {
    let mut waiter = Waiter::new(fd, path, deadline, cancel);
    loop {
        if let Some(Stop::Cancelled) = waiter.stop(Instant::now()) {
            return Ok(Err(Stop::Cancelled));
        }
        if waiter.try_acquire(fd, mode)? {
            return Ok(Ok(()));
        }
        if let Some(stop) = waiter.stop(Instant::now()) {
            return Ok(Err(stop));
        }
        waiter.block();
    }
}

const BACKOFF_FIRST: Duration = Duration::from_millis(2);
/// Longest back-off interval. A release by `LOCK_UN` without a close (or
/// any release, without a close watch) is noticed within this long, and a
/// waiter wakes at most 1 / this often while the lock stays held.
const BACKOFF_CAP: Duration = Duration::from_millis(100);
/// How long a close event is followed by immediate retries that only yield
/// the CPU: the kernel reports the close a moment before it releases the
/// lock (sub-microsecond when the closer keeps running, longer when it is
/// preempted in between).
const AFTER_CLOSE_SPIN: Duration = Duration::from_micros(100);
/// Retry intervals after the spin, before the back-off resumes.
const AFTER_CLOSE: [Duration; 3] = [
    Duration::from_micros(250),
    Duration::from_millis(1),
    Duration::from_millis(5),
];

/// A token to give up a wait from another thread.
///
/// Clones share one state: [`cancel`](Self::cancel) on any clone ends every
/// wait that uses any clone, now and later; a cancelled token stays
/// cancelled. A waiter sleeps on an eventfd registered with the token for
/// the length of the wait, so a cancel wakes it at once; if no eventfd could
/// be created, the waiter notices at its next back-off retry.
///
/// # Examples
/// ```
/// use flockguard::{CancelToken, Exclusive, LockFile, Wait};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let held = LockFile::open(&path)?.lock::<Exclusive>()?;
/// let token = CancelToken::new();
/// let canceller = token.clone();
/// let file = LockFile::open(&path)?;
/// let err = std::thread::scope(|s| {
///     s.spawn(move || canceller.cancel());
///     file.lock_with::<Exclusive>(Wait::forever().cancel(token))
/// })
/// .unwrap_err();
/// assert!(err.error.is_cancelled());
/// # drop(held);
/// # Ok::<(), flockguard::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<CancelInner>,
}

#[derive(Default)]
struct CancelInner {
    cancelled: AtomicBool,
    /// Eventfds of the waits in progress, by registration number.
    wakers: Mutex<Vec<(u64, Arc<OwnedFd>)>>,
    next_id: AtomicU64,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every wait using this token (or a clone), waking them.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        for (_, fd) in self.wakers().iter() {
            // A full counter is still readable; no other error can occur on
            // an eventfd this crate created.
            let _ = sys::eventfd_signal(fd.as_fd());
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    fn wakers(&self) -> MutexGuard<'_, Vec<(u64, Arc<OwnedFd>)>> {
        // The lock is never held across anything that can panic.
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a fresh eventfd that [`cancel`](Self::cancel) will write.
    fn register(&self) -> Option<Registration<'_>> {
        let fd = Arc::new(sys::eventfd_new().ok()?);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut wakers = self.wakers();
        // Checked under the lock that cancel() takes after setting the flag,
        // so a cancel either sees this eventfd or is seen here.
        if self.is_cancelled() {
            sys::eventfd_signal(fd.as_fd()).ok()?;
        }
        wakers.push((id, Arc::clone(&fd)));
        drop(wakers);
        Some(Registration {
            token: self,
            id,
            fd,
        })
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// An eventfd registered with a [`CancelToken`]; unregistered and closed on
/// drop.
struct Registration<'a> {
    token: &'a CancelToken,
    id: u64,
    fd: Arc<OwnedFd>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.token.wakers().retain(|(id, _)| *id != self.id);
    }
}

/// Why a wait ended without the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The deadline passed.
    TimedOut,
    /// The token was cancelled.
    Cancelled,
}

/// One wait for a lock: its event sources, deadline and retry schedule.
///
/// Owns every descriptor it opens; dropping it closes them.
pub(crate) struct Waiter<'a> {
    /// An inotify instance watching closes of the lock file.
    events: Option<Watch>,
    cancel: Option<&'a CancelToken>,
    cancel_fd: Option<Registration<'a>>,
    deadline: Option<Instant>,
    backoff: Duration,
    /// Close events are queued and not yet read.
    unread: bool,
    /// Until when to retry at once after a close event.
    spin_until: Option<Instant>,
    /// Index into [`AFTER_CLOSE`] while retrying after a close event.
    after_close: Option<usize>,
}

impl<'a> Waiter<'a> {
    /// Sets up the event sources for waiting on `file`.
    ///
    /// The close watch is placed on the open file's inode through
    /// `/proc/self/fd` (so a rename or unlink of the path does not matter),
    /// or on `path` when `/proc` is unavailable. Any failure leaves the
    /// waiter with back-off retries alone.
    pub(crate) fn new(
        file: BorrowedFd<'_>,
        path: Option<&Path>,
        deadline: Option<Instant>,
        cancel: Option<&'a CancelToken>,
    ) -> Self {
        Waiter {
            events: Watch::new(file, path),
            cancel,
            cancel_fd: cancel.and_then(CancelToken::register),
            deadline,
            backoff: BACKOFF_FIRST,
            unread: false,
            spin_until: None,
            after_close: None,
        }
    }

    /// Ends the wait: removes the close watch and returns the inotify
    /// instance, which the caller keeps for the next wait rather than
    /// closing it now (see [`Watch`]).
    /// Whether close events are being watched.
    #[cfg(test)]
    pub(crate) fn is_watching(&self) -> bool {
        self.events.is_some()
    }

    /// One `flock(LOCK_NB)` attempt: `Ok(true)` if the lock was taken,
    /// `Ok(false)` on contention.
    pub(crate) fn try_acquire(
        &mut self,
        file: BorrowedFd<'_>,
        mode: FlockMode,
    ) -> std::io::Result<bool> {
        match sys::flock(file, mode, true) {
            Ok(()) => Ok(true),
            Err(err) if sys::is_contention(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Whether the wait must end now: cancelled, or past the deadline.
    pub(crate) fn stop(&self, now: Instant) -> Option<Stop> {
        if self.cancel.is_some_and(CancelToken::is_cancelled) {
            Some(Stop::Cancelled)
        } else if self.deadline.is_some_and(|d| now >= d) {
            Some(Stop::TimedOut)
        } else {
            None
        }
    }

    /// How long to sleep before the next attempt unless an event source
    /// becomes readable first; advances the retry schedule.
    pub(crate) fn next_timeout(&mut self, now: Instant) -> Duration {
        if self.spin_until.is_some_and(|until| now < until) {
            return Duration::ZERO;
        }
        self.spin_until = None;
        let step = match self.after_close {
            Some(i) if i < AFTER_CLOSE.len() => {
                self.after_close = Some(i + 1);
                AFTER_CLOSE[i]
            }
            _ => {
                self.after_close = None;
                let step = self.backoff.min(BACKOFF_CAP);
                self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
                step
            }
        };
        match self.deadline {
            Some(deadline) => step.min(deadline.saturating_duration_since(now)),
            None => step,
        }
    }

    /// The inotify descriptor to wait on for readability, if any.
    pub(crate) fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        self.events.as_ref().and_then(Watch::fd)
    }

    /// The cancel eventfd to wait on for readability, if any.
    pub(crate) fn cancel_fd(&self) -> Option<BorrowedFd<'_>> {
        self.cancel_fd.as_ref().map(|r| r.fd.as_fd())
    }

    /// Consumes the queued close events after [`event_fd`](Self::event_fd)
    /// became readable, and schedules quick retries if a close was seen.
    pub(crate) fn on_ready(&mut self) {
        let Some(events) = &self.events else {
            return;
        };
        let Some(fd) = events.fd() else {
            return;
        };
        match sys::inotify_drain(fd) {
            Ok(drained) => {
                if drained.closed || drained.lost {
                    self.spin_until = Some(Instant::now() + AFTER_CLOSE_SPIN);
                    self.after_close = Some(0);
                }
                if drained.lost {
                    // The watch may be gone; back-off retries take over.
                    self.events = None;
                }
            }
            Err(_) => self.events = None,
        }
    }

    /// Sleeps until an event source is readable or the next retry is due.
    ///
    /// Readable close events are consumed on the next call rather than at
    /// once, so the attempt that follows a wake-up comes first.
    pub(crate) fn block(&mut self) {
        if std::mem::take(&mut self.unread) {
            self.on_ready();
        }
        let timeout = self.next_timeout(Instant::now());
        if timeout.is_zero() {
            std::thread::yield_now();
            return;
        }
        match sys::poll_readable([self.event_fd(), self.cancel_fd()], Some(timeout)) {
            Ok([events_ready, _]) => self.unread = events_ready,
            // ppoll(2) fails only for lack of memory or a bad descriptor:
            // drop the event sources and keep the schedule.
            Err(_) => {
                self.events = None;
                self.cancel_fd = None;
                std::thread::sleep(timeout);
            }
        }
    }
}

impl fmt::Debug for Waiter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("events", &self.event_fd().map(|fd| fd.as_raw_fd()))
            .field("deadline", &self.deadline)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// An inotify instance with one watch for closes of the lock file.
///
struct Watch {
    inotify: Option<OwnedFd>,
    wd: i32,
}

impl Watch {
    /// Watches closes of `file` with a new instance; `None` if that is not
    /// possible.
    fn new(file: BorrowedFd<'_>, path: Option<&Path>) -> Option<Watch> {
        let inotify = sys::inotify_new().ok()?;
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        let wd = match sys::inotify_watch_close(inotify.as_fd(), Path::new(&link)) {
            Ok(wd) => wd,
            Err(_) => {
                // Without /proc, the path is the next best thing: it names
                // the same inode unless it was replaced since the open.
                let path = path?;
                let same = sys::lstat(path)
                    .ok()
                    .zip(sys::fstat(file).ok())
                    .is_some_and(|(a, b)| a.dev == b.dev && a.ino == b.ino);
                if !same {
                    return None;
                }
                sys::inotify_watch_close(inotify.as_fd(), path).ok()?
            }
        };
        Some(Watch {
            inotify: Some(inotify),
            wd,
        })
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(AsFd::as_fd)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(inotify) = &self.inotify {
            // Fails only if the watch is already gone.
            let _ = sys::inotify_unwatch(inotify.as_fd(), self.wd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LockFile;

    fn lock_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.lock");
        (dir, path)
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_respects_the_deadline() {
        let (_dir, path) = lock_file();
        let file = LockFile::open(&path).unwrap();
        let now = Instant::now();
        let mut w = Waiter::new(file.as_fd(), None, None, None);
        assert!(w.is_watching());
        let steps: Vec<Duration> = (0..10).map(|_| w.next_timeout(now)).collect();
        assert_eq!(steps[0], BACKOFF_FIRST);
        assert_eq!(steps[1], BACKOFF_FIRST * 2);
        assert_eq!(*steps.last().unwrap(), BACKOFF_CAP);
        assert!(steps.windows(2).all(|w| w[0] <= w[1]));

        let deadline = now + Duration::from_millis(3);
        let mut w = Waiter::new(file.as_fd(), None, Some(deadline), None);
        for _ in 0..5 {
            w.next_timeout(now);
        }
        assert_eq!(w.next_timeout(now), Duration::from_millis(3));
        assert_eq!(w.next_timeout(deadline), Duration::ZERO);
        assert_eq!(w.stop(deadline), Some(Stop::TimedOut));
        assert_eq!(w.stop(now), None);
    }

    #[test]
    fn a_close_of_the_file_wakes_the_waiter_and_schedules_quick_retries() {
        let (_dir, path) = lock_file();
        let file = LockFile::open(&path).unwrap();
        let mut w = Waiter::new(file.as_fd(), None, None, None);
        let other = LockFile::open(&path).unwrap();
        drop(other);
        // Readable at once: the close event is queued.
        let ready =
            sys::poll_readable([w.event_fd(), None], Some(Duration::from_secs(30))).unwrap();
        assert_eq!(ready, [true, false]);
        let woken = Instant::now();
        w.on_ready();
        assert_eq!(w.next_timeout(woken), Duration::ZERO, "retry at once");
        let later = woken + AFTER_CLOSE_SPIN * 2;
        assert_eq!(w.next_timeout(later), AFTER_CLOSE[0]);
        assert_eq!(w.next_timeout(later), AFTER_CLOSE[1]);
        // Drained: nothing is readable any more.
        let ready = sys::poll_readable([w.event_fd(), None], Some(Duration::ZERO)).unwrap();
        assert_eq!(ready, [false, false]);
    }

    #[test]
    fn a_close_of_another_file_does_not_wake_the_waiter() {
        let (dir, path) = lock_file();
        let file = LockFile::open(&path).unwrap();
        let w = Waiter::new(file.as_fd(), None, None, None);
        drop(LockFile::open(dir.path().join("other.lock")).unwrap());
        let ready = sys::poll_readable([w.event_fd(), None], Some(Duration::ZERO)).unwrap();
        assert_eq!(ready, [false, false]);
    }

    #[test]
    fn cancel_makes_the_registered_eventfd_readable() {
        let (_dir, path) = lock_file();
        let file = LockFile::open(&path).unwrap();
        let token = CancelToken::new();
        let w = Waiter::new(file.as_fd(), None, None, Some(&token));
        assert_eq!(w.stop(Instant::now()), None);
        let canceller = token.clone();
        std::thread::spawn(move || canceller.cancel())
            .join()
            .unwrap();
        let ready =
            sys::poll_readable([None, w.cancel_fd()], Some(Duration::from_secs(30))).unwrap();
        assert_eq!(ready, [false, true]);
        assert_eq!(w.stop(Instant::now()), Some(Stop::Cancelled));
    }

    #[test]
    fn a_token_cancelled_before_the_wait_is_readable_at_once() {
        let (_dir, path) = lock_file();
        let file = LockFile::open(&path).unwrap();
        let token = CancelToken::new();
        token.cancel();
        let w = Waiter::new(file.as_fd(), None, None, Some(&token));
        let ready =
            sys::poll_readable([None, w.cancel_fd()], Some(Duration::from_secs(30))).unwrap();
        assert_eq!(ready, [false, true]);
    }

    #[test]
    fn registrations_are_removed_when_the_waiter_is_dropped() {
        let (_dir, path) = lock_file();
        let file = LockFile::open(&path).unwrap();
        let token = CancelToken::new();
        let a = Waiter::new(file.as_fd(), None, None, Some(&token));
        let b = Waiter::new(file.as_fd(), None, None, Some(&token));
        assert_eq!(token.wakers().len(), 2);
        drop(a);
        assert_eq!(token.wakers().len(), 1);
        drop(b);
        assert!(token.wakers().is_empty());
    }

    #[test]
    fn inotify_reports_the_close_of_a_watched_path() {
        let (_dir, path) = lock_file();
        let file = LockFile::open(&path).unwrap();
        let inotify = sys::inotify_new().unwrap();
        let wd = sys::inotify_watch_close(inotify.as_fd(), &path).unwrap();
        drop(LockFile::open(&path).unwrap());
        let drained = sys::inotify_drain(inotify.as_fd()).unwrap();
        assert!(drained.closed);
        assert!(!drained.lost);
        sys::inotify_unwatch(inotify.as_fd(), wd).unwrap();
        assert!(
            sys::inotify_drain(inotify.as_fd()).unwrap().lost,
            "IN_IGNORED after removal"
        );
        drop(file);
    }
}
