//! Heap allocations on the hot paths, counted by a wrapping global
//! allocator: none on a reused descriptor, one (the stored path) per path
//! acquire.
//!
//! A test binary of its own (not a module of `tests/it`): a
//! `#[global_allocator]` replaces the allocator of the whole binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use flockguard::{try_flock, Exclusive, LockFile, Shared};

/// The system allocator, counting allocations made by the current thread
/// (tests run on parallel threads; each counts only its own).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // try_with: the slot may be gone while the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter neither allocates nor panics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: pointer and layout come from this allocator, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: pointer and layout come from this allocator, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn reused_descriptor_never_allocates() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = LockFile::open(dir.path().join("app.lock")).unwrap();
    // Warm-up: anything allocated once per process is not the hot path.
    file = file.try_lock::<Exclusive>().unwrap().unlock().unwrap();

    let n = allocations_in(|| {
        for _ in 0..1000 {
            file = file.try_lock::<Exclusive>().unwrap().unlock().unwrap();
            file = file.try_lock::<Shared>().unwrap().unlock().unwrap();
            let guard = file.try_lock::<Exclusive>().unwrap();
            let guard = guard.downgrade().unwrap().upgrade().unwrap();
            let guard = guard.downgrade().unwrap().try_upgrade().unwrap();
            file = guard.unlock().unwrap();
        }
    });
    assert_eq!(n, 0, "allocations on the reused-descriptor path");
}

#[test]
fn path_acquire_allocates_only_the_stored_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.lock");
    // Warm-up: creates the file and fills the per-mount filesystem verdict.
    drop(try_flock::<Exclusive>(&path).unwrap());

    let n = allocations_in(|| {
        for _ in 0..100 {
            drop(try_flock::<Exclusive>(&path).unwrap());
        }
    });
    // One `Box<Path>` per open, kept for `LockGuard::path` and error messages;
    // the path reaches the kernel without a heap-allocated C string.
    assert_eq!(n, 100, "allocations for 100 path acquires");
}
