//! Tunnels that do not carry HTTP: carried at L4 to an endpoint of the
//! destination, with one access-log line per connection.

use std::net::SocketAddr;

use weft_proto::spiffe::Identity;
use weft_proxy::{balance::Endpoint, hbone::io::H2Io};

use crate::{
    policy::{RequestAttrs, Verdict},
    proxy::{Target, Waypoint},
    upstream,
};

pub async fn forward(
    wp: &Waypoint,
    mut io: H2Io,
    peer: SocketAddr,
    identity: &Identity,
    authority: SocketAddr,
    target: &Target,
) {
    let started = std::time::Instant::now();
    // L7 policies still apply: what they say about requests cannot be
    // checked on a connection, so it fails closed.
    let service = match target {
        Target::Service { service, .. } => Some(service.key()),
        Target::Workload { .. } => None,
    };
    let policies = wp.policies.applying(&wp.name, service);
    if !policies.is_empty() {
        let (principal, headers) = (identity.principal(), http::HeaderMap::new());
        let attrs = RequestAttrs::connection(
            &principal,
            &identity.namespace,
            peer.ip(),
            authority,
            &headers,
        );
        if let Verdict::Deny { policy, .. } = crate::policy::evaluate(&policies, &attrs) {
            tracing::warn!(
                target: "access",
                protocol = %"tcp",
                src.addr = %peer,
                src.identity = %identity,
                dst.service = %target.name(),
                %policy,
                error = "denied by policy (the connection is not HTTP, so rules on requests fail closed)",
                "connection failed"
            );
            return;
        }
    }
    let tunnel = wp.tunnel(
        peer,
        match target {
            Target::Service { service, .. } => Some(service.hostname.as_str()),
            Target::Workload { .. } => None,
        },
    );
    let endpoint = match target {
        Target::Service { service, port } => {
            wp.balancer.service_endpoint(&wp.state, service, *port)
        }
        Target::Workload { workload, addr } => Ok(Endpoint {
            workload: workload.clone(),
            addr: *addr,
        }),
    };
    let result = match endpoint {
        Ok(endpoint) => match upstream::connect(wp, &endpoint, &tunnel.headers).await {
            Ok(mut upstream) => tokio::io::copy_bidirectional(&mut io, &mut upstream)
                .await
                .map(|(sent, received)| (endpoint.addr, sent, received))
                .map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        },
        Err(err) => Err(err.to_string()),
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok((upstream, sent, received)) => tracing::info!(
            target: "access",
            protocol = %"tcp",
            src.addr = %peer,
            src.identity = %identity,
            dst.service = %target.name(),
            upstream_host = %upstream,
            bytes_sent = sent,
            bytes_recv = received,
            duration_ms,
            "connection complete"
        ),
        Err(error) => tracing::warn!(
            target: "access",
            protocol = %"tcp",
            src.addr = %peer,
            src.identity = %identity,
            dst.service = %target.name(),
            duration_ms,
            %error,
            "connection failed"
        ),
    }
}
