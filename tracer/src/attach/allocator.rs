//! Which object serves the target's allocations, and which entry points to probe in it.
//!
//! The dynamic linker binds `malloc` to the first loaded object that defines it: the executable
//! (static binaries, programs with their own allocator), then LD_PRELOADs, then libraries in load
//! order. We probe that object's allocation functions, and `mmap`/`munmap`/`mremap` in the object
//! that defines those (libc). Entry points at the same address (glibc's `aligned_alloc` and
//! `memalign`, `mmap` and `mmap64`) are probed once.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{
    attach::elf::function_offsets,
    error::TraceError,
    target::{maps::Mapping, process::path_in_root},
};

/// What a probed entry point does to the outstanding set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Releases memory (free, munmap): attached first, so no allocation is seen without its free.
    Release,
    /// Produces memory: an entry program plus the shared return program.
    Allocate,
}

/// An allocator entry point: symbol name, the eBPF entry program for it, and its role.
pub struct EntryPoint {
    pub symbol: &'static str,
    pub program: &'static str,
    pub role: Role,
}

const fn entry(symbol: &'static str, program: &'static str, role: Role) -> EntryPoint {
    EntryPoint {
        symbol,
        program,
        role,
    }
}

/// Heap entry points, probed in the object that serves `malloc`.
pub const HEAP_ENTRY_POINTS: &[EntryPoint] = &[
    entry("free", "free_enter", Role::Release),
    entry("malloc", "malloc_enter", Role::Allocate),
    entry("calloc", "calloc_enter", Role::Allocate),
    entry("realloc", "realloc_enter", Role::Allocate),
    entry("reallocarray", "reallocarray_enter", Role::Allocate),
    entry("posix_memalign", "posix_memalign_enter", Role::Allocate),
    entry("aligned_alloc", "memalign_enter", Role::Allocate),
    entry("memalign", "memalign_enter", Role::Allocate),
    entry("valloc", "malloc_enter", Role::Allocate),
    entry("pvalloc", "pvalloc_enter", Role::Allocate),
];

/// Mapping entry points, probed in the object that defines `mmap` (the C library).
pub const MAP_ENTRY_POINTS: &[EntryPoint] = &[
    entry("munmap", "munmap_enter", Role::Release),
    entry("mmap", "mmap_enter", Role::Allocate),
    entry("mmap64", "mmap_enter", Role::Allocate),
    entry("mremap", "mremap_enter", Role::Allocate),
];

/// C++ `operator new` (plain, array, nothrow, aligned), probed in the object that defines it
/// (libstdc++ or libc++). Probing the wrapper makes frame 0 the code that said `new`: libstdc++
/// has no frame pointers, so a stack taken at `malloc` would lose that caller. The `malloc`
/// inside is then a nested call. `operator delete` needs no probe: it ends in `free`.
pub const CXX_ENTRY_POINTS: &[EntryPoint] = &[
    entry("_Znwm", "malloc_enter", Role::Allocate),
    entry("_Znam", "malloc_enter", Role::Allocate),
    entry("_ZnwmRKSt9nothrow_t", "malloc_enter", Role::Allocate),
    entry("_ZnamRKSt9nothrow_t", "malloc_enter", Role::Allocate),
    entry("_ZnwmSt11align_val_t", "malloc_enter", Role::Allocate),
    entry("_ZnamSt11align_val_t", "malloc_enter", Role::Allocate),
    entry(
        "_ZnwmSt11align_val_tRKSt9nothrow_t",
        "malloc_enter",
        Role::Allocate,
    ),
    entry(
        "_ZnamSt11align_val_tRKSt9nothrow_t",
        "malloc_enter",
        Role::Allocate,
    ),
];

/// A family of entry points, probed in the first object (in symbol-resolution order) that
/// defines all of `required`.
struct Family {
    points: &'static [EntryPoint],
    required: &'static [&'static str],
    /// The family without which there is nothing to trace.
    essential: bool,
}

const FAMILIES: &[Family] = &[
    Family {
        points: HEAP_ENTRY_POINTS,
        required: &["malloc", "free"],
        essential: true,
    },
    Family {
        points: MAP_ENTRY_POINTS,
        required: &["mmap", "munmap"],
        essential: false,
    },
    Family {
        points: CXX_ENTRY_POINTS,
        required: &["_Znwm"],
        essential: false,
    },
];

/// One place to attach: a distinct address in an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    /// eBPF entry program.
    pub program: &'static str,
    pub role: Role,
    /// File offset of the function.
    pub offset: u64,
    /// Every symbol at this address (aliases share one probe).
    pub symbols: Vec<&'static str>,
}

/// An object file to probe, as reachable from leaktracer's mount namespace.
#[derive(Clone, Debug)]
pub struct ProbeObject {
    /// Path used to attach and read symbols (through `/proc/PID/root` for a running process).
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
    /// The object that serves `malloc`, for the report.
    pub allocator: String,
}

/// A candidate object, in symbol-resolution order.
pub struct Candidate {
    pub open_path: PathBuf,
    pub display_path: String,
}

/// Candidate objects of a running process: every file-backed executable mapping, the executable
/// first, then the others in address order, each once by device and inode.
pub fn candidates_from_maps(pid: u32, maps: &[Mapping]) -> Vec<Candidate> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut seen = Vec::new();
    let mut out: Vec<Candidate> = Vec::new();
    for mapping in maps.iter().filter(|m| m.is_file() && m.is_executable()) {
        let key = (mapping.dev.clone(), mapping.inode);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let path = mapping.clean_path().unwrap_or_default().to_string();
        let candidate = Candidate {
            open_path: path_in_root(pid, &path),
            display_path: path.clone(),
        };
        if exe.as_deref() == Some(Path::new(&path)) {
            out.insert(0, candidate);
        } else {
            out.push(candidate);
        }
    }
    // Preloaded or bundled allocators come before the C library in practice; libc last among
    // equals keeps `malloc` bound to the interposer.
    out.sort_by_key(|c| {
        let is_exe = exe.as_deref() == Some(Path::new(&c.display_path));
        (!is_exe, is_c_library(&c.display_path))
    });
    out
}

/// True for the C library itself (glibc or musl), which other allocators interpose.
fn is_c_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
}

/// Builds the attach plan from candidates in symbol-resolution order.
pub fn plan(pid: u32, candidates: &[Candidate]) -> Result<AttachPlan, TraceError> {
    let wanted: Vec<&str> = FAMILIES
        .iter()
        .flat_map(|f| f.points.iter().map(|e| e.symbol))
        .collect();
    // Each family's object and the offsets of its symbols there.
    let mut chosen: Vec<Option<(&Candidate, HashMap<String, u64>)>> = vec![None; FAMILIES.len()];
    for candidate in candidates {
        if chosen.iter().all(Option::is_some) {
            break;
        }
        let Ok(offsets) = function_offsets(&candidate.open_path, &wanted) else {
            continue;
        };
        for (family, slot) in FAMILIES.iter().zip(chosen.iter_mut()) {
            if slot.is_none() && family.required.iter().all(|s| offsets.contains_key(*s)) {
                *slot = Some((candidate, offsets.clone()));
            }
        }
    }
    let mut allocator = None;
    let mut objects: Vec<ProbeObject> = Vec::new();
    for (family, slot) in FAMILIES.iter().zip(&chosen) {
        let Some((candidate, offsets)) = slot else {
            if family.essential {
                return Err(TraceError::NoAllocator {
                    pid,
                    searched: candidates
                        .iter()
                        .map(|c| c.display_path.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            continue;
        };
        if family.essential {
            allocator = Some(candidate.display_path.clone());
        }
        let Some(object) = probe_object(&mut objects, candidate) else {
            continue;
        };
        for point in family.points {
            let Some(&offset) = offsets.get(point.symbol) else {
                continue;
            };
            match object.sites.iter_mut().find(|s| s.offset == offset) {
                Some(site) => site.symbols.push(point.symbol),
                None => object.sites.push(ProbeSite {
                    program: point.program,
                    role: point.role,
                    offset,
                    symbols: vec![point.symbol],
                }),
            }
        }
    }
    Ok(AttachPlan {
        objects,
        allocator: allocator.expect("the essential family was found"),
    })
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
