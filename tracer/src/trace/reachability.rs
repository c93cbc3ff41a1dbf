//! `--reachability` in a trace: each traced process stopped in turn, scanned against the
//! outstanding blocks the probes recorded (read while it is stopped, so both agree), resumed,
//! and the classes kept per stack for the report.

use std::collections::HashMap;

use tracer_common::StackKey;

use super::Session;
use crate::{
    reach::{self, Classes, Mode, Options, ProcessScan, TrackedBlock, mark::Class},
    report::{ClassFigures, ProcessReachability, Reachability, StackReachability},
    serve::ScanRequest,
    target::process::is_alive,
};

/// The last scan of the traced processes.
#[derive(Clone, Debug, Default)]
pub struct ReachabilityScan {
    pub summary: Reachability,
    pub per_stack: HashMap<StackKey, StackReachability>,
}

impl Session<'_> {
    /// Scans every traced process (pausing each at most `--max-pause`) and keeps the result.
    pub(super) fn scan_reachability(&mut self) -> &ReachabilityScan {
        let max_pause = self.config.max_pause;
        let at_secs = self.history.elapsed_secs();
        let mut scan = ReachabilityScan::default();
        let mut modes = Vec::new();
        let pids: Vec<u32> = self.tracked.keys().copied().collect();
        for pid in pids {
            let skipped = |note: String| ProcessReachability {
                pid,
                mode: "skipped".into(),
                notes: vec![note],
                ..Default::default()
            };
            if self.python.interpreter(pid).is_some() {
                scan.summary.processes.push(skipped(format!(
                    "pid {pid} is a Python interpreter: its objects stay reachable by design (the interpreter keeps them), so reachability says nothing there; look at growth instead"
                )));
                continue;
            }
            if !is_alive(pid) {
                scan.summary.processes.push(skipped(format!(
                    "pid {pid} exited before the scan (scan a live target: attach with --pid, or end the trace with --duration or Ctrl-C while it runs)"
                )));
                continue;
            }
            let options = Options {
                max_pause,
                glibc: self
                    .tracked
                    .get(&pid)
                    .is_some_and(|t| is_glibc(&t.plan.allocator)),
                heuristics: self.config.reachability_heuristics.0.clone(),
            };
            let collector = &self.collector;
            let maps = self.probes.maps();
            let result = reach::scan_process(pid, &options, || match collector.records(maps) {
                Ok(records) => records
                    .into_iter()
                    .filter(|(key, _)| key.tgid == pid)
                    .map(|(key, record)| TrackedBlock {
                        start: key.addr,
                        size: record.size,
                        stack_id: record.stack_id,
                    })
                    .collect(),
                Err(e) => {
                    eprintln!("leaktracer: warning: cannot read the outstanding blocks: {e:#}");
                    Vec::new()
                }
            });
            match result {
                Ok(process) => {
                    if self.config.verbose {
                        eprintln!(
                            "leaktracer: reachability of pid {pid}: {} blocks, {} threads, {} scanned, paused {:.1} ms (stopping {:.1} ms, reading records {:.1} ms, walking glibc's heaps {:.1} ms, copying {:.1} ms, sorting words {:.1} ms), mark {:.1} ms",
                            process.blocks,
                            process.threads,
                            crate::units::human_bytes(process.scanned_bytes),
                            process.pause.as_secs_f64() * 1e3,
                            process.stop_time.as_secs_f64() * 1e3,
                            process.records_time.as_secs_f64() * 1e3,
                            process.walk_time.as_secs_f64() * 1e3,
                            process.read_time.as_secs_f64() * 1e3,
                            process.sort_time.as_secs_f64() * 1e3,
                            process.mark.as_secs_f64() * 1e3
                        );
                    }
                    modes.push(process.mode);
                    for (stack_id, classes) in &process.per_stack {
                        scan.per_stack
                            .insert(StackKey::new(pid, *stack_id), stack_classes(classes));
                    }
                    scan.summary.processes.push(process_entry(&process));
                }
                Err(e) => scan.summary.processes.push(skipped(e.to_string())),
            }
        }
        let summary = &mut scan.summary;
        summary.at_secs = at_secs;
        summary.mode = weakest(&modes).to_string();
        summary.complete = !summary.processes.is_empty()
            && summary
                .processes
                .iter()
                .all(|p| p.complete || p.mode == "skipped");
        summary.pause_ms = summary
            .processes
            .iter()
            .map(|p| p.pause_ms)
            .fold(0.0, f64::max);
        summary.scanned_bytes = summary.processes.iter().map(|p| p.scanned_bytes).sum();
        summary.threads = summary.processes.iter().map(|p| p.threads).sum();
        let mut totals = StackReachability::default();
        for classes in scan.per_stack.values() {
            totals.add(classes);
        }
        summary.definitely_lost = totals.definitely_lost;
        summary.indirectly_lost = totals.indirectly_lost;
        summary.possibly_lost = totals.possibly_lost;
        summary.still_reachable = totals.still_reachable;
        summary.notes = summary
            .processes
            .iter()
            .flat_map(|p| p.notes.iter().map(move |n| format!("pid {}: {n}", p.pid)))
            .collect();
        self.reachability = Some(scan);
        self.reachability.as_ref().unwrap()
    }
}

impl Session<'_> {
    /// A scan asked for at `/api/reachability`: made now, published with the next report
    /// (which then carries each stack's classes), and answered with its summary and stacks.
    pub(super) fn answer_scan(&mut self, answer: ScanRequest) -> anyhow::Result<()> {
        self.status.finish();
        eprintln!(
            "leaktracer: scanning for pointers to the outstanding blocks (/api/reachability)"
        );
        self.scan_reachability();
        let snapshot = self
            .collector
            .snapshot(self.probes.maps(), self.config.min_age)?;
        let elapsed = self.history.elapsed_secs();
        let report = self.build_report(&snapshot, elapsed, None);
        self.publish(&report);
        let body = ScanAnswer {
            reachability: report.reachability.as_ref(),
            verdict: report.verdict.as_ref().map(|v| v.summary.as_str()),
            stacks: report
                .stacks
                .iter()
                .filter_map(|stack| {
                    Some(ScanStack {
                        id: &stack.id,
                        pid: stack.pid,
                        function: stack.first_own_frame().map(|f| f.label()),
                        outstanding_bytes: stack.outstanding_bytes,
                        outstanding_allocations: stack.outstanding_allocations,
                        reachability: stack.reachability?,
                    })
                })
                .collect(),
        };
        let _ = answer.send(serde_json::to_vec(&body)?.into());
        Ok(())
    }
}

/// What `/api/reachability` answers.
#[derive(serde::Serialize)]
struct ScanAnswer<'a> {
    reachability: Option<&'a Reachability>,
    verdict: Option<&'a str>,
    /// Every scanned stack, in the report's order (most outstanding bytes first).
    stacks: Vec<ScanStack<'a>>,
}

#[derive(serde::Serialize)]
struct ScanStack<'a> {
    id: &'a str,
    pid: u32,
    /// Its first own frame, as the report names it.
    function: Option<String>,
    outstanding_bytes: u64,
    outstanding_allocations: u64,
    reachability: StackReachability,
}

/// Whether the object serving malloc is glibc's C library.
fn is_glibc(allocator: &str) -> bool {
    let name = allocator.rsplit('/').next().unwrap_or(allocator);
    name.starts_with("libc.so") || (name.starts_with("libc-2.") && name.ends_with(".so"))
}

/// The least trustworthy mode of the processes scanned.
fn weakest(modes: &[Mode]) -> &'static str {
    if modes.is_empty() {
        "none"
    } else if modes.contains(&Mode::Unstopped) {
        Mode::Unstopped.name()
    } else if modes.contains(&Mode::Conservative) {
        Mode::Conservative.name()
    } else {
        Mode::Exact.name()
    }
}

fn figures(classes: &Classes, class: Class) -> ClassFigures {
    let f = classes.of(class);
    ClassFigures {
        bytes: f.bytes,
        allocations: f.allocations,
    }
}

fn stack_classes(classes: &Classes) -> StackReachability {
    StackReachability {
        definitely_lost: figures(classes, Class::DefinitelyLost),
        indirectly_lost: figures(classes, Class::IndirectlyLost),
        possibly_lost: figures(classes, Class::PossiblyLost),
        still_reachable: figures(classes, Class::StillReachable),
    }
}

fn process_entry(scan: &ProcessScan) -> ProcessReachability {
    ProcessReachability {
        pid: scan.pid,
        mode: scan.mode.name().to_string(),
        complete: scan.complete,
        pause_ms: scan.pause.as_secs_f64() * 1e3,
        scanned_bytes: scan.scanned_bytes,
        threads: scan.threads as u64,
        blocks: scan.blocks as u64,
        mark_ms: scan.mark.as_secs_f64() * 1e3,
        notes: scan.notes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_is_told_by_its_file_name() {
        assert!(is_glibc("/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_glibc("/lib64/libc-2.17.so"));
        assert!(!is_glibc("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"));
        assert!(!is_glibc("/srv/app/static-binary"));
    }
}
