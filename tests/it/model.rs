//! Model-based test: random sequences of operations on several handles over
//! two lock files, checked after every step against a pure model of who
//! holds what.
//!
//! Needs the `proptest` feature (on with `--all-features`);
//! `PROPTEST_CASES=10000 cargo test --release --features proptest --test it model::`
//! runs a longer search; failures are kept in `proptest-regressions/model.txt` and
//! replayed first on every run.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use flockguard::{Exclusive, FlockMode, LockFile, LockGuard, Shared};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use crate::support;

const HANDLES: usize = 4;
const PATHS: usize = 2;
const MAX_OPS: usize = 64;

/// One step, on handle `h` (and for `Reopen`, path `p`).
#[derive(Clone, Copy, Debug)]
enum Op {
    TryExclusive(usize),
    TryShared(usize),
    /// Blocking lock, applied only when the model says it cannot block.
    LockExclusive(usize),
    /// Blocking lock, applied only when the model says it cannot block.
    LockShared(usize),
    Downgrade(usize),
    /// Blocking upgrade, applied only when the model says it cannot block.
    Upgrade(usize),
    TryUpgrade(usize),
    Unlock(usize),
    Drop(usize),
    Reopen(usize, usize),
}

impl Op {
    /// The handle the step acts on.
    fn handle(self) -> usize {
        match self {
            Op::TryExclusive(h)
            | Op::TryShared(h)
            | Op::LockExclusive(h)
            | Op::LockShared(h)
            | Op::Downgrade(h)
            | Op::Upgrade(h)
            | Op::TryUpgrade(h)
            | Op::Unlock(h)
            | Op::Drop(h)
            | Op::Reopen(h, _) => h,
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let h = 0..HANDLES;
    prop_oneof![
        3 => h.clone().prop_map(Op::TryExclusive),
        3 => h.clone().prop_map(Op::TryShared),
        1 => h.clone().prop_map(Op::LockExclusive),
        1 => h.clone().prop_map(Op::LockShared),
        2 => h.clone().prop_map(Op::Downgrade),
        2 => h.clone().prop_map(Op::Upgrade),
        3 => h.clone().prop_map(Op::TryUpgrade),
        2 => h.clone().prop_map(Op::Unlock),
        1 => h.clone().prop_map(Op::Drop),
        2 => (h, 0..PATHS).prop_map(|(h, p)| Op::Reopen(h, p)),
    ]
}

/// What the model says a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Not applicable in this state (or it would block); nothing happens.
    Skipped,
    Done,
    WouldBlock,
}

/// The model's view of one handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Closed,
    Open {
        path: usize,
        held: Option<FlockMode>,
    },
}

#[derive(Clone, Debug)]
struct Model {
    slots: [Slot; HANDLES],
}

impl Model {
    fn new() -> Model {
        let mut slots = [Slot::Closed; HANDLES];
        for (h, slot) in slots.iter_mut().enumerate() {
            *slot = Slot::Open {
                path: h % PATHS,
                held: None,
            };
        }
        Model { slots }
    }

    /// The modes held on `path` by handles other than `h`.
    fn others(&self, h: usize, path: usize) -> impl Iterator<Item = FlockMode> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != h)
            .filter_map(move |(_, s)| match *s {
                Slot::Open { path: p, held } if p == path => held,
                _ => None,
            })
    }

    fn conflicts(&self, h: usize, path: usize, wanted: FlockMode) -> bool {
        match wanted {
            FlockMode::Exclusive => self.others(h, path).next().is_some(),
            FlockMode::Shared => self.others(h, path).any(|m| m == FlockMode::Exclusive),
        }
    }

    /// The path handle `h` has open, if any.
    fn path_of(&self, h: usize) -> Option<usize> {
        match self.slots[h] {
            Slot::Open { path, .. } => Some(path),
            Slot::Closed => None,
        }
    }

    fn holders(&self, path: usize, mode: FlockMode) -> usize {
        self.others(usize::MAX, path).filter(|m| *m == mode).count()
    }

    fn step(&mut self, op: Op) -> Outcome {
        use FlockMode::{Exclusive as Ex, Shared as Sh};
        let h = op.handle();
        if let Op::Reopen(_, p) = op {
            self.slots[h] = Slot::Open {
                path: p,
                held: None,
            };
            return Outcome::Done;
        }
        let Slot::Open { path, held } = self.slots[h] else {
            return Outcome::Skipped;
        };
        let (outcome, held) = match (op, held) {
            (Op::Drop(_), _) => {
                self.slots[h] = Slot::Closed;
                return Outcome::Done;
            }
            (Op::TryExclusive(_), None) if self.conflicts(h, path, Ex) => {
                (Outcome::WouldBlock, None)
            }
            (Op::TryExclusive(_), None) => (Outcome::Done, Some(Ex)),
            (Op::TryShared(_), None) if self.conflicts(h, path, Sh) => (Outcome::WouldBlock, None),
            (Op::TryShared(_), None) => (Outcome::Done, Some(Sh)),
            (Op::LockExclusive(_), None) if !self.conflicts(h, path, Ex) => {
                (Outcome::Done, Some(Ex))
            }
            (Op::LockShared(_), None) if !self.conflicts(h, path, Sh) => (Outcome::Done, Some(Sh)),
            (Op::Downgrade(_), Some(Ex)) => (Outcome::Done, Some(Sh)),
            (Op::Upgrade(_), Some(Sh)) if !self.conflicts(h, path, Ex) => (Outcome::Done, Some(Ex)),
            // The kernel drops the shared lock before it finds the conflict.
            (Op::TryUpgrade(_), Some(Sh)) if self.conflicts(h, path, Ex) => {
                (Outcome::WouldBlock, None)
            }
            (Op::TryUpgrade(_), Some(Sh)) => (Outcome::Done, Some(Ex)),
            (Op::Unlock(_), Some(_)) => (Outcome::Done, None),
            _ => return Outcome::Skipped,
        };
        self.slots[h] = Slot::Open { path, held };
        outcome
    }
}

/// The real handle behind one model slot.
enum Real {
    Closed,
    File(LockFile),
    Ex(LockGuard<Exclusive>),
    Sh(LockGuard<Shared>),
}

impl Real {
    fn fd(&self) -> Option<RawFd> {
        match self {
            Real::Closed => None,
            Real::File(f) => Some(f.as_raw_fd()),
            Real::Ex(g) => Some(g.as_raw_fd()),
            Real::Sh(g) => Some(g.as_raw_fd()),
        }
    }
}

/// Lock files shared by the cases of one test: creating and removing files
/// for every case costs more than the case itself on a busy disk.
struct Files {
    _dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = (0..PATHS)
            .map(|p| dir.path().join(format!("{p}.lock")))
            .collect();
        Files { _dir: dir, paths }
    }
}

struct World<'f> {
    real: Vec<Real>,
    /// The descriptor each open handle had when it was opened: every
    /// transition, failed or not, must keep it.
    fds: Vec<Option<RawFd>>,
    paths: &'f [PathBuf],
}

impl<'f> World<'f> {
    fn new(model: &Model, files: &'f Files) -> World<'f> {
        let mut world = World {
            real: (0..HANDLES).map(|_| Real::Closed).collect(),
            fds: vec![None; HANDLES],
            paths: &files.paths,
        };
        for (h, slot) in model.slots.iter().enumerate() {
            if let Slot::Open { path, .. } = slot {
                world.open(h, *path);
            }
        }
        world
    }

    fn open(&mut self, h: usize, path: usize) {
        self.real[h] = Real::Closed; // close first: a reopen is a new description
        let file = LockFile::open(&self.paths[path]).expect("open");
        self.fds[h] = Some(file.as_raw_fd());
        self.real[h] = Real::File(file);
    }

    /// Applies `op` to the real handles; the outcome is in the model's terms.
    /// Blocking operations run only where `expected` says they cannot block.
    fn step(&mut self, op: Op, expected: Outcome) -> Outcome {
        let h = op.handle();
        if let Op::Reopen(_, p) = op {
            self.open(h, p);
            return Outcome::Done;
        }
        let blocking = matches!(
            op,
            Op::LockExclusive(_) | Op::LockShared(_) | Op::Upgrade(_)
        );
        if blocking && expected == Outcome::Skipped {
            return Outcome::Skipped;
        }
        let real = std::mem::replace(&mut self.real[h], Real::Closed);
        let would_block = |e: &flockguard::Error| {
            assert!(e.is_would_block(), "{op:?}: unexpected error {e:?}");
            Outcome::WouldBlock
        };
        let (outcome, real) = match (op, real) {
            (_, Real::Closed) => (Outcome::Skipped, Real::Closed),
            (Op::Drop(_), real) => {
                drop(real);
                self.fds[h] = None;
                (Outcome::Done, Real::Closed)
            }
            (Op::TryExclusive(_), Real::File(f)) => match f.try_lock::<Exclusive>() {
                Ok(g) => (Outcome::Done, Real::Ex(g)),
                Err(e) => (would_block(&e.error), Real::File(e.into_inner())),
            },
            (Op::TryShared(_), Real::File(f)) => match f.try_lock::<Shared>() {
                Ok(g) => (Outcome::Done, Real::Sh(g)),
                Err(e) => (would_block(&e.error), Real::File(e.into_inner())),
            },
            (Op::LockExclusive(_), Real::File(f)) => {
                (Outcome::Done, Real::Ex(f.lock().expect("lock")))
            }
            (Op::LockShared(_), Real::File(f)) => {
                (Outcome::Done, Real::Sh(f.lock().expect("lock")))
            }
            (Op::Downgrade(_), Real::Ex(g)) => {
                (Outcome::Done, Real::Sh(g.downgrade().expect("downgrade")))
            }
            (Op::Upgrade(_), Real::Sh(g)) => {
                (Outcome::Done, Real::Ex(g.upgrade().expect("upgrade")))
            }
            (Op::TryUpgrade(_), Real::Sh(g)) => match g.try_upgrade() {
                Ok(g) => (Outcome::Done, Real::Ex(g)),
                Err(e) => (would_block(&e.error), Real::File(e.into_inner())),
            },
            (Op::Unlock(_), Real::Ex(g)) => {
                (Outcome::Done, Real::File(g.unlock().expect("unlock")))
            }
            (Op::Unlock(_), Real::Sh(g)) => {
                (Outcome::Done, Real::File(g.unlock().expect("unlock")))
            }
            (_, real) => (Outcome::Skipped, real),
        };
        self.real[h] = real;
        outcome
    }

    /// Checks the real state against the model: each handle's lock as the
    /// kernel reports it for its descriptor and the flock invariants over
    /// those, for every path; fresh opens of the paths in `probe`; with
    /// `proc_locks`, the /proc/locks lines of those paths too.
    ///
    /// Probing every path after every step would double the `flock(2)`
    /// calls, which are slow while any process on the machine reads
    /// /proc/locks; the paths a step did not touch are probed at the end.
    fn check(&self, model: &Model, op: Op, probe: &[usize], proc_locks: bool) {
        for (h, (real, slot)) in self.real.iter().zip(&model.slots).enumerate() {
            match (real, slot) {
                (Real::Closed, Slot::Closed) => {}
                (real, Slot::Open { held, .. }) if !matches!(real, Real::Closed) => {
                    let fd = real.fd().expect("open handle");
                    assert_eq!(
                        Some(fd),
                        self.fds[h],
                        "{op:?}: handle {h} changed descriptor"
                    );
                    let kind = match real {
                        Real::Ex(_) => Some(FlockMode::Exclusive),
                        Real::Sh(_) => Some(FlockMode::Shared),
                        _ => None,
                    };
                    assert_eq!(kind, *held, "{op:?}: handle {h} has the wrong type");
                    assert_eq!(
                        support::held_through(&fd),
                        *held,
                        "{op:?}: the kernel disagrees about handle {h}"
                    );
                }
                (real, slot) => panic!("{op:?}: handle {h}: real {:?} vs {slot:?}", real.fd()),
            }
        }
        for (p, path) in self.paths.iter().enumerate() {
            let ex = model.holders(p, FlockMode::Exclusive);
            let sh = model.holders(p, FlockMode::Shared);
            assert!(ex <= 1, "{op:?}: model has {ex} exclusive holders");
            assert!(
                ex == 0 || sh == 0,
                "{op:?}: model has exclusive beside shared"
            );

            // The invariants again, over what the kernel reports for each
            // handle's descriptor on this path.
            let held: Vec<FlockMode> = self
                .real
                .iter()
                .zip(&model.slots)
                .filter(|(_, s)| matches!(s, Slot::Open { path, .. } if *path == p))
                .filter_map(|(r, _)| support::held_through(&r.fd().expect("open")))
                .collect();
            let write = held.iter().filter(|m| **m == FlockMode::Exclusive).count();
            assert!(write <= 1, "{op:?}: two exclusive locks on path {p}");
            assert!(
                write == 0 || held.len() == 1,
                "{op:?}: exclusive beside shared on path {p}"
            );

            if !probe.contains(&p) {
                continue;
            }
            // A fresh open sees the same. A lock the model says is gone may
            // linger for a moment after close(2) while someone reads
            // /proc/PID/fdinfo, so "free" is waited for; "held" is not.
            // A few seconds bound the wait, so that shrinking a real
            // failure stays quick.
            let linger = Duration::from_secs(5);
            if ex + sh == 0 {
                let what = format!("{op:?}: path {p} is free");
                support::wait_until_within(&what, linger, || support::is_free(path));
            } else if ex == 0 {
                assert!(!support::is_free(path), "{op:?}: path {p} is free");
                let what = format!("{op:?}: path {p} is shareable");
                support::wait_until_within(&what, linger, || support::is_shareable(path));
            } else {
                // Not shareable implies not free.
                let shareable = support::is_shareable(path);
                assert!(!shareable, "{op:?}: path {p} is shareable");
            }

            if proc_locks {
                let mut expected = vec![(true, false); ex];
                expected.extend(vec![(false, false); sh]);
                expected.sort();
                support::expect_locks(path, &expected);
            }
        }
    }
}

/// Runs `ops` on a fresh model and world, checking after every step;
/// /proc/locks is compared after every step with `every_step`, else once at
/// the end.
fn run(files: &Files, ops: &[Op], every_step: bool) {
    let all: Vec<usize> = (0..PATHS).collect();
    let mut model = Model::new();
    let mut world = World::new(&model, files);
    world.check(&model, Op::Reopen(0, 0), &all, every_step);
    for &op in ops {
        let before = model.path_of(op.handle());
        let expected = model.step(op);
        let actual = world.step(op, expected);
        assert_eq!(actual, expected, "{op:?}");
        let touched: Vec<usize> = before
            .into_iter()
            .chain(model.path_of(op.handle()))
            .collect();
        world.check(&model, op, &touched, every_step);
    }
    if let Some(&last) = ops.last() {
        world.check(&model, last, &all, true);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/model.txt"),
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn real_locks_follow_the_model(ops in prop::collection::vec(op(), 1..=MAX_OPS)) {
        static FILES: std::sync::OnceLock<Files> = std::sync::OnceLock::new();
        run(FILES.get_or_init(Files::new), &ops, false);
    }
}

/// The sequences that the model exists for, spelled out.
#[test]
fn try_upgrade_against_a_reader_loses_the_lock() {
    use Op::*;
    let files = Files::new();
    // Handles 0 and 2 are on path 0.
    run(
        &files,
        &[TryShared(0), TryShared(2), TryUpgrade(0), TryExclusive(2)],
        true,
    );
    run(
        &files,
        &[
            TryShared(0),
            TryShared(2),
            TryUpgrade(0),
            Unlock(2),
            TryExclusive(2),
        ],
        true,
    );
}

#[test]
fn downgrade_admits_readers_and_upgrade_waits_for_none() {
    use Op::*;
    run(
        &Files::new(),
        &[
            TryExclusive(0),
            TryShared(2),
            Downgrade(0),
            TryShared(2),
            Upgrade(0),
            Unlock(2),
            Upgrade(0),
            Reopen(2, 1),
            LockExclusive(2),
            Drop(0),
            LockExclusive(1),
        ],
        true,
    );
}
