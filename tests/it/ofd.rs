//! Open file description locks (`LockKind::Ofd`): every way to acquire,
//! wait, convert and release, across descriptors, threads and processes,
//! and the write access an exclusive lock needs.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use flockguard::{
    CancelToken, Error, Exclusive, FlockMode, LockFile, LockKind, LockOptions, Shared, Wait,
};

use crate::support;
use crate::support::Child;

const LINE_TIMEOUT: Duration = Duration::from_secs(60);

fn ofd(path: &Path) -> LockFile {
    LockOptions::new()
        .kind(LockKind::Ofd)
        .open(path)
        .expect("open ofd")
}

fn mode_arg(mode: &str) -> FlockMode {
    match mode {
        "ex" => FlockMode::Exclusive,
        "sh" => FlockMode::Shared,
        other => panic!("unknown mode {other}"),
    }
}

pub const CHILDREN: &[support::Role] = &[
    ("ofd::hold", |a| child_hold(Path::new(&a[0]), &a[1])),
    ("ofd::upgrade", |a| child_upgrade(Path::new(&a[0]))),
    // Model handles in a second process: "PATH START LEN ...".
    ("ofd::model", |a| model_child(Path::new(&a[0]), &a[1..])),
];

/// Child: takes an OFD lock (waiting if needed) and holds it until released.
fn child_hold(path: &Path, mode: &str) {
    let guard = ofd(path)
        .lock_any(mode_arg(mode), Wait::forever())
        .expect("child lock");
    support::tell("locked");
    support::wait_for_parent(|_| {});
    drop(guard);
}

/// Child: takes a shared OFD lock, waits for a line, then upgrades.
fn child_upgrade(path: &Path) {
    let guard = ofd(path).try_lock::<Shared>().expect("child shared");
    support::tell("shared");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    match guard.upgrade() {
        Ok(writer) => {
            support::tell("result: upgraded");
            drop(writer);
        }
        Err(err) if matches!(err.error, Error::UpgradeDeadlock { .. }) => {
            support::tell("result: deadlock");
        }
        Err(err) => support::tell(&format!("result: error {err:?}")),
    }
    support::wait_for_parent(|_| {});
}

/// Whether a fresh OFD open can take `mode` at once.
fn ofd_free(path: &Path, mode: FlockMode) -> bool {
    match ofd(path).lock_any(mode, Wait::none()) {
        Ok(_) => true,
        Err(err) if err.is_would_block() => false,
        Err(err) => panic!("probe: {err:?}"),
    }
}

#[test]
fn two_opens_in_one_process_contend_and_readers_share() {
    let (_dir, path) = support::lock_path();
    let writer = ofd(&path).try_lock::<Exclusive>().unwrap();
    assert_eq!(writer.kind(), LockKind::Ofd);
    let err = ofd(&path).try_lock::<Shared>().unwrap_err();
    assert!(err.is_would_block(), "{err:?}");
    assert!(matches!(err.error, Error::WouldBlock { .. }));
    drop(writer);
    let a = ofd(&path).try_lock::<Shared>().unwrap();
    let b = ofd(&path).try_lock::<Shared>().unwrap();
    assert!(!ofd_free(&path, FlockMode::Exclusive));
    drop((a, b));
    assert!(ofd_free(&path, FlockMode::Exclusive));
}

#[test]
fn the_lock_is_an_ofd_lock_in_proc_locks_and_not_a_flock_lock() {
    let (_dir, path) = support::lock_path();
    let guard = ofd(&path).lock::<Exclusive>().unwrap();
    let info = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&guard)
    ))
    .unwrap();
    let lines: Vec<&str> = info.lines().filter(|l| l.starts_with("lock:")).collect();
    assert_eq!(lines.len(), 1, "{info}");
    assert!(
        lines[0].contains("OFDLCK") && lines[0].contains("WRITE") && lines[0].contains(" 0 EOF"),
        "{info}"
    );
    // flock(2) keeps a separate list on a local filesystem: a flock holder
    // does not see the OFD lock.
    let flock = flockguard::try_flock::<Exclusive>(&path).unwrap();
    drop(flock);
    // Unlocking leaves no lock line.
    let file = guard.unlock().unwrap();
    let info = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ))
    .unwrap();
    assert!(!info.contains("lock:"), "{info}");
}

#[test]
fn every_acquisition_takes_an_ofd_lock() {
    let (_dir, path) = support::lock_path();
    let soon = || Instant::now() + Duration::from_secs(5);
    let checks: Vec<Box<dyn Fn(LockFile) -> flockguard::AnyGuard>> = vec![
        Box::new(|f| f.try_lock::<Exclusive>().unwrap().into()),
        Box::new(|f| f.lock::<Exclusive>().unwrap().into()),
        Box::new(|f| {
            f.lock_timeout::<Exclusive>(Duration::from_secs(5))
                .unwrap()
                .into()
        }),
        Box::new(move |f| f.lock_until::<Exclusive>(soon()).unwrap().into()),
        Box::new(|f| {
            f.lock_with::<Exclusive>(Wait::forever().cancel(CancelToken::new()))
                .unwrap()
                .into()
        }),
        Box::new(|f| f.lock_any(FlockMode::Exclusive, Wait::none()).unwrap()),
    ];
    for (i, take) in checks.iter().enumerate() {
        let guard = take(ofd(&path));
        assert!(!ofd_free(&path, FlockMode::Shared), "acquisition {i}");
        // flock(2) does not see it: proof that it is not a flock lock.
        assert!(support::is_free(&path), "acquisition {i}");
        drop(guard);
        assert!(ofd_free(&path, FlockMode::Exclusive), "acquisition {i}");
    }
}

#[test]
fn a_timed_wait_ends_at_its_deadline_and_hands_the_file_back() {
    let (_dir, path) = support::lock_path();
    let held = ofd(&path).lock::<Exclusive>().unwrap();
    let start = Instant::now();
    let err = ofd(&path)
        .lock_timeout::<Shared>(Duration::from_millis(100))
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(start.elapsed() >= Duration::from_millis(100));
    let token = CancelToken::new();
    token.cancel();
    let err = err
        .into_inner()
        .lock_with::<Shared>(Wait::forever().cancel(token))
        .unwrap_err();
    assert!(err.error.is_cancelled(), "{err:?}");
    drop(held);
    let file = err.into_inner();
    assert_eq!(file.kind(), LockKind::Ofd);
    let _guard = file.lock_timeout::<Shared>(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_timed_waiter_gets_the_lock_another_process_releases() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["ofd::hold", path.to_str().unwrap(), "ex"]);
    child.expect_line("locked", LINE_TIMEOUT);
    let waiter = std::thread::spawn({
        let path = path.clone();
        move || ofd(&path).lock_timeout::<Exclusive>(Duration::from_secs(30))
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(child.release().success());
    let guard = waiter.join().unwrap().unwrap();
    assert!(!ofd_free(&path, FlockMode::Shared));
    drop(guard);
}

#[test]
fn a_blocking_waiter_waits_in_the_kernel_for_another_process() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["ofd::hold", path.to_str().unwrap(), "sh"]);
    child.expect_line("locked", LINE_TIMEOUT);
    let waiter = std::thread::spawn({
        let path = path.clone();
        move || ofd(&path).lock::<Exclusive>()
    });
    // The kernel lists a blocked F_OFD_SETLKW request with "->".
    support::wait_until("the waiter blocks in fcntl", || {
        support::read_proc_locks().lines().any(|l| {
            l.contains("-> OFDLCK ADVISORY  WRITE") || l.contains("-> OFDLCK ADVISORY WRITE")
        })
    });
    assert!(child.release().success());
    let guard = waiter.join().unwrap().unwrap();
    drop(guard);
}

#[test]
fn drop_releases_although_a_duplicate_of_the_descriptor_stays_open() {
    let (_dir, path) = support::lock_path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    let dup = file.as_fd().try_clone_to_owned().unwrap();
    let guard = LockOptions::new()
        .kind(LockKind::Ofd)
        .adopt(file)
        .unwrap()
        .try_lock::<Exclusive>()
        .unwrap();
    assert!(!ofd_free(&path, FlockMode::Shared));
    drop(guard);
    assert!(ofd_free(&path, FlockMode::Exclusive));
    drop(dup);
}

#[test]
fn into_locked_fd_keeps_the_lock_until_the_last_close() {
    let (_dir, path) = support::lock_path();
    let fd = ofd(&path).try_lock::<Exclusive>().unwrap().into_locked_fd();
    assert!(!ofd_free(&path, FlockMode::Shared));
    let file = LockOptions::new()
        .kind(LockKind::Ofd)
        .adopt(std::fs::File::from(fd.try_clone().unwrap()))
        .unwrap();
    file.unlock_inherited().unwrap();
    assert!(ofd_free(&path, FlockMode::Exclusive));
    drop((fd, file));
}

#[test]
fn downgrade_never_lets_a_writer_in_and_upgrade_takes_it_back() {
    let (_dir, path) = support::lock_path();
    let reader = ofd(&path)
        .try_lock::<Exclusive>()
        .unwrap()
        .downgrade()
        .unwrap();
    assert!(!ofd_free(&path, FlockMode::Exclusive));
    assert!(ofd_free(&path, FlockMode::Shared));
    let writer = reader.upgrade().unwrap();
    assert!(!ofd_free(&path, FlockMode::Shared));
    drop(writer);
}

#[test]
fn verify_path_and_unlink_and_unlock_work_the_same() {
    let (_dir, path) = support::lock_path();
    let opts = {
        let mut o = LockOptions::new();
        o.kind(LockKind::Ofd).verify_path(true);
        o
    };
    let guard = opts.open(&path).unwrap().try_lock::<Exclusive>().unwrap();
    guard.verify_path().unwrap();
    // A waiter on the old file wakes up on a removed file and retries on
    // the new one.
    let waiter = std::thread::spawn({
        let (path, opts) = (path.clone(), opts.clone());
        move || {
            opts.open(&path)
                .unwrap()
                .lock_timeout::<Exclusive>(Duration::from_secs(30))
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    guard.unlink_and_unlock().unwrap();
    let second = waiter.join().unwrap().unwrap();
    second.verify_path().unwrap();
    assert!(path.exists());
}

#[test]
fn a_forked_child_cannot_release_the_parents_lock() {
    let (_dir, path) = support::lock_path();
    let guard = ofd(&path).try_lock::<Exclusive>().unwrap();
    // SAFETY: the child only drops the guard (close), calls unlock (which
    // refuses without a system call but getpid) and exits with _exit.
    #[allow(unsafe_code)]
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match guard.unlock() {
            Err(err) if matches!(err.error, Error::NotOwner { .. }) => {
                drop(err);
                0
            }
            _ => 1,
        };
        // SAFETY: ends the child without running the parent's destructors.
        #[allow(unsafe_code)]
        unsafe {
            libc::_exit(code)
        };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    #[allow(unsafe_code)]
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert!(!ofd_free(&path, FlockMode::Shared), "the child released it");
    drop(guard);
    assert!(ofd_free(&path, FlockMode::Exclusive));
}

#[test]
fn an_exclusive_lock_on_a_read_only_descriptor_is_refused_before_the_kernel() {
    let (_dir, path) = support::lock_path();
    let file = LockOptions::new()
        .kind(LockKind::Ofd)
        .access(flockguard::Access::ReadOnly)
        .open(&path)
        .unwrap();
    assert!(!file.is_writable());
    let err = file.try_lock::<Exclusive>().unwrap_err();
    assert!(matches!(err.error, Error::OfdNeedsWrite { .. }), "{err:?}");
    let msg = err.error.to_string();
    assert!(msg.contains(&format!("`{}`", path.display())), "{msg}");
    assert!(msg.contains("Access::PreferWrite"), "{msg}");
    assert_eq!(err.error.os_error(), None, "no system call failed");
    let err = err
        .into_inner()
        .lock_timeout::<Exclusive>(Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(err.error, Error::OfdNeedsWrite { .. }), "{err:?}");
    let err = err
        .into_inner()
        .lock_any(FlockMode::Exclusive, Wait::forever())
        .unwrap_err();
    assert!(matches!(err.error, Error::OfdNeedsWrite { .. }), "{err:?}");
    // A shared lock needs read access only; its upgrade is refused the same
    // way and leaves the file holding nothing.
    let reader = err.into_inner().try_lock::<Shared>().unwrap();
    assert!(!ofd_free(&path, FlockMode::Exclusive));
    let err = reader.upgrade().unwrap_err();
    assert!(matches!(err.error, Error::OfdNeedsWrite { .. }), "{err:?}");
    assert!(ofd_free(&path, FlockMode::Exclusive));
    // An adopted read-only File, too.
    let err = LockOptions::new()
        .kind(LockKind::Ofd)
        .adopt(std::fs::File::open(&path).unwrap())
        .unwrap()
        .try_lock::<Exclusive>()
        .unwrap_err();
    assert!(matches!(err.error, Error::OfdNeedsWrite { .. }), "{err:?}");
    // The same descriptor under flock(2) takes an exclusive lock.
    let flock = LockOptions::new()
        .access(flockguard::Access::ReadOnly)
        .open(&path)
        .unwrap()
        .try_lock::<Exclusive>();
    assert!(flock.is_ok());
}

#[cfg(feature = "tokio")]
#[test]
fn the_async_front_end_takes_and_waits_for_ofd_locks() {
    let (_dir, path) = support::lock_path();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let held = flockguard::tokio::lock::<Exclusive>(ofd(&path))
            .await
            .unwrap();
        assert!(support::is_free(&path), "not a flock lock");
        let err = flockguard::tokio::lock_timeout::<Shared>(ofd(&path), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        let waiter =
            flockguard::tokio::lock_timeout::<Shared>(err.into_inner(), Duration::from_secs(30));
        let release = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(held);
        };
        let (got, ()) = tokio::join!(waiter, release);
        let reader = got.unwrap();
        let ro = LockOptions::new()
            .kind(LockKind::Ofd)
            .access(flockguard::Access::ReadOnly)
            .open(&path)
            .unwrap();
        let err = flockguard::tokio::lock::<Exclusive>(ro).await.unwrap_err();
        assert!(matches!(err.error, Error::OfdNeedsWrite { .. }), "{err:?}");
        drop(reader);
    });
}

/// Dropping an async OFD upgrade while it waits holding its shared lock
/// lets go of that lock: closing the file alone would leave it to another
/// copy of the open file description.
#[cfg(feature = "tokio")]
#[test]
fn a_dropped_async_upgrade_lets_go_of_the_shared_lock() {
    let (_dir, path) = support::lock_path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    let dup = file.try_clone().unwrap();
    let mine = LockOptions::new()
        .kind(LockKind::Ofd)
        .adopt(file)
        .unwrap()
        .try_lock::<Shared>()
        .unwrap();
    let other = ofd(&path).try_lock::<Shared>().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let upgrade = flockguard::tokio::upgrade(mine);
        let gave_up = tokio::time::timeout(Duration::from_millis(50), upgrade).await;
        assert!(gave_up.is_err(), "the upgrade did not wait");
    });
    drop(other);
    // The dup of the adopted file is still open, and holds nothing.
    assert!(
        ofd_free(&path, FlockMode::Exclusive),
        "the dup keeps a lock"
    );
    drop(dup);
}

/// Takes a shared OFD lock on the whole file through `fd`, outside the
/// crate: a descriptor that arrives holding a lock.
fn ofd_read_lock(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: a zeroed `struct flock` is valid; the fields are set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_RDLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    // SAFETY: `fd` is an open descriptor and `lock` a live struct flock.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// A failed acquisition took nothing: on both drivers it hands back an
/// adopted descriptor still holding the lock it arrived with.
#[cfg(feature = "tokio")]
#[test]
fn a_failed_acquisition_leaves_an_adopted_descriptors_lock_on_both_drivers() {
    let (_dir, path) = support::lock_path();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for driver in ["blocking", "async"] {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        ofd_read_lock(&file);
        let adopted = LockOptions::new().kind(LockKind::Ofd).adopt(file).unwrap();
        let other = ofd(&path).try_lock::<Shared>().unwrap();
        let timeout = Duration::from_millis(30);
        let err = match driver {
            "blocking" => adopted.lock_timeout::<Exclusive>(timeout).unwrap_err(),
            _ => rt
                .block_on(flockguard::tokio::lock_timeout::<Exclusive>(
                    adopted, timeout,
                ))
                .unwrap_err(),
        };
        assert!(err.is_timeout(), "{driver}: {err:?}");
        drop(other);
        // The adopted descriptor still holds its shared lock.
        assert!(ofd_free(&path, FlockMode::Shared), "{driver}");
        assert!(
            !ofd_free(&path, FlockMode::Exclusive),
            "{driver}: the failed acquisition released the caller's lock"
        );
        let file = err.into_inner();
        file.unlock_inherited().unwrap();
        assert!(ofd_free(&path, FlockMode::Exclusive), "{driver}");
    }
}

// ---- other kinds of lock, taken by real programs -------------------------

/// A program of another kind holding a lock on a file until released.
struct Program {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Program {
    /// Starts `cmd`, which prints `locked` once it holds its lock.
    fn start(mut cmd: std::process::Command) -> Program {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn holder program");
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        // Killed on drop if it never says it holds the lock.
        let mut program = Program { child, stdout };
        let mut line = String::new();
        while line.trim() != "locked" {
            line.clear();
            let n = program.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the holder program exited before it locked");
        }
        program
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes its stdin (it then releases and exits) and waits for it.
    fn release(mut self) {
        use std::io::Read;
        drop(self.child.stdin.take());
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// python3's `fcntl.lockf` (a POSIX record lock) on `len` bytes from
/// `start` (`len` 0: to the end).
fn python_lockf(path: &Path, exclusive: bool, start: u64, len: u64) -> Program {
    let script = "import fcntl, os, sys\n\
                  fd = os.open(sys.argv[1], os.O_RDWR)\n\
                  op = fcntl.LOCK_EX if sys.argv[2] == 'w' else fcntl.LOCK_SH\n\
                  fcntl.lockf(fd, op, int(sys.argv[4]), int(sys.argv[3]))\n\
                  print('locked', flush=True)\n\
                  sys.stdin.read()\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script])
        .arg(path)
        .arg(if exclusive { "w" } else { "r" })
        .arg(start.to_string())
        .arg(len.to_string());
    Program::start(cmd)
}

const SETLK_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
/* path w|r start len: fcntl(F_SETLKW) on the range, "locked", wait for EOF. */
int main(int argc, char **argv) {
    if (argc != 5) return 2;
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) { perror("open"); return 1; }
    struct flock fl = {0};
    fl.l_type = argv[2][0] == 'w' ? F_WRLCK : F_RDLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = atoll(argv[3]);
    fl.l_len = atoll(argv[4]);
    if (fcntl(fd, F_SETLKW, &fl) != 0) { perror("fcntl"); return 1; }
    printf("locked\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {}
    return 0;
}
"#;

/// The C program above, compiled once per test run with `gcc`.
fn setlk_program() -> &'static Path {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("flockguard-setlk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("setlk.c");
        let exe = dir.join("setlk");
        std::fs::write(&src, SETLK_C).unwrap();
        let status = std::process::Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .expect("run gcc");
        assert!(status.success(), "gcc failed");
        exe
    })
}

fn c_setlk(path: &Path, exclusive: bool, start: u64, len: u64) -> Program {
    let mut cmd = std::process::Command::new(setlk_program());
    cmd.arg(path)
        .arg(if exclusive { "w" } else { "r" })
        .arg(start.to_string())
        .arg(len.to_string());
    Program::start(cmd)
}

type Taker = fn(&Path, bool, u64, u64) -> Program;

const PROGRAMS: [(&str, Taker); 2] = [
    ("python3 fcntl.lockf", python_lockf),
    ("C fcntl(F_SETLK)", c_setlk),
];

#[test]
fn ofd_locks_conflict_with_posix_locks_of_other_programs() {
    for (name, take) in PROGRAMS {
        let (_dir, path) = support::lock_path();
        std::fs::write(&path, b"").unwrap();
        // Exclusive whole file: nothing else.
        let program = take(&path, true, 0, 0);
        assert!(!ofd_free(&path, FlockMode::Shared), "{name}");
        // flock(2) keeps its own list: unaffected on a local filesystem.
        assert!(support::is_free(&path), "{name}");
        program.release();
        assert!(ofd_free(&path, FlockMode::Exclusive), "{name}");
        // Shared whole file: readers share, a writer waits.
        let program = take(&path, false, 0, 0);
        assert!(ofd_free(&path, FlockMode::Shared), "{name}");
        assert!(!ofd_free(&path, FlockMode::Exclusive), "{name}");
        program.release();
        // A range: a whole-file lock overlaps it.
        let program = take(&path, true, 100, 10);
        assert!(!ofd_free(&path, FlockMode::Shared), "{name}");
        program.release();
        // And the other way round: the program waits for our lock.
        let guard = ofd(&path).try_lock::<Shared>().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn({
            let path = path.clone();
            move || {
                let program = take(&path, true, 0, 0);
                tx.send(()).unwrap();
                program.release();
            }
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "{name} took its lock beside ours"
        );
        drop(guard);
        rx.recv_timeout(LINE_TIMEOUT)
            .expect("the program got the lock");
        waiter.join().unwrap();
    }
}

#[test]
fn holders_lists_posix_holders_with_their_bytes() {
    for (name, take) in PROGRAMS {
        let (_dir, path) = support::lock_path();
        std::fs::write(&path, b"").unwrap();
        let program = take(&path, true, 100, 10);
        let list = flockguard::holders(&path).unwrap();
        assert_eq!(list.len(), 1, "{name}: {list:?}");
        let h = &list[0];
        assert_eq!(h.pid, program.pid(), "{name}");
        assert_eq!(h.kind, flockguard::HolderKind::Posix, "{name}");
        assert_eq!(h.mode, FlockMode::Exclusive, "{name}");
        assert_eq!(h.range, Some(flockguard::ByteRange::new(100, 10)), "{name}");
        assert_eq!(h.status, flockguard::PidStatus::Confirmed, "{name}");
        let text = h.to_string();
        assert!(
            text.starts_with(&format!("pid {} (", program.pid()))
                && text.ends_with("holds exclusive POSIX lock on bytes 100..110"),
            "{name}: {text}"
        );
        program.release();
        assert!(flockguard::holders(&path).unwrap().is_empty(), "{name}");
    }
}

#[test]
fn holders_names_the_process_behind_an_ofd_lock() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["ofd::hold", path.to_str().unwrap(), "sh"]);
    child.expect_line("locked", LINE_TIMEOUT);
    let mine = ofd(&path).try_lock::<Shared>().unwrap();
    let mut list = flockguard::holders(&path).unwrap();
    list.sort_by_key(|h| h.pid);
    let mut expected = [child.pid(), std::process::id()];
    expected.sort_unstable();
    assert_eq!(
        list.iter().map(|h| h.pid).collect::<Vec<_>>(),
        expected,
        "{list:?}"
    );
    for h in &list {
        assert_eq!(h.kind, flockguard::HolderKind::Ofd);
        assert_eq!(h.mode, FlockMode::Shared);
        assert_eq!(h.range, None);
        assert_eq!(h.status, flockguard::PidStatus::Confirmed);
    }
    drop(mine);
    assert!(child.release().success());
    assert!(flockguard::holders(&path).unwrap().is_empty());
}

#[test]
fn a_timed_wait_for_a_posix_holder_names_it_and_gets_the_lock_when_it_goes() {
    for (name, take) in PROGRAMS {
        let (_dir, path) = support::lock_path();
        std::fs::write(&path, b"").unwrap();
        let program = take(&path, true, 0, 0);
        // Within the default 5 ms budget a holder that the passes over
        // /proc/locks disagree on (other tests lock and unlock meanwhile)
        // can be left out; this test is about what a named holder looks like.
        let wait = Wait::timeout(Duration::from_millis(100)).diagnostics(Duration::from_secs(10));
        let err = ofd(&path).lock_with::<Exclusive>(wait).unwrap_err();
        assert!(err.is_timeout(), "{name}: {err:?}");
        let holders = err.error.holders();
        assert_eq!(holders.len(), 1, "{name}: {holders:?}");
        assert_eq!(holders[0].pid, program.pid(), "{name}");
        assert_eq!(holders[0].kind, flockguard::HolderKind::Posix, "{name}");
        let msg = err.error.to_string();
        assert!(
            msg.contains(&format!("pid {}", program.pid())) && msg.contains("POSIX lock"),
            "{name}: {msg}"
        );
        let file = err.into_inner();
        let waiter = std::thread::spawn(move || file.lock_timeout::<Exclusive>(LINE_TIMEOUT));
        std::thread::sleep(Duration::from_millis(50));
        program.release();
        let guard = waiter.join().unwrap().unwrap();
        drop(guard);
    }
}

// ---- transitions -----------------------------------------------------------

#[test]
fn a_refused_in_place_upgrade_keeps_the_shared_lock() {
    let (_dir, path) = support::lock_path();
    let mine = ofd(&path).try_lock::<Shared>().unwrap();
    let other = ofd(&path).try_lock::<Shared>().unwrap();
    let err = mine.try_upgrade_in_place().unwrap_err();
    assert!(err.is_would_block(), "{err:?}");
    assert!(
        matches!(
            err.error,
            Error::WouldBlock {
                shared_lost: false,
                ..
            }
        ),
        "{err:?}"
    );
    let mine = err.into_inner();
    // Still held: with the other reader gone, no writer gets in.
    drop(other);
    assert!(!ofd_free(&path, FlockMode::Exclusive));
    assert!(ofd_free(&path, FlockMode::Shared));
    let writer = mine.try_upgrade_in_place().unwrap();
    assert!(!ofd_free(&path, FlockMode::Shared));
    drop(writer);
}

#[test]
fn try_upgrade_keeps_its_contract_on_an_ofd_file() {
    let (_dir, path) = support::lock_path();
    let mine = ofd(&path).try_lock::<Shared>().unwrap();
    let other = ofd(&path).try_lock::<Shared>().unwrap();
    let err = mine.try_upgrade().unwrap_err();
    assert!(
        matches!(
            err.error,
            Error::WouldBlock {
                shared_lost: true,
                ..
            }
        ),
        "{err:?}"
    );
    drop(other);
    // The file came back holding nothing.
    assert!(ofd_free(&path, FlockMode::Exclusive));
    drop(err);
}

#[test]
fn an_in_place_upgrade_of_a_flock_lock_is_refused_and_changes_nothing() {
    let (_dir, path) = support::lock_path();
    let mine = flockguard::try_flock::<Shared>(&path).unwrap();
    let err = mine.try_upgrade_in_place().unwrap_err();
    assert!(
        matches!(err.error, Error::NoAtomicUpgrade { .. }),
        "{err:?}"
    );
    assert!(err.error.to_string().contains("LockKind::Ofd"));
    let mine = err.into_inner();
    assert!(!support::is_free(&path));
    drop(mine);
}

#[test]
fn upgrade_waits_holding_the_shared_lock() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["ofd::hold", path.to_str().unwrap(), "sh"]);
    child.expect_line("locked", LINE_TIMEOUT);
    let mine = ofd(&path).try_lock::<Shared>().unwrap();
    let upgrader = std::thread::spawn(move || mine.upgrade());
    support::wait_until("the upgrade blocks in fcntl", || {
        support::read_proc_locks()
            .lines()
            .any(|l| l.contains("->") && l.contains("OFDLCK") && l.contains("WRITE"))
    });
    // Waiting, it still holds its shared lock: readers only.
    assert!(ofd_free(&path, FlockMode::Shared));
    assert!(!ofd_free(&path, FlockMode::Exclusive));
    assert!(child.release().success());
    let writer = upgrader.join().unwrap().unwrap();
    assert!(!ofd_free(&path, FlockMode::Shared));
    drop(writer);
}

#[test]
fn two_readers_that_both_upgrade_do_not_deadlock() {
    let (_dir, path) = support::lock_path();
    let first = ofd(&path).try_lock::<Shared>().unwrap();
    let second = ofd(&path).try_lock::<Shared>().unwrap();
    let upgrader = std::thread::spawn(move || first.upgrade());
    support::wait_until("the first upgrade waits", || {
        support::read_proc_locks()
            .lines()
            .any(|l| l.contains("->") && l.contains("OFDLCK") && l.contains("WRITE"))
    });
    let err = second.upgrade().unwrap_err();
    assert!(
        matches!(err.error, Error::UpgradeDeadlock { .. }),
        "{err:?}"
    );
    let msg = err.error.to_string();
    assert!(msg.contains(&format!("`{}`", path.display())), "{msg}");
    // The refused upgrade let go, so the first one finishes.
    let writer = upgrader.join().unwrap().unwrap();
    assert!(!ofd_free(&path, FlockMode::Shared));
    drop(writer);
    // The refused file holds nothing and can lock again.
    let again = err.into_inner().try_lock::<Exclusive>().unwrap();
    drop(again);
}

/// A child forked (without exec) from another thread while an OFD upgrade
/// holds its ticket keeps a copy of the ticket's open file description;
/// the finished upgrade must still release the ticket, or every later
/// upgrade of the file would fail with `UpgradeDeadlock` until the child
/// exits. In a process of its own: the forked child would keep the
/// descriptors of the tests running beside it.
#[test]
fn a_child_forked_during_an_upgrade_does_not_keep_its_ticket() {
    if support::rerun_alone() {
        return;
    }
    let (_dir, path) = support::lock_path();
    // The ticket is an exclusive flock(2) lock on the lock file itself.
    let ticket_held = |path: &Path| {
        support::proc_locks(path)
            .iter()
            .any(|l| l.write && !l.waiter)
    };
    let first = ofd(&path).try_lock::<Shared>().unwrap();
    let other = ofd(&path).try_lock::<Shared>().unwrap();
    let upgrader = std::thread::spawn(move || first.upgrade());
    support::wait_until("the upgrade waits holding its ticket", || {
        ticket_held(&path)
    });
    // The fork runs on a thread other than the upgrading one.
    let child = std::thread::spawn(|| {
        // SAFETY: the forked process only sleeps and ends with _exit(2),
        // calls that are async-signal-safe in a multi-threaded parent.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: as above; the parent kills this process.
            unsafe {
                libc::sleep(60);
                libc::_exit(0);
            }
        }
        pid
    })
    .join()
    .unwrap();
    drop(other);
    let writer = upgrader.join().unwrap().unwrap();
    drop(writer);
    // A second upgrade that must wait, while the child is still alive.
    let second = ofd(&path).try_lock::<Shared>().unwrap();
    let reader = ofd(&path).try_lock::<Shared>().unwrap();
    let upgrader = std::thread::spawn(move || second.upgrade());
    let ino = format!(
        ":{} ",
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap())
    );
    support::wait_until("the second upgrade waits in fcntl or ends", || {
        upgrader.is_finished()
            || support::read_proc_locks().lines().any(|l| {
                l.contains("->") && l.contains("OFDLCK") && l.contains("WRITE") && l.contains(&ino)
            })
    });
    drop(reader);
    let upgraded = upgrader.join().unwrap();
    // SAFETY: `child` is this process's child, forked above.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    let writer = upgraded.expect("no ticket left held by the forked child");
    drop(writer);
}

#[test]
fn two_readers_in_two_processes_that_both_upgrade_do_not_deadlock() {
    let (_dir, path) = support::lock_path();
    let mut child = Child::spawn(&["ofd::upgrade", path.to_str().unwrap()]);
    child.expect_line("shared", LINE_TIMEOUT);
    let mine = ofd(&path).try_lock::<Shared>().unwrap();
    child.send("go");
    // Either the child's upgrade waits and ours is refused, or the other
    // way round; neither waits forever.
    let result = mine.upgrade();
    let line = child.expect_line("result:", LINE_TIMEOUT);
    match result {
        Ok(writer) => {
            assert_eq!(line, "result: deadlock", "both upgraded");
            drop(writer);
        }
        Err(err) => {
            assert!(
                matches!(err.error, Error::UpgradeDeadlock { .. }),
                "{err:?}"
            );
            assert_eq!(line, "result: upgraded");
        }
    }
    assert!(child.release().success());
}

// ---- end to end: dpkg's database lock --------------------------------------

/// A private dpkg root with a package whose `preinst` prints `locked` and
/// waits until the file `release` exists: dpkg holds its database lock
/// (`ROOT/var/lib/dpkg/lock`, a POSIX lock) meanwhile.
struct DpkgRoot {
    dir: tempfile::TempDir,
}

impl DpkgRoot {
    /// `None` (after printing why) where dpkg is not installed.
    fn new(test: &str) -> Option<DpkgRoot> {
        let have = |tool: &str| {
            std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !have("dpkg") || !have("dpkg-deb") {
            assert!(
                std::env::var_os("CI").is_none(),
                "dpkg is missing in CI: .ci/run must provide it"
            );
            support::skip(test, "dpkg and dpkg-deb are not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("root/var/lib/dpkg");
        std::fs::create_dir_all(db.join("updates")).unwrap();
        std::fs::create_dir_all(db.join("info")).unwrap();
        std::fs::write(db.join("status"), b"").unwrap();
        let pkg = dir.path().join("pkg/DEBIAN");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(
            pkg.join("control"),
            "Package: flockguard-probe\nVersion: 1.0\nArchitecture: all\n\
             Maintainer: flockguard tests <tests@example.invalid>\nDescription: lock probe\n",
        )
        .unwrap();
        let preinst = pkg.join("preinst");
        std::fs::write(
            &preinst,
            "#!/bin/sh\necho locked\nwhile [ ! -e \"$PROBE_RELEASE\" ]; do sleep 0.02; done\n",
        )
        .unwrap();
        std::fs::set_permissions(
            &preinst,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let out = std::process::Command::new("dpkg-deb")
            .arg("-b")
            .arg(dir.path().join("pkg"))
            .arg(dir.path().join("probe.deb"))
            .output()
            .unwrap();
        assert!(out.status.success(), "dpkg-deb: {out:?}");
        Some(DpkgRoot { dir })
    }

    fn lock(&self) -> std::path::PathBuf {
        self.dir.path().join("root/var/lib/dpkg/lock")
    }

    fn release_file(&self) -> std::path::PathBuf {
        self.dir.path().join("release")
    }

    /// dpkg with its output kept from the test's: its maintainer script
    /// would otherwise hold the harness's pipe open after a failure.
    fn install_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("dpkg");
        cmd.arg(format!("--root={}", self.dir.path().join("root").display()))
            .args(["--force-not-root", "--force-script-chrootless", "-i"])
            .arg(self.dir.path().join("probe.deb"))
            .env("PROBE_RELEASE", self.release_file())
            .stderr(std::process::Stdio::null());
        cmd
    }
}

impl Drop for DpkgRoot {
    fn drop(&mut self) {
        // A maintainer script still waiting ends.
        let _ = std::fs::write(self.release_file(), b"");
    }
}

#[test]
fn a_timed_wait_for_dpkgs_database_lock_names_dpkg_and_gets_the_lock_after_it() {
    let Some(root) = DpkgRoot::new("a_timed_wait_for_dpkgs_database_lock") else {
        return;
    };
    let dpkg = Program::start(root.install_command());
    let file = LockOptions::new()
        .kind(LockKind::Ofd)
        .create(false)
        .open(root.lock())
        .unwrap();
    // As above: a budget that lets the holder read finish.
    let wait = Wait::timeout(Duration::from_millis(100)).diagnostics(Duration::from_secs(10));
    let err = file.lock_with::<Exclusive>(wait).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let holders = err.error.holders();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].pid, dpkg.pid());
    assert_eq!(holders[0].kind, flockguard::HolderKind::Posix);
    let msg = err.error.to_string();
    assert!(msg.contains(&format!("pid {} (dpkg", dpkg.pid())), "{msg}");
    let file = err.into_inner();
    let waiter = std::thread::spawn(move || file.lock_timeout::<Exclusive>(LINE_TIMEOUT));
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(root.release_file(), b"").unwrap();
    let guard = waiter
        .join()
        .unwrap()
        .expect("the lock after dpkg finished");
    drop(guard);
    let mut dpkg = dpkg;
    assert!(dpkg.child.wait().unwrap().success());
}

#[test]
fn dpkg_refuses_to_run_while_an_ofd_lock_holds_its_database() {
    let Some(root) = DpkgRoot::new("dpkg_refuses_to_run_while_an_ofd_lock_holds_its_database")
    else {
        return;
    };
    let guard = LockOptions::new()
        .kind(LockKind::Ofd)
        .permissions(0o640)
        .open(root.lock())
        .unwrap()
        .try_lock::<Exclusive>()
        .unwrap();
    std::fs::write(root.release_file(), b"").unwrap();
    let out = root
        .install_command()
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dpkg database lock was locked by another process"),
        "{stderr}"
    );
    drop(guard);
    let out = root.install_command().output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

// ---- byte ranges -------------------------------------------------------------

fn ofd_range(path: &Path, range: ByteRange) -> LockFile {
    LockOptions::new()
        .kind(LockKind::Ofd)
        .range(range)
        .open(path)
        .expect("open ofd range")
}

fn range_free(path: &Path, range: ByteRange, mode: FlockMode) -> bool {
    match ofd_range(path, range).lock_any(mode, Wait::none()) {
        Ok(_) => true,
        Err(err) if err.is_would_block() => false,
        Err(err) => panic!("probe: {err:?}"),
    }
}

#[test]
fn ranges_contend_only_where_they_overlap() {
    let (_dir, path) = support::lock_path();
    let a = ofd_range(&path, ByteRange::new(0, 10))
        .try_lock::<Exclusive>()
        .unwrap();
    let b = ofd_range(&path, ByteRange::new(10, 10))
        .try_lock::<Exclusive>()
        .unwrap();
    assert_eq!(a.range(), ByteRange::new(0, 10));
    assert!(!range_free(&path, ByteRange::new(9, 2), FlockMode::Shared));
    assert!(range_free(
        &path,
        ByteRange::from_start(20),
        FlockMode::Exclusive
    ));
    assert!(
        !ofd_free(&path, FlockMode::Shared),
        "the whole file overlaps"
    );
    drop(a);
    assert!(range_free(
        &path,
        ByteRange::new(0, 10),
        FlockMode::Exclusive
    ));
    drop(b);
    assert!(ofd_free(&path, FlockMode::Exclusive));
}

#[test]
fn a_range_guard_never_releases_bytes_another_guard_holds() {
    let (_dir, path) = support::lock_path();
    // Two overlapping shared ranges of this process: one open file
    // description each, so the kernel neither merges nor splits them.
    let a = ofd_range(&path, ByteRange::new(0, 10))
        .try_lock::<Shared>()
        .unwrap();
    let b = ofd_range(&path, ByteRange::new(5, 10))
        .try_lock::<Shared>()
        .unwrap();
    let a_file = a.unlock().unwrap();
    assert!(!range_free(
        &path,
        ByteRange::new(5, 5),
        FlockMode::Exclusive
    ));
    assert!(range_free(
        &path,
        ByteRange::new(0, 5),
        FlockMode::Exclusive
    ));
    let b = b.try_upgrade_in_place().unwrap();
    assert!(!range_free(&path, ByteRange::new(14, 1), FlockMode::Shared));
    let err = a_file.try_lock::<Shared>().unwrap_err();
    assert!(err.is_would_block(), "{err:?}");
    let b = b.downgrade().unwrap();
    let a = err.into_inner().try_lock::<Shared>().unwrap();
    assert!(!range_free(
        &path,
        ByteRange::new(0, 1),
        FlockMode::Exclusive
    ));
    drop((a, b));
    assert!(ofd_free(&path, FlockMode::Exclusive));
}

#[test]
fn a_part_of_a_file_needs_the_ofd_kind_and_nothing_is_created_otherwise() {
    let (_dir, path) = support::lock_path();
    let err = LockOptions::new()
        .range(ByteRange::new(0, 10))
        .open(&path)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRange { .. }), "{err:?}");
    assert!(err.to_string().contains("LockKind::Ofd"), "{err}");
    assert!(!path.exists());
    let err = LockOptions::new()
        .kind(LockKind::Ofd)
        .range(ByteRange::new(u64::MAX - 5, 2))
        .open(&path)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRange { .. }), "{err:?}");
    assert!(!path.exists());
    // A length whose end overflows a u64 is refused as well, not sent to
    // the kernel.
    let err = LockOptions::new()
        .kind(LockKind::Ofd)
        .range(ByteRange::new(10, u64::MAX))
        .open(&path)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRange { .. }), "{err:?}");
    assert!(!path.exists());
    // The last byte fcntl(2) can lock is 2^63 - 1; one past it is refused.
    let last = i64::MAX as u64;
    let err = LockOptions::new()
        .kind(LockKind::Ofd)
        .range(ByteRange::new(2, last))
        .open(&path)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRange { .. }), "{err:?}");
    assert!(!path.exists());
    let to_the_last = LockOptions::new()
        .kind(LockKind::Ofd)
        .range(ByteRange::new(1, last))
        .open(&path)
        .unwrap()
        .try_lock::<Exclusive>()
        .unwrap();
    drop(to_the_last);
    std::fs::remove_file(&path).unwrap();
    // The whole file is every kind's range.
    let guard = LockOptions::new()
        .range(ByteRange::WHOLE)
        .open(&path)
        .unwrap()
        .try_lock::<Exclusive>()
        .unwrap();
    drop(guard);
}

#[test]
fn ranges_conflict_with_the_ranges_other_programs_lock() {
    for (name, take) in PROGRAMS {
        let (_dir, path) = support::lock_path();
        std::fs::write(&path, b"").unwrap();
        let program = take(&path, true, 100, 10);
        assert!(
            !range_free(&path, ByteRange::new(109, 1), FlockMode::Shared),
            "{name}"
        );
        assert!(
            !range_free(&path, ByteRange::from_start(50), FlockMode::Shared),
            "{name}"
        );
        assert!(
            range_free(&path, ByteRange::new(0, 100), FlockMode::Exclusive),
            "{name}"
        );
        assert!(
            range_free(&path, ByteRange::from_start(110), FlockMode::Exclusive),
            "{name}"
        );
        // A timed wait on an overlapping range names the program and its bytes.
        let err = ofd_range(&path, ByteRange::new(105, 1))
            .lock_timeout::<Exclusive>(Duration::from_millis(100))
            .unwrap_err();
        assert!(err.is_timeout(), "{name}: {err:?}");
        let holders = err.error.holders();
        assert_eq!(holders.len(), 1, "{name}: {holders:?}");
        assert_eq!(holders[0].pid, program.pid(), "{name}");
        assert_eq!(holders[0].range, Some(ByteRange::new(100, 10)), "{name}");
        program.release();
        // The other way round: the program's range waits for ours.
        let guard = ofd_range(&path, ByteRange::new(0, 1))
            .try_lock::<Shared>()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn({
            let path = path.clone();
            move || {
                let program = take(&path, true, 0, 1);
                tx.send(()).unwrap();
                program.release();
            }
        });
        let disjoint = take(&path, true, 1, 1);
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "{name} took an overlapping range beside ours"
        );
        disjoint.release();
        drop(guard);
        rx.recv_timeout(LINE_TIMEOUT)
            .expect("the program got the range");
        waiter.join().unwrap();
    }
}

// ---- the model: who holds which bytes, against the kernel ---------------------

use flockguard::{AnyGuard, ByteRange, LockGuard};
use proptest::prelude::*;

/// A handle of the model: a range lock file and what it holds.
enum Handle {
    Idle(LockFile),
    Shared(LockGuard<Shared>),
    Exclusive(LockGuard<Exclusive>),
    Moving,
}

impl Handle {
    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        match self {
            Handle::Idle(f) => f.as_raw_fd(),
            Handle::Shared(g) => g.as_raw_fd(),
            Handle::Exclusive(g) => g.as_raw_fd(),
            Handle::Moving => unreachable!("a handle is moving only inside apply"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Lock(usize, FlockMode),
    Unlock(usize),
    Downgrade(usize),
    UpgradeInPlace(usize),
}

/// Applies `op` to `handle`; `true` if the kernel granted it.
fn apply(handle: &mut Handle, op: Op) -> bool {
    let (granted, next) = match (std::mem::replace(handle, Handle::Moving), op) {
        (Handle::Idle(f), Op::Lock(_, mode)) => match f.lock_any(mode, Wait::none()) {
            Ok(AnyGuard::Shared(g)) => (true, Handle::Shared(g)),
            Ok(AnyGuard::Exclusive(g)) => (true, Handle::Exclusive(g)),
            Err(err) if err.is_would_block() => (false, Handle::Idle(err.into_inner())),
            Err(err) => panic!("lock: {err:?}"),
        },
        (Handle::Shared(g), Op::Unlock(_)) => (true, Handle::Idle(g.unlock().unwrap())),
        (Handle::Exclusive(g), Op::Unlock(_)) => (true, Handle::Idle(g.unlock().unwrap())),
        (Handle::Exclusive(g), Op::Downgrade(_)) => (true, Handle::Shared(g.downgrade().unwrap())),
        (Handle::Shared(g), Op::UpgradeInPlace(_)) => match g.try_upgrade_in_place() {
            Ok(g) => (true, Handle::Exclusive(g)),
            Err(err) if err.is_would_block() => (false, Handle::Shared(err.into_inner())),
            Err(err) => panic!("upgrade: {err:?}"),
        },
        (other, _) => (false, other),
    };
    *handle = next;
    granted
}

fn mode_name(mode: FlockMode) -> &'static str {
    match mode {
        FlockMode::Exclusive => "ex",
        FlockMode::Shared => "sh",
    }
}

fn model_child(path: &Path, ranges: &[String]) {
    let mut handles: Vec<Handle> = ranges
        .chunks(2)
        .map(|r| {
            let range = ByteRange::new(r[0].parse().unwrap(), r[1].parse().unwrap());
            Handle::Idle(ofd_range(path, range))
        })
        .collect();
    let fds: Vec<String> = handles.iter().map(|h| h.fd().to_string()).collect();
    support::tell(&format!("ready {}", fds.join(" ")));
    support::wait_for_parent(|line| {
        let words: Vec<&str> = line.split(' ').collect();
        let i: usize = words[1].parse().unwrap();
        let op = match words[0] {
            "lock" => Op::Lock(i, mode_arg(words[2])),
            "unlock" => Op::Unlock(i),
            "down" => Op::Downgrade(i),
            "up" => Op::UpgradeInPlace(i),
            other => panic!("unknown model op {other}"),
        };
        let granted = apply(&mut handles[i], op);
        support::tell(if granted { "granted" } else { "refused" });
    });
}

/// The handles' ranges: some in this process, the rest in a child.
const RANGES: [ByteRange; 6] = [
    ByteRange::WHOLE,
    ByteRange::new(0, 4),
    ByteRange::new(2, 4),
    ByteRange::new(4, 4),
    ByteRange::from_start(6),
    ByteRange::new(2, 4),
];
const LOCAL: usize = 3;

struct World {
    local: Vec<Handle>,
    child: Child,
    /// The fdinfo file of each handle, local ones first.
    fdinfo: Vec<String>,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let (dir, path) = support::lock_path();
        std::fs::write(&path, b"").unwrap();
        let local: Vec<Handle> = RANGES[..LOCAL]
            .iter()
            .map(|r| Handle::Idle(ofd_range(&path, *r)))
            .collect();
        let mut args = vec!["ofd::model".to_owned(), path.to_str().unwrap().to_owned()];
        for r in &RANGES[LOCAL..] {
            args.push(r.start().to_string());
            args.push(r.len().unwrap_or(0).to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = Child::spawn(&args);
        let ready = child.expect_line("ready", LINE_TIMEOUT);
        let mut fdinfo: Vec<String> = local
            .iter()
            .map(|h: &Handle| format!("/proc/self/fdinfo/{}", h.fd()))
            .collect();
        let pid = child.pid();
        fdinfo.extend(
            ready
                .split(' ')
                .skip(1)
                .map(|fd| format!("/proc/{pid}/fdinfo/{fd}")),
        );
        assert_eq!(fdinfo.len(), RANGES.len());
        World {
            local,
            child,
            fdinfo,
            _dir: dir,
        }
    }

    fn run(&mut self, op: Op) -> bool {
        let i = match op {
            Op::Lock(i, _) | Op::Unlock(i) | Op::Downgrade(i) | Op::UpgradeInPlace(i) => i,
        };
        if i < LOCAL {
            return apply(&mut self.local[i], op);
        }
        let j = i - LOCAL;
        let line = match op {
            Op::Lock(_, mode) => format!("lock {j} {}", mode_name(mode)),
            Op::Unlock(_) => format!("unlock {j}"),
            Op::Downgrade(_) => format!("down {j}"),
            Op::UpgradeInPlace(_) => format!("up {j}"),
        };
        self.child.send(&line);
        self.child.expect_line("", LINE_TIMEOUT) == "granted"
    }

    /// The locks the kernel lists for each handle's open file description
    /// (the `lock:` lines of its fdinfo, exact for one description, unlike
    /// one read of `/proc/locks` while other locks change): (mode, range).
    fn kernel(&self) -> Vec<Vec<(FlockMode, ByteRange)>> {
        self.fdinfo
            .iter()
            .map(|file| {
                std::fs::read_to_string(file)
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.strip_prefix("lock:"))
                    .map(|l| {
                        assert!(l.contains("OFDLCK"), "{l}");
                        let f: Vec<&str> = l.split_whitespace().collect();
                        let mode = if l.contains(" WRITE ") {
                            FlockMode::Exclusive
                        } else {
                            FlockMode::Shared
                        };
                        let start: u64 = f[f.len() - 2].parse().unwrap();
                        let range = match f[f.len() - 1] {
                            "EOF" => ByteRange::from_start(start),
                            end => ByteRange::new(start, end.parse::<u64>().unwrap() - start + 1),
                        };
                        (mode, range)
                    })
                    .collect()
            })
            .collect()
    }

    fn reset(&mut self) {
        for i in 0..RANGES.len() {
            self.run(Op::Unlock(i));
        }
    }
}

/// The reference model: which mode each handle holds.
fn expect(held: &[Option<FlockMode>], op: Op) -> bool {
    let conflicts = |i: usize, mode: FlockMode| {
        held.iter().enumerate().any(|(g, h)| {
            g != i
                && RANGES[g].overlaps(&RANGES[i])
                && h.is_some_and(|m| m == FlockMode::Exclusive || mode == FlockMode::Exclusive)
        })
    };
    match op {
        Op::Lock(i, mode) => held[i].is_none() && !conflicts(i, mode),
        Op::Unlock(i) => held[i].is_some(),
        Op::Downgrade(i) => held[i] == Some(FlockMode::Exclusive),
        Op::UpgradeInPlace(i) => {
            held[i] == Some(FlockMode::Shared) && !conflicts(i, FlockMode::Exclusive)
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0..RANGES.len();
    prop_oneof![
        (i.clone(), any::<bool>()).prop_map(|(i, ex)| Op::Lock(
            i,
            if ex {
                FlockMode::Exclusive
            } else {
                FlockMode::Shared
            }
        )),
        i.clone().prop_map(Op::Unlock),
        i.clone().prop_map(Op::Downgrade),
        i.prop_map(Op::UpgradeInPlace),
    ]
}

static WORLD: std::sync::Mutex<Option<World>> = std::sync::Mutex::new(None);

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/ofd.txt"),
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn byte_ranges_over_two_processes_follow_the_model(ops in prop::collection::vec(op(), 1..=24)) {
        let mut world = WORLD.lock().unwrap_or_else(|e| e.into_inner());
        let world = world.get_or_insert_with(World::new);
        world.reset();
        let mut held: Vec<Option<FlockMode>> = vec![None; RANGES.len()];
        for op in ops {
            let expected = expect(&held, op);
            let granted = world.run(op);
            prop_assert_eq!(granted, expected, "{:?} with {:?}", op, held);
            if granted {
                match op {
                    Op::Lock(i, mode) => held[i] = Some(mode),
                    Op::Unlock(i) => held[i] = None,
                    Op::Downgrade(i) => held[i] = Some(FlockMode::Shared),
                    Op::UpgradeInPlace(i) => held[i] = Some(FlockMode::Exclusive),
                }
            }
            let model: Vec<Vec<(FlockMode, ByteRange)>> = held
                .iter()
                .zip(RANGES)
                .map(|(h, r)| h.map(|m| (m, r)).into_iter().collect())
                .collect();
            prop_assert_eq!(world.kernel(), model, "after {:?}", op);
        }
    }
}

#[test]
fn a_timeout_names_only_the_holders_whose_locks_can_conflict() {
    let (_dir, path) = support::lock_path();
    std::fs::write(&path, vec![0u8; 64]).unwrap();
    let posix = python_lockf(&path, true, 0, 0);
    let flocked = LockFile::open(&path).unwrap().lock::<Exclusive>().unwrap();
    let wait = || Wait::timeout(Duration::from_millis(100)).diagnostics(Duration::from_secs(10));
    // A flock(2) waiter is kept out by the flock(2) holder only: on a local
    // filesystem the POSIX lock does not concern it.
    let err = LockFile::open(&path)
        .unwrap()
        .lock_with::<Exclusive>(wait())
        .unwrap_err();
    let kinds: Vec<_> = err
        .error
        .holders()
        .iter()
        .map(|h| (h.pid, h.kind))
        .collect();
    assert_eq!(
        kinds,
        [(std::process::id(), flockguard::HolderKind::Flock)],
        "{err}"
    );
    drop(flocked);
    posix.release();
    // An OFD waiter on bytes 0..10 is kept out by a POSIX lock on 5..15,
    // not by one on 40..50 nor by a flock(2) lock.
    let near = python_lockf(&path, true, 5, 10);
    let far = python_lockf(&path, true, 40, 10);
    let flocked = LockFile::open(&path).unwrap().lock::<Exclusive>().unwrap();
    let err = ofd_range(&path, ByteRange::new(0, 10))
        .lock_with::<Exclusive>(wait())
        .unwrap_err();
    let named: Vec<_> = err.error.holders().iter().map(|h| h.pid).collect();
    assert_eq!(named, [near.pid()], "{err}");
    drop(flocked);
    near.release();
    far.release();
}
