//! Where a workload goes, and how a drain moves a node's workloads within a deadline. Pure
//! functions, tested without IO (docs/control-plane.md, "Placement, cordon and drain").

/// What a workload is assumed to need when its request does not say (`memoryBytes`): a node is
/// a candidate only with at least this much memory available.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub node: String,
    pub online: bool,
    pub schedulable: bool,
    /// Available memory as its last health report said, less what migrations in flight to it
    /// will bring.
    pub available_bytes: u64,
    /// Workloads it runs (not ended), plus migrations in flight to it.
    pub workloads: u32,
}

/// A placement: the node, and why, for the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub node: String,
    pub reason: String,
}

fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The least loaded online, schedulable node (not `exclude`) with `need_bytes` available: fewest
/// workloads, then most memory available, then by name. The error says why none fits.
pub fn place(
    candidates: &[Candidate],
    need_bytes: u64,
    exclude: Option<&str>,
) -> Result<Placed, String> {
    let others: Vec<&Candidate> =
        candidates.iter().filter(|c| Some(c.node.as_str()) != exclude).collect();
    let usable: Vec<&Candidate> =
        others.iter().copied().filter(|c| c.online && c.schedulable).collect();
    let fits: Vec<&Candidate> =
        usable.iter().copied().filter(|c| c.available_bytes >= need_bytes).collect();
    let best = fits.iter().copied().min_by(|a, b| {
        a.workloads
            .cmp(&b.workloads)
            .then(b.available_bytes.cmp(&a.available_bytes))
            .then(a.node.cmp(&b.node))
    });
    match best {
        Some(c) => Ok(Placed {
            node: c.node.clone(),
            reason: format!(
                "least loaded of {} schedulable online node{} with {} available ({} \
                 workload{}, {} free)",
                fits.len(),
                if fits.len() == 1 { "" } else { "s" },
                gib(need_bytes),
                c.workloads,
                if c.workloads == 1 { "" } else { "s" },
                gib(c.available_bytes)
            ),
        }),
        None => {
            let offline = others.iter().filter(|c| !c.online).count();
            let cordoned = others.iter().filter(|c| c.online && !c.schedulable).count();
            let most = usable.iter().map(|c| c.available_bytes).max();
            let mut why = format!(
                "no node can take it: {} node{}{}",
                others.len(),
                if others.len() == 1 { "" } else { "s" },
                exclude.map(|e| format!(" besides {e}")).unwrap_or_default()
            );
            why += &format!(", {offline} offline, {cordoned} cordoned");
            if let Some(m) = most {
                why += &format!(
                    ", and no schedulable online one has {} available (the most is {})",
                    gib(need_bytes),
                    gib(m)
                );
            }
            why += "; uncordon a node, bring one online, or ask for less memory (memoryBytes)";
            Err(why)
        }
    }
}

/// Migration speed assumed by a drain's plan, from docs/bench/migrate.md (1 GiB, 2 cores):
/// stop-and-copy moved 759 MB/s in total, post-copy had the workload running on the target
/// after 46 ms and all its memory there at 961 MB/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Stop-and-copy, bytes per second from request to the last byte on the target.
    pub stop_and_copy_bps: f64,
    /// Post-copy, bytes per second until the source has served every page.
    pub post_copy_bps: f64,
    /// What every migration costs whatever its size (preflight, connection, restore), ms.
    pub overhead_ms: u64,
}

impl Default for Rates {
    fn default() -> Rates {
        Rates { stop_and_copy_bps: 759e6, post_copy_bps: 961e6, overhead_ms: 500 }
    }
}

impl Rates {
    /// The bench's rates, with stop-and-copy's replaced by what this node's recent completed
    /// stop-and-copy migrations achieved ((bytes, duration ms) each), when there are any: their
    /// bytes over their time beyond the overhead, kept between a tenth and twice the bench's.
    pub fn observed(recent: &[(u64, u64)]) -> Rates {
        let d = Rates::default();
        let bytes: u64 = recent.iter().map(|r| r.0).sum();
        let ms: u64 = recent.iter().map(|r| r.1.saturating_sub(d.overhead_ms).max(1)).sum();
        if recent.is_empty() || bytes == 0 {
            return d;
        }
        let bps = (bytes as f64 / (ms as f64 / 1000.0))
            .clamp(d.stop_and_copy_bps / 10.0, d.stop_and_copy_bps * 2.0);
        Rates { stop_and_copy_bps: bps, ..d }
    }

    /// Estimated time of one migration of `bytes`, ms.
    pub fn estimate_ms(&self, bytes: u64, post_copy: bool) -> u64 {
        let bps = if post_copy { self.post_copy_bps } else { self.stop_and_copy_bps };
        self.overhead_ms + (bytes as f64 / bps * 1000.0).ceil() as u64
    }
}

/// One workload a drain moves: its id, resident memory and whether post-copy is open to it
/// (the CRIU engine).
#[derive(Debug, Clone, PartialEq)]
pub struct ToMove {
    pub id: String,
    pub bytes: u64,
    pub post_copy_ok: bool,
}

/// A drain's plan: the order and mode of each workload, the estimated total, whether it fits.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainPlan {
    /// (workload id, post-copy), largest first: the order migrations start in.
    pub moves: Vec<(String, bool)>,
    pub estimate_ms: u64,
    pub fits: bool,
}

/// How long `sizes` take with `concurrency` migrations at a time, each started as soon as a
/// slot is free, in the order given (ms).
fn makespan(times: &[u64], concurrency: usize) -> u64 {
    let mut lanes = vec![0u64; concurrency.max(1)];
    for t in times {
        let lane = lanes.iter_mut().min().expect("at least one lane");
        *lane += t;
    }
    lanes.into_iter().max().unwrap_or(0)
}

/// Plans a drain: every workload by stop-and-copy (the source keeps its original until the
/// target has all of it), unless that does not fit `deadline_ms`; then the largest ones that may
/// go by post-copy do, one at a time, until it fits. `fits` is false when even that is too slow
/// (the drain proceeds anyway and says so). Without a deadline everything is stop-and-copy.
pub fn plan_drain(
    workloads: &[ToMove],
    deadline_ms: Option<u64>,
    concurrency: usize,
    rates: &Rates,
) -> DrainPlan {
    let mut order: Vec<&ToMove> = workloads.iter().collect();
    order.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.id.cmp(&b.id)));
    let mut post = vec![false; order.len()];
    let total = |post: &[bool]| {
        let times: Vec<u64> =
            order.iter().zip(post).map(|(w, p)| rates.estimate_ms(w.bytes, *p)).collect();
        makespan(&times, concurrency)
    };
    let mut estimate = total(&post);
    if let Some(deadline) = deadline_ms {
        for i in 0..order.len() {
            if estimate <= deadline {
                break;
            }
            if order[i].post_copy_ok {
                post[i] = true;
                estimate = total(&post);
            }
        }
    }
    DrainPlan {
        moves: order.iter().zip(&post).map(|(w, p)| (w.id.clone(), *p)).collect(),
        estimate_ms: estimate,
        fits: deadline_ms.is_none_or(|d| estimate <= d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, online: bool, schedulable: bool, gib_free: u64, n: u32) -> Candidate {
        Candidate {
            node: name.into(),
            online,
            schedulable,
            available_bytes: gib_free << 30,
            workloads: n,
        }
    }

    #[test]
    fn the_least_loaded_online_schedulable_node_with_the_memory_wins_and_says_why() {
        let nodes = [
            node("a", true, true, 8, 3),
            node("b", true, true, 2, 1),
            node("c", true, true, 4, 1),
            node("d", false, true, 64, 0),
            node("e", true, false, 64, 0),
        ];
        let p = place(&nodes, DEFAULT_MEMORY_BYTES, None).unwrap();
        // b and c have one workload each; c has more memory free.
        assert_eq!(p.node, "c");
        assert!(p.reason.contains("least loaded of 3 schedulable online nodes"), "{}", p.reason);
        assert!(
            p.reason.contains("1 workload,") && p.reason.contains("4.0 GiB free"),
            "{}",
            p.reason
        );
        // Needing 5 GiB leaves only a.
        assert_eq!(place(&nodes, 5 << 30, None).unwrap().node, "a");
        // Never the excluded node (a migration's source).
        assert_eq!(place(&nodes, DEFAULT_MEMORY_BYTES, Some("c")).unwrap().node, "b");
        // Equal on everything: by name.
        let tie = [node("y", true, true, 1, 0), node("x", true, true, 1, 0)];
        assert_eq!(place(&tie, 1, None).unwrap().node, "x");
    }

    #[test]
    fn no_placement_says_what_is_missing() {
        let nodes = [
            node("a", false, true, 8, 0),
            node("b", true, false, 8, 0),
            node("c", true, true, 1, 0),
        ];
        let e = place(&nodes, 2 << 30, None).unwrap_err();
        assert!(e.contains("1 offline, 1 cordoned"), "{e}");
        assert!(e.contains("2.0 GiB") && e.contains("the most is 1.0 GiB"), "{e}");
        let e = place(&[node("a", true, true, 8, 0)], 1, Some("a")).unwrap_err();
        assert!(e.contains("0 nodes besides a"), "{e}");
    }

    fn w(id: &str, mib: u64, post_copy_ok: bool) -> ToMove {
        ToMove { id: id.into(), bytes: mib << 20, post_copy_ok }
    }

    #[test]
    fn estimates_follow_the_bench_and_concurrency() {
        let r = Rates::default();
        // 1 GiB by stop-and-copy: 0.5 s + 1074 MB at 759 MB/s.
        assert_eq!(r.estimate_ms(1 << 30, false), 500 + 1415);
        assert!(r.estimate_ms(1 << 30, true) < r.estimate_ms(1 << 30, false));
        assert_eq!(makespan(&[4, 3, 2, 1], 2), 5);
        assert_eq!(makespan(&[4, 3, 2, 1], 1), 10);
        assert_eq!(makespan(&[], 2), 0);
    }

    #[test]
    fn a_drain_uses_post_copy_for_the_largest_only_when_the_deadline_needs_it() {
        let r = Rates::default();
        let ws = [
            w("small", 16, true),
            w("big", 8192, true),
            w("mid", 2048, true),
            w("coop", 4096, false),
        ];
        // Plenty of time: all stop-and-copy, largest first.
        let p = plan_drain(&ws, Some(600_000), 2, &r);
        assert!(p.fits);
        assert_eq!(
            p.moves,
            [
                ("big".into(), false),
                ("coop".into(), false),
                ("mid".into(), false),
                ("small".into(), false)
            ]
        );
        // Tight: the biggest goes post-copy, the cooperative one never does.
        let all_sc = plan_drain(&ws, None, 2, &r).estimate_ms;
        let p = plan_drain(&ws, Some(all_sc - 1), 2, &r);
        assert!(p.fits, "{p:?}");
        assert_eq!(p.moves[0], ("big".into(), true));
        assert!(p.moves.iter().all(|(id, post)| id != "coop" || !post));
        assert!(p.estimate_ms < all_sc);
        // Impossible: everything that can goes post-copy and the plan says it does not fit.
        let p = plan_drain(&ws, Some(1_000), 2, &r);
        assert!(!p.fits);
        assert_eq!(p.moves.iter().filter(|m| m.1).count(), 3);
        // Nothing to move fits any deadline.
        assert!(plan_drain(&[], Some(1), 2, &r).fits);
    }

    #[test]
    fn observed_rates_replace_the_bench_within_bounds() {
        let d = Rates::default();
        assert_eq!(Rates::observed(&[]), d);
        // 100 MB in 0.5 s beyond the overhead: 200 MB/s.
        let r = Rates::observed(&[(100_000_000, 1_000)]);
        assert!((r.stop_and_copy_bps - 200e6).abs() < 1.0, "{r:?}");
        // Absurdly fast or slow records are bounded.
        assert_eq!(
            Rates::observed(&[(u64::MAX / 2, 501)]).stop_and_copy_bps,
            d.stop_and_copy_bps * 2.0
        );
        assert_eq!(Rates::observed(&[(1, 100_000)]).stop_and_copy_bps, d.stop_and_copy_bps / 10.0);
    }
}
