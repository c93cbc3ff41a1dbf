//! The CFI unwinder: walks a user stack row by row through the tables userspace compiled from
//! each object's `.eh_frame` (see `tracer_common::unwind`), so code built without frame
//! pointers gets its whole stack. One frame per `bpf_loop` iteration: find the mapping of the
//! pc, the object's row for it (both bounded binary searches over flat arrays), compute the
//! CFA, read the return address and the saved frame pointer, go on. Rows found are cached per
//! CPU by address, so a hot call site's frame costs one lookup instead of two searches. The
//! walk stops early in the code ranges the process's runtime registered (see `runtimes`).

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_user, generated::bpf_loop};
use tracer_common::{
    CachedRow, CfaRule, FpRule, MAX_STACK_DEPTH, UnwindEnd, UnwindMapping, UnwindProcess,
    UnwindRow,
    runtimes::{MAX_STOP_RANGES, in_stop_range},
    unwind::{
        MAPPING_SEARCH_STEPS, ROW_SEARCH_STEPS, TRAMPOLINE_ROWS, UNWIND_CACHE_SLOTS,
        UNWIND_FRAMES_SLOT,
    },
};

use crate::{
    arch,
    maps::{
        MAX_DEPTH, STACK_SCRATCH, UNWIND_CACHE, UNWIND_ENDS, UNWIND_MAPPINGS, UNWIND_PROCESSES,
        UNWIND_ROWS,
    },
    stack::mix,
};

/// The walk's state, on the caller's stack (bpf_loop hands the callback a pointer to it).
#[repr(C)]
struct Walk {
    /// The registers of the frame last recorded.
    pc: u64,
    sp: u64,
    /// The frame pointer; 0 once lost.
    fp: u64,
    hash: u64,
    /// Frames recorded in the scratch stack.
    depth: u64,
    mappings_first: u32,
    mappings_count: u32,
    /// The process table's generation (the row cache's tag).
    generation: u32,
    /// An [`UnwindEnd`], once the walk stopped.
    end: u32,
    /// The code ranges of the process's runtime (see `RuntimeProcess::stops`), where the walk
    /// stops: the runtime's frames stand for the rest.
    stops: [[u64; 2]; MAX_STOP_RANGES],
}

/// The process's tables, if userspace has written them.
#[inline(always)]
pub(crate) fn process_tables(tgid: u32) -> Option<UnwindProcess> {
    // SAFETY: the value is copied out at once.
    unsafe { UNWIND_PROCESSES.get(tgid) }.copied()
}

/// Walks the stack above the frame `(pc, sp, fp)` (already recorded as frame 0 of this CPU's
/// scratch stack, with `hash` its hash so far) and returns the stack's hash. The frames go to
/// the scratch stack, its depth is set, and how the walk ended is counted.
#[inline(always)]
pub(crate) fn walk_stack(
    tables: UnwindProcess,
    pc: u64,
    sp: u64,
    fp: u64,
    hash: u64,
    stops: [[u64; 2]; MAX_STOP_RANGES],
) -> u64 {
    let max_depth = (MAX_DEPTH.load() as u64).clamp(1, MAX_STACK_DEPTH as u64);
    let mut walk = Walk {
        pc,
        sp,
        fp,
        hash,
        depth: 1,
        mappings_first: tables.mappings_first,
        mappings_count: tables.mappings_count,
        generation: tables.generation,
        end: UnwindEnd::DepthLimit as u32,
        stops,
    };
    // SAFETY: the helper calls `unwind_frame` at most `max_depth - 1` times with a pointer to
    // `walk`, which outlives the call; flags must be 0.
    unsafe {
        bpf_loop(
            (max_depth - 1) as u32,
            unwind_frame as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    if let Some(stack) = STACK_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch slot, valid for the run.
        unsafe { (*stack).depth = walk.depth };
    }
    count_end(walk.end, walk.depth - 1);
    walk.hash
}

/// Counts a stack's end, and the frames its walk added.
#[inline(always)]
pub(crate) fn count_end(end: u32, frames: u64) {
    for (slot, add) in [(end, 1), (UNWIND_FRAMES_SLOT, frames)] {
        if let Some(counter) = UNWIND_ENDS.get_ptr_mut(slot) {
            // SAFETY: a per-CPU slot from a map lookup; no other CPU writes it.
            unsafe { *counter += add };
        }
    }
}

/// bpf_loop's callback: frame `index + 1`. 0 goes on, 1 stops.
#[inline(never)]
extern "C" fn unwind_frame(index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `Walk` given to it, on the caller's stack.
    let walk = unsafe { &mut *walk.cast::<Walk>() };
    match step(walk, index + 1) {
        Ok(()) => 0,
        Err(end) => {
            walk.end = end as u32;
            1
        }
    }
}

/// Steps from the last recorded frame to its caller and records it as frame `frame`.
///
/// The slot comes from bpf_loop's iteration index, not from a count kept in `walk`: the
/// verifier then checks one iteration of unknown index instead of one per depth.
#[inline(always)]
fn step(walk: &mut Walk, frame: u64) -> Result<(), UnwindEnd> {
    // A return address is just past its call, which may be a function's last instruction:
    // the call's own row is the one before it.
    let lookup = walk.pc.wrapping_sub(1);
    let row = match cached_row(lookup, walk.generation) {
        Some(row) => row,
        None => {
            let row = search_row(walk, lookup)?;
            cache_row(lookup, walk.generation, row);
            row
        }
    };
    let offset = row.cfa_offset as i64;
    let cfa = match row.cfa_rule {
        r if r == CfaRule::SpOffset as u8 => walk.sp.wrapping_add_signed(offset),
        r if r == CfaRule::FpOffset as u8 => {
            if walk.fp == 0 {
                return Err(UnwindEnd::BadFrame);
            }
            walk.fp.wrapping_add_signed(offset)
        }
        r if r == CfaRule::Plt as u8 => arch::plt_cfa(walk.pc, walk.sp, offset),
        r if r == CfaRule::End as u8 => return Err(UnwindEnd::Complete),
        _ => return Err(UnwindEnd::NoRule),
    };
    if cfa <= walk.sp {
        return Err(UnwindEnd::BadFrame);
    }
    let (ret, fp) = if row.fp_rule == FpRule::AtCfaOffset as u8 && row.fp_offset == -16 {
        // The usual frame (the frame pointer saved just below the return address): both in
        // one read.
        // SAFETY: the helper copies from user memory and fails (no fault) on a bad address.
        let [fp, ret] = unsafe { bpf_probe_read_user((cfa - 16) as *const [u64; 2]) }
            .map_err(|_| UnwindEnd::BadFrame)?;
        (ret, fp)
    } else {
        // SAFETY: as above.
        let ret = unsafe { bpf_probe_read_user((cfa - 8) as *const u64) }
            .map_err(|_| UnwindEnd::BadFrame)?;
        let fp = match row.fp_rule {
            r if r == FpRule::Unchanged as u8 => walk.fp,
            r if r == FpRule::AtCfaOffset as u8 => {
                let at = cfa.wrapping_add_signed(row.fp_offset as i64);
                // SAFETY: as above.
                unsafe { bpf_probe_read_user(at as *const u64) }.map_err(|_| UnwindEnd::BadFrame)?
            }
            _ => 0,
        };
        (ret, fp)
    };
    if ret == 0 {
        return Err(UnwindEnd::Complete);
    }
    let stack = STACK_SCRATCH.get_ptr_mut(0).ok_or(UnwindEnd::BadFrame)?;
    // SAFETY: this CPU's scratch slot, valid for the run; the index is checked.
    let slot = unsafe { (*stack).ips.get_mut(frame as usize) }.ok_or(UnwindEnd::DepthLimit)?;
    *slot = ret;
    walk.hash = mix(walk.hash, ret);
    walk.depth = frame + 1;
    walk.pc = ret;
    walk.sp = cfa;
    walk.fp = fp;
    if in_stop_range(&walk.stops, ret) {
        return Err(UnwindEnd::RuntimeCode);
    }
    Ok(())
}

/// The row for `lookup` through the process's tables: its mapping, then the object's row.
#[inline(always)]
fn search_row(walk: &Walk, lookup: u64) -> Result<UnwindRow, UnwindEnd> {
    let mapping = find_mapping(walk.mappings_first, walk.mappings_count, lookup)
        .ok_or(UnwindEnd::NoMapping)?;
    if mapping.rows_first == TRAMPOLINE_ROWS {
        return Err(UnwindEnd::Trampoline);
    }
    if mapping.rows_count == 0 {
        return Err(UnwindEnd::NoTable);
    }
    find_row(&mapping, lookup.wrapping_sub(mapping.bias)).ok_or(UnwindEnd::NoRule)
}

/// This CPU's cache slot for `pc`.
#[inline(always)]
fn cache_slot(pc: u64) -> Option<*mut CachedRow> {
    let hash = mix(0, pc);
    UNWIND_CACHE.get_ptr_mut((hash as u32) & (UNWIND_CACHE_SLOTS - 1))
}

/// The row cached for `pc` under `generation`, if any.
#[inline(always)]
fn cached_row(pc: u64, generation: u32) -> Option<UnwindRow> {
    // SAFETY: this CPU's slot (per-CPU map, valid for the run, no other writer meanwhile).
    let slot = unsafe { &*cache_slot(pc)? };
    (slot.pc == pc && slot.generation == generation).then_some(slot.row)
}

#[inline(always)]
fn cache_row(pc: u64, generation: u32, row: UnwindRow) {
    if let Some(slot) = cache_slot(pc) {
        // SAFETY: as in `cached_row`.
        unsafe {
            *slot = CachedRow {
                pc,
                generation,
                _pad: 0,
                row,
            }
        };
    }
}

/// A binary search's state, on the caller's stack: how many entries of the run
/// `[first, first + count)` have a key at or below `key` is found in `[low, high)`.
#[repr(C)]
struct Search {
    key: u64,
    first: u32,
    low: u32,
    high: u32,
    _pad: u32,
}

/// The last entry of a sorted run with a key at or below `key`, found by `steps` halvings,
/// each one call of `step` through bpf_loop (a loop the verifier checks once, not per
/// iteration and path).
#[inline(always)]
fn search(first: u32, count: u32, key: u64, steps: u32, step: *mut c_void) -> Option<u32> {
    let mut search = Search {
        key,
        first,
        low: 0,
        high: count,
        _pad: 0,
    };
    // SAFETY: the helper calls `step` at most `steps` times with a pointer to `search`, which
    // outlives the call; flags must be 0.
    unsafe { bpf_loop(steps, step, (&raw mut search).cast(), 0) };
    Some(first.wrapping_add(search.low.checked_sub(1)?))
}

/// One halving over `UNWIND_MAPPINGS` (keys: mapping starts).
#[inline(never)]
extern "C" fn mapping_search_step(_index: u64, search: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `Search` given to it, on the caller's stack.
    let search = unsafe { &mut *search.cast::<Search>() };
    if search.low >= search.high {
        return 1;
    }
    let middle = search.low + (search.high - search.low) / 2;
    let Some(mapping) = UNWIND_MAPPINGS.get(search.first.wrapping_add(middle)) else {
        return 1;
    };
    if mapping.start <= search.key {
        search.low = middle + 1;
    } else {
        search.high = middle;
    }
    0
}

/// One halving over `UNWIND_ROWS` (keys: row addresses).
#[inline(never)]
extern "C" fn row_search_step(_index: u64, search: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `Search` given to it, on the caller's stack.
    let search = unsafe { &mut *search.cast::<Search>() };
    if search.low >= search.high {
        return 1;
    }
    let middle = search.low + (search.high - search.low) / 2;
    let Some(row) = UNWIND_ROWS.get(search.first.wrapping_add(middle)) else {
        return 1;
    };
    if row.pc as u64 <= search.key {
        search.low = middle + 1;
    } else {
        search.high = middle;
    }
    0
}

/// The mapping of the process's run `[first, first + count)` that holds `pc`.
#[inline(always)]
fn find_mapping(first: u32, count: u32, pc: u64) -> Option<UnwindMapping> {
    let index = search(
        first,
        count,
        pc,
        MAPPING_SEARCH_STEPS,
        mapping_search_step as *mut c_void,
    )?;
    let mapping = *UNWIND_MAPPINGS.get(index)?;
    (pc < mapping.end).then_some(mapping)
}

/// The row of the mapping's object that covers `pc` (an object address).
#[inline(always)]
fn find_row(mapping: &UnwindMapping, pc: u64) -> Option<UnwindRow> {
    if pc > u32::MAX as u64 {
        return None;
    }
    let index = search(
        mapping.rows_first,
        mapping.rows_count,
        pc,
        ROW_SEARCH_STEPS,
        row_search_step as *mut c_void,
    )?;
    UNWIND_ROWS.get(index).copied()
}
