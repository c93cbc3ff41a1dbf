//! Threads and their stacks. A thread's stack is a mapping like any other to the kernel, but
//! it costs what the thread touched (a few pages), not what it reserves (8 MiB by default), and
//! it lives as long as the thread: the kernel side marks the mappings made for thread stacks
//! and keeps, per live thread started during the trace, where its stack is.

/// [`crate::AllocRecord::flags`] bit: a mapping made for a thread's stack (`MAP_STACK`, or an
/// mprotect opening part of a `MAP_STACK` reservation, as glibc's `allocate_stack` does).
pub const THREAD_STACK: u32 = 1;

/// A thread started while its process was traced, under its thread id in the `LIVE_THREADS`
/// map from its first return to user space (the `clone` that made it) until it exits. A thread
/// killed with its whole process (exit_group, a fatal signal, an exec) keeps its entry: it
/// was alive when the process ended, and the process's picture is the one at its death.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStart {
    /// Its process.
    pub tgid: u32,
    pub _pad: u32,
    /// Its user stack pointer as it started: the top of the stack it was given, inside the
    /// mapping that is its stack.
    pub sp: u64,
    /// `bpf_ktime_get_ns()` when it started.
    pub started_ns: u64,
}

/// Threads `LIVE_THREADS` holds at most: beyond it a new thread is not followed (its stack
/// reads as one of an exited thread).
pub const LIVE_THREAD_SLOTS: u32 = 16384;

/// `task_struct.flags` bit set on a thread that dies of a signal, including one killed because
/// another thread of its process called `exit_group` or `execve` (include/linux/sched.h).
pub const PF_SIGNALED: u32 = 0x0000_0400;
