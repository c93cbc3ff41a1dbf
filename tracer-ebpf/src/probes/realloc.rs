//! Entries of the calls whose return is more than a new block: realloc and reallocarray (they
//! release an old block), posix_memalign (the block comes through an out-parameter).

use tracer_common::{CallKind, programs};

use super::entry_program;
use crate::pending::begin_call;

entry_program! {
    /// realloc(ptr, size).
    realloc_enter = programs::REALLOC_ENTER, |ctx, ptr, size| {
        begin_call(&ctx, CallKind::Realloc, size, ptr);
    }
}

entry_program! {
    /// reallocarray(ptr, n, size).
    reallocarray_enter = programs::REALLOCARRAY_ENTER, |ctx, ptr, n, size| {
        begin_call(&ctx, CallKind::Realloc, n.wrapping_mul(size), ptr);
    }
}

entry_program! {
    /// posix_memalign(&ptr, alignment, size).
    posix_memalign_enter = programs::POSIX_MEMALIGN_ENTER, |ctx, out, size| {
        begin_call(&ctx, CallKind::PosixMemalign, size, out);
    }
}
