//! Which object serves a process's allocations, and which entry points to probe in it.
//!
//! The dynamic linker binds `malloc` to the first loaded object that defines it: the executable
//! (static binaries, programs with their own allocator), then LD_PRELOADs, then libraries in load
//! order. We probe that object's allocation functions; the prefixed APIs of jemalloc (`je_`),
//! mimalloc (`mi_`) and tcmalloc (`tc_`) wherever an object defines them; and C++ `operator
//! new`. Entry points at one address (glibc's `aligned_alloc` and `memalign`, an allocator's
//! `malloc` aliased to its `mi_malloc`) are probed once. Mappings need no probe here: the
//! system calls themselves are traced (`syscall_enter`/`syscall_exit`).
//!
//! Objects of a running process are opened through `/proc/PID/map_files/`, which is the very
//! file the process maps even inside another mount namespace, and checked by device and inode
//! against its memory map before anything is attached.

use std::{collections::HashMap, os::unix::fs::MetadataExt, path::PathBuf};

/// What a probed entry point does to the outstanding set (from the program table).
pub use tracer_common::programs::Role;
use tracer_common::programs::{self, Program};

use crate::{
    attach::{elf::function_offsets, placement},
    error::TraceError,
    runtimes::{
        Runtimes,
        allocator_table::{self, ObjectView, TableRedirect},
    },
    target::{maps::Mapping, process::path_in_root},
};

/// An allocator entry point: symbol name, the eBPF entry program for it, and its role (the
/// program's, from the table).
#[derive(Clone, Debug)]
pub struct EntryPoint {
    pub symbol: String,
    pub program: &'static str,
    pub role: Role,
}

fn entry(symbol: impl Into<String>, program: &'static Program) -> EntryPoint {
    EntryPoint {
        symbol: symbol.into(),
        program: program.name,
        role: program.role,
    }
}

/// The malloc family under `prefix` ("" for the standard names).
pub fn heap_entry_points(prefix: &str) -> Vec<EntryPoint> {
    [
        ("free", &programs::FREE_ENTER),
        ("malloc", &programs::MALLOC_ENTER),
        ("calloc", &programs::CALLOC_ENTER),
        ("realloc", &programs::REALLOC_ENTER),
        ("reallocarray", &programs::REALLOCARRAY_ENTER),
        ("posix_memalign", &programs::POSIX_MEMALIGN_ENTER),
        ("aligned_alloc", &programs::MEMALIGN_ENTER),
        ("memalign", &programs::MEMALIGN_ENTER),
        ("valloc", &programs::MALLOC_ENTER),
        ("pvalloc", &programs::PVALLOC_ENTER),
    ]
    .into_iter()
    .map(|(name, program)| entry(format!("{prefix}{name}"), program))
    .collect()
}

/// C++ `operator new` (plain, array, nothrow, aligned), probed in the object that defines it
/// when that object has its own allocator (tcmalloc, a static binary). libstdc++'s and libc++'s
/// `operator new` import `malloc`, which the heap family already probes: there the unwinder
/// walks through `operator new` (folded as allocator plumbing in reports) and probing it too
/// would only cost two more traps per allocation. `operator delete` needs no probe: it ends in
/// `free`.
pub fn cxx_entry_points() -> Vec<EntryPoint> {
    [
        "_Znwm",
        "_Znam",
        "_ZnwmRKSt9nothrow_t",
        "_ZnamRKSt9nothrow_t",
        "_ZnwmSt11align_val_t",
        "_ZnamSt11align_val_t",
        "_ZnwmSt11align_val_tRKSt9nothrow_t",
        "_ZnamSt11align_val_tRKSt9nothrow_t",
    ]
    .into_iter()
    .map(|name| entry(name, &programs::MALLOC_ENTER))
    .collect()
}

/// Prefixed allocator APIs programs may call directly, beside (or instead of) `malloc`.
const ALLOCATOR_PREFIXES: &[&str] = &["je_", "mi_", "tc_"];

/// `--allocator PATH[:PREFIX]`: the object (as the target sees its path) that serves `malloc`,
/// and the prefix of its function names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatorOverride {
    pub path: String,
    pub prefix: String,
}

impl std::str::FromStr for AllocatorOverride {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (path, prefix) = text.split_once(':').unwrap_or((text, ""));
        if path.is_empty() {
            return Err(
                "--allocator needs a path, e.g. /usr/lib/libjemalloc.so.2 or ./app:je_".into(),
            );
        }
        Ok(Self {
            path: path.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// A family of entry points, probed in the first object (in symbol-resolution order) that
/// defines all of `required`.
struct Family {
    points: Vec<EntryPoint>,
    required: Vec<String>,
    /// The family that serves `malloc`: without it there is nothing to trace.
    essential: bool,
    /// Only an object with this path (or file name) qualifies.
    only: Option<String>,
    /// Left unprobed in an object that imports this symbol (its calls reach a probed
    /// function already).
    unless_importing: Option<&'static str>,
}

fn families(allocator: Option<&AllocatorOverride>) -> Vec<Family> {
    let heap = |prefix: &str, essential: bool, only: Option<String>| Family {
        points: heap_entry_points(prefix),
        required: vec![format!("{prefix}malloc"), format!("{prefix}free")],
        essential,
        only,
        unless_importing: None,
    };
    let mut families = vec![match allocator {
        Some(a) => heap(&a.prefix, true, Some(a.path.clone())),
        None => heap("", true, None),
    }];
    for prefix in ALLOCATOR_PREFIXES {
        if allocator.is_none_or(|a| a.prefix != *prefix) {
            families.push(heap(prefix, false, None));
        }
    }
    families.push(Family {
        points: cxx_entry_points(),
        required: vec!["_Znwm".into()],
        essential: false,
        only: None,
        // Without an --allocator override, the malloc it imports is the one probed.
        unless_importing: allocator.is_none().then_some("malloc"),
    });
    // What the language runtimes want probed (CPython's small-object allocator and teardown),
    // wherever it is defined.
    for family in Runtimes::entry_families() {
        families.push(Family {
            points: family
                .points
                .into_iter()
                .map(|(symbol, program)| entry(symbol, program))
                .collect(),
            required: family.required.into_iter().map(String::from).collect(),
            essential: false,
            only: None,
            unless_importing: None,
        });
    }
    families
}

/// One place to attach: a distinct address in an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    /// eBPF entry program.
    pub program: &'static str,
    pub role: Role,
    /// File offset of the function.
    pub offset: u64,
    /// File offset from which the entry probe may go: the function's, or past the entries its
    /// calls may come in by (see [`crate::runtimes::allocator_table`]).
    pub probe_from: u64,
    /// File offset of the entry probe (and of an allocating call's return probe): the
    /// function's, or past instructions the kernel would single-step (see
    /// [`crate::attach::placement`]); release and allocating calls only.
    pub probe_offset: u64,
    /// The instructions skipped to get there.
    pub skipped: Vec<String>,
    /// Every symbol at this address (aliases share one probe).
    pub symbols: Vec<String>,
}

/// An object file to probe, as reachable from leaktracer's mount namespace.
#[derive(Clone, Debug)]
pub struct ProbeObject {
    /// Path used to attach and read symbols (`/proc/PID/map_files/...` for a running process).
    pub open_path: PathBuf,
    /// Path as the target sees it, for reports.
    pub display_path: String,
    pub dev: u64,
    pub inode: u64,
    pub sites: Vec<ProbeSite>,
}

/// Everything to attach for one process.
#[derive(Clone, Debug)]
pub struct AttachPlan {
    /// Objects to probe, deduplicated by device and inode.
    pub objects: Vec<ProbeObject>,
    /// The object that serves `malloc`, as the process sees its path.
    pub allocator: String,
    /// Its device and inode.
    pub allocator_file: (u64, u64),
    /// Runtime allocator tables to redirect in the process once its probes are in (undone at
    /// detach).
    pub redirects: Vec<TableRedirect>,
    /// What a runtime's allocator leaves unseen in this process, said once it is attached.
    pub notes: Vec<String>,
}

impl AttachPlan {
    /// Puts every probe back at its symbol's entry, the usual placement (for benchmarks: the
    /// floor tools other than leaktracer pay).
    pub fn place_at_symbol_entries(&mut self) {
        for site in self.objects.iter_mut().flat_map(|o| o.sites.iter_mut()) {
            site.probe_offset = site.probe_from;
            site.skipped.clear();
        }
    }
}

/// `--reachability`: also probes the C library's `exit`, where the process's picture freezes
/// and the kernel stops it so it is scanned before its teardown (atexit handlers, destructors)
/// runs. Best effort: a C library without `exit` (or none probed) gets no stop.
pub fn add_exit_stop(plan: &mut AttachPlan) {
    for object in &mut plan.objects {
        if !file_name(&object.display_path).starts_with("libc") {
            continue;
        }
        let Ok(offsets) = super::elf::function_offsets(&object.open_path, &["exit"]) else {
            continue;
        };
        let Some(&offset) = offsets.get("exit") else {
            continue;
        };
        if object.sites.iter().any(|s| s.probe_offset == offset) {
            return;
        }
        object.sites.push(ProbeSite {
            program: programs::INTERPRETER_EXIT.name,
            role: programs::INTERPRETER_EXIT.role,
            offset,
            probe_from: offset,
            probe_offset: offset,
            skipped: Vec::new(),
            symbols: vec!["exit".to_string()],
        });
        return;
    }
}

/// A candidate object, in symbol-resolution order.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub open_path: PathBuf,
    pub display_path: String,
    /// Device and inode the process maps; the opened file must be that file.
    pub expected: Option<(u64, u64)>,
}

/// Candidate objects of a running process: every file-backed executable mapping, each once by
/// device and inode, in the order the dynamic linker resolves symbols: the executable, the
/// LD_PRELOADs, the other libraries, the C library last.
pub fn candidates_from_maps(pid: u32, maps: &[Mapping]) -> Vec<Candidate> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let preloads = preloads_of(pid);
    let mut seen = Vec::new();
    let mut out: Vec<Candidate> = Vec::new();
    for mapping in maps.iter().filter(|m| m.is_file() && m.is_executable()) {
        let key = (mapping.dev.clone(), mapping.inode);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let map_file = PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            mapping.start, mapping.end
        ));
        // map_files needs CAP_SYS_ADMIN; without it, the path through the process's root
        // reaches the same file (checked by device and inode before it is probed).
        let open_path = match std::fs::metadata(&map_file) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => mapping
                .clean_path()
                .map_or(map_file, |path| path_in_root(pid, path)),
            _ => map_file,
        };
        out.push(Candidate {
            open_path,
            display_path: mapping.clean_path().unwrap_or_default().to_string(),
            expected: mapping.dev_number().map(|dev| (dev, mapping.inode)),
        });
    }
    let rank = |c: &Candidate| {
        let name = file_name(&c.display_path);
        if exe
            .as_deref()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.trim_end_matches(" (deleted)") == c.display_path)
        {
            (0, 0)
        } else if let Some(i) = preloads
            .iter()
            .position(|p| p == &c.display_path || file_name(p) == name)
        {
            (1, i)
        } else if is_c_library(&c.display_path) {
            (3, 0)
        } else {
            (2, 0)
        }
    };
    out.sort_by_key(rank);
    out
}

/// LD_PRELOAD of the process, then its /etc/ld.so.preload, in order.
fn preloads_of(pid: u32) -> Vec<String> {
    let mut preloads = Vec::new();
    if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
        for var in environ.split(|b| *b == 0) {
            if let Some(value) = var.strip_prefix(b"LD_PRELOAD=") {
                preloads.extend(
                    String::from_utf8_lossy(value)
                        .split([' ', ':'])
                        .filter(|p| !p.is_empty())
                        .map(str::to_string),
                );
            }
        }
    }
    if let Ok(file) = std::fs::read_to_string(path_in_root(pid, "/etc/ld.so.preload")) {
        preloads.extend(file.split_whitespace().map(str::to_string));
    }
    preloads
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// True for the C library itself (glibc or musl), which other allocators interpose.
fn is_c_library(path: &str) -> bool {
    let name = file_name(path);
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
}

/// Builds the attach plan from candidates in symbol-resolution order.
pub fn plan(
    pid: u32,
    candidates: &[Candidate],
    allocator: Option<&AllocatorOverride>,
) -> Result<AttachPlan, TraceError> {
    let families = families(allocator);
    let markers = Runtimes::allocator_markers();
    let wanted: Vec<&str> = families
        .iter()
        .flat_map(|f| f.points.iter().map(|e| e.symbol.as_str()))
        .chain(markers.iter().copied())
        .collect();
    // The objects that export a runtime's allocator marker: its allocator is looked for there.
    let mut chosen_by_marker: Vec<&Candidate> = Vec::new();
    // Each family's object and the offsets of its symbols there.
    let mut chosen: Vec<Option<(&Candidate, HashMap<String, u64>)>> = vec![None; families.len()];
    for candidate in candidates {
        if !is_the_mapped_file(candidate) {
            continue;
        }
        let Ok(offsets) = function_offsets(&candidate.open_path, &wanted) else {
            continue;
        };
        if markers.iter().any(|m| offsets.contains_key(*m)) {
            chosen_by_marker.push(candidate);
        }
        for (family, slot) in families.iter().zip(chosen.iter_mut()) {
            let qualifies = family.only.as_deref().is_none_or(|only| {
                only == candidate.display_path || only == file_name(&candidate.display_path)
            });
            if slot.is_none()
                && qualifies
                && family.required.iter().all(|s| offsets.contains_key(s))
            {
                *slot = Some((candidate, offsets.clone()));
            }
        }
    }
    let mut allocator_object = None;
    let mut mappings_only = false;
    let mut objects: Vec<ProbeObject> = Vec::new();
    for (family, slot) in families.iter().zip(&chosen) {
        let Some((candidate, offsets)) = slot else {
            if family.essential {
                if pid != 0 && !crate::target::process::is_alive(pid) {
                    return Err(TraceError::ExitedDuringAttach(pid));
                }
                let unopenable = candidates.iter().find_map(|c| {
                    std::fs::File::open(&c.open_path)
                        .err()
                        .filter(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
                        .map(|e| format!("{}: {e}", c.display_path))
                });
                if let Some(reason) = unopenable {
                    return Err(TraceError::ObjectsNotOpenable {
                        pid,
                        reason,
                        why: super::probes::access_refusal(),
                    });
                }
                // No malloc anywhere (Go, a static program without libc's allocator): its
                // mappings are still traced, by the system calls.
                if family.only.is_none() {
                    mappings_only = true;
                    continue;
                }
                return Err(TraceError::NoAllocator {
                    pid,
                    searched: match &family.only {
                        Some(only) => format!(
                            "{only} (from --allocator), with {}",
                            family.required.join(" and ")
                        ),
                        None => candidates
                            .iter()
                            .map(|c| c.display_path.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    },
                });
            }
            continue;
        };
        if let Some(symbol) = family.unless_importing
            && super::elf::imports(&candidate.open_path, symbol).unwrap_or(false)
        {
            continue;
        }
        let Some(object) = probe_object(&mut objects, candidate) else {
            if family.essential {
                // Found a moment ago, gone now: the process exited (or exec'd) meanwhile.
                return Err(if crate::target::process::is_alive(pid) {
                    TraceError::ObjectsNotOpenable {
                        pid,
                        reason: format!("{} vanished while attaching", candidate.display_path),
                        why: "it exec'd or unmapped it meanwhile".to_string(),
                    }
                } else {
                    TraceError::ExitedDuringAttach(pid)
                });
            }
            continue;
        };
        if family.essential {
            allocator_object = Some((candidate.display_path.clone(), (object.dev, object.inode)));
        }
        for point in &family.points {
            let Some(&offset) = offsets.get(&point.symbol) else {
                continue;
            };
            match object.sites.iter_mut().find(|s| s.offset == offset) {
                Some(site) => site.symbols.push(point.symbol.clone()),
                None => object.sites.push(ProbeSite {
                    program: point.program,
                    role: point.role,
                    offset,
                    probe_from: offset,
                    probe_offset: offset,
                    skipped: Vec::new(),
                    symbols: vec![point.symbol.clone()],
                }),
            }
        }
    }
    let (redirects, notes) = add_runtime_allocators(pid, &chosen_by_marker, &mut objects);
    for object in &mut objects {
        place_call_probes(object);
    }
    let Some((allocator, allocator_file)) = allocator_object else {
        if mappings_only {
            return Ok(AttachPlan {
                objects,
                allocator: NO_ALLOCATOR.to_string(),
                allocator_file: (0, 0),
                redirects,
                notes,
            });
        }
        return Err(TraceError::ExitedDuringAttach(pid));
    };
    Ok(AttachPlan {
        objects,
        allocator,
        allocator_file,
        redirects,
        notes,
    })
}

/// The allocators language runtimes call through tables (CPython's), found in the objects
/// that export a runtime's marker symbol: their functions join the object's probe sites, and
/// the redirects and notes they need are returned.
fn add_runtime_allocators(
    pid: u32,
    candidates: &[&Candidate],
    objects: &mut Vec<ProbeObject>,
) -> (Vec<TableRedirect>, Vec<String>) {
    let (mut redirects, mut notes) = (Vec::new(), Vec::new());
    for candidate in candidates {
        let Ok(data) = crate::target::object_file::read(&candidate.open_path) else {
            continue;
        };
        let Ok(elf) = object::File::parse(&*data) else {
            continue;
        };
        let Ok(file) = allocator_table::file_identity(&candidate.open_path) else {
            continue;
        };
        let view = ObjectView {
            elf: &elf,
            display_path: &candidate.display_path,
            file,
            pid,
        };
        let Some(located) = Runtimes::locate_allocator(&view) else {
            continue;
        };
        notes.extend(located.note);
        redirects.extend(located.redirect);
        let Some(object) = probe_object(objects, candidate) else {
            continue;
        };
        for function in located.functions {
            match object
                .sites
                .iter_mut()
                .find(|s| s.offset == function.offset)
            {
                Some(site) => {
                    site.probe_from = site.probe_from.max(function.probe_from);
                    if !site.symbols.contains(&function.name) {
                        site.symbols.push(function.name);
                    }
                }
                None => object.sites.push(ProbeSite {
                    program: function.program.name,
                    role: function.program.role,
                    offset: function.offset,
                    probe_from: function.probe_from,
                    probe_offset: function.probe_from,
                    skipped: Vec::new(),
                    symbols: vec![function.name],
                }),
            }
        }
    }
    (redirects, notes)
}

/// The plan's allocator when no object defines `malloc` and `free`.
pub const NO_ALLOCATOR: &str = "none (no object defines malloc and free: mappings only)";

/// Moves the probes of release and allocating calls (an allocating call's return probe with
/// its entry probe) past leading instructions the kernel would single-step.
fn place_call_probes(object: &mut ProbeObject) {
    let movable = |site: &ProbeSite| matches!(site.role, Role::Release | Role::Allocate);
    if !object.sites.iter().any(movable) {
        return;
    }
    let Ok(data) = crate::target::object_file::read(&object.open_path) else {
        return;
    };
    for site in object.sites.iter_mut().filter(|s| movable(s)) {
        let start = site.probe_from as usize;
        let Some(code) = data.get(start..(start + 64).min(data.len())) else {
            continue;
        };
        let placement = placement::place(code, &placement::registers_read_by(site.program));
        site.probe_offset = site.probe_from + placement.delta;
        site.skipped = placement.skipped;
    }
}

/// True when the opened file is the one the process maps (same device and inode).
fn is_the_mapped_file(candidate: &Candidate) -> bool {
    let Some((dev, inode)) = candidate.expected else {
        return true;
    };
    std::fs::metadata(&candidate.open_path).is_ok_and(|m| m.dev() == dev && m.ino() == inode)
}

/// The plan's entry for `candidate`'s file, added if new (objects are told apart by device and
/// inode, so one file reached by two paths is probed once).
fn probe_object<'a>(
    objects: &'a mut Vec<ProbeObject>,
    candidate: &Candidate,
) -> Option<&'a mut ProbeObject> {
    let meta = std::fs::metadata(&candidate.open_path).ok()?;
    let index = match objects
        .iter()
        .position(|o| o.dev == meta.dev() && o.inode == meta.ino())
    {
        Some(index) => index,
        None => {
            objects.push(ProbeObject {
                open_path: candidate.open_path.clone(),
                display_path: candidate.display_path.clone(),
                dev: meta.dev(),
                inode: meta.ino(),
                sites: Vec::new(),
            });
            objects.len() - 1
        }
    };
    objects.get_mut(index)
}

/// Candidates for a command about to be launched: the objects the dynamic linker will load, in
/// its order (opened by their paths: the command runs in our mount namespace).
pub fn candidates_from_paths(paths: &[PathBuf]) -> Vec<Candidate> {
    paths
        .iter()
        .map(|path| Candidate {
            open_path: path.clone(),
            display_path: path.display().to_string(),
            expected: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn glibc_aliases_are_probed_once() {
        let pid = std::process::id();
        // The plan opens objects through map_files, whose entries only CAP_SYS_ADMIN may open.
        let opened = std::fs::read_dir(format!("/proc/{pid}/map_files"))
            .and_then(|mut entries| entries.next().expect("a mapping")?.path().metadata());
        if let Err(error) = opened {
            // Straight to stderr: the harness would hide a print of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: opening /proc/{pid}/map_files needs root (CAP_SYS_ADMIN): {error}"
            );
            return;
        }
        let maps = crate::target::maps::read_maps(pid).unwrap();
        let plan = plan(pid, &candidates_from_maps(pid, &maps), None).unwrap();
        assert!(is_c_library(&plan.allocator), "{}", plan.allocator);
        let sites: Vec<&ProbeSite> = plan.objects.iter().flat_map(|o| &o.sites).collect();
        let offsets: Vec<u64> = sites.iter().map(|s| s.offset).collect();
        let mut unique = offsets.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(offsets.len(), unique.len(), "each address once");
        let malloc = sites
            .iter()
            .find(|s| s.symbols.contains(&"malloc".to_string()))
            .unwrap();
        assert_eq!(malloc.program, "malloc_enter");
        assert!(
            plan.objects
                .iter()
                .all(|o| o.open_path.starts_with(format!("/proc/{pid}/map_files")))
        );
    }

    #[test]
    fn allocator_override_parses_path_and_prefix() {
        let a: AllocatorOverride = "/opt/app:je_".parse().unwrap();
        assert_eq!((a.path.as_str(), a.prefix.as_str()), ("/opt/app", "je_"));
        let b: AllocatorOverride = "libjemalloc.so.2".parse().unwrap();
        assert_eq!(b.prefix, "");
        assert!(":je_".parse::<AllocatorOverride>().is_err());
    }
}
