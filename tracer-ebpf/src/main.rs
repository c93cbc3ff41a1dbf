//! leaktracer's kernel side: uprobes on the allocator's entry points and a uretprobe on their
//! returns, all in one object so they share their maps. Every allocation still outstanding is
//! kept in a per-address record (the lock-free record table in `records`, claimed with
//! compare-and-exchange, with a hash map as overflow); per-stack totals (everything ever
//! allocated) grow on allocations only. Frees touch no aggregate: what is outstanding is summed
//! by userspace from the records, which it reads in batches rather than one event per call.
//!
//! Call protocol (`pending`): an entry program stores a pending call for the thread; the shared
//! return program (`call_return`) finishes it. A call entered while another allocator call of
//! the same thread is running (deeper on the stack) is nested: the outer call already accounts
//! for it.
//!
//! The programs, their roles and the arguments they read are listed once, in
//! `tracer_common::programs`; `probes::entry_program!` declares each from its entry there.
//!
//! A stack (`stack`) is walked natively (`unwind`, by CFI, or by frame pointers) up to the
//! code a language runtime registered for the process, then that runtime's walker appends its
//! frames (`runtimes`, by the runtime's id; neither `stack` nor `unwind` names a runtime).
//! Everything particular to x86-64 is in `arch`.
#![no_std]
#![no_main]
// The bpf targets declare no atomics, so core has no AtomicU64: the intrinsics emit BPF's
// atomic add and compare-and-exchange directly (the latter needs the v3 code build.rs asks
// for; the crate builds with RUSTC_BOOTSTRAP=1 anyway).
#![allow(internal_features)]
// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]
#![feature(core_intrinsics, adt_const_params)]

mod arch;
mod atomic;
mod counters;
mod current;
mod maps;
mod pending;
mod probes;
mod records;
mod runtimes;
mod sampling;
mod stack;
mod tsd;
mod unwind;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
