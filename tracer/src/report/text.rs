//! The human-readable report printed at the end of a trace.

use std::fmt::Write as _;

use super::{Frame, Report, human_bytes};

/// Renders totals and the `top` stacks by outstanding bytes.
pub fn render(report: &Report, top: usize) -> String {
    let mut out = String::new();
    let target = describe_target(report);
    let _ = writeln!(
        out,
        "leaktracer: traced {target} for {:.1} s ({})",
        report.duration_secs,
        if report.end_reason.is_empty() {
            "ended"
        } else {
            &report.end_reason
        }
    );
    for allocator in &report.allocators {
        let _ = writeln!(
            out,
            "allocator: {} (pid {})",
            allocator.object, allocator.pid
        );
    }
    let totals = &report.totals;
    let _ = writeln!(
        out,
        "outstanding: {} ({} bytes) in {} allocations; seen during the trace: {} allocations, {} frees",
        human_bytes(totals.outstanding_bytes),
        totals.outstanding_bytes,
        totals.outstanding_allocations,
        totals.allocations,
        totals.frees
    );
    if totals.dropped == 0 {
        let _ = writeln!(out, "dropped: none");
    } else {
        let causes: Vec<String> = totals
            .dropped_by_cause
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(cause, n)| format!("{cause} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "dropped: {} ({}) — figures may be incomplete; see --help for the map size flags",
            totals.dropped,
            causes.join(", ")
        );
    }
    if report.stacks.is_empty() {
        let _ = writeln!(
            out,
            "\nno outstanding allocations: nothing allocated during the trace is still held"
        );
        return out;
    }
    let shown = report.stacks.len().min(top);
    let _ = writeln!(
        out,
        "\ntop {shown} of {} stacks by outstanding bytes:",
        report.stacks.len()
    );
    for (rank, stack) in report.stacks.iter().take(top).enumerate() {
        let _ = writeln!(
            out,
            "\n#{}  {} ({} bytes) in {} allocations  [{} allocated in all]",
            rank + 1,
            human_bytes(stack.outstanding_bytes),
            stack.outstanding_bytes,
            stack.outstanding_allocations,
            stack.total_allocations
        );
        if stack.frames.is_empty() {
            let _ = writeln!(out, "    [stack not captured]");
        }
        for frame in &stack.frames {
            let _ = writeln!(out, "    {}", describe_frame(frame));
        }
    }
    out
}

fn describe_target(report: &Report) -> String {
    let pids: Vec<String> = report
        .target
        .pids
        .iter()
        .enumerate()
        .map(|(i, pid)| match report.target.comms.get(i) {
            Some(comm) if !comm.is_empty() => format!("pid {pid} ({comm})"),
            _ => format!("pid {pid}"),
        })
        .collect();
    pids.join(", ")
}

fn describe_frame(frame: &Frame) -> String {
    let module = frame.module.rsplit('/').next().unwrap_or(&frame.module);
    let location = match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!(" at {file}:{line}"),
        (Some(file), None) => format!(" at {file}"),
        _ => String::new(),
    };
    let inlined = if frame.inlined { " (inlined)" } else { "" };
    format!("{}{location}{inlined} [{module}]", frame.function)
}
