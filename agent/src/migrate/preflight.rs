//! Whether a target can take a workload: pure checks on the two nodes' health reports.

use ferry_proto::agent::HealthCheckResponse;

/// CRIU version every node needs (4.1 cannot dump INET sockets on kernels >= 6.16).
pub const MIN_CRIU: (u32, u32) = (4, 2);

/// What the source knows about the workload and itself.
pub struct SourceFacts<'a> {
    pub node: &'a str,
    pub kernel: &'a str,
    pub cpu_flags: &'a [String],
    pub uses_criu: bool,
    /// Bytes the snapshot will take on the target, estimated.
    pub estimated_bytes: u64,
    /// The workload's own address (None: it uses the node's network).
    pub address: Option<std::net::Ipv4Addr>,
    /// Its established TCP connections ("LOCAL <-> REMOTE").
    pub established: &'a [String],
}

fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Every reason the target cannot take the workload (empty: it can).
pub fn check(src: &SourceFacts<'_>, target: &HealthCheckResponse) -> Vec<String> {
    let mut problems = Vec::new();
    if target.node == src.node {
        problems.push(format!("the target is this same node ({}); choose another node", src.node));
    }
    if src.uses_criu {
        let criu = target.criu.clone().unwrap_or_default();
        match major_minor(&criu.version) {
            None => problems
                .push(format!("node {} has no CRIU; run scripts/setup.sh there", target.node)),
            Some(v) if v < MIN_CRIU => problems.push(format!(
                "node {} has CRIU {}, ferry needs >= {}.{}",
                target.node, criu.version, MIN_CRIU.0, MIN_CRIU.1
            )),
            Some(_) if !criu.check_passed => problems
                .push(format!("`criu check` fails on node {}: {}", target.node, criu.check_error)),
            Some(_) => {}
        }
        if !target.root {
            problems.push(format!(
                "the agent on node {} does not run as root, which CRIU needs",
                target.node
            ));
        }
        if let (Some(s), Some(t)) = (major_minor(src.kernel), major_minor(&target.kernel)) {
            if t < s {
                problems.push(format!(
                    "node {} runs kernel {}, older than this node's {}; CRIU restores only onto the same or a newer kernel",
                    target.node, target.kernel, src.kernel
                ));
            }
        }
        let missing: Vec<&str> = src
            .cpu_flags
            .iter()
            .filter(|f| !target.cpu_flags.contains(f))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(12).copied().collect();
            problems.push(format!(
                "node {}'s CPU lacks {} feature(s) this CPU has: {}{}",
                target.node,
                missing.len(),
                shown.join(" "),
                if missing.len() > shown.len() { " ..." } else { "" }
            ));
        }
    }
    match src.address {
        // On the node's network a connection is the node's: it cannot move (CRIU would fail
        // the dump of the frozen workload with "Connected TCP socket").
        None if src.uses_criu && !src.established.is_empty() => {
            let shown: Vec<&str> = src.established.iter().take(4).map(String::as_str).collect();
            problems.push(format!(
                "the workload has {} established TCP connection(s) on node {}'s network ({}{}), \
                 which cannot move: only a workload with its own address (network own) keeps \
                 its connections; close them first, or start it with its own address",
                src.established.len(),
                src.node,
                shown.join(", "),
                if src.established.len() > shown.len() { ", ..." } else { "" }
            ));
        }
        Some(addr) if !crate::sys::net::in_subnets(addr, &target.onlink_subnets) => {
            problems.push(if target.onlink_subnets.is_empty() {
                format!(
                    "node {} reports no on-link subnet, so it cannot take address {addr} (an \
                     agent older than workload addresses, or a node without a LAN)",
                    target.node
                )
            } else {
                format!(
                    "node {} has no LAN for the workload's address {addr} (its on-link subnets: \
                     {}); a workload's address must lie in a subnet both nodes are on",
                    target.node,
                    target.onlink_subnets.join(", ")
                )
            });
        }
        _ => {}
    }
    if target.data_dir_free_bytes < src.estimated_bytes {
        problems.push(format!(
            "node {} has {} MiB free in its data dir, the snapshot needs about {} MiB",
            target.node,
            target.data_dir_free_bytes >> 20,
            src.estimated_bytes >> 20
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::agent::CriuInfo;

    fn target() -> HealthCheckResponse {
        HealthCheckResponse {
            node: "b".into(),
            kernel: "6.18.0".into(),
            cpu_flags: vec!["fpu".into(), "sse2".into(), "avx".into()],
            criu: Some(CriuInfo {
                version: "4.2.1".into(),
                check_passed: true,
                ..Default::default()
            }),
            data_dir_free_bytes: 10 << 30,
            root: true,
            ..Default::default()
        }
    }

    fn src(flags: &[String]) -> SourceFacts<'_> {
        SourceFacts {
            node: "a",
            kernel: "6.18.0",
            cpu_flags: flags,
            uses_criu: true,
            estimated_bytes: 1 << 30,
            address: None,
            established: &[],
        }
    }

    #[test]
    fn connections_on_the_node_network_and_an_address_off_the_targets_lan_are_named() {
        let flags = vec!["fpu".to_string()];
        let conns = vec!["10.0.0.2:6379 <-> 10.0.0.5:40000".to_string()];
        let mut s = src(&flags);
        s.established = &conns;
        let p = check(&s, &target()).join("\n");
        assert!(
            p.contains("1 established TCP connection(s)") && p.contains("10.0.0.5:40000"),
            "{p}"
        );
        // With its own address, they move.
        s.address = Some("10.231.7.200".parse().unwrap());
        let mut t = target();
        t.onlink_subnets = vec!["10.231.7.0/24 eth0".into()];
        assert!(check(&s, &t).is_empty());
        t.onlink_subnets = vec!["10.9.0.0/16 eth1".into()];
        let p = check(&s, &t).join("\n");
        assert!(p.contains("no LAN for the workload's address 10.231.7.200"), "{p}");
        t.onlink_subnets.clear();
        assert!(check(&s, &t).join("").contains("reports no on-link subnet"));
    }

    #[test]
    fn compatible_target_passes() {
        let flags = vec!["fpu".to_string(), "sse2".to_string()];
        assert!(check(&src(&flags), &target()).is_empty());
    }

    #[test]
    fn each_incompatibility_is_named() {
        let flags = vec!["fpu".to_string(), "avx512f".to_string()];
        let mut t = target();
        t.node = "a".into();
        t.kernel = "6.1.0".into();
        t.criu = Some(CriuInfo { version: "4.1.1".into(), ..Default::default() });
        t.data_dir_free_bytes = 1 << 20;
        let p = check(&src(&flags), &t).join("\n");
        for needle in ["same node", "CRIU 4.1.1", "older than", "avx512f", "MiB free"] {
            assert!(p.contains(needle), "{needle} missing from:\n{p}");
        }
    }

    #[test]
    fn cooperative_needs_no_criu() {
        let flags = vec!["avx512f".to_string()];
        let mut s = src(&flags);
        s.uses_criu = false;
        let mut t = target();
        t.criu = None;
        t.root = false;
        assert!(check(&s, &t).is_empty());
    }
}
