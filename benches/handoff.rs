//! Cross-process lock handoff: the time from a holder's release to a waiting
//! process's acquisition, for a waiter in `lock_timeout` against a waiter
//! blocked in `flock(2)` and a 100 ms `LOCK_NB` poller; and the waiter's
//! wake-ups per second while the holder keeps the lock.
//!
//! The benchmark process is the holder; each waiter is this binary
//! re-executed as a child. Both sides read `CLOCK_MONOTONIC`, so the
//! latency is `t(acquired in waiter) - t(just before release in holder)`.
//! Wake-ups are the waiter's voluntary context switches
//! (`/proc/PID/status`): every sleep that ends is one.
//!
//! Run: `cargo bench --bench handoff`. A summary with exact medians over all
//! handoffs criterion ran is printed at the end.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode};
use flockguard::{Exclusive, LockFile};

const CHILD_ENV: &str = "FLOCKGUARD_BENCH_HANDOFF_CHILD";

/// How the waiter waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiter {
    /// `flock(LOCK_EX)`, blocked in the kernel: the floor.
    Flock,
    /// `LockFile::lock_timeout`.
    Timed,
    /// `lock_timeout` in a process with no descriptor left for inotify.
    TimedNoEvents,
    /// `LOCK_NB` every 100 ms, the approach being replaced.
    Poll100,
}

impl Waiter {
    fn name(self) -> &'static str {
        match self {
            Waiter::Flock => "flock",
            Waiter::Timed => "lock_timeout",
            Waiter::TimedNoEvents => "lock_timeout_no_inotify",
            Waiter::Poll100 => "poll_100ms",
        }
    }

    fn from_name(name: &str) -> Waiter {
        [
            Waiter::Flock,
            Waiter::Timed,
            Waiter::TimedNoEvents,
            Waiter::Poll100,
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
        let f = file.take().unwrap();
        let guard = match kind {
            Waiter::Flock => f.lock::<Exclusive>().unwrap(),
            Waiter::Timed | Waiter::TimedNoEvents => f
                .lock_timeout::<Exclusive>(Duration::from_secs(120))
                .unwrap(),
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
        let event_driven =
            matches!(kind, Waiter::Flock) || (kind == Waiter::Timed && release == Release::Close);
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
        ((c1 - c0) as f64, (c2 - c1) as f64 / steady as f64)
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

fn main() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        waiter_main(&args);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Criterion::default()
        .sample_size(10)
        .without_plots()
        .configure_from_args();

    let cases = [
        (Waiter::Flock, Release::Close, "flock_close"),
        (Waiter::Timed, Release::Close, "lock_timeout_close"),
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
                (Waiter::Flock, _) | (Waiter::Timed, Release::Close)
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
    println!("| waiter, release | handoffs | median | p90 | median / flock(2) |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in all.iter_mut() {
        let m = median(v);
        let p90 = v[v.len() * 9 / 10];
        println!(
            "| {name} | {} | {:.1} µs | {:.1} µs | {:.2}× |",
            v.len(),
            m.as_nanos() as f64 / 1e3,
            p90.as_nanos() as f64 / 1e3,
            m.as_nanos() as f64 / base.as_nanos().max(1) as f64
        );
    }
    drop(all);

    println!("\n== wake-ups while the holder keeps the lock (voluntary context switches)");
    println!("| waiter | first second | per second after |");
    println!("|---|---:|---:|");
    for kind in [
        Waiter::Flock,
        Waiter::Timed,
        Waiter::TimedNoEvents,
        Waiter::Poll100,
    ] {
        let mut s = Scenario::new(dir.path(), kind, Release::Close);
        let (first, steady) = s.wakeups(4);
        println!("| {} | {first:.0} | {steady:.1} |", kind.name());
    }
    c.final_summary();
}
