//! What both of Weft's proxies share: the HBONE client, server and pool; the
//! identity and certificate manager; the xDS client and the workload,
//! service and policy state it maintains; the copy loop; metrics, access log
//! and admin server plumbing.
//!
//! ztunnel and the waypoint depend on this crate and never on each other, so
//! no proxy logic is written twice. (Populated by the data-path work.)
