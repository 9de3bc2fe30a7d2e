//! The PostgreSQL backend against a real server.
//!
//! The server is named by `FLOCKGUARD_PG_URL` (`.ci/pg-server start` prints
//! one). Without it each test prints `SKIPPED <test>: <reason>` and returns;
//! with `FLOCKGUARD_PG_REQUIRED` set (as CI does) a missing URL fails.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flockguard::pg::{self, AsyncPgLock, Error, ErrorKind, PgGuard, PgLock, PgLoss};
use flockguard::{CancelToken, Exclusive, FlockMode, Shared, Wait};

use crate::support;
use crate::support::Child;

const WAIT: Duration = Duration::from_secs(30);

pub const CHILDREN: &[support::Role] = &[
    ("pg::hold", |a| child_hold(&url(), &a[0], &a[1])),
    ("pg::counter", |a| {
        child_counter(&url(), &a[0], &a[1], a[2].parse().unwrap())
    }),
    ("pg::leaks", |_| child_leaks(&url())),
    ("pg::async-threads", |_| child_async_threads(&url())),
    ("pg::unlocked", |a| {
        child_unlocked(&url(), &a[0], a[1].parse().unwrap())
    }),
];

/// In a child: the server URL the parent used.
fn url() -> String {
    std::env::var("FLOCKGUARD_PG_URL").expect("url")
}

/// The server URL, or `None` after printing why the test is skipped.
fn server(test: &str) -> Option<String> {
    match std::env::var("FLOCKGUARD_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("FLOCKGUARD_PG_REQUIRED").is_none(),
                "{test}: FLOCKGUARD_PG_REQUIRED is set but FLOCKGUARD_PG_URL is not"
            );
            support::skip(
                test,
                "no PostgreSQL server: FLOCKGUARD_PG_URL is not set (run `export FLOCKGUARD_PG_URL=$(.ci/pg-server start)`)",
            );
            None
        }
    }
}

/// A lock name no other test run uses.
fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}/{}/{nanos}", std::process::id())
}

/// Plain SQL beside the locks: a client on a runtime of its own.
struct Sql {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Sql {
    fn connect(url: &str) -> Sql {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (client, connection) = rt
            .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
            .expect("connect for plain SQL");
        rt.spawn(connection);
        Sql { rt, client }
    }

    fn exec(&self, sql: &str) {
        self.rt.block_on(self.client.batch_execute(sql)).unwrap();
    }

    fn i64(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> i64 {
        let row = self
            .rt
            .block_on(self.client.query_one(sql, params))
            .unwrap();
        row.get(0)
    }

    /// Advisory locks on `name`'s key: (backend pid, mode, granted).
    fn locks(&self, name: &str) -> Vec<(i32, String, bool)> {
        let key = pg::lock_key(name);
        let rows = self
            .rt
            .block_on(self.client.query(
                "SELECT pid, mode, granted FROM pg_locks WHERE locktype = 'advisory' \
                 AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1 ORDER BY pid",
                &[&key],
            ))
            .unwrap();
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    fn terminate(&self, pid: i32) {
        let row = self
            .rt
            .block_on(
                self.client
                    .query_one("SELECT pg_terminate_backend($1)", &[&pid]),
            )
            .unwrap();
        assert!(row.get::<_, bool>(0), "backend {pid} not terminated");
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// In a child: holds `name` in `mode`, prints `HELD <token>`, releases when
/// the parent closes stdin.
fn child_hold(url: &str, name: &str, mode: &str) {
    let lock = PgLock::connect(url, name).unwrap();
    let (token, held): (i64, Box<dyn std::any::Any>) = if mode == "exclusive" {
        let g = lock.lock::<Exclusive>().unwrap();
        (g.fencing_token(), Box::new(g))
    } else {
        let g = lock.lock::<Shared>().unwrap();
        (g.fencing_token(), Box::new(g))
    };
    support::tell(&format!("HELD {token}"));
    support::wait_for_parent(|_| {});
    drop(held);
}

#[test]
fn two_handles_in_one_process_contend() {
    let Some(url) = server("two_handles_in_one_process_contend") else {
        return;
    };
    let name = unique("contend");
    let a = PgLock::connect(&url, &name).unwrap();
    let b = PgLock::connect(&url, &name).unwrap();
    assert_eq!(a.key(), pg::lock_key(&name));
    let held = a.try_lock::<Exclusive>().unwrap();
    let err = b.try_lock::<Exclusive>().unwrap_err();
    assert!(err.is_would_block(), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    let b = err.into_inner();
    let err = b.try_lock::<Shared>().unwrap_err();
    assert!(err.is_would_block());
    assert_eq!(err.error.mode(), Some(FlockMode::Shared));
    let b = err.into_inner();
    let first = held.fencing_token();
    assert!(held.is_held().unwrap());
    let a = held.unlock().unwrap();
    let second = b.try_lock::<Exclusive>().unwrap();
    assert!(second.fencing_token() > first);
    // Readers share; a writer is refused beside them.
    let r1 = second.unlock().unwrap().try_lock::<Shared>().unwrap();
    let r2 = a.try_lock::<Shared>().unwrap();
    let c = PgLock::connect(&url, &name).unwrap();
    assert!(c.try_lock::<Exclusive>().unwrap_err().is_would_block());
    assert!(r2.fencing_token() > r1.fencing_token());
    drop((r1, r2));
}

#[test]
fn the_sql_key_expression_takes_the_same_lock() {
    let Some(url) = server("the_sql_key_expression_takes_the_same_lock") else {
        return;
    };
    let name = unique("sql-key-é");
    let sql = Sql::connect(&url);
    let key = sql.i64(
        "SELECT ('x' || left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 16))::bit(64)::bigint",
        &[&name],
    );
    assert_eq!(key, pg::lock_key(&name));
    sql.exec(&format!("SELECT pg_advisory_lock({key})"));
    let lock = PgLock::connect(&url, &name).unwrap();
    assert!(lock.try_lock::<Shared>().unwrap_err().is_would_block());
}

#[test]
fn two_processes_contend_and_holders_name_the_client() {
    let Some(url) = server("two_processes_contend_and_holders_name_the_client") else {
        return;
    };
    let name = unique("processes");
    let mut child = Child::spawn(&["pg::hold", &name, "exclusive"]);
    let line = child.expect_line("HELD", WAIT);
    let child_token: i64 = line[5..].parse().unwrap();
    let lock = PgLock::connect(&url, &name).unwrap();
    let err = lock.try_lock::<Shared>().unwrap_err();
    assert!(err.is_would_block());
    let holders = pg::holders(&url, &name).unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    let h = &holders[0];
    assert_eq!(h.client_pid, Some(child.pid()));
    assert_eq!(h.mode, FlockMode::Exclusive);
    assert!(!h.waiting);
    let age = std::time::SystemTime::now()
        .duration_since(h.since.expect("grant time"))
        .unwrap_or_default();
    assert!(age < WAIT, "{age:?}");
    let lock = err.into_inner();
    // Released by the child's exit; the waiter gets it.
    let waiter = std::thread::spawn(move || lock.lock_timeout::<Exclusive>(WAIT));
    wait_until("the waiter shows in pg_locks", || {
        pg::holders(&url, &name).unwrap().iter().any(|h| h.waiting)
    });
    let listed = pg::holders(&url, &name).unwrap();
    assert!(
        listed.iter().any(|h| h.waiting && h.since.is_some()),
        "{listed:?}"
    );
    assert!(child.release().success());
    let guard = waiter.join().unwrap().unwrap();
    assert!(guard.fencing_token() > child_token);
}

#[test]
fn downgrade_keeps_the_lock_while_a_writer_waits() {
    let Some(url) = server("downgrade_keeps_the_lock_while_a_writer_waits") else {
        return;
    };
    let name = unique("downgrade");
    let sql = Sql::connect(&url);
    let writer = PgLock::connect(&url, &name)
        .unwrap()
        .lock::<Exclusive>()
        .unwrap();
    assert!(writer.is_held().unwrap());
    let queued = PgLock::connect(&url, &name).unwrap();
    let waiter = std::thread::spawn(move || queued.lock_timeout::<Exclusive>(WAIT));
    wait_until("a writer queues", || sql.locks(&name).iter().any(|l| !l.2));
    let reader = writer.downgrade().unwrap();
    assert!(reader.is_held().unwrap());
    let locks = sql.locks(&name);
    assert!(locks.iter().any(|l| l.1 == "ShareLock" && l.2), "{locks:?}");
    assert!(
        !locks.iter().any(|l| l.1 == "ExclusiveLock" && l.2),
        "{locks:?}"
    );
    assert!(!waiter.is_finished());
    let back = reader.unlock().unwrap();
    let got = waiter.join().unwrap().unwrap();
    assert!(got.is_held().unwrap());
    drop(back);
}

#[test]
fn try_upgrade_keeps_the_shared_lock_on_contention() {
    let Some(url) = server("try_upgrade_keeps_the_shared_lock_on_contention") else {
        return;
    };
    let name = unique("try-upgrade");
    let a = PgLock::connect(&url, &name)
        .unwrap()
        .try_lock::<Shared>()
        .unwrap();
    let b = PgLock::connect(&url, &name)
        .unwrap()
        .try_lock::<Shared>()
        .unwrap();
    let first = a.fencing_token();
    let err = a.try_upgrade().unwrap_err();
    assert!(err.is_would_block(), "{err}");
    let a: PgGuard<Shared> = err.into_inner();
    assert!(a.is_held().unwrap());
    assert_eq!(a.fencing_token(), first);
    let c = PgLock::connect(&url, &name).unwrap();
    assert!(c.try_lock::<Exclusive>().unwrap_err().is_would_block());
    b.unlock().unwrap();
    let w = a.try_upgrade().unwrap();
    assert!(w.is_held().unwrap());
    assert!(w.fencing_token() > first);
    let c = PgLock::connect(&url, &name).unwrap();
    assert!(c.try_lock::<Shared>().unwrap_err().is_would_block());
    // The shared hold was released by the upgrade: unlocking exclusive frees it.
    let lock = w.unlock().unwrap();
    let sql = Sql::connect(&url);
    assert!(sql.locks(&name).is_empty(), "{:?}", sql.locks(&name));
    drop(lock);
}

#[test]
fn two_upgrading_readers_deadlock_and_the_loser_keeps_its_shared_lock() {
    let Some(url) = server("two_upgrading_readers_deadlock_and_the_loser_keeps_its_shared_lock")
    else {
        return;
    };
    let name = unique("deadlock");
    let a = PgLock::connect(&url, &name)
        .unwrap()
        .lock::<Shared>()
        .unwrap();
    let b = PgLock::connect(&url, &name)
        .unwrap()
        .lock::<Shared>()
        .unwrap();
    let ta = std::thread::spawn(move || a.upgrade());
    let tb = std::thread::spawn(move || b.upgrade());
    // The server fails one at once (after deadlock_timeout); release that one
    // so the other's upgrade completes.
    let deadline = Instant::now() + WAIT;
    let (loser, winner) = loop {
        assert!(Instant::now() < deadline, "no deadlock reported");
        if ta.is_finished() {
            break (ta.join().unwrap(), tb);
        }
        if tb.is_finished() {
            break (tb.join().unwrap(), ta);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let err = loser.unwrap_err();
    assert_eq!(err.error.kind(), ErrorKind::Deadlock, "{err}");
    assert!(err.to_string().contains(&name));
    let kept = err.into_inner();
    assert!(
        kept.is_held().unwrap(),
        "the loser must keep its shared lock"
    );
    assert!(!winner.is_finished());
    kept.unlock().unwrap();
    let w = winner.join().unwrap().unwrap();
    assert!(w.is_held().unwrap());
}

#[test]
fn the_server_enforces_the_deadline_and_reports_the_holders() {
    let Some(url) = server("the_server_enforces_the_deadline_and_reports_the_holders") else {
        return;
    };
    let name = unique("timeout");
    let held = PgLock::connect(&url, &name)
        .unwrap()
        .lock::<Exclusive>()
        .unwrap();
    let lock = PgLock::connect(&url, &name).unwrap();
    let start = Instant::now();
    let err = lock
        .lock_timeout::<Shared>(Duration::from_millis(300))
        .unwrap_err();
    let took = start.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let holders = pg_holders(&err.error);
    assert_eq!(holders.len(), 1, "{err}");
    assert_eq!(holders[0].client_pid, Some(std::process::id()));
    assert!(
        err.to_string()
            .contains(&format!("process {}", std::process::id())),
        "{err}"
    );
    // The session is usable again.
    let lock = err.into_inner();
    let err = lock.lock_timeout::<Exclusive>(Duration::ZERO).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    drop(held);
    let got = err.into_inner().lock_timeout::<Exclusive>(WAIT).unwrap();
    assert!(got.is_held().unwrap());
}

/// The holders a timeout error carries; empty for other errors.
fn pg_holders(err: &Error) -> Vec<pg::PgHolder> {
    err.holders().to_vec()
}

#[test]
fn cancel_ends_the_server_side_wait_and_never_leaves_a_lock_held() {
    let Some(url) = server("cancel_ends_the_server_side_wait_and_never_leaves_a_lock_held") else {
        return;
    };
    let name = unique("cancel");
    let sql = Sql::connect(&url);
    let held = PgLock::connect(&url, &name)
        .unwrap()
        .lock::<Exclusive>()
        .unwrap();
    let token = CancelToken::new();
    let lock = PgLock::connect(&url, &name).unwrap();
    let pid = lock.backend_pid().unwrap();
    let t = token.clone();
    let waiter = std::thread::spawn(move || lock.lock_with::<Exclusive>(Wait::forever().cancel(t)));
    wait_until("the waiter queues", || {
        sql.locks(&name).iter().any(|l| l.0 == pid)
    });
    let start = Instant::now();
    token.cancel();
    let err = waiter.join().unwrap().unwrap_err();
    assert!(err.error.is_cancelled(), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        !sql.locks(&name).iter().any(|l| l.0 == pid),
        "{:?}",
        sql.locks(&name)
    );
    drop(held);

    // Cancel at about the moment the holder lets go: whichever wins, a
    // caller that got Cancelled holds nothing, one that got the guard holds it.
    let (mut cancelled, mut granted) = (0, 0);
    let mut lock = err.into_inner();
    for round in 0..40u64 {
        let holder = PgLock::connect(&url, &name)
            .unwrap()
            .lock::<Exclusive>()
            .unwrap();
        let pid = lock.backend_pid().unwrap();
        let token = CancelToken::new();
        let t = token.clone();
        let waiter =
            std::thread::spawn(move || lock.lock_with::<Exclusive>(Wait::forever().cancel(t)));
        wait_until("the waiter queues", || {
            sql.locks(&name).iter().any(|l| l.0 == pid)
        });
        let unlocker = std::thread::spawn(move || holder.unlock().unwrap());
        std::thread::sleep(Duration::from_micros(round * 25));
        token.cancel();
        let back = unlocker.join().unwrap();
        drop(back);
        match waiter.join().unwrap() {
            Ok(guard) => {
                granted += 1;
                assert!(guard.is_held().unwrap());
                lock = guard.unlock().unwrap();
            }
            Err(err) => {
                cancelled += 1;
                assert!(err.error.is_cancelled(), "{err}");
                let mine: Vec<_> = sql
                    .locks(&name)
                    .into_iter()
                    .filter(|l| l.0 == pid)
                    .collect();
                assert!(mine.is_empty(), "a cancelled caller holds {mine:?}");
                lock = err.into_inner();
            }
        }
    }
    eprintln!("cancel race: {cancelled} cancelled, {granted} granted first");
    assert!(cancelled > 0);
}

#[test]
fn fencing_tokens_increase_across_1000_acquisitions_by_four_clients() {
    let Some(url) = server("fencing_tokens_increase_across_1000_acquisitions_by_four_clients")
    else {
        return;
    };
    let name = unique("fencing");
    let order = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|client| {
            let (url, name, order) = (url.clone(), name.clone(), Arc::clone(&order));
            std::thread::spawn(move || {
                let mut lock = PgLock::connect(&url, &name).unwrap();
                for i in 0..250 {
                    // Every fourth acquisition is shared.
                    if (i + client) % 4 == 0 {
                        let g = lock.lock::<Shared>().unwrap();
                        order.lock().unwrap().push((g.fencing_token(), false));
                        lock = g.unlock().unwrap();
                    } else {
                        let g = lock.lock::<Exclusive>().unwrap();
                        order.lock().unwrap().push((g.fencing_token(), true));
                        lock = g.unlock().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let order = order.lock().unwrap();
    assert_eq!(order.len(), 1000);
    let mut sorted: Vec<i64> = order.iter().map(|e| e.0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 1000, "tokens repeat");
    // Each token is recorded while its lock is held, so an exclusive
    // acquisition was granted after everything recorded before it and before
    // everything recorded after it: its token must sit between them. Only
    // readers that overlapped may record out of token order.
    let mut exclusive = 0;
    for (i, &(token, is_exclusive)) in order.iter().enumerate() {
        if !is_exclusive {
            continue;
        }
        exclusive += 1;
        assert!(
            order[..i].iter().all(|e| e.0 < token),
            "token {token} at {i} not above all earlier"
        );
        assert!(
            order[i + 1..].iter().all(|e| e.0 > token),
            "token {token} at {i} not below all later"
        );
    }
    assert_eq!(exclusive, 750);
    eprintln!(
        "fencing: 1000 acquisitions by 4 clients, tokens {}..={}, all distinct",
        sorted[0], sorted[999]
    );
}

/// In a child: `ops` iterations on the counter table `table`, guarded by
/// lock `name`: writers read, pause and write back +1; readers read twice
/// across a pause and check nothing changed.
fn child_counter(url: &str, name: &str, table: &str, ops: u32) {
    let sql = Sql::connect(url);
    let mut lock = PgLock::connect(url, name).unwrap();
    let mut writes = 0;
    for i in 0..ops {
        if i % 2 == 0 {
            let g = lock.lock::<Exclusive>().unwrap();
            let v = sql.i64(&format!("SELECT n FROM {table}"), &[]);
            std::thread::sleep(Duration::from_micros(200));
            sql.exec(&format!("UPDATE {table} SET n = {}", v + 1));
            writes += 1;
            lock = g.unlock().unwrap();
        } else {
            let g = lock.lock::<Shared>().unwrap();
            let before = sql.i64(&format!("SELECT n FROM {table}"), &[]);
            std::thread::sleep(Duration::from_micros(200));
            let after = sql.i64(&format!("SELECT n FROM {table}"), &[]);
            assert_eq!(before, after, "a write happened under a shared lock");
            lock = g.unlock().unwrap();
        }
    }
    support::tell(&format!("DONE {writes}"));
}

/// In a child: the writers' read-pause-write of [`child_counter`] with no
/// lock, the control that shows the counter test can fail.
fn child_unlocked(url: &str, table: &str, writes: u32) {
    let sql = Sql::connect(url);
    for _ in 0..writes {
        let v = sql.i64(&format!("SELECT n FROM {table}"), &[]);
        std::thread::sleep(Duration::from_micros(200));
        sql.exec(&format!("UPDATE {table} SET n = {}", v + 1));
    }
    support::tell("DONE");
}

#[test]
fn without_the_lock_the_counter_loses_updates() {
    let Some(url) = server("without_the_lock_the_counter_loses_updates") else {
        return;
    };
    let table = format!("flockguard_control_{}", std::process::id());
    let sql = Sql::connect(&url);
    sql.exec(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (n bigint); INSERT INTO {table} VALUES (0)"
    ));
    let mut children: Vec<Child> = (0..8)
        .map(|_| Child::spawn(&["pg::unlocked", &table, "50"]))
        .collect();
    for c in &mut children {
        c.expect_line("DONE", Duration::from_secs(300));
    }
    for c in children {
        assert!(c.release().success());
    }
    let n = sql.i64(&format!("SELECT n FROM {table}"), &[]);
    sql.exec(&format!("DROP TABLE {table}"));
    eprintln!(
        "control: 8 processes, 400 unlocked writes, counter {n}, lost {}",
        400 - n
    );
    assert!(
        n < 400,
        "no update was lost without the lock; the counter test proves nothing"
    );
}

#[test]
fn eight_processes_lose_no_update() {
    let Some(url) = server("eight_processes_lose_no_update") else {
        return;
    };
    let name = unique("counter");
    let table = format!("flockguard_counter_{}", std::process::id());
    let sql = Sql::connect(&url);
    sql.exec(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (n bigint); INSERT INTO {table} VALUES (0)"
    ));
    let ops = 100u32;
    let mut children: Vec<Child> = (0..8)
        .map(|_| Child::spawn(&["pg::counter", &name, &table, &ops.to_string()]))
        .collect();
    let mut writes = 0i64;
    for c in &mut children {
        let line = c.expect_line("DONE", Duration::from_secs(300));
        writes += line[5..].parse::<i64>().unwrap();
    }
    for c in children {
        assert!(c.release().success());
    }
    let n = sql.i64(&format!("SELECT n FROM {table}"), &[]);
    sql.exec(&format!("DROP TABLE {table}"));
    eprintln!(
        "counter: 8 processes, {} operations, {writes} writes, counter {n}, lost {}",
        8 * ops,
        writes - n
    );
    assert_eq!(n, writes, "lost updates");
    assert_eq!(writes, 8 * i64::from(ops) / 2);
}

#[test]
fn a_terminated_session_is_reported_lost_and_the_lock_goes_to_a_waiter() {
    let Some(url) = server("a_terminated_session_is_reported_lost_and_the_lock_goes_to_a_waiter")
    else {
        return;
    };
    let name = unique("terminated");
    let sql = Sql::connect(&url);
    let lock = PgLock::connect(&url, &name).unwrap();
    let pid = lock.backend_pid().unwrap();
    let held = lock.lock::<Exclusive>().unwrap();
    let first = held.fencing_token();
    let waiter = PgLock::connect(&url, &name).unwrap();
    let w = std::thread::spawn(move || {
        let g = waiter.lock_timeout::<Exclusive>(WAIT);
        (Instant::now(), g)
    });
    wait_until("the waiter queues", || {
        sql.locks(&name).iter().any(|l| !l.2)
    });
    let killed = Instant::now();
    sql.terminate(pid);
    let (at, got) = w.join().unwrap();
    let got = got.unwrap();
    eprintln!(
        "terminated: waiter granted {:?} after pg_terminate_backend",
        at - killed
    );
    assert!(got.fencing_token() > first);
    let err = held.is_held().unwrap_err();
    assert!(err.is_lost(), "{err}");
    assert_eq!(err.mode(), Some(FlockMode::Exclusive), "{err}");
    let err = held.unlock().unwrap_err();
    assert!(err.is_lost(), "{err}");
    // The handle reconnects at its next acquisition.
    drop(got);
    let again = err.into_inner().lock_timeout::<Exclusive>(WAIT).unwrap();
    assert!(again.is_held().unwrap());
}

/// A TCP proxy on loopback that forwards to `target` until `cut`, then
/// swallows everything in both directions while keeping both connections
/// open: no FIN, no RST, as a partition does.
struct Blackhole {
    port: u16,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Blackhole {
    fn start(target: std::net::SocketAddr) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (Arc::clone(&cut), Arc::clone(&streams));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(target) else {
                    return;
                };
                {
                    let mut all = s.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let cut = Arc::clone(&c);
                    std::thread::spawn(move || pump(from, to, &cut));
                }
            }
        });
        Blackhole { port, cut, streams }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                // Keep the other side open after a cut: a partition says nothing.
                if !cut.load(Ordering::SeqCst) {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => {
                if !cut.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for s in self.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn a_partitioned_holder_loses_the_lock_within_the_bound() {
    let Some(url) = server("a_partitioned_holder_loses_the_lock_within_the_bound") else {
        return;
    };
    let name = unique("partition");
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)] // Unix sockets exist only on unix
        _ => {
            support::skip(
                "a_partitioned_holder_loses_the_lock_within_the_bound",
                "the server URL is not TCP",
            );
            return;
        }
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let target: std::net::SocketAddr = format!("{host}:{port}").parse().unwrap();
    assert!(
        target.ip().is_loopback(),
        "the partition test only cuts loopback traffic"
    );
    let proxy = Blackhole::start(target);
    let via_proxy = url.replacen(&format!(":{port}"), &format!(":{}", proxy.port), 1);
    assert_ne!(via_proxy, url);

    let held = PgLock::connect(&via_proxy, &name)
        .unwrap()
        .lock::<Exclusive>()
        .unwrap();
    let first = held.fencing_token();
    assert!(held.is_held().unwrap());
    // Let a heartbeat or two pass, then cut.
    std::thread::sleep(Duration::from_secs(3));
    proxy.cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let (bound, got, noticed) = std::thread::scope(|s| {
        // The holder asks at once: the round trip in flight gets no answer.
        let asked = s.spawn(|| (held.is_held(), cut_at.elapsed()));
        let other = PgLock::connect(&url, &name).unwrap();
        let got = other
            .lock_timeout::<Exclusive>(Duration::from_secs(30))
            .unwrap();
        let bound = cut_at.elapsed();
        (bound, got, asked.join().unwrap())
    });
    eprintln!("partition: another client got the lock {bound:?} after the cut");
    assert!(bound <= Duration::from_secs(15), "{bound:?}");
    assert!(got.fencing_token() > first);
    let (answer, after) = noticed;
    eprintln!("partition: the holder's is_held() failed {after:?} after the cut");
    let err = answer.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Lost(PgLoss::NoAnswer(_))),
        "{err}"
    );
    assert!(after <= Duration::from_secs(8), "{after:?}");
    let err = held.is_held().unwrap_err();
    assert!(err.is_lost(), "{err}");
    let err = held.unlock().unwrap_err();
    assert!(err.is_lost(), "{err}");
    drop(proxy);
}

/// One step of the model test, on handle `0..3`.
#[derive(Clone, Copy, Debug)]
enum Step {
    TryExclusive(usize),
    TryShared(usize),
    Unlock(usize),
    Downgrade(usize),
    TryUpgrade(usize),
    Drop(usize),
}

/// A handle in the model test and what the model says it holds.
enum Slot {
    Idle(PgLock),
    Shared(PgGuard<Shared>),
    Exclusive(PgGuard<Exclusive>),
    Empty,
}

impl Slot {
    fn held(&self) -> Option<FlockMode> {
        match self {
            Slot::Shared(_) => Some(FlockMode::Shared),
            Slot::Exclusive(_) => Some(FlockMode::Exclusive),
            _ => None,
        }
    }

    fn backend_pid(&self) -> Option<i32> {
        match self {
            Slot::Idle(l) => l.backend_pid(),
            Slot::Shared(g) => g.backend_pid(),
            Slot::Exclusive(g) => g.backend_pid(),
            Slot::Empty => None,
        }
    }
}

#[test]
fn random_operation_sequences_match_the_model() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let Some(url) = server("random_operation_sequences_match_the_model") else {
        return;
    };
    let sql = Sql::connect(&url);
    let step = (0usize..6, 0usize..3).prop_map(|(k, h)| match k {
        0 => Step::TryExclusive(h),
        1 => Step::TryShared(h),
        2 => Step::Unlock(h),
        3 => Step::Downgrade(h),
        4 => Step::TryUpgrade(h),
        _ => Step::Drop(h),
    });
    let mut runner = TestRunner::new(Config {
        cases: 12,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(step, 1..24), |steps| {
            let name = unique("model");
            let mut slots: Vec<Slot> = (0..3)
                .map(|_| Slot::Idle(PgLock::connect(&url, &name).unwrap()))
                .collect();
            let mut last_token = 0i64;
            for step in steps {
                let h = match step {
                    Step::TryExclusive(h)
                    | Step::TryShared(h)
                    | Step::Unlock(h)
                    | Step::Downgrade(h)
                    | Step::TryUpgrade(h)
                    | Step::Drop(h) => h,
                };
                let others: Vec<FlockMode> = (0..3)
                    .filter(|&i| i != h)
                    .filter_map(|i| slots[i].held())
                    .collect();
                let slot = std::mem::replace(&mut slots[h], Slot::Empty);
                let mut token = None;
                slots[h] = match (step, slot) {
                    (Step::TryExclusive(_), Slot::Idle(l)) => match l.try_lock::<Exclusive>() {
                        Ok(g) => {
                            prop_assert!(others.is_empty(), "exclusive granted beside {others:?}");
                            token = Some(g.fencing_token());
                            Slot::Exclusive(g)
                        }
                        Err(e) => {
                            prop_assert!(e.is_would_block(), "{e}");
                            prop_assert!(!others.is_empty(), "refused with no other holder");
                            Slot::Idle(e.into_inner())
                        }
                    },
                    (Step::TryShared(_), Slot::Idle(l)) => match l.try_lock::<Shared>() {
                        Ok(g) => {
                            prop_assert!(!others.contains(&FlockMode::Exclusive));
                            token = Some(g.fencing_token());
                            Slot::Shared(g)
                        }
                        Err(e) => {
                            prop_assert!(e.is_would_block(), "{e}");
                            prop_assert!(others.contains(&FlockMode::Exclusive));
                            Slot::Idle(e.into_inner())
                        }
                    },
                    (Step::Unlock(_), Slot::Shared(g)) => Slot::Idle(g.unlock().unwrap()),
                    (Step::Unlock(_), Slot::Exclusive(g)) => Slot::Idle(g.unlock().unwrap()),
                    (Step::Downgrade(_), Slot::Exclusive(g)) => {
                        let g = g.downgrade().unwrap();
                        token = Some(g.fencing_token());
                        Slot::Shared(g)
                    }
                    (Step::TryUpgrade(_), Slot::Shared(g)) => match g.try_upgrade() {
                        Ok(g) => {
                            prop_assert!(others.is_empty(), "upgrade granted beside {others:?}");
                            token = Some(g.fencing_token());
                            Slot::Exclusive(g)
                        }
                        Err(e) => {
                            prop_assert!(e.is_would_block(), "{e}");
                            prop_assert!(!others.is_empty());
                            let g = e.into_inner();
                            prop_assert!(
                                g.is_held().unwrap(),
                                "a failed try_upgrade lost the shared lock"
                            );
                            Slot::Shared(g)
                        }
                    },
                    (Step::Drop(_), slot @ (Slot::Shared(_) | Slot::Exclusive(_))) => {
                        let pid = slot.backend_pid().unwrap();
                        drop(slot);
                        wait_until("a dropped guard's session ends", || {
                            !sql.locks(&name).iter().any(|l| l.0 == pid)
                        });
                        Slot::Idle(PgLock::connect(&url, &name).unwrap())
                    }
                    (_, slot) => slot,
                };
                if let Some(t) = token {
                    prop_assert!(t > last_token, "token {t} after {last_token}");
                    last_token = t;
                }
                // The server agrees with the model.
                let mut expected: Vec<(i32, String)> = slots
                    .iter()
                    .filter_map(|s| {
                        let mode = match s.held()? {
                            FlockMode::Exclusive => "ExclusiveLock",
                            FlockMode::Shared => "ShareLock",
                        };
                        Some((s.backend_pid()?, mode.to_owned()))
                    })
                    .collect();
                expected.sort();
                let mut actual: Vec<(i32, String)> = sql
                    .locks(&name)
                    .into_iter()
                    .filter(|l| l.2)
                    .map(|l| (l.0, l.1))
                    .collect();
                actual.sort();
                prop_assert_eq!(actual, expected, "after {:?}", step);
                let exclusive = slots
                    .iter()
                    .filter(|s| s.held() == Some(FlockMode::Exclusive))
                    .count();
                let shared = slots
                    .iter()
                    .filter(|s| s.held() == Some(FlockMode::Shared))
                    .count();
                prop_assert!(exclusive <= 1 && (exclusive == 0 || shared == 0));
            }
            Ok(())
        })
        .unwrap();
}

/// A server of the test's own, from `.ci/pg-server`, stopped on drop.
struct OwnServer {
    dir: std::path::PathBuf,
    url: String,
}

impl OwnServer {
    fn start(test: &str) -> Option<OwnServer> {
        let dir = std::env::temp_dir().join(format!("flockguard-pg-{test}-{}", std::process::id()));
        let out = std::process::Command::new(Self::script())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("run .ci/pg-server");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            assert!(
                std::env::var_os("FLOCKGUARD_PG_REQUIRED").is_none(),
                "{test}: cannot start a server of its own: {why}"
            );
            support::skip(test, &format!("cannot start a server of its own: {why}"));
            return None;
        }
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Some(OwnServer { dir, url })
    }

    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/pg-server")
    }

    fn restart(&self) {
        let status = std::process::Command::new(Self::script())
            .arg("restart")
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

#[test]
fn a_server_restart_is_reported_lost_and_the_handle_reconnects() {
    let test = "a_server_restart_is_reported_lost_and_the_handle_reconnects";
    if server(test).is_none() {
        return;
    }
    let Some(own) = OwnServer::start("restart") else {
        return;
    };
    let name = unique("restart");
    let held = PgLock::connect(&own.url, &name)
        .unwrap()
        .lock::<Exclusive>()
        .unwrap();
    let first = held.fencing_token();
    own.restart();
    let err = held.is_held().unwrap_err();
    assert!(err.is_lost(), "{err}");
    assert_eq!(err.mode(), Some(FlockMode::Exclusive), "{err}");
    let err = held.unlock().unwrap_err();
    assert!(err.is_lost(), "{err}");
    let again = err.into_inner().try_lock::<Exclusive>().unwrap();
    assert!(again.fencing_token() > first, "tokens survive a restart");
    assert!(again.is_held().unwrap());
}

#[test]
fn a_role_that_cannot_create_the_sequence_is_told_what_to_run() {
    let test = "a_role_that_cannot_create_the_sequence_is_told_what_to_run";
    let Some(url) = server(test) else {
        return;
    };
    let sql = Sql::connect(&url);
    let suffix = std::process::id();
    let (role, db) = (
        format!("fg_limited_{suffix}"),
        format!("fg_nofence_{suffix}"),
    );
    sql.exec(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    sql.exec(&format!("DROP ROLE IF EXISTS {role}"));
    sql.exec(&format!("CREATE ROLE {role} LOGIN"));
    sql.exec(&format!("CREATE DATABASE {db}"));
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)] // Unix sockets exist only on unix
        _ => panic!("TCP URL expected"),
    };
    let port = config.get_ports()[0];
    let limited = format!("host={host} port={port} user={role} dbname={db}");
    let err = PgLock::connect(&limited, "fenced").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fencing, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("`fenced`")
            && msg.contains("CREATE SEQUENCE IF NOT EXISTS public.flockguard_fence"),
        "{msg}"
    );
    // Listing holders needs no fencing sequence.
    assert!(pg::holders(&limited, "fenced").unwrap().is_empty());
    // Running what the message says makes it work.
    let sql_run = msg.split('`').rev().nth(1).unwrap().to_owned();
    let owner = Sql::connect(&format!(
        "host={host} port={port} user=postgres dbname={db}"
    ));
    owner.exec(&sql_run);
    let guard = PgLock::connect(&limited, "fenced")
        .unwrap()
        .try_lock::<Exclusive>()
        .unwrap();
    assert!(guard.fencing_token() >= 1);
    drop(guard);
    drop(owner);
    sql.exec(&format!("DROP DATABASE {db} WITH (FORCE)"));
    sql.exec(&format!("DROP ROLE {role}"));
}

#[test]
fn sessions_and_threads_end_with_their_handles() {
    let Some(_url) = server("sessions_and_threads_end_with_their_handles") else {
        return;
    };
    // In a child, so that other tests' sessions and threads do not count.
    let mut child = Child::spawn(&["pg::leaks"]);
    let line = child.expect_line("LEAKS", WAIT);
    assert!(child.release().success());
    assert_eq!(line, "LEAKS sessions 0 threads 0", "{line}");
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// In a child: opens, locks, drops and unlocks handles, then reports how
/// many sessions (by application_name) and threads are left over.
fn child_leaks(url: &str) {
    let sql = Sql::connect(url);
    let mine = format!("flockguard {} %", std::process::id());
    let sessions = || {
        sql.i64(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&mine],
        )
    };
    let (threads_before, sessions_before) = (threads(), sessions());
    for i in 0..10 {
        let name = unique(&format!("leaks-{i}"));
        let lock = PgLock::connect(url, &name).unwrap();
        let guard = lock.try_lock::<Exclusive>().unwrap();
        if i % 2 == 0 {
            drop(guard);
        } else {
            let err = PgLock::connect(url, &name)
                .unwrap()
                .try_lock::<Shared>()
                .unwrap_err();
            drop(err);
            drop(guard.unlock().unwrap());
        }
    }
    let deadline = Instant::now() + WAIT;
    while (sessions() > sessions_before || threads() > threads_before) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    support::tell(&format!(
        "LEAKS sessions {} threads {}",
        sessions() - sessions_before,
        threads().saturating_sub(threads_before)
    ));
}

#[test]
fn calls_from_inside_an_async_runtime_work() {
    let Some(url) = server("calls_from_inside_an_async_runtime_work") else {
        return;
    };
    let name = unique("async");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = rt.block_on(async {
        let guard = PgLock::connect(&url, &name)
            .unwrap()
            .try_lock::<Exclusive>()
            .unwrap();
        assert!(guard.is_held().unwrap());
        let t = guard.fencing_token();
        guard.unlock().unwrap();
        t
    });
    assert!(token > 0);
}

/// The statements of the fenced write in docs/postgres.md, as the reader
/// sees them (comments stripped): the table, then the write.
fn documented_fenced_write() -> (String, String) {
    let doc = include_str!("../../docs/postgres.md");
    let marker = doc
        .find("<!-- fenced-write:")
        .expect("docs/postgres.md marks its fenced write");
    let block = &doc[marker..];
    let start = block.find("```sql\n").expect("an sql block") + "```sql\n".len();
    let end = start + block[start..].find("```").expect("the block ends");
    let sql: String = block[start..end]
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let statements: Vec<String> = sql
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(statements.len(), 2, "{statements:?}");
    (statements[0].clone(), statements[1].clone())
}

#[test]
fn the_documented_fenced_write_accepts_the_holder_and_refuses_a_stale_writer() {
    let test = "the_documented_fenced_write_accepts_the_holder_and_refuses_a_stale_writer";
    let Some(url) = server(test) else {
        return;
    };
    let (create, write) = documented_fenced_write();
    let sql = Sql::connect(&url);
    let schema = format!("fg_fence_{}", std::process::id());
    sql.exec(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema}"
    ));
    sql.exec(&create);
    let store = |token: i64, body: &[u8]| -> u64 {
        // The token binds to the `bigint` column as it is, without a cast.
        sql.rt
            .block_on(sql.client.execute(write.as_str(), &[&"abc", &body, &token]))
            .unwrap()
    };
    let name = unique("fenced-write");
    let old = PgLock::connect(&url, &name)
        .unwrap()
        .lock::<Exclusive>()
        .unwrap();
    let stale = old.fencing_token();
    assert_eq!(store(stale, b"first"), 1, "the holder's first write");
    assert_eq!(store(stale, b"second"), 1, "the holder's own second write");
    // The lock moves on (as after a loss): the new holder's token is larger.
    drop(old);
    let new = PgLock::connect(&url, &name)
        .unwrap()
        .lock::<Exclusive>()
        .unwrap();
    assert!(new.fencing_token() > stale);
    assert_eq!(store(new.fencing_token(), b"third"), 1);
    assert_eq!(store(stale, b"stale"), 0, "a stale writer is refused");
    let body: Vec<u8> = sql
        .rt
        .block_on(
            sql.client
                .query_one("SELECT body FROM artifact WHERE id = 'abc'", &[]),
        )
        .unwrap()
        .get(0);
    assert_eq!(body, b"third");
    sql.exec(&format!("DROP SCHEMA {schema} CASCADE"));
}

/// The TLS server of `.ci/pg-server start-tls DIR`, named by
/// `FLOCKGUARD_PG_TLS_DIR`: (URL host part `localhost:PORT`, DIR).
fn tls_server(test: &str) -> Option<(String, std::path::PathBuf)> {
    match std::env::var("FLOCKGUARD_PG_TLS_DIR") {
        Ok(dir) if !dir.is_empty() => {
            let dir = std::path::PathBuf::from(dir);
            let url = std::fs::read_to_string(dir.join("url")).expect("DIR/url");
            let host_port = url
                .trim()
                .trim_start_matches("postgresql://postgres@")
                .trim_end_matches("/postgres")
                .to_owned();
            Some((host_port, dir))
        }
        _ => {
            assert!(
                std::env::var_os("FLOCKGUARD_PG_REQUIRED").is_none(),
                "{test}: FLOCKGUARD_PG_REQUIRED is set but FLOCKGUARD_PG_TLS_DIR is not"
            );
            support::skip(
                test,
                "no TLS server: FLOCKGUARD_PG_TLS_DIR is not set (run `.ci/pg-server start-tls DIR` and export FLOCKGUARD_PG_TLS_DIR=DIR)",
            );
            None
        }
    }
}

/// Whether the backend `pid` speaks TLS, asked over the server's Unix socket.
fn backend_uses_tls(dir: &std::path::Path, port: &str, pid: i32) -> bool {
    let sql = Sql::connect(&format!(
        "host={} port={port} user=postgres dbname=postgres",
        dir.display()
    ));
    let rows = sql
        .rt
        .block_on(
            sql.client
                .query("SELECT ssl FROM pg_stat_ssl WHERE pid = $1", &[&pid]),
        )
        .unwrap();
    rows[0].get(0)
}

#[test]
fn each_sslmode_against_a_hostssl_only_server() {
    let test = "each_sslmode_against_a_hostssl_only_server";
    let Some((host_port, dir)) = tls_server(test) else {
        return;
    };
    let port = host_port.rsplit(':').next().unwrap().to_owned();
    let ca = dir.join("tls/ca.crt");
    let name = unique("tls");
    for mode in [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ] {
        let url = format!(
            "postgresql://postgres@{host_port}/postgres?sslmode={mode}&sslrootcert={}",
            ca.display()
        );
        match PgLock::connect(&url, &name) {
            Ok(lock) => {
                assert_ne!(
                    mode, "disable",
                    "plaintext got through a hostssl-only server"
                );
                let pid = lock.backend_pid().unwrap();
                assert!(backend_uses_tls(&dir, &port, pid), "{mode}: not TLS");
                let guard = lock.try_lock::<Exclusive>().unwrap();
                assert!(guard.is_held().unwrap());
                eprintln!("sslmode={mode}: connected over TLS, lock taken");
                // The async front-end connects the same way.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let (async_pid, kept) = rt.block_on(async {
                    let lock = AsyncPgLock::connect(&url, &name).await.unwrap();
                    let pid = lock.backend_pid().unwrap();
                    let err = lock.try_lock::<Exclusive>().await.unwrap_err();
                    assert!(err.is_would_block(), "{err}");
                    (pid, err)
                });
                // `kept` holds the session open while it is looked at.
                assert!(
                    backend_uses_tls(&dir, &port, async_pid),
                    "{mode}: async not TLS"
                );
                drop(kept);
            }
            Err(err) => {
                assert_eq!(mode, "disable", "{mode}: {err}");
                assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
                assert!(err.to_string().contains("accepts only TLS"), "{err}");
                eprintln!("sslmode={mode}: refused: {err}");
            }
        }
    }
}

#[test]
fn a_wrong_authority_or_host_name_is_refused_and_named() {
    let test = "a_wrong_authority_or_host_name_is_refused_and_named";
    let Some((host_port, dir)) = tls_server(test) else {
        return;
    };
    let port = host_port.rsplit(':').next().unwrap();
    let name = unique("tls-wrong");
    let other = dir.join("tls/other-ca.crt");
    for mode in ["verify-ca", "verify-full"] {
        let url = format!(
            "host=localhost port={port} user=postgres sslmode={mode} sslrootcert={}",
            other.display()
        );
        let err = PgLock::connect(&url, &name).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("not signed by a certificate authority in sslrootcert"),
            "{msg}"
        );
        assert!(msg.contains("other-ca.crt"), "{msg}");
        eprintln!("sslmode={mode} with another CA: {msg}");
    }
    // The certificate names `localhost`, not 127.0.0.1.
    let ca = dir.join("tls/ca.crt");
    let by_ip = |mode: &str| {
        format!(
            "host=127.0.0.1 port={port} user=postgres sslmode={mode} sslrootcert={}",
            ca.display()
        )
    };
    let err = PgLock::connect(&by_ip("verify-full"), &name).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(
        err.to_string()
            .contains("does not name the host `127.0.0.1`"),
        "{err}"
    );
    eprintln!("sslmode=verify-full by IP: {err}");
    let lock = PgLock::connect(&by_ip("verify-ca"), &name).unwrap();
    assert!(backend_uses_tls(&dir, port, lock.backend_pid().unwrap()));
    // A missing authority file is named too.
    let err = PgLock::connect(
        &format!("host=localhost port={port} user=postgres sslmode=verify-full sslrootcert=/nonexistent/ca.crt"),
        &name,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
}

#[test]
fn a_client_certificate_logs_in() {
    let test = "a_client_certificate_logs_in";
    let Some((host_port, dir)) = tls_server(test) else {
        return;
    };
    let tls = dir.join("tls");
    let base = format!(
        "postgresql://certuser@{host_port}/postgres?sslmode=verify-full&sslrootcert={}",
        tls.join("ca.crt").display()
    );
    let name = unique("tls-cert");
    let err = PgLock::connect(&base, &name).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    let with_cert = format!(
        "{base}&sslcert={}&sslkey={}",
        tls.join("client.crt").display(),
        tls.join("client.key").display()
    );
    let guard = PgLock::connect(&with_cert, &name)
        .unwrap()
        .lock::<Exclusive>()
        .unwrap();
    assert!(guard.is_held().unwrap());
}

#[test]
fn tls_against_a_server_without_it() {
    let test = "tls_against_a_server_without_it";
    let Some(url) = server(test) else {
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let name = unique("no-tls");
    // prefer (the default) settles for plaintext where TLS is not offered.
    let lock = PgLock::connect(&format!("{url}{sep}sslmode=prefer"), &name).unwrap();
    let sql = Sql::connect(&url);
    let pid = lock.backend_pid().unwrap();
    let ssl: bool = sql
        .rt
        .block_on(
            sql.client
                .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = $1", &[&pid]),
        )
        .unwrap()
        .get(0);
    assert!(!ssl);
    // A URL that asks for TLS never ends in plaintext.
    let err = PgLock::connect(&format!("{url}{sep}sslmode=require"), &name).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains("does not offer TLS"), "{err}");
    let err = PgLock::connect(&format!("{url}{sep}sslmode=verify-full"), &name).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains("sslrootcert"), "{err}");
    let err = PgLock::connect(&format!("{url}{sep}sslmode=verify"), &name).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert!(err.to_string().contains("verify-full"), "{err}");
}

/// A PgBouncer on 127.0.0.1 in front of the test server, stopped on drop.
struct Bouncer {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Bouncer {
    /// Starts one, or returns `None` after printing why the test is skipped.
    fn start(test: &str, url: &str, mode: &str, pool_size: u32, ignore: &str) -> Option<Bouncer> {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("FLOCKGUARD_PG_REQUIRED").is_none(),
                "{test}: FLOCKGUARD_PG_REQUIRED is set but pgbouncer is not installed"
            );
            support::skip(
                test,
                "pgbouncer is not installed (apt-get install pgbouncer)",
            );
            return None;
        };
        let config: tokio_postgres::Config = url.parse().unwrap();
        let server_port = config.get_ports()[0];
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={server_port} dbname=postgres user=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {d}/users.txt\npool_mode = {mode}\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 100\n\
                 ignore_startup_parameters = {ignore}\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n"
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(bin);
        if rustix::process::geteuid().is_root() {
            // PgBouncer refuses to run as root.
            let perm = std::os::unix::fs::PermissionsExt::from_mode(0o777);
            std::fs::set_permissions(dir.path(), perm).unwrap();
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let bouncer = Bouncer { child, dir, port };
        wait_until("pgbouncer listens", || {
            TcpStream::connect(("127.0.0.1", bouncer.port)).is_ok()
        });
        Some(bouncer)
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

#[test]
fn through_pgbouncer_in_session_mode_two_clients_exclude_each_other() {
    let test = "through_pgbouncer_in_session_mode_two_clients_exclude_each_other";
    let Some(url) = server(test) else {
        return;
    };
    for ignore in ["", "options"] {
        let Some(bouncer) = Bouncer::start(test, &url, "session", 4, ignore) else {
            return;
        };
        let name = unique("bouncer-session");
        let (a, b) = (
            PgLock::connect(&bouncer.url(), &name).unwrap(),
            PgLock::connect(&bouncer.url(), &name).unwrap(),
        );
        let mut overlaps = 0;
        let (mut a, mut b) = (Some(a), Some(b));
        for round in 0..20 {
            let (first, second) = if round % 2 == 0 {
                (a.take().unwrap(), b.take().unwrap())
            } else {
                (b.take().unwrap(), a.take().unwrap())
            };
            let held = first.lock_timeout::<Exclusive>(WAIT).unwrap();
            let other = match second.try_lock::<Exclusive>() {
                Ok(wrong) => {
                    overlaps += 1;
                    wrong.unlock().unwrap()
                }
                Err(err) => {
                    assert!(err.is_would_block(), "{err}");
                    err.into_inner()
                }
            };
            assert!(held.is_held().unwrap());
            let first = held.unlock().unwrap();
            (a, b) = (Some(first), Some(other));
        }
        assert_eq!(overlaps, 0, "ignore_startup_parameters = {ignore:?}");
        // Clients that come later get the server sessions back (the pooler
        // resets them), claims included.
        drop((a, b));
        for _ in 0..8 {
            let again = PgLock::connect(&bouncer.url(), &name).unwrap();
            // The previous guard's release travels through the pooler.
            let guard = again.lock_timeout::<Exclusive>(WAIT).unwrap();
            drop(guard);
        }
        eprintln!("pgbouncer session mode (ignore_startup_parameters = {ignore:?}): 20 rounds, 0 overlaps");
    }
}

#[test]
fn through_pgbouncer_in_transaction_or_statement_mode_locks_are_refused() {
    let test = "through_pgbouncer_in_transaction_or_statement_mode_locks_are_refused";
    let Some(url) = server(test) else {
        return;
    };
    for (mode, pool, ignore) in [
        ("transaction", 1, "options"),
        ("transaction", 4, "options"),
        ("transaction", 1, ""),
        ("statement", 1, "options"),
        ("statement", 4, ""),
    ] {
        let Some(bouncer) = Bouncer::start(test, &url, mode, pool, ignore) else {
            return;
        };
        let name = unique("bouncer-pooled");
        let (mut granted_both, mut refused, mut first_ok) = (0, 0, 0);
        for _ in 0..20 {
            // One client holds the lock, a second one tries to take it.
            let first = PgLock::connect(&bouncer.url(), &name)
                .and_then(|l| l.try_lock::<Exclusive>().map_err(pg::Error::from));
            let second = PgLock::connect(&bouncer.url(), &name)
                .and_then(|l| l.try_lock::<Exclusive>().map_err(pg::Error::from));
            if first.is_ok() && second.is_ok() {
                granted_both += 1;
            }
            for err in [first.as_ref().err(), second.as_ref().err()]
                .into_iter()
                .flatten()
            {
                if err.kind() == ErrorKind::Pooler {
                    refused += 1;
                    let msg = err.to_string();
                    assert!(msg.contains("transaction or statement mode"), "{msg}");
                    assert!(msg.contains("pool_mode = session"), "{msg}");
                } else {
                    assert!(err.is_would_block(), "{mode}: {err}");
                }
            }
            if let Ok(held) = first {
                first_ok += 1;
                // The holder's own later statement never reports someone
                // else's lock as its own.
                match held.is_held() {
                    Ok(held) => assert!(held),
                    Err(err) => assert_eq!(err.kind(), ErrorKind::Pooler, "{err}"),
                }
            }
        }
        assert_eq!(granted_both, 0, "{mode} pool {pool}: two exclusive holders");
        assert!(refused > 0, "{mode} pool {pool}: the pooler went unnoticed");
        eprintln!(
            "pgbouncer {mode} mode, pool size {pool}, ignore_startup_parameters = {ignore:?}: \
             20 rounds, 0 double grants, {refused} refusals (ErrorKind::Pooler), first client granted {first_ok}"
        );
    }
}

fn runtimes() -> [(&'static str, tokio::runtime::Runtime); 2] {
    [
        (
            "current-thread",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        ),
        (
            "multi-thread",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ),
    ]
}

/// Waits until `count` sessions wait for the observer's lock.
async fn until_waiting(observer: &mut AsyncPgLock, count: usize) {
    let start = Instant::now();
    while observer
        .holders()
        .await
        .unwrap()
        .iter()
        .filter(|h| h.waiting)
        .count()
        < count
    {
        assert!(start.elapsed() < WAIT, "no session started waiting");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[test]
fn the_async_api_keeps_the_blocking_guarantees() {
    let test = "the_async_api_keeps_the_blocking_guarantees";
    let Some(url) = server(test) else {
        return;
    };
    for (flavor, rt) in runtimes() {
        let name = unique("async-api");
        rt.block_on(async {
            let a = AsyncPgLock::connect(&url, &name).await.unwrap();
            let b = AsyncPgLock::connect(&url, &name).await.unwrap();
            let held = a.try_lock::<Exclusive>().await.unwrap();
            let first = held.fencing_token();
            let err = b.try_lock::<Shared>().await.unwrap_err();
            assert!(err.is_would_block(), "{flavor}: {err}");
            // The server's deadline, with the holder listed.
            let start = Instant::now();
            let err = err
                .into_inner()
                .lock_timeout::<Exclusive>(Duration::from_millis(200))
                .await
                .unwrap_err();
            assert!(err.is_timeout(), "{err}");
            assert!(start.elapsed() >= Duration::from_millis(200));
            assert_eq!(err.error.holders().len(), 1, "{err}");
            assert_eq!(
                err.error.holders()[0].backend_pid,
                held.backend_pid().unwrap()
            );
            let b = err.into_inner();
            // Downgrade never lets go, even with a writer queued.
            let writer = tokio::spawn(b.lock::<Exclusive>());
            let mut observer = AsyncPgLock::connect(&url, &name).await.unwrap();
            until_waiting(&mut observer, 1).await;
            let reader = held.downgrade().await.unwrap();
            // A dropped is_held future leaves the session usable.
            let _ = tokio::time::timeout(Duration::from_micros(1), reader.is_held()).await;
            assert!(reader.is_held().await.unwrap());
            assert!(reader.fencing_token() > first);
            assert!(!writer.is_finished());
            // try_upgrade keeps the shared lock on contention (the queued
            // writer conflicts with it).
            let err = reader.try_upgrade().await.unwrap_err();
            assert!(err.is_would_block(), "{err}");
            let reader = err.into_inner();
            assert!(reader.is_held().await.unwrap(), "the shared lock is kept");
            let lock = reader.unlock().await.unwrap();
            let w = writer.await.unwrap().unwrap();
            assert!(w.is_held().await.unwrap());
            assert!(w.fencing_token() > first);
            let err = lock.try_lock::<Shared>().await.unwrap_err();
            assert!(err.is_would_block());
            drop(w);
            let r = err
                .into_inner()
                .lock_until::<Shared>(Instant::now() + WAIT)
                .await
                .unwrap();
            let w2 = AsyncPgLock::connect(&url, &name)
                .await
                .unwrap()
                .lock_with::<Shared>(Wait::none())
                .await
                .unwrap();
            assert!(r.is_held().await.unwrap() && w2.is_held().await.unwrap());
            let err = w2.try_upgrade().await.unwrap_err();
            assert!(err.is_would_block());
            assert!(
                err.handle.is_held().await.unwrap(),
                "the shared lock is kept"
            );
            // A cancel token ends the server-side wait and leaves nothing held.
            let token = CancelToken::new();
            let c = AsyncPgLock::connect(&url, &name).await.unwrap();
            let waiting =
                tokio::spawn(c.lock_with::<Exclusive>(Wait::forever().cancel(token.clone())));
            until_waiting(&mut observer, 1).await;
            token.cancel();
            let err = waiting.await.unwrap().unwrap_err();
            assert!(err.is_cancelled(), "{err}");
            drop((r, err));
        });
        eprintln!("{flavor}: async API ok");
    }
}

#[test]
fn async_locks_start_no_thread() {
    let test = "async_locks_start_no_thread";
    if server(test).is_none() {
        return;
    }
    let mut child = Child::spawn(&["pg::async-threads"]);
    let line = child.expect_line("THREADS", WAIT);
    let counts: Vec<&str> = line.split(' ').skip(1).skip(1).step_by(2).collect();
    assert_eq!(counts.len(), 3, "{line}");
    assert!(counts.iter().all(|c| *c == counts[0]), "{line}");
}

/// In a child: 20 async locks held on a current-thread runtime through two
/// heartbeat periods; reports the thread count before, while holding, after.
fn child_async_threads(url: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = threads();
    let holding = rt.block_on(async {
        let mut guards = Vec::new();
        for i in 0..20 {
            let name = unique(&format!("async-threads-{i}"));
            let lock = AsyncPgLock::connect(url, &name).await.unwrap();
            guards.push(lock.lock::<Exclusive>().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(4500)).await;
        for g in &guards {
            assert!(g.is_held().await.unwrap());
        }
        threads()
    });
    drop(rt);
    support::tell(&format!(
        "THREADS before {before} holding {holding} after {}",
        threads()
    ));
}

/// Backends that hold or wait for `name`'s lock, other than `except`,
/// asked by an observer client on the caller's runtime.
async fn lockers(observer: &tokio_postgres::Client, name: &str, except: &[i32]) -> Vec<i32> {
    let key = pg::lock_key(name);
    let rows = observer
        .query(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
             AND ((classid::bigint << 32) | objid::bigint) = $1",
            &[&key],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.get::<_, i32>(0))
        .filter(|pid| !except.contains(pid))
        .collect()
}

/// Waits on the runtime (which keeps running the dropped sessions' tasks)
/// until no backend but `except` holds or waits for `name`'s lock.
async fn until_no_lockers(
    observer: &tokio_postgres::Client,
    name: &str,
    except: &[i32],
) -> Duration {
    let start = Instant::now();
    loop {
        let left = lockers(observer, name, except).await;
        if left.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "backends {left:?} still hold or wait for the lock"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[test]
fn dropping_async_futures_at_random_points_leaves_no_lock_held() {
    let test = "dropping_async_futures_at_random_points_leaves_no_lock_held";
    let Some(url) = server(test) else {
        return;
    };
    // A cheap deterministic sequence of cut points (xorshift).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut cases, mut cut, mut slowest) = (0, 0, Duration::ZERO);
    for (flavor, rt) in runtimes() {
        let name = unique("async-cancel");
        rt.block_on(async {
            let (observer, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for round in 0..60u64 {
                let holder = if round % 2 == 0 {
                    let lock = AsyncPgLock::connect(&url, &name).await.unwrap();
                    Some(lock.lock::<Exclusive>().await.unwrap())
                } else {
                    None
                };
                let keep: Vec<i32> = holder.iter().filter_map(|g| g.backend_pid()).collect();
                let cut_at = Duration::from_micros(next() % 20_000);
                let op = next() % 5;
                let work = async {
                    let lock = AsyncPgLock::connect(&url, &name).await?;
                    let guard = match op {
                        0 => lock.lock::<Exclusive>().await?,
                        1 => lock.try_lock::<Exclusive>().await?,
                        2 => lock.lock_timeout::<Exclusive>(WAIT).await?,
                        3 => {
                            let shared = lock.lock::<Shared>().await?;
                            shared.upgrade().await?
                        }
                        _ => {
                            let g = lock.lock::<Exclusive>().await?;
                            g.downgrade().await?.upgrade().await?
                        }
                    };
                    Ok::<_, pg::Error>(guard)
                };
                // Finished in time: the guard (or error) is dropped at once.
                let finished = tokio::time::timeout(cut_at, work).await.is_ok();
                cases += 1;
                cut += usize::from(!finished);
                // Checked from another session: nothing of the dropped
                // future holds or waits for the lock.
                slowest = slowest.max(until_no_lockers(&observer, &name, &keep).await);
                if let Some(holder) = holder {
                    assert!(holder.is_held().await.unwrap());
                    holder.unlock().await.unwrap();
                }
                // And the lock is free for anyone.
                let again = AsyncPgLock::connect(&url, &name)
                    .await
                    .unwrap()
                    .try_lock::<Exclusive>()
                    .await
                    .unwrap();
                drop(again);
                until_no_lockers(&observer, &name, &[]).await;
            }
        });
        eprintln!("{flavor}: done");
    }
    eprintln!(
        "async cancellation: {cases} cases ({cut} dropped mid-flight), no lock left held; \
         slowest release after a drop {slowest:?}"
    );
    assert!(cut > 20, "too few futures were dropped mid-flight: {cut}");
}

#[test]
fn a_partitioned_async_holder_loses_the_lock_within_the_bound() {
    let test = "a_partitioned_async_holder_loses_the_lock_within_the_bound";
    let Some(url) = server(test) else {
        return;
    };
    let name = unique("async-partition");
    let config: tokio_postgres::Config = url.parse().unwrap();
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else {
        support::skip(test, "the server URL is not TCP");
        return;
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let target: std::net::SocketAddr = format!("{host}:{port}").parse().unwrap();
    assert!(target.ip().is_loopback());
    let proxy = Blackhole::start(target);
    let via_proxy = url.replacen(&format!(":{port}"), &format!(":{}", proxy.port), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let held = AsyncPgLock::connect(&via_proxy, &name)
            .await
            .unwrap()
            .lock::<Exclusive>()
            .await
            .unwrap();
        let first = held.fencing_token();
        // Idle past the server's idle limit: the heartbeat task keeps it.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(held.is_held().await.unwrap(), "lost while idle");
        proxy.cut.store(true, Ordering::SeqCst);
        let cut_at = Instant::now();
        let other = tokio::spawn({
            let (url, name) = (url.clone(), name.clone());
            async move {
                let g = AsyncPgLock::connect(&url, &name)
                    .await
                    .unwrap()
                    .lock_timeout::<Exclusive>(Duration::from_secs(30))
                    .await
                    .unwrap();
                (g, cut_at.elapsed())
            }
        });
        let err = held.is_held().await.unwrap_err();
        let noticed = cut_at.elapsed();
        assert!(
            matches!(err.kind(), ErrorKind::Lost(PgLoss::NoAnswer(_))),
            "{err}"
        );
        let (got, bound) = other.await.unwrap();
        eprintln!(
            "async partition: holder's is_held() failed {noticed:?} after the cut; \
             another client got the lock {bound:?} after it"
        );
        assert!(noticed <= Duration::from_secs(6), "{noticed:?}");
        assert!(bound <= Duration::from_secs(15), "{bound:?}");
        assert!(got.fencing_token() > first);
        let err = held.unlock().await.unwrap_err();
        assert!(err.is_lost(), "{err}");
    });
    drop(proxy);
}
