//! Where CPython keeps what the walk and the code-object reader need. 3.9 to 3.12: a table
//! per minor version (checked on Debian's 3.11.2 and pyenv's 3.9.18, 3.10.13, 3.11.7 and
//! 3.12.1, see `docs/design/python-frames.md`). 3.13 and later: the interpreter's own
//! `_Py_DebugOffsets` (the first member of `_PyRuntime`), checked by cookie and version; the
//! struct grew in 3.14 and 3.15, so where each offset sits in it is known per version (see
//! `docs/design/python-3.13-3.15.md`). A version not listed is not walked.

use tracer_common::python::{
    ActivationMarker, FRAME_HEADER_BYTES, InstrKind, NO_CFRAME, PythonProcess, ThreadSource,
};

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

/// The newest minor version whose `_Py_DebugOffsets` leaktracer knows how to read.
pub const NEWEST_KNOWN: (u8, u8) = (3, 15);

/// One interpreter version's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// (major, minor).
    pub version: (u8, u8),
    /// Where a thread's `PyThreadState` is found: with [`ThreadSource::TssKey`], the pthread
    /// key in `Py_tss_t autoTSSkey` at `tss` bytes into `_PyRuntime`; with
    /// [`ThreadSource::StaticTls`], a thread-local variable the caller finds in the code.
    pub thread_source: ThreadSource,
    pub tss: u64,
    pub thread_frame: u16,
    pub cframe_frame: u16,
    /// `PyThreadState.base_frame` (3.15+), 0 without one.
    pub thread_base_frame: u16,
    pub frame_code: u16,
    pub frame_previous: u16,
    pub frame_instr: u16,
    pub frame_marker: u16,
    pub marker: ActivationMarker,
    /// What `frame_instr` holds.
    pub instr: InstrKind,
    pub code: CodeLayout,
}

/// Why a 3.13+ interpreter's own offsets cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DebugOffsetsError {
    #[error("is newer than the versions leaktracer knows the frames of (3.9 to 3.15)")]
    Newer,
    #[error("does not publish its debug offsets (no \"xdebugpy\" cookie at _PyRuntime)")]
    NoCookie,
    #[error("publishes debug offsets of another version ({0:#x})")]
    OtherVersion(u64),
    #[error("is a free-threaded build, whose objects leaktracer does not read")]
    FreeThreaded,
    #[error("publishes offsets leaktracer cannot use ({0})")]
    Unusable(&'static str),
}

/// Where the offsets the walk and the reader need sit in one version's `_Py_DebugOffsets`
/// (byte positions of its `uint64_t` fields: checked by compiling each version's
/// `pycore_debug_offsets.h` or `pycore_runtime.h`, see the design note).
struct DebugFields {
    current_frame: usize,
    /// `thread_state.base_frame` (3.15+).
    base_frame: Option<usize>,
    previous: usize,
    executable: usize,
    instr_ptr: usize,
    filename: usize,
    name: usize,
    qualname: usize,
    linetable: usize,
    firstlineno: usize,
    co_code_adaptive: usize,
    ob_type: usize,
    bytes_ob_size: usize,
    bytes_ob_sval: usize,
    unicode_state: usize,
    unicode_length: usize,
    asciiobject_size: usize,
    /// `unicode_object.compactunicodeobject_size` (3.15+; before, 16 bytes more than ASCII's).
    compact_size: Option<usize>,
    /// The bytes of the struct read.
    size: usize,
}

/// The fields of `_Py_DebugOffsets` in 3.13, 3.14 and 3.15.
fn debug_fields(minor: u8) -> Option<DebugFields> {
    Some(match minor {
        13 => DebugFields {
            current_frame: 184,
            base_frame: None,
            previous: 232,
            executable: 240,
            instr_ptr: 248,
            filename: 280,
            name: 288,
            qualname: 296,
            linetable: 304,
            firstlineno: 312,
            co_code_adaptive: 344,
            ob_type: 360,
            bytes_ob_size: 520,
            bytes_ob_sval: 528,
            unicode_state: 544,
            unicode_length: 552,
            asciiobject_size: 560,
            compact_size: None,
            size: 584,
        },
        14 => DebugFields {
            current_frame: 208,
            base_frame: None,
            previous: 256,
            executable: 264,
            instr_ptr: 272,
            filename: 320,
            name: 328,
            qualname: 336,
            linetable: 344,
            firstlineno: 352,
            co_code_adaptive: 384,
            ob_type: 408,
            bytes_ob_size: 600,
            bytes_ob_sval: 608,
            unicode_state: 624,
            unicode_length: 632,
            asciiobject_size: 640,
            compact_size: None,
            size: 760,
        },
        15 => DebugFields {
            current_frame: 208,
            base_frame: Some(216),
            previous: 320,
            executable: 328,
            instr_ptr: 336,
            filename: 384,
            name: 392,
            qualname: 400,
            linetable: 408,
            firstlineno: 416,
            co_code_adaptive: 448,
            ob_type: 472,
            bytes_ob_size: 696,
            bytes_ob_sval: 704,
            unicode_state: 720,
            unicode_length: 728,
            asciiobject_size: 736,
            compact_size: Some(744),
            size: 888,
        },
        _ => return None,
    })
}

/// Bytes of `_PyRuntime` to read for [`Layout::from_debug_offsets`] (every known version's
/// `_Py_DebugOffsets` fits).
pub const DEBUG_OFFSETS_BYTES: usize = 1024;

impl Layout {
    /// The table's layout for `Py_Version` (`PY_VERSION_HEX`), if the minor version is one
    /// without debug offsets (3.11, 3.12). Free-threaded builds are not known (their objects
    /// differ); they are told apart by the caller.
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
                thread_source: ThreadSource::TssKey,
                tss: 592,
                thread_frame: 56,
                cframe_frame: 8,
                thread_base_frame: 0,
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
                thread_source: ThreadSource::TssKey,
                tss: 1544,
                thread_frame: 56,
                cframe_frame: 0,
                thread_base_frame: 0,
                frame_code: 0,
                frame_previous: 8,
                frame_instr: 56,
                frame_marker: 70,
                marker: ActivationMarker::CStackOwner,
                instr: InstrKind::Pointer,
                code: code(68, 192, str_312),
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
            thread_source: ThreadSource::TssKey,
            tss: 584,
            thread_frame: 24,
            cframe_frame: NO_CFRAME,
            frame_code: 32,
            frame_previous: 24,
            frame_instr: if minor == 9 { 104 } else { 96 },
            frame_marker: 0,
            marker: ActivationMarker::EveryFrame,
            thread_base_frame: 0,
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

    /// Whether `hex` is a version whose layout comes from its own `_Py_DebugOffsets` (3.13+).
    pub fn publishes_offsets(hex: u32) -> bool {
        let (major, minor) = ((hex >> 24) as u8, (hex >> 16) as u8);
        major > 3 || (major == 3 && minor >= 13)
    }

    /// The layout a 3.13+ interpreter publishes about itself (`_PyRuntime.debug_offsets`,
    /// `bytes` from its start), for `Py_Version` `hex`: the offsets are read where that
    /// version's struct keeps them, after its cookie, version and build are checked.
    pub fn from_debug_offsets(hex: u32, bytes: &[u8]) -> Result<Self, DebugOffsetsError> {
        let (major, minor) = ((hex >> 24) as u8, (hex >> 16) as u8);
        if (major, minor) > NEWEST_KNOWN {
            return Err(DebugOffsetsError::Newer);
        }
        let fields = debug_fields(minor).ok_or(DebugOffsetsError::Unusable("not 3.13+"))?;
        let u64_at = |at: usize| -> Result<u64, DebugOffsetsError> {
            bytes
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .ok_or(DebugOffsetsError::Unusable("short read"))
        };
        if bytes.get(..8) != Some(b"xdebugpy".as_slice()) {
            return Err(DebugOffsetsError::NoCookie);
        }
        if bytes.len() < fields.size {
            return Err(DebugOffsetsError::Unusable("short read"));
        }
        let version = u64_at(8)?;
        if version != u64::from(hex) {
            return Err(DebugOffsetsError::OtherVersion(version));
        }
        if u64_at(16)? != 0 {
            return Err(DebugOffsetsError::FreeThreaded);
        }
        // The objects' headers the reader takes as constants: the same on every version so far.
        for (at, expected, what) in [
            (fields.ob_type, OBJECT_TYPE, "PyObject.ob_type"),
            (fields.bytes_ob_size, OBJECT_SIZE, "PyBytesObject.ob_size"),
            (fields.bytes_ob_sval, BYTES_DATA, "PyBytesObject.ob_sval"),
            (fields.unicode_state, STR_STATE, "PyASCIIObject.state"),
            (fields.unicode_length, STR_LENGTH, "PyASCIIObject.length"),
        ] {
            if u64_at(at)? != expected {
                return Err(DebugOffsetsError::Unusable(what));
            }
        }
        // The kernel reads a frame's first FRAME_HEADER_BYTES: its fields must be there.
        let frame = |at: usize, what| -> Result<u16, DebugOffsetsError> {
            u64_at(at)?
                .checked_add(8)
                .filter(|end| *end <= FRAME_HEADER_BYTES as u64)
                .map(|end| (end - 8) as u16)
                .ok_or(DebugOffsetsError::Unusable(what))
        };
        let small = |at: usize, what| -> Result<u16, DebugOffsetsError> {
            u16::try_from(u64_at(at)?).map_err(|_| DebugOffsetsError::Unusable(what))
        };
        let ascii_data = u64_at(fields.asciiobject_size)?;
        let frame_code = frame(fields.executable, "_PyInterpreterFrame.f_executable")?;
        Ok(Self {
            version: (major, minor),
            // 3.15 has no pthread key: its thread-local variable is found in its code.
            thread_source: if minor >= 15 {
                ThreadSource::StaticTls
            } else {
                ThreadSource::TssKey
            },
            tss: match minor {
                13 => 2160,
                14 => 2336,
                _ => 0,
            },
            thread_frame: small(fields.current_frame, "PyThreadState.current_frame")?,
            cframe_frame: NO_CFRAME,
            thread_base_frame: match fields.base_frame {
                Some(at) => small(at, "PyThreadState.base_frame")?,
                None => 0,
            },
            frame_code,
            frame_previous: frame(fields.previous, "_PyInterpreterFrame.previous")?,
            frame_instr: frame(fields.instr_ptr, "_PyInterpreterFrame.instr_ptr")?,
            // Unused: a shim is told by its executable, None.
            frame_marker: frame_code,
            marker: ActivationMarker::NoneExecutable,
            instr: InstrKind::Pointer,
            code: CodeLayout {
                firstlineno: u64_at(fields.firstlineno)?,
                filename: u64_at(fields.filename)?,
                name: u64_at(fields.name)?,
                qualname: u64_at(fields.qualname)?,
                linetable: u64_at(fields.linetable)?,
                bytecode: u64_at(fields.co_code_adaptive)?,
                ascii_data,
                compact_data: match fields.compact_size {
                    Some(at) => u64_at(at)?,
                    None => ascii_data + 16,
                },
            },
        })
    }

    /// What the kernel needs, for an interpreter whose thread states are found at `thread`
    /// (see [`PythonProcess::tss`]) and whose `Py_None` is `none`.
    pub fn kernel_entry(&self, thread: u64, none: u64) -> PythonProcess {
        PythonProcess {
            tss: thread,
            none,
            thread_frame: self.thread_frame,
            cframe_frame: self.cframe_frame,
            frame_code: self.frame_code,
            frame_previous: self.frame_previous,
            frame_instr: self.frame_instr,
            frame_marker: self.frame_marker,
            code_bytecode: self.code.bytecode as u16,
            marker: self.marker as u8,
            thread_source: self.thread_source as u8,
            instr_kind: self.instr as u8,
            _pad: 0,
            thread_base_frame: self.thread_base_frame,
            _pad2: [0; 4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::python::FRAME_OBJECT_BYTES;

    #[test]
    fn tables_for_the_versions_without_debug_offsets() {
        assert_eq!(Layout::for_version(0x030b02f0).unwrap().version, (3, 11));
        assert_eq!(Layout::for_version(0x030c01f0).unwrap().version, (3, 12));
        assert_eq!(Layout::for_version(0x03090cf0).unwrap().version, (3, 9));
        assert_eq!(Layout::for_version(0x030a0df0).unwrap().version, (3, 10));
        for hex in [0x030808f0, 0x030d00f0, 0x030e00f0, 0x030f02f0] {
            assert!(Layout::for_version(hex).is_none(), "{hex:#x}");
        }
        assert!(!Layout::publishes_offsets(0x030c01f0));
        assert!(Layout::publishes_offsets(0x030d00f0));
        assert!(Layout::publishes_offsets(0x031000a1));
    }

    #[test]
    fn frame_objects_are_read_within_what_the_kernel_reads() {
        for (hex, instr, lasti) in [
            (0x03091200, InstrKind::LastiBytes, 104),
            (0x030a0d00, InstrKind::LastiUnits, 96),
        ] {
            let layout = Layout::for_version(hex).unwrap();
            let entry = layout.kernel_entry(0x1000, 0x2000);
            assert_eq!((layout.tss, entry.tss), (584, 0x1000));
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

    /// A `_Py_DebugOffsets` of version `hex` with `values` at their byte positions.
    fn offsets(hex: u32, values: &[(usize, u64)]) -> Vec<u8> {
        let mut bytes = vec![0u8; DEBUG_OFFSETS_BYTES];
        bytes[..8].copy_from_slice(b"xdebugpy");
        bytes[8..16].copy_from_slice(&u64::from(hex).to_le_bytes());
        for &(at, value) in values {
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// The values Debian's 3.15.2 publishes (read from a live `python3.15`).
    fn python_315() -> Vec<u8> {
        offsets(
            0x030f02f0,
            &[
                (208, 72),
                (216, 80),
                (320, 8),
                (328, 0),
                (336, 56),
                (384, 112),
                (392, 120),
                (400, 128),
                (408, 136),
                (416, 68),
                (448, 208),
                (472, 8),
                (696, 16),
                (704, 32),
                (720, 32),
                (728, 16),
                (736, 40),
                (744, 56),
            ],
        )
    }

    #[test]
    fn debug_offsets_are_read_where_their_version_keeps_them() {
        let layout = Layout::from_debug_offsets(0x030f02f0, &python_315()).unwrap();
        assert_eq!(layout.version, (3, 15));
        assert_eq!(layout.thread_source, ThreadSource::StaticTls);
        assert_eq!((layout.thread_frame, layout.thread_base_frame), (72, 80));
        assert_eq!(
            (layout.frame_code, layout.frame_previous, layout.frame_instr),
            (0, 8, 56)
        );
        assert_eq!(layout.marker, ActivationMarker::NoneExecutable);
        assert_eq!(layout.code.bytecode, 208);
        assert_eq!((layout.code.ascii_data, layout.code.compact_data), (40, 56));
        let entry = layout.kernel_entry((-0x28i64) as u64, 0x1234);
        assert_eq!(entry.thread_source, ThreadSource::StaticTls as u8);
        assert_eq!(entry.tss as i64, -0x28);
        assert_eq!(entry.thread_base_frame, 80);
    }

    #[test]
    fn debug_offsets_must_match_their_version_and_build() {
        let bytes = python_315();
        // Another version's struct is never read as this one's.
        assert_eq!(
            Layout::from_debug_offsets(0x030f03f0, &bytes),
            Err(DebugOffsetsError::OtherVersion(0x030f02f0))
        );
        let mut free_threaded = bytes.clone();
        free_threaded[16] = 1;
        assert_eq!(
            Layout::from_debug_offsets(0x030f02f0, &free_threaded),
            Err(DebugOffsetsError::FreeThreaded)
        );
        let mut no_cookie = bytes.clone();
        no_cookie[0] = b'y';
        assert_eq!(
            Layout::from_debug_offsets(0x030f02f0, &no_cookie),
            Err(DebugOffsetsError::NoCookie)
        );
        // A frame field past what the kernel reads of a frame.
        let mut far = bytes.clone();
        far[336..344].copy_from_slice(&72u64.to_le_bytes());
        assert!(matches!(
            Layout::from_debug_offsets(0x030f02f0, &far),
            Err(DebugOffsetsError::Unusable(_))
        ));
        assert!(Layout::from_debug_offsets(0x030f02f0, &bytes[..800]).is_err());
    }

    #[test]
    fn a_version_newer_than_any_known_is_refused_whatever_it_publishes() {
        // 3.16.0a1 with a cookie and its own version: its struct may have moved anything.
        let bytes = offsets(0x031000a1, &[]);
        let error = Layout::from_debug_offsets(0x031000a1, &bytes).unwrap_err();
        assert_eq!(error, DebugOffsetsError::Newer);
        assert_eq!(
            error.to_string(),
            "is newer than the versions leaktracer knows the frames of (3.9 to 3.15)"
        );
    }
}
