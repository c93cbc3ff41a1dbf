//! x86-64 (System V ABI, Linux): the registers and register sets, the red zone, the CFI
//! register numbers and PLT rule, the kernel's thread pointer, and the instruction decoder
//! (iced-x86) that probe placement reads code with.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
};

/// Where each register sits in the general-purpose set a stopped thread's registers are read
/// as (`struct user_regs_struct`, PTRACE_GETREGSET `NT_PRSTATUS`), in 8-byte words.
pub mod general {
    /// How many words the set holds.
    pub const COUNT: usize = 27;
    /// The program counter (`rip`).
    pub const PC: usize = 16;
    /// The stack pointer (`rsp`).
    pub const SP: usize = 19;
    /// The frame pointer (`rbp`).
    pub const FP: usize = 4;
    /// The argument registers in argument order (`rdi`, `rsi`, `rdx`, `rcx`, `r8`, `r9`).
    pub const ARGUMENTS: [usize; 6] = [14, 13, 12, 11, 9, 8];
    /// The return value (`rax`).
    pub const RETURN_VALUE: usize = 10;
    /// The system call number a thread stopped in a system call entered with (`orig_rax`).
    pub const SYSCALL_NUMBER: usize = 15;
    /// The thread pointer, where thread-local storage starts (`fs_base`).
    pub const THREAD_POINTER: usize = 21;
}

/// The ptrace register set of the general-purpose registers (`NT_PRSTATUS`).
pub const GENERAL_REGSET: usize = 1;
/// The ptrace register set of the vector registers: the XSAVE area (`NT_X86_XSTATE`).
pub const VECTOR_REGSET: usize = 0x202;
/// Room for the largest XSAVE area a CPU has today (AVX-512 with AMX tiles stays below).
pub const VECTOR_REGSET_BYTES: usize = 16 * 1024;

/// The 8-byte lanes of an XSAVE area, as PTRACE_GETREGSET `NT_X86_XSTATE` gives it, that are
/// not zero (components the thread has not used read as their init state, zero): XMM0-15, and
/// the YMM upper halves and AVX-512 state when the CPU has them. Compilers keep pointers there.
pub fn vector_words(xsave: &[u64]) -> Vec<u64> {
    // XMM0-15 sit in the legacy area at byte 160; the other components where CPUID leaf 0xD
    // says, present when XCR0 (saved at byte 464) enables them.
    let mut words: Vec<u64> = xsave.iter().skip(160 / 8).take(256 / 8).copied().collect();
    let xcr0 = xsave.get(464 / 8).copied().unwrap_or(0);
    // 2: YMM upper halves; 5: AVX-512 opmasks; 6: ZMM upper halves; 7: ZMM16-31.
    for component in [2u32, 5, 6, 7] {
        if xcr0 & (1 << component) == 0 {
            continue;
        }
        let (size, offset) = component_place(component);
        let (start, end) = (offset as usize / 8, (offset + size) as usize / 8);
        if let Some(lanes) = xsave.get(start..end) {
            words.extend_from_slice(lanes);
        }
    }
    words.retain(|w| *w != 0);
    words
}

/// The (size, offset) of an XSAVE component in the standard format.
fn component_place(component: u32) -> (u32, u32) {
    // CPUID leaf 0xD exists on every CPU with XSAVE, which NT_X86_XSTATE implies.
    let leaf = std::arch::x86_64::__cpuid_count(0xd, component);
    (leaf.eax, leaf.ebx)
}

/// The ELF relocation that sets a word to the object's load address plus its addend (how a
/// position-independent object's data points at its own functions).
pub const RELATIVE_RELOCATION: u32 = object::elf::R_X86_64_RELATIVE;

/// The ELF relocations that set a word to a symbol's address plus an addend (a global offset
/// table's entry, a pointer to an exported function or object).
pub const SYMBOL_RELOCATIONS: [u32; 2] = [object::elf::R_X86_64_GLOB_DAT, object::elf::R_X86_64_64];

/// True when the kernel tracks `pid`'s indirect branches (IBT, in `/proc/PID/status`): an
/// indirect call to anything but a landing pad (`endbr64`) then faults. Linux does not offer
/// IBT to user code today; this is the guard for the day it does.
pub fn tracks_indirect_branches(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status.lines().any(|line| {
            line.starts_with("x86_Thread_features:") && line.split_whitespace().any(|f| f == "ibt")
        })
    })
}

/// Leaf functions may keep data in the 128 bytes below the stack pointer (the ABI's red zone).
pub const RED_ZONE: u64 = 128;

/// Where the kernel keeps a thread's thread pointer (its FS base): this member of the struct
/// `task_struct.thread` is, as named in the kernel's BTF.
pub const THREAD_POINTER_MEMBER: (&str, &str) = ("thread_struct", "fsbase");

/// Call-frame information (DWARF CFI) on x86-64: register numbers and the PLT stubs' rule.
pub mod cfi {
    use gimli::{Register, X86_64};

    pub const STACK_POINTER: Register = X86_64::RSP;
    pub const FRAME_POINTER: Register = X86_64::RBP;
    /// The return-address column.
    pub const RETURN_ADDRESS: Register = X86_64::RA;
    /// Where a caller's return address sits from the CFA: `call` pushed it just below.
    pub const RETURN_ADDRESS_AT: i64 = -8;
    /// The CFA at a function's first instruction: the stack pointer plus this (the return
    /// address `call` pushed). A range whose first row says otherwise continues a frame set up
    /// elsewhere (a part of a function the compiler split off, such as GCC's `.cold`).
    pub const ENTRY_CFA_OFFSET: i64 = 8;

    /// A register's name as CFI dumps print it (readelf's columns).
    pub fn register_name(register: Register) -> &'static str {
        X86_64::register_name(register).unwrap_or("?")
    }

    /// The PLT stubs' CFA expression, as GNU ld writes it: `RSP + 8 + ((RIP & 15) >= N) << 3`,
    /// with N at the byte marked here (lit11 for `.plt`, lit10 in some layouts).
    pub const PLT_EXPRESSION: [u8; 11] = [
        0x77, 0x08, // DW_OP_breg7 (rsp) 8
        0x80, 0x00, // DW_OP_breg16 (rip) 0
        0x3f, // DW_OP_lit15
        0x1a, // DW_OP_and
        0x3b, // DW_OP_lit11 (N)
        0x2a, // DW_OP_ge
        0x33, // DW_OP_lit3
        0x24, // DW_OP_shl
        0x22, // DW_OP_plus
    ];
    pub const PLT_THRESHOLD_AT: usize = 6;

    /// The threshold N of a PLT expression, if `bytes` is one.
    pub fn plt_threshold(bytes: &[u8]) -> Option<i32> {
        if bytes.len() != PLT_EXPRESSION.len() {
            return None;
        }
        let same_elsewhere = bytes
            .iter()
            .zip(PLT_EXPRESSION)
            .enumerate()
            .all(|(i, (a, b))| i == PLT_THRESHOLD_AT || *a == b);
        let literal = bytes[PLT_THRESHOLD_AT];
        // DW_OP_lit0 is 0x30.
        (same_elsewhere && (0x30..=0x4f).contains(&literal)).then(|| i32::from(literal - 0x30))
    }

    /// The CFA of a PLT stub with threshold `threshold` at `pc`: 8 more once its push has run.
    pub fn plt_cfa(sp: u64, pc: u64, threshold: i64) -> u64 {
        let pushed = if (pc & 15) as i64 >= threshold { 8 } else { 0 };
        sp + 8 + pushed
    }
}

/// A register as the decoder names it: always the full 64-bit one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register(iced_x86::Register);

/// The stack pointer, which a skipped instruction must never write.
pub const STACK_POINTER: Register = Register(iced_x86::Register::RSP);

/// The argument registers, in argument order.
pub const ARGUMENT_REGISTERS: [Register; 6] = [
    Register(iced_x86::Register::RDI),
    Register(iced_x86::Register::RSI),
    Register(iced_x86::Register::RDX),
    Register(iced_x86::Register::RCX),
    Register(iced_x86::Register::R8),
    Register(iced_x86::Register::R9),
];

/// One decoded instruction, as probe placement weighs it.
#[derive(Clone, Debug)]
pub struct Instruction {
    /// Bytes from the start of the decoded code.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u64,
    /// It does nothing at all (a nop of any length): running it is running nothing.
    pub is_nop: bool,
    /// It is an indirect branch's landing pad (`endbr64`), which does nothing either where
    /// indirect branch tracking is off (it always is for user code on Linux today).
    pub is_landing_pad: bool,
    /// A uprobe here is one the kernel (6.18 on) may rewrite into a call to its trampoline (a
    /// 5-byte nop): never probed.
    pub kernel_rewrites_probe: bool,
    /// As a disassembler writes it (Intel syntax), for `--verbose`.
    pub text: String,
    /// The kernel's uprobe code emulates it instead of single-stepping it out of line.
    pub emulated: bool,
    /// Where it jumps, for a direct jump (conditional or not).
    pub jump_target: Option<u64>,
    /// It always goes on to the next instruction (no branch, call, return or system call).
    pub falls_through: bool,
    /// It writes memory.
    pub writes_memory: bool,
    /// The registers it writes (or may write), as full 64-bit registers.
    pub written: Vec<Register>,
}

/// The instructions at the start of `code`, in order, up to the first that cannot be decoded.
pub fn decode(code: &[u8]) -> impl Iterator<Item = Instruction> + '_ {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    std::iter::from_fn(move || {
        if !decoder.can_decode() {
            return None;
        }
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return None;
        }
        let writes = |access: OpAccess| {
            matches!(
                access,
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        };
        let used = info.info(&instruction);
        let written = used
            .used_registers()
            .iter()
            .filter(|r| writes(r.access()))
            .map(|r| Register(r.register().full_register()))
            .collect();
        let writes_memory = used.used_memory().iter().any(|m| writes(m.access()));
        let is_jump = instruction.is_jcc_short_or_near() || instruction.mnemonic() == Mnemonic::Jmp;
        let is_nop = instruction.mnemonic() == Mnemonic::Nop;
        Some(Instruction {
            offset: instruction.ip(),
            length: instruction.len() as u64,
            is_nop,
            is_landing_pad: instruction.mnemonic() == Mnemonic::Endbr64,
            kernel_rewrites_probe: is_nop && instruction.len() == 5,
            text: instruction.to_string(),
            emulated: kernel_emulates(&instruction),
            jump_target: is_jump.then(|| instruction.near_branch_target()),
            falls_through: instruction.flow_control() == FlowControl::Next,
            writes_memory,
            written,
        })
    })
}

/// How a function that returns a thread-local variable reads it (see [`thread_local_load`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadLocalLoad {
    /// At this constant offset from the thread pointer (the local-exec model: a variable of the
    /// executable, whose static TLS block the linker placed).
    Offset(i64),
    /// At the offset the word at this address holds (the initial-exec model: a GOT slot the
    /// dynamic linker fills in at load; an address in the object's own numbering).
    OffsetAt(u64),
}

/// How the function whose code is `code`, at `address` in its object, returns a thread-local
/// variable, when all it does is load one and return it (such as CPython 3.15's
/// `PyGILState_GetThisThreadState`): `mov rax, fs:[d]`, or `mov r, [rip+slot]` then
/// `mov rax, fs:[r]`, then `ret` (an `endbr64` first is allowed).
pub fn thread_local_load(code: &[u8], address: u64) -> Option<ThreadLocalLoad> {
    use iced_x86::{OpKind, Register as R};
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut next = || {
        let instruction = decoder.can_decode().then(|| decoder.decode())?;
        (!instruction.is_invalid()).then_some(instruction)
    };
    let mut first = next()?;
    if first.mnemonic() == Mnemonic::Endbr64 {
        first = next()?;
    }
    let is_load = |i: &iced_x86::Instruction| {
        i.mnemonic() == Mnemonic::Mov
            && i.op_count() == 2
            && i.op0_kind() == OpKind::Register
            && i.op0_register().is_gpr64()
            && i.op1_kind() == OpKind::Memory
            && i.memory_index() == R::None
    };
    let returns =
        |i: Option<iced_x86::Instruction>| i.is_some_and(|i| i.mnemonic() == Mnemonic::Ret);
    if !is_load(&first) {
        return None;
    }
    if first.segment_prefix() == R::FS && first.memory_base() == R::None {
        let offset = first.memory_displacement64() as i64;
        return (first.op0_register() == R::RAX && returns(next()))
            .then_some(ThreadLocalLoad::Offset(offset));
    }
    if first.memory_base() != R::RIP || first.segment_prefix() != R::None {
        return None;
    }
    let slot = first.ip_rel_memory_address();
    let second = next()?;
    let reads_slot = is_load(&second)
        && second.segment_prefix() == R::FS
        && second.memory_base() == first.op0_register()
        && second.memory_displacement64() == 0
        && second.op0_register() == R::RAX;
    (reads_slot && returns(next())).then_some(ThreadLocalLoad::OffsetAt(slot))
}

/// A pointer-sized word a function reads (or branches through) at an address it knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// At a fixed address (relative to the program counter).
    At(u64),
    /// At `offset` past the address held in the word at `pointer` (a global reached through
    /// the global offset table in position-independent code).
    Through { pointer: u64, offset: u64 },
}

/// What a function's code says of fixed addresses: the words it reads, and the address-sized
/// constants it compares with or takes (immediates, and program-counter-relative `lea`s).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    pub loads: Vec<Load>,
    pub constants: Vec<u64>,
}

/// The [`References`] of `code`, which sits at `address`: its addresses are absolute. Read
/// straight through, as the small functions it is for are laid out.
pub fn references(code: &[u8], address: u64) -> References {
    let mut found = References::default();
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    // Registers holding a word loaded from a fixed address, and that address.
    let mut pointers: Vec<(iced_x86::Register, u64)> = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            break;
        }
        let mut loaded_from = None;
        for operand in 0..instruction.op_count() {
            match instruction.op_kind(operand) {
                OpKind::Memory if instruction.is_ip_rel_memory_operand() => {
                    let target = instruction.ip_rel_memory_address();
                    if instruction.mnemonic() == Mnemonic::Lea {
                        found.constants.push(target);
                    } else if instruction.memory_size().size() == 8 {
                        found.loads.push(Load::At(target));
                        loaded_from = Some(target);
                    }
                }
                OpKind::Memory
                    if instruction.memory_index() == iced_x86::Register::None
                        && instruction.memory_size().size() == 8
                        && instruction.mnemonic() != Mnemonic::Lea =>
                {
                    let base = instruction.memory_base().full_register();
                    if let Some(&(_, pointer)) = pointers.iter().find(|(r, _)| *r == base) {
                        found.loads.push(Load::Through {
                            pointer,
                            offset: instruction.memory_displacement64(),
                        });
                    }
                }
                OpKind::Immediate32to64 | OpKind::Immediate32 | OpKind::Immediate64 => {
                    found.constants.push(instruction.immediate(operand));
                }
                _ => {}
            }
        }
        for used in info.info(&instruction).used_registers() {
            if matches!(
                used.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            ) {
                let full = used.register().full_register();
                pointers.retain(|(r, _)| *r != full);
            }
        }
        if let Some(target) = loaded_from
            && instruction.mnemonic() == Mnemonic::Mov
            && instruction.op0_kind() == OpKind::Register
            && instruction.op0_register().is_gpr64()
        {
            pointers.push((instruction.op0_register(), target));
        }
    }
    found
}

/// True for instructions the x86 uprobe code emulates instead of single-stepping
/// (arch/x86/kernel/uprobes.c: branches, calls, pushes of a register, nops).
fn kernel_emulates(instruction: &iced_x86::Instruction) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Push => {
            instruction.op0_register() != iced_x86::Register::None
                && instruction.op0_register().is_gpr64()
        }
        Mnemonic::Nop => true,
        Mnemonic::Jmp | Mnemonic::Call => matches!(
            instruction.code(),
            Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Call_rel32_64
        ),
        _ => instruction.is_jcc_short_or_near(),
    }
}

/// This thread's `(pc, sp, fp)` where it is expanded, for tests that unwind their own stack.
#[cfg(test)]
macro_rules! own_registers {
    () => {{
        let (sp, fp, pc): (u64, u64, u64);
        // SAFETY: reads three registers into outputs; touches no memory.
        unsafe {
            std::arch::asm!(
                "mov {0}, rsp", "mov {1}, rbp", "lea {2}, [rip]",
                out(reg) sp, out(reg) fp, out(reg) pc,
            );
        }
        (pc, sp, fp)
    }};
}
#[cfg(test)]
pub(crate) use own_registers;

#[cfg(test)]
mod tests {
    use std::{io::Write as _, mem::offset_of};

    use iced_x86::Register as R;

    use super::*;
    use crate::attach::placement::{place, registers_read_by, tests::assert_sound};

    #[test]
    fn general_register_indices_are_those_of_user_regs_struct() {
        type Regs = libc::user_regs_struct;
        let word = |offset: usize| offset / 8;
        assert_eq!(general::COUNT, size_of::<Regs>() / 8);
        assert_eq!(general::PC, word(offset_of!(Regs, rip)));
        assert_eq!(general::SP, word(offset_of!(Regs, rsp)));
        assert_eq!(general::FP, word(offset_of!(Regs, rbp)));
        assert_eq!(
            general::ARGUMENTS,
            [
                word(offset_of!(Regs, rdi)),
                word(offset_of!(Regs, rsi)),
                word(offset_of!(Regs, rdx)),
                word(offset_of!(Regs, rcx)),
                word(offset_of!(Regs, r8)),
                word(offset_of!(Regs, r9)),
            ]
        );
        assert_eq!(general::RETURN_VALUE, word(offset_of!(Regs, rax)));
        assert_eq!(general::SYSCALL_NUMBER, word(offset_of!(Regs, orig_rax)));
        assert_eq!(general::THREAD_POINTER, word(offset_of!(Regs, fs_base)));
    }

    #[test]
    fn vector_words_are_the_lanes_xcr0_enables_without_zeros() {
        let mut xsave = vec![0u64; VECTOR_REGSET_BYTES / 8];
        // XMM0's low lane, XMM15's high lane; a word past the XMM area is not a lane.
        xsave[160 / 8] = 0x1111;
        xsave[(160 + 256) / 8 - 1] = 0x2222;
        xsave[(160 + 256) / 8] = 0x9999;
        let (ymm_size, ymm_offset) = component_place(2);
        let ymm = ymm_offset as usize / 8;
        if ymm_size > 0 {
            xsave[ymm] = 0x3333;
        }
        assert_eq!(vector_words(&xsave), [0x1111, 0x2222]);
        // With the YMM upper halves enabled in XCR0, their lanes count too.
        xsave[464 / 8] = 1 << 2;
        let expected: &[u64] = if ymm_size > 0 {
            &[0x1111, 0x2222, 0x3333]
        } else {
            &[0x1111, 0x2222]
        };
        assert_eq!(vector_words(&xsave), expected);
    }

    #[test]
    fn a_thread_local_load_is_read_from_the_code_that_returns_it() {
        // CPython 3.15's PyGILState_GetThisThreadState in Debian's executable.
        let local_exec = [
            0xf3, 0x0f, 0x1e, 0xfa, // endbr64
            0x64, 0x48, 0x8b, 0x04, 0x25, 0xd8, 0xff, 0xff, 0xff, // mov rax, fs:[-0x28]
            0xc3, // ret
        ];
        assert_eq!(
            thread_local_load(&local_exec, 0x42fa7d),
            Some(ThreadLocalLoad::Offset(-0x28))
        );
        // A shared library's: the offset is in a GOT slot (rip-relative).
        let initial_exec = [
            0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00, // mov rax, [rip+0x10]
            0x64, 0x48, 0x8b, 0x00, // mov rax, fs:[rax]
            0xc3, // ret
        ];
        assert_eq!(
            thread_local_load(&initial_exec, 0x1000),
            Some(ThreadLocalLoad::OffsetAt(0x1000 + 7 + 0x10))
        );
        // 3.14's reads a pthread key instead: not a thread-local load.
        let tss = [
            0xf3, 0x0f, 0x1e, 0xfa, // endbr64
            0x83, 0x3d, 0x3b, 0x49, 0x77, 0x00, 0x00, // cmp dword [rip+...], 0
            0x74, 0x0a, // je
        ];
        assert_eq!(thread_local_load(&tss, 0x42c79a), None);
        // A load that is not returned (another register, or no ret after it).
        let other_register = [0x64, 0x48, 0x8b, 0x0c, 0x25, 0xd8, 0xff, 0xff, 0xff, 0xc3];
        assert_eq!(thread_local_load(&other_register, 0), None);
        assert_eq!(thread_local_load(&local_exec[..13], 0), None);
    }

    #[test]
    fn plt_expressions_are_recognized_and_others_are_not() {
        use cfi::{PLT_EXPRESSION, PLT_THRESHOLD_AT, plt_threshold};
        assert_eq!(plt_threshold(&PLT_EXPRESSION), Some(11));
        let mut ten = PLT_EXPRESSION;
        ten[PLT_THRESHOLD_AT] = 0x3a;
        assert_eq!(plt_threshold(&ten), Some(10));
        let mut other = PLT_EXPRESSION;
        other[1] = 0x10;
        assert_eq!(plt_threshold(&other), None);
        assert_eq!(plt_threshold(&PLT_EXPRESSION[..10]), None);
    }

    #[test]
    fn cfi_names_are_readelfs() {
        assert_eq!(cfi::register_name(cfi::STACK_POINTER), "rsp");
        assert_eq!(cfi::register_name(cfi::FRAME_POINTER), "rbp");
    }

    // Probe placement on x86-64 machine code (the rule is `attach/placement.rs`'s).

    const RDI: Register = Register(R::RDI);
    const RSI: Register = Register(R::RSI);

    #[test]
    fn release_programs_read_their_argument_registers() {
        assert_eq!(registers_read_by("free_enter"), [RDI]);
        assert_eq!(registers_read_by("pymalloc_free_enter"), [RSI]);
        assert_eq!(registers_read_by("no_such_program"), ARGUMENT_REGISTERS);
        assert_eq!(
            ARGUMENT_REGISTERS.map(|r| r.0),
            [R::RDI, R::RSI, R::RDX, R::RCX, R::R8, R::R9]
        );
    }

    #[test]
    fn glibc_free_is_probed_at_its_je() {
        // test %rdi,%rdi ; je +0xc2 ; push %rbp
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xc2, 0, 0, 0, 0x55];
        let placement = place(&code, &[RDI]);
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
        let placement = place(&code, &[RDI]);
        assert_eq!(placement.delta, 0x30, "{placement:?}");
        assert_eq!(placement.skipped.len(), 9);
        assert_sound(&code, &placement, &[RDI], "jemalloc free");
    }

    #[test]
    fn a_branch_back_to_the_entry_keeps_the_entry() {
        // retry: mov (%rip),%rax ; test %rax,%rax ; jne retry
        let code = [0x48, 0x8b, 0x05, 0, 0, 0, 0, 0x48, 0x85, 0xc0, 0x75, 0xf4];
        assert_eq!(place(&code, &[RDI]).delta, 0);
        // ...and a forward one moves.
        let forward = [0x48, 0x8b, 0x05, 0, 0, 0, 0, 0x48, 0x85, 0xc0, 0x75, 0x10];
        assert_eq!(place(&forward, &[RDI]).delta, 10);
    }

    #[test]
    fn a_five_byte_nop_is_never_probed() {
        // nopl 0x0(%rax,%rax,1) ; push %rbp: the kernel (6.18) would rewrite a probe on the
        // nop into a call to its trampoline; the push behind it takes the probe.
        let code = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55];
        let placement = place(&code, &[RDI]);
        assert_eq!(placement.delta, 5);
        assert_eq!(placement.skipped, ["nop [rax+rax]"]);
        // ...and when nothing behind it may be probed, the entry moves past it alone.
        let code = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0xbf, 1, 0, 0, 0, 0x55];
        assert_eq!(place(&code, &[RDI]).delta, 5);
        // A 4-byte nop is probed as the kernel emulates it.
        assert_eq!(place(&[0x0f, 0x1f, 0x40, 0x00, 0x55], &[RDI]).delta, 0);
    }

    #[test]
    fn landing_pads_and_nops_are_told() {
        // endbr64 ; nopw 0x0(%rax,%rax,1) (9 bytes) ; xchg %ax,%ax ; nopl 5 bytes ; push %rbp
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0x66, 0x90, 0x0f, 0x1f,
            0x44, 0, 0, 0x55,
        ];
        let decoded: Vec<(u64, u64, bool, bool, bool)> = decode(&code)
            .map(|i| {
                (
                    i.offset,
                    i.length,
                    i.is_landing_pad,
                    i.is_nop,
                    i.kernel_rewrites_probe,
                )
            })
            .collect();
        assert_eq!(
            decoded,
            [
                (0, 4, true, false, false),
                (4, 9, false, true, false),
                (13, 2, false, true, false),
                (15, 5, false, true, true),
                (20, 1, false, false, false),
            ]
        );
    }

    #[test]
    fn references_are_loads_of_words_and_compared_constants() {
        // Debian's python3.11 PyObject_Calloc's tail, at 0x57f5dd: mov %rsi,%rdx ; mov
        // %rdi,%rsi ; mov 0x3da956(%rip),%rdi ; jmp *0x3da960(%rip)
        let tail = [
            0x48, 0x89, 0xf2, 0x48, 0x89, 0xfe, 0x48, 0x8b, 0x3d, 0x56, 0xa9, 0x3d, 0x00, 0xff,
            0x25, 0x60, 0xa9, 0x3d, 0x00,
        ];
        let found = references(&tail, 0x57f5dd);
        assert_eq!(found.loads, [Load::At(0x959f40), Load::At(0x959f50)]);
        assert!(found.constants.is_empty());
        // PyObject_Malloc's check at 0x4fb35a: mov 0x45ebe7(%rip),%rax ; cmp $0x4fb450,%rax ;
        // and a PIC build's lea 0x10(%rip),%rdx.
        let check = [
            0x48, 0x8b, 0x05, 0xe7, 0xeb, 0x45, 0x00, 0x48, 0x3d, 0x50, 0xb4, 0x4f, 0x00, 0x48,
            0x8d, 0x15, 0x10, 0x00, 0x00, 0x00,
        ];
        let found = references(&check, 0x4fb35a);
        assert_eq!(found.loads, [Load::At(0x959f48)]);
        assert_eq!(found.constants, [0x4fb450, 0x4fb35a + 20 + 0x10]);
    }

    #[test]
    fn references_through_the_global_offset_table_are_followed() {
        // pyenv's libpython3.12 PyObject_Malloc at 0x1cf438: mov 0x3748c1(%rip),%rax (the
        // GOT entry of _PyRuntime) ; mov 0xb0(%rax),%rdi ; jmp *0xb8(%rax) ; and once %rax is
        // written, what it held is forgotten: mov $1,%eax ; mov 0x8(%rax),%rdi.
        let code = [
            0x48, 0x8b, 0x05, 0xc1, 0x48, 0x37, 0x00, 0x48, 0x8b, 0xb8, 0xb0, 0x00, 0x00, 0x00,
            0xff, 0xa0, 0xb8, 0x00, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x78,
            0x08,
        ];
        let got = 0x543d00;
        assert_eq!(
            references(&code, 0x1cf438).loads,
            [
                Load::At(got),
                Load::Through {
                    pointer: got,
                    offset: 0xb0
                },
                Load::Through {
                    pointer: got,
                    offset: 0xb8
                },
            ]
        );
    }

    #[test]
    fn an_emulated_first_instruction_stays() {
        // push %r12 (malloc)
        assert_eq!(place(&[0x41, 0x54, 0x55], &[RDI]).delta, 0);
    }

    #[test]
    fn writing_a_read_register_or_the_stack_keeps_the_entry() {
        // mov %rdi,%rbx is fine, mov $1,%edi is not (rdi is read), sub $0x58,%rsp is not.
        assert_eq!(place(&[0x48, 0x89, 0xfb, 0x55], &[RDI]).delta, 3);
        assert_eq!(place(&[0xbf, 1, 0, 0, 0, 0x55], &[RDI]).delta, 0);
        assert_eq!(place(&[0x48, 0x83, 0xec, 0x58, 0x55], &[RDI]).delta, 0);
        // mov $0xb,%eax ; syscall (munmap): the syscall is a control transfer.
        assert_eq!(
            place(&[0xb8, 0x0b, 0, 0, 0, 0x0f, 0x05], &[RDI, RSI]).delta,
            0
        );
        // A store to memory is never skipped.
        assert_eq!(place(&[0x48, 0x89, 0x07, 0x55], &[RSI]).delta, 0);
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
}
