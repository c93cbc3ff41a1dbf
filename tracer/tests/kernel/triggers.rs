//! Allocator entry points defined in this test binary, for the real eBPF programs to probe.
//!
//! They behave like the C library's (same signatures, same results, same failure modes), but
//! every address they return is known to the test: heap blocks come from a static arena, and
//! mappings are real `mmap`s (through libc's; the system call is what is traced). Each has its own body, so
//! no two share an address (aliases would share one probe), and callers go through
//! [`black_box`]ed function pointers so every call really happens.

use std::{
    cell::UnsafeCell,
    ffi::{c_int, c_void},
    hint::black_box,
    ptr::null_mut,
    sync::atomic::{AtomicUsize, Ordering},
};

/// Every trigger is named `trigger_` and the C library function it stands for.
pub const PREFIX: &str = "trigger_";

/// Bytes of the heap arena.
pub const ARENA_BYTES: usize = 1 << 20;

/// Each block is preceded by a header holding its capacity (what realloc may grow into).
const HEADER: usize = 16;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: blocks are carved out once each (bump allocation); no two callers get the same bytes.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));

/// Offset of the first free byte of the arena.
static ARENA_USED: AtomicUsize = AtomicUsize::new(0);

/// Frees seen, so `trigger_free` has a body of its own.
static FREES: AtomicUsize = AtomicUsize::new(0);

/// A block of `size` bytes aligned to `align` (a power of two, at least 16), or `None` when the
/// arena has no room. Blocks are never reused: a test sees fresh addresses only.
fn carve(size: usize, align: usize) -> Option<*mut u8> {
    let base = ARENA.0.get() as usize;
    let mut start = 0;
    ARENA_USED
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            start = (base + used + HEADER).next_multiple_of(align) - base;
            let end = start.checked_add(size)?;
            (end <= ARENA_BYTES).then_some(end)
        })
        .ok()?;
    let block = (base + start) as *mut u8;
    // SAFETY: the header lies inside the arena, in bytes this call alone carved out.
    unsafe { block.sub(size_of::<usize>()).cast::<usize>().write(size) };
    Some(block)
}

/// The capacity written in the header of a block from [`carve`].
fn capacity(block: *mut u8) -> usize {
    // SAFETY: `block` came from `carve`, which wrote the header.
    unsafe { block.sub(size_of::<usize>()).cast::<usize>().read() }
}

/// `malloc(size)`: a block from the arena, NULL when it is full.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn trigger_malloc(size: usize) -> *mut c_void {
    carve(size, 16).map_or(null_mut(), |block| block.cast())
}

/// `free(ptr)`: arena blocks are not reused, so it only counts.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn trigger_free(ptr: *mut c_void) {
    black_box(ptr);
    FREES.fetch_add(1, Ordering::Relaxed);
}

/// `realloc(ptr, size)`: NULL ptr allocates; size 0 frees and returns NULL; a block with room
/// stays where it is; otherwise it moves, and when the arena has no room for the move the call
/// fails (NULL) and the old block stays valid.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn trigger_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    let old = ptr.cast::<u8>();
    if old.is_null() {
        return trigger_malloc(size);
    }
    if size == 0 {
        return null_mut();
    }
    let old_capacity = capacity(old);
    if size <= old_capacity {
        return ptr;
    }
    match carve(size, 16) {
        Some(new) => {
            // SAFETY: both blocks are the arena's, distinct, and at least old_capacity long.
            unsafe { std::ptr::copy_nonoverlapping(old, new, old_capacity) };
            new.cast()
        }
        None => null_mut(),
    }
}

/// `posix_memalign(memptr, alignment, size)`: 0 and the block through `memptr`; EINVAL for an
/// alignment that is not a power of two multiple of `sizeof(void *)`, ENOMEM when the arena is
/// full, `*memptr` untouched on failure.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn trigger_posix_memalign(
    memptr: *mut *mut c_void,
    alignment: usize,
    size: usize,
) -> c_int {
    if !alignment.is_power_of_two() || alignment < size_of::<*mut c_void>() {
        return libc::EINVAL;
    }
    match carve(size, alignment.max(16)) {
        Some(block) => {
            // SAFETY: the caller passes a valid out-parameter, as posix_memalign requires.
            unsafe { memptr.write(block.cast()) };
            0
        }
        None => libc::ENOMEM,
    }
}

/// Every range `trigger_mmap` mapped: the mapping system calls are traced for the whole
/// process, so the tests look only at the mappings they made (the harness and the collector
/// map memory too, through the C library's malloc, which is not probed here).
pub static MAPPED: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// True when `addr` is in the arena or in a range `trigger_mmap` mapped.
pub fn made_by_triggers(addr: u64) -> bool {
    let base = ARENA.0.get() as u64;
    (base..base + ARENA_BYTES as u64).contains(&addr)
        || MAPPED
            .lock()
            .unwrap()
            .iter()
            .any(|&(start, end)| (start..end).contains(&addr))
}

/// `mmap(...)`: a real mapping, made by libc's mmap (the system call is what is traced).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn trigger_mmap(
    addr: *mut c_void,
    length: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    // SAFETY: mmap's own contract; the tests map anonymous memory only.
    let mapped = unsafe { libc::mmap(addr, length, prot, flags, fd, offset) };
    if mapped != libc::MAP_FAILED {
        let start = mapped as u64;
        MAPPED.lock().unwrap().push((start, start + length as u64));
    }
    mapped
}

/// `munmap(addr, length)`: really unmaps, through libc's (unprobed) munmap.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn trigger_munmap(addr: *mut c_void, length: usize) -> c_int {
    // SAFETY: the tests unmap only pages of mappings they made.
    unsafe { libc::munmap(addr, length) }
}

/// Callers of the triggers through opaque function pointers: the compiler cannot see which
/// function runs, so it can neither drop nor fold a call the probes must see.
pub mod call {
    use super::*;

    pub fn malloc(size: usize) -> u64 {
        black_box(trigger_malloc as extern "C" fn(usize) -> *mut c_void)(size) as u64
    }

    pub fn free(ptr: u64) {
        black_box(trigger_free as extern "C" fn(*mut c_void))(ptr as *mut c_void)
    }

    pub fn realloc(ptr: u64, size: usize) -> u64 {
        black_box(trigger_realloc as extern "C" fn(*mut c_void, usize) -> *mut c_void)(
            ptr as *mut c_void,
            size,
        ) as u64
    }

    /// The result code and the block (0 when none was written).
    pub fn posix_memalign(alignment: usize, size: usize) -> (c_int, u64) {
        let mut block: *mut c_void = null_mut();
        let call = black_box(
            trigger_posix_memalign as extern "C" fn(*mut *mut c_void, usize, usize) -> c_int,
        );
        let result = call(&mut block, alignment, size);
        (result, black_box(block) as u64)
    }

    /// An anonymous read-write mapping of `length` bytes.
    pub fn mmap(length: usize) -> u64 {
        let call = black_box(
            trigger_mmap
                as extern "C" fn(
                    *mut c_void,
                    usize,
                    c_int,
                    c_int,
                    c_int,
                    libc::off_t,
                ) -> *mut c_void,
        );
        let addr = call(
            null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap of {length} bytes");
        addr as u64
    }

    pub fn munmap(addr: u64, length: usize) {
        let result = black_box(trigger_munmap as extern "C" fn(*mut c_void, usize) -> c_int)(
            addr as *mut c_void,
            length,
        );
        assert_eq!(result, 0, "munmap({addr:#x}, {length})");
    }
}
