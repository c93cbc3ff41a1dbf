//! `process_exec`: when a process execs, its old image's memory goes away without a single
//! free. The time of the exec lets userspace retire exactly the records made before it; the
//! process's unwind tables go with the old image.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_send_signal},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::programs;

use crate::{
    current::{now_ns, tracing_stopped},
    maps::{BREAKS, EXECS, RESERVATIONS, STOP_AT_EXEC, UNWIND_PROCESSES},
    probes::programs_are_empty,
    runtimes,
};

pub(crate) const SIGSTOP: u32 = 19;

/// `sched_process_exec`, on every exec: stamps the exec'ing process with the time.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
    const PROGRAM: programs::Program = programs::PROCESS_EXEC;
    const {
        assert!(crate::probes::same_name(PROGRAM.name, "process_exec"));
        assert!(crate::probes::same_name(
            programs::EXEC_TRACEPOINT,
            "sched_process_exec"
        ));
    }
    if programs_are_empty() || tracing_stopped() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // A full map evicts its oldest entry (LRU); the insert cannot fail otherwise.
    let _ = EXECS.insert(tgid, now_ns(), 0);
    // The old image's unwind tables describe a layout that is gone: until userspace writes the
    // new image's, its stacks are walked by frame pointers. (Fails when it had none.)
    let _ = UNWIND_PROCESSES.remove(tgid);
    // Nor does the new image run the old one's runtime.
    runtimes::forget(tgid);
    // Its program break and reservations are the new address space's, not the old one's (an
    // old break against the new one read as gigabytes of brk growth after `sh -c 'exec ...'`).
    let _ = BREAKS.remove(tgid);
    let _ = RESERVATIONS.remove(tgid);
    // SAFETY: the value is only tested for presence.
    if unsafe { STOP_AT_EXEC.get(tgid) }.is_some() {
        // SAFETY: a helper taking a plain integer; it signals the exec'ing process, which stops
        // before the new image's first instruction.
        unsafe { bpf_send_signal(SIGSTOP) };
    }
    0
}
