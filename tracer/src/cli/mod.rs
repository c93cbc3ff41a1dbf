//! Command-line interface: [`args`] is what clap parses, [`config`] validates it into the
//! configurations the subcommands run on. Nothing outside this module knows clap.

pub mod args;
pub mod config;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::{DiffArgs, ReportArgs, TraceArgs};

/// Find memory leaks in a live process with eBPF, without restarting it.
///
/// leaktracer probes the allocator the target really uses (malloc, calloc, realloc, free, the
/// aligned variants, C++ operator new) and the mapping system calls (mmap, munmap, mremap,
/// mprotect, brk, from syscall tracepoints), keeps every allocation still
/// outstanding in the kernel, keyed by its user call stack, samples the per-stack totals every
/// interval, and reports which stacks hold memory, which keep growing and how fast, and when the
/// process reaches its memory limit. A CPython 3.11-3.13 target's stacks name the Python
/// function and line of each frame.
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
    /// The trace ends at --duration, on Ctrl-C, SIGTERM or SIGHUP (a closed terminal), or when the
    /// target exits; in every case the report and all requested files are written and every
    /// probe is detached. Output files are checked before the trace starts. A CPython 3.11-3.13
    /// target (Debian's python3 too) gets its Python frames, function, file and line, merged
    /// into its stacks: nothing to set.
    ///
    /// Examples:
    ///   sudo leaktracer trace --pid 4242 --duration 30s --flamegraph leaks.svg --json leaks.json
    ///   sudo leaktracer trace --flamegraph leaks.svg -- ./server --port 8080
    ///   sudo leaktracer trace --pid $(pgrep -f service.py) --duration 60s --flamegraph py.svg
    ///   sudo leaktracer trace --pid 4242 --interval 10s --duration 10m --html report.html --json run.json
    #[command(verbatim_doc_comment)]
    Trace(Box<TraceArgs>),

    /// Re-render a saved recording (the --json of a trace): text, flamegraph, folded, HTML. No
    /// root needed.
    ///
    /// Example:
    ///   leaktracer report run.json --flamegraph leaks.svg --html report.html --top 20
    #[command(verbatim_doc_comment)]
    Report(ReportArgs),

    /// Compare two recordings of the same program: the stacks that grew most, and a differential
    /// flamegraph. Stacks are matched by their symbolized frames, so recordings of different runs
    /// compare. No root needed.
    ///
    /// Example:
    ///   leaktracer diff before.json after.json --flamegraph growth.svg
    #[command(verbatim_doc_comment)]
    Diff(DiffArgs),

    /// Not for people: started by `trace` so a target the probes stopped is resumed even if
    /// leaktracer is killed (see `target::resume_guard`).
    #[command(name = "resume-guard", hide = true)]
    ResumeGuard,
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Trace(args) => crate::trace::run((*args).try_into()?)?,
        Command::Report(args) => {
            crate::report::rerender(&args.recording, &args.output.outputs(None))?
        }
        Command::Diff(args) => crate::report::diff::run(&args.old, &args.new, &args.options())?,
        Command::ResumeGuard => return Ok(crate::target::resume_guard::run()),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
