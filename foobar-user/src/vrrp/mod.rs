//! VRRPv3 (RFC 5798) for IPv4: who owns the VIPs between two or more LB
//! nodes. `codec` turns adverts into bytes and back; `machine` is the RFC's
//! state machine over a caller-supplied clock. Both are pure: no socket,
//! no netlink, no datapath; the vrrp task that drives them reports to the
//! state owner like the health checks do.
pub mod codec;
pub mod machine;
