//! Where exactly to put an entry probe.
//!
//! A uprobe traps once when the kernel can emulate the probed instruction (push, jmp, jcc, call,
//! nop) and twice when it must single-step it out of line (almost everything else). glibc's
//! `free` starts with `test %rdi,%rdi`, a single-stepped instruction, then a `je`, an emulated
//! one: probing the `je` halves the traps of every free.
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
//! Otherwise, the probe stays at the symbol's entry. An allocating call's return probe moves
//! with its entry probe (they share one address, one trap): the kernel takes the return address
//! from the top of the stack where the return probe fires, and the skipped instructions leave
//! the stack pointer and memory as they were at the entry. jemalloc's, tcmalloc's and mimalloc's
//! `malloc` start with a single-stepped `cmp` or `mov`, which on a VM costs more than the trap.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, Register,
};

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

/// True for instructions the x86 uprobe code emulates instead of single-stepping
/// (arch/x86/kernel/uprobes.c: branches, calls, pushes of a register, nops).
pub fn kernel_emulates(instruction: &Instruction) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Push => {
            instruction.op0_register() != Register::None && instruction.op0_register().is_gpr64()
        }
        Mnemonic::Nop => true,
        Mnemonic::Jmp | Mnemonic::Call => matches!(
            instruction.code(),
            Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Call_rel32_64
        ),
        _ => instruction.is_jcc_short_or_near(),
    }
}

/// The placement for a function whose first bytes are `code`, for a program that reads `reads`
/// (full 64-bit registers; the stack pointer is always kept).
pub fn place(code: &[u8], reads: &[Register]) -> Placement {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut skipped = Vec::new();
    let mut instruction = Instruction::default();
    for _ in 0..=MAX_SKIPPED {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        if kernel_emulates(&instruction) {
            // A branch back to the entry or the probe itself (a retry loop) would fire the
            // probe again within one call.
            if (instruction.is_jcc_short_or_near() || instruction.mnemonic() == Mnemonic::Jmp)
                && instruction.near_branch_target() <= instruction.ip()
            {
                break;
            }
            return Placement {
                delta: instruction.ip(),
                skipped,
            };
        }
        if instruction.flow_control() != FlowControl::Next {
            break;
        }
        let used = info.info(&instruction);
        let writes_read_register = used.used_registers().iter().any(|r| {
            matches!(
                r.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            ) && {
                let full = r.register().full_register();
                full == Register::RSP || reads.contains(&full)
            }
        });
        let writes_memory = used.used_memory().iter().any(|m| {
            matches!(
                m.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        });
        if writes_read_register || writes_memory {
            break;
        }
        skipped.push(instruction.to_string());
    }
    Placement::at_entry()
}

/// The x86-64 System V argument registers, in argument order.
const ARGUMENT_REGISTERS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

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
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn release_programs_read_their_argument_registers() {
        assert_eq!(registers_read_by("free_enter"), [Register::RDI]);
        assert_eq!(registers_read_by("pymalloc_free_enter"), [Register::RSI]);
        assert_eq!(registers_read_by("no_such_program"), ARGUMENT_REGISTERS);
    }

    #[test]
    fn glibc_free_is_probed_at_its_je() {
        // test %rdi,%rdi ; je +0xc2 ; push %rbp
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xc2, 0, 0, 0, 0x55];
        let placement = place(&code, &[Register::RDI]);
        assert_eq!(placement.delta, 3);
        assert_eq!(placement.skipped, vec!["test rdi,rdi".to_string()]);
    }

    #[test]
    fn jemalloc_free_is_probed_at_its_first_branch() {
        // Debian's libjemalloc.so.2 free: nine loads and arithmetic (no store, rdi only read),
        // then `jne`.
        let code = [
            0x48, 0x89, 0xf8, 0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, 0x48, 0x89, 0xf9, 0x48,
            0xc1, 0xe8, 0x1a, 0x48, 0x81, 0xe1, 0x00, 0x00, 0x00, 0xc0, 0x25, 0xf0, 0x00, 0x00,
            0x00, 0x64, 0x48, 0x03, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00, 0x48, 0x01, 0xd0, 0x48,
            0x3b, 0x88, 0xb0, 0x01, 0x00, 0x00, 0x0f, 0x85, 0x8a, 0x00, 0x00, 0x00,
        ];
        let placement = place(&code, &[Register::RDI]);
        assert_eq!(placement.delta, 0x30, "{placement:?}");
        assert_eq!(placement.skipped.len(), 9);
        assert_sound(&code, &placement, &[Register::RDI], "jemalloc free");
    }

    #[test]
    fn a_branch_back_to_the_entry_keeps_the_entry() {
        // retry: mov (%rip),%rax ; test %rax,%rax ; jne retry
        let code = [0x48, 0x8b, 0x05, 0, 0, 0, 0, 0x48, 0x85, 0xc0, 0x75, 0xf4];
        assert_eq!(place(&code, &[Register::RDI]).delta, 0);
        // ...and a forward one moves.
        let forward = [0x48, 0x8b, 0x05, 0, 0, 0, 0, 0x48, 0x85, 0xc0, 0x75, 0x10];
        assert_eq!(place(&forward, &[Register::RDI]).delta, 10);
    }

    #[test]
    fn an_emulated_first_instruction_stays() {
        // push %r12 (malloc)
        assert_eq!(place(&[0x41, 0x54, 0x55], &[Register::RDI]).delta, 0);
    }

    #[test]
    fn writing_a_read_register_or_the_stack_keeps_the_entry() {
        // mov %rdi,%rbx is fine, mov $1,%edi is not (rdi is read), sub $0x58,%rsp is not.
        assert_eq!(place(&[0x48, 0x89, 0xfb, 0x55], &[Register::RDI]).delta, 3);
        assert_eq!(place(&[0xbf, 1, 0, 0, 0, 0x55], &[Register::RDI]).delta, 0);
        assert_eq!(
            place(&[0x48, 0x83, 0xec, 0x58, 0x55], &[Register::RDI]).delta,
            0
        );
        // mov $0xb,%eax ; syscall (munmap): the syscall is a control transfer.
        assert_eq!(
            place(
                &[0xb8, 0x0b, 0, 0, 0, 0x0f, 0x05],
                &[Register::RDI, Register::RSI]
            )
            .delta,
            0
        );
        // A store to memory is never skipped.
        assert_eq!(place(&[0x48, 0x89, 0x07, 0x55], &[Register::RSI]).delta, 0);
    }

    /// Checks a placement against the rule independently of [`place`]'s walk: the probed
    /// instruction is the entry or emulated, and each skipped one falls through and writes no
    /// memory and no register in `reads` or the stack pointer.
    fn assert_sound(code: &[u8], placement: &Placement, reads: &[Register], what: &str) {
        let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
        let mut info = InstructionInfoFactory::new();
        for (skipped, instruction) in decoder.iter().enumerate() {
            if instruction.ip() == placement.delta {
                assert!(
                    placement.delta == 0 || kernel_emulates(&instruction),
                    "{what}: probed instruction {instruction} is emulated"
                );
                assert_eq!(skipped, placement.skipped.len(), "{what}");
                return;
            }
            assert_eq!(
                instruction.flow_control(),
                FlowControl::Next,
                "{what}: {instruction}"
            );
            let used = info.info(&instruction);
            for register in used.used_registers() {
                let written = matches!(
                    register.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                );
                let full = register.register().full_register();
                assert!(
                    !(written && (reads.contains(&full) || full == Register::RSP)),
                    "{what}: {instruction} writes {full:?}"
                );
            }
            assert!(
                used.used_memory().iter().all(|m| !matches!(
                    m.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                )),
                "{what}: {instruction} writes memory"
            );
        }
        panic!(
            "{what}: the probe at +{} is not an instruction boundary",
            placement.delta
        );
    }

    /// The release-side probes on the real allocator builds the end-to-end tests run (glibc,
    /// musl, jemalloc, tcmalloc, mimalloc as Debian ships them; `cargo xtask test` installs
    /// them): every placement follows the rule, and glibc's free moves past its `test`.
    #[test]
    fn real_allocator_builds_get_sound_placements() {
        let builds = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-musl/libc.so",
            "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
            "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
            "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
        ];
        for build in builds {
            let path = std::path::Path::new(build);
            if !path.exists() && std::env::var_os("LEAKTRACER_TEST_TOOLS").is_none() {
                // A plain `cargo test` on a machine without the package: say so, go on.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped {build}: not installed (`cargo xtask test` installs it)"
                );
                continue;
            }
            assert!(
                path.exists(),
                "{build} missing: run `cargo xtask test`, which installs it"
            );
            let data = std::fs::read(path).unwrap();
            let offsets = crate::attach::elf::function_offsets(path, &["free"]).unwrap();
            assert!(offsets.contains_key("free"), "{build} exports free");
            for (function, offset) in &offsets {
                let reads = registers_read_by("free_enter");
                let code = &data[*offset as usize..(*offset as usize + 64).min(data.len())];
                let placement = place(code, &reads);
                eprintln!(
                    "{build} {function}: +{} after {:?}",
                    placement.delta, placement.skipped
                );
                assert_sound(code, &placement, &reads, &format!("{build} {function}"));
            }
            if build.ends_with("libc.so.6") {
                let code = &data[offsets["free"] as usize..][..64];
                assert_eq!(
                    place(code, &registers_read_by("free_enter")).skipped,
                    ["test rdi,rdi"]
                );
            }
        }
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
        let placement = place(&data[start..start + 64], &[Register::RDI]);
        if placement.delta > 0 {
            let mut decoder = Decoder::with_ip(
                64,
                &data[start + placement.delta as usize..],
                0,
                DecoderOptions::NONE,
            );
            assert!(kernel_emulates(&decoder.decode()));
        }
    }
}
