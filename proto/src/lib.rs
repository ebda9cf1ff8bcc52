//! Weft's wire protocols, generated at build time from `proto/` (our own
//! `.proto` files, wire-compatible with Envoy's and Istio's):
//!
//! - [`envoy::service::discovery::v3`]: delta ADS, the xDS transport;
//! - [`istio::workload`] and [`istio::security`]: the resources node proxies
//!   receive (`Address` = workload or service, `Authorization`);
//! - [`istio::v1::auth`]: the certificate-signing service;
//! - [`istio::workload::zds`]: how a node agent hands pods to ztunnel (ZDS);
//! - [`weft::l7::v1`]: the waypoints' routes (Weft's own resource type).
//!
//! Generated types stay in this crate's API as they are; every other crate
//! converts them once, at its edge, into its own domain types.

#[allow(clippy::all, missing_docs, rust_2018_idioms)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/protos.rs"));
}
pub use generated::*;

pub mod spiffe;

/// Type URL of `istio.workload.Address` resources.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of `istio.security.Authorization` resources.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";
/// Type URL of Weft's L7 routes for waypoints (`weft.l7.v1.ServiceRoutes`).
pub const ROUTES_TYPE_URL: &str = "type.googleapis.com/weft.l7.v1.ServiceRoutes";
/// Type URL of Weft's backend policies for waypoints
/// (`weft.l7.v1.BackendPolicy`, from DestinationRules).
pub const BACKEND_POLICY_TYPE_URL: &str = "type.googleapis.com/weft.l7.v1.BackendPolicy";
/// Type URL of Weft's L7 authorization for waypoints (`weft.l7.v1.Policy`).
pub const L7_POLICY_TYPE_URL: &str = "type.googleapis.com/weft.l7.v1.Policy";

/// Packs a message into an `Any` with the given type URL.
pub fn to_any<M: prost::Message>(type_url: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_owned(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::istio::{security, workload};

    /// Field numbers are the contract with Istio: a workload encoded with
    /// known tags must decode back field by field, and the bytes must carry
    /// the tags Istio uses (uid = 20, addresses = 3, node = 9, services = 22).
    #[test]
    fn workload_fields_use_istios_tags() {
        let w = workload::Workload {
            uid: "c//Pod/ns/a".into(),
            addresses: vec![vec![198, 18, 1, 2]],
            node: "n1".into(),
            ..Default::default()
        };
        let bytes = w.encode_to_vec();
        // tag(20, LEN) = (20 << 3) | 2 = 162 = varint [0xa2, 0x01]
        assert!(
            bytes.windows(3).any(|w| w == [0xa2, 0x01, 11]),
            "uid is field 20"
        );
        assert!(
            bytes.windows(2).any(|w| w == [0x1a, 4]),
            "addresses is field 3"
        );
        assert!(bytes.windows(2).any(|w| w == [0x4a, 2]), "node is field 9");
        assert_eq!(workload::Workload::decode(bytes.as_slice()).unwrap(), w);
    }

    #[test]
    fn authorization_rules_nest_as_istio_declares() {
        let a = security::Authorization {
            name: "deny-all".into(),
            action: security::Action::Deny as i32,
            rules: vec![security::Rule {
                clauses: vec![security::Clause {
                    matches: vec![security::Match {
                        destination_ports: vec![8080],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        };
        let bytes = a.encode_to_vec();
        assert_eq!(
            security::Authorization::decode(bytes.as_slice()).unwrap(),
            a
        );
        // action = field 4 varint 1
        assert!(bytes.windows(2).any(|w| w == [0x20, 1]));
    }
}
