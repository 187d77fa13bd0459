//! Host-side stub: `foobar-user` has a build-dependency on this crate so that
//! cargo rebuilds the eBPF object when it changes; the programs themselves are
//! in the `foobar` binary target, built for bpfel-unknown-none by aya-build.
#![no_std]
