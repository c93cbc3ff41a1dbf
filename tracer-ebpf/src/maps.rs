//! The object's maps and globals. Their names are the ones `tracer_common::programs::maps` and
//! `tracer_common::programs::globals` list (aya-ebpf's `#[map]` takes only a literal name, so the
//! statics carry the names; userspace's object test checks both lists against the object).
//! Those of one part live with it: the runtimes' (`runtimes`), the architecture's (`arch`), the
//! thread probes' (`probes::threads`).

use aya_ebpf::{
    Global,
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, pt_regs},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    AllocKey, AllocRecord, COUNTER_SLOTS, CachedRow, CachedStack, MMAP_STATE_SLOTS, PENDING_SLOTS,
    PendingCall, RECORD_TABLE_SLOTS, RecordSlot, Reservations, SAMPLE_TABLE_SLOTS,
    STACK_CACHE_SLOTS, StackKey, StackStats, UnwindMapping, UnwindProcess, UnwindRow, UserStack,
    threads::{LIVE_THREAD_SLOTS, ThreadStart},
    unwind::{
        DEFAULT_MAX_DEPTH, DEFAULT_UNWIND_ROWS, UNWIND_CACHE_SLOTS, UNWIND_END_SLOTS,
        UNWIND_MAPPING_SLOTS,
    },
};

/// Processes that exec'd while tracing: tgid -> `bpf_ktime_get_ns()` of the exec. LRU: the
/// tracepoint sees every exec on the machine; userspace reads its targets' entries every poll.
#[map]
pub(crate) static EXECS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// What a map insert with `BPF_NOEXIST` fails with when the key is there already (-EEXIST).
pub(crate) const EEXIST: i32 = 17;

// Sizes are defaults; userspace sets them from flags at load time.

/// Slot 0: non-zero once userspace froze the picture (end of the trace): every program returns
/// at once. Probes are attached per process, so a program only ever runs in a target; an array
/// slot is the cheapest check there is (no hashing).
#[map]
pub(crate) static STOPPED: Array<u32> = Array::with_max_entries(1, 0);

/// Outstanding heap blocks, first tier: an open-addressing table in an array (see `records`).
/// Its operations are plain memory accesses (no hashing by the kernel, no allocation, no bucket
/// lock): slots are claimed and released with compare-and-exchange. A record whose probe window
/// is full goes to `ALLOCS`.
#[map]
pub(crate) static RECORD_TABLE: Array<RecordSlot> =
    Array::with_max_entries(RECORD_TABLE_SLOTS, BPF_F_MMAPABLE);

/// Slot 0: heap records living in `ALLOCS` (the table's overflow); a free looks there only while
/// there are some.
#[map]
pub(crate) static OVERFLOWED: Array<u64> = Array::with_max_entries(1, 0);

/// Outstanding heap blocks, second tier (see `RECORD_TABLE`): (tgid, address) -> size, stack,
/// time.
#[map]
pub(crate) static ALLOCS: HashMap<AllocKey, AllocRecord> =
    HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Outstanding direct mappings: (tgid, start) -> size, stack, time.
#[map]
pub(crate) static MMAPS: HashMap<AllocKey, AllocRecord> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Totals per (tgid, stack), added to on allocations only (through the per-CPU stack cache).
/// What is outstanding is the set of records (`RECORD_TABLE`, `ALLOCS`, `MMAPS`), which
/// userspace sums: a free is then a single record operation.
#[map]
pub(crate) static STACK_STATS: HashMap<StackKey, StackStats> = HashMap::with_max_entries(65536, 0);

/// User call stacks of allocation sites, by 64-bit hash of their frames.
#[map]
pub(crate) static STACKS: HashMap<u64, UserStack> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Per-CPU scratch space for the stack being captured (too big for the 512-byte BPF stack).
#[map]
pub(crate) static STACK_SCRATCH: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, the stacks allocated from lately (slot `stack id % STACK_CACHE_SLOTS`) with the
/// totals added since they took the slot. A hit means the stack is already in `STACKS` (never
/// removed from) and its totals grow in place: an allocation from a known site costs no map
/// operation but its record. A stack taking the slot writes the previous one's totals back to
/// `STACK_STATS`; userspace adds what is still cached.
#[map]
pub(crate) static STACK_CACHE: PerCpuArray<[CachedStack; STACK_CACHE_SLOTS]> =
    PerCpuArray::with_max_entries(1, 0);

/// Allocator calls between entry and return: slot `tid % PENDING_SLOTS`, tagged with the
/// thread id, rewritten in place (`kind` 0 when idle). An array slot costs no hashing, and no
/// insert or delete happens on the hot path.
#[map]
pub(crate) static PENDING: Array<PendingCall> = Array::with_max_entries(PENDING_SLOTS, 0);

/// Pending calls of threads whose slot is busy with another thread's call, by thread id. LRU,
/// so entries of exited threads make room for new ones.
#[map]
pub(crate) static PENDING_OVERFLOW: LruHashMap<u32, PendingCall> =
    LruHashMap::with_max_entries(4096, 0);

/// Event and loss counters, see `tracer_common::Counter`.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Recorded direct mappings, so munmaps are only sent to userspace when there is something to
/// release: slot `LIVE_MAPPINGS_SLOT` counts the kernel's records, `USER_MAPPINGS_SLOT` the
/// pieces userspace made by splitting a mapping (each slot has one writer; see
/// [`crate::records::has_live_mappings`]).
#[map]
pub(crate) static MMAP_STATE: Array<u64> = Array::with_max_entries(MMAP_STATE_SLOTS, 0);

/// With `--sample-bytes`: slot k holds 2^32 x (1 - exp(-(k + 0.5) / SAMPLE_TABLE_SLOTS)), the
/// probability (scaled to u32) of sampling an allocation of k / SAMPLE_TABLE_SLOTS of the
/// sampling period. Filled by userspace.
#[map]
pub(crate) static SAMPLE_TABLE: Array<u32> = Array::with_max_entries(SAMPLE_TABLE_SLOTS, 0);

/// With `--sample-bytes`: how many heap records exist per address hash (slot
/// `hash(tgid, address) % ADDRESS_FILTER_SLOTS`). Most frees are of unsampled blocks; a zero
/// slot proves there is no record without a hash-map lookup.
#[map]
pub(crate) static RECORDED_ADDRESSES: Array<u32> = Array::with_max_entries(ADDRESS_FILTER_SLOTS, 0);

/// Slots of [`RECORDED_ADDRESSES`] (a power of two).
pub(crate) const ADDRESS_FILTER_SLOTS: u32 = 1 << 18;

/// munmap ranges the kernel could not settle by exact start address.
#[map]
pub(crate) static UNMAP_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// With `--cgroup`: the cgroup v2 id (directory inode) whose processes are traced, and its level
/// in the hierarchy, so processes in descendant cgroups match through their ancestor at that
/// level. 0: no cgroup filter. Set by userspace at load time.
#[unsafe(no_mangle)]
pub(crate) static FILTER_CGROUP_ID: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static FILTER_CGROUP_LEVEL: Global<u32> = Global::new(0);

/// Slots of `RECORD_TABLE` minus one (a power of two minus one), set by userspace with the
/// table's size.
#[unsafe(no_mangle)]
pub(crate) static RECORD_TABLE_MASK: Global<u32> = Global::new(RECORD_TABLE_SLOTS - 1);

/// `--sample-bytes`: sample on average one allocation per this many bytes (0: record all).
#[unsafe(no_mangle)]
pub(crate) static SAMPLE_BYTES: Global<u64> = Global::new(0);

/// Unwind rows of every object a traced process maps, each object's run sorted by address
/// (see `tracer_common::unwind`). Mmapable: userspace writes tables in place, not row by row.
#[map]
pub(crate) static UNWIND_ROWS: Array<UnwindRow> =
    Array::with_max_entries(DEFAULT_UNWIND_ROWS, BPF_F_MMAPABLE);

/// Executable mappings of every traced process, each process's run sorted by start.
#[map]
pub(crate) static UNWIND_MAPPINGS: Array<UnwindMapping> =
    Array::with_max_entries(UNWIND_MAPPING_SLOTS, BPF_F_MMAPABLE);

/// tgid -> where its mappings are in `UNWIND_MAPPINGS`. A process without an entry is walked
/// by frame pointers; an exec removes the entry (its layout is gone).
#[map]
pub(crate) static UNWIND_PROCESSES: HashMap<u32, UnwindProcess> =
    HashMap::with_max_entries(4096, 0);

/// Per CPU: rows found lately, by a hash of the address (see `tracer_common::CachedRow`).
#[map]
pub(crate) static UNWIND_CACHE: PerCpuArray<CachedRow> =
    PerCpuArray::with_max_entries(UNWIND_CACHE_SLOTS, 0);

/// Per CPU: stacks by how they ended (`tracer_common::UnwindEnd`), and frames walked.
#[map]
pub(crate) static UNWIND_ENDS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(UNWIND_END_SLOTS, 0);

/// Processes that stop (SIGSTOP) when they exec: the launched command, whose parent (the tracer)
/// then writes the new image's unwind tables before that image runs its own code. tgid -> 1.
#[map]
pub(crate) static STOP_AT_EXEC: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// Processes whose picture froze when their interpreter began tearing down (tgid -> the time):
/// their programs record and release nothing from then on.
#[map]
pub(crate) static FROZEN: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// Slot 0: how many processes froze. While 0, no program looks into `FROZEN` (one array read
/// instead of a hash lookup per event).
#[map]
pub(crate) static FROZEN_COUNT: Array<u32> = Array::with_max_entries(1, 0);

/// `--max-depth`: frames kept per stack (at most `MAX_STACK_DEPTH`).
#[unsafe(no_mangle)]
pub(crate) static MAX_DEPTH: Global<u32> = Global::new(DEFAULT_MAX_DEPTH);

/// For benchmarks (`--empty-programs`): every program returns at once, so a run measures the
/// bare cost of the probes at their places.
#[unsafe(no_mangle)]
pub(crate) static EMPTY_PROGRAMS: Global<u8> = Global::new(0);

/// `--reachability`: a process frozen at `exit()` is stopped there too (SIGSTOP), so its
/// memory is scanned before its teardown runs.
#[unsafe(no_mangle)]
pub(crate) static STOP_AT_EXIT: Global<u8> = Global::new(0);

/// Traced processes (tgid -> 1), written by userspace as it attaches to each: the syscall
/// tracepoints run for every process on the machine, and only these count.
#[map]
pub(crate) static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// `tgid` is one of the processes userspace attached to (in `TRACED`).
#[inline(always)]
pub(crate) fn is_traced(tgid: u32) -> bool {
    // SAFETY: only presence is checked.
    unsafe { TRACED.get(tgid) }.is_some()
}

/// Per CPU, a copy of the calling thread's user registers at a system call (the tracepoint
/// hands a kernel pointer; a copy is what the stack walk and the nesting test read).
#[map]
pub(crate) static SYSCALL_REGS: PerCpuArray<pt_regs> = PerCpuArray::with_max_entries(1, 0);

/// Thread id -> `bpf_ktime_get_ns()` at the entry of its running mremap: a record of the old
/// address made later belongs to another thread's newer mapping.
#[map]
pub(crate) static SYSCALL_STARTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// tgid -> its latest PROT_NONE reservations (see `tracer_common::Reservations`).
#[map]
pub(crate) static RESERVATIONS: LruHashMap<u32, Reservations> =
    LruHashMap::with_max_entries(4096, 0);

/// tgid -> its program break as last seen at a brk (growth outside the allocator is recorded
/// as a mapping at the old break).
#[map]
pub(crate) static BREAKS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// Thread id -> where a thread of a traced process started during the trace has its stack
/// (see `tracer_common::threads::ThreadStart`): added as it starts, removed as it exits.
/// Userspace reads it to tell live threads' stacks from those a C library keeps for reuse.
#[map]
pub(crate) static LIVE_THREADS: HashMap<u32, ThreadStart> =
    HashMap::with_max_entries(LIVE_THREAD_SLOTS, 0);

/// tgids that mapped new code (a library, a JIT's pages): userspace re-reads their maps and
/// unwind tables then, instead of polling every process.
#[map]
pub(crate) static CODE_MAPPED: RingBuf = RingBuf::with_byte_size(16 * 1024, 0);
