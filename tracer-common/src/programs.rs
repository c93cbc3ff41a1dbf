//! The eBPF object's interface, in one place: its programs (name, role, the arguments each
//! reads), its maps and its globals. The kernel side reads its arguments through [`Program`];
//! userspace attaches, places probes and opens maps by these names. A userspace test parses the
//! embedded object and checks it against these tables both ways.

/// What a program does at its probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Entry of a call that produces memory; finished by the [`Role::Return`] program.
    Allocate,
    /// Entry of a call that releases memory (free, munmap): attached first, so no allocation is
    /// seen without its free. Its probe may move past the first instructions (placement).
    Release,
    /// The shared return probe of every allocating call.
    Return,
    /// A raw tracepoint, named here, attached machine-wide at load (it needs no tracefs); its
    /// program returns at once for processes that are not traced. `sched_process_exec` stamps
    /// when a process exec'd, so userspace retires what its old image held (an exec frees it
    /// all, with no call to free).
    Tracepoint(&'static str),
    /// System calls' own tracepoints in tracefs's `syscalls` category (the events named here,
    /// e.g. `sys_exit_mmap`; the program is attached to each): runs for those calls only, so
    /// the other system calls of the machine cost nothing. Attached machine-wide at load through a perf event; where the
    /// events cannot be found or attached, [`SYSCALL_ENTER`] and [`SYSCALL_EXIT`] serve instead.
    SyscallEvent(&'static [&'static str]),
    /// Stops a launched command at its entry point, once, so its unwind tables are written
    /// before its first allocation.
    Launch,
    /// The entry of a process's teardown: CPython's `Py_FinalizeEx`, and with `--reachability`
    /// the C library's `exit()` (the same program, [`INTERPRETER_EXIT`]). The process's picture
    /// freezes there, so what it leaked is reported although teardown frees it.
    Freeze,
}

/// One program of the eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    /// The ELF symbol (and aya program name).
    pub name: &'static str,
    pub role: Role,
    /// The argument indexes (0: first argument) the program reads, in the order it uses them.
    pub arguments: &'static [usize],
}

/// malloc(size), valloc(size), C++ operator new.
pub const MALLOC_ENTER: Program = Program {
    name: "malloc_enter",
    role: Role::Allocate,
    arguments: &[0],
};
/// calloc(n, size).
pub const CALLOC_ENTER: Program = Program {
    name: "calloc_enter",
    role: Role::Allocate,
    arguments: &[0, 1],
};
/// aligned_alloc(alignment, size), memalign(alignment, size): reads the size.
pub const MEMALIGN_ENTER: Program = Program {
    name: "memalign_enter",
    role: Role::Allocate,
    arguments: &[1],
};
/// pvalloc(size).
pub const PVALLOC_ENTER: Program = Program {
    name: "pvalloc_enter",
    role: Role::Allocate,
    arguments: &[0],
};
/// realloc(ptr, size).
pub const REALLOC_ENTER: Program = Program {
    name: "realloc_enter",
    role: Role::Allocate,
    arguments: &[0, 1],
};
/// reallocarray(ptr, n, size).
pub const REALLOCARRAY_ENTER: Program = Program {
    name: "reallocarray_enter",
    role: Role::Allocate,
    arguments: &[0, 1, 2],
};
/// posix_memalign(&ptr, alignment, size): reads the out-parameter and the size.
pub const POSIX_MEMALIGN_ENTER: Program = Program {
    name: "posix_memalign_enter",
    role: Role::Allocate,
    arguments: &[0, 2],
};
/// free(ptr).
pub const FREE_ENTER: Program = Program {
    name: "free_enter",
    role: Role::Release,
    arguments: &[0],
};
/// Return of every allocating call: reads the return value only.
pub const CALL_RETURN: Program = Program {
    name: "call_return",
    role: Role::Return,
    arguments: &[],
};

/// Every exec on the machine: the time, by process (cheap, and execs are rare).
pub const PROCESS_EXEC: Program = Program {
    name: "process_exec",
    role: Role::Tracepoint(EXEC_TRACEPOINT),
    arguments: &[],
};

/// The raw tracepoint [`PROCESS_EXEC`] runs at.
pub const EXEC_TRACEPOINT: &str = "sched_process_exec";

/// The fallback of the per-call tracepoints (see [`Role::SyscallEvent`]): every system call's
/// entry on the machine, for the mapping calls of traced processes: munmap releases at its entry (before the range can be reused), mremap stamps its start.
pub const SYSCALL_ENTER: Program = Program {
    name: "syscall_enter",
    role: Role::Tracepoint(SYSCALL_ENTER_TRACEPOINT),
    arguments: &[],
};

/// The fallback of the per-call tracepoints: every system call's exit on the machine, for the
/// mapping calls of traced processes: mmap,
/// mremap, mprotect and brk record what they made once it is made; a new thread's return from
/// its clone says where its stack is.
pub const SYSCALL_EXIT: Program = Program {
    name: "syscall_exit",
    role: Role::Tracepoint(SYSCALL_EXIT_TRACEPOINT),
    arguments: &[],
};

/// The raw tracepoints of [`SYSCALL_ENTER`] and [`SYSCALL_EXIT`] (no tracefs needed).
pub const SYSCALL_ENTER_TRACEPOINT: &str = "sys_enter";
pub const SYSCALL_EXIT_TRACEPOINT: &str = "sys_exit";

/// The per-call tracepoints that replace [`SYSCALL_ENTER`] and [`SYSCALL_EXIT`] (see
/// [`Role::SyscallEvent`]): munmap and mremap at their entry, the rest at their exit. One
/// program per side, attached to each of its events (the record's `__syscall_nr` says which
/// call it is), so the verifier checks the record path once, not once per call.
pub const SYS_ENTER_MAPPING: Program = Program {
    name: "sys_enter_mapping",
    role: Role::SyscallEvent(&["sys_enter_munmap", "sys_enter_mremap"]),
    arguments: &[],
};
pub const SYS_EXIT_MAPPING: Program = Program {
    name: "sys_exit_mapping",
    role: Role::SyscallEvent(&[
        "sys_exit_mmap",
        "sys_exit_mprotect",
        "sys_exit_brk",
        "sys_exit_mremap",
        "sys_exit_clone",
        "sys_exit_clone3",
    ]),
    arguments: &[],
};

/// The tracefs category of every [`Role::SyscallEvent`].
pub const SYSCALL_EVENT_CATEGORY: &str = "syscalls";
/// Where a `sys_exit_*` event's record holds the call's return value (`ret`, after the common
/// fields and the call number). Userspace checks it in each event's `format` file and keeps
/// the raw tracepoints where it differs.
pub const SYSCALL_EXIT_RET_OFFSET: usize = 16;
/// Where every `syscalls` event's record holds the call's number (`__syscall_nr`, an `int`
/// after the common fields); checked as [`SYSCALL_EXIT_RET_OFFSET`] is.
pub const SYSCALL_NR_OFFSET: usize = 8;

/// The OOM killer chose a process (`mark_victim`, in the killer's context): the time, under the
/// victim's tgid.
pub const OOM_MARK_VICTIM: Program = Program {
    name: "oom_mark_victim",
    role: Role::Tracepoint("mark_victim"),
    arguments: &[],
};

/// A thread exited (`sched_process_exit`): its stack is no longer a live thread's; with
/// `group_dead` it was its process's last, and the exit status is kept, for targets leaktracer
/// cannot wait for (`--pid`, `--cgroup`).
pub const PROCESS_EXIT: Program = Program {
    name: "process_exit",
    role: Role::Tracepoint("sched_process_exit"),
    arguments: &[],
};

/// The launched command's stop at its entry point (see [`Role::Launch`]).
pub const LAUNCH_ENTRY: Program = Program {
    name: "launch_entry",
    role: Role::Launch,
    arguments: &[],
};

/// CPython's pymalloc, which serves objects up to 512 bytes from its own arenas (never from
/// `malloc`): `_PyObject_Malloc(ctx, size)`, `_PyObject_Calloc(ctx, n, size)`,
/// `_PyObject_Realloc(ctx, ptr, size)`, `_PyObject_Free(ctx, ptr)`. The first argument is the
/// allocator's context, so each reads the arguments after it.
pub const PYMALLOC_MALLOC_ENTER: Program = Program {
    name: "pymalloc_malloc_enter",
    role: Role::Allocate,
    arguments: &[1],
};
pub const PYMALLOC_CALLOC_ENTER: Program = Program {
    name: "pymalloc_calloc_enter",
    role: Role::Allocate,
    arguments: &[1, 2],
};
pub const PYMALLOC_REALLOC_ENTER: Program = Program {
    name: "pymalloc_realloc_enter",
    role: Role::Allocate,
    arguments: &[1, 2],
};
pub const PYMALLOC_FREE_ENTER: Program = Program {
    name: "pymalloc_free_enter",
    role: Role::Release,
    arguments: &[1],
};

/// CPython's `Py_FinalizeEx`, and with `--reachability` the C library's `exit()` too, despite
/// its name (see [`Role::Freeze`]): freezes the process's picture, and stops the process when
/// userspace has work to do there (read its code objects, scan it).
pub const INTERPRETER_EXIT: Program = Program {
    name: "interpreter_exit",
    role: Role::Freeze,
    arguments: &[],
};

/// Every program of the object.
pub const ALL: [Program; 22] = [
    MALLOC_ENTER,
    CALLOC_ENTER,
    MEMALIGN_ENTER,
    PVALLOC_ENTER,
    REALLOC_ENTER,
    REALLOCARRAY_ENTER,
    POSIX_MEMALIGN_ENTER,
    FREE_ENTER,
    CALL_RETURN,
    PROCESS_EXEC,
    SYSCALL_ENTER,
    SYSCALL_EXIT,
    LAUNCH_ENTRY,
    INTERPRETER_EXIT,
    PYMALLOC_MALLOC_ENTER,
    PYMALLOC_CALLOC_ENTER,
    PYMALLOC_REALLOC_ENTER,
    PYMALLOC_FREE_ENTER,
    OOM_MARK_VICTIM,
    PROCESS_EXIT,
    SYS_ENTER_MAPPING,
    SYS_EXIT_MAPPING,
];

/// CPython's pymalloc programs: loaded only once a process running CPython is attached.
pub const PYMALLOC: [Program; 4] = [
    PYMALLOC_MALLOC_ENTER,
    PYMALLOC_CALLOC_ENTER,
    PYMALLOC_REALLOC_ENTER,
    PYMALLOC_FREE_ENTER,
];

/// Whether `program` is loaded with the maps, before any target is known: the C allocator's
/// entries, free and the shared return (every target needs them), the raw tracepoints and
/// the mapping calls' own tracepoints (attached at load; the raw pair only as their fallback). The others (pymalloc's, the freeze, the launch stop) are loaded when a
/// target first needs them, so a C process's trace never verifies them.
pub fn loaded_up_front(program: &Program) -> bool {
    match program.role {
        Role::Allocate | Role::Release => !PYMALLOC.contains(program),
        Role::Return | Role::Tracepoint(_) | Role::SyscallEvent(_) => true,
        Role::Launch | Role::Freeze => false,
    }
}

/// The program called `name`.
pub fn by_name(name: &str) -> Option<&'static Program> {
    ALL.iter().find(|program| program.name == name)
}

/// Names of the object's maps: the names of the statics in tracer-ebpf's `maps` module (a
/// runtime's own maps: in its module under `runtimes`)
/// (aya-ebpf's `#[map]` takes only a literal name, so the statics carry these very names, which
/// the object test checks).
pub mod maps {
    pub const STOPPED: &str = "STOPPED";
    pub const RECORD_TABLE: &str = "RECORD_TABLE";
    pub const OVERFLOWED: &str = "OVERFLOWED";
    pub const ALLOCS: &str = "ALLOCS";
    pub const MMAPS: &str = "MMAPS";
    pub const STACK_STATS: &str = "STACK_STATS";
    pub const STACKS: &str = "STACKS";
    pub const STACK_SCRATCH: &str = "STACK_SCRATCH";
    pub const STACK_CACHE: &str = "STACK_CACHE";
    pub const PENDING: &str = "PENDING";
    pub const PENDING_OVERFLOW: &str = "PENDING_OVERFLOW";
    pub const COUNTERS: &str = "COUNTERS";
    pub const MMAP_STATE: &str = "MMAP_STATE";
    pub const SAMPLE_TABLE: &str = "SAMPLE_TABLE";
    pub const RECORDED_ADDRESSES: &str = "RECORDED_ADDRESSES";
    pub const UNMAP_EVENTS: &str = "UNMAP_EVENTS";
    pub const EXECS: &str = "EXECS";
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    pub const UNWIND_MAPPINGS: &str = "UNWIND_MAPPINGS";
    pub const UNWIND_PROCESSES: &str = "UNWIND_PROCESSES";
    pub const UNWIND_ENDS: &str = "UNWIND_ENDS";
    pub const STOP_AT_EXEC: &str = "STOP_AT_EXEC";
    pub const UNWIND_CACHE: &str = "UNWIND_CACHE";
    pub const FROZEN: &str = "FROZEN";
    pub const FROZEN_COUNT: &str = "FROZEN_COUNT";
    pub const RUNTIME_PROCESSES: &str = "RUNTIME_PROCESSES";
    pub const PYTHON_SCRATCH: &str = "PYTHON_SCRATCH";
    pub const PYTHON_STACKS: &str = "PYTHON_STACKS";
    pub const TRACED: &str = "TRACED";
    pub const SYSCALL_REGS: &str = "SYSCALL_REGS";
    pub const SYSCALL_STARTS: &str = "SYSCALL_STARTS";
    pub const RESERVATIONS: &str = "RESERVATIONS";
    pub const BREAKS: &str = "BREAKS";
    pub const CODE_MAPPED: &str = "CODE_MAPPED";
    pub const ENDINGS: &str = "ENDINGS";
    pub const LIVE_THREADS: &str = "LIVE_THREADS";

    /// Every map the tracer declares.
    pub const ALL: [&str; 36] = [
        STOPPED,
        RECORD_TABLE,
        OVERFLOWED,
        ALLOCS,
        MMAPS,
        STACK_STATS,
        STACKS,
        STACK_SCRATCH,
        STACK_CACHE,
        PENDING,
        PENDING_OVERFLOW,
        COUNTERS,
        MMAP_STATE,
        SAMPLE_TABLE,
        RECORDED_ADDRESSES,
        UNMAP_EVENTS,
        EXECS,
        UNWIND_ROWS,
        UNWIND_MAPPINGS,
        UNWIND_PROCESSES,
        UNWIND_ENDS,
        STOP_AT_EXEC,
        UNWIND_CACHE,
        FROZEN,
        FROZEN_COUNT,
        RUNTIME_PROCESSES,
        PYTHON_SCRATCH,
        PYTHON_STACKS,
        TRACED,
        SYSCALL_REGS,
        SYSCALL_STARTS,
        RESERVATIONS,
        BREAKS,
        CODE_MAPPED,
        ENDINGS,
        LIVE_THREADS,
    ];
}

/// Names of the object's globals, which userspace sets at load time.
pub mod globals {
    pub const FILTER_CGROUP_ID: &str = "FILTER_CGROUP_ID";
    pub const FILTER_CGROUP_LEVEL: &str = "FILTER_CGROUP_LEVEL";
    pub const RECORD_TABLE_MASK: &str = "RECORD_TABLE_MASK";
    pub const SAMPLE_BYTES: &str = "SAMPLE_BYTES";
    pub const EMPTY_PROGRAMS: &str = "EMPTY_PROGRAMS";
    pub const MAX_DEPTH: &str = "MAX_DEPTH";
    pub const FSBASE_OFFSET: &str = "FSBASE_OFFSET";
    pub const STOP_AT_EXIT: &str = "STOP_AT_EXIT";
    pub const TGID_OFFSET: &str = "TGID_OFFSET";
    pub const EXIT_CODE_OFFSET: &str = "EXIT_CODE_OFFSET";
    pub const TASK_FLAGS_OFFSET: &str = "TASK_FLAGS_OFFSET";

    /// Every global the tracer declares.
    pub const ALL: [&str; 11] = [
        FILTER_CGROUP_ID,
        FILTER_CGROUP_LEVEL,
        RECORD_TABLE_MASK,
        SAMPLE_BYTES,
        EMPTY_PROGRAMS,
        MAX_DEPTH,
        FSBASE_OFFSET,
        STOP_AT_EXIT,
        TGID_OFFSET,
        EXIT_CODE_OFFSET,
        TASK_FLAGS_OFFSET,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_one_program_returns() {
        for (i, program) in ALL.iter().enumerate() {
            assert!(ALL[..i].iter().all(|p| p.name != program.name));
            assert_eq!(by_name(program.name), Some(program));
        }
        let returns: usize = ALL.iter().filter(|p| p.role == Role::Return).count();
        assert_eq!(returns, 1);
        for (i, map) in maps::ALL.iter().enumerate() {
            assert!(!maps::ALL[..i].contains(map));
        }
    }
}
