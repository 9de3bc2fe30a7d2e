//! The PostgreSQL backend's cost over the SQL it sends, and the handoff from
//! a releasing holder to a blocked waiter.
//!
//! Needs a server: `export FLOCKGUARD_PG_URL="$(.ci/pg-server start)"`;
//! without one it prints a SKIPPED line and exits. Full run:
//! `cargo bench -p flockguard-benches --features postgres --bench pg` (about a minute); smoke run:
//! `cargo bench -p flockguard-benches --features postgres --bench pg -- --test`.
//!
//! - `try_unlock/pglock`: `PgLock::try_lock::<Exclusive>` + `PgGuard::unlock`.
//! - `try_unlock/raw_sql`: the same two prepared statements sent as they are
//!   on the same session, in one call, with no guard and no checks (the floor).
//! - `paired`: short blocks of the two alternate, so load from other
//!   processes hits both alike; the ratio printed is the median of the
//!   per-round ratios. Times are wall-clock: the cost is round trips.
//! - `handoff`: a waiter blocked in `PgLock::lock` gets the lock after the
//!   holder's `unlock`; median of the time from just before `unlock` to the
//!   waiter's return.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use flockguard::pg::PgLock;
use flockguard::{Exclusive, FlockMode};

fn pair_pglock(lock: PgLock) -> PgLock {
    lock.try_lock::<Exclusive>().unwrap().unlock().unwrap()
}

fn pair_raw(lock: &mut PgLock) {
    assert!(lock.raw_try_unlock_pair(FlockMode::Exclusive).unwrap());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Alternating blocks of `block` pairs; returns (pglock µs, raw µs, ratio).
fn paired(url: &str, rounds: usize, block: usize) -> (f64, f64, f64) {
    // One session for both, as the comparison is about what runs around the
    // same statements on the same connection.
    let mut lock = Some(PgLock::connect(url, "bench/paired").unwrap());
    let (mut ours, mut floor, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let time_ours = |lock: &mut Option<PgLock>| {
            let start = Instant::now();
            for _ in 0..block {
                *lock = Some(pair_pglock(lock.take().unwrap()));
            }
            start.elapsed().as_secs_f64() * 1e6 / block as f64
        };
        let time_raw = |lock: &mut Option<PgLock>| {
            let raw = lock.as_mut().unwrap();
            let start = Instant::now();
            for _ in 0..block {
                pair_raw(raw);
            }
            start.elapsed().as_secs_f64() * 1e6 / block as f64
        };
        // Alternate which goes first, so drift in the load hits both alike.
        let (a, b) = if round % 2 == 0 {
            let a = time_ours(&mut lock);
            (a, time_raw(&mut lock))
        } else {
            let b = time_raw(&mut lock);
            (time_ours(&mut lock), b)
        };
        ours.push(a);
        floor.push(b);
        ratios.push(a / b);
    }
    (median(ours), median(floor), median(ratios))
}

/// Median µs from the holder's `unlock` to the blocked waiter's grant.
fn handoff(url: &str, rounds: usize) -> f64 {
    let name = "bench/handoff";
    let mut lock = Some(PgLock::connect(url, name).unwrap());
    let mut waiter = Some(PgLock::connect(url, name).unwrap());
    let probe = PgLock::connect(url, name).unwrap();
    let mut probe = Some(probe);
    let mut times = Vec::new();
    for _ in 0..rounds {
        let held = lock.take().unwrap().lock::<Exclusive>().unwrap();
        let (tx, rx) = mpsc::channel();
        let w = waiter.take().unwrap();
        let t = std::thread::spawn(move || {
            let g = w.lock::<Exclusive>().unwrap();
            let at = Instant::now();
            tx.send(()).unwrap();
            (g.unlock().unwrap(), at)
        });
        // Wait until the waiter is queued on the server.
        loop {
            let mut p = probe.take().unwrap();
            let queued = p.holders().unwrap().iter().any(|h| h.waiting);
            probe = Some(p);
            if queued {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let before = Instant::now();
        lock = Some(held.unlock().unwrap());
        rx.recv().unwrap();
        let (w, at) = t.join().unwrap();
        waiter = Some(w);
        times.push((at - before).as_secs_f64() * 1e6);
    }
    median(times)
}

fn main() {
    let Ok(url) = std::env::var("FLOCKGUARD_PG_URL") else {
        println!("SKIPPED pg benches: FLOCKGUARD_PG_URL is not set (export FLOCKGUARD_PG_URL=\"$(.ci/pg-server start)\")");
        return;
    };
    let smoke = std::env::args().any(|a| a == "--test");
    let mut c = Criterion::default().configure_from_args();
    {
        let mut group = c.benchmark_group("try_unlock");
        let mut lock = Some(PgLock::connect(&url, "bench/try_unlock").unwrap());
        group.bench_function("pglock", |b| {
            b.iter(|| lock = Some(pair_pglock(lock.take().unwrap())))
        });
        let raw = lock.as_mut().unwrap();
        group.bench_function("raw_sql", |b| b.iter(|| pair_raw(raw)));
        group.finish();
    }
    c.final_summary();
    let (rounds, block, handoffs) = if smoke { (2, 2, 2) } else { (400, 10, 100) };
    let (ours, floor, ratio) = paired(&url, rounds, block);
    println!(
        "paired try_unlock: pglock {ours:.1} µs, raw_sql {floor:.1} µs, ratio {ratio:.3} (median of {rounds} rounds of {block})"
    );
    let h = handoff(&url, handoffs);
    println!(
        "handoff: median {h:.1} µs from unlock to the blocked waiter's grant ({handoffs} handoffs)"
    );
}
