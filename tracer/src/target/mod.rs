//! The process being traced: reading what `/proc` says about it, and launching a command stopped
//! so it can be traced from its first allocation.
//!
//! - [`process`]: facts from `/proc/PID`; [`maps`]: its memory map; [`memory`]: its memory
//!   limit and resident set; [`remote`]: reading its memory; [`object_file`]: the bytes of
//!   the files it maps, read once;
//! - [`cgroup`]: cgroup v2 directories, their ids and processes;
//! - [`launch`]: a command forked stopped before its exec; [`resume_guard`]: the process that
//!   resumes stopped targets if leaktracer dies.

pub mod cgroup;
pub mod launch;
pub mod maps;
pub mod memory;
pub mod object_file;
pub mod process;
pub mod remote;
pub mod resume_guard;
