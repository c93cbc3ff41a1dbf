//! What differs between processor architectures, in one place: the registers a program reads
//! (pc, stack and frame pointers, system call number and arguments), the system call numbers,
//! the call ABI, the thread pointer and the C library's thread layout. Nothing else in the
//! crate names a register. One file per architecture, chosen by the same `bpf_target_arch` as
//! aya-ebpf's `pt_regs` (see build.rs); another architecture is one more file and one line here.

#[cfg(bpf_target_arch = "x86_64")]
mod x86_64;
#[cfg(bpf_target_arch = "x86_64")]
pub(crate) use x86_64::*;

#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!("leaktracer's eBPF programs know x86-64 only: add an arch/<arch>.rs");
