//! Stack capture (CFI unwinding, see `unwind`, or a frame-pointer walk, then the frames of the
//! process's language runtime, see `runtimes`), the `STACKS` map of captured stacks, and the
//! per-CPU stack cache whose totals are written back to `STACK_STATS`.

use aya_ebpf::{bindings::BPF_NOEXIST, bindings::pt_regs, helpers::bpf_probe_read_user};
use tracer_common::{
    CachedStack, Counter, MAX_STACK_DEPTH, STACK_CACHE_SLOTS, StackKey, StackStats, UNKNOWN_STACK,
    UnwindEnd, UserStack,
    runtimes::{MAX_STOP_RANGES, in_stop_range},
};

use crate::{
    arch,
    atomic::atomic_add,
    counters::count_loss,
    maps::{EEXIST, MAX_DEPTH, STACK_CACHE, STACK_SCRATCH, STACK_STATS, STACKS},
    runtimes, unwind,
};

/// Mixes one frame into a stack hash (64-bit multiply-xorshift: every bit of `ip` reaches every
/// bit of the result, so distinct stacks practically never share a hash).
#[inline(always)]
pub(crate) fn mix(hash: u64, ip: u64) -> u64 {
    let h = (hash ^ ip).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// Captures the user call stack at an allocator's return (or a mapping system call) into the
/// per-CPU scratch space, and returns its id: the native frames (see [`capture_stack_at`]),
/// then the frames of the process's runtime, if it runs one (see
/// [`runtimes::append_runtime_frames`]). Two global functions, one after the other, so
/// the stack frames of the two walks are never on the BPF stack at once.
#[inline(always)]
pub(crate) fn capture_stack(regs: *mut pt_regs, tgid: u32) -> u64 {
    // At a return probe the instruction pointer is already back in the caller, and the stack
    // and frame pointers are the caller's.
    let native = capture_stack_at(arch::pc(regs), arch::sp(regs), arch::fp(regs), tgid);
    if native == UNKNOWN_STACK {
        // No scratch space: nothing was captured.
        return UNKNOWN_STACK;
    }
    let hash = runtimes::append_runtime_frames(tgid, native);
    if hash == UNKNOWN_STACK { 0 } else { hash }
}

/// Captures the native user call stack whose innermost frame is `(pc, sp, fp)` into the
/// per-CPU scratch space, and returns its hash so far, or [`UNKNOWN_STACK`] without a scratch
/// space: by the process's unwind tables when userspace has written them (code without frame
/// pointers included), else by frame pointers, up to the code of the process's runtime.
///
/// A BPF global function (exported, so bpf-linker gives it BTF linkage `global`): the verifier
/// checks it once per program, on its own, instead of once per call site and caller's state.
/// Its arguments are scalars, as a global function's must be.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn capture_stack_at(pc: u64, sp: u64, fp: u64, tgid: u32) -> u64 {
    let Some(stack) = STACK_SCRATCH.get_ptr_mut(0) else {
        return UNKNOWN_STACK;
    };
    // SAFETY: this CPU's scratch slot (per-CPU map, valid for the run, used by nothing else
    // while this program runs).
    let stack = unsafe { &mut *stack };
    let ip = pc;
    stack.ips[0] = ip;
    let stops = match runtimes::process(tgid) {
        Some(process) => process.stops,
        None => [[0; 2]; MAX_STOP_RANGES],
    };
    match unwind::process_tables(tgid) {
        // Called from the runtime's own code: its frames are the rest of the stack.
        Some(_) if in_stop_range(&stops, ip) => {
            stack.depth = 1;
            unwind::count_end(UnwindEnd::RuntimeCode as u32, 0);
            mix(0, ip)
        }
        Some(tables) => unwind::walk_stack(tables, ip, sp, fp, mix(0, ip), stops),
        None => walk_frame_pointers(stack, fp, mix(0, ip)),
    }
}

/// The frame-pointer walk, for processes without unwind tables (not written yet, or
/// `--unwind fp`).
///
/// Done here rather than with `bpf_get_stackid`: the kernel's walker reads on until a read
/// faults, and every chain ends at a null frame pointer, so each capture paid a page fault
/// (about 0.5 us on this machine kind). This walk stops at the null pointer, and at a frame
/// pointer that does not move up the stack (code built without frame pointers), and its
/// 64-bit ids do not collide the way the stack-trace map's buckets do.
#[inline(always)]
fn walk_frame_pointers(stack: &mut UserStack, mut fp: u64, mut hash: u64) -> u64 {
    let max_depth = (MAX_DEPTH.load() as usize).clamp(1, MAX_STACK_DEPTH);
    let mut depth = 1;
    while depth < max_depth {
        if fp == 0 || fp & 7 != 0 {
            break;
        }
        // A frame: [saved frame pointer, return address].
        // SAFETY: the helper copies from user memory and fails (no fault) on a bad address.
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
    unwind::count_end(UnwindEnd::FramePointers as u32, 0);
    hash
}

/// Keeps the stack just captured (in the scratch space) under `stack_id` in `STACKS`, when it is
/// not there yet (a new stack ending in a runtime's frame is announced to that runtime). False
/// when the map is full.
#[inline(always)]
pub(crate) fn keep_stack(tgid: u32, stack_id: u64) -> bool {
    // SAFETY: only presence is checked; the value is not read.
    if unsafe { STACKS.get(stack_id) }.is_some() {
        return true;
    }
    let Some(stack) = STACK_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // By reference: a 1 KiB value copied onto the 512-byte BPF stack would not verify.
    // SAFETY: this CPU's scratch slot, valid for the run, just written by `capture_stack`.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let inserted = STACKS.insert(stack_id, unsafe { &*stack }, BPF_NOEXIST as u64);
    match inserted {
        Ok(()) => {
            runtimes::stack_kept(tgid, stack_id);
            true
        }
        Err(err) => err == -EEXIST,
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
    // SAFETY: only the fields' addresses are taken, of a value from a map lookup; the adds are
    // atomic, as other CPUs add to the same totals.
    unsafe {
        atomic_add(&raw mut (*stats).total_allocations, allocations);
        atomic_add(&raw mut (*stats).total_bytes, size);
    }
    true
}

/// This CPU's cache slot for (tgid, stack_id), and whether it already holds that stack.
#[inline(always)]
pub(crate) fn stack_cache_slot(tgid: u32, stack_id: u64) -> Option<(*mut CachedStack, bool)> {
    // SAFETY: this CPU's cache (per-CPU map, valid for the run, no other writer).
    let cache = unsafe { &mut *STACK_CACHE.get_ptr_mut(0)? };
    let slot = &mut cache[stack_id as usize % STACK_CACHE_SLOTS];
    let hit = slot.tgid == tgid && slot.stack_id == stack_id;
    Some((slot, hit))
}

/// Hands a cache slot to (tgid, stack_id): the previous holder's totals go to `STACK_STATS`.
#[inline(always)]
pub(crate) fn take_cache_slot<C>(ctx: &C, slot: &mut CachedStack, tgid: u32, stack_id: u64) {
    if slot.tgid != 0
        && slot.allocations != 0
        && !stats_add(
            &StackKey::new(slot.tgid, slot.stack_id),
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
    *slot = CachedStack::new(tgid, stack_id);
}
