//! Walking a live process's glibc malloc heaps to find the memory in them that is free, so the
//! reachability scan never takes a stale pointer in a freed chunk for a root. Everything in a heap
//! that is neither free nor a tracked block is a root (a block allocated before the trace).
//!
//! Layouts are those of glibc 2.36 on x86-64 (docs/design/reachability.md §2, checked with gdb
//! and libc6-dbg on this machine). No debug file is used at run time. Any other version, a libc
//! that is not glibc, or a heap that does not add up gives an error: the caller then scans
//! conservatively.
//!
//! How free memory is found:
//! - **Chunk walk.** Each heap is read with one read and walked chunk by chunk (`size & ~7`).
//!   A chunk is in a bin (unsorted, small, large) iff the next chunk's PREV_INUSE is clear. The
//!   walk is checked as it goes: sizes are multiples of 16 and at least 32 bytes, no chunk is
//!   IS_MMAPPED, a free chunk has its footer (`next.prev_size == size`), no two free chunks are
//!   adjacent, every PREV_INUSE bit matches the chunk before it, and the walk lands exactly on
//!   the arena's top chunk, which ends the heap. Each bin list of the arena is then followed, and
//!   the chunks on the lists must be exactly the free chunks that the walk found.
//! - **Top.** Each arena's top chunk is free.
//! - **Fastbins.** `fastbinsY[]` of each arena: singly linked from the chunk header, `fd` is
//!   safe-linked (`(&fd >> 12) ^ next`). Each entry must be an in-use chunk of the walk (fastbin
//!   chunks keep PREV_INUSE set) with the bin's size. The walk of a list is bounded.
//! - **Tcache.** A thread's `tcache_perthread_struct` is an in-use chunk of size 0x290 in some
//!   heap (its arena's, which is not always the first chunk of a heap: threads share arenas). So
//!   every in-use 0x290 chunk whose 64 `counts[]` and `entries[]` agree (zero together, entries
//!   16-aligned inside a heap) is taken as one, and its lists are followed: entries are user
//!   pointers, `next` is safe-linked, a list has exactly `counts[i]` entries of chunk size
//!   `32 + 16 i`, and every entry carries the same `tcache_key` at user+8 (random since 2.34, one
//!   per process). A shaped struct whose lists do not check out is an error, not skipped. A tcache
//!   entry may sit in any arena's heap: a thread caches what it frees, wherever it came from. The
//!   key alone is not used to find tcache chunks: a chunk freed by an exiting thread's tcache
//!   shutdown keeps the key as stale user data after it is allocated again.
//! - **Arenas.** `main_arena` is a static that is not in `.dynsym`. It is found without debug
//!   info: its `top` (+96) must be a chunk of `[heap]` that ends `[heap]`, so libc's writable
//!   data (and the bss mapping after it) is searched for 8-byte words with that property, and a
//!   candidate must also have sane flags, `system_mem`, fastbins and bins (each bin empty, i.e.
//!   pointing at itself, or pointing into `[heap]`). Exactly one candidate must pass. The first
//!   chunk of `[heap]` is `align16([heap].end - system_mem)` (glibc's `sbrk_base`). Non-main
//!   arenas come from the circular `next` list. Each one lives right after the `heap_info` of
//!   its first heap (64 MiB-aligned, `ar_ptr` pointing back to the arena). Its other heaps are
//!   found from `top`'s heap by `prev`. A heap that is not its arena's last one ends in a
//!   fencepost (a 16-byte chunk, then a header of size 0).
//! - **mmapped chunks** are not in any heap and are ignored (the caller has them as tracked or
//!   pre-trace blocks).
//! - The first chunk of a heap (tcache struct, alignment padding), the `heap_info` and a non-main
//!   arena's `malloc_state` are allocator metadata: not free, so the caller treats them as roots.
//!   Pointers in them lead only to free chunks or arena internals, which are not blocks.
//!
//! Free ranges are the user parts `[chunk + 16, chunk + size)`. The chunk's `prev_size` word
//! belongs to the chunk before it when that one is in use, and the `size` word is not a pointer.
//!
//! Checked here (glibc 2.36-9+deb12u14): the unit test forks a child whose two threads free
//! blocks into tcaches, fastbins and the unsorted, small and large bins; every freed pointer is
//! in a free range and no live block overlaps one. The walk also passed on a stopped python3 with
//! 5 arenas and on `sleep`.
//!
//! Limitations: a heap read while the target runs can be torn (the result is then an error, not a
//! wrong answer, as far as the checks catch it). A main arena that is not contiguous (brk failed
//! and glibc fell back to mmap), `glibc.malloc.hugetlb` heaps that are not 64 MiB-aligned, and a
//! process with no `[heap]` give errors.

use std::{collections::HashSet, io, ops::Range};

use crate::target::{maps::Mapping, remote::RemoteMemory};

/// What a walk of one process's glibc malloc heaps found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlibcHeap {
    /// Every heap walked: the main arena's `[heap]` (brk) and each non-main arena heap,
    /// `[start, end)`, sorted.
    pub heaps: Vec<Range<u64>>,
    /// Free memory inside those heaps, sorted and non-overlapping: the user part
    /// `[chunk + 16, chunk + size)` of each chunk in a bin, in a fastbin or in a tcache, and of
    /// each arena's top chunk. Never to be scanned for pointers.
    pub free: Vec<Range<u64>>,
    /// Chunks in use, allocator metadata (tcache structs, fenceposts) included.
    pub chunks_in_use: u64,
    /// Chunks in bins, fastbins and tcaches (top chunks not counted).
    pub chunks_free: u64,
    /// Each heap's bytes as read for the walk, `(start, bytes)`: the scan reads them from here
    /// rather than from the target a second time.
    pub copies: Vec<(u64, Vec<u8>)>,
    /// The glibc version found (e.g. "2.36").
    pub version: String,
    /// `&main_arena` in the target.
    pub main_arena: u64,
    /// Arenas walked, the main one included.
    pub arenas: usize,
    /// The tcache key (glibc ≥ 2.34), when any tcache entry was found.
    pub tcache_key: Option<u64>,
}

/// Why the heaps could not be walked (the caller falls back to a conservative scan).
#[derive(Debug, thiserror::Error)]
pub enum GlibcError {
    #[error("process {0} maps no glibc (no libc.so.6): another allocator or a static binary")]
    NoGlibc(u32),
    #[error("{0} is not a 64-bit x86-64 ELF object")]
    NotX86_64(String),
    #[error("{0} has no GNU C Library version string: not glibc")]
    NoVersion(String),
    #[error("glibc {0}: its malloc layout is not verified (only {VERIFIED_TEXT} is)")]
    UnsupportedVersion(String),
    #[error("process {0} has no [heap] mapping: glibc's main arena has no brk heap to walk")]
    NoHeap(u32),
    #[error("glibc's main_arena not found in libc's data ({0} candidates pass the checks)")]
    MainArena(usize),
    #[error("cannot read the {what} at {address:#x} of the target: {source}")]
    Read {
        what: &'static str,
        address: u64,
        source: io::Error,
    },
    #[error("glibc heap inconsistent at {address:#x}: {reason}")]
    Inconsistent { address: u64, reason: String },
    /// The pause cap came before the heaps were read.
    #[error("the heaps could not be read before the pause cap")]
    OutOfTime,
}

/// glibc versions whose layouts were checked against the debug info on a live process.
const VERIFIED: &[(u32, u32)] = &[(2, 36)];
const VERIFIED_TEXT: &str = "2.36";

// Chunk header (malloc.c).
const CHUNK_HDR: u64 = 16;
const MINSIZE: u64 = 32;
const ALIGN: u64 = 16;
const PREV_INUSE: u64 = 0x1;
const IS_MMAPPED: u64 = 0x2;
const NON_MAIN_ARENA: u64 = 0x4;

// struct malloc_state (2200 bytes).
const MSTATE_SIZE: u64 = 2200;
const MS_FLAGS: u64 = 4;
const MS_FASTBINS: u64 = 16;
const NFASTBINS: u64 = 10;
const MS_TOP: u64 = 96;
const MS_LAST_REMAINDER: u64 = 104;
const MS_BINS: u64 = 112;
/// `bins[254]`: 127 (fd, bk) pairs, bins 1..=127.
const NBIN_PAIRS: u64 = 127;
const MS_NEXT: u64 = 2160;
const MS_SYSTEM_MEM: u64 = 2184;
/// `flags`: NONCONTIGUOUS_BIT and ARENA_CORRUPTION_BIT are the only bits.
const NONCONTIGUOUS_BIT: u32 = 0x2;
const ARENA_CORRUPTION_BIT: u32 = 0x4;

// Non-main heaps: `struct _heap_info` { ar_ptr +0, prev +8, size +16, mprotect_size +24, .. }.
const HEAP_MAX_SIZE: u64 = 64 << 20;
const HI_READ: u64 = 32;
/// `sizeof(heap_info)`: 48 since 2.35 (the `pagesize` field), 32 before.
const HEAP_INFO_SIZE: u64 = 48;

// struct tcache_perthread_struct: u16 counts[64] +0, tcache_entry *entries[64] +128.
const TCACHE_STRUCT_CHUNK: u64 = 0x290;
const TCACHE_BINS: u64 = 64;
const TCACHE_ENTRIES: u64 = 128;

/// Bounds on lists, against cycles in garbage.
const MAX_ARENAS: usize = 1 << 16;
const MAX_HEAPS_PER_ARENA: usize = 1 << 16;

/// Walks the glibc heaps of `pid` (`memory` and `maps` are that process's) and returns their
/// free memory. The target should be stopped: a heap that changes under the walk gives an error.
pub fn walk(pid: u32, memory: &RemoteMemory, maps: &[Mapping]) -> Result<GlibcHeap, GlibcError> {
    walk_before(pid, memory, maps, None)
}

/// [`walk`], giving up with [`GlibcError::OutOfTime`] at `deadline` (the heaps are read in
/// batches, the deadline checked between them): the target is stopped meanwhile.
pub fn walk_before(
    pid: u32,
    memory: &RemoteMemory,
    maps: &[Mapping],
    deadline: Option<&super::deadline::Deadline>,
) -> Result<GlibcHeap, GlibcError> {
    let libc = find_libc(pid, maps)?;
    check_elf(memory, &libc)?;
    let version = read_version(memory, &libc)?;
    if !parse_version(&version).is_some_and(|v| VERIFIED.contains(&v)) {
        return Err(GlibcError::UnsupportedVersion(version));
    }

    let brk = maps
        .iter()
        .find(|m| m.path.as_deref() == Some("[heap]"))
        .ok_or(GlibcError::NoHeap(pid))?;
    let brk_buf = read_heap(pid, "[heap]", brk.start, brk.end - brk.start, deadline)?;
    // The candidate's own copy of the state, so what was checked is what is used.
    let (main_arena, main_state) = find_main_arena(memory, &libc, brk.start, &brk_buf)?;
    let system_mem = le64(&main_state, MS_SYSTEM_MEM).unwrap_or(0);

    let mut heaps = vec![Heap {
        start: brk.start,
        first: align_up(brk.end - system_mem),
        top: Some(le64(&main_state, MS_TOP).unwrap_or(0)),
        arena: 0,
        main: true,
        buf: brk_buf,
    }];
    let mut arenas = vec![Arena {
        addr: main_arena,
        state: main_state,
    }];
    if let Err(e) = collect_arenas(pid, memory, &mut arenas, &mut heaps, deadline) {
        // The copies read so far are freed after the target goes on.
        super::scan::free_later(heaps);
        return Err(e);
    }
    heaps.sort_by_key(|h| h.start);
    for pair in heaps.windows(2) {
        if pair[0].end() > pair[1].start {
            return Err(inconsistent(pair[1].start, "heaps overlap"));
        }
    }

    // Chunk walk of every heap.
    let mut in_use: Vec<Chunk> = Vec::new();
    let mut bin_free: Vec<Chunk> = Vec::new();
    let mut free: Vec<Range<u64>> = Vec::new();
    let mut bin_free_per_arena = vec![0u64; arenas.len()];
    for heap in &heaps {
        let walked = walk_chunks(heap)?;
        in_use.extend(walked.in_use);
        bin_free_per_arena[heap.arena] += walked.free.len() as u64;
        bin_free.extend(walked.free);
        if let Some(top) = walked.top {
            free.push(top.user());
        }
    }
    in_use.sort_by_key(|c| c.addr);
    bin_free.sort_by_key(|c| c.addr);

    // The bin lists must hold exactly the free chunks of the walk.
    for (index, arena) in arenas.iter().enumerate() {
        let listed = follow_bins(arena, index, &heaps, &bin_free)?;
        if listed != bin_free_per_arena[index] {
            return Err(inconsistent(
                arena.addr,
                format!(
                    "the bins list {listed} chunks, the walk found {} free",
                    bin_free_per_arena[index]
                ),
            ));
        }
    }

    // Fastbin and tcache chunks: in use for the walk, free for us.
    let mut cached: HashSet<u64> = HashSet::new();
    for (index, arena) in arenas.iter().enumerate() {
        follow_fastbins(arena, index, &heaps, &in_use, &mut cached)?;
    }
    let tcache_key = follow_tcaches(&heaps, &in_use, &mut cached)?;

    let mut chunks_in_use = 0;
    for chunk in &in_use {
        if cached.contains(&chunk.addr) {
            free.push(chunk.user());
        } else {
            chunks_in_use += 1;
        }
    }
    free.extend(bin_free.iter().map(Chunk::user));
    free.retain(|r| !r.is_empty());
    free.sort_by_key(|r| r.start);
    for pair in free.windows(2) {
        if pair[0].end > pair[1].start {
            return Err(inconsistent(pair[1].start, "free ranges overlap"));
        }
    }

    let result = GlibcHeap {
        heaps: heaps.iter().map(|h| h.start..h.end()).collect(),
        free,
        chunks_in_use,
        chunks_free: bin_free.len() as u64 + cached.len() as u64,
        version,
        main_arena,
        arenas: arenas.len(),
        tcache_key,
        copies: Vec::new(),
    };
    log::debug!(
        "glibc {} heap of {pid}: {} arenas, {} heaps, {} chunks in use, {} free",
        result.version,
        result.arenas,
        result.heaps.len(),
        result.chunks_in_use,
        result.chunks_free
    );
    let mut result = result;
    result.copies = heaps.into_iter().map(|h| (h.start, h.buf)).collect();
    Ok(result)
}

/// A chunk: header address and size (`size & ~7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    addr: u64,
    size: u64,
}

impl Chunk {
    fn user(&self) -> Range<u64> {
        self.addr + CHUNK_HDR..self.addr + self.size
    }
}

/// One heap, read whole.
struct Heap {
    start: u64,
    /// The first chunk.
    first: u64,
    /// The arena's top chunk, when it is in this heap (the arena's last heap).
    top: Option<u64>,
    /// Index in the arena list; 0 is `main_arena`.
    arena: usize,
    /// The main arena's `[heap]`.
    main: bool,
    buf: Vec<u8>,
}

impl Heap {
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    fn contains(&self, addr: u64) -> bool {
        (self.start..self.end()).contains(&addr)
    }

    fn word(&self, addr: u64) -> Option<u64> {
        let offset = addr.checked_sub(self.start)?;
        le64(&self.buf, offset)
    }
}

/// The heap that holds `addr`, from heaps sorted by start.
fn heap_of(heaps: &[Heap], addr: u64) -> Option<&Heap> {
    let index = heaps.partition_point(|h| h.start <= addr).checked_sub(1)?;
    Some(&heaps[index]).filter(|h| h.contains(addr))
}

struct Arena {
    addr: u64,
    /// Its `malloc_state`, read once.
    state: Vec<u8>,
}

impl Arena {
    fn field(&self, offset: u64) -> u64 {
        le64(&self.state, offset).unwrap_or(0)
    }

    fn flags(&self) -> u32 {
        self.field(MS_FLAGS) as u32
    }
}

struct Walked {
    in_use: Vec<Chunk>,
    free: Vec<Chunk>,
    top: Option<Chunk>,
}

/// Walks the chunks of one heap from its first chunk to its top chunk (or, in a non-main heap
/// that is not its arena's last, to the fencepost's zero-size header).
fn walk_chunks(heap: &Heap) -> Result<Walked, GlibcError> {
    let end = heap.end();
    let mut walked = Walked {
        in_use: Vec::new(),
        free: Vec::new(),
        top: None,
    };
    let mut chunk = heap.first;
    let mut prev_free = false;
    // Each step moves at least 16 bytes forward inside the heap, so this ends.
    loop {
        let head = heap
            .word(chunk + 8)
            .ok_or_else(|| inconsistent(chunk, "chunk header outside the heap"))?;
        let size = head & !7;
        if !chunk.is_multiple_of(ALIGN) {
            return Err(inconsistent(chunk, "misaligned chunk"));
        }
        if (head & PREV_INUSE == 0) != prev_free {
            return Err(inconsistent(
                chunk,
                "PREV_INUSE does not match the chunk before",
            ));
        }
        if heap.main && head & NON_MAIN_ARENA != 0 {
            return Err(inconsistent(chunk, "NON_MAIN_ARENA chunk in the main heap"));
        }
        if Some(chunk) == heap.top {
            if chunk.checked_add(size) != Some(end) || size < MINSIZE {
                return Err(inconsistent(chunk, "the top chunk does not end the heap"));
            }
            walked.top = Some(Chunk { addr: chunk, size });
            return Ok(walked);
        }
        if size == 0 {
            // The fencepost of a heap its arena has outgrown.
            if heap.top.is_some() || head != PREV_INUSE {
                return Err(inconsistent(chunk, "zero-size chunk"));
            }
            return Ok(walked);
        }
        if !size.is_multiple_of(ALIGN) || head & IS_MMAPPED != 0 {
            return Err(inconsistent(
                chunk,
                format!("bad chunk size field {head:#x}"),
            ));
        }
        let fencepost = size == CHUNK_HDR && heap.top.is_none();
        if size < MINSIZE && !fencepost {
            return Err(inconsistent(
                chunk,
                format!("chunk size {size:#x} too small"),
            ));
        }
        let next = chunk
            .checked_add(size)
            .filter(|&next| next.checked_add(CHUNK_HDR).is_some_and(|n| n <= end))
            .ok_or_else(|| {
                inconsistent(chunk, format!("chunk size {size:#x} runs past the heap"))
            })?;
        let next_head = heap.word(next + 8).unwrap_or(0);
        if fencepost && next_head != PREV_INUSE {
            return Err(inconsistent(chunk, "16-byte chunk that is not a fencepost"));
        }
        let free = next_head & PREV_INUSE == 0;
        if free {
            if prev_free {
                return Err(inconsistent(chunk, "two adjacent free chunks"));
            }
            if heap.word(next) != Some(size) {
                return Err(inconsistent(chunk, "free chunk without its footer"));
            }
            walked.free.push(Chunk { addr: chunk, size });
        } else {
            walked.in_use.push(Chunk { addr: chunk, size });
        }
        prev_free = free;
        chunk = next;
    }
}

/// Follows every bin (unsorted, small, large) of `arena`: each chunk on a list must be a free
/// chunk of the walk in that arena's heaps, and each list must be doubly linked. Returns how many
/// chunks the lists hold.
fn follow_bins(
    arena: &Arena,
    index: usize,
    heaps: &[Heap],
    bin_free: &[Chunk],
) -> Result<u64, GlibcError> {
    let mut listed = 0u64;
    let limit = bin_free.len() as u64;
    for pair in 0..NBIN_PAIRS {
        // bin_at(i) is the fake chunk whose fd/bk are the pair: 16 bytes before it.
        let bin = arena.addr + MS_BINS + 16 * pair - CHUNK_HDR;
        let (fd, bk) = (
            arena.field(MS_BINS + 16 * pair),
            arena.field(MS_BINS + 16 * pair + 8),
        );
        let mut prev = bin;
        let mut chunk = fd;
        while chunk != bin {
            let heap = heap_of(heaps, chunk)
                .filter(|h| h.arena == index)
                .ok_or_else(|| inconsistent(chunk, "bin entry outside its arena's heaps"))?;
            if bin_free.binary_search_by_key(&chunk, |c| c.addr).is_err() {
                return Err(inconsistent(chunk, "bin entry is not a free chunk"));
            }
            if heap.word(chunk + 24) != Some(prev) {
                return Err(inconsistent(chunk, "bin entry's bk does not point back"));
            }
            listed += 1;
            if listed > limit {
                return Err(inconsistent(
                    arena.addr,
                    "bin lists longer than the free chunks",
                ));
            }
            prev = chunk;
            chunk = heap.word(chunk + 16).unwrap_or(0);
        }
        if bk != prev {
            return Err(inconsistent(bin, "bin's bk is not its last chunk"));
        }
    }
    Ok(listed)
}

/// Marks every chunk on `arena`'s fastbins.
fn follow_fastbins(
    arena: &Arena,
    index: usize,
    heaps: &[Heap],
    in_use: &[Chunk],
    cached: &mut HashSet<u64>,
) -> Result<(), GlibcError> {
    for bin in 0..NFASTBINS {
        let size = (bin + 2) * 16;
        let mut chunk = arena.field(MS_FASTBINS + 8 * bin);
        let mut steps = 0usize;
        while chunk != 0 {
            let heap = heap_of(heaps, chunk)
                .filter(|h| h.arena == index)
                .ok_or_else(|| inconsistent(chunk, "fastbin entry outside its arena's heaps"))?;
            if find_chunk(in_use, chunk).is_none_or(|c| c.size != size) {
                return Err(inconsistent(
                    chunk,
                    format!("fastbin entry is not an in-use chunk of size {size:#x}"),
                ));
            }
            if !cached.insert(chunk) {
                return Err(inconsistent(chunk, "chunk on two free lists"));
            }
            steps += 1;
            if steps > in_use.len() {
                return Err(inconsistent(chunk, "fastbin list loops"));
            }
            let fd = chunk + 16;
            let stored = heap
                .word(fd)
                .ok_or_else(|| inconsistent(fd, "fastbin link unreadable"))?;
            chunk = reveal(fd, stored);
        }
    }
    Ok(())
}

/// Finds every thread's `tcache_perthread_struct` among the in-use 0x290 chunks and marks the
/// chunks on its lists. Returns the tcache key seen on the entries.
fn follow_tcaches(
    heaps: &[Heap],
    in_use: &[Chunk],
    cached: &mut HashSet<u64>,
) -> Result<Option<u64>, GlibcError> {
    let mut key = None;
    for chunk in in_use.iter().filter(|c| c.size == TCACHE_STRUCT_CHUNK) {
        let Some(heap) = heap_of(heaps, chunk.addr) else {
            continue;
        };
        let user = chunk.addr + CHUNK_HDR;
        let Some(bins) = tcache_shape(heap, heaps, user) else {
            continue;
        };
        for (bin, (count, entry)) in bins.into_iter().enumerate() {
            let size = MINSIZE + 16 * bin as u64;
            let mut entry = entry;
            for _ in 0..count {
                if entry == 0 {
                    return Err(inconsistent(
                        user,
                        format!("tcache bin {bin} shorter than its count"),
                    ));
                }
                let holder = heap_of(heaps, entry)
                    .ok_or_else(|| inconsistent(entry, "tcache entry outside the heaps"))?;
                let entry_chunk = entry - CHUNK_HDR;
                if find_chunk(in_use, entry_chunk).is_none_or(|c| c.size != size) {
                    return Err(inconsistent(
                        entry,
                        format!("tcache entry is not an in-use chunk of size {size:#x}"),
                    ));
                }
                let entry_key = holder.word(entry + 8);
                match (key, entry_key) {
                    (_, None) => return Err(inconsistent(entry, "tcache entry unreadable")),
                    (None, Some(k)) => key = Some(k),
                    (Some(k), Some(e)) if k != e => {
                        return Err(inconsistent(entry, "tcache entry with another key"));
                    }
                    _ => {}
                }
                if !cached.insert(entry_chunk) {
                    return Err(inconsistent(entry, "chunk on two free lists"));
                }
                let stored = holder
                    .word(entry)
                    .ok_or_else(|| inconsistent(entry, "tcache link unreadable"))?;
                entry = reveal(entry, stored);
                if !entry.is_multiple_of(ALIGN) {
                    return Err(inconsistent(entry, "misaligned tcache link"));
                }
            }
            if entry != 0 {
                return Err(inconsistent(
                    user,
                    format!("tcache bin {bin} longer than its count"),
                ));
            }
        }
    }
    Ok(key)
}

/// `(counts[i], entries[i])` of a chunk that looks like a `tcache_perthread_struct`: every count
/// is zero exactly when its entry is, and every entry is a 16-aligned address inside a heap.
/// `None` for anything else (an ordinary block of the same size).
fn tcache_shape(heap: &Heap, heaps: &[Heap], user: u64) -> Option<Vec<(u16, u64)>> {
    let offset = usize::try_from(user.checked_sub(heap.start)?).ok()?;
    let counts = heap.buf.get(offset..offset + TCACHE_ENTRIES as usize)?;
    let mut bins = Vec::with_capacity(TCACHE_BINS as usize);
    for bin in 0..TCACHE_BINS as usize {
        let count = u16::from_le_bytes([counts[2 * bin], counts[2 * bin + 1]]);
        let entry = heap.word(user + TCACHE_ENTRIES + 8 * bin as u64)?;
        let plausible = if count == 0 {
            entry == 0
        } else {
            entry.is_multiple_of(ALIGN) && heap_of(heaps, entry).is_some()
        };
        if !plausible {
            return None;
        }
        bins.push((count, entry));
    }
    Some(bins)
}

/// The chunk of `chunks` (sorted) that starts at `addr`.
fn find_chunk(chunks: &[Chunk], addr: u64) -> Option<&Chunk> {
    let index = chunks.binary_search_by_key(&addr, |c| c.addr).ok()?;
    Some(&chunks[index])
}

/// glibc ≥ 2.32's `REVEAL_PTR`: a link stored at `pos` is `(pos >> 12) ^ ptr`.
fn reveal(pos: u64, stored: u64) -> u64 {
    (pos >> 12) ^ stored
}

/// Follows `main_arena.next` and collects every other arena and its heaps.
fn collect_arenas(
    pid: u32,
    memory: &RemoteMemory,
    arenas: &mut Vec<Arena>,
    heaps: &mut Vec<Heap>,
    deadline: Option<&super::deadline::Deadline>,
) -> Result<(), GlibcError> {
    let main = arenas[0].addr;
    let mut seen = HashSet::from([main]);
    let mut next = arenas[0].field(MS_NEXT);
    while next != main {
        if arenas.len() >= MAX_ARENAS || !seen.insert(next) {
            return Err(inconsistent(
                next,
                "the arena list does not come back to main_arena",
            ));
        }
        let addr = next;
        let first_heap = addr & !(HEAP_MAX_SIZE - 1);
        if addr - first_heap != HEAP_INFO_SIZE {
            return Err(inconsistent(addr, "arena not right after its heap_info"));
        }
        let arena = Arena {
            addr,
            state: read(memory, "arena", addr, MSTATE_SIZE)?,
        };
        if arena.flags() & !(NONCONTIGUOUS_BIT | ARENA_CORRUPTION_BIT) != 0
            || arena.flags() & ARENA_CORRUPTION_BIT != 0
        {
            return Err(inconsistent(
                addr,
                format!("arena flags {:#x}", arena.flags()),
            ));
        }
        let index = arenas.len();
        let top = arena.field(MS_TOP);

        // From the heap that holds top back to the arena's first heap.
        let mut heap_addr = top & !(HEAP_MAX_SIZE - 1);
        let mut count = 0;
        loop {
            let info = read(memory, "heap_info", heap_addr, HI_READ)?;
            let field = |i: u64| le64(&info, 8 * i).unwrap_or(0);
            let (ar_ptr, prev, size, mprotect_size) = (field(0), field(1), field(2), field(3));
            if ar_ptr != addr
                || size > HEAP_MAX_SIZE
                || size > mprotect_size
                || size < HEAP_INFO_SIZE + MINSIZE
            {
                return Err(inconsistent(heap_addr, "heap_info does not fit its arena"));
            }
            let first = if heap_addr == first_heap {
                align_up(addr + MSTATE_SIZE)
            } else {
                heap_addr + HEAP_INFO_SIZE
            };
            heaps.push(Heap {
                start: heap_addr,
                first,
                top: (count == 0).then_some(top),
                arena: index,
                main: false,
                buf: read_heap(pid, "arena heap", heap_addr, size, deadline)?,
            });
            count += 1;
            if heap_addr == first_heap {
                if prev != 0 {
                    return Err(inconsistent(heap_addr, "an arena's first heap has a prev"));
                }
                break;
            }
            if prev == 0 || !prev.is_multiple_of(HEAP_MAX_SIZE) || count >= MAX_HEAPS_PER_ARENA {
                return Err(inconsistent(
                    heap_addr,
                    "the heap list misses the arena's first heap",
                ));
            }
            heap_addr = prev;
        }
        check_arena_pointers(&arena, index, heaps)?;
        next = arena.field(MS_NEXT);
        arenas.push(arena);
    }
    Ok(())
}

/// A non-main arena's fastbins, last remainder and bins point into its own heaps (or, for an
/// empty bin, at itself).
fn check_arena_pointers(arena: &Arena, index: usize, heaps: &[Heap]) -> Result<(), GlibcError> {
    let inside = |p: u64| {
        heaps
            .iter()
            .any(|h| h.arena == index && h.contains(p) && p.is_multiple_of(ALIGN))
    };
    if arena_pointers_ok(&arena.state, arena.addr, inside) {
        Ok(())
    } else {
        Err(inconsistent(arena.addr, "arena points outside its heaps"))
    }
}

fn arena_pointers_ok(state: &[u8], addr: u64, inside: impl Fn(u64) -> bool) -> bool {
    let field = |offset: u64| le64(state, offset).unwrap_or(u64::MAX);
    let fastbins_ok = (0..NFASTBINS).all(|i| {
        let p = field(MS_FASTBINS + 8 * i);
        p == 0 || inside(p)
    });
    let remainder = field(MS_LAST_REMAINDER);
    let bins_ok = (0..NBIN_PAIRS).all(|pair| {
        let bin = addr + MS_BINS + 16 * pair - CHUNK_HDR;
        let (fd, bk) = (field(MS_BINS + 16 * pair), field(MS_BINS + 16 * pair + 8));
        (fd == bin && bk == bin) || (inside(fd) && inside(bk))
    });
    fastbins_ok && bins_ok && (remainder == 0 || inside(remainder)) && inside(field(MS_TOP))
}

/// Searches libc's writable data for `main_arena`: a `malloc_state` whose top chunk ends
/// `[heap]` and whose other fields fit (see the module docs).
fn find_main_arena(
    memory: &RemoteMemory,
    libc: &Libc,
    heap_start: u64,
    heap: &[u8],
) -> Result<(u64, Vec<u8>), GlibcError> {
    let heap_end = heap_start + heap.len() as u64;
    let inside = |p: u64| (heap_start..heap_end).contains(&p) && p.is_multiple_of(ALIGN);
    let top_ends_heap = |top: u64| {
        inside(top)
            && le64(heap, top - heap_start + 8).is_some_and(|head| {
                head & PREV_INUSE != 0 && top.checked_add(head & !7) == Some(heap_end)
            })
    };
    let mut found = Vec::new();
    for range in &libc.data {
        let data = read(memory, "libc data", range.start, range.end - range.start)?;
        let mut offset = 0u64;
        while offset + MSTATE_SIZE <= data.len() as u64 {
            let state = &data[offset as usize..(offset + MSTATE_SIZE) as usize];
            let addr = range.start + offset;
            offset += 8;
            if !le64(state, MS_TOP).is_some_and(top_ends_heap) {
                continue;
            }
            let flags = le64(state, MS_FLAGS).unwrap_or(0) as u32;
            let system_mem = le64(state, MS_SYSTEM_MEM).unwrap_or(0);
            let next = le64(state, MS_NEXT).unwrap_or(0);
            // The main arena is contiguous (brk) and not marked corrupt: no flag set.
            let plausible = flags == 0
                && system_mem >= MINSIZE
                && system_mem <= heap.len() as u64
                && next != 0
                && next.is_multiple_of(8)
                && arena_pointers_ok(state, addr, inside);
            if plausible {
                found.push((addr, state.to_vec()));
            }
        }
    }
    if found.len() == 1 {
        Ok(found.remove(0))
    } else {
        Err(GlibcError::MainArena(found.len()))
    }
}

/// The libc object mapped by the target.
struct Libc {
    path: String,
    /// Where its first byte (the ELF header) is mapped.
    base: u64,
    /// Its read-only, non-executable mappings (where `.rodata` is).
    rodata: Vec<Range<u64>>,
    /// Its writable mappings and the anonymous bss mapping right after them.
    data: Vec<Range<u64>>,
}

/// Whether `path` names glibc's C library (`libc.so.6`, or an old `libc-2.X.so`).
pub fn is_glibc_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "libc.so.6" || (name.starts_with("libc-2.") && name.ends_with(".so"))
}

fn find_libc(pid: u32, maps: &[Mapping]) -> Result<Libc, GlibcError> {
    let first = maps
        .iter()
        .position(|m| m.offset == 0 && m.clean_path().is_some_and(is_glibc_path))
        .ok_or(GlibcError::NoGlibc(pid))?;
    let path = maps[first].clean_path().unwrap_or_default().to_string();
    let mut libc = Libc {
        path: path.clone(),
        base: maps[first].start,
        rodata: Vec::new(),
        data: Vec::new(),
    };
    let mut last_end = maps[first].start;
    for (i, m) in maps.iter().enumerate().skip(first) {
        let same = m.clean_path() == Some(path.as_str()) && (i == first || m.offset != 0);
        let perms = m.perms.as_bytes();
        let (readable, writable) = (perms.first() == Some(&b'r'), perms.get(1) == Some(&b'w'));
        if same {
            if readable && writable {
                libc.data.push(m.start..m.end);
            } else if readable && !m.is_executable() {
                libc.rodata.push(m.start..m.end);
            }
            last_end = m.end;
        } else {
            // The bss past the file's end is anonymous, right after the last writable segment.
            if m.path.is_none() && m.start == last_end && readable && writable {
                libc.data.push(m.start..m.end);
            }
            break;
        }
    }
    Ok(libc)
}

fn check_elf(memory: &RemoteMemory, libc: &Libc) -> Result<(), GlibcError> {
    let header = read(memory, "libc ELF header", libc.base, 20)?;
    let machine = u16::from_le_bytes([header[18], header[19]]);
    // ELFCLASS64, little-endian, EM_X86_64.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 || machine != 62 {
        return Err(GlibcError::NotX86_64(libc.path.clone()));
    }
    Ok(())
}

/// The version in glibc's banner, "GNU C Library (...) stable release version 2.36.".
fn read_version(memory: &RemoteMemory, libc: &Libc) -> Result<String, GlibcError> {
    const BANNER: &[u8] = b"GNU C Library";
    const RELEASE: &[u8] = b"release version ";
    for range in &libc.rodata {
        let data = read(memory, "libc rodata", range.start, range.end - range.start)?;
        let Some(at) = find(&data, BANNER) else {
            continue;
        };
        let line = &data[at..];
        let line = &line[..line
            .iter()
            .position(|&b| b == b'\n' || b == 0)
            .unwrap_or(line.len())];
        if let Some(release) = find(line, RELEASE) {
            let version: String = line[release + RELEASE.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b'.')
                .map(|&b| b as char)
                .collect();
            let version = version.trim_end_matches('.').to_string();
            if parse_version(&version).is_some() {
                return Ok(version);
            }
        }
    }
    Err(GlibcError::NoVersion(libc.path.clone()))
}

fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A whole heap, read by every CPU at once (the target waits stopped meanwhile).
fn read_heap(
    pid: u32,
    what: &'static str,
    address: u64,
    len: u64,
    deadline: Option<&super::deadline::Deadline>,
) -> Result<Vec<u8>, GlibcError> {
    let len = usize::try_from(len).map_err(|_| inconsistent(address, "length too large"))?;
    super::scan::read_exact(pid, address, len, deadline).map_err(|source| {
        if source.kind() == io::ErrorKind::TimedOut {
            GlibcError::OutOfTime
        } else {
            GlibcError::Read {
                what,
                address,
                source,
            }
        }
    })
}

fn read(
    memory: &RemoteMemory,
    what: &'static str,
    address: u64,
    len: u64,
) -> Result<Vec<u8>, GlibcError> {
    let len = usize::try_from(len).map_err(|_| inconsistent(address, "length too large"))?;
    memory
        .read_vec(address, len)
        .map_err(|source| GlibcError::Read {
            what,
            address,
            source,
        })
}

fn le64(buf: &[u8], offset: u64) -> Option<u64> {
    let offset = usize::try_from(offset).ok()?;
    let bytes = buf.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn align_up(addr: u64) -> u64 {
    addr.next_multiple_of(ALIGN)
}

fn inconsistent(address: u64, reason: impl Into<String>) -> GlibcError {
    GlibcError::Inconsistent {
        address,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::target::maps::read_maps;

    /// One block of the child's plan.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    struct Rec {
        ptr: u64,
        size: u64,
        freed: u64,
    }

    const MAX_RECS: usize = 160;

    /// What one thread of the child did, written raw to a pipe.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Plan {
        len: u64,
        recs: [Rec; MAX_RECS],
    }

    impl Plan {
        const EMPTY: Plan = Plan {
            len: 0,
            recs: [Rec {
                ptr: 0,
                size: 0,
                freed: 0,
            }; MAX_RECS],
        };

        /// `malloc(size)`, filled so stale bytes do not look like anything; returns its index.
        fn alloc(&mut self, size: usize) -> usize {
            // SAFETY: malloc has no preconditions.
            let ptr = unsafe { libc::malloc(size) };
            if ptr.is_null() || self.len as usize == MAX_RECS {
                // SAFETY: _exit has no preconditions (the child process gives up).
                unsafe { libc::_exit(3) };
            }
            // SAFETY: `ptr` is a fresh block of `size` bytes.
            unsafe { libc::memset(ptr, 0x5a, size) };
            let index = self.len as usize;
            self.recs[index] = Rec {
                ptr: ptr as u64,
                size: size as u64,
                freed: 0,
            };
            self.len += 1;
            index
        }

        /// # Safety
        /// `index` is a block this plan allocated and has not freed yet.
        unsafe fn free(&mut self, index: usize) {
            // SAFETY: a live block of malloc's, by the caller's promise.
            unsafe { libc::free(self.recs[index].ptr as *mut libc::c_void) };
            self.recs[index].freed = 1;
        }

        /// Blocks that end in the tcache, in fastbins, in the unsorted, small and large bins,
        /// and live blocks between them so the freed ones do not merge.
        fn run(&mut self) {
            // SAFETY: every block freed below is one this run allocated, freed once.
            unsafe {
                let tcache: Vec<usize> = (0..7).map(|_| self.alloc(48)).collect();
                let fast32: Vec<usize> = (0..20).map(|_| self.alloc(24)).collect();
                let fast112: Vec<usize> = (0..20).map(|_| self.alloc(100)).collect();
                let mut small = Vec::new();
                for _ in 0..10 {
                    small.push(self.alloc(500));
                    self.alloc(40);
                }
                let large1 = self.alloc(2000);
                self.alloc(40);
                let large2 = self.alloc(40000);
                self.alloc(40);
                let unsorted = self.alloc(3000);
                self.alloc(40);
                // 500 B: 7 to the tcache, 3 to the unsorted bin.
                for &i in &small {
                    self.free(i);
                }
                self.free(large1);
                self.free(large2);
                // Sorts the unsorted bin into the small and large bins, served from top.
                self.alloc(60000);
                self.free(unsorted);
                for &i in tcache.iter().chain(&fast32).chain(&fast112) {
                    self.free(i);
                }
                // Something live after all the frees.
                self.alloc(300);
            }
        }
    }

    /// The child process running the plan; killed and reaped when dropped.
    struct Child {
        process: std::process::Child,
        pid: libc::pid_t,
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }

    struct ThreadArgs {
        plan: *mut Plan,
        ready: libc::c_int,
    }

    extern "C" fn second_thread(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the ThreadArgs of glibc_plan_child, which outlives this thread (its
        // creator parks after the plans are written), and only this thread touches its plan.
        unsafe {
            let args = &*(arg as *const ThreadArgs);
            (*args.plan).run();
            libc::write(args.ready, b"r".as_ptr().cast(), 1);
            // Parked: the process is walked, then killed.
            loop {
                libc::pause();
            }
        }
    }

    fn pipe() -> [libc::c_int; 2] {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array it is given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        fds
    }

    /// Where the child process writes its plans, when this test binary runs as one.
    const PLAN_FILE: &str = "LEAKTRACER_GLIBC_PLAN_FILE";

    /// Not a test of its own: the body of the child process `spawn_child` starts (this test
    /// binary again, running only this). It runs the plan on its thread and on a second
    /// thread, writes both plans to the file named by PLAN_FILE, and parks.
    #[test]
    #[ignore = "run by walks_a_child_with_two_threads as its child process"]
    fn glibc_plan_child() {
        let Some(path) = std::env::var_os(PLAN_FILE) else {
            return;
        };
        // SAFETY: a process of its own (the test binary re-run for this only): the pointers
        // passed (the pipe, `args`, `plans`) outlive the second thread, which parks, and the
        // plans are read as bytes once both runs are over (`ready` orders the second's).
        unsafe {
            let ready = pipe();
            let mut plans = [Plan::EMPTY, Plan::EMPTY];
            // The thread first: pthread_create allocates too (the DTV) and could reuse a
            // chunk the plan freed.
            let args = ThreadArgs {
                plan: &raw mut plans[1],
                ready: ready[1],
            };
            let mut thread: libc::pthread_t = 0;
            if libc::pthread_create(
                &mut thread,
                std::ptr::null(),
                second_thread,
                (&raw const args).cast_mut().cast(),
            ) != 0
            {
                libc::_exit(4);
            }
            let mut byte = 0u8;
            libc::read(ready[0], (&raw mut byte).cast(), 1);
            plans[0].run();
            let bytes = std::slice::from_raw_parts(
                (&raw const plans).cast::<u8>(),
                std::mem::size_of_val(&plans),
            );
            // Written beside, then renamed: the parent never reads half a file.
            let mut temp = std::ffi::OsString::from(&path);
            temp.push(".part");
            if std::fs::write(&temp, bytes).is_err() || std::fs::rename(&temp, &path).is_err() {
                libc::_exit(5);
            }
            loop {
                libc::pause();
            }
        }
    }

    /// Starts a fresh process (this test binary, running [`glibc_plan_child`]: a fork of the
    /// multi-threaded test harness would inherit its other threads' arenas and tcaches, half
    /// in use) that runs the plan on its thread and on a second thread, and returns it with
    /// both plans once it has.
    fn spawn_child() -> (Child, Plan, Plan) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plans");
        let process = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "reach::glibc::tests::glibc_plan_child",
                "--ignored",
                "--quiet",
            ])
            .env(PLAN_FILE, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the test binary runs again");
        let child = Child {
            pid: process.id() as libc::pid_t,
            process,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let bytes = loop {
            if let Ok(bytes) = std::fs::read(&path) {
                break bytes;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not report its plan"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(bytes.len(), std::mem::size_of::<[Plan; 2]>());
        // SAFETY: exactly the bytes of two Plans (asserted above), which are plain integers.
        let plans: [Plan; 2] = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        (child, plans[0], plans[1])
    }

    /// The chunk of a block: its header and `request2size(size)` bytes.
    fn chunk_of(rec: &Rec) -> Range<u64> {
        let size = (rec.size + 8 + 15).max(32) & !15;
        rec.ptr - 16..rec.ptr - 16 + size
    }

    fn in_free(free: &[Range<u64>], addr: u64) -> bool {
        let index = free.partition_point(|r| r.start <= addr);
        index > 0 && free[index - 1].contains(&addr)
    }

    fn overlaps_free(free: &[Range<u64>], range: Range<u64>) -> bool {
        let index = free.partition_point(|r| r.end <= range.start);
        free.get(index).is_some_and(|r| r.start < range.end)
    }

    #[test]
    fn walks_a_child_with_two_threads() {
        let (child, main_plan, thread_plan) = spawn_child();
        let pid = child.pid as u32;
        let memory = RemoteMemory::open(pid).unwrap();
        let maps = read_maps(pid).unwrap();
        let heap = walk(pid, &memory, &maps).unwrap_or_else(|e| panic!("walk failed: {e}"));

        assert_eq!(heap.version, "2.36");
        let brk = maps
            .iter()
            .find(|m| m.path.as_deref() == Some("[heap]"))
            .unwrap();
        assert!(
            heap.heaps.contains(&(brk.start..brk.end)),
            "{:x?}",
            heap.heaps
        );
        assert!(heap.arenas >= 2, "only {} arena", heap.arenas);
        assert!(heap.heaps.len() >= 2);
        assert!(heap.tcache_key.is_some());
        for pair in heap.free.windows(2) {
            assert!(pair[0].end <= pair[1].start, "free ranges overlap");
        }
        for range in &heap.free {
            assert!(
                heap.heaps
                    .iter()
                    .any(|h| h.start <= range.start && range.end <= h.end),
                "free range {range:x?} outside the heaps"
            );
        }

        // Whichever arenas the two threads got (the forked thread keeps its own, the new one
        // takes a free inherited arena or makes one), one of them is not the main arena.
        let main_heap = brk.start..brk.end;
        assert!(
            [&main_plan, &thread_plan]
                .iter()
                .any(|plan| !main_heap.contains(&plan.recs[0].ptr)),
            "no plan ran in a non-main arena"
        );
        let mut freed = 0;
        let mut live = 0;
        let mut reused = 0;
        for (name, plan) in [("main", &main_plan), ("thread", &thread_plan)] {
            assert!(plan.len > 0);
            let recs = &plan.recs[..plan.len as usize];
            let heap_of_plan = heap
                .heaps
                .iter()
                .position(|h| h.contains(&recs[0].ptr))
                .unwrap_or_else(|| panic!("{name} plan outside the heaps"));
            eprintln!(
                "{name} thread's blocks are in heap {heap_of_plan} of {:x?}",
                heap.heaps
            );
            for rec in recs {
                assert!(
                    heap.heaps.iter().any(|h| h.contains(&rec.ptr)),
                    "{rec:x?} outside the heaps"
                );
                if rec.freed != 0 {
                    freed += 1;
                    // A later block may have reused the chunk (merged with free space
                    // the child inherited): then it is live memory now.
                    if recs
                        .iter()
                        .any(|l| l.freed == 0 && chunk_of(l).contains(&rec.ptr))
                    {
                        reused += 1;
                        continue;
                    }
                    assert!(in_free(&heap.free, rec.ptr), "freed {rec:x?} not free");
                } else {
                    live += 1;
                    assert!(
                        !overlaps_free(&heap.free, rec.ptr..rec.ptr + rec.size),
                        "live {rec:x?} overlaps free memory"
                    );
                }
            }
        }
        // The tcache and fastbin frees never merge; the others may.
        assert!(
            heap.chunks_free >= 2 * 47,
            "{} free chunks",
            heap.chunks_free
        );
        assert!(
            heap.chunks_in_use >= live,
            "{} chunks in use",
            heap.chunks_in_use
        );
        assert!(
            freed == 2 * 60 && live > 0 && reused <= 8,
            "{freed} {live} {reused}"
        );
        drop(child);
    }

    #[test]
    fn no_glibc_is_an_error() {
        let memory = RemoteMemory::open(std::process::id()).unwrap();
        assert!(matches!(
            walk(std::process::id(), &memory, &[]),
            Err(GlibcError::NoGlibc(_))
        ));
        // Our own maps, with [heap] pointing at a buffer of garbage: no main_arena fits it.
        let garbage: Vec<u8> = (0..1u32 << 16)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let start = garbage.as_ptr() as u64;
        let mut maps = read_maps(std::process::id()).unwrap();
        maps.retain(|m| m.path.as_deref() != Some("[heap]"));
        maps.push(Mapping {
            start,
            end: start + garbage.len() as u64,
            perms: "rw-p".into(),
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            path: Some("[heap]".into()),
        });
        assert!(walk(std::process::id(), &memory, &maps).is_err());
        // A libc that is not an ELF object.
        let fake_libc = vec![Mapping {
            start,
            end: start + garbage.len() as u64,
            perms: "r--p".into(),
            offset: 0,
            dev: "00:00".into(),
            inode: 1,
            path: Some("/lib/libc.so.6".into()),
        }];
        assert!(matches!(
            walk(std::process::id(), &memory, &fake_libc),
            Err(GlibcError::NotX86_64(_))
        ));
    }

    #[test]
    fn reveals_safe_linked_pointers() {
        let pos = 0x5555_5555_9010;
        let ptr = 0x5555_5555_a2c0;
        assert_eq!(reveal(pos, (pos >> 12) ^ ptr), ptr);
        assert_eq!(reveal(pos, pos >> 12), 0);
    }

    #[test]
    fn glibc_is_told_by_its_file_name() {
        assert!(is_glibc_path("/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_glibc_path("/lib64/libc-2.17.so"));
        assert!(!is_glibc_path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"));
        assert!(!is_glibc_path("/srv/app/static-binary"));
    }

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("2.36"), Some((2, 36)));
        assert_eq!(parse_version("2.39.1"), Some((2, 39)));
        assert_eq!(parse_version("x"), None);
    }

    /// A heap built by hand: [first: in use 0x20][free 0x40][in use 0x30][top].
    fn tiny_heap() -> Heap {
        let start = 0x1000;
        let mut buf = vec![0u8; 0x200];
        let mut put = |addr: u64, value: u64| {
            let at = (addr - start) as usize;
            buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
        };
        put(0x1008, 0x20 | PREV_INUSE);
        put(0x1028, 0x40 | PREV_INUSE);
        put(0x1060, 0x40); // footer
        put(0x1068, 0x30);
        put(0x1098, (0x1200 - 0x1090) | PREV_INUSE);
        Heap {
            start,
            first: 0x1000,
            top: Some(0x1090),
            arena: 0,
            main: true,
            buf,
        }
    }

    #[test]
    fn walks_a_handmade_heap() {
        let walked = walk_chunks(&tiny_heap()).unwrap();
        assert_eq!(
            walked.in_use,
            [
                Chunk {
                    addr: 0x1000,
                    size: 0x20
                },
                Chunk {
                    addr: 0x1060,
                    size: 0x30
                }
            ]
        );
        assert_eq!(
            walked.free,
            [Chunk {
                addr: 0x1020,
                size: 0x40
            }]
        );
        assert_eq!(walked.top.unwrap().user(), 0x10a0..0x1200);

        let mut broken = tiny_heap();
        broken.buf[0x60] = 0x50; // the footer no longer matches
        assert!(walk_chunks(&broken).is_err());
        let mut broken = tiny_heap();
        broken.top = Some(0x1080); // top is not a chunk boundary
        assert!(walk_chunks(&broken).is_err());
    }

    proptest::proptest! {
        /// Garbage never panics or hangs the walk.
        #[test]
        fn garbage_heaps_are_errors_or_walks(
            words in proptest::collection::vec(proptest::prelude::any::<u64>(), 4..256),
            top in 0u64..256,
            main in proptest::prelude::any::<bool>(),
        ) {
            let buf: Vec<u8> = words
                .iter()
                .map(|w| if w % 3 == 0 { w % 0x200 } else { *w })
                .flat_map(u64::to_le_bytes)
                .collect();
            let heap = Heap {
                start: 0x10000,
                first: 0x10000,
                top: (top < 128).then_some(0x10000 + 16 * top),
                arena: 0,
                main,
                buf,
            };
            if let Ok(walked) = walk_chunks(&heap) {
                for chunk in walked.in_use.iter().chain(&walked.free) {
                    proptest::prop_assert!(heap.contains(chunk.addr));
                }
            }
        }
    }
}
