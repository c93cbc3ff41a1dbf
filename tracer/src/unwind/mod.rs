//! DWARF CFI unwinding for code built without frame pointers (most of what operators run):
//! userspace compiles each mapped object's call-frame information into rows, and the kernel
//! walks a stack through them at every allocation's return (`tracer-ebpf/src/unwind.rs`).
//!
//! - [`compile`]: `.eh_frame` to rows, per object, cached per device and inode;
//! - [`space`]: which ranges of the kernel's flat arrays are in use;
//! - [`in_maps`]: writing processes' tables into the eBPF maps and keeping them current.

pub mod compile;
pub mod in_maps;
pub mod space;

pub use compile::{
    CodeLayout, MappedTable, Registers, StepError, TableCache, TableStats, UnwindError,
    UnwindTable, compile_file, load_bias, step,
};
pub use in_maps::{TablesInMaps, UnwindMaps};
