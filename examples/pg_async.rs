//! PostgreSQL advisory locks from async code: 50 tasks wait for a lock that
//! another session holds, on a current-thread runtime, while a 10 ms ticker
//! on the same thread keeps time; then they take it in turn, each writing
//! with its fencing token. Prints the ticker's largest gap while idle (the
//! baseline), while the 50 sessions connect and wait, and while they hand
//! the lock on; and, for contrast, while a task calls the blocking API.
//!
//! Needs a server: `export FLOCKGUARD_PG_URL="$(.ci/pg-server start)"`, then
//! `cargo run --release --example pg_async --features postgres`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flockguard::pg::{AsyncPgLock, PgLock};
use flockguard::Exclusive;

const TASKS: usize = 50;

/// Connects with owned arguments, for `tokio::spawn`.
async fn connect(url: String, name: String) -> Result<AsyncPgLock, flockguard::pg::Error> {
    AsyncPgLock::connect(&url, &name).await
}

/// The gaps a 10 ms ticker saw, in µs.
type Gaps = Arc<Mutex<Vec<u64>>>;

/// A 10 ms ticker recording every gap between its ticks.
fn ticker(gaps: Gaps) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut last = Instant::now();
        loop {
            ticks.tick().await;
            let now = Instant::now();
            let gap = now.duration_since(last).as_micros() as u64;
            gaps.lock().unwrap().push(gap);
            last = now;
        }
    })
}

/// The largest gap and the 99th percentile since the last call, in ms.
fn take(gaps: &Gaps) -> (f64, f64) {
    let mut v = std::mem::take(&mut *gaps.lock().unwrap());
    v.sort_unstable();
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
    (v[v.len() - 1] as f64 / 1000.0, p99 as f64 / 1000.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(url) = std::env::var("FLOCKGUARD_PG_URL") else {
        println!("SKIPPED pg_async: FLOCKGUARD_PG_URL is not set");
        return Ok(());
    };
    let name = format!("example/pg_async/{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let gaps = Gaps::default();
        let tick = ticker(gaps.clone());
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let baseline = take(&gaps);

        // Another session holds the lock.
        let holder = AsyncPgLock::connect(&url, &name)
            .await?
            .lock::<Exclusive>()
            .await?;
        let last_token = Arc::new(AtomicU64::new(holder.fencing_token() as u64));
        let mut locks = Vec::new();
        for _ in 0..TASKS {
            locks.push(tokio::spawn(connect(url.clone(), name.clone())));
        }
        let mut sessions = Vec::new();
        for lock in locks {
            sessions.push(lock.await??);
        }
        let connecting = take(&gaps);
        let mut waiters = Vec::new();
        for lock in sessions {
            let last_token = last_token.clone();
            waiters.push(tokio::spawn(async move {
                let guard = lock.lock::<Exclusive>().await?;
                // The storage check a fenced write makes: newer than any
                // token accepted before.
                let token = guard.fencing_token() as u64;
                assert!(token > last_token.fetch_max(token, Ordering::SeqCst));
                tokio::time::sleep(Duration::from_millis(1)).await;
                guard.unlock().await?;
                Ok::<_, flockguard::pg::Error>(())
            }));
        }
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let waiting = take(&gaps);

        let start = Instant::now();
        holder.unlock().await?;
        for waiter in waiters {
            waiter.await??;
        }
        let handed_on = start.elapsed();
        let handing = take(&gaps);

        // For contrast, what not to do: the blocking API called from a task
        // blocks the runtime's only thread for the whole wait.
        let holder = AsyncPgLock::connect(&url, &name)
            .await?
            .lock::<Exclusive>()
            .await?;
        take(&gaps);
        let blocking =
            PgLock::connect(&url, &name)?.lock_timeout::<Exclusive>(Duration::from_millis(500));
        assert!(blocking.is_err_and(|e| e.is_timeout()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let blocked = take(&gaps);
        holder.unlock().await?;
        tick.abort();
        println!("ticker every 10 ms on the runtime's only thread: largest gap, 99th percentile");
        let row = |what: &str, (max, p99): (f64, f64)| {
            println!("  {what:<48} {max:6.2} ms {p99:6.2} ms");
        };
        row("idle for 2 s (baseline)", baseline);
        row(&format!("{TASKS} sessions connect"), connecting);
        row(&format!("{TASKS} sessions wait for 2 s"), waiting);
        row(
            &format!("{TASKS} sessions take the lock in turn ({handed_on:.0?})"),
            handing,
        );
        row("blocking PgLock::lock_timeout(500 ms) in a task", blocked);
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
