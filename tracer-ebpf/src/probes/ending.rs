//! How processes end: `mark_victim` (the OOM killer chose one) and `sched_process_exit` (its
//! last thread exited, with the exit status). Both run machine-wide and record only processes
//! in `TRACED` (the ones userspace attached to), into an LRU map by tgid: the rest of the
//! machine's exits cost a lookup and can never evict a target's ending. `task_struct` is read
//! at offsets from the kernel's BTF, set by userspace at load (0: unknown, and the programs do
//! nothing).

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::LruHashMap,
    programs::RawTracePointContext,
};
use tracer_common::{ending::ProcessEnding, programs};

use super::threads::thread_exited;
use crate::{
    current::{now_ns, tracing_stopped},
    maps::is_traced,
    probes::{programs_are_empty, same_name},
};

/// tgid -> how the process ended (see `tracer_common::ending`), for traced processes only;
/// userspace reads its targets' entries once they are gone. LRU, so a long trace of many
/// short-lived processes (a cgroup running a build) stays bounded.
#[map]
pub(crate) static ENDINGS: LruHashMap<u32, ProcessEnding> = LruHashMap::with_max_entries(8192, 0);

/// Offset of `task_struct.tgid` (from the kernel's BTF). 0: unknown.
#[unsafe(no_mangle)]
pub(crate) static TGID_OFFSET: Global<u32> = Global::new(0);

/// Offset of `task_struct.exit_code` (from the kernel's BTF). 0: unknown.
#[unsafe(no_mangle)]
pub(crate) static EXIT_CODE_OFFSET: Global<u32> = Global::new(0);

/// A field of the kernel task at `task`, read at `offset` (fails, no fault, on a bad address).
#[inline(always)]
fn task_field(task: u64, offset: u32) -> Option<u32> {
    // SAFETY: the kernel-read helper copies from kernel memory and fails on a bad address.
    unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const u32) }.ok()
}

/// `mark_victim(task, uid)`: the OOM killer chose `task`'s process. It runs in the context of
/// whatever ran out of memory, so the victim is read from the task, never from the caller.
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oom_mark_victim(ctx: RawTracePointContext) -> i32 {
    const PROGRAM: programs::Program = programs::OOM_MARK_VICTIM;
    const {
        assert!(same_name(PROGRAM.name, "oom_mark_victim"));
        assert!(
            matches!(PROGRAM.role, programs::Role::Tracepoint(tp) if same_name(tp, "mark_victim"))
        );
    }
    let offset = TGID_OFFSET.load();
    if programs_are_empty() || tracing_stopped() || offset == 0 {
        return 0;
    }
    let task: u64 = ctx.arg(0);
    let Some(tgid) = task_field(task, offset) else {
        return 0;
    };
    if !is_traced(tgid) {
        return 0;
    }
    // Told as it happens (the report says it again at the end): a log call costs the verifier
    // thousands of instructions, so only programs as rare as this one make them.
    aya_log_ebpf::warn!(&ctx, "the OOM killer chose traced process {}", tgid);
    let now = now_ns();
    match ENDINGS.get_ptr_mut(tgid) {
        // SAFETY: a pointer to the map's value, valid for the program's run.
        Some(ending) if unsafe { (*ending).exit_ns } == 0 => unsafe { (*ending).oom_ns = now },
        // None yet, or one of an earlier process under the same tgid: this one's life starts.
        _ => {
            let ending = ProcessEnding {
                oom_ns: now,
                ..ProcessEnding::default()
            };
            let _ = ENDINGS.insert(tgid, ending, 0);
        }
    }
    0
}

/// `sched_process_exit(task, group_dead)`: a thread exited, in its own context (its stack is no
/// longer a live thread's); with `group_dead` it was its process's last, and
/// `task->exit_code` is the process's wait status.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit(ctx: RawTracePointContext) -> i32 {
    const PROGRAM: programs::Program = programs::PROCESS_EXIT;
    const {
        assert!(same_name(PROGRAM.name, "process_exit"));
        assert!(
            matches!(PROGRAM.role, programs::Role::Tracepoint(tp) if same_name(tp, "sched_process_exit"))
        );
    }
    if programs_are_empty() || tracing_stopped() {
        return 0;
    }
    // The exiting task is the current one.
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let task: u64 = ctx.arg(0);
    thread_exited(task, tgid, pid_tgid as u32);
    let offset = EXIT_CODE_OFFSET.load();
    let group_dead: u64 = ctx.arg(1);
    if offset == 0 || group_dead & 0xff == 0 || !is_traced(tgid) {
        return 0;
    }
    let Some(exit_code) = task_field(task, offset) else {
        return 0;
    };
    let now = now_ns();
    match ENDINGS.get_ptr_mut(tgid) {
        // SAFETY: a pointer to the map's value, valid for the program's run.
        Some(ending) if unsafe { (*ending).exit_ns } == 0 => unsafe {
            (*ending).exit_ns = now;
            (*ending).exit_code = exit_code;
        },
        _ => {
            let ending = ProcessEnding {
                exit_ns: now,
                exit_code,
                ..ProcessEnding::default()
            };
            let _ = ENDINGS.insert(tgid, ending, 0);
        }
    }
    0
}
