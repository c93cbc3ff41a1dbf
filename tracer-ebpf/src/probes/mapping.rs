//! Direct mappings, as the system calls make and remove them (see `syscalls`): releasing a
//! range, and the PROT_NONE reservations an mprotect may open later.

use aya_ebpf::{EbpfContext, bindings::BPF_ANY};
use tracer_common::{AllocKey, AllocRecord, Counter, RESERVATION_SLOTS, Reservations, UnmapEvent};

use super::PAGE_SIZE;
use crate::{
    atomic::atomic_add,
    counters::count_loss,
    current::now_ns,
    maps::{MMAPS, RESERVATIONS, UNMAP_EVENTS},
    records::{Records, has_live_mappings, live_mappings, release},
};

/// Recorded mappings a single unmap may release in the kernel before handing the rest to
/// userspace.
const MAX_UNMAP_STEPS: u32 = 16;

/// The end of `length` bytes from `start`, in whole pages (what the kernel maps or unmaps).
#[inline(always)]
pub(crate) fn page_end(start: u64, length: u64) -> u64 {
    start.wrapping_add(length.div_ceil(PAGE_SIZE) * PAGE_SIZE)
}

/// Releases the recorded mappings `[start, start + length)` covers, trimming one it only
/// starts; what cannot be settled by start address goes to userspace (munmap, a MAP_FIXED
/// mapping over older ones, an mprotect back to PROT_NONE, a shrinking brk). Reservations
/// stay (see [`forget_reservations`]).
#[inline(always)]
pub(crate) fn release_range<C: EbpfContext>(ctx: &C, tgid: u32, start: u64, length: u64) {
    let end = page_end(start, length);
    if !has_live_mappings() {
        return;
    }
    let Some(live) = live_mappings() else {
        return;
    };
    let mut cursor = start;
    for _ in 0..MAX_UNMAP_STEPS {
        if cursor >= end {
            break;
        }
        let key = AllocKey::new(tgid, cursor);
        // SAFETY: the value is copied out at once; a concurrent unmap of the same range
        // makes the remove below fail.
        let Some(mapping) = (unsafe { MMAPS.get(key) }).copied() else {
            break;
        };
        let mapping_end = page_end(cursor, mapping.size);
        if end >= mapping_end {
            if release(Records::Mappings, tgid, cursor) {
                atomic_add(live, 1u64.wrapping_neg());
            }
            cursor = mapping_end;
        } else {
            // Head of the mapping released: keep the tail as the record.
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
        let event = UnmapEvent::new(tgid, cursor, end, now_ns());
        if UNMAP_EVENTS.output::<UnmapEvent>(&event, 0).is_err() {
            count_loss!(
                ctx,
                Counter::UnmapEventsLost,
                "munmap event ring full: some partial unmaps are not settled"
            );
        }
    }
}

/// Remembers a PROT_NONE reservation of `tgid` (its latest few are kept); `stack` (1 or 0):
/// mapped with `MAP_STACK`, for a thread's stack.
#[inline(always)]
pub(crate) fn remember_reservation(tgid: u32, start: u64, end: u64, stack: u32) {
    let stack = u64::from(stack & 1);
    let Some(ring) = RESERVATIONS.get_ptr_mut(tgid) else {
        let mut ring = Reservations::default();
        ring.starts[0] = start;
        ring.ends[0] = end;
        ring.next = 1;
        ring.stacks = stack;
        let _ = RESERVATIONS.insert(tgid, ring, BPF_ANY as u64);
        return;
    };
    // SAFETY: a pointer from a map lookup, valid for the run. Two threads reserving at once
    // may take the same slot; one reservation is then forgotten (its mprotects go unseen).
    let ring = unsafe { &mut *ring };
    let slot = (ring.next as usize) % RESERVATION_SLOTS;
    ring.starts[slot] = start;
    ring.ends[slot] = end;
    ring.stacks = (ring.stacks & !(1u64 << slot)) | (stack << slot);
    ring.next = ring.next.wrapping_add(1);
}

/// When `[start, end)` lies inside one of `tgid`'s remembered reservations: 1 when that one
/// was mapped for a thread's stack, else 0 (a number, not a branch: see `syscalls::mmap_exit`).
#[inline(always)]
pub(crate) fn reservation_of(tgid: u32, start: u64, end: u64) -> Option<u32> {
    // SAFETY: the value is only read.
    let ring = unsafe { RESERVATIONS.get(tgid) }?;
    for slot in 0..RESERVATION_SLOTS {
        if ring.starts[slot] <= start && end <= ring.ends[slot] && start < end {
            return Some(((ring.stacks >> slot) & 1) as u32);
        }
    }
    None
}

/// Forgets the reservations that start inside `[start, end)`: their range is unmapped, and a
/// later mprotect there is of something else.
#[inline(always)]
pub(crate) fn forget_reservations(tgid: u32, start: u64, end: u64) {
    let Some(ring) = RESERVATIONS.get_ptr_mut(tgid) else {
        return;
    };
    // SAFETY: a pointer from a map lookup, valid for the run.
    let ring = unsafe { &mut *ring };
    for slot in 0..RESERVATION_SLOTS {
        if start <= ring.starts[slot] && ring.starts[slot] < end {
            ring.starts[slot] = 0;
            ring.ends[slot] = 0;
            ring.stacks &= !(1u64 << slot);
        }
    }
}
