//! The task a program runs for: whether it is traced, its ids, the clock.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_ancestor_cgroup_id};

use crate::maps::{FILTER_CGROUP_ID, FILTER_CGROUP_LEVEL, FROZEN, FROZEN_COUNT, STOPPED};

/// The calling process's tgid while tracing goes on and, with a cgroup filter, the process is
/// inside that cgroup. (Probes are attached per process, so the caller is always a target.)
#[inline(always)]
pub(crate) fn traced_tgid() -> Option<u32> {
    if tracing_stopped() {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_frozen(tgid) {
        return None;
    }
    let cgroup = FILTER_CGROUP_ID.load();
    if cgroup != 0 {
        // SAFETY: a helper taking a plain integer (the ancestor level); it reads no memory of
        // ours.
        let ancestor =
            unsafe { bpf_get_current_ancestor_cgroup_id(FILTER_CGROUP_LEVEL.load() as i32) };
        if ancestor != cgroup {
            return None;
        }
    }
    Some(tgid)
}

/// True once `tgid`'s interpreter began its teardown (see `probes::interpreter`).
#[inline(always)]
pub(crate) fn is_frozen(tgid: u32) -> bool {
    if FROZEN_COUNT.get(0).is_none_or(|count| *count == 0) {
        return false;
    }
    // SAFETY: only presence is checked.
    unsafe { FROZEN.get(tgid) }.is_some()
}

/// True once userspace froze the picture (the end of the trace).
#[inline(always)]
pub(crate) fn tracing_stopped() -> bool {
    STOPPED.get(0).is_none_or(|stopped| *stopped != 0)
}

#[inline(always)]
pub(crate) fn thread_id() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
pub(crate) fn jiffies() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { aya_ebpf::helpers::generated::bpf_jiffies64() }
}

/// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, the clock of record timestamps.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}
