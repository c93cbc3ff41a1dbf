//! Where CPython 3.9 to 3.13 keep what the walk and the code-object reader need: a table per
//! minor version (checked on Debian's 3.11.2 and pyenv's 3.9.18, 3.10.13, 3.11.7, 3.12.1,
//! 3.13.0, see `docs/design/python-frames.md`), and on 3.13+ the interpreter's own
//! `_Py_DebugOffsets`, which is preferred where present. A version not listed is not walked.

use tracer_common::python::{ActivationMarker, InstrKind, NO_CFRAME, PythonProcess};

/// Offsets in a code object and in the strings and bytes it points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub firstlineno: u64,
    pub filename: u64,
    pub name: u64,
    pub qualname: u64,
    pub linetable: u64,
    /// `co_code_adaptive`: the bytecode, inline in the code object.
    pub bytecode: u64,
    /// Data of a compact ASCII `str` (`sizeof(PyASCIIObject)`).
    pub ascii_data: u64,
    /// Data of another compact `str` (`sizeof(PyCompactUnicodeObject)`).
    pub compact_data: u64,
}

/// `PyObject.ob_type`.
pub const OBJECT_TYPE: u64 = 8;
/// `PyVarObject.ob_size` (a bytes object's length).
pub const OBJECT_SIZE: u64 = 16;
/// `PyBytesObject.ob_sval`.
pub const BYTES_DATA: u64 = 32;
/// `PyASCIIObject.length` and `.state`.
pub const STR_LENGTH: u64 = 16;
pub const STR_STATE: u64 = 32;

/// One interpreter version's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// (major, minor).
    pub version: (u8, u8),
    /// `Py_tss_t autoTSSkey` in `_PyRuntime` (the pthread key of thread states).
    pub tss: u64,
    pub thread_frame: u16,
    pub cframe_frame: u16,
    pub frame_code: u16,
    pub frame_previous: u16,
    pub frame_instr: u16,
    pub frame_marker: u16,
    pub marker: ActivationMarker,
    /// What `frame_instr` holds.
    pub instr: InstrKind,
    pub code: CodeLayout,
}

impl Layout {
    /// The table's layout for `Py_Version` (`PY_VERSION_HEX`), if the minor version is known.
    /// Free-threaded builds are not (their objects differ); they are told apart by the caller.
    pub fn for_version(hex: u32) -> Option<Self> {
        let (major, minor) = ((hex >> 24) as u8, (hex >> 16) as u8);
        let str_311 = (48, 72);
        let str_312 = (40, 56);
        let code = |firstlineno, bytecode, (ascii_data, compact_data): (u64, u64)| CodeLayout {
            firstlineno,
            filename: 112,
            name: 120,
            qualname: 128,
            linetable: 136,
            bytecode,
            ascii_data,
            compact_data,
        };
        let layout = match (major, minor) {
            (3, 9) | (3, 10) => Self::frame_objects(minor),
            (3, 11) => Self {
                version: (3, 11),
                tss: 592,
                thread_frame: 56,
                cframe_frame: 8,
                frame_code: 32,
                frame_previous: 48,
                frame_instr: 56,
                frame_marker: 68,
                marker: ActivationMarker::IsEntry,
                instr: InstrKind::Pointer,
                code: code(72, 184, str_311),
            },
            (3, 12) => Self {
                version: (3, 12),
                tss: 1544,
                thread_frame: 56,
                cframe_frame: 0,
                frame_code: 0,
                frame_previous: 8,
                frame_instr: 56,
                frame_marker: 70,
                marker: ActivationMarker::CStackOwner,
                instr: InstrKind::Pointer,
                code: code(68, 192, str_312),
            },
            (3, 13) => Self {
                version: (3, 13),
                tss: 2160,
                thread_frame: 72,
                cframe_frame: NO_CFRAME,
                frame_code: 0,
                frame_previous: 8,
                frame_instr: 56,
                frame_marker: 70,
                marker: ActivationMarker::CStackOwner,
                instr: InstrKind::Pointer,
                code: code(68, 200, str_312),
            },
            _ => return None,
        };
        Some(layout)
    }

    /// 3.9 and 3.10 (`minor`), whose frames are `PyFrameObject`s (pyenv's 3.9.18 and 3.10.13,
    /// by their DWARF: `ptype/o struct _frame`, `struct _ts`, `PyCodeObject`, and
    /// `&_PyRuntime.gilstate.autoTSSkey`). The thread state's `frame` is the newest frame; a
    /// frame's `f_lasti` is a byte offset in 3.9, a code-unit index in 3.10. They have no
    /// `co_qualname`: a frame is named by `co_name`. The line table is `co_lnotab` (3.9) or
    /// `co_linetable` (3.10), at the same offset.
    fn frame_objects(minor: u8) -> Self {
        let name = 112;
        Self {
            version: (3, minor),
            tss: 584,
            thread_frame: 24,
            cframe_frame: NO_CFRAME,
            frame_code: 32,
            frame_previous: 24,
            frame_instr: if minor == 9 { 104 } else { 96 },
            frame_marker: 0,
            marker: ActivationMarker::EveryFrame,
            instr: if minor == 9 {
                InstrKind::LastiBytes
            } else {
                InstrKind::LastiUnits
            },
            code: CodeLayout {
                firstlineno: 40,
                filename: 104,
                name,
                qualname: name,
                linetable: 120,
                // The instruction is an offset already.
                bytecode: 0,
                ascii_data: 48,
                compact_data: 72,
            },
        }
    }

    /// The layout with the offsets a 3.13+ interpreter publishes about itself
    /// (`_PyRuntime.debug_offsets`, `bytes` from its start) in place of the table's; `None`
    /// when they are not there, are not for `hex`, or describe a free-threaded build.
    pub fn with_debug_offsets(mut self, hex: u32, bytes: &[u8]) -> Option<Self> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        if bytes.get(..8)? != b"xdebugpy" || u64_at(8)? != u64::from(hex) || u64_at(16)? != 0 {
            return None;
        }
        let small = |at: usize| -> Option<u16> { u16::try_from(u64_at(at)?).ok() };
        self.thread_frame = small(184)?;
        self.frame_previous = small(232)?;
        self.frame_code = small(240)?;
        self.frame_instr = small(248)?;
        self.frame_marker = small(264)?;
        self.code.filename = u64_at(280)?;
        self.code.name = u64_at(288)?;
        self.code.qualname = u64_at(296)?;
        self.code.linetable = u64_at(304)?;
        self.code.firstlineno = u64_at(312)?;
        self.code.bytecode = u64_at(344)?;
        Some(self)
    }

    /// What the kernel needs, for an interpreter whose `_PyRuntime` is at `runtime` and whose
    /// `Py_None` is `none`.
    pub fn kernel_entry(&self, runtime: u64, none: u64) -> PythonProcess {
        PythonProcess {
            tss: runtime + self.tss,
            none,
            thread_frame: self.thread_frame,
            cframe_frame: self.cframe_frame,
            frame_code: self.frame_code,
            frame_previous: self.frame_previous,
            frame_instr: self.frame_instr,
            frame_marker: self.frame_marker,
            code_bytecode: self.code.bytecode as u16,
            marker: self.marker as u8,
            thread_source: tracer_common::python::ThreadSource::TssKey as u8,
            instr_kind: self.instr as u8,
            _pad: 0,
            thread_base_frame: 0,
            _pad2: [0; 4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::python::FRAME_OBJECT_BYTES;

    #[test]
    fn known_versions_only() {
        assert_eq!(Layout::for_version(0x030b02f0).unwrap().version, (3, 11));
        assert_eq!(Layout::for_version(0x030c01f0).unwrap().version, (3, 12));
        assert_eq!(Layout::for_version(0x030d00f0).unwrap().version, (3, 13));
        assert_eq!(Layout::for_version(0x03090cf0).unwrap().version, (3, 9));
        assert_eq!(Layout::for_version(0x030a0df0).unwrap().version, (3, 10));
        assert!(Layout::for_version(0x030808f0).is_none());
        assert!(Layout::for_version(0x030e00f0).is_none());
    }

    #[test]
    fn frame_objects_are_read_within_what_the_kernel_reads() {
        for (hex, instr, lasti) in [
            (0x03091200, InstrKind::LastiBytes, 104),
            (0x030a0d00, InstrKind::LastiUnits, 96),
        ] {
            let layout = Layout::for_version(hex).unwrap();
            let entry = layout.kernel_entry(0x1000, 0x2000);
            assert_eq!(entry.tss, 0x1000 + 584);
            assert_eq!(entry.instr_kind, instr as u8);
            assert_eq!(entry.marker, ActivationMarker::EveryFrame as u8);
            assert_eq!(entry.cframe_frame, NO_CFRAME);
            assert_eq!(
                (entry.frame_previous, entry.frame_code, entry.frame_instr),
                (24, 32, lasti)
            );
            for field in [entry.frame_previous, entry.frame_code, entry.frame_instr] {
                assert!(usize::from(field) + 8 <= FRAME_OBJECT_BYTES, "{field}");
            }
            // No co_qualname: the name stands for it.
            assert_eq!(layout.code.qualname, layout.code.name);
        }
    }

    #[test]
    fn debug_offsets_must_match_their_version() {
        let layout = Layout::for_version(0x030d00f0).unwrap();
        let mut bytes = vec![0u8; 600];
        bytes[..8].copy_from_slice(b"xdebugpy");
        bytes[8..16].copy_from_slice(&0x030d00f0u64.to_le_bytes());
        for (at, value) in [(184, 72u64), (232, 8), (240, 0), (248, 56), (264, 70)] {
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        for (at, value) in [
            (280, 112u64),
            (288, 120),
            (296, 128),
            (304, 136),
            (312, 68),
            (344, 200),
        ] {
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        assert_eq!(layout.with_debug_offsets(0x030d00f0, &bytes), Some(layout));
        assert_eq!(layout.with_debug_offsets(0x030d01f0, &bytes), None);
        bytes[16] = 1; // free-threaded
        assert_eq!(layout.with_debug_offsets(0x030d00f0, &bytes), None);
    }
}
