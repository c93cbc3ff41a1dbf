//! Direct mappings: mmap and mremap entries (finished by the return program), munmap.

use aya_ebpf::bindings::BPF_ANY;
use tracer_common::{AllocKey, AllocRecord, CallKind, Counter, UnmapEvent, programs};

use super::{PAGE_SIZE, entry_program};
use crate::{
    atomic::atomic_add,
    counters::{count, count_loss},
    current::{jiffies, thread_id, traced_tgid, user_sp},
    maps::{MMAPS, UNMAP_EVENTS},
    pending::{begin_call, enclosing_call},
    records::{Records, has_live_mappings, live_mappings, release},
};

/// Recorded mappings a single munmap may release in the kernel before handing the rest to
/// userspace.
const MAX_UNMAP_STEPS: u32 = 16;

entry_program! {
    /// mmap(addr, length, prot, flags, fd, offset).
    mmap_enter = programs::MMAP_ENTER, |ctx, length, prot| {
        if prot == 0 {
            // PROT_NONE reserves address space; no memory until an mprotect we do not count.
            if traced_tgid().is_some() {
                count(Counter::Reservations);
            }
            return 0;
        }
        begin_call(&ctx, CallKind::Mmap, length, 0);
    }
}

entry_program! {
    /// mremap(old_address, old_size, new_size, flags, ...).
    mremap_enter = programs::MREMAP_ENTER, |ctx, old, new_size| {
        begin_call(&ctx, CallKind::Mremap, new_size, old);
    }
}

entry_program! {
    /// munmap(addr, length): releases the recorded mappings the range covers, trimming one it
    /// only starts; what cannot be settled by start address goes to userspace.
    munmap_enter = programs::MUNMAP_ENTER, traced tgid, |ctx, start, length| {
        if enclosing_call(thread_id(), user_sp(ctx.regs), jiffies()).is_some() {
            count(Counter::AllocatorMmaps);
            return 0;
        }
        if !has_live_mappings() {
            return 0;
        }
        let Some(live) = live_mappings() else {
            return 0;
        };
        let end = start.wrapping_add(length.div_ceil(PAGE_SIZE) * PAGE_SIZE);
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
            let event = UnmapEvent::new(tgid, cursor, end);
            if UNMAP_EVENTS.output::<UnmapEvent>(&event, 0).is_err() {
                count_loss!(
                    &ctx,
                    Counter::UnmapEventsLost,
                    "munmap event ring full: some partial unmaps are not settled"
                );
            }
        }
    }
}
