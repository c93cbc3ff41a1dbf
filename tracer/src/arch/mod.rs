//! What differs between processor architectures, in one place:
//! - the general-purpose registers of a stopped thread and where each sits in ptrace's set
//!   ([`general`]: pc, sp, fp, arguments, return value, system call number, thread pointer),
//!   the register sets to read and the vector lanes in them ([`vector_words`]);
//! - the red zone below the stack pointer ([`RED_ZONE`]);
//! - where the kernel keeps a thread's thread pointer, by its BTF name
//!   ([`THREAD_POINTER_MEMBER`]);
//! - call-frame information: the register numbers and the PLT stubs' rule ([`cfi`]);
//! - the instruction decoder probe placement reads code with ([`decode`]), the argument
//!   registers a program reads, and the fixed addresses a function reads or compares with
//!   ([`references`], how a runtime's allocator table is found in a stripped build);
//! - how a function returns a thread-local variable ([`thread_local_load`]: CPython 3.15's
//!   thread state).
//!
//! Only x86-64 is built ([`x86_64`]). Another architecture is one more file beside it with the
//! same items, chosen by `target_arch` below. Nothing outside this folder names a register
//! (`tracer/tests/source_rules.rs` checks). System call numbers come from `libc`
//! (`libc::SYS_bpf`), which has them for each architecture.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as native;

#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "leaktracer is built for x86-64 only: add tracer/src/arch/<arch>.rs with the items of x86_64.rs"
);

pub use native::{
    ARGUMENT_REGISTERS, GENERAL_REGSET, Instruction, Load, RED_ZONE, RELATIVE_RELOCATION,
    References, Register, STACK_POINTER, SYMBOL_RELOCATIONS, THREAD_POINTER_MEMBER,
    ThreadLocalLoad, VECTOR_REGSET, VECTOR_REGSET_BYTES, cfi, decode, general, references,
    thread_local_load, tracks_indirect_branches, vector_words,
};

#[cfg(test)]
pub(crate) use native::own_registers;
