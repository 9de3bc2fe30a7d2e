//! What holding 200 PostgreSQL lock names costs a process: connections,
//! threads, descriptors and resident memory, with the blocking API
//! (`PgLock`) or the async one (`AsyncPgLock` on a current-thread runtime).
//!
//! `cargo run --release --example pg_many --features postgres -- blocking|async [N]`
//! with `FLOCKGUARD_PG_URL` set; the server needs N + a few connections.

use std::time::Instant;

use flockguard::pg::{AsyncPgLock, PgLock};
use flockguard::Exclusive;

fn status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

/// Open sockets: the connections to the server.
fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |fds| {
        fds.filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    })
}

/// (threads, descriptors, RSS KiB, sockets)
fn snapshot() -> (usize, usize, u64, usize) {
    (
        count("/proc/self/task"),
        count("/proc/self/fd"),
        status("VmRSS:"),
        sockets(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(url) = std::env::var("FLOCKGUARD_PG_URL") else {
        println!("SKIPPED pg_many: FLOCKGUARD_PG_URL is not set");
        return Ok(());
    };
    let mut args = std::env::args().skip(1);
    let api = args.next().unwrap_or_else(|| "blocking".to_owned());
    let n: usize = args.next().map_or(Ok(200), |v| v.parse())?;
    let prefix = format!("example/pg_many/{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let before = snapshot();
    let start = Instant::now();
    let (held, elapsed) = match api.as_str() {
        "blocking" => {
            let mut guards = Vec::new();
            for i in 0..n {
                guards.push(PgLock::connect(&url, &format!("{prefix}/{i}"))?.lock::<Exclusive>()?);
            }
            let elapsed = start.elapsed();
            let held = snapshot();
            drop(guards);
            (held, elapsed)
        }
        "async" => rt.block_on(async {
            let mut guards = Vec::new();
            for i in 0..n {
                let lock = AsyncPgLock::connect(&url, &format!("{prefix}/{i}")).await?;
                guards.push(lock.lock::<Exclusive>().await?);
            }
            let elapsed = start.elapsed();
            let held = snapshot();
            drop(guards);
            Ok::<_, flockguard::pg::Error>((held, elapsed))
        })?,
        other => return Err(format!("unknown API {other}: blocking or async").into()),
    };
    println!(
        "{api}: {n} names held in {elapsed:?}: {} connections, +{} threads, +{} descriptors, +{} KiB resident ({:.1} KiB per name)",
        held.3 - before.3,
        held.0 - before.0,
        held.1 - before.1,
        held.2 - before.2,
        (held.2 - before.2) as f64 / n as f64
    );
    Ok(())
}
