//! The heap record table, read in place: the array map is created mmapable and mapped read-only
//! here, so a snapshot scans it without copying 12 MiB out of the kernel every interval.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::MapData;
use tracer_common::{AllocKey, AllocRecord, FIRST_RECORD_KEY, RecordSlot};

/// Maps the memory of an array map created with BPF_F_MMAPABLE (`bytes` of it, rounded up to
/// pages) with protection `prot`: its base and the mapped length, for munmap. The kernel keeps
/// the mapping valid while it exists.
pub fn map_memory(map: &MapData, bytes: usize, prot: i32) -> io::Result<(NonNull<u8>, usize)> {
    let page = 4096;
    let len = bytes.div_ceil(page) * page;
    // SAFETY: a shared mapping of the map's memory, which the caller unmaps once.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok((
        NonNull::new(address.cast()).expect("mmap returned a non-null address"),
        len,
    ))
}

/// A read-only mapping of the record table.
pub struct RecordTable {
    base: NonNull<RecordSlot>,
    slots: usize,
    len: usize,
}

impl RecordTable {
    /// Maps the table (an array map created with BPF_F_MMAPABLE) of `slots` slots.
    pub fn map(map: &MapData, slots: usize) -> io::Result<Self> {
        let (base, len) = map_memory(map, slots * size_of::<RecordSlot>(), libc::PROT_READ)?;
        Ok(Self {
            base: base.cast(),
            slots,
            len,
        })
    }

    /// The live records (slots being written or freed are skipped).
    pub fn records(&self) -> impl Iterator<Item = (AllocKey, AllocRecord)> + '_ {
        self.live_slots().map(|(_, slot)| {
            let key = AllocKey::new(slot.tgid, slot.addr);
            let record = AllocRecord::new(slot.size, slot.timestamp_ns, slot.stack_id, slot.weight);
            (key, record)
        })
    }

    /// The live slots with their indexes.
    pub fn live_slots(&self) -> impl Iterator<Item = (u32, RecordSlot)> + '_ {
        (0..self.slots).filter_map(move |index| {
            // SAFETY: index < slots, inside the mapping. The programs write slots while we
            // read: volatile reads of plain data, a slot published by its key written last.
            let slot = unsafe { std::ptr::read_volatile(self.base.as_ptr().add(index)) };
            (slot.key >= FIRST_RECORD_KEY).then_some((index as u32, slot))
        })
    }
}

impl Drop for RecordTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
