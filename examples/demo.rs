//! A tour of flockguard: two processes contending, a downgrade, a failed
//! `try_upgrade` shown honestly, and the refusal of a remote filesystem.
//!
//! Run with `cargo run --example demo`. The demo starts a copy of itself as
//! the second process.

use std::error::Error as StdError;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use flockguard::{
    block_flock, classify, try_flock, Error, Exclusive, LockFile, LockOptions, Shared,
};

type Result<T> = std::result::Result<T, Box<dyn StdError>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(Path::new(&args[2]));
    }
    let dir = tempfile::tempdir()?;
    println!("flockguard demo, lock files in {}", dir.path().display());
    two_processes(&dir.path().join("contend.lock"))?;
    downgrade(&dir.path().join("downgrade.lock"))?;
    failed_try_upgrade(&dir.path().join("upgrade.lock"))?;
    remote_filesystem(dir.path())?;
    Ok(())
}

/// The second process: one attempt without waiting, then a blocking wait.
fn child(path: &Path) -> Result<()> {
    let me = std::process::id();
    let say = |line: String| {
        println!("  child  {me}: {line}");
        std::io::stdout().flush()
    };
    match try_flock::<Exclusive>(path) {
        Ok(_) => say("try_flock::<Exclusive> got the lock (unexpected)".into())?,
        Err(err) => say(format!("try_flock::<Exclusive>: {err}"))?,
    }
    say("waiting in block_flock::<Exclusive>".into())?;
    let guard = block_flock::<Exclusive>(path)?;
    say("exclusive lock taken once the parent let go".into())?;
    drop(guard);
    Ok(())
}

fn two_processes(path: &Path) -> Result<()> {
    println!("\n1. Two processes contend");
    let me = std::process::id();
    let guard = try_flock::<Exclusive>(path)?;
    println!("  parent {me}: exclusive lock taken");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("child")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no child stdout")?).lines();
    let mut guard = Some(guard);
    for line in &mut lines {
        let line = line?;
        println!("{line}");
        if line.contains("waiting") {
            drop(guard.take());
            println!("  parent {me}: guard dropped");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("child failed: {status}").into());
    }
    Ok(())
}

fn downgrade(path: &Path) -> Result<()> {
    println!("\n2. Downgrade: exclusive to shared without letting go");
    let writer = try_flock::<Exclusive>(path)?;
    let reader = writer.downgrade()?;
    println!("  downgrade(): now {}", reader.mode());
    let second = try_flock::<Shared>(path)?;
    println!("  another reader: {} lock taken", second.mode());
    match try_flock::<Exclusive>(path) {
        Ok(_) => println!("  a writer got in (unexpected)"),
        Err(err) => println!("  a writer: {err}"),
    }
    Ok(())
}

fn failed_try_upgrade(path: &Path) -> Result<()> {
    println!("\n3. try_upgrade while another reader holds the lock");
    let mine = try_flock::<Shared>(path)?;
    let other = try_flock::<Shared>(path)?;
    let err = match mine.try_upgrade() {
        Ok(_) => return Err("try_upgrade succeeded beside another reader".into()),
        Err(err) => err,
    };
    println!("  try_upgrade(): {err}");
    let file: LockFile = err.into_inner();
    drop(other.unlock()?);
    // Had the failed upgrade kept its shared lock, this would be refused.
    let intruder = try_flock::<Exclusive>(path)?;
    println!("  the other reader left; a fresh open took the exclusive lock at once,");
    println!("  so the handle that failed to upgrade held nothing");
    drop(intruder);
    let writer = file.try_lock::<Exclusive>()?;
    println!(
        "  retry on the returned LockFile: {} lock taken",
        writer.mode()
    );
    Ok(())
}

fn remote_filesystem(dir: &Path) -> Result<()> {
    println!("\n4. Remote filesystems are refused");
    match fuse_refusal(dir) {
        Ok(message) => println!("  on a bindfs (FUSE) mount: {message}"),
        Err(why) => {
            println!("  (no FUSE mount here: {why}; run as root with bindfs for a real one)");
            let nfs = classify(0x6969).ok_or("NFS missing from the deny-list")?;
            let err = Error::RemoteFs {
                path: "/mnt/nfs/app.lock".into(),
                fs: nfs,
            };
            println!("  what a lock file on NFS produces: {err}");
        }
    }
    Ok(())
}

/// Mounts a bindfs view of a directory and returns the refusal message for
/// a lock file on it.
fn fuse_refusal(dir: &Path) -> std::result::Result<String, String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse".into());
    }
    let (backing, mnt) = (dir.join("backing"), dir.join("mnt"));
    std::fs::create_dir_all(&backing).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let mounted = Command::new("bindfs")
        .arg(&backing)
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return Err("bindfs is missing or mounting needs root".into());
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
        Err(other) => Err(format!("unexpected error: {other}")),
        Ok(_) => Err("the FUSE mount was not refused".into()),
    }
}
