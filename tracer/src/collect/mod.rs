//! Reading what the kernel recorded: the outstanding allocations summed per stack, the
//! per-stack totals, the loss counters, and stack traces. Also settles the munmap ranges the
//! kernel handed to userspace.
//!
//! - `ebpf_maps`: the object's maps as typed handles ([`EbpfMaps`]), resolved once at load;
//! - [`table`]: the heap record table, read in place through a read-only mapping;
//! - `batch`: reading whole maps in a few `BPF_MAP_LOOKUP_BATCH` calls;
//! - [`threads`]: which recorded mappings are thread stacks, and which a live thread runs on.

mod batch;
mod ebpf_maps;
pub mod table;
pub mod threads;

use std::{collections::HashMap, time::Duration};

use aya::maps::IterableMap;
use tracer_common::{
    AllocKey, AllocRecord, COUNTER_SLOTS, Counter, RecordSlot, StackKey, StackStats, UNKNOWN_STACK,
    UnmapEvent, threads::ThreadStart,
};

pub use ebpf_maps::{EbpfMaps, EbpfMapsError};
use threads::StackUse;

use crate::target::memory::resident_bytes;

use crate::terminal::eprintln_escaped;

const PAGE_SIZE: u64 = 4096;

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, so of record timestamps.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// What a stack's records are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// Blocks of the allocator.
    #[default]
    Heap,
    /// Direct mappings (mmap, an mprotect opening a reservation, brk).
    Mapping,
    /// Mappings that are threads' stacks (see [`threads`]).
    ThreadStack,
}

/// One stack's figures at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackFigures {
    /// Bytes allocated from this stack and not yet freed (for mappings, their size).
    pub outstanding_bytes: u64,
    /// Allocations from this stack not yet freed.
    pub outstanding_allocations: u64,
    /// Every allocation recorded from this stack.
    pub total_allocations: u64,
    /// Every byte recorded from this stack.
    pub total_bytes: u64,
    pub kind: MemoryKind,
    /// Thread stacks: how many of them live threads run on (the others' threads ended).
    pub threads: u64,
    /// Thread stacks: the bytes of them in memory, as last read (a stack whose process ended
    /// before it was ever read counts 0). `None` for other stacks.
    pub resident_bytes: Option<u64>,
}

impl StackFigures {
    /// Adds `other`'s figures (another kernel stack the report shows as this one): counts
    /// summed, the kind of the first with any records.
    pub fn add(&mut self, other: &StackFigures) {
        if self.outstanding_allocations == 0 && self.total_allocations == 0 {
            self.kind = other.kind;
        }
        self.outstanding_bytes += other.outstanding_bytes;
        self.outstanding_allocations += other.outstanding_allocations;
        self.total_allocations += other.total_allocations;
        self.total_bytes += other.total_bytes;
        self.threads += other.threads;
        self.resident_bytes = match (self.resident_bytes, other.resident_bytes) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }

    /// What the stack's memory costs: its outstanding bytes, but for thread stacks only what is
    /// resident of them (a thread reserves megabytes and touches a few pages).
    pub fn cost_bytes(&self) -> u64 {
        match (self.kind, self.resident_bytes) {
            (MemoryKind::ThreadStack, Some(resident)) => resident,
            _ => self.outstanding_bytes,
        }
    }
}

/// What the kernel has recorded at one moment.
#[derive(Clone, Debug, Default)]
pub struct MapsSnapshot {
    /// Stacks with something outstanding.
    pub stacks: Vec<(StackKey, StackFigures)>,
    /// The [`tracer_common::Counter`] slots summed over CPUs.
    pub counters: [u64; COUNTER_SLOTS as usize],
}

/// Prints what the eBPF side logs (rare events, such as the OOM killer choosing a traced
/// process) as it happens, in leaktracer's one-line style.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln_escaped!("leaktracer: warning: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Reads the tracer's maps.
pub struct Collector {
    /// The eBPF side's log (none when no program of the object logs).
    kernel_log: Option<aya_log::EbpfLogger<KernelLog>>,
    /// The loss counters already warned about (see [`Collector::print_warnings`]).
    warned: [bool; COUNTER_SLOTS as usize],
    /// The heap record table, mapped.
    table: table::RecordTable,
    /// Mapping records added less those removed by [`Collector::drain_unmaps`] (wrapping), as
    /// last written to `MMAP_STATE`.
    user_mappings: u64,
    /// The resident bytes of each thread stack record (tgid, start, time recorded) last read:
    /// what they cost once their process is gone and its memory can no longer be read.
    resident: HashMap<(u32, u64, u64), u64>,
    /// The threads of processes gone and forgotten, alive when their process ended: taken out
    /// of `LIVE_THREADS` (which every thread of the machine may need room in), kept here for
    /// the report.
    ended_threads: Vec<ThreadStart>,
}

impl Collector {
    /// Maps the record table of the loaded programs (`table_slots` of it in use) and takes
    /// their log out of `ebpf`.
    pub fn new(ebpf: &mut aya::Ebpf, maps: &EbpfMaps, table_slots: u32) -> anyhow::Result<Self> {
        let table = table::RecordTable::map(maps.record_table.map(), table_slots as usize)
            .map_err(|e| anyhow::anyhow!("cannot map the record table: {e}"))?;
        Ok(Self {
            table,
            user_mappings: 0,
            resident: HashMap::new(),
            ended_threads: Vec::new(),
            warned: [false; COUNTER_SLOTS as usize],
            kernel_log: aya_log::EbpfLogger::init_with_logger(ebpf, KernelLog).ok(),
        })
    }

    /// Warns, once each, about the losses the eBPF programs counted since the last call (map
    /// full and the like, see `count_loss!` in tracer-ebpf), in leaktracer's one-line style.
    /// The programs only count them: a log call from the kernel side cost every program that
    /// had one thousands of instructions to verify. Then prints what the rare programs logged.
    pub fn print_warnings(&mut self, maps: &EbpfMaps) {
        if let Some(log) = &mut self.kernel_log {
            log.flush();
        }
        for counter in Counter::ALL {
            let slot = counter as usize;
            let Some(message) = counter.loss_message() else {
                continue;
            };
            if self.warned[slot] {
                continue;
            }
            let counted = maps
                .counters
                .get(&(slot as u32), 0)
                .is_ok_and(|per_cpu| per_cpu.iter().any(|&n| n != 0));
            if counted {
                self.warned[slot] = true;
                eprintln_escaped!("leaktracer: warning: {message}");
            }
        }
    }

    /// The processes that mapped new code (a library, JIT pages) since the last call, each
    /// once.
    pub fn new_code(&self, maps: &mut EbpfMaps) -> Vec<u32> {
        let mut tgids = Vec::new();
        while let Some(item) = maps.code_mapped.next() {
            if let Ok(bytes) = <[u8; 4]>::try_from(&item[..item.len().min(4)]) {
                let tgid = u32::from_ne_bytes(bytes);
                if !tgids.contains(&tgid) {
                    tgids.push(tgid);
                }
            }
        }
        tgids
    }

    /// Settles every pending munmap range against the recorded mappings: a mapping the range
    /// covers is released, one it overlaps is trimmed to what is still mapped.
    pub fn drain_unmaps(&mut self, maps: &mut EbpfMaps) -> anyhow::Result<()> {
        let mut events = Vec::new();
        while let Some(item) = maps.unmap_events.next() {
            if item.len() >= size_of::<UnmapEvent>() {
                // SAFETY: the kernel wrote a whole UnmapEvent; read_unaligned copes with any
                // alignment of the ring's data.
                events
                    .push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<UnmapEvent>()) });
            }
        }
        if events.is_empty() {
            return Ok(());
        }
        // Kept up to date as events settle: a later event may hit a piece an earlier one left.
        let mut recorded: Vec<(AllocKey, AllocRecord)> = batch::read_map(maps.mmaps.map())?;
        let mmaps = &mut maps.mmaps;
        let user_mappings_before = self.user_mappings;
        for event in events {
            let hit: Vec<(AllocKey, AllocRecord)> = recorded
                .iter()
                .filter(|(k, _)| k.tgid == event.tgid)
                .copied()
                .collect();
            for (key, record) in &hit {
                let start = key.addr;
                let end = start + record.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
                // A mapping made after the unmap (read here later) took the freed addresses.
                if end <= event.start || start >= event.end || record.timestamp_ns > event.at_ns {
                    continue;
                }
                // Pieces of the mapping left outside the unmapped range.
                let mut pieces = Vec::new();
                if start < event.start {
                    pieces.push((start, event.start - start));
                }
                if end > event.end {
                    pieces.push((event.end, end - event.end));
                }
                if mmaps.remove(key).is_err() {
                    continue;
                }
                recorded.retain(|(k, _)| k != key);
                self.user_mappings = self.user_mappings.wrapping_sub(1);
                for (addr, size) in &pieces {
                    let piece_key = AllocKey::new(key.tgid, *addr);
                    let piece = AllocRecord {
                        size: *size,
                        ..*record
                    };
                    if mmaps.insert(piece_key, piece, 0).is_ok() {
                        recorded.push((piece_key, piece));
                        self.user_mappings = self.user_mappings.wrapping_add(1);
                    }
                }
            }
        }
        if self.user_mappings != user_mappings_before {
            // Only userspace writes this slot: the kernel's unmap probe sees every piece.
            maps.mmap_state
                .set(tracer_common::USER_MAPPINGS_SLOT, self.user_mappings, 0)?;
        }
        Ok(())
    }

    /// Moves the threads `tgid` had when it ended out of the kernel's map, into this collector:
    /// its picture keeps them, and the map's room goes to live processes.
    pub fn forget_threads(&mut self, maps: &mut EbpfMaps, tgid: u32) -> anyhow::Result<()> {
        let threads: Vec<(u32, ThreadStart)> = batch::read_map(maps.live_threads.map())?;
        for (tid, thread) in threads.into_iter().filter(|(_, t)| t.tgid == tgid) {
            if maps.live_threads.remove(&tid).is_ok() {
                self.ended_threads.push(thread);
            }
        }
        Ok(())
    }

    /// When `tgid` last exec'd (CLOCK_MONOTONIC ns), if it did while tracing.
    pub fn exec_time(&self, maps: &EbpfMaps, tgid: u32) -> Option<u64> {
        maps.execs.get(&tgid, 0).ok()
    }

    /// Retires what `tgid` recorded before `before_ns` (its exec): an exec releases the whole
    /// old image without a call to free, so those records would otherwise stay "outstanding"
    /// for ever. Returns the allocations and bytes retired.
    pub fn retire(
        &mut self,
        maps: &mut EbpfMaps,
        tgid: u32,
        before_ns: u64,
    ) -> anyhow::Result<(u64, u64)> {
        let (mut count, mut bytes) = (0u64, 0u64);
        let stale: Vec<(u32, RecordSlot)> = self
            .table
            .live_slots()
            .filter(|(_, slot)| slot.tgid == tgid && slot.timestamp_ns < before_ns)
            .collect();
        for (index, slot) in stale {
            // The old image is gone: no program frees these any more, so marking the slot
            // freed races with nothing but a new block at the same address, rarer than rare.
            let freed = RecordSlot {
                key: tracer_common::SLOT_FREED,
                ..Default::default()
            };
            if maps.record_table.set(index, freed, 0).is_ok() {
                count += u64::from(slot.weight);
                bytes += slot.size;
            }
        }
        let mut mappings_removed = 0u64;
        for (map, is_mappings) in [(&mut maps.allocs, false), (&mut maps.mmaps, true)] {
            let records: Vec<(AllocKey, AllocRecord)> = batch::read_map(map.map())?;
            for (key, record) in records {
                if key.tgid == tgid && record.timestamp_ns < before_ns && map.remove(&key).is_ok() {
                    count += u64::from(record.weight);
                    bytes += record.size;
                    mappings_removed += u64::from(is_mappings);
                }
            }
        }
        if mappings_removed > 0 {
            self.user_mappings = self.user_mappings.wrapping_sub(mappings_removed);
            maps.mmap_state
                .set(tracer_common::USER_MAPPINGS_SLOT, self.user_mappings, 0)?;
        }
        // Its threads died at the exec (killed, so the kernel kept them).
        let threads: Vec<(u32, ThreadStart)> = batch::read_map(maps.live_threads.map())?;
        for (tid, thread) in threads {
            if thread.tgid == tgid && thread.started_ns < before_ns {
                let _ = maps.live_threads.remove(&tid);
            }
        }
        Ok((count, bytes))
    }

    /// Every outstanding record, one per heap block or direct mapping (the record table, its
    /// overflow map, then the mappings), or `None` as soon as `keep_going` says no: read while
    /// a target waits stopped for a scan, which must not outlast its pause cap.
    pub fn records_while(
        &self,
        maps: &EbpfMaps,
        keep_going: &dyn Fn() -> bool,
    ) -> anyhow::Result<Option<Vec<(AllocKey, AllocRecord)>>> {
        /// Records read between two questions.
        const ASK_EVERY: usize = 16 * 1024;
        let mut records = Vec::new();
        for (index, record) in self.table.records().enumerate() {
            if index % ASK_EVERY == 0 && !keep_going() {
                return Ok(None);
            }
            records.push(record);
        }
        for map in [&maps.allocs, &maps.mmaps] {
            match batch::read_map_while::<AllocKey, AllocRecord>(map.map(), keep_going)? {
                Some(more) => records.extend(more),
                None => return Ok(None),
            }
        }
        Ok(Some(records))
    }

    /// The outstanding heap records, without copying the record table: it is scanned in place.
    fn heap_records<'a>(
        &'a self,
        maps: &EbpfMaps,
    ) -> anyhow::Result<impl Iterator<Item = (AllocKey, AllocRecord)> + use<'a>> {
        let overflow = batch::read_map::<AllocKey, AllocRecord>(maps.allocs.map())?;
        Ok(self.table.records().chain(overflow))
    }

    /// Sums the outstanding records per stack (with `min_age`, only those at least that old)
    /// and reads the per-stack totals and the counters. Thread stacks are told apart, with the
    /// live threads on them and what is resident of them (read from each process's pagemap).
    pub fn snapshot(
        &mut self,
        maps: &EbpfMaps,
        min_age: Option<Duration>,
    ) -> anyhow::Result<MapsSnapshot> {
        let cutoff = min_age.map_or(u64::MAX, |age| {
            monotonic_ns().saturating_sub(age.as_nanos() as u64)
        });
        let mut all: HashMap<StackKey, StackFigures> = HashMap::new();
        for (key, record) in self.heap_records(maps)? {
            if record.timestamp_ns > cutoff {
                continue;
            }
            let figures = all
                .entry(StackKey::new(key.tgid, record.stack_id))
                .or_default();
            figures.outstanding_bytes += record.size;
            figures.outstanding_allocations += u64::from(record.weight.max(1));
        }
        let mappings: Vec<(AllocKey, AllocRecord)> =
            batch::read_map::<AllocKey, AllocRecord>(maps.mmaps.map())?
                .into_iter()
                .filter(|(_, record)| record.timestamp_ns <= cutoff)
                .collect();
        let live: Vec<ThreadStart> = batch::read_map::<u32, ThreadStart>(maps.live_threads.map())?
            .into_iter()
            .map(|(_, thread)| thread)
            .chain(self.ended_threads.iter().copied())
            .collect();
        let uses = threads::classify(&mappings, &live);
        let resident = self.read_resident(&mappings, &uses);
        for (((key, record), used), resident) in mappings.iter().zip(&uses).zip(resident) {
            let figures = all
                .entry(StackKey::new(key.tgid, record.stack_id))
                .or_default();
            figures.outstanding_bytes += record.size;
            figures.outstanding_allocations += u64::from(record.weight.max(1));
            if *used == StackUse::None {
                figures.kind = MemoryKind::Mapping;
                continue;
            }
            figures.kind = MemoryKind::ThreadStack;
            figures.threads += u64::from(*used == StackUse::Live);
            // A stack its process took with it before it was ever read costs nothing now
            // (counting it whole would show its megabytes as growth at the process's end).
            figures.resident_bytes =
                Some(figures.resident_bytes.unwrap_or(0) + resident.unwrap_or(0));
        }
        let totals: Vec<(StackKey, StackStats)> = batch::read_map(maps.stack_stats.map())?;
        for (key, stats) in totals {
            if let Some(figures) = all.get_mut(&key) {
                figures.total_allocations += stats.total_allocations;
                figures.total_bytes += stats.total_bytes;
            }
        }
        // Totals not written back yet: still in the per-CPU stack caches.
        for per_cpu in maps.stack_cache.get(&0, 0)?.iter() {
            for slot in per_cpu.iter().filter(|slot| slot.tgid != 0) {
                let key = StackKey::new(slot.tgid, slot.stack_id);
                if let Some(figures) = all.get_mut(&key) {
                    figures.total_allocations += slot.allocations;
                    figures.total_bytes += slot.bytes;
                }
            }
        }
        let mut stacks: Vec<(StackKey, StackFigures)> = all.into_iter().collect();
        stacks.sort_by_key(|(key, _)| *key);
        let mut counters = [0u64; COUNTER_SLOTS as usize];
        for (slot, total) in counters.iter_mut().enumerate() {
            *total = maps.counters.get(&(slot as u32), 0)?.iter().sum();
        }
        Ok(MapsSnapshot { stacks, counters })
    }

    /// The resident bytes of each thread stack among `mappings` (`None` for the others): read
    /// now from its process's pagemap, or as last read once the process is gone.
    fn read_resident(
        &mut self,
        mappings: &[(AllocKey, AllocRecord)],
        uses: &[StackUse],
    ) -> Vec<Option<u64>> {
        let place =
            |(key, record): &(AllocKey, AllocRecord)| (key.tgid, key.addr, record.timestamp_ns);
        let stacks: Vec<usize> = (0..mappings.len())
            .filter(|&i| uses[i] != StackUse::None)
            .collect();
        let mut resident = vec![None; mappings.len()];
        let mut pids: Vec<u32> = stacks.iter().map(|&i| mappings[i].0.tgid).collect();
        pids.sort_unstable();
        pids.dedup();
        let mut read = HashMap::new();
        for pid in pids {
            let of_pid: Vec<usize> = stacks
                .iter()
                .copied()
                .filter(|&i| mappings[i].0.tgid == pid)
                .collect();
            let ranges: Vec<(u64, u64)> = of_pid
                .iter()
                .map(|&i| (mappings[i].0.addr, mappings[i].0.addr + mappings[i].1.size))
                .collect();
            let now = resident_bytes(pid, &ranges).ok();
            for (n, &i) in of_pid.iter().enumerate() {
                let place = place(&mappings[i]);
                let bytes = now
                    .as_ref()
                    .map(|now| now[n])
                    .or_else(|| self.resident.get(&place).copied());
                if let Some(bytes) = bytes {
                    read.insert(place, bytes);
                }
                resident[i] = bytes;
            }
        }
        // Only the stacks still recorded are remembered.
        self.resident = read;
        resident
    }

    /// The instruction pointers of a stack, innermost first; empty for the unknown stack.
    pub fn stack(&self, maps: &EbpfMaps, stack_id: u64) -> Vec<u64> {
        if stack_id == UNKNOWN_STACK {
            return Vec::new();
        }
        maps.stacks
            .get(&stack_id, 0)
            .map(|stack| {
                let depth = (stack.depth as usize).min(stack.ips.len());
                stack.ips[..depth].to_vec()
            })
            .unwrap_or_default()
    }
}
