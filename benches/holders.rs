//! Cost of `holders()`: against reading `/proc/locks` once (the floor:
//! every answer needs that read), with few entries and with 10 000
//! unrelated `flock` entries, beside `lslocks`.
//!
//! The holder of the measured file is a child process (this binary
//! re-executed), so the PID check reads a real process's fdinfo. The
//! unrelated entries are locks this process takes on 10 000 other files.
//!
//! Run: `cargo bench --bench holders` (about 7 minutes, 6 of them the two
//! `lslocks` runs at 10 000 entries); `-- --test` runs every case once.
//! A summary with exact medians and ratios is printed at the end.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use flockguard::{Exclusive, LockFile, Shared};

const CHILD_ENV: &str = "FLOCKGUARD_BENCH_HOLDERS_CHILD";
const UNRELATED: usize = 10_000;

static SAMPLES: Mutex<Vec<(String, Vec<Duration>)>> = Mutex::new(Vec::new());

fn record(name: &str, d: Duration) {
    let mut all = SAMPLES.lock().unwrap();
    match all.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(d),
        None => all.push((name.to_owned(), vec![d])),
    }
}

fn median_of(name: &str) -> Option<Duration> {
    let mut all = SAMPLES.lock().unwrap();
    let (_, v) = all.iter_mut().find(|(n, _)| n == name)?;
    v.sort();
    Some(v[v.len() / 2])
}

fn bench(c: &mut Criterion, group: &str, cases: &mut [(&str, &mut dyn FnMut())]) {
    let mut g = c.benchmark_group(group);
    for (name, f) in cases.iter_mut() {
        let key = format!("{group}/{name}");
        g.bench_function(BenchmarkId::from_parameter(*name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    f();
                    let d = t.elapsed();
                    record(&key, d);
                    total += d;
                }
                total
            })
        });
    }
    g.finish();
}

fn lslocks(args: &[&str]) {
    let out = Command::new("lslocks")
        .args(args)
        .stdout(Stdio::piped())
        .output()
        .expect("run lslocks");
    assert!(out.status.success());
    std::hint::black_box(out.stdout);
}

fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write only the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

fn main() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        let guard = LockFile::open(&path).unwrap().lock::<Exclusive>().unwrap();
        println!("locked");
        std::io::stdout().flush().unwrap();
        for _ in std::io::stdin().lock().lines() {}
        drop(guard);
        return;
    }
    // `cargo bench -- --test` runs every case once: skip the minutes-long
    // lslocks runs.
    let smoke = std::env::args().any(|a| a == "--test");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.lock");
    flockguard::materialize(&target).unwrap();
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, &target)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let holder_pid = holder.id().to_string();
    let file = LockFile::open(&target).unwrap();
    // /proc/locks is read a page at a time, each page a separate snapshot:
    // while other processes lock and unlock, an entry can be missed or seen
    // twice. Count the answers that are not exactly the one holder.
    let anomalies = std::sync::atomic::AtomicUsize::new(0);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let check = |list: Vec<flockguard::Holder>| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if list.len() != 1 {
            anomalies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        std::hint::black_box(list);
    };

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
        .configure_from_args();

    let few = std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .count();
    bench(
        &mut c,
        "few",
        &mut [
            ("read_proc_locks", &mut || {
                std::hint::black_box(std::fs::read("/proc/locks").unwrap());
            }),
            ("holders_path", &mut || {
                check(flockguard::holders(&target).unwrap())
            }),
            ("lockfile_holders", &mut || check(file.holders().unwrap())),
            ("lslocks_pid", &mut || lslocks(&["-p", &holder_pid])),
            ("lslocks", &mut || lslocks(&[])),
        ],
    );

    // Cold: nothing has read /proc/locks for 100 ms. The kernel then waits
    // for an RCU grace period before the first page (the reader takes the
    // lock list's percpu rwsem for writing), which dominates the call.
    let cold_rounds = if smoke { 5 } else { 15 };
    let mut cold: [Vec<Duration>; 3] = Default::default();
    for _ in 0..cold_rounds {
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        std::hint::black_box(std::fs::read("/proc/locks").unwrap());
        cold[0].push(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        check(flockguard::holders(&target).unwrap());
        cold[1].push(t.elapsed());
        // Warm: right after another read.
        let t = Instant::now();
        check(flockguard::holders(&target).unwrap());
        cold[2].push(t.elapsed());
    }

    raise_nofile(UNRELATED as u64 + 1024);
    let unrelated: Vec<_> = (0..UNRELATED)
        .map(|i| {
            let f = LockFile::open(dir.path().join(format!("u{i}.lock"))).unwrap();
            if i % 2 == 0 {
                flockguard::AnyGuard::from(f.try_lock::<Shared>().unwrap())
            } else {
                flockguard::AnyGuard::from(f.try_lock::<Exclusive>().unwrap())
            }
        })
        .collect();
    let many = std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .count();
    bench(
        &mut c,
        "10k",
        &mut [
            ("read_proc_locks", &mut || {
                std::hint::black_box(std::fs::read("/proc/locks").unwrap());
            }),
            ("holders_path", &mut || {
                check(flockguard::holders(&target).unwrap())
            }),
            ("lockfile_holders", &mut || check(file.holders().unwrap())),
        ],
    );
    // The machine's load drifts between criterion's cases; alternating the
    // three calls round by round exposes them to the same load.
    let rounds = if smoke { 3 } else { 99 };
    let mut inter: [Vec<Duration>; 3] = Default::default();
    for round in 0..rounds {
        // Each call goes first, second and third equally often.
        for k in 0..3 {
            let which = (round + k) % 3;
            let t = Instant::now();
            match which {
                0 => drop(std::hint::black_box(std::fs::read("/proc/locks").unwrap())),
                1 => check(flockguard::holders(&target).unwrap()),
                _ => check(file.holders().unwrap()),
            }
            inter[which].push(t.elapsed());
        }
    }
    let inter: Vec<Duration> = inter
        .iter_mut()
        .map(|v| {
            v.sort();
            v[v.len() / 2]
        })
        .collect();
    // lslocks looks up each entry's path among its process's descriptors:
    // with 10 000 locks held through 10 000 descriptors that takes minutes,
    // so it runs once rather than under criterion.
    let once = |args: &[&str]| {
        let t = Instant::now();
        lslocks(args);
        t.elapsed()
    };
    let lslocks_10k = if smoke {
        Vec::new()
    } else {
        vec![
            ("lslocks_pid (once)", once(&["-p", &holder_pid])),
            ("lslocks (once)", once(&[])),
        ]
    };
    drop(unrelated);

    println!("\n== holders() cost (exact medians over every call above)");
    println!("| /proc/locks lines | call | median | / reading /proc/locks |");
    println!("|---:|---|---:|---:|");
    for (group, lines, names) in [
        (
            "few",
            few,
            &[
                "read_proc_locks",
                "holders_path",
                "lockfile_holders",
                "lslocks_pid",
                "lslocks",
            ][..],
        ),
        (
            "10k",
            many,
            &["read_proc_locks", "holders_path", "lockfile_holders"][..],
        ),
    ] {
        let Some(base) = median_of(&format!("{group}/read_proc_locks")) else {
            continue;
        };
        for name in names {
            if let Some(m) = median_of(&format!("{group}/{name}")) {
                println!(
                    "| {lines} | {name} | {:.1} µs | {:.2}× |",
                    m.as_nanos() as f64 / 1e3,
                    m.as_nanos() as f64 / base.as_nanos() as f64
                );
            }
        }
        if group == "10k" {
            for &(name, d) in &lslocks_10k {
                println!(
                    "| {lines} | {name} | {:.1} µs | {:.2}× |",
                    d.as_nanos() as f64 / 1e3,
                    d.as_nanos() as f64 / base.as_nanos() as f64
                );
            }
        }
    }
    println!("\n== cold and warm at {few} lines: {cold_rounds} rounds (min / median / max)");
    for (name, v) in [
        "read_proc_locks (cold)",
        "holders_path (cold)",
        "holders_path (warm)",
    ]
    .iter()
    .zip(cold.iter_mut())
    {
        v.sort();
        let us = |d: Duration| d.as_nanos() as f64 / 1e3;
        println!(
            "| {few} | {name} | {:.1} µs | {:.1} µs | {:.1} µs |",
            us(v[0]),
            us(v[v.len() / 2]),
            us(v[v.len() - 1])
        );
    }
    println!("\n== interleaved at {many} lines: {rounds} rounds of the three calls");
    for (name, m) in ["read_proc_locks", "holders_path", "lockfile_holders"]
        .iter()
        .zip(&inter)
    {
        println!(
            "| {many} | {name} | {:.1} µs | {:.2}× |",
            m.as_nanos() as f64 / 1e3,
            m.as_nanos() as f64 / inter[0].as_nanos() as f64
        );
    }
    println!(
        "\n{} of {} holders() answers were not exactly the one holder",
        anomalies.into_inner(),
        calls.into_inner()
    );
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert!(Path::new(&target).exists());
    c.final_summary();
}
