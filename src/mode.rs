//! Lock modes: the sealed [`Mode`] trait, its two markers and the runtime mirror.

use std::fmt;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Exclusive {}
    impl Sealed for super::Shared {}
}

/// A lock mode known at compile time: [`Exclusive`] or [`Shared`].
///
/// The trait is sealed; no other type can implement it.
pub trait Mode: sealed::Sealed + fmt::Debug + Send + Sync + 'static {
    /// The runtime value of this mode.
    const MODE: FlockMode;
}

/// Exclusive (writer) lock: at most one open file description holds it, and
/// nobody holds a shared lock beside it.
#[doc(alias = "LOCK_EX")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Exclusive;

/// Shared (reader) lock: any number of open file descriptions may hold it at
/// once, and nobody holds an exclusive lock beside them.
#[doc(alias = "LOCK_SH")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Shared;

impl Mode for Exclusive {
    const MODE: FlockMode = FlockMode::Exclusive;
}

impl Mode for Shared {
    const MODE: FlockMode = FlockMode::Shared;
}

/// A lock mode chosen at run time; the value-level mirror of [`Mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlockMode {
    /// `LOCK_EX`.
    #[doc(alias = "LOCK_EX")]
    Exclusive,
    /// `LOCK_SH`.
    #[doc(alias = "LOCK_SH")]
    Shared,
}

impl FlockMode {
    /// The lower-case name used in messages: `"exclusive"` or `"shared"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FlockMode::Exclusive => "exclusive",
            FlockMode::Shared => "shared",
        }
    }
}

impl fmt::Display for FlockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
