//! `launch_entry`: a launched command stops at its entry point (SIGSTOP), after the dynamic
//! loader mapped its libraries and before its own code runs, so userspace can write its unwind
//! tables before the first allocation is recorded; userspace detaches this probe and resumes
//! it (SIGCONT).

use aya_ebpf::{helpers::generated::bpf_send_signal, macros::uprobe, programs::ProbeContext};
use tracer_common::programs;

use crate::current::tracing_stopped;

const SIGSTOP: u32 = 19;

#[uprobe]
pub fn launch_entry(_ctx: ProbeContext) -> u32 {
    const PROGRAM: programs::Program = programs::LAUNCH_ENTRY;
    const { assert!(crate::probes::same_name(PROGRAM.name, "launch_entry")) };
    if !tracing_stopped() {
        // SAFETY: a helper taking a plain integer; it signals the current process.
        unsafe { bpf_send_signal(SIGSTOP) };
    }
    0
}
