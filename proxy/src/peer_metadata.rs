//! Peer metadata as Istio's ambient proxies exchange it on HBONE: the
//! `baggage` header (W3C Baggage, `key=value` members separated by commas)
//! with the workload's cluster, namespace, workload name, canonical
//! service and revision; and `forwarded` (RFC 7239) with the original
//! client's address and, when a service was addressed, its hostname.
//!
//! Both ends of a tunnel fill their metric labels from these when their
//! own view of the peer is missing (a source the receiving node does not
//! know by address; the service a connection was addressed to, which the
//! destination cannot see from a pod address).

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::state::Workload;

/// What a tunnel's source said on its CONNECT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerClaims {
    pub metadata: PeerMetadata,
    /// The service hostname the client addressed (`forwarded`'s `host`).
    pub service_host: Option<String>,
}

impl PeerClaims {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Self {
            metadata: text("baggage")
                .map(PeerMetadata::from_baggage)
                .unwrap_or_default(),
            service_host: text("forwarded")
                .and_then(forwarded_host)
                .map(str::to_owned),
        }
    }

    /// The service `namespace/hostname` the claimed host names, if
    /// `workload` backs it: a source cannot make a connection count for
    /// a service its destination is not part of.
    pub fn service_key(&self, workload: &Workload) -> Option<String> {
        let host = self.service_host.as_deref()?;
        workload
            .services
            .keys()
            .find(|key| key.rsplit_once('/').is_some_and(|(_, h)| h == host))
            .cloned()
    }
}

/// What one end says about itself in `baggage`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    pub cluster: String,
    pub namespace: String,
    /// The workload's name (its Deployment's, when it has one).
    pub workload: String,
    pub canonical_service: String,
    pub canonical_revision: String,
}

impl PeerMetadata {
    pub fn of(workload: &Workload) -> Self {
        Self {
            cluster: workload.cluster_id.clone(),
            namespace: workload.namespace.clone(),
            workload: workload.workload_name.clone(),
            canonical_service: workload.canonical_name.clone(),
            canonical_revision: workload.canonical_revision.clone(),
        }
    }

    /// The `baggage` header value; empty fields are left out.
    pub fn to_baggage(&self) -> String {
        [
            ("k8s.cluster.name", &self.cluster),
            ("k8s.namespace.name", &self.namespace),
            ("k8s.deployment.name", &self.workload),
            ("service.name", &self.canonical_service),
            ("service.version", &self.canonical_revision),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| format!("{key}={}", encode(value)))
        .collect::<Vec<_>>()
        .join(",")
    }

    /// Reads a `baggage` header value. Members this does not know, and
    /// member properties (`;…`), are ignored; a member without `=` is
    /// skipped. Any `k8s.<kind>.name` names the workload.
    pub fn from_baggage(value: &str) -> Self {
        let mut out = Self::default();
        for member in value.split(',') {
            let member = member.split(';').next().unwrap_or_default();
            let Some((key, value)) = member.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), decode(value.trim()));
            match key {
                "k8s.cluster.name" => out.cluster = value,
                "k8s.namespace.name" => out.namespace = value,
                "service.name" => out.canonical_service = value,
                "service.version" => out.canonical_revision = value,
                key if key.starts_with("k8s.")
                    && key.ends_with(".name")
                    && key.matches('.').count() == 2 =>
                {
                    out.workload = value;
                }
                _ => {}
            }
        }
        out
    }

    /// Whether nothing was said.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The headers a CONNECT carries about its source: `forwarded` with the
/// client's address and the addressed service's host, and the source's
/// own `baggage`.
pub fn connect_headers(
    client: SocketAddr,
    service_host: Option<&str>,
    source: Option<&PeerMetadata>,
) -> Vec<(HeaderName, HeaderValue)> {
    let baggage = source.map(PeerMetadata::to_baggage).unwrap_or_default();
    [
        ("forwarded", forwarded(client, service_host)),
        ("baggage", baggage),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .filter_map(|(name, value)| {
        Some((
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).ok()?,
        ))
    })
    .collect()
}

/// `forwarded` for a tunnel: the client's address, and the service host
/// when a service was addressed.
/// A client port of 0 names the client by address alone (a tunnel that
/// carries many of its connections).
pub fn forwarded(client: SocketAddr, service_host: Option<&str>) -> String {
    let mut value = match (client.port(), client.ip()) {
        (0, std::net::IpAddr::V4(ip)) => format!("for={ip}"),
        (0, std::net::IpAddr::V6(ip)) => format!("for=\"[{ip}]\""),
        _ => format!("for=\"{client}\""),
    };
    if let Some(host) = service_host {
        value.push_str(&format!(";host={host}"));
    }
    value
}

/// The `host` parameter of the first element of a `forwarded` value.
pub fn forwarded_host(value: &str) -> Option<&str> {
    value
        .split(',')
        .next()?
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        .map(|(_, host)| host.trim().trim_matches('"'))
        .filter(|host| !host.is_empty())
}

/// Percent-encodes what a baggage value may not carry raw.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'!' | b'#'..=b'+' | b'-'..=b':' | b'<'..=b'[' | b']'..=b'~' if b != b'%' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(cluster: &str, ns: &str, workload: &str, svc: &str, rev: &str) -> PeerMetadata {
        PeerMetadata {
            cluster: cluster.into(),
            namespace: ns.into(),
            workload: workload.into(),
            canonical_service: svc.into(),
            canonical_revision: rev.into(),
        }
    }

    #[test]
    fn baggage_round_trips_and_leaves_out_empty_fields() {
        let full = meta("Kubernetes", "shop", "web-v1", "web", "v1");
        assert_eq!(
            full.to_baggage(),
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web-v1,\
             service.name=web,service.version=v1"
        );
        assert_eq!(PeerMetadata::from_baggage(&full.to_baggage()), full);
        let partial = meta("", "shop", "", "web", "");
        assert_eq!(
            partial.to_baggage(),
            "k8s.namespace.name=shop,service.name=web"
        );
        let odd = meta("c", "ns", "a b,c=d", "x%y", "1;2");
        assert_eq!(PeerMetadata::from_baggage(&odd.to_baggage()), odd);
    }

    #[test]
    fn baggage_from_other_proxies_is_read_leniently() {
        let cases = [
            ("", meta("", "", "", "", "")),
            (
                "k8s.namespace.name = shop , service.name=web;prop=1",
                meta("", "shop", "", "web", ""),
            ),
            ("k8s.pod.name=web-0", meta("", "", "web-0", "", "")),
            ("k8s.cronjob.name=nightly", meta("", "", "nightly", "", "")),
            ("k8s.a.b.name=x,garbage,=,other=1", meta("", "", "", "", "")),
            ("service.version=v%202", meta("", "", "", "", "v 2")),
        ];
        for (header, expected) in cases {
            assert_eq!(PeerMetadata::from_baggage(header), expected, "{header:?}");
        }
    }

    #[test]
    fn forwarded_carries_the_client_and_the_service_host() {
        let client: SocketAddr = "198.18.0.5:40000".parse().unwrap();
        let v6: SocketAddr = "[fd00:198:18::5]:40000".parse().unwrap();
        assert_eq!(forwarded(client, None), "for=\"198.18.0.5:40000\"");
        let ip_only = SocketAddr::new(client.ip(), 0);
        assert_eq!(forwarded(ip_only, Some("a.b")), "for=198.18.0.5;host=a.b");
        let v6_only = SocketAddr::new(v6.ip(), 0);
        assert_eq!(forwarded(v6_only, None), "for=\"[fd00:198:18::5]\"");
        assert_eq!(
            forwarded(v6, Some("web.shop.svc.cluster.local")),
            "for=\"[fd00:198:18::5]:40000\";host=web.shop.svc.cluster.local"
        );
        let cases = [
            (
                "for=\"198.18.0.5:1\";host=web.shop.svc.cluster.local",
                Some("web.shop.svc.cluster.local"),
            ),
            ("for=1.2.3.4;Host=\"a.b\", host=c.d", Some("a.b")),
            ("for=1.2.3.4", None),
            ("for=1.2.3.4;host=", None),
            ("", None),
        ];
        for (value, expected) in cases {
            assert_eq!(forwarded_host(value), expected, "{value:?}");
        }
    }
}
