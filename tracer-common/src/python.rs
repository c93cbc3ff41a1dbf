//! CPython frames in stacks: what userspace tells the kernel about a traced interpreter
//! ([`PythonProcess`]), and how a Python frame sits in a [`crate::UserStack`].
//!
//! At each allocation of a process that runs CPython, the kernel finds the current thread's
//! `PyThreadState` (glibc's thread-specific data slot of the interpreter's pthread key, or 3.15's
//! thread-local variable: set while the thread runs Python, GIL held or not, see
//! [`ThreadSource`]) and walks its chain of `_PyInterpreterFrame`s, newest first. Each frame becomes one stack entry after the native
//! frames: the code object's address and the instruction offset, tagged with
//! [`PYTHON_FRAME`]. Userspace reads the code object (name, file, line table) from the target.
//! The eval loop's code is the process's stop ranges ([`crate::runtimes::RuntimeProcess`]): the
//! native walk ends at its first frame there, the Python frames stand for the rest.

use crate::runtimes::{
    RUNTIME_DATA_BITS, RUNTIME_DATA_WORDS, RuntimeId, runtime_entry, runtime_of,
};

/// Tag of a stack entry that is a Python frame: a runtime frame of [`RuntimeId::Python`] (see
/// [`crate::runtimes`]). Its [`RUNTIME_DATA_BITS`] bits of its own, from the top: [`PYTHON_ENTRY`],
/// the instruction index, the code object's address.
pub const PYTHON_FRAME: u64 = RuntimeId::Python.tag();
/// Tag of the oldest Python frame of one activation of the eval loop: the frames from the
/// previous entry (exclusive) to this one run in one C call of `_PyEval_EvalFrameDefault`.
pub const PYTHON_ENTRY: u64 = 1 << (RUNTIME_DATA_BITS - 1);
/// Bits of a code object's address (x86-64 user space with 4-level page tables).
pub const PYTHON_CODE_BITS: u32 = 47;
/// Low bits of a code object's address that are always 0 (objects are 8-byte aligned at the
/// least), left out of an entry.
pub const PYTHON_CODE_ALIGN_BITS: u32 = 3;
/// The code field of an entry: the address shifted right by [`PYTHON_CODE_ALIGN_BITS`].
pub const PYTHON_CODE_MASK: u64 = (1 << (PYTHON_CODE_BITS - PYTHON_CODE_ALIGN_BITS)) - 1;
/// Where the instruction index sits in an entry (just above the code field).
pub const PYTHON_INDEX_SHIFT: u32 = PYTHON_CODE_BITS - PYTHON_CODE_ALIGN_BITS;
/// The instruction index field: code units from the start of the bytecode, plus one (0 is the
/// "before the first instruction" of a frame just pushed), saturated at the maximum.
pub const PYTHON_INDEX_MASK: u64 = (1 << 15) - 1;

const _: () = {
    // The fields fill the runtime's bits exactly: entry flag, index, code.
    assert!(PYTHON_ENTRY == 1 << (PYTHON_INDEX_SHIFT + PYTHON_INDEX_MASK.count_ones()));
    assert!(PYTHON_ENTRY << 1 == 1 << RUNTIME_DATA_BITS);
};

/// Python frames kept per stack at most (after the native frames, within `MAX_STACK_DEPTH`).
pub const MAX_PYTHON_FRAMES: u32 = 96;

/// The stack entry of a Python frame: `code` is the code object's address, `offset` the
/// instruction's byte offset in its bytecode (negative: before the first instruction).
pub const fn python_entry(code: u64, offset: i64, entry: bool) -> u64 {
    let units = offset / 2 + 1;
    let index = if units < 0 {
        0
    } else if units as u64 > PYTHON_INDEX_MASK {
        PYTHON_INDEX_MASK
    } else {
        units as u64
    };
    runtime_entry(
        RuntimeId::Python,
        if entry { PYTHON_ENTRY } else { 0 }
            | (index << PYTHON_INDEX_SHIFT)
            | ((code >> PYTHON_CODE_ALIGN_BITS) & PYTHON_CODE_MASK),
    )
}

/// Whether a stack entry is a Python frame.
#[inline(always)]
pub const fn is_python_entry(ip: u64) -> bool {
    matches!(runtime_of(ip), Some(id) if id == RuntimeId::Python as u64)
}

/// A Python frame read back from a stack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PythonFrame {
    /// The code object's address in the target.
    pub code: u64,
    /// The instruction's byte offset (`-2`: before the first instruction; saturated for very
    /// long code objects).
    pub offset: i32,
    /// The oldest frame of its eval-loop activation.
    pub entry: bool,
}

impl PythonFrame {
    /// The frame of a stack entry, if it is one.
    pub const fn from_entry(ip: u64) -> Option<Self> {
        if !is_python_entry(ip) {
            return None;
        }
        let index = (ip >> PYTHON_INDEX_SHIFT) & PYTHON_INDEX_MASK;
        Some(Self {
            code: (ip & PYTHON_CODE_MASK) << PYTHON_CODE_ALIGN_BITS,
            offset: (index as i32 - 1) * 2,
            entry: ip & PYTHON_ENTRY != 0,
        })
    }
}

/// How the frames of one eval-loop activation are told apart.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationMarker {
    /// 3.11: the frame's `is_entry` byte is 1 on an activation's oldest frame.
    IsEntry = 1,
    /// 3.12: the frame's `owner` byte is `FRAME_OWNED_BY_CSTACK` on the shim frame the eval
    /// loop pushes below an activation; the shim itself is not a Python frame.
    CStackOwner = 2,
    /// 3.13+: the shim's executable is `None` (untagged: 3.14+ tag it), whatever its owner
    /// value (3.13's `FRAME_OWNED_BY_CSTACK` and 3.14's `FRAME_OWNED_BY_INTERPRETER` are both 3,
    /// but that is not published by the interpreter; `None` is).
    NoneExecutable = 3,
    /// 3.9 and 3.10: every Python call is its own C call of the eval loop, so every frame
    /// begins an activation.
    EveryFrame = 4,
}

/// Where the kernel finds the current thread's `PyThreadState`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadSource {
    /// 3.9–3.14: glibc's thread-specific data of the pthread key in the `Py_tss_t` at
    /// [`PythonProcess::tss`] (`_PyRuntime`'s `autoTSSkey`).
    TssKey = 0,
    /// 3.15+: a thread-local variable (`_Py_tss_gilstate`) of the executable's static TLS
    /// block, at [`PythonProcess::tss`] (an `i64`) bytes from the thread pointer.
    StaticTls = 1,
}

/// What the frame's instruction field holds.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstrKind {
    /// 3.11+: `instr_ptr`, a pointer into the code object's bytecode.
    Pointer = 0,
    /// 3.9: `f_lasti`, an `int`: the byte offset of the last instruction (-1 before the first).
    LastiBytes = 1,
    /// 3.10: `f_lasti`, an `int`: the index (in 2-byte code units) of the last instruction.
    LastiUnits = 2,
}

/// `_PyInterpreterFrame.owner` of a shim frame (3.12).
pub const FRAME_OWNED_BY_CSTACK: u8 = 3;

/// Low bits of a frame's executable that are no part of the object's address: 3.14+ keep a
/// `_PyStackRef` there, whose low bits are tags (3.14: 1 bit, 3.15: 2). Objects are at least
/// 8-byte aligned, so masking them is harmless on every version.
pub const EXECUTABLE_TAG_MASK: u64 = (1 << PYTHON_CODE_ALIGN_BITS) - 1;

/// Bytes of a frame the kernel reads (covers every field it needs, in every supported layout).
pub const FRAME_HEADER_BYTES: usize = 72;

/// Bytes of the kernel's per-CPU scratch a frame is read into: room for the larger of
/// [`FRAME_HEADER_BYTES`] and [`FRAME_OBJECT_BYTES`], plus a field's eight bytes past either
/// (the fields are read at masked offsets, see the kernel's `python::field`).
pub const FRAME_SCRATCH_BYTES: usize = 256;

/// Bytes of a `PyFrameObject` (3.9, 3.10) the kernel reads: every field it needs (`f_back`,
/// `f_code`, `f_lasti`) ends within them, and the object is larger (360 bytes at least).
pub const FRAME_OBJECT_BYTES: usize = 112;

/// A traced process's interpreter, as the kernel needs it: where its thread states are found
/// and the byte offsets of the fields it reads. The runtime data of the process's
/// [`RuntimeProcess`] (see [`PythonProcess::to_runtime_data`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonProcess {
    /// With [`ThreadSource::TssKey`]: the address of the interpreter's `Py_tss_t` (`{int
    /// _is_initialized; unsigned _key}`), the pthread key whose per-thread value is the thread's
    /// `PyThreadState`. With [`ThreadSource::StaticTls`]: the variable's offset from the thread
    /// pointer (an `i64`, negative).
    pub tss: u64,
    /// `&_Py_NoneStruct`: the executable of 3.13+'s shim frames.
    pub none: u64,
    /// Offset in `PyThreadState` of `cframe` (3.11, 3.12) or `current_frame` (3.13+).
    pub thread_frame: u16,
    /// Offset of `current_frame` in `_PyCFrame`, or [`NO_CFRAME`] when `thread_frame` points
    /// at the frame directly.
    pub cframe_frame: u16,
    /// Offsets in `_PyInterpreterFrame` (all below [`FRAME_HEADER_BYTES`]).
    pub frame_code: u16,
    pub frame_previous: u16,
    pub frame_instr: u16,
    /// Offset of the activation marker byte (`is_entry` or `owner`).
    pub frame_marker: u16,
    /// Offset of the bytecode in a code object (`co_code_adaptive`).
    pub code_bytecode: u16,
    /// An [`ActivationMarker`].
    pub marker: u8,
    /// A [`ThreadSource`].
    pub thread_source: u8,
    /// An [`InstrKind`].
    pub instr_kind: u8,
    pub _pad: u8,
    /// Offset in `PyThreadState` of `base_frame` (3.15+: the sentinel frame ending every
    /// thread's chain, which is no activation), 0 when there is none.
    pub thread_base_frame: u16,
    pub _pad2: [u8; 4],
}

impl PythonProcess {
    /// As the runtime data of its process's [`RuntimeProcess`]: the same bytes.
    pub fn to_runtime_data(&self) -> [u64; RUNTIME_DATA_WORDS] {
        // SAFETY: both are plain integers of the same size, without padding (see the asserts
        // below); the words' alignment is at least the struct's.
        unsafe { *(self as *const Self).cast::<[u64; RUNTIME_DATA_WORDS]>() }
    }

    /// The process a [`RuntimeProcess`]'s runtime data holds, in place (the kernel reads it
    /// from the map value: a copy costs the verifier more than the field reads).
    #[inline(always)]
    pub fn from_runtime_data(data: &[u64; RUNTIME_DATA_WORDS]) -> &Self {
        // SAFETY: as in `to_runtime_data`; every bit pattern is a valid `PythonProcess`.
        unsafe { &*(data as *const [u64; RUNTIME_DATA_WORDS]).cast::<Self>() }
    }
}

const _: () = {
    // No padding: the fields' sizes add up to the struct's, which is the runtime data's.
    assert!(size_of::<PythonProcess>() == 8 + 8 + 7 * 2 + 1 + 1 + 1 + 1 + 2 + 4);
    assert!(size_of::<PythonProcess>() == size_of::<[u64; RUNTIME_DATA_WORDS]>());
    assert!(align_of::<PythonProcess>() <= align_of::<u64>());
};

/// [`PythonProcess::cframe_frame`] of an interpreter without `_PyCFrame` (3.13+).
pub const NO_CFRAME: u16 = u16::MAX;

/// A stack with Python frames the kernel kept for the first time: userspace reads its code
/// objects while the process is alive (they may be gone by the time of the report).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewPythonStack {
    pub tgid: u32,
    pub _pad: u32,
    pub stack_id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let code = 0x7f12_3456_7890;
        for (offset, entry) in [(-2, false), (0, true), (12, false), (65_532, true)] {
            let frame = PythonFrame::from_entry(python_entry(code, offset, entry)).unwrap();
            assert_eq!(
                frame,
                PythonFrame {
                    code,
                    offset: offset as i32,
                    entry
                }
            );
        }
        // Saturated, never wrapped into another field.
        let far = PythonFrame::from_entry(python_entry(code, 1 << 20, false)).unwrap();
        assert_eq!((far.code, far.entry), (code, false));
        assert_eq!(far.offset, (PYTHON_INDEX_MASK as i32 - 1) * 2);
        assert_eq!(PythonFrame::from_entry(0x40_1000), None);
    }

    #[test]
    fn entries_keep_every_bit_of_an_aligned_code_address() {
        // The highest and lowest 8-byte aligned user addresses, with the largest index.
        for code in [(1 << PYTHON_CODE_BITS) - 8, 8] {
            let ip = python_entry(code, 65_532, true);
            assert_eq!(runtime_of(ip), Some(RuntimeId::Python as u64));
            assert_eq!(
                PythonFrame::from_entry(ip),
                Some(PythonFrame {
                    code,
                    offset: 65_532,
                    entry: true
                })
            );
        }
        // Another runtime's frame is not a Python frame.
        let other = crate::runtimes::RUNTIME_FRAME | (1 << crate::runtimes::RUNTIME_ID_SHIFT);
        assert_eq!(PythonFrame::from_entry(other), None);
    }

    #[test]
    fn a_process_round_trips_through_its_runtime_data() {
        let process = PythonProcess {
            tss: 0x7f00_0000_1234,
            none: 0x7f00_0000_5678,
            thread_frame: 56,
            cframe_frame: NO_CFRAME,
            frame_code: 1,
            frame_previous: 2,
            frame_instr: 3,
            frame_marker: 4,
            code_bytecode: 0xabcd,
            marker: ActivationMarker::CStackOwner as u8,
            thread_source: ThreadSource::StaticTls as u8,
            instr_kind: InstrKind::LastiUnits as u8,
            _pad: 0x5a,
            thread_base_frame: 0x1234,
            _pad2: [0; 4],
        };
        let data = process.to_runtime_data();
        assert_eq!(*PythonProcess::from_runtime_data(&data), process);
        // Little-endian words, fields in declaration order.
        assert_eq!(data[0], process.tss);
        assert_eq!(data[2] & 0xffff, 56);
        assert_eq!(data[3] >> 56, ThreadSource::StaticTls as u64);
        assert_eq!(data[4] & 0xff, InstrKind::LastiUnits as u64);
        assert_eq!((data[4] >> 8) & 0xff, 0x5a);
        assert_eq!((data[4] >> 16) & 0xffff, 0x1234);
    }
}
