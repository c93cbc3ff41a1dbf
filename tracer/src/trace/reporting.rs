//! What the trace reports, and to whom while it runs: the settings the report is built with,
//! the HTTP server (`--serve`) each report is published to, and the pieces of the report that
//! need no other part.

use std::time::Duration;

use tracer_common::StackKey;

use crate::{
    attach::probes::AttachStats,
    collect::{MapsSnapshot, StackFigures},
    growth::Thresholds,
    history::SampleHistory,
    report::{self, Report, TargetExit, plumbing::Plumbing},
    serve::{LiveProcess, Published, ScanRequest, Server},
    target::process::ProcessUsage,
    terminal::eprintln_escaped,
};

/// How the report is built, from the command line.
#[derive(Clone, Debug)]
pub struct ReportSettings {
    pub thresholds: Thresholds,
    /// Frames folded as allocator plumbing.
    pub plumbing: Plumbing,
    /// The launched command, if the trace launches one.
    pub launched_command: Option<Vec<String>>,
    /// `--min-age`: only allocations older than this count.
    pub min_age: Option<Duration>,
    /// `--sample-bytes`.
    pub sample_bytes: Option<u64>,
    /// The sampling period, for the served pages.
    pub interval: Duration,
    /// Stacks with their own series in `/metrics`.
    pub metrics_stacks: usize,
}

/// The report's settings, and the server it is published to.
pub struct Reporter {
    settings: ReportSettings,
    /// `--serve`: the HTTP server the current report is published to every interval.
    server: Option<Server>,
}

impl Reporter {
    pub fn new(settings: ReportSettings, server: Option<Server>) -> Self {
        Self { settings, server }
    }

    /// `--min-age`, for the snapshots the report is made of.
    pub fn min_age(&self) -> Option<Duration> {
        self.settings.min_age
    }

    /// Frames folded as allocator plumbing.
    pub fn plumbing(&self) -> &Plumbing {
        &self.settings.plumbing
    }

    /// Whether there is a server to publish to.
    pub fn is_serving(&self) -> bool {
        self.server.is_some()
    }

    /// The scans asked for over HTTP, once (the event loop takes them).
    pub fn take_scan_requests(&mut self) -> Option<tokio::sync::mpsc::Receiver<ScanRequest>> {
        self.server.as_mut()?.scan_requests.take()
    }

    /// One stack of the report: `frames` named, `comm` its process's, its history from
    /// `history`; `keys` the kernel stacks it stands for (one, or several the report shows
    /// alike, whose `figures` are summed), all of one process.
    pub fn stack(
        &self,
        keys: &[StackKey],
        figures: &StackFigures,
        frames: Vec<report::Frame>,
        comm: String,
        history: &SampleHistory,
    ) -> report::Stack {
        let (timeline, growth) = history.stack_history(keys, &self.settings.thresholds);
        report::build::stack(
            keys.first().map_or(0, |key| key.tgid),
            comm,
            figures,
            frames,
            &self.settings.plumbing,
            timeline,
            growth,
        )
    }

    /// The facts of the trace the report states as they are; the caller fills in the parts'.
    pub fn facts(
        &self,
        elapsed: f64,
        end_reason: Option<super::EndReason>,
        attach: AttachStats,
    ) -> report::build::TraceFacts {
        report::build::TraceFacts {
            processes: Vec::new(),
            launched_command: self.settings.launched_command.clone(),
            cgroup: None,
            duration_secs: elapsed,
            end_reason: end_reason
                .map_or("running", super::EndReason::as_str)
                .to_string(),
            thresholds: self.settings.thresholds,
            min_age_secs: self.settings.min_age.map(|d| d.as_secs_f64()),
            sample_bytes: self.settings.sample_bytes,
            limit: None,
            timeline: Vec::new(),
            mappings: Vec::new(),
            target_exit: None,
            execs: Vec::new(),
            unwind: None,
            reachability: None,
            attach: Some(attach_summary(attach)),
        }
    }

    /// Hands `report` to the HTTP server, when there is one, with the usage of the processes
    /// `pids`.
    pub fn publish(&self, report: &Report, pids: &[u32]) {
        let Some(server) = &self.server else {
            return;
        };
        let processes: Vec<LiveProcess> = pids
            .iter()
            .map(|pid| LiveProcess {
                pid: *pid,
                usage: ProcessUsage::read(*pid),
            })
            .collect();
        match Published::render(
            report,
            &processes,
            self.settings.interval.as_secs_f64(),
            self.settings.metrics_stacks,
        ) {
            Ok(bodies) => server.publish(bodies),
            Err(e) => {
                eprintln_escaped!("leaktracer: warning: cannot render the served pages: {e:#}")
            }
        }
    }
}

/// Fills in what an ended process held at its end from `snapshot`: a killed process frees
/// nothing, so its records are the picture at its death.
pub fn fill_held(exit: &mut TargetExit, snapshot: &MapsSnapshot) {
    let (bytes, allocations) = snapshot
        .stacks
        .iter()
        .filter(|(key, _)| key.tgid == exit.pid)
        .fold((0, 0), |(b, a), (_, f)| {
            (b + f.outstanding_bytes, a + f.outstanding_allocations)
        });
    exit.outstanding_bytes = Some(bytes);
    exit.outstanding_allocations = Some(allocations);
}

/// The report's `attach` section.
fn attach_summary(stats: AttachStats) -> report::AttachSummary {
    report::AttachSummary {
        attach_secs: stats.attach.as_secs_f64(),
        detach_secs: stats.detach.map(|d| d.as_secs_f64()),
        links: stats.links as u64,
        probes: stats.probes as u64,
        multi: stats.multi,
        load_secs: stats.load.map(|d| d.as_secs_f64()),
        programs: Vec::new(),
        mapping_probes: stats.mapping_probes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(bytes: u64, allocations: u64) -> StackFigures {
        StackFigures {
            outstanding_bytes: bytes,
            outstanding_allocations: allocations,
            ..Default::default()
        }
    }

    #[test]
    fn an_ended_process_holds_what_its_stacks_hold() {
        let snapshot = MapsSnapshot {
            stacks: vec![
                (StackKey::new(7, 1), figures(100, 2)),
                (StackKey::new(8, 1), figures(1000, 1)),
                (StackKey::new(7, 2), figures(28, 3)),
            ],
            ..Default::default()
        };
        let mut exit = TargetExit {
            pid: 7,
            ..TargetExit::default()
        };
        fill_held(&mut exit, &snapshot);
        assert_eq!(
            (exit.outstanding_bytes, exit.outstanding_allocations),
            (Some(128), Some(5))
        );
        let mut gone = TargetExit {
            pid: 9,
            ..TargetExit::default()
        };
        fill_held(&mut gone, &snapshot);
        assert_eq!(
            (gone.outstanding_bytes, gone.outstanding_allocations),
            (Some(0), Some(0))
        );
    }

    #[test]
    fn the_facts_say_how_the_trace_ended_and_how_it_attached() {
        let reporter = Reporter::new(
            ReportSettings {
                thresholds: Thresholds::default(),
                plumbing: crate::report::Outputs::default().plumbing,
                launched_command: Some(vec!["./server".into()]),
                min_age: Some(Duration::from_millis(1500)),
                sample_bytes: Some(4096),
                interval: Duration::from_secs(5),
                metrics_stacks: 20,
            },
            None,
        );
        assert!(!reporter.is_serving());
        let stats = AttachStats {
            attach: Duration::from_millis(250),
            detach: None,
            links: 3,
            probes: 12,
            multi: true,
            load: Some(Duration::from_millis(420)),
            mapping_probes: crate::report::MappingProbes::SyscallTracepoints,
        };
        let facts = reporter.facts(10.5, Some(super::super::EndReason::Duration), stats);
        assert_eq!(facts.end_reason, "duration");
        assert_eq!(facts.duration_secs, 10.5);
        assert_eq!(facts.min_age_secs, Some(1.5));
        assert_eq!(facts.sample_bytes, Some(4096));
        assert_eq!(facts.launched_command, Some(vec!["./server".to_string()]));
        let attach = facts.attach.unwrap();
        assert_eq!((attach.links, attach.probes, attach.multi), (3, 12, true));
        assert_eq!(
            attach.mapping_probes,
            crate::report::MappingProbes::SyscallTracepoints
        );
        assert_eq!((attach.attach_secs, attach.detach_secs), (0.25, None));
        assert_eq!(attach.load_secs, Some(0.42));
        let live = reporter.facts(1.0, None, stats);
        assert_eq!(live.end_reason, "running");
    }
}
