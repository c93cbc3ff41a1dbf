//! What a trace produces, and its renderings: text on stdout, JSON, folded stacks, flamegraph,
//! HTML and pprof.
//!
//! [`schema`] is the report itself (the JSON contract); [`build`] assembles it from what a trace
//! collected; [`plumbing`] says which leading frames are the allocator's, for the renderings to
//! fold. The renderings: [`text`], [`flamegraph`], [`html`], [`pprof`] (JSON and the folded
//! stacks come from [`schema`] itself); [`diff`] compares two recordings; [`output`] writes
//! every file safely.

pub mod build;
pub mod diff;
pub mod flamegraph;
pub mod html;
pub mod output;
pub mod plumbing;
pub mod pprof;
pub mod schema;
pub mod text;

use std::{io::Write, path::Path};

use anyhow::Context;

pub use output::Outputs;
pub use schema::*;

/// The largest recording `report` and `diff` read: far above what a trace writes (16384
/// stacks with hours of samples), far below what would exhaust memory.
pub const MAX_RECORDING_BYTES: u64 = 2 << 30;

/// Inlined calls a recorded address may carry: far above what compilers inline, far below
/// what would make one stack costly to render.
pub const MAX_INLINED_PER_ADDRESS: usize = 64;

/// Reads a recording written by `trace --json`: a regular file of at most
/// [`MAX_RECORDING_BYTES`] (never a device or FIFO, which could be read forever), whose stacks
/// are no deeper than a trace records (see [`check_depth`]).
pub fn load(path: &Path) -> anyhow::Result<Report> {
    use std::io::Read;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!(
            "{} is not a regular file: give the path of a recording written by `leaktracer trace --json`",
            path.display()
        );
    }
    // Refused before a byte is read (the read below still stops there, should it grow).
    if meta.len() > MAX_RECORDING_BYTES {
        anyhow::bail!(
            "{} is larger than {} GiB: not a recording leaktracer writes",
            path.display(),
            MAX_RECORDING_BYTES >> 30
        );
    }
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_RECORDING_BYTES + 1).read_to_end(&mut text))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MAX_RECORDING_BYTES {
        anyhow::bail!(
            "{} is larger than {} GiB: not a recording leaktracer writes",
            path.display(),
            MAX_RECORDING_BYTES >> 30
        );
    }
    let report: Report = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a leaktracer recording (write one with `leaktracer trace --json`)",
            path.display()
        )
    })?;
    drop(text);
    for stack in &report.stacks {
        check_depth(stack).map_err(|why| {
            anyhow::anyhow!(
                "{}: stack {} {why}: not a recording leaktracer writes",
                path.display(),
                if stack.id.is_empty() { "?" } else { &stack.id }
            )
        })?;
    }
    Ok(report)
}

/// A stack is no deeper than a trace records: at most the kernel's maximum depth of addresses
/// (`MAX_STACK_DEPTH`: frames not inlined, Python frames included), each with at most
/// [`MAX_INLINED_PER_ADDRESS`] inlined calls.
fn check_depth(stack: &Stack) -> Result<(), String> {
    let max = tracer_common::MAX_STACK_DEPTH;
    let addresses = stack.frames.iter().filter(|f| !f.inlined).count();
    if addresses > max {
        return Err(format!(
            "has {addresses} frames, more than the {max} a stack can have"
        ));
    }
    let mut inlined = 0;
    for frame in &stack.frames {
        inlined = if frame.inlined { inlined + 1 } else { 0 };
        if inlined > MAX_INLINED_PER_ADDRESS {
            return Err(format!(
                "has more than {MAX_INLINED_PER_ADDRESS} inlined calls at one address"
            ));
        }
    }
    Ok(())
}

/// Writes a report's files and its text: the text goes to stdout (to stderr when a file does),
/// and is shown even when a file could not be written; the error names the files that failed.
pub fn deliver(report: &Report, outputs: &Outputs) -> anyhow::Result<()> {
    let written = report.write_files(outputs);
    let text = text::render(report, outputs.top);
    if outputs.uses_stdout() {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    } else {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }
    written
}

/// `leaktracer report`: renders a saved recording as the trace that wrote it did. Allocator
/// plumbing is marked again with `outputs.plumbing` (the recording's own marks kept, so what
/// its trace folded stays folded; `--keep-plumbing` clears them): a recording from before the
/// marks existed folds too.
pub fn rerender(recording: &Path, outputs: &Outputs) -> anyhow::Result<()> {
    outputs.check(&[recording])?;
    let mut report = load(recording)?;
    outputs.plumbing.mark_report(&mut report);
    // By function again: the marks may have changed, and older recordings have none.
    report.functions = build::functions(&report.stacks);
    deliver(&report, outputs)
}
