//! The human-readable report printed at the end of a trace.

use super::{Frame, Reachability, Report, Stack, StackReachability};
use crate::growth::{Class, Severity};
use crate::terminal::TerminalText;
use crate::units::{human_bytes, human_rate};

/// The class as JSON spells it.
pub fn class_name(class: Class) -> &'static str {
    match class {
        Class::Leak => "leak",
        Class::Growing => "growing",
        Class::Plateau => "plateau",
        Class::Churn => "churn",
    }
}

/// The severity as JSON spells it.
pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::None => "none",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// Renders totals and the `top` stacks by outstanding bytes, for a terminal: each line escaped
/// whole (names from the target may hold control characters).
pub fn render(report: &Report, top: usize) -> String {
    let mut out = TerminalText::default();
    render_header(report, &mut out);
    for process in &report.processes {
        render_process(report, process, &mut out);
    }
    let thread_stacks: Vec<&Stack> = report
        .stacks
        .iter()
        .filter(|s| s.is_thread_stacks())
        .collect();
    render_totals(report, &thread_stacks, &mut out);
    if report.stacks.is_empty() {
        out.blank();
        out.line(format_args!(
            "no outstanding allocations: nothing allocated during the trace is still held"
        ));
        return out.into_string();
    }
    let shown = report.stacks.len().min(top);
    let folds = report
        .stacks
        .iter()
        .take(top)
        .any(|s| !s.folded_frames().is_empty());
    out.blank();
    out.line(format_args!(
        "top {shown} of {} stacks by outstanding bytes{}{}:",
        report.stacks.len(),
        if thread_stacks.is_empty() {
            ""
        } else {
            ", thread stacks by what is resident of them"
        },
        if folds {
            " (leading allocator frames folded; --keep-plumbing shows them)"
        } else {
            ""
        }
    ));
    for (rank, stack) in report.stacks.iter().take(top).enumerate() {
        render_stack(report, rank, stack, &mut out);
    }
    render_functions(report, top, &mut out);
    out.into_string()
}

/// The first lines: how the trace ended, execs, the verdict, sampling, the cgroup, and the
/// allocators of a report without processes.
fn render_header(report: &Report, out: &mut TerminalText) {
    let target = describe_target(report);
    out.line(format_args!(
        "leaktracer: traced {target} for {:.1} s ({}{})",
        report.duration_secs,
        if report.end_reason.is_empty() {
            "ended"
        } else {
            &report.end_reason
        },
        report
            .target_exit
            .as_ref()
            .map(|exit| format!(": {}", exit.describe()))
            .unwrap_or_default()
    ));
    for exec in &report.execs {
        out.line(format_args!("exec: pid {} ran {} after {} at {:.1} s; the old image's {} outstanding allocations ({}) were retired with it",
            exec.pid,
            exec.to,
            exec.from,
            exec.t_secs,
            exec.retired_allocations,
            human_bytes(exec.retired_bytes)));
    }
    if let Some(verdict) = &report.verdict {
        out.line(format_args!("verdict: {}", verdict.summary));
    }
    if let Some(period) = report.sample_bytes {
        out.line(format_args!(
            "sampled: one heap allocation per {} on average; heap bytes and counts are estimates",
            human_bytes(period)
        ));
    }
    if let Some(cgroup) = &report.target.cgroup {
        out.line(format_args!("cgroup: {cgroup}"));
    }
    if report.processes.is_empty() {
        for allocator in &report.allocators {
            out.line(format_args!(
                "allocator: {} (pid {})",
                allocator.object, allocator.pid
            ));
        }
    }
}

/// One traced process's line.
fn render_process(report: &Report, process: &super::ProcessEntry, out: &mut TerminalText) {
    let inner = process
        .nspid
        .last()
        .filter(|inner| process.nspid.len() > 1 && **inner != process.pid)
        .map(|inner| format!(", pid {inner} in its namespace"))
        .unwrap_or_default();
    let frozen = process
        .frozen_at_secs
        .map(|t| match process.frozen_at.as_deref() {
            Some("exit") => format!("; figures as of its exit() call (at {t:.1} s)"),
            _ => format!("; figures as of its interpreter's teardown (Py_FinalizeEx at {t:.1} s)"),
        })
        .unwrap_or_default();
    // Each process's ending; the target's own is on the first line already.
    let ended = process
        .exit
        .as_ref()
        .filter(|_| {
            report
                .target_exit
                .as_ref()
                .is_none_or(|t| t.pid != process.pid)
        })
        .map(|exit| format!("; ended: {}", exit.describe()))
        .unwrap_or_default();
    out.line(format_args!(
        "process: pid {}{inner}: {} [{}] cgroup {}; allocator {}{frozen}{ended}",
        process.pid,
        process.comm,
        process.command.join(" "),
        process.cgroup.as_deref().unwrap_or("?"),
        process.allocator
    ));
}

/// The totals: outstanding, thread stacks (`thread_stacks`), dropped, the scan.
fn render_totals(report: &Report, thread_stacks: &[&Stack], out: &mut TerminalText) {
    let totals = &report.totals;
    out.line(format_args!("outstanding: {} ({} bytes) in {} allocations; seen during the trace: {} allocations, {} frees",
        human_bytes(totals.outstanding_bytes),
        totals.outstanding_bytes,
        totals.outstanding_allocations,
        totals.allocations,
        totals.frees));
    if !thread_stacks.is_empty() {
        let count = |f: fn(&&Stack) -> u64| thread_stacks.iter().map(f).sum::<u64>();
        let stacks = count(|s| s.outstanding_allocations);
        out.line(format_args!(
            "thread stacks: {stacks} of them ({} live threads, {} cached) reserve {} of that, {} of it resident; stacks are ranked and judged by what is resident of them",
            count(|s| s.threads.unwrap_or(0)),
            count(|s| s.cached_stacks.unwrap_or(0)),
            human_bytes(count(|s| s.outstanding_bytes)),
            human_bytes(count(|s| s.cost_bytes()))
        ));
    }
    if totals.dropped == 0 {
        out.line(format_args!("dropped: none"));
    } else {
        let causes: Vec<String> = totals
            .dropped_by_cause
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(cause, n)| format!("{cause} {n}"))
            .collect();
        out.line(format_args!(
            "dropped: {} ({}) — figures may be incomplete; see --help for the map size flags",
            totals.dropped,
            causes.join(", ")
        ));
    }
    if let Some(scan) = &report.reachability {
        out.line(format_args!("reachability: {}", describe_scan(scan)));
        for note in &scan.notes {
            out.line(format_args!("    note: {note}"));
        }
    }
}

/// One of the top stacks, ranked `rank` (from 0).
fn render_stack(report: &Report, rank: usize, stack: &Stack, out: &mut TerminalText) {
    out.blank();
    out.line(format_args!(
        "#{}  {} ({} bytes) in {} allocations  [{} allocated in all]",
        rank + 1,
        human_bytes(stack.outstanding_bytes),
        stack.outstanding_bytes,
        stack.outstanding_allocations,
        stack.total_allocations
    ));
    if report.target.pids.len() > 1 {
        out.line(format_args!(
            "    process: pid {} ({})",
            stack.pid, stack.comm
        ));
    }
    if stack.is_thread_stacks() {
        out.line(format_args!("    {}", describe_thread_stacks(stack)));
    }
    if let Some(growth) = &stack.growth {
        let rate = match growth.threads_per_sec {
            Some(threads) => format!(
                "{} resident, {threads:+.2} threads/s",
                human_rate(growth.bytes_per_sec)
            ),
            None => human_rate(growth.bytes_per_sec),
        };
        out.line(format_args!(
            "    growth: {rate} ({}, severity {}; grew or held in {:.0}% of intervals)",
            class_name(growth.class),
            severity_name(growth.severity),
            growth.non_decreasing_ratio * 100.0
        ));
    }
    if let Some(classes) = &stack.reachability
        && classes.classified_bytes() > 0
    {
        out.line(format_args!(
            "    reachability: {}",
            describe_classes(classes)
        ));
    }
    if stack.frames.is_empty() {
        out.line(format_args!("    [stack not captured]"));
    }
    if let Some(note) = folded_note(stack.folded_frames()) {
        out.line(format_args!("    {note}"));
    }
    for frame in stack.shown_frames() {
        out.line(format_args!("    {}", describe_frame(frame)));
    }
}

/// A stack of thread stacks in one line: its live threads, the stacks its C library keeps
/// after their threads ended, and what they cost beside what they reserve.
pub fn describe_thread_stacks(stack: &Stack) -> String {
    let threads = stack.threads.unwrap_or(0);
    let cached = stack.cached_stacks.unwrap_or(0);
    let cost = match stack.resident_bytes {
        Some(resident) => format!(
            "{} resident of {} reserved",
            human_bytes(resident),
            human_bytes(stack.outstanding_bytes)
        ),
        None => format!(
            "{} reserved (resident unknown)",
            human_bytes(stack.outstanding_bytes)
        ),
    };
    format!(
        "thread stacks: {threads} live thread{}, {cached} cached (of threads that ended, kept for reuse); {cost}",
        if threads == 1 { "" } else { "s" }
    )
}

/// A reachability scan in one line: how it was made, then the four classes.
pub fn describe_scan(scan: &Reachability) -> String {
    if scan.mode == "none" {
        return "not scanned (see the notes)".to_string();
    }
    let how = format!(
        "{} scan{}, paused {:.1} ms ({} thread{}, {} scanned)",
        scan.mode,
        if scan.complete { "" } else { " INCOMPLETE" },
        scan.pause_ms,
        scan.threads,
        if scan.threads == 1 { "" } else { "s" },
        human_bytes(scan.scanned_bytes)
    );
    let classes = StackReachability {
        definitely_lost: scan.definitely_lost,
        indirectly_lost: scan.indirectly_lost,
        possibly_lost: scan.possibly_lost,
        still_reachable: scan.still_reachable,
    };
    if !scan.complete {
        return format!("{how}: no block classed (see the notes)");
    }
    format!("{how}: {}", describe_classes(&classes))
}

/// A stack's classes in words, those holding nothing left out.
pub fn describe_classes(classes: &StackReachability) -> String {
    let parts: Vec<String> = [
        ("definitely lost", classes.definitely_lost),
        ("indirectly lost", classes.indirectly_lost),
        ("possibly lost", classes.possibly_lost),
        ("still reachable", classes.still_reachable),
    ]
    .iter()
    .filter(|(_, f)| f.allocations > 0)
    .map(|(name, f)| {
        format!(
            "{} {name} ({} block{})",
            human_bytes(f.bytes),
            f.allocations,
            if f.allocations == 1 { "" } else { "s" }
        )
    })
    .collect();
    if parts.is_empty() {
        "no block outstanding at the scan".to_string()
    } else {
        parts.join(", ")
    }
}

/// The `top` functions by inclusive outstanding bytes, leaving out those on every stack and
/// those of a runtime's standard library (they say nothing about which of the program's code
/// keeps the memory).
fn render_functions(report: &Report, top: usize, out: &mut TerminalText) {
    let telling: Vec<&crate::report::FunctionTotal> = report
        .functions
        .iter()
        .filter(|f| !f.on_every_stack && !f.standard_library)
        .collect();
    if telling.is_empty() {
        return;
    }
    let common = report.functions.iter().filter(|f| f.on_every_stack).count();
    let library = report
        .functions
        .iter()
        .filter(|f| f.standard_library && !f.on_every_stack)
        .count();
    let mut left_out = Vec::new();
    if common > 0 {
        left_out.push(format!("{common} on every stack"));
    }
    if library > 0 {
        left_out.push(format!(
            "{library} of {}",
            crate::runtimes::standard_libraries()
        ));
    }
    out.blank();
    out.line(format_args!(
        "top {} of {} functions by outstanding bytes, inclusive{}:",
        telling.len().min(top),
        telling.len(),
        if left_out.is_empty() {
            String::new()
        } else {
            format!(" ({} left out)", left_out.join(", "))
        }
    ));
    for function in telling.iter().take(top) {
        let growth = if function.bytes_per_sec != 0.0 {
            format!(", {}", human_rate(function.bytes_per_sec))
        } else {
            String::new()
        };
        out.line(format_args!(
            "  {:>10}  {} [{}]  ({} allocations on {} stack{}{growth})",
            human_bytes(function.outstanding_bytes),
            function.function,
            function.module,
            function.outstanding_allocations,
            function.stacks,
            if function.stacks == 1 { "" } else { "s" }
        ));
    }
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

/// Says which frames were folded as allocator plumbing, so none is hidden silently: `(2
/// allocator frames folded: ztrymalloc_usable_internal, zmalloc_usable)`, the innermost and the
/// outermost (the library call the user made) when there are more than three. `None` when
/// nothing was folded.
pub fn folded_note(folded: &[Frame]) -> Option<String> {
    let names: Vec<&str> = match folded {
        [] => return None,
        [first, _, _, .., last] => vec![&first.function, "…", &last.function],
        _ => folded.iter().map(|f| f.function.as_str()).collect(),
    };
    Some(format!(
        "({} allocator frame{} folded: {})",
        folded.len(),
        if folded.len() == 1 { "" } else { "s" },
        names.join(", ")
    ))
}

/// A frame as one line: function, location, module.
pub fn describe_frame(frame: &Frame) -> String {
    let module = frame.module.rsplit('/').next().unwrap_or(&frame.module);
    let location = match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!(" at {file}:{line}"),
        (Some(file), None) => format!(" at {file}"),
        _ => String::new(),
    };
    let inlined = if frame.inlined { " (inlined)" } else { "" };
    // A runtime's frame says which runtime runs it (`python`), not the interpreter's object.
    let module = if frame.kind.is_native() {
        module
    } else {
        frame.kind.name()
    };
    format!("{}{location}{inlined} [{module}]", frame.function)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, plumbing: bool) -> Frame {
        Frame {
            function: name.into(),
            module: "/usr/bin/redis-server".into(),
            plumbing,
            ..Default::default()
        }
    }

    fn report(frames: Vec<Frame>) -> Report {
        Report {
            stacks: vec![Stack {
                outstanding_bytes: 4096,
                outstanding_allocations: 2,
                frames,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_first_frame_shown_is_past_the_plumbing_and_the_fold_is_said() {
        let text = render(
            &report(vec![
                frame("ztrymalloc_usable_internal", true),
                frame("zmalloc_usable", true),
                frame("_sdsnewlen", false),
                frame("dbAdd", false),
            ]),
            10,
        );
        let stack: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("#1 "))
            .skip(1)
            .collect();
        assert_eq!(
            stack,
            [
                "    (2 allocator frames folded: ztrymalloc_usable_internal, zmalloc_usable)",
                "    _sdsnewlen [redis-server]",
                "    dbAdd [redis-server]",
            ]
        );
        assert!(text.contains(
            "stacks by outstanding bytes (leading allocator frames folded; --keep-plumbing shows them):"
        ));
    }

    #[test]
    fn thread_stacks_say_their_threads_and_what_is_resident_beside_what_they_reserve() {
        let mut report = report(vec![frame("spawn_worker", false)]);
        let stack = &mut report.stacks[0];
        stack.outstanding_bytes = 9 << 23;
        stack.outstanding_allocations = 9;
        stack.mapping_kind = Some(crate::report::MappingKind::ThreadStack);
        stack.threads = Some(8);
        stack.cached_stacks = Some(1);
        stack.resident_bytes = Some(9 * 12 * 1024);
        stack.growth = Some(crate::growth::Growth {
            bytes_per_sec: 6144.0,
            non_decreasing_ratio: 1.0,
            class: Class::Plateau,
            severity: Severity::None,
            recent_bytes_per_sec: 0.0,
            threads_per_sec: Some(0.5),
        });
        let text = render(&report, 10);
        assert!(
            text.contains("\nthread stacks: 9 of them (8 live threads, 1 cached) reserve 72.00 MiB of that, 108.00 KiB of it resident; stacks are ranked and judged by what is resident of them\n"),
            "{text}"
        );
        assert!(
            text.contains("\ntop 1 of 1 stacks by outstanding bytes, thread stacks by what is resident of them:\n"),
            "{text}"
        );
        let stack: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("#1 "))
            .skip(1)
            .collect();
        assert_eq!(
            stack,
            [
                "    thread stacks: 8 live threads, 1 cached (of threads that ended, kept for reuse); 108.00 KiB resident of 72.00 MiB reserved",
                "    growth: +6.00 KiB/s resident, +0.50 threads/s (plateau, severity none; grew or held in 100% of intervals)",
                "    spawn_worker [redis-server]",
            ]
        );
    }

    #[test]
    fn nothing_folded_says_nothing() {
        let text = render(&report(vec![frame("leak_malloc", false)]), 10);
        assert!(
            text.contains("\ntop 1 of 1 stacks by outstanding bytes:\n"),
            "{text}"
        );
        assert!(!text.contains("folded"), "{text}");
    }

    #[test]
    fn a_long_fold_names_its_ends() {
        let folded: Vec<Frame> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| frame(n, true))
            .collect();
        assert_eq!(
            folded_note(&folded).unwrap(),
            "(5 allocator frames folded: a, …, e)"
        );
        assert_eq!(
            folded_note(&folded[..1]).unwrap(),
            "(1 allocator frame folded: a)"
        );
        assert_eq!(folded_note(&[]), None);
    }
}
