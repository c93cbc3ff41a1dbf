//! Thread stacks among the recorded mappings: which mappings are threads' stacks (marked by the
//! kernel when the C library maps them with `MAP_STACK`, as glibc does; or found as the mapping
//! a live thread started at the top of, for a C library that does not say, as musl), and which
//! of those a live thread runs on. The others are stacks of threads that ended, which glibc
//! keeps mapped for its next threads (its stack cache, up to 40 MiB) or until a join.

use tracer_common::{
    AllocKey, AllocRecord,
    threads::{THREAD_STACK, ThreadStart},
};

/// How far below the end of a mapping the kernel did not mark a thread may start with its
/// stack pointer for the mapping to be taken as that thread's stack: the thread's descriptor
/// and TLS sit above its first frame. Farther, the thread runs on memory carved out of some
/// larger mapping (a runtime's heap), which is not its alone.
pub const TOP_SLACK: u64 = 64 * 1024;

const PAGE_SIZE: u64 = 4096;

/// What a mapping record is to threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackUse {
    /// Not a thread's stack.
    None,
    /// The stack of a thread alive now (or when its process ended).
    Live,
    /// A thread stack no live thread started during the trace runs on: its thread ended
    /// (glibc keeps it for reuse, or until the thread is joined).
    Exited,
}

/// For each of `mappings`, what it is to the live `threads` (each with the stack pointer it
/// started with).
pub fn classify(mappings: &[(AllocKey, AllocRecord)], threads: &[ThreadStart]) -> Vec<StackUse> {
    let marked = |record: &AllocRecord| record.flags & THREAD_STACK != 0;
    let mut uses: Vec<StackUse> = mappings
        .iter()
        .map(|(_, record)| {
            if marked(record) {
                StackUse::Exited
            } else {
                StackUse::None
            }
        })
        .collect();
    let place = |i: usize| (mappings[i].0.tgid, mappings[i].0.addr);
    let mut order: Vec<usize> = (0..mappings.len()).collect();
    order.sort_by_key(|&i| place(i));
    for thread in threads {
        // The last mapping of its process starting below its stack pointer.
        let after = order.partition_point(|&i| place(i) < (thread.tgid, thread.sp));
        let Some(&i) = after.checked_sub(1).and_then(|at| order.get(at)) else {
            continue;
        };
        let (key, record) = &mappings[i];
        let end = key.addr + record.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if key.tgid != thread.tgid || thread.sp > end {
            continue;
        }
        if marked(record) || end - thread.sp <= TOP_SLACK {
            uses[i] = StackUse::Live;
        }
    }
    uses
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn mapping(tgid: u32, addr: u64, size: u64, flags: u32) -> (AllocKey, AllocRecord) {
        (
            AllocKey::new(tgid, addr),
            AllocRecord {
                flags,
                ..AllocRecord::new(size, 1, 7, 1)
            },
        )
    }

    fn thread(tgid: u32, sp: u64) -> ThreadStart {
        ThreadStart {
            tgid,
            sp,
            ..Default::default()
        }
    }

    #[test]
    fn marked_stacks_are_live_while_a_thread_runs_on_them_and_exited_after() {
        // glibc: three 8 MiB stacks side by side (their guard pages between them), a thread
        // started on the first and the third; the second one's thread ended.
        let base = 0x7f00_0000_0000;
        let stride = 8 * MIB + PAGE_SIZE;
        let mappings: Vec<_> = (0..3)
            .map(|i| mapping(10, base + i * stride + PAGE_SIZE, 8 * MIB, THREAD_STACK))
            .collect();
        // Each starts below its descriptor and TLS, at the top of its mapping.
        let top = |i: u64| base + i * stride + PAGE_SIZE + 8 * MIB - 2304;
        let threads = [thread(10, top(0)), thread(10, top(2)), thread(11, top(1))];
        assert_eq!(
            classify(&mappings, &threads),
            [StackUse::Live, StackUse::Exited, StackUse::Live]
        );
    }

    #[test]
    fn an_unmarked_mapping_is_a_stack_when_a_thread_starts_at_its_top() {
        // musl maps stacks without MAP_STACK: the thread's start tells.
        let mappings = [
            mapping(10, 0x1000_0000, 128 * 1024, 0),
            // A runtime's heap a thread runs in, far below its end: not a thread's stack.
            mapping(10, 0x2000_0000, 64 * MIB, 0),
            mapping(10, 0x7000_0000, MIB, 0),
        ];
        let threads = [
            thread(10, 0x1000_0000 + 128 * 1024 - 400),
            thread(10, 0x2000_0000 + 5 * MIB),
            // Just past the mapping: not in it.
            thread(10, 0x7000_0000 + MIB + 16),
        ];
        assert_eq!(
            classify(&mappings, &threads),
            [StackUse::Live, StackUse::None, StackUse::None]
        );
        assert_eq!(classify(&mappings, &[]), [StackUse::None; 3]);
    }
}
