//! Checks the child-process plumbing the other test files rely on.

#[macro_use]
mod support;

use std::time::Duration;

use flockguard::{try_flock, Exclusive};
use support::Child;

fn dispatch(args: &[String]) {
    let guard = try_flock::<Exclusive>(&args[0]).expect("child lock");
    support::tell("locked");
    support::wait_for_parent(|_| {});
    drop(guard);
}

child_entry!(dispatch);

#[test]
fn child_holds_lock_until_released() {
    let (_dir, path) = support::lock_path();
    let child = {
        let mut c = Child::spawn(&[path.to_str().unwrap()]);
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
