//! The same typed guards over PostgreSQL advisory locks, for processes on
//! different hosts (feature `postgres`).
//!
//! A [`PgLock`] is one database session for one lock name, holding nothing,
//! like a [`LockFile`](crate::LockFile): two `PgLock`s of one name contend
//! even in one process. Acquiring consumes it and returns a [`PgGuard<M>`];
//! [`PgGuard::unlock`] gives it back. Every acquisition draws a
//! [fencing token](PgGuard::fencing_token) that is larger than that of any
//! earlier acquisition of any name by any client, so storage can refuse a
//! writer whose lock was lost.
//!
//! ```no_run
//! use flockguard::pg::PgLock;
//! use flockguard::{Exclusive, Shared};
//! let url = "postgresql://app@db.internal/app";
//! let writer = PgLock::connect(url, "cache/index")?.lock::<Exclusive>()?;
//! let token = writer.fencing_token(); // send it with every write
//! let reader = writer.downgrade()?; // no gap, even with a writer queued
//! assert!(reader.is_held()?);
//! let again = reader.unlock()?; // the session, for the next acquisition
//! # drop(again); let _ = token;
//! # Ok::<(), flockguard::pg::Error>(())
//! ```
//!
//! From async code use [`AsyncPgLock`] and [`AsyncPgGuard`], which have the
//! same names and guarantees, run on the caller's tokio runtime without a
//! thread, and leave no lock behind when any of their futures is dropped.
//! The blocking calls block the calling thread: inside a runtime, call them
//! from `tokio::task::spawn_blocking` (or use the async types), never from a
//! task, whose worker they would stall.
//!
//! The URL may carry libpq's TLS settings (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`), with libpq's meaning; `prefer` is the default.
//!
//! # Transitions
//! | call | what the server does |
//! |---|---|
//! | [`PgGuard::downgrade`] | takes shared, then drops exclusive, in one statement: never unlocked |
//! | [`PgGuard::try_upgrade`] | tries exclusive while keeping shared; on contention the shared lock is **kept** |
//! | [`PgGuard::upgrade`] | waits for exclusive while keeping shared; a deadlock with another upgrader fails one of them with [`ErrorKind::Deadlock`], which keeps its shared lock |
//! | [`PgGuard::unlock`] | `pg_advisory_unlock[_shared]`; the session is kept |
//! | drop | closes the session, which frees its locks |
//!
//! # Losing a lock
//! The server frees a session's locks when the session ends: an
//! administrator's `pg_terminate_backend`, a restart, or a client that has
//! sent nothing for 10 s (`idle_session_timeout`; an idle session sends
//! `SELECT 1` every 2 s, so a client cut off from the server loses its locks
//! within 10 s). The client learns of a loss at its next round trip:
//! [`PgGuard::is_held`] and [`PgGuard::unlock`] then fail with
//! [`ErrorKind::Lost`]. A round trip that gets no answer within 5–7 s abandons
//! the session. See `docs/postgres.md` for the guarantees and their limits.
//!
//! # Names
//! A name maps to the `bigint` key [`lock_key`] documents, with the SQL that
//! takes the same lock from `psql`.

mod error;
mod holder;
mod key;
mod nonblocking;
mod session;
mod tls;

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

pub use error::{Error, ErrorKind};
pub use holder::{PgHolder, PgLoss};
pub use key::lock_key;
pub use nonblocking::{AsyncPgGuard, AsyncPgLock};

use session::{ConnectError, Failure, Grant, Op, Session};

use crate::mode::{Exclusive, FlockMode, Mode, Shared};
use crate::wait::Deadline;
use crate::{CancelToken, LockError, Wait};

/// One PostgreSQL session for one lock name, holding no lock.
///
/// The session is opened by [`connect`](Self::connect) and reopened by the
/// next acquisition if it was lost. Its calls block the calling thread,
/// also inside an async runtime, where they stall the worker (and on a
/// current-thread runtime every task): there use [`AsyncPgLock`], or call
/// from `tokio::task::spawn_blocking`. Its `application_name` carries this
/// process's id and host name, which [`holders`] reports.
pub struct PgLock {
    // Boxed, as the session: the handle travels in every `LockError` and guard.
    target: Box<Target>,
    key: i64,
    session: Option<Box<Session>>,
}

/// What a [`PgLock`] connects to.
struct Target {
    name: String,
    url: String,
}

impl fmt::Debug for PgLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLock")
            .field("name", &self.target.name)
            .field("key", &self.key)
            .field("backend_pid", &self.backend_pid())
            .finish()
    }
}

impl PgLock {
    /// Opens a session for the lock `name` on the server at `url` (a
    /// `postgresql://` URL or a libpq `key=value` string).
    ///
    /// The session creates the fencing sequence `public.flockguard_fence`
    /// if it is missing (and grants its use to every role).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidName`] for an empty name; [`ErrorKind::Connect`] if the
    /// URL is malformed, the server cannot be reached within 10 s or refuses
    /// the login, or is older than PostgreSQL 14; [`ErrorKind::Fencing`] if
    /// the sequence is missing and the role may not create it.
    ///
    /// # Examples
    /// ```no_run
    /// let lock = flockguard::pg::PgLock::connect("host=db.internal user=app", "nightly")?;
    /// # drop(lock);
    /// # Ok::<(), flockguard::pg::Error>(())
    /// ```
    pub fn connect(url: &str, name: &str) -> Result<PgLock, Error> {
        check_name(name)?;
        let mut lock = PgLock {
            target: Box::new(Target {
                name: name.to_owned(),
                url: url.to_owned(),
            }),
            key: lock_key(name),
            session: None,
        };
        lock.ready()?;
        Ok(lock)
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// The advisory-lock key of the name ([`lock_key`]).
    pub fn key(&self) -> i64 {
        self.key
    }

    /// The server process serving the session, while one is open.
    pub fn backend_pid(&self) -> Option<i32> {
        self.session.as_deref().map(Session::backend_pid)
    }

    /// Takes the lock in mode `M` if no other session holds it in a
    /// conflicting mode, without waiting.
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] on contention; the connection and query
    /// errors of [`lock`](Self::lock). The `PgLock` comes back in every case.
    #[doc(alias = "pg_try_advisory_lock")]
    pub fn try_lock<M: Mode>(self) -> Result<PgGuard<M>, LockError<PgLock, Error>> {
        self.acquire(Op::Try(M::MODE), None, None)
    }

    /// Waits until the lock can be taken in mode `M`.
    ///
    /// # Errors
    /// [`ErrorKind::Lost`] if the session was lost while waiting (the next
    /// call reconnects); [`ErrorKind::Connect`] if a lost session could not be
    /// reopened; [`ErrorKind::Fencing`] if the role may not draw a fencing
    /// token; [`ErrorKind::Query`] for other server errors.
    #[doc(alias = "pg_advisory_lock")]
    pub fn lock<M: Mode>(self) -> Result<PgGuard<M>, LockError<PgLock, Error>> {
        self.acquire(Op::Wait(M::MODE), None, None)
    }

    /// Waits at most `timeout` for the lock in mode `M`; the server enforces
    /// the deadline (`lock_timeout`, rounded up to a millisecond; a
    /// `timeout` beyond the server's largest, `i32::MAX` milliseconds or
    /// about 24.8 days, waits without a limit).
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] at the deadline, listing the holders; otherwise
    /// as [`lock`](Self::lock).
    pub fn lock_timeout<M: Mode>(
        self,
        timeout: Duration,
    ) -> Result<PgGuard<M>, LockError<PgLock, Error>> {
        self.acquire(Op::Wait(M::MODE), Some(timeout), None)
    }

    /// Waits until `deadline` for the lock in mode `M` (enforced by the
    /// server, as [`lock_timeout`](Self::lock_timeout)).
    ///
    /// # Errors
    /// As [`lock_timeout`](Self::lock_timeout).
    pub fn lock_until<M: Mode>(
        self,
        deadline: Instant,
    ) -> Result<PgGuard<M>, LockError<PgLock, Error>> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.acquire(Op::Wait(M::MODE), Some(left), None)
    }

    /// Acquires as `wait` says: not at all ([`Wait::none`]), until taken
    /// ([`Wait::forever`]) or until a deadline, and until its
    /// [`CancelToken`] is cancelled.
    ///
    /// A cancel sends the server a cancel request, which ends the
    /// server-side wait; a lock granted before the request arrived is
    /// released before this returns, so a caller that gave up never holds
    /// it. The wait's notice ([`Wait::on_wait`]) and context, which describe
    /// file locks, are not used.
    ///
    /// # Errors
    /// [`ErrorKind::Cancelled`] after a cancel; [`ErrorKind::WouldBlock`] for
    /// [`Wait::none`] on contention; otherwise as
    /// [`lock_timeout`](Self::lock_timeout).
    ///
    /// # Examples
    /// ```no_run
    /// use flockguard::{pg::PgLock, CancelToken, Exclusive, Wait};
    /// let token = CancelToken::new();
    /// let lock = PgLock::connect("host=db.internal user=app", "nightly")?;
    /// let guard = lock.lock_with::<Exclusive>(Wait::forever().cancel(token.clone()))?;
    /// # drop(guard);
    /// # Ok::<(), flockguard::pg::Error>(())
    /// ```
    pub fn lock_with<M: Mode>(
        self,
        wait: Wait<'_>,
    ) -> Result<PgGuard<M>, LockError<PgLock, Error>> {
        let token = wait.cancel.as_ref();
        match wait.deadline {
            Deadline::None => self.acquire(Op::Try(M::MODE), None, token),
            Deadline::Forever => self.acquire(Op::Wait(M::MODE), None, token),
            Deadline::After(d) => self.acquire(Op::Wait(M::MODE), Some(d), token),
            Deadline::At(at) => {
                let left = at.saturating_duration_since(Instant::now());
                self.acquire(Op::Wait(M::MODE), Some(left), token)
            }
        }
    }

    /// Everyone holding or waiting for this lock, on this session.
    ///
    /// # Errors
    /// [`ErrorKind::Lost`], [`ErrorKind::Connect`] or [`ErrorKind::Query`] as for
    /// [`lock`](Self::lock).
    pub fn holders(&mut self) -> Result<Vec<PgHolder>, Error> {
        let key = self.key;
        let result = self.ready()?.holders(key);
        result.map_err(|f| self.failure(f, None, None, Duration::ZERO))
    }

    /// Runs the SQL of [`try_lock`](Self::try_lock) and, if granted, of
    /// [`PgGuard::unlock`] as plain statements on this session, without the
    /// guard; the benchmarks' baseline.
    #[doc(hidden)]
    pub fn raw_try_unlock_pair(&mut self, mode: FlockMode) -> Result<bool, Error> {
        let key = self.key;
        let result = self.ready()?.raw_pair(key, mode);
        result.map_err(|f| self.failure(f, None, None, Duration::ZERO))
    }

    /// The open session, reopening a lost one.
    fn ready(&mut self) -> Result<&Session, Error> {
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.known_loss().is_some())
        {
            self.session = None;
        }
        if self.session.is_none() {
            let session =
                Session::open(&self.target.url).map_err(|e| e.into_error(&self.target.name))?;
            self.session = Some(Box::new(session));
        }
        // Just set when it was None.
        self.session
            .as_deref()
            .ok_or_else(|| Error::new(ErrorKind::Lost(PgLoss::Closed), &self.target.name))
    }

    /// Turns a failed round trip into the crate's error; a lost session is
    /// closed so that the next call reconnects.
    fn failure(
        &mut self,
        failure: Failure,
        held: Option<FlockMode>,
        wanted: Option<FlockMode>,
        waited: Duration,
    ) -> Error {
        if matches!(failure, Failure::Lost(..)) && held.is_none() {
            self.session = None;
        }
        let (session, key) = (self.session.as_deref(), self.key);
        failure_error(
            failure,
            &self.target.name,
            held,
            wanted.unwrap_or(FlockMode::Exclusive),
            waited,
            || {
                session
                    .and_then(|s| s.holders(key).ok())
                    .unwrap_or_default()
            },
        )
    }

    fn acquire<M: Mode>(
        mut self,
        op: Op,
        timeout: Option<Duration>,
        token: Option<&CancelToken>,
    ) -> Result<PgGuard<M>, LockError<PgLock, Error>> {
        let start = Instant::now();
        let key = self.key;
        if token.is_some_and(CancelToken::is_cancelled) {
            let error =
                Error::new(ErrorKind::Cancelled, &self.target.name).with_mode(Some(M::MODE));
            return Err(LockError {
                error,
                handle: self,
            });
        }
        let result = match self.ready() {
            Ok(session) => session.acquire(op, key, timeout, token),
            Err(error) => {
                return Err(LockError {
                    error,
                    handle: self,
                })
            }
        };
        match result {
            Ok(Grant {
                granted: true,
                token: fence,
            }) => Ok(PgGuard::new(self, fence)),
            Ok(Grant { granted: false, .. }) => {
                let error = would_block(&self.target.name, M::MODE);
                Err(LockError {
                    error,
                    handle: self,
                })
            }
            Err(failure) => {
                let error = self.failure(failure, None, Some(M::MODE), start.elapsed());
                Err(LockError {
                    error,
                    handle: self,
                })
            }
        }
    }
}

/// A PostgreSQL advisory lock held in mode `M` by one session.
///
/// Dropping the guard closes its session, which frees the lock at once on
/// the server; [`unlock`](Self::unlock) releases it and keeps the session.
#[must_use = "if unused the lock is released immediately"]
#[clippy::has_significant_drop]
pub struct PgGuard<M: Mode> {
    lock: Option<PgLock>,
    token: i64,
    _mode: PhantomData<M>,
}

impl<M: Mode> fmt::Debug for PgGuard<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgGuard")
            .field("name", &self.name())
            .field("mode", &M::MODE)
            .field("fencing_token", &self.token)
            .field(
                "backend_pid",
                &self.lock.as_ref().and_then(PgLock::backend_pid),
            )
            .finish()
    }
}

impl<M: Mode> PgGuard<M> {
    fn new(lock: PgLock, token: i64) -> Self {
        PgGuard {
            lock: Some(lock),
            token,
            _mode: PhantomData,
        }
    }

    fn inner(&self) -> &PgLock {
        // Only `into_lock` takes it, and it consumes the guard.
        self.lock.as_ref().expect("a guard always holds its PgLock")
    }

    fn into_lock(mut self) -> PgLock {
        self.lock.take().expect("a guard always holds its PgLock")
    }

    /// Moves the session into a guard of another mode with a new token.
    fn into_mode<N: Mode>(self, token: i64) -> PgGuard<N> {
        PgGuard::new(self.into_lock(), token)
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        self.lock.as_ref().map_or("", |l| l.target.name.as_str())
    }

    /// The server process serving the guard's session, the one
    /// [`PgHolder::backend_pid`] reports for it.
    pub fn backend_pid(&self) -> Option<i32> {
        self.lock.as_ref().and_then(PgLock::backend_pid)
    }

    /// The mode held.
    pub fn mode(&self) -> FlockMode {
        M::MODE
    }

    /// The fencing token of this acquisition: larger than the token of every
    /// acquisition (of any name, in any mode, by any client of the same
    /// database) granted before this one, so storage that remembers the
    /// largest token it has seen can refuse a writer whose lock was lost.
    ///
    /// It is an `i64` drawn from a `bigint` sequence that starts at 1, so it
    /// binds to a `bigint` column as it is. Storage must accept a token
    /// equal to the largest it has seen (the holder's own later writes) and
    /// refuse a smaller one; `docs/postgres.md` shows the SQL.
    pub fn fencing_token(&self) -> i64 {
        self.token
    }

    /// Asks the server whether this session still holds the lock.
    ///
    /// # Errors
    /// [`ErrorKind::Lost`] if the session is gone, or did not answer within
    /// 5–7 s (the lock must then be assumed lost); [`ErrorKind::Query`] for other
    /// server errors.
    pub fn is_held(&self) -> Result<bool, Error> {
        let lock = self.inner();
        let session = lock
            .session
            .as_ref()
            .ok_or_else(|| self.lost(PgLoss::Closed))?;
        session.holds(M::MODE, lock.key).map_err(|f| {
            failure_error(
                f,
                self.name(),
                Some(M::MODE),
                M::MODE,
                Duration::ZERO,
                Vec::new,
            )
        })
    }

    fn lost(&self, reason: PgLoss) -> Error {
        Error::new(ErrorKind::Lost(reason), self.name()).with_mode(Some(M::MODE))
    }

    /// Releases the lock and returns the session for the next acquisition.
    ///
    /// # Errors
    /// [`ErrorKind::Lost`] if the lock was lost before this call: the session
    /// ended or did not answer ([`PgLoss::Closed`], [`PgLoss::NoAnswer`]), or
    /// it no longer held the lock ([`PgLoss::NotHeld`]). The `PgLock` comes
    /// back, and reconnects at its next acquisition.
    #[doc(alias = "pg_advisory_unlock")]
    pub fn unlock(self) -> Result<PgLock, LockError<PgLock, Error>> {
        let mut lock = self.into_lock();
        let result = match &lock.session {
            Some(session) => session.release(M::MODE, lock.key),
            None => Err(Failure::Lost(PgLoss::Closed, None)),
        };
        match result {
            Ok(true) => Ok(lock),
            Ok(false) => Err(LockError {
                error: Error::new(ErrorKind::Lost(PgLoss::NotHeld), &lock.target.name)
                    .with_mode(Some(M::MODE)),
                handle: lock,
            }),
            Err(failure) => {
                if matches!(failure, Failure::Lost(..)) {
                    lock.session = None;
                }
                let error = lock.failure(failure, Some(M::MODE), Some(M::MODE), Duration::ZERO);
                Err(LockError {
                    error,
                    handle: lock,
                })
            }
        }
    }

    /// Runs a transition statement on the guard's session.
    fn transition<N: Mode>(
        self,
        op: Op,
        timeout: Option<Duration>,
    ) -> Result<PgGuard<N>, LockError<PgGuard<M>, Error>> {
        let start = Instant::now();
        let lock = self.inner();
        let result = match &lock.session {
            Some(session) => session.acquire(op, lock.key, timeout, None),
            None => Err(Failure::Lost(PgLoss::Closed, None)),
        };
        match result {
            Ok(Grant {
                granted: true,
                token,
                ..
            }) => Ok(self.into_mode(token)),
            Ok(Grant { granted: false, .. }) => {
                let error = would_block(&lock.target.name, N::MODE);
                Err(LockError {
                    error,
                    handle: self,
                })
            }
            Err(failure) => {
                let session = lock.session.as_deref();
                let error = failure_error(
                    failure,
                    &lock.target.name,
                    Some(M::MODE),
                    N::MODE,
                    start.elapsed(),
                    || {
                        session
                            .and_then(|s| s.holders(lock.key).ok())
                            .unwrap_or_default()
                    },
                );
                Err(LockError {
                    error,
                    handle: self,
                })
            }
        }
    }
}

impl<M: Mode> Drop for PgGuard<M> {
    fn drop(&mut self) {
        // Dropping the session closes it without waiting; the server frees
        // the lock as the session ends.
        drop(self.lock.take());
    }
}

impl PgGuard<Exclusive> {
    /// Converts to a shared lock without letting go: the shared lock is taken
    /// before the exclusive one is released, in one statement, and is granted
    /// even while another session waits for exclusive. The guard gets a new
    /// fencing token.
    ///
    /// # Errors
    /// [`ErrorKind::Lost`] if the session was lost; the guard comes back.
    pub fn downgrade(self) -> Result<PgGuard<Shared>, LockError<PgGuard<Exclusive>, Error>> {
        self.transition(Op::Downgrade, None)
    }
}

impl PgGuard<Shared> {
    /// Takes the exclusive lock if no other session holds the lock, keeping
    /// the shared lock in every case: on contention the guard comes back
    /// still holding it.
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] on contention; [`ErrorKind::Lost`] if the
    /// session was lost.
    ///
    /// ```compile_fail
    /// # fn f(g: flockguard::pg::PgGuard<flockguard::Exclusive>) {
    /// let _ = g.try_upgrade(); // only a shared guard upgrades
    /// # }
    /// ```
    pub fn try_upgrade(self) -> Result<PgGuard<Exclusive>, LockError<PgGuard<Shared>, Error>> {
        self.transition(Op::TryUpgrade, None)
    }

    /// Waits for the exclusive lock while keeping the shared one, then
    /// releases the shared one.
    ///
    /// # Errors
    /// [`ErrorKind::Deadlock`] when another shared holder is upgrading too: the
    /// server fails one of the two (after `deadlock_timeout`, 1 s by default),
    /// and that one keeps its shared lock in the returned guard.
    /// [`ErrorKind::Lost`] if the session was lost.
    pub fn upgrade(self) -> Result<PgGuard<Exclusive>, LockError<PgGuard<Shared>, Error>> {
        self.transition(Op::Upgrade, None)
    }

    /// As [`upgrade`](Self::upgrade), waiting at most `timeout` (enforced by
    /// the server); at the deadline the shared lock is still held.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] at the deadline; otherwise as
    /// [`upgrade`](Self::upgrade).
    pub fn upgrade_timeout(
        self,
        timeout: Duration,
    ) -> Result<PgGuard<Exclusive>, LockError<PgGuard<Shared>, Error>> {
        self.transition(Op::Upgrade, Some(timeout))
    }
}

/// Everyone holding or waiting for the lock `name` on the server at `url`,
/// over a short-lived session of its own.
///
/// Holders opened by this crate report their process id, host and the time
/// the lock was granted; for a waiter `since` is the start of its wait.
///
/// # Errors
/// [`ErrorKind::InvalidName`] for an empty name; [`ErrorKind::Connect`] if no
/// session could be opened or the query failed.
///
/// # Examples
/// ```no_run
/// for holder in flockguard::pg::holders("host=db.internal user=app", "nightly")? {
///     println!("{holder}");
/// }
/// # Ok::<(), flockguard::pg::Error>(())
/// ```
pub fn holders(url: &str, name: &str) -> Result<Vec<PgHolder>, Error> {
    check_name(name)?;
    session::holders_once(url, lock_key(name)).map_err(|e| e.into_error(name))
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::new(ErrorKind::InvalidName, name).with_detail("the name is empty"));
    }
    Ok(())
}

fn would_block(name: &str, mode: FlockMode) -> Error {
    Error::new(ErrorKind::WouldBlock, name).with_mode(Some(mode))
}

/// The one mapping from a failed round trip to the error: `held` is the
/// mode a guard held (a loss names it), `wanted` the mode asked for.
fn failure_error(
    failure: Failure,
    name: &str,
    held: Option<FlockMode>,
    wanted: FlockMode,
    waited: Duration,
    holders: impl FnOnce() -> Vec<PgHolder>,
) -> Error {
    let error = |kind| Error::new(kind, name).with_mode(Some(wanted));
    match failure {
        Failure::Lost(reason, source) => Error::new(ErrorKind::Lost(reason), name)
            .with_mode(held)
            .with_source(source),
        Failure::Timeout => error(ErrorKind::Timeout)
            .with_waited(waited)
            .with_holders(holders()),
        Failure::Cancelled => error(ErrorKind::Cancelled).with_waited(waited),
        Failure::Deadlock(source) => error(ErrorKind::Deadlock).with_source(Some(source)),
        Failure::Privilege(source) => error(ErrorKind::Fencing).with_source(Some(source)),
        Failure::Other(source) => error(ErrorKind::Query).with_source(Some(source)),
        Failure::Pooler(why) => Error::new(ErrorKind::Pooler, name)
            .with_mode(held)
            .with_detail(why),
    }
}

impl ConnectError {
    /// The one mapping from a failed connect to the error.
    fn into_error(self, name: &str) -> Error {
        match self {
            ConnectError::Connect(source) => {
                Error::new(ErrorKind::Connect, name).with_source(Some(source))
            }
            ConnectError::Fencing(source) => {
                Error::new(ErrorKind::Fencing, name).with_source(Some(source))
            }
            ConnectError::BadUrl(why) => Error::new(ErrorKind::Connect, name).with_detail(why),
            ConnectError::Refused(why, source) => Error::new(ErrorKind::Connect, name)
                .with_detail(why)
                .with_source(Some(source)),
            ConnectError::Tls(why, source) => Error::new(ErrorKind::Tls, name)
                .with_detail(why)
                .with_source(source),
            ConnectError::Pooler(why) => Error::new(ErrorKind::Pooler, name).with_detail(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_cross_threads() {
        assert_send_sync::<PgLock>();
        assert_send_sync::<PgHolder>();
        assert_send_sync::<PgGuard<Exclusive>>();
        assert_send_sync::<PgGuard<Shared>>();
        assert_send_sync::<LockError<PgLock, Error>>();
        assert_send_sync::<Error>();
    }

    #[test]
    fn empty_names_are_refused_before_connecting() {
        let err = PgLock::connect("host=/nonexistent", "").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidName);
        assert_eq!(
            err.to_string(),
            "`` is not usable as a PostgreSQL lock name: the name is empty"
        );
    }

    #[test]
    fn messages_name_the_lock_and_say_what_to_do() {
        let name = "jobs/nightly";
        let lost = |loss| Error::new(ErrorKind::Lost(loss), name);
        let cases = [
            would_block(name, FlockMode::Shared),
            Error::new(ErrorKind::Timeout, name)
                .with_mode(Some(FlockMode::Exclusive))
                .with_waited(Duration::from_millis(250)),
            Error::new(ErrorKind::Cancelled, name)
                .with_mode(Some(FlockMode::Exclusive))
                .with_waited(Duration::from_millis(20)),
            lost(PgLoss::NoAnswer(Duration::from_secs(5))).with_mode(Some(FlockMode::Exclusive)),
            lost(PgLoss::SessionChanged {
                expected: 10,
                actual: 11,
            }),
            Error::new(ErrorKind::Connect, name),
            Error::new(ErrorKind::Fencing, name),
            Error::new(ErrorKind::Query, name),
        ];
        for err in &cases {
            let msg = err.to_string();
            assert!(msg.contains("`jobs/nightly`"), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
            assert!(!msg.starts_with(char::is_uppercase), "{msg}");
            assert_eq!(err.name(), "jobs/nightly");
        }
        assert_eq!(
            cases[0].to_string(),
            "advisory lock `jobs/nightly` is held by another PostgreSQL session; shared lock not taken"
        );
        assert!(cases[0].is_would_block() && cases[1].is_timeout() && cases[2].is_cancelled());
        assert!(cases[3].is_lost() && cases[4].is_lost() && !cases[0].is_lost());
        assert_eq!(
            cases[1].to_string(),
            "timed out after 250ms waiting for exclusive PostgreSQL lock `jobs/nightly`; no holder visible in pg_locks"
        );
        assert_eq!(
            cases[3].to_string(),
            "exclusive PostgreSQL lock `jobs/nightly` is lost: the server did not answer within 5.0s; \
             another client may hold it now: stop the work it protects, then lock again (which reconnects)"
        );
        assert!(cases[4].to_string().contains("pooler in transaction mode"));
        assert_eq!(cases[3].io_kind(), std::io::ErrorKind::ConnectionAborted);
        assert_eq!(
            cases[3].loss(),
            Some(PgLoss::NoAnswer(Duration::from_secs(5)))
        );
        let handed_back = LockError::new(would_block(name, FlockMode::Shared), 7u8);
        assert!(handed_back.is_would_block());
        let io = std::io::Error::from(handed_back);
        assert_eq!(io.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn failures_map_to_one_kind_each() {
        let timeout = failure_error(
            Failure::Timeout,
            "n",
            None,
            FlockMode::Shared,
            Duration::from_millis(7),
            Vec::new,
        );
        assert_eq!(timeout.kind(), ErrorKind::Timeout);
        assert_eq!(timeout.mode(), Some(FlockMode::Shared));
        assert_eq!(timeout.waited(), Duration::from_millis(7));
        let lost = failure_error(
            Failure::Lost(PgLoss::Closed, None),
            "n",
            Some(FlockMode::Exclusive),
            FlockMode::Shared,
            Duration::ZERO,
            Vec::new,
        );
        assert_eq!(lost.kind(), ErrorKind::Lost(PgLoss::Closed));
        assert_eq!(lost.mode(), Some(FlockMode::Exclusive));
        let cancelled = failure_error(
            Failure::Cancelled,
            "n",
            None,
            FlockMode::Exclusive,
            Duration::ZERO,
            Vec::new,
        );
        assert!(cancelled.is_cancelled());
    }
}
