//! Writes traced processes' unwind tables into the kernel's maps and keeps them current: an
//! object's rows once however many processes map it, a process's mappings as one sorted run,
//! then its `UNWIND_PROCESSES` entry last, so the kernel never sees a half-written table.
//! Rows and mappings are written in place through mmapable array maps (hundreds of thousands
//! of rows cost no syscall each).

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    io,
    ptr::NonNull,
};

use aya::maps::{Array, HashMap, IterableMap, MapData, PerCpuArray};
use tracer_common::{
    UnwindEnd, UnwindMapping, UnwindProcess, UnwindRow,
    unwind::{MAX_OBJECT_ROWS, MAX_PROCESS_MAPPINGS, TRAMPOLINE_ROWS, UNWIND_FRAMES_SLOT},
};

use super::{
    compile::{CodeLayout, TableCache},
    space::Space,
};
use crate::{report::UnwindStats, target::maps::read_maps, terminal::eprintln_escaped};

/// An array map mapped writable into this process.
struct WritableArray<T> {
    base: NonNull<T>,
    slots: u32,
    len: usize,
}

impl<T: Copy> WritableArray<T> {
    /// Maps `map` (created with BPF_F_MMAPABLE, `slots` entries of `T`).
    fn map(map: &MapData, slots: u32) -> io::Result<Self> {
        let (base, len) = crate::collect::table::map_memory(
            map,
            slots as usize * size_of::<T>(),
            libc::PROT_READ | libc::PROT_WRITE,
        )?;
        Ok(Self {
            base: base.cast(),
            slots,
            len,
        })
    }

    /// Writes `values` from slot `first` on (which the caller took from a [`Space`] of this
    /// array's size).
    fn write(&mut self, first: u32, values: &[T]) {
        assert!(first as usize + values.len() <= self.slots as usize);
        // SAFETY: in bounds (checked above); the programs only read these slots, and no entry
        // points at them until the caller publishes it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.base.as_ptr().add(first as usize),
                values.len(),
            )
        };
    }
}

impl<T> Drop for WritableArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// An object's rows in the kernel.
struct LoadedObject {
    first: u32,
    count: u32,
    /// Processes whose mappings point at these rows.
    users: u32,
}

/// A process's mappings in the kernel.
struct LoadedProcess {
    first: u32,
    count: u32,
    layout: CodeLayout,
    /// Objects whose rows it uses (one entry per use).
    objects: Vec<(u64, u64)>,
}

/// The unwinder's maps, taken out of the loaded object.
pub struct UnwindMaps {
    pub rows: Array<MapData, UnwindRow>,
    pub row_slots: u32,
    pub mappings: Array<MapData, UnwindMapping>,
    pub mapping_slots: u32,
    pub processes: HashMap<MapData, u32, UnwindProcess>,
    pub ends: PerCpuArray<MapData, u64>,
}

/// The tables of every traced process, as the kernel has them.
pub struct TablesInMaps {
    rows: WritableArray<UnwindRow>,
    mappings: WritableArray<UnwindMapping>,
    processes: HashMap<MapData, u32, UnwindProcess>,
    ends: PerCpuArray<MapData, u64>,
    row_space: Space,
    mapping_space: Space,
    objects: StdHashMap<(u64, u64), LoadedObject>,
    loaded: StdHashMap<u32, LoadedProcess>,
    cache: TableCache,
    /// Objects that found no room, warned about once.
    no_room: HashSet<(u64, u64)>,
    /// The last generation published (see `UnwindProcess::generation`).
    generation: u32,
    /// The arrays' descriptors, kept open although they are written through their mappings:
    /// a program loaded later (when a target first needs it) names its maps by descriptor.
    _descriptors: (Array<MapData, UnwindRow>, Array<MapData, UnwindMapping>),
}

impl TablesInMaps {
    /// Maps the unwinder's arrays for writing.
    pub fn new(maps: UnwindMaps) -> io::Result<Self> {
        Ok(Self {
            rows: WritableArray::map(maps.rows.map(), maps.row_slots)?,
            mappings: WritableArray::map(maps.mappings.map(), maps.mapping_slots)?,
            _descriptors: (maps.rows, maps.mappings),
            processes: maps.processes,
            ends: maps.ends,
            row_space: Space::new(maps.row_slots),
            mapping_space: Space::new(maps.mapping_slots),
            objects: StdHashMap::new(),
            loaded: StdHashMap::new(),
            cache: TableCache::default(),
            no_room: HashSet::new(),
            generation: 0,
        })
    }

    /// Brings `pid`'s tables up to date with its mappings (a no-op when its code layout has
    /// not changed). True when tables were written. An error means the process is gone.
    pub fn update(&mut self, pid: u32) -> io::Result<bool> {
        let maps = read_maps(pid)?;
        let layout = CodeLayout::of(&maps);
        if self.loaded.get(&pid).is_some_and(|p| p.layout == layout) {
            return Ok(false);
        }
        let mut entries = Vec::new();
        let mut objects = Vec::new();
        for mapped in self.cache.process_tables(pid, &maps) {
            let (rows_first, rows_count) = match &mapped.table {
                Some(table) if !table.rows.is_empty() => {
                    match self.object_rows(mapped.object, &table.rows, &mapped.path) {
                        Some((first, count)) => {
                            objects.push(mapped.object);
                            (first, count)
                        }
                        None => (0, 0),
                    }
                }
                _ => (0, 0),
            };
            entries.push(UnwindMapping {
                start: mapped.start,
                end: mapped.end,
                bias: mapped.bias,
                rows_first,
                rows_count,
            });
        }
        if let Some((start, end)) = layout.trampoline {
            entries.push(UnwindMapping {
                start,
                end,
                bias: 0,
                rows_first: TRAMPOLINE_ROWS,
                rows_count: 0,
            });
        }
        entries.sort_by_key(|m| m.start);
        // The kernel's search covers so many; the rest (the highest addresses) go without.
        entries.truncate(MAX_PROCESS_MAPPINGS as usize);
        let count = entries.len() as u32;
        let first = match self.mapping_space.take(count.max(1)) {
            Some(first) => first,
            None => {
                for object in objects {
                    self.release_object(object);
                }
                return Err(io::Error::other(
                    "no room for more processes' unwind mappings",
                ));
            }
        };
        self.mappings.write(first, &entries);
        // Never 0 (an empty cache slot's), and new for every table.
        self.generation = self.generation.wrapping_add(1).max(1);
        let published = self.processes.insert(
            pid,
            UnwindProcess {
                mappings_first: first,
                mappings_count: count,
                generation: self.generation,
                _pad: 0,
            },
            0,
        );
        if let Err(err) = published {
            self.mapping_space.give(first, count.max(1));
            for object in objects {
                self.release_object(object);
            }
            return Err(io::Error::other(format!(
                "cannot publish the unwind tables of pid {pid}: {err}"
            )));
        }
        let previous = self.loaded.insert(
            pid,
            LoadedProcess {
                first,
                count,
                layout,
                objects,
            },
        );
        if let Some(previous) = previous {
            self.release(previous);
        }
        Ok(true)
    }

    /// Forgets `pid`'s tables (it exited, or exec'd: the kernel dropped its entry then).
    pub fn remove(&mut self, pid: u32) {
        let _ = self.processes.remove(&pid);
        if let Some(process) = self.loaded.remove(&pid) {
            self.release(process);
        }
    }

    /// The rows of `object` in the kernel, written now if they are not there yet; None when
    /// there is no room.
    fn object_rows(
        &mut self,
        object: (u64, u64),
        rows: &[UnwindRow],
        path: &str,
    ) -> Option<(u32, u32)> {
        if let Some(loaded) = self.objects.get_mut(&object) {
            loaded.users += 1;
            return Some((loaded.first, loaded.count));
        }
        let count = u32::try_from(rows.len())
            .ok()
            .filter(|&c| c <= MAX_OBJECT_ROWS);
        let Some(first) = count.and_then(|count| self.row_space.take(count)) else {
            if self.no_room.insert(object) {
                eprintln_escaped!(
                    "leaktracer: no room for the unwind table of {path} ({} rows; {} of {} in use): its frames end stacks (raise --max-unwind-rows)",
                    rows.len(),
                    self.row_space.used(),
                    self.row_space.capacity()
                );
            }
            return None;
        };
        let count = rows.len() as u32;
        self.rows.write(first, rows);
        self.objects.insert(
            object,
            LoadedObject {
                first,
                count,
                users: 1,
            },
        );
        Some((first, count))
    }

    fn release(&mut self, process: LoadedProcess) {
        self.mapping_space.give(process.first, process.count.max(1));
        for object in process.objects {
            self.release_object(object);
        }
    }

    /// Drops one use of an object's rows; the last frees them.
    fn release_object(&mut self, object: (u64, u64)) {
        let Some(loaded) = self.objects.get_mut(&object) else {
            return;
        };
        loaded.users -= 1;
        if loaded.users == 0 {
            let (first, count) = (loaded.first, loaded.count);
            self.objects.remove(&object);
            self.row_space.give(first, count);
            let in_use: HashSet<_> = self.objects.keys().copied().collect();
            self.cache.retain(&in_use);
        }
    }

    /// What the unwinder did so far.
    pub fn stats(&self) -> UnwindStats {
        let total = |slot: u32| -> u64 {
            self.ends
                .get(&slot, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        UnwindStats {
            objects: self.objects.len() as u64,
            rows: u64::from(self.row_space.used()),
            row_capacity: u64::from(self.row_space.capacity()),
            objects_without_table: self.cache.failed,
            objects_without_room: self.no_room.len() as u64,
            stack_ends: UnwindEnd::ALL
                .iter()
                .map(|end| (end.name().to_string(), total(*end as u32)))
                .collect(),
            frames_walked: total(UNWIND_FRAMES_SLOT),
        }
    }
}
