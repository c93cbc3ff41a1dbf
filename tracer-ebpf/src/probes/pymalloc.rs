//! CPython's pymalloc (`_PyObject_Malloc` and family): objects up to 512 bytes live in its
//! arenas and never reach `malloc`, so a leak of small objects (tuples, floats, short strings)
//! is only seen here. Larger requests fall through to `malloc`, a nested call counted once, by
//! this outer one; the arenas' own mmaps are the allocator's (not counted twice).

use tracer_common::{CallKind, Counter, programs};

use super::entry_program;
use crate::{
    counters::count,
    pending::begin_call,
    records::{Records, release},
};

entry_program! {
    /// _PyObject_Malloc(ctx, size).
    pymalloc_malloc_enter = programs::PYMALLOC_MALLOC_ENTER, |ctx, size| {
        begin_call(&ctx, CallKind::Alloc, size, 0);
    }
}

entry_program! {
    /// _PyObject_Calloc(ctx, n, size): n * size bytes.
    pymalloc_calloc_enter = programs::PYMALLOC_CALLOC_ENTER, |ctx, n, size| {
        begin_call(&ctx, CallKind::Alloc, n.wrapping_mul(size), 0);
    }
}

entry_program! {
    /// _PyObject_Realloc(ctx, ptr, size).
    pymalloc_realloc_enter = programs::PYMALLOC_REALLOC_ENTER, |ctx, ptr, size| {
        begin_call(&ctx, CallKind::Realloc, size, ptr);
    }
}

entry_program! {
    /// _PyObject_Free(ctx, ptr): releases the block when it was recorded.
    pymalloc_free_enter = programs::PYMALLOC_FREE_ENTER, traced tgid, |ctx, ptr| {
        if ptr == 0 {
            return 0;
        }
        if !release(Records::Heap, tgid, ptr) {
            count(Counter::UnknownFrees);
        }
    }
}
