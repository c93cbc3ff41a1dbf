//! `leaktracer diff`: what grew between two recordings of the same program.
//!
//! Stacks are matched by their symbolized frames (function names, innermost first, allocator
//! plumbing included), not by addresses, which differ from run to run; they are shown, as in
//! every report, from their first own frame.

use std::{collections::HashMap, io::Write};

use inferno::{differential, flamegraph};

use std::path::{Path, PathBuf};

use super::{
    Frame, Report,
    flamegraph::write_empty_svg,
    load,
    output::{check_destinations, write_file},
    own_frames,
    plumbing::Plumbing,
};
use crate::{
    terminal::{TerminalText, eprintln_escaped},
    units::human_bytes,
};

/// One stack in both recordings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiffRow {
    pub frames: Vec<Frame>,
    pub old_bytes: u64,
    pub new_bytes: u64,
    pub old_allocations: u64,
    pub new_allocations: u64,
}

impl DiffRow {
    /// NEW less OLD, exact for any two byte counts (a recording may say anything up to
    /// u64::MAX, which wraps in i64).
    pub fn delta(&self) -> i128 {
        i128::from(self.new_bytes) - i128::from(self.old_bytes)
    }
}

/// How stacks are matched across recordings.
fn signature(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| f.function.as_str())
        .collect::<Vec<_>>()
        .join(";")
}

/// Every stack of either recording, the largest growth first.
pub fn compare(old: &Report, new: &Report) -> Vec<DiffRow> {
    let mut rows: HashMap<String, DiffRow> = HashMap::new();
    for stack in &old.stacks {
        let row = rows.entry(signature(&stack.frames)).or_default();
        // Saturating: a crafted recording's counts may sum past u64::MAX.
        row.old_bytes = row.old_bytes.saturating_add(stack.outstanding_bytes);
        row.old_allocations = row
            .old_allocations
            .saturating_add(stack.outstanding_allocations);
        row.frames = stack.frames.clone();
    }
    for stack in &new.stacks {
        let row = rows.entry(signature(&stack.frames)).or_default();
        row.new_bytes = row.new_bytes.saturating_add(stack.outstanding_bytes);
        row.new_allocations = row
            .new_allocations
            .saturating_add(stack.outstanding_allocations);
        row.frames = stack.frames.clone();
    }
    let mut rows: Vec<DiffRow> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        b.delta()
            .cmp(&a.delta())
            .then(b.new_bytes.cmp(&a.new_bytes))
            .then_with(|| signature(&a.frames).cmp(&signature(&b.frames)))
    });
    rows
}

/// `+1.50 KiB` or `-300 B`: NEW less OLD, never wrapped.
fn signed_bytes(old: u64, new: u64) -> String {
    let (sign, magnitude) = if new < old {
        ("-", old - new)
    } else {
        ("+", new - old)
    };
    format!("{sign}{}", human_bytes(magnitude))
}

/// The diff table, for a terminal: each line escaped whole (symbol names come from targets).
pub fn render(old: &Report, new: &Report, rows: &[DiffRow], top: usize) -> String {
    let mut out = TerminalText::default();
    let describe = |r: &Report| {
        format!(
            "pid {} ({:.1} s)",
            r.target.pids.first().copied().unwrap_or_default(),
            r.duration_secs
        )
    };
    out.line(format_args!(
        "leaktracer diff: {} -> {}",
        describe(old),
        describe(new)
    ));
    out.line(format_args!(
        "outstanding: {} -> {} ({})",
        human_bytes(old.totals.outstanding_bytes),
        human_bytes(new.totals.outstanding_bytes),
        signed_bytes(old.totals.outstanding_bytes, new.totals.outstanding_bytes)
    ));
    out.blank();
    out.line(format_args!(
        "{:>13} {:>12} {:>12}  stack (innermost first)",
        "change", "old", "new"
    ));
    for row in rows.iter().take(top) {
        let own = own_frames(&row.frames);
        let chain: Vec<&str> = own.iter().take(4).map(|f| f.function.as_str()).collect();
        out.line(format_args!(
            "{:>13} {:>12} {:>12}  {}{}",
            signed_bytes(row.old_bytes, row.new_bytes),
            human_bytes(row.old_bytes),
            human_bytes(row.new_bytes),
            if chain.is_empty() {
                "[unknown stack]".to_string()
            } else {
                chain.join(" <- ")
            },
            if own.len() > 4 { " <- ..." } else { "" }
        ));
    }
    out.into_string()
}

/// The differential flamegraph: widths from NEW, red where bytes grew since OLD, blue where
/// they shrank.
pub fn write_svg(old: &Report, new: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let title = format!(
        "leaktracer diff: pid {} -> pid {}, outstanding bytes",
        old.target.pids.first().copied().unwrap_or_default(),
        new.target.pids.first().copied().unwrap_or_default()
    );
    let before = old.folded_lines().join("\n");
    let after = new.folded_lines().join("\n");
    if after.is_empty() {
        return write_empty_svg(&title, out);
    }
    let mut combined = Vec::new();
    differential::from_readers(
        differential::Options::default(),
        before.as_bytes(),
        after.as_bytes(),
        &mut combined,
    )?;
    let combined = String::from_utf8_lossy(&combined);
    let mut options = flamegraph::Options::default();
    options.title = title;
    options.count_name = "bytes".to_string();
    flamegraph::from_lines(&mut options, combined.lines(), out)
}

/// What `leaktracer diff` shows and writes besides the two recordings.
#[derive(Clone, Debug, Default)]
pub struct DiffOptions {
    /// Rows in the text table.
    pub top: usize,
    /// Where to write the differential flamegraph.
    pub flamegraph: Option<PathBuf>,
    /// Which leading frames are allocator plumbing, folded in the table and the flamegraph.
    pub plumbing: Plumbing,
}

/// `leaktracer diff OLD NEW`.
pub fn run(old: &Path, new: &Path, options: &DiffOptions) -> anyhow::Result<()> {
    if let Some(path) = &options.flamegraph {
        check_destinations(&[("--flamegraph", path)], &[old, new])?;
    }
    let mut old = load(old)?;
    let mut new = load(new)?;
    // As `report` does: the recordings' marks kept, the built-in list and --plumbing added.
    options.plumbing.mark_report(&mut old);
    options.plumbing.mark_report(&mut new);
    let rows = compare(&old, &new);
    if let Some(path) = &options.flamegraph {
        write_file("--flamegraph", path, |w| write_svg(&old, &new, w))?;
        if !super::output::is_stdout(path) {
            eprintln_escaped!("leaktracer: wrote {}", path.display());
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(render(&old, &new, &rows, options.top).as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Stack;

    fn report(stacks: &[(&str, u64)]) -> Report {
        Report {
            stacks: stacks
                .iter()
                .map(|(name, bytes)| Stack {
                    outstanding_bytes: *bytes,
                    outstanding_allocations: 1,
                    frames: vec![
                        Frame {
                            function: name.to_string(),
                            address: *bytes, // differs between runs; must not matter
                            ..Default::default()
                        },
                        Frame {
                            function: "main".into(),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn matches_by_frames_and_orders_by_growth() {
        let old = report(&[("leak", 1000), ("cache", 500), ("gone", 300)]);
        let new = report(&[("leak", 2000), ("cache", 500), ("fresh", 100)]);
        let rows = compare(&old, &new);
        let order: Vec<(&str, i128)> = rows
            .iter()
            .map(|r| (own_frames(&r.frames)[0].function.as_str(), r.delta()))
            .collect();
        assert_eq!(
            order,
            vec![("leak", 1000), ("fresh", 100), ("cache", 0), ("gone", -300)]
        );
        let mut svg = Vec::new();
        write_svg(&old, &new, &mut svg).unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("leak"));
    }

    #[test]
    fn rows_show_their_first_own_frame() {
        let mut old = report(&[("leak", 1000)]);
        let mut new = report(&[("leak", 3000)]);
        for recording in [&mut old, &mut new] {
            recording.stacks[0].frames.insert(
                0,
                Frame {
                    function: "g_malloc".into(),
                    ..Default::default()
                },
            );
            Plumbing::default().mark_report(recording);
        }
        let rows = compare(&old, &new);
        let table = render(&old, &new, &rows, 10);
        assert!(table.contains("  leak <- main\n"), "{table}");
        assert!(!table.contains("g_malloc"), "{table}");
    }

    #[test]
    fn byte_counts_up_to_u64_max_never_wrap() {
        let old = report(&[("huge", u64::MAX), ("twice", u64::MAX), ("twice", 1)]);
        let new = report(&[("huge", 30427), ("twice", 5)]);
        let rows = compare(&old, &new);
        let huge = rows
            .iter()
            .find(|r| r.frames[0].function == "huge")
            .unwrap();
        assert_eq!(huge.delta(), 30427 - i128::from(u64::MAX));
        let twice = rows
            .iter()
            .find(|r| r.frames[0].function == "twice")
            .unwrap();
        assert_eq!(twice.old_bytes, u64::MAX, "summed, saturating");
        assert_eq!(rows[0].frames[0].function, "huge", "the smaller loss first");
        let table = render(&old, &new, &rows, 10);
        let shrank = format!("-{}", human_bytes(u64::MAX - 30427));
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with(&shrank) && l.ends_with("huge <- main")),
            "{table}"
        );
        let twice_line = format!("-{}", human_bytes(u64::MAX - 5));
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with(&twice_line) && l.ends_with("twice <- main")),
            "{table}"
        );
    }
}
