//! leaktracer's kernel side: uprobes on the allocator's entry points and uretprobes on their
//! returns. Every allocation still outstanding is kept in a per-address record, and a per-stack
//! aggregate (outstanding bytes and count) is updated on every allocation and free, so userspace
//! reads maps rather than one event per call.
//!
//! Call protocol: an entry program stores a [`PendingCall`] for the thread; the shared return
//! program (`call_return`) finishes it. A call entered while another allocator call of the same
//! thread is running (deeper on the stack) is nested: the outer call already accounts for it.
#![no_std]
#![no_main]
// BPF has atomic add but no compare-and-swap on the default CPU, so core gives no AtomicU64:
// the intrinsic emits the `lock xadd` directly (the crate builds with RUSTC_BOOTSTRAP=1 anyway).
#![allow(internal_features)]
#![feature(core_intrinsics, adt_const_params)]

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_ANY, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_prandom_u32, bpf_jiffies64},
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    AllocKey, AllocRecord, COUNTER_SLOTS, CachedStack, CallKind, Counter, FIRST_RECORD_KEY,
    LIVE_MAPPINGS_SLOT, MAX_STACK_DEPTH, PENDING_SLOTS, PendingCall, RECORD_PROBES,
    RECORD_TABLE_SLOTS, RecordSlot, SAMPLE_TABLE_SLOTS, SLOT_BUSY, SLOT_EMPTY, SLOT_FREED,
    STACK_CACHE_SLOTS, STALE_CALL_JIFFIES, StackKey, StackStats, UNKNOWN_STACK, UnmapEvent,
    UserStack,
};

const EEXIST: i32 = 17;
const PAGE_SIZE: u64 = 4096;
const MAP_FAILED: u64 = u64::MAX;
/// Recorded mappings a single munmap may release in the kernel before handing the rest to
/// userspace.
const MAX_UNMAP_STEPS: u32 = 16;

// Sizes are defaults; userspace sets them from flags at load time.

/// Slot 0: non-zero once userspace froze the picture (end of the trace): every program returns
/// at once. Probes are attached per process, so a program only ever runs in a target; an array
/// slot is the cheapest check there is (no hashing).
#[map]
static STOPPED: Array<u32> = Array::with_max_entries(1, 0);

/// Outstanding heap blocks, first tier: an open-addressing table in an array. Its operations
/// are plain memory accesses (no hashing by the kernel, no allocation, no bucket lock): slots
/// are claimed and released with compare-and-exchange. A record whose probe window is full
/// goes to `ALLOCS`.
#[map]
static RECORD_TABLE: Array<RecordSlot> =
    Array::with_max_entries(RECORD_TABLE_SLOTS, BPF_F_MMAPABLE);

/// Slot 0: heap records living in `ALLOCS` (the table's overflow); a free looks there only while
/// there are some.
#[map]
static OVERFLOWED: Array<u64> = Array::with_max_entries(1, 0);

/// Outstanding heap blocks, second tier (see `RECORD_TABLE`): (tgid, address) -> size, stack,
/// time.
#[map]
static ALLOCS: HashMap<AllocKey, AllocRecord> =
    HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Outstanding direct mappings: (tgid, start) -> size, stack, time.
#[map]
static MMAPS: HashMap<AllocKey, AllocRecord> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Totals per (tgid, stack), added to on every allocation. What is outstanding is the set of
/// records in `ALLOCS` and `MMAPS`, which userspace reads in batches: a free is then a single
/// map operation.
#[map]
static STACK_STATS: HashMap<StackKey, StackStats> = HashMap::with_max_entries(65536, 0);

/// User call stacks of allocation sites, by 64-bit hash of their frames.
#[map]
static STACKS: HashMap<u64, UserStack> = HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Per-CPU scratch space for the stack being captured (too big for the 512-byte BPF stack).
#[map]
static STACK_SCRATCH: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, the stacks allocated from lately (slot `stack id % STACK_CACHE_SLOTS`) with the
/// totals added since they took the slot. A hit means the stack is already in `STACKS` (never
/// removed from) and its totals grow in place: an allocation from a known site costs no map
/// operation but its record. A stack taking the slot writes the previous one's totals back to
/// `STACK_STATS`; userspace adds what is still cached.
#[map]
static STACK_CACHE: PerCpuArray<[CachedStack; STACK_CACHE_SLOTS]> =
    PerCpuArray::with_max_entries(1, 0);

/// Allocator calls between entry and return: slot `tid % PENDING_SLOTS`, tagged with the
/// thread id, rewritten in place (`kind` 0 when idle). An array slot costs no hashing, and no
/// insert or delete happens on the hot path.
#[map]
static PENDING: Array<PendingCall> = Array::with_max_entries(PENDING_SLOTS, 0);

/// Pending calls of threads whose slot is busy with another thread's call, by thread id. LRU,
/// so entries of exited threads make room for new ones.
#[map]
static PENDING_OVERFLOW: LruHashMap<u32, PendingCall> = LruHashMap::with_max_entries(4096, 0);

/// Event and loss counters, see [`Counter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Slot [`LIVE_MAPPINGS_SLOT`]: recorded direct mappings, so munmaps are only sent to userspace
/// when there is something to release.
#[map]
static MMAP_STATE: Array<u64> = Array::with_max_entries(1, 0);

/// With `--sample-bytes`: slot k holds 2^32 x (1 - exp(-(k + 0.5) / SAMPLE_TABLE_SLOTS)), the
/// probability (scaled to u32) of sampling an allocation of k / SAMPLE_TABLE_SLOTS of the
/// sampling period. Filled by userspace.
#[map]
static SAMPLE_TABLE: Array<u32> = Array::with_max_entries(SAMPLE_TABLE_SLOTS, 0);

/// With `--sample-bytes`: how many heap records exist per address hash (slot
/// `hash(tgid, address) % ADDRESS_FILTER_SLOTS`). Most frees are of unsampled blocks; a zero
/// slot proves there is no record without a hash-map lookup.
#[map]
static RECORDED_ADDRESSES: Array<u32> = Array::with_max_entries(ADDRESS_FILTER_SLOTS, 0);

/// Slots of [`RECORDED_ADDRESSES`] (a power of two).
const ADDRESS_FILTER_SLOTS: u32 = 1 << 18;

/// munmap ranges the kernel could not settle by exact start address.
#[map]
static UNMAP_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Adds one to a counter; returns this CPU's new count (1 on the first event here).
#[inline(always)]
fn count(counter: Counter) -> u64 {
    match COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}

/// Counts a loss and, the first time on this CPU, tells the user live (through aya-log) what
/// to do about it. Later losses are only counted: the report has the totals.
macro_rules! count_loss {
    ($ctx:expr, $counter:expr, $message:literal) => {
        if count($counter) == 1 {
            aya_log_ebpf::warn!($ctx, $message);
        }
    };
}

/// Atomic add on a map value shared by all CPUs (compiles to BPF's `lock xadd`).
#[inline(always)]
fn atomic_add(target: *mut u64, delta: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, delta) };
}

/// With `--cgroup`: the cgroup v2 id (directory inode) whose processes are traced, and its level
/// in the hierarchy, so processes in descendant cgroups match through their ancestor at that
/// level. 0: no cgroup filter. Set by userspace at load time.
#[unsafe(no_mangle)]
static FILTER_CGROUP_ID: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static FILTER_CGROUP_LEVEL: Global<u32> = Global::new(0);

/// Slots of `RECORD_TABLE` minus one (a power of two minus one), set by userspace with the
/// table's size.
#[unsafe(no_mangle)]
static RECORD_TABLE_MASK: Global<u32> = Global::new(RECORD_TABLE_SLOTS - 1);

/// `--sample-bytes`: sample on average one allocation per this many bytes (0: record all).
#[unsafe(no_mangle)]
static SAMPLE_BYTES: Global<u64> = Global::new(0);

/// For benchmarks (`--empty-programs`): every program returns at once, so a run measures the
/// bare cost of the probes at their places.
#[unsafe(no_mangle)]
static EMPTY_PROGRAMS: Global<u8> = Global::new(0);

/// True when the programs must do nothing (see [`EMPTY_PROGRAMS`]).
#[inline(always)]
fn empty() -> bool {
    EMPTY_PROGRAMS.load() != 0
}

/// The calling process's tgid while tracing goes on and, with a cgroup filter, the process is
/// inside that cgroup. (Probes are attached per process, so the caller is always a target.)
#[inline(always)]
fn traced_tgid() -> Option<u32> {
    if STOPPED.get(0).is_none_or(|stopped| *stopped != 0) {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let cgroup = FILTER_CGROUP_ID.load();
    if cgroup != 0
        && unsafe { bpf_get_current_ancestor_cgroup_id(FILTER_CGROUP_LEVEL.load() as i32) }
            != cgroup
    {
        return None;
    }
    Some(tgid)
}

#[inline(always)]
fn thread_id() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn user_sp(regs: *mut aya_ebpf::bindings::pt_regs) -> u64 {
    unsafe { (*regs).rsp }
}

#[inline(always)]
fn jiffies() -> u64 {
    unsafe { bpf_jiffies64() }
}

/// This thread's pending-call entry: its slot when the slot is tagged with it, else its
/// overflow entry, if any.
#[inline(always)]
fn pending_entry(tid: u32) -> Option<*mut PendingCall> {
    let slot = PENDING.get_ptr_mut(tid % PENDING_SLOTS)?;
    if unsafe { (*slot).tid } == tid {
        return Some(slot);
    }
    PENDING_OVERFLOW.get_ptr_mut(tid)
}

#[inline(always)]
fn is_stale(call: &PendingCall, now_jiffies: u64) -> bool {
    now_jiffies.wrapping_sub(call.entry_jiffies) >= STALE_CALL_JIFFIES
}

/// The pending call of this thread that `sp` runs inside of, if any (a fresh one, higher up the
/// stack).
#[inline(always)]
fn enclosing_call(tid: u32, sp: u64, now_jiffies: u64) -> Option<PendingCall> {
    let outer = unsafe { *pending_entry(tid)? };
    if outer.kind == 0 {
        return None;
    }
    let fresh = !is_stale(&outer, now_jiffies);
    if sp < outer.sp && fresh {
        return Some(outer);
    }
    // Same sp: the allocator tail-called an entry point (glibc's realloc(NULL, n) jumps to
    // malloc); the inner call takes over and returns for both. Anything else is a call whose
    // return was never seen.
    if sp != outer.sp || !fresh {
        count(Counter::StaleCalls);
    }
    None
}

/// Entry half of every tracked call.
#[inline(always)]
fn begin_call(ctx: &ProbeContext, kind: CallKind, size: u64, arg: u64) {
    if traced_tgid().is_none() {
        return;
    }
    let tid = thread_id();
    let sp = user_sp(ctx.regs);
    let now_jiffies = jiffies();
    if enclosing_call(tid, sp, now_jiffies).is_some() {
        count(match kind {
            CallKind::Mmap | CallKind::Mremap => Counter::AllocatorMmaps,
            _ => Counter::NestedCalls,
        });
        return;
    }
    let releases_earlier = matches!(kind, CallKind::Realloc | CallKind::Mremap);
    let call = PendingCall {
        kind: kind as u32,
        tid,
        sp,
        size,
        arg,
        entry_ns: if releases_earlier {
            unsafe { bpf_ktime_get_ns() }
        } else {
            0
        },
        entry_jiffies: now_jiffies,
    };
    let Some(slot) = PENDING.get_ptr_mut(tid % PENDING_SLOTS) else {
        return;
    };
    let holder = unsafe { &*slot };
    if holder.tid == tid || holder.kind == 0 || is_stale(holder, now_jiffies) {
        unsafe { *slot = call };
        return;
    }
    // The slot holds another thread's live call.
    if let Some(entry) = PENDING_OVERFLOW.get_ptr_mut(tid) {
        unsafe { *entry = call };
        return;
    }
    if PENDING_OVERFLOW.insert(tid, call, BPF_ANY as u64).is_err() {
        count_loss!(
            ctx,
            Counter::PendingMapFull,
            "pending-call map full: allocator calls are not being tracked"
        );
    }
}

/// Adds allocations to a stack's totals in `STACK_STATS`. False when the map is full.
#[inline(always)]
fn stats_add(key: &StackKey, size: u64, allocations: u64) -> bool {
    let mut stats = STACK_STATS.get_ptr_mut(key);
    if stats.is_none() {
        let _ = STACK_STATS.insert(key, StackStats::default(), BPF_NOEXIST as u64);
        stats = STACK_STATS.get_ptr_mut(key);
    }
    let Some(stats) = stats else {
        return false;
    };
    unsafe {
        atomic_add(&raw mut (*stats).total_allocations, allocations);
        atomic_add(&raw mut (*stats).total_bytes, size);
    }
    true
}

/// The two kinds of allocation records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Records {
    /// Heap blocks, in `ALLOCS`.
    Heap,
    /// Direct mappings, in `MMAPS`.
    Mappings,
}

impl Records {
    #[inline(always)]
    fn map(self) -> &'static HashMap<AllocKey, AllocRecord> {
        match self {
            Records::Heap => &ALLOCS,
            Records::Mappings => &MMAPS,
        }
    }

    /// This address's count in [`RECORDED_ADDRESSES`], for sampled heap records only.
    #[inline(always)]
    fn filter_slot(self, tgid: u32, addr: u64) -> Option<*mut u32> {
        if self != Records::Heap || SAMPLE_BYTES.load() == 0 {
            return None;
        }
        let index = mix(u64::from(tgid), addr) as u32 & (ADDRESS_FILTER_SLOTS - 1);
        RECORDED_ADDRESSES.get_ptr_mut(index)
    }
}

/// Compare-and-exchange on a map value: the value it held (equal to `old` when swapped).
/// (BPF atomics with fetch: tracer-ebpf/build.rs has bpf-linker generate alu32 code.)
#[inline(always)]
fn compare_exchange(target: *mut u64, old: u64, new: u64) -> u64 {
    use core::intrinsics::{AtomicOrdering, atomic_cxchg};
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            target, old, new,
        )
    }
    .0
}

/// The record table's key for (tgid, address).
#[inline(always)]
fn fingerprint(tgid: u32, addr: u64) -> u64 {
    let key = mix(mix(0, u64::from(tgid)), addr);
    if key < FIRST_RECORD_KEY {
        key + FIRST_RECORD_KEY
    } else {
        key
    }
}

/// Slot `i` of the probe window of `key`.
#[inline(always)]
fn table_slot(key: u64, i: u32) -> Option<*mut RecordSlot> {
    RECORD_TABLE.get_ptr_mut((key as u32).wrapping_add(i) & RECORD_TABLE_MASK.load())
}

/// How a record went into the table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// Into a free slot.
    New,
    /// Over a record of the same address (its block was freed by a path we do not see).
    Replaced,
    /// Nowhere: the window is full.
    Full,
}

/// Writes a claimed slot and publishes it under `key`.
#[inline(always)]
fn fill_slot(slot: *mut RecordSlot, key: u64, tgid: u32, addr: u64, record: &AllocRecord) {
    unsafe {
        (*slot).tgid = tgid;
        (*slot).weight = record.weight;
        (*slot).addr = addr;
        (*slot).size = record.size;
        (*slot).timestamp_ns = record.timestamp_ns;
        (*slot).stack_id = record.stack_id;
        // Last: readers trust the fields once they see the key.
        core::ptr::write_volatile(&raw mut (*slot).key, key);
    }
}

/// Puts a heap record into the table.
#[inline(always)]
fn table_insert(tgid: u32, addr: u64, record: &AllocRecord) -> Placed {
    let key = fingerprint(tgid, addr);
    for i in 0..RECORD_PROBES {
        let Some(slot) = table_slot(key, i) else {
            return Placed::Full;
        };
        let seen = unsafe { (*slot).key };
        if seen == key && compare_exchange(unsafe { &raw mut (*slot).key }, key, SLOT_BUSY) == key {
            fill_slot(slot, key, tgid, addr, record);
            return Placed::Replaced;
        }
        if seen == SLOT_EMPTY {
            break;
        }
    }
    for i in 0..RECORD_PROBES {
        let Some(slot) = table_slot(key, i) else {
            return Placed::Full;
        };
        let seen = unsafe { (*slot).key };
        if (seen == SLOT_EMPTY || seen == SLOT_FREED)
            && compare_exchange(unsafe { &raw mut (*slot).key }, seen, SLOT_BUSY) == seen
        {
            fill_slot(slot, key, tgid, addr, record);
            return Placed::New;
        }
    }
    Placed::Full
}

/// Takes the record of (tgid, addr) out of the table, when it was recorded at or before
/// `not_after_ns`.
#[inline(always)]
fn table_take(tgid: u32, addr: u64, not_after_ns: u64) -> Option<AllocRecord> {
    let key = fingerprint(tgid, addr);
    for i in 0..RECORD_PROBES {
        let slot = table_slot(key, i)?;
        let seen = unsafe { (*slot).key };
        if seen == key {
            let record = unsafe {
                AllocRecord {
                    size: (*slot).size,
                    timestamp_ns: (*slot).timestamp_ns,
                    stack_id: (*slot).stack_id,
                    weight: (*slot).weight,
                    _pad: 0,
                }
            };
            if record.timestamp_ns > not_after_ns
                || compare_exchange(unsafe { &raw mut (*slot).key }, key, SLOT_FREED) != key
            {
                return None;
            }
            return Some(record);
        }
        // Slots never become empty again, so a record never lies past an empty slot.
        if seen == SLOT_EMPTY {
            return None;
        }
    }
    None
}

/// Removes the record of (tgid, addr) recorded at or before `not_after_ns`: a heap record from
/// the table or its overflow, a mapping from `MMAPS`.
#[inline(always)]
fn take_record(records: Records, tgid: u32, addr: u64, not_after_ns: u64) -> Option<AllocRecord> {
    if records == Records::Heap {
        if let Some(record) = table_take(tgid, addr, not_after_ns) {
            return Some(record);
        }
        let overflow = OVERFLOWED.get_ptr_mut(0)?;
        if unsafe { *overflow } == 0 {
            return None;
        }
        let record = take_from_map(records.map(), tgid, addr, not_after_ns)?;
        atomic_add(overflow, 1u64.wrapping_neg());
        return Some(record);
    }
    take_from_map(records.map(), tgid, addr, not_after_ns)
}

/// Removes the record of (tgid, addr) from a hash map when recorded at or before
/// `not_after_ns` (u64::MAX: any, with a single map operation).
#[inline(always)]
fn take_from_map(
    map: &HashMap<AllocKey, AllocRecord>,
    tgid: u32,
    addr: u64,
    not_after_ns: u64,
) -> Option<AllocRecord> {
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    if not_after_ns == u64::MAX {
        map.remove(key).ok()?;
        return Some(AllocRecord::default());
    }
    let record = unsafe { map.get(key) }.copied()?;
    if record.timestamp_ns > not_after_ns {
        return None;
    }
    // Fails when another CPU released it first.
    map.remove(key).ok()?;
    Some(record)
}

/// Atomic add of a signed step on a u32 counter.
#[inline(always)]
fn atomic_add_u32(target: *mut u32, delta: i32) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(target, delta as u32) };
}

/// Releases the record of `addr`: a free (no map operation for a sampled-out block, one at most
/// otherwise). True when there was a record.
#[inline(always)]
fn release(records: Records, tgid: u32, addr: u64) -> bool {
    release_older(records, tgid, addr, u64::MAX).is_some()
}

/// Releases the record of `addr` in `records` when there is one recorded at or before
/// `not_after_ns` (a record made later belongs to another thread's newer allocation).
#[inline(always)]
fn release_older(records: Records, tgid: u32, addr: u64, not_after_ns: u64) -> Option<AllocRecord> {
    let filter = records.filter_slot(tgid, addr);
    if let Some(slot) = filter
        && unsafe { *slot } == 0
    {
        return None;
    }
    let record = take_record(records, tgid, addr, not_after_ns)?;
    if let Some(slot) = filter {
        atomic_add_u32(slot, -1);
    }
    count(Counter::Frees);
    Some(record)
}

/// Whether to record a heap allocation of `size` bytes under `--sample-bytes`, and if so the
/// (bytes, allocations) it stands for: sampled with probability p = 1 - exp(-size/N) (always
/// from N bytes up), and scaled by 1/p, so totals are unbiased.
#[inline(always)]
fn sample(size: u64) -> Option<(u64, u32)> {
    let period = SAMPLE_BYTES.load();
    if period == 0 || size >= period {
        return Some((size, 1));
    }
    let slot = (size * SAMPLE_TABLE_SLOTS as u64 / period) as u32;
    let threshold = u64::from(*SAMPLE_TABLE.get(slot)?).max(1);
    if u64::from(unsafe { bpf_get_prandom_u32() }) >= threshold {
        count(Counter::Unsampled);
        return None;
    }
    let scaled = (size << 32) / threshold;
    let weight = ((1u64 << 32) + threshold / 2) / threshold;
    Some((scaled, weight as u32))
}

/// Records a heap allocation, subject to sampling.
#[inline(always)]
fn record_heap(ctx: &RetProbeContext, tgid: u32, addr: u64, size: u64) {
    if let Some((bytes, weight)) = sample(size) {
        record(ctx, Records::Heap, tgid, addr, bytes, weight);
    }
}

/// Mixes one frame into a stack hash (64-bit multiply-xorshift: every bit of `ip` reaches every
/// bit of the result, so distinct stacks practically never share a hash).
#[inline(always)]
fn mix(hash: u64, ip: u64) -> u64 {
    let h = (hash ^ ip).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// Captures the user call stack at an allocator's return by walking the frame-pointer chain,
/// keeps it in `STACKS` under its hash, and returns the hash.
///
/// Done here rather than with `bpf_get_stackid`: the kernel's walker reads on until a read
/// faults, and every chain ends at a null frame pointer, so each capture paid a page fault
/// (about 0.5 us on this machine kind). This walk stops at the null pointer, and at a frame
/// pointer that does not move up the stack (code built without frame pointers), and its
/// 64-bit ids do not collide the way the stack-trace map's buckets do.
#[inline(always)]
fn capture_stack(regs: *mut aya_ebpf::bindings::pt_regs) -> Option<u64> {
    let stack = unsafe { &mut *STACK_SCRATCH.get_ptr_mut(0)? };
    // At a return probe the instruction pointer is already back in the caller.
    let (mut fp, ip) = unsafe { ((*regs).rbp, (*regs).rip) };
    stack.ips[0] = ip;
    let mut hash = mix(0, ip);
    let mut depth = 1;
    while depth < MAX_STACK_DEPTH {
        if fp == 0 || fp & 7 != 0 {
            break;
        }
        // A frame: [saved frame pointer, return address].
        let Ok(frame) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        let [next, ret] = frame;
        if ret == 0 {
            break;
        }
        let Some(slot) = stack.ips.get_mut(depth) else {
            break;
        };
        *slot = ret;
        hash = mix(hash, ret);
        depth += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    stack.depth = depth as u64;
    if hash == UNKNOWN_STACK {
        hash = 0;
    }
    Some(hash)
}

/// Keeps the stack just captured (in the scratch space) under `stack_id` in `STACKS`, when it is
/// not there yet. False when the map is full.
#[inline(always)]
fn keep_stack(stack_id: u64) -> bool {
    if unsafe { STACKS.get(stack_id) }.is_some() {
        return true;
    }
    let Some(stack) = STACK_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // By reference: a 1 KiB value copied onto the 512-byte BPF stack would not verify.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let inserted = STACKS.insert(stack_id, unsafe { &*stack }, BPF_NOEXIST as u64);
    match inserted {
        Ok(()) => true,
        Err(err) => err == -EEXIST,
    }
}

/// This CPU's cache slot for (tgid, stack_id), and whether it already holds that stack.
#[inline(always)]
fn stack_cache_slot(tgid: u32, stack_id: u64) -> Option<(*mut CachedStack, bool)> {
    let cache = unsafe { &mut *STACK_CACHE.get_ptr_mut(0)? };
    let slot = &mut cache[stack_id as usize % STACK_CACHE_SLOTS];
    let hit = slot.tgid == tgid && slot.stack_id == stack_id;
    Some((slot, hit))
}

/// Hands a cache slot to (tgid, stack_id): the previous holder's totals go to `STACK_STATS`.
#[inline(always)]
fn take_cache_slot<C: EbpfContext>(ctx: &C, slot: &mut CachedStack, tgid: u32, stack_id: u64) {
    if slot.tgid != 0
        && slot.allocations != 0
        && !stats_add(
            &StackKey {
                tgid: slot.tgid,
                _pad: 0,
                stack_id: slot.stack_id,
            },
            slot.bytes,
            slot.allocations,
        )
    {
        count_loss!(
            ctx,
            Counter::StatsMapFull,
            "per-stack totals map full: some stacks' allocation totals are incomplete (raise --max-stacks)"
        );
    }
    *slot = CachedStack {
        tgid,
        _pad: 0,
        stack_id,
        allocations: 0,
        bytes: 0,
    };
}

/// Records a new allocation at `addr`, with the user stack of the current return.
#[inline(always)]
fn record(
    ctx: &RetProbeContext,
    records: Records,
    tgid: u32,
    addr: u64,
    size: u64,
    weight: u32,
) -> bool {
    let mut stack_id = capture_stack(ctx.regs).unwrap_or(UNKNOWN_STACK);
    let Some((slot, mut hit)) = stack_cache_slot(tgid, stack_id) else {
        return false;
    };
    if !hit && stack_id != UNKNOWN_STACK && !keep_stack(stack_id) {
        count_loss!(
            ctx,
            Counter::StackFailed,
            "stack map full: allocations kept without a stack (raise --max-stacks)"
        );
        stack_id = UNKNOWN_STACK;
        hit = false;
    }
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    let record = AllocRecord {
        size,
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
        weight,
        _pad: 0,
    };
    // An existing record for the address is replaced: the address was handed out again, so
    // its earlier block was freed by a path we do not see. Counted in the address filter only
    // when new.
    let filter = records.filter_slot(tgid, addr);
    let placed = if records == Records::Heap {
        table_insert(tgid, addr, &record)
    } else {
        Placed::Full
    };
    let inserted = match placed {
        Placed::New => {
            if let Some(slot) = filter {
                atomic_add_u32(slot, 1);
            }
            Ok(())
        }
        Placed::Replaced => Ok(()),
        // Mappings, and heap records the table has no room for.
        Placed::Full => match records.map().insert(key, record, BPF_NOEXIST as u64) {
            Ok(()) => {
                if let Some(slot) = filter {
                    atomic_add_u32(slot, 1);
                }
                if records == Records::Heap
                    && let Some(overflow) = OVERFLOWED.get_ptr_mut(0)
                {
                    atomic_add(overflow, 1);
                }
                Ok(())
            }
            Err(err) if err == -EEXIST => records.map().insert(key, record, BPF_ANY as u64),
            Err(err) => Err(err),
        },
    };
    if inserted.is_err() {
        count_loss!(
            ctx,
            Counter::AllocMapFull,
            "allocation map full: allocations are being dropped (raise --max-allocations)"
        );
        return false;
    }
    let slot = unsafe { &mut *slot };
    if !hit {
        take_cache_slot(ctx, slot, tgid, stack_id);
    }
    slot.allocations += u64::from(weight);
    slot.bytes += size;
    count(Counter::Allocations);
    true
}

#[inline(always)]
fn live_mappings() -> Option<*mut u64> {
    MMAP_STATE.get_ptr_mut(LIVE_MAPPINGS_SLOT)
}

// ---- entry probes -------------------------------------------------------------------------

/// malloc(size), valloc(size).
#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let size: u64 = ctx.arg(0).unwrap_or(0);
    begin_call(&ctx, CallKind::Alloc, size, 0);
    0
}

/// calloc(n, size): n * size bytes.
#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let n: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    // On overflow calloc fails and returns NULL: nothing gets recorded.
    begin_call(&ctx, CallKind::Alloc, n.wrapping_mul(size), 0);
    0
}

/// aligned_alloc(alignment, size), memalign(alignment, size).
#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let size: u64 = ctx.arg(1).unwrap_or(0);
    begin_call(&ctx, CallKind::Alloc, size, 0);
    0
}

/// pvalloc(size): size rounded up to whole pages.
#[uprobe]
pub fn pvalloc_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let size: u64 = ctx.arg(0).unwrap_or(0);
    let pages = size.div_ceil(PAGE_SIZE).max(1);
    begin_call(&ctx, CallKind::Alloc, pages * PAGE_SIZE, 0);
    0
}

/// realloc(ptr, size).
#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    begin_call(&ctx, CallKind::Realloc, size, ptr);
    0
}

/// reallocarray(ptr, n, size).
#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    let n: u64 = ctx.arg(1).unwrap_or(0);
    let size: u64 = ctx.arg(2).unwrap_or(0);
    begin_call(&ctx, CallKind::Realloc, n.wrapping_mul(size), ptr);
    0
}

/// posix_memalign(&ptr, alignment, size).
#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let out: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(2).unwrap_or(0);
    begin_call(&ctx, CallKind::PosixMemalign, size, out);
    0
}

/// mmap(addr, length, prot, flags, fd, offset).
#[uprobe]
pub fn mmap_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let length: u64 = ctx.arg(1).unwrap_or(0);
    let prot: u64 = ctx.arg(2).unwrap_or(0);
    if prot == 0 {
        // PROT_NONE reserves address space; no memory until an mprotect we do not count.
        if traced_tgid().is_some() {
            count(Counter::Reservations);
        }
        return 0;
    }
    begin_call(&ctx, CallKind::Mmap, length, 0);
    0
}

/// mremap(old_address, old_size, new_size, flags, ...).
#[uprobe]
pub fn mremap_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let old: u64 = ctx.arg(0).unwrap_or(0);
    let new_size: u64 = ctx.arg(2).unwrap_or(0);
    begin_call(&ctx, CallKind::Mremap, new_size, old);
    0
}

/// free(ptr): releases the block when it was recorded; unknown pointers are ignored.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let Some(tgid) = traced_tgid() else {
        return 0;
    };
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    if ptr == 0 {
        return 0;
    }
    if !release(Records::Heap, tgid, ptr) {
        count(Counter::UnknownFrees);
    }
    0
}

/// munmap(addr, length): releases the recorded mappings the range covers, trimming one it only
/// starts; what cannot be settled by start address goes to userspace.
#[uprobe]
pub fn munmap_enter(ctx: ProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let Some(tgid) = traced_tgid() else {
        return 0;
    };
    let start: u64 = ctx.arg(0).unwrap_or(0);
    let length: u64 = ctx.arg(1).unwrap_or(0);
    if enclosing_call(thread_id(), user_sp(ctx.regs), jiffies()).is_some() {
        count(Counter::AllocatorMmaps);
        return 0;
    }
    let Some(live) = live_mappings() else {
        return 0;
    };
    if unsafe { *live } == 0 {
        return 0;
    }
    let end = start.wrapping_add(length.div_ceil(PAGE_SIZE) * PAGE_SIZE);
    let mut cursor = start;
    for _ in 0..MAX_UNMAP_STEPS {
        if cursor >= end {
            break;
        }
        let key = AllocKey {
            tgid,
            _pad: 0,
            addr: cursor,
        };
        let Some(mapping) = (unsafe { MMAPS.get(key) }).copied() else {
            break;
        };
        let mapping_end = cursor + mapping.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if end >= mapping_end {
            if release(Records::Mappings, tgid, cursor) {
                atomic_add(live, 1u64.wrapping_neg());
            }
            cursor = mapping_end;
        } else {
            // Head of the mapping unmapped: keep the tail as the record.
            let tail = AllocRecord {
                size: mapping_end - end,
                ..mapping
            };
            let tail_key = AllocKey { addr: end, ..key };
            if MMAPS.remove(key).is_ok() {
                let _ = MMAPS.insert(tail_key, tail, BPF_ANY as u64);
            }
            cursor = end;
        }
    }
    if cursor < end {
        let event = UnmapEvent {
            tgid,
            _pad: 0,
            start: cursor,
            end,
        };
        if UNMAP_EVENTS.output::<UnmapEvent>(&event, 0).is_err() {
            count_loss!(
                &ctx,
                Counter::UnmapEventsLost,
                "munmap event ring full: some partial unmaps are not settled"
            );
        }
    }
    0
}

// ---- the shared return probe ----------------------------------------------------------------

/// Return of every tracked call: records what the call produced.
#[uretprobe]
pub fn call_return(ctx: RetProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let Some(tgid) = traced_tgid() else {
        return 0;
    };
    let tid = thread_id();
    let Some(slot) = pending_entry(tid) else {
        return 0;
    };
    let call = unsafe { *slot };
    // The outer call returns to its caller's stack: entry sp + the popped return address.
    if call.kind == 0 || user_sp(ctx.regs) != call.sp.wrapping_add(8) {
        return 0;
    }
    unsafe { (*slot).kind = 0 };
    let ret: u64 = ctx.ret();
    match call.kind {
        k if k == CallKind::Alloc as u32 && ret != 0 => {
            record_heap(&ctx, tgid, ret, call.size);
        }
        k if k == CallKind::Realloc as u32 => {
            let old = call.arg;
            if old == 0 {
                if ret != 0 {
                    record_heap(&ctx, tgid, ret, call.size);
                }
            } else if ret != 0 {
                release_older(Records::Heap, tgid, old, call.entry_ns);
                record_heap(&ctx, tgid, ret, call.size);
            } else if call.size == 0 {
                // realloc(p, 0) freed p; a NULL return with size > 0 is a failure that frees
                // nothing.
                release_older(Records::Heap, tgid, old, call.entry_ns);
            }
        }
        k if k == CallKind::PosixMemalign as u32 => {
            if ret as u32 == 0
                && let Ok(ptr) = unsafe { bpf_probe_read_user(call.arg as *const u64) }
                && ptr != 0
            {
                record_heap(&ctx, tgid, ptr, call.size);
            }
        }
        k if k == CallKind::Mmap as u32 => {
            if ret != MAP_FAILED
                && record(&ctx, Records::Mappings, tgid, ret, call.size, 1)
                && let Some(live) = live_mappings()
            {
                atomic_add(live, 1);
            }
        }
        k if k == CallKind::Mremap as u32
            // Only a mapping we recorded moves; others predate the trace.
            && ret != MAP_FAILED && release_older(Records::Mappings, tgid, call.arg, call.entry_ns).is_some() =>
        {
            let recorded = record(&ctx, Records::Mappings, tgid, ret, call.size, 1);
            if !recorded && let Some(live) = live_mappings() {
                atomic_add(live, 1u64.wrapping_neg());
            }
        }
        _ => {}
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
