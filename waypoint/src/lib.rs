//! The waypoint, Weft's optional per-namespace L7 proxy: terminates HBONE,
//! speaks HTTP/1.1 and HTTP/2 to applications, applies L7 policy and routes
//! (traffic splits, retries, timeouts, fault injection), and originates HBONE
//! to the chosen endpoint using `weft-proxy`'s machinery.
