//! Workloads' own addresses: the cluster's workload range (`--workload-cidr`), the network a
//! workload asks for, and the choice of the lowest free host address. Pure; the allocations
//! themselves live in the store (`addresses` table).

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;

/// The longest prefix accepted: a /30 has two host addresses, a /31 or /32 none once the
/// network and broadcast addresses are skipped.
pub const MAX_PREFIX: u8 = 30;

/// An IPv4 range workloads' own addresses come from, e.g. 10.231.7.128/25.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadRange {
    network: Ipv4Addr,
    prefix: u8,
}

impl WorkloadRange {
    /// Parses `A.B.C.D/N`: IPv4 only, N at most [`MAX_PREFIX`], no host bits set. The error
    /// says what is wrong and what would do.
    pub fn parse(s: &str) -> Result<WorkloadRange, String> {
        let s = s.trim();
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err(format!(
                "workload range {s:?} has no prefix length: give a CIDR such as 10.231.7.128/25"
            ));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_ok() {
            return Err(format!(
                "workload range {s:?} is IPv6; workload addresses are IPv4 only: give a CIDR \
                 such as 10.231.7.128/25"
            ));
        }
        let addr: Ipv4Addr = addr.parse().map_err(|_| {
            format!(
                "workload range {s:?}: {addr:?} is not an IPv4 address: give a CIDR such as \
                 10.231.7.128/25"
            )
        })?;
        let prefix: u8 =
            prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
                format!("workload range {s:?}: prefix length {prefix:?} is not 0-32")
            })?;
        if prefix > MAX_PREFIX {
            return Err(format!(
                "workload range {s:?} is too small: a /{prefix} leaves no host address once the \
                 network and broadcast addresses are skipped; give /{MAX_PREFIX} or shorter"
            ));
        }
        let network = Ipv4Addr::from(u32::from(addr) & mask(prefix));
        if network != addr {
            return Err(format!(
                "workload range {s:?} has host bits set: did you mean {network}/{prefix}?"
            ));
        }
        Ok(WorkloadRange { network, prefix })
    }

    fn first(&self) -> u32 {
        u32::from(self.network) + 1
    }

    fn broadcast(&self) -> u32 {
        u32::from(self.network) | !mask(self.prefix)
    }

    /// How many host addresses the range has (network and broadcast addresses left out).
    pub fn size(&self) -> u64 {
        (1u64 << (32 - self.prefix)) - 2
    }

    /// Whether `a` is one of the range's host addresses.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        (self.first()..self.broadcast()).contains(&u32::from(a))
    }

    /// The lowest host address not in `taken`, or `None` when every one is.
    pub fn lowest_free(&self, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        (self.first()..self.broadcast()).map(Ipv4Addr::from).find(|a| !taken.contains(a))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl fmt::Display for WorkloadRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The network a workload runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The node's own network (no address of its own).
    #[default]
    Node,
    /// A network namespace of its own with an address from the workload range, which moves with
    /// it on migration.
    Own,
}

impl Network {
    /// The names the API and the flags use.
    pub const NAMES: &'static str = "node, own";

    /// "node" or "own".
    pub fn parse(s: &str) -> Option<Network> {
        match s {
            "node" => Some(Network::Node),
            "own" => Some(Network::Own),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Network::Node => "node",
            Network::Own => "own",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_ipv4_cidrs_and_say_what_is_wrong_with_others() {
        let r = WorkloadRange::parse("10.231.7.128/25").unwrap();
        assert_eq!(r.to_string(), "10.231.7.128/25");
        assert_eq!(r.size(), 126);
        assert!(r.contains(ip("10.231.7.129")) && r.contains(ip("10.231.7.254")));
        assert!(!r.contains(ip("10.231.7.128")), "the network address is not a host");
        assert!(!r.contains(ip("10.231.7.255")), "nor is the broadcast address");
        assert!(!r.contains(ip("10.231.7.1")));
        assert_eq!(WorkloadRange::parse("10.0.0.0/30").unwrap().size(), 2);
        assert_eq!(WorkloadRange::parse("10.0.0.0/8").unwrap().size(), (1 << 24) - 2);
        let err = |s: &str| WorkloadRange::parse(s).unwrap_err();
        assert!(err("10.0.0.0").contains("no prefix length"), "{}", err("10.0.0.0"));
        assert!(err("fd00::/64").contains("IPv6"), "{}", err("fd00::/64"));
        assert!(err("10.0.0/24").contains("not an IPv4 address"), "{}", err("10.0.0/24"));
        assert!(err("10.0.0.0/33").contains("not 0-32"), "{}", err("10.0.0.0/33"));
        assert!(err("10.0.0.0/x").contains("not 0-32"), "{}", err("10.0.0.0/x"));
        assert!(err("10.0.0.0/31").contains("/30 or shorter"), "{}", err("10.0.0.0/31"));
        assert!(err("10.0.0.4/32").contains("/30 or shorter"), "{}", err("10.0.0.4/32"));
        assert!(
            err("10.231.7.130/25").contains("did you mean 10.231.7.128/25"),
            "{}",
            err("10.231.7.130/25")
        );
    }

    #[test]
    fn the_lowest_free_host_address_skips_network_and_broadcast() {
        let r = WorkloadRange::parse("192.168.5.0/30").unwrap();
        let mut taken = HashSet::new();
        assert_eq!(r.lowest_free(&taken), Some(ip("192.168.5.1")));
        taken.insert(ip("192.168.5.1"));
        assert_eq!(r.lowest_free(&taken), Some(ip("192.168.5.2")));
        taken.insert(ip("192.168.5.2"));
        assert_eq!(r.lowest_free(&taken), None, ".3 is the broadcast address");
        taken.remove(&ip("192.168.5.1"));
        assert_eq!(r.lowest_free(&taken), Some(ip("192.168.5.1")), "a freed one is reused");
        // Addresses outside the range do not count.
        let r = WorkloadRange::parse("10.0.0.0/29").unwrap();
        let taken: HashSet<_> = [ip("10.0.0.1"), ip("10.0.0.3"), ip("10.0.1.2")].into();
        assert_eq!(r.lowest_free(&taken), Some(ip("10.0.0.2")));
    }

    #[test]
    fn networks_are_node_or_own() {
        assert_eq!(Network::parse("own"), Some(Network::Own));
        assert_eq!(Network::parse("node"), Some(Network::Node));
        assert_eq!(Network::parse("host"), None);
        assert_eq!(Network::parse("Own"), None);
        assert_eq!(Network::default(), Network::Node);
        assert_eq!(Network::Own.as_str(), "own");
    }
}
