//! The pending-call protocol: an entry program stores the call for its thread (`begin_call`),
//! the return program takes it back (`pending_entry`). A thread's slot in `PENDING` is
//! `tid % PENDING_SLOTS`, tagged with the thread id; a thread whose slot holds another thread's
//! live call uses `PENDING_OVERFLOW`.

use aya_ebpf::{bindings::BPF_ANY, programs::ProbeContext};
use tracer_common::{CallKind, Counter, PENDING_SLOTS, PendingCall, STALE_CALL_JIFFIES};

use crate::{
    arch,
    counters::{count, count_loss},
    current::{jiffies, now_ns, thread_id, traced_tgid},
    maps::{PENDING, PENDING_OVERFLOW},
};

/// This thread's pending-call entry: its slot when the slot is tagged with it, else its
/// overflow entry, if any.
#[inline(always)]
pub(crate) fn pending_entry(tid: u32) -> Option<*mut PendingCall> {
    let slot = PENDING.get_ptr_mut(tid % PENDING_SLOTS)?;
    // SAFETY: a pointer from an array lookup, valid for the run; a plain read of the tag.
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
pub(crate) fn enclosing_call(tid: u32, sp: u64, now_jiffies: u64) -> Option<PendingCall> {
    // SAFETY: a pointer from a map lookup, valid for the run; the call is copied out.
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
pub(crate) fn begin_call(ctx: &ProbeContext, kind: CallKind, size: u64, arg: u64) {
    if traced_tgid().is_none() {
        return;
    }
    let tid = thread_id();
    let sp = arch::sp(ctx.regs);
    let now_jiffies = jiffies();
    if enclosing_call(tid, sp, now_jiffies).is_some() {
        count(Counter::NestedCalls);
        return;
    }
    let releases_earlier = kind == CallKind::Realloc;
    let call = PendingCall {
        kind: kind as u32,
        tid,
        sp,
        size,
        arg,
        entry_ns: if releases_earlier { now_ns() } else { 0 },
        entry_jiffies: now_jiffies,
    };
    let Some(slot) = PENDING.get_ptr_mut(tid % PENDING_SLOTS) else {
        return;
    };
    // SAFETY: a pointer from an array lookup, valid for the run. Only this thread writes a slot
    // tagged with it; a slot taken over from another thread is one it no longer uses (idle or
    // stale).
    let holder = unsafe { &*slot };
    if holder.tid == tid || holder.kind == 0 || is_stale(holder, now_jiffies) {
        // SAFETY: as above.
        unsafe { *slot = call };
        return;
    }
    // The slot holds another thread's live call.
    if let Some(entry) = PENDING_OVERFLOW.get_ptr_mut(tid) {
        // SAFETY: this thread's own overflow entry, from a map lookup, valid for the run.
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
