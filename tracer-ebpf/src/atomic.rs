//! Atomic operations on map values shared by all CPUs.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

/// Atomic add on a u64 (compiles to BPF's `lock xadd`). `target` must point into a map value
/// (from a map lookup, so valid for the program's run).
#[inline(always)]
pub(crate) fn atomic_add(target: *mut u64, delta: u64) {
    // SAFETY: callers pass pointers from map lookups: valid, aligned u64s for the whole run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, delta) };
}

/// Atomic add of a signed step on a u32 counter (same contract as [`atomic_add`]).
#[inline(always)]
pub(crate) fn atomic_add_u32(target: *mut u32, delta: i32) {
    // SAFETY: as in `atomic_add`: a valid, aligned u32 inside a map value.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(target, delta as u32) };
}

/// Compare-and-exchange on a map value: the value it held (equal to `old` when swapped).
/// (BPF atomics with fetch: tracer-ebpf/build.rs has bpf-linker generate alu32 code.)
#[inline(always)]
pub(crate) fn compare_exchange(target: *mut u64, old: u64, new: u64) -> u64 {
    // SAFETY: as in `atomic_add`: a valid, aligned u64 inside a map value.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            target, old, new,
        )
    }
    .0
}
