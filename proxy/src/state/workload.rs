//! Workloads and services: the domain types ztunnel and the waypoint route
//! by, converted once from `istio.workload.Address`.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;
use weft_proto::{istio::workload as pb, spiffe::Identity};

/// Defaults Istio applies to elided identity fields.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// How to reach a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TunnelProtocol {
    /// Plain TCP: the workload is outside the mesh.
    None,
    /// HTTP/2 CONNECT over mTLS to its node's ztunnel (port 15008).
    Hbone,
}

/// A service port and the workload port it maps to (0: same as the
/// service's target port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    pub service_port: u16,
    pub target_port: u16,
}

/// The address of a waypoint or gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum GatewayAddress {
    Ip {
        ip: IpAddr,
        hbone_port: u16,
    },
    Hostname {
        namespace: String,
        hostname: String,
        hbone_port: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
    #[serde(serialize_with = "display")]
    pub identity: Identity,
    pub node: String,
    pub protocol: TunnelProtocol,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    pub cluster_id: String,
    /// Services it backs ("namespace/hostname") and their port mappings.
    pub services: BTreeMap<String, Vec<PortMapping>>,
    /// Selector-scoped policies ("namespace/name") that apply to it.
    pub authorization_policies: Vec<String>,
    pub healthy: bool,
    pub waypoint: Option<GatewayAddress>,
    /// Runs in its node's network namespace (`hostNetwork`): its addresses
    /// are the node's, shared with every such pod there, so nothing is
    /// looked up by them.
    pub host_network: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<PortMapping>,
    pub waypoint: Option<GatewayAddress>,
    /// `namespace/hostname`, written out once: both proxies look services
    /// up by it for every connection or request.
    #[serde(skip)]
    key: String,
}

impl Service {
    pub fn new(
        name: String,
        namespace: String,
        hostname: String,
        vips: Vec<IpAddr>,
        ports: Vec<PortMapping>,
        waypoint: Option<GatewayAddress>,
    ) -> Self {
        Self {
            key: format!("{namespace}/{hostname}"),
            name,
            namespace,
            hostname,
            vips,
            ports,
            waypoint,
        }
    }

    /// `namespace/hostname`, the service's resource name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The mapping for `service_port`, if the service exposes it.
    pub fn port(&self, service_port: u16) -> Option<PortMapping> {
        self.ports
            .iter()
            .copied()
            .find(|p| p.service_port == service_port)
    }
}

/// Either side of an `Address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressResource {
    Workload(Box<Workload>),
    Service(Service),
}

/// Why an `Address` resource cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("the Address has neither a workload nor a service")]
    Empty,
    #[error("workload has no uid")]
    NoUid,
    #[error("workload {uid}: {reason}")]
    Workload { uid: String, reason: String },
    #[error("service {name}: {reason}")]
    Service { name: String, reason: String },
}

pub fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(bytes).expect("length checked"),
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).expect("length checked"),
        )),
        n => Err(format!(
            "an address of {n} bytes is neither IPv4 (4) nor IPv6 (16)"
        )),
    }
}

fn port(value: u32, what: &str) -> Result<u16, String> {
    u16::try_from(value).map_err(|_| format!("{what} {value} is not a port"))
}

fn ports(list: &[pb::Port]) -> Result<Vec<PortMapping>, String> {
    list.iter()
        .map(|p| {
            Ok(PortMapping {
                service_port: port(p.service_port, "service port")?,
                target_port: port(p.target_port, "target port")?,
            })
        })
        .collect()
}

fn gateway(g: Option<&pb::GatewayAddress>) -> Result<Option<GatewayAddress>, String> {
    let Some(g) = g else { return Ok(None) };
    let hbone_port = port(g.hbone_mtls_port, "waypoint port")?;
    match &g.destination {
        Some(pb::gateway_address::Destination::Address(a)) => Ok(Some(GatewayAddress::Ip {
            ip: ip_from_bytes(&a.address)?,
            hbone_port,
        })),
        Some(pb::gateway_address::Destination::Hostname(h)) => Ok(Some(GatewayAddress::Hostname {
            namespace: h.namespace.clone(),
            hostname: h.hostname.clone(),
            hbone_port,
        })),
        None => Err("waypoint has no address".into()),
    }
}

impl TryFrom<pb::Workload> for Workload {
    type Error = AddressError;

    fn try_from(w: pb::Workload) -> Result<Self, Self::Error> {
        if w.uid.is_empty() {
            return Err(AddressError::NoUid);
        }
        let fail = |reason: String| AddressError::Workload {
            uid: w.uid.clone(),
            reason,
        };
        let ips = w
            .addresses
            .iter()
            .map(|a| ip_from_bytes(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(&fail)?;
        let or = |s: &str, default: &str| {
            if s.is_empty() {
                default.to_owned()
            } else {
                s.to_owned()
            }
        };
        let identity_text = format!(
            "spiffe://{}/ns/{}/sa/{}",
            or(&w.trust_domain, DEFAULT_TRUST_DOMAIN),
            w.namespace,
            or(&w.service_account, DEFAULT_SERVICE_ACCOUNT)
        );
        let identity: Identity = identity_text
            .parse()
            .map_err(|e: weft_proto::spiffe::IdentityError| fail(e.to_string()))?;
        let protocol = match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
            Ok(pb::TunnelProtocol::None) => TunnelProtocol::None,
            Ok(pb::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
            Err(_) => {
                return Err(fail(format!(
                    "unknown tunnel protocol {}",
                    w.tunnel_protocol
                )))
            }
        };
        let services = w
            .services
            .iter()
            .map(|(name, list)| Ok((name.clone(), ports(&list.ports)?)))
            .collect::<Result<BTreeMap<_, _>, String>>()
            .map_err(&fail)?;
        let waypoint = gateway(w.waypoint.as_ref()).map_err(&fail)?;
        Ok(Self {
            healthy: w.status == pb::WorkloadStatus::Healthy as i32,
            host_network: w.network_mode == pb::NetworkMode::HostNetwork as i32,
            uid: w.uid,
            name: w.name,
            namespace: w.namespace,
            ips,
            identity,
            node: w.node,
            protocol,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_name: w.workload_name,
            cluster_id: w.cluster_id,
            services,
            authorization_policies: w.authorization_policies,
            waypoint,
        })
    }
}

impl TryFrom<pb::Service> for Service {
    type Error = AddressError;

    fn try_from(s: pb::Service) -> Result<Self, Self::Error> {
        let fail = |reason: String| AddressError::Service {
            name: format!("{}/{}", s.namespace, s.hostname),
            reason,
        };
        if s.hostname.is_empty() || s.namespace.is_empty() {
            return Err(fail("a service needs a namespace and a hostname".into()));
        }
        let vips = s
            .addresses
            .iter()
            .map(|a| ip_from_bytes(&a.address))
            .collect::<Result<Vec<_>, _>>()
            .map_err(&fail)?;
        let ports = ports(&s.ports).map_err(&fail)?;
        let waypoint = gateway(s.waypoint.as_ref()).map_err(&fail)?;
        Ok(Self::new(
            s.name,
            s.namespace,
            s.hostname,
            vips,
            ports,
            waypoint,
        ))
    }
}

impl TryFrom<pb::Address> for AddressResource {
    type Error = AddressError;

    fn try_from(a: pb::Address) -> Result<Self, Self::Error> {
        match a.r#type {
            Some(pb::address::Type::Workload(w)) => Ok(Self::Workload(Box::new(w.try_into()?))),
            Some(pb::address::Type::Service(s)) => Ok(Self::Service(s.try_into()?)),
            None => Err(AddressError::Empty),
        }
    }
}

fn display<T: std::fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> pb::Workload {
        pb::Workload {
            uid: "Kubernetes//Pod/demo/a".into(),
            name: "a".into(),
            namespace: "demo".into(),
            addresses: vec![vec![198, 18, 1, 2]],
            tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
            ..Default::default()
        }
    }

    #[test]
    fn elided_identity_fields_take_istios_defaults() {
        let w = Workload::try_from(base()).unwrap();
        assert_eq!(
            w.identity.to_string(),
            "spiffe://cluster.local/ns/demo/sa/default"
        );
        assert_eq!(w.ips, vec![IpAddr::from([198, 18, 1, 2])]);
        assert_eq!(w.protocol, TunnelProtocol::Hbone);
    }

    #[test]
    fn malformed_workloads_are_refused_with_the_reason() {
        let cases: Vec<(pb::Workload, &str)> = vec![
            (
                pb::Workload {
                    uid: String::new(),
                    ..base()
                },
                "no uid",
            ),
            (
                pb::Workload {
                    addresses: vec![vec![1, 2, 3, 4, 5]],
                    ..base()
                },
                "5 bytes",
            ),
            (
                pb::Workload {
                    service_account: "bad/sa".into(),
                    ..base()
                },
                "not a workload identity",
            ),
            (
                pb::Workload {
                    tunnel_protocol: 7,
                    ..base()
                },
                "unknown tunnel protocol 7",
            ),
        ];
        for (w, expect) in cases {
            let err = Workload::try_from(w).unwrap_err().to_string();
            assert!(err.contains(expect), "{err:?} should say {expect:?}");
        }
    }
}
