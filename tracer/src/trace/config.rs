//! What a trace is asked to do, validated: built from the command line by `cli`, or by hand
//! (tests, other front ends), so nothing below the command line depends on clap.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{attach::allocator::AllocatorOverride, growth::Thresholds, report::Outputs};

/// How stacks are walked (`--unwind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindMode {
    /// By each object's call-frame information: code with or without frame pointers.
    Cfi,
    /// By frame pointers only.
    FramePointers,
}

/// The processes to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// A running process, all its threads.
    Pid(u32),
    /// A command to launch (program and arguments), stopped until the probes are in place.
    Launch(Vec<String>),
    /// Every process in this cgroup v2 directory and below, including later ones.
    Cgroup(PathBuf),
    /// The cgroup of the container whose id starts with this.
    Container(String),
}

/// A validated `leaktracer trace`.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub target: TargetSpec,
    /// With a pid or a launched command: also the processes it forks (never with a cgroup,
    /// which covers them already).
    pub follow_children: bool,
    /// The object that serves malloc and its symbol prefix, when not found by itself.
    pub allocator: Option<AllocatorOverride>,
    /// Stop after this long; `None`: at Ctrl-C or when the target exits.
    pub duration: Option<Duration>,
    /// Sampling period of the growth analysis and the status line.
    pub interval: Duration,
    /// The report's files, and stacks in the text report.
    pub outputs: Outputs,
    /// `--serve`: where to serve the live endpoints.
    pub serve: Option<SocketAddr>,
    /// Stacks with their own series in `/metrics`.
    pub metrics_stacks: usize,
    /// Count only allocations older than this.
    pub min_age: Option<Duration>,
    pub thresholds: Thresholds,
    /// `--sample-bytes`: record on average one heap allocation per this many bytes.
    pub sample_bytes: Option<u64>,
    /// Heap records the kernel keeps (record table + overflow map).
    pub max_allocations: u32,
    /// Distinct allocation stacks the kernel keeps.
    pub max_stacks: u32,
    /// `--unwind`: call-frame information or frame pointers only.
    pub unwind: UnwindMode,
    /// `--max-depth`: frames per stack.
    pub max_depth: u32,
    /// `--max-unwind-rows`: room for every traced object's unwind rows.
    pub max_unwind_rows: u32,
    /// `--allow-large-maps`: create the kernel maps even when they may take more than a
    /// quarter of the machine's memory.
    pub allow_large_maps: bool,
    /// Benchmarks: attach every probe, but the programs return at once.
    pub empty_programs: bool,
    /// Benchmarks: probe each function at its symbol's entry.
    pub probes_at_symbol_entry: bool,
    /// Measure the eBPF programs (kernel BPF run-time statistics).
    pub program_stats: bool,
    /// `--reachability`: scan the targets for pointers to their blocks at the end.
    pub reachability: bool,
    /// `--max-pause`: longest a target stays stopped for a scan (at the end, or asked for at
    /// `/api/reachability`).
    pub max_pause: Duration,
    /// `--reachability-heuristics`: interior pointers accepted as start pointers.
    pub reachability_heuristics: crate::reach::heuristics::HeuristicSet,
    /// No status line.
    pub quiet: bool,
    /// Where each probe was placed, and progress.
    pub verbose: bool,
}

impl TraceConfig {
    /// A trace of `target` with every setting at its command-line default.
    pub fn new(target: TargetSpec) -> Self {
        Self {
            target,
            follow_children: false,
            allocator: None,
            duration: None,
            interval: Duration::from_secs(5),
            outputs: Outputs {
                top: 10,
                ..Default::default()
            },
            serve: None,
            metrics_stacks: 20,
            min_age: None,
            thresholds: Thresholds::default(),
            sample_bytes: None,
            max_allocations: 1 << 20,
            max_stacks: 65536,
            unwind: UnwindMode::Cfi,
            max_depth: tracer_common::unwind::DEFAULT_MAX_DEPTH,
            max_unwind_rows: tracer_common::unwind::DEFAULT_UNWIND_ROWS,
            allow_large_maps: false,
            empty_programs: false,
            probes_at_symbol_entry: false,
            program_stats: false,
            reachability: false,
            max_pause: Duration::from_millis(200),
            reachability_heuristics: Default::default(),
            quiet: false,
            verbose: false,
        }
    }

    /// The launched command, if the trace launches one.
    pub fn command(&self) -> Option<&[String]> {
        match &self.target {
            TargetSpec::Launch(command) => Some(command),
            _ => None,
        }
    }

    /// The running process named by `--pid`, if any.
    pub fn pid(&self) -> Option<u32> {
        match self.target {
            TargetSpec::Pid(pid) => Some(pid),
            _ => None,
        }
    }
}
