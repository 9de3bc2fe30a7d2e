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
//! instead.
//!
//! Each group first measures every case alone (criterion's medians), then
//! compares pairs of cases in `paired_<group>`: short blocks of the two
//! cases alternate, so load from other processes hits both alike, and the
//! ratio reported is the median of the per-round ratios. The ratios and the
//! targets are judged by those pairs; they are stored under
//! `target/criterion/pairs/`.
// The std baseline needs Rust 1.89; the library's MSRV covers only the library.
#![allow(clippy::incompatible_msrv)]

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

/// One measured operation: `step` runs it once, keeping its state.
struct Case<'a> {
    name: &'static str,
    step: Box<dyn FnMut() + 'a>,
}

fn case<'a>(name: &'static str, step: impl FnMut() + 'a) -> Case<'a> {
    Case {
        name,
        step: Box::new(step),
    }
}

/// A group of cases: each measured alone, then each pair compared by
/// interleaving (`(flockguard case, baseline case)`).
struct Group<'a> {
    name: &'static str,
    param: Option<usize>,
    /// Iterations of one case per block of a paired round.
    block: u32,
    cases: Vec<Case<'a>>,
    pairs: Vec<(&'static str, &'static str)>,
}

impl Group<'_> {
    fn index(&self, name: &str) -> usize {
        self.cases.iter().position(|c| c.name == name).unwrap()
    }
}

fn run_group(c: &mut Criterion, mut group: Group<'_>) {
    let mut g = c.benchmark_group(group.name);
    for case in &mut group.cases {
        let step = &mut case.step;
        match group.param {
            Some(n) => g.bench_function(BenchmarkId::new(case.name, n), |b| b.iter(&mut *step)),
            None => g.bench_function(case.name, |b| b.iter(&mut *step)),
        };
    }
    g.finish();

    let mut g = c.benchmark_group(format!("paired_{}", group.name));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    for (a, b) in group.pairs.clone() {
        let (ia, ib) = (group.index(a), group.index(b));
        let (first, second) = group.cases.split_at_mut(ia.max(ib));
        let (ca, cb) = if ia < ib {
            (&mut first[ia], &mut second[0])
        } else {
            (&mut second[0], &mut first[ib])
        };
        let block = group.block;
        let mut rounds: Vec<(f64, f64)> = Vec::new();
        let id = match group.param {
            Some(n) => format!("{a}_vs_{b}/{n}"),
            None => format!("{a}_vs_{b}"),
        };
        g.bench_function(id, |bencher| {
            bencher.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let (ta, tb) = if i % 2 == 0 {
                        let ta = run_block(&mut ca.step, block);
                        (ta, run_block(&mut cb.step, block))
                    } else {
                        let tb = run_block(&mut cb.step, block);
                        (run_block(&mut ca.step, block), tb)
                    };
                    let per = |t: Duration| t.as_nanos() as f64 / f64::from(block);
                    rounds.push((per(ta), per(tb)));
                    total += ta + tb;
                }
                total
            })
        });
        report_pair(group.name, group.param, a, b, &rounds);
    }
    g.finish();
}

fn run_block(step: &mut dyn FnMut(), n: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        step();
    }
    start.elapsed()
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

/// Prints a pair's result and, after a real run (not `--test`), stores it
/// for `benches/bench_table.py`.
fn report_pair(group: &str, param: Option<usize>, a: &str, b: &str, rounds: &[(f64, f64)]) {
    if rounds.is_empty() {
        return;
    }
    let mut ratios: Vec<f64> = rounds.iter().map(|(x, y)| x / y).collect();
    let mut xs: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let mut ys: Vec<f64> = rounds.iter().map(|r| r.1).collect();
    let ratio = median(&mut ratios);
    let (q1, q3) = (ratios[ratios.len() / 4], ratios[ratios.len() * 3 / 4]);
    let (x, y) = (median(&mut xs), median(&mut ys));
    if rounds.len() < 100 {
        return; // a `--test` run: too few rounds to mean anything
    }
    let param_str = param.map(|n| n.to_string()).unwrap_or_default();
    println!(
        "pair {group}/{a} vs {b} {param_str}: {x:.0} ns vs {y:.0} ns, \
         ratio {ratio:.3} (quartiles {q1:.3}..{q3:.3}, {} rounds)",
        rounds.len()
    );
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| PathBuf::from("target"), PathBuf::from)
                .join("criterion")
        });
    let dir = home.join("pairs");
    let file = dir.join(format!("{group}--{param_str}--{a}--{b}.json"));
    let json = format!(
        "{{\"group\":\"{group}\",\"param\":\"{param_str}\",\"a\":\"{a}\",\"b\":\"{b}\",\
         \"a_ns\":{x},\"b_ns\":{y},\"ratio\":{ratio},\"q1\":{q1},\"q3\":{q3},\
         \"rounds\":{}}}\n",
        rounds.len()
    );
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(file, json);
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    /// An existing lock file, nobody holding it between iterations.
    lock: PathBuf,
}

fn fixture() -> Fixture {
    let dir = match std::env::var_os("FLOCKGUARD_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .unwrap();
    let lock = dir.path().join("bench.lock");
    File::create(&lock).unwrap();
    Fixture { dir, lock }
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// Group 1: open the existing lock file, take an exclusive lock without
/// waiting, release by closing.
fn path_acquire(c: &mut Criterion) {
    let fx = fixture();
    let path = fx.lock.as_path();
    let mut allow = LockOptions::new();
    allow.remote_fs(RemoteFs::Allow);
    let allow = &allow;
    let statx_mask = StatxFlags::TYPE | StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);

    let cases = vec![
        case("flockguard", move || {
            drop(try_flock::<Exclusive>(black_box(path)).unwrap())
        }),
        case("flockguard_remote_allow", move || {
            drop(
                allow
                    .open(black_box(path))
                    .unwrap()
                    .try_lock::<Exclusive>()
                    .unwrap(),
            )
        }),
        // The physical limit of the contract: file-type and filesystem check.
        case("raw_open_fstat_fstatfs_flock_close", move || {
            let fd = raw_open(black_box(path));
            black_box(rustix::fs::fstat(&fd).unwrap());
            black_box(rustix::fs::fstatfs(&fd).unwrap());
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        }),
        // Both checks from one statx, as flockguard does on a known mount.
        case("raw_open_statx_flock_close", move || {
            let fd = raw_open(black_box(path));
            let st = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, statx_mask);
            black_box(st.unwrap());
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        }),
        // What a 0.2 path acquire and guard drop are made of.
        case("raw_open_statx_flock_unlock_close", move || {
            let fd = raw_open(black_box(path));
            let st = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, statx_mask);
            black_box(st.unwrap());
            raw_flock(&fd, Op::NonBlockingLockExclusive);
            raw_flock(&fd, Op::Unlock);
        }),
        // The same plus the getpid(2) of flockguard's fork-ownership record.
        case("raw_open_statx_getpid_flock_close", move || {
            let fd = raw_open(black_box(path));
            let st = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, statx_mask);
            black_box(st.unwrap());
            black_box(rustix::process::getpid());
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        }),
        case("raw_open_fstat_flock_close", move || {
            let fd = raw_open(black_box(path));
            black_box(rustix::fs::fstat(&fd).unwrap());
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        }),
        // The same plus the getpid(2) of flockguard's fork-ownership record.
        case("raw_open_fstat_getpid_flock_close", move || {
            let fd = raw_open(black_box(path));
            black_box(rustix::fs::fstat(&fd).unwrap());
            black_box(rustix::process::getpid());
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        }),
        case("raw_open_flock_close", move || {
            let fd = raw_open(black_box(path));
            raw_flock(&fd, Op::NonBlockingLockExclusive);
        }),
        case("std_try_lock", move || {
            open_rw(black_box(path)).try_lock().unwrap();
        }),
        case("fs4", move || {
            fs4::FileExt::try_lock(&open_rw(black_box(path))).unwrap();
        }),
        case("fd_lock", move || {
            let mut lock = fd_lock::RwLock::new(open_rw(black_box(path)));
            drop(lock.try_write().unwrap());
        }),
        case("nix_flock", move || {
            use nix::fcntl::{Flock, FlockArg};
            let file = open_rw(black_box(path));
            drop(Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap());
        }),
        // Checks on the path instead of the descriptor: does it exist, what
        // filesystem is it (or its parent when missing) on; then open, lock.
        case("exists_statfs_open_flock", move || {
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
        }),
    ];
    let reference = "raw_open_fstat_fstatfs_flock_close";
    let mut pairs: Vec<_> = cases
        .iter()
        .map(|c| c.name)
        .filter(|n| *n != reference)
        .map(|n| (n, reference))
        .collect();
    pairs.extend([
        ("flockguard", "raw_open_statx_flock_close"),
        ("flockguard", "raw_open_statx_flock_unlock_close"),
        ("flockguard", "raw_open_statx_getpid_flock_close"),
        ("flockguard_remote_allow", "raw_open_fstat_flock_close"),
        (
            "flockguard_remote_allow",
            "raw_open_fstat_getpid_flock_close",
        ),
        ("std_try_lock", "raw_open_flock_close"),
        ("fs4", "raw_open_flock_close"),
        ("fd_lock", "raw_open_flock_close"),
        ("nix_flock", "raw_open_flock_close"),
    ]);
    run_group(
        c,
        Group {
            name: "path_acquire",
            param: None,
            block: 32,
            cases,
            pairs,
        },
    );
}

/// Group 1b: the lock file is missing; create it, lock, release, and
/// unlink it again (both sides pay the unlink).
fn path_create(c: &mut Criterion) {
    let fx = fixture();
    let path = fx.dir.path().join("created.lock");
    let path = path.as_path();
    let create = |fd: OwnedFd| {
        black_box(rustix::fs::fstat(&fd).unwrap());
        black_box(rustix::fs::fstatfs(&fd).unwrap());
        raw_flock(&fd, Op::NonBlockingLockExclusive);
        drop(fd);
        rustix::fs::unlink(path).unwrap();
    };
    let excl = || {
        let how = flags() | OFlags::CREATE | OFlags::EXCL;
        rustix::fs::open(black_box(path), how, Mode::from_bits_truncate(0o666)).unwrap()
    };
    let cases = vec![
        case("flockguard", move || {
            drop(try_flock::<Exclusive>(black_box(path)).unwrap());
            rustix::fs::unlink(path).unwrap();
        }),
        // Creating with O_EXCL tells the caller it made the file.
        case("raw_create_fstat_fstatfs_flock_close_unlink", move || {
            create(excl())
        }),
        // The same after a failed plain open, as flockguard opens.
        case(
            "raw_enoent_create_fstat_fstatfs_flock_close_unlink",
            move || {
                let err = rustix::fs::open(black_box(path), flags(), Mode::empty());
                assert!(err.is_err());
                create(excl())
            },
        ),
    ];
    let reference = "raw_create_fstat_fstatfs_flock_close_unlink";
    run_group(
        c,
        Group {
            name: "path_create",
            param: None,
            block: 8,
            cases,
            pairs: vec![
                ("flockguard", reference),
                (
                    "raw_enoent_create_fstat_fstatfs_flock_close_unlink",
                    reference,
                ),
            ],
        },
    );
}

/// Group 2: one open descriptor per case, locked and unlocked again and
/// again.
fn reused_fd(c: &mut Criterion) {
    use nix::fcntl::{Flock, FlockArg};
    let fx = fixture();
    let path = fx.lock.as_path();

    let mut file = Some(LockFile::open(path).unwrap());
    let raw = raw_open(path);
    let raw_getpid = raw_open(path);
    let std_file = open_rw(path);
    let fs4_file = open_rw(path);
    let mut fd_lock = fd_lock::RwLock::new(open_rw(path));
    let mut nix_file = Some(open_rw(path));
    let cases = vec![
        case("flockguard", move || {
            let guard = file.take().unwrap().try_lock::<Exclusive>().unwrap();
            file = Some(guard.unlock().unwrap());
        }),
        case("raw_flock_flock", move || {
            raw_flock(&raw, Op::NonBlockingLockExclusive);
            raw_flock(&raw, Op::Unlock);
        }),
        // The same plus the getpid(2) of each of flockguard's two fork
        // checks (`try_lock`, `unlock`).
        case("raw_getpid_flock_getpid_flock", move || {
            black_box(rustix::process::getpid());
            raw_flock(&raw_getpid, Op::NonBlockingLockExclusive);
            black_box(rustix::process::getpid());
            raw_flock(&raw_getpid, Op::Unlock);
        }),
        case("std_try_lock_unlock", move || {
            std_file.try_lock().unwrap();
            std_file.unlock().unwrap();
        }),
        case("fs4", move || {
            fs4::FileExt::try_lock(&fs4_file).unwrap();
            fs4::FileExt::unlock(&fs4_file).unwrap();
        }),
        case("fd_lock", move || drop(fd_lock.try_write().unwrap())),
        case("nix_flock", move || {
            let file = nix_file.take().unwrap();
            let locked = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
            nix_file = Some(locked.unlock().unwrap());
        }),
    ];
    let reference = "raw_flock_flock";
    let mut pairs: Vec<_> = cases
        .iter()
        .map(|c| c.name)
        .filter(|n| *n != reference)
        .map(|n| (n, reference))
        .collect();
    pairs.push(("flockguard", "raw_getpid_flock_getpid_flock"));
    run_group(
        c,
        Group {
            name: "reused_fd",
            param: None,
            block: 128,
            cases,
            pairs,
        },
    );
}

/// Group 3: a shared lock taken while N other shared holders (other open
/// file descriptions of the same file) are present.
fn shared_holders(c: &mut Criterion) {
    let fx = fixture();
    let path = fx.lock.as_path();
    for n in [1usize, 8, 64] {
        let holders: Vec<LockGuard<Shared>> =
            (0..n).map(|_| try_flock::<Shared>(path).unwrap()).collect();
        let mut file = Some(LockFile::open(path).unwrap());
        let raw = raw_open(path);
        let cases = vec![
            case("flockguard_path", move || {
                drop(try_flock::<Shared>(black_box(path)).unwrap())
            }),
            case("raw_path", move || {
                let fd = raw_open(black_box(path));
                black_box(rustix::fs::fstat(&fd).unwrap());
                black_box(rustix::fs::fstatfs(&fd).unwrap());
                raw_flock(&fd, Op::NonBlockingLockShared);
            }),
            case("flockguard_reused", move || {
                let guard = file.take().unwrap().try_lock::<Shared>().unwrap();
                file = Some(guard.unlock().unwrap());
            }),
            case("raw_reused", move || {
                raw_flock(&raw, Op::NonBlockingLockShared);
                raw_flock(&raw, Op::Unlock);
            }),
        ];
        run_group(
            c,
            Group {
                name: "shared_holders",
                param: Some(n),
                block: 32,
                cases,
                pairs: vec![
                    ("flockguard_path", "raw_path"),
                    ("flockguard_reused", "raw_reused"),
                ],
            },
        );
        drop(holders);
    }
}

/// Group 4: mode transitions on a held lock, as round trips that end in
/// the state they started from. Each case keeps its lock between steps, so
/// each locks its own file in the group's directory.
fn transitions(c: &mut Criterion) {
    let fx = fixture();
    let file = |name: &str| {
        let path = fx.dir.path().join(name);
        File::create(&path).unwrap();
        path
    };
    let exclusive_fd = |name: &str| {
        let fd = raw_open(&file(name));
        raw_flock(&fd, Op::NonBlockingLockExclusive);
        fd
    };
    let mut down_up = Some(try_flock::<Exclusive>(file("a.lock")).unwrap());
    let mut down_try_up = Some(try_flock::<Exclusive>(file("b.lock")).unwrap());
    let raw_down_up = exclusive_fd("c.lock");
    let raw_down_try_up = exclusive_fd("d.lock");
    let getpid_down_up = exclusive_fd("e.lock");
    let getpid_down_try_up = exclusive_fd("f.lock");
    let cases = vec![
        case("flockguard_downgrade_upgrade", move || {
            let shared = down_up.take().unwrap().downgrade().unwrap();
            down_up = Some(shared.upgrade().unwrap());
        }),
        case("raw_downgrade_upgrade", move || {
            raw_flock(&raw_down_up, Op::NonBlockingLockShared);
            raw_flock(&raw_down_up, Op::LockExclusive);
        }),
        case("flockguard_downgrade_try_upgrade", move || {
            let shared = down_try_up.take().unwrap().downgrade().unwrap();
            down_try_up = Some(shared.try_upgrade().unwrap());
        }),
        case("raw_downgrade_try_upgrade", move || {
            raw_flock(&raw_down_try_up, Op::NonBlockingLockShared);
            raw_flock(&raw_down_try_up, Op::NonBlockingLockExclusive);
        }),
        // The raw round trips plus the getpid(2) of each conversion's fork
        // check.
        case("raw_getpid_downgrade_getpid_upgrade", move || {
            black_box(rustix::process::getpid());
            raw_flock(&getpid_down_up, Op::NonBlockingLockShared);
            black_box(rustix::process::getpid());
            raw_flock(&getpid_down_up, Op::LockExclusive);
        }),
        case("raw_getpid_downgrade_getpid_try_upgrade", move || {
            black_box(rustix::process::getpid());
            raw_flock(&getpid_down_try_up, Op::NonBlockingLockShared);
            black_box(rustix::process::getpid());
            raw_flock(&getpid_down_try_up, Op::NonBlockingLockExclusive);
        }),
    ];
    run_group(
        c,
        Group {
            name: "transitions",
            param: None,
            block: 128,
            cases,
            pairs: vec![
                ("flockguard_downgrade_upgrade", "raw_downgrade_upgrade"),
                (
                    "flockguard_downgrade_try_upgrade",
                    "raw_downgrade_try_upgrade",
                ),
                (
                    "flockguard_downgrade_upgrade",
                    "raw_getpid_downgrade_getpid_upgrade",
                ),
                (
                    "flockguard_downgrade_try_upgrade",
                    "raw_getpid_downgrade_getpid_try_upgrade",
                ),
            ],
        },
    );
}

/// `fcntl(fd, F_OFD_SETLK, {l_type, whole file})`, as a program would call
/// it through nix.
fn raw_ofd(fd: impl AsFd, l_type: i32) {
    use nix::fcntl::{fcntl, FcntlArg};
    let lock = nix::libc::flock {
        l_type: l_type as nix::libc::c_short,
        l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(fd.as_fd(), FcntlArg::F_OFD_SETLK(&lock)).unwrap();
}

/// Group 6: OFD locks (`LockKind::Ofd`) against the raw `fcntl(2)` calls:
/// a path acquire and guard drop, and a reused descriptor's cycle.
fn ofd(c: &mut Criterion) {
    use nix::libc::{F_UNLCK, F_WRLCK};
    let fx = fixture();
    let path = fx.lock.as_path();
    let mut opts = LockOptions::new();
    opts.kind(flockguard::LockKind::Ofd);
    let opts = &opts;
    let statx_mask = StatxFlags::TYPE | StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    let mut file = Some(opts.open(path).unwrap());
    let raw = raw_open(path);
    let cases = vec![
        case("flockguard_ofd_path", move || {
            drop(
                opts.open(black_box(path))
                    .unwrap()
                    .try_lock::<Exclusive>()
                    .unwrap(),
            )
        }),
        // What the path acquire and the guard's drop are made of.
        case("raw_open_statx_ofd_unlock_close", move || {
            let fd = raw_open(black_box(path));
            let st = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, statx_mask);
            black_box(st.unwrap());
            raw_ofd(&fd, F_WRLCK);
            raw_ofd(&fd, F_UNLCK);
        }),
        case("flockguard_ofd_reused", move || {
            let guard = file.take().unwrap().try_lock::<Exclusive>().unwrap();
            file = Some(guard.unlock().unwrap());
        }),
        case("raw_ofd_ofd", move || {
            raw_ofd(&raw, F_WRLCK);
            raw_ofd(&raw, F_UNLCK);
        }),
    ];
    run_group(
        c,
        Group {
            name: "ofd",
            param: None,
            block: 128,
            cases,
            pairs: vec![
                ("flockguard_ofd_path", "raw_open_statx_ofd_unlock_close"),
                ("flockguard_ofd_reused", "raw_ofd_ofd"),
            ],
        },
    );
}

criterion_group! {
    name = benches;
    config = criterion::Criterion::default().with_measurement(Clock::from_env());
    targets = path_acquire, path_create, reused_fd, shared_holders, transitions, ofd
}
criterion_main!(benches);
