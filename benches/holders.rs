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
    let check = |list: Vec<flockguard::Holder>| {
        assert_eq!(list.len(), 1);
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
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert!(Path::new(&target).exists());
    c.final_summary();
}
