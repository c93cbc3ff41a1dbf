//! `interpreter_exit`: CPython's `Py_FinalizeEx` tears down every module and object, freeing
//! what a script leaked a moment before it exits. At its entry the process's picture freezes
//! (see `current::is_frozen`): nothing more is recorded or released for it, so the report shows
//! what the script held when it finished.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::generated::bpf_send_signal, macros::uprobe,
    programs::ProbeContext,
};
use tracer_common::programs;

use crate::{
    atomic::atomic_add_u32,
    current::{now_ns, traced_tgid, tracing_stopped},
    maps::{FROZEN, FROZEN_COUNT, STOP_AT_EXIT},
    probes::{exec::SIGSTOP, programs_are_empty},
    runtimes,
};

/// Py_FinalizeEx(), or exit() with --reachability: freezes this process's picture (once), and
/// stops it when userspace has work to do before it goes on (read its code objects, scan it).
#[uprobe]
pub fn interpreter_exit(_ctx: ProbeContext) -> u32 {
    const PROGRAM: programs::Program = programs::INTERPRETER_EXIT;
    const { assert!(crate::probes::same_name(PROGRAM.name, "interpreter_exit")) };
    // Stopped: the end of the trace, or leaktracer died (its resume guard turned every program
    // off), when a stop would have nobody to let it go.
    if programs_are_empty() || tracing_stopped() {
        return 0;
    }
    let Some(tgid) = traced_tgid() else {
        return 0;
    };
    if FROZEN.insert(tgid, now_ns(), BPF_NOEXIST as u64).is_ok()
        && let Some(count) = FROZEN_COUNT.get_ptr_mut(0)
    {
        atomic_add_u32(count, 1);
        if STOP_AT_EXIT.load() != 0 || runtimes::is_registered(tgid) {
            // SAFETY: a helper taking a plain integer; it stops this process.
            unsafe { bpf_send_signal(SIGSTOP) };
        }
    }
    0
}
