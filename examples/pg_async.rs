//! PostgreSQL advisory locks from async code: 50 tasks wait for a lock that
//! another session holds, on a current-thread runtime, while a 10 ms ticker
//! on the same thread keeps time; then they take it in turn, each writing
//! with its fencing token. Prints the ticker's largest gap while idle (the
//! baseline), while the 50 sessions connect and wait, and while they hand
//! the lock on.
//!
//! Needs a server: `export FLOCKGUARD_PG_URL="$(.ci/pg-server start)"`, then
//! `cargo run --release --example pg_async --features postgres`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flockguard::pg::AsyncPgLock;
use flockguard::Exclusive;

const TASKS: usize = 50;

/// Connects with owned arguments, for `tokio::spawn`.
async fn connect(url: String, name: String) -> Result<AsyncPgLock, flockguard::pg::Error> {
    AsyncPgLock::connect(&url, &name).await
}

/// A 10 ms ticker recording the largest gap between its ticks, in µs.
fn ticker(max_gap: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut last = Instant::now();
        loop {
            ticks.tick().await;
            let now = Instant::now();
            let gap = now.duration_since(last).as_micros() as u64;
            max_gap.fetch_max(gap, Ordering::Relaxed);
            last = now;
        }
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
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
        let gap = Arc::new(AtomicU64::new(0));
        let tick = ticker(gap.clone());
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let baseline = gap.swap(0, Ordering::Relaxed);

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
        let connecting = gap.swap(0, Ordering::Relaxed);
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
        let waiting = gap.swap(0, Ordering::Relaxed);

        let start = Instant::now();
        holder.unlock().await?;
        for waiter in waiters {
            waiter.await??;
        }
        let handed_on = start.elapsed();
        let handing = gap.swap(0, Ordering::Relaxed);
        tick.abort();
        println!("ticker every 10 ms on the runtime's only thread, largest gap:");
        println!(
            "  idle (baseline):                          {:6.2} ms",
            ms(baseline)
        );
        println!(
            "  {TASKS} sessions connect:                      {:6.2} ms",
            ms(connecting)
        );
        println!(
            "  {TASKS} sessions wait for 2 s:                 {:6.2} ms",
            ms(waiting)
        );
        println!(
            "  {TASKS} sessions take the lock in turn ({:?}): {:6.2} ms",
            handed_on,
            ms(handing)
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
