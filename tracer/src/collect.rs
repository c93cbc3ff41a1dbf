//! Reading the kernel-side aggregation: per-stack outstanding bytes and counts, the loss
//! counters, and stack traces. Also settles the munmap ranges the kernel handed to userspace.

use std::{collections::HashMap, time::Duration};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
};
use tracer_common::{
    AllocKey, AllocRecord, COUNTER_SLOTS, StackKey, StackStats, UNKNOWN_STACK, UnmapEvent,
    UserStack,
};

const PAGE_SIZE: u64 = 4096;

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, so of record timestamps.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// What the kernel has recorded at one moment.
#[derive(Clone, Debug, Default)]
pub struct KernelSnapshot {
    /// Stacks with something outstanding.
    pub stacks: Vec<(StackKey, StackStats)>,
    /// The [`tracer_common::Counter`] slots summed over CPUs.
    pub counters: [u64; COUNTER_SLOTS as usize],
}

/// Prints the eBPF side's warnings (map full and the like, see `count_loss!` in tracer-ebpf)
/// as they happen, in leaktracer's own one-line style.
pub struct KernelWarnings;

impl log::Log for KernelWarnings {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("leaktracer: warning: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Reads the tracer's maps.
pub struct Collector {
    unmap_events: RingBuf<MapData>,
    warnings: Option<aya_log::EbpfLogger<KernelWarnings>>,
    /// Releases settled here (partial munmaps), by stack: bytes and allocations to subtract.
    released: HashMap<StackKey, (u64, i64)>,
}

impl Collector {
    /// Takes the munmap event ring out of the loaded object.
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let ring = ebpf
            .take_map("UNMAP_EVENTS")
            .ok_or_else(|| anyhow::anyhow!("UNMAP_EVENTS map missing"))?;
        Ok(Self {
            unmap_events: RingBuf::try_from(ring)?,
            // No logger only when the object has no log calls at all.
            warnings: aya_log::EbpfLogger::init_with_logger(ebpf, KernelWarnings).ok(),
            released: HashMap::new(),
        })
    }

    /// Prints warnings the eBPF programs logged since the last call.
    pub fn print_warnings(&mut self) {
        if let Some(logger) = &mut self.warnings {
            logger.flush();
        }
    }

    /// Settles every pending munmap range against the recorded mappings: a mapping the range
    /// covers is released, one it overlaps is trimmed to what is still mapped.
    pub fn drain_unmaps(&mut self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        let mut events = Vec::new();
        while let Some(item) = self.unmap_events.next() {
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
        let mut mmaps: BpfHashMap<_, AllocKey, AllocRecord> =
            BpfHashMap::try_from(ebpf.map_mut("MMAPS").expect("MMAPS map"))?;
        let recorded: Vec<(AllocKey, AllocRecord)> = mmaps.iter().filter_map(Result::ok).collect();
        for event in events {
            for (key, record) in recorded.iter().filter(|(k, _)| k.tgid == event.tgid) {
                let start = key.addr;
                let end = start + record.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
                if end <= event.start || start >= event.end {
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
                let kept: u64 = pieces.iter().map(|(_, len)| len).sum();
                for (addr, size) in &pieces {
                    let _ = mmaps.insert(
                        AllocKey {
                            addr: *addr,
                            ..*key
                        },
                        AllocRecord {
                            size: *size,
                            ..*record
                        },
                        0,
                    );
                }
                let entry = self
                    .released
                    .entry(StackKey {
                        tgid: key.tgid,
                        _pad: 0,
                        stack_id: record.stack_id,
                    })
                    .or_default();
                entry.0 += record.size.saturating_sub(kept);
                entry.1 += 1 - pieces.len() as i64;
            }
        }
        Ok(())
    }

    /// Reads per-stack aggregates and counters. With `min_age`, only allocations at least that
    /// old count as outstanding: they are summed from the per-allocation records instead.
    pub fn snapshot(
        &self,
        ebpf: &Ebpf,
        min_age: Option<Duration>,
    ) -> anyhow::Result<KernelSnapshot> {
        let stats: BpfHashMap<_, StackKey, StackStats> =
            BpfHashMap::try_from(ebpf.map("STACK_STATS").expect("STACK_STATS map"))?;
        let mut all: HashMap<StackKey, StackStats> = HashMap::new();
        for entry in stats.iter() {
            let (key, mut value) = entry?;
            if let Some((bytes, allocations)) = self.released.get(&key) {
                value.outstanding_bytes = value.outstanding_bytes.saturating_sub(*bytes);
                value.outstanding_allocations = value
                    .outstanding_allocations
                    .saturating_add_signed(-allocations);
            }
            all.insert(key, value);
        }
        if let Some(min_age) = min_age {
            let cutoff = monotonic_ns().saturating_sub(min_age.as_nanos() as u64);
            for value in all.values_mut() {
                value.outstanding_bytes = 0;
                value.outstanding_allocations = 0;
            }
            for map in ["ALLOCS", "MMAPS"] {
                let records: BpfHashMap<_, AllocKey, AllocRecord> =
                    BpfHashMap::try_from(ebpf.map(map).expect("record map"))?;
                for (key, record) in records.iter().filter_map(Result::ok) {
                    if record.timestamp_ns > cutoff {
                        continue;
                    }
                    let stats = all
                        .entry(StackKey {
                            tgid: key.tgid,
                            _pad: 0,
                            stack_id: record.stack_id,
                        })
                        .or_default();
                    stats.outstanding_bytes += record.size;
                    stats.outstanding_allocations += u64::from(record.weight.max(1));
                }
            }
        }
        let mut stacks: Vec<(StackKey, StackStats)> = all
            .into_iter()
            .filter(|(_, v)| v.outstanding_allocations > 0 || v.outstanding_bytes > 0)
            .collect();
        stacks.sort_by_key(|(key, _)| *key);
        let counters_map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(ebpf.map("COUNTERS").expect("COUNTERS map"))?;
        let mut counters = [0u64; COUNTER_SLOTS as usize];
        for (slot, total) in counters.iter_mut().enumerate() {
            *total = counters_map.get(&(slot as u32), 0)?.iter().sum();
        }
        Ok(KernelSnapshot { stacks, counters })
    }

    /// The instruction pointers of a stack, innermost first; empty for the unknown stack.
    pub fn stack(&self, ebpf: &Ebpf, stack_id: u64) -> Vec<u64> {
        if stack_id == UNKNOWN_STACK {
            return Vec::new();
        }
        let Some(map) = ebpf.map("STACKS") else {
            return Vec::new();
        };
        let Ok(stacks) = BpfHashMap::<_, u64, UserStack>::try_from(map) else {
            return Vec::new();
        };
        stacks
            .get(&stack_id, 0)
            .map(|stack| {
                let depth = (stack.depth as usize).min(stack.ips.len());
                stack.ips[..depth].to_vec()
            })
            .unwrap_or_default()
    }
}
