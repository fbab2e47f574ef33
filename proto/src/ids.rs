//! Ids of workloads, migrations and the like, the same in every component: a prefix, `-`, and
//! 12 hex digits from the kernel's random source.

use std::io::Read;

/// `N` bytes from the kernel's random source. Panics if it cannot be read: a made-up id could
/// collide with another, which is worse than no id.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap_or_else(|e| panic!("cannot read the kernel's random source /dev/urandom: {e}"));
    b
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh id: `prefix-` and 12 hex digits, e.g. `w-0a1b2c3d4e5f`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex(&random_bytes::<6>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_prefix_and_twelve_hex_digits_and_differ() {
        let (a, b) = (new_id("w"), new_id("w"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("w-") && a[2..].chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
