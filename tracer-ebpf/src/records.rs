//! The per-allocation records: heap blocks in the lock-free open-addressing table
//! `RECORD_TABLE` (overflowing into the `ALLOCS` hash map), direct mappings in `MMAPS`.
//!
//! Table protocol: a slot's `key` is `SLOT_EMPTY`, `SLOT_FREED`, `SLOT_BUSY` or the record's
//! fingerprint. A writer claims a slot by compare-and-exchange to `SLOT_BUSY`, fills it and
//! publishes it by writing the key last; a free takes the record by compare-and-exchange from
//! the fingerprint to `SLOT_FREED`. A record lives within `RECORD_PROBES` slots of its home
//! slot, and slots never become empty again, so a lookup stops at the first empty slot.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, pt_regs},
    maps::HashMap,
};
use tracer_common::{
    AllocKey, AllocRecord, Counter, FIRST_RECORD_KEY, LIVE_MAPPINGS_SLOT, RECORD_PROBES,
    RecordSlot, SLOT_BUSY, SLOT_EMPTY, SLOT_FREED, UNKNOWN_STACK, USER_MAPPINGS_SLOT,
};

use crate::{
    atomic::{atomic_add, atomic_add_u32, compare_exchange},
    counters::{count, count_loss},
    current::now_ns,
    maps::{
        ADDRESS_FILTER_SLOTS, ALLOCS, EEXIST, MMAP_STATE, MMAPS, OVERFLOWED, RECORD_TABLE,
        RECORD_TABLE_MASK, RECORDED_ADDRESSES, SAMPLE_BYTES,
    },
    stack::{capture_stack, keep_stack, mix, stack_cache_slot, take_cache_slot},
};

/// The two kinds of allocation records.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Records {
    /// Heap blocks, in `RECORD_TABLE` and its overflow `ALLOCS`.
    Heap,
    /// Direct mappings, in `MMAPS`.
    Mappings,
}

impl Records {
    /// The hash map of these records (for heap records, the table's overflow).
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

/// A slot's key, as another CPU may be changing it.
#[inline(always)]
fn slot_key(slot: *mut RecordSlot) -> u64 {
    // SAFETY: `slot` comes from an array lookup (`table_slot`): valid and aligned for the run.
    unsafe { (*slot).key }
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
    // SAFETY: `slot` comes from an array lookup, and this CPU claimed it (its key is
    // SLOT_BUSY), so no other writer touches its fields until the key is published.
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

/// Claims `slot` by swapping its key from `seen` to `SLOT_BUSY`; false when another CPU changed
/// it first.
#[inline(always)]
fn claim(slot: *mut RecordSlot, seen: u64) -> bool {
    // SAFETY: only the field's address is taken (no access); `slot` is a valid lookup result.
    compare_exchange(unsafe { &raw mut (*slot).key }, seen, SLOT_BUSY) == seen
}

/// Puts a heap record into the table.
#[inline(always)]
fn table_insert(tgid: u32, addr: u64, record: &AllocRecord) -> Placed {
    let key = fingerprint(tgid, addr);
    for i in 0..RECORD_PROBES {
        let Some(slot) = table_slot(key, i) else {
            return Placed::Full;
        };
        let seen = slot_key(slot);
        if seen == key && claim(slot, key) {
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
        let seen = slot_key(slot);
        if (seen == SLOT_EMPTY || seen == SLOT_FREED) && claim(slot, seen) {
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
        let seen = slot_key(slot);
        if seen == key {
            // SAFETY: a valid lookup result; the fields were published before the key seen.
            let record = unsafe {
                AllocRecord::new(
                    (*slot).size,
                    (*slot).timestamp_ns,
                    (*slot).stack_id,
                    (*slot).weight,
                )
            };
            // SAFETY: only the field's address is taken.
            let key_field = unsafe { &raw mut (*slot).key };
            if record.timestamp_ns > not_after_ns
                || compare_exchange(key_field, key, SLOT_FREED) != key
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
        // SAFETY: a pointer from an array lookup, valid for the run; a plain read.
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
    let key = AllocKey::new(tgid, addr);
    if not_after_ns == u64::MAX {
        map.remove(key).ok()?;
        return Some(AllocRecord::default());
    }
    // SAFETY: the value is copied out at once; another CPU removing it meanwhile leaves a
    // stale copy, which the remove below then fails on.
    let record = unsafe { map.get(key) }.copied()?;
    if record.timestamp_ns > not_after_ns {
        return None;
    }
    // Fails when another CPU released it first.
    map.remove(key).ok()?;
    Some(record)
}

/// Releases the record of `addr`: a free (no map operation for a sampled-out block, one at most
/// otherwise). True when there was a record.
#[inline(always)]
pub(crate) fn release(records: Records, tgid: u32, addr: u64) -> bool {
    release_older(records, tgid, addr, u64::MAX).is_some()
}

/// Releases the record of `addr` in `records` when there is one recorded at or before
/// `not_after_ns` (a record made later belongs to another thread's newer allocation).
#[inline(always)]
pub(crate) fn release_older(
    records: Records,
    tgid: u32,
    addr: u64,
    not_after_ns: u64,
) -> Option<AllocRecord> {
    let filter = records.filter_slot(tgid, addr);
    if let Some(slot) = filter
        // SAFETY: a pointer from an array lookup, valid for the run; a plain read.
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

/// Records a new allocation at `addr`, with the user stack `regs` describe (the registers at
/// the allocator's return, or at a mapping system call). Two BPF global functions do the work
/// (see [`capture_stack_at`](crate::stack::capture_stack_at)): each call site costs the
/// verifier two calls, not another copy of the stack walk and the table.
#[inline(always)]
pub(crate) fn record<C>(
    ctx: &C,
    regs: *mut pt_regs,
    records: Records,
    tgid: u32,
    addr: u64,
    size: u64,
    weight: u32,
) -> bool {
    // Losses are counted without the context: the global function has none.
    let _ = ctx;
    let stack_id = capture_stack(regs, tgid);
    let who = u64::from(tgid) | (u64::from(records == Records::Mappings) << 32);
    store_record(who, addr, size, weight, stack_id) != 0
}

/// Records a new allocation at `addr` of `who`'s process (the tgid in its low half; its high
/// half 1 for a direct mapping, 0 for a heap block), with the stack just captured: its id
/// `stack_id` (kept in `STACKS` when new). 1 when recorded, 0 when a map was full.
///
/// A BPF global function: its arguments are scalars, and the verifier checks it once per
/// program.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn store_record(who: u64, addr: u64, size: u64, weight: u32, stack_id: u64) -> u32 {
    let ctx = &();
    let tgid = who as u32;
    let records = if who >> 32 == 0 {
        Records::Heap
    } else {
        Records::Mappings
    };
    let mut stack_id = stack_id;
    let Some((slot, mut hit)) = stack_cache_slot(tgid, stack_id) else {
        return 0;
    };
    if !hit && stack_id != UNKNOWN_STACK && !keep_stack(tgid, stack_id) {
        count_loss!(
            ctx,
            Counter::StackFailed,
            "stack map full: allocations kept without a stack (raise --max-stacks)"
        );
        stack_id = UNKNOWN_STACK;
        hit = false;
    }
    let key = AllocKey::new(tgid, addr);
    let record = AllocRecord::new(size, now_ns(), stack_id, weight);
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
        return 0;
    }
    // SAFETY: this CPU's stack cache slot (per-CPU map, valid for the run, no other writer).
    let slot = unsafe { &mut *slot };
    if !hit {
        take_cache_slot(ctx, slot, tgid, stack_id);
    }
    slot.allocations += u64::from(weight);
    slot.bytes += size;
    count(Counter::Allocations);
    1
}

/// The kernel's count of recorded direct mappings, in `MMAP_STATE` (added to atomically).
#[inline(always)]
pub(crate) fn live_mappings() -> Option<*mut u64> {
    MMAP_STATE.get_ptr_mut(LIVE_MAPPINGS_SLOT)
}

/// True while any direct mapping is recorded: the kernel's count plus the pieces userspace
/// added (wrapping: the kernel may release a piece userspace made, taking its own slot below
/// zero).
#[inline(always)]
pub(crate) fn has_live_mappings() -> bool {
    let (Some(kernel), Some(user)) = (
        MMAP_STATE.get(LIVE_MAPPINGS_SLOT),
        MMAP_STATE.get(USER_MAPPINGS_SLOT),
    ) else {
        return false;
    };
    kernel.wrapping_add(*user) != 0
}
