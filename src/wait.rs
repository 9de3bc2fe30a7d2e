//! Waiting for a lock: the public [`Wait`] description and [`CancelToken`],
//! and the service behind waits that need events, shared by blocked
//! threads and async tasks.
//!
//! `flock(2)` has no timed form, so a waiter retries `LOCK_NB`, and between
//! attempts sleeps until a holder closes the file or the next retry is due.
//!
//! - **One inotify instance per process** ([`Hub`]), created on first use,
//!   with one watch (`IN_CLOSE_WRITE | IN_CLOSE_NOWRITE`) per lock file
//!   inode, shared by every waiter of that inode. Watches outlive their
//!   waiters and are removed lazily by a later registration, so nothing is
//!   torn down between taking the lock and returning.
//! - **One reader at a time.** Whichever waiter holds the reader role
//!   (a thread in `ppoll(2)`, or a task whose runtime polls the descriptor)
//!   reads the events and wakes the waiters of the inode that was closed:
//!   the first in line, and those queued right behind it in shared mode.
//!   The others sleep on their own wake-up (a thread park or a task's
//!   `Waker`). A leaving reader hands the role to the next waiter, and a
//!   sleeping thread takes it from a task that has left events unread (its
//!   runtime may have stopped). No thread is started.
//! - The kernel raises the close event just *before* it drops the lock, so
//!   a woken waiter retries at once for a moment, then a few times more.
//! - A release by `flock(LOCK_UN)` without a close raises nothing, and the
//!   instance or watch may be unavailable (`fs.inotify.max_user_instances`,
//!   `max_user_watches`, no descriptors left): a jittered back-off retry,
//!   at most about ten per second, covers both.
//!
//! Every waiter follows one set of rules, [`Core`]: a state machine without
//! I/O that decides from the clock and what happened whether to attempt
//! now, wait in the kernel, call the notice, read the holders, register,
//! check the path, yield, sleep until an instant or an event, or stop. The
//! blocking driver ([`block_on`]) and the async one (`crate::tokio`)
//! perform its steps.
//!
//! A forked child never touches its parent's hub (its events belong to the
//! parent's description), nor the locks of it and of its waiters (a parent
//! thread may have held one at the fork): it makes its own hub on first
//! use. The mutex that finds the hub, and each [`CancelToken`]'s list of
//! waits, are only tried in a child, never waited for; a child forked
//! while a parent thread held the hub's waits with back-off retries only,
//! and one forked while a parent thread held a token's sees that token's
//! cancel at its next retry instead of at once. A cancel in a child wakes
//! only the child's waits.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
#[cfg(feature = "tokio")]
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::thread::Thread;
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
    pub(crate) diagnostics: Duration,
}

/// The default of [`Wait::diagnostics`]: the time the holder diagnostics
/// may take beyond the first page of `/proc/locks` (whose read can itself
/// take milliseconds: the kernel waits for an RCU grace period when the
/// file was not read in the last tens of milliseconds).
pub(crate) const DIAGNOSTICS_BUDGET: Duration = Duration::from_millis(5);

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
            diagnostics: DIAGNOSTICS_BUDGET,
        }
    }

    /// How long the holder diagnostics of the notice and of the timeout
    /// error may take beyond the first page of `/proc/locks` (default 5 ms).
    /// `/proc/locks` is read to its end whatever the budget (twice when it
    /// is longer than a page), so that every holder it shows is listed;
    /// holders not verified in time are
    /// [`PidStatus::Unverified`](crate::PidStatus::Unverified), without a
    /// command line. A command-line tool that prints who holds the lock
    /// can afford more.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use flockguard::Wait;
    /// let wait = Wait::timeout(Duration::from_secs(2)).diagnostics(Duration::from_millis(200));
    /// # drop(wait);
    /// ```
    pub fn diagnostics(mut self, budget: Duration) -> Self {
        self.diagnostics = budget;
        self
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

/// Reopenings of a path replaced again and again (each new file found
/// unlocked, and replaced before the check) retried at once; later ones
/// wait [`REOPEN_PAUSE`] first.
const REOPENS_AT_ONCE: u32 = 2;

/// The pause before locking a path replaced more than [`REOPENS_AT_ONCE`]
/// times in a row.
const REOPEN_PAUSE: Duration = Duration::from_millis(1);

/// First back-off interval.
const BACKOFF_FIRST: Duration = Duration::from_millis(2);
/// Longest back-off interval before jitter. A release by `LOCK_UN` without
/// a close (or any release, without a watch) is noticed within 1.2× this,
/// and a waiter wakes at most 1 / this often while the lock stays held.
const BACKOFF_CAP: Duration = Duration::from_millis(100);
/// The back-off of a watched waiter behind the first in line on its file
/// in this process: that one retries (and notices a release by `LOCK_UN`
/// within 1.2 × [`BACKOFF_CAP`]); the release it gets is then passed on by
/// its close, or by the wake-up a waiter gets when it becomes first.
const BACKOFF_BEHIND: Duration = Duration::from_secs(1);
/// How long a reading thread pauses after events that concern no waiter
/// (files closed in a watched directory) before it reads again.
const IRRELEVANT_PAUSE: Duration = Duration::from_millis(2);
/// How long a close event is followed by immediate retries that only yield
/// the CPU: the kernel reports the close a moment before it releases the
/// lock (sub-microsecond when the closer keeps running, longer when it is
/// preempted in between).
const AFTER_CLOSE_SPIN: Duration = Duration::from_micros(100);
/// The first part of [`AFTER_CLOSE_SPIN`], in which a thread retries
/// without giving up the CPU: a closer running on another CPU drops the
/// lock within microseconds, and yielding to another runnable process
/// would cost a whole time slice.
const AFTER_CLOSE_HOT: Duration = Duration::from_micros(20);
/// Retry intervals after the spin, before the back-off resumes.
const AFTER_CLOSE: [Duration; 3] = [
    Duration::from_micros(250),
    Duration::from_millis(1),
    Duration::from_millis(5),
];
/// Watches without waiters kept for reuse; beyond this the oldest go.
const IDLE_WATCHES: usize = 32;
/// How long a watch without waiters is kept.
const IDLE_KEEP: Duration = Duration::from_secs(30);
/// How long after a failed `inotify_init1` the next wait tries again.
const HUB_RETRY: Duration = Duration::from_secs(1);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; a poisoned lock still
    // guards consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A token to give up a wait from another thread or task.
///
/// Clones share one state: [`cancel`](Self::cancel) on any clone ends every
/// wait that uses any clone, now and later; a cancelled token stays
/// cancelled. A cancel wakes the waiters at once; it opens no descriptor.
///
/// # Across `fork(2)`
/// A forked child has its own copy of the token, in the state it had at
/// the fork: a cancel in the child ends the child's waits and never wakes
/// the parent's, and a cancel in the parent after the fork does not reach
/// the child. Using the token in the child never blocks: if a parent
/// thread was registering a wait with it or cancelling it at the moment of
/// the fork, the child's waits with it are not woken by the child's cancel
/// but see it at their next retry (within 1.2 s), and end
/// with [`Error::Cancelled`](crate::Error::Cancelled) as usual.
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
    /// The waits in progress.
    waiters: Mutex<Vec<CancelWaiter>>,
    /// The process that waits for `waiters`' lock (see
    /// [`lock_unless_forked`]).
    owner: AtomicU32,
    next_id: AtomicU64,
}

/// A wait registered with a token: registration number, registering
/// process, wake-up.
type CancelWaiter = (u64, u32, Arc<Slot>);

impl CancelInner {
    /// The waits in progress; `None` in a forked child whose parent held
    /// the lock at the fork. Entries of other processes (a parent's waits,
    /// copied by the fork) stay: waking or dropping them in a child could
    /// reach the parent's hub or runtime.
    fn waiters(&self, pid: u32) -> Option<MutexGuard<'_, Vec<CancelWaiter>>> {
        lock_unless_forked(&self.waiters, &self.owner, pid)
    }
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every wait using this token (or a clone), waking them.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        // Woken after the lock is let go: a waker may poll its task inline,
        // and the task's wait then unregisters from this token.
        let pid = sys::current_pid();
        let Some(waiters) = self.inner.waiters(pid) else {
            // A forked child that found the lock held: none of its waits
            // could register; they see the flag at their next retry.
            return;
        };
        let slots: Vec<Arc<Slot>> = waiters
            .iter()
            .filter(|(_, p, _)| *p == pid)
            .map(|(_, _, slot)| Arc::clone(slot))
            .collect();
        drop(waiters);
        for slot in slots {
            slot.wake();
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Registers a wait to be woken by a cancel; `None` in a forked child
    /// that found the lock held (the wait sees a cancel at its next retry).
    fn register(&self, slot: &Arc<Slot>) -> Option<u64> {
        let pid = sys::current_pid();
        let mut waiters = self.inner.waiters(pid)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        waiters.push((id, pid, Arc::clone(slot)));
        Some(id)
    }

    fn unregister(&self, id: u64) {
        let pid = sys::current_pid();
        if let Some(mut waiters) = self.inner.waiters(pid) {
            waiters.retain(|(i, p, _)| *i != id || *p != pid);
        }
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        lock(&self.inner.waiters).len()
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// Why a wait ended without the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The deadline passed.
    TimedOut,
    /// The token was cancelled.
    Cancelled,
    /// The one attempt of a wait without a deadline found the lock held.
    WouldBlock,
}

/// How a waiter is woken.
enum Wake {
    /// A thread sleeping in `park_timeout`, or in `ppoll(2)` as the reader.
    Thread(Thread),
    /// An async task.
    Task(Mutex<Option<Waker>>),
}

/// One waiter's wake-up state, shared with the hub and cancel tokens.
struct Slot {
    /// A close of the waited-for file was seen since the waiter last looked.
    notified: AtomicBool,
    /// This waiter holds the reader role.
    reader: AtomicBool,
    /// Another waiter is ahead of this one in its file's queue.
    behind: AtomicBool,
    wake: Wake,
    /// The hub this waiter is queued with; `None`: back-off retries only.
    hub: Option<Arc<Hub>>,
}

impl Slot {
    fn wake(&self) {
        match &self.wake {
            Wake::Thread(thread) => {
                if self.reader.load(Ordering::SeqCst) {
                    if let Some(hub) = &self.hub {
                        // Cannot fail on an eventfd this crate created.
                        let _ = sys::eventfd_signal(hub.bell.as_fd());
                    }
                }
                thread.unpark();
            }
            Wake::Task(waker) => {
                // Cloned out first: the wake must not run under the lock.
                let waker = lock(waker).clone();
                if let Some(w) = waker {
                    w.wake();
                }
            }
        }
    }
}

/// The process-wide inotify instance, its watches and the waiters queued
/// on each.
pub(crate) struct Hub {
    pid: u32,
    inotify: OwnedFd,
    /// An eventfd that interrupts the reader thread's `ppoll(2)`.
    bell: OwnedFd,
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    /// Watched inodes by watch descriptor.
    inodes: HashMap<i32, Inode>,
    /// The waiter holding the reader role.
    reader: Option<Arc<Slot>>,
}

#[derive(Default)]
struct Inode {
    /// Waiters in arrival order, with the mode each wants.
    queue: VecDeque<(Arc<Slot>, FlockMode)>,
    /// When the last waiter left.
    idle_since: Option<Instant>,
}

impl Inode {
    /// Marks the first waiter, and the shared-mode ones right behind a
    /// shared first, as notified; collects them to be woken.
    fn notify_head(&self, woken: &mut Vec<Arc<Slot>>) {
        let Some((first, mode)) = self.queue.front() else {
            return;
        };
        let mut notify = |slot: &Arc<Slot>| {
            slot.notified.store(true, Ordering::SeqCst);
            woken.push(Arc::clone(slot));
        };
        notify(first);
        if *mode == FlockMode::Shared {
            for (slot, mode) in self.queue.iter().skip(1) {
                if *mode != FlockMode::Shared {
                    break;
                }
                notify(slot);
            }
        }
    }
}

/// The hub, and when the last attempt to create one failed.
struct HubCell {
    hub: Option<Arc<Hub>>,
    failed: Option<(u32, Instant)>,
}

static HUB: Mutex<HubCell> = Mutex::new(HubCell {
    hub: None,
    failed: None,
});

/// Locks a process-wide mutex that a forked child may have inherited
/// locked: waits for it in the process that owns it (`owner`, claimed on
/// first use), only tries it in any other (a child: a parent thread may
/// have held it at the fork, and nobody would unlock it), taking ownership
/// when the try succeeds. `None`: a child found it locked.
pub(crate) fn lock_unless_forked<'m, T>(
    m: &'m Mutex<T>,
    owner: &AtomicU32,
    pid: u32,
) -> Option<MutexGuard<'m, T>> {
    // Claimed before the first lock, so that a child forked while this
    // thread holds the lock knows not to wait for it.
    let _ = owner.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst);
    if owner.load(Ordering::SeqCst) == pid {
        return Some(lock(m));
    }
    let guard = match m.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return None,
    };
    owner.store(pid, Ordering::SeqCst);
    Some(guard)
}

/// The process whose threads take [`HUB`] with a blocking lock; 0 before
/// first use. A forked child sees its parent's pid here: the mutex may have
/// been locked by a parent thread at the fork, and stays locked in the
/// child, so a child only tries it.
static HUB_OWNER: AtomicU32 = AtomicU32::new(0);

/// This process's hub, created on first use; `None` if the kernel refuses
/// an inotify instance or an eventfd (retried a second later), or in a
/// forked child whose parent held the hub's mutex at the fork (waits there
/// retry on the back-off).
fn hub() -> Option<Arc<Hub>> {
    let pid = sys::current_pid();
    let mut cell = lock_unless_forked(&HUB, &HUB_OWNER, pid)?;
    if let Some(hub) = &cell.hub {
        if hub.pid == pid {
            return Some(Arc::clone(hub));
        }
        // Forked: the parent's instance is shared with it; leave it be
        // (dropping it here would only close this process's copies).
        let parents = cell.hub.take();
        std::mem::forget(parents);
    }
    if let Some((p, at)) = cell.failed {
        if p == pid && at.elapsed() < HUB_RETRY {
            return None;
        }
    }
    match sys::inotify_new().and_then(|i| Ok((i, sys::eventfd_new()?))) {
        Ok((inotify, bell)) => {
            let hub = Arc::new(Hub {
                pid,
                inotify,
                bell,
                state: Mutex::new(HubState::default()),
            });
            cell.hub = Some(Arc::clone(&hub));
            cell.failed = None;
            Some(hub)
        }
        Err(_) => {
            cell.failed = Some((pid, Instant::now()));
            None
        }
    }
}

/// The hub's inotify descriptor, for an async runtime to poll; kept alive
/// by the hub it came from.
#[cfg(feature = "tokio")]
pub(crate) struct HubFd(Arc<Hub>);

#[cfg(feature = "tokio")]
impl HubFd {
    /// Whether both name the same hub's descriptor.
    pub(crate) fn same_hub(&self, other: &HubFd) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(feature = "tokio")]
impl AsRawFd for HubFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.inotify.as_raw_fd()
    }
}

#[cfg(feature = "tokio")]
impl fmt::Debug for HubFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HubFd").field(&self.as_raw_fd()).finish()
    }
}

/// A waiter registered with the hub (queued on its file's watch) and with
/// its cancel token; deregistered on drop, handing on the reader role and
/// any wake-up it did not use.
pub(crate) struct Registration {
    slot: Arc<Slot>,
    /// The watch it is queued on; `None`: back-off retries only.
    wd: Option<i32>,
    cancel: Option<(CancelToken, u64)>,
    acquired: bool,
    /// The process that registered.
    pid: u32,
}

impl Registration {
    /// Registers a waiter for the lock on `file` (opened by `path`, if
    /// known) in `mode`: the task woken by `task`, or the calling thread.
    ///
    /// The watch is placed on the open file's inode through `/proc/self/fd`
    /// (so a rename or unlink of the path does not matter), or on `path`
    /// when `/proc` is unavailable and the path still names the file.
    pub(crate) fn new(
        file: BorrowedFd<'_>,
        path: Option<&Path>,
        mode: FlockMode,
        task: Option<&Waker>,
        cancel: Option<&CancelToken>,
    ) -> Registration {
        let hub = hub();
        let slot = Arc::new(Slot {
            notified: AtomicBool::new(false),
            reader: AtomicBool::new(false),
            behind: AtomicBool::new(false),
            wake: match task {
                None => Wake::Thread(std::thread::current()),
                Some(w) => Wake::Task(Mutex::new(Some(w.clone()))),
            },
            hub: hub.clone(),
        });
        let wd = hub
            .as_ref()
            .and_then(|hub| hub.enqueue(&slot, file, path, mode));
        let cancel = cancel.and_then(|token| Some((token.clone(), token.register(&slot)?)));
        Registration {
            slot,
            wd,
            cancel,
            acquired: false,
            pid: sys::current_pid(),
        }
    }

    /// Whether closes of the file wake this waiter.
    pub(crate) fn is_watched(&self) -> bool {
        self.wd.is_some()
    }

    /// Whether another waiter of this process is ahead of this one on the
    /// same file.
    pub(crate) fn is_behind(&self) -> bool {
        self.slot.behind.load(Ordering::SeqCst)
    }

    /// Whether a close of the file was seen since the last call.
    pub(crate) fn take_notified(&self) -> bool {
        self.slot.notified.swap(false, Ordering::SeqCst)
    }

    /// Whether this waiter holds the reader role: it must read the hub's
    /// events (see [`dispatch`](Self::dispatch)) for every waiter.
    pub(crate) fn is_reader(&self) -> bool {
        self.slot.reader.load(Ordering::SeqCst)
    }

    /// Takes the reader role from a task that has left events unread,
    /// whose runtime may have stopped running it; returns whether this
    /// waiter is now the reader. A thread reader is never taken over: it
    /// reads whenever an event comes.
    pub(crate) fn take_over_idle_reader(&self) -> bool {
        match &self.slot.hub {
            Some(hub) if !self.is_reader() => hub.take_over_idle_reader(&self.slot),
            _ => self.is_reader(),
        }
    }

    /// The descriptor the reader waits on for readability.
    #[cfg(feature = "tokio")]
    pub(crate) fn hub_fd(&self) -> Option<HubFd> {
        self.slot.hub.clone().map(HubFd)
    }

    /// Replaces the waker a task is woken with.
    #[cfg(feature = "tokio")]
    pub(crate) fn set_waker(&self, waker: &Waker) {
        if let Wake::Task(slot) = &self.slot.wake {
            let mut slot = lock(slot);
            if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *slot = Some(waker.clone());
            }
        }
    }

    /// Reads every queued event and wakes the waiters of each closed file.
    ///
    /// # Errors
    /// The error of `read(2)` on the inotify descriptor.
    #[cfg(any(test, feature = "tokio"))]
    pub(crate) fn dispatch(&self) -> io::Result<()> {
        match &self.slot.hub {
            Some(hub) => hub.dispatch(&self.slot).map(drop),
            None => Ok(()),
        }
    }

    /// Marks the wait as ended by taking the lock: a wake-up it did not use
    /// is not handed on.
    pub(crate) fn acquired(&mut self) {
        self.acquired = true;
    }

    /// Sleeps the calling thread for at most `timeout`, until a wake-up.
    fn sleep(&self, timeout: Duration) {
        let hub = match &self.slot.hub {
            Some(hub) if self.take_over_idle_reader() => hub,
            _ => return std::thread::park_timeout(timeout),
        };
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match sys::poll_readable(hub.inotify.as_fd(), Some(hub.bell.as_fd()), Some(left)) {
                Ok([_, true]) => return sys::eventfd_clear(hub.bell.as_fd()),
                Ok([true, false]) => match hub.dispatch(&self.slot) {
                    Ok(true) => return,
                    // Events that concern no waiter (files created and
                    // closed in a watched directory): keep sleeping, and
                    // read again only after a pause, so that a busy
                    // directory costs a bounded number of wake-ups.
                    Ok(false) => std::thread::sleep(IRRELEVANT_PAUSE.min(left)),
                    // Unreadable instance: back-off retries remain.
                    Err(_) => return std::thread::sleep(left),
                },
                Ok([false, false]) => return,
                // ppoll(2) fails only for lack of memory: keep the schedule.
                Err(_) => return std::thread::sleep(left),
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.pid != sys::current_pid() {
            // A forked child dropping its parent's wait: the hub's and the
            // token's mutexes may have been locked at the fork, and the
            // hub's queues are the parent's. Touch nothing.
            return;
        }
        if let Some((token, id)) = &self.cancel {
            token.unregister(*id);
        }
        if let Some(hub) = &self.slot.hub {
            hub.dequeue(&self.slot, self.wd, !self.acquired);
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("wd", &self.wd)
            .field("reader", &self.is_reader())
            .finish_non_exhaustive()
    }
}

impl Hub {
    fn state(&self) -> MutexGuard<'_, HubState> {
        lock(&self.state)
    }

    /// Watches `file`, queues `slot` on the watch and gives it the reader
    /// role if nobody has it; `None` if the watch cannot be placed.
    fn enqueue(
        &self,
        slot: &Arc<Slot>,
        file: BorrowedFd<'_>,
        path: Option<&Path>,
        mode: FlockMode,
    ) -> Option<i32> {
        let mut st = self.state();
        // Under the lock: a concurrent removal of an idle watch must not
        // take the one just (re)placed.
        self.prune(&mut st);
        let wd = self.watch(file, path)?;
        let inode = st.inodes.entry(wd).or_default();
        inode.idle_since = None;
        inode.queue.push_back((Arc::clone(slot), mode));
        slot.behind.store(inode.queue.len() > 1, Ordering::SeqCst);
        if st.reader.is_none() {
            // Nobody waited: whatever is queued is stale.
            let _ = sys::inotify_read(self.inotify.as_fd(), |_| {});
            slot.reader.store(true, Ordering::SeqCst);
            st.reader = Some(Arc::clone(slot));
        }
        Some(wd)
    }

    fn watch(&self, file: BorrowedFd<'_>, path: Option<&Path>) -> Option<i32> {
        match sys::inotify_watch_fd_close(self.inotify.as_fd(), file) {
            Ok(wd) => Some(wd),
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
                sys::inotify_watch_close(self.inotify.as_fd(), path).ok()
            }
        }
    }

    /// Removes watches idle for longer than [`IDLE_KEEP`], and the oldest
    /// idle ones beyond [`IDLE_WATCHES`].
    fn prune(&self, st: &mut HubState) {
        let now = Instant::now();
        let idle_since = || st.inodes.values().filter_map(|inode| inode.idle_since);
        if idle_since().count() <= IDLE_WATCHES
            && idle_since().all(|t| now.duration_since(t) < IDLE_KEEP)
        {
            return;
        }
        let mut idle: Vec<(Instant, i32)> = st
            .inodes
            .iter()
            .filter_map(|(wd, inode)| inode.idle_since.map(|t| (t, *wd)))
            .collect();
        idle.sort_unstable();
        let excess = idle.len().saturating_sub(IDLE_WATCHES);
        for (i, (since, wd)) in idle.into_iter().enumerate() {
            if i < excess || now.duration_since(since) >= IDLE_KEEP {
                st.inodes.remove(&wd);
                // Fails only if the inode is already gone.
                let _ = sys::inotify_unwatch(self.inotify.as_fd(), wd);
            }
        }
    }

    /// Takes `slot` off its queue, hands on an unused wake-up (`pass_on`:
    /// the waiter leaves without the lock) and the reader role.
    fn dequeue(&self, slot: &Arc<Slot>, wd: Option<i32>, pass_on: bool) {
        let mut woken = Vec::new();
        let mut st = self.state();
        if let Some(inode) = wd.and_then(|wd| st.inodes.get_mut(&wd)) {
            if let Some(i) = inode.queue.iter().position(|(s, _)| Arc::ptr_eq(s, slot)) {
                inode.queue.remove(i);
                // A waiter that leaves without the lock may have been the
                // one a release woke: the next in line tries instead.
                if pass_on && i == 0 {
                    inode.notify_head(&mut woken);
                }
                // The next in line now retries for the others: woken, so
                // that it leaves its long back-off.
                if let Some((next, _)) = inode.queue.front().filter(|_| i == 0) {
                    if next.behind.swap(false, Ordering::SeqCst)
                        && !woken.iter().any(|w| Arc::ptr_eq(w, next))
                    {
                        woken.push(Arc::clone(next));
                    }
                }
            }
            if inode.queue.is_empty() {
                inode.idle_since = Some(Instant::now());
            }
        }
        if slot.reader.swap(false, Ordering::SeqCst) {
            st.reader = None;
            // The next in line on the same file is the likeliest to be woken
            // by the next event: make it the reader, saving a wake-up.
            let next = wd
                .and_then(|wd| st.inodes.get(&wd))
                .and_then(|inode| inode.queue.front())
                .or_else(|| st.inodes.values().find_map(|inode| inode.queue.front()))
                .map(|(s, _)| Arc::clone(s));
            if let Some(next) = next {
                next.reader.store(true, Ordering::SeqCst);
                st.reader = Some(Arc::clone(&next));
                woken.push(next);
            }
        }
        drop(st);
        for s in woken {
            s.wake();
        }
    }

    /// Gives `slot` the reader role if a task holds it and events wait
    /// unread: the events of every waiter in the process would otherwise
    /// wait for that task's runtime. Taking it from a task that was about
    /// to read costs nothing: it stays registered and reads on readiness,
    /// and the role is only handed on when its holder leaves.
    fn take_over_idle_reader(&self, slot: &Arc<Slot>) -> bool {
        let mut st = self.state();
        let held_by_task = st
            .reader
            .as_ref()
            .is_some_and(|reader| matches!(reader.wake, Wake::Task(_)));
        if !held_by_task {
            return false;
        }
        let unread = matches!(
            sys::poll_readable(self.inotify.as_fd(), None, Some(Duration::ZERO)),
            Ok([true, _])
        );
        if !unread {
            return false;
        }
        if let Some(task) = st.reader.take() {
            task.reader.store(false, Ordering::SeqCst);
        }
        slot.reader.store(true, Ordering::SeqCst);
        st.reader = Some(Arc::clone(slot));
        true
    }

    /// Reads the queued events and wakes the waiters they concern; `me`,
    /// the reader, is only marked.
    fn dispatch(&self, me: &Arc<Slot>) -> io::Result<bool> {
        let mut woken = Vec::new();
        let st = self.state();
        let mut gone = Vec::new();
        let read = sys::inotify_read(self.inotify.as_fd(), |event| match event {
            sys::InotifyEvent::Closed(wd) => {
                if let Some(inode) = st.inodes.get(&wd) {
                    inode.notify_head(&mut woken);
                }
            }
            sys::InotifyEvent::Gone(wd) => gone.push(wd),
            sys::InotifyEvent::Overflow => {
                for inode in st.inodes.values() {
                    inode.notify_head(&mut woken);
                }
            }
        });
        let mut st = st;
        for wd in gone {
            // The inode was evicted or its filesystem unmounted: its
            // waiters fall back to retries.
            if let Some(inode) = st.inodes.remove(&wd) {
                for (slot, _) in inode.queue {
                    slot.notified.store(true, Ordering::SeqCst);
                    woken.push(slot);
                }
            }
        }
        drop(st);
        let any = !woken.is_empty();
        for s in woken {
            if !Arc::ptr_eq(&s, me) {
                s.wake();
            }
        }
        read.map(|()| any)
    }
}

/// When to retry: the back-off, the quick retries after a close event, and
/// the deadline.
#[derive(Debug)]
pub(crate) struct Schedule {
    deadline: Option<Instant>,
    backoff: Duration,
    /// When the last close event was seen: retries follow at once for
    /// [`AFTER_CLOSE_SPIN`], the first [`AFTER_CLOSE_HOT`] of it without
    /// yielding.
    closed_at: Option<Instant>,
    /// Index into [`AFTER_CLOSE`] while retrying after a close event.
    after_close: Option<usize>,
    /// State of the jitter generator.
    rng: u64,
    /// Closes of the file wake the waiter.
    watched: bool,
    /// Behind another waiter of this process on the same file, which
    /// retries for both: back off to [`BACKOFF_BEHIND`].
    behind: bool,
}

impl Schedule {
    pub(crate) fn new(deadline: Option<Instant>) -> Schedule {
        use std::hash::{BuildHasher, Hasher};
        // Randomly keyed per process and per call.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Schedule {
            deadline,
            backoff: BACKOFF_FIRST,
            closed_at: None,
            after_close: None,
            rng: seed | 1,
            watched: false,
            behind: false,
        }
    }

    /// The waiter is woken by closes: retries serve only a release by
    /// `LOCK_UN` without a close, so they start at the longest interval.
    /// A sleep whose timer ends within milliseconds is woken later by an
    /// event than one with a distant timer (the idle states a near timer
    /// selects), so near timers are kept for the retries after a close.
    pub(crate) fn on_watch(&mut self) {
        self.backoff = BACKOFF_CAP;
        self.watched = true;
    }

    /// A close was seen: retry at once for a moment, then a few times more.
    pub(crate) fn on_close(&mut self, now: Instant) {
        self.closed_at = Some(now);
        self.after_close = Some(0);
    }

    /// Whether a retry now should not give up the CPU (see
    /// [`AFTER_CLOSE_HOT`]).
    pub(crate) fn is_hot(&self, now: Instant) -> bool {
        self.closed_at.is_some_and(|t| now < t + AFTER_CLOSE_HOT)
    }

    /// `step` times a factor in [1, 1.2), so that waiters that started
    /// together do not retry in lockstep. Never shorter than `step`: a
    /// waiter retrying every [`BACKOFF_CAP`] wakes fewer than 10 times a
    /// second, with room for the wake-ups that are not retries.
    fn jitter(&mut self, step: Duration) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let fifth = u64::try_from((step / 5).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        step + Duration::from_nanos(self.rng % fifth)
    }

    /// How long to sleep before the next attempt unless woken first;
    /// advances the schedule. Zero: retry after yielding.
    pub(crate) fn next(&mut self, now: Instant) -> Duration {
        if self.closed_at.is_some_and(|t| now < t + AFTER_CLOSE_SPIN) {
            return Duration::ZERO;
        }
        let step = match self.after_close {
            Some(i) if i < AFTER_CLOSE.len() => {
                self.after_close = Some(i + 1);
                AFTER_CLOSE[i]
            }
            _ if self.watched && self.behind => {
                self.after_close = None;
                self.jitter(BACKOFF_BEHIND)
            }
            _ => {
                self.after_close = None;
                let step = self.backoff.min(BACKOFF_CAP);
                self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
                self.jitter(step)
            }
        };
        match self.deadline {
            Some(deadline) => step.min(deadline.saturating_duration_since(now)),
            None => step,
        }
    }
}

/// How long before a deadline a timed wait reads the holders its timeout
/// error names: longer than a cold read of `/proc/locks` (6–16 ms here)
/// plus the default diagnostics budget. A wait shorter than this reads
/// none, so that it ends at its deadline.
pub(crate) const DIAGNOSTICS_LEAD: Duration = Duration::from_millis(20);

/// What a waiting driver does next, as decided by [`Core::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// One `LOCK_NB` attempt now; report it with [`Core::attempted`].
    Attempt,
    /// Wait in the kernel (a blocking attempt); report it with
    /// [`Core::attempted`].
    Block,
    /// Call the notice with the holders now.
    Notice,
    /// Read the holders for the timeout error now, or start reading them.
    ReadHolders,
    /// Register with the hub; report it with [`Core::registered`].
    Register,
    /// Check that the path still names the locked file; report it with
    /// [`Core::verified`].
    Verify,
    /// Give up the CPU and come back at once; `hot`: without yielding.
    Yield {
        /// Retry without giving up the CPU (see [`AFTER_CLOSE_HOT`]).
        hot: bool,
    },
    /// Sleep until this instant, or until woken (a close, a cancel).
    Sleep(Instant),
    /// The lock is taken and stands.
    Done,
    /// The wait ends without the lock.
    Stop(Stop),
}

/// Where an acquisition stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// An attempt is due.
    Due,
    /// An attempt was handed out and not yet reported.
    Attempting,
    /// The last attempt found the lock held.
    Contended,
    /// The lock was taken; the path check (if any) is due.
    Taken,
    /// The path check was handed out and not yet reported.
    Verifying,
    /// Finished.
    Done,
}

/// The waiting rules, without I/O: from the clock and what the driver
/// reports, which step comes next. Blocking threads and async tasks drive
/// it alike.
#[derive(Debug)]
pub(crate) struct Core {
    phase: Phase,
    /// `None`: no deadline.
    until: Option<Instant>,
    /// One attempt only ([`Deadline::None`]).
    once: bool,
    /// A token is attached: the wait must stay wakeable.
    cancellable: bool,
    /// The driver can wait in `flock(2)` (a thread, not a task).
    may_block: bool,
    /// The path is checked after each acquisition.
    verify: bool,
    /// The notice is still to be called.
    notice: bool,
    /// Registered with the hub since the last (re)open.
    registered: bool,
    /// Reopenings since an attempt last found the lock held: the path
    /// keeps being replaced while the new files stand unlocked.
    reopens: u32,
    /// The file was opened again and no attempt was made on it yet.
    reopened: bool,
    /// When the holders for a timeout error are to be read; `None`: read,
    /// or not to be read (no deadline, or too short a wait).
    holders_at: Option<Instant>,
    schedule: Schedule,
}

/// What a [`Core`] is told at the start of an acquisition.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub(crate) deadline: Deadline,
    pub(crate) cancellable: bool,
    pub(crate) may_block: bool,
    pub(crate) verify: bool,
    pub(crate) notice: bool,
}

impl Core {
    /// A core for an acquisition starting at `now`.
    pub(crate) fn new(plan: Plan, now: Instant) -> Core {
        let until = plan.deadline.resolve(now);
        let schedule = Schedule::new(until);
        // Read the holders early enough to have them by the deadline; a
        // shorter wait reads none rather than end late.
        let holders_at = until
            .filter(|_| plan.deadline != Deadline::None)
            .and_then(|u| u.checked_sub(DIAGNOSTICS_LEAD))
            .filter(|at| *at >= now);
        Core {
            phase: Phase::Due,
            until,
            once: plan.deadline == Deadline::None,
            cancellable: plan.cancellable,
            may_block: plan.may_block,
            verify: plan.verify,
            notice: plan.notice,
            registered: false,
            reopens: 0,
            reopened: false,
            holders_at,
            schedule,
        }
    }

    /// The next step at `now`; `cancelled`: the token was cancelled.
    pub(crate) fn next(&mut self, now: Instant, cancelled: bool) -> Step {
        match self.phase {
            Phase::Done => return Step::Done,
            Phase::Taken if self.verify => {
                self.phase = Phase::Verifying;
                return Step::Verify;
            }
            Phase::Taken => {
                self.phase = Phase::Done;
                return Step::Done;
            }
            Phase::Verifying => return Step::Verify,
            Phase::Due | Phase::Attempting | Phase::Contended => {}
        }
        if cancelled {
            return Step::Stop(Stop::Cancelled);
        }
        if std::mem::take(&mut self.reopened) && !self.once {
            // The file was replaced after it was locked: the deadline holds
            // for the new file too, and a path replaced again and again is
            // retried at a pace, not in a loop.
            if self.until.is_some_and(|u| now >= u) {
                return Step::Stop(Stop::TimedOut);
            }
            if self.reopens > REOPENS_AT_ONCE {
                let at = now + REOPEN_PAUSE;
                return Step::Sleep(self.until.map_or(at, |u| at.min(u)));
            }
        }
        if self.phase != Phase::Contended {
            self.phase = Phase::Attempting;
            return Step::Attempt;
        }
        if self.once {
            return Step::Stop(Stop::WouldBlock);
        }
        if self.until.is_some_and(|u| now >= u) {
            // A waiter the scheduler woke after the deadline instead of when
            // the holders were due (20 ms before it) still reads them: the
            // deadline is already missed by that delay, and the read adds
            // what one pass over /proc/locks takes.
            if self.holders_at.take().is_some() {
                return Step::ReadHolders;
            }
            return Step::Stop(Stop::TimedOut);
        }
        if std::mem::take(&mut self.notice) {
            return Step::Notice;
        }
        if self.may_block && self.until.is_none() && !self.cancellable {
            self.phase = Phase::Attempting;
            return Step::Block;
        }
        if !self.registered {
            self.registered = true;
            // A release before the watch was placed raised no event for
            // this waiter: try again first.
            self.phase = Phase::Due;
            return Step::Register;
        }
        if self.holders_at.is_some_and(|at| now >= at) {
            self.holders_at = None;
            return Step::ReadHolders;
        }
        let mut pause = self.schedule.next(now);
        if let Some(at) = self.holders_at {
            pause = pause.min(at.saturating_duration_since(now));
        }
        self.phase = Phase::Due;
        if pause.is_zero() {
            Step::Yield {
                hot: self.schedule.is_hot(now),
            }
        } else {
            Step::Sleep(now + pause)
        }
    }

    /// The outcome of an [`Attempt`](Step::Attempt) or [`Block`](Step::Block).
    pub(crate) fn attempted(&mut self, taken: bool) {
        self.phase = if taken {
            Phase::Taken
        } else {
            self.reopens = 0;
            Phase::Contended
        };
    }

    /// The hub registration was made; `watched`: closes wake the waiter.
    pub(crate) fn registered(&mut self, watched: bool) {
        if watched {
            self.schedule.on_watch();
        }
    }

    /// Whether another waiter of this process is ahead in line on the
    /// same file (it retries for both).
    pub(crate) fn set_behind(&mut self, behind: bool) {
        self.schedule.behind = behind;
    }

    /// A close of the file was seen at `now`: an attempt is due at once.
    pub(crate) fn closed(&mut self, now: Instant) {
        self.schedule.on_close(now);
        if self.phase == Phase::Contended {
            self.phase = Phase::Due;
        }
    }

    /// The outcome of a [`Verify`](Step::Verify): `true`, the lock stands;
    /// `false`, the file was replaced and opened again, to be locked and
    /// registered anew.
    pub(crate) fn verified(&mut self, stands: bool) {
        if stands {
            self.phase = Phase::Done;
        } else {
            self.phase = Phase::Due;
            self.registered = false;
            self.reopens = self.reopens.saturating_add(1);
            self.reopened = true;
        }
    }
}

/// The lock file as the blocking driver sees it.
pub(crate) trait Lockable {
    /// The error type of its operations.
    type Error;
    /// The descriptor closes are watched on.
    fn fd(&self) -> BorrowedFd<'_>;
    /// The path it was opened from, if known.
    fn path(&self) -> Option<&Path>;
    /// One non-blocking attempt: `Ok(false)` on contention.
    fn attempt(&self, mode: FlockMode) -> Result<bool, Self::Error>;
    /// One attempt that waits in the kernel.
    fn block(&self, mode: FlockMode) -> Result<(), Self::Error>;
    /// The current holders, found within `budget`.
    fn holders(&self, budget: Duration) -> Vec<Holder>;
    /// Whether the path still names the locked file (`Ok(false)`: it was
    /// opened again, unlocked).
    fn verify(&mut self) -> Result<bool, Self::Error>;
}

/// What a blocking wait gathers besides the lock.
pub(crate) struct Extras<'n> {
    pub(crate) cancel: Option<CancelToken>,
    pub(crate) notice: Option<Notice<'n>>,
    pub(crate) diagnostics: Duration,
    /// The holders read for the timeout error, if they were.
    pub(crate) holders: Option<Vec<Holder>>,
}

/// How a wait ended without the lock.
#[derive(Debug)]
pub(crate) enum Ended<E> {
    /// The deadline passed, the token was cancelled, or the one attempt
    /// found the lock held.
    Stopped(Stop),
    /// An operation failed.
    Failed(E),
}

/// Drives `core` in the calling thread until the lock on `file` is taken
/// in `mode` and stands, or the wait ends.
pub(crate) fn block_on<L: Lockable>(
    file: &mut L,
    mode: FlockMode,
    core: &mut Core,
    extras: &mut Extras<'_>,
) -> Result<(), Ended<L::Error>> {
    let mut reg: Option<Registration> = None;
    loop {
        let now = Instant::now();
        if let Some(r) = &reg {
            if r.take_notified() {
                core.closed(now);
            }
            core.set_behind(r.is_behind());
        }
        let cancelled = extras
            .cancel
            .as_ref()
            .is_some_and(CancelToken::is_cancelled);
        match core.next(now, cancelled) {
            Step::Attempt => core.attempted(file.attempt(mode).map_err(Ended::Failed)?),
            Step::Block => {
                file.block(mode).map_err(Ended::Failed)?;
                core.attempted(true);
            }
            Step::Notice => {
                if let Some(notice) = extras.notice.take() {
                    notice(&file.holders(extras.diagnostics));
                }
            }
            Step::ReadHolders => extras.holders = Some(file.holders(extras.diagnostics)),
            Step::Register => {
                // The old registration (of a file since replaced) goes first.
                drop(reg.take());
                let r =
                    Registration::new(file.fd(), file.path(), mode, None, extras.cancel.as_ref());
                core.registered(r.is_watched());
                reg = Some(r);
            }
            Step::Verify => {
                if let Some(r) = &mut reg {
                    r.acquired();
                }
                let stands = file.verify().map_err(Ended::Failed)?;
                core.verified(stands);
            }
            Step::Yield { hot: true } => {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            }
            Step::Yield { hot: false } => std::thread::yield_now(),
            Step::Sleep(until) => {
                let timeout = until.saturating_duration_since(now);
                match &reg {
                    Some(r) => r.sleep(timeout),
                    None => std::thread::park_timeout(timeout),
                }
            }
            Step::Done => {
                if let Some(r) = &mut reg {
                    r.acquired();
                }
                return Ok(());
            }
            Step::Stop(stop) => return Err(Ended::Stopped(stop)),
        }
    }
}

/// The number of waiters queued and watches held by this process's hub,
/// and whether a reader is appointed.
#[cfg(test)]
fn hub_census() -> (usize, usize, bool) {
    let Some(hub) = hub() else {
        return (0, 0, false);
    };
    let st = hub.state();
    let waiters = st.inodes.values().map(|i| i.queue.len()).sum();
    (waiters, st.inodes.len(), st.reader.is_some())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::LockFile;
    use std::os::fd::AsFd;

    fn lock_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.lock");
        (dir, path)
    }

    /// Tests that count the hub's waiters must not overlap.
    pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

    /// Waits up to 20 s for the child `pid` to exit; its exit code, or
    /// `None` (after killing it) if it hung.
    pub(crate) fn reap(pid: libc::pid_t) -> Option<i32> {
        let start = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: waits for a child this test forked.
            #[allow(unsafe_code)]
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                return Some(libc::WEXITSTATUS(status));
            }
            if start.elapsed() > Duration::from_secs(20) {
                // SAFETY: kills and reaps the child this test forked.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_respects_the_deadline() {
        let now = Instant::now();
        let mut s = Schedule::new(None);
        let steps: Vec<Duration> = (0..12).map(|_| s.next(now)).collect();
        let within = |d: Duration, base: Duration| d >= base && d < base * 6 / 5;
        assert!(within(steps[0], BACKOFF_FIRST), "{steps:?}");
        assert!(within(steps[1], BACKOFF_FIRST * 2), "{steps:?}");
        assert!(
            steps[8..].iter().all(|d| within(*d, BACKOFF_CAP)),
            "{steps:?}"
        );

        // Two schedules started together do not retry in lockstep.
        let mut a = Schedule::new(None);
        let mut b = Schedule::new(None);
        let a: Vec<Duration> = (0..12).map(|_| a.next(now)).collect();
        let b: Vec<Duration> = (0..12).map(|_| b.next(now)).collect();
        assert_ne!(a, b);

        let deadline = now + Duration::from_millis(3);
        let mut s = Schedule::new(Some(deadline));
        for _ in 0..5 {
            s.next(now);
        }
        assert_eq!(s.next(now), Duration::from_millis(3));
        assert_eq!(s.next(deadline), Duration::ZERO);
    }

    #[test]
    fn a_close_schedules_quick_retries() {
        let now = Instant::now();
        let mut s = Schedule::new(None);
        s.on_close(now);
        assert!(s.is_hot(now) && !s.is_hot(now + AFTER_CLOSE_HOT));
        assert_eq!(s.next(now), Duration::ZERO, "retry at once");
        let later = now + AFTER_CLOSE_SPIN * 2;
        assert_eq!(s.next(later), AFTER_CLOSE[0]);
        assert_eq!(s.next(later), AFTER_CLOSE[1]);
        assert_eq!(s.next(later), AFTER_CLOSE[2]);
        assert!(s.next(later) < BACKOFF_FIRST * 6 / 5);
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(30), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_close_of_the_file_notifies_the_first_waiter_only() {
        let _serial = lock(&SERIAL);
        let (_dir, path) = lock_file();
        let a = LockFile::open(&path).unwrap();
        let b = LockFile::open(&path).unwrap();
        let ra = Registration::new(a.as_fd(), None, FlockMode::Exclusive, None, None);
        let rb = Registration::new(b.as_fd(), None, FlockMode::Exclusive, None, None);
        assert!(ra.is_reader() && !rb.is_reader());
        assert_eq!(ra.wd, rb.wd, "one watch per inode");
        drop(LockFile::open(&path).unwrap());
        wait_for("the close event", || {
            ra.dispatch().unwrap();
            ra.take_notified()
        });
        assert!(!rb.take_notified());
        // The first leaves without the lock: the second is notified and
        // becomes the reader.
        drop(ra);
        assert!(rb.take_notified());
        assert!(rb.is_reader());
    }

    #[test]
    fn a_thread_takes_the_reader_role_from_a_task_that_leaves_events_unread() {
        struct Nothing;
        impl std::task::Wake for Nothing {
            fn wake(self: Arc<Self>) {}
        }
        let _serial = lock(&SERIAL);
        let (_dir, path) = lock_file();
        let a = LockFile::open(&path).unwrap();
        let b = LockFile::open(&path).unwrap();
        let waker = Waker::from(Arc::new(Nothing));
        let task = Registration::new(a.as_fd(), None, FlockMode::Exclusive, Some(&waker), None);
        let thread = Registration::new(b.as_fd(), None, FlockMode::Exclusive, None, None);
        assert!(task.is_reader() && !thread.is_reader());
        // Nothing unread: the task keeps the role.
        assert!(!thread.take_over_idle_reader());
        assert!(task.is_reader());
        drop(LockFile::open(&path).unwrap());
        wait_for("the close event to be readable", || {
            thread.take_over_idle_reader()
        });
        assert!(thread.is_reader() && !task.is_reader());
        // The new reader reads the event for the task, first in line.
        thread.dispatch().unwrap();
        assert!(task.take_notified());
        // A thread reader is never taken over.
        drop(LockFile::open(&path).unwrap());
        std::thread::sleep(Duration::from_millis(10));
        assert!(!task.take_over_idle_reader());
        assert!(thread.is_reader());
    }

    #[test]
    fn shared_waiters_behind_a_shared_first_are_notified_together() {
        let _serial = lock(&SERIAL);
        let (_dir, path) = lock_file();
        let files: Vec<LockFile> = (0..4).map(|_| LockFile::open(&path).unwrap()).collect();
        let modes = [
            FlockMode::Shared,
            FlockMode::Shared,
            FlockMode::Exclusive,
            FlockMode::Shared,
        ];
        let regs: Vec<Registration> = files
            .iter()
            .zip(modes)
            .map(|(f, m)| Registration::new(f.as_fd(), None, m, None, None))
            .collect();
        drop(LockFile::open(&path).unwrap());
        wait_for("the close event", || {
            regs[0].dispatch().unwrap();
            regs[0].slot.notified.load(Ordering::SeqCst)
        });
        let seen: Vec<bool> = regs.iter().map(Registration::take_notified).collect();
        assert_eq!(seen, [true, true, false, false]);
    }

    #[test]
    fn a_close_of_another_file_or_of_a_child_notifies_nobody() {
        let _serial = lock(&SERIAL);
        let dir = tempfile::tempdir().unwrap();
        let locked = crate::LockOptions::new()
            .allow_directory(true)
            .open(dir.path())
            .unwrap();
        let r = Registration::new(locked.as_fd(), None, FlockMode::Exclusive, None, None);
        drop(LockFile::open(dir.path().join("child.lock")).unwrap());
        let other = tempfile::tempdir().unwrap();
        drop(LockFile::open(other.path().join("other.lock")).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        r.dispatch().unwrap();
        assert!(!r.take_notified());
        // The directory's own close does.
        drop(
            crate::LockOptions::new()
                .allow_directory(true)
                .open(dir.path())
                .unwrap(),
        );
        wait_for("the directory's close", || {
            r.dispatch().unwrap();
            r.take_notified()
        });
    }

    #[test]
    fn waiters_share_one_instance_and_leave_nothing_queued() {
        let _serial = lock(&SERIAL);
        let (_dir, path) = lock_file();
        let files: Vec<LockFile> = (0..50).map(|_| LockFile::open(&path).unwrap()).collect();
        let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        let regs: Vec<Registration> = files
            .iter()
            .map(|f| Registration::new(f.as_fd(), None, FlockMode::Exclusive, None, None))
            .collect();
        let during = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert!(during <= before + 2, "{before} → {during} descriptors");
        assert_eq!(hub_census().0, 50);
        drop(regs);
        let (waiters, _, reader) = hub_census();
        assert_eq!((waiters, reader), (0, false));
    }

    #[test]
    fn cancel_wakes_a_parked_waiter_and_unregisters_on_drop() {
        let _serial = lock(&SERIAL);
        let (_dir, path) = lock_file();
        let held = LockFile::open(&path)
            .unwrap()
            .try_lock::<crate::Exclusive>()
            .unwrap();
        let token = CancelToken::new();
        let start = Instant::now();
        let outcome = std::thread::scope(|s| {
            let file = LockFile::open(&path).unwrap();
            let t = token.clone();
            let waiter = s.spawn(move || {
                file.lock_with::<crate::Exclusive>(Wait::forever().cancel(t))
                    .map(drop)
                    .map_err(|e| e.error.is_cancelled())
            });
            wait_for("registration", || token.registered() == 1);
            token.cancel();
            waiter.join().unwrap()
        });
        assert_eq!(outcome, Err(true));
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(token.registered(), 0);
        drop(held);
    }

    // ---- the waiting core, on a fake clock -----------------------------

    fn plan(deadline: Deadline) -> Plan {
        Plan {
            deadline,
            cancellable: false,
            may_block: true,
            verify: false,
            notice: false,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives `core` through its first contended attempt and registration.
    fn contended_and_registered(core: &mut Core, now: Instant, watched: bool) {
        assert_eq!(core.next(now, false), Step::Attempt);
        core.attempted(false);
        assert_eq!(core.next(now, false), Step::Register);
        core.registered(watched);
        assert_eq!(
            core.next(now, false),
            Step::Attempt,
            "retry after the watch"
        );
        core.attempted(false);
    }

    #[test]
    fn core_retries_at_once_after_a_close_then_quickly_then_backs_off() {
        let t0 = Instant::now();
        let mut core = Core::new(plan(Deadline::After(Duration::from_secs(60))), t0);
        contended_and_registered(&mut core, t0, true);
        // Watched: the first sleep is a long one (LOCK_UN without close).
        let Step::Sleep(until) = core.next(t0, false) else {
            panic!("sleep expected")
        };
        let first = until - t0;
        assert!(
            first >= BACKOFF_CAP && first < BACKOFF_CAP * 6 / 5,
            "{first:?}"
        );
        // A close 30 ms in: attempt at once; while the holder finishes
        // closing, retries follow without sleeping, hot at first.
        let t1 = t0 + ms(30);
        core.closed(t1);
        assert_eq!(core.next(t1, false), Step::Attempt);
        core.attempted(false);
        assert_eq!(core.next(t1, false), Step::Yield { hot: true });
        assert_eq!(core.next(t1, false), Step::Attempt);
        core.attempted(false);
        let t2 = t1 + AFTER_CLOSE_HOT;
        assert_eq!(core.next(t2, false), Step::Yield { hot: false });
        // After the spin: the quick retries, then the back-off again.
        let t3 = t1 + AFTER_CLOSE_SPIN;
        let mut sleeps = Vec::new();
        for _ in 0..4 {
            assert_eq!(core.next(t3, false), Step::Attempt);
            core.attempted(false);
            match core.next(t3, false) {
                Step::Sleep(at) => sleeps.push(at - t3),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sleeps[..3], AFTER_CLOSE);
        assert!(sleeps[3] >= BACKOFF_CAP, "{sleeps:?}");
        assert_eq!(core.next(t3, false), Step::Attempt);
        core.attempted(true);
        assert_eq!(core.next(t3, false), Step::Done);
    }

    #[test]
    fn core_backs_off_with_jitter_without_a_watch() {
        let t0 = Instant::now();
        let sleeps = |_| {
            // A token keeps the wait out of flock(2).
            let mut core_plan = plan(Deadline::Forever);
            core_plan.cancellable = true;
            let mut core = Core::new(core_plan, t0);
            contended_and_registered(&mut core, t0, false);
            let mut now = t0;
            let mut v = Vec::new();
            for _ in 0..10 {
                let Step::Sleep(at) = core.next(now, false) else {
                    panic!("sleep expected")
                };
                v.push(at - now);
                now = at;
                assert_eq!(core.next(now, false), Step::Attempt);
                core.attempted(false);
            }
            v
        };
        let a: Vec<Duration> = sleeps(0);
        let b: Vec<Duration> = sleeps(1);
        let within = |d: Duration, base: Duration| d >= base && d < base * 6 / 5;
        assert!(within(a[0], BACKOFF_FIRST), "{a:?}");
        assert!(within(a[1], BACKOFF_FIRST * 2), "{a:?}");
        assert!(a[7..].iter().all(|d| within(*d, BACKOFF_CAP)), "{a:?}");
        assert_ne!(a, b, "two waits do not retry in lockstep");
    }

    #[test]
    fn core_stops_at_the_deadline_and_reads_the_holders_before_it() {
        let t0 = Instant::now();
        // 90 ms: the holders are due at 70 ms, before the earliest jittered
        // first retry of a watched wait (BACKOFF_CAP, 100 ms).
        let mut core = Core::new(plan(Deadline::After(ms(90))), t0);
        contended_and_registered(&mut core, t0, true);
        // The sleep ends when the holders are due, 20 ms before the deadline.
        let Step::Sleep(at) = core.next(t0, false) else {
            panic!("sleep expected")
        };
        assert_eq!(at, t0 + ms(90) - DIAGNOSTICS_LEAD);
        assert_eq!(core.next(at, false), Step::Attempt);
        core.attempted(false);
        assert_eq!(core.next(at, false), Step::ReadHolders);
        // Then to the deadline, and no later.
        let Step::Sleep(end) = core.next(at, false) else {
            panic!("sleep expected")
        };
        assert_eq!(end, t0 + ms(90));
        assert_eq!(core.next(end, false), Step::Attempt);
        core.attempted(false);
        assert_eq!(core.next(end, false), Step::Stop(Stop::TimedOut));
    }

    #[test]
    fn core_woken_after_the_deadline_reads_the_holders_before_it_stops() {
        let t0 = Instant::now();
        let mut core = Core::new(plan(Deadline::After(ms(90))), t0);
        contended_and_registered(&mut core, t0, true);
        let Step::Sleep(at) = core.next(t0, false) else {
            panic!("sleep expected")
        };
        assert_eq!(at, t0 + ms(90) - DIAGNOSTICS_LEAD);
        // The scheduler ran the waiter 30 ms late: past the deadline.
        let late = at + ms(30);
        assert_eq!(core.next(late, false), Step::Attempt);
        core.attempted(false);
        assert_eq!(core.next(late, false), Step::ReadHolders);
        assert_eq!(core.next(late, false), Step::Stop(Stop::TimedOut));
    }

    #[test]
    fn core_reads_no_holders_in_a_wait_too_short_to_read_them() {
        let t0 = Instant::now();
        let mut core = Core::new(plan(Deadline::After(ms(5))), t0);
        contended_and_registered(&mut core, t0, true);
        let mut now = t0;
        loop {
            match core.next(now, false) {
                Step::Sleep(at) => now = at,
                Step::Yield { .. } => {}
                Step::Attempt => core.attempted(false),
                Step::Stop(stop) => {
                    assert_eq!(stop, Stop::TimedOut);
                    break;
                }
                other => panic!("{other:?}"),
            }
            assert!(now <= t0 + ms(5));
        }
        assert_eq!(now, t0 + ms(5));
    }

    #[test]
    fn core_calls_the_notice_once_before_waiting_and_blocks_without_limits() {
        let t0 = Instant::now();
        let mut p = plan(Deadline::Forever);
        p.notice = true;
        let mut core = Core::new(p, t0);
        assert_eq!(core.next(t0, false), Step::Attempt);
        core.attempted(false);
        assert_eq!(core.next(t0, false), Step::Notice);
        // No deadline, no token, a thread: wait in flock(2).
        assert_eq!(core.next(t0, false), Step::Block);
        core.attempted(true);
        assert_eq!(core.next(t0, false), Step::Done);
        // A task never blocks.
        p.may_block = false;
        let mut core = Core::new(p, t0);
        core.next(t0, false);
        core.attempted(false);
        assert_eq!(core.next(t0, false), Step::Notice);
        assert_eq!(core.next(t0, false), Step::Register);
    }

    #[test]
    fn core_stops_when_cancelled_and_tries_once_without_a_deadline() {
        let t0 = Instant::now();
        let mut core = Core::new(plan(Deadline::Forever), t0);
        assert_eq!(core.next(t0, true), Step::Stop(Stop::Cancelled));
        let mut core = Core::new(plan(Deadline::After(ms(50))), t0);
        contended_and_registered(&mut core, t0, true);
        assert!(matches!(core.next(t0, false), Step::Sleep(_)));
        assert_eq!(core.next(t0 + ms(1), true), Step::Stop(Stop::Cancelled));
        let mut core = Core::new(plan(Deadline::None), t0);
        assert_eq!(core.next(t0, false), Step::Attempt);
        core.attempted(false);
        assert_eq!(core.next(t0, false), Step::Stop(Stop::WouldBlock));
    }

    #[test]
    fn core_checks_the_path_and_registers_again_after_a_reopen() {
        let t0 = Instant::now();
        let mut p = plan(Deadline::After(ms(500)));
        p.verify = true;
        let mut core = Core::new(p, t0);
        contended_and_registered(&mut core, t0, true);
        core.closed(t0);
        assert_eq!(core.next(t0, false), Step::Attempt);
        core.attempted(true);
        assert_eq!(core.next(t0, false), Step::Verify);
        // Replaced: lock the new file, and watch it.
        core.verified(false);
        assert_eq!(core.next(t0, false), Step::Attempt);
        core.attempted(false);
        assert_eq!(core.next(t0, false), Step::Register);
        core.registered(true);
        assert_eq!(core.next(t0, false), Step::Attempt);
        core.attempted(true);
        assert_eq!(core.next(t0, false), Step::Verify);
        core.verified(true);
        assert_eq!(core.next(t0, false), Step::Done);
    }

    #[test]
    fn core_keeps_the_deadline_and_paces_a_path_replaced_again_and_again() {
        let t0 = Instant::now();
        let mut p = plan(Deadline::After(ms(200)));
        p.verify = true;
        let mut core = Core::new(p, t0);
        // Each new file is found unlocked and replaced before the check.
        for _ in 0..REOPENS_AT_ONCE {
            assert_eq!(core.next(t0, false), Step::Attempt);
            core.attempted(true);
            assert_eq!(core.next(t0, false), Step::Verify);
            core.verified(false);
        }
        assert_eq!(core.next(t0, false), Step::Attempt);
        core.attempted(true);
        assert_eq!(core.next(t0, false), Step::Verify);
        core.verified(false);
        assert_eq!(core.next(t0, false), Step::Sleep(t0 + REOPEN_PAUSE));
        assert_eq!(core.next(t0 + REOPEN_PAUSE, false), Step::Attempt);
        core.attempted(true);
        assert_eq!(core.next(t0 + REOPEN_PAUSE, false), Step::Verify);
        core.verified(false);
        // The pause ends at the deadline, and past it the wait ends.
        let t1 = t0 + ms(200) - Duration::from_micros(100);
        assert_eq!(core.next(t1, false), Step::Sleep(t0 + ms(200)));
        assert_eq!(core.next(t0 + ms(200), false), Step::Attempt);
        core.attempted(true);
        assert_eq!(core.next(t0 + ms(200), false), Step::Verify);
        core.verified(false);
        assert_eq!(core.next(t0 + ms(201), false), Step::Stop(Stop::TimedOut));
        // Without a deadline the retries go on, paced.
        let mut p = plan(Deadline::Forever);
        p.verify = true;
        p.may_block = false;
        let mut core = Core::new(p, t0);
        for _ in 0..=REOPENS_AT_ONCE {
            assert_eq!(core.next(t0, false), Step::Attempt);
            core.attempted(true);
            assert_eq!(core.next(t0, false), Step::Verify);
            core.verified(false);
        }
        assert_eq!(core.next(t0, false), Step::Sleep(t0 + REOPEN_PAUSE));
        // A new file found held ends the run of reopenings.
        assert_eq!(core.next(t0 + REOPEN_PAUSE, false), Step::Attempt);
        core.attempted(false);
        assert_eq!(core.next(t0 + REOPEN_PAUSE, false), Step::Register);
        core.registered(true);
        assert_eq!(core.next(t0 + REOPEN_PAUSE, false), Step::Attempt);
        core.attempted(true);
        assert_eq!(core.next(t0 + REOPEN_PAUSE, false), Step::Verify);
        core.verified(false);
        assert_eq!(core.next(t0 + REOPEN_PAUSE, false), Step::Attempt);
    }

    #[test]
    fn a_cancel_wakes_tasks_after_letting_go_of_its_locks() {
        // A waker that polls inline: its task's wait leaves the token.
        struct Inline(std::sync::Mutex<Option<(CancelToken, std::sync::mpsc::Sender<usize>)>>);
        impl std::task::Wake for Inline {
            fn wake(self: Arc<Self>) {
                if let Some((token, tx)) = self.0.lock().unwrap().take() {
                    let _ = tx.send(token.registered());
                }
            }
        }
        let _serial = lock(&SERIAL);
        let (_dir, path) = lock_file();
        let file = LockFile::open(&path).unwrap();
        let token = CancelToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let waker = Waker::from(Arc::new(Inline(std::sync::Mutex::new(Some((
            token.clone(),
            tx,
        ))))));
        let reg = Registration::new(
            file.as_fd(),
            None,
            FlockMode::Exclusive,
            Some(&waker),
            Some(&token),
        );
        let canceller = token.clone();
        std::thread::spawn(move || canceller.cancel());
        let seen = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the waker ran without deadlocking");
        assert_eq!(seen, 1);
        drop(reg);
        assert_eq!(token.registered(), 0);
    }

    #[test]
    fn a_child_forked_while_the_hub_is_locked_neither_hangs_nor_touches_it() {
        let _serial = lock(&SERIAL);
        let (_dir, path) = lock_file();
        let held = LockFile::open(&path)
            .unwrap()
            .try_lock::<crate::Exclusive>()
            .unwrap();
        let waiting = LockFile::open(&path).unwrap();
        // A waiter of this process, queued on the hub at the fork.
        let reg = Registration::new(waiting.as_fd(), None, FlockMode::Exclusive, None, None);
        let hub = reg.slot.hub.clone().expect("a hub");
        // As if other threads were inside hub() and the hub at the fork.
        let cell = lock(&HUB);
        let state = hub.state();
        // SAFETY: the child only waits on a lock with the crate, drops a
        // registration, and leaves with _exit; it takes no lock that this
        // test's other threads hold (the hub's are exactly what it must
        // not take).
        #[allow(unsafe_code)]
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(reg);
            let timed_out = LockFile::open(&path)
                .unwrap()
                .lock_timeout::<crate::Exclusive>(Duration::from_millis(30))
                .is_err_and(|e| e.is_timeout());
            // SAFETY: ends the child without running the parent's exit code.
            #[allow(unsafe_code)]
            unsafe {
                libc::_exit(if timed_out { 0 } else { 1 })
            };
        }
        drop(state);
        drop(cell);
        assert_eq!(reap(pid), Some(0), "the child hung or failed");
        // The parent's waiter is still queued, and still the reader.
        assert_eq!(hub_census().0, 1);
        assert!(reg.is_reader());
        drop(reg);
        drop(held);
    }

    #[test]
    fn a_child_forked_while_a_cancel_token_is_locked_neither_hangs_nor_wakes_the_parent() {
        let _serial = lock(&SERIAL);
        let (_dir, path) = lock_file();
        let held = LockFile::open(&path)
            .unwrap()
            .try_lock::<crate::Exclusive>()
            .unwrap();
        let token = CancelToken::new();
        let waiting = LockFile::open(&path).unwrap();
        // A waiter of this process registered with the token at the fork:
        // the reader, whose wake-up rings the hub's bell.
        let reg = Registration::new(
            waiting.as_fd(),
            None,
            FlockMode::Exclusive,
            None,
            Some(&token),
        );
        assert!(reg.is_reader());
        let hub = reg.slot.hub.clone().expect("a hub");
        assert_eq!(token.registered(), 1);
        // As if another thread were registering or cancelling at the fork.
        let other = token.clone();
        let list = lock(&other.inner.waiters);
        // SAFETY: the child waits on a lock with the crate, starts a thread
        // that cancels, and leaves with _exit; it takes no lock that this
        // test's other threads hold (the token's is exactly what it must
        // not take).
        #[allow(unsafe_code)]
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // Registers a wait with the token, and unregisters it.
            let timed_out = LockFile::open(&path)
                .unwrap()
                .lock_with::<crate::Exclusive>(
                    Wait::timeout(Duration::from_millis(30)).cancel(token.clone()),
                )
                .is_err_and(|e| e.error.is_timeout());
            // A cancel from another thread ends a wait without a deadline.
            let canceller = token.clone();
            let cancelling = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                canceller.cancel();
            });
            let cancelled = LockFile::open(&path)
                .unwrap()
                .lock_with::<crate::Exclusive>(Wait::forever().cancel(token.clone()))
                .is_err_and(|e| e.error.is_cancelled());
            let joined = cancelling.join().is_ok();
            token.cancel();
            drop(reg);
            drop(token);
            // SAFETY: ends the child without running the parent's exit code.
            #[allow(unsafe_code)]
            unsafe {
                libc::_exit(if timed_out && cancelled && joined {
                    0
                } else {
                    1
                })
            };
        }
        drop(list);
        assert_eq!(reap(pid), Some(0), "the child hung or failed");
        // The child's cancel reached neither the token nor the waiter here.
        assert!(!token.is_cancelled());
        assert_eq!(token.registered(), 1);
        let [_, rung] = sys::poll_readable(
            hub.inotify.as_fd(),
            Some(hub.bell.as_fd()),
            Some(Duration::ZERO),
        )
        .unwrap();
        assert!(!rung, "the child rang the parent's bell");
        drop(reg);
        assert_eq!(token.registered(), 0);
        drop(held);
    }

    #[test]
    fn a_cancel_in_a_forked_child_wakes_none_of_the_parents_waits() {
        let _serial = lock(&SERIAL);
        let (_dir, path) = lock_file();
        let token = CancelToken::new();
        let waiting = LockFile::open(&path).unwrap();
        let reg = Registration::new(
            waiting.as_fd(),
            None,
            FlockMode::Exclusive,
            None,
            Some(&token),
        );
        assert!(reg.is_reader());
        let hub = reg.slot.hub.clone().expect("a hub");
        // SAFETY: the child cancels the token and leaves with _exit; the
        // token's lock is free at the fork.
        #[allow(unsafe_code)]
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            token.cancel();
            // SAFETY: ends the child without running the parent's exit code.
            #[allow(unsafe_code)]
            unsafe {
                libc::_exit(0)
            };
        }
        assert_eq!(reap(pid), Some(0), "the child hung or failed");
        let [_, rung] = sys::poll_readable(
            hub.inotify.as_fd(),
            Some(hub.bell.as_fd()),
            Some(Duration::ZERO),
        )
        .unwrap();
        assert!(!rung, "the child rang the parent's bell");
        assert!(!token.is_cancelled());
        drop(reg);
    }

    #[test]
    fn core_behind_another_waiter_backs_off_longer_until_it_is_first() {
        let t0 = Instant::now();
        let mut core = Core::new(plan(Deadline::After(Duration::from_secs(60))), t0);
        contended_and_registered(&mut core, t0, true);
        core.set_behind(true);
        let Step::Sleep(at) = core.next(t0, false) else {
            panic!("sleep expected")
        };
        let d = at - t0;
        assert!(d >= BACKOFF_BEHIND && d < BACKOFF_BEHIND * 6 / 5, "{d:?}");
        // First in line: the short back-off again.
        assert_eq!(core.next(at, false), Step::Attempt);
        core.attempted(false);
        core.set_behind(false);
        let Step::Sleep(next) = core.next(at, false) else {
            panic!("sleep expected")
        };
        assert!(next - at < BACKOFF_CAP * 6 / 5, "{:?}", next - at);
    }

    #[test]
    fn the_next_in_line_is_woken_when_the_first_leaves_with_the_lock() {
        let _serial = lock(&SERIAL);
        let (_dir, path) = lock_file();
        let a = LockFile::open(&path).unwrap();
        let b = LockFile::open(&path).unwrap();
        let mut ra = Registration::new(a.as_fd(), None, FlockMode::Exclusive, None, None);
        let rb = Registration::new(b.as_fd(), None, FlockMode::Exclusive, None, None);
        assert!(!ra.is_behind() && rb.is_behind());
        ra.acquired();
        drop(ra);
        assert!(!rb.is_behind(), "first in line now");
        // Taking the lock passes on no close event.
        assert!(!rb.take_notified());
    }

    #[test]
    fn the_pid_is_cached_where_the_kernel_wipes_it_on_fork() {
        assert_eq!(sys::current_pid(), std::process::id());
        // Linux 4.14+ everywhere this crate is tested.
        assert!(sys::pid_is_cached());
    }
}
