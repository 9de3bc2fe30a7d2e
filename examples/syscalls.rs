//! Runs each acquire path once between markers, for `strace`:
//!
//! ```text
//! cargo build --release --example syscalls
//! strace -f -e trace='!brk,mmap,munmap,mprotect' target/release/examples/syscalls
//! ```
//!
//! Each `write(2, "== …")` line starts a section; the system calls up to
//! the next marker are the ones that section made.

use std::io::Write;

use flockguard::{try_flock, Exclusive, LockFile, LockOptions, RemoteFs};

fn mark(what: &str) {
    // One write(2) per marker, so the sections are easy to find.
    let _ = std::io::stderr().write_all(format!("== {what}\n").as_bytes());
}

fn main() -> Result<(), flockguard::Error> {
    let dir = std::env::temp_dir().join(format!("flockguard-syscalls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| flockguard::Error::Open {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join("app.lock");
    let missing = dir.join("new.lock");
    mark("materialize: the first open on this mount in the process");
    flockguard::materialize(&path)?;

    mark("try_flock::<Exclusive>(existing file), then drop");
    drop(try_flock::<Exclusive>(&path)?);

    mark("LockOptions { remote_fs: Allow }.try_lock, then drop");
    let mut allow = LockOptions::new();
    allow.remote_fs(RemoteFs::Allow);
    drop(allow.open(&path)?.try_lock::<Exclusive>()?);

    mark("try_flock::<Exclusive>(missing file), then drop");
    drop(try_flock::<Exclusive>(&missing)?);

    mark("LockFile::open(existing file): no lock yet");
    let file = LockFile::open(&path)?;
    mark("reused descriptor: try_lock::<Exclusive> + unlock");
    let file = file.try_lock::<Exclusive>()?.unlock()?;

    mark("transitions: try_lock::<Exclusive>, downgrade, upgrade, downgrade, try_upgrade");
    let guard = file.try_lock::<Exclusive>()?;
    let guard = guard.downgrade()?.upgrade()?;
    let guard = guard.downgrade()?.try_upgrade()?;

    mark("drop");
    drop(guard);
    mark("end");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
