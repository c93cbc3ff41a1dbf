//! Threads of traced processes: where each thread started during the trace has its stack, from
//! its start to its exit (see `tracer_common::threads`), so userspace tells a live thread's
//! stack from one its C library keeps after the thread ended.

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};
use tracer_common::threads::{PF_SIGNALED, ThreadStart};

use crate::{
    current::{is_frozen, now_ns, thread_id},
    maps::{LIVE_THREADS, is_traced},
};

/// Offset of `task_struct.flags` (from the kernel's BTF). 0: unknown (every exiting thread is
/// forgotten, those killed with their process too).
#[unsafe(no_mangle)]
pub(crate) static TASK_FLAGS_OFFSET: Global<u32> = Global::new(0);

/// A new thread of `tgid` returns from the clone that made it, the current task, with its stack
/// pointer at `sp`: the top of the stack it was given.
#[inline(always)]
pub(crate) fn thread_started(tgid: u32, sp: u64) {
    let tid = thread_id();
    // A new process's first thread runs on the process's own stack, no mapping of a thread.
    if tid == tgid {
        return;
    }
    let start = ThreadStart {
        tgid,
        _pad: 0,
        sp,
        started_ns: now_ns(),
    };
    // Full (more live threads than slots): this one is not followed.
    let _ = LIVE_THREADS.insert(tid, start, 0);
}

/// The current task, `task` (thread `tid` of `tgid`), exits: its stack is no longer a live
/// thread's. A thread killed by a signal died with its whole process (a fatal signal,
/// exit_group, exec kill every thread): it stays, as alive when its process ended.
#[inline(always)]
pub(crate) fn thread_exited(task: u64, tgid: u32, tid: u32) {
    if tid == tgid || !is_traced(tgid) || is_frozen(tgid) {
        return;
    }
    let offset = TASK_FLAGS_OFFSET.load();
    if offset != 0 {
        // SAFETY: the kernel-read helper copies from kernel memory and fails on a bad address.
        let flags = unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const u32) };
        if flags.is_ok_and(|flags| flags & PF_SIGNALED != 0) {
            return;
        }
    }
    let _ = LIVE_THREADS.remove(tid);
}
