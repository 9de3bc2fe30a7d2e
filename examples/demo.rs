//! A tour of flockguard: who holds a contended lock, a timed wait that
//! wakes when the holder lets go, mode transitions that say what the kernel
//! did, and the refusal of a remote filesystem.
//!
//! Run with `cargo run --example demo`. The demo starts a copy of itself as
//! the other process.

use std::error::Error as StdError;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use flockguard::{try_flock, Error, Exclusive, LockFile, LockOptions, Shared, Wait};

type Result<T> = std::result::Result<T, Box<dyn StdError>>;

/// How long the other process keeps the lock once asked to let go.
const HOLD_AFTER_ASKED: Duration = Duration::from_millis(300);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("holder") {
        return holder(Path::new(&args[2]));
    }
    let dir = tempfile::tempdir()?;
    println!("flockguard demo, lock files in {}", dir.path().display());
    contention(&dir.path().join("contend.lock"))?;
    transitions(&dir.path().join("transitions.lock"))?;
    remote_filesystem(dir.path())?;
    Ok(())
}

/// The other process: takes the lock, says so, and lets go
/// [`HOLD_AFTER_ASKED`] after a line arrives on stdin.
fn holder(path: &Path) -> Result<()> {
    let guard = LockFile::open(path)?.lock::<Exclusive>()?;
    println!("locked");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    std::thread::sleep(HOLD_AFTER_ASKED);
    drop(guard);
    Ok(())
}

/// A running copy of this program holding the lock.
struct OtherProcess {
    child: Child,
    stdin: ChildStdin,
    _stdout: BufReader<ChildStdout>,
}

impl OtherProcess {
    fn start(path: &Path) -> Result<OtherProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("holder")
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "locked" {
            return Err(format!("the other process did not lock: {line:?}").into());
        }
        Ok(OtherProcess {
            child,
            stdin,
            _stdout: stdout,
        })
    }

    fn ask_to_let_go(&mut self) -> Result<()> {
        writeln!(self.stdin, "let go")?;
        Ok(())
    }
}

fn contention(path: &Path) -> Result<()> {
    println!("\n1. Who holds a contended lock");
    let mut other = OtherProcess::start(path)?;
    println!("  another process (pid {}) took the lock", other.child.id());

    let err = LockFile::open(path)?.try_lock::<Exclusive>().unwrap_err();
    println!("  try_lock: {err}");
    for h in err.handle.holders()? {
        println!("  holders(): {h}");
    }

    println!("\n2. A timed wait wakes when the holder lets go");
    other.ask_to_let_go()?;
    let asked = Instant::now();
    let wait = Wait::timeout(Duration::from_secs(10))
        .on_wait(|holders| println!("  waiting (at most 10 s) for {} holder(s)", holders.len()));
    let guard = err.into_inner().lock_with::<Exclusive>(wait)?;
    let waited = asked.elapsed();
    println!(
        "  lock_with(Wait::timeout(10 s)) returned {:.3} s after the holder was asked to let go;",
        waited.as_secs_f64()
    );
    println!(
        "  it keeps the lock {:.3} s after being asked, so the wait ended about {} ms after the release, not at the deadline",
        HOLD_AFTER_ASKED.as_secs_f64(),
        waited.saturating_sub(HOLD_AFTER_ASKED).as_millis()
    );
    drop(guard);
    let status = other.child.wait()?;
    if !status.success() {
        return Err(format!("the other process failed: {status}").into());
    }
    Ok(())
}

fn transitions(path: &Path) -> Result<()> {
    println!("\n3. Mode transitions say what the kernel did");
    let writer = try_flock::<Exclusive>(path)?;
    let reader = writer.downgrade()?;
    println!(
        "  downgrade(): now {}, never unlocked in between",
        reader.mode()
    );
    let other = try_flock::<Shared>(path)?;
    println!("  a second reader: {} lock taken", other.mode());
    let err = reader.try_upgrade().unwrap_err();
    println!("  try_upgrade() beside it: {err}");
    let file: LockFile = err.into_inner();
    drop(other);
    // Had the failed upgrade kept its shared lock, this would be refused.
    let fresh = try_flock::<Exclusive>(path)?;
    println!(
        "  a fresh open then took the exclusive lock at once: the failed upgrade held nothing"
    );
    drop(fresh);
    let writer = file.try_lock::<Exclusive>()?;
    println!(
        "  the LockFile the error gave back: {} lock taken",
        writer.mode()
    );
    Ok(())
}

fn remote_filesystem(dir: &Path) -> Result<()> {
    println!("\n4. Remote filesystems are refused");
    match fuse_refusal(dir) {
        Ok(message) => println!("  a lock file on a bindfs (FUSE) mount: {message}"),
        Err(why) => {
            println!("  Not shown: {why}.");
            println!("  Run the demo as root with bindfs installed to see a FUSE mount refused.");
        }
    }
    Ok(())
}

/// Mounts a bindfs view of a directory and returns the refusal message for
/// a lock file on it, or why that could not be done.
fn fuse_refusal(dir: &Path) -> std::result::Result<String, String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("this machine has no /dev/fuse".into());
    }
    let (backing, mnt) = (dir.join("backing"), dir.join("mnt"));
    std::fs::create_dir_all(&backing).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let mounted = Command::new("bindfs")
        .arg(&backing)
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();
    match mounted {
        Err(_) => return Err("bindfs is not installed".into()),
        Ok(status) if !status.success() => {
            return Err("bindfs could not mount (mounting needs root)".into())
        }
        Ok(_) => {}
    }
    let result = LockOptions::new().open(mnt.join("app.lock"));
    let unmounted = Command::new("fusermount")
        .arg("-u")
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !unmounted {
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    }
    match result {
        Err(err @ Error::RemoteFs { .. }) => Ok(err.to_string()),
        Err(other) => Err(format!(
            "opening on the FUSE mount failed otherwise: {other}"
        )),
        Ok(_) => Err("the FUSE mount was not refused".into()),
    }
}
