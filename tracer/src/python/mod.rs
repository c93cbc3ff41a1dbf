//! CPython targets.

pub mod lines;
