//! The PostgreSQL backend's error type: opaque, with a [`ErrorKind`] to
//! branch on, the lock name, and the client's error as its source.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::time::Duration;

use super::holder::{PgHolder, PgLoss};
use crate::mode::FlockMode;
use crate::LockError;

/// What went wrong with a PostgreSQL advisory lock; the error's
/// [`kind`](Error::kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The lock name cannot be used (it is empty).
    InvalidName,
    /// No session could be opened: the URL is malformed, the server is
    /// unreachable or refused the login, or it is older than PostgreSQL 14.
    Connect,
    /// The TLS handshake failed, or TLS was required and not offered: the
    /// message names the cause (an unknown certificate authority, a host
    /// name the certificate does not cover, a server without TLS, an
    /// unreadable `sslrootcert`).
    Tls,
    /// A non-blocking attempt found the lock held in a conflicting mode by
    /// another session.
    WouldBlock,
    /// The server ended a wait at its deadline (`lock_timeout`, SQLSTATE
    /// 55P03); [`Error::holders`] lists who held or waited.
    Timeout,
    /// A wait was given up through its [`CancelToken`](crate::CancelToken);
    /// the server-side wait was cancelled, and a lock granted meanwhile was
    /// released.
    Cancelled,
    /// Upgrading would deadlock with another shared holder that is
    /// upgrading (SQLSTATE 40P01); the shared lock is still held.
    Deadlock,
    /// The session is gone or cannot be vouched for: every lock it held
    /// must be assumed lost, and another client may hold it now.
    Lost(PgLoss),
    /// The fencing-token sequence `public.flockguard_fence` is missing and
    /// the role may not create it, or the role may not use it.
    Fencing,
    /// A connection pooler in transaction or statement mode sits between
    /// the client and the server, so session locks cannot work through it;
    /// a lock this session held must be assumed lost.
    Pooler,
    /// The server refused a statement for another reason.
    Query,
}

/// An error from [`flockguard::pg`](super): a PostgreSQL advisory lock could
/// not be opened, taken, converted, checked or released.
///
/// The message names the lock and says what to do; [`kind`](Self::kind)
/// tells the cases apart, and the client's or server's error is the
/// [`source`](std::error::Error::source).
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    name: String,
    /// The mode requested, or for [`ErrorKind::Lost`] the mode held.
    mode: Option<FlockMode>,
    waited: Duration,
    holders: Vec<PgHolder>,
    /// More about the cause, as a lower-case clause.
    detail: Option<Cow<'static, str>>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, name: &str) -> Error {
        Error(Box::new(Inner {
            kind,
            name: name.to_owned(),
            mode: None,
            waited: Duration::ZERO,
            holders: Vec::new(),
            detail: None,
            source: None,
        }))
    }

    pub(crate) fn with_mode(mut self, mode: Option<FlockMode>) -> Error {
        self.0.mode = mode;
        self
    }

    pub(crate) fn with_waited(mut self, waited: Duration) -> Error {
        self.0.waited = waited;
        self
    }

    pub(crate) fn with_holders(mut self, holders: Vec<PgHolder>) -> Error {
        self.0.holders = holders;
        self
    }

    pub(crate) fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Error {
        self.0.detail = Some(detail.into());
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: Option<impl Into<Box<dyn std::error::Error + Send + Sync>>>,
    ) -> Error {
        self.0.source = source.map(Into::into);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The mode that was requested, or for a lost lock the mode that was
    /// held (`None` if the session held no lock).
    pub fn mode(&self) -> Option<FlockMode> {
        self.0.mode
    }

    /// How long the call waited, for [`ErrorKind::Timeout`] and
    /// [`ErrorKind::Cancelled`].
    pub fn waited(&self) -> Duration {
        self.0.waited
    }

    /// Who held or waited for the lock when a wait timed out (empty if none
    /// could be listed, and for other errors).
    pub fn holders(&self) -> &[PgHolder] {
        &self.0.holders
    }

    /// Why the session was lost, for [`ErrorKind::Lost`].
    pub fn loss(&self) -> Option<PgLoss> {
        match self.0.kind {
            ErrorKind::Lost(loss) => Some(loss),
            _ => None,
        }
    }

    /// The server's SQLSTATE, when the server refused a statement.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        self.0
            .source
            .as_deref()
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .and_then(tokio_postgres::Error::code)
    }

    /// Whether the lock is held elsewhere ([`ErrorKind::WouldBlock`]).
    pub fn is_would_block(&self) -> bool {
        self.0.kind == ErrorKind::WouldBlock
    }

    /// Whether a wait ended at its deadline ([`ErrorKind::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        self.0.kind == ErrorKind::Timeout
    }

    /// Whether a wait was cancelled ([`ErrorKind::Cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        self.0.kind == ErrorKind::Cancelled
    }

    /// Whether the session, and any lock it held, is lost
    /// ([`ErrorKind::Lost`]).
    pub fn is_lost(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Lost(_))
    }

    /// The [`io::ErrorKind`] this error converts to.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self.0.kind {
            ErrorKind::InvalidName => io::ErrorKind::InvalidInput,
            ErrorKind::Connect | ErrorKind::Tls => io::ErrorKind::NotConnected,
            ErrorKind::WouldBlock => io::ErrorKind::WouldBlock,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::Lost(_) => io::ErrorKind::ConnectionAborted,
            ErrorKind::Fencing => io::ErrorKind::PermissionDenied,
            ErrorKind::Pooler => io::ErrorKind::Unsupported,
            // Not Interrupted: std's retry loops would treat it as "try again".
            ErrorKind::Cancelled | ErrorKind::Deadlock | ErrorKind::Query => io::ErrorKind::Other,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.0;
        let mut d = f.debug_struct("Error");
        d.field("kind", &i.kind).field("name", &i.name);
        if let Some(mode) = i.mode {
            d.field("mode", &mode);
        }
        if !i.waited.is_zero() {
            d.field("waited", &i.waited);
        }
        if !i.holders.is_empty() {
            d.field("holders", &i.holders);
        }
        if let Some(detail) = &i.detail {
            d.field("detail", detail);
        }
        if let Some(source) = &i.source {
            d.field("source", source);
        }
        d.finish()
    }
}

/// Formats a wait as `250ms` or `1.50s`.
struct Waited(Duration);

impl fmt::Display for Waited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < Duration::from_secs(1) {
            write!(f, "{}ms", self.0.as_millis())
        } else {
            write!(f, "{:.2}s", self.0.as_secs_f64())
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.0;
        let name = &i.name;
        let mode = i.mode.unwrap_or(FlockMode::Exclusive);
        let detail = i.detail.as_deref().unwrap_or("");
        match i.kind {
            ErrorKind::InvalidName => {
                write!(f, "`{name}` is not usable as a PostgreSQL lock name: {detail}")
            }
            ErrorKind::Connect => {
                write!(f, "cannot open a PostgreSQL session for lock `{name}`")?;
                if !detail.is_empty() {
                    // The detail names the cause and what to do.
                    return write!(f, ": {detail}");
                }
                f.write_str("; check the URL, that the server runs (PostgreSQL 14 or later) and accepts TCP connections from this host, and the role's credentials")
            }
            ErrorKind::Tls => write!(
                f,
                "cannot open a TLS session to PostgreSQL for lock `{name}`: {detail}"
            ),
            ErrorKind::WouldBlock => write!(
                f,
                "advisory lock `{name}` is held by another PostgreSQL session; {mode} lock not taken"
            ),
            ErrorKind::Timeout => {
                write!(
                    f,
                    "timed out after {} waiting for {mode} PostgreSQL lock `{name}`",
                    Waited(i.waited)
                )?;
                if i.holders.is_empty() {
                    return f.write_str("; no holder visible in pg_locks");
                }
                for (n, holder) in i.holders.iter().enumerate() {
                    f.write_str(if n == 0 { "; " } else { ", " })?;
                    write!(f, "{holder}")?;
                }
                Ok(())
            }
            ErrorKind::Cancelled => write!(
                f,
                "gave up waiting for {mode} PostgreSQL lock `{name}` after {}: cancelled",
                Waited(i.waited)
            ),
            ErrorKind::Deadlock => write!(
                f,
                "upgrading PostgreSQL lock `{name}` to exclusive would deadlock with another shared holder that is upgrading; the shared lock is still held: release it so the other upgrade can finish, then lock again"
            ),
            ErrorKind::Lost(reason) => match i.mode {
                Some(held) => write!(
                    f,
                    "{held} PostgreSQL lock `{name}` is lost: {reason}; another client may hold it now: stop the work it protects, then lock again (which reconnects)"
                ),
                None => write!(
                    f,
                    "the PostgreSQL session for lock `{name}` is lost: {reason}; lock again, which reconnects"
                ),
            },
            ErrorKind::Fencing => write!(
                f,
                "cannot use the fencing sequence for PostgreSQL lock `{name}`: the role may not create or use `public.flockguard_fence`; have the database owner run `CREATE SEQUENCE IF NOT EXISTS public.flockguard_fence; GRANT USAGE ON SEQUENCE public.flockguard_fence TO PUBLIC;`"
            ),
            ErrorKind::Pooler => {
                write!(f, "refusing PostgreSQL lock `{name}`: {detail}; ")?;
                if let Some(held) = i.mode {
                    write!(f, "the {held} lock this session held must be assumed lost; ")?;
                }
                f.write_str("session-level advisory locks need one server session per client session: connect to the server directly or through a pool in session mode (PgBouncer: pool_mode = session)")
            }
            ErrorKind::Query => {
                write!(f, "the PostgreSQL server refused a statement for lock `{name}`")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    /// Wraps the error, keeping its message and source; the kind is
    /// [`Error::io_kind`].
    fn from(err: Error) -> io::Error {
        io::Error::new(err.io_kind(), err)
    }
}

impl<T> LockError<T, Error> {
    /// Whether the lock is held elsewhere ([`Error::is_would_block`]).
    pub fn is_would_block(&self) -> bool {
        self.error.is_would_block()
    }

    /// Whether a wait ended at its deadline ([`Error::is_timeout`]).
    pub fn is_timeout(&self) -> bool {
        self.error.is_timeout()
    }

    /// Whether a wait was cancelled ([`Error::is_cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        self.error.is_cancelled()
    }

    /// Whether the session is lost ([`Error::is_lost`]).
    pub fn is_lost(&self) -> bool {
        self.error.is_lost()
    }
}

impl<T> From<LockError<T, Error>> for Error {
    /// Keeps the error; the handle is dropped.
    fn from(err: LockError<T, Error>) -> Error {
        err.error
    }
}

impl<T> From<LockError<T, Error>> for io::Error {
    /// As `From<Error>`; the handle is dropped.
    fn from(err: LockError<T, Error>) -> io::Error {
        err.error.into()
    }
}
