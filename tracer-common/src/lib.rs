//! Types shared by leaktracer's eBPF programs (`tracer-ebpf`) and its userspace collector
//! (`tracer`). Every type here is `#[repr(C)]` plain data: the kernel side writes it into maps and
//! userspace reads the same bytes back, so both sides must compile exactly these definitions.
#![no_std]

pub mod ending;
pub mod programs;
pub mod python;
pub mod runtimes;
pub mod threads;
pub mod unwind;

pub use unwind::{CachedRow, CfaRule, FpRule, UnwindEnd, UnwindMapping, UnwindProcess, UnwindRow};

/// Stack id recorded when the stack could not be kept (stack map full): the bytes are still
/// counted, under a stack userspace reports as "unknown". No captured stack hashes to it.
pub const UNKNOWN_STACK: u64 = u64::MAX;

/// Frames kept per user stack (the kernel's own limit, PERF_MAX_STACK_DEPTH).
pub const MAX_STACK_DEPTH: usize = 127;

/// One user call stack, kept in the `STACKS` map under its 64-bit hash (the stack id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStack {
    /// Frames in use at the front of `ips`.
    pub depth: u64,
    /// Return addresses, innermost first: `ips[0]` is the allocator's caller.
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// Key of one outstanding allocation (heap block or direct mapping).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocKey {
    /// Process (thread group) that owns the address space.
    pub tgid: u32,
    pub _pad: u32,
    /// Address returned by the allocator (or the start of the mapping).
    pub addr: u64,
}

impl AllocKey {
    pub const fn new(tgid: u32, addr: u64) -> Self {
        Self {
            tgid,
            _pad: 0,
            addr,
        }
    }
}

/// One outstanding allocation, kept until its free so the free can be attributed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocRecord {
    /// Bytes requested by the caller.
    pub size: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the allocation returned.
    pub timestamp_ns: u64,
    /// Key in the stack map, or [`UNKNOWN_STACK`].
    pub stack_id: u64,
    /// Allocations this record stands for: 1, or with `--sample-bytes` the inverse of the
    /// probability it was sampled with (`size` is then scaled likewise).
    pub weight: u32,
    /// What the record is besides its bytes: [`threads::THREAD_STACK`] for a mapping the C
    /// library made for a thread's stack. 0 for heap blocks.
    pub flags: u32,
}

impl AllocRecord {
    pub const fn new(size: u64, timestamp_ns: u64, stack_id: u64, weight: u32) -> Self {
        Self {
            size,
            timestamp_ns,
            stack_id,
            weight,
            flags: 0,
        }
    }
}

/// Most slots of the heap record table (a power of two), the first tier of heap records;
/// records that find their probe window full go to the `ALLOCS` hash map. Userspace sizes the
/// table from `--max-allocations` up to this.
pub const RECORD_TABLE_SLOTS: u32 = 1 << 18;

/// How `--max-allocations` heap records are split: (record table slots, a power of two; entries
/// of the overflow hash map), together exactly `max_allocations` (at least 2).
pub fn split_record_capacity(max_allocations: u32) -> (u32, u32) {
    let total = max_allocations.max(2);
    // The largest power of two up to the total (capped), halved when it would leave the
    // overflow map no entry (a hash map needs one).
    let table = (1u32 << (31 - total.leading_zeros())).min(RECORD_TABLE_SLOTS);
    let table = if table == total { table / 2 } else { table };
    (table, total - table)
}

/// Slots a record may occupy from its home slot on (linear probing).
pub const RECORD_PROBES: u32 = 8;

/// [`RecordSlot::key`] of a slot never used.
pub const SLOT_EMPTY: u64 = 0;
/// [`RecordSlot::key`] of a slot whose record was freed (reusable; lookups go on past it).
pub const SLOT_FREED: u64 = 1;
/// [`RecordSlot::key`] while a record is being written into the slot.
pub const SLOT_BUSY: u64 = 2;
/// Keys of live records are fingerprints from here up.
pub const FIRST_RECORD_KEY: u64 = 3;

/// One slot of the heap record table: an outstanding heap block, published by writing `key`
/// (a 64-bit fingerprint of tgid and address) last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordSlot {
    /// [`SLOT_EMPTY`], [`SLOT_FREED`], [`SLOT_BUSY`], or the record's fingerprint.
    pub key: u64,
    pub tgid: u32,
    /// See [`AllocRecord::weight`].
    pub weight: u32,
    pub addr: u64,
    pub size: u64,
    pub timestamp_ns: u64,
    pub stack_id: u64,
}

/// Key of the kernel-side aggregation: one user call stack of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub tgid: u32,
    pub _pad: u32,
    pub stack_id: u64,
}

impl StackKey {
    pub const fn new(tgid: u32, stack_id: u64) -> Self {
        Self {
            tgid,
            _pad: 0,
            stack_id,
        }
    }
}

/// Per-stack totals, added to by the kernel on every allocation. (What is still outstanding is
/// summed by userspace from the per-allocation records, so frees touch no aggregate.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Every allocation ever recorded from this stack.
    pub total_allocations: u64,
    /// Every byte ever recorded from this stack.
    pub total_bytes: u64,
}

/// Slots of the per-CPU stack cache (see [`CachedStack`]).
pub const STACK_CACHE_SLOTS: usize = 64;

/// A slot of the per-CPU stack cache: a stack allocated from lately on this CPU and the totals
/// added since it took the slot (written back to the per-stack map when another stack takes
/// it). `tgid` 0: empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedStack {
    pub tgid: u32,
    pub _pad: u32,
    pub stack_id: u64,
    pub allocations: u64,
    pub bytes: u64,
}

impl CachedStack {
    /// A slot just taken by (tgid, stack_id), with nothing added yet.
    pub const fn new(tgid: u32, stack_id: u64) -> Self {
        Self {
            tgid,
            _pad: 0,
            stack_id,
            allocations: 0,
            bytes: 0,
        }
    }
}

/// Which allocator entry point a pending call came from; decides how its return is handled.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// malloc, calloc, aligned_alloc, memalign, valloc, pvalloc: the return value is the block.
    Alloc = 1,
    /// realloc, reallocarray: `arg` holds the old pointer.
    Realloc = 2,
    /// posix_memalign: `arg` holds the out-parameter; the block is read through it on success.
    PosixMemalign = 3,
}

/// An allocator call between its entry and its return, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingCall {
    /// A [`CallKind`] as u32; 0 while the thread has no call pending.
    pub kind: u32,
    /// Thread the call belongs to (pending-call slots are shared by thread ids modulo their
    /// number).
    pub tid: u32,
    /// User stack pointer at entry: the matching return has `sp + 8`, and a call made while this
    /// one runs (deeper on the stack) is nested inside it.
    pub sp: u64,
    /// Bytes requested.
    pub size: u64,
    /// Kind-specific argument (see [`CallKind`]).
    pub arg: u64,
    /// `bpf_ktime_get_ns()` at entry, for the calls that release an earlier block (realloc): a
    /// record made after it belongs to another thread's newer allocation. 0 for the
    /// others (the clock read is not free).
    pub entry_ns: u64,
    /// `bpf_jiffies64()` at entry, to tell a stale entry (its return never seen) from a live one.
    pub entry_jiffies: u64,
}

/// A process's most recent PROT_NONE reservations (address space, no memory yet): an mprotect
/// that opens part of one makes memory from then on (thread stacks, Go-style arenas). Kept per
/// process as a ring of the last [`RESERVATION_SLOTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reservations {
    pub starts: [u64; RESERVATION_SLOTS],
    pub ends: [u64; RESERVATION_SLOTS],
    /// Slot the next reservation takes.
    pub next: u64,
    /// Bit `i` set: slot `i` was mapped with `MAP_STACK` (a thread's stack, as glibc's
    /// `allocate_stack` reserves it), so what an mprotect opens in it is a thread stack.
    pub stacks: u64,
}

/// Reservations remembered per process.
pub const RESERVATION_SLOTS: usize = 8;

/// A munmap range the kernel could not resolve by exact start address; userspace settles it
/// against the recorded mappings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapEvent {
    pub tgid: u32,
    pub _pad: u32,
    pub start: u64,
    pub end: u64,
    /// When the range was unmapped (CLOCK_MONOTONIC ns). Userspace reads the ring later: a
    /// mapping recorded after this time reuses the addresses and is not the one unmapped.
    pub at_ns: u64,
}

impl UnmapEvent {
    pub const fn new(tgid: u32, start: u64, end: u64, at_ns: u64) -> Self {
        Self {
            tgid,
            _pad: 0,
            start,
            end,
            at_ns,
        }
    }
}

/// Indexes of the per-CPU counter array. Userspace sums them over CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Allocations recorded (heap and mmap).
    Allocations = 0,
    /// Frees (and unmaps) that released a recorded allocation.
    Frees = 1,
    /// Frees of pointers never recorded (allocated before attach): ignored.
    UnknownFrees = 2,
    /// Allocations not recorded because the allocation map was full.
    AllocMapFull = 3,
    /// Allocations recorded without a stack (stack map full).
    StackFailed = 4,
    /// Calls not tracked because the pending-call map was full.
    PendingMapFull = 5,
    /// Allocations not aggregated because the per-stack map was full.
    StatsMapFull = 6,
    /// Allocator calls made from inside another allocator call: counted once, by the outer call.
    NestedCalls = 7,
    /// mmap/munmap/mremap/mprotect/brk calls made by the allocator itself: their bytes belong to
    /// the malloc.
    AllocatorMmaps = 8,
    /// Unresolved munmap ranges that could not be sent to userspace (ring buffer full).
    UnmapEventsLost = 9,
    /// Pending calls whose return was never seen (replaced as stale).
    StaleCalls = 10,
    /// Allocations not recorded by `--sample-bytes` sampling (the sampled ones stand for them).
    Unsampled = 11,
    /// PROT_NONE mmaps: address space reserved, not memory. An mprotect that opens part of one
    /// later (thread stacks, Go-style arenas) is recorded from then on.
    Reservations = 12,
    /// File mappings left out: the mapping system calls see them too (libraries the loader
    /// maps, data files), and they are page cache the kernel can reclaim, not memory the
    /// process holds. Anonymous mappings (private or shared) are recorded.
    FileMappings = 13,
    /// Executable mappings announced to userspace (to re-read the process's maps) that did not
    /// fit in the ring: the next periodic check catches them.
    CodeEventsLost = 14,
}

/// What a [`Counter`] tells about the report's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// Events behind the figures (allocations, frees).
    Counted,
    /// Events lost: the figures miss them (`totals.dropped_by_cause`).
    Dropped,
    /// Events left out on purpose: the figures are right without them (`totals.ignored`).
    Ignored,
}

impl Counter {
    /// Every counter, in slot order (`Counter::ALL[i] as u32 == i`).
    pub const ALL: [Counter; 15] = [
        Counter::Allocations,
        Counter::Frees,
        Counter::UnknownFrees,
        Counter::AllocMapFull,
        Counter::StackFailed,
        Counter::PendingMapFull,
        Counter::StatsMapFull,
        Counter::NestedCalls,
        Counter::AllocatorMmaps,
        Counter::UnmapEventsLost,
        Counter::StaleCalls,
        Counter::Unsampled,
        Counter::Reservations,
        Counter::FileMappings,
        Counter::CodeEventsLost,
    ];

    /// What to tell the user the first time this loss happens (a warning, printed by
    /// userspace at the poll that sees the counter move); `None` for the other counters.
    pub const fn loss_message(self) -> Option<&'static str> {
        match self {
            Counter::AllocMapFull => {
                Some("allocation map full: allocations are being dropped (raise --max-allocations)")
            }
            Counter::StackFailed => {
                Some("stack map full: allocations kept without a stack (raise --max-stacks)")
            }
            Counter::PendingMapFull => {
                Some("pending-call map full: allocator calls are not being tracked")
            }
            Counter::StatsMapFull => Some(
                "per-stack totals map full: some stacks' allocation totals are incomplete (raise --max-stacks)",
            ),
            Counter::UnmapEventsLost => {
                Some("munmap event ring full: some partial unmaps are not settled")
            }
            Counter::CodeEventsLost => {
                Some("new-code ring full: a new library may be symbolized late")
            }
            _ => None,
        }
    }

    /// The name reported in text and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Allocations => "allocations",
            Counter::Frees => "frees",
            Counter::UnknownFrees => "unknown_frees",
            Counter::AllocMapFull => "alloc_map_full",
            Counter::StackFailed => "stack_failed",
            Counter::PendingMapFull => "pending_map_full",
            Counter::StatsMapFull => "stats_map_full",
            Counter::NestedCalls => "nested_calls",
            Counter::AllocatorMmaps => "allocator_mmaps",
            Counter::UnmapEventsLost => "unmap_events_lost",
            Counter::StaleCalls => "stale_calls",
            Counter::Unsampled => "unsampled",
            Counter::Reservations => "reserved_mappings",
            Counter::FileMappings => "file_mappings",
            Counter::CodeEventsLost => "code_events_lost",
        }
    }

    pub const fn kind(self) -> CounterKind {
        match self {
            Counter::Allocations | Counter::Frees => CounterKind::Counted,
            Counter::AllocMapFull
            | Counter::StackFailed
            | Counter::PendingMapFull
            | Counter::StatsMapFull
            | Counter::UnmapEventsLost => CounterKind::Dropped,
            Counter::UnknownFrees
            | Counter::NestedCalls
            | Counter::AllocatorMmaps
            | Counter::StaleCalls
            | Counter::Unsampled
            | Counter::Reservations
            | Counter::FileMappings
            | Counter::CodeEventsLost => CounterKind::Ignored,
        }
    }
}

/// Number of [`Counter`] slots.
pub const COUNTER_SLOTS: u32 = Counter::ALL.len() as u32;

/// Entries of the sampling table: the probability of sampling an allocation of size s is looked
/// up at `s * SAMPLE_TABLE_SLOTS / sample_bytes`.
pub const SAMPLE_TABLE_SLOTS: u32 = 1024;

/// Slot in the `MMAP_STATE` array counting the direct mappings the kernel recorded less those
/// it released (written by the kernel only, with atomic adds).
pub const LIVE_MAPPINGS_SLOT: u32 = 0;
/// Slot in the `MMAP_STATE` array counting the mapping records userspace added less those it
/// removed while settling munmaps (written by userspace only, so no update is lost to a race).
/// The live count is the wrapping sum of both slots.
pub const USER_MAPPINGS_SLOT: u32 = 1;
/// Slots of `MMAP_STATE`.
pub const MMAP_STATE_SLOTS: u32 = 2;

/// A pending call older than this many jiffies is stale: its return was never seen (longjmp, a
/// uretprobe the kernel could not install) and it must not swallow later calls as "nested".
/// 1 s at HZ=1000, 4 s at 250, 10 s at 100: far beyond any allocator call.
pub const STALE_CALL_JIFFIES: u64 = 1000;

/// Pending-call slots, indexed by thread id modulo this: at least the usual `pid_max` (32768),
/// so threads rarely share a slot; a thread whose slot is busy with another thread's call
/// uses the overflow map.
pub const PENDING_SLOTS: u32 = 65536;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)] plain-old-data with explicit padding fields.
    unsafe impl aya::Pod for AllocKey {}
    unsafe impl aya::Pod for AllocRecord {}
    unsafe impl aya::Pod for StackKey {}
    unsafe impl aya::Pod for StackStats {}
    unsafe impl aya::Pod for UnmapEvent {}
    unsafe impl aya::Pod for UserStack {}
    unsafe impl aya::Pod for CachedStack {}
    unsafe impl aya::Pod for RecordSlot {}
    unsafe impl aya::Pod for UnwindRow {}
    unsafe impl aya::Pod for UnwindMapping {}
    unsafe impl aya::Pod for UnwindProcess {}
    unsafe impl aya::Pod for CachedRow {}
    unsafe impl aya::Pod for python::PythonProcess {}
    unsafe impl aya::Pod for python::NewPythonStack {}
    unsafe impl aya::Pod for runtimes::RuntimeProcess {}
    unsafe impl aya::Pod for threads::ThreadStart {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_capacity_is_split_exactly() {
        assert_eq!(
            split_record_capacity(1 << 20),
            (RECORD_TABLE_SLOTS, (1 << 20) - RECORD_TABLE_SLOTS)
        );
        assert_eq!(split_record_capacity(50), (32, 18));
        assert_eq!(split_record_capacity(64), (32, 32));
        assert_eq!(split_record_capacity(0), (1, 1));
    }

    #[test]
    fn counters_are_listed_in_slot_order_with_distinct_names() {
        for (slot, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, slot);
            assert!(
                Counter::ALL[..slot]
                    .iter()
                    .all(|c| c.name() != counter.name())
            );
        }
    }
}
