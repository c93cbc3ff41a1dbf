//! Where to probe and the probes themselves.
//!
//! [`allocator`] finds the object that serves `malloc` for the target (and the one that provides
//! `mmap`), and the file offset of every allocator entry point in it; [`probes`] loads the eBPF
//! programs and attaches them there, for the target's pid only.

pub mod allocator;
pub mod detach;
pub mod elf;
pub mod placement;
pub mod probes;
