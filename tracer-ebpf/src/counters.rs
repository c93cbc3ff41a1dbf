//! The per-CPU event and loss counters (see `tracer_common::Counter`).

use tracer_common::Counter;

use crate::maps::COUNTERS;

/// Adds one to a counter; returns this CPU's new count (1 on the first event here).
#[inline(always)]
pub(crate) fn count(counter: Counter) -> u64 {
    match COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot from a map lookup: valid for the run, and no other CPU
        // writes it.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}

/// Counts a loss and, the first time on this CPU, tells the user live (through aya-log) what
/// to do about it. Later losses are only counted: the report has the totals.
macro_rules! count_loss {
    ($ctx:expr, $counter:expr, $message:literal) => {
        if $crate::counters::count($counter) == 1 {
            aya_log_ebpf::warn!($ctx, $message);
        }
    };
}

pub(crate) use count_loss;
