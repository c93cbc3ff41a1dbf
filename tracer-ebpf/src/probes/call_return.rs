//! The shared return probe of every allocating call: finishes the thread's pending call.

use aya_ebpf::helpers::bpf_probe_read_user;
use tracer_common::{CallKind, programs};

use super::return_program;
use crate::{
    arch::{self, RETURN_ADDRESS_BYTES},
    current::{thread_id, traced_tgid},
    pending::pending_entry,
    records::{Records, release_older},
    sampling::record_heap,
};

return_program! {
    /// Return of every tracked call: records what the call produced.
    call_return = programs::CALL_RETURN, |ctx| {
        let Some(tgid) = traced_tgid() else {
            return 0;
        };
        let tid = thread_id();
        let Some(slot) = pending_entry(tid) else {
            return 0;
        };
        // SAFETY: this thread's pending entry (from a map lookup, valid for the run), copied.
        let call = unsafe { *slot };
        // The outer call returns to its caller's stack: entry sp + the popped return address.
        if call.kind == 0 || arch::sp(ctx.regs) != call.sp.wrapping_add(RETURN_ADDRESS_BYTES) {
            return 0;
        }
        // SAFETY: as above; only this thread writes its own entry.
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
                    // realloc(p, 0) freed p; a NULL return with size > 0 is a failure that
                    // frees nothing.
                    release_older(Records::Heap, tgid, old, call.entry_ns);
                }
            }
            k if k == CallKind::PosixMemalign as u32 => {
                if ret as u32 == 0
                    // SAFETY: the helper copies from user memory and fails (no fault) on a bad
                    // address.
                    && let Ok(ptr) = unsafe { bpf_probe_read_user(call.arg as *const u64) }
                    && ptr != 0
                {
                    record_heap(&ctx, tgid, ptr, call.size);
                }
            }
            _ => {}
        }
    }
}
