//! One PostgreSQL session and the statements the lock types send through it:
//! the session's runtime, connecting with the liveness settings, the
//! heartbeat thread, round trips with a deadline, cancel requests and the
//! mapping of client errors. [`super`] calls these and owns the lock state.

use std::future::Future;
use std::sync::{mpsc, Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::holder::{app_name, parse_app_name, PgHolder, PgLoss};
use super::key::lock_columns;
use crate::mode::FlockMode;
use crate::sys;
use crate::CancelToken;

/// The server ends a session that sent nothing for this long
/// (`idle_session_timeout`), which frees its locks when the client is cut off.
pub(crate) const IDLE_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle session sends `SELECT 1` to stay under
/// [`IDLE_SESSION_TIMEOUT`].
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long any round trip except a lock wait may take before the session
/// is given up as unreachable.
pub(crate) const ROUND_TRIP: Duration = Duration::from_secs(5);
/// How long a new session may take to connect and log in.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting caller looks at its cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(5);

/// The fencing-token sequence, schema-qualified so that every role and
/// `search_path` draws from the same one.
pub(crate) const FENCE_SEQUENCE: &str = "public.flockguard_fence";

/// Server settings sent in the startup packet (`options`), so they cost no
/// round trip: the idle limit that frees a cut-off client's locks, TCP
/// keepalives and `tcp_user_timeout` for a peer that vanished from the
/// network, and no statement or lock deadline inherited from the role.
fn session_options() -> String {
    format!(
        "-c idle_session_timeout={}s -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 \
         -c tcp_keepalives_count=3 -c tcp_user_timeout=10000 -c lock_timeout=0 \
         -c statement_timeout=0 -c idle_in_transaction_session_timeout=0",
        IDLE_SESSION_TIMEOUT.as_secs()
    )
}

/// A single-thread runtime for one session. The calling thread drives it
/// during each call, so a round trip costs no hand-off between threads.
fn new_runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// Runs `fut` to completion on `rt` on this thread; inside another
/// runtime's context, where that is refused, on a helper thread.
fn drive<F>(rt: &Runtime, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| rt.block_on(fut)).join())
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    } else {
        rt.block_on(fut)
    }
}

/// Why a round trip produced no answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The session is gone or unusable.
    Lost(PgLoss, Option<tokio_postgres::Error>),
    /// `lock_timeout` ended the wait (55P03).
    Timeout,
    /// The deadlock detector chose this session (40P01).
    Deadlock(tokio_postgres::Error),
    /// A cancel request ended the statement (57014).
    Cancelled,
    /// The role lacks a privilege (42501).
    Privilege(tokio_postgres::Error),
    /// Any other server error; the session stays usable.
    Other(tokio_postgres::Error),
}

pub(crate) fn classify(err: tokio_postgres::Error) -> Failure {
    if err.is_closed() {
        return Failure::Lost(PgLoss::Closed, Some(err));
    }
    let Some(code) = err.code().cloned() else {
        // No SQLSTATE: the socket or the protocol failed.
        return Failure::Lost(PgLoss::Closed, Some(err));
    };
    if code == SqlState::LOCK_NOT_AVAILABLE {
        Failure::Timeout
    } else if code == SqlState::T_R_DEADLOCK_DETECTED {
        Failure::Deadlock(err)
    } else if code == SqlState::QUERY_CANCELED {
        Failure::Cancelled
    } else if code == SqlState::INSUFFICIENT_PRIVILEGE {
        Failure::Privilege(err)
    } else if code == SqlState::ADMIN_SHUTDOWN
        || code == SqlState::CRASH_SHUTDOWN
        || code == SqlState::CANNOT_CONNECT_NOW
        || code == SqlState::IDLE_SESSION_TIMEOUT
        || code.code().starts_with("08")
    {
        Failure::Lost(PgLoss::Closed, Some(err))
    } else {
        Failure::Other(err)
    }
}

/// Awaits `fut` under the heartbeat's watch: `Err(limit)` once the thread
/// finds the deadline passed.
async fn watched<F: Future>(core: &Core, limit: Duration, fut: F) -> Result<F::Output, Duration> {
    *core.watch.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + limit);
    let mut fut = std::pin::pin!(fut);
    let mut expired = std::pin::pin!(core.expired.notified());
    let out = std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(out));
        }
        expired.as_mut().poll(cx).map(|()| Err(limit))
    })
    .await;
    *core.watch.lock().unwrap_or_else(PoisonError::into_inner) = None;
    out
}

/// Awaits `fut`; when `token` is cancelled meanwhile, sends the server a
/// cancel request, waits until it has been delivered, and then awaits `fut`
/// (which the server ends with 57014 unless it had finished).
async fn with_cancel<F: Future>(
    fut: F,
    token: Option<&CancelToken>,
    cancel: &tokio_postgres::CancelToken,
) -> F::Output {
    let Some(token) = token else {
        return fut.await;
    };
    let mut fut = std::pin::pin!(fut);
    loop {
        if token.is_cancelled() {
            // The server signals the backend before it closes the cancel
            // connection; after that no later statement can be hit.
            let _ = within(ROUND_TRIP, cancel.cancel_query(NoTls)).await;
            return fut.await;
        }
        if let Ok(out) = tokio::time::timeout(CANCEL_POLL, fut.as_mut()).await {
            return out;
        }
    }
}

/// `fut` with a deadline; the timer is created when the future first runs,
/// inside the runtime.
async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    tokio::time::timeout(limit, fut).await
}

/// The prepared statements of a session.
struct Statements {
    try_exclusive: Statement,
    try_shared: Statement,
    lock_exclusive: Statement,
    lock_shared: Statement,
    unlock_exclusive: Statement,
    unlock_shared: Statement,
    downgrade: Statement,
    try_upgrade: Statement,
    upgrade: Statement,
    is_held: Statement,
    holders: Statement,
}

/// Sets `application_name` to its granted form, stamping the grant time.
const STAMP: &str = "set_config('application_name', \
     $2 || floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint || $3, false)";

/// Columns of every acquiring statement: granted, fencing token (NULL if
/// not granted), the answering backend, the result of a release that
/// follows the grant (NULL if none), the new `application_name`.
fn try_sql(lock_fn: &str) -> String {
    format!(
        "SELECT l.got, CASE WHEN l.got THEN nextval('{FENCE_SEQUENCE}') END, pg_backend_pid(), \
         NULL::bool, CASE WHEN l.got THEN {STAMP} END \
         FROM (SELECT {lock_fn}($1) AS got OFFSET 0) l"
    )
}

/// A blocking acquisition with `lock_timeout` = `$4` set first in the same
/// statement; `release` runs after the grant.
fn wait_sql(lock_fn: &str, release: &str) -> String {
    format!(
        "SELECT true, nextval('{FENCE_SEQUENCE}'), pg_backend_pid(), {release}, {STAMP} \
         FROM (SELECT set_config('lock_timeout', $4, false) AS t OFFSET 0) s, \
         LATERAL (SELECT {lock_fn}($1) WHERE s.t IS NOT NULL OFFSET 0) l"
    )
}

const DOWNGRADE_SQL: &str = "SELECT true, nextval('public.flockguard_fence'), pg_backend_pid(), \
     u.released, set_config('application_name', \
     $2 || floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint || $3, false) \
     FROM (SELECT pg_advisory_unlock($1) AS released \
           FROM (SELECT pg_advisory_lock_shared($1) OFFSET 0) s OFFSET 0) u";

const TRY_UPGRADE_SQL: &str =
    "SELECT l.got, CASE WHEN l.got THEN nextval('public.flockguard_fence') END, \
     pg_backend_pid(), CASE WHEN l.got THEN pg_advisory_unlock_shared($1) END, \
     CASE WHEN l.got THEN set_config('application_name', \
     $2 || floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint || $3, false) END \
     FROM (SELECT pg_try_advisory_lock($1) AS got OFFSET 0) l";

const IS_HELD_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
     AND pid = pg_backend_pid() AND classid = $1 AND objid = $2 AND objsubid = 1 \
     AND granted AND mode = $3), pg_backend_pid()";

const HOLDERS_SQL: &str = "SELECT l.pid, l.mode, l.granted, l.waitstart, \
     coalesce(a.application_name, ''), a.client_addr, a.usename::text \
     FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' \
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1 \
     ORDER BY l.granted DESC, l.waitstart NULLS FIRST, l.pid";

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        let unlock_shared = "pg_advisory_unlock_shared($1)";
        Ok(Statements {
            try_exclusive: client.prepare(&try_sql("pg_try_advisory_lock")).await?,
            try_shared: client
                .prepare(&try_sql("pg_try_advisory_lock_shared"))
                .await?,
            lock_exclusive: client
                .prepare(&wait_sql("pg_advisory_lock", "NULL::bool"))
                .await?,
            lock_shared: client
                .prepare(&wait_sql("pg_advisory_lock_shared", "NULL::bool"))
                .await?,
            unlock_exclusive: client
                .prepare("SELECT pg_advisory_unlock($1), pg_backend_pid()")
                .await?,
            unlock_shared: client
                .prepare("SELECT pg_advisory_unlock_shared($1), pg_backend_pid()")
                .await?,
            downgrade: client.prepare(DOWNGRADE_SQL).await?,
            try_upgrade: client.prepare(TRY_UPGRADE_SQL).await?,
            upgrade: client
                .prepare(&wait_sql("pg_advisory_lock", unlock_shared))
                .await?,
            is_held: client.prepare(IS_HELD_SQL).await?,
            holders: client.prepare(HOLDERS_SQL).await?,
        })
    }
}

/// What the session does with the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Try(FlockMode),
    Wait(FlockMode),
    Downgrade,
    TryUpgrade,
    Upgrade,
}

/// The answer of an acquiring statement.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) granted: bool,
    pub(crate) token: i64,
}

/// What a session's calls and its heartbeat share.
struct Core {
    /// `None` once shut down.
    rt: Mutex<Option<Runtime>>,
    client: Client,
    /// Set when the heartbeat or a call found the session dead or unreachable.
    lost: Mutex<Option<PgLoss>>,
    /// The deadline of the short round trip in progress, if any; the
    /// heartbeat thread, which wakes every [`HEARTBEAT`], enforces it through
    /// `expired`, so a round trip arms no timer of its own.
    watch: Mutex<Option<Instant>>,
    expired: tokio::sync::Notify,
}

impl Drop for Core {
    /// Shuts the runtime down without waiting, which closes the socket; the
    /// server ends the session and frees its locks when it reads the close.
    fn drop(&mut self) {
        let rt = self
            .rt
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(rt) = rt {
            rt.shutdown_background();
        }
    }
}

/// An open session with its prepared statements and heartbeat.
pub(crate) struct Session {
    core: Arc<Core>,
    cancel: tokio_postgres::CancelToken,
    statements: Statements,
    backend_pid: i32,
    /// Dropping it stops the heartbeat thread.
    _heartbeat: mpsc::Sender<()>,
    /// `application_name` around the grant time: `flockguard PID ` and ` HOST`.
    stamp: (String, String),
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("backend_pid", &self.backend_pid)
            .finish_non_exhaustive()
    }
}

/// Why a session could not be opened.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Connect(Box<dyn std::error::Error + Send + Sync>),
    Fencing(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(err: tokio_postgres::Error) -> Self {
        ConnectError::Connect(Box::new(err))
    }
}

/// Opens a client with the session settings; the connection runs as a task.
async fn open_client(url: &str) -> Result<(Client, String, String), ConnectError> {
    let mut config: Config = url.parse()?;
    let host = sys::hostname().unwrap_or_default();
    let pid = std::process::id();
    let app = app_name(pid, &host);
    let (prefix, suffix) = match app.split_once(" - ") {
        Some((p, s)) => (format!("{p} "), format!(" {s}")),
        None => (format!("{app} "), String::new()),
    };
    config.application_name(app);
    let options = match config.get_options() {
        Some(user) => format!("{user} {}", session_options()),
        None => session_options(),
    };
    config.options(options);
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(10));
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, prefix, suffix))
}

/// Creates the fencing sequence if it is missing; races with other
/// clients creating it are harmless.
async fn ensure_fence(client: &Client) -> Result<(), ConnectError> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&FENCE_SEQUENCE])
        .await?;
    if row.get::<_, bool>(0) {
        return Ok(());
    }
    let create = format!(
        "CREATE SEQUENCE IF NOT EXISTS {FENCE_SEQUENCE} AS bigint MINVALUE 1 NO CYCLE; \
         GRANT USAGE ON SEQUENCE {FENCE_SEQUENCE} TO PUBLIC"
    );
    match client.batch_execute(&create).await {
        Ok(()) => Ok(()),
        Err(err)
            if err.code() == Some(&SqlState::UNIQUE_VIOLATION)
                || err.code() == Some(&SqlState::DUPLICATE_TABLE) =>
        {
            Ok(())
        }
        Err(err) if err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            Err(ConnectError::Fencing(err))
        }
        Err(err) => Err(err.into()),
    }
}

impl Session {
    /// Connects, creates the fencing sequence if needed, prepares the
    /// statements and starts the heartbeat.
    pub(crate) fn open(url: &str) -> Result<Session, ConnectError> {
        let rt = new_runtime().map_err(|e| ConnectError::Connect(Box::new(e)))?;
        let opened = drive(
            &rt,
            within(CONNECT_TIMEOUT + ROUND_TRIP, async {
                let (client, prefix, suffix) = open_client(url).await?;
                ensure_fence(&client).await?;
                let statements = Statements::prepare(&client).await?;
                let pid: i32 = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await?
                    .get(0);
                Ok::<_, ConnectError>((client, prefix, suffix, statements, pid))
            }),
        );
        let (client, prefix, suffix, statements, backend_pid) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(err)) => {
                rt.shutdown_background();
                return Err(err);
            }
            Err(_) => {
                rt.shutdown_background();
                return Err(ConnectError::Connect(
                    "no answer from the server within 15s".into(),
                ));
            }
        };
        let cancel = client.cancel_token();
        let core = Arc::new(Core {
            rt: Mutex::new(Some(rt)),
            client,
            lost: Mutex::new(None),
            watch: Mutex::new(None),
            expired: tokio::sync::Notify::new(),
        });
        let heartbeat = start_heartbeat(Arc::downgrade(&core))
            .map_err(|e| ConnectError::Connect(Box::new(e)))?;
        Ok(Session {
            core,
            cancel,
            statements,
            backend_pid,
            _heartbeat: heartbeat,
            stamp: (prefix, suffix),
        })
    }

    /// The server process serving this session.
    pub(crate) fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// A loss the heartbeat or an earlier call found, or a closed connection.
    pub(crate) fn known_loss(&self) -> Option<PgLoss> {
        let lost = *self
            .core
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lost.or_else(|| self.core.client.is_closed().then_some(PgLoss::Closed))
    }

    /// Runs `fut` on the session's runtime, on this thread.
    fn run<F>(&self, fut: F) -> Result<F::Output, Failure>
    where
        F: Future + Send,
        F::Output: Send,
    {
        if let Some(loss) = self.known_loss() {
            return Err(Failure::Lost(loss, None));
        }
        let rt = self.core.rt.lock().unwrap_or_else(PoisonError::into_inner);
        let rt = rt.as_ref().ok_or(Failure::Lost(PgLoss::Closed, None))?;
        Ok(drive(rt, fut))
    }

    /// Runs one statement with a deadline for the answer (`None`: no
    /// deadline) and an optional cancel token; `pid_column` holds the
    /// answering backend.
    fn round_trip(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
        pid_column: usize,
        deadline: Option<Duration>,
        token: Option<&CancelToken>,
    ) -> Result<Row, Failure> {
        let core = &*self.core;
        let answer = self.run(with_cancel(
            async {
                let query = core.client.query_one(statement, params);
                match deadline {
                    // The heartbeat's watch: up to one beat late, no timer.
                    Some(d) if d == ROUND_TRIP => watched(core, d, query).await,
                    Some(d) => tokio::time::timeout(d, query).await.map_err(|_| d),
                    None => Ok(query.await),
                }
            },
            token,
            &self.cancel,
        ))?;
        match answer {
            Ok(Ok(row)) => self.check_backend(row, pid_column),
            Ok(Err(err)) => {
                let failure = classify(err);
                if let Failure::Lost(loss, _) = &failure {
                    self.abandon(*loss);
                }
                Err(failure)
            }
            Err(waited) => {
                self.abandon(PgLoss::NoAnswer(waited));
                Err(Failure::Lost(PgLoss::NoAnswer(waited), None))
            }
        }
    }

    /// Refuses an answer from another backend than the session's own.
    fn check_backend(&self, row: Row, pid_column: usize) -> Result<Row, Failure> {
        let pid: i32 = row.try_get(pid_column).map_err(protocol)?;
        if pid != self.backend_pid {
            let loss = PgLoss::SessionChanged {
                expected: self.backend_pid,
                actual: pid,
            };
            self.abandon(loss);
            return Err(Failure::Lost(loss, None));
        }
        Ok(row)
    }

    /// Marks the session lost; its socket closes when it is dropped.
    fn abandon(&self, loss: PgLoss) {
        *self
            .core
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(loss);
    }

    /// Runs an acquiring statement.
    pub(crate) fn acquire(
        &self,
        op: Op,
        key: i64,
        timeout: Option<Duration>,
        token: Option<&CancelToken>,
    ) -> Result<Grant, Failure> {
        let (prefix, suffix) = self.stamp.clone();
        let lock_timeout = match timeout {
            None => "0".to_owned(),
            // 0 would mean "no limit"; a zero wait is one millisecond.
            Some(d) => d.as_millis().clamp(1, i32::MAX as u128).to_string(),
        };
        let waits = matches!(op, Op::Wait(_) | Op::Upgrade);
        let with_timeout: [&(dyn ToSql + Sync); 4] = [&key, &prefix, &suffix, &lock_timeout];
        let params = if waits {
            &with_timeout[..]
        } else {
            &with_timeout[..3]
        };
        let deadline = match (waits, timeout) {
            (false, _) => Some(ROUND_TRIP),
            (true, Some(d)) => Some(d.saturating_add(ROUND_TRIP)),
            (true, None) => None,
        };
        let s = &self.statements;
        let statement = match op {
            Op::Try(FlockMode::Exclusive) => &s.try_exclusive,
            Op::Try(FlockMode::Shared) => &s.try_shared,
            Op::Wait(FlockMode::Exclusive) => &s.lock_exclusive,
            Op::Wait(FlockMode::Shared) => &s.lock_shared,
            Op::Downgrade => &s.downgrade,
            Op::TryUpgrade => &s.try_upgrade,
            Op::Upgrade => &s.upgrade,
        };
        let result = self.round_trip(statement, params, 2, deadline, token);
        if let (Some(token), Op::Wait(mode)) = (token, op) {
            if token.is_cancelled() && !matches!(result, Err(Failure::Lost(..))) {
                // The caller gave up: whether the grant or the cancel came
                // first (or the cancel hit the statement after the grant),
                // the session must not keep the lock.
                return self.release_after_cancel(mode, key);
            }
        }
        let row = result?;
        let granted: bool = row.try_get(0).map_err(protocol)?;
        let token: Option<i64> = row.try_get(1).map_err(protocol)?;
        Ok(Grant {
            granted,
            token: token.unwrap_or(0),
        })
    }

    /// Releases whatever a cancelled wait may have been granted, then
    /// reports the cancel.
    fn release_after_cancel(&self, mode: FlockMode, key: i64) -> Result<Grant, Failure> {
        for _ in 0..3 {
            match self.release(mode, key) {
                Ok(_) => return Err(Failure::Cancelled),
                // A cancel request that arrived late cancelled the release.
                Err(Failure::Cancelled) => continue,
                Err(other) => return Err(other),
            }
        }
        self.abandon(PgLoss::Closed);
        Err(Failure::Lost(PgLoss::Closed, None))
    }

    /// Releases one hold of `mode`; `Ok(false)` if the session held none.
    pub(crate) fn release(&self, mode: FlockMode, key: i64) -> Result<bool, Failure> {
        let statement = match mode {
            FlockMode::Exclusive => &self.statements.unlock_exclusive,
            FlockMode::Shared => &self.statements.unlock_shared,
        };
        let row = self.round_trip(statement, &[&key], 1, Some(ROUND_TRIP), None)?;
        row.try_get(0).map_err(protocol)
    }

    /// Whether `pg_locks` shows this session holding the lock in `mode`.
    pub(crate) fn holds(&self, mode: FlockMode, key: i64) -> Result<bool, Failure> {
        let (classid, objid) = lock_columns(key);
        let pg_mode = match mode {
            FlockMode::Exclusive => "ExclusiveLock",
            FlockMode::Shared => "ShareLock",
        };
        let row = self.round_trip(
            &self.statements.is_held,
            &[&classid, &objid, &pg_mode],
            1,
            Some(ROUND_TRIP),
            None,
        )?;
        row.try_get(0).map_err(protocol)
    }

    /// Everyone holding or waiting for the lock, on this session.
    pub(crate) fn holders(&self, key: i64) -> Result<Vec<PgHolder>, Failure> {
        let (classid, objid) = lock_columns(key);
        let client = &self.core.client;
        let statement = &self.statements.holders;
        let answer = self.run(within(
            ROUND_TRIP,
            client.query(statement, &[&classid, &objid]),
        ))?;
        match answer {
            Ok(Ok(rows)) => rows.iter().map(holder_from_row).collect(),
            Ok(Err(err)) => Err(classify(err)),
            Err(_) => {
                self.abandon(PgLoss::NoAnswer(ROUND_TRIP));
                Err(Failure::Lost(PgLoss::NoAnswer(ROUND_TRIP), None))
            }
        }
    }

    /// Sends the statements of a `try` + unlock pair as they are, for the
    /// benchmarks' baseline.
    pub(crate) fn raw_pair(&self, key: i64, mode: FlockMode) -> Result<bool, Failure> {
        let s = &self.statements;
        let (try_stmt, unlock) = match mode {
            FlockMode::Exclusive => (&s.try_exclusive, &s.unlock_exclusive),
            FlockMode::Shared => (&s.try_shared, &s.unlock_shared),
        };
        let (prefix, suffix) = &self.stamp;
        let client = &self.core.client;
        let got = self.run(async {
            let row = client.query_one(try_stmt, &[&key, prefix, suffix]).await?;
            let got: bool = row.get(0);
            if got {
                client.query_one(unlock, &[&key]).await?;
            }
            Ok::<bool, tokio_postgres::Error>(got)
        })?;
        got.map_err(classify)
    }
}

fn protocol(err: tokio_postgres::Error) -> Failure {
    Failure::Other(err)
}

fn holder_from_row(row: &Row) -> Result<PgHolder, Failure> {
    let backend_pid: i32 = row.try_get(0).map_err(protocol)?;
    let mode: String = row.try_get(1).map_err(protocol)?;
    let granted: bool = row.try_get(2).map_err(protocol)?;
    let waitstart: Option<std::time::SystemTime> = row.try_get(3).map_err(protocol)?;
    let application_name: String = row.try_get(4).map_err(protocol)?;
    let client_addr: Option<std::net::IpAddr> = row.try_get(5).map_err(protocol)?;
    let user: Option<String> = row.try_get(6).map_err(protocol)?;
    let parsed = parse_app_name(&application_name);
    Ok(PgHolder {
        backend_pid,
        mode: if mode == "ExclusiveLock" {
            FlockMode::Exclusive
        } else {
            FlockMode::Shared
        },
        waiting: !granted,
        since: if granted {
            parsed.as_ref().and_then(|p| p.1)
        } else {
            waitstart
        },
        client_pid: parsed.as_ref().map(|p| p.0),
        client_host: parsed.and_then(|p| p.2),
        client_addr,
        user,
        application_name,
    })
}

/// Starts the thread that keeps an idle session under
/// `idle_session_timeout` and marks it lost when the server stops answering
/// or the connection closes. It skips a beat while a call is in progress,
/// and ends when the session is dropped.
fn start_heartbeat(core: Weak<Core>) -> std::io::Result<mpsc::Sender<()>> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("flockguard-pg-heartbeat".into())
        .spawn(move || loop {
            if stopped.recv_timeout(HEARTBEAT) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            let Some(core) = core.upgrade() else { return };
            let loss = {
                let Ok(rt) = core.rt.try_lock() else {
                    // A call is in progress: end it if it is past its deadline.
                    let watch = *core.watch.lock().unwrap_or_else(PoisonError::into_inner);
                    if watch.is_some_and(|at| Instant::now() >= at) {
                        core.expired.notify_waiters();
                    }
                    continue;
                };
                let Some(rt) = rt.as_ref() else { return };
                match rt.block_on(within(ROUND_TRIP, core.client.simple_query("SELECT 1"))) {
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) => PgLoss::Closed,
                    Err(_) => PgLoss::NoAnswer(ROUND_TRIP),
                }
            };
            *core.lost.lock().unwrap_or_else(PoisonError::into_inner) = Some(loss);
            return;
        })?;
    Ok(stop)
}

/// Lists the holders of `key` over a fresh session without the fencing
/// setup; the session is closed afterwards.
pub(crate) fn holders_once(url: &str, key: i64) -> Result<Vec<PgHolder>, ConnectError> {
    let (classid, objid) = lock_columns(key);
    let rt = new_runtime().map_err(|e| ConnectError::Connect(Box::new(e)))?;
    let rows = drive(
        &rt,
        within(CONNECT_TIMEOUT + ROUND_TRIP, async {
            let (client, _, _) = open_client(url).await?;
            Ok::<_, ConnectError>(client.query(HOLDERS_SQL, &[&classid, &objid]).await?)
        }),
    );
    rt.shutdown_background();
    let rows =
        rows.map_err(|_| ConnectError::Connect("no answer from the server within 15s".into()))??;
    rows.iter()
        .map(holder_from_row)
        .collect::<Result<_, _>>()
        .map_err(|f| match f {
            Failure::Other(e) => ConnectError::Connect(Box::new(e)),
            other => ConnectError::Connect(format!("{other:?}").into()),
        })
}
