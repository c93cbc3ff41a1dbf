//! `--reachability` in a trace: each traced process stopped in turn, scanned against the
//! outstanding blocks the probes recorded (read while it is stopped, so both agree), resumed,
//! and the classes kept per stack for the report.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use tracer_common::StackKey;

use crate::{
    collect::{Collector, EbpfMaps},
    reach::{
        self, Classes, LetGo, Mode, Options, ProcessScan, Scanned, TrackedBlock,
        deadline::Deadline, heuristics::Heuristic, mark::Class,
    },
    report::{ClassFigures, ProcessReachability, Reachability, Report, StackReachability},
    terminal::eprintln_escaped,
};

/// The trace's scans: whether it makes any, how, and the last one.
pub struct Scanner {
    /// `--reachability`.
    on: bool,
    /// `--max-pause`: longest a process stays stopped.
    max_pause: Duration,
    /// `--reachability-heuristics`.
    heuristics: Vec<Heuristic>,
    /// Say each process's timings.
    verbose: bool,
    last: Option<ReachabilityScan>,
}

/// The last scan of each traced process, and the views the report takes from them.
#[derive(Clone, Debug, Default)]
pub struct ReachabilityScan {
    pub summary: Reachability,
    pub per_stack: HashMap<StackKey, StackReachability>,
    processes: BTreeMap<u32, ProcessResult>,
}

/// One process's scan, as the report takes it.
#[derive(Clone, Debug)]
pub struct ProcessResult {
    entry: ProcessReachability,
    mode: Option<Mode>,
    per_stack: HashMap<u64, StackReachability>,
}

/// Which processes a scan covers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Every traced process (a scan asked for over HTTP).
    All,
    /// The end of the trace: every process not already scanned where it called exit().
    Remaining,
    /// One process, stopped by the kernel at its exit().
    AtExit(u32),
}

impl Scanner {
    pub fn new(on: bool, max_pause: Duration, heuristics: Vec<Heuristic>, verbose: bool) -> Self {
        Self {
            on,
            max_pause,
            heuristics,
            verbose,
            last: None,
        }
    }

    /// Whether the trace scans (`--reachability`).
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// A scan to make: the last one's results, each process's replaced as it is scanned again.
    pub fn begin(&mut self) -> ReachabilityScan {
        self.last.take().unwrap_or_default()
    }

    /// Keeps `scan`, made `at_secs` into the trace, as the last one.
    pub fn keep(&mut self, mut scan: ReachabilityScan, at_secs: f64) {
        scan.rebuild(at_secs);
        self.last = Some(scan);
    }

    /// The report's `reachability` section, once a scan was made.
    pub fn summary(&self) -> Option<Reachability> {
        self.last.as_ref().map(|scan| scan.summary.clone())
    }

    /// A stack's classes, once its process was scanned completely: zero in every class when
    /// no block of it was outstanding then.
    pub fn of_stack(&self, key: &StackKey) -> Option<StackReachability> {
        let scan = self.last.as_ref()?;
        scan.per_stack.get(key).copied().or_else(|| {
            scan.summary
                .processes
                .iter()
                .any(|p| p.pid == key.tgid && p.complete)
                .then(StackReachability::default)
        })
    }

    /// Scans `pid` (pausing it at most `--max-pause`), `at_secs` into the trace; `glibc` says
    /// its allocator is glibc's, `blocks_now` reads its outstanding blocks while it is stopped.
    pub fn scan_process(
        &self,
        pid: u32,
        glibc: bool,
        which: Which,
        at_secs: f64,
        blocks_now: impl FnOnce(&Deadline) -> Option<Vec<TrackedBlock>>,
    ) -> ProcessResult {
        let options = Options {
            max_pause: self.max_pause,
            glibc,
            heuristics: self.heuristics.clone(),
        };
        let (mut entry, mode, per_stack) = match reach::scan_process(pid, &options, blocks_now) {
            Scanned::Complete(process) => {
                if self.verbose {
                    say_timings(pid, &Timings::of(&process));
                }
                let per_stack = process
                    .per_stack
                    .iter()
                    .map(|(stack_id, classes)| (*stack_id, stack_classes(classes)))
                    .collect();
                (process_entry(&process), process.mode, per_stack)
            }
            Scanned::LetGo(let_go) => {
                if self.verbose {
                    say_timings(pid, &Timings::of_let_go(&let_go));
                }
                (let_go_entry(&let_go), let_go.mode, HashMap::new())
            }
            Scanned::Failed(e) => return skipped(pid, e.to_string()),
        };
        entry.at_exit = matches!(which, Which::AtExit(_));
        entry.at_secs = at_secs;
        ProcessResult {
            entry,
            mode: Some(mode),
            per_stack,
        }
    }
}

/// `pid` not scanned, and why.
pub fn skipped(pid: u32, note: String) -> ProcessResult {
    ProcessResult {
        entry: ProcessReachability {
            pid,
            mode: "skipped".into(),
            notes: vec![note],
            ..Default::default()
        },
        mode: None,
        per_stack: HashMap::new(),
    }
}

/// `pid`'s outstanding blocks, read from the kernel's records while it is stopped, as long as
/// `deadline` leaves room (`None` once it does not).
pub fn outstanding_blocks(
    collector: &Collector,
    maps: &EbpfMaps,
    pid: u32,
    deadline: &Deadline,
) -> Option<Vec<TrackedBlock>> {
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
            eprintln_escaped!("leaktracer: warning: cannot read the outstanding blocks: {e:#}");
            Some(Vec::new())
        }
    }
}

impl ReachabilityScan {
    /// Whether `pid` was scanned where it called exit() (so not again at the end).
    pub fn scanned_at_exit(&self, pid: u32) -> bool {
        self.processes.get(&pid).is_some_and(|r| r.entry.at_exit)
    }

    /// Keeps `result` as `pid`'s latest.
    pub fn insert(&mut self, pid: u32, result: ProcessResult) {
        self.processes.insert(pid, result);
    }

    /// Keeps `result` for `pid` unless it has one already (a process that exited keeps the
    /// scan it had).
    pub fn insert_first(&mut self, pid: u32, result: impl FnOnce() -> ProcessResult) {
        self.processes.entry(pid).or_insert_with(result);
    }

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

/// The body of the answer to `POST /api/reachability`: the scan's summary, the verdict, and
/// every scanned stack of `report`.
pub fn scan_answer(report: &Report) -> serde_json::Result<Vec<u8>> {
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
    serde_json::to_vec(&body)
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
        complete: true,
        pause_ms: scan.pause.as_secs_f64() * 1e3,
        scanned_bytes: scan.scanned_bytes,
        threads: scan.threads as u64,
        blocks: scan.blocks as u64,
        mark_ms: scan.mark.as_secs_f64() * 1e3,
        notes: scan.notes.clone(),
        ..Default::default()
    }
}

/// A scan let go at the pause cap, as the report lists it: nothing classed.
fn let_go_entry(scan: &LetGo) -> ProcessReachability {
    ProcessReachability {
        pid: scan.pid,
        mode: scan.mode.name().to_string(),
        complete: false,
        pause_ms: scan.pause.as_secs_f64() * 1e3,
        scanned_bytes: scan.scanned_bytes(),
        threads: scan.threads as u64,
        blocks: 0,
        mark_ms: 0.0,
        notes: scan.notes(),
        ..Default::default()
    }
}

/// What `--verbose` says of one process's scan.
struct Timings {
    blocks: usize,
    threads: usize,
    scanned_bytes: u64,
    /// Pause, stopping, reading records, walking the heaps, copying, sorting, mark.
    durations: [std::time::Duration; 7],
}

impl Timings {
    fn of(scan: &ProcessScan) -> Self {
        Self {
            blocks: scan.blocks,
            threads: scan.threads,
            scanned_bytes: scan.scanned_bytes,
            durations: [
                scan.pause,
                scan.stop_time,
                scan.records_time,
                scan.walk_time,
                scan.read_time,
                scan.sort_time,
                scan.mark,
            ],
        }
    }

    /// A scan let go: only its pause is measured.
    fn of_let_go(scan: &LetGo) -> Self {
        let mut durations = [std::time::Duration::ZERO; 7];
        durations[0] = scan.pause;
        Self {
            blocks: 0,
            threads: scan.threads,
            scanned_bytes: scan.scanned_bytes(),
            durations,
        }
    }
}

fn say_timings(pid: u32, timings: &Timings) {
    let [pause, stop, records, walk, read, sort, mark] =
        timings.durations.map(|d| d.as_secs_f64() * 1e3);
    eprintln_escaped!(
        "leaktracer: reachability of pid {pid}: {} blocks, {} threads, {} scanned, paused {pause:.1} ms (stopping {stop:.1} ms, reading records {records:.1} ms, walking glibc's heaps {walk:.1} ms, copying {read:.1} ms, sorting words {sort:.1} ms), mark {mark:.1} ms",
        timings.blocks,
        timings.threads,
        crate::units::human_bytes(timings.scanned_bytes),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(bytes: u64) -> StackReachability {
        StackReachability {
            definitely_lost: ClassFigures {
                bytes,
                allocations: 1,
            },
            ..Default::default()
        }
    }

    fn complete(pid: u32, mode: Mode, stacks: &[(u64, u64)]) -> ProcessResult {
        ProcessResult {
            entry: ProcessReachability {
                pid,
                mode: mode.name().into(),
                complete: true,
                pause_ms: pid as f64,
                scanned_bytes: 1000,
                threads: 2,
                ..Default::default()
            },
            mode: Some(mode),
            per_stack: stacks
                .iter()
                .map(|(id, bytes)| (*id, lost(*bytes)))
                .collect(),
        }
    }

    #[test]
    fn the_summary_adds_the_processes_up_under_the_weakest_mode() {
        let mut scanner = Scanner::new(true, Duration::from_millis(200), Vec::new(), false);
        let mut scan = scanner.begin();
        scan.insert(10, complete(10, Mode::Exact, &[(1, 100), (2, 50)]));
        scan.insert(11, complete(11, Mode::Conservative, &[(1, 7)]));
        scan.insert(12, skipped(12, "pid 12 exited before the scan".into()));
        scanner.keep(scan, 4.5);
        let summary = scanner.summary().unwrap();
        assert_eq!(summary.mode, "conservative");
        assert!(
            summary.complete,
            "skipped processes do not make it incomplete"
        );
        assert_eq!(summary.at_secs, 4.5);
        assert_eq!(summary.pause_ms, 11.0);
        assert_eq!((summary.scanned_bytes, summary.threads), (2000, 4));
        assert_eq!(summary.definitely_lost.bytes, 157);
        assert_eq!(summary.notes, vec!["pid 12: pid 12 exited before the scan"]);
        assert_eq!(scanner.of_stack(&StackKey::new(10, 2)), Some(lost(50)));
        // Scanned completely, but none of this stack's blocks outstanding then.
        assert_eq!(
            scanner.of_stack(&StackKey::new(11, 2)),
            Some(StackReachability::default())
        );
        assert_eq!(scanner.of_stack(&StackKey::new(12, 1)), None);

        // A process scanned again keeps only its latest; one let go makes the scan incomplete.
        let mut scan = scanner.begin();
        let let_go = LetGo {
            pid: 11,
            mode: Mode::Exact,
            pause: Duration::from_millis(201),
            threads: 3,
            cutoff: reach::Cutoff::ReadingRecords,
            max_pause: Duration::from_millis(200),
            caveats: Vec::new(),
        };
        scan.insert(
            11,
            ProcessResult {
                entry: let_go_entry(&let_go),
                mode: Some(let_go.mode),
                per_stack: HashMap::new(),
            },
        );
        scan.insert_first(12, || complete(12, Mode::Exact, &[]));
        scanner.keep(scan, 9.0);
        let summary = scanner.summary().unwrap();
        assert!(!summary.complete);
        assert_eq!(summary.mode, "exact");
        assert_eq!(summary.definitely_lost.bytes, 150);
        assert_eq!(scanner.of_stack(&StackKey::new(11, 1)), None);
        let entry = &summary.processes[1];
        assert_eq!((entry.pid, entry.complete, entry.threads), (11, false, 3));
        assert_eq!(entry.pause_ms, 201.0);
        assert_eq!(
            entry.notes,
            vec![
                "the 200 ms pause cap was reached while reading the outstanding records (raise --max-pause)"
            ]
        );
        assert_eq!(summary.processes[2].mode, "skipped");
    }

    #[test]
    fn before_any_scan_there_is_nothing_to_report() {
        let scanner = Scanner::new(false, Duration::from_millis(200), Vec::new(), false);
        assert!(!scanner.is_on());
        assert!(scanner.summary().is_none());
        assert_eq!(scanner.of_stack(&StackKey::new(1, 1)), None);
        assert!(!scanner.last.unwrap_or_default().scanned_at_exit(1));
    }
}
