//! Reachability: which of a live target's outstanding blocks it can still reach, in valgrind
//! memcheck's four classes (definitely, indirectly and possibly lost, still reachable).
//!
//! - [`stop`]: every thread stopped with ptrace (no signal sent), its registers read;
//! - [`deadline`]: the pause cap, kept by beginning only the steps that still end in time;
//! - [`glibc`]: which memory inside glibc's heaps is free, so it is never a root;
//! - [`scan`]: the target's writable memory read and every candidate pointer sorted into a
//!   block, the roots, or away;
//! - [`mark`]: valgrind's mark and clique phases on that graph;
//! - [`heuristics`]: interior pointers past a known header, counted as start pointers.
//!
//! The target is stopped only while its memory is read; the mark runs after it goes on.

pub mod deadline;
pub mod glibc;
pub mod heuristics;
pub mod mark;
pub mod scan;
pub mod stop;

use std::{
    collections::HashMap,
    ops::Range,
    time::{Duration, Instant},
};

use deadline::Deadline;
use mark::{Class, Graph, Node};
use scan::{Block, Found, merge, scan_ranges, sort_register_words, subtract};
use stop::{Frozen, StopError};

use crate::{
    arch::RED_ZONE,
    target::{
        maps::{Mapping, read_maps},
        remote::RemoteMemory,
    },
};

/// A scan without stopping the target (another tracer holds it) may take this long.
const UNSTOPPED_BUDGET: Duration = Duration::from_secs(30);

/// glibc serves requests from this size up with their own mapping (its default threshold).
const GLIBC_MMAP_THRESHOLD: u64 = 128 * 1024;

/// An outstanding block the probes recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedBlock {
    pub start: u64,
    pub size: u64,
    pub stack_id: u64,
}

/// How to scan one process.
#[derive(Clone, Debug)]
pub struct Options {
    /// Longest the target may stay stopped.
    pub max_pause: Duration,
    /// Its allocator is glibc's malloc, whose heaps can be walked for free chunks.
    pub glibc: bool,
    /// Interior pointers accepted as start pointers when the block's header has their shape.
    pub heuristics: Vec<heuristics::Heuristic>,
}

/// How far the verdict can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Stopped, and every heap chunk known free or in use: valgrind's verdict.
    Exact,
    /// Stopped, but the heap's free memory unknown (not glibc, or its heaps could not be
    /// walked): free memory is scanned as roots, so a leak may read as reachable, never the
    /// reverse.
    Conservative,
    /// Not stopped (another tracer holds it): no registers, and memory read while it runs.
    Unstopped,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::Conservative => "conservative",
            Mode::Unstopped => "unstopped",
        }
    }
}

/// Bytes and blocks of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub bytes: u64,
    pub allocations: u64,
}

/// The four classes' figures, in [`Class::ALL`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Classes(pub [Figures; 4]);

impl Classes {
    pub fn add(&mut self, class: Class, bytes: u64) {
        let figures = &mut self.0[class as usize];
        figures.bytes += bytes;
        figures.allocations += 1;
    }

    pub fn of(&self, class: Class) -> Figures {
        self.0[class as usize]
    }

    pub fn absorb(&mut self, other: &Classes) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            mine.bytes += theirs.bytes;
            mine.allocations += theirs.allocations;
        }
    }
}

/// One process's scan.
#[derive(Clone, Debug)]
pub struct ProcessScan {
    pub pid: u32,
    pub mode: Mode,
    /// False when the pause cap cut the scan short (or the target could not be stopped in
    /// time): then no block is classed.
    pub complete: bool,
    /// How long the target was stopped.
    pub pause: Duration,
    pub scanned_bytes: u64,
    pub threads: usize,
    /// How long the mark took (the target running again).
    pub mark: Duration,
    /// Of the pause: time the kernel spent copying memory, and sorting its words.
    pub read_time: Duration,
    pub sort_time: Duration,
    /// Of the pause: reading and walking glibc's heaps.
    pub walk_time: Duration,
    /// Of the pause: stopping every thread, and reading the outstanding records.
    pub stop_time: Duration,
    pub records_time: Duration,
    /// Blocks classed.
    pub blocks: usize,
    pub per_stack: HashMap<u64, Classes>,
    pub totals: Classes,
    /// Plain-language caveats, one line each.
    pub notes: Vec<String>,
}

/// Why a process was not scanned at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("pid {0} exited before its scan")]
    Exited(u32),
    #[error(transparent)]
    Stop(StopError),
    #[error("cannot read the memory map of pid {pid}: {source}")]
    Maps { pid: u32, source: std::io::Error },
}

/// Stops `pid`, reads its outstanding blocks with `blocks_now` (called while it is stopped, so
/// the records and the memory agree), scans, lets it go, and classes every block.
pub fn scan_process(
    pid: u32,
    options: &Options,
    blocks_now: impl FnOnce(&Deadline) -> Option<Vec<TrackedBlock>>,
) -> Result<ProcessScan, ScanError> {
    let started = Instant::now();
    let cap_ends = started + options.max_pause;
    let mut notes = Vec::new();
    let (frozen, deadline) = match Frozen::stop(pid, cap_ends) {
        Ok(frozen) => {
            let deadline = Deadline::releasing(cap_ends, frozen.threads.len());
            (Some(frozen), deadline)
        }
        Err(StopError::AlreadyTraced { tracer, comm, .. }) => {
            notes.push(format!(
                "pid {pid} is already traced by pid {tracer} ({comm}), so it was scanned without being stopped: registers unread and memory read while it ran, so blocks in flight may be misclassed"
            ));
            (None, Deadline::new(Instant::now() + UNSTOPPED_BUDGET))
        }
        Err(StopError::Exited(_)) => return Err(ScanError::Exited(pid)),
        Err(StopError::Slow { waited, .. }) => {
            return Ok(incomplete(
                pid,
                Mode::Exact,
                started.elapsed(),
                0,
                0,
                vec![format!(
                    "its threads did not all stop within the {} ms pause cap (waited {} ms); raise --max-pause",
                    options.max_pause.as_millis(),
                    waited.as_millis()
                )],
            ));
        }
        Err(e) => return Err(ScanError::Stop(e)),
    };
    let stop_time = started.elapsed();
    let threads = frozen.as_ref().map_or(0, |f| f.threads.len());
    let mut mode = if frozen.is_some() {
        Mode::Exact
    } else {
        Mode::Unstopped
    };
    let Some(mut tracked) = blocks_now(&deadline) else {
        drop(frozen); // the target runs again
        notes.push(format!(
            "the {} ms pause cap was reached while reading the outstanding records (raise --max-pause)",
            options.max_pause.as_millis()
        ));
        return Ok(incomplete(pid, mode, started.elapsed(), 0, threads, notes));
    };
    let records_time = started.elapsed() - stop_time;
    let maps = read_maps(pid).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ScanError::Exited(pid),
        _ => ScanError::Maps { pid, source },
    })?;

    // Free heap memory: never a root.
    let mut free: Vec<Range<u64>> = Vec::new();
    let mut copies: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut glibc_heap = false;
    let walking = Instant::now();
    if options.glibc {
        match RemoteMemory::open(pid)
            .map_err(|e| e.to_string())
            .and_then(|memory| {
                glibc::walk_before(pid, &memory, &maps, Some(&deadline)).map_err(|e| match e {
                    glibc::GlibcError::OutOfTime => String::new(),
                    e => e.to_string(),
                })
            }) {
            Ok(heap) => {
                free = heap.free;
                copies = heap.copies;
                copies.sort_by_key(|(at, _)| *at);
                glibc_heap = true;
            }
            Err(e) if e.is_empty() => {
                // Out of time: the heaps alone outlast the pause cap.
                drop(frozen);
                notes.push(format!(
                    "the {} ms pause cap was reached while reading glibc's heaps (raise --max-pause; this kernel reads about 1 GiB/s)",
                    options.max_pause.as_millis()
                ));
                return Ok(incomplete(pid, mode, started.elapsed(), 0, threads, notes));
            }
            Err(e) => {
                notes.push(format!(
                    "glibc's heaps could not be walked ({e}): free memory was scanned as roots, so the verdict is conservative"
                ));
                if mode == Mode::Exact {
                    mode = Mode::Conservative;
                }
            }
        }
    } else {
        notes.push(
            "its allocator is not glibc's malloc: free heap memory was scanned as roots, so the verdict is conservative (a leak may read as reachable, never the reverse)".to_string(),
        );
        if mode == Mode::Exact {
            mode = Mode::Conservative;
        }
    }

    let walk_time = walking.elapsed();
    let blocks = blocks_of(&mut tracked, &maps, glibc_heap);
    let stack_pointers: Vec<u64> = frozen
        .as_ref()
        .map(|f| f.threads.iter().map(|t| t.sp).collect())
        .unwrap_or_default();
    let excluded = merge(
        free.into_iter()
            .chain(below_stack_pointers(&maps, &stack_pointers))
            .collect(),
    );
    let readable = merge(
        maps.iter()
            .filter(|m| is_scanned(m))
            .map(|m| m.start..m.end)
            .collect(),
    );
    let ranges = subtract(&readable, &excluded);

    let mut found = Found::default();
    if let Some(frozen) = &frozen {
        for thread in &frozen.threads {
            sort_register_words(&thread.general, &blocks, &mut found);
            sort_register_words(&thread.vector, &blocks, &mut found);
        }
    }
    // A thread's stack is a recorded mapping (opened by mprotect in pthread_create) and also
    // a root: the block a thread runs on is reached by that thread, whatever points to it.
    for sp in &stack_pointers {
        if let Some(block) = blocks
            .iter()
            .find(|b| (b.start..b.start + b.size).contains(sp))
        {
            found.roots.push(block.start);
        }
    }
    let scanned = scan_ranges(
        pid, &ranges, &copies, &blocks, &excluded, &deadline, &mut found,
    );
    drop(frozen); // the target runs again
    scan::free_later(copies);
    let pause = if mode == Mode::Unstopped {
        Duration::ZERO
    } else {
        started.elapsed()
    };
    if let Err(overrun) = scanned {
        notes.push(format!(
            "the {} ms pause cap was reached after {} of {} (raise --max-pause; this kernel reads about 1.5 GiB/s)",
            options.max_pause.as_millis(),
            crate::units::human_bytes(overrun.scanned_bytes),
            crate::units::human_bytes(overrun.scanned_bytes + overrun.remaining_bytes),
        ));
        return Ok(incomplete(
            pid,
            mode,
            pause,
            overrun.scanned_bytes,
            threads,
            notes,
        ));
    }
    if found.unreadable_bytes > 0 {
        notes.push(format!(
            "{} of its writable memory could not be read",
            crate::units::human_bytes(found.unreadable_bytes)
        ));
    }

    let marking = Instant::now();
    let nodes: Vec<Node> = blocks
        .iter()
        .map(|b| Node {
            start: b.start,
            size: b.size,
        })
        .collect();
    let (read_time, sort_time) = (found.read_time, found.sort_time);
    let graph = Graph::new(nodes, found.contents, found.roots);
    let mut checker = heuristics::Checker::new(pid, &options.heuristics);
    let classes = graph.classify_with(&mut |index, offset| {
        let node = graph.nodes()[index];
        checker.accepts(node.start, node.size, offset)
    });
    let mut accepted: Vec<(heuristics::Heuristic, usize)> = checker
        .accepted
        .iter()
        .map(|(h, blocks)| (*h, blocks.len()))
        .collect();
    accepted.sort();
    if !accepted.is_empty() {
        let list: Vec<String> = accepted
            .iter()
            .map(|(h, n)| format!("{n} by {h}"))
            .collect();
        notes.push(format!(
            "blocks pointed to only past a header were counted still reachable, as memcheck's heuristics do ({}; --reachability-heuristics none counts them possibly lost)",
            list.join(", ")
        ));
    }
    let mut per_stack: HashMap<u64, Classes> = HashMap::new();
    let mut totals = Classes::default();
    for (block, class) in tracked.iter().zip(&classes) {
        per_stack
            .entry(block.stack_id)
            .or_default()
            .add(*class, block.size);
        totals.add(*class, block.size);
    }
    Ok(ProcessScan {
        pid,
        mode,
        complete: true,
        pause,
        scanned_bytes: found.scanned_bytes,
        threads,
        mark: marking.elapsed(),
        read_time,
        sort_time,
        walk_time,
        stop_time,
        records_time,
        blocks: tracked.len(),
        per_stack,
        totals,
        notes,
    })
}

fn incomplete(
    pid: u32,
    mode: Mode,
    pause: Duration,
    scanned_bytes: u64,
    threads: usize,
    notes: Vec<String>,
) -> ProcessScan {
    ProcessScan {
        pid,
        mode,
        complete: false,
        pause,
        scanned_bytes,
        threads,
        mark: Duration::ZERO,
        read_time: Duration::ZERO,
        sort_time: Duration::ZERO,
        walk_time: Duration::ZERO,
        stop_time: Duration::ZERO,
        records_time: Duration::ZERO,
        blocks: 0,
        per_stack: HashMap::new(),
        totals: Classes::default(),
        notes,
    }
}

/// Sorts `tracked` by address (dropping any that overlaps the one before: a record that went
/// stale) and gives each block its allocator slack.
fn blocks_of(tracked: &mut Vec<TrackedBlock>, maps: &[Mapping], glibc: bool) -> Vec<Block> {
    tracked.sort_by_key(|b| b.start);
    let mut end = 0;
    tracked.retain(|b| {
        let keep = b.start >= end;
        if keep {
            end = b.start + b.size.max(1);
        }
        keep
    });
    let mapping_starts: Vec<u64> = maps.iter().map(|m| m.start).collect();
    tracked
        .iter()
        .map(|b| {
            let end = b.start + b.size;
            let owned_end = if glibc
                && b.size >= GLIBC_MMAP_THRESHOLD / 2
                && mapping_starts.binary_search(&(b.start - 16)).is_ok()
            {
                // Its own mapping (glibc puts the chunk header first): the rest of the page.
                end.next_multiple_of(4096)
            } else if glibc {
                // A heap chunk: usable up to its rounded size, past which the next chunk starts.
                b.start + ((b.size + 8 + 15) & !15).max(32) - 8
            } else {
                end.next_multiple_of(16)
            };
            Block {
                start: b.start,
                size: b.size,
                owned_end,
            }
        })
        .collect()
}

/// Whether a mapping can hold roots: readable and writable, not the kernel's vdso pages, not
/// a device's memory.
fn is_scanned(mapping: &Mapping) -> bool {
    let perms = mapping.perms.as_bytes();
    if perms.first() != Some(&b'r') || perms.get(1) != Some(&b'w') {
        return false;
    }
    match mapping.path.as_deref() {
        Some(path) if path.starts_with("[v") => false, // [vvar], [vdso], [vsyscall], [vvar_vclock]
        Some(path) if path.starts_with("/dev/") => {
            path.starts_with("/dev/shm/") || path.starts_with("/dev/zero")
        }
        _ => true,
    }
}

/// Each thread's stack below its stack pointer (minus the red zone): stale, never a root.
fn below_stack_pointers(maps: &[Mapping], stack_pointers: &[u64]) -> Vec<Range<u64>> {
    let mut lowest: HashMap<usize, u64> = HashMap::new();
    for sp in stack_pointers {
        if let Some(index) = maps.iter().position(|m| (m.start..m.end).contains(sp)) {
            let low = sp.saturating_sub(RED_ZONE) & !7;
            let entry = lowest.entry(index).or_insert(low);
            *entry = (*entry).min(low);
        }
    }
    lowest
        .into_iter()
        .map(|(index, low)| maps[index].start..low.max(maps[index].start))
        .collect()
}
