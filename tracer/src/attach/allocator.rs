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
    let heap_names: Vec<&str> = HEAP_ENTRY_POINTS.iter().map(|e| e.symbol).collect();
    let map_names: Vec<&str> = MAP_ENTRY_POINTS.iter().map(|e| e.symbol).collect();
    let mut heap: Option<(&Candidate, HashMap<String, u64>)> = None;
    let mut mapping: Option<(&Candidate, HashMap<String, u64>)> = None;
    for candidate in candidates {
        if heap.is_some() && mapping.is_some() {
            break;
        }
        let Ok(offsets) = function_offsets(&candidate.open_path, &heap_names) else {
            continue;
        };
        if heap.is_none() && offsets.contains_key("malloc") && offsets.contains_key("free") {
            heap = Some((candidate, offsets));
        }
        if mapping.is_none()
            && let Ok(offsets) = function_offsets(&candidate.open_path, &map_names)
            && offsets.contains_key("mmap")
            && offsets.contains_key("munmap")
        {
            mapping = Some((candidate, offsets));
        }
    }
    let Some((heap_object, heap_offsets)) = heap else {
        return Err(TraceError::NoAllocator {
            pid,
            searched: candidates
                .iter()
                .map(|c| c.display_path.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let mut objects: Vec<ProbeObject> = Vec::new();
    let mut add = |candidate: &Candidate, offsets: &HashMap<String, u64>, points: &[EntryPoint]| {
        let Ok(meta) = std::fs::metadata(&candidate.open_path) else {
            return;
        };
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
        let sites = &mut objects[index].sites;
        for point in points {
            let Some(&offset) = offsets.get(point.symbol) else {
                continue;
            };
            match sites.iter_mut().find(|s| s.offset == offset) {
                Some(site) => site.symbols.push(point.symbol),
                None => sites.push(ProbeSite {
                    program: point.program,
                    role: point.role,
                    offset,
                    symbols: vec![point.symbol],
                }),
            }
        }
    };
    add(heap_object, &heap_offsets, HEAP_ENTRY_POINTS);
    if let Some((map_object, map_offsets)) = &mapping {
        add(map_object, map_offsets, MAP_ENTRY_POINTS);
    }
    Ok(AttachPlan {
        objects,
        allocator: heap_object.display_path.clone(),
    })
}
