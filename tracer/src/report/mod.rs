//! What a trace produces, and its renderings: text on stdout, JSON, folded stacks, flamegraph,
//! HTML and pprof.
//!
//! [`schema`] is the report itself (the JSON contract); [`build`] assembles it from what a trace
//! collected; the other modules render it.

pub mod build;
pub mod diff;
pub mod flamegraph;
pub mod html;
pub mod output;
pub mod pprof;
pub mod schema;
pub mod text;

use std::io::Write;

pub use output::Outputs;
pub use schema::*;

/// Reads a recording written by `trace --json`.
pub fn load(path: &std::path::Path) -> anyhow::Result<Report> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a leaktracer recording (write one with `leaktracer trace --json`)",
            path.display()
        )
    })
}

/// `leaktracer report`: renders a saved recording exactly as the trace that wrote it did.
pub fn rerender(recording: &std::path::Path, outputs: &Outputs) -> anyhow::Result<()> {
    let report = load(recording)?;
    report.write_files(outputs)?;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text::render(&report, outputs.top).as_bytes());
    let _ = stdout.flush();
    Ok(())
}
