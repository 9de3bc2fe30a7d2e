//! The integration tests, one binary with a module per subject.
//!
//! Tests that need other processes re-execute this binary: a child runs one
//! role from a module's `CHILDREN` table through [`__child_entry`].
//! Modules that need an optional feature are compiled only with it.

mod support;

mod bad_input;
#[cfg(feature = "cli")]
mod cli;
mod contention;
mod errors;
mod faults;
mod fs_verdict;
mod fuse;
mod guest_nfs;
mod holders;
#[cfg(feature = "proptest")]
mod model;
mod mount_cache;
#[cfg(all(feature = "ofd", feature = "proptest"))]
mod ofd;
mod open_contract;
#[cfg(all(feature = "postgres", feature = "proptest"))]
mod pg;
mod process;
mod security;
mod smoke_support;
mod stress;
mod timed;
#[cfg(all(feature = "tokio", feature = "proptest"))]
mod tokio;

/// Every module's child roles.
fn child_roles() -> impl Iterator<Item = &'static support::Role> {
    let tables: &[&[support::Role]] = &[
        bad_input::CHILDREN,
        errors::CHILDREN,
        faults::CHILDREN,
        fs_verdict::CHILDREN,
        holders::CHILDREN,
        #[cfg(all(feature = "ofd", feature = "proptest"))]
        ofd::CHILDREN,
        open_contract::CHILDREN,
        #[cfg(all(feature = "postgres", feature = "proptest"))]
        pg::CHILDREN,
        process::CHILDREN,
        security::CHILDREN,
        smoke_support::CHILDREN,
        stress::CHILDREN,
        timed::CHILDREN,
        #[cfg(all(feature = "tokio", feature = "proptest"))]
        tokio::CHILDREN,
    ];
    tables.iter().flat_map(|table| table.iter())
}

/// The entry point of a child started by `support::Child`: runs the role
/// it names and exits. Ignored in a test run, where it has nothing to do.
#[test]
#[ignore = "the entry point of child processes, run by support::Child"]
fn __child_entry() {
    let Some((role, args)) = support::child_request() else {
        return;
    };
    let (_, run) = child_roles()
        .find(|(name, _)| *name == role)
        .unwrap_or_else(|| panic!("no child role {role:?}"));
    run(&args);
    std::process::exit(0);
}

#[test]
fn child_roles_have_unique_names() {
    let mut names: Vec<&str> = child_roles().map(|(name, _)| *name).collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "a role name is used twice");
}
