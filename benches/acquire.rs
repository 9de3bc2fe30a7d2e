//! flockguard against the physical limit (raw rustix syscalls) and its peers
//! (std, fs4, fd-lock, nix), every group on one lock file in one run.
//!
//! Full run: `cargo bench --bench acquire`; CI smoke run (each bench once):
//! `cargo bench --bench acquire -- --test`. The ratio table:
//! `python3 benches/bench_table.py`. The lock file lives in a fresh
//! directory under `FLOCKGUARD_BENCH_DIR` if set, else under the system
//! temporary directory. Needs Rust 1.89 for the `std::fs::File::try_lock`
//! baseline.
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`,
//! user + system), so time spent preempted by other processes on a busy
//! machine is not counted; `FLOCKGUARD_BENCH_CLOCK=wall` measures wall time
//! instead. The `paired` group interleaves flockguard and its baseline in
//! short alternating blocks and reports the median per-round ratio, which
//! is what the targets are judged by.
// The std baseline needs Rust 1.89; the library's MSRV covers only the library.
#![allow(clippy::incompatible_msrv)]

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Throughput};
use flockguard::{try_flock, Exclusive, LockFile, LockGuard, LockOptions, RemoteFs, Shared};
use rustix::fs::{AtFlags, FlockOperation as Op, Mode, OFlags, StatxFlags};

/// The flags flockguard opens lock files with, so raw baselines do the same
/// path walk and permission checks.
fn flags() -> OFlags {
    OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::NOFOLLOW
}

fn raw_open(path: &Path) -> OwnedFd {
    rustix::fs::open(path, flags(), Mode::empty()).unwrap()
}

fn raw_flock(fd: impl AsFd, op: Op) {
    rustix::fs::flock(fd, op).unwrap();
}

/// Thread CPU time, or wall time with `FLOCKGUARD_BENCH_CLOCK=wall`.
struct Clock {
    wall: bool,
    origin: Instant,
}

type Criterion = criterion::Criterion<Clock>;

impl Clock {
    fn from_env() -> Clock {
        Clock {
            wall: std::env::var("FLOCKGUARD_BENCH_CLOCK").is_ok_and(|v| v == "wall"),
            origin: Instant::now(),
        }
    }

    fn now(&self) -> Duration {
        if self.wall {
            self.origin.elapsed()
        } else {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
        }
    }
}

impl Measurement for Clock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        self.now()
    }
    fn end(&self, start: Duration) -> Duration {
        self.now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanos
    }
}

/// Every figure in nanoseconds, so runs compare at a glance.
struct Nanos;

impl ValueFormatter for Nanos {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "ns"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per_iter = match *t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n,
            _ => 1,
        } as f64;
        for v in values.iter_mut() {
            *v = per_iter * 1e9 / *v;
        }
        "/s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    /// An existing lock file, nobody holding it between iterations.
    lock: PathBuf,
    /// A path that is missing at the start of every iteration.
    missing: PathBuf,
}

fn fixture() -> Fixture {
    let dir = match std::env::var_os("FLOCKGUARD_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .unwrap();
    let lock = dir.path().join("bench.lock");
    File::create(&lock).unwrap();
    let missing = dir.path().join("created.lock");
    Fixture {
        _dir: dir,
        lock,
        missing,
    }
}

/// Group 1: open the path, take an exclusive lock without waiting, release.
fn path_acquire(c: &mut Criterion) {
    let fx = fixture();
    let path = fx.lock.as_path();
    let mut g = c.benchmark_group("path_acquire");

    g.bench_function("flockguard", |b| {
        b.iter(|| drop(try_flock::<Exclusive>(black_box(path)).unwrap()))
    });
    g.bench_function("flockguard_remote_allow", |b| {
        let mut opts = LockOptions::new();
        opts.remote_fs(RemoteFs::Allow);
        b.iter(|| {
            let file = opts.open(black_box(path)).unwrap();
            drop(file.try_lock::<Exclusive>().unwrap())
        })
    });
    g.bench_function("raw_open_fstat_fstatfs_flock_close", |b| {
        b.iter(|| {
            let fd = raw_open(black_box(path));
            black_box(rustix::fs::fstat(&fd).unwrap());
            black_box(rustix::fs::fstatfs(&fd).unwrap());
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        })
    });
    // The same checks as the line above with one statx(2) for type and
    // mount, as flockguard does on a mount it has seen before.
    g.bench_function("raw_open_statx_flock_close", |b| {
        let mask = StatxFlags::TYPE | StatxFlags::from_bits_retain(0x4000);
        b.iter(|| {
            let fd = raw_open(black_box(path));
            black_box(rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, mask).unwrap());
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        })
    });
    g.bench_function("raw_open_fstat_flock_close", |b| {
        b.iter(|| {
            let fd = raw_open(black_box(path));
            black_box(rustix::fs::fstat(&fd).unwrap());
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        })
    });
    g.bench_function("raw_open_flock_close", |b| {
        b.iter(|| {
            let fd = raw_open(black_box(path));
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        })
    });
    g.bench_function("std_try_lock", |b| {
        b.iter(|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(black_box(path))
                .unwrap();
            file.try_lock().unwrap();
        })
    });
    g.bench_function("fs4", |b| {
        b.iter(|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(black_box(path))
                .unwrap();
            fs4::FileExt::try_lock(&file).unwrap();
        })
    });
    g.bench_function("fd_lock", |b| {
        b.iter(|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(black_box(path))
                .unwrap();
            let mut lock = fd_lock::RwLock::new(file);
            drop(lock.try_write().unwrap());
        })
    });
    g.bench_function("nix_flock", |b| {
        use nix::fcntl::{Flock, FlockArg};
        b.iter(|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(black_box(path))
                .unwrap();
            drop(Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap());
        })
    });
    // The approach flockguard replaced: check the path, then the filesystem
    // of the path (or of its parent when missing), then open and lock.
    g.bench_function("old_exists_statfs_open_flock", |b| {
        b.iter(|| {
            let path = black_box(path);
            let probe = if path.exists() {
                path
            } else {
                path.parent().unwrap()
            };
            black_box(rustix::fs::statfs(probe).unwrap());
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .unwrap();
            raw_flock(&file, Op::NonBlockingLockExclusive);
        })
    });

    // The missing-file path: create, lock, release, then unlink (untimed
    // work is impossible here, so both sides pay the unlink).
    let missing = fx.missing.as_path();
    g.bench_function("flockguard_create_unlink", |b| {
        b.iter(|| {
            drop(try_flock::<Exclusive>(black_box(missing)).unwrap());
            rustix::fs::unlink(missing).unwrap();
        })
    });
    g.bench_function("raw_create_fstat_fstatfs_flock_close_unlink", |b| {
        b.iter(|| {
            let fd = rustix::fs::open(
                black_box(missing),
                flags() | OFlags::CREATE | OFlags::EXCL,
                Mode::from_bits_truncate(0o666),
            )
            .unwrap();
            black_box(rustix::fs::fstat(&fd).unwrap());
            black_box(rustix::fs::fstatfs(&fd).unwrap());
            raw_flock(&fd, Op::NonBlockingLockExclusive);
            drop(fd);
            rustix::fs::unlink(missing).unwrap();
        })
    });
    g.finish();
}

/// Group 2: one open descriptor, locked and unlocked again and again.
fn reused_fd(c: &mut Criterion) {
    let fx = fixture();
    let path = fx.lock.as_path();
    let mut g = c.benchmark_group("reused_fd");

    g.bench_function("flockguard", |b| {
        let mut slot = Some(LockFile::open(path).unwrap());
        b.iter(|| {
            let file = slot.take().unwrap();
            let guard = file.try_lock::<Exclusive>().unwrap();
            slot = Some(guard.unlock().unwrap());
        })
    });
    g.bench_function("raw_flock_ex_nb_flock_un", |b| {
        let fd = raw_open(path);
        b.iter(|| {
            raw_flock(&fd, Op::NonBlockingLockExclusive);
            raw_flock(&fd, Op::Unlock);
        })
    });
    g.bench_function("std_try_lock_unlock", |b| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        b.iter(|| {
            file.try_lock().unwrap();
            file.unlock().unwrap();
        })
    });
    g.bench_function("fs4", |b| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        b.iter(|| {
            fs4::FileExt::try_lock(&file).unwrap();
            fs4::FileExt::unlock(&file).unwrap();
        })
    });
    g.bench_function("fd_lock", |b| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut lock = fd_lock::RwLock::new(file);
        b.iter(|| drop(lock.try_write().unwrap()))
    });
    g.bench_function("nix_flock", |b| {
        use nix::fcntl::{Flock, FlockArg};
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut slot = Some(file);
        b.iter(|| {
            let file = slot.take().unwrap();
            let locked = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
            slot = Some(locked.unlock().unwrap());
        })
    });
    g.finish();
}

/// Group 3: a shared lock taken while N other shared holders (other open
/// file descriptions of the same file) are present.
fn shared_holders(c: &mut Criterion) {
    let fx = fixture();
    let path = fx.lock.as_path();
    let mut g = c.benchmark_group("shared_holders");
    for n in [1usize, 8, 64] {
        let holders: Vec<LockGuard<Shared>> =
            (0..n).map(|_| try_flock::<Shared>(path).unwrap()).collect();

        g.bench_with_input(BenchmarkId::new("flockguard_path", n), &n, |b, _| {
            b.iter(|| drop(try_flock::<Shared>(black_box(path)).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("raw_path", n), &n, |b, _| {
            b.iter(|| {
                let fd = raw_open(black_box(path));
                black_box(rustix::fs::fstat(&fd).unwrap());
                black_box(rustix::fs::fstatfs(&fd).unwrap());
                raw_flock(&fd, Op::NonBlockingLockShared);
            })
        });
        g.bench_with_input(BenchmarkId::new("flockguard_reused", n), &n, |b, _| {
            let mut slot = Some(LockFile::open(path).unwrap());
            b.iter(|| {
                let file = slot.take().unwrap();
                let guard = file.try_lock::<Shared>().unwrap();
                slot = Some(guard.unlock().unwrap());
            })
        });
        g.bench_with_input(BenchmarkId::new("raw_reused", n), &n, |b, _| {
            let fd = raw_open(path);
            b.iter(|| {
                raw_flock(&fd, Op::NonBlockingLockShared);
                raw_flock(&fd, Op::Unlock);
            })
        });
        drop(holders);
    }
    g.finish();
}

/// Group 4: mode transitions on a held lock, nobody else holding the file,
/// as round trips that end in the state they started from.
fn transitions(c: &mut Criterion) {
    let fx = fixture();
    let path = fx.lock.as_path();
    let mut g = c.benchmark_group("transitions");

    g.bench_function("flockguard_downgrade_upgrade", |b| {
        let mut slot = Some(try_flock::<Exclusive>(path).unwrap());
        b.iter(|| {
            let shared = slot.take().unwrap().downgrade().unwrap();
            slot = Some(shared.upgrade().unwrap());
        })
    });
    g.bench_function("raw_downgrade_upgrade", |b| {
        let fd = raw_open(path);
        raw_flock(&fd, Op::NonBlockingLockExclusive);
        b.iter(|| {
            raw_flock(&fd, Op::NonBlockingLockShared);
            raw_flock(&fd, Op::LockExclusive);
        })
    });
    g.bench_function("flockguard_downgrade_try_upgrade", |b| {
        let mut slot = Some(try_flock::<Exclusive>(path).unwrap());
        b.iter(|| {
            let shared = slot.take().unwrap().downgrade().unwrap();
            slot = Some(shared.try_upgrade().unwrap());
        })
    });
    g.bench_function("raw_downgrade_try_upgrade", |b| {
        let fd = raw_open(path);
        raw_flock(&fd, Op::NonBlockingLockExclusive);
        b.iter(|| {
            raw_flock(&fd, Op::NonBlockingLockShared);
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        })
    });
    g.finish();
}

/// One pair of the `paired` group: flockguard (`a`) against its baseline
/// (`b`), `block` iterations at a time.
struct Pair<'a> {
    name: &'static str,
    block: u32,
    a: Box<dyn FnMut() + 'a>,
    b: Box<dyn FnMut() + 'a>,
}

fn run_block(f: &mut dyn FnMut(), n: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed()
}

/// The targets, measured so that load from other processes hits both sides
/// alike: each round runs a block of `a` and a block of `b` (alternating
/// which goes first), and the verdict is the median of the per-round ratios.
fn paired(c: &mut Criterion) {
    let fx = fixture();
    let path = fx.lock.as_path();
    let mut remote_allow = LockOptions::new();
    remote_allow.remote_fs(RemoteFs::Allow);
    let reused = RefCell::new(Some(LockFile::open(path).unwrap()));
    let raw_fd = raw_open(path);

    let pairs = vec![
        Pair {
            name: "path",
            block: 32,
            a: Box::new(|| drop(try_flock::<Exclusive>(black_box(path)).unwrap())),
            b: Box::new(|| {
                let fd = raw_open(black_box(path));
                black_box(rustix::fs::fstat(&fd).unwrap());
                black_box(rustix::fs::fstatfs(&fd).unwrap());
                raw_flock(&fd, Op::NonBlockingLockExclusive);
            }),
        },
        Pair {
            name: "path_remote_allow",
            block: 32,
            a: Box::new(|| {
                let file = remote_allow.open(black_box(path)).unwrap();
                drop(file.try_lock::<Exclusive>().unwrap())
            }),
            b: Box::new(|| {
                let fd = raw_open(black_box(path));
                black_box(rustix::fs::fstat(&fd).unwrap());
                raw_flock(&fd, Op::NonBlockingLockExclusive);
            }),
        },
        Pair {
            name: "reused",
            block: 128,
            a: Box::new(|| {
                let mut slot = reused.borrow_mut();
                let guard = slot.take().unwrap().try_lock::<Exclusive>().unwrap();
                *slot = Some(guard.unlock().unwrap());
            }),
            b: Box::new(|| {
                raw_flock(&raw_fd, Op::NonBlockingLockExclusive);
                raw_flock(&raw_fd, Op::Unlock);
            }),
        },
        // Not targets: the same two paths against the raw syscalls plus the
        // one getpid(2) that flockguard's fork check costs.
        Pair {
            name: "path_remote_allow_vs_getpid_floor",
            block: 32,
            a: Box::new(|| {
                let file = remote_allow.open(black_box(path)).unwrap();
                drop(file.try_lock::<Exclusive>().unwrap())
            }),
            b: Box::new(|| {
                let fd = raw_open(black_box(path));
                black_box(rustix::fs::fstat(&fd).unwrap());
                black_box(rustix::process::getpid());
                raw_flock(&fd, Op::NonBlockingLockExclusive);
            }),
        },
        Pair {
            name: "reused_vs_getpid_floor",
            block: 128,
            a: Box::new(|| {
                let mut slot = reused.borrow_mut();
                let guard = slot.take().unwrap().try_lock::<Exclusive>().unwrap();
                *slot = Some(guard.unlock().unwrap());
            }),
            b: Box::new(|| {
                raw_flock(&raw_fd, Op::NonBlockingLockExclusive);
                black_box(rustix::process::getpid());
                raw_flock(&raw_fd, Op::Unlock);
            }),
        },
    ];

    let mut g = c.benchmark_group("paired");
    for mut pair in pairs {
        let mut rounds: Vec<(f64, f64)> = Vec::new();
        g.bench_function(pair.name, |bencher| {
            bencher.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let (ta, tb) = if i % 2 == 0 {
                        let ta = run_block(&mut pair.a, pair.block);
                        (ta, run_block(&mut pair.b, pair.block))
                    } else {
                        let tb = run_block(&mut pair.b, pair.block);
                        (run_block(&mut pair.a, pair.block), tb)
                    };
                    let per = |t: Duration| t.as_nanos() as f64 / f64::from(pair.block);
                    rounds.push((per(ta), per(tb)));
                    total += ta + tb;
                }
                total
            })
        });
        report_pair(pair.name, &rounds);
    }
    g.finish();
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Prints the pair's verdict and, after a real run, stores it beside
/// criterion's results for `benches/bench_table.py`.
fn report_pair(name: &str, rounds: &[(f64, f64)]) {
    if rounds.is_empty() {
        return;
    }
    let mut ratios: Vec<f64> = rounds.iter().map(|(a, b)| a / b).collect();
    let mut a: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let mut b: Vec<f64> = rounds.iter().map(|r| r.1).collect();
    let ratio = median(&mut ratios);
    let (q1, q3) = (ratios[ratios.len() / 4], ratios[(ratios.len() * 3) / 4]);
    let (a, b) = (median(&mut a), median(&mut b));
    println!(
        "paired/{name}: flockguard {a:.0} ns, baseline {b:.0} ns, \
         median ratio {ratio:.3} (quartiles {q1:.3}..{q3:.3}, {} rounds)",
        rounds.len()
    );
    if rounds.len() < 100 {
        return;
    }
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| PathBuf::from("target"), PathBuf::from)
                .join("criterion")
        });
    let dir = home.join("paired").join(name);
    let json = format!(
        "{{\"name\":\"{name}\",\"flockguard_ns\":{a},\"baseline_ns\":{b},\
         \"ratio\":{ratio},\"q1\":{q1},\"q3\":{q3},\"rounds\":{}}}\n",
        rounds.len()
    );
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("pair.json"), json);
    }
}

criterion_group! {
    name = benches;
    config = criterion::Criterion::default().with_measurement(Clock::from_env());
    targets = path_acquire, reused_fd, shared_holders, transitions, paired
}
criterion_main!(benches);
