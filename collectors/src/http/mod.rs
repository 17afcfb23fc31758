//! The http collector (HTTP/1.x, HTTP/2 and gRPC at the syscall boundary),
//! under construction for issue 11: so far its kernel capture
//! ([`capture`]) and the pairing behind the sidecar-added latency
//! ([`pairing`]). It is not registered as a collector until it exports
//! its metrics.

pub mod capture;
pub mod pairing;
