//! Reading a stopped target's memory and sorting every word that could point at a tracked
//! block: into the block it sits in (an edge of the graph), into the roots, or away (free heap
//! memory, stack below the stack pointer, allocator slack past a block's requested size).
//!
//! Memory is read with `process_vm_readv`, up to 1024 remote pieces of up to 1 MiB per call
//! (4 MiB a call, one step of the pause cap's [`Deadline`]), and filtered as it comes: only words inside `[lowest block, highest block end)` are kept,
//! so the copy held is the candidate pointers, not the memory.

use std::{io, ops::Range, time::Instant};

use super::{
    deadline::Deadline,
    mark::{Node, find},
};

/// One tracked block, with the slack the allocator gives it: words in
/// `[start + size, owned_end)` are neither the block's contents nor roots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub start: u64,
    pub size: u64,
    pub owned_end: u64,
}

/// What was found, ready for the mark.
#[derive(Debug, Default)]
pub struct Found {
    /// (block index, word) for candidate words inside blocks.
    pub contents: Vec<(u32, u64)>,
    /// Candidate words outside every block.
    pub roots: Vec<u64>,
    /// Bytes read.
    pub scanned_bytes: u64,
    /// Bytes that could not be read (pages the kernel refused).
    pub unreadable_bytes: u64,
    /// Time spent in the kernel copying, and sorting words.
    pub read_time: std::time::Duration,
    pub sort_time: std::time::Duration,
}

/// The scan ran out of its time budget.
#[derive(Debug)]
pub struct Overrun {
    pub scanned_bytes: u64,
    pub remaining_bytes: u64,
}

/// Largest piece asked of the kernel at once, and most pieces per call (IOV_MAX).
const PIECE: u64 = 1 << 20;
const PIECES_PER_CALL: usize = 1024;
const BUFFER: usize = 4 << 20;
const PAGE: u64 = 4096;

/// Sorts words of `pid`'s memory in `ranges` (sorted, 8-byte aligned) into `found`, stopping at
/// `deadline`. `blocks` sorted by start, `excluded` sorted and merged. The target is stopped
/// meanwhile, so its CPUs are free: the ranges are split over one reader per CPU (up to 4).
pub fn scan_ranges(
    pid: u32,
    ranges: &[Range<u64>],
    local: &[(u64, Vec<u8>)],
    blocks: &[Block],
    excluded: &[Range<u64>],
    deadline: &Deadline,
    found: &mut Found,
) -> Result<(), Overrun> {
    let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    let readers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    if readers == 1 || total < 8 * PIECE {
        return scan_share(pid, ranges, local, blocks, excluded, deadline, found);
    }
    let shares = split(ranges, total.div_ceil(readers as u64));
    let results: Vec<(Found, Result<(), Overrun>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .iter()
            .map(|share| {
                scope.spawn(move || {
                    let mut mine = Found::default();
                    let result =
                        scan_share(pid, share, local, blocks, excluded, deadline, &mut mine);
                    (mine, result)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a scan reader panicked"))
            .collect()
    });
    let mut overrun: Option<Overrun> = None;
    for (mine, result) in results {
        found.contents.extend(mine.contents);
        found.roots.extend(mine.roots);
        found.scanned_bytes += mine.scanned_bytes;
        found.unreadable_bytes += mine.unreadable_bytes;
        found.read_time = found.read_time.max(mine.read_time);
        found.sort_time = found.sort_time.max(mine.sort_time);
        if let Err(o) = result {
            let all = overrun.get_or_insert(Overrun {
                scanned_bytes: 0,
                remaining_bytes: 0,
            });
            all.remaining_bytes += o.remaining_bytes;
        }
    }
    match overrun {
        Some(mut o) => {
            o.scanned_bytes = found.scanned_bytes;
            Err(o)
        }
        None => Ok(()),
    }
}

/// `ranges` cut into consecutive shares of about `each` bytes (cuts on page boundaries).
fn split(ranges: &[Range<u64>], each: u64) -> Vec<Vec<Range<u64>>> {
    let mut shares = vec![Vec::new()];
    let mut room = each;
    for range in ranges {
        let mut start = range.start;
        while start < range.end {
            let take = (range.end - start).min(room.max(PAGE));
            let cut = if start + take < range.end {
                ((start + take) & !(PAGE - 1)).max(start + 8)
            } else {
                range.end
            };
            shares.last_mut().unwrap().push(start..cut);
            room = room.saturating_sub(cut - start);
            start = cut;
            if room == 0 {
                shares.push(Vec::new());
                room = each;
            }
        }
    }
    shares.retain(|s| !s.is_empty());
    shares
}

/// One reader's part of [`scan_ranges`].
fn scan_share(
    pid: u32,
    ranges: &[Range<u64>],
    local: &[(u64, Vec<u8>)],
    blocks: &[Block],
    excluded: &[Range<u64>],
    deadline: &Deadline,
    found: &mut Found,
) -> Result<(), Overrun> {
    let Some((lo, hi)) = span(blocks) else {
        return Ok(());
    };
    let mut sorter = Sorter::new(blocks, excluded);
    let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    let mut buffer = vec![0u8; BUFFER];
    let mut pieces: Vec<Range<u64>> = Vec::with_capacity(PIECES_PER_CALL);
    let mut queue = ranges.iter().cloned().rev().collect::<Vec<_>>();
    let mut done = 0u64;
    let mut alone = false;
    let room_for_more = deadline.steps();
    while !queue.is_empty() {
        if !room_for_more() {
            return Err(Overrun {
                scanned_bytes: found.scanned_bytes,
                remaining_bytes: total.saturating_sub(done),
            });
        }
        // Memory already copied (the heaps the glibc walk read) is sorted from the copy.
        if let Some(range) = queue.last_mut()
            && let Some((at, bytes)) = copy_at(local, range.start)
        {
            let len = (range.end - range.start)
                .min(PIECE)
                .min(bytes.len() as u64 - (range.start - at));
            let from = (range.start - at) as usize;
            let sorting = Instant::now();
            sorter.sort(
                range.start,
                &bytes[from..from + len as usize],
                lo,
                hi,
                found,
            );
            found.sort_time += sorting.elapsed();
            found.scanned_bytes += len;
            done += len;
            range.start += len;
            if range.start >= range.end {
                queue.pop();
            }
            continue;
        }
        // The next batch: whole pieces of the queued ranges, up to the buffer's size.
        pieces.clear();
        let mut room = BUFFER as u64;
        while pieces.len() < PIECES_PER_CALL && room > 0 {
            let Some(range) = queue.last_mut() else { break };
            if std::mem::take(&mut alone) {
                // A page to try on its own.
                pieces.push(range.clone());
                queue.pop();
                break;
            }
            if copy_at(local, range.start).is_some() {
                break;
            }
            let next_copy = local
                .iter()
                .map(|(at, _)| *at)
                .find(|at| *at > range.start)
                .unwrap_or(u64::MAX);
            let len = (range.end.min(next_copy) - range.start)
                .min(PIECE)
                .min(room);
            pieces.push(range.start..range.start + len);
            range.start += len;
            room -= len;
            if range.start >= range.end {
                queue.pop();
            }
        }
        let reading = Instant::now();
        let read = read_pieces(pid, &pieces, &mut buffer);
        found.read_time += reading.elapsed();
        let sorting = Instant::now();
        // Pieces are read in order up to the first unreadable page.
        let mut offset = 0usize;
        let mut failed = None;
        for (index, piece) in pieces.iter().enumerate() {
            let len = (piece.end - piece.start) as usize;
            let got = len.min(read.saturating_sub(offset)) / 8 * 8;
            sorter.sort(piece.start, &buffer[offset..offset + got], lo, hi, found);
            found.scanned_bytes += got as u64;
            done += got as u64;
            offset += len;
            if got < len {
                failed = Some((index, piece.start + got as u64));
                break;
            }
        }
        found.sort_time += sorting.elapsed();
        if let Some((index, at)) = failed {
            // Queue what was not read. A page that failed alone is unreadable and skipped;
            // otherwise the failing page is tried alone next, to tell a bad page from a piece
            // the kernel refused whole.
            for rest in pieces[index + 1..].iter().rev() {
                queue.push(rest.clone());
            }
            let piece_end = pieces[index].end;
            let page_end = ((at + PAGE) & !(PAGE - 1)).min(piece_end);
            if pieces[index].start == at && piece_end - at <= PAGE {
                found.unreadable_bytes += piece_end - at;
                done += piece_end - at;
            } else {
                if page_end < piece_end {
                    queue.push(page_end..piece_end);
                }
                queue.push(at..page_end);
                alone = true;
            }
        }
    }
    Ok(())
}

/// The copy holding `address`, if one does: its start and bytes.
fn copy_at(local: &[(u64, Vec<u8>)], address: u64) -> Option<(u64, &[u8])> {
    local
        .iter()
        .find(|(at, bytes)| (*at..*at + bytes.len() as u64).contains(&address))
        .map(|(at, bytes)| (*at, bytes.as_slice()))
}

/// Words read from the registers: roots, when they point anywhere near a block.
pub fn sort_register_words(words: &[u64], blocks: &[Block], found: &mut Found) {
    let Some((lo, hi)) = span(blocks) else { return };
    found
        .roots
        .extend(words.iter().copied().filter(|w| (lo..hi).contains(w)));
}

fn span(blocks: &[Block]) -> Option<(u64, u64)> {
    let lo = blocks.first()?.start;
    let hi = blocks.iter().map(|b| b.start + b.size.max(1)).max()?;
    Some((lo, hi))
}

/// `len` bytes of `pid`'s memory from `address`, read by one thread per CPU (up to 4); an
/// error if any of it cannot be read, or (`TimedOut`) if `deadline` leaves no room first.
pub fn read_exact(
    pid: u32,
    address: u64,
    len: usize,
    deadline: Option<&Deadline>,
) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; len];
    let readers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let share = len
        .div_ceil(readers)
        .next_multiple_of(PAGE as usize)
        .max(PAGE as usize);
    let results: Vec<io::Result<()>> = std::thread::scope(|scope| {
        let workers: Vec<_> = buffer
            .chunks_mut(share)
            .enumerate()
            .map(|(index, part)| {
                let start = address + (index * share) as u64;
                scope.spawn(move || read_into(pid, start, part, deadline))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a reader panicked"))
            .collect()
    });
    if let Err(e) = results.into_iter().collect::<io::Result<Vec<()>>>() {
        free_later(buffer);
        return Err(e);
    }
    Ok(buffer)
}

/// Drops `value` on a thread of its own. Freeing a large copy of a target's memory (returning
/// its pages to the kernel) takes tens of milliseconds a GiB: not while the target waits.
pub(super) fn free_later<T: Send + 'static>(value: T) {
    std::thread::spawn(move || drop(value));
}

/// Fills `part` from `pid`'s memory at `address`, in batches of 1 MiB pieces: with a deadline
/// one at a time (a batch is a step the deadline must have room for), else up to 16.
fn read_into(
    pid: u32,
    address: u64,
    part: &mut [u8],
    deadline: Option<&Deadline>,
) -> io::Result<()> {
    let pieces_per_batch = if deadline.is_some() { 1 } else { 16 };
    let room_for_more = deadline.map(Deadline::steps);
    let mut done = 0usize;
    while done < part.len() {
        if room_for_more.as_ref().is_some_and(|more| !more()) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the pause cap passed",
            ));
        }
        let batch = (part.len() - done).min(pieces_per_batch * PIECE as usize);
        let start = address + done as u64;
        let pieces: Vec<Range<u64>> = (0..batch.div_ceil(PIECE as usize))
            .map(|i| {
                let from = start + i as u64 * PIECE;
                from..(from + PIECE).min(start + batch as u64)
            })
            .collect();
        let read = read_pieces(pid, &pieces, &mut part[done..done + batch]);
        if read < batch {
            return Err(io::Error::other(format!(
                "0x{:x} cannot be read",
                start + read as u64
            )));
        }
        done += batch;
    }
    Ok(())
}

/// `process_vm_readv` of `pieces` into the front of `buffer`: bytes read (0 on error).
pub(super) fn read_pieces(pid: u32, pieces: &[Range<u64>], buffer: &mut [u8]) -> usize {
    let total: u64 = pieces.iter().map(|p| p.end - p.start).sum();
    let local = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: (total as usize).min(buffer.len()),
    };
    let remote: Vec<libc::iovec> = pieces
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.start as *mut libc::c_void,
            iov_len: (p.end - p.start) as usize,
        })
        .collect();
    // SAFETY: the kernel writes at most `local.iov_len` bytes into `buffer`; the remote
    // addresses are only read, in the other process.
    let read = unsafe {
        libc::process_vm_readv(
            pid as libc::pid_t,
            &local,
            1,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0,
        )
    };
    if read < 0 {
        let error = io::Error::last_os_error();
        log::debug!("process_vm_readv of pid {pid}: {error}");
        0
    } else {
        read as usize
    }
}

/// Decides where a word's address belongs, caching the last region found (hits cluster).
struct Sorter<'a> {
    blocks: &'a [Block],
    nodes: Vec<Node>,
    excluded: &'a [Range<u64>],
    region: Range<u64>,
    owner: Owner,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Block(u32),
    Root,
    Nobody,
}

impl<'a> Sorter<'a> {
    fn new(blocks: &'a [Block], excluded: &'a [Range<u64>]) -> Self {
        Self {
            blocks,
            nodes: blocks
                .iter()
                .map(|b| Node {
                    start: b.start,
                    size: b.size,
                })
                .collect(),
            excluded,
            region: 0..0,
            owner: Owner::Nobody,
        }
    }

    fn sort(&mut self, base: u64, bytes: &[u8], lo: u64, hi: u64, found: &mut Found) {
        let span = hi - lo;
        for (index, word) in bytes.chunks_exact(8).enumerate() {
            let value = u64::from_le_bytes(word.try_into().unwrap());
            if value.wrapping_sub(lo) >= span {
                continue;
            }
            let at = base + 8 * index as u64;
            if !self.region.contains(&at) {
                (self.region, self.owner) = self.locate(at);
            }
            match self.owner {
                Owner::Block(block) => found.contents.push((block, value)),
                Owner::Root => found.roots.push(value),
                Owner::Nobody => {}
            }
        }
    }

    /// The region around address `at` that has one owner.
    fn locate(&self, at: u64) -> (Range<u64>, Owner) {
        // In a block (its words up to its size rounded down, as memcheck scans), or its slack.
        let after = self.blocks.partition_point(|b| b.start <= at);
        let next_block = self.blocks.get(after).map_or(u64::MAX, |b| b.start);
        if let Some((index, _)) = find(&self.nodes, at) {
            let block = self.blocks[index];
            let words_end = block.start + block.size / 8 * 8;
            if at < words_end {
                return (block.start..words_end, Owner::Block(index as u32));
            }
        }
        if let Some(block) = after.checked_sub(1).map(|i| self.blocks[i]) {
            let words_end = block.start + block.size / 8 * 8;
            let end = block
                .owned_end
                .max(block.start + block.size)
                .min(next_block);
            if at >= words_end && at < end {
                return (words_end..end, Owner::Nobody);
            }
        }
        let after_ex = self.excluded.partition_point(|r| r.start <= at);
        if let Some(range) = after_ex.checked_sub(1).map(|i| &self.excluded[i])
            && at < range.end
        {
            return (range.start..range.end.min(next_block), Owner::Nobody);
        }
        let next_excluded = self.excluded.get(after_ex).map_or(u64::MAX, |r| r.start);
        (at..next_block.min(next_excluded), Owner::Root)
    }
}

/// Subtracts sorted, merged `holes` from sorted `ranges`.
pub fn subtract(ranges: &[Range<u64>], holes: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut h = 0;
    for range in ranges {
        let mut start = range.start;
        while h < holes.len() && holes[h].end <= start {
            h += 1;
        }
        let mut k = h;
        while start < range.end {
            match holes.get(k) {
                Some(hole) if hole.start < range.end => {
                    if hole.start > start {
                        out.push(start..hole.start);
                    }
                    start = start.max(hole.end);
                    k += 1;
                }
                _ => {
                    out.push(start..range.end);
                    break;
                }
            }
        }
    }
    out
}

/// Sorts and merges overlapping or touching ranges.
pub fn merge(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match out.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => out.push(range),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// One range, as a slice argument.
    fn one(range: Range<u64>) -> [Range<u64>; 1] {
        [range]
    }

    #[test]
    fn shares_cover_the_ranges_exactly() {
        let ranges = vec![0..10 * PAGE, 20 * PAGE..23 * PAGE + 8];
        let shares = split(&ranges, 4 * PAGE);
        assert_eq!(shares.len(), 4);
        let flat: Vec<Range<u64>> = merge(shares.into_iter().flatten().collect());
        assert_eq!(flat, ranges);
    }

    #[test]
    fn subtract_and_merge() {
        assert_eq!(
            merge(vec![5..9, 1..3, 3..4, 8..12, 20..20]),
            vec![1..4, 5..12]
        );
        assert_eq!(
            subtract(&[0..100, 200..300], &[10..20, 90..210, 250..260]),
            vec![0..10, 20..90, 210..250, 260..300]
        );
        assert_eq!(subtract(&one(0..10), &[]), one(0..10).to_vec());
        assert_eq!(subtract(&one(5..10), &one(0..20)), Vec::<Range<u64>>::new());
    }

    #[test]
    fn sorts_own_memory_into_blocks_slack_free_and_roots() {
        // Our own memory stands in for a target's: four words that point into a "block".
        let mut memory = vec![0u64; 64];
        let base = memory.as_ptr() as u64;
        let block = Block {
            start: base + 8 * 8,
            size: 3 * 8 + 4, // three words and a partial one
            owned_end: base + 8 * 16,
        };
        memory[0] = block.start + 8; // root (interior)
        memory[9] = block.start; // in the block
        memory[11] = block.start + 16; // the partial word: not scanned
        memory[12] = block.start; // slack
        memory[20] = block.start; // excluded (free)
        memory[30] = block.start + 1; // root
        let excluded = one(base + 8 * 18..base + 8 * 24);
        let mut found = Found::default();
        scan_ranges(
            std::process::id(),
            &one(base..base + 8 * 64),
            &[],
            &[block],
            &excluded,
            &Deadline::new(Instant::now() + Duration::from_secs(5)),
            &mut found,
        )
        .unwrap();
        assert_eq!(found.contents, vec![(0, block.start)]);
        assert_eq!(found.roots, vec![block.start + 8, block.start + 1]);
        assert_eq!(found.scanned_bytes, 8 * 64);
        drop(memory);
    }

    #[test]
    fn unreadable_pages_are_skipped_and_counted() {
        // SAFETY: an anonymous mapping of three pages, the middle one made unreadable.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        let target = Box::new(7u64);
        let block = Block {
            start: &*target as *const u64 as u64,
            size: 8,
            owned_end: 0,
        };
        // SAFETY: writing inside the mapping made above, then protecting its middle page.
        unsafe {
            *((base + 2 * PAGE) as *mut u64) = block.start;
            libc::mprotect(
                (base + PAGE) as *mut libc::c_void,
                PAGE as usize,
                libc::PROT_NONE,
            );
        }
        let mut found = Found::default();
        scan_ranges(
            std::process::id(),
            &one(base..base + 3 * PAGE),
            &[],
            &[block],
            &[],
            &Deadline::new(Instant::now() + Duration::from_secs(5)),
            &mut found,
        )
        .unwrap();
        assert_eq!(found.roots, vec![block.start]);
        assert_eq!(found.unreadable_bytes, PAGE);
        assert_eq!(found.scanned_bytes, 2 * PAGE);
        // SAFETY: unmapping what was mapped above.
        unsafe { libc::munmap(base as *mut libc::c_void, 3 * PAGE as usize) };
    }
}
