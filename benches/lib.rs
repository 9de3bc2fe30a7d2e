//! Nothing to link: the benchmarks of flockguard are this package's bench
//! targets (`acquire.rs`, `handoff.rs`, `holders.rs`).
