//! `--reachability` in a trace: each traced process stopped in turn, scanned against the
//! outstanding blocks the probes recorded (read while it is stopped, so both agree), resumed,
//! and the classes kept per stack for the report.

use std::collections::{BTreeMap, HashMap};

use tracer_common::StackKey;

use super::Session;
use crate::{
    reach::{self, Classes, Mode, Options, ProcessScan, TrackedBlock, mark::Class},
    report::{ClassFigures, ProcessReachability, Reachability, StackReachability},
    serve::ScanRequest,
    target::process::is_alive,
    terminal::eprintln_escaped,
};

/// The last scan of each traced process, and the views the report takes from them.
#[derive(Clone, Debug, Default)]
pub struct ReachabilityScan {
    pub summary: Reachability,
    pub per_stack: HashMap<StackKey, StackReachability>,
    processes: BTreeMap<u32, ProcessResult>,
}

#[derive(Clone, Debug)]
struct ProcessResult {
    entry: ProcessReachability,
    mode: Option<Mode>,
    per_stack: HashMap<u64, StackReachability>,
}

/// Which processes a scan covers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    /// Every traced process (a scan asked for over HTTP).
    All,
    /// The end of the trace: every process not already scanned where it called exit().
    Remaining,
    /// One process, stopped by the kernel at its exit().
    AtExit(u32),
}

impl ReachabilityScan {
    /// Recomputes the report's views from the per-process results.
    fn rebuild(&mut self, at_secs: f64) {
        self.per_stack = self
            .processes
            .iter()
            .flat_map(|(pid, result)| {
                result
                    .per_stack
                    .iter()
                    .map(move |(stack_id, classes)| (StackKey::new(*pid, *stack_id), *classes))
            })
            .collect();
        let entries: Vec<ProcessReachability> =
            self.processes.values().map(|r| r.entry.clone()).collect();
        let modes: Vec<Mode> = self.processes.values().filter_map(|r| r.mode).collect();
        let mut totals = StackReachability::default();
        for classes in self.per_stack.values() {
            totals.add(classes);
        }
        self.summary = Reachability {
            mode: weakest(&modes).to_string(),
            pause_ms: entries.iter().map(|p| p.pause_ms).fold(0.0, f64::max),
            scanned_bytes: entries.iter().map(|p| p.scanned_bytes).sum(),
            threads: entries.iter().map(|p| p.threads).sum(),
            complete: !entries.is_empty()
                && entries.iter().all(|p| p.complete || p.mode == "skipped"),
            at_secs,
            definitely_lost: totals.definitely_lost,
            indirectly_lost: totals.indirectly_lost,
            possibly_lost: totals.possibly_lost,
            still_reachable: totals.still_reachable,
            notes: entries
                .iter()
                .flat_map(|p| p.notes.iter().map(move |n| format!("pid {}: {n}", p.pid)))
                .collect(),
            processes: entries,
        };
    }
}

impl Session<'_> {
    /// Scans the processes `which` names (pausing each at most `--max-pause`) and keeps the
    /// results, each process's latest.
    pub(super) fn scan_reachability(&mut self, which: Which) -> &ReachabilityScan {
        let max_pause = self.config.max_pause;
        let at_secs = self.history.elapsed_secs();
        let mut scan = self.reachability.take().unwrap_or_default();
        let pids: Vec<u32> = match which {
            Which::AtExit(pid) => vec![pid],
            _ => self.tracked.keys().copied().collect(),
        };
        for pid in pids {
            if which == Which::Remaining
                && scan.processes.get(&pid).is_some_and(|r| r.entry.at_exit)
            {
                continue;
            }
            let skipped = |note: String| ProcessResult {
                entry: ProcessReachability {
                    pid,
                    mode: "skipped".into(),
                    notes: vec![note],
                    ..Default::default()
                },
                mode: None,
                per_stack: HashMap::new(),
            };
            if let Some(note) = self.runtimes.reachability_note(pid) {
                scan.processes.insert(pid, skipped(note));
                continue;
            }
            if !is_alive(pid) {
                scan.processes.entry(pid).or_insert_with(|| skipped(format!(
                    "pid {pid} exited before the scan (it ended with _exit or a signal, not exit(); attach with --pid, or end the trace with --duration or Ctrl-C while it runs)"
                )));
                continue;
            }
            let options = Options {
                max_pause,
                glibc: self
                    .tracked
                    .get(&pid)
                    .is_some_and(|t| reach::glibc::is_glibc_path(&t.plan.allocator)),
                heuristics: self.config.reachability_heuristics.0.clone(),
            };
            let collector = &self.collector;
            let maps = self.probes.maps();
            let result = reach::scan_process(pid, &options, |deadline| {
                match collector.records_while(maps, &deadline.steps()) {
                    Ok(records) => Some(
                        records?
                            .into_iter()
                            .filter(|(key, _)| key.tgid == pid)
                            .map(|(key, record)| TrackedBlock {
                                start: key.addr,
                                size: record.size,
                                stack_id: record.stack_id,
                            })
                            .collect(),
                    ),
                    Err(e) => {
                        eprintln_escaped!(
                            "leaktracer: warning: cannot read the outstanding blocks: {e:#}"
                        );
                        Some(Vec::new())
                    }
                }
            });
            let result = match result {
                Ok(process) => {
                    if self.config.verbose {
                        eprintln_escaped!(
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
                    let mut entry = process_entry(&process);
                    entry.at_exit = matches!(which, Which::AtExit(_));
                    entry.at_secs = at_secs;
                    ProcessResult {
                        entry,
                        mode: Some(process.mode),
                        per_stack: process
                            .per_stack
                            .iter()
                            .map(|(stack_id, classes)| (*stack_id, stack_classes(classes)))
                            .collect(),
                    }
                }
                Err(e) => skipped(e.to_string()),
            };
            scan.processes.insert(pid, result);
        }
        scan.rebuild(at_secs);
        self.reachability = Some(scan);
        self.reachability.as_ref().unwrap()
    }
}

impl Session<'_> {
    /// A scan asked for at `/api/reachability`: made now, published with the next report
    /// (which then carries each stack's classes), and answered with its summary and stacks.
    pub(super) fn answer_scan(&mut self, answer: ScanRequest) -> anyhow::Result<()> {
        self.status.finish();
        eprintln_escaped!(
            "leaktracer: scanning for pointers to the outstanding blocks (/api/reachability)"
        );
        self.scan_reachability(Which::All);
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
        ..Default::default()
    }
}
