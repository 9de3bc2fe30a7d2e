//! Async lock waits on tokio: a task waits for a lock another task holds
//! while the runtime's single thread keeps serving a ticker, then a
//! timed-out wait, a cancelled one, and an async upgrade.
//!
//! Run with `cargo run --example async --features tokio`.

use std::time::{Duration, Instant};

use flockguard::{CancelToken, Exclusive, LockFile, Shared, Wait};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("async.lock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let held = flockguard::tokio::block_flock::<Exclusive>(&path).await?;
        println!("holding {}", path.display());

        // The waiter sleeps on the close event; the ticker keeps running on
        // the same thread.
        let waiter = tokio::spawn({
            let path = path.clone();
            async move {
                let start = Instant::now();
                let guard =
                    flockguard::tokio::flock_timeout::<Exclusive>(&path, Duration::from_secs(5))
                        .await?;
                println!("waiter got the lock {:?} after starting", start.elapsed());
                Ok::<_, flockguard::Error>(guard)
            }
        });
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        for i in 0..5 {
            ticks.tick().await;
            println!("tick {i}");
        }
        drop(held);
        let guard = waiter.await??;

        // A deadline: the error names the holder and gives the file back.
        let err = flockguard::tokio::lock_timeout::<Shared>(
            LockFile::open(&path)?,
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        println!("timed out: {err}");

        // A cancel token, cancelled from another task.
        let token = CancelToken::new();
        let canceller = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            canceller.cancel();
        });
        let err =
            flockguard::tokio::lock_with::<Shared>(err.into_inner(), Wait::forever().cancel(token))
                .await
                .unwrap_err();
        println!("cancelled: {err}");
        drop(guard);

        // An upgrade that waits without blocking the thread.
        let reader = flockguard::tokio::lock::<Shared>(err.into_inner()).await?;
        let writer = flockguard::tokio::upgrade(reader).await?;
        println!("upgraded to {}", writer.mode());
        Ok(())
    })
}
