//! leaktracer: find memory leaks in a live process with eBPF.
//!
//! The layout follows the path of the data:
//! - [`target`]: the process to trace — an existing pid or a command launched stopped;
//! - [`attach`]: which object serves `malloc` for it, where its entry points are, and the eBPF
//!   probes on them;
//! - [`collect`]: reading what the kernel recorded (outstanding allocations, per-stack totals)
//!   out of maps;
//! - [`runtimes`]: language runtimes (CPython) whose frames the kernel walks and leaktracer
//!   names, behind one registry;
//! - [`symbolize`]: turning stack addresses into functions, files and lines;
//! - [`report`]: the text report, JSON, folded stacks, flamegraph, HTML and pprof;
//! - [`serve`]: `--serve`, the live HTTP endpoints (Prometheus metrics, JSON, dashboard);
//! - [`trace`]: one trace session from attach to the written report, run from a validated
//!   [`trace::TraceConfig`];
//! - [`history`]: the samples a trace took, in memory; [`growth`]: what they show;
//! - [`reach`]: which outstanding blocks a live target can still reach (`--reachability`);
//! - [`unwind`]: call-frame information compiled into the tables the kernel walks stacks with;
//! - [`cli`]: the command line (clap), turned into those configurations;
//! - [`error`]: the errors a user can act on, one line each;
//! - [`units`]: sizes and durations, parsed and shown;
//! - [`terminal`]: what is printed, with control characters escaped;
//! - [`arch`]: what differs between processors (registers, register sets, the CFI register
//!   map, the instruction decoder): the only module that names a register.

pub mod arch;
pub mod attach;
pub mod cli;
pub mod collect;
pub mod error;
pub mod growth;
pub mod history;
pub mod reach;
pub mod report;
pub mod runtimes;
pub mod serve;
pub mod symbolize;
pub mod target;
pub mod terminal;
pub mod trace;
pub mod units;
pub mod unwind;
