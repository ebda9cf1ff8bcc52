//! Choosing where a connection or request goes: one healthy endpoint of a
//! service (round robin), with the service port mapped to the endpoint's
//! target port; and the workload behind a waypoint's address.
//!
//! ztunnel (service VIPs) and the waypoint (routes' backends) both choose
//! endpoints here.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use foldhash::HashMap;

use crate::state::{GatewayAddress, ProxyState, Service, Workload};

#[derive(Debug, thiserror::Error)]
pub enum BalanceError {
    #[error("service {service} has no healthy endpoint")]
    NoEndpoint { service: String },
    #[error(
        "waypoint {waypoint} is not ready (no such service, or no endpoint of it); traffic \
         that must go through it is refused, not sent around it"
    )]
    Waypoint { waypoint: String },
}

/// A chosen endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    /// The endpoint's address and the port the service port maps to.
    pub addr: SocketAddr,
}

/// Round-robin positions, per service.
#[derive(Default)]
pub struct Balancer {
    next: Mutex<HashMap<String, usize>>,
}

impl Balancer {
    /// The next of `endpoints` for `key`, in turn.
    pub fn pick(&self, key: &str, endpoints: &[Arc<Workload>]) -> Option<Arc<Workload>> {
        if endpoints.is_empty() {
            return None;
        }
        Some(endpoints[self.next_position(key) % endpoints.len()].clone())
    }

    /// `key`'s turn: 0, 1, 2, … on successive calls.
    pub fn next_position(&self, key: &str) -> usize {
        let mut next = self.next.lock().expect("balancer lock");
        let position = match next.get_mut(key) {
            Some(position) => position,
            None => next.entry(key.to_owned()).or_insert(0),
        };
        let at = *position;
        *position = position.wrapping_add(1);
        at
    }

    /// Every healthy endpoint of `service`, each with the address and port
    /// `service_port` maps to on it.
    pub fn service_endpoints(
        &self,
        state: &ProxyState,
        service: &Service,
        service_port: u16,
    ) -> Result<Vec<Endpoint>, BalanceError> {
        let key = service.key();
        let mapped = service.port(service_port).map(|p| p.target_port);
        let endpoints: Vec<Endpoint> = state
            .endpoints(key)
            .iter()
            .filter(|w| w.healthy)
            .filter_map(|workload| {
                let ip = *workload.ips.first()?;
                let target = workload
                    .services
                    .get(key)
                    .and_then(|ports| ports.iter().find(|p| p.service_port == service_port))
                    .map(|p| p.target_port)
                    .filter(|p| *p != 0)
                    .or(mapped.filter(|p| *p != 0))
                    .unwrap_or(service_port);
                Some(Endpoint {
                    addr: SocketAddr::new(ip, target),
                    workload: workload.clone(),
                })
            })
            .collect();
        if endpoints.is_empty() {
            return Err(BalanceError::NoEndpoint {
                service: key.to_owned(),
            });
        }
        Ok(endpoints)
    }

    /// A healthy endpoint of `service` for `service_port`, in turn.
    pub fn service_endpoint(
        &self,
        state: &ProxyState,
        service: &Service,
        service_port: u16,
    ) -> Result<Endpoint, BalanceError> {
        let key = service.key();
        let endpoints = self.service_endpoints(state, service, service_port)?;
        let workloads: Vec<Arc<Workload>> = endpoints.iter().map(|e| e.workload.clone()).collect();
        let chosen = self
            .pick(key, &workloads)
            .ok_or_else(|| BalanceError::NoEndpoint {
                service: key.to_owned(),
            })?;
        Ok(endpoints
            .into_iter()
            .find(|e| Arc::ptr_eq(&e.workload, &chosen))
            .expect("chosen among the endpoints"))
    }

    /// The workload serving a waypoint's address, and the HBONE address to
    /// reach it at.
    pub fn waypoint(
        &self,
        state: &ProxyState,
        waypoint: &GatewayAddress,
    ) -> Result<Endpoint, BalanceError> {
        let (service, hbone_port, name) = match waypoint {
            GatewayAddress::Ip { ip, hbone_port } => {
                let port = *hbone_port;
                if let Some(w) = state.workload_by_ip(*ip) {
                    return Ok(Endpoint {
                        workload: w,
                        addr: SocketAddr::new(*ip, port),
                    });
                }
                let service = state
                    .service_by_ip(*ip)
                    .ok_or_else(|| BalanceError::Waypoint {
                        waypoint: ip.to_string(),
                    })?;
                let name = service.key().to_owned();
                (service, port, name)
            }
            GatewayAddress::Hostname {
                namespace,
                hostname,
                hbone_port,
            } => {
                let name = format!("{namespace}/{hostname}");
                let service = state.service(&name).ok_or_else(|| BalanceError::Waypoint {
                    waypoint: name.clone(),
                })?;
                (service, *hbone_port, name)
            }
        };
        let key = service.key();
        let endpoints: Vec<_> = state
            .endpoints(key)
            .iter()
            .filter(|w| w.healthy && !w.ips.is_empty())
            .cloned()
            .collect();
        let workload = self
            .pick(key, &endpoints)
            .ok_or(BalanceError::Waypoint { waypoint: name })?;
        let ip = workload.ips[0];
        Ok(Endpoint {
            addr: SocketAddr::new(ip, hbone_port),
            workload,
        })
    }
}
