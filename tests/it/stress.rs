//! Stress: writer processes increment a counter stored in the lock file
//! itself while reader processes check every value they see.
//!
//! CI size: 8 writers × 500 cycles; `FLOCKGUARD_STRESS_ITERS=2000` for the
//! larger run. Each test prints a `STRESS` line with its figures.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flockguard::{block_flock, Exclusive, LockFile, LockGuard, Mode, Shared};

use crate::support;
use crate::support::Child;

const WAIT: Duration = Duration::from_secs(300);
const WRITERS: usize = 8;
const READERS: usize = 2;

fn iterations() -> u64 {
    std::env::var("FLOCKGUARD_STRESS_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

// ------------------------------------------------------------ the counter

/// Parses the counter: the empty file is 0, otherwise `<n>:<n>\n`. Anything
/// else is a torn (incomplete or mixed) read.
fn parse(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return Some(0);
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let (a, b) = text.strip_suffix('\n')?.split_once(':')?;
    let n: u64 = a.parse().ok()?;
    (b.parse() == Ok(n)).then_some(n)
}

fn read_counter<M: Mode>(guard: &mut LockGuard<M>) -> Option<u64> {
    let mut buf = Vec::new();
    guard.seek(SeekFrom::Start(0)).expect("seek");
    guard.read_to_end(&mut buf).expect("read");
    parse(&buf)
}

/// Writes `n` in three `write(2)` calls after truncating, so that a reader
/// not excluded by the lock would see a torn value.
fn write_counter(guard: &mut LockGuard<Exclusive>, n: u64) {
    guard.set_len(0).expect("truncate");
    guard.seek(SeekFrom::Start(0)).expect("seek");
    guard.write_all(n.to_string().as_bytes()).expect("write");
    guard.write_all(format!(":{n}").as_bytes()).expect("write");
    guard.write_all(b"\n").expect("write");
}

/// Tracks what a reader saw: every value complete and never smaller than
/// the one before.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    reads: u64,
    torn: u64,
    regressions: u64,
    last: u64,
}

impl Seen {
    fn record(&mut self, value: Option<u64>) {
        self.reads += 1;
        match value {
            None => self.torn += 1,
            Some(v) if v < self.last => self.regressions += 1,
            Some(v) => self.last = v,
        }
    }
}

#[test]
fn checker_detects_torn_and_regressing_values() {
    assert_eq!(parse(b""), Some(0));
    assert_eq!(parse(b"42:42\n"), Some(42));
    for torn in [
        &b"42"[..],
        b"42:4",
        b"42:42",
        b"42:43\n",
        b":42\n",
        b"4x:4x\n",
    ] {
        assert_eq!(parse(torn), None, "{torn:?}");
    }
    let mut seen = Seen::default();
    for v in [Some(1), Some(3), None, Some(2), Some(3)] {
        seen.record(v);
    }
    assert_eq!(
        (seen.reads, seen.torn, seen.regressions, seen.last),
        (5, 1, 1, 3)
    );
}

// ------------------------------------------------------------ child side

/// One increment cycle in the given style; returns whether the value changed
/// between the shared read and the exclusive re-read (upgrade styles only).
fn cycle(style: &str, path: &Path, file: &mut Option<LockFile>) -> bool {
    match style {
        // Open, lock, increment, close.
        "open" => {
            let mut g = block_flock::<Exclusive>(path).expect("lock");
            let v = read_counter(&mut g).expect("torn value under exclusive lock");
            write_counter(&mut g, v + 1);
            false
        }
        // One descriptor, locked and unlocked again.
        "reuse" => {
            let f = file
                .take()
                .unwrap_or_else(|| LockFile::open(path).expect("open"));
            let mut g = f.lock::<Exclusive>().expect("lock");
            let v = read_counter(&mut g).expect("torn value under exclusive lock");
            write_counter(&mut g, v + 1);
            *file = Some(g.unlock().expect("unlock"));
            false
        }
        // Shared read, blocking upgrade, re-read, write, downgrade, verify.
        "upgrade" | "try-upgrade" => {
            let mut g = block_flock::<Shared>(path).expect("shared lock");
            let before = read_counter(&mut g).expect("torn value under shared lock");
            let mut g = if style == "upgrade" {
                g.upgrade().expect("upgrade")
            } else {
                match g.try_upgrade() {
                    Ok(g) => g,
                    Err(e) => {
                        assert!(e.is_would_block(), "{e}");
                        e.into_inner().lock::<Exclusive>().expect("lock")
                    }
                }
            };
            // The upgrade is not atomic: re-read under the exclusive lock.
            let v = read_counter(&mut g).expect("torn value under exclusive lock");
            write_counter(&mut g, v + 1);
            let mut g = g.downgrade().expect("downgrade");
            let after = read_counter(&mut g).expect("torn value after downgrade");
            assert_eq!(after, v + 1, "a writer slipped in during downgrade");
            v != before
        }
        // The control: no lock at all (see the ignored test below).
        "unlocked" => {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .expect("open");
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).expect("read");
            let v = parse(&buf).unwrap_or(0);
            f.set_len(0).expect("truncate");
            f.seek(SeekFrom::Start(0)).expect("seek");
            f.write_all((v + 1).to_string().as_bytes()).expect("write");
            f.write_all(format!(":{}", v + 1).as_bytes())
                .expect("write");
            f.write_all(b"\n").expect("write");
            false
        }
        other => panic!("unknown style {other}"),
    }
}

fn child_writer(path: &str, iters: &str, style: &str) {
    let path = Path::new(path);
    let iters: u64 = iters.parse().unwrap();
    let mut file = None;
    let mut raced = 0u64;
    for _ in 0..iters {
        raced += u64::from(cycle(style, path, &mut file));
    }
    support::tell(&format!("DONE {raced}"));
}

fn child_reader(path: &str, locked: bool) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    // Any line from the parent, or its closing stdin, stops the reader.
    std::thread::spawn(move || {
        support::wait_for_parent(|_| flag.store(true, Ordering::SeqCst));
        flag.store(true, Ordering::SeqCst);
    });
    let mut seen = Seen::default();
    let mut file = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // Alternate fresh opens and a reused descriptor.
        n += 1;
        if !locked {
            seen.record(parse(&std::fs::read(path).expect("read")));
        } else if n % 2 == 0 {
            let mut g = block_flock::<Shared>(path).expect("shared lock");
            seen.record(read_counter(&mut g));
        } else {
            let f: LockFile = file
                .take()
                .unwrap_or_else(|| LockFile::open(path).expect("open"));
            let mut g = f.lock::<Shared>().expect("shared lock");
            seen.record(read_counter(&mut g));
            file = Some(g.unlock().expect("unlock"));
        }
        // Leave gaps so that readers do not starve the writers.
        std::thread::sleep(Duration::from_micros(200));
    }
    support::tell(&format!(
        "SEEN {} {} {} {}",
        seen.reads, seen.torn, seen.regressions, seen.last
    ));
}

pub const CHILDREN: &[support::Role] = &[
    ("stress::writer", |a| child_writer(&a[0], &a[1], &a[2])),
    ("stress::reader", |a| child_reader(&a[0], a[1] == "locked")),
];

// ------------------------------------------------------------ parent side

#[derive(Debug, Default)]
struct Figures {
    final_value: u64,
    expected: u64,
    raced: u64,
    reads: u64,
    torn: u64,
    regressions: u64,
}

fn run(styles: [&str; WRITERS], reader: &str) -> Figures {
    let (_dir, path) = support::lock_path();
    flockguard::materialize(&path).unwrap();
    let p = path.to_str().unwrap();
    let iters = iterations();
    let readers: Vec<Child> = (0..READERS)
        .map(|_| Child::spawn(&["stress::reader", p, reader]))
        .collect();
    let it = iters.to_string();
    let writers: Vec<Child> = styles
        .iter()
        .map(|s| Child::spawn(&["stress::writer", p, &it, s]))
        .collect();
    let mut fig = Figures {
        expected: iters * WRITERS as u64,
        ..Figures::default()
    };
    for mut w in writers {
        let line = w.expect_line("DONE", WAIT);
        fig.raced += line[5..].parse::<u64>().unwrap();
        assert!(w.release().success(), "writer failed");
    }
    for mut r in readers {
        r.send("stop");
        let line = r.expect_line("SEEN", WAIT);
        let f: Vec<u64> = line[5..].split(' ').map(|x| x.parse().unwrap()).collect();
        fig.reads += f[0];
        fig.torn += f[1];
        fig.regressions += f[2];
        assert!(r.release().success(), "reader failed");
    }
    let mut g = block_flock::<Shared>(&path).unwrap();
    fig.final_value = read_counter(&mut g).expect("final value torn");
    fig
}

fn report(name: &str, fig: &Figures) {
    eprintln!(
        "STRESS {name}: processes={WRITERS} writers + {READERS} readers, iterations={}, \
         final={} expected={} lost_updates={} reads={} torn_reads={} regressions={} \
         upgrade_races_observed={}",
        iterations(),
        fig.final_value,
        fig.expected,
        fig.expected - fig.final_value.min(fig.expected),
        fig.reads,
        fig.torn,
        fig.regressions,
        fig.raced
    );
}

#[test]
fn exclusive_increments_lose_nothing_and_readers_never_see_torn_values() {
    let fig = run(
        [
            "open", "reuse", "open", "reuse", "open", "reuse", "open", "reuse",
        ],
        "locked",
    );
    report("exclusive", &fig);
    assert_eq!(fig.final_value, fig.expected, "lost updates");
    assert_eq!(fig.torn, 0, "torn reads");
    assert_eq!(fig.regressions, 0, "counter went backwards");
    assert!(fig.reads > 0, "readers never read");
}

#[test]
fn upgrade_downgrade_increments_lose_nothing() {
    let fig = run(
        [
            "upgrade",
            "try-upgrade",
            "upgrade",
            "try-upgrade",
            "upgrade",
            "try-upgrade",
            "upgrade",
            "try-upgrade",
        ],
        "locked",
    );
    report("upgrade/downgrade", &fig);
    assert_eq!(fig.final_value, fig.expected, "lost updates");
    assert_eq!(fig.torn, 0, "torn reads");
    assert_eq!(fig.regressions, 0, "counter went backwards");
    assert!(fig.reads > 0, "readers never read");
}

/// The control for the checks above: the same workload without locks loses
/// updates and shows torn values. Not run by default because the outcome
/// depends on scheduling; run it with `--ignored` to see the checks bite.
#[test]
#[ignore = "control experiment; its outcome depends on scheduling"]
fn control_without_locks_loses_updates_and_tears_reads() {
    let fig = run(["unlocked"; WRITERS], "unlocked");
    report("control without locks", &fig);
    assert!(fig.final_value < fig.expected || fig.torn > 0, "{fig:?}");
}
