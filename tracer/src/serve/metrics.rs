//! `/metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Per-stack series are limited to the top `--metrics-stacks` stacks by outstanding bytes and
//! labelled with the stack's stable short id and its first own function (the allocator's
//! caller, past any allocator plumbing, as the text report names it), so label cardinality
//! stays bounded however many stacks the target has.

use std::fmt::Write;

use super::{LiveProcess, api::top_function};
use crate::report::{Report, Stack, Verdict};

/// One metric family being written: HELP and TYPE once, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (index, (key, text)) in labels.iter().enumerate() {
                if index > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(text));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float as Prometheus reads it (finite; no exponent surprises).
fn float(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.3}")
    } else {
        "0".into()
    }
}

/// A family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    Family::new(out, name, kind, help).sample(name, &[], value);
}

/// A counter family with one sample per entry of `counts`, labelled `label`.
fn by_label(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    counts: &std::collections::BTreeMap<String, u64>,
) {
    let mut family = Family::new(out, name, "counter", help);
    for (value, count) in counts {
        family.sample(name, &[(label, value)], count);
    }
}

/// Renders every metric of `report`: `processes` with their usage now, and the top `stacks`
/// with series of their own.
pub fn render(report: &Report, processes: &[LiveProcess], stacks: usize) -> String {
    let mut out = String::new();
    render_processes(&mut out, report, processes);
    if let Some(verdict) = &report.verdict {
        render_verdict(&mut out, verdict);
    }
    render_totals(&mut out, report);
    render_stacks(&mut out, report, stacks);
    out
}

/// Per traced process: outstanding bytes and allocations, and the RSS of those still running.
fn render_processes(out: &mut String, report: &Report, processes: &[LiveProcess]) {
    let comm_of = |pid: u32| {
        report
            .processes
            .iter()
            .find(|p| p.pid == pid)
            .map_or(String::new(), |p| p.comm.clone())
    };

    let per_process = |out: &mut String, name: &str, help: &str, value: fn(&Stack) -> u64| {
        let mut family = Family::new(out, name, "gauge", help);
        for pid in &report.target.pids {
            let sum: u64 = report
                .stacks
                .iter()
                .filter(|s| s.pid == *pid)
                .map(value)
                .sum();
            family.sample(
                name,
                &[("pid", &pid.to_string()), ("comm", &comm_of(*pid))],
                sum,
            );
        }
    };
    per_process(
        out,
        "leaktracer_outstanding_bytes",
        "Bytes allocated since the trace began and not freed, per traced process.",
        |s| s.outstanding_bytes,
    );
    per_process(
        out,
        "leaktracer_outstanding_allocations",
        "Allocations made since the trace began and not freed, per traced process.",
        |s| s.outstanding_allocations,
    );
    {
        let name = "leaktracer_rss_bytes";
        let mut family = Family::new(
            out,
            name,
            "gauge",
            "Resident set size of each traced process still running.",
        );
        for process in processes {
            if let Some(usage) = &process.usage {
                let pid = process.pid.to_string();
                family.sample(
                    name,
                    &[("pid", &pid), ("comm", &comm_of(process.pid))],
                    usage.rss_bytes,
                );
            }
        }
    }
}

/// The verdict's figures: growth, leaking stacks, the limit and the time to it.
fn render_verdict(out: &mut String, verdict: &Verdict) {
    single(
        out,
        "leaktracer_growth_bytes_per_second",
        "gauge",
        "Least-squares slope of all outstanding bytes over the trace so far.",
        float(verdict.growth_bytes_per_sec),
    );
    single(
        out,
        "leaktracer_leaking_stacks",
        "gauge",
        "Stacks classed leak.",
        verdict.leaking_stacks,
    );
    if let Some(limit) = verdict.memory_limit_bytes {
        single(
            out,
            "leaktracer_memory_limit_bytes",
            "gauge",
            "Memory limit of the target (cgroup memory.max, else MemTotal).",
            limit,
        );
    }
    if let Some(seconds) = verdict.seconds_to_limit {
        single(
            out,
            "leaktracer_seconds_to_limit",
            "gauge",
            "Seconds until the memory limit at the current growth rate.",
            float(seconds),
        );
    }
}

/// The trace's counters: allocations, frees, dropped and ignored calls, seconds traced.
fn render_totals(out: &mut String, report: &Report) {
    single(
        out,
        "leaktracer_allocations_total",
        "counter",
        "Allocations recorded since the trace began.",
        report.totals.allocations,
    );
    single(
        out,
        "leaktracer_frees_total",
        "counter",
        "Frees and unmaps that released a recorded allocation.",
        report.totals.frees,
    );
    by_label(
        out,
        "leaktracer_dropped_total",
        "Allocations or attributions lost, by cause (a full map and the like).",
        "cause",
        &report.totals.dropped_by_cause,
    );
    by_label(
        out,
        "leaktracer_ignored_total",
        "Calls deliberately not counted, by reason.",
        "reason",
        &report.totals.ignored,
    );
    single(
        out,
        "leaktracer_trace_seconds",
        "gauge",
        "Seconds traced so far.",
        float(report.duration_secs),
    );
}

/// The top `stacks` stacks holding memory: outstanding bytes, allocations and growth.
fn render_stacks(out: &mut String, report: &Report, stacks: usize) {
    let top: Vec<_> = report
        .stacks
        .iter()
        .filter(|s| s.outstanding_bytes > 0)
        .take(stacks)
        .collect();
    let labels = |stack: &Stack| {
        [
            ("stack_id", stack.id.clone()),
            ("function", top_function(stack).to_string()),
            ("pid", stack.pid.to_string()),
        ]
    };
    let per_stack = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&Stack) -> String| {
        let mut family = Family::new(out, name, "gauge", help);
        for stack in &top {
            let owned = labels(stack);
            let borrowed: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
            family.sample(name, &borrowed, value(stack));
        }
    };
    per_stack(
        out,
        "leaktracer_stack_outstanding_bytes",
        "Outstanding bytes of the top stacks (--metrics-stacks), by stable stack id and the allocator's caller (past allocator plumbing).",
        &|s| s.outstanding_bytes.to_string(),
    );
    per_stack(
        out,
        "leaktracer_stack_outstanding_allocations",
        "Outstanding allocations of the top stacks.",
        &|s| s.outstanding_allocations.to_string(),
    );
    per_stack(
        out,
        "leaktracer_stack_growth_bytes_per_second",
        "Growth rate of the top stacks over the trace so far.",
        &|s| float(s.growth.as_ref().map_or(0.0, |g| g.bytes_per_sec)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Frame, ProcessEntry, Stack, Target};

    #[test]
    fn families_are_declared_once_and_labels_escaped() {
        let report = Report {
            target: Target {
                pids: vec![7],
                ..Default::default()
            },
            processes: vec![ProcessEntry {
                pid: 7,
                comm: "a\"b".into(),
                ..Default::default()
            }],
            stacks: (0..3)
                .map(|i| Stack {
                    id: format!("{i:012x}"),
                    outstanding_bytes: 100 - i,
                    outstanding_allocations: 1,
                    pid: 7,
                    frames: vec![Frame {
                        function: format!("f{i}"),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let text = render(&report, &[], 2);
        assert!(text.contains("leaktracer_outstanding_bytes{pid=\"7\",comm=\"a\\\"b\"} 297\n"));
        assert!(text.contains(
            "leaktracer_stack_outstanding_bytes{stack_id=\"000000000001\",function=\"f1\",pid=\"7\"} 99\n"
        ));
        // Top 2 only.
        assert!(!text.contains("function=\"f2\""));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            assert_eq!(text.matches(&format!("{line}\n")).count(), 1, "{line}");
        }
    }

    #[test]
    fn the_function_label_is_past_the_allocator_plumbing() {
        let frame = |name: &str, plumbing| Frame {
            function: name.into(),
            plumbing,
            ..Default::default()
        };
        let report = Report {
            stacks: vec![Stack {
                id: "00000000000a".into(),
                outstanding_bytes: 10,
                pid: 7,
                frames: vec![frame("g_malloc", true), frame("load_config", false)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&report, &[], 1);
        assert!(
            text.contains("stack_id=\"00000000000a\",function=\"load_config\",pid=\"7\""),
            "{text}"
        );
    }
}
