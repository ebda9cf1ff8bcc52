//! The address plan. Everything comes from 198.18.0.0/15 (RFC 2544's
//! benchmarking range), which no real network routes, and lives only inside
//! the topology's namespaces.
//!
//! | range | use |
//! |---|---|
//! | 198.18.N.0/24 | pods of node N (N = 1…250); .1 is the node's bridge |
//! | 198.19.255.0/24 | the fabric between nodes; node N is 198.19.255.N, the control plane .254 |
//! | 198.19.0.0/20 | service VIPs (allocated by `weft local`) |

use std::net::Ipv4Addr;

use super::error::{Result, TopologyError};

/// Prefix length of a node's pod subnet.
pub const POD_PREFIX_LEN: u8 = 24;
/// Prefix length of the fabric subnet.
pub const FABRIC_PREFIX_LEN: u8 = 24;
/// The control plane's address on the fabric.
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);
/// The first service VIP; VIPs are 198.19.0.0/20.
pub const SERVICE_VIP_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);

/// Addresses of node number `index` (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddresses {
    /// The node's address on the fabric.
    pub fabric: Ipv4Addr,
    /// The node's pod subnet (network address).
    pub pod_subnet: Ipv4Addr,
    /// The node's address on its pod bridge: the pods' default gateway.
    pub pod_gateway: Ipv4Addr,
}

impl NodeAddresses {
    pub fn for_node(index: usize) -> Result<Self> {
        let n = u8::try_from(index)
            .ok()
            .filter(|n| (1..=250).contains(n))
            .ok_or_else(|| {
                TopologyError::Invalid(format!("node index {index} is outside 1…250"))
            })?;
        Ok(Self {
            fabric: Ipv4Addr::new(198, 19, 255, n),
            pod_subnet: Ipv4Addr::new(198, 18, n, 0),
            pod_gateway: Ipv4Addr::new(198, 18, n, 1),
        })
    }

    /// The pod subnet as `a.b.c.d/len`.
    pub fn pod_cidr(&self) -> String {
        format!("{}/{POD_PREFIX_LEN}", self.pod_subnet)
    }

    /// The `host`-th address of the pod subnet (2…254; .1 is the gateway).
    pub fn pod_address(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.pod_subnet.octets();
        Ipv4Addr::new(a, b, c, host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_disjoint_pod_subnets_inside_the_benchmark_range() {
        let one = NodeAddresses::for_node(1).unwrap();
        let two = NodeAddresses::for_node(2).unwrap();
        assert_eq!(one.pod_cidr(), "198.18.1.0/24");
        assert_eq!(two.pod_gateway, Ipv4Addr::new(198, 18, 2, 1));
        assert_eq!(two.fabric, Ipv4Addr::new(198, 19, 255, 2));
        for addr in [one.fabric, one.pod_gateway, two.pod_address(9)] {
            let [a, b, ..] = addr.octets();
            assert!(
                a == 198 && (b == 18 || b == 19),
                "{addr} is outside 198.18.0.0/15"
            );
        }
    }

    #[test]
    fn node_indices_outside_the_plan_are_refused() {
        assert!(NodeAddresses::for_node(0).is_err());
        assert!(
            NodeAddresses::for_node(251).is_err(),
            ".254 is the control plane's"
        );
    }
}
