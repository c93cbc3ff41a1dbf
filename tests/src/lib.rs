//! Helpers for leaktracer's end-to-end tests: compile C workloads, find the Python interpreters,
//! run the real `leaktracer` binary against real processes (root needed: real eBPF), and read its
//! JSON. One module per subject; everything is re-exported here, so a test file needs
//! `use leaktracer_e2e::*` only.

mod browser;
mod cgroups;
mod http;
mod paths;
mod procfs;
mod python;
mod redis;
mod report;
mod tracer;
pub mod valgrind;
mod workloads;

pub use browser::*;
pub use cgroups::*;
pub use http::*;
pub use paths::*;
pub use procfs::*;
pub use python::*;
pub use redis::*;
pub use report::*;
pub use tracer::*;
pub use workloads::*;
