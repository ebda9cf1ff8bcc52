//! SPIFFE workload identities as Istio writes them:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Both the control service (which signs them) and the proxies (which
//! present and check them) use this one parser.

use std::{fmt, str::FromStr};

/// A workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not an Istio SPIFFE identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a workload identity (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>): {reason}")]
pub struct IdentityError {
    pub text: String,
    pub reason: &'static str,
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// The identity without its scheme, as AuthorizationPolicy principals
    /// are written: `<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| IdentityError {
            text: text.to_owned(),
            reason,
        };
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("missing spiffe:// scheme"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => {
                if !valid_segment(td) || !valid_segment(ns) || !valid_segment(sa) {
                    return Err(err(
                        "a segment is empty or has characters outside [A-Za-z0-9._-]",
                    ));
                }
                Ok(Self::new(td, ns, sa))
            }
            _ => Err(err("the path must be /ns/<namespace>/sa/<service-account>")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let id: Identity = "spiffe://cluster.local/ns/demo/sa/client".parse().unwrap();
        assert_eq!(id, Identity::new("cluster.local", "demo", "client"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/client");
        assert_eq!(id.principal(), "cluster.local/ns/demo/sa/client");
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "cluster.local/ns/demo/sa/client",
            "spiffe://cluster.local/ns/demo/sa/",
            "spiffe://cluster.local/ns/demo",
            "spiffe://cluster.local/ns/demo/sa/client/extra",
            "spiffe://cluster.local/ns/de mo/sa/client",
            "spiffe:///ns/demo/sa/client",
            "spiffe://td/sa/x/ns/y",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
