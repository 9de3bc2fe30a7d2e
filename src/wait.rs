//! The waiting machinery behind timed acquisition, kept apart from the
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
//! descriptors left); a bounded back-off retry covers both. The steps are
//! [`Waiter::try_acquire`], [`Waiter::next_timeout`], [`Waiter::event_fd`]
//! / [`Waiter::cancel_fd`] and [`Waiter::on_ready`]; [`Waiter::block`]
//! composes them with `ppoll(2)`.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::mode::FlockMode;
use crate::sys;

/// First back-off interval.
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
///     file.lock_with::<Exclusive>(Wait::new(None).cancel(&token))
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
    /// Sets up the event sources for waiting on `file`, reusing the
    /// inotify instance `reuse` if given (see [`finish`](Self::finish)).
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
        reuse: Option<OwnedFd>,
    ) -> Self {
        Waiter {
            events: Watch::new(file, path, reuse),
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
    pub(crate) fn finish(&mut self) -> Option<OwnedFd> {
        self.events.take()?.into_instance()
    }

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
/// Closing an instance soon after its watch fired waits for the kernel to
/// retire the watch (an SRCU grace period, milliseconds), so a
/// finished wait removes the watch and hands the instance back for the
/// [`LockFile`](crate::LockFile) to keep instead of closing it.
struct Watch {
    /// `None` only once handed back by [`into_instance`](Self::into_instance).
    inotify: Option<OwnedFd>,
    wd: i32,
}

impl Watch {
    /// Watches closes of `file` with `reuse` (drained first) or a new
    /// instance; `None` if that is not possible.
    fn new(file: BorrowedFd<'_>, path: Option<&Path>, reuse: Option<OwnedFd>) -> Option<Watch> {
        let inotify = match reuse {
            Some(fd) => {
                // Stale events (the IN_IGNORED of the last removal) would
                // cause one needless wake-up.
                sys::inotify_drain(fd.as_fd()).ok()?;
                fd
            }
            None => sys::inotify_new().ok()?,
        };
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

    /// Removes the watch and returns the instance for reuse.
    fn into_instance(mut self) -> Option<OwnedFd> {
        let inotify = self.inotify.take()?;
        sys::inotify_unwatch(inotify.as_fd(), self.wd).ok()?;
        Some(inotify)
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
        let mut w = Waiter::new(file.as_fd(), None, None, None, None);
        assert!(w.is_watching());
        let steps: Vec<Duration> = (0..10).map(|_| w.next_timeout(now)).collect();
        assert_eq!(steps[0], BACKOFF_FIRST);
        assert_eq!(steps[1], BACKOFF_FIRST * 2);
        assert_eq!(*steps.last().unwrap(), BACKOFF_CAP);
        assert!(steps.windows(2).all(|w| w[0] <= w[1]));

        let deadline = now + Duration::from_millis(3);
        let mut w = Waiter::new(file.as_fd(), None, Some(deadline), None, None);
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
        let mut w = Waiter::new(file.as_fd(), None, None, None, None);
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
        let w = Waiter::new(file.as_fd(), None, None, None, None);
        drop(LockFile::open(dir.path().join("other.lock")).unwrap());
        let ready = sys::poll_readable([w.event_fd(), None], Some(Duration::ZERO)).unwrap();
        assert_eq!(ready, [false, false]);
    }

    #[test]
    fn cancel_makes_the_registered_eventfd_readable() {
        let (_dir, path) = lock_file();
        let file = LockFile::open(&path).unwrap();
        let token = CancelToken::new();
        let w = Waiter::new(file.as_fd(), None, None, Some(&token), None);
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
        let w = Waiter::new(file.as_fd(), None, None, Some(&token), None);
        let ready =
            sys::poll_readable([None, w.cancel_fd()], Some(Duration::from_secs(30))).unwrap();
        assert_eq!(ready, [false, true]);
    }

    #[test]
    fn registrations_are_removed_when_the_waiter_is_dropped() {
        let (_dir, path) = lock_file();
        let file = LockFile::open(&path).unwrap();
        let token = CancelToken::new();
        let a = Waiter::new(file.as_fd(), None, None, Some(&token), None);
        let b = Waiter::new(file.as_fd(), None, None, Some(&token), None);
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
