//! The async front-end: [`AsyncPgLock`] and [`AsyncPgGuard`], on the
//! caller's tokio runtime. The connection and the heartbeat are tasks; no
//! thread is started. Every acquisition and transition consumes its handle,
//! so dropping its future drops the session: the connection task is
//! aborted (the socket closes), a cancel request ends a wait in progress,
//! and the server frees what the session held.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

use super::session::{
    settle, with_cancel, Conn, ConnectError, Failure, Grant, Op, CONNECT_TIMEOUT, HEARTBEAT,
    ROUND_TRIP,
};
use super::{check_name, failure_error, lock_key, would_block, Error, ErrorKind, PgHolder, PgLoss};
use crate::mode::{Exclusive, FlockMode, Mode, Shared};
use crate::wait::Deadline;
use crate::{CancelToken, LockError, Wait};

/// What a session's calls and its heartbeat task share.
#[derive(Default)]
struct Shared_ {
    lost: Mutex<Option<PgLoss>>,
    /// Calls in progress; the heartbeat skips a beat while there is one.
    busy: AtomicUsize,
}

/// An open session on the caller's runtime.
struct AsyncSession {
    conn: Arc<Conn>,
    shared: Arc<Shared_>,
    connection: AbortHandle,
    heartbeat: AbortHandle,
}

impl Drop for AsyncSession {
    /// Aborts the connection task, which closes the socket; the server ends
    /// the session and frees its locks.
    fn drop(&mut self) {
        self.connection.abort();
        self.heartbeat.abort();
    }
}

impl AsyncSession {
    async fn open(url: &str) -> Result<AsyncSession, ConnectError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            ConnectError::Connect("AsyncPgLock needs a tokio runtime (none is running)".into())
        })?;
        let mut connection = None;
        let opened = tokio::time::timeout(
            CONNECT_TIMEOUT + ROUND_TRIP,
            Conn::open(url, |driver| {
                connection = Some(handle.spawn(driver).abort_handle());
            }),
        )
        .await;
        let conn = match opened {
            Ok(Ok(conn)) => Arc::new(conn),
            Ok(Err(err)) => {
                if let Some(c) = &connection {
                    c.abort();
                }
                return Err(err);
            }
            Err(_) => {
                if let Some(c) = &connection {
                    c.abort();
                }
                return Err(ConnectError::Connect(
                    "no answer from the server within 15s".into(),
                ));
            }
        };
        let connection = connection.ok_or_else(|| ConnectError::Connect("no connection".into()))?;
        let shared = Arc::new(Shared_::default());
        let heartbeat = handle
            .spawn(heartbeat(Arc::downgrade(&conn), shared.clone()))
            .abort_handle();
        Ok(AsyncSession {
            conn,
            shared,
            connection,
            heartbeat,
        })
    }

    fn known_loss(&self) -> Option<PgLoss> {
        let lost = *self
            .shared
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lost.or_else(|| self.conn.client.is_closed().then_some(PgLoss::Closed))
    }

    fn abandon(&self, loss: PgLoss) {
        *self
            .shared
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(loss);
        self.connection.abort();
    }

    /// Runs one statement with a deadline for the answer (`None`: none) and
    /// an optional cancel token. `consumes`: the caller's handle is inside
    /// the future, so if the future is dropped before it ends, the session
    /// goes with it and a cancel request ends the statement on the server.
    async fn round_trip<T>(
        &self,
        fut: impl Future<Output = Result<T, Failure>>,
        deadline: Option<Duration>,
        token: Option<&CancelToken>,
        consumes: bool,
    ) -> Result<T, Failure> {
        if let Some(loss) = self.known_loss() {
            return Err(Failure::Lost(loss, None));
        }
        let mut flight = InFlight::new(self, consumes);
        let fut = with_cancel(fut, token, &self.conn);
        let answer = match deadline {
            Some(d) => tokio::time::timeout(d, fut).await.map_err(|_| d),
            None => Ok(fut.await),
        };
        flight.done = true;
        settle(answer, |loss| self.abandon(loss))
    }

    async fn acquire(
        &self,
        op: Op,
        key: i64,
        timeout: Option<Duration>,
        token: Option<&CancelToken>,
    ) -> Result<Grant, Failure> {
        let deadline = match (op.waits(), timeout) {
            (false, _) => Some(ROUND_TRIP),
            (true, Some(d)) => Some(d.saturating_add(ROUND_TRIP)),
            (true, None) => None,
        };
        let result = self
            .round_trip(self.conn.acquire(op, key, timeout), deadline, token, true)
            .await;
        if let (Some(token), Op::Wait(mode)) = (token, op) {
            if token.is_cancelled()
                && !matches!(result, Err(Failure::Lost(..) | Failure::Pooler(_)))
            {
                // Granted before the cancel arrived, or cancelled: either
                // way the caller gave up and must not keep the lock.
                for _ in 0..3 {
                    match self.release(mode, key).await {
                        Ok(_) => return Err(Failure::Cancelled),
                        Err(Failure::Cancelled) => continue,
                        Err(other) => return Err(other),
                    }
                }
                self.abandon(PgLoss::Closed);
                return Err(Failure::Lost(PgLoss::Closed, None));
            }
        }
        result
    }

    async fn release(&self, mode: FlockMode, key: i64) -> Result<bool, Failure> {
        self.round_trip(self.conn.release(mode, key), Some(ROUND_TRIP), None, true)
            .await
    }
}

/// Counts a call in progress; if its future is dropped before the answer and
/// the session goes with it, sends a cancel request for the statement.
struct InFlight<'a> {
    session: &'a AsyncSession,
    consumes: bool,
    done: bool,
}

impl<'a> InFlight<'a> {
    fn new(session: &'a AsyncSession, consumes: bool) -> Self {
        session.shared.busy.fetch_add(1, Ordering::SeqCst);
        InFlight {
            session,
            consumes,
            done: false,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.session.shared.busy.fetch_sub(1, Ordering::SeqCst);
        if self.done || !self.consumes {
            return;
        }
        // The statement may still be waiting on the server, or be granted
        // later: end it now rather than when the server notices the closed
        // socket (within `client_connection_check_interval`, 1 s).
        self.session.connection.abort();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (cancel, connector) = self.session.conn.canceller();
            handle.spawn(async move {
                let _ = tokio::time::timeout(ROUND_TRIP, cancel.cancel_query(connector)).await;
            });
        }
    }
}

/// Keeps an idle session under `idle_session_timeout` and marks it lost
/// when the server stops answering; skips a beat while a call is in
/// progress.
async fn heartbeat(conn: Weak<Conn>, shared: Arc<Shared_>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(conn) = conn.upgrade() else { return };
        if shared.busy.load(Ordering::SeqCst) > 0 {
            continue;
        }
        let loss =
            match tokio::time::timeout(ROUND_TRIP, conn.client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => PgLoss::Closed,
                Err(_) => PgLoss::NoAnswer(ROUND_TRIP),
            };
        *shared.lost.lock().unwrap_or_else(PoisonError::into_inner) = Some(loss);
        return;
    }
}

/// One PostgreSQL session for one lock name, holding no lock, on the
/// caller's tokio runtime: the async counterpart of [`PgLock`](super::PgLock),
/// with the same names and guarantees.
///
/// Its connection and heartbeat run as tasks on the runtime that called
/// [`connect`](Self::connect); no thread is started. Two `AsyncPgLock`s of
/// one name contend even in one process. Every acquisition consumes the
/// handle: dropping the future (a `select!` branch that lost, a task that was
/// aborted, a `timeout`) closes the session, so a lock granted after the
/// caller gave up is freed by the server, never kept.
///
/// # Examples
/// ```no_run
/// # async fn f() -> Result<(), flockguard::pg::Error> {
/// use flockguard::pg::AsyncPgLock;
/// use flockguard::Exclusive;
/// let lock = AsyncPgLock::connect("postgresql://app@db.internal/app", "jobs/nightly").await?;
/// let guard = lock.lock::<Exclusive>().await?;
/// let token = guard.fencing_token(); // send it with every write
/// let lock = guard.unlock().await?;
/// # drop((lock, token)); Ok(()) }
/// ```
pub struct AsyncPgLock {
    name: String,
    url: String,
    key: i64,
    session: Option<AsyncSession>,
}

impl fmt::Debug for AsyncPgLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncPgLock")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("backend_pid", &self.backend_pid())
            .finish()
    }
}

impl AsyncPgLock {
    /// Opens a session for the lock `name` on the server at `url` (a
    /// `postgresql://` URL or a libpq `key=value` string, with libpq's TLS
    /// settings), on the current tokio runtime.
    ///
    /// # Errors
    /// As [`PgLock::connect`](super::PgLock::connect); [`ErrorKind::Connect`]
    /// outside a tokio runtime.
    pub async fn connect(url: &str, name: &str) -> Result<AsyncPgLock, Error> {
        check_name(name)?;
        let mut lock = AsyncPgLock {
            name: name.to_owned(),
            url: url.to_owned(),
            key: lock_key(name),
            session: None,
        };
        lock.ready().await?;
        Ok(lock)
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The advisory-lock key of the name ([`lock_key`]).
    pub fn key(&self) -> i64 {
        self.key
    }

    /// The server process serving the session, while one is open.
    pub fn backend_pid(&self) -> Option<i32> {
        self.session.as_ref().map(|s| s.conn.backend_pid)
    }

    /// Takes the lock in mode `M` if no other session holds it in a
    /// conflicting mode, without waiting.
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] on contention; otherwise as
    /// [`lock`](Self::lock). The `AsyncPgLock` comes back in every case.
    pub async fn try_lock<M: Mode>(self) -> Result<AsyncPgGuard<M>, LockError<AsyncPgLock, Error>> {
        self.acquire(Op::Try(M::MODE), None, None).await
    }

    /// Waits until the lock can be taken in mode `M`.
    ///
    /// # Errors
    /// [`ErrorKind::Lost`] if the session was lost while waiting (the next
    /// call reconnects); [`ErrorKind::Connect`] if a lost session could not
    /// be reopened; [`ErrorKind::Fencing`], [`ErrorKind::Pooler`],
    /// [`ErrorKind::Query`] as for [`PgLock::lock`](super::PgLock::lock).
    pub async fn lock<M: Mode>(self) -> Result<AsyncPgGuard<M>, LockError<AsyncPgLock, Error>> {
        self.acquire(Op::Wait(M::MODE), None, None).await
    }

    /// Waits at most `timeout` for the lock in mode `M`; the server enforces
    /// the deadline (`lock_timeout`, rounded up to a millisecond; a
    /// `timeout` beyond the server's largest, `i32::MAX` milliseconds or
    /// about 24.8 days, waits without a limit).
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] at the deadline, listing the holders;
    /// otherwise as [`lock`](Self::lock).
    pub async fn lock_timeout<M: Mode>(
        self,
        timeout: Duration,
    ) -> Result<AsyncPgGuard<M>, LockError<AsyncPgLock, Error>> {
        self.acquire(Op::Wait(M::MODE), Some(timeout), None).await
    }

    /// Waits until `deadline` for the lock in mode `M`.
    ///
    /// # Errors
    /// As [`lock_timeout`](Self::lock_timeout).
    pub async fn lock_until<M: Mode>(
        self,
        deadline: Instant,
    ) -> Result<AsyncPgGuard<M>, LockError<AsyncPgLock, Error>> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.acquire(Op::Wait(M::MODE), Some(left), None).await
    }

    /// Acquires as `wait` says (none, forever, a deadline, a
    /// [`CancelToken`]); as [`PgLock::lock_with`](super::PgLock::lock_with).
    /// Dropping the future is the other way to give up.
    ///
    /// # Errors
    /// [`ErrorKind::Cancelled`] after a cancel; otherwise as
    /// [`lock_timeout`](Self::lock_timeout).
    pub async fn lock_with<M: Mode>(
        self,
        wait: Wait<'_>,
    ) -> Result<AsyncPgGuard<M>, LockError<AsyncPgLock, Error>> {
        let (deadline, token) = (wait.deadline, wait.cancel);
        let token = token.as_ref();
        match deadline {
            Deadline::None => self.acquire(Op::Try(M::MODE), None, token).await,
            Deadline::Forever => self.acquire(Op::Wait(M::MODE), None, token).await,
            Deadline::After(d) => self.acquire(Op::Wait(M::MODE), Some(d), token).await,
            Deadline::At(at) => {
                let left = at.saturating_duration_since(Instant::now());
                self.acquire(Op::Wait(M::MODE), Some(left), token).await
            }
        }
    }

    /// Everyone holding or waiting for this lock, on this session.
    ///
    /// # Errors
    /// [`ErrorKind::Lost`], [`ErrorKind::Connect`] or [`ErrorKind::Query`].
    pub async fn holders(&mut self) -> Result<Vec<PgHolder>, Error> {
        let key = self.key;
        self.ready().await?;
        let session = self.session.as_ref().ok_or_else(|| self.lost(None))?;
        let result = session
            .round_trip(session.conn.holders(key), Some(ROUND_TRIP), None, false)
            .await;
        result.map_err(|f| self.failure(f, None, FlockMode::Exclusive, Duration::ZERO))
    }

    fn lost(&self, held: Option<FlockMode>) -> Error {
        Error::new(ErrorKind::Lost(PgLoss::Closed), &self.name).with_mode(held)
    }

    async fn ready(&mut self) -> Result<(), Error> {
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.known_loss().is_some())
        {
            self.session = None;
        }
        if self.session.is_none() {
            let session = AsyncSession::open(&self.url)
                .await
                .map_err(|e| e.into_error(&self.name))?;
            self.session = Some(session);
        }
        Ok(())
    }

    /// The error for a failed round trip; a lost session is dropped so that
    /// the next call reconnects.
    fn failure(
        &mut self,
        failure: Failure,
        held: Option<FlockMode>,
        wanted: FlockMode,
        waited: Duration,
    ) -> Error {
        if matches!(failure, Failure::Lost(..) | Failure::Pooler(_)) && held.is_none() {
            self.session = None;
        }
        // Holders are listed only by the blocking call's timeout path,
        // which may block; here a timeout lists them below.
        failure_error(failure, &self.name, held, wanted, waited, Vec::new)
    }

    async fn acquire<M: Mode>(
        mut self,
        op: Op,
        timeout: Option<Duration>,
        token: Option<&CancelToken>,
    ) -> Result<AsyncPgGuard<M>, LockError<AsyncPgLock, Error>> {
        let start = Instant::now();
        if token.is_some_and(CancelToken::is_cancelled) {
            let error = Error::new(ErrorKind::Cancelled, &self.name).with_mode(Some(M::MODE));
            return Err(LockError::new(error, self));
        }
        if let Err(error) = self.ready().await {
            return Err(LockError::new(error, self));
        }
        let key = self.key;
        let result = match &self.session {
            Some(session) => session.acquire(op, key, timeout, token).await,
            None => Err(Failure::Lost(PgLoss::Closed, None)),
        };
        match result {
            Ok(Grant {
                granted: true,
                token,
            }) => Ok(AsyncPgGuard::new(self, token)),
            Ok(Grant { granted: false, .. }) => {
                let error = would_block(&self.name, M::MODE);
                Err(LockError::new(error, self))
            }
            Err(Failure::Timeout) => {
                let holders = self.holders_quietly().await;
                let error = failure_error(
                    Failure::Timeout,
                    &self.name,
                    None,
                    M::MODE,
                    start.elapsed(),
                    || holders,
                );
                Err(LockError::new(error, self))
            }
            Err(failure) => {
                let error = self.failure(failure, None, M::MODE, start.elapsed());
                Err(LockError::new(error, self))
            }
        }
    }

    /// The holders for a timeout's message; empty if they cannot be listed.
    async fn holders_quietly(&self) -> Vec<PgHolder> {
        match &self.session {
            Some(s) => s
                .round_trip(s.conn.holders(self.key), Some(ROUND_TRIP), None, false)
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

/// A PostgreSQL advisory lock held in mode `M` by one session, on the
/// caller's tokio runtime: the async counterpart of
/// [`PgGuard`](super::PgGuard).
///
/// Dropping the guard closes its session, which frees the lock at once on
/// the server; [`unlock`](Self::unlock) releases it and keeps the session.
#[must_use = "if unused the lock is released immediately"]
#[clippy::has_significant_drop]
pub struct AsyncPgGuard<M: Mode> {
    lock: Option<AsyncPgLock>,
    token: i64,
    _mode: PhantomData<M>,
}

impl<M: Mode> fmt::Debug for AsyncPgGuard<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncPgGuard")
            .field("name", &self.name())
            .field("mode", &M::MODE)
            .field("fencing_token", &self.token)
            .field("backend_pid", &self.backend_pid())
            .finish()
    }
}

impl<M: Mode> AsyncPgGuard<M> {
    fn new(lock: AsyncPgLock, token: i64) -> Self {
        AsyncPgGuard {
            lock: Some(lock),
            token,
            _mode: PhantomData,
        }
    }

    fn inner(&self) -> &AsyncPgLock {
        // Only `into_lock` takes it, and it consumes the guard.
        self.lock.as_ref().expect("a guard always holds its lock")
    }

    fn into_lock(mut self) -> AsyncPgLock {
        self.lock.take().expect("a guard always holds its lock")
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        self.lock.as_ref().map_or("", |l| l.name.as_str())
    }

    /// The server process serving the guard's session.
    pub fn backend_pid(&self) -> Option<i32> {
        self.lock.as_ref().and_then(AsyncPgLock::backend_pid)
    }

    /// The mode held.
    pub fn mode(&self) -> FlockMode {
        M::MODE
    }

    /// The fencing token of this acquisition, as
    /// [`PgGuard::fencing_token`](super::PgGuard::fencing_token).
    pub fn fencing_token(&self) -> i64 {
        self.token
    }

    /// Asks the server whether this session still holds the lock. Dropping
    /// the future leaves the session usable.
    ///
    /// # Errors
    /// [`ErrorKind::Lost`] if the session is gone or did not answer within
    /// 5 s (the lock must then be assumed lost); [`ErrorKind::Pooler`],
    /// [`ErrorKind::Query`] for other failures.
    pub async fn is_held(&self) -> Result<bool, Error> {
        let lock = self.inner();
        let Some(session) = &lock.session else {
            return Err(lock.lost(Some(M::MODE)));
        };
        session
            .round_trip(
                session.conn.holds(M::MODE, lock.key),
                Some(ROUND_TRIP),
                None,
                false,
            )
            .await
            .map_err(|f| {
                failure_error(
                    f,
                    &lock.name,
                    Some(M::MODE),
                    M::MODE,
                    Duration::ZERO,
                    Vec::new,
                )
            })
    }

    /// Releases the lock and returns the session for the next acquisition.
    ///
    /// # Errors
    /// [`ErrorKind::Lost`] if the lock was lost before this call; the
    /// `AsyncPgLock` comes back and reconnects at its next acquisition.
    pub async fn unlock(self) -> Result<AsyncPgLock, LockError<AsyncPgLock, Error>> {
        let mut lock = self.into_lock();
        let result = match &lock.session {
            Some(session) => session.release(M::MODE, lock.key).await,
            None => Err(Failure::Lost(PgLoss::Closed, None)),
        };
        match result {
            Ok(true) => Ok(lock),
            Ok(false) => {
                let error = Error::new(ErrorKind::Lost(PgLoss::NotHeld), &lock.name)
                    .with_mode(Some(M::MODE));
                Err(LockError::new(error, lock))
            }
            Err(failure) => {
                if matches!(failure, Failure::Lost(..) | Failure::Pooler(_)) {
                    lock.session = None;
                }
                let error = failure_error(
                    failure,
                    &lock.name,
                    Some(M::MODE),
                    M::MODE,
                    Duration::ZERO,
                    Vec::new,
                );
                Err(LockError::new(error, lock))
            }
        }
    }

    async fn transition<N: Mode>(
        self,
        op: Op,
        timeout: Option<Duration>,
    ) -> Result<AsyncPgGuard<N>, LockError<AsyncPgGuard<M>, Error>> {
        let start = Instant::now();
        let lock = self.inner();
        let result = match &lock.session {
            Some(session) => session.acquire(op, lock.key, timeout, None).await,
            None => Err(Failure::Lost(PgLoss::Closed, None)),
        };
        match result {
            Ok(Grant {
                granted: true,
                token,
            }) => Ok(AsyncPgGuard::new(self.into_lock(), token)),
            Ok(Grant { granted: false, .. }) => {
                let error = would_block(&lock.name, N::MODE);
                Err(LockError::new(error, self))
            }
            Err(failure) => {
                let holders = if matches!(failure, Failure::Timeout) {
                    lock.holders_quietly().await
                } else {
                    Vec::new()
                };
                let error = failure_error(
                    failure,
                    &lock.name,
                    Some(M::MODE),
                    N::MODE,
                    start.elapsed(),
                    || holders,
                );
                Err(LockError::new(error, self))
            }
        }
    }
}

impl<M: Mode> Drop for AsyncPgGuard<M> {
    fn drop(&mut self) {
        // Dropping the session aborts its connection task; the server frees
        // the lock as the session ends.
        drop(self.lock.take());
    }
}

impl AsyncPgGuard<Exclusive> {
    /// Converts to a shared lock without letting go, as
    /// [`PgGuard::downgrade`](super::PgGuard::downgrade).
    ///
    /// # Errors
    /// [`ErrorKind::Lost`] if the session was lost; the guard comes back.
    ///
    /// ```compile_fail
    /// # async fn f(g: flockguard::pg::AsyncPgGuard<flockguard::Shared>) {
    /// let _ = g.downgrade().await; // only an exclusive guard downgrades
    /// # }
    /// ```
    pub async fn downgrade(
        self,
    ) -> Result<AsyncPgGuard<Shared>, LockError<AsyncPgGuard<Exclusive>, Error>> {
        self.transition(Op::Downgrade, None).await
    }
}

impl AsyncPgGuard<Shared> {
    /// Takes the exclusive lock if no other session holds the lock, keeping
    /// the shared lock in every case.
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] on contention (the shared lock is still
    /// held); [`ErrorKind::Lost`] if the session was lost.
    ///
    /// ```compile_fail
    /// # async fn f(g: flockguard::pg::AsyncPgGuard<flockguard::Exclusive>) {
    /// let _ = g.try_upgrade().await; // only a shared guard upgrades
    /// # }
    /// ```
    pub async fn try_upgrade(
        self,
    ) -> Result<AsyncPgGuard<Exclusive>, LockError<AsyncPgGuard<Shared>, Error>> {
        self.transition(Op::TryUpgrade, None).await
    }

    /// Waits for the exclusive lock while keeping the shared one, as
    /// [`PgGuard::upgrade`](super::PgGuard::upgrade).
    ///
    /// # Errors
    /// [`ErrorKind::Deadlock`] when another shared holder is upgrading too
    /// (the shared lock is still held); [`ErrorKind::Lost`] if the session
    /// was lost.
    pub async fn upgrade(
        self,
    ) -> Result<AsyncPgGuard<Exclusive>, LockError<AsyncPgGuard<Shared>, Error>> {
        self.transition(Op::Upgrade, None).await
    }

    /// As [`upgrade`](Self::upgrade), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] at the deadline; otherwise as
    /// [`upgrade`](Self::upgrade).
    pub async fn upgrade_timeout(
        self,
        timeout: Duration,
    ) -> Result<AsyncPgGuard<Exclusive>, LockError<AsyncPgGuard<Shared>, Error>> {
        self.transition(Op::Upgrade, Some(timeout)).await
    }
}
