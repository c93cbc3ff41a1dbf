//! Where exactly to put an entry probe.
//!
//! A uprobe traps once when the kernel can emulate the probed instruction (push, jmp, jcc, call,
//! nop) and twice when it must single-step it out of line (almost everything else). glibc's
//! `free` starts with a `test` of its argument, a single-stepped instruction, then a `je`, an
//! emulated one: probing the `je` halves the traps of every free.
//!
//! The rule: walk the first instructions; stop at the first one the kernel emulates and probe
//! there, provided every instruction skipped on the way
//! - falls through to the next (no branch, call, return or syscall: every path from the entry
//!   reaches the probe), and
//! - writes none of the registers the program reads (its arguments and the stack pointer) and
//!   no memory,
//!
//! and the probed instruction, when a branch, does not jump back to it or before it.
//!
//! Otherwise, the probe stays at the symbol's entry. A 5-byte nop is never probed: kernel 6.18
//! rewrites a uprobe there into a call to a trampoline of its own (which crashed forked
//! children here), so it is skipped like any instruction that does nothing, at the entry too. An allocating call's return probe moves
//! with its entry probe (they share one address, one trap): the kernel takes the return address
//! from the top of the stack where the return probe fires, and the skipped instructions leave
//! the stack pointer and memory as they were at the entry. jemalloc's, tcmalloc's and mimalloc's
//! `malloc` start with a single-stepped `cmp` or `mov`, which on a VM costs more than the trap.
//!
//! The instructions are decoded by [`arch::decode`], which also says which ones the kernel
//! emulates; the x86-64 cases are tested there, on real allocators' code.

use crate::arch::{self, ARGUMENT_REGISTERS, Register};

/// How many instructions may be skipped (jemalloc's `free` reaches its first branch after 9).
const MAX_SKIPPED: usize = 12;

/// Where to probe, relative to the symbol, and what was skipped to get there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Bytes from the symbol's entry to the probed instruction.
    pub delta: u64,
    /// The skipped instructions, as text, for `--verbose`.
    pub skipped: Vec<String>,
}

impl Placement {
    fn at_entry() -> Self {
        Self {
            delta: 0,
            skipped: Vec::new(),
        }
    }
}

/// The placement for a function whose first bytes are `code`, for a program that reads `reads`
/// (full 64-bit registers; the stack pointer is always kept).
pub fn place(code: &[u8], reads: &[Register]) -> Placement {
    let mut skipped = Vec::new();
    let mut entry = Placement::at_entry();
    for instruction in arch::decode(code).take(MAX_SKIPPED + 1) {
        if instruction.kernel_rewrites_probe {
            // Every path from the entry runs it and it does nothing: skipped, and the entry
            // itself moves past it when it comes first.
            if entry.delta == instruction.offset {
                entry.delta += instruction.length;
                entry.skipped.push(instruction.text.clone());
            }
            skipped.push(instruction.text);
            continue;
        }
        if instruction.emulated {
            // A branch back to the entry or the probe itself (a retry loop) would fire the
            // probe again within one call.
            if instruction
                .jump_target
                .is_some_and(|target| target <= instruction.offset)
            {
                break;
            }
            return Placement {
                delta: instruction.offset,
                skipped,
            };
        }
        if !instruction.falls_through {
            break;
        }
        let writes_read_register = instruction
            .written
            .iter()
            .any(|r| *r == arch::STACK_POINTER || reads.contains(r));
        if writes_read_register || instruction.writes_memory {
            break;
        }
        skipped.push(instruction.text);
    }
    entry
}

/// The registers an entry program reads (besides the stack pointer): those of the arguments
/// its `tracer_common::programs` entry lists; every argument register for a program not there.
pub fn registers_read_by(program: &str) -> Vec<Register> {
    match tracer_common::programs::by_name(program) {
        Some(program) => program
            .arguments
            .iter()
            .map(|&argument| ARGUMENT_REGISTERS[argument])
            .collect(),
        None => ARGUMENT_REGISTERS.to_vec(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks a placement against the rule independently of [`place`]'s walk: the probed
    /// instruction is the entry or emulated, and each skipped one falls through and writes no
    /// memory and no register in `reads` or the stack pointer.
    pub(crate) fn assert_sound(code: &[u8], placement: &Placement, reads: &[Register], what: &str) {
        for (skipped, instruction) in arch::decode(code).enumerate() {
            let text = &instruction.text;
            if instruction.offset == placement.delta {
                assert!(
                    placement.delta == 0 || instruction.emulated,
                    "{what}: probed instruction {text} is emulated"
                );
                assert_eq!(skipped, placement.skipped.len(), "{what}");
                return;
            }
            assert!(instruction.falls_through, "{what}: {text}");
            for full in &instruction.written {
                assert!(
                    !(reads.contains(full) || *full == arch::STACK_POINTER),
                    "{what}: {text} writes {full:?}"
                );
            }
            assert!(!instruction.writes_memory, "{what}: {text} writes memory");
        }
        panic!(
            "{what}: the probe at +{} is not an instruction boundary",
            placement.delta
        );
    }

    #[test]
    fn this_process_free_gets_an_emulated_placement() {
        // Whatever libc this test runs on: the probed instruction is the entry or one the
        // kernel emulates, reached by skipping only harmless instructions.
        let maps = crate::target::maps::read_maps(std::process::id()).unwrap();
        let libc = maps
            .iter()
            .filter_map(|m| m.clean_path())
            .find(|p| p.contains("libc.so"))
            .unwrap()
            .to_string();
        let offsets =
            crate::attach::elf::function_offsets(std::path::Path::new(&libc), &["free"]).unwrap();
        let data = std::fs::read(&libc).unwrap();
        let start = offsets["free"] as usize;
        let placement = place(&data[start..start + 64], &[ARGUMENT_REGISTERS[0]]);
        if placement.delta > 0 {
            let probed = arch::decode(&data[start + placement.delta as usize..])
                .next()
                .unwrap();
            assert!(probed.emulated);
        }
    }
}
