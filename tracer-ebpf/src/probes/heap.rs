//! Entries of the plain heap allocation calls: the size is known at entry, the block at return.

use tracer_common::{CallKind, programs};

use super::{PAGE_SIZE, entry_program};
use crate::pending::begin_call;

entry_program! {
    /// malloc(size), valloc(size).
    malloc_enter = programs::MALLOC_ENTER, |ctx, size| {
        begin_call(&ctx, CallKind::Alloc, size, 0);
    }
}

entry_program! {
    /// calloc(n, size): n * size bytes.
    calloc_enter = programs::CALLOC_ENTER, |ctx, n, size| {
        // On overflow calloc fails and returns NULL: nothing gets recorded.
        begin_call(&ctx, CallKind::Alloc, n.wrapping_mul(size), 0);
    }
}

entry_program! {
    /// aligned_alloc(alignment, size), memalign(alignment, size).
    memalign_enter = programs::MEMALIGN_ENTER, |ctx, size| {
        begin_call(&ctx, CallKind::Alloc, size, 0);
    }
}

entry_program! {
    /// pvalloc(size): size rounded up to whole pages.
    pvalloc_enter = programs::PVALLOC_ENTER, |ctx, size| {
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        begin_call(&ctx, CallKind::Alloc, pages * PAGE_SIZE, 0);
    }
}
