//! Checks the child-process plumbing the other test files rely on.

use std::time::Duration;

use flockguard::{try_flock, Exclusive};

use crate::support;
use crate::support::Child;

pub const CHILDREN: &[support::Role] = &[("smoke_support::hold", |a| hold(&a[0]))];

/// In a child: holds an exclusive lock on `path` until released.
fn hold(path: &str) {
    let guard = try_flock::<Exclusive>(path).expect("child lock");
    support::tell("locked");
    support::wait_for_parent(|_| {});
    drop(guard);
}

#[test]
fn child_holds_lock_until_released() {
    let (_dir, path) = support::lock_path();
    let child = {
        let mut c = Child::spawn(&["smoke_support::hold", path.to_str().unwrap()]);
        c.expect_line("locked", Duration::from_secs(30));
        c
    };
    assert!(!support::is_free(&path), "child's lock not seen");
    assert!(child.release().success());
    assert!(
        support::is_free(&path),
        "lock not released after child exit"
    );
}
