//! CPython targets: finding the interpreter in a process (`interpreter`), the layouts of the
//! versions known (`layout`), naming frames from code objects (`code`, `lines`), and merging
//! them into native stacks (`merge`). The kernel side's walk is
//! `tracer-ebpf/src/runtimes/python.rs`; `btf` gives it the one kernel offset it needs.

pub mod btf;
pub mod code;
pub mod interpreter;
pub mod layout;
pub mod lines;
pub mod merge;
