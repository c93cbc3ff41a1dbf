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

/// Counts a loss. Userspace tells the user what to do about it (`Counter::loss_message`,
/// which `$message` must be: checked at compile time) at the poll that sees the counter move;
/// the report has the totals. Not logged from here: a log call (aya-log) cost the verifier
/// ~6,700 instructions in every program that has one.
macro_rules! count_loss {
    ($ctx:expr, $counter:expr, $message:literal) => {
        const {
            assert!(match $counter.loss_message() {
                Some(message) => $crate::probes::same_name(message, $message),
                None => false,
            })
        };
        let _ = $ctx;
        $crate::counters::count($counter);
    };
}

pub(crate) use count_loss;
