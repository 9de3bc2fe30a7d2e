//! Who holds or waits for a PostgreSQL advisory lock: a leaf type that the
//! error names, and the `application_name` format that carries the client's
//! identity.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::mode::FlockMode;

/// The prefix of the `application_name` of every session this crate opens.
pub(crate) const APP_PREFIX: &str = "flockguard";

/// One session holding or waiting for an advisory lock, from `pg_locks`
/// joined with `pg_stat_activity`.
///
/// The client fields are filled for sessions opened by this crate, which
/// put them into `application_name`; for other sessions only the server's
/// view (`backend_pid`, `client_addr`, `user`) is known.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgHolder {
    /// The server process serving the session (`pg_backend_pid()`), the
    /// argument to `pg_terminate_backend`.
    pub backend_pid: i32,
    /// The mode held or waited for.
    pub mode: FlockMode,
    /// Whether the session waits for the lock rather than holds it.
    pub waiting: bool,
    /// Since when: for a waiter the start of the wait (`pg_locks.waitstart`),
    /// for a holder opened by this crate the moment the lock was granted.
    pub since: Option<SystemTime>,
    /// The client's process id, for sessions opened by this crate.
    pub client_pid: Option<u32>,
    /// The client's host name, for sessions opened by this crate
    /// (truncated to what fits in `application_name`).
    pub client_host: Option<String>,
    /// The client's address as the server sees it; `None` over a Unix socket.
    pub client_addr: Option<IpAddr>,
    /// The role the session logged in as.
    pub user: Option<String>,
    /// The session's `application_name`.
    pub application_name: String,
}

impl fmt::Display for PgHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend {}", self.backend_pid)?;
        match (self.client_pid, &self.client_host) {
            (Some(pid), Some(host)) => write!(f, " (process {pid} on {host})")?,
            (Some(pid), None) => write!(f, " (process {pid})")?,
            _ if !self.application_name.is_empty() => {
                write!(f, " ({:?})", self.application_name)?;
            }
            _ => {}
        }
        if let Some(addr) = self.client_addr {
            write!(f, " from {addr}")?;
        }
        let verb = if self.waiting { "waits for" } else { "holds" };
        write!(f, " {verb} {}", self.mode)?;
        if let Some(age) = self
            .since
            .and_then(|t| SystemTime::now().duration_since(t).ok())
        {
            write!(f, " for {}", DisplayAge(age))?;
        }
        Ok(())
    }
}

struct DisplayAge(Duration);

impl fmt::Display for DisplayAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d < Duration::from_secs(1) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{:.1}s", d.as_secs_f64())
        }
    }
}

/// The `application_name` a session starts with: `flockguard PID - HOST`.
/// When a lock is granted the `-` becomes the grant time in milliseconds
/// since the Unix epoch (see the lock statements). PostgreSQL keeps 63
/// bytes of printable ASCII, so the host name comes last and may be cut.
pub(crate) fn app_name(pid: u32, host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    let mut name = format!("{APP_PREFIX} {pid} - {host}");
    name.truncate(63);
    name
}

/// The parts of an `application_name` written by [`app_name`]:
/// (client pid, grant time, client host).
pub(crate) fn parse_app_name(name: &str) -> Option<(u32, Option<SystemTime>, Option<String>)> {
    let mut parts = name.splitn(4, ' ');
    if parts.next()? != APP_PREFIX {
        return None;
    }
    let pid = parts.next()?.parse().ok()?;
    let since = parts
        .next()?
        .parse::<u64>()
        .ok()
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let host = parts.next().filter(|h| !h.is_empty()).map(str::to_owned);
    Some((pid, since, host))
}

/// Why a PostgreSQL session, and every lock it held, is gone or can no
/// longer be vouched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgLoss {
    /// The connection closed: the server ended the session
    /// (`pg_terminate_backend`, a restart, `idle_session_timeout`) or the
    /// network reset it.
    Closed,
    /// The server did not answer within this long; the session is
    /// abandoned, and the server frees its locks once it notices.
    NoAnswer(Duration),
    /// The session answered, but the lock was not held by it any more.
    NotHeld,
    /// A statement ran in a different server session than the one that took
    /// the lock: a connection pooler in transaction or statement mode sits in
    /// between, and session locks cannot work through it.
    SessionChanged {
        /// The backend that took the lock.
        expected: i32,
        /// The backend that answered.
        actual: i32,
    },
}

impl fmt::Display for PgLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgLoss::Closed => f.write_str("the connection to the server closed"),
            PgLoss::NoAnswer(d) => write!(f, "the server did not answer within {}", DisplayAge(*d)),
            PgLoss::NotHeld => f.write_str("the session no longer holds it"),
            PgLoss::SessionChanged { expected, actual } => write!(
                f,
                "backend {actual} answered instead of backend {expected}, so a pooler in transaction mode is in between (connect to the server directly or through a session-mode pool)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_round_trip() {
        let name = app_name(4242, "build-7.example");
        assert_eq!(name, "flockguard 4242 - build-7.example");
        assert_eq!(
            parse_app_name(&name),
            Some((4242, None, Some("build-7.example".to_owned())))
        );
        let granted = "flockguard 4242 1764582000123 build-7";
        let (_, since, _) = parse_app_name(granted).unwrap();
        assert_eq!(
            since,
            Some(UNIX_EPOCH + Duration::from_millis(1_764_582_000_123))
        );
    }

    #[test]
    fn app_names_fit_and_stay_printable() {
        let name = app_name(4_194_304, &"h\u{e9}".repeat(40));
        assert!(name.len() <= 63);
        assert!(name.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        assert!(parse_app_name("psql").is_none());
        assert!(parse_app_name("flockguard x - h").is_none());
    }

    #[test]
    fn holders_read_as_sentences() {
        let holder = PgHolder {
            backend_pid: 77,
            mode: FlockMode::Exclusive,
            waiting: false,
            since: None,
            client_pid: Some(12),
            client_host: Some("ci-1".into()),
            client_addr: Some("127.0.0.1".parse().unwrap()),
            user: Some("app".into()),
            application_name: "flockguard 12 - ci-1".into(),
        };
        assert_eq!(
            holder.to_string(),
            "backend 77 (process 12 on ci-1) from 127.0.0.1 holds exclusive"
        );
    }
}
