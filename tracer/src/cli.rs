//! Command-line interface.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::duration::parse_duration;

/// Find memory leaks in a live process with eBPF, without restarting it.
///
/// leaktracer probes the allocator the target really uses (malloc, calloc, realloc, free, the
/// aligned variants, mmap/munmap/mremap), keeps every allocation still outstanding in the kernel,
/// keyed by its user call stack, and at the end reports the stacks that hold the most memory.
#[derive(Debug, Parser)]
#[command(name = "leaktracer", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace a running process (--pid) or a command you launch, then report what is still allocated.
    ///
    /// The trace ends at --duration, on Ctrl-C (or SIGTERM), or when the target exits; in every case
    /// the report and all requested files are written and every probe is detached.
    ///
    /// Examples:
    ///   sudo leaktracer trace --pid 4242 --duration 30s --flamegraph leaks.svg --json leaks.json
    ///   sudo leaktracer trace --flamegraph leaks.svg -- ./server --port 8080
    #[command(verbatim_doc_comment)]
    Trace(TraceArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "command"])))]
pub struct TraceArgs {
    /// Attach to this running process (all its threads). Allocations made before attach are
    /// not known and their frees are ignored.
    #[arg(short, long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Stop after this long (e.g. 30s, 10m, 1h). Without it, trace until Ctrl-C or the target exits.
    #[arg(short, long, value_name = "DUR", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Show this many stacks in the text report.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Write a leak flamegraph (SVG): width is outstanding bytes.
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<PathBuf>,

    /// Write folded stacks (`root;...;leaf bytes`), for flamegraph.pl, inferno or speedscope.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,

    /// Write the full report as JSON (totals, every outstanding stack with its frames).
    #[arg(long, value_name = "FILE.json")]
    pub json: Option<PathBuf>,

    /// Most outstanding heap allocations tracked at once; beyond it, allocations are counted as
    /// dropped (alloc_map_full).
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    pub max_allocations: u32,

    /// Most distinct allocation stacks; beyond it, allocations are kept without a stack
    /// (stack_failed).
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub max_stacks: u32,

    /// Print where each probe was placed, and progress.
    #[arg(short, long)]
    pub verbose: bool,

    /// Launch this command (with its arguments) and trace it from its first allocation. When the
    /// trace ends first, the command is stopped with SIGTERM.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Trace(args) => crate::trace::run(args).map(|()| ExitCode::SUCCESS),
    }
}
