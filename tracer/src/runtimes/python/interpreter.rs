//! Finding CPython in a traced process: the object that holds the interpreter (the executable,
//! or a `libpython` it loads), its version (`Py_Version`) and where its runtime state lives,
//! from the object's own symbols (the dynamic ones, so stripped builds such as Debian's work).

use std::{collections::HashMap, fs};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::layout::Layout;
use crate::target::{
    maps::{Mapping, read_maps},
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
    pub code_type: u64,
    pub none: u64,
    /// Where `_PyEval_EvalFrameDefault` and its `.cold` part are in the process (`[start,
    /// end)`, `[0, 0]` when unknown).
    pub eval_loop: [[u64; 2]; 2],
    /// The object holding it, as the process sees its path.
    pub module: String,
    /// Whether objects of pymalloc's size classes (512 bytes or less) are seen: its entry
    /// points have symbols to probe (an LTO build such as Debian's inlines them into their
    /// callers, and has none), or the process runs with `PYTHONMALLOC=malloc`.
    pub small_objects_seen: bool,
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

/// The symbols looked for, in the object holding the interpreter.
/// The eval loop, and the part of it the compiler split off (cold paths), where the symbols
/// name it.
const EVAL_LOOP: [&str; 2] = ["_PyEval_EvalFrameDefault", "_PyEval_EvalFrameDefault.cold"];

const SYMBOLS: [&str; 8] = [
    "Py_Initialize",
    "Py_Version",
    // Their API, before Py_Version: 3.9 added PyFrame_GetCode, 3.10 Py_IsNone.
    "PyFrame_GetCode",
    "Py_IsNone",
    "_PyRuntime",
    "PyCode_Type",
    "_Py_NoneStruct",
    "_PyObject_Malloc",
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

/// The interpreter in the object mapped first at `first`, if it holds one.
fn in_object(pid: u32, first: &Mapping, path: &str) -> Found {
    let by_range = format!("/proc/{pid}/map_files/{:x}-{:x}", first.start, first.end);
    let Ok(data) =
        fs::read(&by_range).or_else(|_| fs::read(crate::target::process::path_in_root(pid, path)))
    else {
        return Found::Nothing;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return Found::Nothing;
    };
    let mut symbols: HashMap<&str, u64> = HashMap::new();
    let mut eval_loop: HashMap<&str, [u64; 2]> = HashMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        let Ok(name) = symbol.name() else { continue };
        if !symbol.is_definition() {
            continue;
        }
        if SYMBOLS.contains(&name) {
            symbols.entry(name).or_insert(symbol.address());
        }
        if EVAL_LOOP.contains(&name) && symbol.size() > 0 {
            let start = symbol.address();
            eval_loop
                .entry(name)
                .or_insert([start, start + symbol.size()]);
        }
    }
    let older = || {
        Found::Unsupported(format!(
            "{path} is a CPython older than 3.9: leaktracer knows the frames of 3.9 to 3.13 only, its stacks stay native"
        ))
    };
    let Some(&runtime) = symbols.get("_PyRuntime") else {
        // Every CPython exports Py_Initialize; _PyRuntime came with 3.7.
        if symbols.contains_key("Py_Initialize") {
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
        Some(&at) => match memory.read_u32(bias + at) {
            Ok(version) => version,
            Err(_) => return Found::Nothing,
        },
        None => match version_before_py_version(&symbols, &file) {
            Some(version) => version,
            None => return older(),
        },
    };
    let text = version_text(version);
    let Some(mut layout) = Layout::for_version(version) else {
        return Found::Unsupported(format!(
            "CPython {text} ({path}) is not a version leaktracer knows the frames of (3.9 to 3.13): its stacks stay native"
        ));
    };
    if layout.version >= (3, 13) {
        let Ok(offsets) = memory.read_vec(bias + runtime, 600) else {
            return Found::Nothing;
        };
        match layout.with_debug_offsets(version, &offsets) {
            Some(published) => layout = published,
            None => {
                return Found::Unsupported(format!(
                    "CPython {text} ({path}) does not publish the debug offsets of a default (GIL) build: its stacks stay native"
                ));
            }
        }
    }
    let (Some(&code_type), Some(&none)) =
        (symbols.get("PyCode_Type"), symbols.get("_Py_NoneStruct"))
    else {
        return Found::Unsupported(format!(
            "CPython {text} ({path}) does not export PyCode_Type and _Py_NoneStruct: its stacks stay native"
        ));
    };
    let small_objects_seen = symbols.contains_key("_PyObject_Malloc") || malloc_forced(pid);
    let eval_loop = EVAL_LOOP.map(|name| {
        eval_loop
            .get(name)
            .map_or([0, 0], |[start, end]| [bias + start, bias + end])
    });
    Found::Python(Interpreter {
        version,
        eval_loop,
        layout,
        runtime: bias + runtime,
        code_type: bias + code_type,
        none: bias + none,
        module: path.to_string(),
        small_objects_seen,
    })
}

/// Whether `pid` runs with `PYTHONMALLOC=malloc` (or `malloc_debug`): every object then comes
/// from the C library's malloc.
fn malloc_forced(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|&b| b == 0)
            .any(|var| var == b"PYTHONMALLOC=malloc" || var == b"PYTHONMALLOC=malloc_debug")
    })
}

/// `PY_VERSION_HEX` of a CPython without `Py_Version` (before 3.11): the minor version from its
/// API (3.10 exports `Py_IsNone`, 3.9 `PyFrame_GetCode` but not it; older ones neither), the
/// patch level from its `PY_VERSION` string (only named, the layout depends on the minor: 0
/// when not found). `None` before 3.9.
fn version_before_py_version(symbols: &HashMap<&str, u64>, file: &object::File) -> Option<u32> {
    let minor = if symbols.contains_key("Py_IsNone") {
        10
    } else if symbols.contains_key("PyFrame_GetCode") {
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
}
