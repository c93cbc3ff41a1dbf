//! Turning stack addresses into frames (function, file:line, inlined calls, module) with
//! blazesym.
//!
//! Addresses are translated to file offsets through the target's memory map, and every mapped
//! object is opened (through `/proc/PID/map_files`, so containers and deleted files work) while
//! the target is alive and kept open: a target that exits mid-trace is still symbolized. A
//! stack with a runtime's frames (CPython's) gets them in place of the native frames that ran
//! them, as that runtime merges them ([`crate::runtimes`]).

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer as BlazeSymbolizer,
    source::{Elf, Source},
};

use crate::{
    report::{Frame, ModuleMapping},
    runtimes::{Merged, NativeFrame, RuntimeId, Runtimes},
    target::maps::{Mapping, read_maps},
};

/// An executable mapping seen in a target, with the object kept open.
#[derive(Clone, Debug)]
struct KnownMapping {
    start: u64,
    end: u64,
    offset: u64,
    /// Path as the target sees it.
    path: String,
    /// Key into [`AddressSpaces::files`].
    file: (u64, u64),
}

/// Executable mappings of the traced processes, remembered across refreshes.
#[derive(Default)]
pub struct AddressSpaces {
    mappings: HashMap<u32, Vec<KnownMapping>>,
    files: HashMap<(u64, u64), File>,
    /// Executable memory with no file behind it (JIT code, trampolines), as last read.
    anonymous_code: HashMap<u32, Vec<(u64, u64)>>,
}

impl AddressSpaces {
    /// Re-reads `/proc/PID/maps` and opens objects not seen before. Cheap; call it periodically
    /// while tracing so libraries loaded later are known.
    pub fn refresh(&mut self, pid: u32) {
        let Ok(maps) = read_maps(pid) else {
            return;
        };
        self.anonymous_code.insert(
            pid,
            maps.iter()
                .filter(|m| !m.is_file() && m.is_executable())
                .map(|m| (m.start, m.end))
                .collect(),
        );
        let known = self.mappings.entry(pid).or_default();
        for mapping in maps.iter().filter(|m| m.is_file() && m.is_executable()) {
            if known.iter().any(|k| {
                k.start == mapping.start && k.end == mapping.end && k.offset == mapping.offset
            }) {
                continue;
            }
            let Some(file) = open_mapped_object(pid, mapping) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            let key = (meta.dev(), meta.ino());
            self.files.entry(key).or_insert(file);
            // A newer mapping at the same place replaces the old (dlclose + dlopen).
            known.retain(|k| k.end <= mapping.start || k.start >= mapping.end);
            known.push(KnownMapping {
                start: mapping.start,
                end: mapping.end,
                offset: mapping.offset,
                path: mapping.clean_path().unwrap_or_default().to_string(),
                file: key,
            });
        }
    }

    /// The mappings of `pid` that `addresses` fall in, each once, with build ids.
    pub fn module_mappings(
        &self,
        pid: u32,
        addresses: impl IntoIterator<Item = u64>,
    ) -> Vec<ModuleMapping> {
        let mut found: Vec<&KnownMapping> = Vec::new();
        for address in addresses {
            if let Some(mapping) = self.find(pid, address)
                && !found.iter().any(|m| std::ptr::eq(*m, mapping))
            {
                found.push(mapping);
            }
        }
        found.sort_by_key(|m| m.start);
        found
            .into_iter()
            .map(|m| ModuleMapping {
                pid,
                start: m.start,
                end: m.end,
                file_offset: m.offset,
                path: m.path.clone(),
                build_id: self.files.get(&m.file).and_then(build_id),
            })
            .collect()
    }

    /// True when `addr` is in executable memory of `pid` (an object's code or JIT code).
    fn is_code(&self, pid: u32, addr: u64) -> bool {
        self.find(pid, addr).is_some()
            || self
                .anonymous_code
                .get(&pid)
                .is_some_and(|ranges| ranges.iter().any(|&(s, e)| addr >= s && addr < e))
    }

    fn find(&self, pid: u32, addr: u64) -> Option<&KnownMapping> {
        self.mappings
            .get(&pid)?
            .iter()
            .find(|m| addr >= m.start && addr < m.end)
    }
}

/// The GNU build id of an ELF object, as hex, read through the kept-open file.
fn build_id(file: &File) -> Option<String> {
    use object::{Object, read::ReadCache};
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let id = elf.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// Opens a mapped object as the process sees it.
fn open_mapped_object(pid: u32, mapping: &Mapping) -> Option<File> {
    let by_range = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    );
    File::open(by_range).ok().or_else(|| {
        let path = mapping.clean_path()?;
        File::open(crate::target::process::path_in_root(pid, path)).ok()
    })
}

/// Symbolizes stacks; results are cached per object and offset.
pub struct Symbolizer {
    blazesym: BlazeSymbolizer,
    cache: HashMap<((u64, u64), u64), Vec<Frame>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            blazesym: BlazeSymbolizer::new(),
            cache: HashMap::new(),
        }
    }

    /// Frames of a stack of return addresses, innermost first. An address with inlined calls
    /// gives several frames, the innermost inlined function first.
    pub fn symbolize_stack(&mut self, spaces: &AddressSpaces, pid: u32, ips: &[u64]) -> Vec<Frame> {
        let mut frames = Vec::new();
        // A walk that went past the outermost frame (Go's rt0_go and systemstack describe no
        // caller) reads one last "return address" that is no code at all: it is no frame.
        let mut ips = ips;
        while let [rest @ .., last] = ips
            && !rest.is_empty()
            && !spaces.is_code(pid, *last)
        {
            ips = rest;
        }
        for &ip in ips {
            let Some(mapping) = spaces.find(pid, ip) else {
                // Not in any executable mapping: usually a stale frame pointer in code built
                // without them.
                frames.push(Frame {
                    function: format!("[unknown {ip:#x}]"),
                    module: "[unknown]".to_string(),
                    file: None,
                    line: None,
                    address: ip,
                    inlined: false,
                    plumbing: false,
                    kind: RuntimeId::NATIVE,
                });
                continue;
            };
            let file_offset = ip - mapping.start + mapping.offset;
            let key = (mapping.file, file_offset);
            if !self.cache.contains_key(&key) {
                let resolved = self.resolve(spaces, mapping, ip, file_offset);
                self.cache.insert(key, resolved);
            }
            frames.extend(self.cache[&key].iter().cloned().map(|mut f| {
                f.address = ip;
                f
            }));
        }
        frames
    }

    /// The frames of the stack `stack_id` of `pid` (its entries `ips`, innermost first): native
    /// frames symbolized, and a runtime's frames in place of the native frames that ran them.
    pub fn symbolize_with_runtimes(
        &mut self,
        spaces: &AddressSpaces,
        runtimes: &mut Runtimes,
        pid: u32,
        stack_id: u64,
        ips: &[u64],
    ) -> Vec<Frame> {
        let native: Vec<u64> = ips
            .iter()
            .copied()
            .filter(|ip| !runtimes.is_frame_entry(*ip))
            .collect();
        let frames = self.symbolize_stack(spaces, pid, &native);
        if native.len() == ips.len() {
            return frames;
        }
        let names: Vec<NativeFrame> = frames
            .iter()
            .map(|f| NativeFrame {
                function: &f.function,
                inlined: f.inlined,
                address: f.address,
            })
            .collect();
        match runtimes.merge(pid, stack_id, ips, &names) {
            Some((kind, plan)) => splice(frames, kind, plan),
            None => frames,
        }
    }

    fn resolve(
        &self,
        spaces: &AddressSpaces,
        mapping: &KnownMapping,
        ip: u64,
        file_offset: u64,
    ) -> Vec<Frame> {
        let module = mapping.path.clone();
        let Some(file) = spaces.files.get(&mapping.file) else {
            return vec![Frame::unknown(ip, module, file_offset)];
        };
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let source = Source::Elf(Elf::new(fd_path));
        // Stack entries are return addresses: look up the call instruction just before.
        let lookup = file_offset.saturating_sub(1);
        let Ok(Symbolized::Sym(sym)) = self
            .blazesym
            .symbolize_single(&source, Input::FileOffset(lookup))
        else {
            return vec![Frame::unknown(ip, module, file_offset)];
        };
        let location = |info: Option<&blazesym::symbolize::CodeInfo>| {
            info.map(|c| (c.to_path().display().to_string(), c.line))
        };
        let mut frames = Vec::new();
        for inlined in sym.inlined.iter().rev() {
            let (file, line) = location(inlined.code_info.as_ref()).unzip();
            frames.push(Frame {
                function: sanitize(&inlined.name),
                module: module.clone(),
                file,
                line: line.flatten(),
                address: ip,
                inlined: true,
                plumbing: false,
                kind: RuntimeId::NATIVE,
            });
        }
        let (file, line) = location(sym.code_info.as_deref()).unzip();
        frames.push(Frame {
            function: sanitize(&sym.name),
            module,
            file,
            line: line.flatten(),
            address: ip,
            inlined: false,
            plumbing: false,
            kind: RuntimeId::NATIVE,
        });
        frames
    }
}

/// The stack `native` (symbolized, innermost first) as a runtime's merge planned it: its
/// frames (of `kind`) in place of the native frames that ran them, and without the runtime's
/// own native frames above its innermost frame (see [`crate::report::shown_frames`]).
pub fn splice(native: Vec<Frame>, kind: RuntimeId, plan: Vec<Merged>) -> Vec<Frame> {
    if plan.iter().all(|m| matches!(m, Merged::Native(_))) {
        return native;
    }
    let mut native: Vec<Option<Frame>> = native.into_iter().map(Some).collect();
    let merged: Vec<Frame> = plan
        .into_iter()
        .filter_map(|step| match step {
            Merged::Native(index) => native.get_mut(index).and_then(Option::take),
            Merged::Runtime(frame) => Some(Frame {
                function: frame.function,
                module: frame.module,
                file: frame.file,
                line: frame.line,
                address: frame.address,
                inlined: false,
                plumbing: false,
                kind,
            }),
        })
        .collect();
    crate::report::shown_frames(&merged)
        .into_iter()
        .cloned()
        .collect()
}

/// Names become single flamegraph frames: no `;` (the folded separator) or newlines.
fn sanitize(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}
