//! Where to probe and the probes themselves.
//!
//! [`allocator`] finds the object that serves `malloc` for the target (and the one that provides
//! `mmap`), and the file offset of every allocator entry point in it ([`elf`] reads the
//! symbols, [`placement`] moves an entry probe past instructions the kernel would single-step;
//! a runtime's allocator called through a table of function pointers is found by
//! [`crate::runtimes::allocator_table`]);
//! [`probes`] loads the eBPF programs and attaches them there, for the target's pid only: with
//! one `uprobe_multi` link per program and object where the kernel has them ([`multi`], through
//! [`bpf_sys`]), else one perf event per probe; [`detach`] closes links from several threads;
//! [`map_memory`] says what the kernel maps will take before they are created; [`btf`] reads the
//! kernel struct offsets some programs need from the running kernel's BTF; [`syscall_events`]
//! attaches the mapping programs to each mapping call's own tracepoint (the raw
//! `sys_enter`/`sys_exit` as the fallback).

pub mod allocator;
pub mod bpf_sys;
pub mod btf;
pub mod detach;
pub mod elf;
pub mod map_memory;
pub mod multi;
pub mod placement;
pub mod probes;
pub mod syscall_events;
