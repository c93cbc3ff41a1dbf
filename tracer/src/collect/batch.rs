//! Reading a whole BPF hash map or array in a few system calls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+)
//! instead of two per entry, so a snapshot of a million outstanding allocations stays cheap.
//! aya 0.14 has no batch operations, so this speaks to the kernel directly.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsFd, AsRawFd},
};

use aya::{Pod, maps::MapData};

/// `BPF_MAP_LOOKUP_BATCH` from `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call. The kernel returns whole hash buckets, so a bucket larger than
/// this (never seen in practice) makes the call fail with ENOSPC and the chunk grow.
const FIRST_CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of a hash map or array, read in batches. Entries added or removed meanwhile may or
/// may not be seen, as with any iteration of a live map.
pub fn read_map<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut entries = Vec::new();
    let mut chunk = FIRST_CHUNK;
    // Hash maps page by bucket index, arrays by index: the token is a u32.
    let mut token: u32 = 0;
    let mut next: u32 = 0;
    let mut first = true;
    loop {
        let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(chunk);
        let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(chunk);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers of `chunk` keys and values that outlive the call; the
        // kernel writes at most `count` of each and says how many in `count`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (result < 0).then(io::Error::last_os_error);
        if matches!(&error, Some(e) if e.raw_os_error() == Some(libc::ENOSPC)) && attr.count == 0 {
            chunk *= 4;
            continue;
        }
        let filled = (attr.count as usize).min(chunk);
        // SAFETY: the kernel initialized the first `filled` entries; K and V are plain data.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        entries.extend(
            keys.iter()
                .zip(&values)
                .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }),
        );
        match error {
            None => {}
            // The end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Some(e) => return Err(e),
        }
        token = next;
        first = false;
    }
}
