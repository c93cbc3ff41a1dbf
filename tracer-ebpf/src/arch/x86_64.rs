//! x86-64: `pt_regs`'s registers, the system call ABI and numbers, the call instruction, the
//! PLT's stubs, the thread pointer (`fsbase`) and glibc's `struct pthread`.

use aya_ebpf::{
    Global,
    bindings::pt_regs,
    helpers::{
        bpf_probe_read_kernel,
        generated::{self, bpf_get_current_task},
    },
};

/// The instruction pointer of a user register set (at a return probe: already back in the
/// caller).
#[inline(always)]
pub(crate) fn pc(regs: *const pt_regs) -> u64 {
    // SAFETY: `regs` is a register set valid for the program's run (the probe's context, or
    // this CPU's copy of a system call's).
    unsafe { (*regs).rip }
}

/// The stack pointer.
#[inline(always)]
pub(crate) fn sp(regs: *const pt_regs) -> u64 {
    // SAFETY: as in `pc`.
    unsafe { (*regs).rsp }
}

/// The frame pointer (`rbp`; a general register in code built without frame pointers).
#[inline(always)]
pub(crate) fn fp(regs: *const pt_regs) -> u64 {
    // SAFETY: as in `pc`.
    unsafe { (*regs).rbp }
}

/// The first four arguments of a system call, as the user passed them (the kernel's ABI:
/// `rdi`, `rsi`, `rdx`, `r10`). Still the user's at the call's exit: only the return value's
/// register changed.
#[inline(always)]
pub(crate) fn syscall_arguments(regs: *const pt_regs) -> [u64; 4] {
    // SAFETY: as in `pc`.
    unsafe { [(*regs).rdi, (*regs).rsi, (*regs).rdx, (*regs).r10] }
}

/// The number of the system call whose kernel register set (a raw `sys_exit` tracepoint's
/// first argument) is at `kernel_regs`: `orig_rax` (`rax` holds the result by then).
#[inline(always)]
pub(crate) fn syscall_number(kernel_regs: u64) -> Option<u64> {
    // SAFETY: only the field's address is computed; the helper reads it, failing (no fault) on
    // a bad address.
    unsafe {
        let mut nr = 0u64;
        let field = core::ptr::addr_of!((*(kernel_regs as *const pt_regs)).orig_rax);
        let read = generated::bpf_probe_read_kernel((&raw mut nr).cast(), 8, field.cast());
        (read == 0).then_some(nr)
    }
}

/// System call numbers.
pub(crate) mod syscalls {
    pub(crate) const MMAP: u64 = 9;
    pub(crate) const MPROTECT: u64 = 10;
    pub(crate) const MUNMAP: u64 = 11;
    pub(crate) const BRK: u64 = 12;
    pub(crate) const MREMAP: u64 = 25;
    pub(crate) const CLONE: u64 = 56;
    pub(crate) const CLONE3: u64 = 435;
}

/// Bytes a call pushes (its return address): a function's stack pointer at its return is the
/// one at its entry plus this.
pub(crate) const RETURN_ADDRESS_BYTES: u64 = 8;

/// The CFA of a frame in a PLT stub (the `CfaRule::Plt` rows): 16-byte stubs that push one word
/// at byte `offset` (`jmp *GOT; push n; jmp PLT0`), so the CFA is one word further once `pc`
/// passed it.
#[inline(always)]
pub(crate) fn plt_cfa(pc: u64, sp: u64, offset: i64) -> u64 {
    let pushed = if (pc & 15) as i64 >= offset { 8 } else { 0 };
    sp + 8 + pushed
}

/// Offset of `thread.fsbase` in the kernel's `task_struct` (from its BTF): the current thread's
/// thread pointer, where glibc keeps its `struct pthread`. 0: unknown (no thread pointer, so no
/// runtime frames that need one).
#[unsafe(no_mangle)]
pub(crate) static FSBASE_OFFSET: Global<u32> = Global::new(0);

/// The current thread's thread pointer (its TLS base), when the kernel's layout is known.
#[inline(always)]
pub(crate) fn thread_pointer() -> Option<u64> {
    let offset = FSBASE_OFFSET.load();
    if offset == 0 {
        return None;
    }
    // SAFETY: a helper without arguments; the task is only read through the kernel-read helper.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: the helper copies from kernel memory and fails (no fault) on a bad address.
    unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const u64) }.ok()
}

/// glibc (2.34+) on x86-64: `struct pthread`'s `specific_1stblock` (the first 32 keys' slots)
/// and `specific` (pointers to the further blocks of 32), from the thread pointer. Checked
/// against the disassembly of `pthread_getspecific`.
pub(crate) const TSD_FIRST_BLOCK: u64 = 0x310;
pub(crate) const TSD_BLOCKS: u64 = 0x510;
