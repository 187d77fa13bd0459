//! The control API: one JSON request and one JSON response, each a line, per
//! connection on a Unix socket that serves root only. The server hands each
//! request to the state owner and writes back what it answers; it decides
//! nothing itself. The client side is what the CLI commands call.
//!
//! Defences (docs/SECURITY.md says what each one covers):
//! - the socket is created with mode 0600 (umask 0177 around `bind`, so it is
//!   never more open), in a directory only root can write (created 0700 when
//!   missing; an existing one writable by anyone else is refused);
//! - only a stale *socket* at the path is replaced; any other file is left
//!   alone and the daemon refuses to start;
//! - every connection's peer is checked with SO_PEERCRED: uid 0 only;
//! - a request is one line of at most [`MAX_REQUEST_BYTES`], read within
//!   a time limit; a bounded number of connections is served at once, the
//!   rest wait in the kernel's backlog ([`Limits`]);
//! - the client talks only to a server whose peer uid is 0.
//!
//! The wire format (one JSON object per line, `"v"` the protocol version)
//! is in `wire`, the reference is docs/API.md.
mod client;
mod server;
#[cfg(test)]
mod tests;
mod wire;

pub use client::{call, trust_server, ClientError};
pub use server::{
    admit, bind, read_request, serve, serve_with, Limits, ServeError, MAX_REQUEST_BYTES,
};
pub use wire::{
    validate_health, validate_maglev_table_size, Call, Caller, ErrorKind, Request, Response,
    PROTOCOL_VERSION,
};
