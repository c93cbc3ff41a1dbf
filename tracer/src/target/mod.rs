//! The process being traced: reading what `/proc` says about it, and launching a command stopped
//! so it can be traced from its first allocation.

pub mod cgroup;
pub mod launch;
pub mod maps;
pub mod memory;
pub mod process;
pub mod remote;
pub mod resume_guard;
