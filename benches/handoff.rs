//! Cross-process lock handoff: the time from a holder's release (a guard
//! drop, python's `os.close`, the exit of util-linux `flock(1)`) to a
//! waiting process's acquisition, for waiters in `lock_timeout`,
//! `flock_timeout` and (feature `tokio`) `flockguard::tokio::lock_timeout`
//! against a waiter blocked in `flock(2)`, a 100 ms `LOCK_NB` poller and
//! two floors that use no flockguard (an inotify-woken thread and, with
//! `tokio`, an `AsyncFd`-woken task);
//! 500 threads and 1 000 tasks waiting in one process; deadline lateness
//! beside busy loops; and the waiter's wake-ups per second while the holder
//! keeps the lock, alone and as tasks beyond the 64 per-task retry timers
//! of a process.
//!
//! The benchmark process is the holder; each waiter is this binary
//! re-executed as a child. Both sides read `CLOCK_MONOTONIC`, so the
//! latency is `t(acquired in waiter) - t(just before release in holder)`.
//! Wake-ups are the waiter's voluntary context switches
//! (`/proc/PID/status`): every sleep that ends is one.
//!
//! Run: `cargo bench -p flockguard-benches --features tokio --bench handoff`
//! (a few minutes); `-- --test` runs every case once. Summaries with exact medians over every handoff are
//! printed at the end. `FLOCKGUARD_BENCH_MATRIX_ONLY=ROUNDS` runs only the
//! holder × waiter matrix (about 1 s per 7 rounds);
//! `FLOCKGUARD_BENCH_USERS_ONLY=ROUNDS` only the users' scenario (a fresh
//! holder process per handoff, waiters that waited 5–75 ms), on a quiet
//! machine and then beside a busy loop on half the CPUs (about 5 s per
//! round); `FLOCKGUARD_BENCH_COSTS_ONLY=1` only the costs while waiting and
//! the wake-ups (about 2 minutes); `FLOCKGUARD_BENCH_WAKEUPS_ONLY=SECONDS`
//! only the wake-ups, over the first second and `SECONDS` after;
//! `FLOCKGUARD_BENCH_DEADLINES_ONLY=WAITS` only how late timeouts return,
//! by the wait's length; `FLOCKGUARD_BENCH_CROWD_ONLY=ROUNDS`
//! only the many-waiter tables.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode};
use flockguard::{Exclusive, LockFile};

const CHILD_ENV: &str = "FLOCKGUARD_BENCH_HANDOFF_CHILD";
/// Set to a number of rounds to run only the handoff matrix.
const MATRIX_ONLY_ENV: &str = "FLOCKGUARD_BENCH_MATRIX_ONLY";

/// How the waiter waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiter {
    /// `flock(LOCK_EX)`, blocked in the kernel: the floor.
    Flock,
    /// `LockFile::lock_timeout` on a reused `LockFile`.
    Timed,
    /// `flock_timeout(path)`: open, wait, and close when done.
    Path,
    /// `flockguard::tokio::lock_timeout` on a current-thread runtime.
    Async,
    /// `flockguard::tokio::flock_timeout(path)` on a current-thread
    /// runtime: open, wait, and close when done.
    AsyncPath,
    /// `lock_timeout` in a process with no descriptor left for inotify.
    TimedNoEvents,
    /// `LOCK_NB` every 100 ms, the approach being replaced.
    Poll100,
    /// `poll(2)` on an inotify close watch on the file, drain, `LOCK_NB`:
    /// the floor of an event-woken thread.
    InotifyFloor,
    /// The same watch registered with tokio's reactor (`AsyncFd`) on a
    /// current-thread runtime, then `LOCK_NB`: the floor of an event-woken
    /// task.
    TokioFloor,
}

impl Waiter {
    fn name(self) -> &'static str {
        match self {
            Waiter::Flock => "flock",
            Waiter::Timed => "lock_timeout",
            Waiter::Path => "flock_timeout",
            Waiter::Async => "tokio_lock_timeout",
            Waiter::AsyncPath => "tokio_flock_timeout",
            Waiter::TimedNoEvents => "lock_timeout_no_inotify",
            Waiter::Poll100 => "poll_100ms",
            Waiter::InotifyFloor => "inotify_floor",
            Waiter::TokioFloor => "tokio_floor",
        }
    }

    fn from_name(name: &str) -> Waiter {
        [
            Waiter::Flock,
            Waiter::Timed,
            Waiter::Path,
            Waiter::Async,
            Waiter::AsyncPath,
            Waiter::TimedNoEvents,
            Waiter::Poll100,
            Waiter::InotifyFloor,
            Waiter::TokioFloor,
        ]
        .into_iter()
        .find(|w| w.name() == name)
        .expect("waiter name")
    }
}

/// How the holder lets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    /// Drop the guard: `close(2)`.
    Close,
    /// `LockGuard::unlock`: `flock(LOCK_UN)`, descriptor kept.
    Unlock,
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec passed.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---- the waiter process --------------------------------------------------

fn waiter_main(args: &str) {
    let (kind, path) = args.split_once('\u{1f}').expect("kind and path");
    let kind = Waiter::from_name(kind);
    let mut file = Some(LockFile::open(path).expect("open"));
    if kind == Waiter::TimedNoEvents {
        exhaust_descriptors();
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        if line.expect("stdin") != "go" {
            break;
        }
        writeln!(out, "waiting").unwrap();
        out.flush().unwrap();
        if matches!(kind, Waiter::Path | Waiter::AsyncPath) {
            let guard = if kind == Waiter::Path {
                flockguard::flock_timeout::<Exclusive>(path, Duration::from_secs(120)).unwrap()
            } else {
                async_flock(path)
            };
            let t = now_ns();
            drop(guard);
            writeln!(out, "acq {t}").unwrap();
            out.flush().unwrap();
            continue;
        }
        if matches!(kind, Waiter::InotifyFloor | Waiter::TokioFloor) {
            let f = file.as_ref().unwrap();
            if kind == Waiter::InotifyFloor {
                inotify_floor(f);
            } else {
                tokio_floor(f);
            }
            let t = now_ns();
            rustix::fs::flock(f, rustix::fs::FlockOperation::Unlock).unwrap();
            writeln!(out, "acq {t}").unwrap();
            out.flush().unwrap();
            continue;
        }
        let f = file.take().unwrap();
        let guard = match kind {
            Waiter::Async => async_lock(f),
            Waiter::Flock => f.lock::<Exclusive>().unwrap(),
            Waiter::Timed | Waiter::TimedNoEvents | Waiter::Path => f
                .lock_timeout::<Exclusive>(Duration::from_secs(120))
                .unwrap(),
            Waiter::InotifyFloor | Waiter::TokioFloor | Waiter::AsyncPath => {
                unreachable!("handled above")
            }
            Waiter::Poll100 => {
                let mut f = f;
                loop {
                    match f.try_lock::<Exclusive>() {
                        Ok(g) => break g,
                        Err(e) => f = e.into_inner(),
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let t = now_ns();
        file = Some(guard.unlock().unwrap());
        writeln!(out, "acq {t}").unwrap();
        out.flush().unwrap();
    }
}

/// Lowers RLIMIT_NOFILE so that no new descriptor can be opened: inotify,
/// eventfd and /proc reads all fail, leaving only the back-off.
fn exhaust_descriptors() {
    let lowest_free = (0..)
        .find(|fd| !std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists())
        .unwrap();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit/inotify_init1 touch only what is passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lowest_free;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        assert_eq!(libc::inotify_init1(libc::IN_CLOEXEC), -1);
    }
}

// ---- the holder (this process) ---------------------------------------------

struct WaiterProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WaiterProc {
    fn spawn(kind: Waiter, path: &std::path::Path) -> WaiterProc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(
                CHILD_ENV,
                format!("{}\u{1f}{}", kind.name(), path.to_str().unwrap()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn waiter");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        WaiterProc {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        assert!(self.stdout.read_line(&mut s).unwrap() > 0, "waiter died");
        s.trim_end().to_owned()
    }

    fn voluntary_switches(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for WaiterProc {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// A small deterministic generator for the release phase.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

struct Scenario {
    path: std::path::PathBuf,
    waiter: WaiterProc,
    release: Release,
    kept: Option<LockFile>,
    phase: Lcg,
    /// How long the waiter waits before the release: fixed for waiters that
    /// react to an event, spread uniformly for those that poll on a
    /// schedule, so the release falls at every point of it.
    settle_ms: (u64, u64),
}

impl Scenario {
    fn new(dir: &std::path::Path, kind: Waiter, release: Release) -> Scenario {
        let path = dir.join(format!("{}-{release:?}.lock", kind.name()));
        flockguard::materialize(&path).unwrap();
        let event_driven = matches!(kind, Waiter::Flock)
            || (matches!(kind, Waiter::Timed | Waiter::Path) && release == Release::Close);
        Scenario {
            waiter: WaiterProc::spawn(kind, &path),
            kept: Some(LockFile::open(&path).unwrap()),
            path,
            release,
            phase: Lcg(0x5eed),
            settle_ms: if event_driven { (2, 1) } else { (0, 250) },
        }
    }

    /// One handoff; returns release→acquire latency.
    fn handoff(&mut self) -> Duration {
        let file = match self.release {
            Release::Close => LockFile::open(&self.path).unwrap(),
            Release::Unlock => self.kept.take().unwrap(),
        };
        let guard = file.try_lock::<Exclusive>().expect("holder lock");
        self.waiter.send("go");
        assert_eq!(self.waiter.line(), "waiting");
        let (base, spread) = self.settle_ms;
        std::thread::sleep(Duration::from_millis(base + self.phase.below(spread)));
        let released = now_ns();
        match self.release {
            Release::Close => drop(guard),
            Release::Unlock => self.kept = Some(guard.unlock().unwrap()),
        }
        let line = self.waiter.line();
        let acquired: u64 = line.strip_prefix("acq ").unwrap().parse().unwrap();
        Duration::from_nanos(acquired.saturating_sub(released))
    }

    /// Wake-ups per second of the waiter while the lock is held: over the
    /// first second, and over the following `steady` seconds.
    fn wakeups(&mut self, steady: u64) -> (f64, f64) {
        let file = LockFile::open(&self.path).unwrap();
        let guard = file.try_lock::<Exclusive>().expect("holder lock");
        self.waiter.send("go");
        assert_eq!(self.waiter.line(), "waiting");
        let c0 = self.waiter.voluntary_switches();
        std::thread::sleep(Duration::from_secs(1));
        let c1 = self.waiter.voluntary_switches();
        std::thread::sleep(Duration::from_secs(steady));
        let c2 = self.waiter.voluntary_switches();
        drop(guard);
        self.waiter.line();
        ((c1 - c0) as f64, (c2 - c1) as f64 / steady.max(1) as f64)
    }
}

static SAMPLES: Mutex<Vec<(String, Vec<Duration>)>> = Mutex::new(Vec::new());

fn record(name: &str, d: Duration) {
    let mut all = SAMPLES.lock().unwrap();
    match all.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(d),
        None => all.push((name.to_owned(), vec![d])),
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[cfg(feature = "tokio")]
thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
}

#[cfg(feature = "tokio")]
fn async_lock(file: LockFile) -> flockguard::LockGuard<Exclusive> {
    RT.with(|rt| {
        rt.block_on(flockguard::tokio::lock_timeout::<Exclusive>(
            file,
            Duration::from_secs(120),
        ))
        .unwrap()
    })
}

#[cfg(feature = "tokio")]
fn async_flock(path: &str) -> flockguard::LockGuard<Exclusive> {
    RT.with(|rt| {
        rt.block_on(flockguard::tokio::flock_timeout::<Exclusive>(
            path,
            Duration::from_secs(120),
        ))
        .unwrap()
    })
}

/// A non-blocking inotify instance watching `file` for closes.
fn close_watch(file: &LockFile) -> std::os::fd::OwnedFd {
    use rustix::fs::inotify;
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).unwrap();
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
    inotify::add_watch(
        &fd,
        proc_path,
        inotify::WatchFlags::CLOSE_WRITE | inotify::WatchFlags::CLOSE_NOWRITE,
    )
    .unwrap();
    fd
}

/// Reads `fd` until `EAGAIN`.
fn drain(fd: &std::os::fd::OwnedFd) {
    let mut buf = [0u8; 4096];
    while rustix::io::read(fd, &mut buf).is_ok() {}
}

fn try_exclusive(file: &LockFile) -> bool {
    rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
}

/// Waits as an event-woken thread does at the least: `poll(2)` on the
/// watch, drain, `LOCK_NB`.
fn inotify_floor(file: &LockFile) {
    use rustix::event::{poll, PollFd, PollFlags};
    thread_local! {
        static WATCH: std::cell::OnceCell<std::os::fd::OwnedFd> = const { std::cell::OnceCell::new() };
    }
    WATCH.with(|w| {
        let fd = w.get_or_init(|| close_watch(file));
        drain(fd);
        while !try_exclusive(file) {
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            // A distant timeout: only a safety net.
            let _ = poll(
                &mut fds,
                Some(&rustix::time::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                }),
            );
            drain(fd);
            if retry_after_close(std::thread::yield_now, file) {
                return;
            }
        }
    })
}

/// After a close event: retries for up to 1 ms, yielding between tries
/// (the event precedes the release; a closer preempted in between lets go
/// when it runs again). Whether the lock was taken.
fn retry_after_close(mut yield_now: impl FnMut(), file: &LockFile) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1) {
        if try_exclusive(file) {
            return true;
        }
        yield_now();
    }
    false
}

/// Waits as an event-woken task does at the least: the watch registered
/// with the reactor, drain, `LOCK_NB`.
#[cfg(feature = "tokio")]
// `AsyncFd::new`'s deprecation is about descriptors closed while
// registered; this one is owned by the `AsyncFd`.
#[allow(deprecated)]
fn tokio_floor(file: &LockFile) {
    use std::cell::Cell;
    use std::os::fd::OwnedFd;
    use tokio::io::unix::AsyncFd;
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        static WATCH: Cell<Option<AsyncFd<OwnedFd>>> = const { Cell::new(None) };
    }
    RT.with(|rt| {
        let _entered = rt.enter();
        let watch = WATCH
            .take()
            .unwrap_or_else(|| AsyncFd::new(close_watch(file)).unwrap());
        rt.block_on(async {
            drain(watch.get_ref());
            while !try_exclusive(file) {
                // A distant timeout: only a safety net.
                let Ok(ready) =
                    tokio::time::timeout(Duration::from_secs(1), watch.readable()).await
                else {
                    continue;
                };
                let mut ready = ready.unwrap();
                ready.clear_ready();
                drain(watch.get_ref());
                // After a close event: retry for up to 1 ms, yielding to
                // the runtime between tries.
                let start = std::time::Instant::now();
                while start.elapsed() < Duration::from_millis(1) && !try_exclusive(file) {
                    tokio::task::yield_now().await;
                }
                if start.elapsed() < Duration::from_millis(1) {
                    break;
                }
            }
        });
        WATCH.set(Some(watch));
    })
}

#[cfg(not(feature = "tokio"))]
fn tokio_floor(_: &LockFile) {
    unreachable!("the async floor runs only with the tokio feature")
}

#[cfg(not(feature = "tokio"))]
fn async_lock(_: LockFile) -> flockguard::LockGuard<Exclusive> {
    unreachable!("the async waiter runs only with the tokio feature")
}

#[cfg(not(feature = "tokio"))]
fn async_flock(_: &str) -> flockguard::LockGuard<Exclusive> {
    unreachable!("the async waiter runs only with the tokio feature")
}

// ---- holders in other programs ---------------------------------------------

/// Who holds the lock before the handoff, and how it lets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// This process: a guard dropped (`close(2)`).
    GuardDrop,
    /// A python process: `fcntl.flock`, then `os.close`.
    Python,
    /// util-linux `flock(1)` running `cat`; it exits when `cat` sees EOF.
    FlockCommand,
}

impl Holder {
    fn name(self) -> &'static str {
        match self {
            Holder::GuardDrop => "guard drop",
            Holder::Python => "python os.close",
            Holder::FlockCommand => "flock(1) exit",
        }
    }
}

const PYTHON_HOLDER: &str = r#"
import fcntl, os, sys, time
path = sys.argv[1]
fd = None
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "lock":
        fd = os.open(path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
    elif cmd == "release":
        t = time.monotonic_ns()
        os.close(fd)
        print(t, flush=True)
    else:
        break
"#;

struct Python {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Python {
    fn spawn(path: &std::path::Path) -> Option<Python> {
        let mut child = Command::new("python3")
            .args(["-c", PYTHON_HOLDER])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Some(Python {
            child,
            stdin,
            stdout,
        })
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut s = String::new();
        assert!(self.stdout.read_line(&mut s).unwrap() > 0, "python died");
        s.trim_end().to_owned()
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// A lock held by the holder of `kind`, released by [`Held::release`].
enum Held {
    Guard(flockguard::LockGuard<Exclusive>),
    Python,
    Command(Child, ChildStdin),
}

fn take_lock(kind: Holder, path: &std::path::Path, python: &mut Option<Python>) -> Held {
    match kind {
        Holder::GuardDrop => Held::Guard(
            LockFile::open(path)
                .unwrap()
                .try_lock::<Exclusive>()
                .expect("holder lock"),
        ),
        Holder::Python => {
            assert_eq!(python.as_mut().unwrap().ask("lock"), "locked");
            Held::Python
        }
        Holder::FlockCommand => {
            let mut child = Command::new("flock")
                .arg("-x")
                .arg(path)
                .args(["sh", "-c", "echo locked; exec cat"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("flock(1)");
            let stdin = child.stdin.take().unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim_end(), "locked");
            Held::Command(child, stdin)
        }
    }
}

impl Held {
    /// Lets go; returns the `CLOCK_MONOTONIC` time just before.
    fn release(self, python: &mut Option<Python>) -> u64 {
        match self {
            Held::Guard(g) => {
                let t = now_ns();
                drop(g);
                t
            }
            Held::Python => python.as_mut().unwrap().ask("release").parse().unwrap(),
            Held::Command(mut child, stdin) => {
                let t = now_ns();
                drop(stdin);
                child.wait().unwrap();
                t
            }
        }
    }
}

/// One handoff from `holder` to `waiter`; returns release→acquire latency.
fn handoff_from(
    holder: Holder,
    path: &std::path::Path,
    waiter: &mut WaiterProc,
    python: &mut Option<Python>,
    phase: &mut Lcg,
) -> Duration {
    let held = take_lock(holder, path, python);
    waiter.send("go");
    assert_eq!(waiter.line(), "waiting");
    std::thread::sleep(Duration::from_micros(2000 + phase.below(1000)));
    let released = held.release(python);
    let line = waiter.line();
    let acquired: u64 = line.strip_prefix("acq ").unwrap().parse().unwrap();
    Duration::from_nanos(acquired.saturating_sub(released))
}

/// Every holder kind against every waiter kind, round-robin so that load
/// from elsewhere hits all alike; medians and ratios to `flock(2)`.
fn handoff_matrix(dir: &std::path::Path, rounds: usize) {
    let path = dir.join("matrix.lock");
    flockguard::materialize(&path).unwrap();
    let mut waiters = vec![
        Waiter::Flock,
        Waiter::InotifyFloor,
        Waiter::Timed,
        Waiter::Path,
    ];
    if cfg!(feature = "tokio") {
        waiters.extend([Waiter::TokioFloor, Waiter::Async]);
    }
    let mut procs: Vec<WaiterProc> = waiters
        .iter()
        .map(|&w| WaiterProc::spawn(w, &path))
        .collect();
    let mut python = Python::spawn(&path);
    let flock_cmd = Command::new("flock").arg("--version").output().is_ok();
    let holders: Vec<Holder> = [Holder::GuardDrop, Holder::Python, Holder::FlockCommand]
        .into_iter()
        .filter(|h| match h {
            Holder::Python => python.is_some(),
            Holder::FlockCommand => flock_cmd,
            Holder::GuardDrop => true,
        })
        .collect();
    let mut samples = vec![vec![Vec::new(); waiters.len()]; holders.len()];
    let mut phase = Lcg(0xfeed);
    for _ in 0..rounds {
        for (h, &holder) in holders.iter().enumerate() {
            for (w, waiter) in procs.iter_mut().enumerate() {
                let d = handoff_from(holder, &path, waiter, &mut python, &mut phase);
                samples[h][w].push(d);
            }
        }
    }
    println!("\n== handoff matrix: {rounds} rounds, every holder to every waiter in turn (median; × flock(2))");
    let rows: Vec<&str> = holders.iter().map(|h| h.name()).collect();
    ratio_table("holder releases by", &waiters, &rows, &mut samples, 1);
}

/// Prints a matrix of medians, each with its ratio to the row's first
/// column (the waiter blocked in `flock(2)`), to `decimals` of a µs.
fn ratio_table(
    corner: &str,
    waiters: &[Waiter],
    rows: &[&str],
    samples: &mut [Vec<Vec<Duration>>],
    decimals: usize,
) {
    let names: Vec<&str> = waiters.iter().map(|w| w.name()).collect();
    println!("| {corner} | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(names.len()));
    for (row, cells) in rows.iter().zip(samples.iter_mut()) {
        let m: Vec<Duration> = cells.iter_mut().map(|v| median(v)).collect();
        let cells: Vec<String> = m
            .iter()
            .map(|d| {
                format!(
                    "{:.decimals$} µs ({:.2}×)",
                    d.as_nanos() as f64 / 1e3,
                    d.as_nanos() as f64 / m[0].as_nanos().max(1) as f64
                )
            })
            .collect();
        println!("| {row} | {} |", cells.join(" | "));
    }
}

// ---- the users' scenario: fresh holders, waiters that waited a while --------

/// Set to a number of rounds to run only the users'-scenario matrix.
const USERS_ONLY_ENV: &str = "FLOCKGUARD_BENCH_USERS_ONLY";
/// In a re-executed holder: `close` or `guard`, a tab, the path.
const FRESH_HOLDER_ENV: &str = "FLOCKGUARD_BENCH_FRESH_HOLDER";

/// A holder that lives for one handoff, as a build step, a cron job or a
/// script does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FreshHolder {
    /// `python3`: `fcntl.flock`, then `os.close`.
    Python,
    /// A process that takes the lock with `flock(2)` and lets go by
    /// `close(2)` alone, as C programs and shells do.
    Close,
    /// A process that drops a flockguard guard (`LOCK_UN`, then `close`).
    GuardDrop,
}

impl FreshHolder {
    fn name(self) -> &'static str {
        match self {
            FreshHolder::Python => "python fcntl.flock + os.close",
            FreshHolder::Close => "close(2) without LOCK_UN",
            FreshHolder::GuardDrop => "flockguard guard drop",
        }
    }

    /// Starts the holder; returns once it holds the lock.
    fn spawn(self, path: &std::path::Path) -> FreshProc {
        let mut cmd = match self {
            FreshHolder::Python => {
                let mut c = Command::new("python3");
                c.args(["-c", PYTHON_HOLDER]).arg(path);
                c
            }
            FreshHolder::Close | FreshHolder::GuardDrop => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                let how = if self == FreshHolder::Close {
                    "close"
                } else {
                    "guard"
                };
                c.env(
                    FRESH_HOLDER_ENV,
                    format!("{how}\t{}", path.to_str().unwrap()),
                );
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("holder");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = FreshProc {
            child,
            stdin,
            stdout,
        };
        assert_eq!(p.ask("lock"), "locked");
        p
    }
}

/// A running fresh holder, speaking the python holder's protocol.
struct FreshProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl FreshProc {
    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut s = String::new();
        assert!(self.stdout.read_line(&mut s).unwrap() > 0, "holder died");
        s.trim_end().to_owned()
    }

    /// Lets go and exits; returns the time just before the release.
    fn release(mut self) -> u64 {
        let t = self.ask("release").parse().unwrap();
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
        t
    }
}

/// The re-executed holder process: the python holder's protocol, with a
/// bare `close(2)` or a guard drop.
fn fresh_holder_main(args: &str) {
    let (how, path) = args.split_once('\t').expect("how and path");
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut held: Option<flockguard::LockGuard<Exclusive>> = None;
    let mut raw: Option<std::os::fd::OwnedFd> = None;
    for line in stdin.lock().lines() {
        match line.expect("stdin").as_str() {
            "lock" => {
                if how == "close" {
                    let fd = rustix::fs::open(
                        path,
                        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    )
                    .unwrap();
                    rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive).unwrap();
                    raw = Some(fd);
                } else {
                    held = Some(LockFile::open(path).unwrap().lock::<Exclusive>().unwrap());
                }
                writeln!(out, "locked").unwrap();
            }
            "release" => {
                let t = now_ns();
                drop(raw.take());
                drop(held.take());
                writeln!(out, "{t}").unwrap();
            }
            _ => break,
        }
        out.flush().unwrap();
    }
}

/// One handoff from a fresh `holder` to `waiter`, which has waited
/// `waited_ms` when the holder lets go; returns release→acquire latency.
fn fresh_handoff(
    holder: FreshHolder,
    path: &std::path::Path,
    waiter: &mut WaiterProc,
    waited_ms: u64,
) -> Duration {
    let held = holder.spawn(path);
    waiter.send("go");
    assert_eq!(waiter.line(), "waiting");
    std::thread::sleep(Duration::from_millis(waited_ms));
    let released = held.release();
    let line = waiter.line();
    let acquired: u64 = line.strip_prefix("acq ").unwrap().parse().unwrap();
    Duration::from_nanos(acquired.saturating_sub(released))
}

/// The users' scenario: every fresh holder kind against every waiter kind,
/// each waiter having waited 5–75 ms (drawn per handoff), round-robin so
/// that load from elsewhere hits all alike; medians and ratios to a thread
/// blocked in `flock(2)`.
fn users_matrix(dir: &std::path::Path, rounds: usize, busy: usize) {
    let path = dir.join("users.lock");
    let mut burners = burn(busy);
    flockguard::materialize(&path).unwrap();
    let mut waiters = vec![
        Waiter::Flock,
        Waiter::InotifyFloor,
        Waiter::Path,
        Waiter::Timed,
    ];
    if cfg!(feature = "tokio") {
        waiters.extend([Waiter::TokioFloor, Waiter::AsyncPath]);
    }
    let mut procs: Vec<WaiterProc> = waiters
        .iter()
        .map(|&w| WaiterProc::spawn(w, &path))
        .collect();
    let python = Command::new("python3").arg("--version").output().is_ok();
    let holders: Vec<FreshHolder> = [
        FreshHolder::Python,
        FreshHolder::Close,
        FreshHolder::GuardDrop,
    ]
    .into_iter()
    .filter(|h| *h != FreshHolder::Python || python)
    .collect();
    let mut samples = vec![vec![Vec::new(); waiters.len()]; holders.len()];
    let mut phase = Lcg(0xc0ffee);
    for _ in 0..rounds {
        for (h, &holder) in holders.iter().enumerate() {
            for (w, waiter) in procs.iter_mut().enumerate() {
                let waited = 5 + phase.below(71);
                samples[h][w].push(fresh_handoff(holder, &path, waiter, waited));
            }
        }
    }
    for b in &mut burners {
        let _ = b.kill();
        let _ = b.wait();
    }
    let beside = match busy {
        0 => String::new(),
        n => format!(", {n} busy loop(s) beside"),
    };
    println!(
        "\n== users' scenario: {rounds} rounds, a fresh holder process per handoff, the waiter \
         waited 5–75 ms{beside} (median; × a thread blocked in flock(2))"
    );
    let rows: Vec<&str> = holders.iter().map(|h| h.name()).collect();
    ratio_table("holder lets go by", &waiters, &rows, &mut samples, 0);
}

// ---- costs while waiting ---------------------------------------------------

/// Set to `1` to run only the costs while waiting.
const COSTS_ONLY_ENV: &str = "FLOCKGUARD_BENCH_COSTS_ONLY";
/// In a re-executed cost child: what to measure, a tab, the path.
const COST_CHILD_ENV: &str = "FLOCKGUARD_BENCH_COST_CHILD";

/// This process's CPU time.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A cost child: prints what it measured as one line.
fn cost_child_main(args: &str) {
    let (what, path) = args.split_once('\t').expect("what and path");
    let line = match what {
        "tasks" => tasks_waiting(path, true),
        "tasks-no-holders" => tasks_waiting(path, false),
        "directory" => directory_waiter(path),
        "ticker" => ticker_gaps(path, true),
        "ticker-alone" => ticker_gaps(path, false),
        other => panic!("unknown cost {other}"),
    };
    println!("{line}");
}

/// 100 tasks on a current-thread runtime wait 1 s for a held lock
/// (`flockguard::tokio::lock_timeout`, which reads the holders for its
/// error); the process CPU time over the wait, in ms.
///
/// Without `holders`, each task waits in `flockguard::tokio::lock` under a
/// 1 s `tokio::time::timeout`: no holder list is read.
#[cfg(feature = "tokio")]
fn tasks_waiting(path: &str, holders: bool) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let files: Vec<LockFile> = (0..100).map(|_| LockFile::open(path).unwrap()).collect();
    let cpu = process_cpu();
    rt.block_on(async {
        let tasks: Vec<_> = files
            .into_iter()
            .map(|f| {
                tokio::spawn(async move {
                    let limit = Duration::from_secs(1);
                    if holders {
                        let err = flockguard::tokio::lock_timeout::<Exclusive>(f, limit).await;
                        assert!(err.unwrap_err().is_timeout());
                    } else {
                        let waited =
                            tokio::time::timeout(limit, flockguard::tokio::lock::<Exclusive>(f));
                        assert!(waited.await.is_err());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    format!("{:.1}", (process_cpu() - cpu).as_secs_f64() * 1e3)
}

#[cfg(not(feature = "tokio"))]
fn tasks_waiting(_: &str, _: bool) -> String {
    unreachable!("the async costs run only with the tokio feature")
}

/// A thread waits 4 s (`lock_timeout`) for a held lock on the directory
/// `path` while a shell loop creates and closes a file in it; the process
/// CPU time, in ms.
fn directory_waiter(path: &str) -> String {
    let dir = flockguard::LockOptions::new()
        .allow_directory(true)
        .open(path)
        .unwrap();
    let cpu = process_cpu();
    let err = dir
        .lock_timeout::<Exclusive>(Duration::from_secs(4))
        .unwrap_err();
    assert!(err.is_timeout());
    format!("{:.1}", (process_cpu() - cpu).as_secs_f64() * 1e3)
}

/// A 10 ms ticker on a current-thread runtime for 2 s, beside (`busy`) 10
/// tasks that each wait 50 ms in a loop for a held lock and time out with
/// the holder diagnostics on; the largest gap between ticks, in ms.
#[cfg(feature = "tokio")]
fn ticker_gaps(path: &str, busy: bool) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiters: Vec<_> = (0..if busy { 10 } else { 0 })
            .map(|_| {
                let (path, stop) = (path.to_owned(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let f = LockFile::open(&path).unwrap();
                        let err = flockguard::tokio::lock_timeout::<Exclusive>(
                            f,
                            Duration::from_millis(50),
                        )
                        .await
                        .unwrap_err();
                        assert!(err.is_timeout());
                    }
                })
            })
            .collect();
        let mut interval = tokio::time::interval(Duration::from_millis(10));
        interval.tick().await;
        let mut last = std::time::Instant::now();
        let mut largest = Duration::ZERO;
        for _ in 0..200 {
            interval.tick().await;
            largest = largest.max(last.elapsed());
            last = std::time::Instant::now();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in waiters {
            w.await.unwrap();
        }
        format!("{:.1}", largest.as_secs_f64() * 1e3)
    })
}

#[cfg(not(feature = "tokio"))]
fn ticker_gaps(_: &str, _: bool) -> String {
    unreachable!("the async costs run only with the tokio feature")
}

/// Runs a cost child on `path`; its one line.
fn cost(what: &str, path: &std::path::Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(
            COST_CHILD_ENV,
            format!("{what}\t{}", path.to_str().unwrap()),
        )
        .output()
        .expect("cost child");
    assert!(out.status.success(), "{what}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The costs while waiting, each `runs` times: a release by `LOCK_UN`
/// without a close, wake-ups while the lock stays held, CPU of 100 tasks,
/// CPU of a directory waiter beside a busy directory, ticker gaps.
fn costs(dir: &std::path::Path, runs: usize) {
    let path = dir.join("costs.lock");
    flockguard::materialize(&path).unwrap();
    let held = LockFile::open(&path).unwrap().lock::<Exclusive>().unwrap();
    println!("\n== costs while waiting ({runs} runs each; min / median / max)");
    println!("| cost | unit | min | median | max |");
    println!("|---|---|---:|---:|---:|");
    let row = |name: &str, unit: &str, mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "| {name} | {unit} | {:.1} | {:.1} | {:.1} |",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        );
    };
    if cfg!(feature = "tokio") {
        let v = (0..runs)
            .map(|_| cost("tasks", &path).parse().unwrap())
            .collect();
        row(
            "100 tasks wait 1 s (lock_timeout, holders read)",
            "ms CPU",
            v,
        );
        let v = (0..runs)
            .map(|_| cost("tasks-no-holders", &path).parse().unwrap())
            .collect();
        row(
            "100 tasks wait 1 s (lock under a timeout, no holders)",
            "ms CPU",
            v,
        );
        let mut gaps = Vec::new();
        let mut alone = Vec::new();
        for _ in 0..runs {
            alone.push(cost("ticker-alone", &path).parse().unwrap());
            gaps.push(cost("ticker", &path).parse().unwrap());
        }
        row("10 ms ticker alone, largest gap over 2 s", "ms", alone);
        row(
            "10 ms ticker beside 10 tasks timing out every 50 ms, largest gap",
            "ms",
            gaps,
        );
    }
    drop(held);
    // A directory lock, held, and a shell loop creating files inside it.
    let locked_dir = dir.join("costs-dir");
    std::fs::create_dir_all(&locked_dir).unwrap();
    let dir_lock = flockguard::LockOptions::new()
        .allow_directory(true)
        .open(&locked_dir)
        .unwrap()
        .lock::<Exclusive>()
        .unwrap();
    let mut v = Vec::new();
    for _ in 0..runs {
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg("while :; do : > \"$1/f\"; done")
            .arg("sh")
            .arg(&locked_dir)
            .spawn()
            .unwrap();
        v.push(cost("directory", &locked_dir).parse().unwrap());
        let _ = shell.kill();
        let _ = shell.wait();
    }
    row(
        "directory waiter, 4 s beside a shell loop creating a file in it",
        "ms CPU",
        v,
    );
    drop(dir_lock);
    // A release by LOCK_UN, keeping the descriptor: no close event.
    let mut kinds = vec![Waiter::Timed];
    if cfg!(feature = "tokio") {
        kinds.push(Waiter::Async);
    }
    for kind in kinds {
        let mut s = Scenario::new(dir, kind, Release::Unlock);
        let v = (0..runs.max(10) * 2)
            .map(|_| s.handoff().as_secs_f64() * 1e3)
            .collect();
        row(
            &format!("{}: LOCK_UN without close noticed after", kind.name()),
            "ms",
            v,
        );
    }
}

// ---- many waiters in one process -------------------------------------------

/// `waiters` threads wait with `flock_timeout` for a lock this thread
/// holds; once it lets go, each takes the lock once, holds it 200 µs and
/// drops it. Returns each handoff's latency: from just before a drop to
/// the next thread's return.
fn crowd(path: &std::path::Path, waiters: usize) -> Vec<Duration> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let released = AtomicU64::new(0);
    let waiting = AtomicUsize::new(0);
    let lat = Mutex::new(Vec::with_capacity(waiters));
    let first = LockFile::open(path).unwrap().lock::<Exclusive>().unwrap();
    std::thread::scope(|s| {
        for _ in 0..waiters {
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn_scoped(s, || {
                    waiting.fetch_add(1, Ordering::SeqCst);
                    let g = flockguard::flock_timeout::<Exclusive>(path, Duration::from_secs(60))
                        .expect("crowd waiter timed out");
                    let t = now_ns();
                    let r = released.load(Ordering::SeqCst);
                    lat.lock()
                        .unwrap()
                        .push(Duration::from_nanos(t.saturating_sub(r)));
                    std::thread::sleep(Duration::from_micros(200));
                    released.store(now_ns(), Ordering::SeqCst);
                    drop(g);
                })
                .unwrap();
        }
        while waiting.load(Ordering::SeqCst) < waiters {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Until every waiter sleeps in its wait.
        std::thread::sleep(Duration::from_millis(if waiters > 1 { 100 } else { 3 }));
        released.store(now_ns(), Ordering::SeqCst);
        drop(first);
    });
    lat.into_inner().unwrap()
}

fn many_waiters(dir: &std::path::Path, rounds: usize) {
    let path = dir.join("crowd.lock");
    flockguard::materialize(&path).unwrap();
    println!("\n== many waiters: threads in one process in flock_timeout, each taking the lock once and holding it 200 µs");
    println!("| waiters | handoffs | median | p90 | median / 1 waiter | p90 / 1 waiter |");
    println!("|---:|---:|---:|---:|---:|---:|");
    // One waiter: `rounds` times one thread waiting for this one.
    let mut one: Vec<Duration> = (0..rounds).flat_map(|_| crowd(&path, 1)).collect();
    let mut many: Vec<Duration> = crowd(&path, 500);
    let (m1, p1) = (median(&mut one), one[one.len() * 9 / 10]);
    for (n, v) in [(1, &mut one), (500, &mut many)] {
        let m = median(v);
        let p90 = v[v.len() * 9 / 10];
        println!(
            "| {n} | {} | {:.1} µs | {:.1} µs | {:.2}× | {:.2}× |",
            v.len(),
            m.as_nanos() as f64 / 1e3,
            p90.as_nanos() as f64 / 1e3,
            m.as_nanos() as f64 / m1.as_nanos().max(1) as f64,
            p90.as_nanos() as f64 / p1.as_nanos().max(1) as f64
        );
    }
}

/// `tasks` tasks on a current-thread runtime wait with `flock_timeout`
/// for a lock another task holds; once it lets go, each takes the lock
/// once, yields and drops it. Returns the handoff latencies and the time
/// until the last task had it.
#[cfg(feature = "tokio")]
fn async_crowd(path: &std::path::Path, tasks: usize) -> (Vec<Duration>, Duration) {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let released = Arc::new(AtomicU64::new(0));
    let waiting = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(tasks)));
    rt.block_on(async {
        let first = LockFile::open(path).unwrap().lock::<Exclusive>().unwrap();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (path, released, waiting, lat) = (
                    path.to_owned(),
                    Arc::clone(&released),
                    Arc::clone(&waiting),
                    Arc::clone(&lat),
                );
                tokio::spawn(async move {
                    waiting.fetch_add(1, Ordering::SeqCst);
                    let g = flockguard::tokio::flock_timeout::<Exclusive>(
                        &path,
                        Duration::from_secs(60),
                    )
                    .await
                    .expect("async crowd waiter timed out");
                    let t = now_ns();
                    let r = released.load(Ordering::SeqCst);
                    lat.lock()
                        .unwrap()
                        .push(Duration::from_nanos(t.saturating_sub(r)));
                    tokio::task::yield_now().await;
                    released.store(now_ns(), Ordering::SeqCst);
                    drop(g);
                })
            })
            .collect();
        while waiting.load(Ordering::SeqCst) < tasks {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Until every task sleeps in its wait.
        let settle = if tasks > 1 { 100 } else { 3 };
        tokio::time::sleep(Duration::from_millis(settle)).await;
        let start = std::time::Instant::now();
        released.store(now_ns(), Ordering::SeqCst);
        drop(first);
        for h in handles {
            h.await.unwrap();
        }
        let took = start.elapsed();
        let v = std::mem::take(&mut *lat.lock().unwrap());
        (v, took)
    })
}

#[cfg(feature = "tokio")]
fn async_many_waiters(dir: &std::path::Path, rounds: usize) {
    let path = dir.join("async-crowd.lock");
    flockguard::materialize(&path).unwrap();
    println!("\n== many async waiters: tasks on one current-thread runtime in flockguard::tokio::flock_timeout, each taking the lock once");
    println!("| tasks | handoffs | median | p90 | median / 1 waiter | p90 / 1 waiter | all in |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut one: Vec<Duration> = (0..rounds).flat_map(|_| async_crowd(&path, 1).0).collect();
    let (mut many, took) = async_crowd(&path, 1000);
    let (m1, p1) = (median(&mut one), one[one.len() * 9 / 10]);
    for (n, v, all) in [(1, &mut one, None), (1000, &mut many, Some(took))] {
        let m = median(v);
        let p90 = v[v.len() * 9 / 10];
        println!(
            "| {n} | {} | {:.1} µs | {:.1} µs | {:.2}× | {:.2}× | {} |",
            v.len(),
            m.as_nanos() as f64 / 1e3,
            p90.as_nanos() as f64 / 1e3,
            m.as_nanos() as f64 / m1.as_nanos().max(1) as f64,
            p90.as_nanos() as f64 / p1.as_nanos().max(1) as f64,
            all.map_or("".to_owned(), |d| format!(
                "{:.1} ms",
                d.as_secs_f64() * 1e3
            ))
        );
    }
}

// ---- deadlines under CPU saturation -----------------------------------------

const BURN_ENV: &str = "FLOCKGUARD_BENCH_BURN";

/// Set to a number of waits per length to run only the deadline lateness.
const DEADLINES_ONLY_ENV: &str = "FLOCKGUARD_BENCH_DEADLINES_ONLY";

/// How late a timed wait returns its timeout, by the wait's length, on a
/// machine doing nothing else: a fresh holder process keeps the lock;
/// `lock_timeout` from a thread and from a task on a current-thread
/// runtime, interleaved; the call's return (holder list included) minus
/// the deadline. Also the share of errors that name the holder.
fn deadline_lateness(dir: &std::path::Path, waits: usize) {
    let path = dir.join("lateness.lock");
    flockguard::materialize(&path).unwrap();
    let held = FreshHolder::Close.spawn(&path);
    let lengths = [1u64, 5, 10, 19, 20, 25, 50, 200];
    let mut kinds = vec!["lock_timeout"];
    if cfg!(feature = "tokio") {
        kinds.push("tokio lock_timeout");
    }
    // (late, named the holder) per kind and length.
    let mut samples = vec![vec![Vec::new(); lengths.len()]; kinds.len()];
    for _ in 0..waits {
        for (l, &ms) in lengths.iter().enumerate() {
            for (k, per_kind) in samples.iter_mut().enumerate() {
                let limit = Duration::from_millis(ms);
                let file = LockFile::open(&path).unwrap();
                let start = std::time::Instant::now();
                let err = if k == 0 {
                    file.lock_timeout::<Exclusive>(limit).unwrap_err()
                } else {
                    async_timeout(file, limit)
                };
                let late = start.elapsed().saturating_sub(limit);
                let flockguard::Error::Timeout { holders, .. } = err.error else {
                    panic!("{err:?}")
                };
                per_kind[l].push((late, !holders.is_empty()));
            }
        }
    }
    drop(held);
    println!("\n== deadline lateness by wait length, idle machine, {waits} waits each");
    println!("| wait | waiter | median late | max late | errors naming the holder |");
    println!("|---|---|---:|---:|---:|");
    for (l, ms) in lengths.iter().enumerate() {
        for (k, kind) in kinds.iter().enumerate() {
            let v = &mut samples[k][l];
            let named = v.iter().filter(|(_, n)| *n).count();
            let mut late: Vec<Duration> = v.iter().map(|(d, _)| *d).collect();
            late.sort();
            let ms_of = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "| {ms} ms | {kind} | {:.2} ms | {:.2} ms | {named} of {} |",
                ms_of(late[late.len() / 2]),
                ms_of(late[late.len() - 1]),
                late.len()
            );
        }
    }
}

#[cfg(feature = "tokio")]
fn async_timeout(file: LockFile, limit: Duration) -> flockguard::LockError<LockFile> {
    RT.with(|rt| rt.block_on(flockguard::tokio::lock_timeout::<Exclusive>(file, limit)))
        .unwrap_err()
}

#[cfg(not(feature = "tokio"))]
fn async_timeout(_: LockFile, _: Duration) -> flockguard::LockError<LockFile> {
    unreachable!("the async waiter runs only with the tokio feature")
}

/// Starts `n` busy loops (each ends by itself after 120 s) and lets them
/// get going.
fn burn(n: usize) -> Vec<Child> {
    let burners = (0..n)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .env(BURN_ENV, "1")
                .spawn()
                .unwrap()
        })
        .collect();
    if n > 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    burners
}

/// How late `lock_timeout(50 ms)` returns its timeout while one busy loop
/// per CPU runs beside it.
fn deadline_overshoot(dir: &std::path::Path, waits: usize) {
    let path = dir.join("deadline.lock");
    let held = LockFile::open(&path).unwrap().lock::<Exclusive>().unwrap();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut burners = burn(cpus);
    let timeout = Duration::from_millis(50);
    // (when the wait noticed the deadline, when the call returned), both
    // past the deadline; the gap is the holder list of the error, read
    // from /proc/locks.
    let (mut noticed, mut returned): (Vec<Duration>, Vec<Duration>) = (0..waits)
        .map(|_| {
            let file = LockFile::open(&path).unwrap();
            let start = std::time::Instant::now();
            let err = file.lock_timeout::<Exclusive>(timeout).unwrap_err();
            let total = start.elapsed();
            let flockguard::Error::Timeout { waited, .. } = err.error else {
                panic!("{err:?}")
            };
            (
                waited.saturating_sub(timeout),
                total.saturating_sub(timeout),
            )
        })
        .unzip();
    for b in &mut burners {
        let _ = b.kill();
        let _ = b.wait();
    }
    drop(held);
    println!(
        "\n== deadline overshoot of lock_timeout(50 ms), {cpus} busy loops beside it, {waits} waits"
    );
    println!("| past the deadline | median | p90 | max |");
    println!("|---|---:|---:|---:|");
    for (name, v) in [
        ("wait ends (Error::Timeout::waited)", &mut noticed),
        ("call returns (with the holder list)", &mut returned),
    ] {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(v[v.len() / 2]),
            ms(v[v.len() * 9 / 10]),
            ms(v[v.len() - 1])
        );
    }
}

/// A process whose tasks wait for locks it holds itself (see
/// [`crowd_wakeups`]).
const CROWD_WAKE_CHILD_ENV: &str = "FLOCKGUARD_BENCH_CROWD_WAKE_CHILD";

/// Voluntary context switches of every thread of process `pid`.
fn process_switches(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// The crowd child: a current-thread runtime driven by a thread of its
/// own; `background` tasks wait (`flockguard::tokio::lock_timeout`, 600 s)
/// on one file this process holds, then, on `go`, `added` tasks wait on a
/// file each, also held here; each group starts spread over 1.2 s. Prints
/// `ready` and `waiting` when they have started; `quit` ends it.
#[cfg(feature = "tokio")]
fn crowd_wake_child_main(args: &str) {
    let mut args = args.split('\t');
    let mut next = || args.next().expect("background, added, directory");
    let background: usize = next().parse().unwrap();
    let added: usize = next().parse().unwrap();
    let dir = std::path::PathBuf::from(next());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    let held = |name: String| {
        let path = dir.join(name);
        let guard = LockFile::open(&path).unwrap().lock::<Exclusive>().unwrap();
        (path, guard)
    };
    // Starts spread over 1.2 s: tasks that start together retry together
    // at first (the timers expire at the same instants and share
    // wake-ups), and drift apart over the seconds measured.
    let wait = |path: &std::path::Path, tasks: usize| {
        let file = LockFile::open(path).unwrap();
        handle.spawn(flockguard::tokio::lock_timeout::<Exclusive>(
            file,
            Duration::from_secs(600),
        ));
        std::thread::sleep(Duration::from_millis(1200) / tasks.max(1) as u32);
    };
    let (path, _background) = held("crowd-background.lock".to_owned());
    for _ in 0..background {
        wait(&path, background);
    }
    let mut guards = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut say = |line: &str| {
        // Time for every task to reach its first sleep.
        std::thread::sleep(Duration::from_millis(300));
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    };
    say("ready");
    for line in stdin.lock().lines() {
        if line.expect("stdin") != "go" {
            break;
        }
        for i in 0..added {
            let (path, guard) = held(format!("crowd-added-{i}.lock"));
            wait(&path, added);
            guards.push(guard);
        }
        say("waiting");
    }
    // The tasks are left waiting: the runtime thread ends with the process.
    std::process::exit(0);
}

#[cfg(not(feature = "tokio"))]
fn crowd_wake_child_main(_: &str) {
    unreachable!("the crowd child runs only with the tokio feature")
}

/// The voluntary context switches per second of a process whose
/// current-thread runtime has `background` tasks waiting on one held file
/// (the first in line retries about ten times a second, those behind it
/// once a second), over `steady` seconds before and after `added` tasks
/// start waiting on a held file each.
fn crowd_wakeups(
    dir: &std::path::Path,
    steady: u64,
    background: usize,
    added: usize,
) -> (f64, f64) {
    let sub = dir.join(format!("crowd-{background}-{added}"));
    std::fs::create_dir_all(&sub).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(
            CROWD_WAKE_CHILD_ENV,
            format!("{background}\t{added}\t{}", sub.to_str().unwrap()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn crowd child");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut expect = |want: &str| {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "crowd child died");
        assert_eq!(line.trim_end(), want);
    };
    let pid = child.id();
    let per_second = || {
        let c0 = process_switches(pid);
        std::thread::sleep(Duration::from_secs(steady.max(1)));
        process_switches(pid).saturating_sub(c0) as f64 / steady.max(1) as f64
    };
    expect("ready");
    let before = per_second();
    writeln!(stdin, "go").unwrap();
    stdin.flush().unwrap();
    expect("waiting");
    let after = per_second();
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let _ = child.wait();
    (before, after)
}

/// Wake-ups per second of each waiter while the holder keeps the lock,
/// over the first second and the `steady` seconds after.
fn wakeups_table(dir: &std::path::Path, steady: u64) {
    println!("\n== wake-ups while the holder keeps the lock (voluntary context switches)");
    println!("| waiter | first second | per second after |");
    println!("|---|---:|---:|");
    let mut kinds = vec![
        Waiter::Flock,
        Waiter::Timed,
        Waiter::Path,
        Waiter::TimedNoEvents,
        Waiter::Poll100,
    ];
    if cfg!(feature = "tokio") {
        kinds.push(Waiter::Async);
    }
    for kind in kinds {
        let mut s = Scenario::new(dir, kind, Release::Close);
        let (first, steady) = s.wakeups(steady);
        println!("| {} | {first:.0} | {steady:.1} |", kind.name());
    }
    if !cfg!(feature = "tokio") {
        return;
    }
    // A process has 64 per-task retry timers; the tasks beyond them share
    // one. Counted: the waiting process's voluntary context switches (all
    // its threads) per second, before and after the added tasks start
    // waiting; the last column is the difference per added task.
    println!("\n== wake-ups of tasks beyond the 64 per-task timers (voluntary context switches of the process, per second)");
    println!("| waiter | tasks already waiting | added tasks | before | after | per added task |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, background, added) in [
        ("tokio_lock_timeout past 64 timers", 64, 1),
        ("tokio_lock_timeout, 200 tasks", 0, 200),
    ] {
        let (before, after) = crowd_wakeups(dir, steady, background, added);
        println!(
            "| {name} | {background} | {added} | {before:.1} | {after:.1} | {:.1} |",
            (after - before) / added as f64
        );
    }
}

fn main() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        waiter_main(&args);
        return;
    }
    if let Ok(args) = std::env::var(COST_CHILD_ENV) {
        cost_child_main(&args);
        return;
    }
    if let Ok(args) = std::env::var(FRESH_HOLDER_ENV) {
        fresh_holder_main(&args);
        return;
    }
    if let Ok(args) = std::env::var(CROWD_WAKE_CHILD_ENV) {
        crowd_wake_child_main(&args);
        return;
    }
    if std::env::var_os(BURN_ENV).is_some() {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            std::hint::black_box(0u64);
        }
        return;
    }
    // `cargo bench -- --test` runs every case once: keep the extras short.
    let smoke = std::env::args().any(|a| a == "--test");
    let dir = tempfile::tempdir().unwrap();
    if let Some(rounds) = std::env::var(MATRIX_ONLY_ENV)
        .ok()
        .and_then(|n| n.parse().ok())
    {
        handoff_matrix(dir.path(), rounds);
        return;
    }
    if let Some(rounds) = std::env::var("FLOCKGUARD_BENCH_CROWD_ONLY")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        many_waiters(dir.path(), rounds);
        #[cfg(feature = "tokio")]
        async_many_waiters(dir.path(), rounds);
        return;
    }
    if let Some(steady) = std::env::var("FLOCKGUARD_BENCH_WAKEUPS_ONLY")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        wakeups_table(dir.path(), steady);
        return;
    }
    if std::env::var_os(COSTS_ONLY_ENV).is_some() {
        costs(dir.path(), 5);
        wakeups_table(dir.path(), 4);
        return;
    }
    if let Some(waits) = std::env::var(DEADLINES_ONLY_ENV)
        .ok()
        .and_then(|n| n.parse().ok())
    {
        deadline_lateness(dir.path(), waits);
        return;
    }
    if let Some(rounds) = std::env::var(USERS_ONLY_ENV)
        .ok()
        .and_then(|n| n.parse().ok())
    {
        users_matrix(dir.path(), rounds, 0);
        // A machine doing other work: a busy loop on half the CPUs.
        let half = std::thread::available_parallelism().map_or(1, |n| n.get() / 2);
        users_matrix(dir.path(), rounds, half.max(1));
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .without_plots()
        .configure_from_args();

    let cases = [
        (Waiter::Flock, Release::Close, "flock_close"),
        (Waiter::Timed, Release::Close, "lock_timeout_close"),
        (Waiter::Path, Release::Close, "flock_timeout_close"),
        (Waiter::Poll100, Release::Close, "poll100_close"),
        (Waiter::Timed, Release::Unlock, "lock_timeout_unlock"),
        (
            Waiter::TimedNoEvents,
            Release::Close,
            "lock_timeout_no_inotify_close",
        ),
    ];
    {
        let mut group = c.benchmark_group("handoff");
        group.sampling_mode(SamplingMode::Flat);
        for (kind, release, name) in cases {
            let slow = !matches!(
                (kind, release),
                (Waiter::Flock, _) | (Waiter::Timed | Waiter::Path, Release::Close)
            );
            // Criterion plans iterations from the reported latency; keep the
            // wall-clock cost of the event-driven cases bounded.
            group.warm_up_time(Duration::from_millis(if slow { 500 } else { 50 }));
            group.measurement_time(Duration::from_millis(if slow { 2000 } else { 300 }));
            let mut s = Scenario::new(dir.path(), kind, release);
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let d = s.handoff();
                            record(name, d);
                            d
                        })
                        .sum()
                })
            });
        }
        group.finish();
    }

    println!("\n== handoff summary (exact over every handoff run above)");
    let mut all = SAMPLES.lock().unwrap();
    let base = all
        .iter_mut()
        .find(|(n, _)| n == "flock_close")
        .map_or(Duration::ZERO, |(_, v)| median(v));
    println!("| waiter, release | handoffs | min | median | p90 | median / flock(2) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, v) in all.iter_mut() {
        let m = median(v);
        let p90 = v[v.len() * 9 / 10];
        println!(
            "| {name} | {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.2}× |",
            v.len(),
            v[0].as_nanos() as f64 / 1e3,
            m.as_nanos() as f64 / 1e3,
            p90.as_nanos() as f64 / 1e3,
            m.as_nanos() as f64 / base.as_nanos().max(1) as f64
        );
    }
    drop(all);

    // The machine's load changes between criterion's groups; taking turns
    // handoff by handoff exposes every waiter to the same load.
    handoff_matrix(dir.path(), if smoke { 2 } else { 151 });
    users_matrix(dir.path(), if smoke { 1 } else { 21 }, 0);
    many_waiters(dir.path(), if smoke { 3 } else { 300 });
    #[cfg(feature = "tokio")]
    async_many_waiters(dir.path(), if smoke { 3 } else { 300 });
    deadline_overshoot(dir.path(), if smoke { 3 } else { 60 });
    deadline_lateness(dir.path(), if smoke { 1 } else { 21 });
    costs(dir.path(), if smoke { 1 } else { 5 });

    wakeups_table(dir.path(), if smoke { 0 } else { 4 });
    c.final_summary();
}
