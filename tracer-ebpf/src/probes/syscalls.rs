//! The mapping system calls (mmap, munmap, mremap, mprotect, brk): memory mapped by the call
//! itself, whoever makes it (a C library's wrapper, `syscall(SYS_mmap, ...)`, Go's runtime, a
//! static binary), with no trap. Two tiers run the same logic ([`enter`], [`exit`]):
//! - each call's own tracepoint (`syscalls/sys_exit_mmap`, ...; see
//!   `programs::Role::SyscallEvent`): a program runs for that call only, so a process making
//!   other calls pays nothing;
//! - the fallback, the machine-wide `sys_enter`/`sys_exit` raw tracepoints, where those events
//!   cannot be attached: every system call on the machine then costs a compare of its number.
//!
//! Each program looks the caller up in `TRACED` first. A mapping made inside an allocator call
//! (arena growth, a large malloc, jemalloc's extents) is the allocator's: the malloc that
//! caused it accounts for it (the nesting test of `pending`, on the user stack pointer at the
//! call).

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{AllocKey, Counter, programs, threads::THREAD_STACK};

use super::{
    mapping::{forget_reservations, page_end, release_range, remember_reservation, reservation_of},
    threads::thread_started,
};
use crate::{
    arch::{
        self,
        syscalls::{BRK, CLONE, CLONE3, MMAP, MPROTECT, MREMAP, MUNMAP},
    },
    atomic::atomic_add,
    counters::{count, count_loss},
    current::{jiffies, now_ns, thread_id, traced_tgid},
    maps::{BREAKS, CODE_MAPPED, MMAPS, SYSCALL_REGS, SYSCALL_STARTS, is_traced},
    pending::enclosing_call,
    probes::programs_are_empty,
    records::{Records, live_mappings, record, release_older},
};
use aya_ebpf::bindings::pt_regs;

const PROT_EXEC: u64 = 4;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_STACK: u64 = 0x2_0000;
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;

/// A failed call returns -errno, from -4095 up.
#[inline(always)]
fn failed(ret: u64) -> bool {
    ret >= 4095u64.wrapping_neg()
}

/// The caller's tgid when it is traced (see `current::traced_tgid`) and one of the processes
/// userspace attached to.
#[inline(always)]
fn traced_process() -> Option<u32> {
    let tgid = traced_tgid()?;
    is_traced(tgid).then_some(tgid)
}

/// This CPU's copy of the calling thread's user registers (`task_pt_regs(current)`: the
/// user's registers as the call entered the kernel), read from `regs`.
#[inline(always)]
fn user_regs(regs: u64) -> Option<*mut pt_regs> {
    let copy = SYSCALL_REGS.get_ptr_mut(0)?;
    // SAFETY: the helper copies kernel memory into this CPU's map value, and fails (no fault)
    // on a bad address.
    let read = unsafe {
        bpf_probe_read_kernel(
            copy.cast(),
            size_of::<pt_regs>() as u32,
            regs as *const core::ffi::c_void,
        )
    };
    (read == 0).then_some(copy)
}

/// True (and counted) when the call is made by an allocator call of this thread.
#[inline(always)]
fn inside_allocator(regs: *mut pt_regs) -> bool {
    if enclosing_call(thread_id(), arch::sp(regs), jiffies()).is_some() {
        count(Counter::AllocatorMmaps);
        return true;
    }
    false
}

/// Tells userspace that `tgid` mapped new code: it re-reads that process's maps and unwind
/// tables.
#[inline(always)]
fn code_mapped<C: EbpfContext>(ctx: &C, tgid: u32) {
    if CODE_MAPPED.output::<u32>(&tgid, 0).is_err() {
        count_loss!(
            ctx,
            Counter::CodeEventsLost,
            "new-code ring full: a new library may be symbolized late"
        );
    }
}

/// Records a mapping of `size` bytes at `start`, made by the call `regs` describe, with its
/// `flags` (`AllocRecord::flags`).
#[inline(always)]
fn record_mapping<C: EbpfContext>(
    ctx: &C,
    regs: *mut pt_regs,
    tgid: u32,
    start: u64,
    size: u64,
    flags: u32,
) {
    if !record(ctx, regs, Records::Mappings, tgid, start, size, 1) {
        return;
    }
    if let Some(live) = live_mappings() {
        atomic_add(live, 1);
    }
    mark_record(tgid, start, flags);
}

/// Sets `flags` on the mapping record at `start`, just made. Apart from `record` (which then
/// stays the same for every mapping): the verifier checks that long function once per call
/// site, not once per value the flags could take there.
#[inline(always)]
fn mark_record(tgid: u32, start: u64, flags: u32) {
    if flags == 0 {
        return;
    }
    if let Some(record) = MMAPS.get_ptr_mut(AllocKey::new(tgid, start)) {
        // SAFETY: a pointer to the map's value, valid for the run; one field is written.
        unsafe { (*record).flags = flags };
    }
}

/// The entry of munmap (`nr`) or mremap, for a traced process: munmap releases its range
/// here, before another thread can map it again; mremap stamps its start. `regs` finds the
/// user registers (asked only when needed).
#[inline(always)]
fn enter<C: EbpfContext>(ctx: &C, nr: u64, regs: impl FnOnce() -> u64) -> u32 {
    let Some(tgid) = traced_process() else {
        return 0;
    };
    if nr == MREMAP {
        let _ = SYSCALL_STARTS.insert(thread_id(), now_ns(), 0);
        return 0;
    }
    let Some(regs) = user_regs(regs()) else {
        return 0;
    };
    if inside_allocator(regs) {
        return 0;
    }
    let [start, length, ..] = arch::syscall_arguments(regs);
    forget_reservations(tgid, start, page_end(start, length));
    release_range(ctx, tgid, start, length);
    0
}

/// The return of mmap, mremap, mprotect, brk (`nr`), or of clone/clone3, for a traced process:
/// the mapping calls record what they made, with the stack of the call (the argument registers
/// are still the user's at the exit; only the return value's register changed); a new
/// thread's clone, returning `ret` 0 in that thread, says where its stack is.
#[inline(always)]
fn exit<C: EbpfContext>(ctx: &C, nr: u64, ret: u64, regs: impl FnOnce() -> u64) -> u32 {
    let Some(tgid) = traced_process() else {
        return 0;
    };
    let is_clone = nr == CLONE || nr == CLONE3;
    // The parent's return (the new thread's id) says nothing; the new thread's own (0) runs
    // on its new stack.
    if is_clone && ret != 0 {
        return 0;
    }
    if failed(ret) {
        if nr == MREMAP {
            let _ = SYSCALL_STARTS.remove(thread_id());
        }
        return 0;
    }
    let Some(regs) = user_regs(regs()) else {
        return 0;
    };
    if is_clone {
        thread_started(tgid, arch::sp(regs));
        return 0;
    }
    let [arg0, arg1, arg2, arg3] = arch::syscall_arguments(regs);
    match nr {
        MMAP => mmap_exit(ctx, regs, tgid, ret, arg1, arg2, arg3),
        MPROTECT => mprotect_exit(ctx, regs, tgid, arg0, arg1, arg2),
        BRK => brk_exit(ctx, regs, tgid, ret),
        _ => mremap_exit(ctx, regs, tgid, ret, arg0, arg2),
    }
    0
}

/// Fallback tier, `sys_enter`: every system call's entry on the machine (see [`enter`]).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscall_enter(ctx: RawTracePointContext) -> i32 {
    const PROGRAM: programs::Program = programs::SYSCALL_ENTER;
    const {
        assert!(super::same_name(PROGRAM.name, "syscall_enter"));
        assert!(super::same_name(
            programs::SYSCALL_ENTER_TRACEPOINT,
            "sys_enter"
        ));
    }
    let nr: u64 = ctx.arg(1);
    if nr != MUNMAP && nr != MREMAP || programs_are_empty() {
        return 0;
    }
    // The tracepoint's `regs` argument.
    enter(&ctx, nr, || ctx.arg(0)) as i32
}

/// Fallback tier, `sys_exit`: every system call's exit on the machine (see [`exit`]).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscall_exit(ctx: RawTracePointContext) -> i32 {
    const PROGRAM: programs::Program = programs::SYSCALL_EXIT;
    const {
        assert!(super::same_name(PROGRAM.name, "syscall_exit"));
        assert!(super::same_name(
            programs::SYSCALL_EXIT_TRACEPOINT,
            "sys_exit"
        ));
    }
    let Some(nr) = arch::syscall_number(ctx.arg(0)) else {
        return 0;
    };
    if !matches!(nr, MMAP | MPROTECT | BRK | MREMAP | CLONE | CLONE3) || programs_are_empty() {
        return 0;
    }
    exit(&ctx, nr, ctx.arg(1), || ctx.arg(0)) as i32
}

/// The calling thread's user registers, for a per-call tracepoint (whose record holds none).
#[inline(always)]
fn current_user_regs() -> u64 {
    // SAFETY: both helpers take no memory from us; `bpf_task_pt_regs` of the current task is
    // that task's register set, read through `user_regs`' checked copy.
    unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as u64 }
}

/// The call number of a per-call tracepoint's record (userspace checked its offset in every
/// event's format).
#[inline(always)]
fn event_call_number(ctx: &TracePointContext) -> Option<u64> {
    // SAFETY: the record is the event's, at least this long; the helper fails, without a
    // fault, otherwise.
    let nr = unsafe { ctx.read_at::<i32>(programs::SYSCALL_NR_OFFSET) }.ok()?;
    u64::try_from(nr).ok()
}

/// Per-call tier, the entries of munmap and mremap (`programs::SYS_ENTER_MAPPING`: one program
/// attached to both events; see [`enter`]).
#[tracepoint]
pub fn sys_enter_mapping(ctx: TracePointContext) -> u32 {
    const PROGRAM: programs::Program = programs::SYS_ENTER_MAPPING;
    const { assert!(super::same_name(PROGRAM.name, "sys_enter_mapping")) };
    if programs_are_empty() {
        return 0;
    }
    match event_call_number(&ctx) {
        Some(nr) if nr == MUNMAP || nr == MREMAP => enter(&ctx, nr, current_user_regs),
        _ => 0,
    }
}

/// Per-call tier, the exits of mmap, mprotect, brk, mremap, clone and clone3
/// (`programs::SYS_EXIT_MAPPING`: one program attached to each event; see [`exit`]).
#[tracepoint]
pub fn sys_exit_mapping(ctx: TracePointContext) -> u32 {
    const PROGRAM: programs::Program = programs::SYS_EXIT_MAPPING;
    const { assert!(super::same_name(PROGRAM.name, "sys_exit_mapping")) };
    if programs_are_empty() {
        return 0;
    }
    let Some(nr) = event_call_number(&ctx) else {
        return 0;
    };
    if !matches!(nr, MMAP | MPROTECT | BRK | MREMAP | CLONE | CLONE3) {
        return 0;
    }
    // SAFETY: as in `event_call_number` (the `ret` offset checked alike).
    let Ok(ret) = (unsafe { ctx.read_at::<u64>(programs::SYSCALL_EXIT_RET_OFFSET) }) else {
        return 0;
    };
    exit(&ctx, nr, ret, current_user_regs)
}

/// mmap(addr, length, prot, flags, fd, offset) returned `start`.
#[inline(always)]
fn mmap_exit<C: EbpfContext>(
    ctx: &C,
    regs: *mut pt_regs,
    tgid: u32,
    start: u64,
    length: u64,
    prot: u64,
    flags: u64,
) {
    if prot & PROT_EXEC != 0 {
        code_mapped(ctx, tgid);
    }
    if inside_allocator(regs) {
        return;
    }
    if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
        // Mapped over whatever was there: those mappings are gone.
        release_range(ctx, tgid, start, length);
    }
    // MAP_STACK's bit as THREAD_STACK (1) or 0: mapped for a thread's stack.
    const { assert!(THREAD_STACK == 1) };
    let stack = ((flags & MAP_STACK) >> MAP_STACK.trailing_zeros()) as u32;
    if prot == 0 {
        // PROT_NONE reserves address space; memory only once an mprotect opens part of it.
        remember_reservation(tgid, start, page_end(start, length), stack);
        count(Counter::Reservations);
        return;
    }
    if flags & MAP_ANONYMOUS == 0 {
        count(Counter::FileMappings);
        return;
    }
    // A thread stack without a guard page is mapped open at once.
    record_mapping(ctx, regs, tgid, start, length, stack);
}

/// mprotect(addr, length, prot) succeeded: inside a reservation, opening makes memory from
/// now on and closing (PROT_NONE) gives it back.
#[inline(always)]
fn mprotect_exit<C: EbpfContext>(
    ctx: &C,
    regs: *mut pt_regs,
    tgid: u32,
    start: u64,
    length: u64,
    prot: u64,
) {
    if prot & PROT_EXEC != 0 {
        code_mapped(ctx, tgid);
    }
    let end = page_end(start, length);
    if inside_allocator(regs) {
        return;
    }
    let Some(stack) = reservation_of(tgid, start, end) else {
        return;
    };
    if prot == 0 {
        release_range(ctx, tgid, start, length);
        return;
    }
    // SAFETY: only presence is checked. Opened already (a second mprotect changing the
    // protection): the first one holds the record.
    if unsafe { MMAPS.get(AllocKey::new(tgid, start)) }.is_some() {
        return;
    }
    // `reservation_of` says THREAD_STACK (1) or 0.
    record_mapping(ctx, regs, tgid, start, end - start, stack);
}

/// brk returned the new break `now`: growth outside the allocator is recorded as a mapping at
/// the old break, shrinking releases what lay above the new one. The first brk seen of a
/// process only tells where its break is.
#[inline(always)]
fn brk_exit<C: EbpfContext>(ctx: &C, regs: *mut pt_regs, tgid: u32, now: u64) {
    // SAFETY: the value is copied out at once.
    let before = unsafe { BREAKS.get(tgid) }.copied();
    if before != Some(now) {
        let _ = BREAKS.insert(tgid, now, 0);
    }
    let Some(before) = before else {
        return;
    };
    if before == now || inside_allocator(regs) {
        return;
    }
    if now > before {
        record_mapping(ctx, regs, tgid, before, now - before, 0);
    } else {
        release_range(ctx, tgid, now, before - now);
    }
}

/// mremap(old, old_size, new_size, ...) returned `new`: a mapping we recorded moves or
/// resizes (others predate the trace, or are the allocator's).
#[inline(always)]
fn mremap_exit<C: EbpfContext>(
    ctx: &C,
    regs: *mut pt_regs,
    tgid: u32,
    new: u64,
    old: u64,
    new_size: u64,
) {
    let tid = thread_id();
    // SAFETY: the value is copied out at once.
    let started = unsafe { SYSCALL_STARTS.get(tid) }.copied().unwrap_or(0);
    let _ = SYSCALL_STARTS.remove(tid);
    if inside_allocator(regs) {
        return;
    }
    let Some(moved) = release_older(Records::Mappings, tgid, old, started) else {
        return;
    };
    let recorded = record(ctx, regs, Records::Mappings, tgid, new, new_size, 1);
    if !recorded && let Some(live) = live_mappings() {
        atomic_add(live, 1u64.wrapping_neg());
    }
    if recorded {
        mark_record(tgid, new, moved.flags);
    }
}
