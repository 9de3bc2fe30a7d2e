//! The mapping from a lock name to a PostgreSQL advisory-lock key.

use sha2::{Digest, Sha256};

/// The advisory-lock key for `name`: the first 8 bytes of the SHA-256 of
/// the name's UTF-8 bytes, read as a big-endian signed 64-bit integer.
///
/// The mapping depends only on the name's bytes, so it is the same on every
/// platform and in every version of this crate. Any client takes the same
/// lock with this SQL expression as the `bigint` key (PostgreSQL 11 or later):
///
/// ```sql
/// ('x' || left(encode(sha256(convert_to('NAME', 'UTF8')), 'hex'), 16))::bit(64)::bigint
/// ```
///
/// for example `SELECT pg_advisory_lock(<that expression>)` in `psql`.
/// Two names collide (share one lock) only if their hashes agree in 64
/// bits, about one chance in 2<sup>32</sup> among 65 000 names; a
/// collision makes two names exclude each other, never lets two exclusive
/// holders in. Keys chosen by other software that uses the one-`bigint` form
/// of the advisory-lock functions share the same key space.
///
/// # Examples
/// ```
/// assert_eq!(flockguard::pg::lock_key("abc"), -5_010_229_573_455_851_542);
/// ```
pub fn lock_key(name: &str) -> i64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The `pg_locks` columns that identify an advisory lock on a `bigint` key:
/// `classid` holds the high 32 bits, `objid` the low 32 bits, `objsubid` 1.
pub(crate) fn lock_columns(key: i64) -> (u32, u32) {
    let bits = key as u64;
    ((bits >> 32) as u32, bits as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_sha256_prefix() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(lock_key("abc") as u64, 0xba78_16bf_8f01_cfea);
        // SHA-256("") = e3b0c44298fc1c14...
        assert_eq!(lock_key("") as u64, 0xe3b0_c442_98fc_1c14);
        assert_ne!(lock_key("a"), lock_key("b"));
    }

    #[test]
    fn pg_locks_columns_split_the_key() {
        assert_eq!(lock_columns(lock_key("abc")), (0xba78_16bf, 0x8f01_cfea));
        assert_eq!(lock_columns(1), (0, 1));
        assert_eq!(lock_columns(-1), (u32::MAX, u32::MAX));
    }
}
