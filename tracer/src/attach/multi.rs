//! Second copies of the uprobe programs, loaded for `uprobe_multi` links: one link attaches a
//! program at every offset of one file in one process, and detaching it waits for one grace
//! period instead of one per probe (~0.1 s each, which the kernel serializes).
//!
//! aya 0.14 cannot load a program for these links (it never passes the
//! `BPF_TRACE_UPROBE_MULTI` attach type, and a program loaded without it cannot attach there,
//! while one loaded with it cannot attach through a perf event). So the copies are loaded here
//! from the same embedded object with aya-obj, aya's own parser, the way aya does it, except
//! that their map references point at the maps aya created: both copies share every map,
//! globals (`.rodata`, `.bss`) included.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData};

use super::bpf_sys;

/// Set (to anything but `0`): no `uprobe_multi` links, one perf event per probe as before
/// (for benchmarks and kernels that misbehave).
pub const DISABLE_ENV: &str = "LEAKTRACER_NO_UPROBE_MULTI";

/// True when [`DISABLE_ENV`] turns the links off.
pub fn disabled() -> bool {
    std::env::var_os(DISABLE_ENV).is_some_and(|v| v != "0")
}

/// Why the copies could not be loaded (the per-probe path is used then).
#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error("parsing the eBPF object: {0}")]
    Parse(String),
    #[error("the object's BTF: {0}")]
    Btf(String),
    #[error("relocating: {0}")]
    Relocate(String),
    #[error("map {0} was not created by aya")]
    MissingMap(String),
    #[error("program {0} missing from the object")]
    MissingProgram(String),
    #[error("loading {program}: {source}")]
    Load {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the loading thread panicked")]
    Panicked,
}

/// The loaded copies, by program name.
pub struct MultiPrograms {
    programs: HashMap<&'static str, OwnedFd>,
    /// How long each took to load (verify), in load order.
    pub load_times: Vec<(&'static str, Duration)>,
}

/// Duplicates of aya's map fds by name (see [`map_fds`]), kept to load more copies later.
pub type MapFds = Arc<HashMap<String, OwnedFd>>;

impl MultiPrograms {
    /// Whether the copy of `program` is loaded.
    pub fn has(&self, program: &str) -> bool {
        self.programs.contains_key(program)
    }

    /// Loads the copies of `names` not loaded yet (a program first needed after the start:
    /// pymalloc's when a Python process appears).
    pub fn load_more(
        &mut self,
        object: &[u8],
        maps: &MapFds,
        names: &[&'static str],
    ) -> Result<(), MultiError> {
        let missing: Vec<&'static str> = names
            .iter()
            .copied()
            .filter(|name| !self.has(name))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let more = load(object, maps, &missing)?;
        self.merge(more);
        Ok(())
    }

    /// Takes in copies loaded elsewhere (see [`load_in_background`]); a copy loaded twice keeps
    /// the first.
    pub fn merge(&mut self, more: MultiPrograms) {
        for (name, fd) in more.programs {
            self.programs.entry(name).or_insert(fd);
        }
        self.load_times.extend(more.load_times);
    }

    /// The copy of `program`.
    pub fn program(&self, program: &str) -> Option<BorrowedFd<'_>> {
        self.programs.get(program).map(AsFd::as_fd)
    }

    /// Every copy, for their run-time figures.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, BorrowedFd<'_>)> {
        self.programs.iter().map(|(name, fd)| (*name, fd.as_fd()))
    }

    /// One link for `program` at `offsets` of `path` in `pid`.
    pub fn attach(
        &self,
        program: &str,
        path: &Path,
        offsets: &[u64],
        pid: u32,
        is_return: bool,
    ) -> std::io::Result<OwnedFd> {
        let fd = self.program(program).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "program not loaded")
        })?;
        bpf_sys::link_uprobe_multi(fd, path, offsets, pid, is_return)
    }
}

/// Duplicates of the fds of every map aya created, by name: taken right after aya's load,
/// before the maps are moved out of the `Ebpf` (and kept as long as the copies are loading).
pub fn map_fds(ebpf: &aya::Ebpf) -> std::io::Result<MapFds> {
    ebpf.maps()
        .map(|(name, map)| {
            let fd = map_data(map).fd().as_fd().try_clone_to_owned()?;
            Ok((name.to_string(), fd))
        })
        .collect::<std::io::Result<HashMap<_, _>>>()
        .map(Arc::new)
}

/// The map's data, whatever its type.
fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    }
}

/// Loads the copies of `names` on another thread: the kernel verifies them while the main
/// thread has aya load the originals (two CPUs verify at once).
pub fn load_in_background(
    object: &'static [u8],
    maps: MapFds,
    names: Vec<&'static str>,
) -> JoinHandle<Result<MultiPrograms, MultiError>> {
    std::thread::spawn(move || load(object, &maps, &names))
}

/// Waits for [`load_in_background`].
pub fn join(
    handle: JoinHandle<Result<MultiPrograms, MultiError>>,
) -> Result<MultiPrograms, MultiError> {
    handle.join().unwrap_or(Err(MultiError::Panicked))
}

/// The steps of aya's `EbpfLoader::load` for programs, with aya's maps: BTF fixed up and
/// loaded, CO-RE relocations, map references, calls, sanitizing for this kernel.
fn load(
    object: &[u8],
    maps: &HashMap<String, OwnedFd>,
    names: &[&'static str],
) -> Result<MultiPrograms, MultiError> {
    let mut obj = aya_obj::Object::parse(object).map_err(|e| MultiError::Parse(e.to_string()))?;
    let features = aya::features();
    // The programs need their BTF for bpf_loop callbacks (function info).
    let btf_fd = match features.btf() {
        Some(btf_features) => match obj
            .fixup_and_sanitize_btf(btf_features)
            .map_err(|e| MultiError::Btf(e.to_string()))?
        {
            Some(btf) => Some(
                bpf_sys::btf_load(&btf.to_bytes()).map_err(|e| MultiError::Btf(e.to_string()))?,
            ),
            None => None,
        },
        None => None,
    };
    if obj.has_btf_relocations() {
        let kernel =
            aya_obj::btf::Btf::from_sys_fs().map_err(|e| MultiError::Btf(e.to_string()))?;
        obj.relocate_btf(&kernel)
            .map_err(|e| MultiError::Relocate(format!("{e:#}")))?;
    }
    let map_objects: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
    let mut references = Vec::new();
    for (name, map) in &map_objects {
        let fd = maps
            .get(name)
            .ok_or_else(|| MultiError::MissingMap(name.clone()))?;
        references.push((name.as_str(), fd.as_raw_fd(), map));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(references.into_iter(), &text_sections)
        .map_err(|e| MultiError::Relocate(with_source(&e)))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| MultiError::Relocate(with_source(&e)))?;
    obj.sanitize_functions(features);

    let mut programs = HashMap::new();
    let mut load_times = Vec::new();
    for name in names {
        let started = Instant::now();
        let program = obj
            .programs
            .get(*name)
            .ok_or_else(|| MultiError::MissingProgram(name.to_string()))?;
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or_else(|| MultiError::MissingProgram(name.to_string()))?;
        let func_info = function.func_info.func_info_bytes();
        let line_info = function.line_info.line_info_bytes();
        let fd = bpf_sys::prog_load(&bpf_sys::ProgLoad {
            name,
            instructions: &function.instructions,
            license: &program.license,
            kernel_version: program.kernel_version.unwrap_or(0),
            btf: btf_fd.as_ref().map(AsFd::as_fd),
            func_info: &func_info,
            func_info_rec_size: function.func_info_rec_size,
            func_info_count: function.func_info.len(),
            line_info: &line_info,
            line_info_rec_size: function.line_info_rec_size,
            line_info_count: function.line_info.len(),
        })
        .map_err(|source| MultiError::Load {
            program: name.to_string(),
            source,
        })?;
        programs.insert(*name, fd);
        load_times.push((*name, started.elapsed()));
    }
    Ok(MultiPrograms {
        programs,
        load_times,
    })
}

/// An error with its cause (aya-obj's relocation errors name the function only).
fn with_source(err: &(dyn std::error::Error + 'static)) -> String {
    match err.source() {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}
