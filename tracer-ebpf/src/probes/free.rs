//! free: the release side of the heap.

use tracer_common::{Counter, programs};

use super::entry_program;
use crate::{
    counters::count,
    records::{Records, release},
};

entry_program! {
    /// free(ptr): releases the block when it was recorded; unknown pointers are ignored.
    free_enter = programs::FREE_ENTER, traced tgid, |ctx, ptr| {
        if ptr == 0 {
            return 0;
        }
        if !release(Records::Heap, tgid, ptr) {
            count(Counter::UnknownFrees);
        }
    }
}
