//! The eBPF object's maps userspace reads or writes, each resolved once, right after loading,
//! into a typed handle: a missing or mistyped map fails the load, not a later read.

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
};
use tracer_common::{
    AllocKey, AllocRecord, CachedStack, RecordSlot, STACK_CACHE_SLOTS, StackKey, StackStats,
    UserStack, ending::ProcessEnding, programs::maps, threads::ThreadStart,
};

/// Why the maps could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum EbpfMapsError {
    #[error("map {0} missing from the eBPF object")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Type {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// The maps, taken out of the loaded object (the programs keep theirs). A language runtime's
/// own maps are its own (see [`crate::runtimes`]).
pub struct EbpfMaps {
    /// Slot 0 set to stop every program.
    pub stopped: Array<MapData, u32>,
    /// Sampling probabilities, filled at load.
    pub sample_table: Array<MapData, u32>,
    /// The heap record table (mapped into memory by the collector).
    pub record_table: Array<MapData, RecordSlot>,
    /// Heap records the table had no room for.
    pub allocs: HashMap<MapData, AllocKey, AllocRecord>,
    /// Direct mappings.
    pub mmaps: HashMap<MapData, AllocKey, AllocRecord>,
    pub stack_stats: HashMap<MapData, StackKey, StackStats>,
    pub stacks: HashMap<MapData, u64, UserStack>,
    /// Per-CPU totals not written back to `stack_stats` yet.
    pub stack_cache: PerCpuArray<MapData, [CachedStack; STACK_CACHE_SLOTS]>,
    /// The [`tracer_common::Counter`] slots, per CPU.
    pub counters: PerCpuArray<MapData, u64>,
    /// munmap ranges for userspace to settle.
    pub unmap_events: RingBuf<MapData>,
    /// Counts of recorded mappings (see `tracer_common::USER_MAPPINGS_SLOT`).
    pub mmap_state: Array<MapData, u64>,
    /// When processes exec'd: tgid -> CLOCK_MONOTONIC ns.
    pub execs: HashMap<MapData, u32, u64>,
    /// Processes that stop at their next exec (the launched command).
    pub stop_at_exec: HashMap<MapData, u32, u32>,
    /// Processes whose interpreter began its teardown: tgid -> CLOCK_MONOTONIC ns.
    pub frozen: HashMap<MapData, u32, u64>,
    /// The processes attached to (tgid -> 1): the only ones the syscall tracepoints count.
    pub traced: HashMap<MapData, u32, u8>,
    /// tgids (u32) that mapped new code since the last read.
    pub code_mapped: RingBuf<MapData>,
    /// How processes ended: tgid -> OOM mark and exit status (an LRU map).
    pub endings: HashMap<MapData, u32, ProcessEnding>,
    /// Threads started during the trace and alive: thread id -> process and stack pointer.
    pub live_threads: HashMap<MapData, u32, ThreadStart>,
}

impl EbpfMaps {
    /// Takes every map userspace uses out of `ebpf`.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, EbpfMapsError> {
        Ok(Self {
            stopped: take(ebpf, maps::STOPPED)?,
            sample_table: take(ebpf, maps::SAMPLE_TABLE)?,
            record_table: take(ebpf, maps::RECORD_TABLE)?,
            allocs: take(ebpf, maps::ALLOCS)?,
            mmaps: take(ebpf, maps::MMAPS)?,
            stack_stats: take(ebpf, maps::STACK_STATS)?,
            stacks: take(ebpf, maps::STACKS)?,
            stack_cache: take(ebpf, maps::STACK_CACHE)?,
            counters: take(ebpf, maps::COUNTERS)?,
            unmap_events: take(ebpf, maps::UNMAP_EVENTS)?,
            mmap_state: take(ebpf, maps::MMAP_STATE)?,
            execs: take(ebpf, maps::EXECS)?,
            stop_at_exec: take(ebpf, maps::STOP_AT_EXEC)?,
            frozen: take(ebpf, maps::FROZEN)?,
            traced: take(ebpf, maps::TRACED)?,
            code_mapped: take(ebpf, maps::CODE_MAPPED)?,
            endings: take(ebpf, maps::ENDINGS)?,
            live_threads: take(ebpf, maps::LIVE_THREADS)?,
        })
    }
}

/// The map called `name`, as the typed handle `M`.
fn take<M: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<M, EbpfMapsError> {
    let map = ebpf.take_map(name).ok_or(EbpfMapsError::Missing(name))?;
    M::try_from(map).map_err(|source| EbpfMapsError::Type { name, source })
}
