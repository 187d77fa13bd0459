//! VRRPv3 (RFC 5798) for IPv4: who owns the VIPs between two or more LB
//! nodes. `codec` turns adverts into bytes and back; `machine` is the RFC's
//! state machine over a caller-supplied clock. Both are pure: no socket,
//! no netlink, no datapath. `net` holds the effects (raw socket, VIPs by
//! rtnetlink, gratuitous ARP) and `task` drives one instance with them,
//! publishing its status; it never touches the datapath. `track` turns
//! what the daemon knows about this node into the advertised priority;
//! `garp` says when a master repeats its gratuitous ARPs; `vmac` holds the
//! addresses under the virtual MAC (`use_vmac`).
pub mod codec;
pub mod garp;
pub mod machine;
pub mod net;
pub mod status;
pub mod task;
pub mod track;
pub mod vmac;
