//! Weft's control service: serves ztunnels and waypoints over delta ADS,
//! signs their workload certificates, and builds its view of the mesh from
//! the objects users already write (Istio's labels, `AuthorizationPolicy`,
//! `PeerAuthentication`, Gateway API), read from Kubernetes or from a
//! directory of the same YAML.
