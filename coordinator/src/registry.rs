//! Node liveness: a node is online while its heartbeats arrive, offline after it missed
//! [`MISSED_BEATS`] of them. Pure functions, tested without IO.

/// Heartbeats a node may miss before it counts as offline.
pub const MISSED_BEATS: i64 = 3;

/// Whether a node last seen at `last_seen_ms` is online at `now_ms`.
pub fn online(last_seen_ms: i64, now_ms: i64, interval_ms: i64) -> bool {
    now_ms - last_seen_ms <= MISSED_BEATS * interval_ms
}

/// Nodes whose liveness changed between two sweeps: (node, now online).
pub fn changes<'a>(
    before: &'a std::collections::HashMap<String, bool>,
    now: &'a [(String, bool)],
) -> impl Iterator<Item = (&'a str, bool)> + 'a {
    now.iter().filter(move |(n, on)| before.get(n) != Some(on)).map(|(n, on)| (n.as_str(), *on))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_after_three_missed_beats() {
        assert!(online(1000, 1000, 1000));
        assert!(online(1000, 4000, 1000));
        assert!(!online(1000, 4001, 1000));
    }

    #[test]
    fn only_changes_are_reported() {
        let before = [("a".to_string(), true), ("b".to_string(), true)].into_iter().collect();
        let now = vec![("a".to_string(), true), ("b".to_string(), false), ("c".to_string(), true)];
        let got: Vec<_> = changes(&before, &now).collect();
        assert_eq!(got, vec![("b", false), ("c", true)]);
    }
}
