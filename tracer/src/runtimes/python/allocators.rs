//! CPython's small-object allocator (pymalloc) found through its allocator tables, on every
//! build: with its symbols (pyenv's), and stripped and built with LTO (Debian's), where no
//! symbol names `_PyObject_Malloc` and its callers inline its fast path.
//!
//! CPython calls its allocators through three tables of `PyMemAllocatorEx` (`ctx`, `malloc`,
//! `calloc`, `realloc`, `free`): the raw domain (`PyMem_RawMalloc`, always the C library's
//! malloc), the memory domain (`PyMem_Malloc`) and the object domain (`PyObject_Malloc`), the
//! last two served by pymalloc unless `PYTHONMALLOC` says otherwise. The tables are statics
//! (`_PyMem`, `_PyObject`) up to 3.11 and `_PyRuntime.allocators.standard` from 3.12: wherever
//! they are, each exported `PyMem_*`/`PyObject_*` function reads its slot, which is how they
//! are found ([`find_table`]). What the object domain's table held when the program started is
//! pymalloc (`_PyObject_Malloc` and friends); what it holds now is read from the process.
//!
//! Debian's build compares the slot with `_PyObject_Malloc` and inlines pymalloc where they
//! are equal (its exported `PyObject_Malloc` does): there the tables are redirected to other
//! entries of the same functions while the trace runs (see
//! [`crate::runtimes::allocator_table`]), so every call reaches the probes.

use tracer_common::programs::{
    PYMALLOC_CALLOC_ENTER, PYMALLOC_FREE_ENTER, PYMALLOC_MALLOC_ENTER, PYMALLOC_REALLOC_ENTER,
    Program,
};

use crate::runtimes::allocator_table::{
    EquivalentEntry, Located, LocatedFunction, ObjectView, Reader, SlotChange, compared_constants,
    equivalent_entry, find_table, initial_words,
};

/// The symbol of the objects that hold CPython's allocators (the executable, or libpython).
pub const MARKER: &str = "PyObject_Malloc";

/// Words of a `PyMemAllocatorEx`: the context, then the four functions.
const WORDS: usize = 5;

/// The readers of each domain's table: the slot of `malloc`, `calloc`, `realloc`, `free`.
const fn readers(symbols: [&'static str; 4]) -> [Reader; 4] {
    [
        Reader {
            symbol: symbols[0],
            slot: 8,
        },
        Reader {
            symbol: symbols[1],
            slot: 16,
        },
        Reader {
            symbol: symbols[2],
            slot: 24,
        },
        Reader {
            symbol: symbols[3],
            slot: 32,
        },
    ]
}

const RAW: [Reader; 4] = readers([
    "PyMem_RawMalloc",
    "PyMem_RawCalloc",
    "PyMem_RawRealloc",
    "PyMem_RawFree",
]);
const MEM: [Reader; 4] = readers([
    "PyMem_Malloc",
    "PyMem_Calloc",
    "PyMem_Realloc",
    "PyMem_Free",
]);
const OBJ: [Reader; 4] = readers([
    "PyObject_Malloc",
    "PyObject_Calloc",
    "PyObject_Realloc",
    "PyObject_Free",
]);

/// pymalloc's functions, in slot order: their names in CPython's source and their programs.
const PYMALLOC: [(&str, &Program); 4] = [
    ("_PyObject_Malloc", &PYMALLOC_MALLOC_ENTER),
    ("_PyObject_Calloc", &PYMALLOC_CALLOC_ENTER),
    ("_PyObject_Realloc", &PYMALLOC_REALLOC_ENTER),
    ("_PyObject_Free", &PYMALLOC_FREE_ENTER),
];

/// What a domain's table holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holds {
    /// pymalloc, as the program started.
    Pymalloc,
    /// pymalloc through its other entries: redirected by a trace (this one's plan for a
    /// process forked from a traced one, or a trace killed before it could restore it).
    Redirected,
    /// The raw domain's functions: `PYTHONMALLOC=malloc`, every block a `malloc`.
    Malloc,
    /// Other functions (debug hooks, tracemalloc's, an extension's): these four.
    Other([u64; 4]),
}

/// CPython's allocators in `object`, when it holds them (it exports `PyObject_Malloc`).
pub fn locate(object: &ObjectView) -> Option<Located> {
    if !defines(object, MARKER) {
        return None;
    }
    let name = object
        .display_path
        .rsplit('/')
        .next()
        .unwrap_or(object.display_path);
    // The raw domain's table first: the others' readers read it too (their fallbacks call
    // through it, inlined), and so may the object domain's the memory domain's.
    let raw = find_table(object, &RAW, &[]);
    let mem = find_table(object, &MEM, raw.as_slice());
    let others: Vec<u64> = raw.into_iter().chain(mem).collect();
    let Some(obj) = find_table(object, &OBJ, &others) else {
        // Where pymalloc has its symbols, the symbol family probes it.
        return (!defines(object, PYMALLOC[0].0)).then(|| {
            unseen(
                object,
                name,
                "its object allocator's table could not be found from PyObject_Malloc's code",
            )
        });
    };
    let Some(initial) = initial_words(object, obj, WORDS) else {
        return Some(unseen(
            object,
            name,
            "its object allocator's table is not in its file",
        ));
    };
    let pymalloc: [u64; 4] = initial[1..].try_into().ok()?;
    if raw
        .and_then(|raw| initial_words(object, raw, WORDS))
        .as_deref()
        == Some(&initial[..])
    {
        return None; // built without pymalloc: every object is a malloc
    }
    let raw_now = raw.and_then(|raw| object.live_words(raw, WORDS));
    let inlined = {
        let constants = compared_constants(object, &[OBJ, MEM].concat());
        pymalloc.iter().any(|f| constants.contains(f))
    };
    let entries: Option<Vec<EquivalentEntry>> = pymalloc
        .iter()
        .map(|function| equivalent_entry(object, *function))
        .collect();
    let mut located = Located::default();
    let mut slots = Vec::new();
    for table in [Some(obj), mem].into_iter().flatten() {
        let now = object
            .live_words(table, WORDS)
            .unwrap_or_else(|| initial.clone());
        let holds = holds(&now[1..], &pymalloc, entries.as_deref(), raw_now.as_deref());
        match holds {
            Holds::Pymalloc | Holds::Redirected => {
                if let (true, Some(entries)) = (inlined, entries.as_deref()) {
                    slots.extend(entries.iter().enumerate().map(|(i, entry)| SlotChange {
                        address: table + 8 * (i as u64 + 1),
                        original: entry.function,
                        redirected: entry.entry,
                    }));
                }
                add_pymalloc(object, &mut located, &pymalloc, entries.as_deref(), inlined);
            }
            Holds::Malloc => {}
            Holds::Other(functions) => add_replaced(object, name, &mut located, &functions),
        }
    }
    if inlined && !slots.is_empty() {
        located.redirect = object.redirect(
            format!("{name}: object allocator"),
            "most objects of 512 bytes or less are not seen (its callers inline it); run it with PYTHONMALLOC=malloc to see them".to_string(),
            slots,
        );
    } else if inlined && entries.is_none() && !located.functions.is_empty() {
        located.note = Some(format!(
            "CPython in {name} inlines its object allocator (pymalloc) into its callers, and one of its functions has no second entry to redirect its table to: most objects of 512 bytes or less are not seen; run it with PYTHONMALLOC=malloc to see them"
        ));
    }
    Some(located)
}

/// What a domain's table holding `now` (its four functions) holds.
fn holds(
    now: &[u64],
    pymalloc: &[u64; 4],
    entries: Option<&[EquivalentEntry]>,
    raw_now: Option<&[u64]>,
) -> Holds {
    if now == pymalloc {
        return Holds::Pymalloc;
    }
    if let Some(entries) = entries
        && now
            .iter()
            .zip(entries)
            .all(|(word, e)| *word == e.function || *word == e.entry)
    {
        return Holds::Redirected;
    }
    if raw_now.is_some_and(|raw| raw.get(1..) == Some(now)) {
        return Holds::Malloc;
    }
    Holds::Other(now.try_into().unwrap_or_default())
}

/// pymalloc's four functions, probed from past the entries calls may come in by once
/// `redirected`.
fn add_pymalloc(
    object: &ObjectView,
    located: &mut Located,
    pymalloc: &[u64; 4],
    entries: Option<&[EquivalentEntry]>,
    redirected: bool,
) {
    for (i, (function, (name, program))) in pymalloc.iter().zip(PYMALLOC).enumerate() {
        let Some(offset) = object.code_offset(*function) else {
            continue;
        };
        let probe_from = entries
            .filter(|_| redirected)
            .and_then(|entries| object.code_offset(entries[i].probe_from))
            .unwrap_or(offset);
        if located.functions.iter().all(|f| f.offset != offset) {
            located.functions.push(LocatedFunction {
                name: name.to_string(),
                program,
                offset,
                probe_from,
            });
        }
    }
}

/// A replaced allocator's functions, probed where they are code of this object; a note when
/// they are elsewhere.
fn add_replaced(object: &ObjectView, name: &str, located: &mut Located, functions: &[u64; 4]) {
    let slots = ["malloc", "calloc", "realloc", "free"];
    for ((function, slot), (_, program)) in functions.iter().zip(slots).zip(PYMALLOC) {
        match object.code_offset(*function) {
            Some(offset) if located.functions.iter().all(|f| f.offset != offset) => {
                located.functions.push(LocatedFunction {
                    name: format!("replaced allocator's {slot}"),
                    program,
                    offset,
                    probe_from: offset,
                });
            }
            Some(_) => {}
            None => {
                located.note = Some(format!(
                    "CPython in {name} has its allocator replaced by code outside it (an extension's): objects of 512 bytes or less are not seen"
                ));
            }
        }
    }
}

/// A CPython whose small objects are not seen, and why (nothing to say when the process
/// runs with `PYTHONMALLOC=malloc`: they are mallocs).
fn unseen(object: &ObjectView, name: &str, why: &str) -> Located {
    Located {
        note: (!malloc_forced(object.pid)).then(|| format!(
            "CPython in {name}: {why}: objects of 512 bytes or less are not seen; run it with PYTHONMALLOC=malloc to see them"
        )),
        ..Located::default()
    }
}

/// True when `object` defines `symbol`.
fn defines(object: &ObjectView, symbol: &str) -> bool {
    use object::{Object, ObjectSymbol};
    object
        .elf
        .dynamic_symbols()
        .chain(object.elf.symbols())
        .any(|s| s.is_definition() && s.name() == Ok(symbol))
}

/// Whether `pid` runs with `PYTHONMALLOC=malloc` (or `malloc_debug`): every object then comes
/// from the C library's malloc.
fn malloc_forced(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|&b| b == 0)
            .any(|var| var == b"PYTHONMALLOC=malloc" || var == b"PYTHONMALLOC=malloc_debug")
    })
}

#[cfg(test)]
mod tests {
    use std::{io::Write, path::Path};

    use object::{Object, ObjectSegment};

    use super::*;
    use crate::{attach::elf::function_offsets, runtimes::allocator_table::file_identity};

    /// `locate` on the file at `path`, for no process (what the file itself says); `None` when
    /// it is not installed.
    fn located(path: &Path) -> Option<(Located, Vec<u8>)> {
        let data = std::fs::read(path).ok()?;
        let elf = object::File::parse(&*data).unwrap();
        let view = ObjectView {
            elf: &elf,
            display_path: path.to_str().unwrap(),
            file: file_identity(path).unwrap(),
            pid: 0,
        };
        let located =
            locate(&view).unwrap_or_else(|| panic!("{}: nothing located", path.display()));
        Some((located, data.clone()))
    }

    fn skip(what: &Path) {
        let _ = writeln!(std::io::stderr(), "SKIP {}: not installed", what.display());
    }

    /// pyenv's builds have pymalloc's symbols: the functions its tables point at are those
    /// the symbols name (in a position-independent libpython, through its relocations), and
    /// nothing is redirected (no caller compares the slots).
    #[test]
    fn pyenv_tables_point_at_pymalloc_s_symbols() {
        let pyenv = std::env::var_os("PYENV_ROOT").unwrap_or_else(|| "/root/.pyenv".into());
        for version in ["3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"] {
            let minor = &version[..version.rfind('.').unwrap()];
            let path =
                Path::new(&pyenv).join(format!("versions/{version}/lib/libpython{minor}.so.1.0"));
            let Some((located, _)) = located(&path) else {
                skip(&path);
                continue;
            };
            let names = PYMALLOC.map(|(name, _)| name);
            let symbols = function_offsets(&path, &names).unwrap();
            assert_eq!(located.functions.len(), 4, "{version}: {located:?}");
            for function in &located.functions {
                assert_eq!(
                    Some(&function.offset),
                    symbols.get(&function.name),
                    "{version} {}",
                    function.name
                );
                assert_eq!(function.probe_from, function.offset);
            }
            assert!(located.redirect.is_none(), "{version}: {located:?}");
            assert!(located.note.is_none(), "{version}: {located:?}");
        }
    }

    /// Debian's builds (stripped, LTO): pymalloc found through its tables, every caller's
    /// comparison seen, both the object and the memory domain's tables redirected to an
    /// entry of each function that runs into it through no-ops or past its landing pad.
    #[test]
    fn distribution_builds_are_redirected_to_equivalent_entries() {
        let sid = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python-roots/sid");
        let builds = [
            Path::new("/usr/bin/python3.11").to_path_buf(),
            sid.join("usr/bin/python3.13"),
            sid.join("usr/bin/python3.14"),
            sid.join("usr/bin/python3.15"),
        ];
        for path in builds {
            let Some((located, data)) = located(&path) else {
                skip(&path);
                continue;
            };
            let what = path.display();
            let redirect = located.redirect.as_ref().expect("a redirect");
            assert_eq!(redirect.slots.len(), 8, "{what}: object and memory domains");
            assert_eq!(located.functions.len(), 4, "{what}");
            let elf = object::File::parse(&*data).unwrap();
            for slot in &redirect.slots {
                assert_ne!(slot.original, slot.redirected);
                let function = located
                    .functions
                    .iter()
                    .find(|f| code_address(&elf, f.offset) == slot.original)
                    .expect("the slot's function is probed");
                // From the other entry, only no-ops (or the landing pad skipped) until the
                // probe's first possible place.
                let probe_from = code_address(&elf, function.probe_from);
                assert!(probe_from >= slot.original.max(slot.redirected), "{what}");
                let from = slot.original.min(slot.redirected);
                let code = &data[function.offset as usize - (slot.original - from) as usize..]
                    [..(probe_from - from) as usize];
                let mut at = from;
                for instruction in crate::arch::decode(code) {
                    assert!(
                        instruction.is_nop || (instruction.is_landing_pad && at == slot.original),
                        "{what}: {} at {at:#x}",
                        instruction.text
                    );
                    at += instruction.length;
                }
                assert_eq!(at, probe_from, "{what}");
            }
        }
    }

    /// The link-time address of a code file offset.
    fn code_address(elf: &object::File, offset: u64) -> u64 {
        elf.segments()
            .find_map(|s| {
                let (start, size) = s.file_range();
                (offset >= start && offset < start + size).then(|| s.address() + offset - start)
            })
            .unwrap()
    }

    /// Debian 12's python3.11 as built (build id 571d98e0...): the tables and entries read
    /// with objdump.
    #[test]
    fn debian_python3_11_tables_and_entries() {
        let path = Path::new("/usr/bin/python3.11");
        let Ok(data) = std::fs::read(path) else {
            return skip(path);
        };
        let elf = object::File::parse(&*data).unwrap();
        if elf.build_id().ok().flatten().map(<[u8]>::to_vec)
            != Some(hex("571d98e01096d5c1c32420d229a6731a0a50d2a0"))
        {
            let _ = writeln!(std::io::stderr(), "SKIP {}: another build", path.display());
            return;
        }
        let redirect = located(path).unwrap().0.redirect.unwrap();
        let slots: Vec<(u64, u64, u64)> = redirect
            .slots
            .iter()
            .map(|s| (s.address, s.original, s.redirected))
            .collect();
        assert_eq!(
            slots,
            [
                // _PyObject: `nopl` before malloc, `nop` before calloc and realloc (two bytes
                // differ: written with the threads stopped), `nop` before free.
                (0x959f48, 0x4fb450, 0x4fb448),
                (0x959f50, 0x506400, 0x5063ff),
                (0x959f58, 0x510c00, 0x510bff),
                (0x959f60, 0x500fe0, 0x500fdf),
                // _PyMem: the same functions.
                (0x959f88, 0x4fb450, 0x4fb448),
                (0x959f90, 0x506400, 0x5063ff),
                (0x959f98, 0x510c00, 0x510bff),
                (0x959fa0, 0x500fe0, 0x500fdf),
            ]
        );
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
