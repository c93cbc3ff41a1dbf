//! Reading a whole BPF hash map or array in a few system calls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+)
//! instead of two per entry, so a snapshot of a million outstanding allocations stays cheap.
//! aya 0.14 has no batch operations, so this speaks to the kernel directly.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
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
    Ok(read_map_fd(map.fd().as_fd(), &|| true)?.unwrap_or_default())
}

/// [`read_map`], given up (`None`) when `keep_going` says no before a batch.
pub fn read_map_while<K: Pod, V: Pod>(
    map: &MapData,
    keep_going: &dyn Fn() -> bool,
) -> io::Result<Option<Vec<(K, V)>>> {
    read_map_fd(map.fd().as_fd(), keep_going)
}

/// [`read_map_while`] by file descriptor.
fn read_map_fd<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keep_going: &dyn Fn() -> bool,
) -> io::Result<Option<Vec<(K, V)>>> {
    let fd = map.as_raw_fd();
    let mut entries = Vec::new();
    let mut chunk = FIRST_CHUNK;
    // Hash maps page by bucket index, arrays by index: a u32, but the kernel writes the next
    // token as a whole key (key_size bytes, 16 for our keys) and reads it back likewise, so the
    // token buffers are key-sized.
    let token_size = size_of::<K>().max(size_of::<u64>());
    let mut token = vec![0u8; token_size];
    let mut next = vec![0u8; token_size];
    let mut first = true;
    loop {
        if !keep_going() {
            return Ok(None);
        }
        let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(chunk);
        let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(chunk);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers of `chunk` keys and values, and at key-sized tokens,
        // that outlive the call; the kernel writes at most `count` keys and values and says how
        // many in `count`.
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
        // SAFETY: after `set_len(filled)` every entry is one the kernel initialized.
        entries.extend(
            keys.iter()
                .zip(&values)
                .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }),
        );
        match error {
            None => {}
            // The end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Some(entries)),
            Some(e) => return Err(e),
        }
        token.copy_from_slice(&next);
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        os::fd::{FromRawFd, OwnedFd},
    };

    use tracer_common::{AllocKey, AllocRecord};

    use super::*;

    /// A BPF hash map made with the raw syscall (`BPF_MAP_CREATE`), filled with `bpf()` updates;
    /// `None` (after saying so) when this process may not create maps (not root).
    fn hash_map(entries: u32) -> Option<OwnedFd> {
        #[repr(C)]
        #[derive(Default)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        #[repr(C)]
        #[derive(Default)]
        struct UpdateAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let create = CreateAttr {
            map_type: 1, // BPF_MAP_TYPE_HASH
            key_size: size_of::<AllocKey>() as u32,
            value_size: size_of::<AllocRecord>() as u32,
            max_entries: entries,
            map_flags: 0,
        };
        // SAFETY: BPF_MAP_CREATE reads `size` bytes of `create`, which outlives the call.
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, 0, &raw const create, size_of::<CreateAttr>()) };
        let error = io::Error::last_os_error();
        if fd < 0 && error.raw_os_error() == Some(libc::EPERM) {
            // Straight to stderr: the harness would hide a print of a passing test.
            let _ = writeln!(
                io::stderr(),
                "skipped: BPF_MAP_CREATE needs root (CAP_BPF): {error}"
            );
            return None;
        }
        assert!(fd >= 0, "BPF_MAP_CREATE: {error}");
        // SAFETY: a fresh descriptor the kernel just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        for i in 0..entries {
            let key = AllocKey::new(7, 0x1000 * u64::from(i));
            let value = AllocRecord {
                size: u64::from(i),
                ..Default::default()
            };
            let update = UpdateAttr {
                map_fd: fd.as_raw_fd() as u32,
                key: &raw const key as u64,
                value: &raw const value as u64,
                ..Default::default()
            };
            // SAFETY: BPF_MAP_UPDATE_ELEM reads `update` and the key and value it points at,
            // which all outlive the call.
            let ok = unsafe {
                libc::syscall(libc::SYS_bpf, 2, &raw const update, size_of::<UpdateAttr>())
            };
            assert_eq!(ok, 0, "BPF_MAP_UPDATE_ELEM: {}", io::Error::last_os_error());
        }
        Some(fd)
    }

    /// Several batches of 16-byte keys: every entry comes back exactly once across the batch
    /// tokens (which the kernel writes key-sized).
    #[test]
    fn a_hash_map_with_wide_keys_reads_whole_in_batches() {
        let entries = 3 * FIRST_CHUNK as u32 + 17;
        let Some(map) = hash_map(entries) else {
            return;
        };
        let mut read: Vec<(AllocKey, AllocRecord)> =
            read_map_fd(map.as_fd(), &|| true).unwrap().unwrap();
        read.sort_by_key(|(key, _)| key.addr);
        assert_eq!(read.len(), entries as usize);
        for (i, (key, record)) in read.iter().enumerate() {
            assert_eq!(
                (key.tgid, key.addr, record.size),
                (7, 0x1000 * i as u64, i as u64)
            );
        }
    }
}
