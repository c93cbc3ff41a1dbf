//! What a trace produces, and its renderings: text on stdout, JSON, folded stacks, flamegraph,
//! HTML and pprof.
//!
//! [`schema`] is the report itself (the JSON contract); [`build`] assembles it from what a trace
//! collected; [`plumbing`] says which leading frames are the allocator's, for the renderings to
//! fold; the other modules render it.

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

/// Reads a recording written by `trace --json`: a regular file of at most
/// [`MAX_RECORDING_BYTES`] (never a device or FIFO, which could be read forever).
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
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a leaktracer recording (write one with `leaktracer trace --json`)",
            path.display()
        )
    })
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
