//! Finding CPython in a traced process: the object that holds the interpreter (the executable,
//! or a `libpython` it loads), its version (`Py_Version`; before 3.11, its API and version string), where its runtime state lives and
//! its threads' states are found, and where its eval loop is, from the object's own dynamic
//! symbols, code and call-frame information (so stripped LTO builds such as Debian's work), and
//! on 3.13+ from what the interpreter publishes about itself (`_Py_DebugOffsets`).

use std::{collections::HashMap, fs, path::Path};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use tracer_common::python::ThreadSource;

use super::layout::{DEBUG_OFFSETS_BYTES, Layout};
use crate::arch::{ThreadLocalLoad, thread_local_load};
use crate::target::{
    maps::{Mapping, read_maps},
    object_file,
    remote::RemoteMemory,
};

/// A process's interpreter, ready to be walked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpreter {
    /// `PY_VERSION_HEX`.
    pub version: u32,
    pub layout: Layout,
    /// Addresses in the process: `_PyRuntime`, `PyCode_Type`, `_Py_NoneStruct`.
    pub runtime: u64,
    /// Where the kernel finds its threads' states (`PythonProcess::tss`: the pthread key's
    /// address, or a thread-local variable's offset from the thread pointer).
    pub thread: u64,
    pub code_type: u64,
    pub none: u64,
    /// Where `_PyEval_EvalFrameDefault` and its `.cold` part are in the process (`[start,
    /// end)`, `[0, 0]` when unknown).
    pub eval_loop: [[u64; 2]; 2],
    /// The object holding it, as the process sees its path.
    pub module: String,
}

impl Interpreter {
    /// `3.12.1` and the like.
    pub fn version_text(&self) -> String {
        version_text(self.version)
    }
}

/// `3.12.1` from `PY_VERSION_HEX`.
pub fn version_text(hex: u32) -> String {
    format!("{}.{}.{}", hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff)
}

/// What a process holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// No CPython.
    Nothing,
    Python(Interpreter),
    /// A CPython whose frames are not walked, and why (one line for the operator).
    Unsupported(String),
}

/// The eval loop, and the part of it the compiler split off (cold paths), where the symbols
/// name it (else it is found from the loop's jumps: see [`super::eval_loop`]).
const EVAL_LOOP: [&str; 2] = ["_PyEval_EvalFrameDefault", "_PyEval_EvalFrameDefault.cold"];

/// The symbols looked for, in the object holding the interpreter (all in `.dynsym`: stripped
/// builds have them).
const SYMBOLS: [&str; 8] = [
    "Py_Initialize",
    "Py_Version",
    // Their API, before Py_Version: 3.9 added PyFrame_GetCode, 3.10 Py_IsNone.
    "PyFrame_GetCode",
    "Py_IsNone",
    "_PyRuntime",
    "PyCode_Type",
    "_Py_NoneStruct",
    // 3.15: returns the thread-local variable that holds a thread's state.
    "PyGILState_GetThisThreadState",
];

/// Looks for CPython in `pid`: in its executable and in any mapped object named like
/// `libpython*`.
pub fn find(pid: u32) -> Found {
    let Ok(maps) = read_maps(pid) else {
        return Found::Nothing;
    };
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let mut seen: Vec<&str> = Vec::new();
    for mapping in maps.iter().filter(|m| m.is_file()) {
        let Some(path) = mapping.clean_path() else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        if seen.contains(&path) || !(exe.as_deref() == Some(path) || name.starts_with("libpython"))
        {
            continue;
        }
        seen.push(path);
        let Some(first) = maps
            .iter()
            .find(|m| m.clean_path() == Some(path) && m.offset == 0)
        else {
            continue;
        };
        match in_object(pid, first, path) {
            Found::Nothing => continue,
            found => return found,
        }
    }
    Found::Nothing
}

/// What the object's symbols say: the addresses of [`SYMBOLS`] and the eval loop's ranges (in
/// the object's own numbering), and the ranges of its functions.
struct Symbols {
    addresses: HashMap<&'static str, u64>,
    eval_loop: HashMap<&'static str, [u64; 2]>,
    functions: Vec<[u64; 2]>,
}

impl Symbols {
    fn of(file: &object::File) -> Self {
        let mut symbols = Self {
            addresses: HashMap::new(),
            eval_loop: HashMap::new(),
            functions: Vec::new(),
        };
        for symbol in file.dynamic_symbols().chain(file.symbols()) {
            let Ok(name) = symbol.name() else { continue };
            if !symbol.is_definition() {
                continue;
            }
            let start = symbol.address();
            let range = [start, start + symbol.size()];
            if let Some(known) = SYMBOLS.iter().find(|s| **s == name) {
                symbols.addresses.entry(known).or_insert(start);
            }
            if let Some(known) = EVAL_LOOP.iter().find(|s| **s == name)
                && symbol.size() > 0
            {
                symbols.eval_loop.entry(known).or_insert(range);
            }
            if symbol.kind() == object::SymbolKind::Text && !name.contains(".cold") {
                symbols.functions.push(range);
            }
        }
        symbols
    }

    fn get(&self, name: &str) -> Option<u64> {
        self.addresses.get(name).copied()
    }

    /// Whether a function's symbol covers `address`.
    fn names(&self, address: u64) -> bool {
        self.functions
            .iter()
            .any(|&[start, end]| start <= address && address < end.max(start + 1))
    }

    /// The eval loop and its split-off part, in the object's numbering (`[0, 0]`: none).
    fn eval_loop(&self, file: &object::File) -> [[u64; 2]; 2] {
        let Some(&hot) = self.eval_loop.get(EVAL_LOOP[0]) else {
            return [[0, 0]; 2];
        };
        let cold = self
            .eval_loop
            .get(EVAL_LOOP[1])
            .copied()
            .or_else(|| super::eval_loop::split_part(file, hot, &|a| self.names(a)));
        [hot, cold.unwrap_or([0, 0])]
    }
}

/// The interpreter in the object mapped first at `first`, if it holds one.
fn in_object(pid: u32, first: &Mapping, path: &str) -> Found {
    let by_range = format!("/proc/{pid}/map_files/{:x}-{:x}", first.start, first.end);
    let Ok(data) = object_file::read(Path::new(&by_range))
        .or_else(|_| object_file::read(&crate::target::process::path_in_root(pid, path)))
    else {
        return Found::Nothing;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return Found::Nothing;
    };
    let symbols = Symbols::of(&file);
    let older = || {
        Found::Unsupported(format!(
            "{path} is a CPython older than 3.9: leaktracer knows the frames of 3.9 to 3.15 only, its stacks stay native"
        ))
    };
    let Some(runtime) = symbols.get("_PyRuntime") else {
        // Every CPython exports Py_Initialize; _PyRuntime came with 3.7.
        if symbols.get("Py_Initialize").is_some() {
            return older();
        }
        return Found::Nothing;
    };
    // The object's load bias: where its first segment (file offset 0) went.
    let Some(base) = file
        .segments()
        .find(|s| s.file_range().0 == 0)
        .map(|s| s.address() & !0xfff)
    else {
        return Found::Nothing;
    };
    let bias = first.start.wrapping_sub(base);
    let Ok(memory) = RemoteMemory::open(pid) else {
        return Found::Nothing;
    };
    let version = match symbols.get("Py_Version") {
        Some(at) => match memory.read_u32(bias + at) {
            Ok(version) => version,
            Err(_) => return Found::Nothing,
        },
        None => match version_before_py_version(&symbols, &file) {
            Some(version) => version,
            None => return older(),
        },
    };
    let native = |why: String| Found::Unsupported(native_note(version, path, &why));
    let layout = match layout_of(version, |len| memory.read_vec(bias + runtime, len)) {
        Ok(layout) => layout,
        Err(why) => return native(why),
    };
    let thread = match thread_states(&layout, &file, &symbols, &memory, bias, runtime) {
        Ok(thread) => thread,
        Err(why) => return native(why),
    };
    let (Some(code_type), Some(none)) = (symbols.get("PyCode_Type"), symbols.get("_Py_NoneStruct"))
    else {
        return native("does not export PyCode_Type and _Py_NoneStruct".into());
    };
    let eval_loop = symbols.eval_loop(&file).map(|[start, end]| {
        if start < end {
            [bias + start, bias + end]
        } else {
            [0, 0]
        }
    });
    Found::Python(Interpreter {
        version,
        eval_loop,
        layout,
        runtime: bias + runtime,
        thread,
        code_type: bias + code_type,
        none: bias + none,
        module: path.to_string(),
    })
}

/// The layout of the interpreter of `Py_Version` `version`: a table's, or for 3.13+ what it
/// publishes about itself at the start of its `_PyRuntime` (`runtime(len)` reads it). `Err`:
/// why it is not walked, for the operator's note.
fn layout_of(
    version: u32,
    runtime: impl FnOnce(usize) -> std::io::Result<Vec<u8>>,
) -> Result<Layout, String> {
    if !Layout::publishes_offsets(version) {
        return Layout::for_version(version)
            .ok_or_else(|| "is not a version leaktracer knows the frames of (3.9 to 3.15)".into());
    }
    let offsets = runtime(DEBUG_OFFSETS_BYTES).map_err(|e| format!("cannot be read ({e})"))?;
    Layout::from_debug_offsets(version, &offsets).map_err(|e| e.to_string())
}

/// The one line said of an interpreter that is not walked.
fn native_note(version: u32, path: &str, why: &str) -> String {
    format!(
        "CPython {} ({path}) {why}: its stacks stay native",
        version_text(version)
    )
}

/// What the kernel finds the thread states with (see `PythonProcess::tss`): the address of
/// the pthread key's `Py_tss_t` in `_PyRuntime` (at `runtime` in the object), or 3.15's
/// thread-local variable's offset from the thread pointer, read from the exported function
/// that returns it.
fn thread_states(
    layout: &Layout,
    file: &object::File,
    symbols: &Symbols,
    memory: &RemoteMemory,
    bias: u64,
    runtime: u64,
) -> Result<u64, String> {
    match layout.thread_source {
        ThreadSource::TssKey => {
            let tss = bias + runtime + layout.tss;
            // `{int _is_initialized; unsigned _key}`: not yet initialized before the
            // interpreter starts (a launched command), a small key once it is.
            let words = memory
                .read_vec(tss, 8)
                .map_err(|e| format!("cannot be read ({e})"))?;
            let initialized = u32::from_le_bytes(words[..4].try_into().unwrap());
            let key = u32::from_le_bytes(words[4..].try_into().unwrap());
            if initialized > 1 || key >= 1024 {
                return Err(format!(
                    "keeps no thread-state key where its version does ({initialized}, {key})"
                ));
            }
            Ok(tss)
        }
        ThreadSource::StaticTls => {
            let getter = "PyGILState_GetThisThreadState";
            let at = symbols
                .get(getter)
                .ok_or_else(|| format!("does not export {getter}"))?;
            let code = file
                .sections()
                .find(|s| s.address() <= at && at < s.address() + s.size())
                .and_then(|s| s.data_range(at, 32).ok().flatten())
                .ok_or_else(|| format!("has no code for {getter}"))?;
            match thread_local_load(code, at) {
                Some(ThreadLocalLoad::Offset(offset)) => Ok(offset as u64),
                Some(ThreadLocalLoad::OffsetAt(slot)) => memory
                    .read_u64(bias + slot)
                    .map_err(|e| format!("cannot be read ({e})")),
                None => Err(format!(
                    "reads its thread states in a way leaktracer does not know ({getter} is no thread-local load)"
                )),
            }
        }
    }
}

/// `PY_VERSION_HEX` of a CPython without `Py_Version` (before 3.11): the minor version from its
/// API (3.10 exports `Py_IsNone`, 3.9 `PyFrame_GetCode` but not it; older ones neither), the
/// patch level from its `PY_VERSION` string (only named, the layout depends on the minor: 0
/// when not found). `None` before 3.9.
fn version_before_py_version(symbols: &Symbols, file: &object::File) -> Option<u32> {
    let minor = if symbols.get("Py_IsNone").is_some() {
        10
    } else if symbols.get("PyFrame_GetCode").is_some() {
        9
    } else {
        return None;
    };
    let rodata = file
        .section_by_name(".rodata")
        .and_then(|section| section.data().ok())
        .unwrap_or_default();
    let patch = patch_level(rodata, minor).unwrap_or(0);
    Some(3 << 24 | u32::from(minor) << 16 | u32::from(patch) << 8 | 0xf0)
}

/// The patch level in the first `3.<minor>.<patch>` string of `data` (NUL-terminated, or ended
/// by `+` or a pre-release tag; the compiler may have merged it into the tail of a longer
/// string, such as the installation's path).
fn patch_level(data: &[u8], minor: u8) -> Option<u8> {
    let prefix = format!("3.{minor}.");
    let prefix = prefix.as_bytes();
    let mut from = 0;
    while let Some(at) = data
        .get(from..)?
        .windows(prefix.len())
        .position(|w| w == prefix)
    {
        let start = from + at;
        from = start + 1;
        if start > 0 && (data[start - 1].is_ascii_digit() || data[start - 1] == b'.') {
            continue;
        }
        let rest = &data[start + prefix.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=2).contains(&digits)
            || !matches!(rest.get(digits), Some(0 | b'+' | b'a' | b'b' | b'r'))
        {
            continue;
        }
        return std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_levels_come_from_the_version_string() {
        assert_eq!(
            patch_level(b"x\0/root/.pyenv/versions/3.9.18\0python3.9\0", 9),
            Some(18)
        );
        assert_eq!(patch_level(b"\x003.10.13+\0", 10), Some(13));
        assert_eq!(patch_level(b"\x003.10.0rc2\0", 10), Some(0));
        // Not a version: more digits around it, or not ended.
        assert_eq!(
            patch_level(b"13.9.1\0 3.9.123\0 3.9.1x 3.9.4\0", 9),
            Some(4)
        );
        assert_eq!(patch_level(b"3.10.1\0", 9), None);
        assert_eq!(patch_level(b"", 9), None);
    }

    /// A `_PyRuntime` that starts with debug offsets of `hex`: cookie and version only.
    fn runtime_of(hex: u32) -> impl FnOnce(usize) -> std::io::Result<Vec<u8>> {
        move |len| {
            let mut bytes = vec![0u8; len];
            bytes[..8].copy_from_slice(b"xdebugpy");
            bytes[8..16].copy_from_slice(&u64::from(hex).to_le_bytes());
            Ok(bytes)
        }
    }

    #[test]
    fn a_version_newer_than_any_known_gets_one_line_and_native_stacks() {
        // 3.16.0a1: whatever it publishes, its struct may have moved anything.
        let why = layout_of(0x031000a1, runtime_of(0x031000a1)).unwrap_err();
        assert_eq!(
            native_note(0x031000a1, "/usr/bin/python3.16", &why),
            "CPython 3.16.0 (/usr/bin/python3.16) is newer than the versions leaktracer knows the frames of (3.9 to 3.15): its stacks stay native"
        );
        // An old version without a table is said too, and nothing is read of it.
        let why = layout_of(0x030808f0, |_| panic!("read")).unwrap_err();
        assert!(why.contains("3.9 to 3.15"), "{why}");
        // A known one whose runtime cannot be read.
        let why = layout_of(0x030e0af0, |_| Err(std::io::Error::other("gone"))).unwrap_err();
        assert_eq!(why, "cannot be read (gone)");
        assert_eq!(
            layout_of(0x030c01f0, |_| panic!("read")).unwrap().version,
            (3, 12)
        );
    }
}
