//! Placeholder until the heap walk lands.
use std::ops::Range;

pub struct GlibcHeap {
    pub heaps: Vec<Range<u64>>,
    pub free: Vec<Range<u64>>,
    pub chunks_in_use: u64,
    pub chunks_free: u64,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GlibcError {
    #[error("not walked yet")]
    NotYet,
}

pub fn walk(
    _pid: u32,
    _memory: &crate::target::remote::RemoteMemory,
    _maps: &[crate::target::maps::Mapping],
) -> Result<GlibcHeap, GlibcError> {
    Err(GlibcError::NotYet)
}
