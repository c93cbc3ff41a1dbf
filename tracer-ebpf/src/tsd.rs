//! glibc's thread-specific data (`pthread_getspecific` from outside the thread's code): the
//! current thread's value of a pthread key, read from its `struct pthread` at the thread
//! pointer (the layout's offsets: `arch`).

use aya_ebpf::helpers::bpf_probe_read_user;

use crate::arch::{TSD_BLOCKS, TSD_FIRST_BLOCK, thread_pointer};

/// Keys per block of slots (`PTHREAD_KEY_2NDLEVEL_SIZE`).
const KEYS_PER_BLOCK: u32 = 32;
/// Keys a process has at most (`PTHREAD_KEYS_MAX`).
const MAX_KEYS: u32 = 1024;
/// Bytes of a key's slot (`struct pthread_key_data`: sequence number, value).
const SLOT_BYTES: u64 = 16;

/// The current thread's thread-specific data.
pub(crate) struct ThreadData {
    /// The thread pointer: glibc's `struct pthread`.
    tls: u64,
}

/// The current thread's data, when the kernel's layout is known.
#[inline(always)]
pub(crate) fn current() -> Option<ThreadData> {
    Some(ThreadData {
        tls: thread_pointer()?,
    })
}

impl ThreadData {
    /// The thread's value of pthread key `key`; `None` when it cannot be read or is null.
    #[inline(always)]
    pub(crate) fn value(&self, key: u32) -> Option<u64> {
        if key >= MAX_KEYS {
            return None;
        }
        let block = if key < KEYS_PER_BLOCK {
            self.tls + TSD_FIRST_BLOCK
        } else {
            let at = self.tls + TSD_BLOCKS + u64::from(key / KEYS_PER_BLOCK) * 8;
            // SAFETY: the helper copies from user memory and fails (no fault) on a bad address.
            unsafe { bpf_probe_read_user(at as *const u64) }.ok()?
        };
        if block == 0 {
            return None;
        }
        let slot = block + u64::from(key % KEYS_PER_BLOCK) * SLOT_BYTES + 8;
        // SAFETY: as above.
        let value = unsafe { bpf_probe_read_user(slot as *const u64) }.ok()?;
        (value != 0).then_some(value)
    }
}
