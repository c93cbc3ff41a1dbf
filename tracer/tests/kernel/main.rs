//! In-process kernel tests: the real eBPF programs, attached to allocator-shaped functions of
//! this very test binary (see [`triggers`]), called with known arguments; what the kernel
//! recorded is read back through the library's collector and checked exactly. Nothing on the
//! kernel side is mocked. Needs root; without it every test skips, saying so.

mod tracer;
mod triggers;

use std::sync::{Mutex, MutexGuard};

use tracer::KernelTracer;
use tracer_common::Counter;
use triggers::call;

const PAGE: u64 = 4096;

/// One test at a time: probes attached for this process see every thread's calls.
fn exclusive() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Asserts the kernel holds exactly `expected` (address, bytes) records for this process, and
/// that the snapshot the reports are made from sums to the same bytes.
fn assert_outstanding(tracer: &mut KernelTracer, expected: &[(u64, u64)], after: &str) {
    let mut expected = expected.to_vec();
    expected.sort_unstable();
    let show = |records: &[(u64, u64)]| {
        records
            .iter()
            .map(|(addr, size)| format!("{addr:#x}: {size} B"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = tracer.outstanding();
    assert_eq!(
        found,
        expected,
        "after {after}: the kernel holds [{}], expected [{}]",
        show(&found),
        show(&expected)
    );
    let bytes: u64 = expected.iter().map(|(_, size)| size).sum();
    assert_eq!(
        tracer.snapshot_bytes(),
        bytes,
        "after {after}: snapshot bytes"
    );
}

#[test]
fn a_malloc_and_its_free_leave_nothing() {
    let _one = exclusive();
    let Some(mut tracer) = KernelTracer::start() else {
        return;
    };
    let block = call::malloc(256);
    assert_outstanding(&mut tracer, &[(block, 256)], "malloc(256)");
    call::free(block);
    assert_outstanding(&mut tracer, &[], "free");
    assert_eq!(tracer.counter(Counter::Allocations), 1);
    assert_eq!(tracer.counter(Counter::Frees), 1);
    assert_eq!(tracer.counter(Counter::UnknownFrees), 0);
}

#[test]
fn realloc_that_moves_releases_the_old_block_and_records_the_new_size() {
    let _one = exclusive();
    let Some(mut tracer) = KernelTracer::start() else {
        return;
    };
    let old = call::malloc(100);
    let new = call::realloc(old, 5000);
    assert_ne!(
        new, old,
        "a block of 100 bytes cannot grow to 5000 in place"
    );
    assert_outstanding(&mut tracer, &[(new, 5000)], "realloc to 5000 bytes");
}

#[test]
fn realloc_at_the_same_address_records_the_new_size() {
    let _one = exclusive();
    let Some(mut tracer) = KernelTracer::start() else {
        return;
    };
    let block = call::malloc(100);
    assert_eq!(call::realloc(block, 64), block, "shrinking stays in place");
    assert_outstanding(&mut tracer, &[(block, 64)], "realloc to 64 bytes in place");
}

#[test]
fn failed_realloc_keeps_the_old_block() {
    let _one = exclusive();
    let Some(mut tracer) = KernelTracer::start() else {
        return;
    };
    let block = call::malloc(100);
    assert_eq!(
        call::realloc(block, 2 * triggers::ARENA_BYTES),
        0,
        "no room"
    );
    assert_outstanding(&mut tracer, &[(block, 100)], "a failed realloc");
}

#[test]
fn realloc_of_null_allocates_and_realloc_to_zero_frees() {
    let _one = exclusive();
    let Some(mut tracer) = KernelTracer::start() else {
        return;
    };
    let block = call::realloc(0, 300);
    assert_ne!(block, 0);
    assert_outstanding(&mut tracer, &[(block, 300)], "realloc(NULL, 300)");
    assert_eq!(call::realloc(block, 0), 0);
    assert_outstanding(&mut tracer, &[], "realloc(p, 0)");
}

#[test]
fn posix_memalign_records_the_block_it_wrote_through_its_out_parameter() {
    let _one = exclusive();
    let Some(mut tracer) = KernelTracer::start() else {
        return;
    };
    let (result, block) = call::posix_memalign(4096, 3000);
    assert_eq!(result, 0);
    assert_eq!(block % 4096, 0, "aligned: {block:#x}");
    assert_outstanding(&mut tracer, &[(block, 3000)], "posix_memalign(4096, 3000)");
}

#[test]
fn failing_posix_memalign_records_nothing() {
    let _one = exclusive();
    let Some(mut tracer) = KernelTracer::start() else {
        return;
    };
    assert_eq!(call::posix_memalign(24, 100), (libc::EINVAL, 0));
    assert_eq!(
        call::posix_memalign(64, 2 * triggers::ARENA_BYTES),
        (libc::ENOMEM, 0)
    );
    assert_outstanding(
        &mut tracer,
        &[],
        "posix_memalign failing with EINVAL and ENOMEM",
    );
    assert_eq!(tracer.counter(Counter::Allocations), 0);
}

/// An 8-page mapping loses its first page (trimmed by the kernel), its last (settled by
/// userspace), then a page in the middle (split in two by userspace).
#[test]
fn munmap_of_the_head_the_tail_and_the_middle_leaves_exactly_the_rest() {
    let _one = exclusive();
    let Some(mut tracer) = KernelTracer::start() else {
        return;
    };
    let base = call::mmap(8 * PAGE as usize);
    let page = |n: u64| base + n * PAGE;
    assert_outstanding(&mut tracer, &[(base, 8 * PAGE)], "mmap of 8 pages");
    call::munmap(page(0), PAGE as usize);
    assert_outstanding(&mut tracer, &[(page(1), 7 * PAGE)], "unmapping the head");
    call::munmap(page(7), PAGE as usize);
    assert_outstanding(&mut tracer, &[(page(1), 6 * PAGE)], "unmapping the tail");
    call::munmap(page(3), PAGE as usize);
    assert_outstanding(
        &mut tracer,
        &[(page(1), 2 * PAGE), (page(4), 3 * PAGE)],
        "unmapping a page in the middle",
    );
    call::munmap(page(1), 2 * PAGE as usize);
    call::munmap(page(4), 3 * PAGE as usize);
}

/// Both pieces of a mapping split by an unmap in its middle, unmapped in turn, leave nothing
/// (the pieces userspace made count as live mappings for the kernel's unmap probe).
#[test]
fn unmapping_both_pieces_of_a_split_mapping_leaves_nothing() {
    let _one = exclusive();
    let Some(mut tracer) = KernelTracer::start() else {
        return;
    };
    let base = call::mmap(3 * PAGE as usize);
    call::munmap(base + PAGE, PAGE as usize);
    assert_outstanding(
        &mut tracer,
        &[(base, PAGE), (base + 2 * PAGE, PAGE)],
        "unmapping the middle page",
    );
    call::munmap(base, PAGE as usize);
    call::munmap(base + 2 * PAGE, PAGE as usize);
    assert_outstanding(&mut tracer, &[], "unmapping both pieces");
}

/// A thread's stack (glibc's `allocate_stack`: a `MAP_STACK` reservation, opened by mprotect)
/// is recorded marked as a thread stack; from its start to its exit the thread is followed
/// with the stack pointer it started with, at the top of that mapping; once it ended, glibc
/// keeps the stack (cached), which no live thread runs on any more.
#[test]
fn a_thread_stack_is_marked_and_its_thread_followed_until_it_ends() {
    use leaktracer::collect::MemoryKind;
    use std::sync::mpsc;
    use tracer_common::threads::THREAD_STACK;

    let _one = exclusive();
    let Some(mut tracer) = KernelTracer::start() else {
        return;
    };
    // Larger than any stack glibc may have cached for this process already (libtest's threads
    // take 2 MiB): a cached one would be reused, with no mapping made now.
    const STACK: u64 = 9 << 20;
    let (started, on_its_stack) = mpsc::channel();
    let (finish, finished) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .stack_size(STACK as usize)
        .spawn(move || {
            let local = 0u8;
            // SAFETY: gettid has no arguments and cannot fail.
            let tid = unsafe { libc::gettid() } as u32;
            started
                .send((tid, std::hint::black_box(&local) as *const u8 as u64))
                .unwrap();
            finished.recv().unwrap();
        })
        .unwrap();
    let (tid, local) = on_its_stack.recv().unwrap();
    let (key, record) = tracer
        .mapping_at(local)
        .expect("the thread's stack is recorded");
    assert_eq!(record.flags, THREAD_STACK, "marked as a thread stack");
    assert_eq!(
        record.size, STACK,
        "the mprotect opened all but the guard page"
    );
    let end = key.addr + record.size;
    let start = tracer.live_thread(tid).expect("the thread is followed");
    assert_eq!(start.tgid, std::process::id());
    assert!(
        local < start.sp && start.sp < end && end - start.sp < 64 * 1024,
        "it started at the top of its stack: {:#x} in {:#x}..{end:#x}",
        start.sp,
        key.addr
    );
    let live = tracer.stack_figures(record.stack_id).unwrap();
    assert_eq!((live.kind, live.threads), (MemoryKind::ThreadStack, 1));
    let resident = live.resident_bytes.expect("its pages were read");
    assert!(
        (PAGE..STACK).contains(&resident),
        "a few pages of it are resident: {resident}"
    );

    finish.send(()).unwrap();
    thread.join().unwrap();
    assert_eq!(tracer.live_thread(tid), None, "its exit ended it");
    let cached = tracer.stack_figures(record.stack_id).unwrap();
    assert_eq!(
        (cached.kind, cached.threads, cached.outstanding_bytes),
        (MemoryKind::ThreadStack, 0, STACK),
        "glibc keeps the stack after the join"
    );
}
