//! One PostgreSQL session and the statements the lock types send through it.
//!
//! [`Conn`] is what both drivers share: connecting (TLS, the liveness
//! settings, the claim on the server session), the prepared statements and
//! one async function per statement. [`Session`] is the blocking driver:
//! its own runtime, the heartbeat thread, round trips with a deadline and
//! cancel requests. [`super`] calls these and owns the lock state.

use std::future::Future;
use std::sync::{mpsc, Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, Row, Statement};

use super::holder::{app_name, parse_app_name, PgHolder, PgLoss};
use super::key::lock_columns;
use super::tls::{self, Connector, SslMode, TlsSettings};
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
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting caller looks at its cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(5);
/// How long a cancelled statement may go on before the cancel request is
/// sent again.
const CANCEL_RESEND: Duration = Duration::from_secs(1);

/// The fencing-token sequence, schema-qualified so that every role and
/// `search_path` draws from the same one.
pub(crate) const FENCE_SEQUENCE: &str = "public.flockguard_fence";

/// The session-level setting that carries the client's claim on its server
/// session; every lock statement runs only where it holds the client's own
/// value, so a pooler that hands the server session to another client (or
/// the client to another server session) cannot make a lock statement
/// succeed.
pub(crate) const CLAIM: &str = "flockguard.session";

/// The statement that claims the server session and applies the session
/// settings in one round trip: the idle limit that frees a cut-off client's
/// locks, TCP keepalives and `tcp_user_timeout` for a peer that vanished,
/// a check that notices a closed client during a wait, and no statement or
/// lock deadline inherited from the role. It returns no row when another
/// client's claim is already there.
fn claim_sql(nonce: &str) -> String {
    format!(
        "SELECT pg_backend_pid(), set_config('{CLAIM}', '{nonce}', false), \
         set_config('idle_session_timeout', '{}s', false), \
         set_config('tcp_keepalives_idle', '5', false), \
         set_config('tcp_keepalives_interval', '1', false), \
         set_config('tcp_keepalives_count', '3', false), \
         set_config('tcp_user_timeout', '10000', false), \
         set_config('client_connection_check_interval', '1000', false), \
         set_config('lock_timeout', '0', false), set_config('statement_timeout', '0', false), \
         set_config('idle_in_transaction_session_timeout', '0', false) \
         WHERE coalesce(current_setting('{CLAIM}', true), '') IN ('', '{nonce}')",
        IDLE_SESSION_TIMEOUT.as_secs()
    )
}

/// A value no other session carries: 128 bits from the process, the time,
/// a counter and an address, hashed.
fn new_nonce() -> String {
    use sha2::Digest;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = sha2::Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    h.update((&COUNTER as *const AtomicU64 as usize).to_le_bytes());
    h.update(sys::hostname().unwrap_or_default().as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    /// The statement ran on a server session this client did not claim: a
    /// pooler in transaction or statement mode is in between.
    Pooler(&'static str),
    /// Any other server error; the session stays usable.
    Other(tokio_postgres::Error),
}

/// The server's `lock_timeout` setting for a wait of `timeout` (`None`:
/// no limit), in milliseconds rounded up. 0 would mean "no limit", so a
/// zero wait is one millisecond; beyond the server's largest value (about
/// 24.8 days) there is no limit, as with `Duration::MAX` for files.
fn server_lock_timeout(timeout: Option<Duration>) -> String {
    match timeout.map(|d| d.as_nanos().div_ceil(1_000_000).max(1)) {
        None => "0".to_owned(),
        Some(ms) if ms > i32::MAX as u128 => "0".to_owned(),
        Some(ms) => ms.to_string(),
    }
}

/// The outcome of a round trip that had `deadline`-style limits: `Err` is
/// how long it went unanswered. A lost session, a pooler's and no answer
/// mark the session lost through `abandon` before the failure is returned.
pub(crate) fn settle<T>(
    answer: Result<Result<T, Failure>, Duration>,
    abandon: impl FnOnce(PgLoss),
) -> Result<T, Failure> {
    match answer {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(failure)) => {
            match &failure {
                Failure::Lost(loss, _) => abandon(*loss),
                Failure::Pooler(_) => abandon(PgLoss::Closed),
                _ => {}
            }
            Err(failure)
        }
        Err(waited) => {
            abandon(PgLoss::NoAnswer(waited));
            Err(Failure::Lost(PgLoss::NoAnswer(waited), None))
        }
    }
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
    } else if code == SqlState::INVALID_SQL_STATEMENT_NAME || code == SqlState::DUPLICATE_PSTATEMENT
    {
        // The prepared statements live on another server session.
        Failure::Pooler(MOVED)
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
/// (which the server ends with 57014 unless it had finished). A request
/// that reached the server before the statement did is sent again each
/// [`CANCEL_RESEND`] until the statement ends.
pub(crate) async fn with_cancel<F: Future>(
    fut: F,
    token: Option<&CancelToken>,
    conn: &Conn,
) -> F::Output {
    let Some(token) = token else {
        return fut.await;
    };
    let mut fut = std::pin::pin!(fut);
    loop {
        if token.is_cancelled() {
            loop {
                // The server signals the backend before it closes the cancel
                // connection; after that no later statement can be hit.
                conn.cancel().await;
                if let Ok(out) = tokio::time::timeout(CANCEL_RESEND, fut.as_mut()).await {
                    return out;
                }
            }
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

/// What a pooler detection says, as a clause.
pub(crate) const MOVED: &str =
    "a statement ran on a server session this client did not open, so a pooler in transaction or statement mode shares server sessions between clients";

/// Sets `application_name` to its granted form, stamping the grant time.
const STAMP: &str = "set_config('application_name', \
     $2 || floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint || $3, false)";

/// The condition under which a statement may touch a lock: the server
/// session carries this client's claim, `$n`.
fn ours(n: u8) -> String {
    format!("current_setting('{CLAIM}', true) = ${n}")
}

/// Columns of every acquiring statement: granted, fencing token (NULL if
/// not granted), the answering backend, the result of a release that
/// follows the grant (NULL if none), the new `application_name`. No row
/// when the server session is not this client's (claim in `$4`).
fn try_sql(lock_fn: &str) -> String {
    format!(
        "SELECT l.got, CASE WHEN l.got THEN nextval('{FENCE_SEQUENCE}') END, pg_backend_pid(), \
         NULL::bool, CASE WHEN l.got THEN {STAMP} END \
         FROM (SELECT {lock_fn}($1) AS got WHERE {} OFFSET 0) l",
        ours(4)
    )
}

/// A blocking acquisition with `lock_timeout` = `$4` set first in the same
/// statement (claim in `$5`); `release` runs after the grant.
fn wait_sql(lock_fn: &str, release: &str) -> String {
    format!(
        "SELECT true, nextval('{FENCE_SEQUENCE}'), pg_backend_pid(), {release}, {STAMP} \
         FROM (SELECT set_config('lock_timeout', $4, false) AS t WHERE {} OFFSET 0) s, \
         LATERAL (SELECT {lock_fn}($1) WHERE s.t IS NOT NULL OFFSET 0) l",
        ours(5)
    )
}

/// Shared, then exclusive released, in one statement (claim in `$4`).
fn downgrade_sql() -> String {
    format!(
        "SELECT true, nextval('{FENCE_SEQUENCE}'), pg_backend_pid(), u.released, {STAMP} \
         FROM (SELECT pg_advisory_unlock($1) AS released \
               FROM (SELECT pg_advisory_lock_shared($1) WHERE {} OFFSET 0) s OFFSET 0) u",
        ours(4)
    )
}

/// Exclusive if free, keeping shared either way (claim in `$4`).
fn try_upgrade_sql() -> String {
    format!(
        "SELECT l.got, CASE WHEN l.got THEN nextval('{FENCE_SEQUENCE}') END, \
         pg_backend_pid(), CASE WHEN l.got THEN pg_advisory_unlock_shared($1) END, \
         CASE WHEN l.got THEN {STAMP} END \
         FROM (SELECT pg_try_advisory_lock($1) AS got WHERE {} OFFSET 0) l",
        ours(4)
    )
}

/// One release (claim in `$2`).
fn unlock_sql(unlock_fn: &str) -> String {
    format!("SELECT {unlock_fn}($1), pg_backend_pid() WHERE {}", ours(2))
}

/// Whether this session holds the lock (claim in `$4`).
fn is_held_sql() -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
         AND pid = pg_backend_pid() AND classid = $1 AND objid = $2 AND objsubid = 1 \
         AND granted AND mode = $3), pg_backend_pid() WHERE {}",
        ours(4)
    )
}

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
            unlock_exclusive: client.prepare(&unlock_sql("pg_advisory_unlock")).await?,
            unlock_shared: client
                .prepare(&unlock_sql("pg_advisory_unlock_shared"))
                .await?,
            downgrade: client.prepare(&downgrade_sql()).await?,
            try_upgrade: client.prepare(&try_upgrade_sql()).await?,
            upgrade: client
                .prepare(&wait_sql("pg_advisory_lock", unlock_shared))
                .await?,
            is_held: client.prepare(&is_held_sql()).await?,
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

/// Why a session could not be opened.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The URL's TLS settings cannot be used, as a clause.
    BadUrl(String),
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The server refused the login for a reason the clause names.
    Refused(String, tokio_postgres::Error),
    /// TLS failed: the cause as a clause, and the client's error.
    Tls(String, Option<Box<dyn std::error::Error + Send + Sync>>),
    Fencing(tokio_postgres::Error),
    /// A pooler shares server sessions; the clause says how it showed.
    Pooler(&'static str),
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(err: tokio_postgres::Error) -> Self {
        ConnectError::Connect(Box::new(err))
    }
}

/// The connection's I/O, which the owner of the session spawns.
pub(crate) type Driver = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Connects with the URL's TLS settings (libpq's meaning of `sslmode`).
async fn connect_tls(
    config: &Config,
    tls: &TlsSettings,
    connector: &Connector,
) -> Result<(Client, Driver), ConnectError> {
    use tokio_postgres::config::SslMode as Wire;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => String::new(),
    };
    let attempt = |wire: Wire| {
        let mut config = config.clone();
        config.ssl_mode(wire);
        let connector = connector.clone();
        async move {
            let (client, connection) = config.connect(connector).await?;
            let driver: Driver = Box::pin(async move {
                let _ = connection.await;
            });
            Ok::<_, tokio_postgres::Error>((client, driver))
        }
    };
    let tls_failure = |err: tokio_postgres::Error| match tls::tls_cause(&err, &host, tls) {
        Some(cause) => ConnectError::Tls(cause, Some(Box::new(err))),
        None => ConnectError::Connect(Box::new(err)),
    };
    match tls.mode {
        SslMode::Disable => attempt(Wire::Disable).await.map_err(|err| {
            let plaintext_refused = err.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                && err
                    .as_db_error()
                    .is_some_and(|db| db.message().contains("no encryption"));
            if plaintext_refused {
                ConnectError::Refused(
                    "the server accepts only TLS connections from this host (hostssl in pg_hba.conf), and sslmode=disable forbids TLS; use sslmode=require or stronger".to_owned(),
                    err,
                )
            } else {
                err.into()
            }
        }),
        // Plaintext first; a server that refuses it (hostssl only) gets TLS.
        SslMode::Allow => match attempt(Wire::Disable).await {
            Ok(opened) => Ok(opened),
            Err(err) if err.code().is_some() => attempt(Wire::Require).await.map_err(tls_failure),
            Err(err) => Err(err.into()),
        },
        // TLS if offered; as libpq, plaintext again if the handshake fails.
        SslMode::Prefer => match attempt(Wire::Prefer).await {
            Ok(opened) => Ok(opened),
            Err(err) if tls::tls_cause(&err, &host, tls).is_some() => {
                attempt(Wire::Disable).await.map_err(ConnectError::from)
            }
            Err(err) => Err(err.into()),
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            attempt(Wire::Require).await.map_err(tls_failure)
        }
    }
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

/// The first column of a simple query's first row, if there is a row.
fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

/// Where and how to connect, from a URL.
struct Target {
    config: Config,
    tls: TlsSettings,
    connector: Connector,
    /// `application_name` around the grant time.
    stamp: (String, String),
}

impl Target {
    /// The client settings: the URL's, with libpq's TLS settings taken
    /// out, this process's `application_name`, TCP keepalives and
    /// `tcp_user_timeout`, and a connect timeout unless the URL has one.
    fn parse(url: &str) -> Result<Target, ConnectError> {
        let split = tls::split_url(url).map_err(|e| ConnectError::BadUrl(e.0))?;
        let connector = Connector::new(&split.tls)
            .map_err(|e| ConnectError::Tls(e.reason, e.source.map(|s| Box::new(s) as Box<_>)))?;
        let mut config: Config = split.rest.parse()?;
        let host = sys::hostname().unwrap_or_default();
        let app = app_name(std::process::id(), &host);
        let stamp = match app.split_once(" - ") {
            Some((p, s)) => (format!("{p} "), format!(" {s}")),
            None => (format!("{app} "), String::new()),
        };
        config.application_name(app);
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        Ok(Target {
            config,
            tls: split.tls,
            connector,
            stamp,
        })
    }
}

/// An open connection, claimed for this client, with its prepared
/// statements: what the blocking and the async driver share.
pub(crate) struct Conn {
    pub(crate) client: Client,
    statements: Statements,
    /// This client's claim on the server session ([`CLAIM`]).
    nonce: String,
    pub(crate) backend_pid: i32,
    /// `application_name` around the grant time: `flockguard PID ` and ` HOST`.
    stamp: (String, String),
    cancel: tokio_postgres::CancelToken,
    connector: Connector,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("backend_pid", &self.backend_pid)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects; `spawn` runs the connection's I/O. Claims the server
    /// session (refusing one another client claimed), applies the session
    /// settings, creates the fencing sequence if needed, prepares the
    /// statements, and checks that the claim is still there.
    pub(crate) async fn open(url: &str, spawn: impl FnOnce(Driver)) -> Result<Conn, ConnectError> {
        let Target {
            config,
            tls,
            connector,
            stamp,
        } = Target::parse(url)?;
        let (client, driver) = connect_tls(&config, &tls, &connector).await?;
        spawn(driver);
        let nonce = new_nonce();
        // The simple protocol: no statement name that a shared server
        // session could already know.
        let claimed = client.simple_query(&claim_sql(&nonce)).await?;
        let backend_pid: i32 = first_value(&claimed)
            .and_then(|pid| pid.parse().ok())
            .ok_or(ConnectError::Pooler(
                "the server session already carries another client's claim, so a pooler in transaction or statement mode shares server sessions between clients",
            ))?;
        ensure_fence(&client).await?;
        let statements = Statements::prepare(&client).await?;
        let check = client
            .simple_query(&format!(
                "SELECT pg_backend_pid() WHERE current_setting('{CLAIM}', true) = '{nonce}'"
            ))
            .await?;
        if first_value(&check).and_then(|pid| pid.parse::<i32>().ok()) != Some(backend_pid) {
            return Err(ConnectError::Pooler(
                "consecutive statements ran on different server sessions, so a pooler in transaction or statement mode is in between",
            ));
        }
        let cancel = client.cancel_token();
        Ok(Conn {
            client,
            statements,
            nonce,
            backend_pid,
            stamp,
            cancel,
            connector,
        })
    }

    /// Sends a cancel request for the statement in progress.
    pub(crate) async fn cancel(&self) {
        let _ = within(ROUND_TRIP, self.cancel.cancel_query(self.connector.clone())).await;
    }

    /// A cancel token and connector, to cancel the statement in progress
    /// from a task of its own.
    pub(crate) fn canceller(&self) -> (tokio_postgres::CancelToken, Connector) {
        (self.cancel.clone(), self.connector.clone())
    }

    /// Checks a statement's answer: no row means the server session is not
    /// this client's; another backend than the session's own means the same.
    fn check(&self, row: Option<Row>, pid_column: usize) -> Result<Row, Failure> {
        let row = row.ok_or(Failure::Pooler(MOVED))?;
        let pid: i32 = row.try_get(pid_column).map_err(protocol)?;
        if pid != self.backend_pid {
            return Err(Failure::Lost(
                PgLoss::SessionChanged {
                    expected: self.backend_pid,
                    actual: pid,
                },
                None,
            ));
        }
        Ok(row)
    }

    /// Runs an acquiring statement; `timeout` is the server's `lock_timeout`.
    pub(crate) async fn acquire(
        &self,
        op: Op,
        key: i64,
        timeout: Option<Duration>,
    ) -> Result<Grant, Failure> {
        let (prefix, suffix) = &self.stamp;
        let lock_timeout = server_lock_timeout(timeout);
        let nonce = &self.nonce;
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
        let answer = if op.waits() {
            self.client
                .query_opt(statement, &[&key, prefix, suffix, &lock_timeout, nonce])
                .await
        } else {
            self.client
                .query_opt(statement, &[&key, prefix, suffix, nonce])
                .await
        };
        let row = self.check(answer.map_err(classify)?, 2)?;
        let granted: Option<bool> = row.try_get(0).map_err(protocol)?;
        let token: Option<i64> = row.try_get(1).map_err(protocol)?;
        Ok(Grant {
            granted: granted.unwrap_or(false),
            token: token.unwrap_or(0),
        })
    }

    /// Releases one hold of `mode`; `Ok(false)` if the session held none.
    pub(crate) async fn release(&self, mode: FlockMode, key: i64) -> Result<bool, Failure> {
        let statement = match mode {
            FlockMode::Exclusive => &self.statements.unlock_exclusive,
            FlockMode::Shared => &self.statements.unlock_shared,
        };
        let answer = self.client.query_opt(statement, &[&key, &self.nonce]).await;
        let row = self.check(answer.map_err(classify)?, 1)?;
        row.try_get(0).map_err(protocol)
    }

    /// Whether `pg_locks` shows this session holding the lock in `mode`.
    pub(crate) async fn holds(&self, mode: FlockMode, key: i64) -> Result<bool, Failure> {
        let (classid, objid) = lock_columns(key);
        let pg_mode = match mode {
            FlockMode::Exclusive => "ExclusiveLock",
            FlockMode::Shared => "ShareLock",
        };
        let answer = self
            .client
            .query_opt(
                &self.statements.is_held,
                &[&classid, &objid, &pg_mode, &self.nonce],
            )
            .await;
        let row = self.check(answer.map_err(classify)?, 1)?;
        row.try_get(0).map_err(protocol)
    }

    /// Everyone holding or waiting for the lock, on this session.
    pub(crate) async fn holders(&self, key: i64) -> Result<Vec<PgHolder>, Failure> {
        let (classid, objid) = lock_columns(key);
        let rows = self
            .client
            .query(&self.statements.holders, &[&classid, &objid])
            .await
            .map_err(classify)?;
        rows.iter().map(holder_from_row).collect()
    }

    /// Sends the statements of a `try` + unlock pair as they are, for the
    /// benchmarks' baseline.
    async fn raw_pair(&self, key: i64, mode: FlockMode) -> Result<bool, tokio_postgres::Error> {
        let s = &self.statements;
        let (try_stmt, unlock) = match mode {
            FlockMode::Exclusive => (&s.try_exclusive, &s.unlock_exclusive),
            FlockMode::Shared => (&s.try_shared, &s.unlock_shared),
        };
        let (prefix, suffix) = &self.stamp;
        let nonce = &self.nonce;
        let row = self
            .client
            .query_one(try_stmt, &[&key, prefix, suffix, nonce])
            .await?;
        let got: bool = row.get(0);
        if got {
            self.client.query_one(unlock, &[&key, nonce]).await?;
        }
        Ok(got)
    }
}

impl Op {
    /// Whether the statement waits for the lock (and takes `lock_timeout`).
    pub(crate) fn waits(self) -> bool {
        matches!(self, Op::Wait(_) | Op::Upgrade)
    }
}

/// What a session's calls and its heartbeat share.
struct Core {
    /// `None` once shut down.
    rt: Mutex<Option<Runtime>>,
    conn: Conn,
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

/// The blocking driver: a session on a runtime of its own, which the
/// calling thread drives during each call, and a heartbeat thread.
pub(crate) struct Session {
    core: Arc<Core>,
    /// Dropping it stops the heartbeat thread.
    _heartbeat: mpsc::Sender<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("backend_pid", &self.core.conn.backend_pid)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects and starts the heartbeat.
    pub(crate) fn open(url: &str) -> Result<Session, ConnectError> {
        let rt = new_runtime().map_err(|e| ConnectError::Connect(Box::new(e)))?;
        let opened = drive(
            &rt,
            within(
                CONNECT_TIMEOUT + ROUND_TRIP,
                Conn::open(url, |driver| {
                    tokio::spawn(driver);
                }),
            ),
        );
        let conn = match opened {
            Ok(Ok(conn)) => conn,
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
        let core = Arc::new(Core {
            rt: Mutex::new(Some(rt)),
            conn,
            lost: Mutex::new(None),
            watch: Mutex::new(None),
            expired: tokio::sync::Notify::new(),
        });
        let heartbeat = start_heartbeat(Arc::downgrade(&core))
            .map_err(|e| ConnectError::Connect(Box::new(e)))?;
        Ok(Session {
            core,
            _heartbeat: heartbeat,
        })
    }

    /// The server process serving this session.
    pub(crate) fn backend_pid(&self) -> i32 {
        self.core.conn.backend_pid
    }

    /// A loss the heartbeat or an earlier call found, or a closed connection.
    pub(crate) fn known_loss(&self) -> Option<PgLoss> {
        let lost = *self
            .core
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lost.or_else(|| self.core.conn.client.is_closed().then_some(PgLoss::Closed))
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
    /// deadline) and an optional cancel token; marks the session lost when
    /// it is.
    fn round_trip<T, F>(
        &self,
        fut: F,
        deadline: Option<Duration>,
        token: Option<&CancelToken>,
    ) -> Result<T, Failure>
    where
        F: Future<Output = Result<T, Failure>> + Send,
        T: Send,
    {
        let core = &*self.core;
        let answer = self.run(with_cancel(
            async {
                match deadline {
                    // The heartbeat's watch: up to one beat late, no timer.
                    Some(d) if d == ROUND_TRIP => watched(core, d, fut).await,
                    Some(d) => tokio::time::timeout(d, fut).await.map_err(|_| d),
                    None => Ok(fut.await),
                }
            },
            token,
            &core.conn,
        ))?;
        settle(answer, |loss| self.abandon(loss))
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
        let deadline = match (op.waits(), timeout) {
            (false, _) => Some(ROUND_TRIP),
            (true, Some(d)) => Some(d.saturating_add(ROUND_TRIP)),
            (true, None) => None,
        };
        let result = self.round_trip(self.core.conn.acquire(op, key, timeout), deadline, token);
        if let (Some(token), Op::Wait(mode)) = (token, op) {
            if token.is_cancelled()
                && !matches!(result, Err(Failure::Lost(..) | Failure::Pooler(_)))
            {
                // The caller gave up: whether the grant or the cancel came
                // first (or the cancel hit the statement after the grant),
                // the session must not keep the lock.
                return self.release_after_cancel(mode, key);
            }
        }
        result
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
        self.round_trip(self.core.conn.release(mode, key), Some(ROUND_TRIP), None)
    }

    /// Whether `pg_locks` shows this session holding the lock in `mode`.
    pub(crate) fn holds(&self, mode: FlockMode, key: i64) -> Result<bool, Failure> {
        self.round_trip(self.core.conn.holds(mode, key), Some(ROUND_TRIP), None)
    }

    /// Everyone holding or waiting for the lock, on this session.
    pub(crate) fn holders(&self, key: i64) -> Result<Vec<PgHolder>, Failure> {
        self.round_trip(self.core.conn.holders(key), Some(ROUND_TRIP), None)
    }

    /// Sends the statements of a `try` + unlock pair as they are, for the
    /// benchmarks' baseline.
    pub(crate) fn raw_pair(&self, key: i64, mode: FlockMode) -> Result<bool, Failure> {
        self.run(self.core.conn.raw_pair(key, mode))?
            .map_err(classify)
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
                match rt.block_on(within(
                    ROUND_TRIP,
                    core.conn.client.simple_query("SELECT 1"),
                )) {
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
/// setup (so a role that may not create the sequence can list them), closed
/// afterwards.
pub(crate) fn holders_once(url: &str, key: i64) -> Result<Vec<PgHolder>, ConnectError> {
    let (classid, objid) = lock_columns(key);
    let rt = new_runtime().map_err(|e| ConnectError::Connect(Box::new(e)))?;
    let rows = drive(
        &rt,
        within(CONNECT_TIMEOUT + ROUND_TRIP, async {
            let target = Target::parse(url)?;
            let (client, driver) =
                connect_tls(&target.config, &target.tls, &target.connector).await?;
            tokio::spawn(driver);
            let rows = client.query(HOLDERS_SQL, &[&classid, &objid]).await?;
            rows.iter()
                .map(holder_from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|f| match f {
                    Failure::Other(e) => ConnectError::Connect(Box::new(e)),
                    other => ConnectError::Connect(format!("{other:?}").into()),
                })
        }),
    );
    rt.shutdown_background();
    rows.map_err(|_| ConnectError::Connect("no answer from the server within 15s".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_timeout_is_rounded_up_and_unlimited_beyond_its_range() {
        let ms = |d| server_lock_timeout(Some(d));
        assert_eq!(server_lock_timeout(None), "0");
        assert_eq!(ms(Duration::ZERO), "1");
        assert_eq!(ms(Duration::from_micros(2_900)), "3");
        assert_eq!(ms(Duration::from_millis(250)), "250");
        assert_eq!(
            ms(Duration::from_millis(i32::MAX as u64)),
            i32::MAX.to_string()
        );
        assert_eq!(ms(Duration::from_millis(i32::MAX as u64 + 1)), "0");
        assert_eq!(ms(Duration::MAX), "0");
    }
}
