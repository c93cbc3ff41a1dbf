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

/// A complete scan of one process: every outstanding block classed.
#[derive(Clone, Debug)]
pub struct ProcessScan {
    pub pid: u32,
    pub mode: Mode,
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

/// Where the pause cap cut a scan short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cutoff {
    /// Its threads did not all stop in time.
    Stopping { waited: Duration },
    /// Reading the outstanding records.
    ReadingRecords,
    /// Reading glibc's heaps.
    WalkingHeaps,
    /// Reading its memory: this much read, this much left.
    Scanning {
        scanned_bytes: u64,
        remaining_bytes: u64,
    },
}

/// A scan the pause cap cut short: the target was let go, and no block is classed.
#[derive(Clone, Debug)]
pub struct LetGo {
    pub pid: u32,
    pub mode: Mode,
    /// How long the target was stopped.
    pub pause: Duration,
    pub threads: usize,
    pub cutoff: Cutoff,
    /// The cap it ran into (`--max-pause`).
    pub max_pause: Duration,
    /// Caveats noted before the cap came.
    pub caveats: Vec<String>,
}

impl LetGo {
    /// Bytes of its memory read before the cap.
    pub fn scanned_bytes(&self) -> u64 {
        match self.cutoff {
            Cutoff::Scanning { scanned_bytes, .. } => scanned_bytes,
            _ => 0,
        }
    }

    /// Its caveats, then what the cap cut short, one line each.
    pub fn notes(&self) -> Vec<String> {
        let cap = self.max_pause.as_millis();
        let cut = match self.cutoff {
            Cutoff::Stopping { waited } => format!(
                "its threads did not all stop within the {cap} ms pause cap (waited {} ms); raise --max-pause",
                waited.as_millis()
            ),
            Cutoff::ReadingRecords => format!(
                "the {cap} ms pause cap was reached while reading the outstanding records (raise --max-pause)"
            ),
            Cutoff::WalkingHeaps => format!(
                "the {cap} ms pause cap was reached while reading glibc's heaps (raise --max-pause; this kernel reads about 1 GiB/s)"
            ),
            Cutoff::Scanning {
                scanned_bytes,
                remaining_bytes,
            } => format!(
                "the {cap} ms pause cap was reached after {} of {} (raise --max-pause; this kernel reads about 1.5 GiB/s)",
                crate::units::human_bytes(scanned_bytes),
                crate::units::human_bytes(scanned_bytes + remaining_bytes),
            ),
        };
        self.caveats.iter().cloned().chain([cut]).collect()
    }
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

/// How the scan of one process ended.
#[derive(Debug)]
pub enum Scanned {
    /// Every block classed.
    Complete(ProcessScan),
    /// Let go at the pause cap, nothing classed.
    LetGo(LetGo),
    /// Not scanned at all.
    Failed(ScanError),
}

/// Why a scan in progress ended before its mark.
enum Interrupted {
    LetGo(Cutoff),
    Failed(ScanError),
}

/// Stops `pid`, reads its outstanding blocks with `blocks_now` (called while it is stopped, so
/// the records and the memory agree), scans, lets it go, and classes every block.
pub fn scan_process(
    pid: u32,
    options: &Options,
    blocks_now: impl FnOnce(&Deadline) -> Option<Vec<TrackedBlock>>,
) -> Scanned {
    let started = Instant::now();
    let mut pass = match Pass::stop(pid, options.max_pause, started) {
        Ok(pass) => pass,
        Err(Interrupted::Failed(e)) => return Scanned::Failed(e),
        Err(Interrupted::LetGo(cutoff)) => {
            return Scanned::LetGo(LetGo {
                pid,
                mode: Mode::Exact,
                pause: started.elapsed(),
                threads: 0,
                cutoff,
                max_pause: options.max_pause,
                caveats: Vec::new(),
            });
        }
    };
    match pass.scan(options, blocks_now) {
        Ok(scan) => Scanned::Complete(scan),
        Err(Interrupted::Failed(e)) => Scanned::Failed(e),
        Err(Interrupted::LetGo(cutoff)) => Scanned::LetGo(pass.let_go(cutoff)),
    }
}

/// A process being scanned: stopped (unless another tracer holds it), with what is known of
/// it so far.
struct Pass {
    pid: u32,
    started: Instant,
    max_pause: Duration,
    /// Its threads, stopped until this is dropped; `None` when it is scanned running.
    frozen: Option<Frozen>,
    deadline: Deadline,
    mode: Mode,
    threads: usize,
    notes: Vec<String>,
    /// Of the pause: stopping, reading the records, walking the heaps.
    stop_time: Duration,
    records_time: Duration,
    walk_time: Duration,
}

/// Free heap memory known, and copies of the heaps read while walking them.
#[derive(Default)]
struct FreeMemory {
    free: Vec<Range<u64>>,
    copies: Vec<(u64, Vec<u8>)>,
    /// glibc's heaps were walked: its chunks' slack is known.
    glibc: bool,
}

/// Why glibc's heaps were not walked.
enum HeapWalk {
    OutOfTime,
    Failed(String),
}

impl Pass {
    /// Stops every thread of `pid` (or, when another tracer holds it, notes that it is scanned
    /// running), the pause cap `max_pause` after `started`.
    fn stop(pid: u32, max_pause: Duration, started: Instant) -> Result<Self, Interrupted> {
        let cap_ends = started + max_pause;
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
            Err(StopError::Exited(_)) => return Err(Interrupted::Failed(ScanError::Exited(pid))),
            Err(StopError::Slow { waited, .. }) => {
                return Err(Interrupted::LetGo(Cutoff::Stopping { waited }));
            }
            Err(e) => return Err(Interrupted::Failed(ScanError::Stop(e))),
        };
        Ok(Self {
            pid,
            started,
            max_pause,
            threads: frozen.as_ref().map_or(0, |f| f.threads.len()),
            mode: if frozen.is_some() {
                Mode::Exact
            } else {
                Mode::Unstopped
            },
            frozen,
            deadline,
            notes,
            stop_time: started.elapsed(),
            records_time: Duration::ZERO,
            walk_time: Duration::ZERO,
        })
    }

    /// The target let go at `cutoff`, nothing classed.
    fn let_go(mut self, cutoff: Cutoff) -> LetGo {
        self.frozen = None; // the target runs again
        // Read while it ran, its memory cost it no pause.
        let unpaused = matches!(cutoff, Cutoff::Scanning { .. }) && self.mode == Mode::Unstopped;
        LetGo {
            pid: self.pid,
            mode: self.mode,
            pause: if unpaused {
                Duration::ZERO
            } else {
                self.started.elapsed()
            },
            threads: self.threads,
            cutoff,
            max_pause: self.max_pause,
            caveats: self.notes,
        }
    }

    /// Reads the blocks and the memory, lets the target go, and classes every block.
    fn scan(
        &mut self,
        options: &Options,
        blocks_now: impl FnOnce(&Deadline) -> Option<Vec<TrackedBlock>>,
    ) -> Result<ProcessScan, Interrupted> {
        let pid = self.pid;
        let Some(mut tracked) = blocks_now(&self.deadline) else {
            return Err(Interrupted::LetGo(Cutoff::ReadingRecords));
        };
        self.records_time = self.started.elapsed() - self.stop_time;
        let maps = read_maps(pid).map_err(|source| {
            Interrupted::Failed(match source.kind() {
                std::io::ErrorKind::NotFound => ScanError::Exited(pid),
                _ => ScanError::Maps { pid, source },
            })
        })?;
        let heap = self.free_heap_memory(options, &maps)?;
        let blocks = blocks_of(&mut tracked, &maps, heap.glibc);
        let found = self.read_memory(&maps, &blocks, heap)?;
        let pause = if self.mode == Mode::Unstopped {
            Duration::ZERO
        } else {
            self.started.elapsed()
        };
        Ok(self.classify(options, &tracked, &blocks, found, pause))
    }

    /// Free heap memory, never a root: glibc's, walked while the target is stopped; or none
    /// known, and the verdict conservative.
    fn free_heap_memory(
        &mut self,
        options: &Options,
        maps: &[Mapping],
    ) -> Result<FreeMemory, Interrupted> {
        let walking = Instant::now();
        let mut heap = FreeMemory::default();
        if options.glibc {
            match self.walk_glibc(maps) {
                Ok(walked) => {
                    heap.free = walked.free;
                    heap.copies = walked.copies;
                    heap.copies.sort_by_key(|(at, _)| *at);
                    heap.glibc = true;
                }
                // The heaps alone outlast the pause cap.
                Err(HeapWalk::OutOfTime) => return Err(Interrupted::LetGo(Cutoff::WalkingHeaps)),
                Err(HeapWalk::Failed(e)) => {
                    self.notes.push(format!(
                        "glibc's heaps could not be walked ({e}): free memory was scanned as roots, so the verdict is conservative"
                    ));
                    self.conservative();
                }
            }
        } else {
            self.notes.push(
                "its allocator is not glibc's malloc: free heap memory was scanned as roots, so the verdict is conservative (a leak may read as reachable, never the reverse)".to_string(),
            );
            self.conservative();
        }
        self.walk_time = walking.elapsed();
        Ok(heap)
    }

    /// glibc's heaps, walked until the deadline.
    fn walk_glibc(&self, maps: &[Mapping]) -> Result<glibc::GlibcHeap, HeapWalk> {
        let memory = RemoteMemory::open(self.pid).map_err(|e| HeapWalk::Failed(e.to_string()))?;
        glibc::walk_before(self.pid, &memory, maps, Some(&self.deadline)).map_err(|e| match e {
            glibc::GlibcError::OutOfTime => HeapWalk::OutOfTime,
            e => HeapWalk::Failed(e.to_string()),
        })
    }

    /// Free memory unknown: a stopped target's verdict is conservative.
    fn conservative(&mut self) {
        if self.mode == Mode::Exact {
            self.mode = Mode::Conservative;
        }
    }

    /// Sorts every candidate pointer in the registers and the scanned memory into a block or
    /// the roots, then lets the target go.
    fn read_memory(
        &mut self,
        maps: &[Mapping],
        blocks: &[Block],
        heap: FreeMemory,
    ) -> Result<Found, Interrupted> {
        let stack_pointers: Vec<u64> = self
            .frozen
            .as_ref()
            .map(|f| f.threads.iter().map(|t| t.sp).collect())
            .unwrap_or_default();
        let excluded = merge(
            heap.free
                .into_iter()
                .chain(below_stack_pointers(maps, &stack_pointers))
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
        if let Some(frozen) = &self.frozen {
            for thread in &frozen.threads {
                sort_register_words(&thread.general, blocks, &mut found);
                sort_register_words(&thread.vector, blocks, &mut found);
            }
        }
        // A thread's stack is a recorded mapping (opened by mprotect in pthread_create) and
        // also a root: the block a thread runs on is reached by that thread, whatever points
        // to it.
        for sp in &stack_pointers {
            if let Some(block) = blocks
                .iter()
                .find(|b| (b.start..b.start + b.size).contains(sp))
            {
                found.roots.push(block.start);
            }
        }
        let scanned = scan_ranges(
            self.pid,
            &ranges,
            &heap.copies,
            blocks,
            &excluded,
            &self.deadline,
            &mut found,
        );
        self.frozen = None; // the target runs again
        scan::free_later(heap.copies);
        if let Err(overrun) = scanned {
            return Err(Interrupted::LetGo(Cutoff::Scanning {
                scanned_bytes: overrun.scanned_bytes,
                remaining_bytes: overrun.remaining_bytes,
            }));
        }
        if found.unreadable_bytes > 0 {
            self.notes.push(format!(
                "{} of its writable memory could not be read",
                crate::units::human_bytes(found.unreadable_bytes)
            ));
        }
        Ok(found)
    }

    /// valgrind's mark on what was found (the target running again), and each stack's
    /// classes.
    fn classify(
        &mut self,
        options: &Options,
        tracked: &[TrackedBlock],
        blocks: &[Block],
        found: Found,
        pause: Duration,
    ) -> ProcessScan {
        let marking = Instant::now();
        let nodes: Vec<Node> = blocks
            .iter()
            .map(|b| Node {
                start: b.start,
                size: b.size,
            })
            .collect();
        let (read_time, sort_time, scanned_bytes) =
            (found.read_time, found.sort_time, found.scanned_bytes);
        let graph = Graph::new(nodes, found.contents, found.roots);
        let mut checker = heuristics::Checker::new(self.pid, &options.heuristics);
        let classes = graph.classify_with(&mut |index, offset| {
            let node = graph.nodes()[index];
            checker.accepts(node.start, node.size, offset)
        });
        if let Some(note) = heuristics_note(&checker) {
            self.notes.push(note);
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
        ProcessScan {
            pid: self.pid,
            mode: self.mode,
            pause,
            scanned_bytes,
            threads: self.threads,
            mark: marking.elapsed(),
            read_time,
            sort_time,
            walk_time: self.walk_time,
            stop_time: self.stop_time,
            records_time: self.records_time,
            blocks: tracked.len(),
            per_stack,
            totals,
            notes: std::mem::take(&mut self.notes),
        }
    }
}

/// The note that blocks were counted still reachable by a heuristic, if any was.
fn heuristics_note(checker: &heuristics::Checker<'_>) -> Option<String> {
    let mut accepted: Vec<(heuristics::Heuristic, usize)> = checker
        .accepted
        .iter()
        .map(|(h, blocks)| (*h, blocks.len()))
        .collect();
    accepted.sort();
    if accepted.is_empty() {
        return None;
    }
    let list: Vec<String> = accepted
        .iter()
        .map(|(h, n)| format!("{n} by {h}"))
        .collect();
    Some(format!(
        "blocks pointed to only past a header were counted still reachable, as memcheck's heuristics do ({}; --reachability-heuristics none counts them possibly lost)",
        list.join(", ")
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn let_go(cutoff: Cutoff, caveats: &[&str]) -> LetGo {
        LetGo {
            pid: 42,
            mode: Mode::Conservative,
            pause: Duration::from_millis(201),
            threads: 3,
            cutoff,
            max_pause: Duration::from_millis(200),
            caveats: caveats.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// A scan let go says what it noted before, then what the cap cut short, in the words
    /// the report has always used.
    #[test]
    fn a_scan_let_go_at_the_cap_says_where() {
        let scanning = let_go(
            Cutoff::Scanning {
                scanned_bytes: 3 << 20,
                remaining_bytes: 1 << 20,
            },
            &["its allocator is not glibc's malloc"],
        );
        assert_eq!(scanning.scanned_bytes(), 3 << 20);
        assert_eq!(
            scanning.notes(),
            vec![
                "its allocator is not glibc's malloc".to_string(),
                "the 200 ms pause cap was reached after 3.00 MiB of 4.00 MiB (raise --max-pause; this kernel reads about 1.5 GiB/s)".to_string(),
            ]
        );
        let stopping = let_go(
            Cutoff::Stopping {
                waited: Duration::from_millis(205),
            },
            &[],
        );
        assert_eq!(stopping.scanned_bytes(), 0);
        assert_eq!(
            stopping.notes(),
            vec!["its threads did not all stop within the 200 ms pause cap (waited 205 ms); raise --max-pause".to_string()]
        );
        assert_eq!(
            let_go(Cutoff::ReadingRecords, &[]).notes(),
            vec!["the 200 ms pause cap was reached while reading the outstanding records (raise --max-pause)".to_string()]
        );
        assert_eq!(
            let_go(Cutoff::WalkingHeaps, &[]).notes(),
            vec!["the 200 ms pause cap was reached while reading glibc's heaps (raise --max-pause; this kernel reads about 1 GiB/s)".to_string()]
        );
    }

    /// A process that does not exist is not scanned, and nothing is asked of the records.
    #[test]
    fn a_process_gone_before_its_scan_fails_without_reading_records() {
        let options = Options {
            max_pause: Duration::from_millis(200),
            glibc: true,
            heuristics: Vec::new(),
        };
        let mut asked = false;
        let scanned = scan_process(u32::MAX - 1, &options, |_| {
            asked = true;
            Some(Vec::new())
        });
        assert!(
            matches!(scanned, Scanned::Failed(ScanError::Exited(pid)) if pid == u32::MAX - 1),
            "{scanned:?}"
        );
        assert!(!asked);
    }
}
