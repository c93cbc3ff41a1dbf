//! `--sample-bytes`: which heap allocations are recorded, and what each recorded one stands for.

use aya_ebpf::{helpers::generated::bpf_get_prandom_u32, programs::RetProbeContext};
use tracer_common::{Counter, SAMPLE_TABLE_SLOTS};

use crate::{
    counters::count,
    maps::{SAMPLE_BYTES, SAMPLE_TABLE},
    records::{Records, record},
};

/// Whether to record a heap allocation of `size` bytes under `--sample-bytes`, and if so the
/// (bytes, allocations) it stands for: sampled with probability p = 1 - exp(-size/N) (always
/// from N bytes up), and scaled by 1/p, so totals are unbiased.
#[inline(always)]
fn sample(size: u64) -> Option<(u64, u32)> {
    let period = SAMPLE_BYTES.load();
    if period == 0 || size >= period {
        return Some((size, 1));
    }
    let slot = (size * SAMPLE_TABLE_SLOTS as u64 / period) as u32;
    let threshold = u64::from(*SAMPLE_TABLE.get(slot)?).max(1);
    // SAFETY: a helper without arguments.
    if u64::from(unsafe { bpf_get_prandom_u32() }) >= threshold {
        count(Counter::Unsampled);
        return None;
    }
    let scaled = (size << 32) / threshold;
    let weight = ((1u64 << 32) + threshold / 2) / threshold;
    Some((scaled, weight as u32))
}

/// Records a heap allocation, subject to sampling.
#[inline(always)]
pub(crate) fn record_heap(ctx: &RetProbeContext, tgid: u32, addr: u64, size: u64) {
    if let Some((bytes, weight)) = sample(size) {
        record(ctx, ctx.regs, Records::Heap, tgid, addr, bytes, weight);
    }
}
